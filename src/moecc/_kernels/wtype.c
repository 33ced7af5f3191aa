/* wtype.c -- what each weight type looks like in memory, independent of the ISA, and the
 * quantization of activations that the q8 / q4 inner products read. */
#include <math.h>

#include "moecc.h"

_Static_assert(sizeof(uint16_t) == 2 && sizeof(float) == 4, "fp16 scales and float32 rows");
_Static_assert(MOECC_GROUP_MAX % MOECC_QBLOCK == 0, "groups are whole activation blocks");

int moecc_wformat_check(moecc_wformat f, int64_t K) {
    switch (f.type) {
    case MOECC_W_F32:
    case MOECC_W_BF16:
    case MOECC_W_F16:
        return f.group == 0 ? MOECC_OK : MOECC_ERR_WTYPE;
    case MOECC_W_Q8:
    case MOECC_W_Q4:
        if (f.group != 32 && f.group != 64 && f.group != 128 && f.group != 256)
            return MOECC_ERR_WTYPE;
        return K % f.group == 0 ? MOECC_OK : MOECC_ERR_SHAPE;
    case MOECC_W_Q4P:
        if (f.group != MOECC_QBLOCK) return MOECC_ERR_WTYPE;
        return K % f.group == 0 ? MOECC_OK : MOECC_ERR_SHAPE;
    default:
        return MOECC_ERR_WTYPE;
    }
}

int64_t moecc_row_bytes(moecc_wformat f, int64_t K) {
    switch (f.type) {
    case MOECC_W_F32: return K * 4;
    case MOECC_W_BF16:
    case MOECC_W_F16: return K * 2;
    case MOECC_W_Q8: return K + 2 * (K / f.group);
    case MOECC_W_Q4:
    case MOECC_W_Q4P: return K / 2 + 2 * (K / f.group);
    default: return 0;
    }
}

void moecc_row_to_f32(moecc_wformat f, int64_t K, const void *row, float *out) {
    const int64_t G = f.group;
    switch (f.type) {
    case MOECC_W_F32:
        memcpy(out, row, (size_t)K * sizeof(float));
        break;
    case MOECC_W_BF16: {
        const uint16_t *h = (const uint16_t *)row;
        for (int64_t k = 0; k < K; k++) out[k] = moecc_bf16_to_f32(h[k]);
        break;
    }
    case MOECC_W_F16: {
        const uint16_t *h = (const uint16_t *)row;
        for (int64_t k = 0; k < K; k++) out[k] = moecc_f16_to_f32(h[k]);
        break;
    }
    case MOECC_W_Q8: {
        const int8_t *q = (const int8_t *)row;
        for (int64_t g = 0; g < K / G; g++) {
            const float d = moecc_f16_to_f32(moecc_q_scale_bits(f.type, row, K, g));
            for (int64_t j = 0; j < G; j++) out[g * G + j] = d * (float)q[g * G + j];
        }
        break;
    }
    case MOECC_W_Q4: {
        const uint8_t *p = (const uint8_t *)row;
        for (int64_t g = 0; g < K / G; g++) {
            const float d = moecc_f16_to_f32(moecc_q_scale_bits(f.type, row, K, g));
            const uint8_t *pg = p + g * G / 2;
            float *o = out + g * G;
            for (int64_t j = 0; j < G / 2; j++) {
                o[j] = d * (float)((pg[j] & 15) - 8);
                o[j + G / 2] = d * (float)((pg[j] >> 4) - 8);
            }
        }
        break;
    }
    default:
        break;
    }
}

/* The same float32 operations as quant.quantize_activations, so the int8 values agree
 * exactly (rounding to nearest even in the default rounding mode); stored in f's order. */
void moecc_quantize_x(moecc_wformat f, int64_t K, const float *x, void *xq) {
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
        int64_t at[2];
        moecc_xq_block_at(f, K, b, &at[0], &at[1]);
        int32_t s = 0;
        for (int j = 0; j < MOECC_QBLOCK; j++) {
            float v = nearbyintf(xb[j] * inv);
            v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
            q[at[j / 16] + j % 16] = (int8_t)v;
            s += (int32_t)v;
        }
        d[b] = scale;
        sum[b] = s;
    }
}
