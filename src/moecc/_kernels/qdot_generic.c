/* qdot_generic.c -- blocks of 32 (q8, q4, q4_1, q5_0, q5_1) against q8_32 activations in
 * portable C: the only path on non-x86, and the oracle for the SIMD versions (qdot_x86.c).
 *
 *     W[r] . X[t] = sum over blocks b, in order, of (dw[b] * dx[b]) * (float) isum[b]
 *                                                   + (mw[b] * dx[b]) * (float) sum[b]
 *     isum[b]     = sum_{j<32} qw[j] * qx[j]        (int32, exact)
 *
 * dw the fp16 weight scale of block b (moecc.h: moecc_block_q8 / moecc_block_q4 / ...), mw its
 * fp16 min (q4_1 / q5_1; 0 for the others), dx the float32 activation scale of the block and
 * sum[b] the sum of its qx (moecc.h: quantized activations). The sum starts at 0 and is
 * accumulated in float32 in block order (the compiler may fuse the multiply-adds). Each block of
 * a weight row is unpacked to int8 once and then met by all the tile's tokens, plain loops the
 * compiler vectorizes. */
#include "moecc.h"

/* the 32 weights of block b of a row of t as int8 (q4: nibble - 8); returns its scale, *m its
 * min (0 but for q4_1 / q5_1) */
static float unpack_block(moecc_storage t, const char *row, int64_t b, int8_t q[MOECC_QBLOCK],
                          float *m) {
    *m = 0.0f;
    if (t == MOECC_Q8) {
        moecc_block_q8 blk;
        memcpy(&blk, row + b * (int64_t)sizeof blk, sizeof blk);
        memcpy(q, blk.qs, sizeof blk.qs);
        return moecc_f16_to_f32(blk.d);
    }
    if (t != MOECC_Q4) {
        float d;
        moecc_unpack_01(t, row + b * (int64_t)moecc_storage_types[t].block_bytes, q, &d, m);
        return d;
    }
    moecc_block_q4 blk;
    memcpy(&blk, row + b * (int64_t)sizeof blk, sizeof blk);
    for (int j = 0; j < MOECC_QBLOCK / 2; j++) {
        q[j] = (int8_t)((blk.qs[j] & 15) - 8);
        q[j + MOECC_QBLOCK / 2] = (int8_t)((blk.qs[j] >> 4) - 8);
    }
    return moecc_f16_to_f32(blk.d);
}

static int32_t dot_block(const int8_t *a, const int8_t *b) {
    int32_t s = 0;
    for (int j = 0; j < MOECC_QBLOCK; j++) s += (int32_t)a[j] * (int32_t)b[j];
    return s;
}

static void tile_q(moecc_storage wt, int64_t K, const void *w, int64_t ldw, int nr,
                   const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    int8_t qw[MOECC_QBLOCK];
    for (int r = 0; r < nr; r++) {
        const char *row = (const char *)w + r * ldw;
        for (int t = 0; t < nt; t++) out[t * ldo + r] = 0.0f;
        for (int64_t b = 0; b < K / MOECC_QBLOCK; b++) {
            float mw;
            const float dw = unpack_block(wt, row, b, qw, &mw);
            for (int t = 0; t < nt; t++) {
                const void *xt = (const char *)x + t * ldx;
                const float dx = moecc_xq_scales(xt, K)[b];
                const int32_t isum = dot_block(qw, (const int8_t *)xt + b * MOECC_QBLOCK);
                out[t * ldo + r] += dw * dx * (float)isum;
                if (wt == MOECC_Q4_1 || wt == MOECC_Q5_1)
                    out[t * ldo + r] += mw * dx * (float)moecc_xq_sums(xt, K)[b];
            }
        }
    }
}
void moecc_tile_q8_generic(int64_t K, const void *w, int64_t ldw, int nr,
                           const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_Q8, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

void moecc_tile_q4_generic(int64_t K, const void *w, int64_t ldw, int nr,
                           const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_Q4, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

void moecc_tile_q4_1_generic(int64_t K, const void *w, int64_t ldw, int nr,
                             const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_Q4_1, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

void moecc_tile_q5_0_generic(int64_t K, const void *w, int64_t ldw, int nr,
                             const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_Q5_0, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

void moecc_tile_q5_1_generic(int64_t K, const void *w, int64_t ldw, int nr,
                             const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_Q5_1, K, w, ldw, nr, x, ldx, nt, out, ldo);
}
