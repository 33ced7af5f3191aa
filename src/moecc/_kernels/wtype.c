/* wtype.c -- what each weight type looks like in memory, independent of the ISA. */
#include "moecc.h"

int64_t moecc_row_bytes(moecc_wtype wt, int64_t K) {
    switch (wt) {
    case MOECC_W_F32: return K * 4;
    case MOECC_W_BF16: return K * 2;
    default: return 0;
    }
}

void moecc_row_to_f32(moecc_wtype wt, int64_t K, const void *row, float *out) {
    switch (wt) {
    case MOECC_W_F32:
        memcpy(out, row, (size_t)K * sizeof(float));
        break;
    case MOECC_W_BF16: {
        const uint16_t *h = (const uint16_t *)row;
        for (int64_t k = 0; k < K; k++) out[k] = moecc_bf16_to_f32(h[k]);
        break;
    }
    default:
        break;
    }
}
