/* dot_generic.c -- portable C inner products: the only path on non-x86, the oracle elsewhere.
 * Sixteen independent partial sums per dot product let the compiler vectorize the loop without
 * reassociating floating point on its own. */
#include <math.h>

#include "moecc.h"

#define LANES 16

static float sum_lanes(const float *acc) {
    float s[LANES / 2];
    for (int j = 0; j < LANES / 2; j++) s[j] = acc[j] + acc[j + LANES / 2];
    for (int w = LANES / 4; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) s[j] += s[j + w];
    return s[0];
}

static float dot_f32(int64_t K, const float *w, const float *x) {
    float acc[LANES] = {0};
    int64_t k = 0;
    for (; k + LANES <= K; k += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += w[k + j] * x[k + j];
    for (int j = 0; k + j < K; j++) acc[j] += w[k + j] * x[k + j];
    return sum_lanes(acc);
}

/* element k of a row of 16-bit floats: bf16 or f16 (wt) */
static inline float half_at(int wt, const uint16_t *w, int64_t k) {
    return wt == MOECC_BF16 ? moecc_bf16_to_f32(w[k]) : moecc_f16_to_f32(w[k]);
}

static float dot_half(int wt, int64_t K, const uint16_t *w, const float *x) {
    float acc[LANES] = {0};
    int64_t k = 0;
    for (; k + LANES <= K; k += LANES)
        for (int j = 0; j < LANES; j++) acc[j] += half_at(wt, w, k + j) * x[k + j];
    for (int j = 0; k + j < K; j++) acc[j] += half_at(wt, w, k + j) * x[k + j];
    return sum_lanes(acc);
}

/* the tile of any float row type wt (f32, bf16, f16) */
static void tile_float(int wt, int64_t K, const void *w, int64_t ldw, int nr, const void *x,
                       int64_t ldx, int nt, float *out, int64_t ldo) {
    for (int t = 0; t < nt; t++) {
        const float *xt = (const float *)((const char *)x + t * ldx);
        for (int r = 0; r < nr; r++) {
            const void *row = (const char *)w + r * ldw;
            out[t * ldo + r] = wt == MOECC_F32 ? dot_f32(K, (const float *)row, xt)
                                                 : dot_half(wt, K, (const uint16_t *)row, xt);
        }
    }
}

static void tile_f32(int64_t K, const void *w, int64_t ldw, int nr,
                     const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {

    tile_float(MOECC_F32, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

static void tile_bf16(int64_t K, const void *w, int64_t ldw, int nr,
                      const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {

    tile_float(MOECC_BF16, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

static void tile_f16(int64_t K, const void *w, int64_t ldw, int nr,
                     const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {

    tile_float(MOECC_F16, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

static void wsum_rows(int64_t K, int n, int rows, const float *a, int64_t lda, const void *X,
                      moecc_storage xt, float *y, int64_t ldy) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < n; j++) {
            const float aj = a[i * lda + j];
            float *yi = y + i * ldy;
            if (xt == MOECC_F16) {
                const uint16_t *xj = (const uint16_t *)X + (int64_t)j * K;
                for (int64_t k = 0; k < K; k++) yi[k] += aj * moecc_f16_to_f32(xj[k]);
            } else {
                const float *xj = (const float *)X + (int64_t)j * K;
                for (int64_t k = 0; k < K; k++) yi[k] += aj * xj[k];
            }
        }
}

/* exp(x) for x <= 0, the reference for the SIMD versions; plain C the compiler can vectorize */
static inline float exp_nonpos(float x) {
    const float xc = x < MOECC_EXP_MIN ? MOECC_EXP_MIN : x;
    const float fi = nearbyintf(xc * MOECC_LOG2E);
    const float r = (xc - fi * MOECC_LN2_HI) - fi * MOECC_LN2_LO;
    float p = MOECC_EXP_P0;
    p = p * r + MOECC_EXP_P1;
    p = p * r + MOECC_EXP_P2;
    p = p * r + MOECC_EXP_P3;
    p = p * r + MOECC_EXP_P4;
    p = p * r + MOECC_EXP_P5;
    p = p * r * r + r + 1.0f;
    const uint32_t bits = (uint32_t)((int32_t)fi + 127) << 23; /* 2^i, i in [-126, 0] */
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < MOECC_EXP_MIN ? 0.0f : p * scale;
}

static float exp_sum(int n, float *s, float m) {
    float sum = 0.0f;
    for (int j = 0; j < n; j++) {
        s[j] = exp_nonpos(s[j] - m);
        sum += s[j];
    }
    return sum;
}

/* sigmoid through exp of a non-positive argument only: e = exp(-|z|) */
static void swiglu(int64_t n, float *g, const float *u) {
    for (int64_t i = 0; i < n; i++) {
        const float z = g[i], e = exp_nonpos(-fabsf(z));
        const float sig = (z >= 0.0f ? 1.0f : e) / (1.0f + e);
        g[i] = z * sig * u[i];
    }
}

const moecc_isa moecc_isa_generic = {
    .name = "generic",
    .tile = {[MOECC_F32] = tile_f32, [MOECC_BF16] = tile_bf16, [MOECC_F16] = tile_f16,
             [MOECC_Q8] = moecc_tile_q8_generic, [MOECC_Q4] = moecc_tile_q4_generic,
             [MOECC_Q4P] = moecc_tile_q4p_generic, [MOECC_Q4_K] = moecc_tile_q4_k_generic,
             [MOECC_Q6_K] = moecc_tile_q6_k_generic,
             [MOECC_Q5_K] = moecc_tile_q5_k_generic, [MOECC_Q5_0] = moecc_tile_q5_0_generic,
             [MOECC_Q5_1] = moecc_tile_q5_1_generic, [MOECC_Q4_1] = moecc_tile_q4_1_generic},
    .wsum_rows = wsum_rows,
    .exp_sum = exp_sum,
    .swiglu = swiglu,
    .quantize_x = {[MOECC_ACT_Q8_32] = moecc_quantize_x, [MOECC_ACT_Q8_K] = moecc_quantize_xk},
};
