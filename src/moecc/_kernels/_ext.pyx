# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Bindings for the C kernels in moecc.h.

Glue only: check dtypes, shapes, contiguity and writability (TypeError for a wrong type or
dtype, ValueError for anything else), release the GIL, call C. All maths is in C.
"""
import numpy as np

from moecc.storage import TYPES

cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t

cnp.import_array()


cdef extern from "moecc.h" nogil:
    ctypedef enum moecc_storage:
        MOECC_F32
        MOECC_F16
        MOECC_STORAGE_COUNT
    ctypedef struct moecc_storage_info:
        const char *name
        int block_values
        int block_bytes
        int panel_rows
        int row_lookup
        int quantized_activations
    const moecc_storage_info moecc_storage_types[]
    enum:
        MOECC_OK
        MOECC_ERR_INDEX
        MOECC_ERR_SHAPE
        MOECC_ERR_STORAGE
        MOECC_ERR_ISA
        MOECC_ERR_NOMEM
        MOECC_QBLOCK

    int moecc_storage_check(moecc_storage s, int64_t N, int64_t K)
    int64_t moecc_row_bytes(moecc_storage s, int64_t K)
    int64_t moecc_xq_bytes(int64_t K)
    void moecc_quantize_rows(const float *x, int64_t T, int64_t K, void *xq)

    void moecc_dispatch_init()
    int moecc_isa_count()
    const char *moecc_isa_name(int i)
    int moecc_isa_supported(int i)
    int moecc_set_isa(const char *name)
    const char *moecc_get_isa()
    int moecc_openmp()
    int moecc_max_threads()

    int moecc_matmul(const float *x, int64_t T, int64_t K, const void *w, moecc_storage s,
                     int64_t N, float *out, int threads)
    int moecc_embedding(const void *table, moecc_storage s, int64_t V, int64_t D,
                        const int32_t *ids, int64_t T, float *out, int threads)
    void moecc_rmsnorm(const float *x, int64_t R, int64_t D, const float *weight, float eps,
                       float *out, int threads)
    int moecc_rope(float *x, int64_t T, int64_t H, int64_t hd, const int32_t *positions,
                   const float *cos, const float *sin, int64_t P, int threads)
    int moecc_router_topk(const float *logits, int64_t T, int64_t E, int64_t top_k, int normalize,
                          int32_t *idx_out, float *weight_out, int threads)
    int moecc_attention(const float *q, int64_t T, int64_t Hq, int64_t hd, const void *k_cache,
                        const void *v_cache, moecc_storage kv, int64_t Hkv, int64_t C,
                        int64_t start, float *out, int threads)
    int64_t moecc_moe_scratch_floats(int64_t T, int64_t top_k, int64_t D, int64_t I)
    int moecc_moe_ffn(const float *x, int64_t T, int64_t D, const void *gate, const void *up,
                      moecc_storage fgu, const void *down, moecc_storage fd, int64_t E, int64_t I,
                      const int32_t *idx, const float *weights, int64_t top_k, float *scratch,
                      float *out, int threads)


moecc_dispatch_init()


# ---- checks ---------------------------------------------------------------------------------

cdef int F32 = cnp.NPY_FLOAT32
cdef int F16 = cnp.NPY_FLOAT16
cdef int I32 = cnp.NPY_INT32
cdef int U16 = cnp.NPY_UINT16
cdef int U8 = cnp.NPY_UINT8
cdef int I8 = cnp.NPY_INT8
_DTYPE_NAMES = {F32: "float32", F16: "float16", I32: "int32", U16: "uint16", U8: "uint8", I8: "int8"}


cdef cnp.ndarray _array(object a, str name, int typenum, int ndim, bint writable=False):
    """a as an ndarray of the given dtype and ndim (ndim < 0: any), C-contiguous."""
    if not isinstance(a, cnp.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    cdef cnp.ndarray arr = <cnp.ndarray>a
    if typenum >= 0 and cnp.PyArray_TYPE(arr) != typenum:
        raise TypeError(f"{name} must have dtype {_DTYPE_NAMES[typenum]}, got {a.dtype}")
    if ndim >= 0 and cnp.PyArray_NDIM(arr) != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
    if writable and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name} must be writable")
    return arr


def storage_types():
    """The C table of storage types (moecc.h), row by row: what moecc.storage.TYPES must equal."""
    cdef int i
    rows = []
    for i in range(<int>MOECC_STORAGE_COUNT):
        t = &moecc_storage_types[i]
        rows.append({"name": t.name.decode(), "code": i, "block_values": t.block_values,
                     "block_bytes": t.block_bytes, "panel_rows": t.panel_rows,
                     "row_lookup": bool(t.row_lookup),
                     "quantized_activations": bool(t.quantized_activations)})
    return rows


_INFERRED = {F32: "f32", U16: "bf16", F16: "f16"}  # storage=None: the float types by dtype


cdef moecc_storage _storage(object storage) except *:
    """The C code of the storage type called `storage`; ValueError if there is none."""
    st = TYPES.get(storage) if isinstance(storage, str) else None
    if st is None:
        if not isinstance(storage, str):
            raise TypeError(f"storage must be a str or None, got {type(storage).__name__}")
        raise ValueError(f"unknown storage type {storage!r}; expected one of {', '.join(TYPES)}")
    return <moecc_storage>st.code


cdef moecc_storage _weights(cnp.ndarray w, str name, object storage, int64_t K,
                            tuple lead) except *:
    """The storage type of weights w, rows of K values, checked once here (the kernels trust it):
    storage None infers f32 (float32), bf16 (uint16) or f16 (float16); the dtype must be the
    type's view dtype (TypeError), K a whole number of its blocks, the rows (the last of lead) a
    whole number of its panels, and w.shape lead + (the row's length in view elements,)."""
    cdef int t = cnp.PyArray_TYPE(w)
    if storage is None:
        if t == U8:
            raise TypeError(f"{name} is uint8: quantized weights need storage='q8', 'q4' or 'q4p'")
        if t not in _INFERRED:
            raise TypeError(f"{name} must be float32, uint16 (bf16 bits) or float16, "
                            f"got {(<object>w).dtype}")
        storage = _INFERRED[t]
    cdef moecc_storage s = _storage(storage)
    st = TYPES[storage]
    if (<object>w).dtype != st.view_dtype:
        raise TypeError(f"{name} must have dtype {st.view_dtype} for storage {storage!r}, "
                        f"got {(<object>w).dtype}")
    rows = lead[len(lead) - 1] if lead else 1  # (no negative indexing: wraparound is off)
    if moecc_storage_check(s, rows, K) != MOECC_OK:
        raise ValueError(f"{name}: {st.shape_problem((rows, K))}")
    expected = lead + (moecc_row_bytes(s, K) // st.view_dtype.itemsize,)
    if (<object>w).shape != expected:
        raise ValueError(f"{name} must have shape {expected} ({storage} rows of {K} values), "
                         f"got shape {(<object>w).shape}")
    return s


cdef inline int64_t _dim(cnp.ndarray a, int i):
    return cnp.PyArray_DIM(a, i)


cdef _shape(cnp.ndarray a, str name, tuple expected):
    """ValueError unless a.shape == expected."""
    if (<object>a).shape != expected:
        raise ValueError(f"{name} must have shape {expected}, got {(<object>a).shape}")


cdef _disjoint(cnp.ndarray a, str aname, cnp.ndarray b, str bname):
    """ValueError if the buffers of a and b overlap."""
    cdef size_t a0 = <size_t>cnp.PyArray_DATA(a), b0 = <size_t>cnp.PyArray_DATA(b)
    cdef size_t a1 = a0 + <size_t>cnp.PyArray_NBYTES(a), b1 = b0 + <size_t>cnp.PyArray_NBYTES(b)
    if a0 < b1 and b0 < a1:
        raise ValueError(f"{aname} and {bname} must not overlap")


cdef int _threads(int threads) except -1:
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return threads


cdef inline void *_ptr(cnp.ndarray a):
    return cnp.PyArray_DATA(a)


# ---- dispatch -------------------------------------------------------------------------------

def build_info():
    """What was compiled and what runs: OpenMP, ISAs compiled / available here / in use."""
    n = moecc_isa_count()
    return {
        "openmp": bool(moecc_openmp()),
        "isa_compiled": [moecc_isa_name(i).decode() for i in range(n)],
        "isa_available": [moecc_isa_name(i).decode() for i in range(n) if moecc_isa_supported(i)],
        "isa": get_isa(),
        "max_threads": moecc_max_threads(),
    }


ISAS = ("generic", "avx2", "avx512", "avx512vnni")


def set_isa(str name):
    """Use the kernels of ISA `name` (one of ISAS) from now on."""
    if moecc_set_isa(name.encode()) != MOECC_OK:
        info = build_info()
        if name not in ISAS:
            raise ValueError(f"unknown ISA {name!r}; expected one of {', '.join(ISAS)}")
        if name not in info["isa_compiled"]:
            raise ValueError(f"ISA {name!r} is not compiled into this build; "
                             f"compiled: {info['isa_compiled']}")
        raise ValueError(f"ISA {name!r} is not supported by this CPU; "
                         f"available: {info['isa_available']}")


def get_isa():
    """Name of the ISA in use."""
    return moecc_get_isa().decode()


# ---- kernels --------------------------------------------------------------------------------

cdef _check_rc(int rc, str what):
    """Errors the C side reports after the bindings' checks (should not happen but for memory)."""
    if rc == MOECC_ERR_NOMEM:
        raise MemoryError(f"{what}: out of memory for the quantized activations")
    if rc != MOECC_OK:
        raise ValueError(f"{what}: rejected by the kernel (error {rc})")


def row_bytes(str storage, int64_t K):
    """Bytes of one stored row of K values of `storage` (see storage_types())."""
    if K < 0:
        raise ValueError(f"K must be >= 0, got {K}")
    cdef moecc_storage s = _storage(storage)
    if moecc_storage_check(s, moecc_storage_types[<int>s].panel_rows, K) != MOECC_OK:
        raise ValueError(TYPES[storage].shape_problem((moecc_storage_types[<int>s].panel_rows, K)))
    return int(moecc_row_bytes(s, K))


def quantize_activations(x):
    """The kernels' activation quantization (what q8 / q4 / q4p weights are multiplied with), on
    the ISA in use: x float32 [T, K], K % 32 == 0 -> (q int8 [T, K], scales float32 [T, K/32]),
    x ~ scale * q per block of 32, q in the order of the values (reference:
    moecc.quant.quantize_activations)."""
    cdef cnp.ndarray ax = _array(x, "x", F32, 2)
    cdef int64_t T = _dim(ax, 0), K = _dim(ax, 1)
    if K % MOECC_QBLOCK:
        raise ValueError(f"the row length must be a multiple of {MOECC_QBLOCK}, got {K}")
    cdef int64_t xb = moecc_xq_bytes(K)
    cdef cnp.ndarray buf = np.empty(T * xb, np.uint8)
    cdef const float *p_x = <const float *>_ptr(ax)
    cdef char *p_b = <char *>_ptr(buf)
    with nogil:
        moecc_quantize_rows(p_x, T, K, p_b)
    rows = buf.reshape(T, xb)
    q = rows[:, :K].view(np.int8).copy()
    d = rows[:, K:K + 4 * (K // MOECC_QBLOCK)].copy().view(np.float32)
    return q, d


def matmul(x, w, out, *, int threads, storage=None):
    """out[T, N] = x[T, K] @ w[N, K].T. w: float32, uint16 holding bf16 or float16 (storage None
    infers these), or uint8 [N, row_bytes(storage, K)] with storage "q8", "q4" or "q4p"."""
    cdef cnp.ndarray ax = _array(x, "x", F32, 2)
    cdef cnp.ndarray aw = _array(w, "w", -1, 2)
    cdef cnp.ndarray ao = _array(out, "out", F32, 2, True)
    cdef int64_t T = _dim(ax, 0), K = _dim(ax, 1), N = _dim(aw, 0)
    cdef moecc_storage f = _weights(aw, "w", storage, K, (N,))
    _shape(ao, "out", (T, N))
    _disjoint(ax, "x", ao, "out")
    cdef int nt = _threads(threads), rc
    cdef const float *p_ax = <const float *>_ptr(ax)
    cdef const void *p_aw = <const void *>_ptr(aw)
    cdef float *p_ao = <float *>_ptr(ao)
    with nogil:
        rc = moecc_matmul(p_ax, T, K, p_aw, f, N, p_ao, nt)
    _check_rc(rc, "matmul")


def embedding(table, ids, out, *, int threads, storage=None):
    """out[t] = table[ids[t]] as float32; table [V, D] float32 or uint16 (bf16), or uint8
    [V, row_bytes(storage, D)] with storage "q8" / "q4" (rows dequantized); D is out's."""
    cdef cnp.ndarray at = _array(table, "table", -1, 2)
    cdef cnp.ndarray ai = _array(ids, "ids", I32, 1)
    cdef cnp.ndarray ao = _array(out, "out", F32, 2, True)
    cdef int64_t V = _dim(at, 0), D = _dim(ao, 1), T = _dim(ai, 0)
    cdef moecc_storage f = _weights(at, "table", storage, D, (V,))
    if not moecc_storage_types[<int>f].row_lookup:
        raise ValueError(f"table: {storage} rows cannot be looked up one by one (store the "
                         f"embedding as q4, q8 or a float type)")
    _shape(ao, "out", (T, D))
    cdef int nt = _threads(threads), rc
    cdef const void *p_at = <const void *>_ptr(at)
    cdef const int32_t *p_ai = <const int32_t *>_ptr(ai)
    cdef float *p_ao = <float *>_ptr(ao)
    with nogil:
        rc = moecc_embedding(p_at, f, V, D, p_ai, T,
                             p_ao, nt)
    if rc == MOECC_ERR_INDEX:
        raise ValueError(f"ids out of range [0, {V})")
    _check_rc(rc, "embedding")


def rmsnorm(x, weight, float eps, out, *, int threads):
    """out = x / sqrt(mean(x**2, -1) + eps) * weight per row of x [R, D]; out may be x."""
    cdef cnp.ndarray ax = _array(x, "x", F32, 2)
    cdef cnp.ndarray aw = _array(weight, "weight", F32, 1)
    cdef cnp.ndarray ao = _array(out, "out", F32, 2, True)
    cdef int64_t R = _dim(ax, 0), D = _dim(ax, 1)
    _shape(aw, "weight", (D,))
    _shape(ao, "out", (R, D))
    if _ptr(ao) != _ptr(ax):
        _disjoint(ax, "x", ao, "out (unless it is x itself)")
    cdef int nt = _threads(threads)
    cdef const float *p_ax = <const float *>_ptr(ax)
    cdef const float *p_aw = <const float *>_ptr(aw)
    cdef float *p_ao = <float *>_ptr(ao)
    with nogil:
        moecc_rmsnorm(p_ax, R, D, p_aw, eps,
                      p_ao, nt)


def rope(x, positions, cos, sin, *, int threads):
    """Rotate-half RoPE in place on x [T, H, hd] with tables cos/sin [P, hd/2]."""
    cdef cnp.ndarray ax = _array(x, "x", F32, 3, True)
    cdef cnp.ndarray ap = _array(positions, "positions", I32, 1)
    cdef cnp.ndarray ac = _array(cos, "cos", F32, 2)
    cdef cnp.ndarray as_ = _array(sin, "sin", F32, 2)
    cdef int64_t T = _dim(ax, 0), H = _dim(ax, 1), hd = _dim(ax, 2), P = _dim(ac, 0)
    if hd % 2:
        raise ValueError(f"head dim must be even, got x shape {x.shape}")
    _shape(ap, "positions", (T,))
    _shape(ac, "cos", (P, hd // 2))
    _shape(as_, "sin", (P, hd // 2))
    cdef int nt = _threads(threads), rc
    cdef float *p_ax = <float *>_ptr(ax)
    cdef const int32_t *p_ap = <const int32_t *>_ptr(ap)
    cdef const float *p_ac = <const float *>_ptr(ac)
    cdef const float *p_as = <const float *>_ptr(as_)
    with nogil:
        rc = moecc_rope(p_ax, T, H, hd, p_ap,
                        p_ac, p_as, P, nt)
    if rc == MOECC_ERR_INDEX:
        raise ValueError(f"positions out of range of the cos/sin tables [0, {P})")


def attention(q, k_cache, v_cache, start, out, *, int threads):
    """Causal GQA: out[t, h] = softmax(q[t, h] . K[:start+t+1] / sqrt(hd)) @ V[:start+t+1].

    q, out [T, Hq, hd] float32; k_cache, v_cache [Hkv, C, hd], both float32 or both float16,
    holding positions up to start+T-1."""
    cdef cnp.ndarray aq = _array(q, "q", F32, 3)
    cdef cnp.ndarray ak = _array(k_cache, "k_cache", -1, 3)
    cdef int kv_typenum = cnp.PyArray_TYPE(ak)
    if kv_typenum != F32 and kv_typenum != F16:
        raise TypeError(f"k_cache must have dtype float32 or float16, got {k_cache.dtype}")
    cdef cnp.ndarray av = _array(v_cache, "v_cache", kv_typenum, 3)
    cdef cnp.ndarray ao = _array(out, "out", F32, 3, True)
    cdef int64_t T = _dim(aq, 0), Hq = _dim(aq, 1), hd = _dim(aq, 2)
    cdef int64_t Hkv = _dim(ak, 0), C = _dim(ak, 1)
    cdef int64_t s = start
    if _dim(ak, 2) != hd:
        raise ValueError(f"k_cache head dim {k_cache.shape[2]} != q head dim {hd}")
    _shape(av, "v_cache", (Hkv, C, hd))
    _shape(ao, "out", (T, Hq, hd))
    if Hkv < 1 or Hq % Hkv:
        raise ValueError(f"query heads ({Hq}) must be a multiple of kv heads ({Hkv})")
    if s < 0 or s + T > C:
        raise ValueError(f"start + T = {s} + {T} exceeds the cache length {C} (or start < 0)")
    _disjoint(aq, "q", ao, "out")
    _disjoint(ak, "k_cache", ao, "out")
    _disjoint(av, "v_cache", ao, "out")
    cdef moecc_storage kv = MOECC_F16 if kv_typenum == F16 else MOECC_F32
    cdef int nt = _threads(threads), rc
    cdef const float *p_aq = <const float *>_ptr(aq)
    cdef const void *p_ak = <const void *>_ptr(ak)
    cdef const void *p_av = <const void *>_ptr(av)
    cdef float *p_ao = <float *>_ptr(ao)
    with nogil:
        rc = moecc_attention(p_aq, T, Hq, hd, p_ak, p_av, kv, Hkv, C, s, p_ao, nt)
    if rc != MOECC_OK:
        raise ValueError("attention: inconsistent shapes or start")


def router_topk(logits, int top_k, normalize, idx_out, weight_out, *, int threads):
    """HF Qwen3-MoE routing: softmax over all experts, top_k by probability (ties: lower index
    first, descending), renormalized over the k if `normalize`."""
    cdef cnp.ndarray al = _array(logits, "logits", F32, 2)
    cdef cnp.ndarray ai = _array(idx_out, "idx_out", I32, 2, True)
    cdef cnp.ndarray aw = _array(weight_out, "weight_out", F32, 2, True)
    cdef int64_t T = _dim(al, 0), E = _dim(al, 1)
    if top_k < 1 or top_k > E:
        raise ValueError(f"top_k must be in [1, {E}], got {top_k}")
    _shape(ai, "idx_out", (T, top_k))
    _shape(aw, "weight_out", (T, top_k))
    cdef int norm = 1 if normalize else 0
    cdef int nt = _threads(threads), rc
    cdef const float *p_al = <const float *>_ptr(al)
    cdef int32_t *p_ai = <int32_t *>_ptr(ai)
    cdef float *p_aw = <float *>_ptr(aw)
    with nogil:
        rc = moecc_router_topk(p_al, T, E, top_k, norm,
                               p_ai, p_aw, nt)
    if rc != MOECC_OK:
        raise ValueError(f"top_k must be in [1, {E}], got {top_k}")


def moe_scratch_floats(T, top_k, D, I):
    """Float32 elements of scratch that moe_ffn needs for T tokens, top_k experts each."""
    if T < 0 or top_k < 0 or D < 0 or I < 0:
        raise ValueError("moe_scratch_floats: sizes must be >= 0")
    return int(moecc_moe_scratch_floats(T, top_k, D, I))


def moe_ffn(x, gate, up, down, idx, weights, scratch, out, *, int threads, storage=None,
            down_storage=None):
    """out[t] = sum_j weights[t, j] * down[e] @ (silu(gate[e] @ x[t]) * (up[e] @ x[t])),
    e = idx[t, j]. gate and up [E, I, D] share `storage`, down [E, D, I] is `down_storage`
    (None: the same as gate's); a float type (None infers it from the dtype) or "q8" / "q4" /
    "q4p" as uint8 [..., row_bytes(storage, row length)]. scratch: float32, at least
    moe_scratch_floats(T, k, D, I) elements (enough for every storage type)."""
    cdef cnp.ndarray ax = _array(x, "x", F32, 2)
    cdef cnp.ndarray ag = _array(gate, "gate", -1, 3)
    cdef cnp.ndarray au = _array(up, "up", -1, 3)
    cdef cnp.ndarray ad = _array(down, "down", -1, 3)
    cdef cnp.ndarray ai = _array(idx, "idx", I32, 2)
    cdef cnp.ndarray aw = _array(weights, "weights", F32, 2)
    cdef cnp.ndarray asc = _array(scratch, "scratch", F32, -1, True)
    cdef cnp.ndarray ao = _array(out, "out", F32, 2, True)
    if cnp.PyArray_TYPE(au) != cnp.PyArray_TYPE(ag):
        raise TypeError(f"gate and up must share a dtype, got {gate.dtype}, {up.dtype}")
    if down_storage is None and storage is not None:
        down_storage = storage
    cdef int64_t T = _dim(ax, 0), D = _dim(ax, 1)
    cdef int64_t E = _dim(ag, 0), I = _dim(ag, 1), k = _dim(ai, 1)
    cdef moecc_storage fgu = _weights(ag, "gate", storage, D, (E, I))
    _weights(au, "up", storage, D, (E, I))
    cdef moecc_storage fd = _weights(ad, "down", down_storage, I, (E, D))
    _shape(ai, "idx", (T, k))
    _shape(aw, "weights", (T, k))
    _shape(ao, "out", (T, D))
    cdef int64_t need = moecc_moe_scratch_floats(T, k, D, I)
    if cnp.PyArray_SIZE(asc) < need:
        raise ValueError(f"scratch has {cnp.PyArray_SIZE(asc)} floats, needs "
                         f"moe_scratch_floats({T}, {k}, {D}, {I}) = {need}")
    _disjoint(ax, "x", ao, "out")
    _disjoint(asc, "scratch", ao, "out")
    _disjoint(asc, "scratch", ax, "x")
    _disjoint(asc, "scratch", ai, "idx")
    _disjoint(asc, "scratch", aw, "weights")
    cdef int nt = _threads(threads), rc
    cdef const float *p_ax = <const float *>_ptr(ax)
    cdef const void *p_ag = <const void *>_ptr(ag)
    cdef const void *p_au = <const void *>_ptr(au)
    cdef const void *p_ad = <const void *>_ptr(ad)
    cdef const int32_t *p_ai = <const int32_t *>_ptr(ai)
    cdef const float *p_aw = <const float *>_ptr(aw)
    cdef float *p_asc = <float *>_ptr(asc)
    cdef float *p_ao = <float *>_ptr(ao)
    with nogil:
        rc = moecc_moe_ffn(p_ax, T, D, p_ag, p_au, fgu, p_ad, fd, E, I,
                           p_ai, p_aw, k,
                           p_asc, p_ao, nt)
    if rc == MOECC_ERR_INDEX:
        raise ValueError(f"idx out of range [0, {E})")
    _check_rc(rc, "moe_ffn")
