/* bandwidth.c -- the machine's memory read bandwidth, the ceiling of decode speed.
 *
 * Decode streams every weight it uses once per token, each thread through its own contiguous
 * rows. This reads a buffer far larger than the caches the same way: each thread sums its own
 * contiguous slice (the slice it first touched, so its pages are local to it) as four
 * interleaved sequential streams -- more misses in flight than one stream (+5-10% here), as a
 * matmul over several rows has -- into eight independent accumulators, so the loop is limited
 * by memory, not by add latency. The loads are as wide as the active ISA's (moecc_active_isa:
 * 512 bits for avx512 / avx512vnni, 256 for avx2, 64-bit words for generic), so MOECC_ISA
 * narrows them as it does every kernel.
 */
#define _POSIX_C_SOURCE 200809L /* posix_memalign, clock_gettime */
#include "moecc.h"

#include <stdlib.h>
#include <time.h>

#define BW_ALIGN 4096 /* page-aligned: every vector load is aligned, no page is shared by two slices */
#define BW_STREAMS 4  /* a thread's slice is read as this many interleaved sequential streams */

typedef uint64_t (*sum_fn)(const uint8_t *p, int64_t n);

/* The sum of the 64-bit words of p[0, n), n a multiple of MOECC_BW_STEP: each of the
 * BW_STREAMS streams is a whole number of 128-byte steps. Its caller keeps the sum, so the
 * loads cannot be dropped. */
static uint64_t sum_generic(const uint8_t *p, int64_t n) {
    const int64_t part = n / BW_STREAMS / 8; /* words per stream */
    const uint64_t *s0 = (const uint64_t *)p, *s1 = s0 + part, *s2 = s0 + 2 * part, *s3 = s0 + 3 * part;
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (int64_t i = 0; i < part; i += 8) /* one 64-byte line of each stream */
        for (int j = 0; j < 8; j++) {
            a0 += s0[i + j]; a1 += s1[i + j]; a2 += s2[i + j]; a3 += s3[i + j];
        }
    return a0 + a1 + a2 + a3;
}

#if MOECC_X86
#include <immintrin.h>

__attribute__((target("avx512f")))
static uint64_t sum_avx512(const uint8_t *p, int64_t n) {
    const int64_t part = n / BW_STREAMS;
    const uint8_t *s0 = p, *s1 = p + part, *s2 = p + 2 * part, *s3 = p + 3 * part;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int64_t i = 0; i < part; i += 128) { /* two lines of each stream */
        a0 = _mm512_add_epi64(a0, _mm512_load_si512((const void *)(s0 + i)));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512((const void *)(s0 + i + 64)));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512((const void *)(s1 + i)));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512((const void *)(s1 + i + 64)));
        a4 = _mm512_add_epi64(a4, _mm512_load_si512((const void *)(s2 + i)));
        a5 = _mm512_add_epi64(a5, _mm512_load_si512((const void *)(s2 + i + 64)));
        a6 = _mm512_add_epi64(a6, _mm512_load_si512((const void *)(s3 + i)));
        a7 = _mm512_add_epi64(a7, _mm512_load_si512((const void *)(s3 + i + 64)));
    }
    a0 = _mm512_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)),
                          _mm512_add_epi64(_mm512_add_epi64(a4, a5), _mm512_add_epi64(a6, a7)));
    return (uint64_t)_mm512_reduce_add_epi64(a0);
}

__attribute__((target("avx2")))
static uint64_t sum_avx2(const uint8_t *p, int64_t n) {
    const int64_t part = n / BW_STREAMS;
    const uint8_t *s[BW_STREAMS] = {p, p + part, p + 2 * part, p + 3 * part};
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (int64_t i = 0; i < part; i += 128) { /* two lines of each stream */
#define LINE(acc, q) acc = _mm256_add_epi64(acc, _mm256_add_epi64(_mm256_load_si256((const __m256i *)(q)), \
                                                                  _mm256_load_si256((const __m256i *)((q) + 32))))
        LINE(a0, s[0] + i); LINE(a1, s[0] + i + 64);
        LINE(a2, s[1] + i); LINE(a3, s[1] + i + 64);
        LINE(a4, s[2] + i); LINE(a5, s[2] + i + 64);
        LINE(a6, s[3] + i); LINE(a7, s[3] + i + 64);
#undef LINE
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3)),
                          _mm256_add_epi64(_mm256_add_epi64(a4, a5), _mm256_add_epi64(a6, a7)));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, a0);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}
#endif /* MOECC_X86 */

/* the loop for the active ISA, and the width of its loads in bits */
static sum_fn pick(int *bits) {
#if MOECC_X86
    const moecc_isa *isa = moecc_active_isa();
    if (isa == &moecc_isa_avx512 || isa == &moecc_isa_avx512vnni) { *bits = 512; return sum_avx512; }
    if (isa == &moecc_isa_avx2) { *bits = 256; return sum_avx2; }
#endif
    *bits = 64;
    return sum_generic;
}

int moecc_read_bandwidth_bits(void) {
    int bits;
    pick(&bits);
    return bits;
}

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* The calling thread's slice [*lo, *hi) of a buffer of `bytes`, whole steps: the one split of
 * touch and read_once, so each thread reads the pages it touched. */
static void slice(int64_t bytes, int64_t *lo, int64_t *hi) {
    moecc_split(bytes, MOECC_BW_STEP, omp_get_num_threads(), omp_get_thread_num(), lo, hi);
}

/* Write the buffer with the threads that will read it: the first touch places each page near
 * the thread that reads it, and makes every page a page of its own (not the shared zero page). */
static void touch(uint8_t *buf, int64_t bytes, int threads) {
    #pragma omp parallel num_threads(threads)
    {
        int64_t lo, hi;
        slice(bytes, &lo, &hi);
        memset(buf + lo, 1, (size_t)(hi - lo));
    }
}

static void read_once(const uint8_t *buf, int64_t bytes, int threads, sum_fn sum) {
    #pragma omp parallel num_threads(threads)
    {
        int64_t lo, hi;
        slice(bytes, &lo, &hi);
        /* a store to a volatile must happen, so the sum and the loads behind it must too */
        volatile uint64_t keep = sum(buf + lo, hi - lo);
        (void)keep;
    }
}

int moecc_read_bandwidth(int64_t bytes, int passes, int threads, double *bytes_per_s) {
    int bits;
    const sum_fn sum = pick(&bits);
    void *p = NULL;
    if (posix_memalign(&p, BW_ALIGN, (size_t)bytes)) return MOECC_ERR_NOMEM;
    uint8_t *buf = (uint8_t *)p;
    touch(buf, bytes, threads);
    read_once(buf, bytes, threads, sum); /* warm-up: TLB, thread start-up */
    for (int i = 0; i < passes; i++) {
        const double t0 = now_seconds();
        read_once(buf, bytes, threads, sum);
        bytes_per_s[i] = (double)bytes / (now_seconds() - t0);
    }
    free(p);
    return MOECC_OK;
}
