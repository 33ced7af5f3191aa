/* matmul.c -- out[T, N] = x[T, K] @ W[N, K]^T for any weight format.
 *
 * Threads split the output rows N (so each weight row is streamed by exactly one thread); with
 * several tokens in units of rows each claims as it comes free (8 a thread), so a thread the OS
 * takes away for a while (a server's HTTP work on the same cores) delays the call by one unit,
 * not by its share.
 * Within a thread, tokens go in blocks that fit in L2 and each group of MOECC_TILE_ROWS weight
 * rows is reused for the whole token block: decode (T == 1) streams W once, prefill reads W
 * once per token block instead of once per token.
 * Quantized weights read activations quantized once per call to their kind (isa->quantize_x):
 * on the stack for a decode row of up to MOECC_XQ_STACK bytes, on the heap otherwise. */
#include <stdlib.h>

#include "moecc.h"

void moecc_gemm_rows(const moecc_isa *isa, moecc_storage f, int64_t T, int64_t K, const void *xa,
                     int64_t ldx, const void *w, int64_t n0, int64_t n1, float *out, int64_t ldo) {
    const moecc_tile_fn tile = isa->tile[f];
    const int64_t wb = moecc_row_bytes(f, K);
    const int64_t tb = moecc_token_block(ldx);
    const int rows = moecc_tile_rows(f);
    for (int64_t t0 = 0; t0 < T; t0 += tb) {
        const int nt = (int)(T - t0 < tb ? T - t0 : tb);
        for (int64_t n = n0; n < n1; n += rows) {
            const int nr = (int)(n1 - n < rows ? n1 - n : rows);
            tile(K, (const char *)w + n * wb, wb, nr, (const char *)xa + t0 * ldx, ldx,
                 nt, out + t0 * ldo + n, ldo);
        }
    }
}

void moecc_quantize_team(moecc_act a, const float *x, int64_t T, int64_t K, void *xq) {
    const moecc_isa *isa = moecc_active_isa();
    const int64_t xb = moecc_act_kind_bytes(a, K);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; t++) isa->quantize_x[a](K, x + t * K, (char *)xq + t * xb);
}

void moecc_gemm_share(moecc_storage f, int64_t T, int64_t K, const void *xa, int64_t ldx,
                      const void *w, int64_t N, float *out, int64_t ldo) {
    const moecc_isa *isa = moecc_active_isa();
    /* units of whole 16-row panels: 8 a thread for several tokens; one for decode, which streams
     * its share front to back, the sweep prefetch running on (5% faster on the lm_head) */
    const int64_t per = (T > 1 ? 8 : 1) * omp_get_num_threads();
    const int64_t unit = ((N + per - 1) / per + 15) & ~(int64_t)15;
#pragma omp for schedule(dynamic) nowait
    for (int64_t n0 = 0; n0 < N; n0 += unit)
        moecc_gemm_rows(isa, f, T, K, xa, ldx, w, n0, n0 + unit < N ? n0 + unit : N, out, ldo);
}

int moecc_matmul(const float *x, int64_t T, int64_t K, const void *w, moecc_storage f, int64_t N,
                 float *out, int threads) {
    if (K == 0 || T == 0) {
        memset(out, 0, (size_t)(T * N) * sizeof(float));
        return MOECC_OK;
    }
    _Alignas(64) unsigned char stack[MOECC_XQ_STACK];
    const int64_t xb = moecc_act_bytes(f, K);
    void *heap = NULL, *buf = stack;
    if (T * xb > (int64_t)sizeof stack) {
        buf = heap = aligned_alloc(64, (size_t)(T * xb));
        if (!heap) return MOECC_ERR_NOMEM;
    }
    const void *xa = xb ? buf : (const void *)x;
    const int64_t ldx = xb ? xb : K * (int64_t)sizeof(float);
#pragma omp parallel num_threads(threads) if (T * N * K >= MOECC_PAR_MIN)
    {
        if (xb) moecc_quantize_team(moecc_act_of(f), x, T, K, buf);
        moecc_gemm_share(f, T, K, xa, ldx, w, N, out, N);
    }
    free(heap);
    return MOECC_OK;
}

void moecc_quantize_rows(moecc_act a, const float *x, int64_t T, int64_t K, void *xq) {
    const moecc_isa *isa = moecc_active_isa();
    const int64_t xb = moecc_act_kind_bytes(a, K);
    for (int64_t t = 0; t < T; t++) isa->quantize_x[a](K, x + t * K, (char *)xq + t * xb);
}
