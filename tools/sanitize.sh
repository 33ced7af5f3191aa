#!/usr/bin/env bash
# Build the kernels with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch copy of the
# tree and run the kernel and engine tests under them.  Any out-of-bounds access, use after
# free or undefined behaviour aborts the run with a report.
#
#     bash tools/sanitize.sh [pytest args...]      # default: the kernel, engine, fuzz and imatrix tests
#
# Needs gcc (libasan, libubsan). The source tree and its installed build are left untouched.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/moecc-asan.XXXXXX)"
trap 'rm -rf "$work"' EXIT
cp -r "$root/src" "$root/tests" "$root/setup.py" "$root/pyproject.toml" "$root/README.md" "$work/"
find "$work/src" -name '*.so' -delete
cd "$work"
# the build's own requirements (pip's build isolation installs them only for `pip install .`)
python -c "import Cython, setuptools, numpy" 2>/dev/null || python -m pip install -q "Cython>=3.0" setuptools numpy
export CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
export LDFLAGS="-fsanitize=address,undefined"
python setup.py -q build_ext --inplace >/dev/null
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"  # CPython's own allocations are not ours to report
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export PYTHONPATH="$work/src"
python -c "from moecc import _kernels; print('sanitized build:', _kernels.build_info())"
if [ "$#" -eq 0 ]; then
    set -- tests/test_kernels.py tests/test_quant_kernels.py tests/test_ggml_types.py tests/test_kquant.py \
        tests/test_engine.py tests/test_fuzz_loader.py tests/test_gguf_errors.py tests/test_imatrix.py \
        -q -p no:cacheprovider
fi
python -m pytest "$@"
