"""Quantization quality on a trained model, moecc's files beside llama.cpp's (issue 13's
yardstick; a benchmark, not a test: it needs llama.cpp's tools and minutes).

    python benchmarks/quality_yardstick.py --hf /work/scratch/quality/tiny --work /work/scratch/yardstick

--hf is a Hugging Face qwen3_moe checkpoint with learned weights (tools/train_tiny.py makes the
test model).  In --work the script makes, or reuses when present:

    bf16.moecc              the reference: moecc's bf16 conversion (transformers' logits within
                            1e-4), whose log-probabilities on the held-out text are `base`
    held_out.txt            --chars characters of the stdlib files held out of training
    calibration.txt         --chars characters of the training files, for both importance matrices
    moecc.imatrix           moecc-imatrix over calibration.txt on bf16.moecc
    llama.imatrix           llama-imatrix over the same text and windows, on llama.cpp's bf16
                            conversion (llama-BF16.gguf, ../shared/peer/llamacpp_tools.py gguf)
    moecc-PLAN[-imatrix].moecc      moecc-convert --quant PLAN [--imatrix moecc.imatrix]
    llama-TYPE[-pure|-imatrix].gguf  llamacpp_tools.py gguf --type TYPE [--pure | --imatrix llama.imatrix]

then scores every file with the same moecc-perplexity against `base`, so only the weights
differ between rows, and prints a Markdown table: tensor bytes, bits per weight (all tensors'
bytes x 8 / their values), perplexity, mean KL divergence with its 95% interval, median and
99th percentile, top-1 agreement, RMS dp.  Each engine's imatrix is made from the same text.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from stdlib_corpus import corpus_files, joined  # noqa: E402

from moecc import loader  # noqa: E402
from moecc.config import tensor_specs  # noqa: E402

PEER_TOOLS = ROOT.parent / "shared" / "peer" / "llamacpp_tools.py"
MOECC_FILES = ["q8", "q4", "q4_k", "q4_k_m", "q4_k_m+imatrix", "q5_k_m", "q6_k"]
LLAMA_FILES = ["Q8_0+pure", "Q4_0+pure", "Q4_K_M", "Q4_K_M+imatrix", "Q5_K_M", "Q6_K"]


def run(*cmd) -> str:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, stdout=subprocess.PIPE, text=True).stdout


def moecc(module: str, *args) -> str:
    return run(sys.executable, "-m", f"moecc.{module}", *args)


def size(path: Path) -> tuple[int, int]:
    """(bytes of every tensor, values of every tensor) of a model file"""
    source = loader.open_model(path)
    try:
        nbytes = sum(w.data.nbytes for w in source.weights.values())
        values = sum(math.prod(spec.shape) for spec in tensor_specs(source.config))
    finally:
        source.close()
    return nbytes, values


def moecc_file(work: Path, hf: Path, entry: str) -> Path:
    plan, _, extra = entry.partition("+")
    out = work / f"moecc-{plan}{'-' + extra if extra else ''}.moecc"
    if not out.exists():
        imatrix = ["--imatrix", work / "moecc.imatrix"] if extra == "imatrix" else []
        moecc("convert", hf, "-o", out, "--quant", plan, *imatrix)
    return out


def llama_file(work: Path, hf: Path, entry: str) -> Path:
    kind, _, extra = entry.partition("+")
    out = work / f"llama-{kind}{'-' + extra if extra else ''}.gguf"
    if not out.exists():
        flags = {"": [], "pure": ["--pure"], "imatrix": ["--imatrix", work / "llama.imatrix"]}[extra]
        run(sys.executable, PEER_TOOLS, "gguf", hf, out, "--type", kind, *flags)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hf", required=True, type=Path, help="the trained Hugging Face checkpoint")
    p.add_argument("--work", required=True, type=Path, help="folder for the files made (git-ignored)")
    p.add_argument("--chars", type=int, default=200_000,
                   help="characters of held-out and of calibration text (default 200000: ~25k tokens)")
    p.add_argument("--ctx", type=int, default=256, help="window (default 256: the test model's trained context)")
    p.add_argument("--moecc", default=",".join(MOECC_FILES), help="moecc plans, +imatrix for one with it")
    p.add_argument("--llama", default=",".join(LLAMA_FILES), help="llama-quantize types, +pure / +imatrix")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)

    train, held_out = corpus_files()
    for name, files in (("held_out.txt", held_out), ("calibration.txt", train)):
        if not (work / name).exists():
            (work / name).write_text(joined(files, args.chars), encoding="utf-8")
    reference, base = work / "bf16.moecc", work / "base"
    if not reference.exists():
        moecc("convert", args.hf, "-o", reference, "--quant", "bf16")
    if not base.exists():
        moecc("perplexity", "--model", reference, "--text", work / "held_out.txt", "--ctx", args.ctx,
              "--save-base", base, "--json")
    moecc_entries = [e for e in args.moecc.split(",") if e]
    llama_entries = [e for e in args.llama.split(",") if e]
    if any(e.endswith("+imatrix") for e in moecc_entries) and not (work / "moecc.imatrix").exists():
        moecc("imatrix", "--model", reference, "--text", work / "calibration.txt", "--ctx", args.ctx,
              "-o", work / "moecc.imatrix")
    if any(e.endswith("+imatrix") for e in llama_entries) and not (work / "llama.imatrix").exists():
        # llama-imatrix itself on llama.cpp's bf16 conversion, over the windows moecc-imatrix
        # used (the peer tool's `imatrix` command fixes -c 512, past the test model's context)
        llama_imatrix = run(sys.executable, PEER_TOOLS, "path", "llama-imatrix").strip()
        run(llama_imatrix, "-m", llama_file(work, args.hf, "BF16"), "-f", work / "calibration.txt",
            "-o", work / "llama.imatrix", "-t", 2, "-c", args.ctx)

    files = [("bf16", reference)]
    files += [(f"moecc {e}", moecc_file(work, args.hf, e)) for e in moecc_entries]
    files += [(f"llama.cpp {e}", llama_file(work, args.hf, e)) for e in llama_entries]
    rows = []
    for label, path in files:
        scores = json.loads(moecc("perplexity", "--model", path, "--text", work / "held_out.txt",
                                  "--base", base, "--json").strip().splitlines()[-1])
        nbytes, values = size(path)
        rows.append(dict(file=label, path=str(path), tensor_bytes=nbytes, bpw=8 * nbytes / values, **scores))

    print(f"\n{rows[0]['tokens']} scored tokens of held-out text, ctx {args.ctx}; reference: bf16\n")
    print("| file | tensor MB | bits/weight | PPL | KLD mean (95%) | KLD median | KLD p99 | top-1 | RMS dp |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['file']} | {r['tensor_bytes'] / 1e6:.2f} | {r['bpw']:.3f} | {r['ppl']:.3f} | "
              f"{r['kld_mean']:.6f} ± {(r['kld_ci95'][1] - r['kld_ci95'][0]) / 2:.6f} | {r['kld_median']:.6f} | {r['kld_p99']:.6f} | "
              f"{100 * r['top1']:.2f}% | {100 * r['rms_dp']:.3f}% |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
