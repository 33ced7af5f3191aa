"""moecc-bench: moecc against llama.cpp on the same Qwen3-MoE checkpoint, round by round.

    moecc-bench --layers 8 --work /work/scratch --quant bf16 --peer-quant q4,q8 --rounds 3 --json out.json
    moecc-bench --layers 4,8 --quant q4 ...          cost per layer (ms/token per added layer)
    moecc-bench --layers 8 --threads 1,2 --quant q4 ...  speedup from 1 to 2 threads
    moecc-bench --synthetic qwen3-30b-a3b --layers 48 --quant q4 ...  the full model, moecc only
    moecc-bench --gguf syn8-Q4_K_M.gguf [--no-repack] ...  both engines on the very same GGUF file

Steps: make (or reuse) a synthetic checkpoint with Qwen3-30B-A3B's geometry for each of
`--layers N[,N...]` (moecc.synthetic.checkpoint) or take `--hf DIR`; convert it with moecc-convert
(`--quant`); then, for each round, time moecc in a fresh subprocess and llama.cpp through the
peer harness (../shared/peer/llamacpp_bench.py) for each `--peer-quant`, on every model at every
`--threads` count, alternating from round to round which engine (and which model) goes first.
`--synthetic` skips the checkpoint: it writes the q4 / q8 .moecc file straight from random
quantized data (moecc.synthetic.quantized), so the 48-layer model needs no 61 GB
bf16 source; llama.cpp, which needs that source, is not run.  `--gguf FILE` times moecc and
llama.cpp (`llamacpp_bench.py --gguf FILE`) on one GGUF file, which both read as it is: llama.cpp
makes its repacked copy of the weights at load as it does by default, or not with `--no-repack`
(the peer is then named "gguf-norepack"; `moecc.synthetic --gguf` writes such files of the real
geometry).  Before each engine runs, the other
engine's files are dropped from the page cache and the machine's read bandwidth is measured (it
swings by 2x from minute to minute here).  Both engines see random token ids:

    prefill  one prompt of --pp tokens (512); time to the first token's logits
    decode   --tg tokens (64) one at a time after a short prompt, greedy, EOS ignored

Reported per round and as medians: tokens/s of each, moecc / llama.cpp ratios (the median of
the per-round ratios), decode's achieved bandwidth (weight bytes one decode token reads --
attention, norms, router, the k chosen experts of every layer, final norm, lm_head -- from the
file's tensor table, divided by the time per token) as a fraction of the read bandwidth
measured just before that engine ran, moecc's load time and peak resident memory (VmHWM of its
process, which counts the mapped weight pages it touched).  With several layer counts, the cost
of one layer (the slope of ms/token over layers) for each engine and their ratio; with several
thread counts, each engine's speedups (moecc.bench_report).

The read-bandwidth probe is part of the package (moecc.bandwidth, a kernel of the extension), so
an installed moecc-bench runs `--no-peer` and `--synthetic` measurements on its own.  Only the
llama.cpp comparison needs a source checkout: its harness is ../shared/peer/llamacpp_bench.py
beside one (or $MOECC_PEER_BENCH).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from . import bandwidth, loader
from .bench_report import (
    CONTENDED,
    Case,
    print_round,
    print_summary,
    ratio_of,
    summarize,
)
from .convert import StoragePlan
from .synthetic import SYNTHETIC_MODEL
from .synthetic.quantized import QUANTIZED

# the llama.cpp harness, the one piece outside the package: beside a source checkout (this file is
# CHECKOUT/src/moecc/bench.py there), or wherever $MOECC_PEER_BENCH says
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEER_SCRIPT = os.environ.get("MOECC_PEER_BENCH",
                             os.path.join(os.path.dirname(CHECKOUT), "shared", "peer", "llamacpp_bench.py"))
MOECC_QUANTS = ("bf16", "f32", "q8", "q4")
PEER_QUANTS = ("q4", "q8")
SYNTHETIC_SEED = 0
# llama.cpp storage of a weight matrix under the peer harness's pure quantization, bytes per element
GGML_BYTES = {"q4": 18 / 32, "q8": 34 / 32}  # Q4_0: 32 weights in 16 B + f16 scale; Q8_0: 32 B + f16 scale


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# bytes read per decode token


PARTS_BY_ROLE = {"attn": "attention", "norm": "norms", "router": "router", "experts": "experts", "mlp": "dense_mlp",
                 "lm_head": "lm_head", "embed": "embedding"}


def decode_bytes_per_token(cfg, size_of, part_of=None, names=tuple(PARTS_BY_ROLE.values())) -> dict:
    """Weight bytes one decode step reads, by part.  `size_of(name)` is a tensor's stored size;
    `part_of(spec)` names the part of `names` a tensor counts in (None: not counted; default: by
    role, PARTS_BY_ROLE).  Each sparse layer reads k of its E experts; the embedding contributes
    one row (and, tied, the whole matrix to the lm_head)."""
    from .config import tensor_specs
    part_of = part_of or (lambda spec: PARTS_BY_ROLE[spec.role])
    parts = dict.fromkeys(names, 0)
    k, E = cfg.num_experts_per_tok, cfg.num_experts
    for spec in tensor_specs(cfg):
        size = size_of(spec.name)
        if spec.role == "experts":
            size = size * k // E
        elif spec.role == "embed":
            if cfg.tie_word_embeddings:
                parts["lm_head"] += size
            size //= cfg.vocab_size
        part = part_of(spec)
        if part is not None:
            parts[part] += size
    parts["total"] = sum(parts.values())
    return parts


def moecc_decode_bytes(path: str) -> dict:
    from .config import Qwen3MoeConfig
    from .formats.moecc_file import ModelFile
    if loader.is_gguf(path):
        return gguf_decode_bytes(path)
    mf = ModelFile(path)
    try:
        cfg = Qwen3MoeConfig.from_dict(mf.config_dict)
        return decode_bytes_per_token(cfg, lambda name: mf.tensors[name].size)
    finally:
        mf.close()


def gguf_decode_bytes(path: str) -> dict:
    """The count for a GGUF file, from its tensor table (both engines read the same tensors)."""
    from .config import tensor_specs
    from .formats.gguf import GGUFFile, config_from_gguf, gguf_name
    f = GGUFFile(path)
    try:
        cfg = config_from_gguf(f)
        sizes = {s.name: f.tensors[gguf_name(s)].size for s in tensor_specs(cfg) if gguf_name(s) in f.tensors}
        return decode_bytes_per_token(cfg, sizes.__getitem__)
    finally:
        f.close()


def file_layers(path: str) -> int:
    from .config import Qwen3MoeConfig
    from .formats.gguf import GGUFFile, config_from_gguf
    from .formats.moecc_file import ModelFile
    if loader.is_gguf(path):
        f = GGUFFile(path)
        try:
            return config_from_gguf(f).num_hidden_layers
        finally:
            f.close()
    mf = ModelFile(path)
    try:
        return Qwen3MoeConfig.from_dict(mf.config_dict).num_hidden_layers
    finally:
        mf.close()


def peer_decode_bytes(cfg, quant: str) -> dict:
    """The same count for llama.cpp's pure Q4_0 / Q8_0 file: every matrix quantized (the
    embedding too), norms and the router f32."""
    from .config import tensor_specs
    shapes = {s.name: (s.shape, s.role) for s in tensor_specs(cfg)}

    def size_of(name):
        shape, role = shapes[name]
        n = 1
        for d in shape:
            n *= d
        return n * 4 if role in ("norm", "router") else int(n * GGML_BYTES[quant])
    return decode_bytes_per_token(cfg, size_of)


# --------------------------------------------------------------------------------------------
# the moecc measurement, run in its own process (python -m moecc.bench --worker ...)


def _vm_status() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return out


def kernel_build() -> str:
    """Which build of the compiled kernels this process runs: a digest of the extension module
    (in an editable install a rebuild replaces it under a running benchmark)."""
    import hashlib

    from ._kernels import _ext
    with open(_ext.__file__, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()[:12]


def worker(path: str, threads: int, pp: int, tg: int, reps: int, seed: int) -> dict:
    """Load, warm up, then time `reps` prefills of `pp` random ids and `reps` runs of `tg`
    greedy decode steps (as the llama.cpp harness does: all prefills, then all decodes); the
    figures are the medians."""
    import numpy as np

    import moecc
    started = time.perf_counter()
    model = moecc.load(path, threads=threads, ctx=max(pp, tg + 8) + 8)
    load_s = time.perf_counter() - started
    # touch every page of the weights (as llama-bench's warm-up run does), then warm the code
    started = time.perf_counter()
    model.source.touch()
    rng = np.random.default_rng(seed)
    V = model.config.vocab_size
    model.eos_token_ids = frozenset()  # decode exactly tg tokens whatever comes out
    for _ in model.generate(rng.integers(0, V, 8).tolist(), max_tokens=2, temperature=0):
        pass
    warm_s = time.perf_counter() - started
    out = {"load_s": load_s, "warm_s": warm_s, "kernels": kernel_build(), "pp_runs": [], "tg_runs": []}
    for _ in range(reps if pp else 0):
        for _ in model.generate(rng.integers(0, V, pp).tolist(), max_tokens=1, temperature=0):
            pass
        out["pp_runs"].append(pp / model.stats.prefill_seconds)
    for _ in range(reps if tg else 0):
        # the first token comes from the prompt; tg more are each one decode step
        for _ in model.generate(rng.integers(0, V, 8).tolist(), max_tokens=tg + 1, temperature=0):
            pass
        assert model.stats.generated_tokens == tg + 1
        out["tg_runs"].append(tg / model.stats.decode_seconds)
    out["pp_tok_s"] = statistics.median(out["pp_runs"]) if out["pp_runs"] else None
    out["tg_tok_s"] = statistics.median(out["tg_runs"]) if out["tg_runs"] else None
    status = _vm_status()
    out.update(peak_rss_mb=status.get("VmHWM"), rss_anon_mb=status.get("RssAnon"),
               rss_file_mb=status.get("RssFile"))
    return out


def run_moecc(path: str, threads: int, pp: int, tg: int, reps: int, seed: int) -> dict:
    cmd = [sys.executable, "-m", "moecc.bench", "--worker", path, "--threads", str(threads),
           "--pp", str(pp), "--tg", str(tg), "--reps", str(reps), "--seed", str(seed)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("moecc measurement failed:\n" + r.stderr[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# the other measurements


GGUF_PEERS = {"gguf": [], "gguf-norepack": ["--no-repack"]}  # llama.cpp on the GGUF itself: its flags


def run_peer(subject: "Subject", peer: str, threads: int, pp: int, tg: int, reps: int) -> dict:
    """llama.cpp's turn: `peer` is a type it quantizes the checkpoint to (q4, q8) or, on a GGUF
    subject, one of GGUF_PEERS."""
    source = ["--gguf", subject.path, *GGUF_PEERS[peer]] if peer in GGUF_PEERS else [subject.hf, "--quant", peer]
    cmd = [sys.executable, PEER_SCRIPT, *source, "--threads", str(threads),
           "--pp", str(pp), "--tg", str(tg), "--reps", str(reps)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llama.cpp harness failed ({' '.join(cmd)}):\n" + (r.stderr + r.stdout)[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


class OtherLoad:
    """CPU time that processes other than this one, its children and `pids` spent during a `with`
    block, as a fraction of the machine's CPUs: on a shared machine a turn that others slowed
    down shows up here, not as a mysterious slow run. `pids`: processes of the measurement that
    are still running (a server under test), whose time RUSAGE_CHILDREN does not count yet."""

    def __init__(self, pids: tuple[int, ...] = ()):
        self._pids = pids

    def __enter__(self):
        self._start = self._sample()
        return self

    def __exit__(self, *exc):
        machine, own, wall = (b - a for a, b in zip(self._start, self._sample()))
        self.fraction = max(machine - own, 0.0) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0

    def _sample(self) -> tuple[float, float, float]:
        import resource
        tick = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        machine = (user + nice + system + irq + softirq + steal) / tick
        own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for f in ("ru_utime", "ru_stime"))
        for pid in self._pids:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            utime, stime = stat[stat.rindex(")") + 2:].split()[11:13]  # fields 14 and 15 of proc(5)
            own += (int(utime) + int(stime)) / tick
        return machine, own, time.monotonic()


def wait_until_idle(max_seconds: float) -> None:
    """Wait (up to `max_seconds`) for a 2-second window in which other processes use < 5% of the CPUs."""
    deadline = time.monotonic() + max_seconds
    waited = False
    while True:
        with OtherLoad() as other:
            time.sleep(2.0)
        if other.fraction <= CONTENDED or time.monotonic() >= deadline:
            if waited:
                log(f"  ...{'idle' if other.fraction <= CONTENDED else 'still busy; going on'}")
            return
        if not waited:
            log(f"  other processes use {other.fraction:.0%} of the CPUs; waiting up to {max_seconds:.0f} s for them")
            waited = True


def peer_files() -> list[str]:
    """The llama.cpp harness's GGUF files (all checkpoints'): evicted from the page cache before moecc runs."""
    home = os.path.expanduser(os.environ.get("MOECC_PEER_HOME", "~/.cache/moecc-peer"))
    folder = os.path.join(home, "gguf")
    return [os.path.join(folder, f) for f in os.listdir(folder)] if os.path.isdir(folder) else []


def evict(paths: list[str]) -> None:
    """Drop `paths` from the page cache (clean pages only; needs no privileges).  Before each
    engine runs, the other engine's files and the checkpoint are dropped, so each engine has the
    whole cache to itself: otherwise pages of the engine that ran last, held on the kernel's
    active list, push the next engine's freshly touched pages out while it is being timed."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def prepare_checkpoint(work: str, layers: int) -> str:
    """The synthetic checkpoint work/synN, made unless it is there already."""
    from .synthetic.checkpoint import make_checkpoint
    hf = os.path.join(work, f"syn{layers}")
    index = os.path.join(hf, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(os.path.join(hf, "config.json")) as f:
            if json.load(f).get("num_hidden_layers") == layers:
                log(f"reusing synthetic checkpoint {hf}")
                return hf
    log(f"writing a synthetic {layers}-layer checkpoint to {hf} (about {1.25 * layers + 1.3:.0f} GB)")
    make_checkpoint(hf, layers=layers)
    return hf


def _reusable(path: str, quant: str, wanted_info: dict) -> bool:
    """Whether the .moecc file at `path` can be measured again: this moecc reads it, its writer
    info has `wanted_info`, and every tensor has the storage moecc-convert chooses today for
    `--quant quant` (a file written before a layout changed is written again, not measured)."""
    from .config import Qwen3MoeConfig, tensor_specs
    from .formats import FormatError
    from .formats.moecc_file import ModelFile
    try:
        mf = ModelFile(path)
    except FormatError:
        return False
    try:
        if any(mf.writer_info.get(k) != v for k, v in wanted_info.items()):
            return False
        plan = StoragePlan(quant)
        cfg = Qwen3MoeConfig.from_dict(mf.config_dict)
        return all(s.name in mf.tensors and mf.tensors[s.name].dtype == plan.storage(s, cfg) for s in tensor_specs(cfg))
    finally:
        mf.close()


def prepare_moecc_file(args, hf: str) -> tuple[str, float | None]:
    """The converted file (reused when newer than the checkpoint), and the conversion seconds."""
    out = args.moecc_file or os.path.join(os.path.dirname(os.path.abspath(hf)),
                                          f"{os.path.basename(os.path.abspath(hf))}-{args.quant}.moecc")
    newest = max(os.path.getmtime(os.path.join(hf, f)) for f in os.listdir(hf))
    if os.path.exists(out) and os.path.getmtime(out) > newest and not args.reconvert \
            and _reusable(out, args.quant, {"quant": args.quant}):
        log(f"reusing {out}")
        return out, None
    cmd = [sys.executable, "-m", "moecc.convert", hf, "-o", out, "--quant", args.quant, "--force", "--quiet"]
    log("+ " + " ".join(cmd))
    started = time.perf_counter()
    r = subprocess.run(cmd, check=False)
    if r.returncode != 0:
        raise SystemExit(f"moecc-bench: moecc-convert failed (exit {r.returncode}); does this moecc "
                         f"support --quant {args.quant}?")
    return out, time.perf_counter() - started


def prepare_synthetic_file(args, layers: int) -> tuple[str, float | None]:
    """A .moecc file written straight from random quantized data (reused when one of the same
    model, layers and type is there), and the seconds writing it took."""
    from .synthetic.quantized import write_quantized_model
    out = args.moecc_file or os.path.join(args.work, f"{args.synthetic}-syn{layers}-{args.quant}.moecc")
    wanted = {"quant": args.quant, "synthetic": {"model": args.synthetic, "layers": layers, "seed": SYNTHETIC_SEED}}
    if os.path.exists(out) and not args.reconvert and _reusable(out, args.quant, wanted):
        log(f"reusing {out}")
        return out, None
    log(f"writing {out}: {args.synthetic} with {layers} layers at {args.quant} from random data")
    started = time.perf_counter()
    write_quantized_model(out, layers, args.quant, seed=SYNTHETIC_SEED)
    return out, time.perf_counter() - started


@dataclass
class Subject:
    """One model under test: its .moecc (or GGUF) file, and the checkpoint it came from (None for
    a file written straight from random data, and for a GGUF, which llama.cpp reads itself)."""
    label: str
    layers: int
    path: str
    hf: str | None
    prepare_s: float | None  # seconds to convert / write the .moecc file; None when reused
    decode_bytes: dict  # engine name -> the bytes one decode token reads, by part


def prepare_subjects(args) -> list[Subject]:
    from .formats.huggingface import Checkpoint
    subjects = []
    if args.gguf:
        decode_bytes = gguf_decode_bytes(args.gguf)
        label = os.path.splitext(os.path.basename(args.gguf))[0]
        return [Subject(label, file_layers(args.gguf), args.gguf, None, None,
                        {"moecc": decode_bytes, **{f"llama.cpp {q}": decode_bytes for q in args.peers}})]
    for layers in args.layers or [None]:
        if args.synthetic:
            hf = None
            path, seconds = prepare_synthetic_file(args, layers)
        else:
            hf = args.hf or prepare_checkpoint(args.work, layers)
            path, seconds = prepare_moecc_file(args, hf)
        decode_bytes = {"moecc": moecc_decode_bytes(path)}
        if hf:
            cfg = Checkpoint(hf).config
            decode_bytes.update({f"llama.cpp {q}": peer_decode_bytes(cfg, q) for q in args.peers})
        label = os.path.basename(os.path.abspath(hf)) if hf else f"syn{layers}"
        subjects.append(Subject(label, file_layers(path), path, hf, seconds, decode_bytes))
    return subjects


# --------------------------------------------------------------------------------------------
# the command


def main(argv: list[str] | None = None) -> int:
    """The console script: an engine's failure is one message, not a traceback."""
    try:
        return _main(argv)
    except RuntimeError as e:
        print(f"moecc-bench: error: {e}", file=sys.stderr)
        return 1


def _positive_ints(text: str) -> list[int]:
    """argparse type of --layers / --threads: one positive integer or a comma-separated list."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer or a comma-separated list of them") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every value must be at least 1")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} lists a value twice")
    return sorted(values)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="moecc-bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--hf", help="a Hugging Face qwen3_moe checkpoint folder to benchmark")
    src.add_argument("--gguf", metavar="FILE",
                     help="a GGUF file: moecc and llama.cpp both run it as it is (no conversion)")
    src.add_argument("--layers", type=_positive_ints, metavar="N[,N...]",
                     help="make (or reuse) a synthetic checkpoint of this many layers; a list (4,8) "
                          "measures each and reports the cost per layer")
    ap.add_argument("--synthetic", choices=(SYNTHETIC_MODEL,),
                    help="with --layers and --quant q4/q8: skip the checkpoint and write the quantized "
                         ".moecc file straight from random data (48 layers: 17 GB at q4, not 61 GB of "
                         "bf16); times moecc only, since llama.cpp needs the checkpoint")
    ap.add_argument("--work", default=os.environ.get("MOECC_BENCH_DIR", os.path.expanduser("~/.cache/moecc-bench")),
                    help="where --layers writes the checkpoint (synN/) and the converted file; "
                         "default $MOECC_BENCH_DIR or ~/.cache/moecc-bench")
    ap.add_argument("--quant", default="bf16", choices=MOECC_QUANTS, help="moecc storage type; default bf16")
    ap.add_argument("--moecc-file", help="the converted file (default: beside the checkpoint, NAME-QUANT.moecc)")
    ap.add_argument("--reconvert", action="store_true",
                    help="convert (or, with --synthetic, write) again even if the file is up to date")
    ap.add_argument("--peer-quant", default=None,
                    help="llama.cpp types to compare with, comma-separated from q4,q8 "
                         "(default: --quant when it is q4 or q8, else q4,q8)")
    ap.add_argument("--no-peer", action="store_true", help="time moecc only")
    ap.add_argument("--no-repack", action="store_true",
                    help="with --gguf: llama.cpp without its repacked copy of the weights (less memory, "
                         "slower prefill on x86), as llamacpp_bench.py --no-repack")
    ap.add_argument("--reps", type=int, default=3,
                    help="runs of each test inside one engine's turn, median taken (both engines); default 3, "
                         "as the llama.cpp harness: its first decode run after a prefill is often far slower")
    ap.add_argument("--threads", type=_positive_ints, default=[os.cpu_count() or 1], metavar="N[,N...]",
                    help="CPU threads (default: all CPUs); a list (1,2) measures each and reports the speedups")
    ap.add_argument("--pp", type=int, default=512, help="prompt tokens for prefill; default 512")
    ap.add_argument("--tg", type=int, default=64, help="decode steps; default 64")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (at least 3 for a meaningful median); default 3")
    ap.add_argument("--bandwidth", type=float, default=None,
                    help="read bandwidth in GB/s, instead of measuring it each round")
    ap.add_argument("--wait-idle", type=float, default=300, metavar="SECONDS",
                    help="before each turn, wait up to this long for other processes to go quiet; default 300")
    ap.add_argument("--profile", action="store_true",
                    help="instead of timing against llama.cpp, print where moecc's decode step goes, "
                         "block by block, ms per step (--tg steps; see moecc.profile)")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        if len(args.threads) != 1:
            ap.error("--worker takes one --threads value")
        return args
    if args.synthetic and args.layers is None:
        ap.error("--synthetic needs --layers N (it makes the model; --hf reads one)")
    if args.hf is None and args.layers is None and args.gguf is None:
        ap.error("give --hf DIR (a checkpoint), --layers N (a synthetic one) or --gguf FILE")
    if args.no_repack and not args.gguf:
        ap.error("--no-repack goes with --gguf (llama.cpp's own pure Q4_0 / Q8_0 files are timed as the harness makes them)")
    if args.gguf:
        if args.synthetic or args.peer_quant or args.moecc_file or args.quant != "bf16":
            ap.error("--gguf times the file as it is: drop --synthetic, --peer-quant, --moecc-file and --quant")
        if not os.path.isfile(args.gguf):
            ap.error(f"--gguf {args.gguf}: no such file")
        args.quant = "gguf"  # what the reports call moecc's side
    if args.synthetic:
        if args.quant not in QUANTIZED:
            ap.error(f"--synthetic writes a quantized file: give --quant {' or '.join(QUANTIZED)}")
        if args.peer_quant:
            ap.error("--synthetic times moecc only (llama.cpp needs the bf16 checkpoint it skips); "
                     "drop --peer-quant")
        args.no_peer = True
    if args.profile:
        args.no_peer = True  # the profile is moecc's alone
    if args.moecc_file and args.layers and len(args.layers) > 1:
        ap.error("--moecc-file names one file; it cannot go with several --layers")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.pp < 0 or args.tg < 0 or args.reps < 1:
        ap.error("--pp and --tg must be at least 0, --reps at least 1")
    args.peers = [] if args.no_peer else (["gguf-norepack" if args.no_repack else "gguf"] if args.gguf else
                                          args.peer_quant.split(",") if args.peer_quant else
                                          [args.quant] if args.quant in PEER_QUANTS else list(PEER_QUANTS))
    if not args.gguf and any(q not in PEER_QUANTS for q in args.peers):
        ap.error(f"--peer-quant takes {', '.join(PEER_QUANTS)}")
    if args.peers and not os.path.exists(PEER_SCRIPT):
        ap.error(f"the llama.cpp comparison needs its harness, llamacpp_bench.py, which comes with a "
                 f"source checkout (../shared/peer/ beside it), not with the installed package, and is "
                 f"not at {PEER_SCRIPT}: set MOECC_PEER_BENCH to its path, or pass --no-peer (or "
                 f"--synthetic) to time moecc alone")
    return args


def run_turn(engine: str, subject: Subject, threads: int, args, seed: int) -> dict:
    """One engine's turn on one model: the bandwidth probe, then the engine; with what other
    processes used of the CPUs meanwhile, and the decode bandwidth achieved."""
    with OtherLoad() as other:
        bw = args.bandwidth if args.bandwidth is not None else bandwidth.measure(threads)["gb_s"]
        result = (run_moecc(subject.path, threads, args.pp, args.tg, args.reps, seed=seed) if engine == "moecc"
                  else run_peer(subject, engine, threads, args.pp, args.tg, args.reps))
    result["other_cpu"] = round(other.fraction, 3)
    result["bandwidth_gb_s"] = bw
    if result.get("tg_tok_s"):
        nbytes = subject.decode_bytes["moecc" if engine == "moecc" else f"llama.cpp {engine}"]["total"]
        result["decode_gb_s"] = nbytes * result["tg_tok_s"] / 1e9
        result["decode_bw_fraction"] = result["decode_gb_s"] / bw
    return result


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.threads[0], args.pp, args.tg, args.reps, args.seed)))
        return 0
    if args.rounds < 3:
        log(f"moecc-bench: {args.rounds} round(s): medians of fewer than 3 rounds are not reliable here")
    if args.layers is not None:
        os.makedirs(args.work, exist_ok=True)
    peers = args.peers
    subjects = prepare_subjects(args)
    if args.profile:
        from .profile import print_profile, profile_decode
        for s in subjects:
            for threads in args.threads:
                wait_until_idle(args.wait_idle)
                print(f"\n{s.label}:")
                print_profile(profile_decode(s.path, threads, args.tg))
        return 0
    from .formats.huggingface import Checkpoint
    checkpoint_files = [p for s in subjects if s.hf for p in Checkpoint(s.hf).input_paths()]
    for s in subjects:
        for q in peers:  # the first run converts and quantizes; keep that out of the rounds
            log(f"preparing llama.cpp {q} for {s.label} (the first time: build ~15 min, convert and quantize a few min)")
            run_peer(s, q, max(args.threads), 0, 0, 1)

    by_label = {s.label: s for s in subjects}
    cases = [Case(s.label, s.layers, t) for s in subjects for t in args.threads]
    rounds = []
    for i in range(args.rounds):
        # alternate the order of the cases and of the engines from round to round, so that a
        # drift of the machine's speed does not always favour the same one
        measured = {}
        for case in (cases if i % 2 == 0 else cases[::-1]):
            subject = by_label[case.label]
            case_round = measured[case.key] = {"llama.cpp": {}, "ratio": {}}
            for engine in (["moecc"] + peers if i % 2 == 0 else peers + ["moecc"]):
                wait_until_idle(args.wait_idle)
                # the engine gets the page cache to itself: drop the checkpoints, the other
                # engine's files and the other models' (see evict); a GGUF both engines read stays
                others = [p for p in peer_files() if os.path.abspath(p) != os.path.abspath(subject.path)] + \
                    [s.path for s in subjects if s is not subject] if engine == "moecc" \
                    else [s.path for s in subjects if not (args.gguf and s is subject)]
                evict(checkpoint_files + others)
                result = run_turn(engine, subject, case.threads, args, seed=i)
                if engine == "moecc":
                    case_round["moecc"] = result
                else:
                    case_round["llama.cpp"][engine] = result
            for q in peers:
                case_round["ratio"][q] = {m: ratio_of(case_round["moecc"].get(f"{m}_tok_s"),
                                                    case_round["llama.cpp"][q].get(f"{m}_tok_s"))
                                          for m in ("pp", "tg")}
        rounds.append({c.key: measured[c.key] for c in cases})  # in case order, whatever the measuring order
        print_round(i, rounds[-1], cases, peers, args.quant)

    summary = summarize(rounds, cases, peers)
    decode_totals = {s.label: {e: b["total"] for e, b in s.decode_bytes.items()} for s in subjects}
    print_summary(summary, rounds, cases, peers, args.quant, decode_totals)
    if args.json:
        report = {
            "quant": args.quant, "synthetic": args.synthetic, "gguf": args.gguf,
            "threads": args.threads, "pp": args.pp, "tg": args.tg, "reps": args.reps, "peers": peers,
            "models": [{"label": s.label, "layers": s.layers, "checkpoint": s.hf and os.path.abspath(s.hf),
                        "moecc_file": s.path, "moecc_file_bytes": os.path.getsize(s.path),
                        "prepare_s": s.prepare_s, "decode_bytes_per_token": s.decode_bytes} for s in subjects],
            "cases": [{"key": c.key, "label": c.label, "layers": c.layers, "threads": c.threads} for c in cases],
            "machine": {"cpu": _cpu_name(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "rounds": rounds, "summary": summary,
        }
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        log(f"wrote {args.json}")
    return 0


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
