/* ops.c -- the small per-token kernels: embedding lookup, RMSNorm, RoPE, MoE router.
 *
 * Each has a team form (moecc_*_team: called by every thread of an enclosing parallel region,
 * which shares the rows out with an orphaned `omp for` and ends in its barrier), which the
 * forward step (forward.c) runs inside its one region, and a public form that opens a region
 * of `threads` for it. */
#include <math.h>

#include "moecc.h"

/* ---- embedding: out[t] = table[ids[t]] as float32 (q8 / q4 rows dequantized) ----------- */

void moecc_embedding_team(const void *table, moecc_storage f, int64_t D, const int32_t *ids,
                          int64_t T, float *out) {
    const int64_t rb = moecc_row_bytes(f, D);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; t++)
        moecc_row_to_f32(f, D, (const char *)table + ids[t] * rb, out + t * D);
}

int moecc_embedding(const void *table, moecc_storage f, int64_t V, int64_t D, const int32_t *ids,
                    int64_t T, float *out, int threads) {
    for (int64_t t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= V) return MOECC_ERR_INDEX;
#pragma omp parallel num_threads(threads) if (T * D >= MOECC_PAR_MIN)
    moecc_embedding_team(table, f, D, ids, T, out);
    return MOECC_OK;
}

/* ---- RMSNorm: out = x / sqrt(mean(x^2) + eps) * weight, per row; out may alias x --------- */

static float sum_squares(int64_t D, const float *x) {
    float acc[16] = {0};
    int64_t k = 0;
    for (; k + 16 <= D; k += 16)
        for (int j = 0; j < 16; j++) acc[j] += x[k + j] * x[k + j];
    for (int j = 0; k + j < D; j++) acc[j] += x[k + j] * x[k + j];
    float s = 0.0f;
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}

void moecc_rmsnorm_row(const float *x, int64_t D, const float *weight, float eps, float *out) {
    const float inv = 1.0f / sqrtf(sum_squares(D, x) / (float)D + eps);
    for (int64_t k = 0; k < D; k++) out[k] = (x[k] * inv) * weight[k];
}

void moecc_rmsnorm_team(const float *x, int64_t R, int64_t D, const float *weight, float eps,
                        float *out) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; r++) moecc_rmsnorm_row(x + r * D, D, weight, eps, out + r * D);
}

void moecc_rmsnorm(const float *x, int64_t R, int64_t D, const float *weight, float eps, float *out,
                   int threads) {
#pragma omp parallel num_threads(threads) if (R * D >= MOECC_PAR_MIN)
    moecc_rmsnorm_team(x, R, D, weight, eps, out);
}

/* ---- RoPE, rotate-half (GPT-NeoX / HF Llama), in place on x[T, H, hd] --------------------- */

void moecc_rope_row(float *x, int64_t hd, const float *c, const float *s) {
    const int64_t h2 = hd / 2;
    float *x1 = x, *x2 = x + h2;
    for (int64_t i = 0; i < h2; i++) {
        const float a = x1[i], b = x2[i];
        x1[i] = a * c[i] - b * s[i];
        x2[i] = b * c[i] + a * s[i];
    }
}

void moecc_rope_team(float *x, int64_t T, int64_t H, int64_t hd, const int32_t *positions,
                     const float *cos, const float *sin) {
    const int64_t h2 = hd / 2;
#pragma omp for schedule(static)
    for (int64_t row = 0; row < T * H; row++) {
        const int64_t p = positions[row / H];
        moecc_rope_row(x + row * hd, hd, cos + p * h2, sin + p * h2);
    }
}

int moecc_rope(float *x, int64_t T, int64_t H, int64_t hd, const int32_t *positions,
               const float *cos, const float *sin, int64_t P, int threads) {
    for (int64_t t = 0; t < T; t++)
        if (positions[t] < 0 || positions[t] >= P) return MOECC_ERR_INDEX;
#pragma omp parallel num_threads(threads) if (T * H * hd >= MOECC_PAR_MIN)
    moecc_rope_team(x, T, H, hd, positions, cos, sin);
    return MOECC_OK;
}

/* ---- router: softmax over all E experts, then the top_k (HF Qwen3-MoE) ------------------- */

/* Offers value v of expert e to the running top list idx/val (n entries so far, at most k),
 * kept in descending order; on equal values the earlier (lower) expert stays ahead. */
static inline void offer(int32_t *idx, float *val, int64_t *n, int64_t k, int64_t e, float v) {
    if (*n == k && !(v > val[k - 1])) return;
    int64_t i = *n < k ? (*n)++ : k - 1; /* slot to fill, then bubble up past smaller values */
    while (i > 0 && v > val[i - 1]) {
        val[i] = val[i - 1];
        idx[i] = idx[i - 1];
        i--;
    }
    val[i] = v;
    idx[i] = (int32_t)e;
}

void moecc_router_topk_team(const float *logits, int64_t T, int64_t E, int64_t k, int normalize,
                            int32_t *idx_out, float *weight_out) {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; t++) {
        const float *l = logits + t * E;
        int32_t *idx = idx_out + t * k;
        float *w = weight_out + t * k;
        float mx = l[0];
        for (int64_t e = 1; e < E; e++) mx = l[e] > mx ? l[e] : mx;
        float sum = 0.0f;
        for (int64_t e = 0; e < E; e++) sum += expf(l[e] - mx);
        /* select on the float32 probabilities themselves, as HF does, so ties are judged alike */
        int64_t n = 0;
        for (int64_t e = 0; e < E; e++) offer(idx, w, &n, k, e, expf(l[e] - mx) / sum);
        if (normalize) {
            float picked = 0.0f;
            for (int64_t j = 0; j < k; j++) picked += w[j];
            for (int64_t j = 0; j < k; j++) w[j] /= picked;
        }
    }
}

int moecc_router_topk(const float *logits, int64_t T, int64_t E, int64_t k, int normalize,
                      int32_t *idx_out, float *weight_out, int threads) {
    if (k < 1 || k > E) return MOECC_ERR_SHAPE;
#pragma omp parallel num_threads(threads) if (T * E >= MOECC_PAR_MIN)
    moecc_router_topk_team(logits, T, E, k, normalize, idx_out, weight_out);
    return MOECC_OK;
}
