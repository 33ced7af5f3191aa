/* stub */
#include "moecc.h"
#if MOECC_X86
#define FWD(t, isa) void moecc_tile_##t##_##isa(int64_t K, int group, const void *w, int64_t ldw, int nr, const void *x, int64_t ldx, int nt, float *out, int64_t ldo) { moecc_tile_##t##_generic(K, group, w, ldw, nr, x, ldx, nt, out, ldo); }
FWD(q8, avx2) FWD(q4, avx2) FWD(q8, avx512) FWD(q4, avx512) FWD(q8, avx512vnni) FWD(q4, avx512vnni)
#endif
