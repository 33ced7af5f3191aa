/* attention.c -- causal grouped-query attention over one layer's KV cache (float32 or f16, which
 * halves the bytes a long context reads per token), flash style: keys are scored a block at a
 * time into a small on-stack buffer and folded into a running (max, sum, output) with an online
 * softmax, so no T x C score matrix exists and nothing is allocated.
 *
 * Each row t of a step is one token of the sequence in cache slot slots[t], at position
 * positions[t]: it attends over that slot's keys 0 .. positions[t] (its own included, already
 * appended). Rows of one sequence (a prefill chunk) and rows of different sequences (a batch of
 * decodes) go alike. One work item is a (row, kv head): all the query heads sharing that kv
 * head are scored against each key block together, so every key and value is read once. */
#include <math.h>

#include "moecc.h"

#define KEY_BLOCK 64 /* keys scored per step */
#define GROUP_MAX 16 /* query heads per kv head (Qwen3-235B-A22B: 64 / 4) */

/* o[i] = softmax(scale * q[i] . K[0..L)) @ V[0..L) for the ng query rows q[i] (hd floats each,
 * contiguous), with K and V rows of hd values of type kv, back to back. */
static void attend(const moecc_isa *isa, int64_t hd, const float *q, int ng, const char *k,
                   const char *v, moecc_storage kv, int64_t L, float scale, float *o) {
    const moecc_tile_fn dot = isa->tile[kv];
    const int64_t row_bytes = hd * (int64_t)sizeof(float);
    const int64_t kv_bytes = moecc_row_bytes(kv, hd);
    float s[GROUP_MAX][KEY_BLOCK]; /* scores, then probabilities, of the current key block */
    float m[GROUP_MAX], l[GROUP_MAX]; /* running max and running sum of exp(score - max) */
    for (int i = 0; i < ng; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
        memset(o + i * hd, 0, (size_t)row_bytes);
    }
    for (int64_t j0 = 0; j0 < L; j0 += KEY_BLOCK) {
        const int nb = (int)(L - j0 < KEY_BLOCK ? L - j0 : KEY_BLOCK);
        for (int j = 0; j < nb; j += MOECC_TILE_ROWS) {
            const int nr = nb - j < MOECC_TILE_ROWS ? nb - j : MOECC_TILE_ROWS;
            dot(hd, k + (j0 + j) * kv_bytes, kv_bytes, nr, q, row_bytes, ng, &s[0][j],
                KEY_BLOCK);
        }
        for (int i = 0; i < ng; i++) {
            float bmax = -INFINITY;
            for (int j = 0; j < nb; j++) {
                s[i][j] *= scale;
                bmax = s[i][j] > bmax ? s[i][j] : bmax;
            }
            const float mnew = bmax > m[i] ? bmax : m[i];
            const float corr = expf(m[i] - mnew); /* 0 on the first block */
            l[i] = l[i] * corr + isa->exp_sum(nb, s[i], mnew);
            m[i] = mnew;
            float *oi = o + i * hd;
            if (corr != 1.0f)
                for (int64_t d = 0; d < hd; d++) oi[d] *= corr;
        }
        /* the block's values stay in L1 across the calls of a larger group */
        for (int i = 0; i < ng; i += MOECC_WSUM_ROWS)
            isa->wsum_rows(hd, nb, ng - i < MOECC_WSUM_ROWS ? ng - i : MOECC_WSUM_ROWS, &s[i][0],
                           KEY_BLOCK, v + j0 * kv_bytes, kv, o + i * hd, hd);
    }
    for (int i = 0; i < ng; i++) {
        const float inv = 1.0f / l[i];
        for (int64_t d = 0; d < hd; d++) o[i * hd + d] *= inv;
    }
}

void moecc_attention_team(const float *q, int64_t T, int64_t Hq, int64_t hd, const void *k_cache,
                          const void *v_cache, moecc_storage kv, int64_t Hkv, int64_t C,
                          const int32_t *slots, const int32_t *positions, float *out) {
    const moecc_isa *isa = moecc_active_isa();
    const int64_t g = Hq / Hkv; /* query heads per kv head */
    const float scale = 1.0f / sqrtf((float)hd);
    const int64_t head_bytes = C * moecc_row_bytes(kv, hd), slot_bytes = Hkv * head_bytes;
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < T * Hkv; it++) {
        const int64_t t = T - 1 - it / Hkv; /* prefill: the longest contexts first */
        const int64_t kvh = it % Hkv, at = slots[t] * slot_bytes + kvh * head_bytes;
        attend(isa, hd, q + (t * Hq + kvh * g) * hd, (int)g, (const char *)k_cache + at,
               (const char *)v_cache + at, kv, positions[t] + 1, scale, out + (t * Hq + kvh * g) * hd);
    }
}

int moecc_attention(const float *q, int64_t T, int64_t Hq, int64_t hd, const void *k_cache,
                    const void *v_cache, moecc_storage kv, int64_t S, int64_t Hkv, int64_t C,
                    const int32_t *slots, const int32_t *positions, float *out, int threads) {
    if (kv != MOECC_F32 && kv != MOECC_F16) return MOECC_ERR_STORAGE;
    if (Hkv < 1 || Hq % Hkv != 0 || Hq / Hkv > GROUP_MAX) return MOECC_ERR_SHAPE;
    int64_t work = 0;
    for (int64_t t = 0; t < T; t++) {
        if (slots[t] < 0 || slots[t] >= S || positions[t] < 0 || positions[t] >= C)
            return MOECC_ERR_INDEX;
        work += positions[t] + 1;
    }
#pragma omp parallel num_threads(threads) if (work * Hq * hd >= MOECC_PAR_MIN)
    moecc_attention_team(q, T, Hq, hd, k_cache, v_cache, kv, Hkv, C, slots, positions, out);
    return MOECC_OK;
}
