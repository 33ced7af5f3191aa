/* gpanel_x86.h -- prefill on AVX-512 for weights stored row by row, as GGUF files bring them
 * (the K types: kdot_x86.c; q8, q4, q4_1, q5_0, q5_1: qdot_x86.c), on 16 rows at a time.
 *
 * Prefill meets each weight many times, so 256 values of 16 rows are unpacked once into a
 * panel of unsigned bytes (values 4c .. 4c+3 of the 16 rows in chunk c, row r in int32 lane r,
 * as q4p's panels lie) with each row's float scale per group of values that share one, and its
 * min (w = scale * u - min: a q4_k sub-block's d * sc and dmin * m; q8's d and 128 d, its u
 * being q + 128; q4's d and 8 d; ...). The values come by 16 row loads and a 16 x 16 transpose
 * of int32s (Zen 4: half the time of a gather per int32 of the 16 rows), the scales by gathers.
 * Every token of the call then runs on the panel as on a q4p one: per chunk one int8 dot
 * product against the 4 activations broadcast, per group a conversion and the scale, and the
 * mins against the activations' sums (q8_k's in integers, per super-block). On Zen 4 (one
 * thread, 16 / 64 tokens) q4_k runs at 119 / 140 GMAC/s, 1.7-2.2x the row-major register blocks,
 * whose weight decoding is redone for every few tokens. A tile sweep-prefetches the rows ahead
 * (sweep_x86.h): at prefill's 16 tokens an expert, the 16 rows' streams otherwise wait on DRAM
 * (Q4_K_M, 8 layers: 359 -> 434 tokens/s). The unpacking (the type's own part) is passed in and
 * inlined, as the dot product is. The int8 dot products and the broadcast of 4 activations
 * also serve q4p's stored panels (qpanel_avx512.c) and the K types' one-token decode
 * (kdot_x86.c). */
#ifndef MOECC_GPANEL_X86_H
#define MOECC_GPANEL_X86_H

#include "sweep_x86.h"

#define GATHER_ROWS 16
#define GATHER_VALUES 256                  /* values of a row unpacked at a time */
#define GATHER_GROUPS (GATHER_VALUES / 16) /* at most: q6_k's groups of 16 */
#define GATHER_NT 4                        /* tokens of a register block */

typedef struct {
    __m512i u[GATHER_VALUES / 4]; /* the unsigned values, 4 per row and chunk */
    __m512 scale[GATHER_GROUPS];  /* per group, the 16 rows' scales */
    __m512 min[GATHER_GROUPS];    /* q4_1, q5_1: per group the rows' mins: w = scale * u - min */
    __m512i imin[GATHER_VALUES / 32]; /* q8_k kinds: per 32 values, each row's integer mins of its
                                       * two 16s (int16 pairs: a group of 32's twice) ... */
    __m512 dmin;                  /* ... and their factor: min = dmin * imin */
    int groups;                   /* groups unpacked (the last step of a row of blocks of 32 may
                                   * hold fewer than 8) */
} wpanel;

/* values [256 step, 256 step + 256) of the 16 rows at w, ldw bytes apart, into p (rows: lane r
 * holds r ldw, for gathers) */
typedef void (*unpack_fn)(int wt, const char *w, int64_t ldw, int64_t K, int64_t step, __m512i rows,
                          wpanel *p);

/* acc + the int32 sums of 4 adjacent products u[4i..4i+3] . a[4i..4i+3] (u unsigned) */
typedef __m512i (*pdot512_fn)(__m512i acc, __m512i u, __m512i a);

INLINE TARGET_512 __m512i pdot512_maddubs(__m512i acc, __m512i u, __m512i a) {
    /* |pair sums| <= 2 * 255 * 127 would overflow int16: callers' u stay below 128 (q8's q + 128
     * takes this path only with VNNI's dpbusd, qdot_x86.c) */
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, a), _mm512_set1_epi16(1)));
}

INLINE TARGET_VNNI __m512i pdot512_dpbusd(__m512i acc, __m512i u, __m512i a) {
    return _mm512_dpbusd_epi32(acc, u, a);
}

/* the integer zero point of a type of blocks of 32 whose values are w = d * (u - zero) (q8: u =
 * q + 128; q4: 8; q5_0: 16); 0 for the K types and for q4_1 / q5_1, whose mins are floats */
static inline int zero_point(const int wt) {
    return wt == MOECC_Q8 ? 128 : wt == MOECC_Q4 ? 8 : wt == MOECC_Q5_0 ? 16 : 0;
}

/* the 4 activation bytes at p in every int32 lane */
INLINE TARGET_512 __m512i broadcast4(const char *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

/* the int32 at `at` of each of the 16 rows */
INLINE TARGET_512 __m512i gather_rows(__m512i rows, const char *at) {
    return _mm512_i32gather_epi32(rows, (const void *)at, 1);
}

/* out[k] = the int32 k of each of 16 vectors, vector r in lane r: a 16 x 16 transpose in four
 * rounds of 16 shuffles (32-bit, 64-bit, then two of 128-bit lanes) */
INLINE TARGET_512 void transpose16(const __m512i in[16], __m512i out[16]) {
    __m512i a[16], b[16];
    for (int j = 0; j < 8; j++) { /* lane l: (r 2j, r 2j+1) of elements 4l, 4l+1 | 4l+2, 4l+3 */
        a[2 * j] = _mm512_unpacklo_epi32(in[2 * j], in[2 * j + 1]);
        a[2 * j + 1] = _mm512_unpackhi_epi32(in[2 * j], in[2 * j + 1]);
    }
    for (int q = 0; q < 4; q++) { /* b[4q + e], lane l: element 4l + e of rows 4q .. 4q+3 */
        b[4 * q] = _mm512_unpacklo_epi64(a[4 * q], a[4 * q + 2]);
        b[4 * q + 1] = _mm512_unpackhi_epi64(a[4 * q], a[4 * q + 2]);
        b[4 * q + 2] = _mm512_unpacklo_epi64(a[4 * q + 1], a[4 * q + 3]);
        b[4 * q + 3] = _mm512_unpackhi_epi64(a[4 * q + 1], a[4 * q + 3]);
    }
    for (int e = 0; e < 4; e++) { /* lane l of b[4q + e] to lane q of out[4l + e] */
        const __m512i v0 = _mm512_shuffle_i32x4(b[e], b[4 + e], 0x44);
        const __m512i v1 = _mm512_shuffle_i32x4(b[e], b[4 + e], 0xEE);
        const __m512i v2 = _mm512_shuffle_i32x4(b[8 + e], b[12 + e], 0x44);
        const __m512i v3 = _mm512_shuffle_i32x4(b[8 + e], b[12 + e], 0xEE);
        out[e] = _mm512_shuffle_i32x4(v0, v2, 0x88);
        out[4 + e] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
        out[8 + e] = _mm512_shuffle_i32x4(v1, v3, 0x88);
        out[12 + e] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
    }
}

/* out[k] = the int32 at at + 4k of each of the 16 rows, ldw bytes apart (k < 16): what 16
 * gathers give, by 16 loads and a transpose */
INLINE TARGET_512 void load_transposed(const char *at, int64_t ldw, __m512i out[16]) {
    __m512i in[16];
    for (int r = 0; r < 16; r++) in[r] = _mm512_loadu_si512((const void *)(at + r * ldw));
    transpose16(in, out);
}

/* the fp16 in the low (high) half of each int32 lane, as a float */
INLINE TARGET_512 __m512 fp16_lanes(__m512i v, const int high) {
    return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(high ? _mm512_srli_epi32(v, 16) : v));
}

/* out[t*ldo + r] (+)= step `step` of the panel's 16 rows . token t, for NT tokens (= on the
 * first step, += after); groups of `group` values (a constant, so the chunk loop unrolls).
 * Per group and token, the int8 dot products' sum is converted and scaled. The mins go against
 * the activations' sums over the group: a type with an integer zero point (zero_point) starts
 * the block's int32 sums from -zero * sum(a), exact; q8_k's int16 sums per 16 values meet the
 * rows' integer mins in one int16 pair product (exact) per 32 values, with one float factor and
 * the token's scale per super-block at the end; q4_1's and q5_1's float mins per block. */
INLINE TARGET_512 void panel_tokens(const moecc_act act, pdot512_fn pdot, const int NT, const int group,
                                    const int zero, const wpanel *p, int64_t step, int64_t K,
                                    const char *x, int64_t ldx, float *out, int64_t ldo) {
    __m512 f[GATHER_NT];
    const char *xs[GATHER_NT]; /* the step's values of each token */
    for (int t = 0; t < NT; t++) {
        f[t] = _mm512_setzero_ps();
        xs[t] = x + t * ldx + GATHER_VALUES * step;
    }
    const int groups = act == MOECC_ACT_Q8_K ? GATHER_VALUES / group : p->groups;
    for (int g = 0; g < groups; g++) {
        const int64_t b = GATHER_VALUES / MOECC_QBLOCK * step + g; /* q8_32: the block */
        __m512i s[GATHER_NT];
        for (int t = 0; t < NT; t++)
            s[t] = zero ? _mm512_set1_epi32(-zero * moecc_xq_sums(x + t * ldx, K)[b]) : _mm512_setzero_si512();
        const __m512i *u = p->u + g * group / 4;
#pragma GCC unroll 8
        for (int c = 0; c < group / 4; c++)
#pragma GCC unroll 4
            for (int t = 0; t < NT; t++)
                s[t] = pdot(s[t], u[c], broadcast4(xs[t] + g * group + 4 * c));
        for (int t = 0; t < NT; t++) {
            if (act == MOECC_ACT_Q8_K) {
                f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[t]), p->scale[g], f[t]);
                continue;
            }
            const char *xt = x + t * ldx;
            const __m512 xscale = _mm512_set1_ps(moecc_xq_scales(xt, K)[b]);
            if (zero) {
                f[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[t]), _mm512_mul_ps(p->scale[g], xscale), f[t]);
                continue;
            }
            const __m512 v = _mm512_fnmadd_ps(p->min[g], _mm512_set1_ps((float)moecc_xq_sums(xt, K)[b]),
                                              _mm512_mul_ps(_mm512_cvtepi32_ps(s[t]), p->scale[g]));
            f[t] = _mm512_fmadd_ps(v, xscale, f[t]);
        }
    }
    for (int t = 0; t < NT; t++) {
        const char *xt = x + t * ldx;
        __m512 sum = f[t];
        if (act == MOECC_ACT_Q8_K) {
            const int16_t *bs = moecc_xk_bsums(xt, K) + GATHER_VALUES / 16 * step;
            __m512i m = _mm512_setzero_si512();
            for (int j = 0; j < GATHER_VALUES / 32; j++)
                m = _mm512_add_epi32(m, _mm512_madd_epi16(p->imin[j], broadcast4((const char *)(bs + 2 * j))));
            sum = _mm512_mul_ps(_mm512_fnmadd_ps(p->dmin, _mm512_cvtepi32_ps(m), sum),
                                _mm512_set1_ps(moecc_xk_scales(xt, K)[step]));
        }
        float *o = out + t * ldo;
        _mm512_storeu_ps(o, step ? _mm512_add_ps(_mm512_loadu_ps(o), sum) : sum);
    }
}

/* 16 rows x nt tokens */
INLINE TARGET_512 void tile_gathered(const int wt, unpack_fn unpack, const moecc_act act,
                                     pdot512_fn pdot, const int group, int64_t K, const char *w,
                                     int64_t ldw, const char *x, int64_t ldx, int nt, float *out,
                                     int64_t ldo) {
    const __m512i rows = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32((int)ldw));
    wpanel p;
    const int zero = zero_point(wt);
    const int64_t steps = (K + GATHER_VALUES - 1) / GATHER_VALUES;
    sweep pf = sweep_start(w, GATHER_ROWS, ldw, 1, steps);
    for (int64_t step = 0; step < steps; step++) {
        sweep_next(&pf);
        unpack(wt, w, ldw, K, step, rows, &p);
        /* the panel lives in memory: kept in registers, as the compiler would try, it makes the
         * token loop's accumulators spill */
        __asm__ volatile("" : : "r"(&p) : "memory");
        int t = 0;
        for (; t + GATHER_NT <= nt; t += GATHER_NT)
            panel_tokens(act, pdot, GATHER_NT, group, zero, &p, step, K, x + t * ldx, ldx, out + t * ldo, ldo);
        switch (nt - t) {
        case 3: panel_tokens(act, pdot, 3, group, zero, &p, step, K, x + t * ldx, ldx, out + t * ldo, ldo); break;
        case 2: panel_tokens(act, pdot, 2, group, zero, &p, step, K, x + t * ldx, ldx, out + t * ldo, ldo); break;
        case 1: panel_tokens(act, pdot, 1, group, zero, &p, step, K, x + t * ldx, ldx, out + t * ldo, ldo); break;
        default: break;
        }
    }
}

#endif /* MOECC_GPANEL_X86_H */
