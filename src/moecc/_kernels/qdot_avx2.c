/* qdot_avx2.c -- q8 / q4 weights against quantized activations with AVX2 integer SIMD (the
 * avx2 table; qdot_avx512.c does the same on 512-bit vectors). The oracle is qdot_generic.c.
 *
 * One 256-bit vector is one activation block of 32 values: its int32 partial sums (8 lanes),
 * converted to float, are scaled by s = dx[block] * dw[group] and accumulated in float:
 *
 *     acc += float(isum(block)) * s(block)          row . x = hsum(acc)
 *
 * The int8 products go through instructions that take one unsigned and one signed operand
 * (maddubs here, dpbusd in qdot_avx512.c):
 *   - q4: the nibble u = q + 8 is the unsigned operand, u . a = q . a + 8 sum(a);
 *   - q8 with dpbusd: u = q + 128 (q xor 0x80), u . a = q . a + 128 sum(a);
 *   - q8 with maddubs: |q| . (a with the sign of q) (q + 128 would saturate maddubs' int16).
 * The bias * sum(a) terms come off in float: acc -= bias * s(block) * sum(block), with sum(a)
 * stored beside the quantized activations (moecc.h), eight blocks per vector operation.
 *
 * Weights are visited in steps of eight blocks (256 values): the step's eight scales s for each
 * (row, token) are made with a few vector operations and parked on the stack, from where each
 * block broadcasts its own. q4 rows unpack 32 packed bytes into two blocks at once (low nibbles:
 * values j.., high nibbles: values j + G/2..), or 16 bytes into one block when G = 32.
 *
 * The int product is passed to the (always inlined) loops as a function, so the AVX-512 file can
 * reuse the pattern with a product compiled for a wider target (a function of a wider target
 * cannot be inlined into a narrower one; the other way round is fine). */
#include "moecc.h"

#if MOECC_X86
#include <immintrin.h>

#define TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

#define STEP 8        /* blocks per step: one vector of scales */
#define MAX_ACC 16    /* NR * NT * U never exceeds this */
#define MAX_NT 4      /* tokens of a register block */

/* How a block's int8 products are formed (see the top of the file). */
enum { MADDUBS = 0, DPBUSD = 1 };

/* int32 x 8 partial sums of one block: u the unsigned weight operand, sq the signed q (q8 with
 * maddubs only: its signs go to a), a the activations */
typedef __m256i (*idot_fn)(__m256i u, __m256i sq, __m256i a);

INLINE TARGET_AVX2 __m256i idot_maddubs(__m256i u, __m256i sq, __m256i a) {
    (void)sq;
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1));
}

INLINE TARGET_AVX2 __m256i idot_maddubs_signed(__m256i u, __m256i sq, __m256i a) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(a, sq)),
                             _mm256_set1_epi16(1));
}

INLINE TARGET_AVX2 float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* the weight operand of a block from its int8 q (q8): the unsigned u, and sq for maddubs */
INLINE TARGET_AVX2 void prep_q8(const int mode, __m256i q, __m256i *u, __m256i *sq) {
    if (mode == DPBUSD) {
        *u = _mm256_xor_si256(q, _mm256_set1_epi8((char)0x80));
    } else {
        *u = _mm256_abs_epi8(q); /* -128 -> 128 as unsigned: still exact */
        *sq = q;
    }
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

/* acc += the blocks [0, nb) of the step at block b0 (U accumulators per pair: block j of a full
 * step goes to j % U; the loops over u are the compile-time ones) */
INLINE TARGET_AVX2 void step_blocks(const int wt, const int mode, idot_fn idot, const int G,
                                    const int NR, const int NT, const int U, int nb, int64_t b0,
                                    const char *w, int64_t ldw, const char *x, int64_t ldx,
                                    const float (*s)[STEP], __m256 *acc) {
    if (wt == MOECC_W_Q8 || G == 32) { /* one block at a time */
        for (int j0 = 0; j0 < nb; j0 += U)
            for (int u = 0; u < U; u++) {
                const int j = j0 + u;
                const int64_t b = b0 + j;
                __m256i wu[MOECC_TILE_ROWS], wq[MOECC_TILE_ROWS];
                for (int r = 0; r < NR; r++) {
                    const char *row = w + r * ldw;
                    if (wt == MOECC_W_Q8) {
                        const __m256i q = _mm256_loadu_si256((const __m256i *)(row + 32 * b));
                        prep_q8(mode, q, &wu[r], &wq[r]);
                    } else {
                        const __m128i p = _mm_loadu_si128((const __m128i *)(row + 16 * b));
                        const __m256i nib = _mm256_set_m128i(_mm_srli_epi16(p, 4), p);
                        wu[r] = wq[r] = _mm256_and_si256(nib, _mm256_set1_epi8(15));
                    }
                }
                for (int t = 0; t < NT; t++) {
                    const __m256i a = _mm256_loadu_si256((const __m256i *)(x + t * ldx + 32 * b));
                    for (int r = 0; r < NR; r++) {
                        const __m256 f = _mm256_cvtepi32_ps(idot(wu[r], wq[r], a));
                        ACC(r, t, u) = _mm256_fmadd_ps(f, _mm256_broadcast_ss(&s[r * NT + t][j]),
                                                       ACC(r, t, u));
                    }
                }
            }
    } else { /* q4, G >= 64: chunk c of 32 packed bytes -> blocks jl (low nibbles), jh (high) */
        const int UC = U > 1 ? U / 2 : 1; /* chunks per round: two blocks each */
        for (int c0 = 0; c0 < nb / 2; c0 += UC)
            for (int cc = 0; cc < UC; cc++) {
                const int c = c0 + cc, ul = U > 1 ? 2 * cc : 0, uh = U > 1 ? 2 * cc + 1 : 0;
                const int jl = c / (G / 64) * (G / 32) + c % (G / 64), jh = jl + G / 64;
                __m256i lo[MOECC_TILE_ROWS], hi[MOECC_TILE_ROWS];
                for (int r = 0; r < NR; r++) {
                    const __m256i p =
                        _mm256_loadu_si256((const __m256i *)(w + r * ldw + 16 * b0 + 32 * c));
                    lo[r] = _mm256_and_si256(p, _mm256_set1_epi8(15));
                    hi[r] = _mm256_and_si256(_mm256_srli_epi16(p, 4), _mm256_set1_epi8(15));
                }
                for (int t = 0; t < NT; t++) {
                    const char *xt = x + t * ldx + 32 * b0;
                    const __m256i al = _mm256_loadu_si256((const __m256i *)(xt + 32 * jl));
                    const __m256i ah = _mm256_loadu_si256((const __m256i *)(xt + 32 * jh));
                    for (int r = 0; r < NR; r++) {
                        const __m256 fl = _mm256_cvtepi32_ps(idot(lo[r], lo[r], al));
                        const __m256 fh = _mm256_cvtepi32_ps(idot(hi[r], hi[r], ah));
                        ACC(r, t, ul) = _mm256_fmadd_ps(
                            fl, _mm256_broadcast_ss(&s[r * NT + t][jl]), ACC(r, t, ul));
                        ACC(r, t, uh) = _mm256_fmadd_ps(
                            fh, _mm256_broadcast_ss(&s[r * NT + t][jh]), ACC(r, t, uh));
                    }
                }
            }
    }
}

/* Register block: NR rows x NT tokens, U accumulators per pair along the blocks; every size a
 * compile-time constant once inlined. out[t*ldo + r] = W[r] . X[t]. */
INLINE TARGET_AVX2 void block(const int wt, const int mode, idot_fn idot, const int G,
                              const int NR, const int NT, const int U, int64_t K, const char *w,
                              int64_t ldw, const char *x, int64_t ldx, float *out, int64_t ldo) {
    const int64_t nblocks = K / MOECC_QBLOCK;
    const int64_t qbytes = wt == MOECC_W_Q8 ? K : K / 2; /* the scales follow the q */
    const int bias = wt == MOECC_W_Q4 ? 8 : mode == DPBUSD ? 128 : 0;
    const __m256 nbias = _mm256_set1_ps(-(float)bias);
    __m256 acc[MAX_ACC];
    for (int i = 0; i < NR * NT * U; i++) acc[i] = _mm256_setzero_ps();
    _Alignas(32) float s[MOECC_TILE_ROWS * MAX_NT][STEP]; /* s[r*NT + t][j] */

    for (int64_t b0 = 0; b0 < nblocks; b0 += STEP) {
        const int nb = nblocks - b0 < STEP ? (int)(nblocks - b0) : STEP;
        /* the step's scales s = dx * dw, and the bias correction -bias * sum(a) */
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
        for (int t = 0; t < NT; t++) corr[t] = _mm256_mul_ps(corr[t], nbias);
        for (int r = 0; r < NR; r++)
            for (int t = 0; t < NT; t++) {
                const __m256 sv = _mm256_mul_ps(dx[t], dw[r]);
                _mm256_store_ps(s[r * NT + t], sv);
                if (bias) ACC(r, t, 0) = _mm256_fmadd_ps(sv, corr[t], ACC(r, t, 0));
            }
        if (nb == STEP)
            step_blocks(wt, mode, idot, G, NR, NT, U, STEP, b0, w, ldw, x, ldx, s, acc);
        else
            step_blocks(wt, mode, idot, G, NR, NT, 1, nb, b0, w, ldw, x, ldx, s, acc);
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) {
            __m256 sum = ACC(r, t, 0);
            for (int u = 1; u < U; u++) sum = _mm256_add_ps(sum, ACC(r, t, u));
            out[t * ldo + r] = hsum(sum);
        }
}

#undef ACC

/* The tile for one group size: NR x NT register blocks over the rows and tokens, then the
 * leftover tokens a row at a time (decode: one row, one token, four accumulators). */
INLINE TARGET_AVX2 void tile_g(const int wt, const int mode, idot_fn idot, const int G,
                               const int NT, int64_t K, const char *w, int64_t ldw, int nr,
                               const char *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    int t0 = 0;
    if (nr == MOECC_TILE_ROWS && nt >= NT) {
        for (; t0 + NT <= nt; t0 += NT)
            block(wt, mode, idot, G, MOECC_TILE_ROWS, NT, 1, K, w, ldw, x + t0 * ldx, ldx,
                  out + t0 * ldo, ldo);
    }
    for (int r = 0; r < nr; r++) {
        const char *wr = w + r * ldw;
        float *o = out + r;
        int t = t0;
        for (; t + 2 <= nt; t += 2)
            block(wt, mode, idot, G, 1, 2, 2, K, wr, ldw, x + t * ldx, ldx, o + t * ldo, ldo);
        if (t < nt)
            block(wt, mode, idot, G, 1, 1, 4, K, wr, ldw, x + t * ldx, ldx, o + t * ldo, ldo);
    }
}

INLINE TARGET_AVX2 void tile_q(const int wt, const int mode, idot_fn idot, const int NT,
                               int64_t K, int G, const void *w, int64_t ldw, int nr,
                               const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    const char *wp = (const char *)w, *xp = (const char *)x;
    switch (G) {
    case 32: tile_g(wt, mode, idot, 32, NT, K, wp, ldw, nr, xp, ldx, nt, out, ldo); break;
    case 64: tile_g(wt, mode, idot, 64, NT, K, wp, ldw, nr, xp, ldx, nt, out, ldo); break;
    case 128: tile_g(wt, mode, idot, 128, NT, K, wp, ldw, nr, xp, ldx, nt, out, ldo); break;
    default: tile_g(wt, mode, idot, 256, NT, K, wp, ldw, nr, xp, ldx, nt, out, ldo); break;
    }
}

/* ---- activation quantization ------------------------------------------------------------- */

/* As moecc_quantize_x (wtype.c), eight lanes at a time: the same float32 operations, and
 * cvtps rounds to nearest even (the default MXCSR mode), so the results are identical. */
TARGET_AVX2 void moecc_quantize_x_avx2(int64_t K, const float *x, void *xq) {
    int8_t *q = (int8_t *)xq;
    float *d = (float *)((char *)xq + K);
    int32_t *sum = (int32_t *)((char *)xq + K + 4 * (K / MOECC_QBLOCK));
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); /* undo the lane-wise packs */
    for (int64_t b = 0; b < K / MOECC_QBLOCK; b++) {
        const float *xb = x + b * MOECC_QBLOCK;
        __m256 v[4];
        for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(xb + 8 * i);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
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
        const __m256i p16 = _mm256_packs_epi32(i32[0], i32[1]), p16b = _mm256_packs_epi32(i32[2], i32[3]);
        const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16, p16b), order);
        _mm256_storeu_si256((__m256i *)(q + b * MOECC_QBLOCK), p8);
        d[b] = scale;
        sum[b] = _mm_cvtsi128_si32(s4);
    }
}

/* ---- the entry points of the avx2 table ------------------------------------------------ */

TARGET_AVX2 void moecc_tile_q8_avx2(int64_t K, int group, const void *w, int64_t ldw, int nr,
                                    const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_W_Q8, MADDUBS, idot_maddubs_signed, 2, K, group, w, ldw, nr, x, ldx, nt, out,
           ldo);
}

TARGET_AVX2 void moecc_tile_q4_avx2(int64_t K, int group, const void *w, int64_t ldw, int nr,
                                    const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_W_Q4, MADDUBS, idot_maddubs, 2, K, group, w, ldw, nr, x, ldx, nt, out, ldo);
}

#endif /* MOECC_X86 */
