/* kdot_generic.c -- K-type weights (q4_k, q5_k, q6_k) against q8_k activations in portable C:
 * the only path on non-x86, and the oracle for the SIMD versions (kdot_x86.c).
 *
 * With a super-block unpacked (moecc_kblock: w[v] = d * scale[v/16] * q[v] - dmin * min[v/16])
 * and the activations' block of 256 (x[v] ~ dx * qx[v], bsum[h] = sum of qx over the 16 values
 * of h), one super-block of a row adds
 *
 *     dx * d * isum - dx * dmin * msum,   isum = sum_h scale[h] * sum_{v in h} q[v] * qx[v]
 *                                         msum = sum_h min[h] * bsum[h]         (int32, exact)
 *
 * to the row's sum, super-blocks in order from 0 (the compiler may fuse the multiply-adds). Each
 * super-block of a weight row is unpacked once and met by all the tile's tokens. */
#include "moecc.h"

static void tile_k(moecc_storage wt, int64_t K, const void *w, int64_t ldw, int nr, const void *x,
                   int64_t ldx, int nt, float *out, int64_t ldo) {
    const int64_t bb = moecc_storage_types[wt].block_bytes;
    moecc_kblock k;
    for (int r = 0; r < nr; r++) {
        const char *row = (const char *)w + r * ldw;
        for (int t = 0; t < nt; t++) out[t * ldo + r] = 0.0f;
        for (int64_t b = 0; b < K / MOECC_KBLOCK; b++) {
            moecc_unpack_k(wt, row + b * bb, &k);
            for (int t = 0; t < nt; t++) {
                const void *xt = (const char *)x + t * ldx;
                const int8_t *qx = (const int8_t *)xt + b * MOECC_KBLOCK;
                const int16_t *bsum = moecc_xk_bsums(xt, K) + b * (MOECC_KBLOCK / 16);
                int32_t isum = 0, msum = 0;
                for (int h = 0; h < MOECC_KBLOCK / 16; h++) {
                    int32_t dot = 0;
                    for (int v = 16 * h; v < 16 * h + 16; v++) dot += (int32_t)k.q[v] * qx[v];
                    isum += k.scale[h] * dot;
                    msum += k.min[h] * bsum[h];
                }
                const float dx = moecc_xk_scales(xt, K)[b];
                out[t * ldo + r] += dx * k.d * (float)isum - dx * k.dmin * (float)msum;
            }
        }
    }
}

void moecc_tile_q4_k_generic(int64_t K, const void *w, int64_t ldw, int nr,
                             const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_k(MOECC_Q4_K, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

void moecc_tile_q5_k_generic(int64_t K, const void *w, int64_t ldw, int nr,
                             const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_k(MOECC_Q5_K, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

void moecc_tile_q6_k_generic(int64_t K, const void *w, int64_t ldw, int nr,
                             const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_k(MOECC_Q6_K, K, w, ldw, nr, x, ldx, nt, out, ldo);
}
