/* qdot_x86.c -- blocks of 32 (q8, q4, q4_1, q5_0, q5_1) against q8_32 activations with x86
 * integer SIMD, for the tables avx2, avx512 and avx512vnni. The oracle is qdot_generic.c.
 *
 * One copy of the loops, on 256-bit vectors, serves the three tables: the loops are compiled
 * for AVX2 and inlined (always_inline) into each table's entry points, which pass the int8 dot
 * product, the fp16 conversion and the register block. A function of a narrower target inlines
 * into a wider one, so the AVX-512 entry points get 32 registers (four tokens a register block)
 * and, for avx512vnni, dpbusd. 256-bit vectors because of the block layout (moecc.h: q8 / q4
 * rows are ggml's Q8_0 / Q4_0 blocks, each block's fp16 scale before its values): one block is
 * one vector, its values one plain load; packing two or four blocks into a 512-bit vector takes
 * a permute per row and vector. Measured on Zen 4 (one core, L1-resident rows), the best 512-bit
 * version took 20% longer for q8 decode; for q4 it was up to 15% quicker in decode and no quicker
 * in prefill: not worth a second copy of the loops. From 6 tokens on, AVX-512 prefill of 16
 * rows goes instead through the gathered panel of gpanel_x86.h (unpack_32 below).
 *
 * The int8 products take one unsigned and one signed operand:
 *   - q4: the nibble u = q + 8 is the unsigned operand, u . a = q . a + 8 sum(a);
 *   - q5_0: u = q + 16 (nibble + 16 * fifth bit), u . a = q . a + 16 sum(a);
 *   - q4_1, q5_1: u = q itself, w = d * u + m: the m * dx * sum(a) terms come off as the
 *     biases do, under a vector of the blocks' fp16 mins;
 *   - q8 with dpbusd: u = q + 128 (q xor 0x80), u . a = q . a + 128 sum(a);
 *   - q8 with maddubs: |q| . (a with the sign of q) (q + 128 would overflow maddubs' int16).
 * One vector of 8 int32 partial sums per block (q4 and co: the low nibbles, values 0..15, in
 * the first 128-bit lane and its high nibbles, 16..31, in the second, so the 32 activations meet
 * them as they lie) is converted to float and accumulated with the block's scale
 * s = dx * dw, the bias * sum(a) terms coming off once per step:
 *
 *     acc += float(isum) * s               row . x = hsum(acc) - bias * sum_blocks s * sum(a)
 *
 * Weights go by steps of 16 blocks: a row's 16 fp16 scales are 16-bit inserts at constant lanes
 * (a gather instruction costs Zen 4 as much as streaming a q4 step from DRAM), made a step ahead
 * and converted at once; the products s per (row, token) are two multiplies, parked on the stack,
 * where each block's vector of sums broadcasts its scale. A row is read in whole blocks only, so
 * never past its end.
 * Decode streams four rows side by side and sweep-prefetches the rows (sweep_x86.h), so that DRAM
 * sees one sequential stream. */
#include <stddef.h>

#include "moecc.h"

#if MOECC_X86
#include <immintrin.h>

#include "gpanel_x86.h"
#include "sweep_x86.h"

#define STEP 16       /* blocks per step: two vectors of scales */
#define HALF 8        /* blocks per vector of scales */
#define MAX_NT 4      /* tokens of a register block (2 with AVX2's 16 registers) */
#define MAX_ACC 16    /* NR * NT * U never exceeds this */
_Static_assert(offsetof(moecc_block_q4_1, m) == 2 && offsetof(moecc_block_q5_1, m) == 2 &&
                   offsetof(moecc_block_q5_0, qh) == 2 && offsetof(moecc_block_q5_1, qh) == 4,
               "the offsets block() and row_block() read: d at 0, then m, then qh");

/* bytes of a block of wt */
INLINE int block_bytes(const int wt) {
    return wt == MOECC_Q8     ? (int)sizeof(moecc_block_q8)
           : wt == MOECC_Q4   ? (int)sizeof(moecc_block_q4)
           : wt == MOECC_Q4_1 ? (int)sizeof(moecc_block_q4_1)
           : wt == MOECC_Q5_0 ? (int)sizeof(moecc_block_q5_0)
                              : (int)sizeof(moecc_block_q5_1);
}

/* offset of the values (qs) in a block of wt */
INLINE int values_at(const int wt) {
    return wt == MOECC_Q8     ? (int)offsetof(moecc_block_q8, qs)
           : wt == MOECC_Q4   ? (int)offsetof(moecc_block_q4, qs)
           : wt == MOECC_Q4_1 ? (int)offsetof(moecc_block_q4_1, qs)
           : wt == MOECC_Q5_0 ? (int)offsetof(moecc_block_q5_0, qs)
                              : (int)offsetof(moecc_block_q5_1, qs);
}

/* the types whose weights are d * q + m: an fp16 min after d */
INLINE int has_min(const int wt) { return wt == MOECC_Q4_1 || wt == MOECC_Q5_1; }

/* ---- the int8 dot products (the tables' entry points pass theirs) ------------------------ */

/* int32 x 8 partial sums of u . a: u the unsigned weight operand, sq the signed q (q8 with
 * maddubs only), a the activations */
typedef __m256i (*idot_fn)(__m256i u, __m256i sq, __m256i a);

INLINE TARGET_AVX2 __m256i ones16(void) { return _mm256_set1_epi16(1); }

/* nibbles: |int16 pair sums| <= 2 * 15 * 127 */
INLINE TARGET_AVX2 __m256i idot_maddubs(__m256i u, __m256i sq, __m256i a) {
    (void)sq;
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), ones16());
}

/* |q| . (a with the sign of q): |pair sums| <= 2 * 128 * 127 */
INLINE TARGET_AVX2 __m256i idot_maddubs_signed(__m256i u, __m256i sq, __m256i a) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(a, sq)), ones16());
}

INLINE TARGET_VNNI __m256i idot_dpbusd(__m256i u, __m256i sq, __m256i a) {
    (void)sq;
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, a);
}

/* 16 fp16 values -> float, lo = the first 8, hi = the last 8: one 16-wide conversion where the
 * table has it (on Zen 4, two 8-wide ones slow q8 decode by a fifth) */
typedef void (*cvt16_fn)(__m256i h, __m256 *lo, __m256 *hi);

INLINE TARGET_AVX2 void cvt16_f16c(__m256i h, __m256 *lo, __m256 *hi) {
    *lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
    *hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}

INLINE TARGET_512 void cvt16_avx512(__m256i h, __m256 *lo, __m256 *hi) {
    const __m512 f = _mm512_cvtph_ps(h);
    *lo = _mm512_castps512_ps256(f);
    *hi = _mm512_extractf32x8_ps(f, 1);
}

/* ---- scales ------------------------------------------------------------------------------ */

INLINE TARGET_AVX2 float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* lanes j < n set (n <= 8, may be <= 0) */
INLINE TARGET_AVX2 __m256i live_lanes(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* the fp16 scale of block j of the blocks (bb bytes each) at p */
INLINE TARGET_AVX2 short block_d(const int bb, const char *p, int j) {
    short d;
    memcpy(&d, p + bb * j, sizeof d);
    return d;
}

/* the fp16 scales of the n <= 8 blocks at p, 16-bit inserts at constant lanes; past n, lane j
 * repeats the last one (never read past a row; the caller zeroes those lanes) */
INLINE TARGET_AVX2 __m128i half_d(const int bb, const char *p, int n) {
#define D(j) block_d(bb, p, (j) < n ? (j) : n - 1)
    return _mm_setr_epi16(D(0), D(1), D(2), D(3), D(4), D(5), D(6), D(7));
#undef D
}

/* the fp16 scales of the nb <= 16 blocks at p (the second half 0 if nb <= 8) */
INLINE TARGET_AVX2 __m256i step_d(const int bb, const char *p, int nb) {
    const __m128i lo = half_d(bb, p, nb < HALF ? nb : HALF);
    const __m128i hi = nb > HALF ? half_d(bb, p + bb * HALF, nb - HALF) : _mm_setzero_si128();
    return _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
}

/* ---- the blocks of a step ---------------------------------------------------------------- */

#define ACC(r, t, u) acc[((u) * NR + (r)) * NT + (t)]

/* The block at blk of a row as the unsigned weight operand wu of the int8 products, and (q8)
 * its signed values wq: q8 q + 128 (q8_xor) or |q|; the others the nibbles, values 0..15 (low)
 * in the first 128-bit lane, 16..31 (high) in the second, so they meet the block's 32
 * activations as they lie, plus 16 where the fifth bit of a q5 value (bit i of qh) is set. */
INLINE TARGET_AVX2 void row_block(const int wt, const int q8_xor, const char *blk, __m256i *wu,
                                  __m256i *wq) {
    if (wt == MOECC_Q8) {
        *wq = _mm256_loadu_si256((const __m256i *)(blk + values_at(wt)));
        *wu = q8_xor ? _mm256_xor_si256(*wq, _mm256_set1_epi8((char)0x80))
                     : _mm256_abs_epi8(*wq); /* -128 -> 128 unsigned: exact */
        return;
    }
    const __m128i q = _mm_loadu_si128((const __m128i *)(blk + values_at(wt)));
    *wu = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(15));
    if (wt == MOECC_Q5_0 || wt == MOECC_Q5_1) {
        int qh; /* byte i of the vector gets byte i / 8 of qh, then tests its bit i % 8 */
        memcpy(&qh, blk + (wt == MOECC_Q5_0 ? offsetof(moecc_block_q5_0, qh)
                                            : offsetof(moecc_block_q5_1, qh)), sizeof qh);
        const __m256i byte_of = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2,
                                                 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
        const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(qh), byte_of);
        const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
        const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
        *wu = _mm256_or_si256(*wu, _mm256_and_si256(set, _mm256_set1_epi8(16)));
    }
    *wq = *wu; /* unused: the activations are the signed operand */
}

/* acc += the blocks [0, nb) of the step at block b0, one vector of sums each; a full step
 * spreads them over the U accumulators of a (row, token) (the loops over u are the compile-time
 * ones) */
INLINE TARGET_AVX2 void step_blocks(const int wt, const int q8_xor, idot_fn idot, const int NR,
                                    const int NT, const int U, int nb, int64_t b0, const char *w,
                                    int64_t ldw, const char *x, int64_t ldx,
                                    const float (*s)[STEP], __m256 *acc) {
    const int bb = block_bytes(wt);
    for (int j0 = 0; j0 < nb; j0 += U)
        for (int u = 0; u < U; u++) {
            const int j = j0 + u;
            const int64_t b = b0 + j;
            __m256i wu[MOECC_TILE_ROWS], wq[MOECC_TILE_ROWS];
            for (int r = 0; r < NR; r++)
                row_block(wt, q8_xor, w + r * ldw + bb * b, &wu[r], &wq[r]);
            for (int t = 0; t < NT; t++) {
                const __m256i a = _mm256_loadu_si256((const __m256i *)(x + t * ldx + 32 * b));
                for (int r = 0; r < NR; r++) {
                    const __m256 f = _mm256_cvtepi32_ps(idot(wu[r], wq[r], a));
                    ACC(r, t, u) = _mm256_fmadd_ps(f, _mm256_broadcast_ss(&s[r * NT + t][j]),
                                                   ACC(r, t, u));
                }
            }
        }
}

/* blocks in the step at block b0 of a row of nblocks */
INLINE int step_blocks_at(int64_t nblocks, int64_t b0) {
    return nblocks - b0 < STEP ? (int)(nblocks - b0) : STEP;
}

/* s[r*NT + t][j] = dx * dw of block j of the step at b0 (nb blocks; the others 0; d[r]: row r's
 * fp16 scales, step_d), and the bias correction acc(r, t, 0) -= bias * s * sum(a), or for the
 * types with mins (m[r]: row r's fp16 mins) acc(r, t, 0) += dx * mw * sum(a) */
INLINE TARGET_AVX2 void step_scales(const int wt, const int q8_xor, cvt16_fn cvt16, const int NR,
                                    const int NT, int nb, int64_t K, int64_t b0, const __m256i *d,
                                    const __m256i *m, const char *x, int64_t ldx,
                                    float (*s)[STEP], __m256 *acc) {
    const int bias = wt == MOECC_Q4     ? 8
                     : wt == MOECC_Q5_0 ? 16
                     : wt == MOECC_Q8   ? (q8_xor ? 128 : 0)
                                        : 0;
    __m256 dw[MOECC_TILE_ROWS][2], mw[MOECC_TILE_ROWS][2];
    for (int r = 0; r < NR; r++) cvt16(d[r], &dw[r][0], &dw[r][1]);
    if (has_min(wt))
        for (int r = 0; r < NR; r++) cvt16(m[r], &mw[r][0], &mw[r][1]);
    for (int hf = 0; hf < (nb > HALF ? 2 : 1); hf++) {
        const int j0 = HALF * hf;
        const __m256i live = live_lanes(nb - j0);
        if (nb < STEP) /* a scale may be inf: 0 * inf would spoil the sums */
            for (int r = 0; r < NR; r++) {
                dw[r][hf] = _mm256_and_ps(dw[r][hf], _mm256_castsi256_ps(live));
                if (has_min(wt)) mw[r][hf] = _mm256_and_ps(mw[r][hf], _mm256_castsi256_ps(live));
            }
        for (int t = 0; t < NT; t++) {
            const char *xt = x + t * ldx;
            const float *dxp = moecc_xq_scales(xt, K) + b0 + j0;
            const int *sump = (const int *)moecc_xq_sums(xt, K) + b0 + j0;
            const __m256 dx = nb == STEP ? _mm256_loadu_ps(dxp) : _mm256_maskload_ps(dxp, live);
            const __m256i sum = nb == STEP ? _mm256_loadu_si256((const __m256i *)sump)
                                           : _mm256_maskload_epi32(sump, live);
            const __m256 sumf = _mm256_cvtepi32_ps(sum);
            const __m256 corr = _mm256_mul_ps(sumf, _mm256_set1_ps(-bias));
            for (int r = 0; r < NR; r++) {
                const __m256 sv = _mm256_mul_ps(dx, dw[r][hf]);
                _mm256_store_ps(s[r * NT + t] + j0, sv);
                if (bias) ACC(r, t, 0) = _mm256_fmadd_ps(sv, corr, ACC(r, t, 0));
                if (has_min(wt))
                    ACC(r, t, 0) =
                        _mm256_fmadd_ps(_mm256_mul_ps(dx, mw[r][hf]), sumf, ACC(r, t, 0));
            }
        }
    }
}

/* Register block: NR rows x NT tokens, U accumulators per (row, token); every size a
 * compile-time constant once inlined. out[t*ldo + r] = W[r] . X[t]. */
INLINE TARGET_AVX2 void block(const int wt, const int q8_xor, idot_fn idot, cvt16_fn cvt16,
                              const int NR, const int NT, const int U, int64_t K, const char *w,
                              int64_t ldw, const char *x, int64_t ldx, float *out, int64_t ldo) {
    const int64_t nblocks = K / MOECC_QBLOCK;
    __m256 acc[MAX_ACC];
    for (int i = 0; i < NR * NT * U; i++) acc[i] = _mm256_setzero_ps();
    _Alignas(32) float s[MOECC_TILE_ROWS * MAX_NT][STEP]; /* s[r*NT + t][j] */
    sweep pf = sweep_start(w, NR, ldw, STEP, nblocks); /* a share per step (sweep_x86.h) */

    /* the fp16 scales (and mins) of the rows' next step are loaded a step ahead: their cache
     * misses then overlap this step's work instead of stalling it (decode from DRAM: 2.3x
     * faster); a min is the fp16 after its block's d */
    const int bb = block_bytes(wt), mins = 2;
    __m256i d[MOECC_TILE_ROWS], dnext[MOECC_TILE_ROWS], m[MOECC_TILE_ROWS], mnext[MOECC_TILE_ROWS];
    for (int r = 0; r < NR; r++) {
        dnext[r] = step_d(bb, w + r * ldw, step_blocks_at(nblocks, 0));
        if (has_min(wt)) mnext[r] = step_d(bb, w + r * ldw + mins, step_blocks_at(nblocks, 0));
    }
    for (int64_t b0 = 0; b0 < nblocks; b0 += STEP) {
        const int nb = step_blocks_at(nblocks, b0);
        sweep_next(&pf);
        for (int r = 0; r < NR; r++) {
            d[r] = dnext[r];
            if (has_min(wt)) m[r] = mnext[r];
        }
        if (b0 + STEP < nblocks)
            for (int r = 0; r < NR; r++) {
                const char *next = w + r * ldw + bb * (b0 + STEP);
                dnext[r] = step_d(bb, next, step_blocks_at(nblocks, b0 + STEP));
                if (has_min(wt))
                    mnext[r] = step_d(bb, next + mins, step_blocks_at(nblocks, b0 + STEP));
            }
        if (nb == STEP) { /* the sizes known at compile time but for the row's last step */
            step_scales(wt, q8_xor, cvt16, NR, NT, STEP, K, b0, d, m, x, ldx, s, acc);
            step_blocks(wt, q8_xor, idot, NR, NT, U, STEP, b0, w, ldw, x, ldx, s, acc);
        } else {
            step_scales(wt, q8_xor, cvt16, NR, NT, nb, K, b0, d, m, x, ldx, s, acc);
            step_blocks(wt, q8_xor, idot, NR, NT, 1, nb, b0, w, ldw, x, ldx, s, acc);
        }
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) {
            __m256 sum = ACC(r, t, 0);
            for (int u = 1; u < U; u++) sum = _mm256_add_ps(sum, ACC(r, t, u));
            out[t * ldo + r] = hsum(sum);
        }
}

#undef ACC

/* Four rows at a time: 4 x NT register blocks over the tokens, then 4 x 1 (decode: four rows
 * side by side, one accumulator each, with the sweep prefetch); the rows left over one by one,
 * tokens two or one at a time. NT: the tokens the registers hold (16 registers: 2, 32: 4). */
INLINE TARGET_AVX2 void tile_q(const int wt, const int q8_xor, idot_fn idot, cvt16_fn cvt16,
                               const int NT, int64_t K, const void *w, int64_t ldw, int nr,
                               const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    const char *wp = (const char *)w, *xp = (const char *)x;
    int r = 0, t;
    for (; r + MOECC_TILE_ROWS <= nr; r += MOECC_TILE_ROWS) {
        for (t = 0; t + NT <= nt; t += NT)
            block(wt, q8_xor, idot, cvt16, MOECC_TILE_ROWS, NT, 1, K, wp + r * ldw, ldw,
                  xp + t * ldx, ldx, out + t * ldo + r, ldo);
        for (; t < nt; t++)
            block(wt, q8_xor, idot, cvt16, MOECC_TILE_ROWS, 1, 1, K, wp + r * ldw, ldw,
                  xp + t * ldx, ldx, out + t * ldo + r, ldo);
    }
    for (; r < nr; r++) {
        const char *wr = wp + r * ldw;
        float *o = out + r;
        for (t = 0; t + 2 <= nt; t += 2)
            block(wt, q8_xor, idot, cvt16, 1, 2, 2, K, wr, ldw, xp + t * ldx, ldx, o + t * ldo,
                  ldo);
        if (t < nt)
            block(wt, q8_xor, idot, cvt16, 1, 1, 4, K, wr, ldw, xp + t * ldx, ldx, o + t * ldo,
                  ldo);
    }
}

/* ---- many tokens: 16 rows unpacked into a panel (AVX-512 prefill, gpanel_x86.h) -------- */

#define GATHER_MIN_TOKENS 6 /* from here the panel beats the register blocks (Zen 4) */

/* the values of blocks first .. first + n - 1 (n <= 64 / piece) of the 16 rows at w, ldw bytes
 * apart, `piece` bytes (16 or 32) at `at` in each block of bb bytes: a block's pieces side by
 * side in a row's vector, then transposed, so out[piece / 4 * j + i] holds int32 i of block
 * first + j of every row (blocks past n: zeros, nothing read past the row) */
INLINE TARGET_512 void load_pieces_transposed(const char *w, int64_t ldw, int bb, int at,
                                              const int piece, int64_t first, int n,
                                              __m512i out[16]) {
    __m512i in[16];
    for (int r = 0; r < 16; r++) {
        const char *blk = w + r * ldw + bb * first + at;
        if (piece == 32) {
            const __m256i lo = _mm256_loadu_si256((const __m256i *)blk);
            const __m256i hi = n > 1 ? _mm256_loadu_si256((const __m256i *)(blk + bb)) : _mm256_setzero_si256();
            in[r] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
            continue;
        }
        __m128i q[4];
        for (int j = 0; j < 4; j++)
            q[j] = j < n ? _mm_loadu_si128((const __m128i *)(blk + bb * j)) : _mm_setzero_si128();
        in[r] = _mm512_inserti32x4(_mm512_inserti32x4(_mm512_inserti32x4(_mm512_castsi128_si512(q[0]), q[1], 1),
                                                      q[2], 2), q[3], 3);
    }
    transpose16(in, out);
}

/* blocks 8 step .. 8 step + 7 (fewer at a row's end) of the 16 rows at w, ldw bytes apart, into
 * p: per block its scale d (and for q4_1, q5_1 its min -m: w = d * u - min; the others' w = d *
 * (u - zero_point)), by gathers, and its 32 unsigned values, loaded and transposed */
INLINE TARGET_512 void unpack_32(const int wt, const char *w, int64_t ldw, int64_t K, int64_t step,
                                 __m512i rows, wpanel *p) {
    const int bb = block_bytes(wt);
    const int64_t first = GATHER_VALUES / MOECC_QBLOCK * step;
    const int64_t left = K / MOECC_QBLOCK - first;
    p->groups = left < GATHER_VALUES / MOECC_QBLOCK ? (int)left : GATHER_VALUES / MOECC_QBLOCK;
    const int has_m = wt == MOECC_Q4_1 || wt == MOECC_Q5_1;
    const int qh_at = wt == MOECC_Q5_0 ? 2 : 4; /* q5_0, q5_1 */
    const int qs_at = wt == MOECC_Q8 || wt == MOECC_Q4 ? 2 : wt == MOECC_Q4_1 ? 4 : wt == MOECC_Q5_0 ? 6 : 8;
    const int piece = wt == MOECC_Q8 ? 32 : 16, per = 64 / piece; /* blocks a transpose takes */
    const __m512i lo4 = _mm512_set1_epi32(0x0F0F0F0F);
    __m512i qs[16];
    for (int j = 0; j < p->groups; j++) {
        const int i0 = piece / 4 * (j % per); /* block j's int32s in qs */
        if (j % per == 0) {
            const int n = p->groups - j < per ? p->groups - j : per;
            load_pieces_transposed(w, ldw, bb, qs_at, piece, first + j, n, qs);
        }
        const char *blk = w + bb * (first + j);
        const __m512i head = gather_rows(rows, blk);
        const __m512 d = fp16_lanes(head, 0);
        p->scale[j] = d;
        if (has_m) p->min[j] = _mm512_sub_ps(_mm512_setzero_ps(), fp16_lanes(head, 1));
        if (wt == MOECC_Q8) {
            for (int i = 0; i < 8; i++)
                p->u[8 * j + i] = _mm512_xor_si512(qs[i0 + i], _mm512_set1_epi32((int)0x80808080u));
            continue;
        }
        /* byte l of qs: value l in the low nibble, l + 16 in the high */
        for (int i = 0; i < 4; i++) {
            const __m512i q = qs[i0 + i];
            p->u[8 * j + i] = _mm512_and_si512(q, lo4);
            p->u[8 * j + 4 + i] = _mm512_and_si512(_mm512_srli_epi32(q, 4), lo4);
        }
        if (wt == MOECC_Q5_0 || wt == MOECC_Q5_1) { /* + 16 where bit v of qh is set */
            const __m512i qh = gather_rows(rows, blk + qh_at);
            for (int c = 0; c < 8; c++) { /* bits 4c .. 4c+3 to bit 4 of bytes 0..3: the
                                           * multiply puts bit k at 8k, no two terms meeting */
                const __m512i bits = _mm512_and_si512(_mm512_srli_epi32(qh, 4 * c), _mm512_set1_epi32(15));
                const __m512i spread = _mm512_and_si512(_mm512_mullo_epi32(bits, _mm512_set1_epi32(0x00204081)),
                                                        _mm512_set1_epi32(0x01010101));
                p->u[8 * j + c] = _mm512_or_si512(p->u[8 * j + c], _mm512_slli_epi32(spread, 4));
            }
        }
    }
}

/* ---- the entry points of the three tables ------------------------------------------------ */

TARGET_AVX2 void moecc_tile_q8_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                                    const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_Q8, 0, idot_maddubs_signed, cvt16_f16c, 2, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_AVX2 void moecc_tile_q4_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                                    const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_Q4, 0, idot_maddubs, cvt16_f16c, 2, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_AVX2 void moecc_tile_q4_1_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                                      const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_Q4_1, 0, idot_maddubs, cvt16_f16c, 2, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_AVX2 void moecc_tile_q5_0_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                                      const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_Q5_0, 0, idot_maddubs, cvt16_f16c, 2, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_AVX2 void moecc_tile_q5_1_avx2(int64_t K, const void *w, int64_t ldw, int nr,
                                      const void *x, int64_t ldx, int nt, float *out, int64_t ldo) {
    tile_q(MOECC_Q5_1, 0, idot_maddubs, cvt16_f16c, 2, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_512 void moecc_tile_q8_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                                     const void *x, int64_t ldx, int nt, float *out,
                                     int64_t ldo) {
    tile_q(MOECC_Q8, 0, idot_maddubs_signed, cvt16_avx512, MAX_NT, K, w, ldw, nr, x, ldx, nt, out,
           ldo);
}

/* 16 rows x nt tokens, on panels of unpack_32 */
INLINE TARGET_512 void tile_32_gathered(const int wt, pdot512_fn pdot, int64_t K, const char *w,
                                        int64_t ldw, const char *x, int64_t ldx, int nt,
                                        float *out, int64_t ldo) {
    tile_gathered(wt, unpack_32, MOECC_ACT_Q8_32, pdot, MOECC_QBLOCK, K, w, ldw, x, ldx, nt, out, ldo);
}

TARGET_512 void moecc_tile_q4_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                                     const void *x, int64_t ldx, int nt, float *out,
                                     int64_t ldo) {
    if (nr == GATHER_ROWS && nt >= GATHER_MIN_TOKENS)
        tile_32_gathered(MOECC_Q4, pdot512_maddubs, K, w, ldw, x, ldx, nt, out, ldo);
    else
        tile_q(MOECC_Q4, 0, idot_maddubs, cvt16_avx512, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_512 void moecc_tile_q4_1_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                                       const void *x, int64_t ldx, int nt, float *out,
                                       int64_t ldo) {
    if (nr == GATHER_ROWS && nt >= GATHER_MIN_TOKENS)
        tile_32_gathered(MOECC_Q4_1, pdot512_maddubs, K, w, ldw, x, ldx, nt, out, ldo);
    else
        tile_q(MOECC_Q4_1, 0, idot_maddubs, cvt16_avx512, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_512 void moecc_tile_q5_0_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                                       const void *x, int64_t ldx, int nt, float *out,
                                       int64_t ldo) {
    if (nr == GATHER_ROWS && nt >= GATHER_MIN_TOKENS)
        tile_32_gathered(MOECC_Q5_0, pdot512_maddubs, K, w, ldw, x, ldx, nt, out, ldo);
    else
        tile_q(MOECC_Q5_0, 0, idot_maddubs, cvt16_avx512, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_512 void moecc_tile_q5_1_avx512(int64_t K, const void *w, int64_t ldw, int nr,
                                       const void *x, int64_t ldx, int nt, float *out,
                                       int64_t ldo) {
    if (nr == GATHER_ROWS && nt >= GATHER_MIN_TOKENS)
        tile_32_gathered(MOECC_Q5_1, pdot512_maddubs, K, w, ldw, x, ldx, nt, out, ldo);
    else
        tile_q(MOECC_Q5_1, 0, idot_maddubs, cvt16_avx512, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_VNNI void moecc_tile_q8_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                          const void *x, int64_t ldx, int nt, float *out,
                                          int64_t ldo) {
    if (nr == GATHER_ROWS && nt >= GATHER_MIN_TOKENS)
        tile_32_gathered(MOECC_Q8, pdot512_dpbusd, K, w, ldw, x, ldx, nt, out, ldo);
    else
        tile_q(MOECC_Q8, 1, idot_dpbusd, cvt16_avx512, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_VNNI void moecc_tile_q4_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                          const void *x, int64_t ldx, int nt, float *out,
                                          int64_t ldo) {
    if (nr == GATHER_ROWS && nt >= GATHER_MIN_TOKENS)
        tile_32_gathered(MOECC_Q4, pdot512_dpbusd, K, w, ldw, x, ldx, nt, out, ldo);
    else
        tile_q(MOECC_Q4, 1, idot_dpbusd, cvt16_avx512, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_VNNI void moecc_tile_q4_1_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                            const void *x, int64_t ldx, int nt, float *out,
                                            int64_t ldo) {
    if (nr == GATHER_ROWS && nt >= GATHER_MIN_TOKENS)
        tile_32_gathered(MOECC_Q4_1, pdot512_dpbusd, K, w, ldw, x, ldx, nt, out, ldo);
    else
        tile_q(MOECC_Q4_1, 1, idot_dpbusd, cvt16_avx512, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_VNNI void moecc_tile_q5_0_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                            const void *x, int64_t ldx, int nt, float *out,
                                            int64_t ldo) {
    if (nr == GATHER_ROWS && nt >= GATHER_MIN_TOKENS)
        tile_32_gathered(MOECC_Q5_0, pdot512_dpbusd, K, w, ldw, x, ldx, nt, out, ldo);
    else
        tile_q(MOECC_Q5_0, 1, idot_dpbusd, cvt16_avx512, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

TARGET_VNNI void moecc_tile_q5_1_avx512vnni(int64_t K, const void *w, int64_t ldw, int nr,
                                            const void *x, int64_t ldx, int nt, float *out,
                                            int64_t ldo) {
    if (nr == GATHER_ROWS && nt >= GATHER_MIN_TOKENS)
        tile_32_gathered(MOECC_Q5_1, pdot512_dpbusd, K, w, ldw, x, ldx, nt, out, ldo);
    else
        tile_q(MOECC_Q5_1, 1, idot_dpbusd, cvt16_avx512, MAX_NT, K, w, ldw, nr, x, ldx, nt, out, ldo);
}

/* ---- activation quantization ------------------------------------------------------------- */

/* As moecc_quantize_x / moecc_quantize_xk (storage.c), eight lanes at a time: the same float32
 * operations, and cvtps rounds to nearest even (the default MXCSR mode), so the results are
 * identical. Used by the AVX-512 tables too (it is not where the time goes). */

/* max |x| over the n values at x (n % 8 == 0) */
INLINE TARGET_AVX2 float amax(const float *x, int n) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps();
    for (int i = 0; i < n; i += 8)
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    return _mm_cvtss_f32(m4);
}

INLINE TARGET_AVX2 int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

/* q[j] = round(x[j] * inv), |q| <= 127, for the 32 values at x; sum[h] = the sum of the q of
 * values 16h .. 16h+15 */
INLINE TARGET_AVX2 void quantize32(const float *x, float inv, int8_t *q, int32_t sum[2]) {
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); /* undo lane-wise packs */
    __m256i i32[4];
    for (int i = 0; i < 4; i++) {
        const __m256i r = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * i),
                                                           _mm256_set1_ps(inv)));
        i32[i] = _mm256_max_epi32(_mm256_min_epi32(r, _mm256_set1_epi32(127)),
                                  _mm256_set1_epi32(-127));
    }
    sum[0] = hsum_epi32(_mm256_add_epi32(i32[0], i32[1]));
    sum[1] = hsum_epi32(_mm256_add_epi32(i32[2], i32[3]));
    const __m256i p16a = _mm256_packs_epi32(i32[0], i32[1]);
    const __m256i p16b = _mm256_packs_epi32(i32[2], i32[3]);
    const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), order);
    _mm256_storeu_si256((__m256i *)q, p8);
}

TARGET_AVX2 void moecc_quantize_x_avx2(int64_t K, const float *x, void *xq) {
    int8_t *q = (int8_t *)xq;
    float *d = (float *)moecc_xq_scales(xq, K);
    int32_t *sum = (int32_t *)moecc_xq_sums(xq, K);
    for (int64_t b = 0; b < K / MOECC_QBLOCK; b++) {
        const float *xb = x + b * MOECC_QBLOCK;
        const float scale = amax(xb, MOECC_QBLOCK) / 127.0f;
        int32_t halves[2];
        quantize32(xb, scale > 0.0f ? 1.0f / scale : 0.0f, q + b * MOECC_QBLOCK, halves);
        d[b] = scale;
        sum[b] = halves[0] + halves[1];
    }
}

TARGET_AVX2 void moecc_quantize_xk_avx2(int64_t K, const float *x, void *xk) {
    int8_t *q = (int8_t *)xk;
    float *d = (float *)moecc_xk_scales(xk, K);
    int16_t *bsum = (int16_t *)moecc_xk_bsums(xk, K);
    for (int64_t b = 0; b < K / MOECC_KBLOCK; b++) {
        const float *xb = x + b * MOECC_KBLOCK;
        const float scale = amax(xb, MOECC_KBLOCK) / 127.0f;
        const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        for (int j = 0; j < MOECC_KBLOCK / 32; j++) {
            int32_t halves[2];
            quantize32(xb + 32 * j, inv, q + b * MOECC_KBLOCK + 32 * j, halves);
            bsum[b * (MOECC_KBLOCK / 16) + 2 * j] = (int16_t)halves[0];
            bsum[b * (MOECC_KBLOCK / 16) + 2 * j + 1] = (int16_t)halves[1];
        }
        d[b] = scale;
    }
}

#endif /* MOECC_X86 */
