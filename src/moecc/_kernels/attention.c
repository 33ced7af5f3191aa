/* attention.c -- causal grouped-query attention over one layer's KV cache (float32 or f16, which
 * halves the bytes a long context reads per token), flash style:
 * keys are scored a block at a time into a small on-stack buffer and folded into a running
 * (max, sum, output) with an online softmax, so no T x C score matrix exists and nothing is
 * allocated. */
#include <math.h>

#include "moecc.h"

#define KEY_BLOCK 64 /* keys scored per step */
#define GROUP MOECC_WSUM_ROWS /* query heads sharing a kv head, handled together so keys and
                                values load once */

/* o[i] = softmax(scale * q[i] . K[0..L)) @ V[0..L) for the ng query rows q[i] (hd floats each,
 * contiguous), with K and V rows of hd values of type kv, back to back. */
static void attend(const moecc_isa *isa, int64_t hd, const float *q, int ng, const char *k,
                   const char *v, moecc_storage kv, int64_t L, float scale, float *o) {
    const moecc_tile_fn dot = isa->tile[kv];
    const int64_t row_bytes = hd * (int64_t)sizeof(float);
    const int64_t kv_bytes = moecc_row_bytes(kv, hd);
    float s[GROUP][KEY_BLOCK]; /* scores, then probabilities, of the current key block */
    float m[GROUP], l[GROUP];  /* running max and running sum of exp(score - max) */
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
        isa->wsum_rows(hd, nb, ng, &s[0][0], KEY_BLOCK, v + j0 * kv_bytes, kv, o, hd);
    }
    for (int i = 0; i < ng; i++) {
        const float inv = 1.0f / l[i];
        for (int64_t d = 0; d < hd; d++) o[i * hd + d] *= inv;
    }
}

int moecc_attention(const float *q, int64_t T, int64_t Hq, int64_t hd, const void *k_cache,
                    const void *v_cache, moecc_storage kv, int64_t Hkv, int64_t C, int64_t start,
                    float *out, int threads) {
    if (kv != MOECC_F32 && kv != MOECC_F16) return MOECC_ERR_STORAGE;
    if (Hkv < 1 || Hq % Hkv != 0) return MOECC_ERR_SHAPE;
    if (start < 0 || start + T > C) return MOECC_ERR_INDEX;
    const moecc_isa *isa = moecc_active_isa();
    const int64_t g = Hq / Hkv;                     /* query heads per kv head */
    const int64_t chunks = (g + GROUP - 1) / GROUP; /* work items per (token, kv head) */
    const int64_t per_token = Hkv * chunks;
    const float scale = 1.0f / sqrtf((float)hd);
    const int64_t head_bytes = C * moecc_row_bytes(kv, hd);
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) \
    if (T * Hq * (start + T) * hd >= MOECC_PAR_MIN)
    for (int64_t it = 0; it < T * per_token; it++) {
        const int64_t t = T - 1 - it / per_token; /* longest contexts first */
        const int64_t kvh = it % per_token / chunks, c = it % chunks;
        const int64_t h0 = kvh * g + c * GROUP;
        const int ng = (int)(g - c * GROUP < GROUP ? g - c * GROUP : GROUP);
        attend(isa, hd, q + (t * Hq + h0) * hd, ng, (const char *)k_cache + kvh * head_bytes,
               (const char *)v_cache + kvh * head_bytes, kv, start + t + 1, scale,
               out + (t * Hq + h0) * hd);
    }
    return MOECC_OK;
}
