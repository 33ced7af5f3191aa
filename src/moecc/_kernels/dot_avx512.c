/* dot_avx512.c -- AVX-512 inner products (F/BW/VL/DQ; the q8 / q4 tiles are in qdot_x86.c,
 * q4p in qpanel_avx512.c, the K types in kdot_x86.c).
 * Compiled only on x86 and only through per-function target attributes: the rest of the library
 * stays baseline x86-64. */
#include "moecc.h"

#if MOECC_X86
#include <immintrin.h>

#define LANES 16
#define TILE_TOKENS 4 /* tokens per register block: 4 rows x 4 tokens = 16 accumulators */
#define UNROLL 4      /* accumulators along K when streaming one row for one token */
#define MAX_ACC 16    /* NR * NT * U never exceeds this */

/* 16 weights of a row starting at element k, widened to float32; lanes outside m read as 0 */
INLINE TARGET_512 __m512 load_w(const int wt, const char *row, int64_t k, __mmask16 m) {
    if (wt == MOECC_BF16) {
        const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + k);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    if (wt == MOECC_F16)
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)row + k));
    return _mm512_maskz_loadu_ps(m, (const float *)row + k);
}

/* Accumulator of row r, token t, K-lane group u in a block of NR x NT: acc[ACC(r, t, u)] */
#define ACC(r, t, u) (((u) * NR + (r)) * NT + (t))

/* acc[ACC(r, t, u)] += W[r][k+16u : k+16u+16] * X[t][same] for u < U */
INLINE TARGET_512 void fma_step(const int wt, const int NR, const int NT, const int U, __m512 *acc,
                            const char *w, int64_t ldw, const char *x, int64_t ldx, int64_t k,
                            __mmask16 m) {
    /* unrolled whole, so the accumulators stay in registers (GCC otherwise keeps them on the
     * stack: attention's 4 x 4 blocks ran 1.5x slower) */
#pragma GCC unroll 16
    for (int u = 0; u < U; u++) {
        __m512 wv[MOECC_TILE_ROWS];
#pragma GCC unroll 16
        for (int r = 0; r < NR; r++) wv[r] = load_w(wt, w + r * ldw, k + LANES * u, m);
#pragma GCC unroll 16
        for (int t = 0; t < NT; t++) {
            const float *xt = (const float *)(x + t * ldx) + k + LANES * u;
            const __m512 xv = _mm512_maskz_loadu_ps(m, xt);
#pragma GCC unroll 16
            for (int r = 0; r < NR; r++)
                acc[ACC(r, t, u)] = _mm512_fmadd_ps(wv[r], xv, acc[ACC(r, t, u)]);
        }
    }
}

/* NR rows x NT tokens of dot products, all accumulators in registers; U accumulators per pair
 * along K (NR, NT, U compile-time constants). NR x NT = 4 x 4 is the compute-bound prefill block;
 * 1 x NT with U > 1 streams a single weight row, which the hardware prefetcher likes best
 * (decode reaches ~1.5x the bandwidth of four interleaved rows). */
INLINE TARGET_512 void block(const int wt, const int NR, const int NT, const int U, const int PF,
                         int64_t K, const char *w, int64_t ldw, const char *x, int64_t ldx,
                         float *out, int64_t ldo) {
    __m512 acc[MAX_ACC];
#pragma GCC unroll 16
    for (int i = 0; i < NR * NT * U; i++) acc[i] = _mm512_setzero_ps();
    /* PF: sweep-prefetch the next NR rows (contiguous after ours) while computing, turning NR
     * interleaved DRAM streams into one sequential stream (~1.5x bandwidth for 4 rows) */
    const char *pf = w + NR * ldw;
    const int64_t pf_step = PF ? NR * ldw * LANES * U / K : 0;
    int64_t k = 0;
    for (; k + LANES * U <= K; k += LANES * U) {
        for (int64_t b = 0; b < pf_step; b += 64) _mm_prefetch(pf + b, _MM_HINT_T0);
        pf += pf_step;
        fma_step(wt, NR, NT, U, acc, w, ldw, x, ldx, k, 0xFFFF);
    }
    for (; k < K; k += LANES) { /* u = 0 only; the last step masked */
        const __mmask16 m = K - k >= LANES ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
        fma_step(wt, NR, NT, 1, acc, w, ldw, x, ldx, k, m);
    }
#pragma GCC unroll 16
    for (int r = 0; r < NR; r++)
#pragma GCC unroll 16
        for (int t = 0; t < NT; t++) {
            __m512 sum = acc[ACC(r, t, 0)];
            for (int u = 1; u < U; u++) sum = _mm512_add_ps(sum, acc[ACC(r, t, u)]);
            out[t * ldo + r] = _mm512_reduce_add_ps(sum);
        }
}

#undef ACC

INLINE TARGET_512 void tile_any(const int wt, int64_t K, const void *w, int64_t ldw, int nr,
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
            block(wt, 1, TILE_TOKENS, 1, 0, K, wr, ldw, xp + t * ldx, ldx, o + t * ldo, ldo);
        switch (nt - t) {
        case 3: block(wt, 1, 3, 2, 0, K, wr, ldw, xp + t * ldx, ldx, o + t * ldo, ldo); break;
        case 2: block(wt, 1, 2, 2, 0, K, wr, ldw, xp + t * ldx, ldx, o + t * ldo, ldo); break;
        case 1: block(wt, 1, 1, UNROLL, 0, K, wr, ldw, xp + t * ldx, ldx, o + t * ldo, ldo); break;
        default: break;
        }
    }
}

static TARGET_512 void tile_f32(int64_t K, const void *w, int64_t ldw,
                            int nr, const void *x, int64_t ldx, int nt, float *out,
                            int64_t ldo) {

    tile_any(MOECC_F32, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

static TARGET_512 void tile_bf16(int64_t K, const void *w, int64_t ldw,
                             int nr, const void *x, int64_t ldx, int nt, float *out,
                             int64_t ldo) {

    tile_any(MOECC_BF16, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

static TARGET_512 void tile_f16(int64_t K, const void *w, int64_t ldw,
                            int nr, const void *x, int64_t ldx, int nt, float *out,
                            int64_t ldo) {

    tile_any(MOECC_F16, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

/* NR rows of y += a @ X, X rows of type wt (f32 / f16), K values each: each vector of X is
 * loaded (and widened) once for the NR rows */
INLINE TARGET_512 void wsum_block(const int wt, const int NR, int64_t K, int n, const float *a,
                              int64_t lda, const char *X, float *y, int64_t ldy) {
    const int64_t ldx = K * (wt == MOECC_F32 ? 4 : 2);
    int64_t k = 0;
    for (; k + 4 * LANES <= K; k += 4 * LANES) {
        __m512 acc[MOECC_WSUM_ROWS][4];
#pragma GCC unroll 16
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) acc[r][c] = _mm512_loadu_ps(y + r * ldy + k + LANES * c);
        for (int j = 0; j < n; j++) {
            const char *xj = X + j * ldx;
            __m512 xv[4];
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) xv[c] = load_w(wt, xj, k + LANES * c, 0xFFFF);
#pragma GCC unroll 16
            for (int r = 0; r < NR; r++) {
                const __m512 ar = _mm512_set1_ps(a[r * lda + j]);
#pragma GCC unroll 4
                for (int c = 0; c < 4; c++) acc[r][c] = _mm512_fmadd_ps(ar, xv[c], acc[r][c]);
            }
        }
#pragma GCC unroll 16
        for (int r = 0; r < NR; r++)
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) _mm512_storeu_ps(y + r * ldy + k + LANES * c, acc[r][c]);
    }
    for (; k < K; k += LANES) {
        const __mmask16 m = K - k >= LANES ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
        __m512 acc[MOECC_WSUM_ROWS];
#pragma GCC unroll 16
        for (int r = 0; r < NR; r++) acc[r] = _mm512_maskz_loadu_ps(m, y + r * ldy + k);
        for (int j = 0; j < n; j++) {
            const __m512 xv = load_w(wt, X + j * ldx, k, m);
#pragma GCC unroll 16
            for (int r = 0; r < NR; r++)
                acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r * lda + j]), xv, acc[r]);
        }
#pragma GCC unroll 16
        for (int r = 0; r < NR; r++) _mm512_mask_storeu_ps(y + r * ldy + k, m, acc[r]);
    }
}

INLINE TARGET_512 void wsum_type(const int wt, int64_t K, int n, int rows, const float *a,
                             int64_t lda, const char *X, float *y, int64_t ldy) {
    switch (rows) {
    case 1: wsum_block(wt, 1, K, n, a, lda, X, y, ldy); break;
    case 2: wsum_block(wt, 2, K, n, a, lda, X, y, ldy); break;
    case 3: wsum_block(wt, 3, K, n, a, lda, X, y, ldy); break;
    default: wsum_block(wt, 4, K, n, a, lda, X, y, ldy); break;
    }
}

static TARGET_512 void wsum_rows(int64_t K, int n, int rows, const float *a, int64_t lda,
                             const void *X, moecc_storage xt, float *y, int64_t ldy) {
    if (xt == MOECC_F16)
        wsum_type(MOECC_F16, K, n, rows, a, lda, (const char *)X, y, ldy);
    else
        wsum_type(MOECC_F32, K, n, rows, a, lda, (const char *)X, y, ldy);
}

/* exp(x) for x <= 0, 16 lanes (as exp_nonpos in dot_generic.c; scalef applies 2^i) */
INLINE TARGET_512 __m512 exp_nonpos(__m512 x) {
    const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(MOECC_EXP_MIN), _CMP_GE_OQ);
    const __m512 fi = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(MOECC_LOG2E)),
                                           _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(fi, _mm512_set1_ps(MOECC_LN2_HI), x);
    r = _mm512_fnmadd_ps(fi, _mm512_set1_ps(MOECC_LN2_LO), r);
    __m512 p = _mm512_set1_ps(MOECC_EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(MOECC_EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(MOECC_EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(MOECC_EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(MOECC_EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(MOECC_EXP_P5));
    p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_mov_ps(live, _mm512_scalef_ps(p, fi));
}

static TARGET_512 float exp_sum(int n, float *s, float m) {
    const __m512 mv = _mm512_set1_ps(m);
    __m512 sum = _mm512_setzero_ps();
    for (int j = 0; j < n; j += LANES) {
        const __mmask16 k = n - j >= LANES ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        const __m512 arg = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), mv);
        const __m512 e = _mm512_maskz_mov_ps(k, exp_nonpos(arg));
        _mm512_mask_storeu_ps(s + j, k, e);
        sum = _mm512_add_ps(sum, e);
    }
    return _mm512_reduce_add_ps(sum);
}

/* as swiglu in dot_generic.c: sigmoid from e = exp(-|z|) */
static TARGET_512 void swiglu(int64_t n, float *g, const float *u) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += LANES) {
        const __mmask16 k = n - i >= LANES ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        const __m512 z = _mm512_maskz_loadu_ps(k, g + i);
        const __m512 e = exp_nonpos(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(z)));
        const __mmask16 pos = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GE_OQ);
        const __m512 sig = _mm512_div_ps(_mm512_mask_blend_ps(pos, e, one), _mm512_add_ps(one, e));
        const __m512 uv = _mm512_maskz_loadu_ps(k, u + i);
        _mm512_mask_storeu_ps(g + i, k, _mm512_mul_ps(_mm512_mul_ps(z, sig), uv));
    }
}

const moecc_isa moecc_isa_avx512 = {
    .name = "avx512",
    .tile = {[MOECC_F32] = tile_f32, [MOECC_BF16] = tile_bf16, [MOECC_F16] = tile_f16,
             [MOECC_Q8] = moecc_tile_q8_avx512, [MOECC_Q4] = moecc_tile_q4_avx512,
             [MOECC_Q4P] = moecc_tile_q4p_avx512, [MOECC_Q4_K] = moecc_tile_q4_k_avx512,
             [MOECC_Q6_K] = moecc_tile_q6_k_avx512,
             [MOECC_Q5_K] = moecc_tile_q5_k_avx512, [MOECC_Q5_0] = moecc_tile_q5_0_avx512,
             [MOECC_Q5_1] = moecc_tile_q5_1_avx512, [MOECC_Q4_1] = moecc_tile_q4_1_avx512},
    .wsum_rows = wsum_rows,
    .exp_sum = exp_sum,
    .swiglu = swiglu,
    .quantize_x = {[MOECC_ACT_Q8_32] = moecc_quantize_x_avx2,
                   [MOECC_ACT_Q8_K] = moecc_quantize_xk_avx2},
};

/* the same, with the integer products of the quantized types on VNNI (dispatch.c checks
 * avx512vnni) */
const moecc_isa moecc_isa_avx512vnni = {
    .name = "avx512vnni",
    .tile = {[MOECC_F32] = tile_f32, [MOECC_BF16] = tile_bf16, [MOECC_F16] = tile_f16,
             [MOECC_Q8] = moecc_tile_q8_avx512vnni, [MOECC_Q4] = moecc_tile_q4_avx512vnni,
             [MOECC_Q4P] = moecc_tile_q4p_avx512vnni, [MOECC_Q4_K] = moecc_tile_q4_k_avx512vnni,
             [MOECC_Q6_K] = moecc_tile_q6_k_avx512vnni,
             [MOECC_Q5_K] = moecc_tile_q5_k_avx512vnni, [MOECC_Q5_0] = moecc_tile_q5_0_avx512vnni,
             [MOECC_Q5_1] = moecc_tile_q5_1_avx512vnni, [MOECC_Q4_1] = moecc_tile_q4_1_avx512vnni},
    .wsum_rows = wsum_rows,
    .exp_sum = exp_sum,
    .swiglu = swiglu,
    .quantize_x = {[MOECC_ACT_Q8_32] = moecc_quantize_x_avx2,
                   [MOECC_ACT_Q8_K] = moecc_quantize_xk_avx2},
};

#endif /* MOECC_X86 */
