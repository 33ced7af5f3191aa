/* qdot_generic.c -- q8 / q4 weights against quantized activations in portable C: the only path
 * on non-x86, and the oracle for the SIMD versions (qdot_x86.c).
 *
 *     W[r] . X[t] = sum_g dw[g] * sum_{blocks b of g} dx[b] * (int32) sum_{j<32} qw[j] * qx[j]
 *
 * dw the fp16 weight scale of a group of G values, dx the float32 activation scale of a block of
 * 32 (moecc.h: quantized activations). The int32 sums are exact; the float32 arithmetic is done in
 * exactly this order. Each group of a weight row is unpacked to int8 once and then met by all
 * the tile's tokens, plain loops the compiler vectorizes. */
#include "moecc.h"

/* the G weights of group g of a q8 / q4 row as int8 (q4: nibble - 8) */
static void unpack_group(moecc_storage t, const char *row, int64_t g, int G, int8_t *q) {
    if (t == MOECC_Q8) {
        memcpy(q, row + g * G, (size_t)G);
        return;
    }
    const uint8_t *p = (const uint8_t *)row + g * G / 2;
    for (int j = 0; j < G / 2; j++) {
        q[j] = (int8_t)((p[j] & 15) - 8);
        q[j + G / 2] = (int8_t)((p[j] >> 4) - 8);
    }
}

static int32_t dot_block(const int8_t *a, const int8_t *b) {
    int32_t s = 0;
    for (int j = 0; j < MOECC_QBLOCK; j++) s += (int32_t)a[j] * (int32_t)b[j];
    return s;
}

static void tile_q(moecc_storage wt, int64_t K, int G, const void *w, int64_t ldw, int nr,
                   const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    const moecc_storage f = wt;
    int8_t qw[MOECC_QBLOCK];
    for (int r = 0; r < nr; r++) {
        const char *row = (const char *)w + r * ldw;
        for (int t = 0; t < nt; t++) out[t * ldo + r] = 0.0f;
        for (int64_t g = 0; g < K / G; g++) {
            unpack_group(wt, row, g, G, qw);
            const float dw = moecc_f16_to_f32(moecc_q_scale_bits(wt, row, K, g));
            for (int t = 0; t < nt; t++) {
                const void *xt = (const char *)x + t * ldx;
                const float *dx = moecc_xq_scales(xt, K) + g * G / MOECC_QBLOCK;
                float acc = 0.0f;
                for (int b = 0; b < G / MOECC_QBLOCK; b++) {
                    int8_t qx[MOECC_QBLOCK]; /* the block's activations, in order (moecc.h) */
                    int64_t at[2];
                    moecc_xq_block_at(f, K, g * G / MOECC_QBLOCK + b, &at[0], &at[1]);
                    memcpy(qx, (const int8_t *)xt + at[0], 16);
                    memcpy(qx + 16, (const int8_t *)xt + at[1], 16);
                    acc += dx[b] * (float)dot_block(qw + b * MOECC_QBLOCK, qx);
                }
                out[t * ldo + r] += dw * acc;
            }
        }
    }
}

void moecc_tile_q8_generic(int64_t K, const void *w, int64_t ldw, int nr,
                           const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_Q8, K, MOECC_QBLOCK, w, ldw, nr, x, ldx, nt, out, ldo);
}

void moecc_tile_q4_generic(int64_t K, const void *w, int64_t ldw, int nr,
                           const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_Q4, K, MOECC_QBLOCK, w, ldw, nr, x, ldx, nt, out, ldo);
}
