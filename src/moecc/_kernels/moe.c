/* moe.c -- the SwiGLU experts of a MoE layer; with E = 1, k = 1 also a dense SwiGLU MLP.
 *
 *   out[t] = sum_j weights[t, j] * down[e] @ (silu(gate[e] @ x[t]) * (up[e] @ x[t])),
 *   e = idx[t, j]
 *
 * The T*k (token, slot) pairs are sorted by expert so each expert's tokens form one segment, and
 * each segment is one small GEMM: every expert's weights are read once per call, not per token.
 * One parallel region, three phases:
 *   1. (prefill) gather each segment's rows of x, contiguous, into scratch
 *   2. h[p] = silu(gate[e] @ x) * (up[e] @ x): each thread takes its share of the I rows of every
 *      expert, so in decode all threads stream weights all the time
 *   3. out[t] += weight * down[e] @ h[p]: each thread owns a share of the D output columns, so
 *      the scatter-add never races.
 * Scratch (from the caller, reused across calls): order[P], tmp[P] (int32), xg[P, D], h[P, I]. */
#include "moecc.h"

#define MAX_TOKEN_BLOCK 64 /* moecc_token_block() never exceeds this */

static int64_t pad16(int64_t n) { return (n + 15) & ~(int64_t)15; }

int64_t moecc_moe_scratch_floats(int64_t T, int64_t k, int64_t D, int64_t I) {
    const int64_t P = T * k;
    return 2 * pad16(P) + (T > 1 ? pad16(P * D) : 0) + pad16(P * I);
}

/* order[0..P) = pair indices sorted by expert, stable (bottom-up merge sort through tmp) */
static void sort_by_expert(int64_t P, const int32_t *idx, int32_t *order, int32_t *tmp) {
    int32_t *a = order, *b = tmp;
    for (int64_t p = 0; p < P; p++) a[p] = (int32_t)p;
    for (int64_t w = 1; w < P; w *= 2) {
        for (int64_t lo = 0; lo < P; lo += 2 * w) {
            const int64_t mid = lo + w < P ? lo + w : P, hi = lo + 2 * w < P ? lo + 2 * w : P;
            int64_t i = lo, j = mid, o = lo;
            while (i < mid && j < hi) b[o++] = idx[a[j]] < idx[a[i]] ? a[j++] : a[i++];
            while (i < mid) b[o++] = a[i++];
            while (j < hi) b[o++] = a[j++];
        }
        int32_t *s = a;
        a = b;
        b = s;
    }
    if (a != order) memcpy(order, a, (size_t)P * sizeof(int32_t));
}

/* end of the segment of sorted pairs that starts at p (all routed to the same expert) */
static int64_t segment_end(const int32_t *order, const int32_t *idx, int64_t p, int64_t P) {
    const int32_t e = idx[order[p]];
    int64_t q = p + 1;
    while (q < P && idx[order[q]] == e) q++;
    return q;
}

/* rows [i0, i1) of h[n, I] = silu(xs @ G^T) * (xs @ U^T); xs: n rows of D floats, ldx bytes
 * apart (0: the same row n times); G, U: rows of wb bytes */
static void gate_up_rows(const moecc_isa *isa, moecc_tile_fn tile, int64_t D, const char *G,
                         const char *U, int64_t wb, const float *xs, int64_t ldx, int64_t n,
                         int64_t i0, int64_t i1, float *h, int64_t I) {
    float g[MAX_TOKEN_BLOCK * MOECC_TILE_ROWS], u[MAX_TOKEN_BLOCK * MOECC_TILE_ROWS];
    const int64_t tb = moecc_token_block(D);
    for (int64_t t0 = 0; t0 < n; t0 += tb) {
        const int nt = (int)(n - t0 < tb ? n - t0 : tb);
        const void *xb = (const char *)xs + t0 * ldx;
        for (int64_t i = i0; i < i1; i += MOECC_TILE_ROWS) {
            const int nr = (int)(i1 - i < MOECC_TILE_ROWS ? i1 - i : MOECC_TILE_ROWS);
            tile(D, G + i * wb, wb, nr, xb, ldx, nt, g, MOECC_TILE_ROWS);
            tile(D, U + i * wb, wb, nr, xb, ldx, nt, u, MOECC_TILE_ROWS);
            if (nr == MOECC_TILE_ROWS) isa->swiglu(nt * MOECC_TILE_ROWS, g, u);
            for (int t = 0; t < nt; t++) {
                float *gt = g + t * MOECC_TILE_ROWS;
                if (nr < MOECC_TILE_ROWS) isa->swiglu(nr, gt, u + t * MOECC_TILE_ROWS);
                memcpy(h + (t0 + t) * I + i, gt, (size_t)nr * sizeof(float));
            }
        }
    }
}

/* columns [d0, d1) of out[tok] += weight * (hs[p] @ Wd^T) for the n pairs of a segment */
static void down_rows(moecc_tile_fn tile, int64_t I, const char *Wd, int64_t wb, const float *hs,
                      int64_t n, int64_t d0, int64_t d1, const int32_t *pairs,
                      const float *weights, int64_t k, float *out, int64_t D) {
    float y[MAX_TOKEN_BLOCK * MOECC_TILE_ROWS];
    const int64_t tb = moecc_token_block(I);
    for (int64_t t0 = 0; t0 < n; t0 += tb) {
        const int nt = (int)(n - t0 < tb ? n - t0 : tb);
        for (int64_t d = d0; d < d1; d += MOECC_TILE_ROWS) {
            const int nr = (int)(d1 - d < MOECC_TILE_ROWS ? d1 - d : MOECC_TILE_ROWS);
            tile(I, Wd + d * wb, wb, nr, hs + t0 * I, I * (int64_t)sizeof(float), nt, y,
                 MOECC_TILE_ROWS);
            for (int t = 0; t < nt; t++) {
                const int32_t pair = pairs[t0 + t];
                const float wgt = weights[pair];
                float *o = out + (pair / k) * D + d;
                for (int r = 0; r < nr; r++) o[r] += wgt * y[t * MOECC_TILE_ROWS + r];
            }
        }
    }
}

int moecc_moe_ffn(const float *x, int64_t T, int64_t D, const void *gate, const void *up,
                  const void *down, moecc_wtype wt, int64_t E, int64_t I, const int32_t *idx,
                  const float *weights, int64_t k, float *scratch, float *out, int threads) {
    const int64_t P = T * k;
    for (int64_t p = 0; p < P; p++)
        if (idx[p] < 0 || idx[p] >= E) return MOECC_ERR_INDEX;

    int32_t *order = (int32_t *)scratch, *tmp = order + pad16(P);
    float *xg = scratch + 2 * pad16(P);
    const int gathered = T > 1; /* decode: every pair's token is x[0], read in place */
    const int64_t ldx = gathered ? D * (int64_t)sizeof(float) : 0;
    float *h = xg + (gathered ? pad16(P * D) : 0);
    sort_by_expert(P, idx, order, tmp);

    const moecc_isa *isa = moecc_active_isa();
    const moecc_tile_fn tile = isa->tile[wt];
    const int64_t wbD = moecc_row_bytes(wt, D), wbI = moecc_row_bytes(wt, I);
    const char *G = (const char *)gate, *U = (const char *)up, *Wd = (const char *)down;

#pragma omp parallel num_threads(threads) if (P * D * I >= MOECC_PAR_MIN)
    {
        const int nth = omp_get_num_threads(), ith = omp_get_thread_num();
        if (gathered) {
#pragma omp for schedule(static)
            for (int64_t p = 0; p < P; p++)
                memcpy(xg + p * D, x + (order[p] / k) * D, (size_t)D * sizeof(float));
        }
        int64_t i0, i1, d0, d1;
        moecc_split(I, 16, nth, ith, &i0, &i1);
        moecc_split(D, 16, nth, ith, &d0, &d1);

        for (int64_t p = 0, q; p < P; p = q) {
            q = segment_end(order, idx, p, P);
            const int64_t e = idx[order[p]];
            gate_up_rows(isa, tile, D, G + e * I * wbD, U + e * I * wbD, wbD,
                         gathered ? xg + p * D : x, ldx, q - p, i0, i1, h + p * I, I);
        }
        for (int64_t t = 0; t < T; t++)
            memset(out + t * D + d0, 0, (size_t)(d1 - d0) * sizeof(float));
#pragma omp barrier
        for (int64_t p = 0, q; p < P; p = q) {
            q = segment_end(order, idx, p, P);
            const int64_t e = idx[order[p]];
            down_rows(tile, I, Wd + e * D * wbI, wbI, h + p * I, q - p, d0, d1, order + p, weights,
                      k, out, D);
        }
    }
    return MOECC_OK;
}
