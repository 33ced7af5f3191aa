/* qdot_avx512.c -- q8 / q4 weights against quantized activations on 512-bit vectors, for the
 * tables avx512 (maddubs, AVX-512 BW) and avx512vnni (dpbusd). The oracle is qdot_generic.c;
 * the scheme is qdot_avx2.c's (read its header first), two blocks per vector:
 *
 *   - one vector holds a pair of activation blocks (64 values, blocks 2P and 2P+1 of a step of
 *     eight): its 16 int32 lanes are the pair's partial sums, scaled lane-wise by the pair's two
 *     scales s = dx * dw, spread over the vector by one permute;
 *   - q8: 64 bytes of q are a pair; q4, G = 32: 32 packed bytes are two groups, their nibbles
 *     permuted into natural order; G = 64: 32 packed bytes are one group, low nibbles then high
 *     nibbles; G >= 128: 64 packed bytes give two pairs at once (low nibbles: blocks j, j+1;
 *     high nibbles: blocks j + G/64, j + G/64 + 1).
 * Half as many instructions as the 256-bit code, which is what limits the 256-bit code on cores
 * that split 512-bit operations in two (Zen 4: ~1.7x the decode speed in cache).
 * A short last step is handled with masked loads (nothing is read past a row) and zero scales. */
#include "moecc.h"

#if MOECC_X86
#include <immintrin.h>

#define TARGET_512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")))
#define TARGET_VNNI \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))

#define STEP 8     /* blocks per step: one vector of scales, four pairs */
#define MAX_ACC 16 /* NR * NT * U never exceeds this */
#define MAX_NT 4   /* tokens of a register block */

enum { MADDUBS = 0, DPBUSD = 1 };

/* int32 x 16 partial sums of a pair of blocks: u the unsigned weight operand, sq the signed q
 * (q8 with maddubs only), a the activations */
typedef __m512i (*idot_fn)(__m512i u, __m512i sq, __m512i a);

INLINE TARGET_512 __m512i idot_maddubs(__m512i u, __m512i sq, __m512i a) {
    (void)sq;
    return _mm512_madd_epi16(_mm512_maddubs_epi16(u, a), _mm512_set1_epi16(1));
}

/* |q| . (a with the sign of q); AVX-512 has no sign_epi8: negate a where q < 0 */
INLINE TARGET_512 __m512i idot_maddubs_signed(__m512i u, __m512i sq, __m512i a) {
    const __m512i sa = _mm512_mask_sub_epi8(a, _mm512_movepi8_mask(sq), _mm512_setzero_si512(), a);
    return _mm512_madd_epi16(_mm512_maddubs_epi16(u, sa), _mm512_set1_epi16(1));
}

INLINE TARGET_VNNI __m512i idot_dpbusd(__m512i u, __m512i sq, __m512i a) {
    (void)sq;
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, a);
}

/* mask of the first n of 64 bytes */
INLINE TARGET_512 __mmask64 first_bytes(int n) {
    return n >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << n) - 1);
}

/* The weight operand of the pair of blocks b, b+1 of a q8 row, or of a q4 row with G <= 64
 * (one = 1: only block b exists, the tail of a row) */
INLINE TARGET_512 void unpack_pair(const int wt, const int mode, const int G, const char *row,
                                   int64_t b, int one, __m512i *u, __m512i *sq) {
    const __m512i low4 = _mm512_set1_epi8(15);
    if (wt == MOECC_W_Q8) {
        const __m512i q = _mm512_maskz_loadu_epi8(first_bytes(one ? 32 : 64), row + 32 * b);
        if (mode == DPBUSD) {
            *u = _mm512_xor_si512(q, _mm512_set1_epi8((char)0x80));
        } else {
            *u = _mm512_abs_epi8(q); /* -128 -> 128 as unsigned: still exact */
            *sq = q;
        }
        return;
    }
    const __m256i p = _mm256_maskz_loadu_epi8(one ? 0xFFFFu : 0xFFFFFFFFu, row + 16 * b);
    const __m256i h = _mm256_srli_epi16(p, 4);
    __m512i z;
    if (G == 32) { /* [g0 low | g1 low], [g0 high | g1 high] -> g0 low, g0 high, g1 low, g1 high */
        const __m512i order = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11);
        z = _mm512_permutex2var_epi64(_mm512_castsi256_si512(p), order, _mm512_castsi256_si512(h));
    } else { /* G = 64: one group, low nibbles (values 0..31) then high nibbles (32..63) */
        z = _mm512_inserti64x4(_mm512_castsi256_si512(p), h, 1);
    }
    *u = *sq = _mm512_and_si512(z, low4);
}

/* pair scales: lanes 0-7 s[2P], lanes 8-15 s[2P+1] */
INLINE TARGET_512 __m512i pair_index(int P) {
    return _mm512_setr_epi32(2 * P, 2 * P, 2 * P, 2 * P, 2 * P, 2 * P, 2 * P, 2 * P, 2 * P + 1,
                             2 * P + 1, 2 * P + 1, 2 * P + 1, 2 * P + 1, 2 * P + 1, 2 * P + 1,
                             2 * P + 1);
}

/* the 8 weight scales of the blocks b0 .. b0+7 of a row (group = block * 32 / G) as float */
INLINE TARGET_512 __m256 step_dw(const int G, const char *scales, int64_t b0) {
    const __m128i h = _mm_maskz_loadu_epi16((__mmask8)((1u << (STEP * MOECC_QBLOCK / G)) - 1),
                                            scales + 2 * (b0 * MOECC_QBLOCK / G));
    const __m256 d = _mm256_cvtph_ps(h);
    if (G == 32) return d;
    const __m256i idx = G == 64    ? _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)
                        : G == 128 ? _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1)
                                   : _mm256_setzero_si256();
    return _mm256_permutevar8x32_ps(d, idx);
}

#define ACC(r, t, u) acc[((u) * NR + (r)) * NT + (t)]

/* acc(r, t, u) += the pair P of the step at b0 for every row and token; wu, wq: its weights */
INLINE TARGET_512 void pair_dots(idot_fn idot, const int NR, const int NT, const int u, int P,
                                 int64_t b0, int one, const __m512i *wu, const __m512i *wq,
                                 const char *x, int64_t ldx, const float (*s)[STEP],
                                 __m512 *acc) {
    const __m512i idx = pair_index(P);
    for (int t = 0; t < NT; t++) {
        const __m512i a =
            _mm512_maskz_loadu_epi8(first_bytes(one ? 32 : 64), x + t * ldx + 32 * (b0 + 2 * P));
        for (int r = 0; r < NR; r++) {
            const __m512 f = _mm512_cvtepi32_ps(idot(wu[r], wq[r], a));
            const __m512 sv = _mm512_permutexvar_ps(
                idx, _mm512_castps256_ps512(_mm256_load_ps(s[r * NT + t])));
            ACC(r, t, u) = _mm512_fmadd_ps(f, sv, ACC(r, t, u));
        }
    }
}

/* acc += the blocks [0, nb) of the step at block b0; a full step sends pair P to accumulator
 * P % U (the loops over u are the compile-time ones) */
INLINE TARGET_512 void step_pairs(const int wt, const int mode, idot_fn idot, const int G,
                                  const int NR, const int NT, const int U, int nb, int64_t b0,
                                  const char *w, int64_t ldw, const char *x, int64_t ldx,
                                  const float (*s)[STEP], __m512 *acc) {
    __m512i wu[MOECC_TILE_ROWS], wq[MOECC_TILE_ROWS];
    if (wt == MOECC_W_Q8 || G <= 64) {
        const int npairs = (nb + 1) / 2;
        for (int P0 = 0; P0 < npairs; P0 += U)
            for (int u = 0; u < U; u++) {
                const int P = P0 + u, one = 2 * P + 1 == nb;
                for (int r = 0; r < NR; r++)
                    unpack_pair(wt, mode, G, w + r * ldw, b0 + 2 * P, one, &wu[r], &wq[r]);
                pair_dots(idot, NR, NT, u, P, b0, one, wu, wq, x, ldx, s, acc);
            }
    } else { /* q4, G >= 128: 64 packed bytes (k) -> pairs Pl (low nibbles) and Ph (high) */
        const __m512i low4 = _mm512_set1_epi8(15);
        const int UK = U > 1 ? U / 2 : 1;
        for (int k0 = 0; k0 < nb / 4; k0 += UK)
            for (int kk = 0; kk < UK; kk++) {
                const int k = k0 + kk, ul = U > 1 ? 2 * kk : 0, uh = U > 1 ? 2 * kk + 1 : 0;
                const int jl = 64 * k / (G / 2) * (G / 32) + 64 * k % (G / 2) / 32;
                const int Pl = jl / 2, Ph = (jl + G / 64) / 2;
                __m512i hi[MOECC_TILE_ROWS];
                for (int r = 0; r < NR; r++) {
                    const __m512i p = _mm512_loadu_si512(w + r * ldw + 16 * b0 + 64 * k);
                    wu[r] = _mm512_and_si512(p, low4);
                    hi[r] = _mm512_and_si512(_mm512_srli_epi16(p, 4), low4);
                }
                pair_dots(idot, NR, NT, ul, Pl, b0, 0, wu, wu, x, ldx, s, acc);
                pair_dots(idot, NR, NT, uh, Ph, b0, 0, hi, hi, x, ldx, s, acc);
            }
    }
}

/* Register block: NR rows x NT tokens, U accumulators per pair of (row, token); every size a
 * compile-time constant once inlined. out[t*ldo + r] = W[r] . X[t]. */
INLINE TARGET_512 void block(const int wt, const int mode, idot_fn idot, const int G,
                             const int NR, const int NT, const int U, int64_t K, const char *w,
                             int64_t ldw, const char *x, int64_t ldx, float *out, int64_t ldo) {
    const int64_t nblocks = K / MOECC_QBLOCK;
    const int64_t qbytes = wt == MOECC_W_Q8 ? K : K / 2; /* the scales follow the q */
    const int bias = wt == MOECC_W_Q4 ? 8 : mode == DPBUSD ? 128 : 0;
    const __m256 nbias = _mm256_set1_ps(-(float)bias);
    __m512 acc[MAX_ACC];
    for (int i = 0; i < NR * NT * U; i++) acc[i] = _mm512_setzero_ps();
    _Alignas(32) float s[MOECC_TILE_ROWS * MAX_NT][STEP]; /* s[r*NT + t][j] */

    for (int64_t b0 = 0; b0 < nblocks; b0 += STEP) {
        const int nb = nblocks - b0 < STEP ? (int)(nblocks - b0) : STEP;
        const __mmask8 live = (__mmask8)((1u << nb) - 1);
        /* the step's scales s = dx * dw, and the bias correction -bias * sum(a) * s */
        __m256 dw[MOECC_TILE_ROWS], dx[MAX_NT], corr[MAX_NT];
        for (int r = 0; r < NR; r++) {
            if (nb == STEP) {
                dw[r] = step_dw(G, w + r * ldw + qbytes, b0);
            } else { /* the last, short step: scalar, zero-padded */
                _Alignas(32) float buf[STEP];
                for (int j = 0; j < STEP; j++)
                    buf[j] = j < nb ? moecc_f16_to_f32(moecc_q_scale_bits(
                                          wt, w + r * ldw, K, (b0 + j) * MOECC_QBLOCK / G))
                                    : 0.0f;
                dw[r] = _mm256_load_ps(buf);
            }
        }
        for (int t = 0; t < NT; t++) {
            const char *xt = x + t * ldx;
            dx[t] = _mm256_maskz_loadu_ps(live, moecc_xq_scales(xt, K) + b0);
            corr[t] = _mm256_mul_ps(
                _mm256_cvtepi32_ps(_mm256_maskz_loadu_epi32(live, moecc_xq_sums(xt, K) + b0)),
                nbias);
        }
        for (int r = 0; r < NR; r++)
            for (int t = 0; t < NT; t++) {
                const __m256 sv = _mm256_mul_ps(dx[t], dw[r]);
                _mm256_store_ps(s[r * NT + t], sv);
                if (bias)
                    ACC(r, t, 0) = _mm512_add_ps(
                        ACC(r, t, 0), _mm512_zextps256_ps512(_mm256_mul_ps(sv, corr[t])));
            }
        if (nb == STEP)
            step_pairs(wt, mode, idot, G, NR, NT, U, STEP, b0, w, ldw, x, ldx, s, acc);
        else
            step_pairs(wt, mode, idot, G, NR, NT, 1, nb, b0, w, ldw, x, ldx, s, acc);
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) {
            __m512 sum = ACC(r, t, 0);
            for (int u = 1; u < U; u++) sum = _mm512_add_ps(sum, ACC(r, t, u));
            out[t * ldo + r] = _mm512_reduce_add_ps(sum);
        }
}

#undef ACC

/* The tile for one group size: NR x NT register blocks over the rows and tokens, then the
 * leftover tokens a row at a time (decode: one row, one token, four accumulators). */
INLINE TARGET_512 void tile_g(const int wt, const int mode, idot_fn idot, const int G, int64_t K,
                              const char *w, int64_t ldw, int nr, const char *x, int64_t ldx,
                              int nt, float *out, int64_t ldo) {
    int t0 = 0;
    if (nr == MOECC_TILE_ROWS && nt >= MAX_NT) {
        for (; t0 + MAX_NT <= nt; t0 += MAX_NT)
            block(wt, mode, idot, G, MOECC_TILE_ROWS, MAX_NT, 1, K, w, ldw, x + t0 * ldx, ldx,
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

INLINE TARGET_512 void tile_q(const int wt, const int mode, idot_fn idot, int64_t K, int G,
                              const void *w, int64_t ldw, int nr, const void *x, int64_t ldx,
                              int nt, float *out, int64_t ldo) {
    const char *wp = (const char *)w, *xp = (const char *)x;
    switch (G) {
    case 32: tile_g(wt, mode, idot, 32, K, wp, ldw, nr, xp, ldx, nt, out, ldo); break;
    case 64: tile_g(wt, mode, idot, 64, K, wp, ldw, nr, xp, ldx, nt, out, ldo); break;
    case 128: tile_g(wt, mode, idot, 128, K, wp, ldw, nr, xp, ldx, nt, out, ldo); break;
    default: tile_g(wt, mode, idot, 256, K, wp, ldw, nr, xp, ldx, nt, out, ldo); break;
    }
}

/* ---- the entry points of the two tables -------------------------------------------------- */

TARGET_512 void moecc_tile_q8_avx512(int64_t K, int group, const void *w, int64_t ldw, int nr,
                                     const void *x, int64_t ldx, int nt, float *out,
                                     int64_t ldo) {
    tile_q(MOECC_W_Q8, MADDUBS, idot_maddubs_signed, K, group, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_512 void moecc_tile_q4_avx512(int64_t K, int group, const void *w, int64_t ldw, int nr,
                                     const void *x, int64_t ldx, int nt, float *out,
                                     int64_t ldo) {
    tile_q(MOECC_W_Q4, MADDUBS, idot_maddubs, K, group, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_VNNI void moecc_tile_q8_avx512vnni(int64_t K, int group, const void *w, int64_t ldw,
                                          int nr, const void *x, int64_t ldx, int nt, float *out,
                                          int64_t ldo) {
    tile_q(MOECC_W_Q8, DPBUSD, idot_dpbusd, K, group, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_VNNI void moecc_tile_q4_avx512vnni(int64_t K, int group, const void *w, int64_t ldw,
                                          int nr, const void *x, int64_t ldx, int nt, float *out,
                                          int64_t ldo) {
    tile_q(MOECC_W_Q4, DPBUSD, idot_dpbusd, K, group, w, ldw, nr, x, ldx, nt, out, ldo);
}

#endif /* MOECC_X86 */
