"""Property-based fuzzing of the loader: a mutated header or tensor table may be refused, but
loading and running never crash the process (a crash here kills the test run).

An f32 / bf16 file (the odd fixture), and q8 and q4 files (the main fixture: moecc-convert stores
its q4 matrices as q4p panels, the embedding as q4 rows), whose quantized entries get their
dtype, group_size and shape changed, with or without the size that would go with them (so the
change gets past the size check to the config checks and the kernels)."""
import functools
import json
import os
import re
import shutil
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import moecc
from moecc import storage
from moecc.formats import FormatError
from moecc.config import ConfigError

INTERESTING_INTS = st.one_of(st.integers(-2**40, 2**40), st.sampled_from([0, 1, -1, 2**31, 2**63 - 1, 64, 4096]))
VALUES = st.one_of(INTERESTING_INTS, st.floats(allow_nan=True), st.text(max_size=8), st.none(),
                   st.lists(INTERESTING_INTS, max_size=4), st.sampled_from(["f32", "bf16", "q8", "q4", "i8"]))


def _split(data: bytes):
    _, _, _, length, data_offset = struct.unpack_from("<8sIIQQ", data)
    return json.loads(data[32:32 + length]), data_offset


def _mutate(header: dict, draw) -> dict:
    where = draw(st.sampled_from(["config", "tensor", "file", "drop_tensor"]))
    if where == "config":
        key = draw(st.sampled_from(sorted(header["config"])))
        header["config"][key] = draw(VALUES)
    elif where == "tensor":
        entry = draw(st.sampled_from(header["tensors"]))
        key = draw(st.sampled_from(["offset", "size", "shape", "dtype", "group_size", "name"]))
        entry[key] = draw(VALUES)
    elif where == "file":
        entry = draw(st.sampled_from(header["files"]))
        entry[draw(st.sampled_from(["offset", "size", "name"]))] = draw(VALUES)
    else:
        header["tensors"].pop(draw(st.integers(0, len(header["tensors"]) - 1)))
    return header


@settings(max_examples=int(os.environ.get("MOECC_FUZZ_EXAMPLES", 150)), deadline=None, derandomize=not os.environ.get("MOECC_FUZZ_EXAMPLES"),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_headers_never_crash(converted, tmp_path_factory, data):
    source = open(converted("odd", "bf16"), "rb").read()
    header, data_offset = _split(source)
    for _ in range(data.draw(st.integers(1, 3))):
        header = _mutate(header, data.draw)
    blob = json.dumps(header, separators=(",", ":")).encode()
    assert 32 + len(blob) <= data_offset  # the header may grow into the padding before the data
    mutated = bytearray(source)
    struct.pack_into("<Q", mutated, 16, len(blob))
    mutated[32:data_offset] = blob + bytes(data_offset - 32 - len(blob))
    path = tmp_path_factory.mktemp("fuzz") / "m.moecc"
    path.write_bytes(bytes(mutated))
    try:
        model = moecc.load(path, threads=1, ctx=64)
    except (FormatError, ConfigError, ValueError):
        return
    logits = model.logits([1, 2, 3])  # whatever loaded must also run
    assert logits.shape == (3, model.config.vocab_size)


# ---- q8 / q4 files ---------------------------------------------------------------------------

QUANTIZED = ("q8", "q4", "q4p")
DTYPE_SWAPS = st.sampled_from(["q4", "q4p", "q8", "f32", "bf16", "q5", "", None, 4])
GROUP_SIZES = st.one_of(st.sampled_from([32, 64, 128, 256]),
                        st.sampled_from([0, 17, 16, 31, 512, -32, 2**31, 2**63 - 1]),
                        st.integers(-2**40, 2**40), st.sampled_from(["32", 32.0, 32.5, None, [32]]))
# a format for a whole MLP: mostly one the loader takes, so that the kernels run it
FORMATS = st.one_of(st.sampled_from([("q8", 32), ("q8", 64), ("q8", 256), ("q4", 32), ("q4", 64),
                                     ("q4", 128), ("q4p", 32), ("q4p", 64)]),
                    st.tuples(st.sampled_from(QUANTIZED), GROUP_SIZES))


def _rows_and_cols(draw, shape):
    """shape with its rows (a q4p entry needs a multiple of 16) or its row length changed, a
    dimension dropped or added, or any value"""
    shape = list(shape) if isinstance(shape, list) else [shape]  # an earlier mutation's value
    how = draw(st.sampled_from(["rows", "cols", "drop", "add", "any"]))
    if how in ("rows", "cols") and len(shape) >= 2 and isinstance(shape[-2 if how == "rows" else -1], int):
        at = -2 if how == "rows" else -1
        n = shape[at]
        shape[at] = draw(st.sampled_from([n - 1, n + 1, n + 8, n + 16, n - 16, n // 2, n * 2, 1, 0, -n, 2**40]))
    elif how == "drop" and len(shape) > 1:
        shape.pop(draw(st.integers(0, len(shape) - 1)))
    elif how == "add":
        shape.insert(draw(st.integers(0, len(shape))), draw(st.sampled_from([1, 2, 16])))
    else:
        shape = draw(VALUES)
    return shape


def _consistent_size(entry):
    """entry["size"] set to what its (possibly mutated) dtype, shape and group_size imply, if
    they imply one (else left as it was)"""
    try:
        entry["size"] = storage.get(entry["dtype"]).tensor_bytes(tuple(int(s) for s in entry["shape"]))
    except (KeyError, IndexError, TypeError, ValueError, OverflowError):
        pass


def _mutate_quantized(header: dict, draw) -> dict:
    quantized = [e for e in header["tensors"]  # (an earlier mutation may have renamed one)
                 if isinstance(e.get("name"), str) and e.get("dtype") in QUANTIZED]
    where = draw(st.sampled_from(["dtype", "group_size", "shape", "mlp", "mlp", "other"]))
    if where == "other":  # the mutations of the f32 / bf16 fuzzer
        return _mutate(header, draw)
    if where == "mlp":  # a whole MLP in one other format, as the kernel reads it
        layer = draw(st.sampled_from(sorted({e["name"].split(".mlp.")[0] for e in quantized
                                             if ".mlp." in e["name"]})))
        dtype, group = draw(FORMATS)
        for e in quantized:
            if e["name"].startswith(layer + ".mlp."):
                e["dtype"], e["group_size"] = dtype, group
                _consistent_size(e)
    else:
        e = draw(st.sampled_from(quantized))
        if where == "dtype":
            e["dtype"] = draw(DTYPE_SWAPS)
        elif where == "group_size":
            if draw(st.booleans()):
                e["group_size"] = draw(GROUP_SIZES)
            else:
                e.pop("group_size", None)
        else:
            e["shape"] = _rows_and_cols(draw, e["shape"])
        if draw(st.booleans()):
            _consistent_size(e)
    return header


@functools.lru_cache(maxsize=None)
def _source_header(source: str) -> tuple[str, int]:
    with open(source, "rb") as f:
        header, data_offset = _split(f.read(65536))
    return json.dumps(header), data_offset


@functools.lru_cache(maxsize=None)
def _workfile(source: str, tmp: str) -> str:
    """a copy of source whose header the examples overwrite in place (one copy per source: the
    data section is never touched, so no example rewrites megabytes)"""
    path = os.path.join(tmp, os.path.basename(source))
    shutil.copy(source, path)
    return path


def _rewrite_header(path: str, header: dict, data_offset: int) -> None:
    blob = json.dumps(header, separators=(",", ":")).encode()
    assert 32 + len(blob) <= data_offset  # the header may grow into the padding before the data
    with open(path, "r+b") as f:
        f.seek(16)
        f.write(struct.pack("<Q", len(blob)))
        f.seek(32)
        f.write(blob + bytes(data_offset - 32 - len(blob)))


def _load_and_run(path, threads) -> str:
    """What became of the file: refused (why, numbers and tensor names left out), or loaded and
    run through a prefill and a decode step. (The callers use one thread: the kernels' splits
    across threads have their own tests in test_kernels, and on a busy machine each parallel
    region of a 2-thread run can wait for a core, ~10x slower.)"""
    try:
        model = moecc.load(path, threads=threads, ctx=64)
    except (FormatError, ConfigError, ValueError) as e:
        why = re.sub(r"(model|lm_head)\.[\w.]+", "<tensor>", str(e).replace(str(path), "<file>"))
        return f"refused: {type(e).__name__}: " + re.sub(r"-?\b\d+\b", "N", why)[:90]
    try:
        for ids in ([1, 2, 3], [5]):  # prefill (moe by rows), then one token (decode: by expert)
            logits = model.logits(ids)  # whatever loaded must also run
            assert logits.shape == (len(ids), model.config.vocab_size)
    finally:
        model.close()
    return "ran"


@pytest.mark.parametrize("quant", ["q8", "q4"])
@settings(max_examples=int(os.environ.get("MOECC_FUZZ_EXAMPLES", 100)), deadline=None,
          derandomize=not os.environ.get("MOECC_FUZZ_EXAMPLES"),
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_quantized_headers_never_crash(converted, tmp_path_factory, quant, data):
    source = converted("main", quant)
    path = _workfile(source, str(tmp_path_factory.getbasetemp()))
    blob, data_offset = _source_header(source)
    header = json.loads(blob)
    for _ in range(data.draw(st.integers(1, 2))):
        header = _mutate_quantized(header, data.draw)
    _rewrite_header(path, header, data_offset)
    event(_load_and_run(path, threads=1))  # the outcomes: pytest --hypothesis-show-statistics


def _edit(pattern, fix_size=True, **fields):
    """an edit of every tensor entry whose name matches pattern: fields set (None: removed),
    then (fix_size) the size that goes with them"""
    def apply(header):
        hits = [e for e in header["tensors"] if re.fullmatch(pattern, e["name"])]
        assert hits, pattern
        for e in hits:
            for key, value in fields.items():
                if value is None:
                    e.pop(key, None)
                else:
                    e[key] = value
            if fix_size:
                _consistent_size(e)
        return header
    return apply


ATTN_Q = r"model\.layers\.0\.self_attn\.q_proj\.weight"
EMBED, LM_HEAD = r"model\.embed_tokens\.weight", r"lm_head\.weight"
MLP0, MLP1 = r"model\.layers\.0\.mlp\.experts\.\w+", r"model\.layers\.1\.mlp\.\w+_proj\.weight"
# (file, edit, outcome): "refused" where the format forbids the entry, "runs" where nothing in the
# header can tell it from a good one (the kernels then read bytes of another layout: numbers
# change, the process must not crash), None where either is fine
QUANTIZED_EDITS = {
    "q4p-rows-not-x16": ("q4", _edit(LM_HEAD, shape=[760, 256]), "refused"),
    "q4p-rows-not-x16-stack": ("q4", _edit(MLP0.replace(r"\w+", "up_proj"), shape=[8, 250, 256]), "refused"),
    "q4p-group-0": ("q4", _edit(ATTN_Q, group_size=0), None),  # format 2 writes none; 0 says the same
    "q4p-group-17": ("q4", _edit(ATTN_Q, group_size=17), "refused"),
    "q4p-group-64": ("q4", _edit(ATTN_Q, group_size=64), "refused"),
    "q4p-group-32-as-text": ("q4", _edit(ATTN_Q, group_size="32"), "refused"),
    "q4p-as-q4": ("q4", _edit(ATTN_Q, dtype="q4"), "runs"),
    "q4p-lm-head-as-q4": ("q4", _edit(LM_HEAD, dtype="q4"), "runs"),
    "q4p-mlp-as-q4": ("q4", _edit(MLP0, dtype="q4"), "runs"),
    "q4p-dense-mlp-as-q4-g64": ("q4", _edit(MLP1, dtype="q4", group_size=64), None),
    "q4p-dense-mlp-as-q4-g256": ("q4", _edit(MLP1, dtype="q4", group_size=256), None),
    "q4p-mlp-as-q8": ("q4", _edit(MLP0, dtype="q8"), None),  # larger: overlaps the next tensor
    "q4p-down-only-as-q4": ("q4", _edit(MLP0.replace(r"\w+", "down_proj"), dtype="q4"), "runs"),
    "q4p-gate-only-as-q4": ("q4", _edit(MLP0.replace(r"\w+", "gate_proj"), dtype="q4"), "refused"),
    "q4-embed-as-q4p": ("q4", _edit(EMBED, dtype="q4p"), "refused"),
    "q4-embed-rows-as-text": ("q4", _edit(EMBED, shape=["768", 256]), "refused"),
    "q4-embed-group-17": ("q4", _edit(EMBED, group_size=17), "refused"),
    "q4-embed-group-64": ("q4", _edit(EMBED, group_size=64), "refused"),
    "q4-embed-group-64-size-kept": ("q4", _edit(EMBED, fix_size=False, group_size=64), "refused"),
    "q4-embed-group-256": ("q4", _edit(EMBED, group_size=256), None),
    "q4-embed-as-q8": ("q4", _edit(EMBED, dtype="q8"), None),
    "q8-offset-as-float": ("q8", _edit(ATTN_Q, offset=0.0), "refused"),
    "q8-group-17": ("q8", _edit(ATTN_Q, group_size=17), "refused"),
    "q8-group-64": ("q8", _edit(ATTN_Q, group_size=64), None),
    "q8-group-64-size-kept": ("q8", _edit(ATTN_Q, fix_size=False, group_size=64), "refused"),
    "q8-embed-group-256": ("q8", _edit(EMBED, group_size=256), None),
    "q8-mlp-group-128": ("q8", _edit(MLP0, group_size=128), None),
    "q8-dense-mlp-group-256": ("q8", _edit(MLP1, group_size=256), None),
    "q8-as-q4": ("q8", _edit(ATTN_Q, dtype="q4"), None),
    "q8-as-q4-size-kept": ("q8", _edit(ATTN_Q, fix_size=False, dtype="q4"), "refused"),
    "q8-lm-head-as-q4p": ("q8", _edit(LM_HEAD, dtype="q4p"), None),
    "q8-mlp-as-q4p": ("q8", _edit(MLP0, dtype="q4p"), None),
    "q8-mlp-as-q4-g64": ("q8", _edit(MLP0, dtype="q4", group_size=64), None),
    "q8-embed-as-q4p": ("q8", _edit(EMBED, dtype="q4p"), "refused"),
    "q8-as-q4p-group-32-rows-15": ("q8", _edit(ATTN_Q, dtype="q4p", shape=[500, 256]), "refused"),
}


@pytest.mark.parametrize("case", sorted(QUANTIZED_EDITS))
def test_quantized_entry_edits(converted, tmp_path, case):
    quant, edit, outcome = QUANTIZED_EDITS[case]
    source = converted("main", quant)
    path = str(tmp_path / "m.moecc")
    shutil.copy(source, path)
    blob, data_offset = _source_header(source)
    _rewrite_header(path, edit(json.loads(blob)), data_offset)
    got = _load_and_run(path, threads=1)
    if outcome is not None:
        assert (got == "ran") == (outcome == "runs"), got
