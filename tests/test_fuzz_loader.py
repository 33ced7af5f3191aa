"""Property-based fuzzing of the loader: a mutated header or tensor table may be refused, but
loading and running never crash the process (a crash here kills the test run)."""
import json
import os
import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moecc
from moecc.formats import FormatError, moecc_file
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
