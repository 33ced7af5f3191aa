"""moecc-bench: moecc against llama.cpp on the same Qwen3-MoE checkpoint, round by round.

    moecc-bench --layers 8 --work /work/scratch --quant bf16 --peer-quant q4,q8 --rounds 3 --json out.json

Steps: make (or reuse) a synthetic checkpoint with Qwen3-30B-A3B's geometry (`--layers N`,
moecc.synthetic) or take `--hf DIR`; convert it with moecc-convert (`--quant`); then, for each
round, time moecc in a fresh subprocess and llama.cpp through the peer harness
(../shared/peer/llamacpp_bench.py) for each `--peer-quant`, alternating which engine goes first.
Before each engine runs, the other engine's files are dropped from the page cache and the
machine's read bandwidth is measured (it swings by 2x from minute to minute here).  Both
engines see random token ids:

    prefill  one prompt of --pp tokens (512); time to the first token's logits
    decode   --tg tokens (64) one at a time after a short prompt, greedy, EOS ignored

Reported per round and as medians: tokens/s of each, moecc / llama.cpp ratios (the median of
the per-round ratios), decode's achieved bandwidth (weight bytes one decode token reads --
attention, norms, router, the k chosen experts of every layer, final norm, lm_head -- from the
file's tensor table, divided by the time per token) as a fraction of the read bandwidth
measured just before that engine ran, moecc's load time and peak resident memory (VmHWM of its
process, which counts the mapped weight pages it touched).

This is a developer tool: the read-bandwidth probe (benchmarks/bandwidth.py, a C loop compiled
at run time) and the llama.cpp harness are found from a source checkout; without them pass
`--bandwidth GBS` and `--no-peer`.
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

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # src/moecc/bench.py
BANDWIDTH_PY = os.path.join(REPO, "benchmarks", "bandwidth.py")
PEER_SCRIPT = os.environ.get("MOECC_PEER_BENCH",
                             os.path.join(os.path.dirname(REPO), "shared", "peer", "llamacpp_bench.py"))
MOECC_QUANTS = ("bf16", "f32", "q8", "q4")
PEER_QUANTS = ("q4", "q8")
# llama.cpp storage of a weight matrix under the peer harness's pure quantization, bytes per element
GGML_BYTES = {"q4": 18 / 32, "q8": 34 / 32}  # Q4_0: 32 weights in 16 B + f16 scale; Q8_0: 32 B + f16 scale


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# bytes read per decode token


def decode_bytes_per_token(cfg, size_of) -> dict:
    """Weight bytes one decode step reads, by part.  `size_of(name)` is a tensor's stored size.
    Each sparse layer reads k of its E experts; the embedding contributes one row."""
    from .config import tensor_specs
    parts = {"attention": 0, "norms": 0, "router": 0, "experts": 0, "dense_mlp": 0, "lm_head": 0, "embedding": 0}
    k, E = cfg.num_experts_per_tok, cfg.num_experts
    for spec in tensor_specs(cfg):
        size = size_of(spec.name)
        if spec.role == "experts":
            parts["experts"] += size * k // E
        elif spec.role == "embed":
            parts["embedding"] += size // cfg.vocab_size
            if cfg.tie_word_embeddings:
                parts["lm_head"] += size
        else:
            key = {"attn": "attention", "norm": "norms", "router": "router", "mlp": "dense_mlp",
                   "lm_head": "lm_head"}[spec.role]
            parts[key] += size
    parts["total"] = sum(parts.values())
    return parts


def moecc_decode_bytes(path: str) -> dict:
    from . import format
    from .config import Qwen3MoeConfig
    mf = format.ModelFile(path)
    try:
        cfg = Qwen3MoeConfig.from_dict(mf.config_dict)
        return decode_bytes_per_token(cfg, lambda name: mf.tensors[name].size)
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
    for name in model.file.tensors:
        model.file.tensor(name).reshape(-1).view(np.uint8)[::4096].sum()
    rng = np.random.default_rng(seed)
    V = model.config.vocab_size
    model.eos_token_ids = frozenset()  # decode exactly tg tokens whatever comes out
    for _ in model.generate(rng.integers(0, V, 8).tolist(), max_tokens=2, temperature=0):
        pass
    warm_s = time.perf_counter() - started
    out = {"load_s": load_s, "warm_s": warm_s, "pp_runs": [], "tg_runs": []}
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


def run_peer(hf_dir: str, quant: str, threads: int, pp: int, tg: int, reps: int) -> dict:
    cmd = [sys.executable, PEER_SCRIPT, hf_dir, "--quant", quant, "--threads", str(threads),
           "--pp", str(pp), "--tg", str(tg), "--reps", str(reps)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"llama.cpp harness failed ({' '.join(cmd)}):\n" + (r.stderr + r.stdout)[-3000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


class OtherLoad:
    """CPU time that processes other than this one and its children spent during a `with` block,
    as a fraction of the machine's CPUs: on a shared machine a turn that others slowed down
    shows up here, not as a mysterious slow run."""

    def __enter__(self):
        self._start = self._sample()
        return self

    def __exit__(self, *exc):
        machine, own, wall = (b - a for a, b in zip(self._start, self._sample()))
        self.fraction = max(machine - own, 0.0) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        import resource
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = fields
        machine = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
        own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for f in ("ru_utime", "ru_stime"))
        return machine, own, time.monotonic()


CONTENDED = 0.05  # other processes' share of the CPUs above which a turn is flagged


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


def measure_bandwidth(threads: int) -> dict:
    import importlib.util
    spec = importlib.util.spec_from_file_location("moecc_bench_bandwidth", BANDWIDTH_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.read_bandwidth(threads=threads, gib=2.0, passes=5)


def prepare_checkpoint(args) -> str:
    if args.hf:
        return args.hf
    from .synthetic import make_checkpoint
    hf = os.path.join(args.work, f"syn{args.layers}")
    index = os.path.join(hf, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(os.path.join(hf, "config.json")) as f:
            if json.load(f).get("num_hidden_layers") == args.layers:
                log(f"reusing synthetic checkpoint {hf}")
                return hf
    log(f"writing a synthetic {args.layers}-layer checkpoint to {hf} (about {1.25 * args.layers + 1.3:.0f} GB)")
    make_checkpoint(hf, layers=args.layers)
    return hf


def prepare_moecc_file(args, hf: str) -> tuple[str, float | None]:
    """The converted file (reused when newer than the checkpoint), and the conversion seconds."""
    out = args.moecc_file or os.path.join(os.path.dirname(os.path.abspath(hf)),
                                          f"{os.path.basename(os.path.abspath(hf))}-{args.quant}.moecc")
    newest = max(os.path.getmtime(os.path.join(hf, f)) for f in os.listdir(hf))
    if os.path.exists(out) and os.path.getmtime(out) > newest and not args.reconvert:
        from . import format
        mf = format.ModelFile(out)
        info = mf.writer_info
        mf.close()
        if info.get("quant") == args.quant and (args.group_size is None or info.get("group_size") == args.group_size):
            log(f"reusing {out}")
            return out, None
    cmd = [sys.executable, "-m", "moecc.convert", hf, "-o", out, "--quant", args.quant, "--force", "--quiet"]
    if args.group_size:
        cmd += ["--group-size", str(args.group_size)]
    log("+ " + " ".join(cmd))
    started = time.perf_counter()
    r = subprocess.run(cmd, check=False)
    if r.returncode != 0:
        raise SystemExit(f"moecc-bench: moecc-convert failed (exit {r.returncode}); does this moecc "
                         f"support --quant {args.quant}?")
    return out, time.perf_counter() - started


# --------------------------------------------------------------------------------------------
# the report


def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(rounds: list[dict], peers: list[str], moecc_bytes: int, peer_bytes: dict) -> dict:
    s = {"moecc": {}, "llama.cpp": {q: {} for q in peers}, "ratio": {q: {} for q in peers}}
    for key in ("pp_tok_s", "tg_tok_s", "load_s", "peak_rss_mb", "rss_anon_mb", "decode_bw_fraction",
                "decode_gb_s"):
        s["moecc"][key] = _median([r["moecc"].get(key) for r in rounds])
    s["bandwidth_gb_s"] = _median([e["bandwidth_gb_s"] for r in rounds
                                   for e in [r["moecc"], *r["llama.cpp"].values()]])
    for q in peers:
        for key in ("pp_tok_s", "tg_tok_s", "peak_rss_mb", "decode_bw_fraction", "decode_gb_s"):
            s["llama.cpp"][q][key] = _median([r["llama.cpp"][q].get(key) for r in rounds])
        for key in ("pp", "tg"):
            s["ratio"][q][key] = _median([r["ratio"][q][key] for r in rounds])
    s["moecc"]["decode_bytes_per_token"] = moecc_bytes
    for q in peers:
        s["llama.cpp"][q]["decode_bytes_per_token"] = peer_bytes[q]
    return s


def _contended(turn: dict) -> str:
    share = turn.get("other_cpu", 0.0)
    return f"  [other processes used {share:.0%} of the CPUs]" if share > CONTENDED else ""


def print_round(i: int, r: dict, peers: list[str]) -> None:
    m = r["moecc"]
    print(f"round {i + 1}:")
    print(f"  moecc {r['quant']:>5}: pp {_fmt(m.get('pp_tok_s')):>8} tok/s  tg {_fmt(m.get('tg_tok_s')):>7} tok/s"
          f"  decode {_fmt(m.get('decode_gb_s'), '.1f')} GB/s = {_fmt(m.get('decode_bw_fraction'), '.0%')}"
          f" of {m['bandwidth_gb_s']:.1f}"
          f"  load {m['load_s']:.2f} s  peak RSS {m['peak_rss_mb']:.0f} MiB{_contended(m)}")
    for q in peers:
        p, ratio = r["llama.cpp"][q], r["ratio"][q]
        print(f"  llama.cpp {q}: pp {_fmt(p.get('pp_tok_s')):>8} tok/s  tg {_fmt(p.get('tg_tok_s')):>7} tok/s"
              f"  decode {_fmt(p.get('decode_gb_s'), '.1f')} GB/s = {_fmt(p.get('decode_bw_fraction'), '.0%')}"
              f" of {p['bandwidth_gb_s']:.1f}  | moecc/llama.cpp pp {_fmt(ratio['pp'])}x tg {_fmt(ratio['tg'])}x"
              f"{_contended(p)}")
    sys.stdout.flush()


def print_summary(s: dict, peers: list[str], quant: str, rounds: int) -> None:
    m = s["moecc"]
    print(f"median of {rounds} rounds (read bandwidth {_fmt(s['bandwidth_gb_s'], '.1f')} GB/s, median of all probes):")
    print(f"  moecc {quant}: pp {_fmt(m['pp_tok_s'])} tok/s, tg {_fmt(m['tg_tok_s'])} tok/s, decode reads "
          f"{m['decode_bytes_per_token'] / 1e6:.0f} MB/token -> {_fmt(m['decode_gb_s'], '.1f')} GB/s = "
          f"{_fmt(m['decode_bw_fraction'], '.0%')} of read bandwidth; load {_fmt(m['load_s'])} s, "
          f"peak RSS {_fmt(m['peak_rss_mb'], '.0f')} MiB (anonymous {_fmt(m['rss_anon_mb'], '.0f')} MiB)")
    for q in peers:
        p, ratio = s["llama.cpp"][q], s["ratio"][q]
        print(f"  llama.cpp {q}: pp {_fmt(p['pp_tok_s'])} tok/s, tg {_fmt(p['tg_tok_s'])} tok/s, decode reads "
              f"{p['decode_bytes_per_token'] / 1e6:.0f} MB/token -> {_fmt(p['decode_gb_s'], '.1f')} GB/s = "
              f"{_fmt(p['decode_bw_fraction'], '.0%')}; peak RSS {_fmt(p['peak_rss_mb'], '.0f')} MiB")
        print(f"  moecc {quant} / llama.cpp {q} (median of per-round ratios): "
              f"pp {_fmt(ratio['pp'])}x, tg {_fmt(ratio['tg'])}x")


def _ratio(a, b):
    return a / b if a and b else None


def main(argv: list[str] | None = None) -> int:
    """The console script: an engine's failure is one message, not a traceback."""
    try:
        return _main(argv)
    except RuntimeError as e:
        print(f"moecc-bench: error: {e}", file=sys.stderr)
        return 1


def _main(argv: list[str] | None) -> int:
    ap = argparse.ArgumentParser(prog="moecc-bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--hf", help="a Hugging Face qwen3_moe checkpoint folder to benchmark")
    src.add_argument("--layers", type=int, help="make (or reuse) a synthetic checkpoint of this many layers")
    ap.add_argument("--work", default=os.environ.get("MOECC_BENCH_DIR", os.path.expanduser("~/.cache/moecc-bench")),
                    help="where --layers writes the checkpoint (synN/) and the converted file; "
                         "default $MOECC_BENCH_DIR or ~/.cache/moecc-bench")
    ap.add_argument("--quant", default="bf16", choices=MOECC_QUANTS, help="moecc storage type; default bf16")
    ap.add_argument("--group-size", type=int, default=None, help="passed to moecc-convert for q4 / q8")
    ap.add_argument("--moecc-file", help="the converted file (default: beside the checkpoint, NAME-QUANT.moecc)")
    ap.add_argument("--reconvert", action="store_true", help="convert again even if the file is up to date")
    ap.add_argument("--peer-quant", default=None,
                    help="llama.cpp types to compare with, comma-separated from q4,q8 "
                         "(default: --quant when it is q4 or q8, else q4,q8)")
    ap.add_argument("--no-peer", action="store_true", help="time moecc only")
    ap.add_argument("--reps", type=int, default=3,
                    help="runs of each test inside one engine's turn, median taken (both engines); default 3, "
                         "as the llama.cpp harness: its first decode run after a prefill is often far slower")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--pp", type=int, default=512, help="prompt tokens for prefill; default 512")
    ap.add_argument("--tg", type=int, default=64, help="decode steps; default 64")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (at least 3 for a meaningful median); default 3")
    ap.add_argument("--bandwidth", type=float, default=None,
                    help="read bandwidth in GB/s, instead of measuring it each round")
    ap.add_argument("--wait-idle", type=float, default=300, metavar="SECONDS",
                    help="before each turn, wait up to this long for other processes to go quiet; default 300")
    ap.add_argument("--json", help="write every figure to this file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args.worker, args.threads, args.pp, args.tg, args.reps, args.seed)))
        return 0
    if args.hf is None and args.layers is None:
        ap.error("give --hf DIR (a checkpoint) or --layers N (a synthetic one)")
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.rounds < 3:
        log(f"moecc-bench: {args.rounds} round(s): medians of fewer than 3 rounds are not reliable here")
    peers = [] if args.no_peer else (args.peer_quant.split(",") if args.peer_quant else
                                     [args.quant] if args.quant in PEER_QUANTS else list(PEER_QUANTS))
    if any(q not in PEER_QUANTS for q in peers):
        ap.error(f"--peer-quant takes {', '.join(PEER_QUANTS)}")
    if peers and not os.path.exists(PEER_SCRIPT):
        ap.error(f"the llama.cpp harness {PEER_SCRIPT} is missing; set MOECC_PEER_BENCH or pass --no-peer")
    if args.bandwidth is None and not os.path.exists(BANDWIDTH_PY):
        ap.error(f"{BANDWIDTH_PY} is missing (not a source checkout?); pass --bandwidth GBS")
    if args.layers is not None:
        os.makedirs(args.work, exist_ok=True)

    hf = prepare_checkpoint(args)
    path, convert_s = prepare_moecc_file(args, hf)
    moecc_bytes = moecc_decode_bytes(path)
    from .checkpoint import Checkpoint
    ckpt = Checkpoint(hf)
    cfg, checkpoint_files = ckpt.config, ckpt.input_paths()
    peer_bytes = {q: peer_decode_bytes(cfg, q) for q in peers}
    for q in peers:  # the first run converts and quantizes; keep that out of the rounds
        log(f"preparing llama.cpp {q} (the first time: build ~15 min, convert and quantize a few min)")
        run_peer(hf, q, args.threads, 0, 0, 1)

    rounds = []
    for i in range(args.rounds):
        r = {"quant": args.quant, "llama.cpp": {}, "ratio": {}}
        order = ["moecc"] + peers if i % 2 == 0 else peers + ["moecc"]
        for engine in order:
            wait_until_idle(args.wait_idle)
            evict(checkpoint_files + (peer_files() if engine == "moecc" else [path]))
            # the bandwidth swings minute to minute: measure it right before each engine
            with OtherLoad() as other:
                bw = args.bandwidth if args.bandwidth is not None else measure_bandwidth(args.threads)["gb_s"]
                result = (run_moecc(path, args.threads, args.pp, args.tg, args.reps, seed=i) if engine == "moecc"
                          else run_peer(hf, engine, args.threads, args.pp, args.tg, args.reps))
            result["other_cpu"] = round(other.fraction, 3)
            result["bandwidth_gb_s"] = bw
            if result.get("tg_tok_s"):
                nbytes = moecc_bytes["total"] if engine == "moecc" else peer_bytes[engine]["total"]
                result["decode_gb_s"] = nbytes * result["tg_tok_s"] / 1e9
                result["decode_bw_fraction"] = result["decode_gb_s"] / bw
            if engine == "moecc":
                r["moecc"] = result
            else:
                r["llama.cpp"][engine] = result
        for q in peers:
            r["ratio"][q] = {"pp": _ratio(r["moecc"].get("pp_tok_s"), r["llama.cpp"][q].get("pp_tok_s")),
                             "tg": _ratio(r["moecc"].get("tg_tok_s"), r["llama.cpp"][q].get("tg_tok_s"))}
        rounds.append(r)
        print_round(i, r, peers)

    summary = summarize(rounds, peers, moecc_bytes["total"], {q: b["total"] for q, b in peer_bytes.items()})
    print_summary(summary, peers, args.quant, len(rounds))
    busy = sum(t.get("other_cpu", 0) > CONTENDED for r in rounds for t in [r["moecc"], *r["llama.cpp"].values()])
    if busy:
        print(f"  warning: other processes were busy during {busy} of {len(rounds) * (1 + len(peers))} turns; "
              "their figures are suspect (see [other processes ...] above)")
    if args.json:
        report = {
            "checkpoint": os.path.abspath(hf), "layers": cfg.num_hidden_layers, "moecc_file": path,
            "moecc_file_bytes": os.path.getsize(path), "quant": args.quant, "convert_s": convert_s,
            "threads": args.threads, "pp": args.pp, "tg": args.tg, "peers": peers,
            "decode_bytes_per_token": {"moecc": moecc_bytes, **{f"llama.cpp {q}": b for q, b in peer_bytes.items()}},
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
