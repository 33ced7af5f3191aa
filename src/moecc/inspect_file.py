"""moecc-inspect: what a .moecc file holds: config, tensor table, size per class of tensor.

    moecc-inspect qwen3.moecc            # a readable summary
    moecc-inspect qwen3.moecc --json     # the same, for scripts
    moecc-inspect qwen3.moecc --verify   # also check every tensor's CRC-32 (finds damaged data)
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from .formats import FormatError
from .formats.moecc_file import ModelFile
from .config import ConfigError, Qwen3MoeConfig, tensor_specs


def summary(mf: ModelFile) -> dict:
    """The file's config, tensor table and per-class totals, as plain data."""
    try:
        roles = {s.name: s.role for s in tensor_specs(Qwen3MoeConfig.from_dict(mf.config_dict))}
    except (ConfigError, TypeError, ValueError):
        roles = {}
    tensors, classes = [], {}
    for e in sorted(mf.tensors.values(), key=lambda e: e.offset):
        params = int(np.prod(e.shape, dtype=np.int64))
        role = roles.get(e.name, "unknown")
        tensors.append({"name": e.name, "class": role, "dtype": e.dtype,
                        "shape": list(e.shape), "bytes": e.size, "bits_per_weight": 8 * e.size / params})
        total = classes.setdefault(role, {"tensors": 0, "params": 0, "bytes": 0, "dtypes": set()})
        total["tensors"] += 1
        total["params"] += params
        total["bytes"] += e.size
        total["dtypes"].add(e.dtype)
    for total in classes.values():
        total["bits_per_weight"] = 8 * total["bytes"] / total["params"]
        total["dtypes"] = sorted(total["dtypes"])
    params = sum(c["params"] for c in classes.values())
    data = sum(c["bytes"] for c in classes.values())
    return {"file": mf.path, "file_bytes": mf.file_size, "writer": mf.writer_info, "config": mf.config_dict,
            "files": {e.name: e.size for e in mf.files.values()}, "tensors": tensors, "classes": classes,
            "params": params, "tensor_bytes": data, "bits_per_weight": 8 * data / max(params, 1)}


def _print_text(info: dict, out) -> None:
    cfg = info["config"]
    print(f"{info['file']}: {info['file_bytes'] / 2**20:.1f} MiB, {info['params'] / 1e9:.3f} B parameters, "
          f"{info['bits_per_weight']:.2f} bits per weight", file=out)
    print("config: " + ", ".join(f"{k}={v}" for k, v in cfg.items()), file=out)
    print(f"embedded files: {', '.join(f'{n} ({s} B)' for n, s in info['files'].items())}", file=out)
    print(f"\n{'class':<9} {'tensors':>7} {'params':>14} {'MiB':>10} {'bits/w':>7}  types", file=out)
    for role, c in sorted(info["classes"].items(), key=lambda kv: -kv[1]["bytes"]):
        print(f"{role:<9} {c['tensors']:>7} {c['params']:>14,} {c['bytes'] / 2**20:>10.1f} "
              f"{c['bits_per_weight']:>7.2f}  {', '.join(c['dtypes'])}", file=out)
    print(f"\n{'name':<48} {'type':<8} {'shape':<20} {'bytes':>12}", file=out)
    for t in info["tensors"]:
        print(f"{t['name']:<48} {t['dtype']:<8} {'x'.join(map(str, t['shape'])):<20} {t['bytes']:>12,}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moecc-inspect", description="Show what a .moecc file holds.")
    parser.add_argument("file", help="the .moecc file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--verify", action="store_true",
                        help="check every tensor's and file's CRC-32 against its data (reads the whole file)")
    args = parser.parse_args(argv)
    try:
        mf = ModelFile(args.file)
    except FormatError as e:
        print(f"moecc-inspect: error: {e}", file=sys.stderr)
        return 2
    info = summary(mf)
    if args.verify:
        info["damaged"] = mf.verify()
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        print()
    else:
        _print_text(info, sys.stdout)
        if args.verify:
            print("\nverify: " + ("all CRC-32 match" if not info["damaged"] else
                                  f"DAMAGED: {', '.join(info['damaged'])}"))
    mf.close()
    return 1 if info.get("damaged") else 0


if __name__ == "__main__":
    sys.exit(main())
