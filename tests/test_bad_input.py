"""A user's mistake gets a clear error, never a crash or a traceback from the CLIs."""
import subprocess
import sys
import threading

import pytest

import moecc


@pytest.fixture(scope="module")
def model(converted):
    return moecc.load(converted("odd", "bf16"), threads=1, ctx=64)


def test_prompt_longer_than_the_context(model):
    with pytest.raises(ValueError, match="the context holds 64"):
        model.logits(list(range(1, 70)))
    with pytest.raises(ValueError, match="the context holds 64"):
        list(model.generate(list(range(1, 70))))


def test_token_ids_out_of_range(model):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.logits([1, 2, model.config.vocab_size])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.logits([-1])


def test_empty_prompt(model):
    with pytest.raises(ValueError, match="empty"):
        model.logits([])


@pytest.mark.parametrize("threads", [0, -2, 1.5])
def test_bad_thread_counts(converted, threads):
    with pytest.raises(ValueError, match="threads"):
        moecc.load(converted("odd", "bf16"), threads=threads)


@pytest.mark.parametrize("ctx", [0, -5])
def test_bad_context(converted, ctx):
    with pytest.raises(ValueError, match="ctx"):
        moecc.load(converted("odd", "bf16"), ctx=ctx)


@pytest.mark.parametrize("kv_cache", ["f8", "float16", None])
def test_bad_kv_cache(converted, kv_cache):
    with pytest.raises(ValueError, match="kv_cache must be one of f16, f32"):
        moecc.load(converted("odd", "bf16"), kv_cache=kv_cache)


@pytest.mark.parametrize("kwargs,message", [
    (dict(max_tokens=-1), "max_tokens"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(temperature=-0.1), "temperature"), (dict(top_k=-3), "top_k"), (dict(min_p=2), "min_p"),
])
def test_nonsense_generation_settings(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        list(model.generate("hello", **kwargs))


def test_sharing_one_model_across_threads_is_refused(model):
    running = model.generate("hello", max_tokens=50, temperature=0)
    next(running)  # holds the model until finished or closed
    errors = []

    def other():
        try:
            model.logits([1, 2])
        except RuntimeError as e:
            errors.append(str(e))
    t = threading.Thread(target=other)
    t.start()
    t.join()
    running.close()
    assert errors and "one Model per thread" in errors[0]
    model.logits([1, 2])  # free again after close()


def test_two_models_in_two_threads_equal_serial(converted):
    path = converted("main", "bf16")
    prompts = ["The router picks", "Experts compute"]
    serial = [[s.token for s in moecc.load(path, threads=1).generate(p, max_tokens=16, temperature=0)]
              for p in prompts]
    results = [None, None]

    def run(i):
        m = moecc.load(path, threads=1)
        results[i] = [s.token for s in m.generate(prompts[i], max_tokens=16, temperature=0)]
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == serial


def _cli(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,message", [
    (["--model", "/nonexistent/m.moecc"], "no such file"),
    (["--max-tokens", "-1"], "max_tokens"),
    (["--top-p", "0"], "top_p"),
    (["--threads", "0"], "threads"),
    (["--temperature", "-1"], "temperature"),
    (["--kv-cache", "f8"], "--kv-cache"),
])
def test_generate_cli_errors_are_one_line(args, message):
    run = _cli("-m", "moecc.generate", *args)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr


def test_generate_cli_rejects_a_non_model_file(tmp_path):
    junk = tmp_path / "junk.moecc"
    junk.write_bytes(b"\x00" * 100)
    run = _cli("-m", "moecc.generate", "--model", str(junk))
    assert run.returncode == 2 and "not a .moecc file" in run.stderr and "Traceback" not in run.stderr


def test_convert_cli_errors_are_one_line(tmp_path):
    run = _cli("-m", "moecc.convert", str(tmp_path / "nothing"), "-o", str(tmp_path / "m.moecc"))
    assert run.returncode == 2 and "not a folder" in run.stderr and "Traceback" not in run.stderr
