/* storage.c -- the table of storage types (moecc.h), what each looks like in memory
 * independent of the ISA, and the quantization of activations that the q8 / q4 / q4p inner
 * products read. */
#include <math.h>

#include "moecc.h"

_Static_assert(sizeof(uint16_t) == 2 && sizeof(float) == 4, "fp16 scales and float32 rows");

/* moecc/storage.py TYPES, row for row */
const moecc_storage_info moecc_storage_types[MOECC_STORAGE_COUNT] = {
    /*               name    values        bytes panel rows lookup quantized activations */
    [MOECC_F32] = {"f32", 1, 4, 1, 1, 0},
    [MOECC_BF16] = {"bf16", 1, 2, 1, 1, 0},
    [MOECC_F16] = {"f16", 1, 2, 1, 1, 0},
    [MOECC_Q8] = {"q8", MOECC_QBLOCK, sizeof(moecc_block_q8), 1, 1, 1},
    [MOECC_Q4] = {"q4", MOECC_QBLOCK, sizeof(moecc_block_q4), 1, 1, 1},
    [MOECC_Q4P] = {"q4p", MOECC_QBLOCK, sizeof(moecc_block_q4), MOECC_PANEL_ROWS, 0, 1},
};

int moecc_storage_check(moecc_storage s, int64_t N, int64_t K) {
    if ((unsigned)s >= MOECC_STORAGE_COUNT) return MOECC_ERR_STORAGE;
    const moecc_storage_info *t = &moecc_storage_types[s];
    return K % t->block_values || N % t->panel_rows ? MOECC_ERR_SHAPE : MOECC_OK;
}

void moecc_row_to_f32(moecc_storage f, int64_t K, const void *row, float *out) {
    const char *p = (const char *)row;
    switch (f) {
    case MOECC_F32:
        memcpy(out, row, (size_t)K * sizeof(float));
        break;
    case MOECC_BF16: {
        const uint16_t *h = (const uint16_t *)row;
        for (int64_t k = 0; k < K; k++) out[k] = moecc_bf16_to_f32(h[k]);
        break;
    }
    case MOECC_F16: {
        const uint16_t *h = (const uint16_t *)row;
        for (int64_t k = 0; k < K; k++) out[k] = moecc_f16_to_f32(h[k]);
        break;
    }
    case MOECC_Q8:
        for (int64_t b = 0; b < K / MOECC_QBLOCK; b++) {
            moecc_block_q8 blk;
            memcpy(&blk, p + b * (int64_t)sizeof blk, sizeof blk);
            const float d = moecc_f16_to_f32(blk.d);
            for (int j = 0; j < MOECC_QBLOCK; j++) out[b * MOECC_QBLOCK + j] = d * (float)blk.qs[j];
        }
        break;
    case MOECC_Q4:
        for (int64_t b = 0; b < K / MOECC_QBLOCK; b++) {
            moecc_block_q4 blk;
            memcpy(&blk, p + b * (int64_t)sizeof blk, sizeof blk);
            const float d = moecc_f16_to_f32(blk.d);
            float *o = out + b * MOECC_QBLOCK;
            for (int j = 0; j < MOECC_QBLOCK / 2; j++) {
                o[j] = d * (float)((blk.qs[j] & 15) - 8);
                o[j + MOECC_QBLOCK / 2] = d * (float)((blk.qs[j] >> 4) - 8);
            }
        }
        break;
    default:
        break;
    }
}

/* The same float32 operations as quant.quantize_activations, so the int8 values agree
 * exactly (rounding to nearest even in the default rounding mode). */
void moecc_quantize_x(int64_t K, const float *x, void *xq) {
    int8_t *q = (int8_t *)xq;
    float *d = (float *)((char *)xq + K);
    int32_t *sum = (int32_t *)((char *)xq + K + 4 * (K / MOECC_QBLOCK));
    for (int64_t b = 0; b < K / MOECC_QBLOCK; b++) {
        const float *xb = x + b * MOECC_QBLOCK;
        float amax = 0.0f;
        for (int j = 0; j < MOECC_QBLOCK; j++) {
            const float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        const float scale = amax / 127.0f;
        const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        int32_t s = 0;
        for (int j = 0; j < MOECC_QBLOCK; j++) {
            float v = nearbyintf(xb[j] * inv);
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            q[b * MOECC_QBLOCK + j] = (int8_t)v;
            s += (int32_t)v;
        }
        d[b] = scale;
        sum[b] = s;
    }
}
