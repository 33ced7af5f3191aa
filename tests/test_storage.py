"""The table of storage types: spelled once in Python (moecc.storage) and once in C (storage.c);
the two must agree row for row, and the sizes follow from it."""
import numpy as np
import pytest

from moecc import _kernels as K
from moecc import storage


def test_c_table_equals_python_table():
    c_rows = K.storage_types()
    assert [r["name"] for r in c_rows] == list(storage.TYPES)
    for row in c_rows:
        t = storage.TYPES[row["name"]]
        assert (row["code"], row["block_values"], row["block_bytes"], row["panel_rows"], row["row_lookup"],
                row["quantized_activations"]) == (t.code, t.block_values, t.block_bytes, t.panel_rows,
                                                  t.row_lookup, t.quantized_activations), t.name


@pytest.mark.parametrize("name,bits", [("f32", 32), ("bf16", 16), ("f16", 16), ("q8", 8.5), ("q4", 4.5),
                                       ("q4p", 4.5)])
def test_bits_per_weight(name, bits):
    assert storage.get(name).bits_per_weight == bits


@pytest.mark.parametrize("name", list(storage.TYPES))
@pytest.mark.parametrize("K_", [32, 96, 2048])
def test_row_bytes_agree_with_the_kernels(name, K_):
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
