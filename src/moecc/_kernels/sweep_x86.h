/* sweep_x86.h -- the sweep prefetch of decode for weights stored row by row (kdot_x86.c,
 * qdot_x86.c).
 *
 * A tile of rows (rows of ldw bytes, read side by side front to back) prefetches, a share each
 * time it advances, the PF_AHEAD tiles that begin PF_BYTES or more on, into L2: the hardware
 * prefetchers lose track of four rows' streams, and DRAM then sees one sequential stream. Into
 * L2 rather than L1, and two tiles rather than one: on Zen 4 (a 151936 x 2048 matrix, 2
 * threads, alternating runs) q6_k decode read 19 GB/s of weights with one tile 8 KB on into L1,
 * 31 into L2, 36 with two tiles 16 KB on; q4_k 30 -> 34 -> 37; q8 24 -> 29-37. */
#ifndef MOECC_SWEEP_X86_H
#define MOECC_SWEEP_X86_H

#define PF_BYTES 16384
#define PF_AHEAD 2

typedef struct {
    const char *at;
    int64_t step; /* bytes per advance; 0: a single row, no prefetch */
} sweep;

/* for `rows` rows at w that advance `per_advance` of their `units` (blocks, super-blocks) at a
 * time */
INLINE sweep sweep_start(const char *w, const int rows, int64_t ldw, int64_t per_advance,
                         int64_t units) {
    const int64_t tile = rows * ldw;
    const sweep s = {w + (PF_BYTES + tile - 1) / tile * tile,
                     rows > 1 ? (PF_AHEAD * tile * per_advance / units + 63) & ~(int64_t)63 : 0};
    return s;
}

INLINE TARGET_AVX2 void sweep_next(sweep *s) {
    for (int64_t p = 0; p < s->step; p += 64) _mm_prefetch(s->at + p, _MM_HINT_T1);
    s->at += s->step;
}

#endif /* MOECC_SWEEP_X86_H */
