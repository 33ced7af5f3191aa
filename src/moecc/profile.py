"""Where a decode step's time goes, block by block: `moecc-bench --profile` (or `python -m moecc.profile`).

    python -m moecc.profile MODEL.moecc --threads 2 --steps 32

Loads the model, touches its weights, runs a short prompt, then decodes `--steps` tokens with
the forward step's per-block timers on (forward.c: the master thread charges each block the
time from the end of the previous block's closing barrier to the end of its own).  Three rows
come on top of the blocks:
  - "step: outside the blocks": the step call's wall time minus its blocks (the binding's
    checks, the parallel region's fork and join);
  - "loop: outside the step": the rest of a token's time in `generate` (sampling, the stop
    filter, the decoder, Python);
  - the sum of both is what the kernels do not account for.
For the blocks that stream weights (the projections, the experts, the lm_head) the GB/s
column is the bytes a decode step reads there over its time.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from .model import BLOCKS


def decode_bytes_by_block(model) -> dict[str, int]:
    """Weight bytes one decode step reads in each block (k of E experts per sparse layer)."""
    from .bench import decode_bytes_per_token
    block = {"attn": "qkv", "router": "router", "experts": "experts", "mlp": "experts", "lm_head": "lm_head",
             "embed": "embed"}

    def part_of(spec):
        return "o_proj" if spec.field == "o_proj" else block.get(spec.role)  # norms: in no block
    weights = model.source.weights
    out = decode_bytes_per_token(model.config, lambda name: weights[name].data.nbytes, part_of, BLOCKS)
    del out["total"]
    return out


def profile_decode(path: str, threads: int, steps: int, seed: int = 0) -> dict:
    """Decode `steps` tokens of the model at `path` with the block timers on; seconds per step by
    block, the step's and the loop's time outside the blocks, and the bytes each block reads."""
    import moecc
    model = moecc.load(path, threads=threads, ctx=steps + 64)
    model.source.touch()
    rng = np.random.default_rng(seed)
    model.eos_token_ids = frozenset()  # decode exactly `steps` tokens whatever comes out
    prompt = rng.integers(0, model.config.vocab_size, 8).tolist()
    for _ in model.generate(prompt, max_tokens=4, temperature=0):  # warm-up
        pass
    net = model.net
    forward, in_step = net.forward, [0.0]

    def timed_forward(*args):
        started = time.perf_counter()
        forward(*args)
        in_step[0] += time.perf_counter() - started

    blocks = np.zeros(len(BLOCKS))
    net.forward = timed_forward
    try:
        for i, _ in enumerate(model.generate(prompt, max_tokens=steps + 1, temperature=0)):
            if i == 0:  # the first token is the prompt's: from here on, one step per token
                net.profile, in_step[0] = blocks, 0.0
    finally:
        net.forward, net.profile = forward, None
    total = model.stats.decode_seconds
    return {"steps": steps, "threads": threads, "layers": model.config.num_hidden_layers,
            "step_s": total / steps, "blocks_s": dict(zip(BLOCKS, blocks / steps)),
            "step_outside_blocks_s": (in_step[0] - blocks.sum()) / steps,
            "loop_outside_step_s": (total - in_step[0]) / steps,
            "bytes": decode_bytes_by_block(model)}


def print_profile(p: dict, out=sys.stdout) -> None:
    from . import _kernels as K
    step = p["step_s"]
    print(f"decode: {p['steps']} steps of {p['layers']} layers, {step * 1e3:.2f} ms/step = {1 / step:.2f} tok/s, "
          f"{p['threads']} threads, isa {K.get_isa()}", file=out)
    print(f"{'block':<28}{'ms/step':>9}{'share':>8}{'GB/s':>8}", file=out)
    rows = [(name, s, p["bytes"].get(name, 0)) for name, s in p["blocks_s"].items()]
    rows += [("step: outside the blocks", p["step_outside_blocks_s"], 0),
             ("loop: outside the step", p["loop_outside_step_s"], 0)]
    for name, s, nbytes in rows:
        gbs = f"{nbytes / s / 1e9:8.1f}" if nbytes > 4096 and s > 0 else ""
        print(f"{name:<28}{s * 1e3:9.3f}{s / step:8.1%}{gbs}", file=out)
    outside = p["step_outside_blocks_s"] + p["loop_outside_step_s"]
    print(f"{'outside the kernels':<28}{outside * 1e3:9.3f}{outside / step:8.1%}", file=out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="moecc-profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a .moecc file")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--steps", type=int, default=32)
    a = ap.parse_args(argv)
    print_profile(profile_decode(a.model, a.threads, a.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
