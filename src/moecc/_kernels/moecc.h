/* moecc.h -- the C kernel layer of moecc: types, the per-ISA dispatch table, the kernels.
 *
 * Conventions
 *   - Every array is dense and row-major (C-contiguous); sizes are int64_t.
 *   - Activations are float32. Weights have a storage type (moecc_storage); a weight matrix
 *     W[N, K] is N rows of moecc_row_bytes(storage, K) bytes each, back to back, unaligned.
 *   - Parallel kernels take `threads` (>= 1) and open one OpenMP region with num_threads(threads):
 *     no global thread state.
 *   - Shapes and storage types are checked once, by the bindings (moecc_storage_check); the
 *     kernels trust them. Kernels that validate indices (token ids, expert ids, positions)
 *     return an error code (MOECC_OK == 0) before doing any work.
 *
 * The only weight-type-specific code is the register tile (moecc_tile_fn: dot_*.c for f32 / bf16 / f16,
 * qdot_*.c for q8 / q4, qpanel_*.c for q4p, kdot_*.c for the K types) and the row layouts in
 * storage.c; the loops of matmul.c and moe.c never look at the type. They only ask which
 * activation rows it reads (moecc_act_of) and how many bytes one takes (moecc_act_bytes: 0 = the
 * float32 rows as they are; the quantized types read activations quantized once per call by the
 * ISA's quantize_x of their kind).
 */
#ifndef MOECC_H
#define MOECC_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) { return 0; }
static inline int omp_get_num_threads(void) { return 1; }
static inline int omp_get_max_threads(void) { return 1; }
#include <time.h>
static inline double omp_get_wtime(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
#endif

/* x86 SIMD paths are compiled in on gcc/clang for x86; -DMOECC_X86=0 builds the portable path only
 * (what an ARM build gets) */
#ifndef MOECC_X86
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define MOECC_X86 1
#else
#define MOECC_X86 0
#endif
#endif

/* The targets of the x86 tables' functions (each file compiles for all of them; dispatch.c picks
 * one table at run time), and the forced inlining by which a loop written once for AVX2 takes
 * a wider target's registers and instructions. */
#define INLINE static inline __attribute__((always_inline))
#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TARGET_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define TARGET_VNNI \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

/* ---- error codes -------------------------------------------------------------------------- */

enum {
    MOECC_OK = 0,
    MOECC_ERR_INDEX = -1, /* an id / expert index / position is out of range */
    MOECC_ERR_SHAPE = -2, /* inconsistent sizes */
    MOECC_ERR_STORAGE = -3, /* a storage type that does not exist or cannot be used here */
    MOECC_ERR_ISA = -4,   /* ISA unknown, not compiled in, or not supported by this CPU */
    MOECC_ERR_NOMEM = -5, /* a prefill buffer could not be allocated */
    MOECC_ERR_REDUCE = -6, /* the sum over the processes of an expert-parallel step failed */
};

/* ---- storage types ------------------------------------------------------------------------ */

/* How a tensor's values are stored: the one table in C (storage.c), equal to moecc/storage.py's
 * (a test holds them equal). A row of K values is K / block_values blocks of block_bytes bytes;
 * rows are packed back to back with no alignment. (NumPy oracle of every layout: moecc/quant.py.) */
typedef enum {
    MOECC_F32 = 0,  /* float32 */
    MOECC_BF16 = 1, /* bfloat16 bit pattern (top 16 bits of a float32), stored as uint16 */
    MOECC_F16 = 2,  /* IEEE half, stored as uint16 (the KV cache's keys and values) */
    MOECC_Q8 = 3,   /* 8-bit blocks of 32 with an fp16 scale (ggml's Q8_0): w = d * q */
    MOECC_Q4 = 4,   /* 4-bit blocks of 32 with an fp16 scale (ggml's Q4_0): w = d * (nibble - 8) */
    MOECC_Q4P = 5,  /* q4 in panels of 16 rows (below) */
    MOECC_Q4_K = 6, /* ggml's Q4_K super-blocks of 256 (below) */
    MOECC_Q6_K = 7, /* ggml's Q6_K super-blocks of 256 (below) */
    MOECC_Q5_K = 8, /* ggml's Q5_K super-blocks of 256 (below) */
    MOECC_Q5_0 = 9, /* 5-bit blocks of 32 with an fp16 scale (ggml's Q5_0): w = d * (q - 16) */
    MOECC_Q5_1 = 10, /* 5-bit blocks of 32, fp16 scale and min (ggml's Q5_1): w = d * q + m */
    MOECC_Q4_1 = 11, /* 4-bit blocks of 32, fp16 scale and min (ggml's Q4_1): w = d * q + m */
    MOECC_STORAGE_COUNT
} moecc_storage;

/* The activation rows a type's tiles read (moecc/storage.py ACTIVATIONS, in order; layouts under
 * "quantized activations" below) */
typedef enum {
    MOECC_ACT_F32 = 0,   /* the float32 rows as they are */
    MOECC_ACT_Q8_32 = 1, /* int8 per block of 32, float scales, int32 block sums (q8, q4, q4p and
                            the _0 / _1 types) */
    MOECC_ACT_Q8_K = 2,  /* int8 per block of 256, float scales, int16 sums per 16 (K types) */
    MOECC_ACT_KINDS
} moecc_act;

typedef struct {
    const char *name;          /* as files and moecc/storage.py name it */
    int block_values;          /* values per block */
    int block_bytes;           /* bytes per block */
    int panel_rows;            /* rows interleaved block by block (a matrix has a multiple) */
    int row_lookup;            /* a row can be read on its own (embedding lookup) */
    int activations;           /* the moecc_act its tiles read */
} moecc_storage_info;

extern const moecc_storage_info moecc_storage_types[MOECC_STORAGE_COUNT];

#define MOECC_QBLOCK 32 /* values per block of q8 / q4 / q4p / q4_1 / q5_0 / q5_1, of q8_32 acts */
#define MOECC_KBLOCK 256 /* values per super-block of the K types, and per block of q8_k ones */

/* q8 and q4 are ggml's Q8_0 and Q4_0 blocks, byte for byte, so a GGUF file's tensors run as they
 * lie: a row of K values is K/32 blocks back to back, each its fp16 scale d and then its 32
 * values. Rows, and so blocks, start at any address (a row is 34 or 18 bytes times K/32, and
 * views may be anywhere): read them with memcpy or byte offsets, never through a struct pointer.
 * (NumPy oracle: moecc/quant.py; ggml's own definitions: ggml-common.h block_q8_0, block_q4_0.) */
typedef struct {
    uint16_t d;                /* fp16 scale */
    int8_t qs[MOECC_QBLOCK];   /* w[j] = d * qs[j] */
} moecc_block_q8;
_Static_assert(sizeof(moecc_block_q8) == 34, "a q8 block is ggml's block_q8_0: 2 + 32 bytes");

typedef struct {
    uint16_t d;                    /* fp16 scale */
    uint8_t qs[MOECC_QBLOCK / 2];  /* byte j: value j in the low nibble, value j + 16 in the high
                                      one, each as q + 8 in 0..15; w = d * (nibble - 8) */
} moecc_block_q4;
_Static_assert(sizeof(moecc_block_q4) == 18, "a q4 block is ggml's block_q4_0: 2 + 16 bytes");

/* ggml's other blocks of 32 (ggml-common.h block_q4_1, block_q5_0, block_q5_1), read as q8 / q4
 * are: d (and m) first, then the values. Byte j of qs holds value j in its low nibble and value
 * j + 16 in its high nibble (as q4's); the 5-bit types add 16 to value i where bit i of qh (a
 * little-endian uint32) is set. */
typedef struct {
    uint16_t d, m;                 /* fp16 scale and min: w = d * q + m, q in 0..15 */
    uint8_t qs[MOECC_QBLOCK / 2];
} moecc_block_q4_1;
_Static_assert(sizeof(moecc_block_q4_1) == 20, "a q4_1 block is ggml's block_q4_1: 2 + 2 + 16 bytes");

typedef struct {
    uint16_t d;                    /* fp16 scale: w = d * (q - 16), q in 0..31 */
    uint8_t qh[4];                 /* the fifth bits */
    uint8_t qs[MOECC_QBLOCK / 2];
} moecc_block_q5_0;
_Static_assert(sizeof(moecc_block_q5_0) == 22, "a q5_0 block is ggml's block_q5_0: 2 + 4 + 16 bytes");

typedef struct {
    uint16_t d, m;                 /* fp16 scale and min: w = d * q + m, q in 0..31 */
    uint8_t qh[4];
    uint8_t qs[MOECC_QBLOCK / 2];
} moecc_block_q5_1;
_Static_assert(sizeof(moecc_block_q5_1) == 24, "a q5_1 block is ggml's block_q5_1: 2 + 2 + 4 + 16 bytes");

/* a q4_1 / q5_0 / q5_1 block unpacked (storage.c): w[j] = q[j] * d + m (q5_0: q - 16, m = 0) */
void moecc_unpack_01(moecc_storage s, const void *block, int8_t q[MOECC_QBLOCK], float *d,
                     float *m);

/* q4p: a matrix [N, K] of q4, N % 16 == 0, as N/16 panels of MOECC_PANEL_ROWS rows,
 * back to back (panel p at byte 16 * p * row_bytes). A panel is K/32 block columns of
 * MOECC_PANEL_BLOCK_BYTES: for block b, four chunks c = 0..3 of 16 rows x 4 bytes (row r's q4
 * block b, qs[4c .. 4c + 3]: values 4c..4c+3 of the block in the low nibbles, 16 + 4c ..
 * 16 + 4c + 3 in the high nibbles, each as q + 8), then the 16 rows' fp16 scales d of block b.
 * One 64-byte chunk thus holds the same 4 + 4 values of 16 rows: an int8 dot product instruction
 * adds them per row, in 16 lanes, and a block's 8 chunk-halves add up in the same lanes under
 * one vector of scales. (NumPy oracle: moecc/quant.py to_panels.) */
#define MOECC_PANEL_ROWS 16
typedef struct {
    uint8_t qs[4][MOECC_PANEL_ROWS][4]; /* [chunk][row][byte] */
    uint16_t d[MOECC_PANEL_ROWS];       /* fp16 scale of each row's block */
} moecc_block_q4p;
_Static_assert(sizeof(moecc_block_q4p) == MOECC_PANEL_ROWS * sizeof(moecc_block_q4),
               "a q4p block column is 16 q4 blocks");
#define MOECC_PANEL_BLOCK_BYTES ((int64_t)sizeof(moecc_block_q4p))

/* The K types are ggml's, byte for byte (ggml-common.h block_q4_K, _q5_K, _q6_K): a row of K values
 * (K % 256 == 0) is K/256 super-blocks back to back, at any address (read them with memcpy).
 *
 * q4_k: 8 sub-blocks of 32 values, w = d * sc[j] * q - dmin * m[j], q in 0..15, sc and m 6-bit
 * (scales: sub-blocks j < 4 have sc = scales[j] & 63, m = scales[j + 4] & 63; j >= 4 the low
 * nibble (sc) and the high nibble (m) of scales[j + 4], topped by the upper 2 bits of
 * scales[j - 4] (sc) and scales[j] (m)). Values 64c .. 64c+31 are the low nibbles of qs[32c ..
 * 32c+31] (sub-block 2c), values 64c+32 .. 64c+63 their high nibbles (sub-block 2c+1). */
#define MOECC_K_SCALE_BYTES 12
typedef struct {
    uint16_t d, dmin;                       /* fp16 scales of the sub-block scales and mins */
    uint8_t scales[MOECC_K_SCALE_BYTES];    /* 8 6-bit scales and 8 6-bit mins, packed */
    uint8_t qs[MOECC_KBLOCK / 2];
} moecc_block_q4_k;
_Static_assert(sizeof(moecc_block_q4_k) == 144, "a q4_k super-block is ggml's block_q4_K: 144 bytes");

/* q5_k: q4_k's sub-blocks, scales and nibbles, q in 0..31: value 64c + l (l < 32) adds 16 if
 * bit 2c of qh[l] is set, value 64c + 32 + l if bit 2c+1 is. */
typedef struct {
    uint16_t d, dmin;
    uint8_t scales[MOECC_K_SCALE_BYTES]; /* as q4_k's */
    uint8_t qh[MOECC_KBLOCK / 8];        /* the fifth bits */
    uint8_t qs[MOECC_KBLOCK / 2];        /* the low 4 bits, as q4_k's */
} moecc_block_q5_k;
_Static_assert(sizeof(moecc_block_q5_k) == 176, "a q5_k super-block is ggml's block_q5_K: 176 bytes");

/* q6_k: 16 sub-blocks of 16 values, w = d * scales[v / 16] * (q - 32), q in 0..63. Each half h of
 * 128 values takes ql[64h .. 64h+63] and qh[32h .. 32h+31]: value 128h + 32i + l (i < 4, l < 32)
 * has its low 4 bits in ql[64h + l + 32 (i & 1)] (the low nibble for i < 2, the high one for
 * i >= 2) and its upper 2 bits in bits 2i, 2i+1 of qh[32h + l]. */
typedef struct {
    uint8_t ql[MOECC_KBLOCK / 2]; /* low 4 bits */
    uint8_t qh[MOECC_KBLOCK / 4]; /* upper 2 bits */
    int8_t scales[MOECC_KBLOCK / 16];
    uint16_t d; /* fp16 */
} moecc_block_q6_k;
_Static_assert(sizeof(moecc_block_q6_k) == 210, "a q6_k super-block is ggml's block_q6_K: 210 bytes");

/* A K-type super-block unpacked (storage.c), what every K tile and lookup reads:
 *     w[v] = d * scale[v / 16] * q[v] - dmin * min[v / 16]
 * (q4_k / q5_k: q the 4 / 5 bits, scale and min those of its sub-block of 32, twice; q6_k: the
 * 6 bits - 32, min 0) */
typedef struct {
    float d, dmin;
    int8_t q[MOECC_KBLOCK];
    int16_t scale[MOECC_KBLOCK / 16], min[MOECC_KBLOCK / 16];
} moecc_kblock;
void moecc_unpack_k(moecc_storage s, const void *block, moecc_kblock *out);
/* q4_k's 8 scales (out[0..7]) and 8 mins (out[8..15]) from its 12 packed bytes */
void moecc_q4_k_scales(const uint8_t packed[MOECC_K_SCALE_BYTES], uint8_t out[16]);
/* x float32 [N, K] (K % 256 == 0, every value finite) -> N rows of K-type s (q4_k, q5_k, q6_k)
 * at out, minimising each super-block's squared error weighted per column by importance[K]
 * (NULL: all 1) as kquant.c says; OpenMP over rows */
void moecc_quantize_k(moecc_storage s, const float *x, int64_t N, int64_t K, const float *importance,
                      void *out, int threads);

/* MOECC_OK if a matrix [N, K] can be stored as s: MOECC_ERR_STORAGE for an unknown type,
 * MOECC_ERR_SHAPE if K is not a whole number of blocks or N of panels. The bindings call it
 * once per call; the kernels trust what they are given. */
int moecc_storage_check(moecc_storage s, int64_t N, int64_t K);
/* bytes of one row of K values stored as s (s valid for K) */
static inline int64_t moecc_row_bytes(moecc_storage s, int64_t K) {
    const moecc_storage_info *t = &moecc_storage_types[s];
    return K / t->block_values * t->block_bytes;
}
/* dequantize / widen one row to float32 */
void moecc_row_to_f32(moecc_storage s, int64_t K, const void *row, float *out);

static inline float moecc_bf16_to_f32(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* IEEE half -> float32, exact for every value (subnormals, inf, NaN) */
static inline float moecc_f16_to_f32(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13); /* inf, NaN */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (man << 13); /* rebias 15 -> 127 */
    } else {
        const float mag = (float)man * 0x1p-24f; /* zero or subnormal: man * 2^-24, exact */
        return sign ? -mag : mag;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* float32 -> IEEE half, rounded to nearest even as NumPy's astype(float16) and F16C do:
 * overflow to inf, subnormals exact, NaN stays NaN */
static inline uint16_t moecc_f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    const uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    const uint32_t a = x & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return sign | 0x7E00u | (uint16_t)((a >> 13) & 0x3FFu); /* NaN */
    if (a >= 0x477FF000u) return sign | 0x7C00u; /* >= 65520 rounds past the largest half */
    if (a < 0x38800000u) {                         /* below 2^-14: a subnormal (or 2^-14) */
        float v;
        memcpy(&v, &a, sizeof v);
        return sign | (uint16_t)nearbyintf(v * 0x1p24f); /* exact scaling, then round */
    }
    const uint32_t r = a + 0xFFFu + ((a >> 13) & 1u); /* round the 13 dropped bits to even */
    return sign | (uint16_t)((r - ((uint32_t)(127 - 15) << 23)) >> 13);
}

/* ---- quantized activations ---------------------------------------------------------------- */

/* Quantized weights meet activations quantized once per call (x ~ d * q per block), so the inner
 * products are integer. q8_32 (the blocks of 32): one row of K float32 activations (K % 32 == 0) is
 *     int8_t  q[K]          q = round(x / d) (to nearest even), |q| <= 127, in the values' order
 *     float   d[K/32]       d = max|x| / 127 over the block (0 for an all-zero block)
 *     int32_t sum[K/32]     the sum of the block's q (for kernels that bias weights to unsigned)
 * padded to a multiple of 64 bytes. NumPy oracle: moecc.quant.quantize_activations.
 * The q stay apart from the scales, not in blocks like the weights': a tile loads a block's q as
 * one vector and the scales and sums of 16 blocks as whole vectors, where scales at a block's
 * stride would cost it 16 inserts a step, as the weights' do (qdot_x86.c). */
static inline int64_t moecc_xq_bytes(int64_t K) {
    return (K + 8 * (K / MOECC_QBLOCK) + 63) & ~(int64_t)63;
}
/* q8_k (the K types, as ggml's Q8_K): K % 256 == 0, blocks of 256 with the same d and q, and
 *     int8_t  q[K]          in the values' order
 *     float   d[K/256]
 *     int16_t bsum[K/16]    the sum of each 16 consecutive q (the K types' mins and biases)
 * padded to 64 bytes: never more than moecc_xq_bytes(K), so buffers sized by it hold either. */
static inline int64_t moecc_xk_bytes(int64_t K) {
    return (K + 4 * (K / MOECC_KBLOCK) + 2 * (K / 16) + 63) & ~(int64_t)63;
}
static inline const float *moecc_xk_scales(const void *xk, int64_t K) {
    return (const float *)((const char *)xk + K);
}
static inline const int16_t *moecc_xk_bsums(const void *xk, int64_t K) {
    return (const int16_t *)((const char *)xk + K + 4 * (K / MOECC_KBLOCK));
}
static inline const float *moecc_xq_scales(const void *xq, int64_t K) {
    return (const float *)((const char *)xq + K);
}
static inline const int32_t *moecc_xq_sums(const void *xq, int64_t K) {
    return (const int32_t *)((const char *)xq + K + 4 * (K / MOECC_QBLOCK));
}
/* quantize one row (storage.c: the references; the ISA tables have vector ones) */
void moecc_quantize_x(int64_t K, const float *x, void *xq);  /* q8_32 */
void moecc_quantize_xk(int64_t K, const float *x, void *xk); /* q8_k */

static inline moecc_act moecc_act_of(moecc_storage f) {
    return (moecc_act)moecc_storage_types[f].activations;
}
/* Bytes of an activation row of K values of kind a: 0 for MOECC_ACT_F32 (the rows in place). */
static inline int64_t moecc_act_kind_bytes(moecc_act a, int64_t K) {
    return a == MOECC_ACT_Q8_32 ? moecc_xq_bytes(K) : a == MOECC_ACT_Q8_K ? moecc_xk_bytes(K) : 0;
}
/* Bytes of the activation row the tiles of f read */
static inline int64_t moecc_act_bytes(moecc_storage f, int64_t K) {
    return moecc_act_kind_bytes(moecc_act_of(f), K);
}

/* ---- the per-ISA table -------------------------------------------------------------------- */

#define MOECC_WSUM_ROWS 4 /* rows of one wsum_rows call */

/* Rows of W handled by one tile call: a whole panel for q4p; 16 for the types read with
 * quantized activations, whose AVX-512 prefill unpacks 16 rows into a panel (gpanel_x86.h);
 * MOECC_TILE_ROWS for the float ones */
#define MOECC_TILE_ROWS 4
#define MOECC_TILE_ROWS_MAX MOECC_PANEL_ROWS
static inline int moecc_tile_rows(moecc_storage f) {
    return f == MOECC_Q4P || moecc_act_of(f) != MOECC_ACT_F32 ? MOECC_PANEL_ROWS : MOECC_TILE_ROWS;
}

/* The one weight-type-specific inner product, a register tile:
 *     out[t*ldo + r] = sum_{k<K} W[r][k] * X[t][k]      r < nr (1..moecc_tile_rows), t < nt (>= 1)
 * W row r starts at (const char *)w + r*ldw, X row t at (const char *)x + t*ldx (byte strides);
 * for q4p, w is a panel and ldw the row bytes (nr is always 16).
 * X rows are of the kind moecc_act_of(type) says: float32 for f32 / bf16 / f16, quantized
 * activation rows otherwise, hence the untyped pointer and the byte stride.
 * A tile streams each of its nr weight rows once per few tokens (the ISA picks how many), so
 * prefill reuses weights from cache and decode (nt == 1) streams them. */
typedef void (*moecc_tile_fn)(int64_t K, const void *w, int64_t ldw, int nr,
                              const void *x, int64_t ldx, int nt, float *out, int64_t ldo);

typedef struct {
    const char *name;                   /* "generic", "avx2", "avx512", "avx512vnni" */
    moecc_tile_fn tile[MOECC_STORAGE_COUNT]; /* indexed by moecc_storage */
    /* y[i][k] += sum_{j<n} a[i][j] * X[j][k] for i < rows (1..MOECC_WSUM_ROWS), k < K; a and y
     * rows lda and ldy floats apart; X rows of K values of type xt (MOECC_F32 or MOECC_F16),
     * back to back (attention's P @ V for the query heads sharing a kv head: X loads once) */
    void (*wsum_rows)(int64_t K, int n, int rows, const float *a, int64_t lda, const void *X,
                      moecc_storage xt, float *y, int64_t ldy);
    /* s[j] = exp(s[j] - m) for j < n, returns their sum; m >= every s[j] (softmax numerators).
     * Relative error ~2 ulp; arguments below MOECC_EXP_MIN give 0. */
    float (*exp_sum)(int n, float *s, float m);
    /* g[i] = silu(g[i]) * u[i] for i < n, silu(z) = z / (1 + exp(-z))  (SwiGLU) */
    void (*swiglu)(int64_t n, float *g, const float *u);
    /* moecc_quantize_x (q8_32) and moecc_quantize_xk (q8_k), bit for bit, by moecc_act */
    void (*quantize_x[MOECC_ACT_KINDS])(int64_t K, const float *x, void *xq);
} moecc_isa;

/* exp(x) is computed as 2^i * p(r), x = i*ln2 + r, |r| <= ln2/2, p a degree-6 polynomial */
#define MOECC_EXP_MIN (-87.0f) /* below: 0 (2^i would leave the normal range) */
#define MOECC_LOG2E 1.44269504088896341f
#define MOECC_LN2_HI 0.693359375f     /* ln2 split so that i * LN2_HI is exact */
#define MOECC_LN2_LO (-2.12194440e-4f)
/* e^r ~ 1 + r + r^2 * (P5 + r*(P4 + r*(P3 + r*(P2 + r*(P1 + r*P0))))) on |r| <= ln2/2 */
#define MOECC_EXP_P0 1.9875691500e-4f
#define MOECC_EXP_P1 1.3981999507e-3f
#define MOECC_EXP_P2 8.3334519073e-3f
#define MOECC_EXP_P3 4.1665795894e-2f
#define MOECC_EXP_P4 1.6666665459e-1f
#define MOECC_EXP_P5 5.0000001201e-1f

extern const moecc_isa moecc_isa_generic; /* dot_generic.c: portable C, the oracle */
#if MOECC_X86
extern const moecc_isa moecc_isa_avx2;       /* dot_avx2.c:   AVX2 + FMA + F16C */
extern const moecc_isa moecc_isa_avx512;     /* dot_avx512.c: AVX-512 F/BW/VL/DQ */
extern const moecc_isa moecc_isa_avx512vnni; /* dot_avx512.c: the same + VNNI for q8 / q4 */
#endif

/* The q8 / q4 / q4_1 / q5_0 / q5_1 tiles (the ISA tables point at them): qdot_generic.c,
 * qdot_x86.c */
void moecc_tile_q8_generic(int64_t K, const void *w, int64_t ldw, int nr,
                           const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q4_generic(int64_t K, const void *w, int64_t ldw, int nr,
                           const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q4_1_generic(int64_t K, const void *w, int64_t ldw, int nr,
                             const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q5_0_generic(int64_t K, const void *w, int64_t ldw, int nr,
                             const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q5_1_generic(int64_t K, const void *w, int64_t ldw, int nr,
                             const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
/* q4p panels (MOECC_Q4P): qpanel_generic.c, qpanel_avx2.c, qpanel_avx512.c */
void moecc_tile_q4p_generic(int64_t K, const void *w, int64_t ldw, int nr,
                            const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
#if MOECC_X86
void moecc_tile_q4p_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                         const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q4p_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                           const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q4p_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                               const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
#endif
/* the K types (MOECC_Q4_K, MOECC_Q5_K, MOECC_Q6_K): kdot_generic.c, kdot_x86.c */
void moecc_tile_q4_k_generic(int64_t K, const void *w, int64_t ldw, int nr,
                             const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q5_k_generic(int64_t K, const void *w, int64_t ldw, int nr,
                             const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q6_k_generic(int64_t K, const void *w, int64_t ldw, int nr,
                             const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
#if MOECC_X86
/* maddubs + madd (AVX2) */
void moecc_tile_q4_k_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                          const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q5_k_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                          const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q6_k_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                          const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
/* the same with 32 registers (AVX-512 BW/VL) */
void moecc_tile_q4_k_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                            const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q5_k_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                            const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q6_k_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                            const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
/* maddubs + dpwssd (AVX-512 VNNI) */
void moecc_tile_q4_k_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q5_k_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q6_k_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
/* qdot_x86.c: the activation quantization of every x86 table (q8_32, q8_k) */
void moecc_quantize_x_avx2(int64_t K, const float *x, void *xq);
void moecc_quantize_xk_avx2(int64_t K, const float *x, void *xk);
/* qdot_x86.c, one loop on 256-bit vectors for all three tables; maddubs (AVX2) */
void moecc_tile_q8_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                        const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q4_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                        const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q4_1_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                          const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q5_0_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                          const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q5_1_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                          const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
/* maddubs (AVX-512 BW/VL: 32 registers, four tokens a register block) */
void moecc_tile_q8_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                          const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q4_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                          const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q4_1_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                            const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q5_0_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                            const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q5_1_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                            const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
/* dpbusd (AVX-512 VNNI) */
void moecc_tile_q8_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                              const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q4_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                              const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q4_1_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q5_0_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
void moecc_tile_q5_1_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                const void *x, int64_t ldx, int nt, float *out, int64_t ldo);
#endif

/* dispatch.c: cpuid once at init; the active table is read once at the start of each kernel */
void moecc_dispatch_init(void);
int moecc_isa_count(void);                /* ISAs compiled in, best last */
const char *moecc_isa_name(int i);        /* i < moecc_isa_count() */
int moecc_isa_supported(int i);           /* compiled in and this CPU has it */
int moecc_set_isa(const char *name);      /* MOECC_OK or MOECC_ERR_ISA */
const char *moecc_get_isa(void);
const moecc_isa *moecc_active_isa(void);
int moecc_openmp(void);                   /* 1 if built with OpenMP */
int moecc_max_threads(void);

/* ---- helpers shared by the kernels ------------------------------------------------------- */

/* Split [0, n) into nth chunks aligned to `align`; chunk ith is [*lo, *hi). */
static inline void moecc_split(int64_t n, int64_t align, int nth, int ith, int64_t *lo,
                               int64_t *hi) {
    const int64_t blocks = (n + align - 1) / align;
    const int64_t chunk = (blocks + nth - 1) / nth * align;
    int64_t a = (int64_t)ith * chunk, b = a + chunk;
    *lo = a < n ? a : n;
    *hi = b < n ? b : n;
}

/* Tokens per block so that a block of activation rows (ldx bytes each) stays in L2. */
#define MOECC_TOKEN_BLOCK_MAX 64
static inline int64_t moecc_token_block(int64_t ldx) {
    int64_t tb = 262144 / (ldx > 0 ? ldx : 1);
    tb = tb < 4 ? 4 : tb > MOECC_TOKEN_BLOCK_MAX ? MOECC_TOKEN_BLOCK_MAX : tb;
    return tb & ~(int64_t)3;
}

/* Bytes of quantized activations a kernel keeps on its stack for one token (decode allocates
 * nothing); longer rows, and prefill, use the heap or the caller's scratch. */
#define MOECC_XQ_STACK 12288

/* Below this many multiply-adds a kernel runs on one thread (the fork costs more). */
#define MOECC_PAR_MIN 16384

/* ---- kernels ------------------------------------------------------------------------------ */

/* Each kernel comes in two forms: moecc_X(..., threads) opens a parallel region of `threads`
 * (one thread below MOECC_PAR_MIN of work) and validates the indices it is given; moecc_X_team
 * is called by every thread of an enclosing region (the forward step's, forward.c), shares the
 * work out with orphaned worksharing constructs, trusts its inputs and ends in a barrier unless
 * it says otherwise. */

/* matmul.c: out[T, N] = x[T, K] @ W[N, K]^T; MOECC_OK, or MOECC_ERR_NOMEM (prefill, q8 / q4) */
int moecc_matmul(const float *x, int64_t T, int64_t K, const void *w, moecc_storage f, int64_t N,
                 float *out, int threads);
/* the T rows of x[T, K] quantized to kind a (not MOECC_ACT_F32) as the matmul of weights that
 * read it does, moecc_act_kind_bytes(a, K) apart */
void moecc_quantize_rows(moecc_act a, const float *x, int64_t T, int64_t K, void *xq);
void moecc_quantize_team(moecc_act a, const float *x, int64_t T, int64_t K, void *xq);
/* rows [n0, n1) of a matmul with the given table, on the calling thread, from activation rows
 * xa, ldx bytes apart: x itself for f32 / bf16 / f16, rows of kind moecc_act_of(f) otherwise */
void moecc_gemm_rows(const moecc_isa *isa, moecc_storage f, int64_t T, int64_t K, const void *xa,
                     int64_t ldx, const void *w, int64_t n0, int64_t n1, float *out, int64_t ldo);
/* the calling thread's share of the N rows (no barrier) */
void moecc_gemm_share(moecc_storage f, int64_t T, int64_t K, const void *xa, int64_t ldx,
                      const void *w, int64_t N, float *out, int64_t ldo);

/* ops.c: embedding (MOECC_ERR_INDEX for an id outside [0, V)), RMSNorm (out may be x), RoPE
 * (rotate-half, in place on x[T, H, hd]; MOECC_ERR_INDEX for a position outside [0, P)), the
 * MoE router (softmax over E, top k, renormalised if `normalize`) */
int moecc_embedding(const void *table, moecc_storage f, int64_t V, int64_t D, const int32_t *ids,
                    int64_t T, float *out, int threads);
void moecc_embedding_team(const void *table, moecc_storage f, int64_t D, const int32_t *ids,
                          int64_t T, float *out);
void moecc_rmsnorm(const float *x, int64_t R, int64_t D, const float *weight, float eps, float *out,
                   int threads);
void moecc_rmsnorm_team(const float *x, int64_t R, int64_t D, const float *weight, float eps,
                        float *out);
void moecc_rmsnorm_row(const float *x, int64_t D, const float *weight, float eps, float *out);
int moecc_rope(float *x, int64_t T, int64_t H, int64_t hd, const int32_t *positions,
               const float *cos, const float *sin, int64_t P, int threads);
void moecc_rope_team(float *x, int64_t T, int64_t H, int64_t hd, const int32_t *positions,
                     const float *cos, const float *sin);
/* one head of hd values rotated by the tables' row of its position (c, s: hd/2 values) */
void moecc_rope_row(float *x, int64_t hd, const float *c, const float *s);
int moecc_router_topk(const float *logits, int64_t T, int64_t E, int64_t top_k, int normalize,
                      int32_t *idx_out, float *weight_out, int threads);
void moecc_router_topk_team(const float *logits, int64_t T, int64_t E, int64_t top_k,
                            int normalize, int32_t *idx_out, float *weight_out);

/* attention.c: causal GQA; q[T, Hq, hd]; the caches of one layer [S, Hkv, C, hd] of type kv
 * (MOECC_F32 or MOECC_F16; MOECC_ERR_STORAGE otherwise); row t attends over slot slots[t], keys
 * 0 .. positions[t]; at most 16 query heads per kv head (MOECC_ERR_SHAPE); MOECC_ERR_INDEX for
 * a slot or position out of range */
int moecc_attention(const float *q, int64_t T, int64_t Hq, int64_t hd, const void *k_cache,
                    const void *v_cache, moecc_storage kv, int64_t S, int64_t Hkv, int64_t C,
                    const int32_t *slots, const int32_t *positions, float *out, int threads);
void moecc_attention_team(const float *q, int64_t T, int64_t Hq, int64_t hd, const void *k_cache,
                          const void *v_cache, moecc_storage kv, int64_t Hkv, int64_t C,
                          const int32_t *slots, const int32_t *positions, float *out);

/* stats.c: importance statistics (moecc.imatrix), the sums over rows of each input column's
 * square that llama.cpp's llama-imatrix collects; kept in double so that a long text's sums
 * do not depend on the order they were added in.
 * sums[j] += sum over t < T of x[t, j]^2 for j < K, by every thread of a team, each its own
 * share of the columns (no barrier: x must stay unchanged until the team's next one) */
void moecc_add_squares_team(const float *x, int64_t T, int64_t K, double *sums);
/* sums[j] += x[j]^2 for j in [j0, j1) */
void moecc_add_squares(const float *x, int64_t j0, int64_t j1, double *sums);

/* The statistics of one MoE layer (or a dense MLP, one expert): per expert, over the rows
 * routed to it, the sums of squares of the gate / up input x (gate_up_in[E, D]) and of the down
 * projection's input silu(gate x) * (up x) (down_in[E, inter]), and the count of those rows
 * (rows[E]). Under expert parallelism a process adds only its own experts' rows. */
typedef struct {
    double *gate_up_in, *down_in;
    int64_t *rows;
} moecc_expert_stats;

/* moe.c: out[T, D] = sum_j weights[t, j] * SwiGLU expert idx[t, j] applied to x[t], over the
 * pairs whose expert is in [e0, e1) (all of [0, E): the whole layer; a narrower range: this
 * process's share under expert parallelism, nothing read of the other experts), summed in
 * double: the team form leaves the sums in sums[T, D], moecc_moe_ffn rounds them into out
 * (sums: the caller's scratch);
 * gate, up [E, inter, D] stored as fgu, down [E, D, inter] as fd (not named I here: <complex.h>
 * defines I). MOECC_ERR_INDEX for an expert id outside [0, E) or a range not within it. The
 * scratch size covers every storage type. */
int64_t moecc_moe_scratch_floats(int64_t T, int64_t top_k, int64_t D, int64_t inter);
int moecc_moe_ffn(const float *x, int64_t T, int64_t D, const void *gate, const void *up,
                  moecc_storage fgu, const void *down, moecc_storage fd, int64_t E, int64_t inter,
                  const int32_t *idx, const float *weights, int64_t top_k, int64_t e0, int64_t e1,
                  float *scratch, double *sums, float *out, int threads);
/* the team form adds each pair's inputs to `stats` when it is not NULL */
void moecc_moe_ffn_team(const float *x, int64_t T, int64_t D, const void *gate, const void *up,
                        moecc_storage fgu, const void *down, moecc_storage fd, int64_t inter,
                        const int32_t *idx, const float *weights, int64_t top_k, int64_t e0,
                        int64_t e1, float *scratch, double *sums, const moecc_expert_stats *stats);

/* ---- the forward step (forward.c) ----------------------------------------------------------- */

/* a weight matrix (or a stack of expert matrices, one after another) as stored */
typedef struct {
    const void *data;
    moecc_storage type;
} moecc_weight;

/* One decoder layer, its fields named as model.py's LayerWeights (the checkpoint's tensors) */
typedef struct {
    const float *input_layernorm;          /* [D] */
    moecc_weight q_proj, k_proj, v_proj;   /* [Hq*hd, D], [Hkv*hd, D], [Hkv*hd, D] */
    moecc_weight o_proj;                   /* [D, Hq*hd] */
    const float *q_norm, *k_norm;          /* [hd] */
    const float *post_attention_layernorm; /* [D] */
    const float *router;                   /* [E, D]; NULL in a dense layer */
    moecc_weight gate_proj, up_proj;       /* [E, I, D] (a dense layer: one "expert", [1, I, D]) */
    moecc_weight down_proj;                /* [E, D, I] */
    int64_t experts, inter;                /* E and I of this layer (dense: 1, intermediate_size) */
} moecc_layer;

/* Sums x[n] in place over all the processes of an expert-parallel job; 0, or nonzero if that
 * failed. Called by the master thread of the step's team between barriers. */
typedef int (*moecc_reduce_fn)(double *x, int64_t n, void *ctx);

typedef struct {
    int64_t layers, D, Hq, Hkv, hd, V, top_k; /* top_k: experts per token of a sparse layer */
    int norm_topk_prob;
    float eps;                      /* of every RMSNorm */
    moecc_weight embed_tokens;      /* [V, D], a type whose rows can be looked up */
    const moecc_layer *layer;       /* [layers] */
    const float *norm;              /* [D] */
    moecc_weight lm_head;           /* [V, D] */
    const float *cos, *sin;         /* [C, hd/2]: the rotary tables */
    void *k_cache, *v_cache;        /* [layers, slots, Hkv, C, hd] of type kv (f32 or f16) */
    moecc_storage kv;
    int64_t slots, C;
    /* expert parallelism: this process computes experts [expert_begin, expert_end) of every
     * sparse layer (all of them in one process), and `reduce` (NULL in one process) sums each
     * sparse layer's partial expert output over the processes before the residual add */
    int64_t expert_begin, expert_end;
    moecc_reduce_fn reduce;
    void *reduce_ctx;
} moecc_model;

/* The activations of a step of up to `rows` tokens: the caller's, reused by every step. */
typedef struct {
    int64_t rows;
    float *x, *h;                  /* [rows, D]: the residual stream; a block's normed input */
    float *q, *k, *v, *attn;       /* [rows, Hq*hd], [rows, Hkv*hd] (twice), [rows, Hq*hd] */
    float *out;                    /* [rows, D]: a block's output before the residual add */
    double *moe_sums;              /* [rows, D]: the experts' (or dense MLP's) output, in double */
    float *router_logits;          /* [rows, E] */
    int32_t *expert_ids;           /* [rows, top_k] */
    float *expert_weights;         /* [rows, top_k] */
    const int32_t *dense_ids;      /* [rows]: all 0 (a dense MLP is expert 0 ...) */
    const float *dense_weights;    /* [rows]: all 1 (... with weight 1) */
    void *xq;                      /* rows x moecc_xq_bytes(max(D, Hq*hd)) bytes (any kind) */
    float *moe_scratch;            /* moecc_moe_scratch_floats(rows, top_k, D, max I) floats */
} moecc_activations;

/* What a step adds its matrices' inputs to when asked (moecc.imatrix): per input column the
 * sum of squares over the step's rows (see stats.c), per layer and for the lm_head. Every
 * pointer is the caller's, zeroed once and added to by each step. */
typedef struct {
    double *attn_in;            /* [D]: input_layernorm(x), what q, k and v read */
    double *o_proj_in;          /* [Hq*hd]: the attention's output */
    double *router_in;          /* [D]: post_attention_layernorm(x); unused in a dense layer */
    moecc_expert_stats experts; /* the experts' (or dense MLP's) inputs, per expert */
} moecc_layer_stats;

typedef struct {
    moecc_layer_stats *layer; /* [layers] */
    double *lm_head_in;       /* [D]: norm(x) of the logit rows */
    int64_t rows;             /* rows run (what every layer's attention and router read) */
    int64_t lm_head_rows;     /* logit rows */
} moecc_stats;

/* the blocks a profiled step charges its time to */
enum {
    MOECC_BLOCK_EMBED,      /* the embedding lookup */
    MOECC_BLOCK_QKV,        /* input_layernorm, q / k / v projections */
    MOECC_BLOCK_ROPE_CACHE, /* q / k norms, RoPE, the KV cache append */
    MOECC_BLOCK_ATTEND,     /* attention over the cache */
    MOECC_BLOCK_O_PROJ,     /* o_proj and the residual add */
    MOECC_BLOCK_ROUTER,     /* post_attention_layernorm, router, top-k */
    MOECC_BLOCK_EXPERTS,    /* the experts (or dense MLP) and the residual add */
    MOECC_BLOCK_LM_HEAD,    /* the final norm and the lm_head */
    MOECC_BLOCKS
};

/* One step (see forward.c): rows t < T (T <= a->rows) are token tokens[t] of the sequence in
 * cache slot slots[t] at position positions[t]; logits[i] ([n_logits, V]) are those of row
 * logit_rows[i]. With `seconds` ([MOECC_BLOCKS]), each block's time is added to it; with
 * `stats`, the inputs of every matrix (moecc_stats).
 * MOECC_ERR_INDEX for a token, slot, position or logit row out of range, MOECC_ERR_SHAPE for
 * more rows than a holds, MOECC_ERR_REDUCE if m->reduce failed (the step stops there). Weights and activations are trusted (the binding checked them once,
 * when the model was loaded). */
int moecc_forward(const moecc_model *m, const moecc_activations *a, const int32_t *tokens,
                  const int32_t *slots, const int32_t *positions, int64_t T,
                  const int32_t *logit_rows, int64_t n_logits, float *logits, double *seconds,
                  moecc_stats *stats, int threads);

/* bandwidth.c: the machine's read bandwidth, read as decode reads weights (each thread its own
 * contiguous slice). Allocates `bytes` (> 0, a multiple of MOECC_BW_STEP), first touched by the
 * threads that read it, reads it once to warm up, then `passes` (>= 1) times, timed:
 * bytes_per_s[p] = bytes / seconds of pass p. MOECC_OK, or MOECC_ERR_NOMEM. */
#define MOECC_BW_STEP 512 /* 4 streams x 2 lines of 64 bytes per loop iteration */
int moecc_read_bandwidth(int64_t bytes, int passes, int threads, double *bytes_per_s);
int moecc_read_bandwidth_bits(void); /* its load width on the active ISA: 512, 256 or 64 */

#endif /* MOECC_H */
