"""Where one decode step's time goes, kernel by kernel.

    python benchmarks/profile_decode.py MODEL.moecc --threads 2 --steps 32

Loads the model, touches its weights, runs a short prompt, then times `--steps` decode steps
with every kernel call wrapped by a timer.  Calls are labelled by kernel and, for matmul, by the
weight they read (q/k/v/o projection, router, lm_head), so the table says which matrix costs
what; "python" is the step time not spent inside any kernel (the interpreter, NumPy slicing,
the KV-cache copies, sampling).  For a matmul-bound kernel the GB/s column is its weight bytes
over its time; compare it with `python -m moecc.bandwidth`.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--steps", type=int, default=32)
    a = ap.parse_args(argv)

    import moecc
    from moecc import model as model_module
    m = moecc.load(a.model, threads=a.threads, ctx=256)
    for name in m.file.tensors:  # fault every weight page in before timing
        m.file.tensor(name).reshape(-1).view(np.uint8)[::4096].sum()
    cfg = m.config
    # a matmul is labelled by the weight it reads, found from where that weight's bytes lie
    labels = {}
    for name in m.file.tensors:
        short = name.rsplit(".", 2)[-2] if name.endswith(".weight") else name.rsplit(".", 1)[-1]
        short = {"gate": "router", "k_proj": "k_proj+v_proj", "v_proj": "k_proj+v_proj"}.get(short, short)
        labels[m.file.tensor(name).__array_interface__["data"][0]] = "matmul " + short

    K = model_module.K
    seconds = collections.defaultdict(float)
    calls = collections.Counter()
    weight_bytes = collections.defaultdict(int)

    class Timed:
        def __getattr__(self, attr):
            fn = getattr(K, attr)
            if not callable(fn):
                return fn

            def timed(*args, **kw):
                label = attr
                nbytes = 0
                if attr == "matmul":
                    label = labels.get(args[1].__array_interface__["data"][0], f"matmul {tuple(args[1].shape)}")
                    nbytes = args[1].nbytes
                elif attr == "moe_ffn":
                    k = args[4].shape[1]
                    nbytes = sum(w.nbytes // w.shape[0] * k for w in args[1:4])
                t = time.perf_counter()
                out = fn(*args, **kw)
                seconds[label] += time.perf_counter() - t
                calls[label] += 1
                weight_bytes[label] += nbytes
                return out
            return timed

    rng = np.random.default_rng(0)
    m.eos_token_ids = frozenset()
    prompt = rng.integers(0, cfg.vocab_size, 8).tolist()
    for _ in m.generate(prompt, max_tokens=4, temperature=0):  # warm-up
        pass
    model_module.K = Timed()
    try:
        for i, _ in enumerate(m.generate(prompt, max_tokens=a.steps + 1, temperature=0)):
            if i == 0:  # the first token is the prompt's: drop the prefill's timings
                seconds.clear()
                calls.clear()
                weight_bytes.clear()
        total = m.stats.decode_seconds
    finally:
        model_module.K = K
    steps = a.steps
    per_step = total / steps
    kernel_total = sum(seconds.values())
    print(f"decode: {steps} steps, {per_step * 1e3:.1f} ms/step = {1 / per_step:.2f} tok/s, "
          f"{a.threads} threads, isa {K.get_isa()}")
    print(f"{'kernel':<24}{'ms/step':>9}{'share':>8}{'calls/step':>12}{'GB/s':>8}")
    rows = sorted(seconds.items(), key=lambda kv: -kv[1])
    rows.append(("python (outside kernels)", max(total - kernel_total, 0.0)))
    for label, s in rows:
        gbs = weight_bytes.get(label, 0) / s / 1e9 if s and weight_bytes.get(label) else None
        print(f"{label:<24}{s / steps * 1e3:9.2f}{s / total:8.1%}{calls.get(label, 0) / steps:12.1f}"
              f"{'' if gbs is None else format(gbs, '8.1f')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
