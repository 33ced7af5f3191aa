/* kdot_x86.c -- K-type weights (q4_k, q5_k, q6_k) against q8_k activations with x86 integer
 * SIMD, for the tables avx2, avx512 and avx512vnni. The oracle is kdot_generic.c.
 *
 * As in qdot_x86.c, one copy of the loops on 256-bit vectors is compiled for AVX2 and inlined
 * into each table's entry points, which pass the int16 dot product and the register block (the
 * AVX-512 ones get 32 registers, so four tokens a block). A super-block of 256 values is 8
 * vectors of 32 unsigned weights u (q4_k / q5_k the 4 / 5 bits; q6_k q + 32), each met by the
 * 32 activations it multiplies as they lie:
 *
 *     p     = maddubs(u, a)                  16 int16 pair sums (|p| <= 2 * 63 * 127)
 *     isum += p . s  (madd + add, or dpwssd)  s: the int16 scale of each pair's sub-block
 *
 * The sub-block scales are why this is dpwssd and not dpbusd: VNNI's int16 dot folds the scale
 * multiply and the accumulation into one instruction, where dpbusd's int32 sums would need a
 * 32-bit multiply per sub-block. Once per super-block and (row, token), the 8 int32 lanes of
 * isum go to float under one scale d * dx into the row's float accumulator, and the mins (q4_k,
 * q5_k: dmin * sum_j m_j * bsum_j) or the bias of u (q6_k: 32 * sum_h s_h * bsum_h, integer) come
 * off through one madd of the activations' 16 block sums: no horizontal sum but the row's last.
 * Decode (one token) streams four rows side by side and sweep-prefetches the rows ~8 KB on, as
 * qdot_x86.c does, so DRAM sees one sequential stream. */
#include <stddef.h>

#include "moecc.h"

#if MOECC_X86
#include <immintrin.h>

#define VECS (MOECC_KBLOCK / 32) /* vectors of 32 weights in a super-block */
#define MAX_NT 4                 /* tokens of a register block (2 with AVX2's 16 registers) */
#define PF_BYTES 8192            /* a tile of rows prefetches the first whole tile this far on */

_Static_assert(offsetof(moecc_block_q4_k, qs) == 16 && offsetof(moecc_block_q5_k, qh) == 16 &&
                   offsetof(moecc_block_q5_k, qs) == 48 && offsetof(moecc_block_q6_k, qh) == 128 &&
                   offsetof(moecc_block_q6_k, scales) == 192 &&
                   offsetof(moecc_block_q6_k, d) == 208,
               "the offsets the loads below use");

/* ---- the int16 dot products (the tables' entry points pass theirs) ----------------------- */

/* acc + the int32 sums of adjacent products p[2j] s[2j] + p[2j+1] s[2j+1] */
typedef __m256i (*wdot_fn)(__m256i acc, __m256i p, __m256i s);

INLINE TARGET_AVX2 __m256i wdot_madd(__m256i acc, __m256i p, __m256i s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, s));
}

INLINE TARGET_VNNI __m256i wdot_dpwssd(__m256i acc, __m256i p, __m256i s) {
    return _mm256_dpwssd_epi32(acc, p, s);
}

INLINE TARGET_AVX2 float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- one super-block of a row ------------------------------------------------------------ */

INLINE int block_bytes(const int wt) {
    return wt == MOECC_Q4_K   ? (int)sizeof(moecc_block_q4_k)
           : wt == MOECC_Q5_K ? (int)sizeof(moecc_block_q5_k)
                              : (int)sizeof(moecc_block_q6_k);
}

/* q4_k and q5_k: 8 sub-blocks of 32 with 6-bit scales and mins (d, dmin and scales alike) */
INLINE int has_mins(const int wt) { return wt == MOECC_Q4_K || wt == MOECC_Q5_K; }

/* what a super-block's products need besides its values, read once per row and super-block */
typedef struct {
    float d, dmin; /* dmin: q4_k only */
    __m128i sm;    /* q4_k / q5_k: 8 scales then 8 mins (uint8); q6_k: its 16 scales (int8) */
} khead;

INLINE TARGET_AVX2 float fp16_at(const char *p) {
    uint16_t h;
    memcpy(&h, p, sizeof h);
    return _cvtsh_ss(h);
}

INLINE TARGET_AVX2 khead head(const int wt, const char *blk) {
    khead h;
    if (has_mins(wt)) { /* moecc_q4_k_scales, four bytes at a time */
        uint32_t s[3];
        memcpy(s, blk + offsetof(moecc_block_q4_k, scales), sizeof s);
        const uint32_t lo6 = 0x3F3F3F3Fu, lo4 = 0x0F0F0F0Fu, top2 = 0x30303030u;
        const uint32_t sc_lo = s[0] & lo6, m_lo = s[1] & lo6;
        const uint32_t sc_hi = (s[2] & lo4) | ((s[0] >> 2) & top2); /* bits 6-7 -> 4-5 */
        const uint32_t m_hi = ((s[2] >> 4) & lo4) | ((s[1] >> 2) & top2);
        h.sm = _mm_setr_epi32((int)sc_lo, (int)sc_hi, (int)m_lo, (int)m_hi);
        h.d = fp16_at(blk + offsetof(moecc_block_q4_k, d));
        h.dmin = fp16_at(blk + offsetof(moecc_block_q4_k, dmin));
    } else {
        h.sm = _mm_loadu_si128((const __m128i *)(blk + offsetof(moecc_block_q6_k, scales)));
        h.d = fp16_at(blk + offsetof(moecc_block_q6_k, d));
        h.dmin = 0.0f;
    }
    return h;
}

/* weights 32i .. 32i+31 of the super-block at blk, unsigned (q4_k, q5_k: the 4 or 5 bits; q6_k:
 * q + 32) */
INLINE TARGET_AVX2 __m256i weights(const int wt, const char *blk, const int i) {
    const __m256i lo4 = _mm256_set1_epi8(15);
    if (has_mins(wt)) { /* sub-block i: the low (i even) or high nibbles of qs[32 (i/2) ..] */
        const int qs = wt == MOECC_Q4_K ? 16 : 48;
        const __m256i q = _mm256_loadu_si256((const __m256i *)(blk + qs + 32 * (i / 2)));
        const __m256i low = _mm256_and_si256(i % 2 ? _mm256_srli_epi16(q, 4) : q, lo4);
        if (wt == MOECC_Q4_K) return low;
        /* q5_k: + 16 where bit i of qh[l] is set (the shift keeps each byte's own bit i) */
        const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 16));
        const __m256i bit = _mm256_and_si256(_mm256_srli_epi16(qh, i), _mm256_set1_epi8(1));
        return _mm256_or_si256(low, _mm256_slli_epi16(bit, 4));
    }
    /* q6_k: half i/4, quarter j = i%4: low 4 bits from ql (nibble j/2 of ql[32 (j%2) ..]),
     * upper 2 from bits 2j, 2j+1 of qh, moved to bits 4, 5 */
    const int half = i / 4, j = i % 4;
    const __m256i ql = _mm256_loadu_si256((const __m256i *)(blk + 64 * half + 32 * (j % 2)));
    const __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * half));
    const __m256i low = _mm256_and_si256(j < 2 ? ql : _mm256_srli_epi16(ql, 4), lo4);
    const __m256i up = j == 0 ? _mm256_slli_epi16(qh, 4)
                     : j == 1 ? _mm256_slli_epi16(qh, 2)
                     : j == 2 ? qh
                              : _mm256_srli_epi16(qh, 2);
    return _mm256_or_si256(low, _mm256_and_si256(up, _mm256_set1_epi8(0x30)));
}

/* the int16 scale of each pair of weights(i)'s products */
INLINE TARGET_AVX2 __m256i scales(const int wt, __m128i sm, const int i) {
    if (has_mins(wt)) /* one sub-block of 32: scale i everywhere */
        return _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sm, _mm_set1_epi8((char)i)));
    /* two sub-blocks of 16: scales 2i (the first 8 pairs) and 2i+1 */
    const __m128i at = _mm_setr_epi8(2 * i, 2 * i, 2 * i, 2 * i, 2 * i, 2 * i, 2 * i, 2 * i,
                                     2 * i + 1, 2 * i + 1, 2 * i + 1, 2 * i + 1, 2 * i + 1,
                                     2 * i + 1, 2 * i + 1, 2 * i + 1);
    return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sm, at));
}

/* ---- the register block ------------------------------------------------------------------- */

#define AT(r, t) ((r) * NT + (t))

/* NR rows x NT tokens, every size a compile-time constant once inlined:
 * out[t*ldo + r] = W[r] . X[t] */
INLINE TARGET_AVX2 void block(const int wt, wdot_fn wdot, const int NR, const int NT, int64_t K,
                              const char *w, int64_t ldw, const char *x, int64_t ldx, float *out,
                              int64_t ldo) {
    const int64_t nsb = K / MOECC_KBLOCK;
    const int bb = block_bytes(wt);
    __m256 acc[MOECC_TILE_ROWS * MAX_NT];
    for (int i = 0; i < NR * NT; i++) acc[i] = _mm256_setzero_ps();
    /* sweep-prefetch the NR rows a few tiles on, a share per super-block */
    const char *pf = w + (PF_BYTES + NR * ldw - 1) / (NR * ldw) * NR * ldw;
    const int64_t pf_step = NR > 1 ? (NR * ldw / nsb + 63) & ~(int64_t)63 : 0;
    const __m128i min_pairs = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14,
                                            15, 15);

    for (int64_t b = 0; b < nsb; b++) {
        for (int64_t p = 0; p < pf_step; p += 64) _mm_prefetch(pf + p, _MM_HINT_T0);
        pf += pf_step;
        khead hd[MOECC_TILE_ROWS];
        for (int r = 0; r < NR; r++) hd[r] = head(wt, w + r * ldw + bb * b);
        __m256i isum[MOECC_TILE_ROWS * MAX_NT];
        for (int i = 0; i < NR * NT; i++) isum[i] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int i = 0; i < VECS; i++)
            for (int r = 0; r < NR; r++) {
                const __m256i u = weights(wt, w + r * ldw + bb * b, i);
                const __m256i s = scales(wt, hd[r].sm, i);
                for (int t = 0; t < NT; t++) {
                    const __m256i a = _mm256_loadu_si256(
                        (const __m256i *)(x + t * ldx + MOECC_KBLOCK * b + 32 * i));
                    isum[AT(r, t)] = wdot(isum[AT(r, t)], _mm256_maddubs_epi16(u, a), s);
                }
            }
        for (int t = 0; t < NT; t++) {
            const char *xt = x + t * ldx;
            const float dx = moecc_xk_scales(xt, K)[b];
            const __m256i bsum = _mm256_loadu_si256(
                (const __m256i *)(moecc_xk_bsums(xt, K) + MOECC_KBLOCK / 16 * b));
            for (int r = 0; r < NR; r++) {
                __m256i is = isum[AT(r, t)];
                if (has_mins(wt)) { /* - dmin * sum_j m_j (bsum_2j + bsum_2j+1) */
                    const __m256i m = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(hd[r].sm, min_pairs));
                    const __m256 msum = _mm256_cvtepi32_ps(_mm256_madd_epi16(bsum, m));
                    acc[AT(r, t)] =
                        _mm256_fmadd_ps(msum, _mm256_set1_ps(-hd[r].dmin * dx), acc[AT(r, t)]);
                } else { /* u = q + 32: - 32 sum_h s_h bsum_h */
                    const __m256i bias = _mm256_madd_epi16(bsum, _mm256_cvtepi8_epi16(hd[r].sm));
                    is = _mm256_sub_epi32(is, _mm256_slli_epi32(bias, 5));
                }
                acc[AT(r, t)] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is),
                                                _mm256_set1_ps(hd[r].d * dx), acc[AT(r, t)]);
            }
        }
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) out[t * ldo + r] = hsum(acc[AT(r, t)]);
}

#undef AT

/* Four rows: 4 x NT register blocks over the tokens, then 4 x 1 (decode: four rows side by
 * side); fewer rows: row by row, the same way. NT: the tokens the registers hold. */
INLINE TARGET_AVX2 void tile_k(const int wt, wdot_fn wdot, const int NT, int64_t K, const void *w,
                               int64_t ldw, int nr, const void *x, int64_t ldx, int nt, float *out,
                               int64_t ldo) {
    const char *wp = (const char *)w, *xp = (const char *)x;
    int t;
    if (nr == MOECC_TILE_ROWS) {
        for (t = 0; t + NT <= nt; t += NT)
            block(wt, wdot, MOECC_TILE_ROWS, NT, K, wp, ldw, xp + t * ldx, ldx, out + t * ldo, ldo);
        for (; t < nt; t++)
            block(wt, wdot, MOECC_TILE_ROWS, 1, K, wp, ldw, xp + t * ldx, ldx, out + t * ldo, ldo);
        return;
    }
    for (int r = 0; r < nr; r++) {
        for (t = 0; t + NT <= nt; t += NT)
            block(wt, wdot, 1, NT, K, wp + r * ldw, ldw, xp + t * ldx, ldx, out + t * ldo + r, ldo);
        for (; t < nt; t++)
            block(wt, wdot, 1, 1, K, wp + r * ldw, ldw, xp + t * ldx, ldx, out + t * ldo + r, ldo);
    }
}

/* ---- the entry points of the three tables ------------------------------------------------ */

TARGET_AVX2 void moecc_tile_q4_k_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                                      const void *x, int64_t ldx, int nt, float *out,
                                      int64_t ldo) {
    tile_k(MOECC_Q4_K, wdot_madd, 2, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_AVX2 void moecc_tile_q5_k_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                                      const void *x, int64_t ldx, int nt, float *out,
                                      int64_t ldo) {
    tile_k(MOECC_Q5_K, wdot_madd, 2, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_AVX2 void moecc_tile_q6_k_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                                      const void *x, int64_t ldx, int nt, float *out,
                                      int64_t ldo) {
    tile_k(MOECC_Q6_K, wdot_madd, 2, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_512 void moecc_tile_q4_k_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                                       const void *x, int64_t ldx, int nt, float *out,
                                       int64_t ldo) {
    tile_k(MOECC_Q4_K, wdot_madd, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_512 void moecc_tile_q5_k_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                                       const void *x, int64_t ldx, int nt, float *out,
                                       int64_t ldo) {
    tile_k(MOECC_Q5_K, wdot_madd, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_512 void moecc_tile_q6_k_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                                       const void *x, int64_t ldx, int nt, float *out,
                                       int64_t ldo) {
    tile_k(MOECC_Q6_K, wdot_madd, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_VNNI void moecc_tile_q4_k_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                            const void *x, int64_t ldx, int nt, float *out,
                                            int64_t ldo) {
    tile_k(MOECC_Q4_K, wdot_dpwssd, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_VNNI void moecc_tile_q5_k_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                            const void *x, int64_t ldx, int nt, float *out,
                                            int64_t ldo) {
    tile_k(MOECC_Q5_K, wdot_dpwssd, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_VNNI void moecc_tile_q6_k_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                            const void *x, int64_t ldx, int nt, float *out,
                                            int64_t ldo) {
    tile_k(MOECC_Q6_K, wdot_dpwssd, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

#endif /* MOECC_X86 */
