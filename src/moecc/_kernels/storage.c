/* storage.c -- the table of storage types (moecc.h), what each looks like in memory
 * independent of the ISA (row lookup, the K types' super-blocks unpacked), and the references
 * of the activation quantizations the quantized inner products read. */
#include <math.h>

#include "moecc.h"

_Static_assert(sizeof(uint16_t) == 2 && sizeof(float) == 4, "fp16 scales and float32 rows");

/* moecc/storage.py TYPES, row for row */
const moecc_storage_info moecc_storage_types[MOECC_STORAGE_COUNT] = {
    /*               name    values        bytes panel rows lookup activations */
    [MOECC_F32] = {"f32", 1, 4, 1, 1, MOECC_ACT_F32},
    [MOECC_BF16] = {"bf16", 1, 2, 1, 1, MOECC_ACT_F32},
    [MOECC_F16] = {"f16", 1, 2, 1, 1, MOECC_ACT_F32},
    [MOECC_Q8] = {"q8", MOECC_QBLOCK, sizeof(moecc_block_q8), 1, 1, MOECC_ACT_Q8_32},
    [MOECC_Q4] = {"q4", MOECC_QBLOCK, sizeof(moecc_block_q4), 1, 1, MOECC_ACT_Q8_32},
    [MOECC_Q4P] = {"q4p", MOECC_QBLOCK, sizeof(moecc_block_q4), MOECC_PANEL_ROWS, 0,
                   MOECC_ACT_Q8_32},
    [MOECC_Q4_K] = {"q4_k", MOECC_KBLOCK, sizeof(moecc_block_q4_k), 1, 1, MOECC_ACT_Q8_K},
    [MOECC_Q6_K] = {"q6_k", MOECC_KBLOCK, sizeof(moecc_block_q6_k), 1, 1, MOECC_ACT_Q8_K},
    [MOECC_Q5_K] = {"q5_k", MOECC_KBLOCK, sizeof(moecc_block_q5_k), 1, 1, MOECC_ACT_Q8_K},
    [MOECC_Q5_0] = {"q5_0", MOECC_QBLOCK, sizeof(moecc_block_q5_0), 1, 1, MOECC_ACT_Q8_32},
    [MOECC_Q5_1] = {"q5_1", MOECC_QBLOCK, sizeof(moecc_block_q5_1), 1, 1, MOECC_ACT_Q8_32},
    [MOECC_Q4_1] = {"q4_1", MOECC_QBLOCK, sizeof(moecc_block_q4_1), 1, 1, MOECC_ACT_Q8_32},
};

void moecc_q4_k_scales(const uint8_t packed[MOECC_K_SCALE_BYTES], uint8_t out[16]) {
    for (int j = 0; j < 4; j++) {
        out[j] = packed[j] & 63;
        out[8 + j] = packed[j + 4] & 63;
        out[4 + j] = (packed[j + 8] & 15) | (uint8_t)((packed[j] >> 6) << 4);
        out[12 + j] = (packed[j + 8] >> 4) | (uint8_t)((packed[j + 4] >> 6) << 4);
    }
}

/* q4_k / q5_k: the scales, mins and low 4 bits they share (qh: q5_k's fifth bits, or NULL) */
static void unpack_q4_q5_k(uint16_t d, uint16_t dmin, const uint8_t *scales, const uint8_t *qs,
                           const uint8_t *qh, moecc_kblock *out) {
    uint8_t sm[16];
    moecc_q4_k_scales(scales, sm);
    out->d = moecc_f16_to_f32(d);
    out->dmin = moecc_f16_to_f32(dmin);
    for (int c = 0; c < 4; c++)
        for (int l = 0; l < 32; l++) {
            const int fifth = qh ? qh[l] >> (2 * c) : 0; /* bit 0: value 64c + l; 1: + 32 */
            out->q[64 * c + l] = (int8_t)((qs[32 * c + l] & 15) | (fifth & 1) << 4);
            out->q[64 * c + 32 + l] = (int8_t)((qs[32 * c + l] >> 4) | (fifth >> 1 & 1) << 4);
        }
    for (int h = 0; h < MOECC_KBLOCK / 16; h++) {
        out->scale[h] = sm[h / 2];
        out->min[h] = sm[8 + h / 2];
    }
}

void moecc_unpack_k(moecc_storage s, const void *block, moecc_kblock *out) {
    if (s == MOECC_Q4_K) {
        moecc_block_q4_k b;
        memcpy(&b, block, sizeof b);
        unpack_q4_q5_k(b.d, b.dmin, b.scales, b.qs, NULL, out);
        return;
    }
    if (s == MOECC_Q5_K) {
        moecc_block_q5_k b;
        memcpy(&b, block, sizeof b);
        unpack_q4_q5_k(b.d, b.dmin, b.scales, b.qs, b.qh, out);
        return;
    }
    moecc_block_q6_k b; /* MOECC_Q6_K */
    memcpy(&b, block, sizeof b);
    out->d = moecc_f16_to_f32(b.d);
    out->dmin = 0.0f;
    for (int half = 0; half < 2; half++)
        for (int i = 0; i < 4; i++)
            for (int l = 0; l < 32; l++) {
                const uint8_t lo = b.ql[64 * half + l + 32 * (i & 1)];
                const int low4 = i < 2 ? lo & 15 : lo >> 4;
                const int up2 = (b.qh[32 * half + l] >> (2 * i)) & 3;
                out->q[128 * half + 32 * i + l] = (int8_t)((low4 | (up2 << 4)) - 32);
            }
    for (int h = 0; h < MOECC_KBLOCK / 16; h++) {
        out->scale[h] = b.scales[h];
        out->min[h] = 0;
    }
}

int moecc_storage_check(moecc_storage s, int64_t N, int64_t K) {
    if ((unsigned)s >= MOECC_STORAGE_COUNT) return MOECC_ERR_STORAGE;
    const moecc_storage_info *t = &moecc_storage_types[s];
    return K % t->block_values || N % t->panel_rows ? MOECC_ERR_SHAPE : MOECC_OK;
}

void moecc_unpack_01(moecc_storage s, const void *block, int8_t q[MOECC_QBLOCK], float *d,
                     float *m) {
    const unsigned char *b = (const unsigned char *)block;
    const int qs_at = s == MOECC_Q4_1 ? 4 : s == MOECC_Q5_0 ? 6 : 8;
    uint32_t qh = 0;
    if (s != MOECC_Q4_1) memcpy(&qh, b + (s == MOECC_Q5_0 ? 2 : 4), sizeof qh);
    const int bias = s == MOECC_Q5_0 ? 16 : 0;
    for (int j = 0; j < MOECC_QBLOCK / 2; j++) {
        q[j] = (int8_t)(((b[qs_at + j] & 15) | ((qh >> j) & 1) << 4) - bias);
        q[j + 16] = (int8_t)(((b[qs_at + j] >> 4) | ((qh >> (j + 16)) & 1) << 4) - bias);
    }
    uint16_t h[2];
    memcpy(h, b, sizeof h);
    *d = moecc_f16_to_f32(h[0]);
    *m = s == MOECC_Q5_0 ? 0.0f : moecc_f16_to_f32(h[1]);
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
    case MOECC_Q4_1:
    case MOECC_Q5_0:
    case MOECC_Q5_1: /* as ggml's dequantize_row_*: q * d (+ m) */
        for (int64_t b = 0; b < K / MOECC_QBLOCK; b++) {
            int8_t q[MOECC_QBLOCK];
            float d, m;
            moecc_unpack_01(f, p + b * (int64_t)moecc_storage_types[f].block_bytes, q, &d, &m);
            for (int j = 0; j < MOECC_QBLOCK; j++) out[b * MOECC_QBLOCK + j] = (float)q[j] * d + m;
        }
        break;
    case MOECC_Q4_K:
    case MOECC_Q5_K:
    case MOECC_Q6_K: /* as ggml's dequantize_row_*: (d * scale) * q - dmin * min, in float32 */
        for (int64_t b = 0; b < K / MOECC_KBLOCK; b++) {
            moecc_kblock k;
            moecc_unpack_k(f, p + b * (int64_t)moecc_storage_types[f].block_bytes, &k);
            float *o = out + b * MOECC_KBLOCK;
            for (int v = 0; v < MOECC_KBLOCK; v++)
                o[v] = k.d * (float)k.scale[v / 16] * (float)k.q[v] - k.dmin * (float)k.min[v / 16];
        }
        break;
    default:
        break;
    }
}

/* The same float32 operations as quant.quantize_activations, so the int8 values agree
 * exactly (rounding to nearest even in the default rounding mode): a block of n values gets
 * d = max|x| / 127 and q = round(x / d) (x times the float32 reciprocal of d). */
static float block_scale(const float *x, int n) {
    float amax = 0.0f;
    for (int j = 0; j < n; j++) {
        const float a = fabsf(x[j]);
        amax = a > amax ? a : amax;
    }
    return amax / 127.0f;
}

/* q[j] = round(x[j] * inv), |q| <= 127, for j < n; returns their sum */
static int32_t quantize_values(const float *x, int n, float inv, int8_t *q) {
    int32_t s = 0;
    for (int j = 0; j < n; j++) {
        float v = nearbyintf(x[j] * inv);
        v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
        q[j] = (int8_t)v;
        s += (int32_t)v;
    }
    return s;
}

void moecc_quantize_x(int64_t K, const float *x, void *xq) {
    int8_t *q = (int8_t *)xq;
    float *d = (float *)moecc_xq_scales(xq, K);
    int32_t *sum = (int32_t *)moecc_xq_sums(xq, K);
    for (int64_t b = 0; b < K / MOECC_QBLOCK; b++) {
        const float *xb = x + b * MOECC_QBLOCK;
        const float scale = block_scale(xb, MOECC_QBLOCK);
        const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        sum[b] = quantize_values(xb, MOECC_QBLOCK, inv, q + b * MOECC_QBLOCK);
        d[b] = scale;
    }
}

void moecc_quantize_xk(int64_t K, const float *x, void *xk) {
    int8_t *q = (int8_t *)xk;
    float *d = (float *)moecc_xk_scales(xk, K);
    int16_t *bsum = (int16_t *)moecc_xk_bsums(xk, K);
    for (int64_t b = 0; b < K / MOECC_KBLOCK; b++) {
        const float *xb = x + b * MOECC_KBLOCK;
        const float scale = block_scale(xb, MOECC_KBLOCK);
        const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
        for (int h = 0; h < MOECC_KBLOCK / 16; h++)
            bsum[b * (MOECC_KBLOCK / 16) + h] =
                (int16_t)quantize_values(xb + 16 * h, 16, inv, q + b * MOECC_KBLOCK + 16 * h);
        d[b] = scale;
    }
}
