/* moe.c -- the SwiGLU experts of a MoE layer; with E = 1, k = 1 also a dense SwiGLU MLP.
 *
 *   out[t] = sum_j weights[t, j] * down[e] @ (silu(gate[e] @ x[t]) * (up[e] @ x[t])),
 *   e = idx[t, j]
 *
 * The T*k (token, slot) pairs are sorted by expert so each expert's tokens form one segment, and
 * each segment is one small GEMM: every expert's weights are read once per call, not per token.
 * Run by every thread of a team (moecc_moe_ffn_team, inside the forward step's region) or in a
 * region of its own (moecc_moe_ffn), in three phases:
 *   1. (prefill) gather each segment's rows of x, contiguous, into scratch (quantized experts:
 *      each token quantized once, its row copied to each of its k pairs)
 *   2. h[p] = silu(gate[e] @ x) * (up[e] @ x), by units of GATE_UP_CHUNK rows of one expert
 *   3. out[t] += weight * down[e] @ h[p], by units of DOWN_COLUMNS output columns over every
 *      expert, so the scatter-add never races.
 * The threads claim units as they come free (schedule(dynamic)): a thread the OS takes away
 * for a while (a server's HTTP work, on the same cores) then delays the step by one unit, not
 * by its whole static share while the other threads wait at the barrier.
 * The sums over pairs are kept in double (moecc_moe_ffn_team hands them out as such): products
 * of two floats are exact in double and a sum of a few of them is within 2^-52 of exact, so
 * the float it rounds to hardly ever depends on the order of the terms. Under expert
 * parallelism forward.c sums the processes' doubles and rounds once: each row gets the float
 * one process gets, and quantized activations downstream (which turn a float ulp into a whole
 * quantization step now and then) see the same values.
 * Quantized experts read quantized activations (gate / up and down each of its own type's kind):
 * phase 1 quantizes each token's row of x once (decode: the one row) and copies it to its pairs,
 * and between phases 2 and 3 the rows of h are quantized, each by one thread.
 * With expert parallelism (a process computes only experts [e0, e1) of the layer, parallel.py) the
 * pairs routed elsewhere are skipped: after the sort, this process's pairs are one contiguous run
 * of `order`, so nothing of another range is read and its rows of out get nothing from it.
 * Decode with a number of pairs the threads divide (8 experts, 1, 2, 4 or 8 threads) goes by
 * expert instead: each thread runs whole experts, gate/up then down, each pair's output into its
 * own row of `partial` (double), and the rows are summed in pair order at the end (the same sum
 * whatever the thread count). A thread then streams 3 whole matrices per expert with no barrier between
 * them (q4, Qwen3-30B-A3B shapes: 72% -> 77% of the read bandwidth, phases 2 and 3 by rows).
 * With `stats` (moecc.imatrix), each pair's x and h rows are also added, squared, to its
 * expert's sums, by the unit that owns those columns (h: phase 2's of its rows of I; x: phase
 * 3's of its columns of D; decode by expert: the thread that runs the expert), so no sum is
 * written by two threads.
 * Scratch (from the caller, reused across calls, nothing allocated here):
 *     order[P], tmp[P] (int32); xg: P rows of D floats (f32 / bf16, prefill) or quantized
 *     rows of D (q8 / q4): 1 (decode), or P and then the T tokens' own (prefill); h[P, I]
 *     floats; hq: P quantized rows of I (q8 / q4); partial[P, D] doubles (decode). */
#include "moecc.h"

static int64_t pad16(int64_t n) { return (n + 15) & ~(int64_t)15; }

/* floats taken by n quantized rows of K values of any kind (K rounded up to whole blocks of 32;
 * moecc_xq_bytes covers the q8_k rows too) */
static int64_t xq_floats(int64_t n, int64_t K) {
    return n * moecc_xq_bytes((K + MOECC_QBLOCK - 1) / MOECC_QBLOCK * MOECC_QBLOCK) / 4;
}

int64_t moecc_moe_scratch_floats(int64_t T, int64_t k, int64_t D, int64_t I) {
    const int64_t P = T * k;
    const int64_t xg_f = T > 1 ? pad16(P * D) : 0, xg_q = xq_floats(T > 1 ? P + T : 1, D);
    const int64_t partial = T == 1 ? pad16(2 * P * D) : 0;
    return 2 * pad16(P) + (xg_f > xg_q ? xg_f : xg_q) + pad16(P * I) + pad16(xq_floats(P, I)) + partial;
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

/* the first j with idx[order[j]] >= e (P if none): sorted pairs before it go to experts below e */
static int64_t first_pair_from(const int32_t *order, const int32_t *idx, int64_t P, int64_t e) {
    int64_t lo = 0, hi = P;
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (idx[order[mid]] < e)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* end of the segment of sorted pairs that starts at p (all routed to the same expert) */
static int64_t segment_end(const int32_t *order, const int32_t *idx, int64_t p, int64_t P) {
    const int32_t e = idx[order[p]];
    int64_t q = p + 1;
    while (q < P && idx[order[q]] == e) q++;
    return q;
}

/* Rows of G (then of U) one pass streams: long enough that a thread reads one weight matrix at a
 * time, which DRAM serves faster than two interleaved ones (decode, q4: 3-5% over tile by tile,
 * 256 ~3% over 128); the up products wait on the stack (64 KB at 64 tokens a block). */
#define GATE_UP_CHUNK 256

/* Columns of out a unit of phase 3 computes, over every expert (D / 128 units: enough for a
 * thread that falls behind to be covered) */
#define DOWN_COLUMNS 128

/* rows [i0, i1) of h[n, I] = silu(xs @ G^T) * (xs @ U^T); xs: n activation rows of D values,
 * ldx bytes apart (0: the same row n times); G, U: matrices of format f, rows of wb bytes.
 * By chunks of rows: the gate rows into h, then the up rows, folded into h by swiglu. */
static void gate_up_rows(const moecc_isa *isa, moecc_storage f, int64_t D, const char *G,
                         const char *U, int64_t wb, const void *xs, int64_t ldx, int64_t n,
                         int64_t i0, int64_t i1, float *h, int64_t I) {
    const moecc_tile_fn tile = isa->tile[f];
    const int rows = moecc_tile_rows(f);
    float u[MOECC_TOKEN_BLOCK_MAX * GATE_UP_CHUNK];
    const int64_t tb = moecc_token_block(ldx);
    for (int64_t t0 = 0; t0 < n; t0 += tb) {
        const int nt = (int)(n - t0 < tb ? n - t0 : tb);
        const void *xb = (const char *)xs + t0 * ldx;
        float *hb = h + t0 * I;
        for (int64_t c0 = i0; c0 < i1; c0 += GATE_UP_CHUNK) {
            const int64_t c1 = i1 - c0 < GATE_UP_CHUNK ? i1 : c0 + GATE_UP_CHUNK;
            for (int64_t i = c0; i < c1; i += rows) {
                const int nr = (int)(c1 - i < rows ? c1 - i : rows);
                tile(D, G + i * wb, wb, nr, xb, ldx, nt, hb + i, I);
            }
            for (int64_t i = c0; i < c1; i += rows) {
                const int nr = (int)(c1 - i < rows ? c1 - i : rows);
                tile(D, U + i * wb, wb, nr, xb, ldx, nt, u + (i - c0), GATE_UP_CHUNK);
            }
            for (int t = 0; t < nt; t++)
                isa->swiglu(c1 - c0, hb + t * I + c0, u + t * GATE_UP_CHUNK);
        }
    }
}

/* columns [d0, d1) of out[tok] += weight * (hs[p] @ Wd^T) for the n pairs of a segment; hs:
 * activation rows of I values, ldh bytes apart */
static void down_rows(const moecc_isa *isa, moecc_storage f, int64_t I, const char *Wd,
                      int64_t wb, const void *hs, int64_t ldh, int64_t n, int64_t d0, int64_t d1,
                      const int32_t *pairs, const float *weights, int64_t k, double *out,
                      int64_t D) {
    const moecc_tile_fn tile = isa->tile[f];
    const int rows = moecc_tile_rows(f);
    float y[MOECC_TOKEN_BLOCK_MAX * MOECC_TILE_ROWS_MAX];
    const int64_t tb = moecc_token_block(ldh);
    for (int64_t t0 = 0; t0 < n; t0 += tb) {
        const int nt = (int)(n - t0 < tb ? n - t0 : tb);
        for (int64_t d = d0; d < d1; d += rows) {
            const int nr = (int)(d1 - d < rows ? d1 - d : rows);
            tile(I, Wd + d * wb, wb, nr, (const char *)hs + t0 * ldh, ldh, nt, y, rows);
            for (int t = 0; t < nt; t++) {
                const int32_t pair = pairs[t0 + t];
                const float wgt = weights[pair];
                double *o = out + (pair / k) * D + d;
                for (int r = 0; r < nr; r++) o[r] += (double)wgt * y[t * rows + r];
            }
        }
    }
}

void moecc_moe_ffn_team(const float *x, int64_t T, int64_t D, const void *gate, const void *up,
                        moecc_storage fgu, const void *down, moecc_storage fd, int64_t I,
                        const int32_t *idx, const float *weights, int64_t k, int64_t e0,
                        int64_t e1, float *scratch, double *out, const moecc_expert_stats *stats) {
    const int64_t P = T * k;
    const int64_t xqD = moecc_act_bytes(fgu, D), xqI = moecc_act_bytes(fd, I); /* 0: float rows */
    const int64_t xg_floats = xqD ? xq_floats(T > 1 ? P + T : 1, D) : T > 1 ? pad16(P * D) : 0;
    int32_t *order = (int32_t *)scratch, *tmp = order + pad16(P);
    char *xg = (char *)(scratch + 2 * pad16(P));
    float *h = (float *)xg + xg_floats;
    char *hq = (char *)(h + pad16(P * I));
    double *partial = (double *)((float *)hq + pad16(xq_floats(P, I))); /* 64-byte aligned */
    const int gathered = T > 1; /* decode: every pair's token is x[0], read in place */
    const void *xs = xqD ? (const void *)xg : gathered ? (const void *)xg : (const void *)x;
    const int64_t ldx = !gathered ? 0 : xqD ? xqD : D * (int64_t)sizeof(float);
    const void *hs = xqI ? (const void *)hq : (const void *)h;
    const int64_t ldh = xqI ? xqI : I * (int64_t)sizeof(float);
    const moecc_isa *isa = moecc_active_isa();
    const moecc_act actD = moecc_act_of(fgu), actI = moecc_act_of(fd);
#pragma omp single
    {
        sort_by_expert(P, idx, order, tmp);
        if (xqD && !gathered) isa->quantize_x[actD](D, x, xg);
    }
    /* this process's pairs: sorted pairs [lo, hi) (all of them unless experts are sharded) */
    const int64_t lo = first_pair_from(order, idx, P, e0), hi = first_pair_from(order, idx, P, e1);

    const int64_t wbD = moecc_row_bytes(fgu, D), wbI = moecc_row_bytes(fd, I);
    const char *G = (const char *)gate, *U = (const char *)up, *Wd = (const char *)down;
    const int nth = omp_get_num_threads(), ith = omp_get_thread_num();
    if (gathered && xqD) { /* each token quantized once (after the pairs' rows), then copied */
        char *xt = xg + P * xqD;
#pragma omp for schedule(static)
        for (int64_t t = 0; t < T; t++) isa->quantize_x[actD](D, x + t * D, xt + t * xqD);
#pragma omp for schedule(static)
        for (int64_t p = lo; p < hi; p++)
            memcpy(xg + p * xqD, xt + (order[p] / k) * xqD, (size_t)xqD);
    } else if (gathered) {
#pragma omp for schedule(static)
        for (int64_t p = lo; p < hi; p++)
            memcpy(xg + p * D * (int64_t)sizeof(float), x + (order[p] / k) * D,
                   (size_t)D * sizeof(float));
    }
    if (!gathered && (hi - lo) % nth == 0) { /* decode, by expert */
#pragma omp for schedule(static)
        for (int64_t j = lo; j < hi; j++) {
            const int64_t p = order[j], e = idx[p];
            gate_up_rows(isa, fgu, D, G + e * I * wbD, U + e * I * wbD, wbD, xs, 0, 1, 0, I,
                         h + p * I, I);
            if (stats) { /* the pair is the only one of its expert: its token's k are distinct */
                moecc_add_squares(x, 0, D, stats->gate_up_in + e * D);
                moecc_add_squares(h + p * I, 0, I, stats->down_in + e * I);
                stats->rows[e]++;
            }
            if (xqI) isa->quantize_x[actI](I, h + p * I, hq + p * xqI);
            const int32_t pair = (int32_t)p;
            memset(partial + p * D, 0, (size_t)D * sizeof(double));
            down_rows(isa, fd, I, Wd + e * D * wbI, wbI, (const char *)hs + p * ldh, ldh, 1, 0, D,
                      &pair, weights, 1, partial, D);
        }
        int64_t d0, d1;
        moecc_split(D, 16, nth, ith, &d0, &d1);
        for (int64_t d = d0; d < d1; d++) {
            double sum = 0.0;
            for (int64_t p = 0; p < P; p++) /* in pair order, whatever the thread count */
                if (idx[p] >= e0 && idx[p] < e1) sum += partial[p * D + d];
            out[d] = sum;
        }
    } else { /* by rows of every expert: phases 2 and 3, in units the threads claim as they come
              * free, so a thread the OS preempts (a server's HTTP work on the same cores) holds
              * the others back by one unit at most, not by its whole share */
        int32_t *segment = tmp; /* sorted pair where each segment of [lo, hi) starts; after
                                 * the sort tmp is free, and there are at most hi - lo segments */
        int64_t nseg = 0;
        for (int64_t p = lo; p < hi; p = segment_end(order, idx, p, hi)) nseg++;
#pragma omp single
        for (int64_t p = lo, j = 0; p < hi; p = segment_end(order, idx, p, hi)) segment[j++] = (int32_t)p;
        const int64_t i_units = (I + GATE_UP_CHUNK - 1) / GATE_UP_CHUNK;
#pragma omp for schedule(dynamic)
        for (int64_t u = 0; u < nseg * i_units; u++) { /* phase 2: rows of one expert's G and U */
            const int64_t j = u / i_units, i0 = u % i_units * GATE_UP_CHUNK;
            const int64_t i1 = i0 + GATE_UP_CHUNK < I ? i0 + GATE_UP_CHUNK : I;
            const int64_t p = segment[j], q = j + 1 < nseg ? segment[j + 1] : hi, e = idx[order[p]];
            gate_up_rows(isa, fgu, D, G + e * I * wbD, U + e * I * wbD, wbD,
                         (const char *)xs + p * ldx, ldx, q - p, i0, i1, h + p * I, I);
            if (stats)
                for (int64_t r = p; r < q; r++) moecc_add_squares(h + r * I, i0, i1, stats->down_in + e * I);
        }
        if (xqI) {
#pragma omp for schedule(static)
            for (int64_t p = lo; p < hi; p++) isa->quantize_x[actI](I, h + p * I, hq + p * xqI);
        }
        const int64_t d_units = (D + DOWN_COLUMNS - 1) / DOWN_COLUMNS;
#pragma omp for schedule(dynamic)
        for (int64_t u = 0; u < d_units; u++) { /* phase 3: columns of out, over every expert */
            const int64_t d0 = u * DOWN_COLUMNS, d1 = d0 + DOWN_COLUMNS < D ? d0 + DOWN_COLUMNS : D;
            for (int64_t t = 0; t < T; t++) memset(out + t * D + d0, 0, (size_t)(d1 - d0) * sizeof(double));
            for (int64_t j = 0; j < nseg; j++) {
                const int64_t p = segment[j], q = j + 1 < nseg ? segment[j + 1] : hi, e = idx[order[p]];
                down_rows(isa, fd, I, Wd + e * D * wbI, wbI, (const char *)hs + p * ldh, ldh, q - p,
                          d0, d1, order + p, weights, k, out, D);
                if (stats) {
                    for (int64_t r = p; r < q; r++)
                        moecc_add_squares(x + (order[r] / k) * D, d0, d1, stats->gate_up_in + e * D);
                    if (u == 0) stats->rows[e] += q - p;
                }
            }
        }
    }
#pragma omp barrier
}

int moecc_moe_ffn(const float *x, int64_t T, int64_t D, const void *gate, const void *up,
                  moecc_storage fgu, const void *down, moecc_storage fd, int64_t E, int64_t I,
                  const int32_t *idx, const float *weights, int64_t k, int64_t e0, int64_t e1,
                  float *scratch, double *sums, float *out, int threads) {
    if (e0 < 0 || e0 > e1 || e1 > E) return MOECC_ERR_INDEX;
    for (int64_t p = 0; p < T * k; p++)
        if (idx[p] < 0 || idx[p] >= E) return MOECC_ERR_INDEX;
#pragma omp parallel num_threads(threads) if (T * k * D * I >= MOECC_PAR_MIN)
    {
        moecc_moe_ffn_team(x, T, D, gate, up, fgu, down, fd, I, idx, weights, k, e0, e1, scratch,
                           sums, NULL);
#pragma omp for schedule(static)
        for (int64_t i = 0; i < T * D; i++) out[i] = (float)sums[i];
    }
    return MOECC_OK;
}
