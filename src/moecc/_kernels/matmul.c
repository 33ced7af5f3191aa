/* matmul.c -- out[T, N] = x[T, K] @ W[N, K]^T for any weight type.
 *
 * Threads split the output rows N (so each weight row is streamed by exactly one thread).
 * Within a thread, tokens go in blocks that fit in L2 and each group of MOECC_TILE_ROWS weight
 * rows is reused for the whole token block: decode (T == 1) streams W once, prefill reads W
 * once per token block instead of once per token. */
#include "moecc.h"

void moecc_gemm_rows(const moecc_isa *isa, moecc_wtype wt, int64_t T, int64_t K, const float *x,
                     const void *w, int64_t n0, int64_t n1, float *out, int64_t ldo) {
    const moecc_tile_fn tile = isa->tile[wt];
    const int64_t wb = moecc_row_bytes(wt, K);
    const int64_t tb = moecc_token_block(K);
    for (int64_t t0 = 0; t0 < T; t0 += tb) {
        const int nt = (int)(T - t0 < tb ? T - t0 : tb);
        for (int64_t n = n0; n < n1; n += MOECC_TILE_ROWS) {
            const int nr = (int)(n1 - n < MOECC_TILE_ROWS ? n1 - n : MOECC_TILE_ROWS);
            tile(K, (const char *)w + n * wb, wb, nr, x + t0 * K, K * (int64_t)sizeof(float), nt,
                 out + t0 * ldo + n, ldo);
        }
    }
}

void moecc_matmul(const float *x, int64_t T, int64_t K, const void *w, moecc_wtype wt, int64_t N,
                  float *out, int threads) {
    const moecc_isa *isa = moecc_active_isa();
    if (K == 0) {
        memset(out, 0, (size_t)(T * N) * sizeof(float));
        return;
    }
#pragma omp parallel num_threads(threads) if (T * N * K >= MOECC_PAR_MIN)
    {
        int64_t n0, n1;
        moecc_split(N, 16, omp_get_num_threads(), omp_get_thread_num(), &n0, &n1);
        moecc_gemm_rows(isa, wt, T, K, x, w, n0, n1, out, N);
    }
}
