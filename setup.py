"""Build moecc's compiled kernels: the C sources in src/moecc/_kernels and one Cython module.

Metadata lives in pyproject.toml; this file only declares the extension and its flags.
  - OpenMP is probed with the actual compiler (a tiny omp.h program built with -fopenmp); without
    it the kernels build serial and `threads=` is accepted but has no effect.
  - The library is built for baseline x86-64 / the platform default: AVX2 and AVX-512 code is
    compiled through per-function target attributes and chosen at run time.
Environment:
  MOECC_NATIVE=1   add -march=native (only for a build that never leaves this machine)
  MOECC_OPENMP=0   build serial even if the compiler has OpenMP
"""
import os
import shlex
import shutil
import sys
import tempfile

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNELS = "src/moecc/_kernels"
C_SOURCES = [
    "dispatch.c",
    "storage.c",
    "dot_generic.c",
    "dot_avx2.c",
    "dot_avx512.c",
    "qdot_generic.c",
    "qdot_x86.c",
    "kdot_generic.c",
    "kdot_x86.c",
    "kquant.c",
    "qpanel_avx2.c",
    "qpanel_generic.c",
    "qpanel_avx512.c",
    "matmul.c",
    "ops.c",
    "attention.c",
    "moe.c",
    "forward.c",
    "stats.c",
    "bandwidth.c",
]
BASE_FLAGS = ["-O3", "-ffp-contract=fast", "-fno-math-errno"]
OPENMP_FLAG = "-fopenmp"

OMP_PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
#pragma omp parallel reduction(+ : n)
    n += 1;
    return n > 0 && omp_get_max_threads() > 0 ? 0 : 1;
}
"""


def _flag_on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _flag_off(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


class BuildExt(build_ext):
    """build_ext that probes OpenMP with the compiler it is about to use."""

    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            raise RuntimeError("moecc's kernels need gcc or clang (GNU C extensions)")
        flags = list(BASE_FLAGS)
        if _flag_on("MOECC_NATIVE"):
            flags.append("-march=native")
        openmp = not _flag_off("MOECC_OPENMP") and self._has_openmp()
        if not openmp:
            print(
                "moecc: OpenMP not available (or MOECC_OPENMP=0): building the kernels "
                "single-threaded; threads= will be accepted and ignored.",
                file=sys.stderr,
            )
        for ext in self.extensions:
            ext.extra_compile_args = flags + ([OPENMP_FLAG] if openmp else ["-Wno-unknown-pragmas"])
            ext.extra_link_args = [OPENMP_FLAG] if openmp else []
        super().build_extensions()

    def _has_openmp(self) -> bool:
        tmp = tempfile.mkdtemp(prefix="moecc-omp-")
        try:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(OMP_PROBE)
            objs = self.compiler.compile([src], output_dir=tmp, extra_postargs=[OPENMP_FLAG])
            # LDFLAGS reach the extension's link but not an executable's: pass them here too, so
            # a build with, say, -fsanitize in CFLAGS and LDFLAGS probes like it will link
            self.compiler.link_executable(
                objs, "probe", output_dir=tmp,
                extra_postargs=[OPENMP_FLAG] + shlex.split(os.environ.get("LDFLAGS", "")),
            )
            return True
        except Exception:  # CompileError / LinkError: no usable OpenMP
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


extension = Extension(
    "moecc._kernels._ext",
    sources=[f"{KERNELS}/_ext.pyx"] + [f"{KERNELS}/{name}" for name in C_SOURCES],
    depends=[f"{KERNELS}/{name}" for name in ("moecc.h", "gpanel_x86.h", "sweep_x86.h")],
    include_dirs=[KERNELS, numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(
    ext_modules=cythonize(
        [extension],
        compiler_directives={"language_level": "3"},
    ),
    cmdclass={"build_ext": BuildExt},
)
