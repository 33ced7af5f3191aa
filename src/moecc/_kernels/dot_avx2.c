/* dot_avx2.c -- AVX2 + FMA inner products (the q8 / q4 tiles are in qdot_x86.c, q4p in
 * qpanel_avx2.c, the K types in kdot_x86.c).
 * Compiled only on x86 and only through per-function target attributes. */
#include "moecc.h"

#if MOECC_X86
#include <immintrin.h>

#define LANES 8
#define TILE_TOKENS 2 /* 4 rows x 2 tokens = 8 accumulators of the 16 ymm registers */
#define UNROLL 4      /* accumulators along K when streaming one row for one token */
#define MAX_ACC 16    /* NR * NT * U never exceeds this */

/* 8 weights of a row starting at element k, widened to float32 */
INLINE TARGET_AVX2 __m256 load_w(const int wt, const char *row, int64_t k) {
    if (wt == MOECC_BF16) {
        const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + k));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    if (wt == MOECC_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k)));
    return _mm256_loadu_ps((const float *)row + k);
}

INLINE float scalar_w(const int wt, const char *row, int64_t k) {
    if (wt == MOECC_BF16) return moecc_bf16_to_f32(((const uint16_t *)row)[k]);
    if (wt == MOECC_F16) return moecc_f16_to_f32(((const uint16_t *)row)[k]);
    return ((const float *)row)[k];
}

INLINE TARGET_AVX2 float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Accumulator of row r, token t, K-lane group u in a block of NR x NT: acc[ACC(r, t, u)] */
#define ACC(r, t, u) (((u) * NR + (r)) * NT + (t))

/* NR rows x NT tokens of dot products, all accumulators in registers; U accumulators per pair
 * along K (NR, NT, U compile-time constants). 4 x 2 is the prefill block; 1 x NT with U > 1
 * streams a single weight row, which the hardware prefetcher likes best. The K % 8 tail is
 * scalar. */
INLINE TARGET_AVX2 void block(const int wt, const int NR, const int NT, const int U, const int PF,
                         int64_t K, const char *w, int64_t ldw, const char *x, int64_t ldx,
                         float *out, int64_t ldo) {
    __m256 acc[MAX_ACC];
#pragma GCC unroll 16
    for (int i = 0; i < NR * NT * U; i++) acc[i] = _mm256_setzero_ps();
    /* PF: sweep-prefetch the next NR rows (contiguous after ours) while computing, turning NR
     * interleaved DRAM streams into one sequential stream */
    const char *pf = w + NR * ldw;
    const int64_t pf_step = PF ? NR * ldw * LANES * U / K : 0;
    int64_t k = 0;
    for (; k + LANES * U <= K; k += LANES * U) {
        for (int64_t b = 0; b < pf_step; b += 64) _mm_prefetch(pf + b, _MM_HINT_T0);
        pf += pf_step;
        /* unrolled whole, so the accumulators stay in registers (see dot_avx512.c) */
#pragma GCC unroll 16
        for (int u = 0; u < U; u++) {
            __m256 xv[TILE_TOKENS];
#pragma GCC unroll 16
            for (int t = 0; t < NT; t++)
                xv[t] = _mm256_loadu_ps((const float *)(x + t * ldx) + k + LANES * u);
#pragma GCC unroll 16
            for (int r = 0; r < NR; r++) {
                const __m256 wv = load_w(wt, w + r * ldw, k + LANES * u);
#pragma GCC unroll 16
                for (int t = 0; t < NT; t++)
                    acc[ACC(r, t, u)] = _mm256_fmadd_ps(wv, xv[t], acc[ACC(r, t, u)]);
            }
        }
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) {
            __m256 sum = acc[ACC(r, t, 0)];
            for (int u = 1; u < U; u++) sum = _mm256_add_ps(sum, acc[ACC(r, t, u)]);
            const float *xt = (const float *)(x + t * ldx);
            float s = hsum(sum);
            for (int64_t j = k; j < K; j++) s += scalar_w(wt, w + r * ldw, j) * xt[j];
            out[t * ldo + r] = s;
        }
}

#undef ACC

INLINE TARGET_AVX2 void tile_any(const int wt, int64_t K, const void *w, int64_t ldw, int nr,
                            const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    const char *wp = (const char *)w, *xp = (const char *)x;
    int t0 = 0;
    if (nr == MOECC_TILE_ROWS && nt >= TILE_TOKENS) { /* the first pass fetches the next rows */
        block(wt, MOECC_TILE_ROWS, TILE_TOKENS, 1, 1, K, wp, ldw, xp, ldx, out, ldo);
        for (t0 = TILE_TOKENS; t0 + TILE_TOKENS <= nt; t0 += TILE_TOKENS)
            block(wt, MOECC_TILE_ROWS, TILE_TOKENS, 1, 0, K, wp, ldw, xp + t0 * ldx, ldx,
                  out + t0 * ldo, ldo);
    }
    for (int r = 0; r < nr; r++) {
        const char *wr = wp + r * ldw;
        float *o = out + r;
        int t = t0;
        for (; t + TILE_TOKENS <= nt; t += TILE_TOKENS)
            block(wt, 1, TILE_TOKENS, 2, 0, K, wr, ldw, xp + t * ldx, ldx, o + t * ldo, ldo);
        if (t < nt) block(wt, 1, 1, UNROLL, 0, K, wr, ldw, xp + t * ldx, ldx, o + t * ldo, ldo);
    }
}

static TARGET_AVX2 void tile_f32(int64_t K, const void *w, int64_t ldw,
                            int nr, const void *x, int64_t ldx, int nt, float *out,
                            int64_t ldo) {

    tile_any(MOECC_F32, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

static TARGET_AVX2 void tile_bf16(int64_t K, const void *w, int64_t ldw,
                             int nr, const void *x, int64_t ldx, int nt, float *out,
                             int64_t ldo) {

    tile_any(MOECC_BF16, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

static TARGET_AVX2 void tile_f16(int64_t K, const void *w, int64_t ldw,
                            int nr, const void *x, int64_t ldx, int nt, float *out,
                            int64_t ldo) {

    tile_any(MOECC_F16, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

/* NR rows of y += a @ X, X rows of type wt (f32 / f16), K values each: each vector of X is
 * loaded (and widened) once for the NR rows; 2 vectors per row at a time fit the 16 registers */
INLINE TARGET_AVX2 void wsum_block(const int wt, const int NR, int64_t K, int n, const float *a,
                              int64_t lda, const char *X, float *y, int64_t ldy) {
    const int64_t ldx = K * (wt == MOECC_F32 ? 4 : 2);
    int64_t k = 0;
    for (; k + 2 * LANES <= K; k += 2 * LANES) {
        __m256 acc[MOECC_WSUM_ROWS][2];
#pragma GCC unroll 16
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
            for (int c = 0; c < 2; c++) acc[r][c] = _mm256_loadu_ps(y + r * ldy + k + LANES * c);
        for (int j = 0; j < n; j++) {
            const char *xj = X + j * ldx;
            const __m256 x0 = load_w(wt, xj, k), x1 = load_w(wt, xj, k + LANES);
#pragma GCC unroll 16
            for (int r = 0; r < NR; r++) {
                const __m256 ar = _mm256_set1_ps(a[r * lda + j]);
                acc[r][0] = _mm256_fmadd_ps(ar, x0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(ar, x1, acc[r][1]);
            }
        }
#pragma GCC unroll 16
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 2
            for (int c = 0; c < 2; c++) _mm256_storeu_ps(y + r * ldy + k + LANES * c, acc[r][c]);
    }
    for (; k < K; k++) /* the K % 16 tail */
        for (int r = 0; r < NR; r++) {
            float sum = y[r * ldy + k];
            for (int j = 0; j < n; j++) sum += a[r * lda + j] * scalar_w(wt, X + j * ldx, k);
            y[r * ldy + k] = sum;
        }
}

INLINE TARGET_AVX2 void wsum_type(const int wt, int64_t K, int n, int rows, const float *a,
                             int64_t lda, const char *X, float *y, int64_t ldy) {
    switch (rows) {
    case 1: wsum_block(wt, 1, K, n, a, lda, X, y, ldy); break;
    case 2: wsum_block(wt, 2, K, n, a, lda, X, y, ldy); break;
    case 3: wsum_block(wt, 3, K, n, a, lda, X, y, ldy); break;
    default: wsum_block(wt, 4, K, n, a, lda, X, y, ldy); break;
    }
}

static TARGET_AVX2 void wsum_rows(int64_t K, int n, int rows, const float *a, int64_t lda,
                             const void *X, moecc_storage xt, float *y, int64_t ldy) {
    if (xt == MOECC_F16)
        wsum_type(MOECC_F16, K, n, rows, a, lda, (const char *)X, y, ldy);
    else
        wsum_type(MOECC_F32, K, n, rows, a, lda, (const char *)X, y, ldy);
}

/* exp(x) for x <= 0, 8 lanes (as exp_nonpos in dot_generic.c) */
INLINE TARGET_AVX2 __m256 exp_nonpos(__m256 x) {
    const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(MOECC_EXP_MIN), _CMP_GE_OQ);
    const __m256 xc = _mm256_max_ps(x, _mm256_set1_ps(MOECC_EXP_MIN));
    const __m256 fi = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(MOECC_LOG2E)),
                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fi, _mm256_set1_ps(MOECC_LN2_HI), xc);
    r = _mm256_fnmadd_ps(fi, _mm256_set1_ps(MOECC_LN2_LO), r);
    __m256 p = _mm256_set1_ps(MOECC_EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(MOECC_EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(MOECC_EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(MOECC_EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(MOECC_EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(MOECC_EXP_P5));
    p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(fi), _mm256_set1_epi32(127));
    const __m256i bits = _mm256_slli_epi32(biased, 23);
    return _mm256_and_ps(live, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

static TARGET_AVX2 float exp_sum(int n, float *s, float m) {
    const __m256 mv = _mm256_set1_ps(m);
    __m256 sum = _mm256_setzero_ps();
    int j = 0;
    for (; j + LANES <= n; j += LANES) {
        const __m256 e = exp_nonpos(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
        _mm256_storeu_ps(s + j, e);
        sum = _mm256_add_ps(sum, e);
    }
    float total = hsum(sum);
    if (j < n) { /* the tail through a padded copy, so the scalar path is the same polynomial */
        float buf[LANES];
        for (int i = 0; i < LANES; i++) buf[i] = j + i < n ? s[j + i] - m : MOECC_EXP_MIN - 1.0f;
        _mm256_storeu_ps(buf, exp_nonpos(_mm256_loadu_ps(buf)));
        for (int i = 0; j + i < n; i++) {
            s[j + i] = buf[i];
            total += buf[i];
        }
    }
    return total;
}

/* as swiglu in dot_generic.c: sigmoid from e = exp(-|z|) */
INLINE TARGET_AVX2 __m256 swiglu8(__m256 z, __m256 u) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 nabs = _mm256_or_ps(z, _mm256_set1_ps(-0.0f)); /* -|z| */
    const __m256 e = exp_nonpos(nabs);
    const __m256 pos = _mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_GE_OQ);
    const __m256 sig = _mm256_div_ps(_mm256_blendv_ps(e, one, pos), _mm256_add_ps(one, e));
    return _mm256_mul_ps(_mm256_mul_ps(z, sig), u);
}

static TARGET_AVX2 void swiglu(int64_t n, float *g, const float *u) {
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        _mm256_storeu_ps(g + i, swiglu8(_mm256_loadu_ps(g + i), _mm256_loadu_ps(u + i)));
    if (i < n) { /* the tail through a padded copy */
        float gb[LANES] = {0}, ub[LANES] = {0};
        memcpy(gb, g + i, (size_t)(n - i) * sizeof(float));
        memcpy(ub, u + i, (size_t)(n - i) * sizeof(float));
        _mm256_storeu_ps(gb, swiglu8(_mm256_loadu_ps(gb), _mm256_loadu_ps(ub)));
        memcpy(g + i, gb, (size_t)(n - i) * sizeof(float));
    }
}

const moecc_isa moecc_isa_avx2 = {
    .name = "avx2",
    .tile = {[MOECC_F32] = tile_f32, [MOECC_BF16] = tile_bf16, [MOECC_F16] = tile_f16,
             [MOECC_Q8] = moecc_tile_q8_avx2, [MOECC_Q4] = moecc_tile_q4_avx2,
             [MOECC_Q4P] = moecc_tile_q4p_avx2, [MOECC_Q4_K] = moecc_tile_q4_k_avx2,
             [MOECC_Q6_K] = moecc_tile_q6_k_avx2,
             [MOECC_Q5_K] = moecc_tile_q5_k_avx2, [MOECC_Q5_0] = moecc_tile_q5_0_avx2,
             [MOECC_Q5_1] = moecc_tile_q5_1_avx2, [MOECC_Q4_1] = moecc_tile_q4_1_avx2},
    .wsum_rows = wsum_rows,
    .exp_sum = exp_sum,
    .swiglu = swiglu,
    .quantize_x = {[MOECC_ACT_Q8_32] = moecc_quantize_x_avx2,
                   [MOECC_ACT_Q8_K] = moecc_quantize_xk_avx2},
};

#endif /* MOECC_X86 */
