/* Memory read bandwidth: stream a buffer far larger than the caches through vector loads.
 *
 * Built at run time by bandwidth.py (cc -O3 -fopenmp -shared) and called through ctypes; it is
 * not part of the moecc package.  The widest load the CPU has is chosen once from cpuid
 * (AVX-512, AVX2, or plain 64-bit loads), with no -march flag needed.  Each thread sums its
 * own contiguous slice, as four sequential streams with eight independent accumulators, so the
 * loop is limited by memory, not by add latency or by misses in flight; the sum is returned so the compiler cannot drop the loads.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <immintrin.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define BW_ALIGN 4096
#define BW_STEP 512 /* bytes of one slice per loop iteration: 2 x 64-byte lines from each stream */
#define BW_STREAMS 4 /* a thread's slice is read as 4 interleaved sequential streams: more misses
                        in flight than one stream (+5-10% here), as a matmul over several rows has */

__attribute__((target("avx512f")))
static uint64_t sum_avx512(const uint8_t *p, size_t n) {
    size_t part = n / BW_STREAMS;
    const uint8_t *s0 = p, *s1 = p + part, *s2 = p + 2 * part, *s3 = p + 3 * part;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (size_t i = 0; i < part; i += 128) {
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
static uint64_t sum_avx2(const uint8_t *p, size_t n) {
    size_t part = n / BW_STREAMS;
    const uint8_t *s[BW_STREAMS] = {p, p + part, p + 2 * part, p + 3 * part};
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (size_t i = 0; i < part; i += 128) {
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

static uint64_t sum_scalar(const uint8_t *p, size_t n) {
    size_t part = n / BW_STREAMS / 8; /* in words */
    const uint64_t *s0 = (const uint64_t *)p, *s1 = s0 + part, *s2 = s0 + 2 * part, *s3 = s0 + 3 * part;
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (size_t i = 0; i < part; i += 8) /* one word per line per stream: still every line loaded */
        for (int j = 0; j < 8; j++) {
            a0 += s0[i + j]; a1 += s1[i + j]; a2 += s2[i + j]; a3 += s3[i + j];
        }
    return a0 + a1 + a2 + a3;
}

typedef uint64_t (*sum_fn)(const uint8_t *, size_t);

static sum_fn pick(int *which) {
    __builtin_cpu_init();
    const char *force = getenv("MOECC_BW_ISA"); /* "avx512", "avx2" or "scalar" */
    if ((!force || !strcmp(force, "avx512")) && __builtin_cpu_supports("avx512f")) { *which = 512; return sum_avx512; }
    if ((!force || strcmp(force, "scalar")) && __builtin_cpu_supports("avx2")) { *which = 256; return sum_avx2; }
    *which = 64;
    return sum_scalar;
}

/* the load width in bits that bw_read uses (512, 256 or 64) */
int bw_load_bits(void) {
    int which;
    pick(&which);
    return which;
}

int bw_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

/* a page-aligned buffer of `bytes` (a multiple of BW_STEP), written by the threads that read it */
void *bw_alloc(size_t bytes, int threads) {
    void *p = NULL;
    if (bytes % BW_STEP || posix_memalign(&p, BW_ALIGN, bytes)) return NULL;
    uint8_t *b = (uint8_t *)p;
    long chunks = (long)(bytes / BW_STEP);
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (long c = 0; c < chunks; c++) memset(b + (size_t)c * BW_STEP, (int)(c & 0x7f), BW_STEP);
    return p;
}

void bw_free(void *p) { free(p); }

/* Read all `bytes` of `buf` once with `threads` threads (each a contiguous slice, the same split
 * as bw_alloc's first touch); returns the sum of all 64-bit words, so the reads are kept. */
uint64_t bw_read(const void *buf, size_t bytes, int threads) {
    int which;
    sum_fn fn = pick(&which);
    const uint8_t *b = (const uint8_t *)buf;
    size_t chunks = bytes / BW_STEP;
    uint64_t total = 0;
    #pragma omp parallel num_threads(threads) reduction(+:total)
    {
        int t = 0, n = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        n = omp_get_num_threads();
#endif
        size_t lo = chunks * (size_t)t / (size_t)n, hi = chunks * (size_t)(t + 1) / (size_t)n;
        total += fn(b + lo * BW_STEP, (hi - lo) * BW_STEP);
    }
    return total;
}
