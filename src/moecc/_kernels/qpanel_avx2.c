/* qpanel_avx2.c -- the q4p tile (moecc.h: panels of 16 rows) with AVX2 integer SIMD, for the
 * avx2 table; qpanel_avx512.c does the same on 512-bit vectors. The oracle is qpanel_generic.c.
 *
 * A 256-bit vector holds 8 int32 lanes, so a panel is two halves of 8 rows: rows 0-7 are the
 * first 32 bytes of each 64-byte chunk, rows 8-15 the last 32. Each 32-byte chunk-half is
 * unpacked into low and high nibbles (u = q + 8) and met by maddubs against the 4 matching
 * activation bytes, broadcast: 2 products per int16 lane. A half's 8 maddubs results of a block
 * are added in int16 (|sum| <= 8 * 2 * 15 * 127 = 30480: no overflow, activations are never
 * -128), so one madd with ones per (half, token, block) widens them to int32; then 8 sum(a)
 * comes off, and one conversion and one multiply-add by the 8 rows' scales times the token's
 * block scale. Weights are unpacked once per block and met by up to MAX_NT tokens (prefill). */
#include "moecc.h"

#if MOECC_X86
#include <immintrin.h>

/* Tokens per register block: 2 tokens' 4 int16 sums and 4 float accumulators, the 4 unpacked
 * chunk-halves and 2 broadcasts fill the 16 ymm registers. In L1 that is no faster per token
 * than one at a time (the per-token maddubs and adds cost as much as the shared unpacking);
 * it halves the weight loads for prefill. */
#define MAX_NT 2
/* the sweep prefetch runs this far ahead of the block in use: decode from DRAM (one core, K =
 * 2048) streams 37 GB/s without it, 43 at 4 KB, 52 at 8 KB, 57 at 16 KB, 52 at 32 KB */
#define PF_BYTES 16384

INLINE TARGET_AVX2 __m256i broadcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* out[t*ldo + r] for the 16 rows r of the panel at w and NT tokens. Each activation broadcast
 * meets both halves of its chunk at once, so it is made once per token and chunk. */
INLINE TARGET_AVX2 void panel(const int NT, int64_t K, const char *w, const char *x, int64_t ldx,
                              float *out, int64_t ldo) {
    const int64_t nblocks = K / MOECC_QBLOCK;
    const __m256i low4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256 acc[2][MAX_NT];
    for (int h = 0; h < 2; h++)
        for (int t = 0; t < NT; t++) acc[h][t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nblocks; b++) {
        const char *blk = w + b * MOECC_PANEL_BLOCK_BYTES;
        for (int line = 0; line < MOECC_PANEL_BLOCK_BYTES; line += 64)
            _mm_prefetch(blk + PF_BYTES + line, _MM_HINT_T0);
        __m256i s16[2][MAX_NT];
        for (int h = 0; h < 2; h++)
            for (int t = 0; t < NT; t++) s16[h][t] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i lo[2], hi[2];
            for (int h = 0; h < 2; h++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(blk + 64 * c + 32 * h));
                lo[h] = _mm256_and_si256(v, low4);
                hi[h] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
            }
            for (int t = 0; t < NT; t++) {
                const int8_t *a = (const int8_t *)(x + t * ldx) + b * MOECC_QBLOCK + 4 * c;
                const __m256i al = broadcast4(a), ah = broadcast4(a + 16);
                for (int h = 0; h < 2; h++)
                    s16[h][t] = _mm256_add_epi16(
                        s16[h][t], _mm256_add_epi16(_mm256_maddubs_epi16(lo[h], al),
                                                    _mm256_maddubs_epi16(hi[h], ah)));
            }
        }
        for (int h = 0; h < 2; h++) {
            const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(
                (const __m128i *)(blk + MOECC_PANEL_ROWS * MOECC_QBLOCK / 2 + 16 * h)));
            for (int t = 0; t < NT; t++) {
                const char *xt = x + t * ldx;
                /* the nibbles are q + 8: take 8 * sum(a) off */
                const __m256i bias = _mm256_set1_epi32(8 * moecc_xq_sums(xt, K)[b]);
                const __m256i isum = _mm256_sub_epi32(_mm256_madd_epi16(s16[h][t], ones), bias);
                const __m256 s = _mm256_mul_ps(dw, _mm256_set1_ps(moecc_xq_scales(xt, K)[b]));
                acc[h][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), s, acc[h][t]);
            }
        }
    }
    for (int t = 0; t < NT; t++)
        for (int h = 0; h < 2; h++) _mm256_storeu_ps(out + t * ldo + 8 * h, acc[h][t]);
}

TARGET_AVX2 void moecc_tile_q4p_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                                     const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    (void)ldw, (void)nr; /* 32; blocks are MOECC_PANEL_BLOCK_BYTES apart; 16 */
    const char *wp = (const char *)w, *xp = (const char *)x;
    int t = 0;
    for (; t + MAX_NT <= nt; t += MAX_NT)
        panel(MAX_NT, K, wp, xp + t * ldx, ldx, out + t * ldo, ldo);
    if (t < nt) panel(1, K, wp, xp + t * ldx, ldx, out + t * ldo, ldo);
}

#endif /* MOECC_X86 */
