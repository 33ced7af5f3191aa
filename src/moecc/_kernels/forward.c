/* forward.c -- one forward step of the Qwen3-MoE network in C, block by block as model.py
 * describes it, inside ONE parallel region (the blocks' kernels run as a team, moecc.h):
 *
 *     x = embed_tokens[tokens]                                            [T, D]
 *     for each layer:
 *         x += o_proj(attention(rope(q_norm(q)), rope(k_norm(k)), v))    q, k, v from input_layernorm(x)
 *         x += moe(post_attention_layernorm(x))       (a dense SwiGLU MLP in mlp-only layers)
 *     logits[i] = lm_head(norm(x[logit_rows[i]]))                          [n_logits, V]
 *
 * The T rows of a step may belong to different sequences: row t is token tokens[t] of the
 * sequence in cache slot slots[t] at position positions[t], and attends over that slot's keys
 * up to its own position. A prefill chunk is T rows of one slot at consecutive positions; a
 * batch of decodes is one row per slot; any mix gives each row what it would get alone.
 * Nothing is allocated: the activations are the caller's (moecc_activations).
 * Under expert parallelism every process runs all of this but computes only its own experts'
 * share of each sparse layer's output, and m->reduce sums the shares (in double, as one
 * process sums its experts' outputs, moe.c) before the residual add:
 *         x += sum over processes of moe_share(post_attention_layernorm(x))
 * (a dense MLP, like attention, runs whole on every process).
 * With `seconds`, the master thread adds each block's wall time (end of its closing barrier
 * to the next) to seconds[MOECC_BLOCK_*]. With `stats` (moecc.imatrix), every matrix's input
 * is added, squared, to its sums as soon as it is computed (stats.c, moe.c); without, that
 * costs one pointer test per block. */
#include "moecc.h"

/* after a barrier, on the master thread only: charge the time since *last to seconds[block] */
static void mark(double *seconds, int block, double *last) {
    if (!seconds) return;
#pragma omp master
    {
        const double now = omp_get_wtime();
        seconds[block] += now - *last;
        *last = now;
    }
}

/* out[T, N] (row stride ldo) = x[T, K] @ w^T, x already in activation rows xa (ldx bytes) */
static void project(const moecc_weight *w, int64_t T, int64_t K, const void *xa, int64_t ldx,
                    int64_t N, float *out, int64_t ldo) {
    moecc_gemm_share(w->type, T, K, xa, ldx, w->data, N, out, ldo);
}

/* The activation rows weights of type f read for x[T, K]: x itself for a float type, else x
 * quantized to f's kind into a->xq by the team (which ends in a barrier). */
static const void *activations(const moecc_activations *a, moecc_storage f, const float *x,
                               int64_t T, int64_t K, int64_t *ldx) {
    if (moecc_act_of(f) == MOECC_ACT_F32) {
        *ldx = K * (int64_t)sizeof(float);
        return x;
    }
    moecc_quantize_team(moecc_act_of(f), x, T, K, a->xq);
    *ldx = moecc_act_bytes(f, K);
    return a->xq;
}

/* out[T, N] = x[T, K] @ w^T by the team, ending in a barrier */
static void linear(const moecc_activations *a, const moecc_weight *w, const float *x, int64_t T,
                   int64_t K, int64_t N, float *out) {
    int64_t ldx;
    const void *xa = activations(a, w->type, x, T, K, &ldx);
    project(w, T, K, xa, ldx, N, out, N);
#pragma omp barrier
}

/* x[i] += y[i] for i < n */
static void residual_add(float *x, const float *y, int64_t n) {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

/* x += o_proj(attention(q, k, v)), with q, k, v from input_layernorm(x) */
static void attention_block(const moecc_model *m, const moecc_activations *a,
                            const moecc_layer *w, int64_t layer, int64_t T, const int32_t *slots,
                            const int32_t *positions, moecc_layer_stats *stats, double *seconds,
                            double *last) {
    const int64_t D = m->D, hd = m->hd, Hq = m->Hq, Hkv = m->Hkv;
    const int64_t qw = Hq * hd, kvw = Hkv * hd;
    moecc_rmsnorm_team(a->x, T, D, w->input_layernorm, m->eps, a->h);
    if (stats) moecc_add_squares_team(a->h, T, D, stats->attn_in);
    /* q, k and v from one quantization of the normed input when their types read the same
     * kind of activation rows (a Q4_K_M file's q4_k q and k with a q6_k v do), else each its own */
    int64_t ldx;
    const void *xa = activations(a, w->q_proj.type, a->h, T, D, &ldx);
    project(&w->q_proj, T, D, xa, ldx, qw, a->q, qw);
    const moecc_act q_reads = moecc_act_of(w->q_proj.type);
    if (moecc_act_of(w->k_proj.type) != q_reads || moecc_act_of(w->v_proj.type) != q_reads) {
#pragma omp barrier /* q's activation rows are read until here */
        linear(a, &w->k_proj, a->h, T, D, kvw, a->k);
        linear(a, &w->v_proj, a->h, T, D, kvw, a->v);
    } else {
        project(&w->k_proj, T, D, xa, ldx, kvw, a->k, kvw);
        project(&w->v_proj, T, D, xa, ldx, kvw, a->v, kvw);
#pragma omp barrier
    }
    mark(seconds, MOECC_BLOCK_QKV, last);

    /* per-head RMSNorm of q and k, rotary embedding at each row's position, and the row's key
     * and value appended to its slot's cache (head-major [slot, Hkv, C, hd]) */
    const int64_t h2 = hd / 2, kvb = moecc_row_bytes(m->kv, hd);
    const int64_t head_bytes = m->C * kvb, slot_bytes = Hkv * head_bytes;
    char *kc = (char *)m->k_cache + layer * m->slots * slot_bytes;
    char *vc = (char *)m->v_cache + layer * m->slots * slot_bytes;
#pragma omp for schedule(static)
    for (int64_t row = 0; row < T * (Hq + Hkv); row++) {
        const int64_t t = row / (Hq + Hkv), head = row % (Hq + Hkv), p = positions[t];
        const int is_q = head < Hq;
        float *x = is_q ? a->q + (t * Hq + head) * hd : a->k + (t * Hkv + head - Hq) * hd;
        moecc_rmsnorm_row(x, hd, is_q ? w->q_norm : w->k_norm, m->eps, x);
        moecc_rope_row(x, hd, m->cos + p * h2, m->sin + p * h2);
        if (is_q) continue;
        const int64_t kvh = head - Hq, at = slots[t] * slot_bytes + kvh * head_bytes + p * kvb;
        const float *v = a->v + (t * Hkv + kvh) * hd;
        if (m->kv == MOECC_F16) {
            uint16_t *kd = (uint16_t *)(kc + at), *vd = (uint16_t *)(vc + at);
            for (int64_t i = 0; i < hd; i++) {
                kd[i] = moecc_f32_to_f16(x[i]);
                vd[i] = moecc_f32_to_f16(v[i]);
            }
        } else {
            memcpy(kc + at, x, (size_t)kvb);
            memcpy(vc + at, v, (size_t)kvb);
        }
    }
    mark(seconds, MOECC_BLOCK_ROPE_CACHE, last);

    moecc_attention_team(a->q, T, Hq, hd, kc, vc, m->kv, Hkv, m->C, slots, positions, a->attn);
    if (stats) moecc_add_squares_team(a->attn, T, qw, stats->o_proj_in);
    mark(seconds, MOECC_BLOCK_ATTEND, last);

    linear(a, &w->o_proj, a->attn, T, qw, D, a->out);
    residual_add(a->x, a->out, T * D);
    mark(seconds, MOECC_BLOCK_O_PROJ, last);
}

/* x[i] += (float)y[i] for i < n */
static void residual_add_sums(float *x, const double *y, int64_t n) {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] += (float)y[i];
}

/* sums[n] summed over the processes by the master thread, then a barrier; *failed (shared by
 * the team) tells every thread whether that failed */
static void sum_over_processes(const moecc_model *m, double *sums, int64_t n, int *failed) {
#pragma omp master
    *failed = m->reduce(sums, n, m->reduce_ctx) != 0;
#pragma omp barrier
}

/* x += sum over the chosen experts of weight * SwiGLU_expert(post_attention_layernorm(x)) */
static void mlp_block(const moecc_model *m, const moecc_activations *a, const moecc_layer *w,
                      int64_t T, moecc_layer_stats *stats, int *failed, double *seconds,
                      double *last) {
    const int64_t D = m->D;
    moecc_rmsnorm_team(a->x, T, D, w->post_attention_layernorm, m->eps, a->h);
    if (stats && w->router) moecc_add_squares_team(a->h, T, D, stats->router_in);
    const int32_t *ids = a->dense_ids;
    const float *weights = a->dense_weights;
    int64_t k = 1, e0 = 0, e1 = 1;
    if (w->router) { /* softmax over all experts, keep the top k, renormalise when norm_topk_prob */
        const moecc_weight router = {w->router, MOECC_F32};
        linear(a, &router, a->h, T, D, w->experts, a->router_logits);
        moecc_router_topk_team(a->router_logits, T, w->experts, m->top_k, m->norm_topk_prob,
                               a->expert_ids, a->expert_weights);
        ids = a->expert_ids;
        weights = a->expert_weights;
        k = m->top_k;
        e0 = m->expert_begin;
        e1 = m->expert_end;
    }
    mark(seconds, MOECC_BLOCK_ROUTER, last);
    moecc_moe_ffn_team(a->h, T, D, w->gate_proj.data, w->up_proj.data, w->gate_proj.type,
                       w->down_proj.data, w->down_proj.type, w->inter, ids, weights, k, e0, e1,
                       a->moe_scratch, a->moe_sums, stats ? &stats->experts : NULL);
    if (w->router && m->reduce) {
        sum_over_processes(m, a->moe_sums, T * D, failed);
        if (*failed) return;
    }
    residual_add_sums(a->x, a->moe_sums, T * D);
    mark(seconds, MOECC_BLOCK_EXPERTS, last);
}

/* logits[i] = lm_head(norm(x[logit_rows[i]])) for i < n_logits */
static void lm_head_block(const moecc_model *m, const moecc_activations *a,
                          const int32_t *logit_rows, int64_t n_logits, float *logits,
                          moecc_stats *stats, double *seconds, double *last) {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n_logits; i++)
        moecc_rmsnorm_row(a->x + logit_rows[i] * m->D, m->D, m->norm, m->eps, a->h + i * m->D);
    if (stats) moecc_add_squares_team(a->h, n_logits, m->D, stats->lm_head_in);
    linear(a, &m->lm_head, a->h, n_logits, m->D, m->V, logits);
    mark(seconds, MOECC_BLOCK_LM_HEAD, last);
}

int moecc_forward(const moecc_model *m, const moecc_activations *a, const int32_t *tokens,
                  const int32_t *slots, const int32_t *positions, int64_t T,
                  const int32_t *logit_rows, int64_t n_logits, float *logits, double *seconds,
                  moecc_stats *stats, int threads) {
    if (T < 1 || T > a->rows || n_logits < 0 || n_logits > a->rows) return MOECC_ERR_SHAPE;
    for (int64_t t = 0; t < T; t++)
        if (tokens[t] < 0 || tokens[t] >= m->V || slots[t] < 0 || slots[t] >= m->slots ||
            positions[t] < 0 || positions[t] >= m->C)
            return MOECC_ERR_INDEX;
    for (int64_t i = 0; i < n_logits; i++)
        if (logit_rows[i] < 0 || logit_rows[i] >= T) return MOECC_ERR_INDEX;
    double last = omp_get_wtime();
    int failed = 0; /* the sum over the processes failed: every thread leaves the step */
#pragma omp parallel num_threads(threads)
    {
        moecc_embedding_team(m->embed_tokens.data, m->embed_tokens.type, m->D, tokens, T, a->x);
        mark(seconds, MOECC_BLOCK_EMBED, &last);
        for (int64_t layer = 0; layer < m->layers && !failed; layer++) {
            const moecc_layer *w = &m->layer[layer];
            moecc_layer_stats *ls = stats ? &stats->layer[layer] : NULL;
            attention_block(m, a, w, layer, T, slots, positions, ls, seconds, &last);
            mlp_block(m, a, w, T, ls, &failed, seconds, &last);
        }
        if (!failed) lm_head_block(m, a, logit_rows, n_logits, logits, stats, seconds, &last);
    }
    if (failed) return MOECC_ERR_REDUCE;
    if (stats) {
        stats->rows += T;
        stats->lm_head_rows += n_logits;
    }
    return MOECC_OK;
}
