"""GGUF files: llama.cpp's converter and quantizer made them from the fixture checkpoints
(tools/make_gguf_fixtures.py); moecc runs them against transformers' logits and llama.cpp's on
the very same file."""
import json
import os

import numpy as np
import pytest
from conftest import FIXTURES, Reference, relative_error
from tokenizers import Tokenizer as HFTokenizer

import moecc
from moecc import chat_template, storage
from moecc.config import Qwen3MoeConfig
from moecc.formats import FormatError

gguf = pytest.importorskip("gguf")

GGUF_DIR = os.path.join(FIXTURES, "gguf")
with open(os.path.join(GGUF_DIR, "llamacpp.json"), encoding="utf-8") as f:
    MANIFEST = json.load(f)
FLOAT_TYPES = ("F32", "BF16", "F16")
QUANTIZED_FILES = [n for n, info in MANIFEST.items() if info["llama_quantize_type"] not in FLOAT_TYPES]
FLOAT_FILES = [n for n, info in MANIFEST.items() if info["llama_quantize_type"] in FLOAT_TYPES]

MULTILINGUAL = ("Hello, world! The café's naïve façade — 日本語のテキスト、中文文本。 한국어 🙂🚀👍🏽\n"
                "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n\n\n"
                "   tabs\tand  spaces   \r\n  Ελληνικά, русский, العربية, עברית — ½ × 3.14159 = 1.5708; "
                "I'm sure they'll say we've done it, 'RE' 'LL'. 1234567890 <|im_start|>user\nhi<|im_end|>\n"
                "<think>\n\n</think> cafe\u0301 (decomposed: NFC makes it café)")


def path_of(name: str) -> str:
    return os.path.join(GGUF_DIR, f"{name}.gguf")


def types_not_built(name: str) -> list[str]:
    """The ggml types of the file's tensors that moecc's storage table lacks."""
    counts = MANIFEST[name]["tensor_types"]
    return [t for t in counts if gguf.GGMLQuantizationType[t] not in storage.BY_GGML_TYPE]


def llama_logits(name: str) -> list[np.ndarray]:
    with np.load(os.path.join(GGUF_DIR, f"{name}.llama.npz")) as z:
        return [z[f"logits_{i}"].astype(np.float32) for i in range(len(z.files))]


def test_every_file_of_the_manifest_is_there():
    for name, info in MANIFEST.items():
        assert os.path.getsize(path_of(name)) == info["bytes"], name


@pytest.mark.parametrize("name", FLOAT_FILES)
def test_float_gguf_matches_transformers(name):
    reference = Reference(MANIFEST[name]["case"])
    with moecc.load(path_of(name), threads=1, kv_cache="f32") as m:
        for ids, expected in reference.prompts():
            assert relative_error(m.logits(ids.tolist()), expected) <= 1e-4
        m.eos_token_ids = frozenset()  # transformers' continuation was made without EOS stopping
        for prompt, tokens in reference.greedy():
            out = [s.token for s in m.generate(prompt.tolist(), max_tokens=len(tokens), temperature=0)]
            assert out == tokens.tolist()


@pytest.mark.parametrize("name", QUANTIZED_FILES)
def test_quantized_gguf_parity_with_llama_cpp(name):
    """moecc's error against transformers is at most max(1.15 x llama.cpp's on the same file,
    llama.cpp's + 0.01), and the two engines' top-1 tokens agree on >= 95% of positions."""
    missing = types_not_built(name)
    if missing:
        pytest.skip(f"storage type for {', '.join(missing)} not built (storage.BY_GGML_TYPE lacks it)")
    reference = Reference(MANIFEST[name]["case"])
    peer = llama_logits(name)
    ours, theirs, agree, total = [], [], 0, 0
    with moecc.load(path_of(name), threads=2) as m:
        for (ids, expected), llama in zip(reference.prompts(), peer, strict=True):
            got = m.logits(ids.tolist())
            ours.append(relative_error(got, expected))
            theirs.append(relative_error(llama, expected))
            agree += int((got.argmax(-1) == llama.argmax(-1)).sum())
            total += len(ids)
    bound = max(1.15 * max(theirs), max(theirs) + 0.01)
    assert max(ours) <= bound, (ours, theirs)
    assert agree / total >= 0.95


def test_config_from_the_file_is_the_checkpoints():
    ours = moecc.loader.open_model(path_of("gqa16-BF16"))
    try:
        hf = Qwen3MoeConfig.from_json_file(os.path.join(FIXTURES, "gqa16", "hf", "config.json"))
        for key in ("vocab_size", "hidden_size", "moe_intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "head_dim", "num_experts",
                    "num_experts_per_tok", "norm_topk_prob", "rope_theta", "max_position_embeddings",
                    "tie_word_embeddings"):
            assert getattr(ours.config, key) == getattr(hf, key), key
        assert ours.config.rms_norm_eps == pytest.approx(hf.rms_norm_eps, rel=1e-6)  # stored as float32
    finally:
        ours.close()


@pytest.fixture(scope="module")
def bf16_model():
    with moecc.load(path_of("gqa16-BF16"), threads=1, ctx=256) as m:
        yield m


def test_tokenizer_from_the_file_gives_the_hugging_face_ids(bf16_model):
    hf = HFTokenizer.from_file(os.path.join(FIXTURES, "gqa16", "hf", "tokenizer.json"))
    for text in (MULTILINGUAL, MULTILINGUAL[:40], " leading space", "trailing   ", "\n\n\n", "a" * 50):
        expected = hf.encode(text).ids
        assert bf16_model.tokenizer.encode(text) == expected
        assert bf16_model.tokenizer.decode(expected) == hf.decode(expected, skip_special_tokens=False)
    ids = bf16_model.tokenizer.encode(MULTILINGUAL)
    assert bf16_model.tokenizer.decode(ids, skip_special_tokens=True) == \
        hf.decode(ids, skip_special_tokens=True)
    assert bf16_model.tokenizer.vocab_size == hf.get_vocab_size(with_added_tokens=True)


def test_template_special_tokens_and_sampling_from_the_file(bf16_model):
    with open(os.path.join(FIXTURES, "gqa16", "hf", "tokenizer_config.json"), encoding="utf-8") as f:
        hf_config = json.load(f)
    assert bf16_model.chat_template == hf_config["chat_template"]
    case = Reference("gqa16").meta["chat_template_cases"][0]
    rendered = bf16_model.apply_chat_template(case["messages"], **case["kwargs"])
    assert rendered == case["output"]
    assert bf16_model.tokenizer.encode(rendered) == case["ids"]
    assert bf16_model.tokenizer.config["eos_token"] == hf_config["eos_token"] == "<|im_end|>"
    assert bf16_model.tokenizer.config["pad_token"] == hf_config["pad_token"]
    with open(os.path.join(FIXTURES, "gqa16", "hf", "generation_config.json"), encoding="utf-8") as f:
        hf_generation = json.load(f)
    # <|im_end|> is the file's EOS; <|endoftext|>, a CONTROL token, ends generation as in llama.cpp
    assert bf16_model.eos_token_ids == frozenset(hf_generation["eos_token_id"])
    for key in ("temperature", "top_k", "top_p"):
        assert bf16_model.generation_config[key] == hf_generation[key]


def test_inspect_shows_the_tables_and_says_there_is_nothing_to_verify(capsys):
    from moecc import inspect_file
    assert inspect_file.main([path_of("moe256-Q4_K_M"), "--json", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["verify"] == inspect_file.GGUF_NO_CHECKSUMS
    assert info["config"]["num_experts"] == 4 and info["file_bytes"] == MANIFEST["moe256-Q4_K_M"]["bytes"]
    assert info["classes"]["experts"]["dtypes"] == ["Q4_K", "Q6_K"] and info["classes"]["lm_head"]["dtypes"] == ["Q6_K"]
    counts = {}
    for t in info["tensors"]:
        counts[t["dtype"]] = counts.get(t["dtype"], 0) + 1
    assert counts == MANIFEST["moe256-Q4_K_M"]["tensor_types"]
    assert inspect_file.main([path_of("gqa16-BF16"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "blk.1.ffn_down_exps.weight" in out and "verify: GGUF files carry no checksums" in out


def test_generate_and_chat_take_a_gguf():
    import subprocess
    import sys
    common = ["--model", path_of("gqa16-BF16"), "--temperature", "0", "--max-tokens", "6", "--threads", "1"]
    r = subprocess.run([sys.executable, "-m", "moecc.generate", *common, "--raw", "--prompt", "The"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "generated: 6 tokens" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "moecc.chat", *common, "--no-think"], input="hello\n/exit\n",
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "prompt tokens processed" in r.stdout + r.stderr, r.stdout + r.stderr
