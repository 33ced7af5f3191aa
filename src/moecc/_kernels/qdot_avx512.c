/* qdot_avx512.c -- q8 / q4 weights against quantized activations on 512-bit vectors, for the
 * tables avx512 (maddubs, AVX-512 BW) and avx512vnni (dpbusd). The oracle is qdot_generic.c.
 *
 * The int8 products take one unsigned and one signed operand:
 *   - q4: the nibble u = q + 8 is the unsigned operand, u . a = q . a + 8 sum(a);
 *   - q8 with dpbusd: u = q + 128 (q xor 0x80), u . a = q . a + 128 sum(a);
 *   - q8 with maddubs: |q| . (a with the sign of q) (q + 128 would overflow maddubs' int16).
 * Each vector of 16 int32 partial sums is converted to float and accumulated with the scales
 * s = dx[block] * dw[group] of its lanes, the bias * sum(a) terms coming off once per segment:
 *
 *     acc += float(isum) * s                row . x = hsum(acc) - bias * sum_blocks s * sum(a)
 *
 * Weights go by segments of 16 blocks (512 values), whose scales dw, dx (and, for small
 * register blocks, their products) are one vector each; a vector's lane scales are one permute
 * of those. Per vector of int32 sums:
 *   - q8: 64 bytes of q, the blocks 2p, 2p+1 (lanes 0-7, 8-15);
 *   - q4, G <= 64: 64 packed bytes (a unit of four blocks) give a vector of low nibbles and one
 *     of high nibbles; the activations are stored in the same order (moecc.h), so each meets
 *     one contiguous vector of them. G = 32: both vectors hold halves of the same four blocks
 *     (one per 128-bit lane), so their products go into one int32 sum; G = 64: low nibbles are
 *     blocks 0 and 2 of the unit, high nibbles 1 and 3;
 *   - q4, G >= 128: 64 packed bytes give low nibbles (blocks j, j+1) and high nibbles (blocks
 *     j + G/64, j + G/64 + 1), the activations in natural order.
 * Half as many instructions as 256-bit code, which on cores that run 512-bit operations as two
 * halves (Zen 4) is what counts. The end of a row is read with masked loads (never past it).
 * Decode streams four rows side by side and sweep-prefetches the rows ~8 KB on, so that DRAM
 * sees one sequential stream.
 *
 * The int product is passed to the (always inlined) loops as a function: the loops are compiled
 * for AVX-512 BW and inlined into each table's entry points, the VNNI ones carrying the wider
 * target (a function of a wider target cannot be inlined into a narrower one; the other way
 * round is fine), so one copy of the loops serves both tables. */
#include "moecc.h"

#if MOECC_X86
#include <immintrin.h>

#define TARGET_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define TARGET_VNNI \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

#define SEG 16     /* blocks per segment: one vector of scales */
#define MAX_ACC 16 /* NR * NT * U never exceeds this */
#define MAX_NT 4   /* tokens of a register block */
#define PF_BYTES 8192 /* a tile of rows prefetches the first whole tile this far on */

/* int32 x 16 partial sums of u . a: u the unsigned weight operand, sq the signed q (q8 with
 * maddubs only), a the activations */
typedef __m512i (*idot_fn)(__m512i u, __m512i sq, __m512i a);
/* int32 x 16 partial sums of u1 . a1 + u2 . a2, nibbles u1, u2 */
typedef __m512i (*idot2_fn)(__m512i u1, __m512i a1, __m512i u2, __m512i a2);

INLINE TARGET_512 __m512i ones16(void) { return _mm512_set1_epi16(1); }

INLINE TARGET_512 __m512i idot_maddubs(__m512i u, __m512i sq, __m512i a) {
    (void)sq;
    return _mm512_madd_epi16(_mm512_maddubs_epi16(u, a), ones16());
}

/* |q| . (a with the sign of q); AVX-512 has no sign_epi8: negate a where q < 0 */
INLINE TARGET_512 __m512i idot_maddubs_signed(__m512i u, __m512i sq, __m512i a) {
    const __m512i sa = _mm512_mask_sub_epi8(a, _mm512_movepi8_mask(sq), _mm512_setzero_si512(), a);
    return _mm512_madd_epi16(_mm512_maddubs_epi16(u, sa), ones16());
}

/* nibbles: |int16 sums| <= 4 * 15 * 127, no overflow adding the two before the madd */
INLINE TARGET_512 __m512i idot2_maddubs(__m512i u1, __m512i a1, __m512i u2, __m512i a2) {
    const __m512i p = _mm512_add_epi16(_mm512_maddubs_epi16(u1, a1), _mm512_maddubs_epi16(u2, a2));
    return _mm512_madd_epi16(p, ones16());
}

INLINE TARGET_VNNI __m512i idot_dpbusd(__m512i u, __m512i sq, __m512i a) {
    (void)sq;
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, a);
}

INLINE TARGET_VNNI __m512i idot2_dpbusd(__m512i u1, __m512i a1, __m512i u2, __m512i a2) {
    return _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), u1, a1), u2, a2);
}

/* the first n (<= 64) of the 64 bytes at p, the rest 0 */
INLINE TARGET_512 __m512i load_bytes(const char *p, int n) {
    const __mmask64 m = n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
    return _mm512_maskz_loadu_epi8(m, p);
}

/* ---- scales ------------------------------------------------------------------------------ */

/* Which block of the segment each lane of a vector of sums belongs to: base + pattern */
enum { PAIR, QUAD, SPREAD };            /* l / 8,  l / 4,  2 * (l / 8) */
INLINE TARGET_512 __m512i lane_blocks(int base, const int pattern) {
    const __m512i pair = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    const __m512i quad = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m512i p = pattern == PAIR   ? pair
                      : pattern == QUAD ? quad
                                        : _mm512_add_epi32(pair, pair);
    return _mm512_add_epi32(_mm512_set1_epi32(base), p);
}

/* the 16 weight scales of the blocks b0 .. b0+15 of a row (group = block * 32 / G) as float;
 * m of them (a multiple of G/32) exist, the others are 0 */
INLINE TARGET_512 __m512 segment_dw(const int G, const char *scales, int64_t b0, int m) {
    const int ng = m * MOECC_QBLOCK / G;
    const __m256i h = _mm256_maskz_loadu_epi16((__mmask16)((1u << ng) - 1),
                                               scales + 2 * (b0 * MOECC_QBLOCK / G));
    const __m512 d = _mm512_cvtph_ps(h);
    if (G == 32) return d;
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    return _mm512_permutexvar_ps(_mm512_srli_epi32(lane, G == 64 ? 1 : G == 128 ? 2 : 3), d);
}

/* few (row, token) pairs keep the products dx * dw; more make them per vector of sums */
#define KEEP_PRODUCTS(NR, NT) ((NR) * (NT) <= 4)

typedef struct {
    __m512 dw[MOECC_TILE_ROWS], dx[MAX_NT], s[4]; /* s[r*NT + t] if KEEP_PRODUCTS */
} segment_scales;

#define ACC(r, t, u) acc[((u) * NR + (r)) * NT + (t)]

/* the scales of the m blocks of the segment at b0, and the bias correction
 * acc(r, t, 0) -= bias * s * sum(a) */
INLINE TARGET_512 void make_scales(const int wt, const int G, const int NR, const int NT,
                                   const int bias, int64_t K, int64_t b0, int m, const char *w,
                                   int64_t ldw, const char *x, int64_t ldx, segment_scales *sc,
                                   __m512 *acc) {
    const int64_t qbytes = wt == MOECC_Q8 ? K : K / 2; /* the scales follow the q */
    const __mmask16 live = (__mmask16)((1u << m) - 1);
    for (int r = 0; r < NR; r++) sc->dw[r] = segment_dw(G, w + r * ldw + qbytes, b0, m);
    for (int t = 0; t < NT; t++) {
        const char *xt = x + t * ldx;
        sc->dx[t] = _mm512_maskz_loadu_ps(live, moecc_xq_scales(xt, K) + b0);
        const __m512i sum = _mm512_maskz_loadu_epi32(live, moecc_xq_sums(xt, K) + b0);
        const __m512 corr = _mm512_mul_ps(_mm512_cvtepi32_ps(sum), _mm512_set1_ps(-bias));
        for (int r = 0; r < NR; r++) {
            const __m512 sv = _mm512_mul_ps(sc->dx[t], sc->dw[r]);
            if (KEEP_PRODUCTS(NR, NT)) sc->s[r * NT + t] = sv;
            if (bias) ACC(r, t, 0) = _mm512_fmadd_ps(sv, corr, ACC(r, t, 0));
        }
    }
}

/* ---- one vector of sums for every (row, token) ------------------------------------------ */

/* acc(r, t, u) += float(sums) * scales of their lanes (blocks: lane_blocks(base, pattern)).
 * The sums: idot(wu[r], wq[r], a) with a the n bytes at xoff of token t's row or, with idot2,
 * idot2(wu[r], a, wv[r], a2) with a2 the n bytes at xoff2. */
INLINE TARGET_512 void dots(idot_fn idot, idot2_fn idot2, const int NR, const int NT, const int u,
                            int base, const int pattern, const __m512i *wu, const __m512i *wq,
                            const __m512i *wv, int64_t xoff, int64_t xoff2, int n, const char *x,
                            int64_t ldx, const segment_scales *sc, __m512 *acc) {
    const __m512i idx = lane_blocks(base, pattern);
    __m512 dwl[MOECC_TILE_ROWS];
    if (!KEEP_PRODUCTS(NR, NT))
        for (int r = 0; r < NR; r++) dwl[r] = _mm512_permutexvar_ps(idx, sc->dw[r]);
    for (int t = 0; t < NT; t++) {
        const char *xt = x + t * ldx;
        const __m512i a = load_bytes(xt + xoff, n);
        const __m512i a2 = idot2 ? load_bytes(xt + xoff2, n) : a;
        const __m512 dxl =
            KEEP_PRODUCTS(NR, NT) ? sc->dx[t] : _mm512_permutexvar_ps(idx, sc->dx[t]);
        for (int r = 0; r < NR; r++) {
            const __m512i isum = idot2 ? idot2(wu[r], a, wv[r], a2) : idot(wu[r], wq[r], a);
            const __m512 sv = KEEP_PRODUCTS(NR, NT) ? _mm512_permutexvar_ps(idx, sc->s[r * NT + t])
                                                    : _mm512_mul_ps(dwl[r], dxl);
            ACC(r, t, u) = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), sv, ACC(r, t, u));
        }
    }
}

/* acc += the m blocks of the segment at b0; a full segment (m == SEG) spreads its vectors over
 * the U accumulators of a (row, token) (the loops over u are the compile-time ones) */
INLINE TARGET_512 void segment(const int wt, const int mode_dpbusd, idot_fn idot, idot2_fn idot2,
                               const int G, const int NR, const int NT, const int U, int m,
                               int64_t b0, const char *w, int64_t ldw, const char *x, int64_t ldx,
                               const segment_scales *sc, __m512 *acc) {
    const __m512i low4 = _mm512_set1_epi8(15);
    __m512i wa[MOECC_TILE_ROWS], wb[MOECC_TILE_ROWS];
    if (wt == MOECC_Q8) { /* pairs of blocks */
        for (int p0 = 0; p0 < (m + 1) / 2; p0 += U)
            for (int u = 0; u < U; u++) {
                const int p = p0 + u, n = 2 * p + 1 == m ? 32 : 64;
                for (int r = 0; r < NR; r++) {
                    const __m512i q = load_bytes(w + r * ldw + 32 * (b0 + 2 * p), n);
                    if (mode_dpbusd) {
                        wa[r] = _mm512_xor_si512(q, _mm512_set1_epi8((char)0x80));
                    } else {
                        wa[r] = _mm512_abs_epi8(q); /* -128 -> 128 as unsigned: exact */
                        wb[r] = q;
                    }
                }
                dots(idot, NULL, NR, NT, u, 2 * p, PAIR, wa, wb, wa, 32 * (b0 + 2 * p), 0, n, x,
                     ldx, sc, acc);
            }
    } else if (G == 32) { /* units of four blocks, one vector of sums each */
        for (int k0 = 0; k0 < (m + 3) / 4; k0 += U)
            for (int u = 0; u < U; u++) {
                const int k = k0 + u, nbu = m - 4 * k < 4 ? m - 4 * k : 4;
                for (int r = 0; r < NR; r++) {
                    const __m512i p = load_bytes(w + r * ldw + 16 * (b0 + 4 * k), 16 * nbu);
                    wa[r] = _mm512_and_si512(p, low4);
                    wb[r] = _mm512_and_si512(_mm512_srli_epi16(p, 4), low4);
                }
                const int64_t xu = 32 * (b0 + 4 * k);
                dots(idot, idot2, NR, NT, u, 4 * k, QUAD, wa, wa, wb, xu, xu + 16 * nbu, 16 * nbu,
                     x, ldx, sc, acc);
            }
    } else { /* 64 packed bytes (k) give two vectors of sums */
        const int UK = U > 1 ? U / 2 : 1, nk = G == 64 ? (m + 3) / 4 : m / 4;
        for (int k0 = 0; k0 < nk; k0 += UK)
            for (int kk = 0; kk < UK; kk++) {
                const int k = k0 + kk, ua = U > 1 ? 2 * kk : 0, ub = U > 1 ? 2 * kk + 1 : 0;
                const int nbu = m - 4 * k < 4 ? m - 4 * k : 4;
                for (int r = 0; r < NR; r++) {
                    const __m512i p = load_bytes(w + r * ldw + 16 * (b0 + 4 * k), 16 * nbu);
                    wa[r] = _mm512_and_si512(p, low4);
                    wb[r] = _mm512_and_si512(_mm512_srli_epi16(p, 4), low4);
                }
                if (G == 64) { /* unit layout: low nibbles blocks 0, 2; high nibbles 1, 3 */
                    const int64_t xu = 32 * (b0 + 4 * k);
                    dots(idot, NULL, NR, NT, ua, 4 * k, SPREAD, wa, wa, wa, xu, 0, 16 * nbu, x,
                         ldx, sc, acc);
                    dots(idot, NULL, NR, NT, ub, 4 * k + 1, SPREAD, wb, wb, wb, xu + 16 * nbu, 0,
                         16 * nbu, x, ldx, sc, acc);
                } else { /* natural order: low nibbles blocks jl, jl+1; high jh, jh+1 */
                    const int jl = 64 * k / (G / 2) * (G / 32) + 64 * k % (G / 2) / 32;
                    const int jh = jl + G / 64;
                    dots(idot, NULL, NR, NT, ua, jl, PAIR, wa, wa, wa, 32 * (b0 + jl), 0, 64, x,
                         ldx, sc, acc);
                    dots(idot, NULL, NR, NT, ub, jh, PAIR, wb, wb, wb, 32 * (b0 + jh), 0, 64, x,
                         ldx, sc, acc);
                }
            }
    }
}

/* Register block: NR rows x NT tokens, U accumulators per (row, token); every size a
 * compile-time constant once inlined. v[r*NT + t] = the lanes whose sum is W[r] . X[t]. */
INLINE TARGET_512 void block(const int wt, const int mode_dpbusd, idot_fn idot, idot2_fn idot2,
                             const int G, const int NR, const int NT, const int U, int64_t K,
                             const char *w, int64_t ldw, const char *x, int64_t ldx, __m512 *v) {
    const int64_t nblocks = K / MOECC_QBLOCK;
    const int bias = wt == MOECC_Q4 ? 8 : mode_dpbusd ? 128 : 0;
    __m512 acc[MAX_ACC];
    for (int i = 0; i < NR * NT * U; i++) acc[i] = _mm512_setzero_ps();
    /* sweep-prefetch the NR rows a few tiles on (PF_BYTES: measured best for q4 and q8), a share
     * per segment: DRAM then sees one sequential stream instead of NR interleaved ones */
    const char *pf = w + (PF_BYTES + NR * ldw - 1) / (NR * ldw) * NR * ldw;
    const int64_t pf_step = NR > 1 ? (NR * ldw * SEG / nblocks + 63) & ~(int64_t)63 : 0;
    for (int64_t b0 = 0; b0 < nblocks; b0 += SEG) {
        const int m = nblocks - b0 < SEG ? (int)(nblocks - b0) : SEG;
        for (int64_t b = 0; b < pf_step; b += 64) _mm_prefetch(pf + b, _MM_HINT_T0);
        pf += pf_step;
        segment_scales sc;
        make_scales(wt, G, NR, NT, bias, K, b0, m, w, ldw, x, ldx, &sc, acc);
        if (m == SEG) /* the sizes of a segment known at compile time but for odd ends */
            segment(wt, mode_dpbusd, idot, idot2, G, NR, NT, U, SEG, b0, w, ldw, x, ldx, &sc, acc);
        else if (m == SEG / 2) /* U = 2 divides the vectors of half a segment, whatever G */
            segment(wt, mode_dpbusd, idot, idot2, G, NR, NT, U > 2 ? 2 : U, SEG / 2, b0, w, ldw,
                    x, ldx, &sc, acc);
        else
            segment(wt, mode_dpbusd, idot, idot2, G, NR, NT, 1, m, b0, w, ldw, x, ldx, &sc, acc);
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) {
            __m512 sum = ACC(r, t, 0);
            for (int u = 1; u < U; u++) sum = _mm512_add_ps(sum, ACC(r, t, u));
            v[r * NT + t] = sum;
        }
}

#undef ACC

/* [sum(a), sum(b), sum(c), sum(d)]: four horizontal sums at once */
INLINE TARGET_512 __m128 hsum4(__m512 a, __m512 b, __m512 c, __m512 d) {
    const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    /* per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] -> [a, b, c, d] partial sums */
    const __m512 abcd =
        _mm512_add_ps(_mm512_shuffle_ps(ab, cd, 0x44), _mm512_shuffle_ps(ab, cd, 0xEE));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(abcd), _mm512_extractf32x8_ps(abcd, 1));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* The tile for one group size. Four rows: 4 x 4 register blocks over the tokens, then 4 x 2,
 * 4 x 1 (decode: four rows streamed side by side, one accumulator each, is ~1.4x faster than
 * one row after another with four); fewer rows: row by row, tokens two or one at a time. The
 * sums of four rows are reduced together. */
INLINE TARGET_512 void tile_g(const int wt, const int mode_dpbusd, idot_fn idot, idot2_fn idot2,
                              const int G, int64_t K, const char *w, int64_t ldw, int nr,
                              const char *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    const int R = MOECC_TILE_ROWS;
    int t = 0;
    if (nr == R) {
        __m512 v[MOECC_TILE_ROWS * MAX_NT];
        for (; t + MAX_NT <= nt; t += MAX_NT) {
            block(wt, mode_dpbusd, idot, idot2, G, R, MAX_NT, 1, K, w, ldw, x + t * ldx, ldx, v);
            for (int i = 0; i < MAX_NT; i++)
                _mm_storeu_ps(out + (t + i) * ldo,
                              hsum4(v[i], v[MAX_NT + i], v[2 * MAX_NT + i], v[3 * MAX_NT + i]));
        }
        if (t + 2 <= nt) {
            block(wt, mode_dpbusd, idot, idot2, G, R, 2, 1, K, w, ldw, x + t * ldx, ldx, v);
            for (int i = 0; i < 2; i++, t++)
                _mm_storeu_ps(out + t * ldo, hsum4(v[i], v[2 + i], v[4 + i], v[6 + i]));
        }
        if (t < nt) {
            block(wt, mode_dpbusd, idot, idot2, G, R, 1, 1, K, w, ldw, x + t * ldx, ldx, v);
            _mm_storeu_ps(out + t * ldo, hsum4(v[0], v[1], v[2], v[3]));
        }
        return;
    }
    while (t < nt) {
        const int two = nt - t >= 2;
        __m512 v[MOECC_TILE_ROWS][2];
        for (int r = 0; r < R; r++) {
            v[r][0] = v[r][1] = _mm512_setzero_ps();
            if (r >= nr) continue;
            if (two)
                block(wt, mode_dpbusd, idot, idot2, G, 1, 2, 2, K, w + r * ldw, ldw, x + t * ldx,
                      ldx, v[r]);
            else
                block(wt, mode_dpbusd, idot, idot2, G, 1, 1, 4, K, w + r * ldw, ldw, x + t * ldx,
                      ldx, v[r]);
        }
        for (int i = 0; i <= two; i++, t++) {
            _Alignas(16) float o[MOECC_TILE_ROWS];
            _mm_store_ps(o, hsum4(v[0][i], v[1][i], v[2][i], v[3][i]));
            for (int r = 0; r < nr; r++) out[t * ldo + r] = o[r];
        }
    }
}

INLINE TARGET_512 void tile_q(const int wt, const int mode_dpbusd, idot_fn idot, idot2_fn idot2,
                              int64_t K, int G, const void *w, int64_t ldw, int nr, const void *x,
                              int64_t ldx, int nt, float *out, int64_t ldo) {
    const char *wp = (const char *)w, *xp = (const char *)x;
    switch (G) {
    case 32: tile_g(wt, mode_dpbusd, idot, idot2, 32, K, wp, ldw, nr, xp, ldx, nt, out, ldo); break;
    case 64: tile_g(wt, mode_dpbusd, idot, idot2, 64, K, wp, ldw, nr, xp, ldx, nt, out, ldo); break;
    case 128:
        tile_g(wt, mode_dpbusd, idot, idot2, 128, K, wp, ldw, nr, xp, ldx, nt, out, ldo);
        break;
    default:
        tile_g(wt, mode_dpbusd, idot, idot2, 256, K, wp, ldw, nr, xp, ldx, nt, out, ldo);
        break;
    }
}

/* ---- the entry points of the two tables -------------------------------------------------- */

TARGET_512 void moecc_tile_q8_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                                     const void *x, int64_t ldx, int nt, float *out,
                                     int64_t ldo) {
    tile_q(MOECC_Q8, 0, idot_maddubs_signed, idot2_maddubs, K, MOECC_QBLOCK, w, ldw, nr, x, ldx, nt,
           out, ldo);
}

TARGET_512 void moecc_tile_q4_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                                     const void *x, int64_t ldx, int nt, float *out,
                                     int64_t ldo) {
    tile_q(MOECC_Q4, 0, idot_maddubs, idot2_maddubs, K, MOECC_QBLOCK, w, ldw, nr, x, ldx, nt, out,
           ldo);
}

TARGET_VNNI void moecc_tile_q8_avx512vnni(int64_t K, const void *w, int64_t ldw,
                                          int nr, const void *x, int64_t ldx, int nt, float *out,
                                          int64_t ldo) {
    tile_q(MOECC_Q8, 1, idot_dpbusd, idot2_dpbusd, K, MOECC_QBLOCK, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_VNNI void moecc_tile_q4_avx512vnni(int64_t K, const void *w, int64_t ldw,
                                          int nr, const void *x, int64_t ldx, int nt, float *out,
                                          int64_t ldo) {
    tile_q(MOECC_Q4, 1, idot_dpbusd, idot2_dpbusd, K, MOECC_QBLOCK, w, ldw, nr, x, ldx, nt, out, ldo);
}

#endif /* MOECC_X86 */
