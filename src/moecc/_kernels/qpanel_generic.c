/* qpanel_generic.c -- the q4p tile in portable C: the only path on non-x86, the oracle of the
 * SIMD ones (qpanel_avx2.c, qpanel_avx512.c). The panel layout is described in moecc.h. */
#include "moecc.h"

void moecc_tile_q4p_generic(int64_t K, const void *w, int64_t ldw, int nr,
                            const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {

    (void)ldw;   /* block columns are MOECC_PANEL_BLOCK_BYTES apart */
    (void)nr;    /* always a whole panel */
    const int64_t nblocks = K / MOECC_QBLOCK;
    for (int t = 0; t < nt; t++) {
        const char *xt = (const char *)x + t * ldx;
        const int8_t *a = (const int8_t *)xt;
        const float *dx = moecc_xq_scales(xt, K);
        const int32_t *asum = moecc_xq_sums(xt, K);
        float acc[MOECC_PANEL_ROWS] = {0};
        for (int64_t b = 0; b < nblocks; b++) {
            const uint8_t *blk = (const uint8_t *)w + b * MOECC_PANEL_BLOCK_BYTES;
            const uint8_t *scales = blk + MOECC_PANEL_ROWS * MOECC_QBLOCK / 2;
            const int8_t *ab = a + b * MOECC_QBLOCK;
            for (int r = 0; r < MOECC_PANEL_ROWS; r++) {
                int32_t isum = 0; /* sum of (q + 8) * a over the block */
                for (int c = 0; c < 4; c++) {
                    const uint8_t *p = blk + c * 4 * MOECC_PANEL_ROWS + 4 * r;
                    for (int j = 0; j < 4; j++)
                        isum += (p[j] & 15) * ab[4 * c + j] + (p[j] >> 4) * ab[16 + 4 * c + j];
                }
                uint16_t h;
                memcpy(&h, scales + 2 * r, sizeof h);
                acc[r] += moecc_f16_to_f32(h) * dx[b] * (float)(isum - 8 * asum[b]);
            }
        }
        for (int r = 0; r < MOECC_PANEL_ROWS; r++) out[t * ldo + r] = acc[r];
    }
}
