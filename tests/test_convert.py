"""moecc-convert: every tensor equals its source; bad checkpoints are refused by name."""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest

from moecc import convert, quant
from moecc.formats import FormatError, moecc_file
from moecc.formats.huggingface import Checkpoint
from moecc.config import tensor_specs


def _source_expert(ckpt: Checkpoint, name: str, e: int) -> np.ndarray:
    """Expert e of a stacked .moecc tensor, read from the checkpoint in either layout, as float32."""
    prefix, projection = name.rsplit(".", 1)
    per_expert = f"{prefix}.{e}.{projection}.weight"
    if ckpt.has(per_expert):
        return quant.source_to_f32(ckpt.tensor(per_expert), ckpt.source_dtype(per_expert))
    if projection == "down_proj":
        return quant.source_to_f32(ckpt.tensor(prefix + ".down_proj")[e], ckpt.source_dtype(prefix + ".down_proj"))
    fused = quant.source_to_f32(ckpt.tensor(prefix + ".gate_up_proj")[e], ckpt.source_dtype(prefix + ".gate_up_proj"))
    rows = fused.shape[0] // 2
    return fused[:rows] if projection == "gate_proj" else fused[rows:]


@pytest.mark.parametrize("quant_type", ["f32", "bf16"])
def test_round_trip_every_tensor_equals_its_source(reference, converted, quant_type):
    ckpt = Checkpoint(reference.hf_dir)
    mf = moecc_file.ModelFile(converted(reference.case, quant_type))
    specs = tensor_specs(ckpt.config)
    assert sorted(mf.tensors) == sorted(s.name for s in specs)
    for spec in specs:
        stored = quant.decode(mf.tensor(spec.name), mf.tensors[spec.name].dtype)
        assert stored.shape == spec.shape
        if spec.role == "experts":
            for e in range(spec.shape[0]):
                np.testing.assert_array_equal(stored[e], _source_expert(ckpt, spec.name, e), err_msg=spec.name)
        else:
            source = quant.source_to_f32(ckpt.tensor(spec.name), ckpt.source_dtype(spec.name))
            np.testing.assert_array_equal(stored, source, err_msg=spec.name)
        expected_dtype = "f32" if spec.role in ("norm", "router") else quant_type
        assert mf.tensors[spec.name].dtype == expected_dtype
    assert mf.verify() == []
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        with open(os.path.join(reference.hf_dir, name), "rb") as f:
            assert mf.file_bytes(name) == f.read()
    mf.close()


def test_q4_stores_the_oracles_bytes_in_panels_where_it_can(tmp_path):
    """Every q4 tensor is quant.quantize of its source, bit for bit: q4p panels for the matrices
    that are only multiplied, q4 rows for the embedding (looked up by row)."""
    hf = os.path.join(os.path.dirname(__file__), "fixtures", "main", "hf")
    out = tmp_path / "q4.moecc"
    convert.convert(hf, str(out), convert.StoragePlan("q4"), progress=False)
    ckpt = Checkpoint(hf)
    mf = moecc_file.ModelFile(out)
    dtypes = set()
    for spec in tensor_specs(ckpt.config):
        entry = mf.tensors[spec.name]
        dtypes.add((spec.role, entry.dtype))
        if spec.role in ("norm", "router"):
            continue
        expected = "q4p" if spec.role != "embed" else "q4"
        assert entry.dtype == expected, spec.name
        if spec.role == "experts":
            source = np.stack([_source_expert(ckpt, spec.name, e) for e in range(spec.shape[0])])
        else:
            source = quant.source_to_f32(ckpt.tensor(spec.name), ckpt.source_dtype(spec.name))
        np.testing.assert_array_equal(np.asarray(mf.tensor(spec.name)), quant.quantize(source, expected),
                                      err_msg=spec.name)
    assert ("experts", "q4p") in dtypes and ("embed", "q4") in dtypes
    mf.close()


def test_bf16_storage_is_half_the_f32(converted):
    f32, bf16 = os.path.getsize(converted("main", "f32")), os.path.getsize(converted("main", "bf16"))
    assert bf16 < 0.6 * f32


def test_f16_and_f32_sources_convert(tmp_path, reference):
    """A checkpoint saved in f16 or f32 converts to the same values (f16 -> f32 is exact)."""
    from moecc.formats.huggingface import save_safetensors
    ckpt = Checkpoint(reference.hf_dir)
    src = tmp_path / "f16"
    shutil.copytree(reference.hf_dir, src, ignore=shutil.ignore_patterns("*.safetensors*"))
    tensors = {}
    for name in ckpt.weight_map:
        values = quant.source_to_f32(ckpt.tensor(name), ckpt.source_dtype(name))
        tensors[name] = ("F16", values.astype(np.float16)) if "layers.0." in name else ("F32", values)
    save_safetensors(str(src / "model.safetensors"), tensors)
    out = tmp_path / "m.moecc"
    convert.convert(str(src), str(out), "f32", progress=False)
    mf = moecc_file.ModelFile(out)
    name = "model.layers.0.self_attn.q_proj.weight"
    expected = quant.source_to_f32(ckpt.tensor(name), ckpt.source_dtype(name)).astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(mf.tensor(name), expected)
    mf.close()


def _copy_checkpoint(reference, tmp_path):
    dst = tmp_path / "hf"
    shutil.copytree(reference.hf_dir, dst)
    return dst


def _edit_config(folder, **changes):
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def _run(argv, capsys):
    code = convert.main(argv)
    return code, capsys.readouterr().err


def test_refuses_another_model_type(tmp_path, reference, capsys):
    src = _copy_checkpoint(reference, tmp_path)
    _edit_config(src, model_type="llama")
    code, err = _run([str(src), "-o", str(tmp_path / "m.moecc"), "--quiet"], capsys)
    assert code == 2 and "model_type is 'llama'" in err
    assert not os.path.exists(tmp_path / "m.moecc")


@pytest.mark.parametrize("change,message", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ({"use_sliding_window": True}, "use_sliding_window"),
    ({"hidden_act": "gelu"}, "hidden_act"),
])
def test_refuses_unsupported_options(tmp_path, reference, capsys, change, message):
    src = _copy_checkpoint(reference, tmp_path)
    _edit_config(src, **change)
    code, err = _run([str(src), "-o", str(tmp_path / "m.moecc"), "--quiet"], capsys)
    assert code == 2 and message in err


def test_refuses_a_misshapen_tensor_naming_it(tmp_path, reference, capsys):
    src = _copy_checkpoint(reference, tmp_path)
    _edit_config(src, hidden_size=json.loads((src / "config.json").read_text())["hidden_size"] + 16)
    code, err = _run([str(src), "-o", str(tmp_path / "m.moecc"), "--quiet"], capsys)
    assert code == 2 and "model.embed_tokens.weight has shape" in err
    assert os.listdir(tmp_path) == ["hf"]  # no output, no temporary litter


def test_refuses_a_missing_tensor_naming_it(tmp_path, reference, capsys):
    src = _copy_checkpoint(reference, tmp_path)
    _edit_config(src, num_hidden_layers=json.loads((src / "config.json").read_text())["num_hidden_layers"] + 1)
    code, err = _run([str(src), "-o", str(tmp_path / "m.moecc"), "--quiet"], capsys)
    assert code == 2 and "missing" in err and "model.layers." in err
    assert os.listdir(tmp_path) == ["hf"]


def test_refuses_a_missing_shard(tmp_path, capsys):
    from conftest import Reference
    src = _copy_checkpoint(Reference("main"), tmp_path)
    shard = sorted(p for p in os.listdir(src) if p.endswith(".safetensors"))[-1]
    os.unlink(src / shard)
    code, err = _run([str(src), "-o", str(tmp_path / "m.moecc"), "--quiet"], capsys)
    assert code == 2 and shard in err and "missing" in err


def test_refuses_a_checkpoint_without_tokenizer(tmp_path, reference, capsys):
    src = _copy_checkpoint(reference, tmp_path)
    os.unlink(src / "tokenizer.json")
    code, err = _run([str(src), "-o", str(tmp_path / "m.moecc"), "--quiet"], capsys)
    assert code == 2 and "tokenizer.json" in err


def test_refuses_an_unsupported_dtype(tmp_path, reference, capsys):
    src = _copy_checkpoint(reference, tmp_path)
    shard = sorted(p for p in os.listdir(src) if p.endswith(".safetensors"))[0]
    raw = (src / shard).read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header = raw[8:8 + n].replace(b'"BF16"', b'"I16" ', 1)
    (src / shard).write_bytes(raw[:8] + header + raw[8 + n:])
    code, err = _run([str(src), "-o", str(tmp_path / "m.moecc"), "--quiet"], capsys)
    assert code == 2 and "I16" in err


def test_does_not_overwrite_without_force(tmp_path, reference, capsys):
    out = tmp_path / "m.moecc"
    out.write_bytes(b"precious")
    code, err = _run([reference.hf_dir, "-o", str(out), "--quiet"], capsys)
    assert code == 2 and "--force" in err and out.read_bytes() == b"precious"
    code, _ = _run([reference.hf_dir, "-o", str(out), "--quiet", "--force"], capsys)
    assert code == 0 and moecc_file.ModelFile(out).tensors


def test_refuses_to_write_over_its_input(tmp_path, reference, capsys):
    src = _copy_checkpoint(reference, tmp_path)
    code, err = _run([str(src), "-o", str(src / "config.json"), "--quiet", "--force"], capsys)
    assert code == 2 and "checkpoint's own files" in err


def test_interrupted_conversion_leaves_nothing(tmp_path, reference, monkeypatch):
    calls = []

    def interrupt(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args)
    original = quant.encode
    monkeypatch.setattr(quant, "encode", interrupt)
    out = tmp_path / "m.moecc"
    assert convert.main([reference.hf_dir, "-o", str(out), "--quiet"]) == 130
    assert os.listdir(tmp_path) == []


def _convert_in_child(preamble: str, hf_dir: str, out: str) -> subprocess.Popen:
    code = (f"import sys\n{preamble}\nfrom moecc.convert import main\n"
            f"sys.exit(main([{hf_dir!r}, '-o', {out!r}, '--quiet']))\n")
    return subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)


def test_sigterm_during_conversion_leaves_nothing(tmp_path):
    from conftest import Reference
    slow_encode = ("import time, moecc.quant as q\n"
                   "encode = q.encode\n"
                   "q.encode = lambda *a, **k: (time.sleep(0.02), encode(*a, **k))[1]\n")
    out = tmp_path / "m.moecc"
    child = _convert_in_child(slow_encode, Reference("main").hf_dir, str(out))
    deadline = time.monotonic() + 60
    while not os.listdir(tmp_path) and time.monotonic() < deadline:  # the temporary file appears
        time.sleep(0.01)
    assert os.listdir(tmp_path), "conversion never started"
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130 and "interrupted" in err
    assert os.listdir(tmp_path) == []


def test_write_failure_leaves_nothing(tmp_path):
    """A full disk (here: a file size limit, so writes fail with EFBIG) is an error, with no litter."""
    from conftest import Reference
    limit = ("import resource, signal\n"
             "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
             "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n")
    out = tmp_path / "m.moecc"
    child = _convert_in_child(limit, Reference("main").hf_dir, str(out))
    _, err = child.communicate(timeout=60)
    assert child.returncode == 2 and "moecc-convert: error:" in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_unwritable_output_folder_is_a_clear_error(capsys, reference):
    code, err = _run([reference.hf_dir, "-o", "/proc/m.moecc", "--quiet"], capsys)
    assert code == 2 and "moecc-convert: error:" in err
