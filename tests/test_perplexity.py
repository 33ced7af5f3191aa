"""moecc-perplexity: llama-perplexity's windows and scores, its base file, its errors; the trained
demo model's held-out perplexity."""
import json
import os

import numpy as np
import pytest

import moecc
from moecc import perplexity
from moecc.generate import DEMO_MODEL

HELD_OUT_TEXT = os.path.join(os.path.dirname(__file__), "data", "stdlib_held_out.txt")
DEMO_CTX = 128
# the demo's perplexity on HELD_OUT_TEXT (CPython 3.11.7's Lib/sched.py, a file held out of its
# training) at --ctx 128: measured 130.5; untrained, it would score near its vocabulary size, 2048
DEMO_PPL_BOUND = 150.0
# a base row holds each log-prob to within half its step, at most 16 / 65535 / 2 nats
BASE_RESOLUTION = 16 / 65535 / 2


def run(capsys, *argv) -> tuple[int, str, str]:
    code = perplexity.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def numpy_scores(model, ctx: int) -> tuple[np.ndarray, np.ndarray]:
    """(NLL of every counted token, its logits), from Model.logits on llama-perplexity's windows,
    written out on their own: windows of ctx tokens, positions ctx/2 .. ctx-2 counted."""
    with open(HELD_OUT_TEXT, encoding="utf-8") as f:
        ids = np.array(model.tokenizer.encode(f.read()))
    nll, counted = [], []
    for w in range(len(ids) // ctx):
        window = ids[w * ctx:(w + 1) * ctx]
        logits = model.logits(window.tolist()).astype(np.float64)
        for t in range(ctx // 2, ctx - 1):
            row = logits[t] - logits[t].max()
            nll.append(np.log(np.exp(row).sum()) - row[window[t + 1]])
            counted.append(logits[t])
    return np.array(nll), np.array(counted)


@pytest.fixture(scope="module")
def demo():
    with moecc.load(DEMO_MODEL, threads=2, ctx=DEMO_CTX) as model:
        yield model


def test_perplexity_equals_numpy_from_model_logits(demo, capsys):
    nll, _ = numpy_scores(demo, DEMO_CTX)
    code, out, _ = run(capsys, "--model", DEMO_MODEL, "--text", HELD_OUT_TEXT, "--ctx", DEMO_CTX, "--json")
    assert code == 0
    result = json.loads(out)
    assert list(result) == ["tokens", "ppl", "kld_mean", "kld_ci95", "kld_median", "kld_p99", "top1", "rms_dp"]
    assert result["tokens"] == len(nll)
    assert result["ppl"] == pytest.approx(np.exp(nll.mean()), rel=1e-9)
    assert result["kld_mean"] is None


def test_demo_held_out_perplexity(demo):
    with open(HELD_OUT_TEXT, encoding="utf-8") as f:
        windows = perplexity.windows(demo.tokenizer.encode(f.read()), DEMO_CTX)
    result = perplexity.score_model(demo, windows, progress=False)
    assert result["ppl"] <= DEMO_PPL_BOUND


def test_a_model_against_its_own_base(demo, tmp_path, capsys):
    base = tmp_path / "demo.base"
    code, _, _ = run(capsys, "--model", DEMO_MODEL, "--text", HELD_OUT_TEXT, "--ctx", DEMO_CTX, "--save-base", base)
    assert code == 0 and sorted(os.listdir(tmp_path)) == ["demo.base"]
    code, out, _ = run(capsys, "--model", DEMO_MODEL, "--text", HELD_OUT_TEXT, "--base", base, "--json")
    assert code == 0
    result = json.loads(out)
    # the base is the same logits, rounded to its resolution: KLD and dp are 0 up to that rounding,
    # and the top tokens agree but where the two largest logits are closer than it (both round
    # to the top step, and the base's argmax takes the first)
    assert abs(result["kld_mean"]) <= BASE_RESOLUTION and abs(result["kld_p99"]) <= BASE_RESOLUTION
    _, logits = numpy_scores(demo, DEMO_CTX)
    top2 = np.sort(logits, axis=1)[:, -2:]
    near_ties = int(np.sum(top2[:, 1] - top2[:, 0] <= 2 * BASE_RESOLUTION))
    assert near_ties <= 0.01 * len(logits)
    assert result["top1"] >= 1 - near_ties / len(logits)
    assert result["rms_dp"] <= BASE_RESOLUTION


def test_kld_of_a_q4_file_against_the_bf16_base(converted, tmp_path, capsys):
    """KLD, top-1, RMS dp of q4 against bf16 (the `main` fixture) are those NumPy computes from
    both models' exact logits, to the base's resolution."""
    bf16, q4, base = converted("main", "bf16"), converted("main", "q4"), tmp_path / "bf16.base"
    ctx = 32
    assert run(capsys, "--model", bf16, "--text", HELD_OUT_TEXT, "--ctx", ctx, "--save-base", base)[0] == 0
    code, out, _ = run(capsys, "--model", q4, "--text", HELD_OUT_TEXT, "--base", base, "--json")
    assert code == 0
    result = json.loads(out)
    with moecc.load(bf16, threads=2, ctx=ctx) as m:
        nll_base, reference = numpy_scores(m, ctx)
    with moecc.load(q4, threads=2, ctx=ctx) as m:
        nll, logits = numpy_scores(m, ctx)
    log_p_base = perplexity.log_softmax(reference)
    log_p = perplexity.log_softmax(logits)
    kld = (np.exp(log_p_base) * (log_p_base - log_p)).sum(axis=1)
    p_diff = np.exp(-nll) - np.exp(-nll_base)
    assert result["tokens"] == len(kld)
    assert result["kld_mean"] > 100 * BASE_RESOLUTION
    assert result["kld_mean"] == pytest.approx(kld.mean(), abs=2 * BASE_RESOLUTION)
    assert result["kld_median"] == pytest.approx(np.median(kld), abs=2 * BASE_RESOLUTION)
    lo, hi = result["kld_ci95"]
    half = 1.96 * kld.std() / np.sqrt(len(kld) - 1)
    assert lo == pytest.approx(result["kld_mean"] - half, rel=1e-2) and hi == pytest.approx(result["kld_mean"] + half, rel=1e-2)
    assert result["kld_p99"] == pytest.approx(np.percentile(kld, 99), abs=2 * BASE_RESOLUTION)
    assert result["top1"] == pytest.approx(np.mean(logits.argmax(1) == reference.argmax(1)), abs=1 / len(kld))
    assert result["rms_dp"] == pytest.approx(np.sqrt(np.mean(p_diff ** 2)), abs=2 * BASE_RESOLUTION)
    assert result["ppl"] == pytest.approx(np.exp(nll.mean()), rel=1e-9)


def test_base_rows_are_llama_cpp_rows():
    """encode_log_probs against llama.cpp's log_softmax (perplexity.cpp), transcribed loop by loop,
    on odd vocabulary sizes, a flat row and a row spanning more than 16 nats."""
    rng = np.random.default_rng(0)
    cases = [rng.normal(0, 3, (5, 101)).astype(np.float32), rng.normal(0, 20, (3, 64)).astype(np.float32),
             np.zeros((1, 7), np.float32)]
    for logits in cases:
        rows = perplexity.encode_log_probs(logits)
        V = logits.shape[1]
        assert rows.shape == (len(logits), 2 * ((V + 1) // 2) + 4)
        for row, x in zip(rows, logits):
            hi, lo = np.float32(x.max()), np.float32(max(x.min(), x.max() - 16))
            log_sum_exp = np.float32(np.log(sum(float(np.exp(np.float32(v - hi))) for v in x)))
            scale = np.float32((hi - lo) / np.float32(65535))
            header = row[:4].view(np.float32)
            assert header[0] == scale and header[1] == pytest.approx(lo - hi - log_sum_exp, abs=1e-6)
            for v, q in zip(x, row[4:4 + V]):
                expected = 0 if not scale or v <= lo else int(np.rint(np.float32(1 / scale) * np.float32(v - lo)))
                assert q == expected
            assert not row[4 + V:].any()
        decoded = perplexity.decode_log_probs(rows, V)
        exact = perplexity.log_softmax(logits)
        resolved = exact > exact.max(axis=1, keepdims=True) - 16
        assert np.all(np.abs(decoded - exact)[resolved] <= BASE_RESOLUTION * 1.01 + 1e-6)
        assert np.all(decoded[~resolved] <= -16)


def test_scoring_helpers():
    assert perplexity.scored(512) == slice(256, 511)
    assert perplexity.windows(np.arange(25), 6).shape == (4, 6)
    values = np.array([3.0, 1.0, 2.0, 10.0])
    assert perplexity.percentile(values, 0.5) == 2.5 and perplexity.percentile(values, 1.0) == 10.0
    assert perplexity.standard_error(np.ones(20)) == 0.0


def one_line_error(capsys, *argv) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("moecc-perplexity: error: "), err
    return lines[0]


def test_text_shorter_than_two_windows(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("def f(x):\n    return x\n")
    assert "needs at least 256" in one_line_error(capsys, "--model", DEMO_MODEL, "--text", short, "--ctx", 128)
    assert "at least 4" in one_line_error(capsys, "--model", DEMO_MODEL, "--text", HELD_OUT_TEXT, "--ctx", 2)


def test_bad_bases(converted, tmp_path, capsys):
    base = tmp_path / "demo.base"
    assert run(capsys, "--model", DEMO_MODEL, "--text", HELD_OUT_TEXT, "--ctx", 64, "--save-base", base)[0] == 0
    other_text = tmp_path / "other.txt"
    with open(HELD_OUT_TEXT, encoding="utf-8") as f:
        other_text.write_text("x = 1\n" + f.read())
    assert "another text" in one_line_error(capsys, "--model", DEMO_MODEL, "--text", other_text, "--base", base)
    assert "vocabulary of 2048" in one_line_error(capsys, "--model", converted("main", "bf16"), "--text",
                                                   HELD_OUT_TEXT, "--base", base)
    assert "--ctx 64" in one_line_error(capsys, "--model", DEMO_MODEL, "--text", HELD_OUT_TEXT, "--base", base,
                                        "--ctx", 128)
    truncated = tmp_path / "truncated.base"
    truncated.write_bytes(base.read_bytes()[:-2])
    assert "truncated" in one_line_error(capsys, "--model", DEMO_MODEL, "--text", HELD_OUT_TEXT, "--base", truncated)
    assert "not a base file" in one_line_error(capsys, "--model", DEMO_MODEL, "--text", HELD_OUT_TEXT,
                                               "--base", HELD_OUT_TEXT)
    assert "cannot read" in one_line_error(capsys, "--model", DEMO_MODEL, "--text", HELD_OUT_TEXT,
                                           "--base", tmp_path / "missing.base")


def test_a_failed_run_leaves_no_base(demo, tmp_path):
    with open(HELD_OUT_TEXT, encoding="utf-8") as f:
        windows = perplexity.windows(demo.tokenizer.encode(f.read()), DEMO_CTX)
    windows[1, 0] = demo.config.vocab_size  # the second window fails, after the first was written
    with pytest.raises(ValueError, match="outside the vocabulary"):
        perplexity.score_model(demo, windows, save_base=str(tmp_path / "x.base"), progress=False)
    assert os.listdir(tmp_path) == []
