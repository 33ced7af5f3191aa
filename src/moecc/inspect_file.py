"""moecc-inspect: what a .moecc or GGUF file holds: config, tensor table, size per class of tensor.

    moecc-inspect qwen3.moecc            # a readable summary
    moecc-inspect qwen3.moecc --json     # the same, for scripts
    moecc-inspect qwen3.moecc --verify   # also check every tensor's CRC-32 (finds damaged data)
    moecc-inspect qwen3-Q4_K_M.gguf      # the same tables: llama.cpp's names and types

A GGUF file carries no checksums, so `--verify` has nothing to check there and says so.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType

from . import quant, storage
from .formats import FormatError
from .formats.gguf import GGUFFile, config_from_gguf, gguf_name
from .formats.moecc_file import ModelFile
from .config import ConfigError, Qwen3MoeConfig, tensor_specs
from .loader import is_gguf

GGUF_NO_CHECKSUMS = "GGUF files carry no checksums: there is nothing to verify"


def summary(mf: ModelFile) -> dict:
    """The .moecc file's config, tensor table and per-class totals, as plain data."""
    try:
        roles = {s.name: s.role for s in tensor_specs(Qwen3MoeConfig.from_dict(mf.config_dict))}
    except (ConfigError, TypeError, ValueError):
        roles = {}
    entries = [(e.name, _type_name(e.dtype), e.shape, e.size, e.offset) for e in mf.tensors.values()]
    return _tables(mf.path, mf.file_size, mf.writer_info, mf.config_dict,
                   {e.name: e.size for e in mf.files.values()}, entries, roles)


def _type_name(dtype: str) -> str:
    """A .moecc storage type as the table shows it: ggml's name for the K types (the bytes of
    ggml's Q4_K / Q5_K / Q6_K, named as a GGUF file names them), moecc's for the others."""
    if dtype in quant.K_TYPES:
        return GGMLQuantizationType(storage.get(dtype).ggml_type).name
    return dtype


def gguf_summary(f: GGUFFile) -> dict:
    """The same for a GGUF file: llama.cpp's tensor names and ggml type names; its config as
    moecc reads it (empty if moecc cannot read one), its metadata keys in place of embedded files."""
    try:
        cfg = config_from_gguf(f)
        config, roles = cfg.to_dict(), {gguf_name(s): s.role for s in tensor_specs(cfg)}
    except FormatError:
        config, roles = {}, {}
    entries = [(t.name, t.type_name, t.shape, t.size, t.offset) for t in f.tensors.values()]
    writer = {key: f.value(key, str) for key in ("general.name", "general.architecture")}
    return _tables(f.path, f.file_size, writer, config, {"metadata keys": len(f.keys())}, entries, roles)


def _tables(path: str, file_bytes: int, writer: dict, config: dict, files: dict, entries, roles: dict) -> dict:
    """entries: (name, type, logical shape, bytes, offset) per tensor; roles: name -> class."""
    tensors, classes = [], {}
    for name, dtype, shape, size, _ in sorted(entries, key=lambda e: e[4]):
        params = int(np.prod(shape, dtype=np.int64))
        role = roles.get(name, "unknown")
        tensors.append({"name": name, "class": role, "dtype": dtype,
                        "shape": list(shape), "bytes": size, "bits_per_weight": 8 * size / params})
        total = classes.setdefault(role, {"tensors": 0, "params": 0, "bytes": 0, "dtypes": set()})
        total["tensors"] += 1
        total["params"] += params
        total["bytes"] += size
        total["dtypes"].add(dtype)
    for total in classes.values():
        total["bits_per_weight"] = 8 * total["bytes"] / total["params"]
        total["dtypes"] = sorted(total["dtypes"])
    params = sum(c["params"] for c in classes.values())
    data = sum(c["bytes"] for c in classes.values())
    return {"file": path, "file_bytes": file_bytes, "writer": writer, "config": config,
            "files": files, "tensors": tensors, "classes": classes,
            "params": params, "tensor_bytes": data, "bits_per_weight": 8 * data / max(params, 1)}


def _print_text(info: dict, out) -> None:
    cfg = info["config"]
    print(f"{info['file']}: {info['file_bytes'] / 2**20:.1f} MiB, {info['params'] / 1e9:.3f} B parameters, "
          f"{info['bits_per_weight']:.2f} bits per weight", file=out)
    writer = info["writer"]
    if "quant" in writer:  # a .moecc file says how moecc-convert stored it
        overrides = "".join(f", {role}={kind}" for role, kind in (writer.get("overrides") or {}).items())
        print(f"plan: --quant {writer['quant']}{overrides}"
              f"{', with importance' if writer.get('importance') else ''}", file=out)
    print("config: " + ", ".join(f"{k}={v}" for k, v in cfg.items()), file=out)
    print(f"embedded files: {', '.join(f'{n} ({s} B)' for n, s in info['files'].items())}"
          if "metadata keys" not in info["files"] else f"metadata keys: {info['files']['metadata keys']}", file=out)
    print(f"\n{'class':<9} {'tensors':>7} {'params':>14} {'MiB':>10} {'bits/w':>7}  types", file=out)
    for role, c in sorted(info["classes"].items(), key=lambda kv: -kv[1]["bytes"]):
        print(f"{role:<9} {c['tensors']:>7} {c['params']:>14,} {c['bytes'] / 2**20:>10.1f} "
              f"{c['bits_per_weight']:>7.2f}  {', '.join(c['dtypes'])}", file=out)
    print(f"\n{'name':<48} {'type':<8} {'shape':<20} {'bytes':>12}", file=out)
    for t in info["tensors"]:
        print(f"{t['name']:<48} {t['dtype']:<8} {'x'.join(map(str, t['shape'])):<20} {t['bytes']:>12,}", file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="moecc-inspect", description="Show what a .moecc or GGUF file holds.")
    parser.add_argument("file", help="the .moecc or .gguf file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--verify", action="store_true",
                        help="check every tensor's and file's CRC-32 against its data (reads the whole file; "
                             "GGUF files have no checksums)")
    args = parser.parse_args(argv)
    if is_gguf(args.file):
        return _inspect_gguf(args)
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


def _inspect_gguf(args) -> int:
    try:
        f = GGUFFile(args.file)
        try:
            info = gguf_summary(f)
        finally:
            f.close()
    except FormatError as e:
        print(f"moecc-inspect: error: {e}", file=sys.stderr)
        return 2
    if args.verify:
        info["verify"] = GGUF_NO_CHECKSUMS
    if args.json:
        json.dump(info, sys.stdout, indent=1)
        print()
    else:
        _print_text(info, sys.stdout)
        if args.verify:
            print(f"\nverify: {GGUF_NO_CHECKSUMS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
