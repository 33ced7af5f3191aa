/* qpanel_avx512.c -- the q4p tile (moecc.h: panels of 16 rows) on 512-bit vectors, for the
 * tables avx512 (maddubs + madd) and avx512vnni (dpbusd). The oracle is qpanel_generic.c.
 *
 * A 64-byte chunk of a block column holds 4 bytes of each of the 16 rows, so one int8 dot
 * product instruction against the 4 matching activation bytes, broadcast, adds 8 products per
 * row in the row's own lane (4 low nibbles, then 4 high nibbles against the block's second
 * half). A block's 8 of them sum in int32; then one conversion and one multiply-add by the 16
 * rows' scales times the token's block scale. Compared with the row-major q4 tile that is a
 * quarter of the float work per weight byte and no horizontal sums, so decode streams short
 * expert matrices ~20% faster (the memory system is kept busier), and a panel is one sequential
 * stream. Weights are unpacked once per block and met by up to four tokens (prefill). */
#include "moecc.h"

#if MOECC_X86
#include <immintrin.h>

#include "gpanel_x86.h" /* the int8 dot products, broadcast4 */

#define MAX_NT 4        /* tokens per register block */
#define PANEL_PF_BYTES 2048 /* the sweep prefetch runs this far ahead of the block in use */

/* out[t*ldo + r] for the 16 rows r of the panel at w and NT tokens */
INLINE TARGET_512 void panel(pdot512_fn pdot, const int NT, int64_t K, const char *w, const char *x,
                             int64_t ldx, float *out, int64_t ldo) {
    const int64_t nblocks = K / MOECC_QBLOCK;
    const __m512i low4 = _mm512_set1_epi8(15);
    __m512 acc[MAX_NT];
    for (int t = 0; t < NT; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nblocks; b++) {
        const char *blk = w + b * MOECC_PANEL_BLOCK_BYTES;
        for (int line = 0; line < MOECC_PANEL_BLOCK_BYTES; line += 64)
            _mm_prefetch(blk + PANEL_PF_BYTES + line, _MM_HINT_T0);
        __m512i lo[4], hi[4];
        for (int c = 0; c < 4; c++) {
            const __m512i v = _mm512_loadu_si512(blk + 64 * c);
            lo[c] = _mm512_and_si512(v, low4);
            hi[c] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
        }
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(blk + 256)));
        for (int t = 0; t < NT; t++) {
            const char *xt = x + t * ldx;
            const char *a = xt + b * MOECC_QBLOCK;
            /* the nibbles are q + 8: the sums start from -8 * sum(a) */
            __m512i s_lo = _mm512_set1_epi32(-8 * moecc_xq_sums(xt, K)[b]);
            __m512i s_hi = _mm512_setzero_si512();
            for (int c = 0; c < 4; c++) {
                s_lo = pdot(s_lo, lo[c], broadcast4(a + 4 * c));
                s_hi = pdot(s_hi, hi[c], broadcast4(a + 16 + 4 * c));
            }
            const __m512i isum = _mm512_add_epi32(s_lo, s_hi);
            const __m512 s = _mm512_mul_ps(dw, _mm512_set1_ps(moecc_xq_scales(xt, K)[b]));
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), s, acc[t]);
        }
    }
    for (int t = 0; t < NT; t++) _mm512_storeu_ps(out + t * ldo, acc[t]);
}

INLINE TARGET_512 void tile(pdot512_fn pdot, int64_t K, const void *w, const void *x, int64_t ldx,
                            int nt, float *out, int64_t ldo) {
    const char *wp = (const char *)w, *xp = (const char *)x;
    int t = 0;
    for (; t + MAX_NT <= nt; t += MAX_NT)
        panel(pdot, MAX_NT, K, wp, xp + t * ldx, ldx, out + t * ldo, ldo);
    switch (nt - t) {
    case 3: panel(pdot, 3, K, wp, xp + t * ldx, ldx, out + t * ldo, ldo); break;
    case 2: panel(pdot, 2, K, wp, xp + t * ldx, ldx, out + t * ldo, ldo); break;
    case 1: panel(pdot, 1, K, wp, xp + t * ldx, ldx, out + t * ldo, ldo); break;
    default: break;
    }
}

TARGET_512 void moecc_tile_q4p_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                                      const void *x, int64_t ldx, int nt, float *out,
                                      int64_t ldo) {
    (void)ldw, (void)nr; /* 32; blocks are MOECC_PANEL_BLOCK_BYTES apart; 16 */
    tile(pdot512_maddubs, K, w, x, ldx, nt, out, ldo);
}

TARGET_VNNI void moecc_tile_q4p_avx512vnni(int64_t K, const void *w, int64_t ldw,
                                           int nr, const void *x, int64_t ldx, int nt,
                                           float *out, int64_t ldo) {
    (void)ldw, (void)nr;
    tile(pdot512_dpbusd, K, w, x, ldx, nt, out, ldo);
}

#endif /* MOECC_X86 */
