# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Bindings for the C kernels in moecc.h.

Glue only: check dtypes, shapes, contiguity and writability (TypeError for a wrong type or
dtype, ValueError for anything else), release the GIL, call C. All maths is in C.
"""
import numpy as np

from moecc.storage import ACTIVATIONS, KBLOCK, QBLOCK, TYPES

cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, free

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
        int activations
    const moecc_storage_info moecc_storage_types[]
    ctypedef enum moecc_act:
        MOECC_ACT_Q8_32
        MOECC_ACT_Q8_K
    enum:
        MOECC_OK
        MOECC_ERR_INDEX
        MOECC_ERR_SHAPE
        MOECC_ERR_STORAGE
        MOECC_ERR_ISA
        MOECC_ERR_NOMEM
        MOECC_ERR_REDUCE
        MOECC_QBLOCK

    int moecc_storage_check(moecc_storage s, int64_t N, int64_t K)
    int64_t moecc_row_bytes(moecc_storage s, int64_t K)
    int64_t moecc_xq_bytes(int64_t K)
    int64_t moecc_act_kind_bytes(moecc_act a, int64_t K)
    void moecc_quantize_rows(moecc_act a, const float *x, int64_t T, int64_t K, void *xq)
    void moecc_quantize_k(moecc_storage s, const float *x, int64_t N, int64_t K,
                          const float *importance, void *out, int threads)

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
                        const void *v_cache, moecc_storage kv, int64_t S, int64_t Hkv, int64_t C,
                        const int32_t *slots, const int32_t *positions, float *out, int threads)
    int64_t moecc_moe_scratch_floats(int64_t T, int64_t top_k, int64_t D, int64_t I)
    int moecc_moe_ffn(const float *x, int64_t T, int64_t D, const void *gate, const void *up,
                      moecc_storage fgu, const void *down, moecc_storage fd, int64_t E, int64_t I,
                      const int32_t *idx, const float *weights, int64_t top_k, int64_t e0,
                      int64_t e1, float *scratch, double *sums, float *out, int threads)


cdef extern from "moecc.h" nogil:
    ctypedef struct moecc_weight:
        const void *data
        moecc_storage type
    ctypedef struct moecc_layer:
        const float *input_layernorm
        moecc_weight q_proj, k_proj, v_proj, o_proj
        const float *q_norm
        const float *k_norm
        const float *post_attention_layernorm
        const float *router
        moecc_weight gate_proj, up_proj, down_proj
        int64_t experts, inter
    ctypedef int (*moecc_reduce_fn)(double *x, int64_t n, void *ctx) noexcept nogil
    ctypedef struct moecc_model:
        int64_t layers, D, Hq, Hkv, hd, V, top_k
        int norm_topk_prob
        float eps
        moecc_weight embed_tokens
        const moecc_layer *layer
        const float *norm
        moecc_weight lm_head
        const float *cos
        const float *sin
        void *k_cache
        void *v_cache
        moecc_storage kv
        int64_t slots, C
        int64_t expert_begin, expert_end
        moecc_reduce_fn reduce
        void *reduce_ctx
    ctypedef struct moecc_activations:
        int64_t rows
        float *x
        float *h
        float *q
        float *k
        float *v
        float *attn
        float *out
        double *moe_sums
        float *router_logits
        int32_t *expert_ids
        float *expert_weights
        const int32_t *dense_ids
        const float *dense_weights
        void *xq
        float *moe_scratch
    ctypedef struct moecc_expert_stats:
        double *gate_up_in
        double *down_in
        int64_t *rows
    ctypedef struct moecc_layer_stats:
        double *attn_in
        double *o_proj_in
        double *router_in
        moecc_expert_stats experts
    ctypedef struct moecc_stats:
        moecc_layer_stats *layer
        double *lm_head_in
        int64_t rows, lm_head_rows
    enum:
        MOECC_BLOCKS
    int moecc_forward(const moecc_model *m, const moecc_activations *a, const int32_t *tokens,
                      const int32_t *slots, const int32_t *positions, int64_t T,
                      const int32_t *logit_rows, int64_t n_logits, float *logits, double *seconds,
                      moecc_stats *stats, int threads)


moecc_dispatch_init()


# ---- checks ---------------------------------------------------------------------------------

cdef int F32 = cnp.NPY_FLOAT32
cdef int F16 = cnp.NPY_FLOAT16
cdef int F64 = cnp.NPY_FLOAT64
cdef int I32 = cnp.NPY_INT32
cdef int U16 = cnp.NPY_UINT16
cdef int U8 = cnp.NPY_UINT8
cdef int I8 = cnp.NPY_INT8
_DTYPE_NAMES = {F32: "float32", F64: "float64", F16: "float16", I32: "int32", U16: "uint16", U8: "uint8", I8: "int8"}


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
                     "activations": ACTIVATIONS[t.activations]})
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
            quantized = ", ".join(repr(n) for n, st in TYPES.items() if st.view_dtype == np.uint8)
            raise TypeError(f"{name} is uint8: quantized weights need storage= one of {quantized}")
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


cdef tuple _expert_range(object experts, int64_t E):
    """(begin, end) of `experts`, a (begin, end) pair within [0, E) (None: all E experts)."""
    if experts is None:
        return 0, E
    begin, end = experts
    if not 0 <= begin < end <= E:
        raise ValueError(f"experts must be a range (begin, end) with 0 <= begin < end <= {E}, "
                         f"got {tuple(experts)}")
    return begin, end


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


_ACT_KINDS = {"q8_32": (MOECC_ACT_Q8_32, QBLOCK, 32, np.int32),  # block, values per sum, sum type
              "q8_k": (MOECC_ACT_Q8_K, KBLOCK, 16, np.int16)}


def quantize_activations(x, *, kind="q8_32"):
    """The kernels' activation quantization of a kind (moecc.storage.ACTIVATIONS: what the
    quantized types are multiplied with), on the ISA in use: x float32 [T, K] -> (q int8 [T, K],
    scales float32 [T, K/block], sums [T, K/n]), x ~ scale * q per block, q in the order of the
    values, sums the sums of each n consecutive q. q8_32: blocks of 32, int32 sums per 32; q8_k:
    blocks of 256, int16 sums per 16 (reference: moecc.quant.quantize_activations)."""
    if kind not in _ACT_KINDS:
        raise ValueError(f"unknown activation kind {kind!r}; expected one of {', '.join(_ACT_KINDS)}")
    act, block, per_sum, sum_dtype = _ACT_KINDS[kind]
    cdef cnp.ndarray ax = _array(x, "x", F32, 2)
    cdef int64_t T = _dim(ax, 0), K = _dim(ax, 1)
    if K % block:
        raise ValueError(f"{kind}: the row length must be a multiple of {block}, got {K}")
    cdef int64_t xb = moecc_act_kind_bytes(act, K)
    cdef cnp.ndarray buf = np.empty(T * xb, np.uint8)
    cdef const float *p_x = <const float *>_ptr(ax)
    cdef char *p_b = <char *>_ptr(buf)
    cdef moecc_act a = act
    with nogil:
        moecc_quantize_rows(a, p_x, T, K, p_b)
    rows = buf.reshape(T, xb)
    at = K + 4 * (K // block)
    q = rows[:, :K].view(np.int8).copy()
    d = rows[:, K:at].copy().view(np.float32)
    sums = rows[:, at:at + np.dtype(sum_dtype).itemsize * (K // per_sum)].copy().view(sum_dtype)
    return q, d, sums


K_QUANTIZED = ("q4_k", "q5_k", "q6_k")


def quantize_k(x, str storage, *, importance=None, int threads=1):
    """x float32 [N, K] -> uint8 [N, row_bytes(storage, K)]: the rows as K-type `storage` (q4_k,
    q5_k or q6_k) super-blocks, each one's rounding error weighted per column by `importance`
    (float32 [K], finite and >= 0; None: all 1) as kquant.c describes."""
    if storage not in K_QUANTIZED:
        raise ValueError(f"quantize_k writes {', '.join(K_QUANTIZED)}, not {storage!r}")
    cdef cnp.ndarray ax = _array(x, "x", F32, 2)
    cdef int64_t N = _dim(ax, 0), K = _dim(ax, 1)
    cdef moecc_storage s = _storage(storage)
    if moecc_storage_check(s, 1, K) != MOECC_OK:
        raise ValueError(f"x: {TYPES[storage].shape_problem((N, K))}")
    if not np.isfinite(x).all():
        raise ValueError(f"x holds values that are not finite (NaN or inf): {storage} cannot store them")
    cdef cnp.ndarray ai
    cdef const float *p_ai = NULL
    if importance is not None:
        ai = _array(importance, "importance", F32, 1)
        _shape(ai, "importance", (K,))
        if not (np.isfinite(importance).all() and (importance >= 0).all()):
            raise ValueError("importance must be finite and >= 0 in every column")
        p_ai = <const float *>_ptr(ai)
    cdef cnp.ndarray out = np.empty((N, moecc_row_bytes(s, K)), np.uint8)
    cdef int nt = _threads(threads)
    cdef const float *p_ax = <const float *>_ptr(ax)
    cdef void *p_out = _ptr(out)
    with nogil:
        moecc_quantize_k(s, p_ax, N, K, p_ai, p_out, nt)
    return out


def matmul(x, w, out, *, int threads, storage=None):
    """out[T, N] = x[T, K] @ w[N, K].T. w: float32, uint16 holding bf16 or float16 (storage None
    infers these), or uint8 [N, row_bytes(storage, K)] with storage a quantized type ("q8",
    "q4", "q4p", "q4_k", ...)."""
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
    [V, row_bytes(storage, D)] with storage a quantized type (rows dequantized; q4p panels cannot
    be looked up by row); D is out's."""
    cdef cnp.ndarray at = _array(table, "table", -1, 2)
    cdef cnp.ndarray ai = _array(ids, "ids", I32, 1)
    cdef cnp.ndarray ao = _array(out, "out", F32, 2, True)
    cdef int64_t V = _dim(at, 0), D = _dim(ao, 1), T = _dim(ai, 0)
    cdef moecc_storage f = _weights(at, "table", storage, D, (V,))
    if not moecc_storage_types[<int>f].row_lookup:
        raise ValueError(f"table: {storage} rows cannot be looked up one by one (store the "
                         f"embedding as a type whose rows can be, q4 say)")
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


def attention(q, k_cache, v_cache, positions, out, *, int threads, slots=None):
    """Causal GQA: out[t, h] = softmax(q[t, h] . K[:p+1] / sqrt(hd)) @ V[:p+1], p = positions[t],
    K and V those of cache slot slots[t] (default: all 0).

    q, out [T, Hq, hd] float32; k_cache, v_cache [S, Hkv, C, hd] (or [Hkv, C, hd], one slot),
    both float32 or both float16, holding each row's positions up to its own; positions and
    slots int32 [T]; at most 16 query heads per kv head."""
    cdef cnp.ndarray aq = _array(q, "q", F32, 3)
    cdef cnp.ndarray ak = _array(k_cache, "k_cache", -1, -1)
    cdef int kv_typenum = cnp.PyArray_TYPE(ak)
    if kv_typenum != F32 and kv_typenum != F16:
        raise TypeError(f"k_cache must have dtype float32 or float16, got {k_cache.dtype}")
    if cnp.PyArray_NDIM(ak) not in (3, 4):
        raise ValueError(f"k_cache must be [S, Hkv, C, hd] or [Hkv, C, hd], got shape {k_cache.shape}")
    cdef tuple cache_shape = (1,) * (4 - cnp.PyArray_NDIM(ak)) + (<object>ak).shape
    cdef cnp.ndarray av = _array(v_cache, "v_cache", kv_typenum, cnp.PyArray_NDIM(ak))
    cdef cnp.ndarray ao = _array(out, "out", F32, 3, True)
    cdef cnp.ndarray ap = _array(positions, "positions", I32, 1)
    cdef int64_t T = _dim(aq, 0), Hq = _dim(aq, 1), hd = _dim(aq, 2)
    cdef int64_t S = cache_shape[0], Hkv = cache_shape[1], C = cache_shape[2]
    if slots is None:
        slots = np.zeros(T, np.int32)
    cdef cnp.ndarray asl = _array(slots, "slots", I32, 1)
    if cache_shape[3] != hd:
        raise ValueError(f"k_cache head dim {cache_shape[3]} != q head dim {hd}")
    _shape(av, "v_cache", (<object>ak).shape)
    _shape(ao, "out", (T, Hq, hd))
    _shape(ap, "positions", (T,))
    _shape(asl, "slots", (T,))
    if Hkv < 1 or Hq % Hkv or Hq // Hkv > 16:
        raise ValueError(f"query heads ({Hq}) must be a multiple of kv heads ({Hkv}), at most 16 "
                         "per kv head")
    _disjoint(aq, "q", ao, "out")
    _disjoint(ak, "k_cache", ao, "out")
    _disjoint(av, "v_cache", ao, "out")
    cdef moecc_storage kv = MOECC_F16 if kv_typenum == F16 else MOECC_F32
    cdef int nt = _threads(threads), rc
    cdef const float *p_aq = <const float *>_ptr(aq)
    cdef const void *p_ak = <const void *>_ptr(ak)
    cdef const void *p_av = <const void *>_ptr(av)
    cdef const int32_t *p_sl = <const int32_t *>_ptr(asl)
    cdef const int32_t *p_ap = <const int32_t *>_ptr(ap)
    cdef float *p_ao = <float *>_ptr(ao)
    with nogil:
        rc = moecc_attention(p_aq, T, Hq, hd, p_ak, p_av, kv, S, Hkv, C, p_sl, p_ap, p_ao, nt)
    if rc == MOECC_ERR_INDEX:
        raise ValueError(f"slots must be in [0, {S}) and positions in [0, {C})")
    _check_rc(rc, "attention")


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
            down_storage=None, experts=None):
    """out[t] = sum_j weights[t, j] * down[e] @ (silu(gate[e] @ x[t]) * (up[e] @ x[t])),
    e = idx[t, j], over the pairs whose expert e is in range(*experts) (default: all E; a
    narrower range is one process's share under expert parallelism). gate and up [E, I, D]
    share `storage`, down [E, D, I] is `down_storage` (None: the same as gate's); a float type
    (None infers it from the dtype) or a quantized type as uint8 [..., row_bytes(storage, row
    length)]. scratch: float32, at least moe_scratch_floats(T, k, D, I) elements (enough for
    every storage type)."""
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
    cdef int64_t e0, e1
    e0, e1 = _expert_range(experts, E)
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
    cdef cnp.ndarray sums = np.empty((T, D), np.float64)  # the kernel sums in double
    cdef int nt = _threads(threads), rc
    cdef const float *p_ax = <const float *>_ptr(ax)
    cdef const void *p_ag = <const void *>_ptr(ag)
    cdef const void *p_au = <const void *>_ptr(au)
    cdef const void *p_ad = <const void *>_ptr(ad)
    cdef const int32_t *p_ai = <const int32_t *>_ptr(ai)
    cdef const float *p_aw = <const float *>_ptr(aw)
    cdef float *p_asc = <float *>_ptr(asc)
    cdef double *p_sums = <double *>_ptr(sums)
    cdef float *p_ao = <float *>_ptr(ao)
    with nogil:
        rc = moecc_moe_ffn(p_ax, T, D, p_ag, p_au, fgu, p_ad, fd, E, I, p_ai, p_aw, k, e0, e1,
                           p_asc, p_sums, p_ao, nt)
    if rc == MOECC_ERR_INDEX:
        raise ValueError(f"idx out of range [0, {E})")
    _check_rc(rc, "moe_ffn")


# ---- the forward step -----------------------------------------------------------------------

def xq_bytes(int64_t K):
    """Bytes of one row of K activations quantized per 32 (q8_32, moecc.h): the
    most any kind of quantized activation rows of K values takes (buffers sized by it hold any)."""
    if K < 0 or K % MOECC_QBLOCK:
        raise ValueError(f"K must be a non-negative multiple of {MOECC_QBLOCK}, got {K}")
    return int(moecc_xq_bytes(K))


# moecc.h's MOECC_BLOCK_*, in order: where a profiled step's time goes
BLOCKS = ("embed", "qkv", "rope_cache", "attend", "o_proj", "router", "experts", "lm_head")


cdef moecc_weight _matrix(object w, str name, int64_t K, tuple lead, list keep) except *:
    """A model.Weight (data, storage) as the C step reads it, checked as the other kernels check."""
    cdef cnp.ndarray arr = _array(w.data, name, -1, len(lead) + 1)
    cdef moecc_weight out
    out.type = _weights(arr, name, w.storage, K, lead)
    out.data = _ptr(arr)
    keep.append(arr)
    return out


cdef const float *_floats(object a, str name, tuple shape, list keep) except NULL:
    cdef cnp.ndarray arr = _array(a, name, F32, len(shape))
    _shape(arr, name, shape)
    keep.append(arr)
    return <const float *>_ptr(arr)


cdef void *_buffer(object a, str name, int typenum, tuple shape, list keep) except NULL:
    cdef cnp.ndarray arr = _array(a, name, typenum, len(shape), True)
    _shape(arr, name, shape)
    keep.append(arr)
    return _ptr(arr)


cdef void *_scratch(object a, str name, int typenum, int64_t need, list keep) except NULL:
    """A 1-D buffer of at least `need` elements."""
    cdef cnp.ndarray arr = _array(a, name, typenum, 1, True)
    if cnp.PyArray_SIZE(arr) < need:
        raise ValueError(f"{name} has {cnp.PyArray_SIZE(arr)} elements, needs {need}")
    keep.append(arr)
    return _ptr(arr)


cdef class Forward:
    """The forward step of one loaded model (forward.c): the C view of its weights, KV cache
    and activation buffers, checked here once, at load, and kept alive as long as it is.

    layers: model.LayerWeights; embed_tokens, lm_head: model.Weight; norm [D]; cos, sin
    [C, hd/2]; k_cache, v_cache [layers, slots, Hkv, C, hd] float32 or float16; buffers: a
    model.Buffers of `rows` rows. Expert parallelism (moecc.parallel): `experts` (begin, end)
    are the experts of every sparse layer this process computes, and `reduce(sums)` sums each
    sparse layer's partial output (float64 [T * D], a view of buffers.moe_sums) in place over
    the processes; by default all experts and no reduce (one process). The step is __call__."""
    cdef moecc_model m
    cdef moecc_activations a
    cdef moecc_layer *layers
    cdef list keep
    cdef object reduce, sums, reduce_error

    def __cinit__(self):
        self.layers = NULL

    def __dealloc__(self):
        free(self.layers)

    def __init__(self, *, list layers, embed_tokens, norm, lm_head, cos, sin, k_cache, v_cache,
                 buffers, int64_t heads, int64_t kv_heads, int64_t head_dim, int64_t top_k,
                 bint norm_topk_prob, float eps, experts=None, reduce=None):
        keep = self.keep = []
        cdef int64_t L = len(layers), hd = head_dim, Hq = heads, Hkv = kv_heads
        cdef int64_t D = _dim(_array(norm, "norm", F32, 1), 0)
        cdef int64_t qw = Hq * hd, kvw = Hkv * hd
        if L < 1 or hd < 2 or hd % 2 or Hkv < 1 or Hq % Hkv or Hq // Hkv > 16:
            raise ValueError(f"unsupported geometry: {L} layers, {Hq} / {Hkv} heads of {hd}")
        cdef int64_t V = _dim(_array(embed_tokens.data, "embed_tokens", -1, 2), 0)
        self.m.embed_tokens = _matrix(embed_tokens, "embed_tokens", D, (V,), keep)
        if not TYPES[embed_tokens.storage].row_lookup:
            raise ValueError(f"embed_tokens: {embed_tokens.storage} rows cannot be looked up")
        self.m.lm_head = _matrix(lm_head, "lm_head", D, (V,), keep)
        self.m.norm = _floats(norm, "norm", (D,), keep)
        # the cache: [layers, slots, Hkv, C, hd]
        ak = _array(k_cache, "k_cache", -1, 5)
        if cnp.PyArray_TYPE(ak) not in (F32, F16):
            raise TypeError(f"k_cache must be float32 or float16, got {k_cache.dtype}")
        cdef int64_t S = _dim(ak, 1), C = _dim(ak, 3)
        self.m.k_cache = _buffer(k_cache, "k_cache", cnp.PyArray_TYPE(ak), (L, S, Hkv, C, hd), keep)
        self.m.v_cache = _buffer(v_cache, "v_cache", cnp.PyArray_TYPE(ak), (L, S, Hkv, C, hd), keep)
        self.m.kv = MOECC_F16 if cnp.PyArray_TYPE(ak) == F16 else MOECC_F32
        self.m.cos = _floats(cos, "cos", (C, hd // 2), keep)
        self.m.sin = _floats(sin, "sin", (C, hd // 2), keep)
        self.layers = <moecc_layer *>calloc(L, sizeof(moecc_layer))
        if self.layers == NULL:
            raise MemoryError("Forward: out of memory for the layer table")
        cdef int64_t E_max = 1, I_max = 1, E, I
        cdef moecc_layer *w
        for i, lw in enumerate(layers):
            w = &self.layers[i]
            p = f"layer {i} "
            E, I = _dim(_array(lw.gate_proj.data, p + "gate_proj", -1, 3), 0), _dim(lw.gate_proj.data, 1)
            w.input_layernorm = _floats(lw.input_layernorm, p + "input_layernorm", (D,), keep)
            w.q_proj = _matrix(lw.q_proj, p + "q_proj", D, (qw,), keep)
            w.k_proj = _matrix(lw.k_proj, p + "k_proj", D, (kvw,), keep)
            w.v_proj = _matrix(lw.v_proj, p + "v_proj", D, (kvw,), keep)
            w.o_proj = _matrix(lw.o_proj, p + "o_proj", qw, (D,), keep)
            w.q_norm = _floats(lw.q_norm, p + "q_norm", (hd,), keep)
            w.k_norm = _floats(lw.k_norm, p + "k_norm", (hd,), keep)
            w.post_attention_layernorm = _floats(lw.post_attention_layernorm,
                                                 p + "post_attention_layernorm", (D,), keep)
            w.router = NULL
            if lw.router is not None:
                w.router = _floats(lw.router, p + "router", (E, D), keep)
            if lw.router is not None and not 0 < top_k <= E:
                raise ValueError(f"{p}: top_k {top_k} must be in 1..{E}")
            if lw.router is None and E != 1:
                raise ValueError(f"{p}: a dense MLP is one stacked matrix, got {E}")
            w.gate_proj = _matrix(lw.gate_proj, p + "gate_proj", D, (E, I), keep)
            w.up_proj = _matrix(lw.up_proj, p + "up_proj", D, (E, I), keep)
            w.down_proj = _matrix(lw.down_proj, p + "down_proj", I, (E, D), keep)
            if w.up_proj.type != w.gate_proj.type:
                raise ValueError(f"{p}: gate_proj and up_proj must share a storage type")
            w.experts, w.inter = E, I
            E_max, I_max = max(E_max, E), max(I_max, I)
        self.m.layer = self.layers
        self.m.layers, self.m.D, self.m.Hq, self.m.Hkv, self.m.hd, self.m.V = L, D, Hq, Hkv, hd, V
        self.m.top_k, self.m.norm_topk_prob, self.m.eps = top_k, norm_topk_prob, eps
        self.m.slots, self.m.C = S, C
        # the activations
        b = buffers
        cdef int64_t R = _dim(_array(b.x, "x", F32, 2), 0), k = max(top_k, 1)
        self.a.rows = R
        self.a.x = <float *>_buffer(b.x, "x", F32, (R, D), keep)
        self.a.h = <float *>_buffer(b.h, "h", F32, (R, D), keep)
        self.a.q = <float *>_buffer(b.q, "q", F32, (R, qw), keep)
        self.a.k = <float *>_buffer(b.k, "k", F32, (R, kvw), keep)
        self.a.v = <float *>_buffer(b.v, "v", F32, (R, kvw), keep)
        self.a.attn = <float *>_buffer(b.attn, "attn", F32, (R, qw), keep)
        self.a.out = <float *>_buffer(b.out, "out", F32, (R, D), keep)
        self.a.moe_sums = <double *>_buffer(b.moe_sums, "moe_sums", F64, (R, D), keep)
        self.a.router_logits = <float *>_buffer(b.router_logits, "router_logits", F32, (R, E_max), keep)
        self.a.expert_ids = <int32_t *>_buffer(b.expert_ids, "expert_ids", I32, (R, k), keep)
        self.a.expert_weights = <float *>_buffer(b.expert_weights, "expert_weights", F32, (R, k), keep)
        if not (np.all(b.dense_ids == 0) and np.all(b.dense_weights == 1)):
            raise ValueError("dense_ids must be 0 and dense_weights 1")
        self.a.dense_ids = <const int32_t *>_buffer(b.dense_ids, "dense_ids", I32, (R,), keep)
        self.a.dense_weights = <const float *>_buffer(b.dense_weights, "dense_weights", F32, (R,), keep)
        self.a.xq = _scratch(b.xq, "xq", U8, R * moecc_xq_bytes(max(D, qw)), keep)
        self.a.moe_scratch = <float *>_scratch(b.moe_scratch, "moe_scratch", F32,
                                               moecc_moe_scratch_floats(R, k, D, I_max), keep)
        # expert parallelism: a range within every sparse layer's experts
        sparse = [_dim(lw.gate_proj.data, 0) for lw in layers if lw.router is not None]
        self.m.expert_begin, self.m.expert_end = _expert_range(experts, min(sparse)) if sparse else (0, 1)
        self.reduce, self.reduce_error = reduce, None
        self.m.reduce, self.m.reduce_ctx = NULL, NULL
        if reduce is not None:
            if not callable(reduce):
                raise TypeError(f"reduce must be callable, got {type(reduce).__name__}")
            self.sums = b.moe_sums.reshape(-1)
            self.m.reduce, self.m.reduce_ctx = _reduce_in_python, <void *>self

    def __call__(self, tokens, slots, positions, logit_rows, logits, *, int threads, seconds=None,
                 statistics=None):
        """Run rows t < T: token tokens[t] of the sequence in cache slot slots[t] at position
        positions[t] (int32 [T] each); write the logits of rows logit_rows (int32 [n]) to logits
        (float32 [n, V]). With seconds (float64 [len(BLOCKS)]), add each block's time to it;
        with statistics (a Statistics of this step), every matrix's squared inputs."""
        cdef cnp.ndarray at = _array(tokens, "tokens", I32, 1)
        cdef cnp.ndarray asl = _array(slots, "slots", I32, 1)
        cdef cnp.ndarray ap = _array(positions, "positions", I32, 1)
        cdef cnp.ndarray ar = _array(logit_rows, "logit_rows", I32, 1)
        cdef cnp.ndarray al = _array(logits, "logits", F32, 2, True)
        cdef int64_t T = _dim(at, 0), n = _dim(ar, 0)
        _shape(asl, "slots", (T,))
        _shape(ap, "positions", (T,))
        _shape(al, "logits", (n, self.m.V))
        if not 1 <= T <= self.a.rows or n > self.a.rows:
            raise ValueError(f"a step takes 1 to {self.a.rows} rows and as many logit rows, "
                             f"got {T} and {n}")
        cdef double *p_sec = NULL
        cdef cnp.ndarray asec
        if seconds is not None:
            asec = _array(seconds, "seconds", cnp.NPY_FLOAT64, 1, True)
            _shape(asec, "seconds", (len(BLOCKS),))
            p_sec = <double *>_ptr(asec)
        cdef moecc_stats *p_stats = NULL
        if statistics is not None:
            if not isinstance(statistics, Statistics) or (<Statistics>statistics).step is not self:
                raise TypeError("statistics must be a Statistics made for this step")
            p_stats = &(<Statistics>statistics).s
        cdef int nt = _threads(threads), rc
        cdef const int32_t *p_t = <const int32_t *>_ptr(at)
        cdef const int32_t *p_s = <const int32_t *>_ptr(asl)
        cdef const int32_t *p_p = <const int32_t *>_ptr(ap)
        cdef const int32_t *p_r = <const int32_t *>_ptr(ar)
        cdef float *p_l = <float *>_ptr(al)
        with nogil:
            rc = moecc_forward(&self.m, &self.a, p_t, p_s, p_p, T, p_r, n, p_l, p_sec, p_stats, nt)
        if rc == MOECC_ERR_REDUCE:
            error, self.reduce_error = self.reduce_error, None
            raise error
        if rc == MOECC_ERR_INDEX:
            for name, values, bound in (("tokens", tokens, self.m.V), ("slots", slots, self.m.slots),
                                        ("positions", positions, self.m.C), ("logit_rows", logit_rows, T)):
                bad = np.flatnonzero((values < 0) | (values >= bound))
                if bad.size:
                    raise ValueError(f"{name}[{bad[0]}] = {values[bad[0]]} is outside [0, {bound})")
        _check_rc(rc, "forward")


cdef class Statistics:
    """What the steps of a Forward add their matrices' inputs to (moecc_stats, moecc.imatrix):
    per input column, the sum over the rows of its square (float64, zero at first), per layer l:
    attn_in[l] [D] (q, k, v), o_proj_in[l] [Hq*hd], router_in[l] [D] (None in a dense layer),
    and per expert (a dense MLP: one) gate_up_in[l] [E, D], down_in[l] [E, I] and the rows
    routed to it, expert_rows[l] int64 [E]; lm_head_in [D]; `rows` and `lm_head_rows`: the rows
    the steps ran and the logit rows among them."""
    cdef readonly Forward step
    cdef readonly list attn_in, o_proj_in, router_in, gate_up_in, down_in, expert_rows
    cdef readonly cnp.ndarray lm_head_in
    cdef moecc_stats s
    cdef moecc_layer_stats *layers

    def __cinit__(self):
        self.layers = NULL

    def __dealloc__(self):
        free(self.layers)

    def __init__(self, Forward step):
        self.step = step
        cdef const moecc_model *m = &step.m
        self.layers = <moecc_layer_stats *>calloc(m.layers, sizeof(moecc_layer_stats))
        if self.layers == NULL:
            raise MemoryError("Statistics: out of memory for the layer table")
        self.attn_in, self.o_proj_in, self.router_in = [], [], []
        self.gate_up_in, self.down_in, self.expert_rows = [], [], []
        cdef moecc_layer_stats *ls
        cdef int64_t E, I
        for i in range(m.layers):
            ls = &self.layers[i]
            E, I = m.layer[i].experts, m.layer[i].inter
            self.attn_in.append(np.zeros(m.D, np.float64))
            self.o_proj_in.append(np.zeros(m.Hq * m.hd, np.float64))
            self.router_in.append(np.zeros(m.D, np.float64) if m.layer[i].router != NULL else None)
            self.gate_up_in.append(np.zeros((E, m.D), np.float64))
            self.down_in.append(np.zeros((E, I), np.float64))
            self.expert_rows.append(np.zeros(E, np.int64))
            ls.attn_in = <double *>_ptr(self.attn_in[i])
            ls.o_proj_in = <double *>_ptr(self.o_proj_in[i])
            ls.router_in = <double *>_ptr(self.router_in[i]) if self.router_in[i] is not None else NULL
            ls.experts.gate_up_in = <double *>_ptr(self.gate_up_in[i])
            ls.experts.down_in = <double *>_ptr(self.down_in[i])
            ls.experts.rows = <int64_t *>_ptr(self.expert_rows[i])
        self.lm_head_in = np.zeros(m.D, np.float64)
        self.s.layer = self.layers
        self.s.lm_head_in = <double *>_ptr(self.lm_head_in)
        self.s.rows = self.s.lm_head_rows = 0

    @property
    def rows(self):
        return self.s.rows

    @property
    def lm_head_rows(self):
        return self.s.lm_head_rows


cdef int _reduce_in_python(double *x, int64_t n, void *ctx) noexcept nogil:
    """moecc_reduce_fn of a Forward (ctx): its Python reduce on the first n values of the
    experts' sums; an exception is kept for __call__ to raise."""
    with gil:
        step = <Forward>ctx
        try:
            step.reduce(step.sums[:n])
        except BaseException as e:
            step.reduce_error = e
            return 1
    return 0

# ---- the machine ----------------------------------------------------------------------------

cdef extern from "moecc.h" nogil:
    enum:
        MOECC_BW_STEP
    int moecc_read_bandwidth(int64_t bytes, int passes, int threads, double *bytes_per_s)
    int moecc_read_bandwidth_bits()


def read_bandwidth(int64_t nbytes, *, int passes, int threads):
    """Read bandwidth of this machine in bytes/s: a fresh buffer of `nbytes` (> 0, a multiple of
    bandwidth_step()), read once to warm up, then `passes` times by `threads` threads, each its
    own contiguous slice (bandwidth.c) -> float64 [passes], one figure per pass."""
    if nbytes <= 0 or nbytes % MOECC_BW_STEP:
        raise ValueError(f"nbytes must be a positive multiple of {MOECC_BW_STEP}, got {nbytes}")
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    cdef int nt = _threads(threads), rc
    cdef cnp.ndarray rates = np.empty(passes, np.float64)
    cdef double *p_rates = <double *>_ptr(rates)
    with nogil:
        rc = moecc_read_bandwidth(nbytes, passes, nt, p_rates)
    if rc == MOECC_ERR_NOMEM:
        raise MemoryError(f"read_bandwidth: could not allocate {nbytes} bytes")
    _check_rc(rc, "read_bandwidth")
    return rates


def bandwidth_step():
    """The unit of read_bandwidth's buffer size, in bytes."""
    return MOECC_BW_STEP


def bandwidth_load_bits():
    """The width in bits of read_bandwidth's loads on the active ISA: 512, 256 or 64."""
    return moecc_read_bandwidth_bits()
