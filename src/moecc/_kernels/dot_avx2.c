/* dot_avx2.c -- AVX2 + FMA inner products (F16C reserved for fp16 scales of quantized types).
 * Compiled only on x86 and only through per-function target attributes. */
#include "moecc.h"

#if MOECC_X86
#include <immintrin.h>

#define TARGET __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

#define LANES 8
#define TILE_TOKENS 2 /* 4 rows x 2 tokens = 8 accumulators of the 16 ymm registers */

/* 8 weights of a row starting at element k, widened to float32 */
INLINE TARGET __m256 load_w(const int wt, const char *row, int64_t k) {
    if (wt == MOECC_W_BF16) {
        const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + k));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    return _mm256_loadu_ps((const float *)row + k);
}

INLINE float scalar_w(const int wt, const char *row, int64_t k) {
    if (wt == MOECC_W_BF16) return moecc_bf16_to_f32(((const uint16_t *)row)[k]);
    return ((const float *)row)[k];
}

INLINE TARGET float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* NR x NT dot products with all accumulators in registers (NR, NT compile-time constants);
 * the K % 8 tail is done in scalar code */
INLINE TARGET void block(const int wt, const int NR, const int NT, int64_t K, const char *w,
                         int64_t ldw, const char *x, int64_t ldx, float *out, int64_t ldo) {
    __m256 acc[MOECC_TILE_ROWS][TILE_TOKENS];
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + LANES <= K; k += LANES) {
        __m256 xv[TILE_TOKENS];
        for (int t = 0; t < NT; t++) xv[t] = _mm256_loadu_ps((const float *)(x + t * ldx) + k);
        for (int r = 0; r < NR; r++) {
            const __m256 wv = load_w(wt, w + r * ldw, k);
            for (int t = 0; t < NT; t++) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    for (int t = 0; t < NT; t++) {
        const float *xt = (const float *)(x + t * ldx);
        for (int r = 0; r < NR; r++) {
            float s = hsum(acc[r][t]);
            for (int64_t j = k; j < K; j++) s += scalar_w(wt, w + r * ldw, j) * xt[j];
            out[t * ldo + r] = s;
        }
    }
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
        __m256 y0 = _mm256_loadu_ps(y + k), y1 = _mm256_loadu_ps(y + k + 8);
        __m256 y2 = _mm256_loadu_ps(y + k + 16), y3 = _mm256_loadu_ps(y + k + 24);
        for (int j = 0; j < n; j++) {
            const __m256 aj = _mm256_set1_ps(a[j]);
            const float *xj = X + (int64_t)j * K + k;
            y0 = _mm256_fmadd_ps(aj, _mm256_loadu_ps(xj), y0);
            y1 = _mm256_fmadd_ps(aj, _mm256_loadu_ps(xj + 8), y1);
            y2 = _mm256_fmadd_ps(aj, _mm256_loadu_ps(xj + 16), y2);
            y3 = _mm256_fmadd_ps(aj, _mm256_loadu_ps(xj + 24), y3);
        }
        _mm256_storeu_ps(y + k, y0);
        _mm256_storeu_ps(y + k + 8, y1);
        _mm256_storeu_ps(y + k + 16, y2);
        _mm256_storeu_ps(y + k + 24, y3);
    }
    for (; k + LANES <= K; k += LANES) {
        __m256 yv = _mm256_loadu_ps(y + k);
        for (int j = 0; j < n; j++)
            yv = _mm256_fmadd_ps(_mm256_set1_ps(a[j]), _mm256_loadu_ps(X + (int64_t)j * K + k), yv);
        _mm256_storeu_ps(y + k, yv);
    }
    for (; k < K; k++) {
        float s = y[k];
        for (int j = 0; j < n; j++) s += a[j] * X[(int64_t)j * K + k];
        y[k] = s;
    }
}

const moecc_isa moecc_isa_avx2 = {
    .name = "avx2",
    .tile = {[MOECC_W_F32] = tile_f32, [MOECC_W_BF16] = tile_bf16},
    .wsum_rows = wsum_rows,
};

#endif /* MOECC_X86 */
