"""moecc-bench's arithmetic and report: medians over rounds, per-layer costs, thread scaling.

A benchmark run measures *cases*: one model (a checkpoint / .moecc file of some layer count)
at one thread count.  Each round holds, per case key, the turn of moecc and of each llama.cpp
type (`{"moecc": {...}, "llama.cpp": {"q4": {...}}, "ratio": {"q4": {"pp": x, "tg": y}}}`), so
every figure below is first computed within a round (where both engines and all cases saw the
same minute of the machine), then its median over rounds is taken.

    per-layer cost   the slope of ms/token against the layer count (a least-squares line;
                     with two layer counts L1 < L2: (ms(L2) - ms(L1)) / (L2 - L1)), for decode
                     (ms per generated token) and prefill (ms per prompt token); the intercept
                     is what does not grow with depth (embedding, final norm, lm_head, Python)
                     (the ratio moecc / llama.cpp is given both as the median of per-round
                     ratios and as the ratio of the median costs: a slope is a difference of
                     two measurements, so its per-round ratio is noisy)
    thread scaling   tok/s at N threads / tok/s at the fewest threads measured, for each engine

A turn during which other processes used more than CONTENDED of the CPUs is left out of both
(that round contributes no slope / speedup for that engine); it stays in the per-case medians,
flagged.
"""
from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass

CONTENDED = 0.05  # other processes' share of the CPUs above which a turn is flagged
# issue #5's targets
TARGET_PER_LAYER_RATIO = 0.75  # moecc's per-layer decode cost / llama.cpp's, at most
TARGET_SPEEDUP = {"tg": 1.6, "pp": 1.8}  # moecc's tok/s at 2 threads / at 1 thread, at least
METRICS = {"tg": "decode", "pp": "prefill"}


@dataclass(frozen=True)
class Case:
    """One model at one thread count."""
    label: str  # the model: "syn8", a checkpoint folder's name, ...
    layers: int
    threads: int

    @property
    def key(self) -> str:
        return f"{self.label} t{self.threads}"


def engine_turns(case_round: dict) -> dict[str, dict]:
    """A case's turns in one round by engine name: "moecc", "llama.cpp q4", ..."""
    return {"moecc": case_round["moecc"], **{f"llama.cpp {q}": t for q, t in case_round["llama.cpp"].items()}}


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio_of(a, b):
    return a / b if a and b else None


def _ms_per_token(tok_s):
    return 1000.0 / tok_s if tok_s else None


def _undisturbed(turn: dict, key: str):
    """turn[key], or None when other processes were busy during the turn: one such turn (one
    busy core stalls every OpenMP barrier) would make a slope or a speedup meaningless."""
    return None if turn.get("other_cpu", 0.0) > CONTENDED else turn.get(key)


# --------------------------------------------------------------------------------------------
# arithmetic


def summarize_case(case_rounds: list[dict], peers: list[str]) -> dict:
    """Medians over rounds of one case's figures; the ratios are medians of per-round ratios."""
    s = {"moecc": {}, "llama.cpp": {q: {} for q in peers}, "ratio": {q: {} for q in peers}}
    for key in ("pp_tok_s", "tg_tok_s", "load_s", "warm_s", "peak_rss_mb", "rss_anon_mb", "decode_bw_fraction",
                "decode_gb_s", "bandwidth_gb_s"):
        s["moecc"][key] = _median([r["moecc"].get(key) for r in case_rounds])
    for q in peers:
        for key in ("pp_tok_s", "tg_tok_s", "peak_rss_mb", "decode_bw_fraction", "decode_gb_s", "bandwidth_gb_s"):
            s["llama.cpp"][q][key] = _median([r["llama.cpp"][q].get(key) for r in case_rounds])
        for key in ("pp", "tg"):
            s["ratio"][q][key] = _median([r["ratio"][q][key] for r in case_rounds])
    return s


def _line(points: list[tuple[int, float | None]]) -> tuple[float, float] | None:
    """(slope, intercept) of the least-squares line through (layers, ms) points; None if a
    point is missing."""
    if any(ms is None for _, ms in points):
        return None
    fit = statistics.linear_regression([float(x) for x, _ in points], [ms for _, ms in points])
    return fit.slope, fit.intercept


def per_layer_costs(rounds: list[dict], cases: list[Case]) -> dict:
    """For each thread count at which two or more layer counts were measured: each engine's ms
    per layer (decode: per generated token; prefill: per prompt token) and the part that does
    not grow with depth, and moecc / llama.cpp of the per-layer costs (below 1: moecc is faster).
    Keyed "threads N"."""
    out = {}
    for threads in sorted({c.threads for c in cases}):
        group = sorted((c for c in cases if c.threads == threads), key=lambda c: c.layers)
        if len({c.layers for c in group}) < 2:
            continue
        per_round = []  # [{engine: {"tg": (slope, intercept), "pp": ...}}]
        for r in rounds:
            turns = {c.layers: engine_turns(r[c.key]) for c in group}
            engines = turns[group[0].layers]
            per_round.append({e: {m: _line([(L, _ms_per_token(_undisturbed(turns[L][e], f"{m}_tok_s"))) for L in turns])
                                  for m in METRICS} for e in engines})
        engines = list(per_round[0])
        entry = {"threads": threads, "layers": [c.layers for c in group], "engines": {}, "ratio": {}}
        for e in engines:
            entry["engines"][e] = {}
            for m, what in METRICS.items():
                fits = [pr[e][m] for pr in per_round]
                entry["engines"][e][f"{what}_ms_per_layer"] = _median([f and f[0] for f in fits])
                entry["engines"][e][f"{what}_ms_fixed"] = _median([f and f[1] for f in fits])
        # a slope is the difference of two measurements, so a per-round ratio of slopes is far
        # noisier than the tok/s ratios: report the ratio of the median slopes beside it
        entry["ratio_of_medians"] = {}
        for e in engines[1:]:
            entry["ratio"][e] = {what: _median([ratio_of(pr["moecc"][m] and pr["moecc"][m][0], pr[e][m] and pr[e][m][0])
                                                for pr in per_round])
                                 for m, what in METRICS.items()}
            entry["ratio_of_medians"][e] = {
                what: ratio_of(entry["engines"]["moecc"][f"{what}_ms_per_layer"], entry["engines"][e][f"{what}_ms_per_layer"])
                for what in METRICS.values()}
        out[f"threads {threads}"] = entry
    return out


def thread_scaling(rounds: list[dict], cases: list[Case]) -> dict:
    """For each model measured at two or more thread counts: each engine's tok/s at every
    other count over its tok/s at the fewest threads (decode and prefill).  Keyed by the model."""
    out = {}
    for label in dict.fromkeys(c.label for c in cases):
        group = sorted((c for c in cases if c.label == label), key=lambda c: c.threads)
        if len(group) < 2:
            continue
        base = group[0]
        engines = list(engine_turns(rounds[0][base.key]))
        entry = {"threads": [c.threads for c in group], "base_threads": base.threads, "engines": {}}
        for e in engines:
            entry["engines"][e] = {
                str(c.threads): {what: _median([ratio_of(_undisturbed(engine_turns(r[c.key])[e], f"{m}_tok_s"),
                                                       _undisturbed(engine_turns(r[base.key])[e], f"{m}_tok_s"))
                                                for r in rounds])
                                 for m, what in METRICS.items()}
                for c in group[1:]}
        out[label] = entry
    return out


def summarize(rounds: list[dict], cases: list[Case], peers: list[str]) -> dict:
    turns = [t for r in rounds for c in cases for t in engine_turns(r[c.key]).values()]
    return {"bandwidth_gb_s": _median([t.get("bandwidth_gb_s") for t in turns]),
            "kernel_builds": kernel_builds(rounds),
            "cases": {c.key: summarize_case([r[c.key] for r in rounds], peers) for c in cases},
            "per_layer": per_layer_costs(rounds, cases),
            "thread_scaling": thread_scaling(rounds, cases)}


def contended_turns(rounds: list[dict]) -> tuple[int, int]:
    """(turns during which other processes used more than CONTENDED of the CPUs, all turns)."""
    turns = [t for r in rounds for case_round in r.values() for t in engine_turns(case_round).values()]
    return sum(t.get("other_cpu", 0) > CONTENDED for t in turns), len(turns)


def kernel_builds(rounds: list[dict]) -> list[str]:
    """The builds of moecc's kernels its turns ran, in order of first use (see bench.kernel_build)."""
    return list(dict.fromkeys(case_round["moecc"]["kernels"] for r in rounds for case_round in r.values()
                              if "kernels" in case_round["moecc"]))


# --------------------------------------------------------------------------------------------
# printing


def _fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def _contended(turn: dict) -> str:
    share = turn.get("other_cpu", 0.0)
    return f"  [other processes used {share:.0%} of the CPUs]" if share > CONTENDED else ""


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n > 1 else ''}"


def print_round(i: int, r: dict, cases: list[Case], peers: list[str], quant: str) -> None:
    print(f"round {i + 1}:")
    for c in cases:
        indent = "  "
        if len(cases) > 1:
            print(f"  {c.label}, {_threads(c.threads)}:")
            indent = "    "
        m = r[c.key]["moecc"]
        print(f"{indent}moecc {quant:>5}: pp {_fmt(m.get('pp_tok_s')):>8} tok/s  tg {_fmt(m.get('tg_tok_s')):>7} tok/s"
              f"  decode {_fmt(m.get('decode_gb_s'), '.1f')} GB/s = {_fmt(m.get('decode_bw_fraction'), '.0%')}"
              f" of {m['bandwidth_gb_s']:.1f}"
              f"  load {m['load_s']:.2f} s  peak RSS {m['peak_rss_mb']:.0f} MiB{_contended(m)}")
        for q in peers:
            p, ratio = r[c.key]["llama.cpp"][q], r[c.key]["ratio"][q]
            print(f"{indent}llama.cpp {q}: pp {_fmt(p.get('pp_tok_s')):>8} tok/s  tg {_fmt(p.get('tg_tok_s')):>7} tok/s"
                  f"  decode {_fmt(p.get('decode_gb_s'), '.1f')} GB/s = {_fmt(p.get('decode_bw_fraction'), '.0%')}"
                  f" of {p['bandwidth_gb_s']:.1f}  | moecc/llama.cpp pp {_fmt(ratio['pp'])}x tg {_fmt(ratio['tg'])}x"
                  f"{_contended(p)}")
    sys.stdout.flush()


def print_summary(s: dict, rounds: list[dict], cases: list[Case], peers: list[str], quant: str,
                  decode_bytes: dict[str, dict[str, int]]) -> None:
    """`decode_bytes`: per model label, per engine name, the weight bytes of one decode token."""
    print(f"median of {len(rounds)} rounds (read bandwidth {_fmt(s['bandwidth_gb_s'], '.1f')} GB/s, median of all probes):")
    for c in cases:
        cs, nbytes = s["cases"][c.key], decode_bytes[c.label]
        m = cs["moecc"]
        indent = "  "
        if len(cases) > 1:
            print(f"  {c.label} ({c.layers} layers), {_threads(c.threads)}:")
            indent = "    "
        print(f"{indent}moecc {quant}: pp {_fmt(m['pp_tok_s'])} tok/s, tg {_fmt(m['tg_tok_s'])} tok/s, decode reads "
              f"{nbytes['moecc'] / 1e6:.0f} MB/token -> {_fmt(m['decode_gb_s'], '.1f')} GB/s = "
              f"{_fmt(m['decode_bw_fraction'], '.0%')} of read bandwidth; load {_fmt(m['load_s'])} s, "
              f"peak RSS {_fmt(m['peak_rss_mb'], '.0f')} MiB (anonymous {_fmt(m['rss_anon_mb'], '.0f')} MiB)")
        for q in peers:
            p, ratio = cs["llama.cpp"][q], cs["ratio"][q]
            print(f"{indent}llama.cpp {q}: pp {_fmt(p['pp_tok_s'])} tok/s, tg {_fmt(p['tg_tok_s'])} tok/s, decode reads "
                  f"{nbytes[f'llama.cpp {q}'] / 1e6:.0f} MB/token -> {_fmt(p['decode_gb_s'], '.1f')} GB/s = "
                  f"{_fmt(p['decode_bw_fraction'], '.0%')}; peak RSS {_fmt(p['peak_rss_mb'], '.0f')} MiB")
            print(f"{indent}moecc {quant} / llama.cpp {q} (median of per-round ratios): "
                  f"pp {_fmt(ratio['pp'])}x, tg {_fmt(ratio['tg'])}x")
    for entry in s["per_layer"].values():
        layers = ", ".join(map(str, entry["layers"]))
        print(f"per-layer cost ({layers} layers, {_threads(entry['threads'])}; slope of ms/token over layers, "
              f"median of per-round slopes, disturbed turns left out; 'fixed': what does not grow with depth):")
        for e, costs in entry["engines"].items():
            name = f"moecc {quant}" if e == "moecc" else e
            print(f"  {name}: decode {_fmt(costs['decode_ms_per_layer'], '.3f')} ms/layer/token "
                  f"(fixed {_fmt(costs['decode_ms_fixed'], '.2f')} ms), prefill "
                  f"{_fmt(costs['prefill_ms_per_layer'], '.4f')} ms/layer/prompt token "
                  f"(fixed {_fmt(costs['prefill_ms_fixed'], '.4f')} ms)")
        for e, ratio in entry["ratio"].items():
            of_medians = entry["ratio_of_medians"][e]
            print(f"  moecc {quant} / {e} per-layer cost (below 1: moecc is faster; median of per-round ratios, "
                  f"then ratio of the medians): decode {_fmt(ratio['decode'])}, {_fmt(of_medians['decode'])} "
                  f"(target <= {TARGET_PER_LAYER_RATIO}); prefill {_fmt(ratio['prefill'])}, "
                  f"{_fmt(of_medians['prefill'])}")
    for label, entry in s["thread_scaling"].items():
        print(f"thread scaling of {label} (tok/s over tok/s at {_threads(entry['base_threads'])}, "
              "median of per-round ratios, disturbed turns left out):")
        for e, by_threads in entry["engines"].items():
            name = f"moecc {quant}" if e == "moecc" else e
            cells = "; ".join(f"{entry['base_threads']}->{t} threads: decode {_fmt(x['decode'])}x, "
                              f"prefill {_fmt(x['prefill'])}x" for t, x in by_threads.items())
            print(f"  {name}: {cells}")
        if entry["base_threads"] == 1 and "2" in entry["engines"]["moecc"]:
            print(f"  (issue #5 targets for moecc 1->2 threads: decode >= {TARGET_SPEEDUP['tg']}x, "
                  f"prefill >= {TARGET_SPEEDUP['pp']}x)")
    builds = kernel_builds(rounds)
    if len(builds) > 1:
        print(f"  warning: the kernels were rebuilt during the run (moecc ran builds {', '.join(builds)}); "
              "its figures mix them")
    busy, total = contended_turns(rounds)
    if busy:
        print(f"  warning: other processes were busy during {busy} of {total} turns; "
              "their figures are suspect (see [other processes ...] above)")
