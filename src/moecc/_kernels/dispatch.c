/* dispatch.c -- pick the instruction-set table once (cpuid), let the caller force another one. */
#include "moecc.h"

typedef struct {
    const moecc_isa *isa;
    int (*cpu_has)(void); /* run-time check of the CPU (and OS state saving) */
} isa_entry;

static int has_always(void) { return 1; }

#if MOECC_X86
static int has_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}
static int has_avx512(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           has_avx2();
}
static int has_avx512vnni(void) {
    __builtin_cpu_init();
    return has_avx512() && __builtin_cpu_supports("avx512vnni");
}
#endif

/* compiled-in tables, worst to best */
static const isa_entry entries[] = {
    {&moecc_isa_generic, has_always},
#if MOECC_X86
    {&moecc_isa_avx2, has_avx2},
    {&moecc_isa_avx512, has_avx512},
    {&moecc_isa_avx512vnni, has_avx512vnni},
#endif
};
#define N_ENTRIES ((int)(sizeof entries / sizeof entries[0]))

static int supported[N_ENTRIES];
static const moecc_isa *active = &moecc_isa_generic;

void moecc_dispatch_init(void) {
    for (int i = 0; i < N_ENTRIES; i++) {
        supported[i] = entries[i].cpu_has();
        if (supported[i]) active = entries[i].isa;
    }
}

int moecc_isa_count(void) { return N_ENTRIES; }
const char *moecc_isa_name(int i) { return entries[i].isa->name; }
int moecc_isa_supported(int i) { return i >= 0 && i < N_ENTRIES && supported[i]; }
const char *moecc_get_isa(void) { return active->name; }
const moecc_isa *moecc_active_isa(void) { return active; }

int moecc_set_isa(const char *name) {
    for (int i = 0; i < N_ENTRIES; i++) {
        if (strcmp(entries[i].isa->name, name) == 0 && supported[i]) {
            active = entries[i].isa;
            return MOECC_OK;
        }
    }
    return MOECC_ERR_ISA;
}

int moecc_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int moecc_max_threads(void) { return omp_get_max_threads(); }
