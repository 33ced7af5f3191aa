/* kquant.c -- float32 rows -> ggml's K-type super-blocks (q4_k, q5_k, q6_k), bytes that ggml's
 * dequantize_row_q4_K / _q5_K / _q6_K decode. Portable C (the conversion is not a hot path);
 * OpenMP over rows. NumPy reference of the same algorithm: tests/kquant_reference.py.
 *
 * Every super-block of 256 values x minimises the weighted squared error sum w_i (x_i - y_i)^2 of
 * its decoded values y, with w_i = c_i * sqrt(sigma2 + x_i^2): sigma2 the mean of x^2 over the
 * super-block, c_i the column's importance (1 without one); llama.cpp's quantize_q4_K weights its
 * imatrix the same way. The search, in three steps:
 *   1. each sub-block (32 values of q4_k / q5_k: y = s * L + m, m <= 0; 16 of q6_k: y = s * L)
 *      tries 51 / 81 / 71 rounding grids (kq_shape: a wider range of inverse scales than the 21
 *      of llama.cpp's make_qkx2_quants / 19 of make_qx_quants), fits (s, m) to each grid's
 *      integers by weighted least squares, keeps the best, then alternates rounding and fitting
 *      while the error falls;
 *   2. the sub-block scales and mins are stored as 6-bit (int8 for q6_k) multiples of the
 *      super-block's fp16 d and dmin: each sub-block picks its integer scale and min among the
 *      neighbours of the rounded ones by the error of its values re-rounded under them (not by
 *      the distance to the float scale, as llama.cpp does);
 *   3. d and dmin are refitted by least squares to all 256 values given those integers, rounded
 *      to fp16, and step 2 repeated around the chosen integers while the error falls.
 * Sums are in double, so the reference in float64 meets these bytes.
 */
#include "moecc.h"

#define KQ_REFINE 4 /* at most this many round-and-fit passes (sub-block and super-block) */

typedef struct {
    int n;        /* values per sub-block: 32 (q4_k, q5_k) or 16 (q6_k) */
    int lo, hi;   /* the integers' range: 0..15, 0..31, -32..31 */
    int affine;   /* a min per sub-block (q4_k, q5_k) */
    int slo, shi; /* the range of the sub-block scale integers: 0..63 or -128..127 */
    /* the rounding grids: the range of the values spread over (nmax + first + delta * step)
     * integer steps, step = 0..steps (nmax = hi, or -lo for q6_k); chosen on the trained test
     * model's matrices, where llama.cpp's nmax - 1 .. nmax + 1 leaves step 1 0.7% (q4_k), 3%
     * (q5_k) and 10% (q6_k) more squared error */
    double first, delta;
    int steps;
} kq_shape;

static const kq_shape KQ_Q4 = {32, 0, 15, 1, 0, 63, -3.0, 0.1, 50};
static const kq_shape KQ_Q5 = {32, 0, 31, 1, 0, 63, -5.0, 0.1, 80};
static const kq_shape KQ_Q6 = {16, -32, 31, 0, -128, 127, -10.0, 0.2, 70};

static inline double fp16_round(double v) { return moecc_f16_to_f32(moecc_f32_to_f16((float)v)); }

/* the nearest integer to v within [lo, hi], halves to even (as nearbyint and NumPy's rint): the
 * clamp first, so the 1.5 * 2^52 trick (a loop the compiler vectorises, where baseline x86-64
 * has no rounding instruction) meets no value outside its exact range */
static inline double round_clamp(double v, int lo, int hi) {
    v = v < lo ? lo : v > hi ? hi : v;
    return (v + 0x1.8p52) - 0x1.8p52;
}

/* integers of x under y = s * L + m (the nearest, clamped; by the reciprocal of s, one division
 * a sub-block); 0 where s is 0 */
static void round_to(const kq_shape *k, const float *x, double s, double m, double *L) {
    const double inv = s != 0 ? 1 / s : 0;
    for (int i = 0; i < k->n; i++) L[i] = round_clamp((x[i] - m) * inv, k->lo, k->hi);
}

/* the weighted sums of one sub-block that do not depend on its integers */
typedef struct { double sw, sx, sxx; } kq_sums;

/* the weighted least-squares (s, m) for the integers L (m = 0 for q6_k; m <= 0 for the others,
 * as a min is subtracted) and its error; 0 if L admits no fit (all equal, or all zero) */
static int fit(const kq_shape *k, const float *x, const double *w, const kq_sums *c,
               const double *L, double *s, double *m, double *err) {
    double sl = 0, sll = 0, sxl = 0;
    for (int i = 0; i < k->n; i++) {
        sl += w[i] * L[i];
        sll += w[i] * L[i] * L[i];
        sxl += w[i] * x[i] * L[i];
    }
    if (sll <= 0) return 0;
    *s = sxl / sll, *m = 0;
    if (k->affine) {
        const double D = c->sw * sll - sl * sl;
        if (D <= 0) return 0;
        *s = (c->sw * sxl - c->sx * sl) / D;
        *m = (sll * c->sx - sl * sxl) / D;
        if (*m > 0) *s = sxl / sll, *m = 0;
    }
    /* sum w (s L + m - x)^2, expanded */
    *err = c->sxx - 2 * *s * sxl - 2 * *m * c->sx + *s * *s * sll + 2 * *s * *m * sl + *m * *m * c->sw;
    return 1;
}

static double error_of(const kq_shape *k, const float *x, const double *w, double s, double m,
                       const double *L) {
    double e = 0;
    for (int i = 0; i < k->n; i++) {
        const double r = s * L[i] + m - x[i];
        e += w[i] * r * r;
    }
    return e;
}

/* step 1: the float (s, m) of one sub-block */
static void search_subblock(const kq_shape *k, const float *x, const double *w, double *s_out,
                            double *m_out) {
    double L[32];
    kq_sums c = {0, 0, 0};
    double lo = x[0], hi = x[0], amax = fabs(x[0]), at_amax = x[0];
    for (int i = 0; i < k->n; i++) {
        lo = x[i] < lo ? x[i] : lo, hi = x[i] > hi ? x[i] : hi;
        if (fabs(x[i]) > amax) amax = fabs(x[i]), at_amax = x[i];
        c.sw += w[i], c.sx += w[i] * x[i], c.sxx += w[i] * x[i] * x[i];
    }
    if (k->affine) lo = lo < 0 ? lo : 0;
    *s_out = 0, *m_out = k->affine ? lo : 0;
    const double range = k->affine ? hi - lo : -at_amax; /* q6_k: the largest magnitude to lo */
    if ((k->affine && hi == lo) || (!k->affine && amax == 0)) return;
    const double origin = k->affine ? lo : 0;
    double best = INFINITY, s, m, e, prev[32];
    for (int step = 0; step <= k->steps; step++) {
        const double inv = ((k->affine ? k->hi : -k->lo) + k->first + k->delta * step) / range;
        for (int i = 0; i < k->n; i++) L[i] = round_clamp(inv * (x[i] - origin), k->lo, k->hi);
        /* neighbouring grids often round alike: the same fit again */
        if (step > 0 && memcmp(prev, L, sizeof(double) * (size_t)k->n) == 0) continue;
        memcpy(prev, L, sizeof(double) * (size_t)k->n);
        if (fit(k, x, w, &c, L, &s, &m, &e) && e < best) best = e, *s_out = s, *m_out = m;
    }
    for (int pass = 0; pass < KQ_REFINE && *s_out != 0; pass++) {
        round_to(k, x, *s_out, *m_out, L);
        if (!fit(k, x, w, &c, L, &s, &m, &e) || !(e < best)) break;
        best = e, *s_out = s, *m_out = m;
    }
}

/* step 2 for one sub-block: the integer scale ls and min lm within one of (ls0, lm0) whose
 * re-rounded values err least under (d, dmin); returns that error */
static double pick_integers(const kq_shape *k, const float *x, const double *w, double d,
                            double dmin, int ls0, int lm0, int *ls_out, int *lm_out, double *L) {
    double trial[32];
    double best = INFINITY;
    const int lm_span = k->affine ? 1 : 0;
    for (int ls = ls0 - 1; ls <= ls0 + 1; ls++) {
        if (ls < k->slo || ls > k->shi) continue;
        for (int lm = lm0 - lm_span; lm <= lm0 + lm_span; lm++) {
            if (lm < 0 || lm > 63) continue;
            const double s = d * ls, m = -dmin * lm;
            round_to(k, x, s, m, trial);
            const double e = error_of(k, x, w, s, m, trial);
            if (e < best) {
                best = e, *ls_out = ls, *lm_out = lm;
                memcpy(L, trial, sizeof(double) * (size_t)k->n);
            }
        }
    }
    return best;
}

/* steps 2 and 3 for every sub-block: the whole set of integers */
static double pick_all(const kq_shape *k, int nsub, const float *x, const double *w, double d,
                       double dmin, const int *ls0, const int *lm0, int *ls, int *lm, double *L) {
    double e = 0;
    for (int j = 0; j < nsub; j++)
        e += pick_integers(k, x + j * k->n, w + j * k->n, d, dmin, ls0[j], lm0[j], &ls[j], &lm[j],
                           L + j * k->n);
    return e;
}

/* the least-squares (d, dmin) of y = d * ls_j * L_i - dmin * lm_j over the super-block */
static void fit_super(const kq_shape *k, int nsub, const float *x, const double *w, const int *ls,
                      const int *lm, const double *L, double *d, double *dmin) {
    double saa = 0, sab = 0, sbb = 0, sax = 0, sbx = 0;
    for (int j = 0; j < nsub; j++)
        for (int i = j * k->n; i < (j + 1) * k->n; i++) {
            const double a = (double)ls[j] * L[i], b = -(double)lm[j];
            saa += w[i] * a * a, sab += w[i] * a * b, sbb += w[i] * b * b;
            sax += w[i] * a * x[i], sbx += w[i] * b * x[i];
        }
    const double det = saa * sbb - sab * sab;
    if (k->affine && det > 0) {
        *d = (sbb * sax - sab * sbx) / det;
        *dmin = (saa * sbx - sab * sax) / det;
    } else if (saa > 0) {
        *d = sax / saa, *dmin = 0;
    }
}

/* one super-block: its integers L[256], ls and lm per sub-block, d and dmin (fp16 values) */
static void quantize_super(const kq_shape *k, const float *x, const float *importance, double *L,
                           int *ls, int *lm, double *d_out, double *dmin_out) {
    const int nsub = MOECC_KBLOCK / k->n;
    double w[MOECC_KBLOCK], s[16], m[16], sigma2 = 0;
    for (int i = 0; i < MOECC_KBLOCK; i++) sigma2 += (double)x[i] * x[i];
    sigma2 /= MOECC_KBLOCK;
    for (int i = 0; i < MOECC_KBLOCK; i++)
        w[i] = (importance ? importance[i] : 1.0) * sqrt(sigma2 + (double)x[i] * x[i]);
    double smax = 0, mmax = 0;
    for (int j = 0; j < nsub; j++) {
        search_subblock(k, x + j * k->n, w + j * k->n, &s[j], &m[j]);
        m[j] = -m[j]; /* the stored min is subtracted */
        if (fabs(s[j]) > fabs(smax)) smax = s[j];
        if (m[j] > mmax) mmax = m[j];
    }
    /* q4_k / q5_k: ls = s / d in 0..63; q6_k: ls in -128..127, the largest |s| at -128 */
    double d = fp16_round(k->affine ? smax / 63 : smax / -128), dmin = fp16_round(mmax / 63);
    int ls0[16], lm0[16], ls_try[16], lm_try[16];
    double L_try[MOECC_KBLOCK];
    for (int j = 0; j < nsub; j++) {
        ls0[j] = d != 0 ? (int)round_clamp(s[j] / d, k->slo, k->shi) : 0;
        lm0[j] = dmin != 0 ? (int)round_clamp(m[j] / dmin, 0, 63) : 0;
    }
    double best = pick_all(k, nsub, x, w, d, dmin, ls0, lm0, ls, lm, L);
    for (int pass = 0; pass < KQ_REFINE; pass++) {
        double d_try = d, dmin_try = dmin;
        fit_super(k, nsub, x, w, ls, lm, L, &d_try, &dmin_try);
        d_try = fp16_round(d_try), dmin_try = fp16_round(dmin_try);
        const double e = pick_all(k, nsub, x, w, d_try, dmin_try, ls, lm, ls_try, lm_try, L_try);
        if (!(e < best)) break;
        best = e, d = d_try, dmin = dmin_try;
        memcpy(ls, ls_try, sizeof ls_try), memcpy(lm, lm_try, sizeof lm_try);
        memcpy(L, L_try, sizeof L_try);
    }
    *d_out = d, *dmin_out = dmin;
}

/* q4_k / q5_k's 12 bytes from 8 6-bit scales and mins (the inverse of moecc_q4_k_scales) */
static void pack_scales(const int *ls, const int *lm, uint8_t out[MOECC_K_SCALE_BYTES]) {
    for (int j = 0; j < 4; j++) {
        out[j] = (uint8_t)(ls[j] | ((ls[j + 4] >> 4) << 6));
        out[j + 4] = (uint8_t)(lm[j] | ((lm[j + 4] >> 4) << 6));
        out[j + 8] = (uint8_t)((ls[j + 4] & 15) | ((lm[j + 4] & 15) << 4));
    }
}

static void quantize_block(moecc_storage st, const float *x, const float *importance, void *out) {
    double Lf[MOECC_KBLOCK];
    int L[MOECC_KBLOCK];
    int ls[16], lm[16];
    double d, dmin;
    if (st == MOECC_Q6_K) {
        moecc_block_q6_k b;
        quantize_super(&KQ_Q6, x, importance, Lf, ls, lm, &d, &dmin);
        for (int i = 0; i < MOECC_KBLOCK; i++) L[i] = (int)Lf[i];
        for (int j = 0; j < 16; j++) b.scales[j] = (int8_t)ls[j];
        b.d = moecc_f32_to_f16((float)d);
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                uint8_t q[4];
                for (int i = 0; i < 4; i++) q[i] = (uint8_t)(L[128 * h + 32 * i + l] + 32);
                b.ql[64 * h + l] = (uint8_t)((q[0] & 15) | ((q[2] & 15) << 4));
                b.ql[64 * h + 32 + l] = (uint8_t)((q[1] & 15) | ((q[3] & 15) << 4));
                b.qh[32 * h + l] = (uint8_t)((q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) |
                                             ((q[3] >> 4) << 6));
            }
        memcpy(out, &b, sizeof b);
        return;
    }
    const int five = st == MOECC_Q5_K;
    quantize_super(five ? &KQ_Q5 : &KQ_Q4, x, importance, Lf, ls, lm, &d, &dmin);
    for (int i = 0; i < MOECC_KBLOCK; i++) L[i] = (int)Lf[i];
    uint16_t dd[2] = {moecc_f32_to_f16((float)d), moecc_f32_to_f16((float)dmin)};
    uint8_t scales[MOECC_K_SCALE_BYTES], qs[MOECC_KBLOCK / 2], qh[MOECC_KBLOCK / 8] = {0};
    pack_scales(ls, lm, scales);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++)
            qs[32 * c + l] = (uint8_t)((L[64 * c + l] & 15) | ((L[64 * c + 32 + l] & 15) << 4));
    for (int j = 0; five && j < 8; j++)
        for (int l = 0; l < 32; l++) qh[l] |= (uint8_t)(((L[32 * j + l] >> 4) & 1) << j);
    if (five) {
        moecc_block_q5_k b;
        memcpy(&b.d, &dd[0], 2), memcpy(&b.dmin, &dd[1], 2);
        memcpy(b.scales, scales, sizeof scales), memcpy(b.qh, qh, sizeof qh), memcpy(b.qs, qs, sizeof qs);
        memcpy(out, &b, sizeof b);
    } else {
        moecc_block_q4_k b;
        memcpy(&b.d, &dd[0], 2), memcpy(&b.dmin, &dd[1], 2);
        memcpy(b.scales, scales, sizeof scales), memcpy(b.qs, qs, sizeof qs);
        memcpy(out, &b, sizeof b);
    }
}

void moecc_quantize_k(moecc_storage s, const float *x, int64_t N, int64_t K, const float *importance,
                      void *out, int threads) {
    const int64_t nb = K / MOECC_KBLOCK, bb = moecc_storage_types[s].block_bytes;
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (int64_t r = 0; r < N; r++)
        for (int64_t b = 0; b < nb; b++)
            quantize_block(s, x + r * K + b * MOECC_KBLOCK,
                           importance ? importance + b * MOECC_KBLOCK : NULL,
                           (char *)out + (r * nb + b) * bb);
}
