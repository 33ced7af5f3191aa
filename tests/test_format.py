"""The .moecc container: a damaged file is refused with a clear message before any view exists."""
import json
import os
import shutil
import struct

import pytest

import moecc
from moecc.formats import FormatError, moecc_file


def _damaged(tmp_path, source, edit):
    path = tmp_path / "damaged.moecc"
    shutil.copy(source, path)
    data = bytearray(path.read_bytes())
    data = edit(data)
    path.write_bytes(bytes(data))
    return path


def _header(data: bytearray) -> tuple[dict, int, int]:
    _, _, _, length, data_offset = struct.unpack_from("<8sIIQQ", data)
    return json.loads(bytes(data[32:32 + length])), length, data_offset


def _with_header(data: bytearray, header: dict) -> bytearray:
    _, length, _ = _header(data)
    blob = json.dumps(header, separators=(",", ":")).encode()
    assert len(blob) <= length
    data[32:32 + length] = blob + b" " * (length - len(blob))
    return data


def test_missing_file(tmp_path):
    with pytest.raises(FormatError, match="no such file"):
        moecc.load(tmp_path / "nope.moecc")


def test_empty_file(tmp_path):
    (tmp_path / "e.moecc").write_bytes(b"")
    with pytest.raises(FormatError, match="too short"):
        moecc.load(tmp_path / "e.moecc")


def test_wrong_magic(tmp_path, converted):
    path = _damaged(tmp_path, converted("odd", "bf16"), lambda d: b"ABCD" + d[4:])
    with pytest.raises(FormatError, match="not a .moecc file .* nor a GGUF file"):
        moecc.load(path)


def test_gguf_magic_goes_to_the_gguf_reader(tmp_path, converted):
    path = _damaged(tmp_path, converted("odd", "bf16"), lambda d: b"GGUF" + d[4:])
    with pytest.raises(FormatError, match="is a damaged or truncated GGUF file"):
        moecc.load(path)


def test_newer_version(tmp_path, converted):
    def bump(d):
        struct.pack_into("<I", d, 8, moecc_file.VERSION + 1)
        return d
    with pytest.raises(FormatError, match="upgrade moecc"):
        moecc.load(_damaged(tmp_path, converted("odd", "bf16"), bump))


def _version_1(d):
    struct.pack_into("<I", d, 8, 1)
    return d


def test_version_1_q8_q4_refused(tmp_path, converted):
    # format 1 stored a q8 / q4 row's values first and its scales at the end
    with pytest.raises(FormatError, match=r"format-1 file with q8 tensors.*ggml's Q8_0 / Q4_0 blocks"):
        moecc.load(_damaged(tmp_path, converted("main", "q8"), _version_1))


def test_version_1_without_q8_q4_read(tmp_path, converted):
    with moecc.load(_damaged(tmp_path, converted("odd", "bf16"), _version_1)):
        pass


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.01])
def test_truncated(tmp_path, converted, keep):
    source = converted("odd", "bf16")
    size = os.path.getsize(source)
    path = _damaged(tmp_path, source, lambda d: d[:int(size * keep)])
    with pytest.raises(FormatError, match="truncated|past the end|data offset"):
        moecc.load(path)


def test_corrupt_header_json(tmp_path, converted):
    def corrupt(d):
        d[40:48] = b"\xff{{{{{{{"
        return d
    with pytest.raises(FormatError, match="not valid JSON"):
        moecc.load(_damaged(tmp_path, converted("odd", "bf16"), corrupt))


def test_offset_past_the_end(tmp_path, converted):
    def move(d):
        header, _, data_offset = _header(d)
        header["tensors"][1]["offset"] = len(d) - data_offset - 64
        return _with_header(d, header)
    with pytest.raises(FormatError, match="past the end"):
        moecc.load(_damaged(tmp_path, converted("odd", "bf16"), move))


def test_overlapping_tensors(tmp_path, converted):
    def overlap(d):
        header, _, _ = _header(d)
        header["tensors"][2]["offset"] = header["tensors"][1]["offset"]
        return _with_header(d, header)
    with pytest.raises(FormatError, match="overlap"):
        moecc.load(_damaged(tmp_path, converted("odd", "bf16"), overlap))


def test_size_disagreeing_with_shape(tmp_path, converted):
    def shrink(d):
        header, _, _ = _header(d)
        header["tensors"][1]["size"] -= 2
        return _with_header(d, header)
    with pytest.raises(FormatError, match="needs"):
        moecc.load(_damaged(tmp_path, converted("odd", "bf16"), shrink))


def test_tensor_table_disagreeing_with_config(tmp_path, converted):
    def more_layers(d):
        header, _, _ = _header(d)
        header["config"]["num_hidden_layers"] += 1
        return _with_header(d, header)
    with pytest.raises(FormatError, match="missing"):
        moecc.load(_damaged(tmp_path, converted("odd", "bf16"), more_layers))


def _retyped(name: str, dtype: str):
    def edit(d):
        header, _, _ = _header(d)
        next(t for t in header["tensors"] if t["name"] == name)["dtype"] = dtype
        return _with_header(d, header)
    return edit


def test_embedding_in_panels_is_refused(tmp_path, converted):
    with pytest.raises(FormatError, match="cannot be looked up"):
        moecc.load(_damaged(tmp_path, converted("main", "q4"), _retyped("model.embed_tokens.weight", "q4p")))


def test_gate_and_up_of_different_storage_are_refused(tmp_path, converted):
    edit = _retyped("model.layers.0.mlp.experts.gate_proj", "q4")
    with pytest.raises(FormatError, match="gate and up must share a storage type"):
        moecc.load(_damaged(tmp_path, converted("main", "q4"), edit))


def test_damaged_data_found_by_verify(tmp_path, converted):
    source = converted("odd", "bf16")
    def flip(d):
        d[-100] ^= 0xFF
        return d
    mf = moecc_file.ModelFile(_damaged(tmp_path, source, flip))
    assert len(mf.verify()) == 1
    mf.close()
    clean = moecc_file.ModelFile(source)
    assert clean.verify() == []
    clean.close()


def test_inspect_reports_classes_and_verifies(converted, capsys, tmp_path):
    from moecc import inspect_file
    path = converted("main", "bf16")
    assert inspect_file.main([path, "--json", "--verify"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["damaged"] == []
    assert info["classes"]["experts"]["dtypes"] == ["bf16"] and info["classes"]["norm"]["dtypes"] == ["f32"]
    assert info["classes"]["experts"]["bits_per_weight"] == 16
    damaged = _damaged(tmp_path, path, lambda d: d[:-100] + bytes([d[-100] ^ 1]) + d[-99:])
    assert inspect_file.main([str(damaged), "--verify"]) == 1
    assert "DAMAGED" in capsys.readouterr().out
    assert inspect_file.main([str(tmp_path / "missing.moecc")]) == 2


def test_random_bytes(tmp_path):
    path = tmp_path / "random.moecc"
    path.write_bytes(os.urandom(1 << 16))
    with pytest.raises(FormatError, match="not a .moecc file"):
        moecc.load(path)


def test_a_folder_instead_of_a_file(tmp_path):
    with pytest.raises(FormatError, match="is a folder"):
        moecc.load(tmp_path)
