"""moecc-imatrix and moecc.imatrix: the statistics the forward step collects equal a NumPy forward's
squared inputs on every ISA path; collecting leaves the logits bit for bit as they were; files
round-trip; llama-imatrix's files (both formats, made from a fixture by
tools/make_imatrix_fixtures.py) load and agree with moecc-imatrix on the same model and text;
an imatrix of another model, or no imatrix at all, is refused with one line."""
import os
import struct

import numpy as np
import pytest

import moecc
from moecc import _kernels as K
from moecc import imatrix
from moecc.config import tensor_specs
from moecc.formats.gguf import GGUFFile, config_from_gguf, gguf_name

from conftest import FIXTURES, Reference

GGUF_DIR = os.path.join(FIXTURES, "gguf")
LLAMA_IMATRIX = os.path.join(GGUF_DIR, "gqa16-stdlib.imatrix")  # .gguf and .dat
BF16_GGUF = os.path.join(GGUF_DIR, "gqa16-BF16.gguf")  # what llama-imatrix ran
TEXT = os.path.join(os.path.dirname(__file__), "data", "stdlib_held_out.txt")
TOLERANCE = 1e-4  # relative: float32 activations against float64 ones, summed in double


# -- a NumPy forward that records every matrix's inputs -----------------------------------------

def reference_inputs(model, windows) -> dict:
    """Per matrix of the model (its moecc name), the float64 sums of squared inputs over the
    windows, each run from an empty context, and the rows per expert, from the model's float32
    weights and its definition (transformers' Qwen3MoeForCausalLM)."""
    cfg = model.config
    W = {name: w.data.astype(np.float64) for name, w in model.source.weights.items()}
    D, hd, Hq, Hkv, eps = cfg.hidden_size, cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.rms_norm_eps
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, np.ndarray] = {}

    def add(name, x, expert=None, experts=1):
        if name not in sums:
            sums[name] = np.zeros((experts, x.shape[-1]))
            rows[name] = np.zeros(experts)
        sums[name][expert or 0] += (x * x).sum(axis=0)
        rows[name][expert or 0] += len(x)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def silu(x):
        return x / (1 + np.exp(-x))

    inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, hd, 2) / hd)
    for ids in windows:
        T = len(ids)
        angles = np.arange(T)[:, None] * inv_freq[None]
        cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]

        def rope(x):  # [T, heads, hd], rotate-half
            x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
            return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

        x = W["model.embed_tokens.weight"][ids]
        for layer in range(cfg.num_hidden_layers):
            p = f"model.layers.{layer}."
            h = rms(x, W[p + "input_layernorm.weight"])
            for proj in ("q_proj", "k_proj", "v_proj"):
                add(p + f"self_attn.{proj}.weight", h)
            q = rope(rms((h @ W[p + "self_attn.q_proj.weight"].T).reshape(T, Hq, hd), W[p + "self_attn.q_norm.weight"]))
            k = rope(rms((h @ W[p + "self_attn.k_proj.weight"].T).reshape(T, Hkv, hd), W[p + "self_attn.k_norm.weight"]))
            v = (h @ W[p + "self_attn.v_proj.weight"].T).reshape(T, Hkv, hd)
            k, v = np.repeat(k, Hq // Hkv, axis=1), np.repeat(v, Hq // Hkv, axis=1)
            scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + np.triu(np.full((T, T), -np.inf), 1)
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            attn = np.einsum("hts,shd->thd", probs / probs.sum(-1, keepdims=True), v).reshape(T, Hq * hd)
            add(p + "self_attn.o_proj.weight", attn)
            x = x + attn @ W[p + "self_attn.o_proj.weight"].T
            h = rms(x, W[p + "post_attention_layernorm.weight"])
            if cfg.is_sparse_layer(layer):
                E, k_top = cfg.num_experts, cfg.num_experts_per_tok
                add(p + "mlp.gate.weight", h)
                logits = h @ W[p + "mlp.gate.weight"].T
                pr = np.exp(logits - logits.max(-1, keepdims=True))
                pr /= pr.sum(-1, keepdims=True)
                top = np.argsort(-pr, -1, kind="stable")[:, :k_top]
                weights = np.take_along_axis(pr, top, -1)
                if cfg.norm_topk_prob:
                    weights /= weights.sum(-1, keepdims=True)
                out = np.zeros_like(h)
                G, U, Dn = (W[p + f"mlp.experts.{n}"] for n in ("gate_proj", "up_proj", "down_proj"))
                for e in range(E):
                    t, j = np.nonzero(top == e)
                    if not len(t):
                        continue
                    act = silu(h[t] @ G[e].T) * (h[t] @ U[e].T)
                    add(p + "mlp.experts.gate_proj", h[t], e, E)
                    add(p + "mlp.experts.up_proj", h[t], e, E)
                    add(p + "mlp.experts.down_proj", act, e, E)
                    np.add.at(out, t, weights[t, j][:, None] * (act @ Dn[e].T))
            else:
                act = silu(h @ W[p + "mlp.gate_proj.weight"].T) * (h @ W[p + "mlp.up_proj.weight"].T)
                add(p + "mlp.gate_proj.weight", h)
                add(p + "mlp.up_proj.weight", h)
                add(p + "mlp.down_proj.weight", act)
                out = act @ W[p + "mlp.down_proj.weight"].T
            x = x + out
        if not cfg.tie_word_embeddings:
            add("lm_head.weight", rms(x, W["model.norm.weight"]))
    return {name: (sums[name], rows[name]) for name in sums}


def check_against_reference(model, entries, windows):
    """Every collected entry (by llama.cpp name) equals the NumPy forward's sums and counts."""
    expected = reference_inputs(model, windows)
    names = {gguf_name(s): s.name for s in tensor_specs(model.config) if s.role in imatrix.COLLECTED_ROLES}
    assert set(entries) == set(names)
    for gname, entry in entries.items():
        sums, rows = expected.get(names[gname], (np.zeros_like(entry.sums), np.zeros(len(entry.counts))))
        np.testing.assert_array_equal(entry.counts, rows, err_msg=gname)
        np.testing.assert_allclose(entry.sums, sums, rtol=TOLERANCE, atol=TOLERANCE * sums.max(), err_msg=gname)


@pytest.mark.parametrize("case", ["main", "odd", "gqa"])
def test_collected_inputs_equal_a_numpy_forward(isa, converted, case, threads):
    """Attention inputs, the router's, each expert's routed rows and the SwiGLU products its down
    projection reads, dense MLPs (main, odd) and the lm_head (untied: main, gqa), on the
    fixture prompts (decisive routing): one crosses a 256-row prefill chunk (gqa), and one is
    cut so that its last step is a single row (the decode paths of moe.c)."""
    model = moecc.load(converted(case, "f32"), threads=threads, ctx=512, kv_cache="f32")
    windows = [ids for ids, _ in Reference(case).prompts()]
    windows.append(windows[0][:1])  # a step of one row, alone
    stats = K.Statistics(model.net.step)
    for ids in windows:
        model.logits(ids, statistics=stats)
    assert stats.rows == stats.lm_head_rows == sum(len(w) for w in windows)
    check_against_reference(model, imatrix.entries(model.config, stats), windows)


def test_row_by_row_collects_what_one_step_does(converted, threads):
    """Decode steps (one row each, moe.c's by-expert path) add what a prefill of the same rows adds."""
    model = moecc.load(converted("gqa", "f32"), threads=threads, ctx=512, kv_cache="f32")
    ids = Reference("gqa").prompts()[0][0][:40]
    whole = K.Statistics(model.net.step)
    model.logits(ids, statistics=whole)
    by_row = K.Statistics(model.net.step)
    logits = np.empty((1, model.config.vocab_size), np.float32)
    for i, token in enumerate(ids):
        model.net.forward(np.array([token], np.int32), np.zeros(1, np.int32), np.array([i], np.int32),
                          np.zeros(1, np.int32), logits, statistics=by_row)
    a, b = imatrix.entries(model.config, whole), imatrix.entries(model.config, by_row)
    for name in a:
        np.testing.assert_array_equal(a[name].counts, b[name].counts, err_msg=name)
        np.testing.assert_allclose(a[name].sums, b[name].sums, rtol=1e-5, atol=1e-5 * a[name].sums.max(), err_msg=name)


@pytest.mark.parametrize("quant", ["f32", "q8", "q4"])
def test_collecting_leaves_the_logits_bit_identical(isa, converted, quant):
    model = moecc.load(converted("main", quant), threads=2, ctx=512)
    ids = Reference("main").prompts()[1][0]
    before = model.logits(ids)
    stats = K.Statistics(model.net.step)
    during = model.logits(ids, statistics=stats)
    after = model.logits(ids)
    np.testing.assert_array_equal(during, before)
    np.testing.assert_array_equal(after, before)
    assert stats.rows == len(ids)


def test_statistics_belong_to_their_step(converted):
    a = moecc.load(converted("main", "f32"), threads=1, ctx=64)
    b = moecc.load(converted("main", "f32"), threads=1, ctx=64)
    with pytest.raises(TypeError, match="Statistics made for this step"):
        a.logits([1, 2, 3], statistics=K.Statistics(b.net.step))


# -- files ------------------------------------------------------------------------------------

def test_write_then_read_and_load(converted, tmp_path):
    model = moecc.load(converted("main", "f32"), threads=2, ctx=512)
    stats = K.Statistics(model.net.step)
    for ids, _ in Reference("main").prompts():
        model.logits(ids, statistics=stats)
    written = imatrix.Imatrix(imatrix.entries(model.config, stats), ["calibration.txt"], 4, 512)
    path = str(tmp_path / "main.imatrix.gguf")
    imatrix.write(path, written)
    back = imatrix.read(path)
    assert (back.datasets, back.chunk_count, back.chunk_size) == (["calibration.txt"], 4, 512)
    assert set(back.entries) == set(written.entries)
    for name, e in written.entries.items():
        np.testing.assert_array_equal(back.entries[name].sums, e.sums.astype(np.float32).astype(np.float64))
        np.testing.assert_array_equal(back.entries[name].counts, e.counts)
    importance = imatrix.load(path, model.config)
    cfg = model.config
    want = {s.name: (s.shape[0], s.shape[-1]) if s.role == "experts" else (s.shape[-1],)
            for s in tensor_specs(cfg) if s.role in imatrix.IMPORTANCE_ROLES}
    assert {name: v.shape for name, v in importance.items()} == want
    assert all(v.dtype == np.float32 for v in importance.values())
    down = written.entries["blk.0.ffn_down_exps.weight"]
    expected = down.sums / down.counts[:, None]
    np.testing.assert_allclose(importance["model.layers.0.mlp.experts.down_proj"], expected, rtol=1e-6)
    np.testing.assert_allclose(importance["model.layers.1.mlp.gate_proj.weight"],
                               written.entries["blk.1.ffn_gate.weight"].sums[0] / stats.rows, rtol=1e-6)


def test_an_expert_without_rows_gets_its_layers_mean():
    sums = np.array([[2.0, 4.0], [0.0, 0.0], [6.0, 2.0]])
    got = imatrix.importance(imatrix.Entry(sums, np.array([1.0, 0.0, 3.0])), 3, 2)
    np.testing.assert_allclose(got, [[2, 4], [2, 1.5], [2, 2 / 3]], rtol=1e-6)
    none = imatrix.importance(imatrix.Entry(np.zeros((2, 3)), np.zeros(2)), 2, 3)
    np.testing.assert_array_equal(none, np.ones((2, 3), np.float32))


# -- llama.cpp's files ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gqa16():
    f = GGUFFile(BF16_GGUF)
    try:
        return config_from_gguf(f)
    finally:
        f.close()


def test_llama_cpp_formats_load_alike(gqa16):
    """llama-imatrix's GGUF and legacy .dat files of one run give the same importance."""
    gguf_file, dat_file = imatrix.read(LLAMA_IMATRIX + ".gguf"), imatrix.read(LLAMA_IMATRIX + ".dat")
    assert gguf_file.chunk_size == 512 and gguf_file.chunk_count == dat_file.chunk_count == 6
    assert gguf_file.datasets == dat_file.datasets == ["tests/data/stdlib_held_out.txt"]
    a, b = imatrix.load(LLAMA_IMATRIX + ".gguf", gqa16), imatrix.load(LLAMA_IMATRIX + ".dat", gqa16)
    assert set(a) == set(b) and len(a) == 2 * 7  # q, k, v, o, the experts' gate, up, down; no lm_head
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-6, err_msg=name)


def test_moecc_imatrix_agrees_with_llama_imatrix(tmp_path, gqa16):
    """moecc-imatrix on the GGUF llama-imatrix ran, over the same text: the same windows and
    tokens (counts equal; layer 0's attention inputs depend only on them and agree to 1e-4), and
    means within 2% (llama.cpp rounds activations to bf16 for bf16 weights: measured 0.8% at
    most; its routing differs on a few near-tied rows: measured 2 rows per expert at most)."""
    out = str(tmp_path / "moecc.imatrix.gguf")
    assert imatrix.main(["--model", BF16_GGUF, "--text", TEXT, "-o", out, "--threads", "2"]) == 0
    ours, theirs = imatrix.read(out), imatrix.read(LLAMA_IMATRIX + ".gguf")
    assert (ours.chunk_count, ours.chunk_size) == (theirs.chunk_count, theirs.chunk_size)
    assert set(ours.entries) == set(theirs.entries) | {"output.weight"}  # lm_head: llama-imatrix --process-output
    for name, theirs_entry in theirs.entries.items():
        mine = ours.entries[name]
        assert np.abs(mine.counts - theirs_entry.counts).max() <= 5, name
        mean_ours = mine.sums / mine.counts[:, None]
        mean_theirs = theirs_entry.sums / theirs_entry.counts[:, None]
        bound = 1e-4 if name.startswith("blk.0.attn_") and name != "blk.0.attn_output.weight" else 2e-2
        assert np.abs(mean_ours - mean_theirs).max() <= bound * np.abs(mean_theirs).max(), name
    assert ours.entries["blk.0.attn_q.weight"].counts[0] == theirs.entries["blk.0.attn_q.weight"].counts[0] == 3072


def test_an_imatrix_of_another_model_is_refused(converted, gqa16):
    gqa = moecc.load(converted("gqa", "f32"), threads=1, ctx=64).config  # the same names, other widths
    with pytest.raises(imatrix.ImatrixError, match=r"blk\.0\.attn_k\.weight has 32 values in 1 row\(s\), but "
                       r"this model's has 1 row\(s\) of 64: the imatrix was made for another model"):
        imatrix.load(LLAMA_IMATRIX + ".gguf", gqa)
    odd = moecc.load(converted("odd", "f32"), threads=1, ctx=64).config
    with pytest.raises(imatrix.ImatrixError, match=r"has blk\.0\.ffn_down_exps\.weight, which this model \(3 layers, .*\) does not have: "
                       "the imatrix was made for another model"):
        imatrix.load(LLAMA_IMATRIX + ".dat", odd)


def test_a_file_that_is_no_imatrix_is_refused(tmp_path, gqa16):
    with pytest.raises(imatrix.ImatrixError, match="a GGUF file of general.type 'model', not 'imatrix'"):
        imatrix.load(BF16_GGUF, gqa16)
    with pytest.raises(imatrix.ImatrixError, match="no such file"):
        imatrix.load(str(tmp_path / "missing"), gqa16)
    cut = tmp_path / "cut.dat"
    cut.write_bytes(open(LLAMA_IMATRIX + ".dat", "rb").read()[:1000])
    with pytest.raises(imatrix.ImatrixError, match="neither GGUF nor a complete legacy imatrix"):
        imatrix.load(str(cut), gqa16)
    text = tmp_path / "text.txt"
    text.write_text("not an imatrix at all")
    with pytest.raises(imatrix.ImatrixError, match="not an importance matrix"):
        imatrix.load(str(text), gqa16)
    empty = tmp_path / "empty.dat"
    empty.write_bytes(struct.pack("<i", 0))
    with pytest.raises(imatrix.ImatrixError, match="nor a legacy imatrix with entries"):
        imatrix.load(str(empty), gqa16)


def test_command_refuses_what_it_cannot_run(tmp_path, capsys, converted):
    out = tmp_path / "out.imatrix.gguf"
    short = tmp_path / "short.txt"
    short.write_text("def f(): pass\n")
    model = converted("main", "q8")
    cases = [(["--model", model, "--text", str(short)], "needs at least 1024: give a longer text or a smaller --ctx"),
             (["--model", model, "--text", TEXT, "--ctx", "0"], "--ctx must be at least 4"),
             (["--model", model, "--text", TEXT, "--chunks", "0"], "--chunks must be at least 1"),
             (["--model", str(short), "--text", TEXT], "short.txt"),
             (["--model", model, "--text", str(tmp_path / "none.txt")], "none.txt")]
    for args, message in cases:
        assert imatrix.main(args + ["-o", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("moecc-imatrix: error: ") and message in err[0], err
        assert not out.exists()


def test_command_on_a_quantized_file(tmp_path, converted):
    """--chunks and --ctx on a q8 .moecc: the windows and the file's metadata."""
    out = str(tmp_path / "q8.imatrix.gguf")
    assert imatrix.main(["--model", converted("main", "q8"), "--text", TEXT, "-o", out, "--ctx", "128",
                         "--chunks", "3", "--threads", "2"]) == 0
    got = imatrix.read(out)
    assert (got.chunk_count, got.chunk_size, got.datasets) == (3, 128, [TEXT])
    assert got.entries["blk.0.attn_q.weight"].counts[0] == 3 * 128
    assert got.entries["blk.0.ffn_gate_exps.weight"].counts.sum() == 3 * 128 * 2  # top-2
    cfg = moecc.load(converted("main", "q8"), threads=1, ctx=64).config
    assert len(imatrix.load(out, cfg)) == sum(s.role in imatrix.IMPORTANCE_ROLES for s in tensor_specs(cfg))


# ---- moecc-convert --imatrix ---------------------------------------------------------------------


def test_convert_takes_an_imatrix(tmp_path, capsys):
    """moecc-convert --imatrix: llama-imatrix's file of gqa16 weights gqa16's conversion (the
    header records it); the same file given to another model's conversion is refused, naming
    the mismatch, and nothing is written."""
    from moecc import convert
    from moecc.formats import moecc_file
    out = tmp_path / "gqa16-q4_k_m.moecc"
    hf = os.path.join(FIXTURES, "gqa16", "hf")
    assert convert.main([hf, "-o", str(out), "--quant", "q4_k_m", "--imatrix", LLAMA_IMATRIX + ".gguf", "--quiet"]) == 0
    f = moecc_file.ModelFile(str(out))
    try:
        assert f.writer_info["quant"] == "q4_k_m" and f.writer_info["importance"] is True
    finally:
        f.close()
    other = tmp_path / "main-q4_k_m.moecc"
    capsys.readouterr()
    assert convert.main([os.path.join(FIXTURES, "main", "hf"), "-o", str(other), "--quant", "q4_k_m",
                         "--imatrix", LLAMA_IMATRIX + ".gguf", "--quiet"]) == 2
    assert "the imatrix was made for another model" in capsys.readouterr().err
    assert not other.exists()
