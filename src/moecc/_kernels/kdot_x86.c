/* kdot_x86.c -- K-type weights (q4_k, q5_k, q6_k) against q8_k activations with x86 integer
 * SIMD, for the tables avx2, avx512 and avx512vnni. The oracle is kdot_generic.c. Three paths:
 *   - block(): register blocks of 4 rows x up to 4 tokens on 256-bit vectors, compiled for AVX2
 *     and inlined into every table (a few tokens; AVX2 decode of q5_k and q6_k);
 *   - one token (decode): block_token512 on AVX-512, q4_k_pair_token256 on AVX2 (below);
 *   - many tokens on AVX-512: 16 rows unpacked into a panel (gpanel_x86.h, unpack_k).
 *
 * In block(), a super-block of 256 values is 8 vectors of 32 unsigned weights u (q4_k / q5_k
 * the 4 / 5 bits; q6_k q + 32), each met by the 32 activations it multiplies as they lie:
 *
 *     p     = maddubs(u, a)                  16 int16 pair sums (|p| <= 2 * 63 * 127)
 *     isum += p . s  (madd + add, or dpwssd)  s: the int16 scale of each pair's sub-block
 *
 * Once per super-block and (row, token), the 8 int32 lanes of isum go to float under one scale
 * d * dx into the row's float accumulator, and the mins (q4_k, q5_k: dmin * sum_j m_j * bsum_j)
 * or the bias of u (q6_k: 32 * sum_h s_h * bsum_h, integer) come off through one madd of the
 * activations' 16 block sums: no horizontal sum but the row's last. Decode streams four rows
 * side by side and sweep-prefetches the rows ahead (sweep_x86.h), so DRAM sees one sequential
 * stream. */
#include <stddef.h>

#include "moecc.h"

#if MOECC_X86
#include <immintrin.h>

#include "gpanel_x86.h"
#include "sweep_x86.h"

#define VECS (MOECC_KBLOCK / 32) /* vectors of 32 weights in a super-block */
#define MAX_NT 4                 /* tokens of a register block (2 with AVX2's 16 registers) */

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
        uint32_t s[3]; /* three loads (one memcpy of 12 bytes went through the stack) */
        for (int k = 0; k < 3; k++)
            memcpy(&s[k], blk + offsetof(moecc_block_q4_k, scales) + 4 * k, sizeof s[k]);
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
    sweep pf = sweep_start(w, NR, ldw, 1, nsb);
    const __m128i min_pairs = _mm_setr_epi8(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14,
                                            15, 15);

    for (int64_t b = 0; b < nsb; b++) {
        sweep_next(&pf);
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

/* ---- one token on 256-bit vectors (AVX2 decode, q4_k) ------------------------------------ */

/* As block_token512 below, but with 256-bit vectors and their 16 registers: two rows at a
 * time, one per 128-bit lane for what is per row and super-block -- the 6-bit scales and mins
 * unpacked by two byte shuffles, d and dmin, the mins' products with the block sums and the
 * float accumulation -- where block() spends some 40 scalar and vector instructions per row on
 * it. The products stay block()'s: maddubs, then madd with the sub-block's int16 scale. On Zen 4
 * (one thread, L2-resident rows, 2048 wide) q4_k rows take 52 ns instead of 59; for q5_k, whose
 * fifth bits cost as much either way, it gained nothing, and q5_k / q6_k keep block(). */

/* [8 scales, 8 mins] (uint8) per 128-bit lane holding a super-block's first 16 bytes (d, dmin,
 * the 12 packed bytes s[0..11]): scales and mins 0-3 are s[0..3] and s[4..7] & 63; 4-7 take
 * s[8..11]'s low and high nibbles and the top 2 bits of s[0..3] and s[4..7] as bits 4-5 */
INLINE TARGET_AVX2 __m256i unpack_scales_mins256(__m256i v) {
    const __m256i low6 = _mm256_broadcastsi128_si256(_mm_setr_epi8(
        4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15));
    const __m256i top2 = _mm256_broadcastsi128_si256(_mm_setr_epi8(
        -1, -1, -1, -1, 4, 5, 6, 7, -1, -1, -1, -1, 8, 9, 10, 11));
    const __m256i keep = _mm256_broadcastsi128_si256(_mm_setr_epi8(
        63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15));
    const __m256i high = _mm256_broadcastsi128_si256(_mm_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, -1, -1, -1, -1));
    const __m256i p = _mm256_shuffle_epi8(v, low6);
    const __m256i q = _mm256_shuffle_epi8(v, top2);
    const __m256i nib = _mm256_blendv_epi8(p, _mm256_srli_epi16(p, 4), high);
    return _mm256_or_si256(_mm256_and_si256(nib, keep),
                           _mm256_and_si256(_mm256_srli_epi16(q, 2), _mm256_set1_epi8(0x30)));
}

/* the byte shuffle that puts scale byte j of a lane's khead.sm under 16 pair sums, zero-extended */
INLINE TARGET_AVX2 __m256i scale_at256(const int j) {
    return _mm256_set1_epi16((short)(0x8000 | j));
}

/* q4_k rows r0 and r1 (r1 may repeat r0) x one token: out0, out1 */
INLINE TARGET_AVX2 void q4_k_pair_token256(int64_t K, const char *r0, const char *r1,
                                           const char *x, sweep pf, float *out0, float *out1) {
    const int64_t nsb = K / MOECC_KBLOCK;
    const int bb = sizeof(moecc_block_q4_k), qs = offsetof(moecc_block_q4_k, qs);
    const __m256i lo4 = _mm256_set1_epi8(15);
    const __m256i min_words = _mm256_broadcastsi128_si256(_mm_setr_epi8(
        8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1));
    /* per lane: d (word 0) four times, then dmin (word 1) four times */
    const __m256i d_dmin = _mm256_broadcastsi128_si256(_mm_setr_epi8(
        0, 1, 0, 1, 0, 1, 0, 1, 2, 3, 2, 3, 2, 3, 2, 3));
    const float *dxs = moecc_xk_scales(x, K);
    const int16_t *bsums = moecc_xk_bsums(x, K);
    __m256 acc = _mm256_setzero_ps(); /* lane 0: row r0's partial sums; lane 1: r1's */
    for (int64_t b = 0; b < nsb; b++) {
        sweep_next(&pf);
        const char *blk[2] = {r0 + bb * b, r1 + bb * b};
        const __m256i head = _mm256_loadu2_m128i((const __m128i *)blk[1], (const __m128i *)blk[0]);
        const __m256i sm = unpack_scales_mins256(head);
        const __m256i sm_row[2] = {_mm256_permute2x128_si256(sm, sm, 0x00),
                                   _mm256_permute2x128_si256(sm, sm, 0x11)};
        __m256i isum[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
#pragma GCC unroll 4
        for (int c = 0; c < VECS / 2; c++) { /* 32 bytes of qs: sub-blocks 2c (low), 2c+1 */
            const __m256i a_lo = _mm256_loadu_si256((const __m256i *)(x + MOECC_KBLOCK * b + 64 * c));
            const __m256i a_hi = _mm256_loadu_si256((const __m256i *)(x + MOECC_KBLOCK * b + 64 * c + 32));
            for (int r = 0; r < 2; r++) {
                const __m256i q = _mm256_loadu_si256((const __m256i *)(blk[r] + qs + 32 * c));
                const __m256i lo = _mm256_and_si256(q, lo4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), lo4);
                isum[r] = wdot_madd(isum[r], _mm256_maddubs_epi16(lo, a_lo),
                                    _mm256_shuffle_epi8(sm_row[r], scale_at256(2 * c)));
                isum[r] = wdot_madd(isum[r], _mm256_maddubs_epi16(hi, a_hi),
                                    _mm256_shuffle_epi8(sm_row[r], scale_at256(2 * c + 1)));
            }
        }
        /* per lane (row): its 8 int32 sums folded to 4; d * dx and -dmin * dx */
        const __m256i is = _mm256_add_epi32(_mm256_permute2x128_si256(isum[0], isum[1], 0x20),
                                            _mm256_permute2x128_si256(isum[0], isum[1], 0x31));
        const __m256i dd = _mm256_shuffle_epi8(head, d_dmin);
        const __m256 f0 = _mm256_cvtph_ps(_mm256_castsi256_si128(dd));
        const __m256 f1 = _mm256_cvtph_ps(_mm256_extracti128_si256(dd, 1));
        const __m256 dx = _mm256_set1_ps(dxs[b]);
        const __m256 d = _mm256_mul_ps(_mm256_permute2f128_ps(f0, f1, 0x20), dx);
        const __m256 dmin = _mm256_mul_ps(_mm256_permute2f128_ps(f0, f1, 0x31), dx);
        /* - dmin * sum_j m_j (bsum_2j + bsum_2j+1): the block sums of the sub-blocks */
        const __m256i bsum = _mm256_loadu_si256((const __m256i *)(bsums + MOECC_KBLOCK / 16 * b));
        const __m256i sb32 = _mm256_madd_epi16(bsum, _mm256_set1_epi16(1));
        const __m256i sb16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(sb32, sb32), 0x08);
        const __m256i msum = _mm256_madd_epi16(_mm256_shuffle_epi8(sm, min_words),
                                               _mm256_permute2x128_si256(sb16, sb16, 0x00));
        acc = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(msum), dmin, acc);
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), d, acc);
    }
    const __m128 lo = _mm256_castps256_ps128(acc), hi = _mm256_extractf128_ps(acc, 1);
    const __m128 s = _mm_hadd_ps(_mm_hadd_ps(lo, hi), _mm_setzero_ps()); /* r0, r1, 0, 0 */
    *out0 = _mm_cvtss_f32(s);
    *out1 = _mm_cvtss_f32(_mm_shuffle_ps(s, s, 1));
}

/* one token against nr q4_k rows: pairs of rows, each pair's sweep prefetch ahead of it; an odd
 * last row runs as a pair with itself */
INLINE TARGET_AVX2 void q4_k_tile_token256(int64_t K, const void *w, int64_t ldw, int nr,
                                      const void *x, float *out) {
    const char *wp = (const char *)w;
    const int64_t nsb = K / MOECC_KBLOCK;
    for (int r = 0; r < nr; r += 2) {
        const int two = r + 1 < nr;
        float spare;
        q4_k_pair_token256(K, wp + r * ldw, wp + (r + two) * ldw, (const char *)x,
                           sweep_start(wp + r * ldw, 1 + two, ldw, 1, nsb), out + r,
                           two ? out + r + 1 : &spare);
    }
}

/* ---- one token on 512-bit vectors (AVX-512 decode) --------------------------------------- */

/* Decode is bound by the bytes it streams only if a row's super-block costs fewer cycles than
 * its bytes take to arrive; the 256-bit loops above spend about 1.5x that on the scales, the
 * nibble split and two multiplies per 32 weights. Here
 *   - a vector holds 64 weights: the low or the high nibbles of 64 bytes of q4_k / q5_k qs (two
 *     sub-blocks, 2 apart, whose activations one lane shuffle per super-block gathers for all
 *     the rows), or a quarter of a q6_k super-block, as they lie;
 *   - two such vectors meet their activations in int32 sums of 4 products (dpbusd, or maddubs
 *     and madd without VNNI: |sum| <= 4 * 63 * 127 fits int16), packed into one vector of int16
 *     whose dpwssd with the scales -- one byte shuffle or word permute of the row's unpacked
 *     scales -- adds into the row's int32 sums: three multiplies per 128 weights, not four;
 *   - what is per row and super-block besides -- the 6-bit scales and mins, d and dmin, the
 *     mins' products with the block sums, the int32 sums' reduction and the float accumulation
 *     -- runs for the four rows at once, one row per 128-bit lane.
 * Measured on this machine (Zen 4, one thread, a 2048-wide matrix in L2), ns per row: q4_k
 * 58 -> 39, q5_k 73 -> 51, q6_k 54 -> 46. */

/* acc + the int32 sums of adjacent products, 512 bits wide */
typedef __m512i (*wdot512_fn)(__m512i acc, __m512i p, __m512i s);

INLINE TARGET_512 __m512i wdot512_madd(__m512i acc, __m512i p, __m512i s) {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(p, s));
}

INLINE TARGET_VNNI __m512i wdot512_dpwssd(__m512i acc, __m512i p, __m512i s) {
    return _mm512_dpwssd_epi32(acc, p, s);
}

/* one 16-byte load per row, row r in lane r (rows past NR: zeros) */
INLINE TARGET_512 __m512i lanes_of_rows(const int NR, const char *const *at, const int offset) {
    __m512i v = _mm512_setzero_si512();
    if (NR == 1) return _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)(at[0] + offset)));
    for (int r = 0; r < NR; r++)
        v = _mm512_inserti32x4(v, _mm_loadu_si128((const __m128i *)(at[r] + offset)), r);
    return v;
}

/* the fp16 at word `word` of each lane of v, as a float across the lane */
INLINE TARGET_512 __m512 lane_fp16(__m512i v, const int word) {
    const __m512i at = _mm512_zextsi256_si512(_mm256_setr_epi16(
        word, word, word, word, 8 + word, 8 + word, 8 + word, 8 + word, 16 + word, 16 + word,
        16 + word, 16 + word, 24 + word, 24 + word, 24 + word, 24 + word));
    return _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(at, v)));
}

/* q4_k / q5_k: the lanes of a khead.sm, [8 scales, 8 mins] (uint8), from lanes holding the
 * super-blocks' first 16 bytes: unpack_scales_mins256 on each half */
INLINE TARGET_512 __m512i unpack_scales_mins(__m512i v) {
    return _mm512_inserti64x4(
        _mm512_castsi256_si512(unpack_scales_mins256(_mm512_castsi512_si256(v))),
        unpack_scales_mins256(_mm512_extracti64x4_epi64(v, 1)), 1);
}

/* the four rows' int32 sums, each vector's 16 lanes folded into row r's 128-bit lane */
INLINE TARGET_512 __m512i fold_rows(const __m512i *isum) {
    const __m512i t01 = _mm512_add_epi32(_mm512_shuffle_i64x2(isum[0], isum[1], 0x44),
                                         _mm512_shuffle_i64x2(isum[0], isum[1], 0xEE));
    const __m512i t23 = _mm512_add_epi32(_mm512_shuffle_i64x2(isum[2], isum[3], 0x44),
                                         _mm512_shuffle_i64x2(isum[2], isum[3], 0xEE));
    return _mm512_add_epi32(_mm512_shuffle_i64x2(t01, t23, 0x88),
                            _mm512_shuffle_i64x2(t01, t23, 0xDD));
}

/* the byte shuffle that puts scale bytes j .. j+3 of a broadcast khead.sm, zero-extended to
 * int16, under the words packs_epi32 makes of two dpbusd sums of 64 weights each, the low and
 * the high nibbles of 64 bytes of qs: per 128-bit lane, four words of one sub-block, then four
 * of the next (lanes 0-1: j, j+1; lanes 2-3: j+2, j+3) */
INLINE TARGET_512 __m512i packed_scale_at(const int j) {
    const uint64_t words = 0x8000800080008000ull; /* index 0x80: a zero high byte */
#define FOUR(k) ((long long)(words | (uint64_t)(k) * 0x0001000100010001ull))
    return _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_setr_epi64x(FOUR(j), FOUR(j + 1), FOUR(j), FOUR(j + 1))),
        _mm256_setr_epi64x(FOUR(j + 2), FOUR(j + 3), FOUR(j + 2), FOUR(j + 3)), 1);
#undef FOUR
}

/* bit j in each byte of the low 256 bits, bit k in the high */
INLINE TARGET_512 __m512i bit_of(const int j, const int k) {
    return _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << j)), _mm256_set1_epi8((char)(1 << k)),
                              1);
}

/* the word permute that puts q6_k's int16 scales under the words packs_epi32 makes of two
 * dpbusd sums of 64 weights, values 128h .. 128h+63 and 128h+64 .. 128h+127: in 128-bit lane L,
 * four words of scale 8h + L (16 values), then four of scale 8h + 4 + L */
INLINE TARGET_512 __m512i q6_packed_scale_at(const int h) {
    const int j = 8 * h;
#define LANE(L) j + L, j + L, j + L, j + L, j + 4 + L, j + 4 + L, j + 4 + L, j + 4 + L
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_setr_epi16(LANE(0), LANE(1))),
                              _mm256_setr_epi16(LANE(2), LANE(3)), 1);
#undef LANE
}

/* NR (<= 4) rows x one token: out[r] = W[r] . x */
INLINE TARGET_512 void block_token512(const int wt, pdot512_fn pdot, wdot512_fn wdot, const int NR, int64_t K,
                                      const char *w, int64_t ldw, const char *x, float *out) {
    const int64_t nsb = K / MOECC_KBLOCK;
    const int bb = block_bytes(wt);
    __m512 acc = _mm512_setzero_ps(); /* row r's partial sums in lane r */
    sweep pf = sweep_start(w, NR, ldw, 1, nsb);
    const __m512i lo4 = _mm512_set1_epi8(15), hi2 = _mm512_set1_epi8(0x30);
    /* q6_k: per 256-bit half, the shift that brings its 2 bits of qh to bits 4-5 */
    const __m512i qh_lo = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
    const __m512i qh_hi = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
    /* q4_k / q5_k: the 8 mins of a lane's khead.sm, zero-extended to int16 */
    const __m512i min_words = _mm512_broadcast_i32x4(_mm_setr_epi8(
        8, -1, 9, -1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15, -1));
    const float *dxs = moecc_xk_scales(x, K);
    const int16_t *bsums = moecc_xk_bsums(x, K);

    for (int64_t b = 0; b < nsb; b++) {
        sweep_next(&pf);
        __m512i a[VECS / 2];
        for (int k = 0; k < VECS / 2; k++)
            a[k] = _mm512_loadu_si512((const void *)(x + MOECC_KBLOCK * b + 64 * k));
        const __m512 dx = _mm512_set1_ps(dxs[b]);
        const __m256i bsum = _mm256_loadu_si256((const __m256i *)(bsums + MOECC_KBLOCK / 16 * b));
        const char *blk[MOECC_TILE_ROWS];
        __m512i isum[MOECC_TILE_ROWS];
        for (int r = 0; r < MOECC_TILE_ROWS; r++) {
            blk[r] = w + (r < NR ? r : 0) * ldw + bb * b;
            isum[r] = _mm512_setzero_si512();
        }
        if (has_mins(wt)) {
            const int qs = wt == MOECC_Q4_K ? 16 : 48;
            const __m512i head = lanes_of_rows(NR, blk, 0);
            const __m512i sm = unpack_scales_mins(head);
            __m512i sm_row[MOECC_TILE_ROWS];
            for (int r = 0; r < NR; r++) sm_row[r] = _mm512_shuffle_i32x4(sm, sm, 0x55 * r);
#pragma GCC unroll 2
            for (int c = 0; c < 2; c++) { /* 64 bytes of qs: sub-blocks 4c .. 4c+3 */
                /* low nibbles: sub-blocks 4c, 4c+2; high: 4c+1, 4c+3 (a 32-byte half each) */
                const __m512i a_lo = _mm512_shuffle_i64x2(a[2 * c], a[2 * c + 1], 0x44);
                const __m512i a_hi = _mm512_shuffle_i64x2(a[2 * c], a[2 * c + 1], 0xEE);
                const __m512i at_lo = packed_scale_at(4 * c);
#pragma GCC unroll 4
                for (int r = 0; r < NR; r++) {
                    const __m512i q = _mm512_loadu_si512((const void *)(blk[r] + qs + 64 * c));
                    __m512i lo = _mm512_and_si512(q, lo4);
                    __m512i hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), lo4);
                    if (wt == MOECC_Q5_K) { /* + 16 where bit j of qh[l] is set (sub-block j) */
                        const __m512i qh = _mm512_broadcast_i64x4(
                            _mm256_loadu_si256((const __m256i *)(blk[r] + 16)));
                        const __m512i sixteen = _mm512_set1_epi8(16);
                        lo = _mm512_mask_add_epi8(
                            lo, _mm512_test_epi8_mask(qh, bit_of(4 * c, 4 * c + 2)), lo, sixteen);
                        hi = _mm512_mask_add_epi8(
                            hi, _mm512_test_epi8_mask(qh, bit_of(4 * c + 1, 4 * c + 3)), hi,
                            sixteen);
                    }
                    const __m512i p = _mm512_packs_epi32(
pdot(_mm512_setzero_si512(), lo, a_lo), pdot(_mm512_setzero_si512(), hi, a_hi));
                    isum[r] = wdot(isum[r], p, _mm512_shuffle_epi8(sm_row[r], at_lo));
                }
            }
            /* - dmin * sum_j m_j (bsum_2j + bsum_2j+1): the block sums of the sub-blocks */
            const __m256i sb32 = _mm256_madd_epi16(bsum, _mm256_set1_epi16(1));
            const __m256i sb16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(sb32, sb32), 0x08);
            const __m512i msum = _mm512_madd_epi16(_mm512_shuffle_epi8(sm, min_words),
                                                   _mm512_broadcast_i32x4(_mm256_castsi256_si128(sb16)));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(msum),
                                  _mm512_mul_ps(lane_fp16(head, 1), _mm512_sub_ps(_mm512_setzero_ps(), dx)),
                                  acc);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(fold_rows(isum)),
                                  _mm512_mul_ps(lane_fp16(head, 0), dx), acc);
        } else {
            /* u = q + 32: the bias - 32 sum_h s_h bsum_h joins each row's products */
            const __m512i minus_bsum =
                _mm512_zextsi256_si512(_mm256_sub_epi16(_mm256_setzero_si256(), bsum));
            __m512i s16[MOECC_TILE_ROWS];
            for (int r = 0; r < NR; r++) {
                s16[r] = _mm512_zextsi256_si512(_mm256_cvtepi8_epi16(
                    _mm_loadu_si128((const __m128i *)(blk[r] + offsetof(moecc_block_q6_k, scales)))));
                isum[r] = wdot(isum[r], minus_bsum, _mm512_slli_epi16(s16[r], 5));
            }
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) /* values 128h .. 128h+127: ql's nibbles, qh's bits */
#pragma GCC unroll 4
                for (int r = 0; r < NR; r++) {
                    const __m512i ql = _mm512_loadu_si512((const void *)(blk[r] + 64 * h));
                    const __m512i qh = _mm512_broadcast_i64x4(
                        _mm256_loadu_si256((const __m256i *)(blk[r] + 128 + 32 * h)));
                    const __m512i lo = /* values 128h .. 128h+63 */
                        _mm512_or_si512(_mm512_and_si512(ql, lo4),
                                        _mm512_and_si512(_mm512_sllv_epi16(qh, qh_lo), hi2));
                    const __m512i hi = /* values 128h+64 .. 128h+127 */
                        _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), lo4),
                                        _mm512_and_si512(_mm512_srlv_epi16(qh, qh_hi), hi2));
                    const __m512i p = _mm512_packs_epi32(pdot(_mm512_setzero_si512(), lo, a[2 * h]),
                                                          pdot(_mm512_setzero_si512(), hi, a[2 * h + 1]));
                    isum[r] = wdot(isum[r], p, _mm512_permutexvar_epi16(q6_packed_scale_at(h), s16[r]));
                }
            /* d: the last two bytes of 16 loaded from 194 */
            const __m512 d = lane_fp16(lanes_of_rows(NR, blk, offsetof(moecc_block_q6_k, d) - 14), 7);
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(fold_rows(isum)), _mm512_mul_ps(d, dx), acc);
        }
    }
    float lanes[16];
    _mm512_storeu_ps(lanes, acc);
    for (int r = 0; r < NR; r++) out[r] = (lanes[4 * r] + lanes[4 * r + 1]) + (lanes[4 * r + 2] + lanes[4 * r + 3]);
}

/* one token against four rows side by side at a time, the rest row by row */
INLINE TARGET_512 void tile_token512(const int wt, pdot512_fn pdot, wdot512_fn wdot, int64_t K,
                                     const void *w, int64_t ldw, int nr, const void *x,
                                     float *out) {
    const char *wp = (const char *)w;
    int r = 0;
    for (; r + MOECC_TILE_ROWS <= nr; r += MOECC_TILE_ROWS)
        block_token512(wt, pdot, wdot, MOECC_TILE_ROWS, K, wp + r * ldw, ldw, (const char *)x, out + r);
    for (; r < nr; r++)
        block_token512(wt, pdot, wdot, 1, K, wp + r * ldw, ldw, (const char *)x, out + r);
}

/* ---- many tokens: 16 rows unpacked into a panel (AVX-512 prefill, gpanel_x86.h) -------- */

/* the tokens from which the panel beats the 256-bit register blocks (measured on Zen 4: q6_k
 * gathers three times a value's bits) */
INLINE int gather_min_tokens(const int wt) { return wt == MOECC_Q6_K ? 10 : 6; }

/* values that share a scale: q4_k and q5_k sub-blocks of 32, q6_k of 16 */
INLINE int k_group(const int wt) { return has_mins(wt) ? 32 : 16; }

/* the byte k of each int32 lane, as an int32 (zero- or sign-extended) */
INLINE TARGET_512 __m512i byte_u(__m512i v, const int k) {
    return _mm512_and_si512(_mm512_srli_epi32(v, 8 * k), _mm512_set1_epi32(0xFF));
}

INLINE TARGET_512 __m512i byte_s(__m512i v, const int k) {
    return _mm512_srai_epi32(_mm512_slli_epi32(v, 24 - 8 * k), 24);
}

/* super-block `step` of the 16 rows at w, `rows` apart, into p (gpanel_x86.h): the 6-bit
 * scales and mins (q4_k, q5_k: groups of 32) or int8 scales (q6_k: groups of 16, min 32 * scale
 * as u = q + 32), gathered, and the unsigned values, loaded row by row and transposed */
INLINE TARGET_512 void unpack_k(const int wt, const char *w, int64_t ldw, int64_t K, int64_t step,
                                __m512i rows, wpanel *p) {
    (void)K; /* a whole super-block every step */
    const char *blk = w + block_bytes(wt) * step;
    p->groups = MOECC_KBLOCK / k_group(wt);
    const __m512i lo4 = _mm512_set1_epi32(0x0F0F0F0F), lo2 = _mm512_set1_epi32(0x03030303);
    if (has_mins(wt)) {
        const __m512i dd = gather_rows(rows, blk), s0 = gather_rows(rows, blk + 4),
                      s1 = gather_rows(rows, blk + 8), s2 = gather_rows(rows, blk + 12);
        const __m512 d = fp16_lanes(dd, 0), dmin = fp16_lanes(dd, 1);
        for (int j = 0; j < 8; j++) { /* moecc_q4_k_scales, 16 rows at a time */
            const __m512i six = _mm512_set1_epi32(63), four = _mm512_set1_epi32(15);
            const __m512i sc = j < 4 ? _mm512_and_si512(byte_u(s0, j), six)
                                     : _mm512_or_si512(_mm512_and_si512(byte_u(s2, j - 4), four),
                                                       _mm512_slli_epi32(_mm512_srli_epi32(byte_u(s0, j - 4), 6), 4));
            const __m512i m = j < 4 ? _mm512_and_si512(byte_u(s1, j), six)
                                    : _mm512_or_si512(_mm512_srli_epi32(byte_u(s2, j - 4), 4),
                                                      _mm512_slli_epi32(_mm512_srli_epi32(byte_u(s1, j - 4), 6), 4));
            p->scale[j] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(sc));
            p->imin[j] = _mm512_or_si512(m, _mm512_slli_epi32(m, 16));
        }
        p->dmin = dmin;
        const int qs = wt == MOECC_Q4_K ? 16 : 48;
        __m512i q4[32]; /* the int32s of qs, 16 rows each */
        load_transposed(blk + qs, ldw, q4);
        load_transposed(blk + qs + 64, ldw, q4 + 16);
        for (int i = 0; i < 8; i++) { /* 4 bytes of each 32 of qs: chunks 16c + i, 16c + 8 + i */
            const __m512i qh = wt == MOECC_Q5_K ? gather_rows(rows, blk + 16 + 4 * i)
                                                : _mm512_setzero_si512();
            for (int c = 0; c < 4; c++) {
                const __m512i q = q4[8 * c + i];
                __m512i lo = _mm512_and_si512(q, lo4), hi = _mm512_and_si512(_mm512_srli_epi32(q, 4), lo4);
                if (wt == MOECC_Q5_K) { /* + 16 where bit 2c (2c+1) of qh[l] is set */
                    const __m512i one = _mm512_set1_epi32(0x01010101);
                    lo = _mm512_or_si512(lo, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(qh, 2 * c), one), 4));
                    hi = _mm512_or_si512(hi, _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(qh, 2 * c + 1), one), 4));
                }
                p->u[16 * c + i] = lo;
                p->u[16 * c + 8 + i] = hi;
            }
        }
        return;
    }
    /* q6_k: scales[16] (int8) at 192, d at 208 (the high half of the 4 bytes at 206) */
    const __m512 d = fp16_lanes(gather_rows(rows, blk + 206), 1);
    p->dmin = d;
    for (int k = 0; k < 4; k++) {
        const __m512i sc = gather_rows(rows, blk + 192 + 4 * k);
        for (int j = 0; j < 4; j++)
            p->scale[4 * k + j] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(byte_s(sc, j)));
        for (int j = 0; j < 2; j++) /* min 32 d sc of groups 4k + 2j and 4k + 2j + 1 */
            p->imin[2 * k + j] = _mm512_or_si512(
                _mm512_and_si512(_mm512_slli_epi32(byte_s(sc, 2 * j), 5), _mm512_set1_epi32(0xFFFF)),
                _mm512_slli_epi32(byte_s(sc, 2 * j + 1), 21));
    }
    __m512i ql[32], qh6[16]; /* the int32s of ql and qh, 16 rows each */
    load_transposed(blk, ldw, ql);
    load_transposed(blk + 64, ldw, ql + 16);
    load_transposed(blk + 128, ldw, qh6);
    for (int h = 0; h < 2; h++)
        for (int k = 0; k < 8; k++) { /* values 128h + 32i + 4k .. (i < 4): chunk 32h + 8i + k */
            const __m512i a0 = ql[16 * h + k], a1 = ql[16 * h + 8 + k], qh = qh6[8 * h + k];
            const __m512i nib[4] = {a0, a1, _mm512_srli_epi32(a0, 4), _mm512_srli_epi32(a1, 4)};
            for (int i = 0; i < 4; i++)
                p->u[32 * h + 8 * i + k] = _mm512_or_si512(
                    _mm512_and_si512(nib[i], lo4),
                    _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(qh, 2 * i), lo2), 4));
        }
}

/* 16 rows x nt tokens, on panels of unpack_k */
INLINE TARGET_512 void tile_k_gathered(const int wt, pdot512_fn pdot, int64_t K, const char *w,
                                       int64_t ldw, const char *x, int64_t ldx, int nt,
                                       float *out, int64_t ldo) {
    tile_gathered(wt, unpack_k, MOECC_ACT_Q8_K, pdot, k_group(wt), K, w, ldw, x, ldx, nt, out, ldo);
}

/* Four rows: 4 x NT register blocks over the tokens, then 4 x 1 (decode: four rows side by
 * side); fewer rows: row by row, the same way. NT: the tokens the registers hold. */
INLINE TARGET_AVX2 void tile_k(const int wt, wdot_fn wdot, const int NT, int64_t K, const void *w,
                               int64_t ldw, int nr, const void *x, int64_t ldx, int nt, float *out,
                               int64_t ldo) {
    const char *wp = (const char *)w, *xp = (const char *)x;
    int r = 0, t;
    for (; r + MOECC_TILE_ROWS <= nr; r += MOECC_TILE_ROWS) {
        for (t = 0; t + NT <= nt; t += NT)
            block(wt, wdot, MOECC_TILE_ROWS, NT, K, wp + r * ldw, ldw, xp + t * ldx, ldx,
                  out + t * ldo + r, ldo);
        for (; t < nt; t++)
            block(wt, wdot, MOECC_TILE_ROWS, 1, K, wp + r * ldw, ldw, xp + t * ldx, ldx,
                  out + t * ldo + r, ldo);
    }
    for (; r < nr; r++) {
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
    if (nt == 1) q4_k_tile_token256(K, w, ldw, nr, x, out);
    else tile_k(MOECC_Q4_K, wdot_madd, 2, K, w, ldw, nr, x, ldx, nt, out, ldo);
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
    if (nt == 1) tile_token512(MOECC_Q4_K, pdot512_maddubs, wdot512_madd, K, w, ldw, nr, x, out);
    else if (nr == GATHER_ROWS && nt >= gather_min_tokens(MOECC_Q4_K))
        tile_k_gathered(MOECC_Q4_K, pdot512_maddubs, K, w, ldw, x, ldx, nt, out, ldo);
    else tile_k(MOECC_Q4_K, wdot_madd, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_512 void moecc_tile_q5_k_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                                       const void *x, int64_t ldx, int nt, float *out,
                                       int64_t ldo) {
    if (nt == 1) tile_token512(MOECC_Q5_K, pdot512_maddubs, wdot512_madd, K, w, ldw, nr, x, out);
    else if (nr == GATHER_ROWS && nt >= gather_min_tokens(MOECC_Q5_K))
        tile_k_gathered(MOECC_Q5_K, pdot512_maddubs, K, w, ldw, x, ldx, nt, out, ldo);
    else tile_k(MOECC_Q5_K, wdot_madd, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_512 void moecc_tile_q6_k_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                                       const void *x, int64_t ldx, int nt, float *out,
                                       int64_t ldo) {
    if (nt == 1) tile_token512(MOECC_Q6_K, pdot512_maddubs, wdot512_madd, K, w, ldw, nr, x, out);
    else if (nr == GATHER_ROWS && nt >= gather_min_tokens(MOECC_Q6_K))
        tile_k_gathered(MOECC_Q6_K, pdot512_maddubs, K, w, ldw, x, ldx, nt, out, ldo);
    else tile_k(MOECC_Q6_K, wdot_madd, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_VNNI void moecc_tile_q4_k_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                            const void *x, int64_t ldx, int nt, float *out,
                                            int64_t ldo) {
    if (nt == 1) tile_token512(MOECC_Q4_K, pdot512_dpbusd, wdot512_dpwssd, K, w, ldw, nr, x, out);
    else if (nr == GATHER_ROWS && nt >= gather_min_tokens(MOECC_Q4_K))
        tile_k_gathered(MOECC_Q4_K, pdot512_dpbusd, K, w, ldw, x, ldx, nt, out, ldo);
    else tile_k(MOECC_Q4_K, wdot_dpwssd, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_VNNI void moecc_tile_q5_k_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                            const void *x, int64_t ldx, int nt, float *out,
                                            int64_t ldo) {
    if (nt == 1) tile_token512(MOECC_Q5_K, pdot512_dpbusd, wdot512_dpwssd, K, w, ldw, nr, x, out);
    else if (nr == GATHER_ROWS && nt >= gather_min_tokens(MOECC_Q5_K))
        tile_k_gathered(MOECC_Q5_K, pdot512_dpbusd, K, w, ldw, x, ldx, nt, out, ldo);
    else tile_k(MOECC_Q5_K, wdot_dpwssd, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_VNNI void moecc_tile_q6_k_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                            const void *x, int64_t ldx, int nt, float *out,
                                            int64_t ldo) {
    if (nt == 1) tile_token512(MOECC_Q6_K, pdot512_dpbusd, wdot512_dpwssd, K, w, ldw, nr, x, out);
    else if (nr == GATHER_ROWS && nt >= gather_min_tokens(MOECC_Q6_K))
        tile_k_gathered(MOECC_Q6_K, pdot512_dpbusd, K, w, ldw, x, ldx, nt, out, ldo);
    else tile_k(MOECC_Q6_K, wdot_dpwssd, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

#endif /* MOECC_X86 */
