"""GGUF files moecc cannot run get one clear line; what it can run in another shape (tied
embeddings, F16 norms, down in another type than gate / up) runs; the synthetic GGUF writer.

The files are tiny synthetic models (moecc.synthetic.gguf_file), rewritten tensor by tensor or
key by key with the `gguf` package's writer."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moecc
from moecc import storage
from moecc.config import ConfigError
from moecc.formats import FormatError
from moecc.formats.gguf import GGUFFile, config_from_gguf
from moecc.synthetic.gguf_file import mix_type, write_gguf_model

gguf = pytest.importorskip("gguf")

TINY = dict(hidden_size=64, intermediate_size=128, moe_intermediate_size=64, num_attention_heads=2,
            num_key_value_heads=1, head_dim=32, num_experts=4, num_experts_per_tok=2, max_position_embeddings=256)
TINY_256 = dict(TINY, hidden_size=256, moe_intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                head_dim=64)
VOCAB = 400


@pytest.fixture(scope="module")
def q8_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gguf") / "tiny-q8.gguf")
    write_gguf_model(path, 2, "Q8_0", vocab_size=VOCAB, **TINY)
    return path


def rewrite(source: str, out: str, *, arch: str | None = None, drop: tuple[str, ...] = (),
            retype: dict | None = None, keys: dict | None = None, add: bool = False) -> str:
    """`source` written again to `out`: with another general.architecture, without the tensors
    `drop`, with tensors of `retype` ({name: (ggml type, values as float32)}) re-encoded, with
    metadata `keys` ({key: (value, GGUFValueType)}) replaced (`add`: added)."""
    reader = gguf.GGUFReader(source)
    arch = arch or reader.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(out, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if keys and key in keys:
            w.add_key_value(key, keys[key][0], keys[key][1])
            continue
        sub = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), field.types[0], sub)
    for key, (value, vtype) in (keys or {}).items() if add else ():
        w.add_key_value(key, value, vtype)
    for t in reader.tensors:
        if t.name in drop:
            continue
        if retype and t.name in retype:
            qtype, values = retype[t.name]
            w.add_tensor(t.name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def values_of(path: str, name: str) -> np.ndarray:
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == name)
    return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)


def test_synthetic_gguf_loads_and_runs(q8_file):
    with moecc.load(q8_file, threads=1) as m:
        assert m.config.num_hidden_layers == 2 and m.config.num_experts == 4 and m.config.vocab_size == VOCAB
        assert {w.storage for w in m.source.weights.values()} == {"q8", "f32"}
        ids = m.tokenizer.encode("hello <|im_start|>user\nhi<|im_end|>")
        assert m.tokenizer.decode(ids) == "hello <|im_start|>user\nhi<|im_end|>"
        logits = m.logits(ids)
        assert np.isfinite(logits).all() and logits.std() > 0
        assert m.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("<|im_start|>assistant\n")
        assert m.generation_config["temperature"] == 0.6  # the synthetic model's generation_config


def test_views_are_zero_copy_and_read_only(q8_file):
    f = GGUFFile(q8_file)
    try:
        t = f.tensors["blk.0.ffn_gate_exps.weight"]
        view = f.view(t.name, storage.get("q8"))
        assert view.shape == (4, 64, 2 * 34) and not view.flags.writeable
        with open(q8_file, "rb") as raw:
            raw.seek(t.offset)
            assert raw.read(t.size) == view.tobytes()
    finally:
        f.close()


def test_q4_k_m_mix_is_llama_quantizes(tmp_path):
    path = str(tmp_path / "tiny-q4km.gguf")
    write_gguf_model(path, 8, "Q4_K_M", vocab_size=VOCAB, **TINY_256)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["output.weight"] == types["blk.0.attn_v.weight"] == types["blk.7.ffn_down_exps.weight"] == "Q6_K"
    assert types["blk.1.ffn_down_exps.weight"] == types["blk.1.attn_q.weight"] == "Q4_K"
    assert [i for i in range(8) if types[f"blk.{i}.ffn_down_exps.weight"] == "Q6_K"] == [0, 3, 6, 7]
    assert types["token_embd.weight"] == "Q4_K" and types["blk.3.ffn_gate_inp.weight"] == "F32"
    # its blocks decode to weights of about the synthetic checkpoint's spread (std 0.02)
    for name in ("blk.1.ffn_up_exps.weight", "output.weight"):
        assert 0.01 < values_of(path, name).std() < 0.04, name
    if all(gguf.GGMLQuantizationType[t] in storage.BY_GGML_TYPE for t in ("Q4_K", "Q6_K")):
        with moecc.load(path, threads=1) as m:
            assert np.isfinite(m.logits([1, 2, 3])).all()
    else:
        with pytest.raises(FormatError, match=r"is Q4_K, a type moecc does not run; moecc runs .*Q8_0"):
            moecc.load(path)


def test_mix_types_follow_the_inventory():
    from moecc.config import Qwen3MoeConfig, tensor_specs
    from moecc.synthetic import synthetic_files
    cfg = Qwen3MoeConfig.from_dict(synthetic_files(4, VOCAB, **TINY_256)[0])
    for spec in tensor_specs(cfg):
        kind = mix_type("Q8_0", spec, 4)
        assert kind == ("F32" if spec.role in ("norm", "router") else "Q8_0")


def test_another_architecture(q8_file, tmp_path):
    path = rewrite(q8_file, str(tmp_path / "llama.gguf"), arch="llama")
    with pytest.raises(FormatError, match="general.architecture is 'llama'; moecc runs qwen3moe"):
        moecc.load(path)


def test_a_split_file_is_named(q8_file, tmp_path):
    u16 = gguf.GGUFValueType.UINT16
    path = rewrite(q8_file, str(tmp_path / "split.gguf"), keys={"split.count": (3, u16), "split.no": (0, u16)},
                   add=True)
    with pytest.raises(FormatError, match="part 1 of a GGUF split in 3 files; .*llama-gguf-split --merge"):
        moecc.load(path)


def test_truncated_file(q8_file, tmp_path):
    data = open(q8_file, "rb").read()
    for cut in (len(data) - 1000, len(data) // 2, 200, 10):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(FormatError, match="truncated"):
            moecc.load(path)


def test_missing_tensor(q8_file, tmp_path):
    path = rewrite(q8_file, str(tmp_path / "m.gguf"), drop=("blk.1.attn_q.weight",))
    with pytest.raises(FormatError, match="tensor blk.1.attn_q.weight is missing"):
        moecc.load(path)


def test_a_type_moecc_does_not_run_is_named(q8_file, tmp_path):
    name = "blk.0.attn_k.weight"
    path = rewrite(q8_file, str(tmp_path / "t.gguf"),
                   retype={name: (gguf.GGMLQuantizationType.MXFP4, values_of(q8_file, name))})
    with pytest.raises(FormatError, match=rf"tensor {name} is MXFP4, a type moecc does not run; "
                                          r"moecc runs F32, .*Q8_0"):
        moecc.load(path)


def test_missing_output_means_tied_embeddings(q8_file, tmp_path):
    path = rewrite(q8_file, str(tmp_path / "tied.gguf"), drop=("output.weight",))
    with moecc.load(path, threads=1) as m:
        assert m.config.tie_word_embeddings
        assert np.isfinite(m.logits([5, 6, 7])).all()


def test_f16_norms_are_made_f32_once(q8_file, tmp_path):
    norm = "blk.0.attn_norm.weight"
    # values f16 holds exactly, so the F16 file is the same model as the F32 one
    values = np.linspace(0.5, 1.5, 64, dtype=np.float32).astype(np.float16).astype(np.float32)
    exact = rewrite(q8_file, str(tmp_path / "f32.gguf"), retype={norm: (gguf.GGMLQuantizationType.F32, values)})
    for kind in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.BF16):
        rounded = rewrite(exact, str(tmp_path / f"{kind.name}.gguf"), retype={norm: (kind, values)})
        with moecc.load(exact, threads=1) as a, moecc.load(rounded, threads=1) as b:
            weight = b.source.weights["model.layers.0.input_layernorm.weight"]
            assert weight.storage == "f32" and weight.data.dtype == np.float32
            expected = values if kind == gguf.GGMLQuantizationType.F16 else values_of(rounded, norm)
            np.testing.assert_array_equal(weight.data, expected)
            if kind == gguf.GGMLQuantizationType.F16:
                np.testing.assert_array_equal(b.logits([1, 2, 3]), a.logits([1, 2, 3]))


def test_down_may_differ_from_gate_and_up_but_gate_not_from_up(q8_file, tmp_path):
    down, up = "blk.0.ffn_down_exps.weight", "blk.0.ffn_up_exps.weight"
    f32 = gguf.GGMLQuantizationType.F32
    path = rewrite(q8_file, str(tmp_path / "down.gguf"), retype={down: (f32, values_of(q8_file, down))})
    with moecc.load(path, threads=1) as m, moecc.load(q8_file, threads=1) as reference:
        assert m.source.weights["model.layers.0.mlp.experts.down_proj"].storage == "f32"
        np.testing.assert_allclose(m.logits([1, 2, 3]), reference.logits([1, 2, 3]), rtol=0.05, atol=0.02)
    path = rewrite(q8_file, str(tmp_path / "up.gguf"), retype={up: (f32, values_of(q8_file, up))})
    with pytest.raises(FormatError, match="gate and up must share a storage type"):
        moecc.load(path)


def test_metadata_of_a_model_moecc_does_not_run(q8_file, tmp_path):
    u32 = gguf.GGUFValueType.UINT32
    path = rewrite(q8_file, str(tmp_path / "k.gguf"), keys={"qwen3moe.expert_used_count": (9, u32)})
    with pytest.raises(FormatError, match=r"num_experts_per_tok \(9\) must be in 1..num_experts \(4\)"):
        moecc.load(path)
    path = rewrite(q8_file, str(tmp_path / "s.gguf"), keys={"qwen3moe.embedding_length": ("64", gguf.GGUFValueType.STRING)})
    with pytest.raises(FormatError, match="qwen3moe.embedding_length is '64', not a int"):
        moecc.load(path)


def test_config_reads_the_keys(q8_file):
    f = GGUFFile(q8_file)
    try:
        cfg = config_from_gguf(f)
    finally:
        f.close()
    assert (cfg.hidden_size, cfg.head_dim, cfg.num_key_value_heads, cfg.moe_intermediate_size) == (64, 32, 1, 64)
    assert cfg.norm_topk_prob and not cfg.tie_word_embeddings and cfg.rope_theta == 1e6


# ---- fuzzing: truncations and byte flips never crash ------------------------------------------

@settings(max_examples=int(os.environ.get("MOECC_FUZZ_EXAMPLES", 60)), deadline=None,
          derandomize=not os.environ.get("MOECC_FUZZ_EXAMPLES"),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_gguf_never_crashes(q8_file, tmp_path_factory, data):
    blob = bytearray(open(q8_file, "rb").read())
    header_end = gguf.GGUFReader(q8_file).data_offset
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    for _ in range(data.draw(st.integers(0, 6))):
        # mostly in the header (counts, lengths, types, dims, offsets), sometimes in the data
        where = data.draw(st.integers(0, min(header_end, len(blob)) - 1 if data.draw(st.integers(0, 3))
                                      else len(blob) - 1)) if blob else None
        if where is not None:
            blob[where] ^= data.draw(st.sampled_from([1, 0x80, 0xFF, 0x10, 0x04]))
    path = tmp_path_factory.mktemp("fuzz") / "m.gguf"
    path.write_bytes(bytes(blob))
    try:
        model = moecc.load(path, threads=1, ctx=64)
    except (FormatError, ConfigError, ValueError):
        return
    with model:
        assert model.logits([1, 2, 3]).shape == (3, model.config.vocab_size)  # what loaded must also run


def test_tokens_padded_after_the_added_ones_keep_their_ids(tmp_path):
    """llama.cpp's converter pads Qwen3's 151,669 tokens to the embedding's 151,936 rows with
    UNUSED "[PADi]" tokens after the added ones: here the fixture tokenizer's 768 tokens, padded
    to 780, in a GGUF holding only tokenizer metadata."""
    import json

    from tokenizers import Tokenizer

    from moecc.formats import gguf_tokenizer
    from moecc.synthetic.gguf_file import add_tokenizer_metadata
    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "gqa16", "hf")
    files = {name: open(os.path.join(fixture, name), "rb").read() for name in ("tokenizer.json", "tokenizer_config.json")}
    path = str(tmp_path / "tokenizer.gguf")
    w = gguf.GGUFWriter(path, "qwen3moe")
    add_tokenizer_metadata(w, files, 780)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    f = GGUFFile(path)
    try:
        built = Tokenizer.from_str(gguf_tokenizer.tokenizer_files(f)["tokenizer.json"].decode())
        config = json.loads(gguf_tokenizer.tokenizer_files(f)["tokenizer_config.json"])
    finally:
        f.close()
    hf = Tokenizer.from_str(files["tokenizer.json"].decode())
    text = "Hello <|im_start|>user\n日本語 🙂 <think>x</think><|im_end|> [PAD770]"
    assert built.encode(text).ids == hf.encode(text).ids
    assert built.token_to_id("<|im_end|>") == 744 and built.token_to_id("[PAD779]") == 779
    assert built.decode([770]) == "[PAD770]" and built.get_vocab_size() == 780
    assert config["eos_token"] == "<|im_end|>"
