"""memory.py: reading MemAvailable and cgroup limits from fake /proc and /sys trees, and the
refuse / warn / silent decision of check_memory."""
from __future__ import annotations

import os
import re
import warnings
from types import SimpleNamespace

import pytest

from moecc import memory
from moecc.config import Qwen3MoeConfig
from moecc.memory import Available, MemoryBudgetError, MemoryBudgetWarning, check_memory, plan_memory
from moecc.model import KVCache

GiB, MiB = 2**30, 2**20
QWEN3_30B = SimpleNamespace(num_hidden_layers=48, num_key_value_heads=4, head_dim=128)


def write(root, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def meminfo(available_kib: int) -> str:
    return (f"MemTotal:       24684084 kB\nMemFree:         1000000 kB\n"
            f"MemAvailable:   {available_kib} kB\nBuffers:          100000 kB\n")


@pytest.fixture
def roots(tmp_path):
    """(proc_root, sys_root) of an empty fake machine; tests write the files they need."""
    (tmp_path / "proc").mkdir()
    (tmp_path / "sys").mkdir()
    return tmp_path / "proc", tmp_path / "sys"


def read(roots) -> Available | None:
    return memory.available_memory(proc_root=str(roots[0]), sys_root=str(roots[1]))


# -- reading ----------------------------------------------------------------------------------

def test_mem_available_without_cgroup(roots):
    write(roots[0], "meminfo", meminfo(20 * 1024 * 1024))
    assert read(roots) == Available(20 * GiB, "MemAvailable")


def test_cgroup_v2_tighter_than_mem_available(roots):
    proc, sys = roots
    write(proc, "meminfo", meminfo(20 * 1024 * 1024))
    write(proc, "self/cgroup", "0::/user.slice/app.scope\n")
    leaf = "fs/cgroup/user.slice/app.scope/"
    write(sys, leaf + "memory.max", f"{8 * GiB}\n")
    write(sys, leaf + "memory.current", f"{3 * GiB}\n")
    # page cache charged to the cgroup is reclaimable: it is not subtracted from the headroom
    write(sys, leaf + "memory.stat", f"anon {GiB}\nfile {2 * GiB}\nactive_file {GiB}\ninactive_file {GiB // 2}\n")
    got = read(roots)
    assert got.bytes == 8 * GiB - (3 * GiB - GiB - GiB // 2)
    assert got.source == "cgroup /user.slice/app.scope memory.max"


def test_cgroup_v2_parent_limit_applies(roots):
    proc, sys = roots
    write(proc, "meminfo", meminfo(20 * 1024 * 1024))
    write(proc, "self/cgroup", "0::/user.slice/app.scope\n")
    write(sys, "fs/cgroup/user.slice/app.scope/memory.max", "max\n")  # the leaf is unlimited
    write(sys, "fs/cgroup/user.slice/app.scope/memory.current", f"{GiB}\n")
    write(sys, "fs/cgroup/user.slice/memory.max", f"{6 * GiB}\n")
    write(sys, "fs/cgroup/user.slice/memory.current", f"{5 * GiB}\n")  # siblings use most of it
    got = read(roots)
    assert got == Available(GiB, "cgroup /user.slice memory.max")


def test_cgroup_v2_max_everywhere_is_mem_available(roots):
    proc, sys = roots
    write(proc, "meminfo", meminfo(12 * 1024 * 1024))
    write(proc, "self/cgroup", "0::/a/b\n")
    for rel in ("a/b", "a"):
        write(sys, f"fs/cgroup/{rel}/memory.max", "max\n")
        write(sys, f"fs/cgroup/{rel}/memory.current", f"{30 * GiB}\n")
    assert read(roots) == Available(12 * GiB, "MemAvailable")


def test_cgroup_v1_container_root(roots):
    """v1, inside a container: /proc/self/cgroup names the host's path, the mount shows only the
    container's own cgroup at its root; the limit there still applies."""
    proc, sys = roots
    write(proc, "meminfo", meminfo(20 * 1024 * 1024))
    write(proc, "self/cgroup", "5:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    write(sys, "fs/cgroup/memory/memory.limit_in_bytes", f"{4 * GiB}\n")
    write(sys, "fs/cgroup/memory/memory.usage_in_bytes", f"{3 * GiB}\n")
    write(sys, "fs/cgroup/memory/memory.stat",
          f"cache {GiB}\ninactive_file 5\nactive_file 5\n"
          f"total_inactive_file {GiB // 4}\ntotal_active_file {GiB // 4}\n")
    got = read(roots)
    assert got == Available(4 * GiB - (3 * GiB - GiB // 2), "cgroup / memory.limit_in_bytes")


def test_cgroup_v1_unlimited_is_mem_available(roots):
    proc, sys = roots
    write(proc, "meminfo", meminfo(20 * 1024 * 1024))
    write(proc, "self/cgroup", "4:memory:/process_api/x\n")
    for rel in ("process_api/x", "process_api", ""):
        write(sys, f"fs/cgroup/memory/{rel}/memory.limit_in_bytes", "9223372036854771712\n")
        write(sys, f"fs/cgroup/memory/{rel}/memory.usage_in_bytes", f"{GiB}\n")
    assert read(roots) == Available(20 * GiB, "MemAvailable")


def test_cgroup_without_meminfo(roots):
    proc, sys = roots
    write(proc, "self/cgroup", "0::/job\n")
    write(sys, "fs/cgroup/job/memory.max", f"{2 * GiB}\n")
    write(sys, "fs/cgroup/job/memory.current", f"{GiB}\n")
    assert read(roots) == Available(GiB, "cgroup /job memory.max")


def test_nothing_readable_is_none_and_no_check(roots):
    proc, sys = roots
    assert read(roots) is None  # no files at all (macOS)
    (proc / "meminfo").mkdir()  # unreadable as a file
    write(proc, "self/cgroup", "0::/job\n")
    write(sys, "fs/cgroup/job/memory.max", "garbage\n")
    write(sys, "fs/cgroup/job/memory.current", f"{GiB}\n")
    assert read(roots) is None
    huge = plan_memory(QWEN3_30B, "f32", ctx=10**7, buffers=GiB, weights=100 * GiB)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_memory(huge, read(roots))  # neither raises nor warns


# -- sizes ------------------------------------------------------------------------------------

def test_kv_bytes_per_position():
    assert memory.kv_bytes_per_position(QWEN3_30B, "f16") == 96 * 1024  # README: 96 KiB per position
    assert memory.kv_bytes_per_position(QWEN3_30B, "f32") == 192 * 1024
    with pytest.raises(ValueError, match="kv_cache"):
        memory.kv_bytes_per_position(QWEN3_30B, "bf16")


@pytest.mark.parametrize("kv_cache", ["f16", "f32"])
def test_kv_bytes_match_the_caches_model_allocates(kv_cache):
    cfg = Qwen3MoeConfig(vocab_size=64, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         num_experts=4, num_experts_per_tok=2)
    for slots in (1, 3):
        cache = KVCache(cfg, slots, 40, kv_cache)
        assert slots * memory.kv_bytes_per_position(cfg, kv_cache) * 40 == cache.k.nbytes + cache.v.nbytes


def test_slots_multiply_the_kv_cache():
    one = plan_memory(QWEN3_30B, "f16", ctx=32768, buffers=100 * MiB, weights=0)
    four = plan_memory(QWEN3_30B, "f16", ctx=32768, buffers=100 * MiB, weights=0, slots=4)
    assert one.kv_bytes == 3 * GiB and four.kv_bytes == 12 * GiB
    assert four.committed == 100 * MiB + 12 * GiB
    avail = Available(8 * GiB, "MemAvailable")
    check_memory(one, avail)
    with pytest.raises(MemoryBudgetError, match=r"ctx 32768 \(4 slots, f16\) needs 12\.0 GiB") as e:
        check_memory(four, avail)
    fit = int(re.search(r"the largest ctx that fits is (\d+)", str(e.value)).group(1))
    assert fit == (8 * GiB - 100 * MiB) // (4 * 96 * 1024) // 256 * 256
    assert "fewer slots" in str(e.value)


# -- the decision -----------------------------------------------------------------------------

def ctx_in(message: str, pattern: str) -> int:
    return int(re.search(pattern, message).group(1))


@pytest.mark.parametrize("kv_cache", ["f16", "f32"])
def test_refusal_names_sizes_and_a_ctx_that_fits(kv_cache):
    """The user's case: ctx 327680 on a 24 GiB machine with a 17.2 GB file."""
    plan = plan_memory(QWEN3_30B, kv_cache, ctx=327680, buffers=200 * MiB, weights=17_200_000_000)
    avail = Available(int(21.3 * GiB), "MemAvailable")
    with pytest.raises(MemoryBudgetError) as e:
        check_memory(plan, avail)
    assert isinstance(e.value, MemoryError)
    msg = str(e.value)
    assert "\n" not in msg
    kv = {"f16": "30.0", "f32": "60.0"}[kv_cache]
    assert f"ctx 327680 (1 slot, {kv_cache}) needs {kv} GiB (plus 0.2 GiB of buffers)" in msg
    assert "but 21.3 GiB is available (MemAvailable)" in msg
    assert ("kv_cache='f16'" in msg) == (kv_cache == "f32")
    assert "slots" not in msg
    fit = ctx_in(msg, r"the largest ctx that fits is (\d+)")
    both = ctx_in(msg, r", (\d+) with the 16\.0 GiB of weights resident too")
    assert f"use ctx={both} or less" in msg
    for ctx, budget in ((fit, avail.bytes), (both, avail.bytes - plan.weights)):
        assert ctx % 256 == 0
        at = plan_memory(QWEN3_30B, kv_cache, ctx=ctx, buffers=200 * MiB, weights=0)
        above = plan_memory(QWEN3_30B, kv_cache, ctx=ctx + 256, buffers=200 * MiB, weights=0)
        assert at.committed <= budget < above.committed
    check_memory(plan_memory(QWEN3_30B, kv_cache, ctx=fit, buffers=200 * MiB, weights=0), avail)


def test_refusal_when_not_even_the_smallest_ctx_fits():
    plan = plan_memory(QWEN3_30B, "f16", ctx=4096, buffers=GiB, weights=0)
    with pytest.raises(MemoryBudgetError, match="not even ctx 256 fits — free memory$"):
        check_memory(plan, Available(GiB + 100 * 96 * 1024, "cgroup /job memory.max"))


def test_warning_when_weights_do_not_fit_beside_the_cache():
    """The user's second case: ctx 200000 fits, but pushes the weights out of memory."""
    plan = plan_memory(QWEN3_30B, "f16", ctx=200000, buffers=200 * MiB, weights=17_200_000_000)
    avail = Available(int(21.3 * GiB), "MemAvailable")
    with pytest.warns(MemoryBudgetWarning) as record:
        check_memory(plan, avail)
    assert len(record) == 1 and record[0].filename == __file__
    msg = str(record[0].message)
    assert "the weights (16.0 GiB) plus the KV cache and buffers (18.5 GiB)" in msg
    assert "exceed the 21.3 GiB available (MemAvailable)" in msg and "paged from disk" in msg
    ctx = ctx_in(msg, r"ctx (\d+) or less fits both")
    at = plan_memory(QWEN3_30B, "f16", ctx=ctx, buffers=200 * MiB, weights=17_200_000_000)
    above = plan_memory(QWEN3_30B, "f16", ctx=ctx + 256, buffers=200 * MiB, weights=17_200_000_000)
    assert ctx % 256 == 0 and at.committed + at.weights <= avail.bytes < above.committed + above.weights
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_memory(at, avail)


def test_warning_when_the_weights_alone_do_not_fit():
    plan = plan_memory(QWEN3_30B, "f16", ctx=1024, buffers=0, weights=20 * GiB)
    with pytest.warns(MemoryBudgetWarning, match="not even ctx 256 fits beside the weights"):
        check_memory(plan, Available(16 * GiB, "MemAvailable"))


def test_silent_when_everything_fits(roots):
    proc, sys = roots
    write(proc, "meminfo", meminfo(20 * 1024 * 1024))
    plan = plan_memory(QWEN3_30B, "f16", ctx=4096, buffers=200 * MiB, weights=17_200_000_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_memory(plan, read(roots))


def test_cgroup_limit_refuses_what_mem_available_allows(roots):
    proc, sys = roots
    write(proc, "meminfo", meminfo(60 * 1024 * 1024))
    write(proc, "self/cgroup", "0::/kubepods/pod1\n")
    write(sys, "fs/cgroup/kubepods/pod1/memory.max", f"{16 * GiB}\n")
    write(sys, "fs/cgroup/kubepods/pod1/memory.current", f"{GiB}\n")
    plan = plan_memory(QWEN3_30B, "f16", ctx=262144, buffers=0, weights=0)  # 24 GiB of cache
    with pytest.raises(MemoryBudgetError, match=r"but 15\.0 GiB is available \(cgroup /kubepods/pod1 memory\.max\)"):
        check_memory(plan, read(roots))


def test_plan_rejects_nonsense():
    with pytest.raises(ValueError, match="slots"):
        plan_memory(QWEN3_30B, "f16", ctx=1024, buffers=0, weights=0, slots=0)
    with pytest.raises(ValueError, match="ctx"):
        plan_memory(QWEN3_30B, "f16", ctx=0, buffers=0, weights=0)


def test_this_machine():
    """The real /proc and /sys: on Linux, something is readable and positive."""
    got = memory.available_memory()
    if not os.path.exists("/proc/meminfo"):
        pytest.skip("no /proc/meminfo here")
    assert got is not None and got.bytes > 0


def _fake_meminfo(tmp_path, available_bytes: int) -> str:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {available_bytes // 1024} kB\n")
    (proc / "self" / "cgroup").write_text("")
    return str(proc)


def _fake_memory(tmp_path, monkeypatch, available: int) -> None:
    proc = _fake_meminfo(tmp_path, available)
    real = memory.available_memory
    monkeypatch.setattr(memory, "available_memory", lambda: real(proc_root=proc, sys_root=str(tmp_path)))


def _sizes(path):
    """(KV bytes per position, activation buffer bytes, mapped weight bytes) of a load of path."""
    import moecc
    from moecc.model import PREFILL_CHUNK, Buffers
    model = moecc.load(path, ctx=16)
    cfg = model.config
    return memory.kv_bytes_per_position(cfg, "f16"), Buffers(cfg, PREFILL_CHUNK).nbytes, model.source.mapped_bytes


def test_load_refuses_a_cache_past_memory_available(tmp_path, converted, monkeypatch):
    """moecc.load reads the machine's memory before it commits the KV cache: a ctx whose cache
    cannot fit is refused with the largest ctx that would."""
    import moecc
    path = converted("main", "bf16")
    per_position, buffers, _ = _sizes(path)
    _fake_memory(tmp_path, monkeypatch, buffers + 1500 * per_position)
    with pytest.raises(MemoryBudgetError, match=r"ctx 4096 .* largest ctx that fits is 1280 "):
        moecc.load(path, ctx=4096)
    with pytest.warns(MemoryBudgetWarning):  # it fits, but leaves no room for the weights
        assert moecc.load(path, ctx=1280).ctx == 1280


def test_load_warns_when_the_weights_would_not_stay_resident(tmp_path, converted, monkeypatch):
    import moecc
    path = converted("main", "bf16")
    per_position, buffers, weights = _sizes(path)
    _fake_memory(tmp_path, monkeypatch, weights + buffers + 1500 * per_position)
    with pytest.warns(MemoryBudgetWarning, match="paged from disk.*ctx 1280 or less fits both"):
        moecc.load(path, ctx=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cache, buffers and weights fit: neither refused nor warned
        assert moecc.load(path, ctx=1280).ctx == 1280
