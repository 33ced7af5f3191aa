"""Memory budget: what a load will commit, checked against what this process may use.

Owns two things, shared by `load` and the server (`--parallel N` slots, one KV cache each):
`available_memory()` reads what is free now (MemAvailable from /proc/meminfo, tightened by any
cgroup limit on this process, v2 or v1, parents included), and `check_memory(plan, available)`
refuses a load whose committed memory (activation buffers + slots x ctx x KV bytes per
position) cannot fit, and warns when it fits but leaves no room for the mapped weights to stay
resident (decode then reads them from disk). Where nothing is readable (macOS, Windows, no
/proc), `available_memory()` returns None and `check_memory` checks nothing.  Also what a
process actually holds of a mapped file (`resident_file_bytes`: a rank's share of the weights
under expert parallelism, in tests and benchmarks).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

# Bytes of one stored key or value; the names are model.KV_CACHE_DTYPES' keys (not imported, so
# this module does not pull in the forward pass).
KV_ITEMSIZE = {"f16": 2, "f32": 4}
CTX_STEP = 256  # suggested ctx values are rounded down to a multiple of this
UNLIMITED = 1 << 62  # cgroup v1 writes "no limit" as ~2**63 rounded to a page


class MemoryBudgetError(MemoryError):
    """The memory a load would commit is more than the machine (or cgroup) has available."""


class MemoryBudgetWarning(UserWarning):
    """The load fits, but not with its weights resident: decode will page them from disk."""


@dataclass(frozen=True)
class Available:
    bytes: int
    source: str  # "MemAvailable", or the cgroup file whose limit is the tightest


@dataclass(frozen=True)
class MemoryPlan:
    """What a load commits: `buffers` bytes whatever the ctx, plus `per_position` bytes per
    context position per slot (the KV cache); and the `weights` bytes it maps from the file."""
    buffers: int
    per_position: int
    slots: int
    ctx: int
    weights: int
    kv_cache: str

    @property
    def kv_bytes(self) -> int:
        return self.slots * self.ctx * self.per_position

    @property
    def committed(self) -> int:
        return self.buffers + self.kv_bytes

    def largest_ctx(self, budget: int) -> int:
        """The largest multiple of CTX_STEP whose committed memory fits in `budget` (0 if none)."""
        positions = (budget - self.buffers) // (self.slots * self.per_position)
        return max(positions, 0) // CTX_STEP * CTX_STEP


def kv_bytes_per_position(cfg, kv_cache: str) -> int:
    """KV cache bytes per context position of one slot: every layer stores a key and a value of
    head_dim for each KV head. `cfg` needs num_hidden_layers, num_key_value_heads, head_dim."""
    if kv_cache not in KV_ITEMSIZE:
        raise ValueError(f"kv_cache must be one of {', '.join(KV_ITEMSIZE)}, got {kv_cache!r}")
    return cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2 * KV_ITEMSIZE[kv_cache]


def plan_memory(cfg, kv_cache: str, *, ctx: int, buffers: int, weights: int, slots: int = 1) -> MemoryPlan:
    """The plan of a load of `cfg`; `buffers` is the caller's own estimate of its activations."""
    if min(ctx, slots) < 1 or min(buffers, weights) < 0:
        raise ValueError(f"need ctx, slots >= 1 and buffers, weights >= 0: "
                         f"{ctx=} {slots=} {buffers=} {weights=}")
    return MemoryPlan(buffers, kv_bytes_per_position(cfg, kv_cache), slots, ctx, weights, kv_cache)


# -- what is available ------------------------------------------------------------------------

def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, ValueError):  # missing, no permission, not text
        return None


# (mount under sys_root, limit file, usage file, memory.stat keys of the cgroup's page cache)
_V2 = ("fs/cgroup", "memory.max", "memory.current", ("active_file", "inactive_file"))
_V1 = ("fs/cgroup/memory", "memory.limit_in_bytes", "memory.usage_in_bytes",
       ("total_active_file", "total_inactive_file"))  # total_*: this cgroup and its children


def _headroom(where: str, kind: tuple) -> int | None:
    """limit - usage in the cgroup directory `where`, or None if it sets no (readable) limit."""
    try:
        limit, usage = [int(_read(os.path.join(where, name))) for name in kind[1:3]]
    except (TypeError, ValueError):  # unreadable, or cgroup v2's "max" (no limit)
        return None
    if limit >= UNLIMITED:
        return None
    # Page cache charged to the cgroup counts in its usage but is reclaimed before the limit is
    # hit (MemAvailable counts it free too); without this, having read a file looks like a shortage.
    stat = dict(line.split()[:2] for line in (_read(os.path.join(where, "memory.stat")) or "").splitlines()
                if len(line.split()) >= 2)
    cache = sum(int(stat.get(key, 0)) for key in kind[3])
    return max(limit - max(usage - cache, 0), 0)


def _cgroup_headroom(proc_root: str, sys_root: str) -> Available | None:
    """The tightest headroom over this process's cgroups and their parents (a parent's limit
    covers its children's usage too)."""
    best = None
    for line in (_read(os.path.join(proc_root, "self", "cgroup")) or "").splitlines():
        parts = line.strip().split(":", 2)  # "0::/a/b" (v2) or "4:memory:/a/b" (v1)
        if len(parts) != 3 or not (parts[:2] == ["0", ""] or "memory" in parts[1].split(",")):
            continue
        kind = _V2 if parts[:2] == ["0", ""] else _V1
        # Walk from the process's cgroup up to the mount's root. Levels that are not there are
        # skipped: inside a container the mount's root is often the container's own cgroup.
        path = parts[2].strip("/")
        while True:
            room = _headroom(os.path.join(sys_root, kind[0], path), kind)
            if room is not None and (best is None or room < best.bytes):
                best = Available(room, f"cgroup /{path} {kind[1]}")
            if not path:
                break
            path = os.path.dirname(path)
    return best


def available_memory(proc_root: str = "/proc", sys_root: str = "/sys") -> Available | None:
    """min(MemAvailable, the tightest cgroup headroom), or None where neither is readable.
    Both count page cache as available, so the weights, if already cached, are counted there once."""
    cgroup, mem = _cgroup_headroom(proc_root, sys_root), None
    for line in (_read(os.path.join(proc_root, "meminfo")) or "").splitlines():
        if line.startswith("MemAvailable:"):  # "MemAvailable:   24005028 kB"
            mem = int(line.split()[1]) * 1024
    if mem is not None and (cgroup is None or mem <= cgroup.bytes):
        return Available(mem, "MemAvailable")
    return cgroup


def resident_file_bytes(path: str, proc_root: str = "/proc") -> int | None:
    """Bytes of the file at `path` resident in this process's mappings of it (the Rss of each
    mapping in /proc/self/smaps): for a model file, the weights this process has read.  None
    where smaps is not readable."""
    smaps = _read(os.path.join(proc_root, "self", "smaps"))
    if smaps is None:
        return None
    target, total, inside = os.path.realpath(path), 0, False
    for line in smaps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:  # a mapping's first line
            inside = len(fields) == 6 and fields[5] == target
        elif inside and fields[0] == "Rss:":  # "Rss:   1234 kB"
            total += int(fields[1]) * 1024
    return total


# -- the check --------------------------------------------------------------------------------

def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(plan: MemoryPlan, available: Available | None, stacklevel: int = 2) -> None:
    """Raise MemoryBudgetError if `plan` commits more than is available; warn
    (MemoryBudgetWarning) if it fits but not together with its weights; else nothing.
    `stacklevel` as in warnings.warn: 2 blames check_memory's caller."""
    if available is None:  # nothing readable on this platform: no check
        return
    avail, s = available.bytes, "" if plan.slots == 1 else "s"
    if plan.committed > avail:
        fit, both = plan.largest_ctx(avail), plan.largest_ctx(avail - plan.weights)
        buffers = f" (plus {_gib(plan.buffers)} of buffers)" if plan.buffers else ""
        if fit:
            advice = f"the largest ctx that fits is {fit} (a multiple of {CTX_STEP})"
            if both:
                advice += f", {both} with the {_gib(plan.weights)} of weights resident too"
            advice += f" — use ctx={both or fit} or less"
        else:
            advice = f"not even ctx {CTX_STEP} fits — free memory"
        if plan.kv_cache == "f32":
            advice += ", or kv_cache='f16' (half the bytes)"
        if plan.slots > 1:
            advice += ", or fewer slots"
        raise MemoryBudgetError(
            f"the KV cache for ctx {plan.ctx} ({plan.slots} slot{s}, {plan.kv_cache}) needs "
            f"{_gib(plan.kv_bytes)}{buffers} but {_gib(avail)} is available ({available.source}); {advice}")
    if plan.committed + plan.weights > avail:
        both = plan.largest_ctx(avail - plan.weights)
        advice = (f"ctx {both} or less fits both" if both else
                  f"not even ctx {CTX_STEP} fits beside the weights — free memory or use a smaller file")
        warnings.warn(
            f"the weights ({_gib(plan.weights)}) plus the KV cache and buffers ({_gib(plan.committed)}) "
            f"exceed the {_gib(avail)} available ({available.source}), so the weights will be paged "
            f"from disk and decode slows by orders of magnitude; {advice}",
            MemoryBudgetWarning, stacklevel=stacklevel)
