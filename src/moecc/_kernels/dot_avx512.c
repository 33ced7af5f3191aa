/* dot_avx512.c -- AVX-512 inner products (F/BW/VL/DQ). Compiled only on x86 and only through
 * per-function target attributes: the rest of the library stays baseline x86-64. */
#include "moecc.h"

#if MOECC_X86
#include <immintrin.h>

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

#define LANES 16
#define TILE_TOKENS 4 /* tokens per register block: 4 rows x 4 tokens = 16 accumulators */

/* 16 weights of a row starting at element k, widened to float32; lanes outside m read as 0 */
INLINE TARGET __m512 load_w(const int wt, const char *row, int64_t k, __mmask16 m) {
    if (wt == MOECC_W_BF16) {
        const __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)row + k);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    return _mm512_maskz_loadu_ps(m, (const float *)row + k);
}

/* acc[r][t] += W[r][k:k+16] * X[t][k:k+16] */
INLINE TARGET void fma_step(const int wt, const int NR, const int NT,
                            __m512 acc[MOECC_TILE_ROWS][TILE_TOKENS], const char *w, int64_t ldw,
                            const char *x, int64_t ldx, int64_t k, __mmask16 m) {
    __m512 wv[MOECC_TILE_ROWS];
    for (int r = 0; r < NR; r++) wv[r] = load_w(wt, w + r * ldw, k, m);
    for (int t = 0; t < NT; t++) {
        const __m512 xv = _mm512_maskz_loadu_ps(m, (const float *)(x + t * ldx) + k);
        for (int r = 0; r < NR; r++) acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
    }
}

/* NR x NT dot products with all accumulators in registers (NR, NT compile-time constants) */
INLINE TARGET void block(const int wt, const int NR, const int NT, int64_t K, const char *w,
                         int64_t ldw, const char *x, int64_t ldx, float *out, int64_t ldo) {
    __m512 acc[MOECC_TILE_ROWS][TILE_TOKENS];
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + LANES <= K; k += LANES) fma_step(wt, NR, NT, acc, w, ldw, x, ldx, k, 0xFFFF);
    if (k < K) fma_step(wt, NR, NT, acc, w, ldw, x, ldx, k, (__mmask16)((1u << (K - k)) - 1));
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < NR; r++) out[t * ldo + r] = _mm512_reduce_add_ps(acc[r][t]);
}

INLINE TARGET void tile_any(const int wt, int64_t K, const void *w, int64_t ldw, int nr,
                            const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    const char *wp = (const char *)w, *xp = (const char *)x;
    if (nr == MOECC_TILE_ROWS) {
        int t = 0;
        for (; t + TILE_TOKENS <= nt; t += TILE_TOKENS)
            block(wt, MOECC_TILE_ROWS, TILE_TOKENS, K, wp, ldw, xp + t * ldx, ldx, out + t * ldo, ldo);
        for (; t < nt; t++)
            block(wt, MOECC_TILE_ROWS, 1, K, wp, ldw, xp + t * ldx, ldx, out + t * ldo, ldo);
        return;
    }
    for (int r = 0; r < nr; r++) {
        int t = 0;
        for (; t + TILE_TOKENS <= nt; t += TILE_TOKENS)
            block(wt, 1, TILE_TOKENS, K, wp + r * ldw, ldw, xp + t * ldx, ldx, out + t * ldo + r, ldo);
        for (; t < nt; t++)
            block(wt, 1, 1, K, wp + r * ldw, ldw, xp + t * ldx, ldx, out + t * ldo + r, ldo);
    }
}

static TARGET void tile_f32(int64_t K, const void *w, int64_t ldw, int nr, const void *x,
                            int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_any(MOECC_W_F32, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

static TARGET void tile_bf16(int64_t K, const void *w, int64_t ldw, int nr, const void *x,
                             int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_any(MOECC_W_BF16, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

static TARGET void wsum_rows(int64_t K, int n, const float *a, const float *X, float *y) {
    int64_t k = 0;
    for (; k + 4 * LANES <= K; k += 4 * LANES) {
        __m512 y0 = _mm512_loadu_ps(y + k), y1 = _mm512_loadu_ps(y + k + 16);
        __m512 y2 = _mm512_loadu_ps(y + k + 32), y3 = _mm512_loadu_ps(y + k + 48);
        for (int j = 0; j < n; j++) {
            const __m512 aj = _mm512_set1_ps(a[j]);
            const float *xj = X + (int64_t)j * K + k;
            y0 = _mm512_fmadd_ps(aj, _mm512_loadu_ps(xj), y0);
            y1 = _mm512_fmadd_ps(aj, _mm512_loadu_ps(xj + 16), y1);
            y2 = _mm512_fmadd_ps(aj, _mm512_loadu_ps(xj + 32), y2);
            y3 = _mm512_fmadd_ps(aj, _mm512_loadu_ps(xj + 48), y3);
        }
        _mm512_storeu_ps(y + k, y0);
        _mm512_storeu_ps(y + k + 16, y1);
        _mm512_storeu_ps(y + k + 32, y2);
        _mm512_storeu_ps(y + k + 48, y3);
    }
    for (; k < K; k += LANES) {
        const __mmask16 m = K - k >= LANES ? (__mmask16)0xFFFF : (__mmask16)((1u << (K - k)) - 1);
        __m512 yv = _mm512_maskz_loadu_ps(m, y + k);
        for (int j = 0; j < n; j++)
            yv = _mm512_fmadd_ps(_mm512_set1_ps(a[j]), _mm512_maskz_loadu_ps(m, X + (int64_t)j * K + k), yv);
        _mm512_mask_storeu_ps(y + k, m, yv);
    }
}

const moecc_isa moecc_isa_avx512 = {
    .name = "avx512",
    .tile = {[MOECC_W_F32] = tile_f32, [MOECC_W_BF16] = tile_bf16},
    .wsum_rows = wsum_rows,
};

#endif /* MOECC_X86 */
