"""The read-bandwidth probe (moecc.bandwidth over the kernel bandwidth.c): a finite, positive
figure from a small buffer, on every ISA and thread count; the binding's argument checks.  No
timing asserts: the machine is shared."""
from __future__ import annotations

import math

import numpy as np
import pytest

from moecc import _kernels as K
from moecc import bandwidth

LOAD_BITS = {"generic": 64, "avx2": 256, "avx512": 512, "avx512vnni": 512}


def test_probe_of_a_small_buffer_is_positive_and_finite():
    r = bandwidth.measure(threads=1, nbytes=64 << 20, passes=2)
    assert math.isfinite(r["gb_s"]) and r["gb_s"] > 0
    assert len(r["passes_gb_s"]) == 2 and r["gb_s"] == pytest.approx(max(r["passes_gb_s"]), abs=0.01)
    assert r["bytes"] == 64 << 20 and r["threads"] == 1
    assert r["openmp"] == K.build_info()["openmp"]


def test_the_kernel_reads_with_the_active_isas_loads(isa, threads):
    rates = K.read_bandwidth(4 << 20, passes=2, threads=threads)
    assert rates.shape == (2,) and rates.dtype == np.float64
    assert np.all(np.isfinite(rates)) and np.all(rates > 0)
    assert K.bandwidth_load_bits() == LOAD_BITS[isa]


def test_a_size_is_rounded_down_to_whole_steps():
    assert bandwidth.measure(threads=1, nbytes=3 * K.bandwidth_step() + 7, passes=1)["bytes"] == 3 * K.bandwidth_step()


@pytest.mark.parametrize("nbytes, passes, threads, message", [
    (0, 1, 1, "multiple of"),
    (K.bandwidth_step() + 1, 1, 1, "multiple of"),
    (-K.bandwidth_step(), 1, 1, "multiple of"),
    (K.bandwidth_step(), 0, 1, "passes"),
    (K.bandwidth_step(), 1, 0, "threads"),
])
def test_the_binding_refuses_bad_arguments(nbytes, passes, threads, message):
    with pytest.raises(ValueError, match=message):
        K.read_bandwidth(nbytes, passes=passes, threads=threads)
