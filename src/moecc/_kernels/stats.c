/* stats.c -- importance statistics: the sums over rows of each input column's square, which
 * moecc.imatrix collects from the forward step (moecc_stats) as llama.cpp's llama-imatrix does.
 * Sums are double: a column's sum over a long text is then the same whichever rows came in
 * which step. Each column is added to by one thread, rows in order, so the result does not
 * depend on the number of threads either. */
#include "moecc.h"

void moecc_add_squares(const float *x, int64_t j0, int64_t j1, double *sums) {
    for (int64_t j = j0; j < j1; j++) sums[j] += (double)x[j] * (double)x[j];
}

void moecc_add_squares_team(const float *x, int64_t T, int64_t K, double *sums) {
    int64_t j0, j1;
    moecc_split(K, 16, omp_get_num_threads(), omp_get_thread_num(), &j0, &j1);
    for (int64_t t = 0; t < T; t++) moecc_add_squares(x + t * K, j0, j1, sums);
}
