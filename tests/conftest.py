"""Shared test fixtures: the transformers reference checkpoints, converted once per session."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from moecc import _kernels as K

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CASES = ("main", "odd", "gqa", "gqa16")


class Reference:
    """A fixture case: its HF checkpoint folder and what transformers computed on it."""

    def __init__(self, case: str):
        self.case = case
        self.hf_dir = os.path.join(FIXTURES, case, "hf")
        with np.load(os.path.join(FIXTURES, case, "reference.npz")) as z:
            self.arrays = {k: z[k] for k in z.files}
        with open(os.path.join(FIXTURES, case, "reference.json"), encoding="utf-8") as f:
            self.meta = json.load(f)

    def prompts(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids, logits [len, vocab]) per prompt."""
        n = sum(1 for k in self.arrays if k.startswith("ids_"))
        return [(self.arrays[f"ids_{i}"], self.arrays[f"logits_{i}"]) for i in range(n)]

    def greedy(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(prompt ids, transformers' greedy continuation) pairs."""
        n = sum(1 for k in self.arrays if k.startswith("greedy_prompt_"))
        return [(self.arrays[f"greedy_prompt_{j}"], self.arrays[f"greedy_tokens_{j}"]) for j in range(n)]


@pytest.fixture(params=K.build_info()["isa_available"])
def isa(request):
    """Each instruction-set path this machine can run, forced in turn (kernel tests)."""
    previous = K.get_isa()
    K.set_isa(request.param)
    yield request.param
    K.set_isa(previous)


@pytest.fixture(params=[1, 2], ids=lambda n: f"threads{n}")
def threads(request):
    return request.param


@pytest.fixture(scope="session", params=CASES)
def reference(request) -> Reference:
    return Reference(request.param)


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """converted(case, quant) -> path of that fixture converted to a .moecc file (made once)."""
    from moecc.convert import convert
    made: dict[tuple[str, str], str] = {}

    def get(case: str, quant: str = "f32") -> str:
        if (case, quant) not in made:
            out = str(tmp_path_factory.mktemp("models") / f"{case}-{quant}.moecc")
            convert(os.path.join(FIXTURES, case, "hf"), out, quant, progress=False)
            made[case, quant] = out
        return made[case, quant]
    return get


def relative_error(engine: np.ndarray, reference: np.ndarray) -> float:
    """‖engine − reference‖ / ‖reference − its mean over the vocabulary‖: scale-free, and blind
    to a constant shift of the logits, which softmax ignores."""
    centred = reference - reference.mean(axis=-1, keepdims=True)
    return float(np.linalg.norm(engine - reference) / np.linalg.norm(centred))


def logit_errors(model, baselines) -> tuple[float, float]:
    """(the worst relative_error over the prompts, top-1 agreement over all positions) of the
    model's logits against `baselines`: (ids, logits) pairs, e.g. Reference.prompts()."""
    errors, agree, total = [], 0, 0
    for ids, expected in baselines:
        got = model.logits(ids.tolist())
        errors.append(relative_error(got, expected))
        agree += int((got.argmax(-1) == expected.argmax(-1)).sum())
        total += len(ids)
    return max(errors), agree / total


def weights_only_checkpoint(case: str, kind: str, folder) -> None:
    """Fixture `case` (per-expert layout) written to `folder` with every tensor moecc-convert --quant `kind` quantizes
    replaced by dequantize(quantize(w)), as f32, per expert, in one file: converted as f32, it
    runs the float engine on the quantization of the weights alone."""
    from moecc import quant
    from moecc.config import tensor_specs
    from moecc.convert import StoragePlan
    from moecc.formats.huggingface import Checkpoint, expert_names, save_safetensors
    import shutil
    plan = StoragePlan(kind)
    source = Checkpoint(os.path.join(FIXTURES, case, "hf"))
    shutil.copytree(source.folder, folder, ignore=shutil.ignore_patterns("*.safetensors*"), dirs_exist_ok=True)
    storage_of = {}
    for spec in tensor_specs(source.config):
        names = expert_names(spec) if spec.role == "experts" else [spec.name]  # per-expert layout
        storage_of.update(dict.fromkeys(names, plan.storage(spec)))
    tensors = {}
    for name in source.weight_map:
        values = quant.source_to_f32(source.tensor(name), source.source_dtype(name))
        stored = storage_of[name]
        if stored in ("q8", "q4", "q4p"):
            values = quant.dequantize(quant.quantize(values, stored), stored, values.shape[-1])
        tensors[name] = ("F32", np.ascontiguousarray(values))
    save_safetensors(os.path.join(folder, "model.safetensors"), tensors)
