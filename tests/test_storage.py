"""The table of storage types: spelled once in Python (moecc.storage) and once in C (storage.c);
the two must agree row for row, and the sizes follow from it.  And the q8 / q4 encoders
(moecc.quant.quantize) checked against ggml's reference quantizers, transcribed here on their
own, and against blocks worked out by hand."""
import math
import struct

import numpy as np
import pytest

from moecc import _kernels as K
from moecc import quant, storage


def test_c_table_equals_python_table():
    c_rows = K.storage_types()
    assert [r["name"] for r in c_rows] == list(storage.TYPES)
    for row in c_rows:
        t = storage.TYPES[row["name"]]
        assert (row["code"], row["block_values"], row["block_bytes"], row["panel_rows"], row["row_lookup"],
                row["activations"]) == (t.code, t.block_values, t.block_bytes, t.panel_rows,
                                        t.row_lookup, t.activations), t.name


@pytest.mark.parametrize("name,bits", [("f32", 32), ("bf16", 16), ("f16", 16), ("q8", 8.5), ("q4", 4.5),
                                       ("q4p", 4.5), ("q4_k", 4.5), ("q5_k", 5.5), ("q6_k", 6.5625)])
def test_bits_per_weight(name, bits):
    assert storage.get(name).bits_per_weight == bits


@pytest.mark.parametrize("name", list(storage.TYPES))
@pytest.mark.parametrize("K_", [32, 96, 256, 2048])
def test_row_bytes_agree_with_the_kernels(name, K_):
    if K_ % storage.get(name).block_values:
        with pytest.raises(ValueError, match=f"blocks of {storage.get(name).block_values} values"):
            K.row_bytes(name, K_)
        with pytest.raises(storage.StorageError, match="not a whole number"):
            storage.get(name).row_bytes(K_)
    else:
        assert K.row_bytes(name, K_) == storage.get(name).row_bytes(K_)


def test_shape_problems_name_the_rule():
    assert storage.get("q8").shape_problem((3, 64)) is None
    assert "blocks of 32" in storage.get("q8").shape_problem((3, 48))
    assert "multiple of 16 rows" in storage.get("q4p").shape_problem((24, 64))
    assert storage.get("q4p").shape_problem((32, 64)) is None
    assert storage.get("f32").shape_problem((3, 5)) is None
    assert storage.get("q4").tensor_bytes((2, 3, 64)) == 6 * 36
    with pytest.raises(storage.StorageError, match="unknown storage type 'q5'"):
        storage.get("q5")


def test_view_shape():
    assert storage.get("q4p").view_shape((8, 16, 64)) == (8, 16, 36)
    assert storage.get("bf16").view_shape((5, 7)) == (5, 7)
    assert storage.get("f32").view_dtype == np.float32


# ---- q8 / q4: ggml's Q8_0 / Q4_0 blocks, byte for byte ------------------------------------------


def fp16_bytes(v: np.float32) -> bytes:
    with np.errstate(over="ignore"):  # GGML_FP32_TO_FP16 rounds to nearest even, inf past 65504
        return np.float16(v).tobytes()


def ggml_q8_0(x: np.ndarray) -> bytes:
    """ggml-quants.c quantize_row_q8_0_ref, statement by statement, on float32 scalars."""
    out = bytearray()
    for blk in np.asarray(x, np.float32).reshape(-1, 32):
        amax = np.float32(0)
        for v in blk:
            amax = amax if amax > abs(v) else abs(v)  # MAX(amax, fabsf(v))
        d = amax / np.float32(127)
        inv = np.float32(1) / d if d else np.float32(0)
        out += fp16_bytes(d)
        for v in blk:
            x0 = float(v * inv)  # a float32 product
            out += struct.pack("b", int(math.copysign(math.floor(abs(x0) + 0.5), x0)))  # roundf
    return bytes(out)


def ggml_q4_0(x: np.ndarray) -> bytes:
    """ggml-quants.c quantize_row_q4_0_ref, statement by statement, on float32 scalars (the
    multiply and the add of 8.5 rounded apart, as C without FMA contraction does)."""
    out = bytearray()
    for blk in np.asarray(x, np.float32).reshape(-1, 32):
        amax = mx = np.float32(0)
        for v in blk:
            if amax < abs(v):
                amax, mx = abs(v), v
        d = mx / np.float32(-8)
        inv = np.float32(1) / d if d else np.float32(0)
        out += fp16_bytes(d)
        for j in range(16):
            lo = min(15, int(blk[j] * inv + np.float32(8.5)))  # (int8_t) truncates toward 0
            hi = min(15, int(blk[16 + j] * inv + np.float32(8.5)))
            out.append(lo | hi << 4)
    return bytes(out)


GGML = {"q8": ggml_q8_0, "q4": ggml_q4_0}


def tie_blocks(name: str) -> np.ndarray:
    """Blocks whose values land exactly on halves of a step (roundf and ggml's + 8.5 round them
    away from zero / up, round-half-even would not), at scales 2^-20 .. 2^20 (exact)."""
    if name == "q8":  # amax 127: d = 1
        block = np.concatenate([[127.0], np.arange(-62, 62, 4) + 0.5])
    else:  # m = -8: d = 1
        block = np.concatenate([[-8.0], np.arange(-8, 7) + 0.5, np.arange(-8, 8) + 0.5])
    return np.stack([block.astype(np.float32) * np.float32(2.0 ** e) for e in range(-20, 21, 5)])


@pytest.mark.parametrize("name", ["q8", "q4"])
def test_quantize_is_ggml_reference(name):
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.standard_normal((6, 96)) * 10.0 ** rng.uniform(-6, 6, (6, 1)),  # all magnitudes
                        rng.integers(-20, 21, (6, 96)) / 4,  # values on a coarse grid: many ties
                        tie_blocks(name).reshape(-1, 96)]).astype(np.float32)
    x[0, :32] = 0                            # an all-zero block
    x[1, :32] = -0.0
    x[2, 40] = 3e4                           # one value far above the rest
    x[3, 70] = -1e30                         # d past fp16's range: inf, as ggml stores it
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        expected = b"".join(GGML[name](row) for row in x)
    assert quant.quantize(x, name).tobytes() == expected


def test_q8_block_by_hand():
    x = np.zeros(32, np.float32)
    x[:6] = [127, -63.5, 2.5, -2.5, 0.49, 0.5]  # d = 1: halves round away from zero
    got = quant.quantize(x[None], "q8")[0].tobytes()
    assert got.hex() == "003c" + "7fc003fd0001" + "00" * 26
    assert quant.dequantize(np.frombuffer(got, np.uint8)[None], "q8", 32)[0, :6].tolist() == [127, -64, 3, -3, 0, 1]


def test_q4_block_by_hand():
    x = np.zeros(32, np.float32)
    x[:6] = [-8, 0.5, -0.5, -1.5, 7.4, 3.2]  # m = -8 (the first of largest magnitude): d = 1
    x[16:20] = [8, -7.6, 2.5, -2.5]  # +8 -> nibble 16, kept at 15
    # nibble = min(15, trunc(x + 8.5)): 0, 9, 8, 7, 15, 11 | 15, 0, 11, 6; zeros -> 8
    expected = "f0" "09" "b8" "67" "8f" "8b" + "88" * 10
    assert quant.quantize(x[None], "q4")[0].tobytes().hex() == "003c" + expected
    # the block negated: m = +8, d = -1, the same nibbles
    assert quant.quantize(-x[None], "q4")[0].tobytes().hex() == "00bc" + expected


def test_zero_blocks():
    assert quant.quantize(np.zeros((1, 32), np.float32), "q8").tobytes() == bytes(34)
    # ggml's q4_0: d = 0 / -8 = -0 (0x8000), every value 0 + 8
    assert quant.quantize(np.zeros((1, 32), np.float32), "q4").tobytes().hex() == "0080" + "88" * 16


@pytest.mark.parametrize("name", ["q8", "q4"])
def test_one_huge_value(name):
    x = np.full((1, 32), 1e-3, np.float32)
    x[0, 5] = 3e4
    stored = quant.quantize(x, name)
    back = quant.dequantize(stored, name, 32)[0]
    d = float(quant.disassemble(stored, name)[0][0, 0])
    assert abs(d) == pytest.approx(3e4 / (127 if name == "q8" else 8), rel=1e-3)
    assert abs(back[5] - 3e4) <= abs(d) / 2 + 127 * abs(d) * 2.0 ** -11  # the value, within a step (+ d's fp16 rounding)
    assert np.all(np.delete(back, 5) == 0)  # the rest below half a step


@pytest.mark.parametrize("name", ["q8", "q4"])
def test_round_trip_within_half_a_step(name):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((64, 128)) * 10.0 ** rng.uniform(-2, 4, (64, 1))).astype(np.float32)
    stored = quant.quantize(x, name)
    back = quant.dequantize(stored, name, 128).astype(np.float64)
    blocks = x.reshape(64, 4, 32).astype(np.float64)
    d16 = quant.disassemble(stored, name)[0].astype(np.float64)[..., None]
    if name == "q8":
        d32 = np.abs(blocks).max(-1, keepdims=True) / 127
        beyond = 0
    else:  # d = m / -8; only values on the side opposite m reach past 7.5 steps (kept at 7)
        m = np.take_along_axis(blocks, np.abs(blocks).argmax(-1)[..., None], -1)
        d32 = m / -8
        beyond = np.maximum(0, np.abs(blocks) - 7 * np.abs(d32))
    q = np.round(back.reshape(blocks.shape) / d16)
    bound = np.maximum(np.abs(d32) / 2, beyond) + np.abs(q) * np.abs(d16 - d32) + 1e-6 * np.abs(d32)
    assert np.all(np.abs(back.reshape(blocks.shape) - blocks) <= bound)


def test_assemble_puts_each_scale_before_its_values():
    values = np.arange(2 * 96, dtype=np.uint16).astype(np.uint8).reshape(2, 96)
    scales = np.array([[1, 2, 3], [4, 5, 6]], np.float16)
    rows = quant.assemble("q8", values, scales)
    assert rows.shape == (2, 102)
    assert rows[1, 34:36].view(np.float16)[0] == 5 and rows[1, 36:68].tolist() == values[1, 32:64].tolist()
    d, qs = quant.disassemble(rows, "q8")
    assert np.array_equal(d, scales) and np.array_equal(qs.reshape(2, 96), values)
    rows = quant.assemble("q4", values[:, :48], scales)
    assert rows.shape == (2, 54) and rows[0, 18:20].view(np.float16)[0] == 2
    assert rows[0, 20:36].tolist() == values[0, 16:32].tolist()
