"""Shared test fixtures: the transformers reference checkpoints, converted once per session."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest

from moecc import _kernels as K

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
CASES = ("main", "odd", "gqa", "gqa16")
START_TIMEOUT = 60  # seconds for a server to answer /health with 200


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
        storage_of.update(dict.fromkeys(names, plan.storage(spec, source.config)))
    tensors = {}
    for name in source.weight_map:
        values = quant.source_to_f32(source.tensor(name), source.source_dtype(name))
        stored = storage_of[name]
        if stored in ("q8", "q4", "q4p") + quant.K_TYPES:
            values = quant.dequantize(quant.quantize(values, stored), stored, values.shape[-1])
        tensors[name] = ("F32", np.ascontiguousarray(values))
    save_safetensors(os.path.join(folder, "model.safetensors"), tensors)


# ---- MPI (tests/test_mpi.py, tests/test_mpi_server.py) -------------------------------------------

def find_mpiexec() -> tuple[str | None, str | None]:
    """(mpiexec's path, None), or (None, why MPI cannot be had)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None, "mpi4py is not installed (pip install '.[test]' brings it and the mpich wheel)"
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = beside if os.access(beside, os.X_OK) else shutil.which("mpiexec")
    if found is None:
        return None, f"no mpiexec next to {sys.executable} or on PATH (the mpich wheel supplies one)"
    return found, None


@pytest.fixture(scope="module")
def mpiexec() -> str:
    """mpiexec's path; the test is skipped where no MPI can be had (a failure under MOECC_REQUIRE_MPI=1)."""
    path, missing = find_mpiexec()
    if missing:
        if os.environ.get("MOECC_REQUIRE_MPI") == "1":
            pytest.fail(f"MOECC_REQUIRE_MPI=1 but MPI cannot be had: {missing}")
        pytest.skip(missing)
    return path


# ---- the server (tests/test_server.py, tests/test_mpi_server.py) --------------------------------

class Server:
    """`python -m moecc.serve ARGS --port 0` running (under `launcher`, e.g. mpiexec -n 2, if
    given); its port read from its first line, its output (stdout and stderr, where mpiexec and
    the server write) kept in `lines`."""

    def __init__(self, *args, launcher: tuple[str, ...] = ()):
        self.proc = subprocess.Popen([*launcher, sys.executable, "-m", "moecc.serve", "--host", "127.0.0.1",
                                      "--port", "0", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._port_known = threading.Event()
        self.port = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                self._port_known.set()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def wait_listening(self):
        assert self._port_known.wait(START_TIMEOUT), "".join(self.lines)

    def wait_ready(self):
        self.wait_listening()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.05)
        raise AssertionError("the server did not become ready: " + "".join(self.lines))

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
