/* qdot_avx2.c -- q8 / q4 weights against quantized activations with AVX2 integer SIMD (the
 * avx2 table; qdot_avx512.c does the same on 512-bit vectors). The oracle is qdot_generic.c.
 *
 * The int8 products go through maddubs (unsigned x signed bytes, pairs summed to int16), then
 * madd with ones (int16 pairs summed to int32):
 *   - q4: the nibble u = q + 8 is the unsigned operand: u . a = q . a + 8 sum(a), and the
 *     8 sum(a) comes off in float (below); |products| <= 2 * 15 * 127 fits int16 easily;
 *   - q8: |q| . (a with the sign of q) (q + 128 would overflow maddubs' int16).
 * Each 256-bit vector of int32 partial sums is converted to float and accumulated with the
 * scale s = dx[block] * dw[group] of its lanes:
 *
 *     acc += float(isum) * s           row . x = hsum(acc) - 8 sum_blocks s * sum(a)   (q4)
 *
 * Weights are visited in steps of eight blocks (256 values): the step's eight scales s per
 * (row, token) are made with a few vector operations and parked on the stack, where each vector
 * broadcasts the scales of its lanes; the q4 correction is one fma per step.
 *
 * Per vector of int32 sums:
 *   - q8: one block (32 bytes of q);
 *   - q4, G <= 64: 32 packed bytes give a vector of low and one of high nibbles; the activations
 *     are stored in the same order (moecc.h), so each meets one contiguous vector of them.
 *     G = 32: both hold halves of the same two blocks (b, b+1 by 128-bit lane), their int16
 *     products are added before the madd; G = 64: low nibbles are block b, high block b+1;
 *   - q4, G >= 128: 32 packed bytes give low nibbles (block j) and high (block j + G/64), the
 *     activations in natural order. */
#include "moecc.h"

#if MOECC_X86
#include <immintrin.h>

#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

#define STEP 8     /* blocks per step: one vector of scales */
#define MAX_ACC 16 /* NR * NT * U never exceeds this */
#define MAX_NT 2   /* tokens of a register block (16 ymm registers) */
#define PF_BYTES 8192 /* a tile of rows prefetches the first whole tile this far on */

INLINE TARGET_AVX2 __m256i ones16(void) { return _mm256_set1_epi16(1); }

/* int32 x 8 partial sums of u . a (u unsigned bytes) */
INLINE TARGET_AVX2 __m256i idot_u(__m256i u, __m256i a) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), ones16());
}

/* int32 x 8 partial sums of u1 . a1 + u2 . a2 (nibbles: the int16 sums cannot overflow) */
INLINE TARGET_AVX2 __m256i idot_u2(__m256i u1, __m256i a1, __m256i u2, __m256i a2) {
    const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(u1, a1), _mm256_maddubs_epi16(u2, a2));
    return _mm256_madd_epi16(p, ones16());
}

/* int32 x 8 partial sums of q . a for signed q: |q| . (a with the sign of q) */
INLINE TARGET_AVX2 __m256i idot_s(__m256i absq, __m256i q, __m256i a) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(absq, _mm256_sign_epi8(a, q)), ones16());
}

INLINE TARGET_AVX2 float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* the first n (multiple of 4, <= 32) of the 32 bytes at p, the rest 0 */
INLINE TARGET_AVX2 __m256i load_bytes(const char *p, int n) {
    if (n >= 32) return _mm256_loadu_si256((const __m256i *)p);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(n / 4), lane);
    return _mm256_maskload_epi32((const int *)p, live);
}

/* the 8 weight scales of the blocks b0 .. b0+7 of a row (group = block * 32 / G) as float */
INLINE TARGET_AVX2 __m256 step_dw(const int G, const char *scales, int64_t b0) {
    const char *p = scales + 2 * (b0 * MOECC_QBLOCK / G); /* fp16 of the first group */
    __m128i h;
    switch (G) {
    case 32: h = _mm_loadu_si128((const __m128i *)p); break;
    case 64: h = _mm_loadl_epi64((const __m128i *)p); break;
    case 128: {
        int32_t v;
        memcpy(&v, p, 4);
        h = _mm_cvtsi32_si128(v);
        break;
    }
    default: {
        uint16_t v;
        memcpy(&v, p, 2);
        h = _mm_cvtsi32_si128(v);
        break;
    }
    }
    const __m256 d = _mm256_cvtph_ps(h);
    if (G == 32) return d;
    const __m256i idx = G == 64    ? _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)
                        : G == 128 ? _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)
                                   : _mm256_setzero_si256();
    return _mm256_permutevar8x32_ps(d, idx);
}

#define ACC(r, t, u) acc[((u) * NR + (r)) * NT + (t)]

/* lanes 0-3: s[j], lanes 4-7: s[j+1] */
INLINE TARGET_AVX2 __m256 two_scales(const float *s, int j) {
    return _mm256_set_m128(_mm_broadcast_ss(s + j + 1), _mm_broadcast_ss(s + j));
}

/* acc += the blocks [0, nb) of the step at block b0; a full step spreads its vectors over the
 * U accumulators of a (row, token) (the loops over u are the compile-time ones) */
INLINE TARGET_AVX2 void step_blocks(const int wt, const int G, const int NR, const int NT,
                                    const int U, int nb, int64_t b0, const char *w, int64_t ldw,
                                    const char *x, int64_t ldx, const float (*s)[STEP],
                                    __m256 *acc) {
    const __m256i low4 = _mm256_set1_epi8(15);
    if (wt == MOECC_Q8) { /* one block per vector */
        for (int j0 = 0; j0 < nb; j0 += U)
            for (int u = 0; u < U; u++) {
                const int j = j0 + u;
                const int64_t b = b0 + j;
                __m256i q[MOECC_TILE_ROWS], absq[MOECC_TILE_ROWS];
                for (int r = 0; r < NR; r++) {
                    q[r] = _mm256_loadu_si256((const __m256i *)(w + r * ldw + 32 * b));
                    absq[r] = _mm256_abs_epi8(q[r]); /* -128 -> 128 as unsigned: exact */
                }
                for (int t = 0; t < NT; t++) {
                    const __m256i a = _mm256_loadu_si256((const __m256i *)(x + t * ldx + 32 * b));
                    for (int r = 0; r < NR; r++) {
                        const __m256 f = _mm256_cvtepi32_ps(idot_s(absq[r], q[r], a));
                        ACC(r, t, u) = _mm256_fmadd_ps(f, _mm256_broadcast_ss(&s[r * NT + t][j]),
                                                       ACC(r, t, u));
                    }
                }
            }
    } else if (G <= 64) {
        /* units of four blocks (64 packed bytes), in halves h of 32 packed bytes: blocks
         * 4k + 2h, 4k + 2h + 1; activations: low part at 32 h, high part at 16 nbu + 32 h of
         * the unit (nbu: its blocks) */
        const int UH = U > 1 ? U / 2 : 1; /* halves per round (G = 64: two vectors each) */
        for (int h0 = 0; h0 < (nb + 1) / 2; h0 += UH)
            for (int hh = 0; hh < UH; hh++) {
                const int hv = h0 + hh, k = hv / 2, h = hv % 2;
                const int nbu = nb - 4 * k < 4 ? nb - 4 * k : 4, j = 2 * hv;
                const int n = 16 * (nbu - 2 * h < 2 ? nbu - 2 * h : 2); /* bytes of this half */
                const int ul = U > 1 ? 2 * hh : 0, uh = U > 1 ? 2 * hh + 1 : 0;
                __m256i lo[MOECC_TILE_ROWS], hi[MOECC_TILE_ROWS];
                for (int r = 0; r < NR; r++) {
                    const __m256i p = load_bytes(w + r * ldw + 16 * (b0 + j), n);
                    lo[r] = _mm256_and_si256(p, low4);
                    hi[r] = _mm256_and_si256(_mm256_srli_epi16(p, 4), low4);
                }
                for (int t = 0; t < NT; t++) {
                    const char *xu = x + t * ldx + 32 * (b0 + 4 * k);
                    const __m256i al = load_bytes(xu + 32 * h, n);
                    const __m256i ah = load_bytes(xu + 16 * nbu + 32 * h, n);
                    for (int r = 0; r < NR; r++) {
                        const float *sr = s[r * NT + t];
                        if (G == 32) {
                            const __m256 f = _mm256_cvtepi32_ps(idot_u2(lo[r], al, hi[r], ah));
                            ACC(r, t, ul) = _mm256_fmadd_ps(f, two_scales(sr, j), ACC(r, t, ul));
                        } else {
                            const __m256 fl = _mm256_cvtepi32_ps(idot_u(lo[r], al));
                            const __m256 fh = _mm256_cvtepi32_ps(idot_u(hi[r], ah));
                            ACC(r, t, ul) = _mm256_fmadd_ps(fl, _mm256_broadcast_ss(sr + j),
                                                            ACC(r, t, ul));
                            ACC(r, t, uh) = _mm256_fmadd_ps(fh, _mm256_broadcast_ss(sr + j + 1),
                                                            ACC(r, t, uh));
                        }
                    }
                }
            }
    } else { /* q4, G >= 128: chunk c of 32 packed bytes -> blocks jl (low nibbles), jh (high) */
        const int UC = U > 1 ? U / 2 : 1; /* chunks per round: two blocks each */
        for (int c0 = 0; c0 < nb / 2; c0 += UC)
            for (int cc = 0; cc < UC; cc++) {
                const int c = c0 + cc, ul = U > 1 ? 2 * cc : 0, uh = U > 1 ? 2 * cc + 1 : 0;
                const int jl = c / (G / 64) * (G / 32) + c % (G / 64), jh = jl + G / 64;
                __m256i lo[MOECC_TILE_ROWS], hi[MOECC_TILE_ROWS];
                for (int r = 0; r < NR; r++) {
                    const __m256i p =
                        _mm256_loadu_si256((const __m256i *)(w + r * ldw + 16 * b0 + 32 * c));
                    lo[r] = _mm256_and_si256(p, low4);
                    hi[r] = _mm256_and_si256(_mm256_srli_epi16(p, 4), low4);
                }
                for (int t = 0; t < NT; t++) {
                    const char *xt = x + t * ldx + 32 * b0;
                    const __m256i al = _mm256_loadu_si256((const __m256i *)(xt + 32 * jl));
                    const __m256i ah = _mm256_loadu_si256((const __m256i *)(xt + 32 * jh));
                    for (int r = 0; r < NR; r++) {
                        const __m256 fl = _mm256_cvtepi32_ps(idot_u(lo[r], al));
                        const __m256 fh = _mm256_cvtepi32_ps(idot_u(hi[r], ah));
                        ACC(r, t, ul) = _mm256_fmadd_ps(
                            fl, _mm256_broadcast_ss(&s[r * NT + t][jl]), ACC(r, t, ul));
                        ACC(r, t, uh) = _mm256_fmadd_ps(
                            fh, _mm256_broadcast_ss(&s[r * NT + t][jh]), ACC(r, t, uh));
                    }
                }
            }
    }
}

/* Register block: NR rows x NT tokens, U accumulators per (row, token); every size a
 * compile-time constant once inlined. out[t*ldo + r] = W[r] . X[t]. */
INLINE TARGET_AVX2 void block(const int wt, const int G, const int NR, const int NT, const int U,
                              int64_t K, const char *w, int64_t ldw, const char *x, int64_t ldx,
                              float *out, int64_t ldo) {
    const int64_t nblocks = K / MOECC_QBLOCK;
    const int64_t qbytes = wt == MOECC_Q8 ? K : K / 2; /* the scales follow the q */
    const int bias = wt == MOECC_Q4 ? 8 : 0;
    __m256 acc[MAX_ACC];
    for (int i = 0; i < NR * NT * U; i++) acc[i] = _mm256_setzero_ps();
    _Alignas(32) float s[MOECC_TILE_ROWS * MAX_NT][STEP]; /* s[r*NT + t][j] */
    /* sweep-prefetch the NR rows a few tiles on (PF_BYTES: measured best for q4 and q8), a share
     * per step: DRAM then sees one sequential stream instead of NR interleaved ones */
    const char *pf = w + (PF_BYTES + NR * ldw - 1) / (NR * ldw) * NR * ldw;
    const int64_t pf_step = NR > 1 ? (NR * ldw * STEP / nblocks + 63) & ~(int64_t)63 : 0;

    for (int64_t b0 = 0; b0 < nblocks; b0 += STEP) {
        const int nb = nblocks - b0 < STEP ? (int)(nblocks - b0) : STEP;
        for (int64_t b = 0; b < pf_step; b += 64) _mm_prefetch(pf + b, _MM_HINT_T0);
        pf += pf_step;
        /* the step's scales s = dx * dw, and the bias correction -bias * sum(a) * s */
        __m256 dw[MOECC_TILE_ROWS], dx[MAX_NT], corr[MAX_NT];
        if (nb == STEP) {
            for (int r = 0; r < NR; r++) dw[r] = step_dw(G, w + r * ldw + qbytes, b0);
            for (int t = 0; t < NT; t++) {
                const char *xt = x + t * ldx;
                dx[t] = _mm256_loadu_ps(moecc_xq_scales(xt, K) + b0);
                corr[t] = _mm256_cvtepi32_ps(
                    _mm256_loadu_si256((const __m256i *)(moecc_xq_sums(xt, K) + b0)));
            }
        } else { /* the last, short step: scalar, zero-padded */
            _Alignas(32) float buf[STEP];
            for (int r = 0; r < NR; r++) {
                for (int j = 0; j < STEP; j++)
                    buf[j] = j < nb ? moecc_f16_to_f32(moecc_q_scale_bits(
                                          wt, w + r * ldw, K, (b0 + j) * MOECC_QBLOCK / G))
                                    : 0.0f;
                dw[r] = _mm256_load_ps(buf);
            }
            for (int t = 0; t < NT; t++) {
                const char *xt = x + t * ldx;
                for (int j = 0; j < STEP; j++) buf[j] = j < nb ? moecc_xq_scales(xt, K)[b0 + j] : 0;
                dx[t] = _mm256_load_ps(buf);
                for (int j = 0; j < STEP; j++)
                    buf[j] = j < nb ? (float)moecc_xq_sums(xt, K)[b0 + j] : 0.0f;
                corr[t] = _mm256_load_ps(buf);
            }
        }
        for (int t = 0; t < NT; t++) corr[t] = _mm256_mul_ps(corr[t], _mm256_set1_ps(-bias));
        for (int r = 0; r < NR; r++)
            for (int t = 0; t < NT; t++) {
                const __m256 sv = _mm256_mul_ps(dx[t], dw[r]);
                _mm256_store_ps(s[r * NT + t], sv);
                if (bias) ACC(r, t, 0) = _mm256_fmadd_ps(sv, corr[t], ACC(r, t, 0));
            }
        if (nb == STEP)
            step_blocks(wt, G, NR, NT, U, STEP, b0, w, ldw, x, ldx, s, acc);
        else
            step_blocks(wt, G, NR, NT, 1, nb, b0, w, ldw, x, ldx, s, acc);
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) {
            __m256 sum = ACC(r, t, 0);
            for (int u = 1; u < U; u++) sum = _mm256_add_ps(sum, ACC(r, t, u));
            out[t * ldo + r] = hsum(sum);
        }
}

#undef ACC

/* The tile for one group size. Four rows: 4 x 2 register blocks over the tokens, then 4 x 1
 * (decode: four rows side by side, one accumulator each, with the sweep prefetch); fewer rows:
 * row by row, tokens two or one at a time. */
INLINE TARGET_AVX2 void tile_g(const int wt, const int G, int64_t K, const char *w, int64_t ldw,
                               int nr, const char *x, int64_t ldx, int nt, float *out,
                               int64_t ldo) {
    int t = 0;
    if (nr == MOECC_TILE_ROWS) {
        for (; t + MAX_NT <= nt; t += MAX_NT)
            block(wt, G, MOECC_TILE_ROWS, MAX_NT, 1, K, w, ldw, x + t * ldx, ldx, out + t * ldo,
                  ldo);
        if (t < nt)
            block(wt, G, MOECC_TILE_ROWS, 1, 1, K, w, ldw, x + t * ldx, ldx, out + t * ldo, ldo);
        return;
    }
    for (int r = 0; r < nr; r++) {
        const char *wr = w + r * ldw;
        float *o = out + r;
        for (t = 0; t + 2 <= nt; t += 2)
            block(wt, G, 1, 2, 2, K, wr, ldw, x + t * ldx, ldx, o + t * ldo, ldo);
        if (t < nt) block(wt, G, 1, 1, 4, K, wr, ldw, x + t * ldx, ldx, o + t * ldo, ldo);
    }
}

INLINE TARGET_AVX2 void tile_q(const int wt, int64_t K, int G, const void *w, int64_t ldw, int nr,
                               const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    const char *wp = (const char *)w, *xp = (const char *)x;
    switch (G) {
    case 32: tile_g(wt, 32, K, wp, ldw, nr, xp, ldx, nt, out, ldo); break;
    case 64: tile_g(wt, 64, K, wp, ldw, nr, xp, ldx, nt, out, ldo); break;
    case 128: tile_g(wt, 128, K, wp, ldw, nr, xp, ldx, nt, out, ldo); break;
    default: tile_g(wt, 256, K, wp, ldw, nr, xp, ldx, nt, out, ldo); break;
    }
}

TARGET_AVX2 void moecc_tile_q8_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                                    const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_Q8, K, MOECC_QBLOCK, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_AVX2 void moecc_tile_q4_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                                    const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_Q4, K, MOECC_QBLOCK, w, ldw, nr, x, ldx, nt, out, ldo);
}

/* ---- activation quantization ------------------------------------------------------------- */

/* As moecc_quantize_x (wtype.c), eight lanes at a time: the same float32 operations, and
 * cvtps rounds to nearest even (the default MXCSR mode), so the results are identical. Used by
 * the AVX-512 tables too (it is not where the time goes). */
TARGET_AVX2 void moecc_quantize_x_avx2(moecc_storage f, int64_t K, const float *x, void *xq) {
    int8_t *q = (int8_t *)xq;
    float *d = (float *)((char *)xq + K);
    int32_t *sum = (int32_t *)((char *)xq + K + 4 * (K / MOECC_QBLOCK));
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); /* undo the lane-wise packs */
    for (int64_t b = 0; b < K / MOECC_QBLOCK; b++) {
        const float *xb = x + b * MOECC_QBLOCK;
        __m256 v[4], m = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(xb + 8 * i);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[i]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float scale = _mm_cvtss_f32(m4) / 127.0f;
        const __m256 inv = _mm256_set1_ps(scale > 0.0f ? 1.0f / scale : 0.0f);
        __m256i i32[4];
        for (int i = 0; i < 4; i++) {
            const __m256i r = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], inv));
            i32[i] = _mm256_max_epi32(_mm256_min_epi32(r, _mm256_set1_epi32(127)),
                                      _mm256_set1_epi32(-127));
        }
        const __m256i s2 = _mm256_add_epi32(_mm256_add_epi32(i32[0], i32[1]),
                                            _mm256_add_epi32(i32[2], i32[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s2), _mm256_extracti128_si256(s2, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        const __m256i p16a = _mm256_packs_epi32(i32[0], i32[1]);
        const __m256i p16b = _mm256_packs_epi32(i32[2], i32[3]);
        const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), order);
        int64_t lo, hi;
        moecc_xq_block_at(f, K, b, &lo, &hi);
        _mm_storeu_si128((__m128i *)(q + lo), _mm256_castsi256_si128(p8));
        _mm_storeu_si128((__m128i *)(q + hi), _mm256_extracti128_si256(p8, 1));
        d[b] = scale;
        sum[b] = _mm_cvtsi128_si32(s4);
    }
}

#endif /* MOECC_X86 */
