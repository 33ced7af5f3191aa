"""Chat templates rendered as transformers renders them; chat turns reuse the KV cache."""
import os
import re

import numpy as np
import pytest

import moecc
from conftest import Reference
from moecc.tokenizer import StreamDecoder

DATA = os.path.join(os.path.dirname(__file__), "data")
CASES = Reference("main").meta["chat_template_cases"]


def _read(name):
    with open(os.path.join(DATA, name), encoding="utf-8") as f:
        return f.read()


@pytest.fixture(scope="module")
def model(converted):
    return moecc.load(converted("main", "bf16"), threads=2)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_qwen3_template_matches_transformers(model, case):
    assert model.chat_template == _read("qwen3_chat_template.jinja")
    assert model.apply_chat_template(case["messages"], **case["kwargs"]) == case["output"]
    assert model.tokenizer.encode(case["output"]) == case["ids"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_thinking_2507_template_matches_transformers(model, case):
    from moecc import chat_template
    rendered = chat_template.render(_read("qwen3_2507_thinking_chat_template.jinja"), case["messages"],
                                    tokenizer_config=model.tokenizer.config, **case["kwargs"])
    assert rendered == case["output_2507_thinking"]


def test_template_raise_exception_is_a_clear_error(model):
    with pytest.raises(ValueError, match="chat template"):
        model.apply_chat_template([])  # the Qwen3 template refuses an empty conversation


def test_second_turn_processes_only_what_changed(converted):
    model = moecc.load(converted("main", "bf16"), threads=2)
    question = "Tell me about experts and routers in a mixture model. " * 8
    messages = [{"role": "user", "content": question}]
    reply = "".join(s.text for s in model.chat(messages, max_tokens=8, temperature=0))
    first = model.stats
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And then?"}]
    second_tokens = [s.token for s in model.chat(messages, max_tokens=10, temperature=0)]
    second = model.stats
    assert first.reused_tokens == 0
    assert second.prompt_tokens > first.prompt_tokens + 10
    assert second.reused_tokens >= first.prompt_tokens  # at least the whole first prompt was kept
    assert second.prefilled_tokens < second.prompt_tokens / 3
    # the same conversation from an empty cache gives the same tokens
    fresh = moecc.load(converted("main", "bf16"), threads=2)
    assert [s.token for s in fresh.chat(messages, max_tokens=10, temperature=0)] == second_tokens
    assert fresh.stats.reused_tokens == 0


def test_generate_after_chat_starts_from_an_empty_context(converted):
    model = moecc.load(converted("main", "bf16"))
    list(model.chat([{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0))
    tokens = [s.token for s in model.generate("Hi there", max_tokens=8, temperature=0)]
    fresh = moecc.load(converted("main", "bf16"))
    assert [s.token for s in fresh.generate("Hi there", max_tokens=8, temperature=0)] == tokens


def test_utf8_streaming_never_prints_a_split_character(model):
    text = "Mixture 日本語 🙂 café — ünïcödé ✓ 12345"
    ids = model.tokenizer.encode(text)
    pieces = []
    decoder = StreamDecoder(model.tokenizer)
    for token in ids:
        pieces.append(decoder.add(token))
    pieces.append(decoder.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)
    assert sum(1 for p in pieces if p == "") > 0  # some tokens held back a partial character


def test_generated_text_equals_decoding_the_tokens(model):
    steps = list(model.generate("日本語 🙂", max_tokens=40, temperature=1.0, seed=7))
    assert "".join(s.text for s in steps) == model.tokenizer.decode([s.token for s in steps],
                                                                    skip_special_tokens=True)


def test_stop_string_ends_generation_and_is_not_returned(model):
    model.eos_token_ids, saved = frozenset(), model.eos_token_ids
    try:
        full = "".join(s.text for s in model.generate("The router", max_tokens=30, temperature=0))
        stop = full[10:13]
        steps = list(model.generate("The router", max_tokens=30, temperature=0, stop=[stop]))
    finally:
        model.eos_token_ids = saved
    text = "".join(s.text for s in steps)
    assert text == full[:full.index(stop)]
    assert steps[-1].finish_reason == "stop" and len(steps) < 30


def test_eos_token_stops(model):
    greedy = [s.token for s in model.generate("The router", max_tokens=10, temperature=0)]
    model.eos_token_ids, saved = frozenset({greedy[4]}), model.eos_token_ids
    try:
        steps = list(model.generate("The router", max_tokens=10, temperature=0))
    finally:
        model.eos_token_ids = saved
    assert len(steps) == greedy.index(greedy[4]) + 1 and steps[-1].finish_reason == "stop"


def test_full_context_ends_generation_cleanly(converted):
    model = moecc.load(converted("main", "bf16"), ctx=24)
    model.eos_token_ids = frozenset()
    prompt = model.tokenizer.encode("The model reads the prompt and the router picks experts.")
    steps = list(model.generate(prompt, max_tokens=100, temperature=0))
    assert steps[-1].finish_reason == "context"
    assert len(prompt) + len(steps) == 24 + 1  # the last token is produced but has no room to be fed


def test_sampling_defaults_come_from_generation_config(model):
    params = model.sampling_params()
    assert (params.temperature, params.top_k, params.top_p) == (0.6, 20, 0.95)
    assert model.sampling_params(temperature=0.0, top_k=5).top_k == 5
    assert model.eos_token_ids == {744, 742}


def test_same_seed_same_tokens_top_k_one_is_greedy(model):
    a = [s.token for s in model.generate("Once", max_tokens=12, seed=11)]
    b = [s.token for s in model.generate("Once", max_tokens=12, seed=11)]
    assert a == b
    greedy = [s.token for s in model.generate("Once", max_tokens=12, temperature=0)]
    assert [s.token for s in model.generate("Once", max_tokens=12, top_k=1, temperature=0.9, seed=1)] == greedy


def test_cli_applies_the_template_by_default(converted, capsys):
    from moecc import generate
    assert generate.main(["--model", converted("main", "bf16"), "--prompt", "Hi", "--max-tokens", "3",
                          "--temperature", "0"]) == 0
    templated = capsys.readouterr()
    model = moecc.load(converted("main", "bf16"))
    expected = len(model.tokenizer.encode(model.apply_chat_template([{"role": "user", "content": "Hi"}])))
    assert f"prompt: {expected} tokens" in templated.err and expected > 5
    assert generate.main(["--model", converted("main", "bf16"), "--prompt", "Hi", "--max-tokens", "3",
                          "--raw", "--temperature", "0", "--kv-cache", "f32"]) == 0
    assert f"prompt: {len(model.tokenizer.encode('Hi'))} tokens" in capsys.readouterr().err


def test_thinking_filter_dims_or_hides_the_thinking():
    from moecc.chat import DIM, RESET, ThinkingFilter
    pieces = ["<thi", "nk>\nweigh", "ing it</th", "ink>\n\nThe answer", " is 4."]
    dimmed = ThinkingFilter(starts_thinking=False, hide=False, dim=True)
    out = "".join(dimmed.feed(p) for p in pieces) + dimmed.feed("", final=True)
    assert out.replace(DIM, "").replace(RESET, "") == "weighing itThe answer is 4."  # the tags' newlines dropped
    assert f"{DIM}ing it{RESET}" in out
    hidden = ThinkingFilter(starts_thinking=False, hide=True, dim=False)
    assert "".join(hidden.feed(p) for p in pieces) + hidden.feed("", final=True) == "The answer is 4."
    # a Thinking-2507 template opened <think> in the prompt: the output starts inside it
    opened = ThinkingFilter(starts_thinking=True, hide=True, dim=False)
    assert opened.feed("still thinking</think>\n\nDone.", final=True) == "Done."


def test_chat_cli_converses_resets_and_exits(converted):
    import subprocess
    import sys
    run = subprocess.run([sys.executable, "-m", "moecc.chat", "--model", converted("main", "bf16"),
                          "--max-tokens", "6", "--temperature", "0", "--no-think"],
                         input="Hello there\nAnd again?\n/reset\nHi\n/exit\n", capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    speed_lines = [line for line in run.stderr.splitlines() if "prompt tokens processed" in line]
    assert len(speed_lines) == 3
    reused = [int(re.search(r"\((\d+) reused\)", line).group(1)) for line in speed_lines]
    assert reused[0] == 0 and reused[1] > 10  # turn 2 reuses turn 1
    assert reused[2] < 8  # after /reset only the template's opening tokens still match
