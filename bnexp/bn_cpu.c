/* bnexp's fused BatchNorm kernels for CPU, float32 and float64.
 *
 * Why C: on CPU, a BN layer written as torch ops pays Python and dispatch overhead per op
 * (~30 ops for forward + backward) and makes extra passes over memory; stock PyTorch runs one
 * C++ kernel each way. These two functions do the same arithmetic as bn_forward/bn_backward in
 * norm.py in the fewest passes: forward reads x once for the statistics and once to write y;
 * backward reads (x, dy) once for the two reductions and once to write dx.
 *
 * Layout: x is an (N, C, S) contiguous array, element (n, c, s) at (n*C + c)*S + s. A
 * channels_last (N, C, H, W) tensor is passed as (N*H*W, C, 1): the same memory.
 *
 * Statistics accumulate in double, shifted by each channel's first value (the "shifted data"
 * algorithm: sum(x-K) and sum((x-K)^2) in one pass without the cancellation of sum(x^2)).
 * Threads come from the OpenMP runtime PyTorch already loaded; small inputs run on one thread.
 * Results depend on the thread count only through the order in which partial sums are added.
 * Built on first use by bnexp/kernels.py (cc -O3 -march=native -fopenmp). Both entry points
 * return 0, or -1 when they cannot allocate their per-channel buffers.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#else /* built without OpenMP (kernels.py retries so where -fopenmp fails): one thread */
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

#define PAR_MIN 32768 /* elements below which one thread is faster than waking others */
#define RB 64          /* rows of an (N, C) input summed in the input's precision */

#define DEFINE_KERNELS(T, SUFFIX)                                                                \
                                                                                                 \
/* Rows lo..hi of an (N, C) input: adds sum(a - ka) and sum((a - ka) * (b - kb)) per column to   \
 * p (2*C doubles), through blk (2*C values of T) for blocks of RB rows. */                      \
static void rows_##SUFFIX(const T *restrict a, const T *restrict b, const T *ka, const T *kb,    \
                          int64_t lo, int64_t hi, int64_t C, double *p, T *restrict blk) {       \
    double *p1 = p, *p2 = p + C;                                                                 \
    T *restrict b1 = blk, *restrict b2 = blk + C;                                                \
    for (int64_t n0 = lo; n0 < hi; n0 += RB) {                                                   \
        int64_t n1 = n0 + RB < hi ? n0 + RB : hi;                                                \
        for (int64_t c = 0; c < C; c++) b1[c] = b2[c] = 0;                                       \
        for (int64_t n = n0; n < n1; n++) {                                                      \
            const T *pa = a + n * C, *pb = b + n * C;                                            \
            _Pragma("omp simd")                                                                  \
            for (int64_t c = 0; c < C; c++) {                                                    \
                T da = pa[c] - ka[c];                                                            \
                b1[c] += da;                                                                     \
                b2[c] += da * (pb[c] - kb[c]);                                                   \
            }                                                                                    \
        }                                                                                        \
        for (int64_t c = 0; c < C; c++) { p1[c] += b1[c]; p2[c] += b2[c]; }                      \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* Channels lo..hi of an (N, C, S) input: sum(a - ka) and sum((a - ka) * (b - kb)), in double. */\
static void chans_##SUFFIX(const T *restrict a, const T *restrict b, const T *ka, const T *kb,   \
                           int64_t N, int64_t C, int64_t S, int64_t lo, int64_t hi,              \
                           double *sum_a, double *sum_ab) {                                      \
    for (int64_t c = lo; c < hi; c++) {                                                          \
        double s1 = 0.0, s2 = 0.0;                                                               \
        const double kac = ka[c], kbc = kb[c];                                                   \
        for (int64_t n = 0; n < N; n++) {                                                        \
            const T *pa = a + (n * C + c) * S, *pb = b + (n * C + c) * S;                        \
            _Pragma("omp simd reduction(+ : s1, s2)")                                            \
            for (int64_t s = 0; s < S; s++) {                                                    \
                double da = (double)pa[s] - kac;                                                 \
                s1 += da;                                                                        \
                s2 += da * ((double)pb[s] - kbc);                                                \
            }                                                                                    \
        }                                                                                        \
        sum_a[c] = s1;                                                                           \
        sum_ab[c] = s2;                                                                          \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* Per-channel sums of (a - ka[c]) and (a - ka[c]) * (b - kb[c]), over n and s, in double. */    \
static int reduce2_##SUFFIX(const T *restrict a, const T *restrict b, const T *ka, const T *kb, \
                             int64_t N, int64_t C, int64_t S, double *sum_a, double *sum_ab,     \
                             int nt) {                                                           \
    if (S > 1) { /* channels-first: each channel is N runs of S contiguous values */             \
        if (nt == 1 || N * C * S < PAR_MIN)                                                      \
            chans_##SUFFIX(a, b, ka, kb, N, C, S, 0, C, sum_a, sum_ab);                          \
        else {                                                                                   \
            _Pragma("omp parallel num_threads(nt)")                                              \
            {                                                                                    \
                int t = omp_get_thread_num(), tn = omp_get_num_threads();                        \
                chans_##SUFFIX(a, b, ka, kb, N, C, S, C * t / tn, C * (t + 1) / tn, sum_a,       \
                               sum_ab);                                                          \
            }                                                                                    \
        }                                                                                        \
        return 0;                                                                                \
    }                                                                                            \
    /* (N, C) rows, streamed row by row: each thread sums its rows in blocks of RB, the block  \
     * sums in T (vectorised over C, in L1), the blocks' totals in double. */                    \
    int threads = N * C >= PAR_MIN ? nt : 1;                                                     \
    double *part = calloc((size_t)threads * 2 * C, sizeof(double));                              \
    T *blk = malloc((size_t)threads * 2 * C * sizeof(T));                                        \
    if (!part || !blk) { free(part); free(blk); return -1; }                                     \
    if (threads == 1) /* no parallel region at all: entering one costs ~1 us */                \
        rows_##SUFFIX(a, b, ka, kb, 0, N, C, part, blk);                                        \
    else {                                                                                       \
        _Pragma("omp parallel num_threads(threads)")                                             \
        {                                                                                        \
            int t = omp_get_thread_num(), tn = omp_get_num_threads();                            \
            rows_##SUFFIX(a, b, ka, kb, N * t / tn, N * (t + 1) / tn, C,                         \
                          part + (size_t)t * 2 * C, blk + (size_t)t * 2 * C);                    \
        }                                                                                        \
    }                                                                                            \
    for (int64_t c = 0; c < C; c++) {                                                            \
        double s1 = 0.0, s2 = 0.0;                                                               \
        for (int t = 0; t < threads; t++) {                                                      \
            s1 += part[(size_t)t * 2 * C + c];                                                   \
            s2 += part[(size_t)t * 2 * C + C + c];                                               \
        }                                                                                        \
        sum_a[c] = s1;                                                                           \
        sum_ab[c] = s2;                                                                          \
    }                                                                                            \
    free(part);                                                                                  \
    free(blk);                                                                                   \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
/* out = a * p[c] + (b - q[c]) * r[c] + u[c] for rows lo..hi; with a == NULL the first term is   \
 * left out. */                                                                                 \
static void affine_rows_##SUFFIX(const T *restrict a, const T *restrict b, T *restrict out,      \
                                 const T *p, const T *q, const T *r, const T *u, int64_t lo,     \
                                 int64_t hi, int64_t C, int64_t S) {                             \
    for (int64_t n = lo; n < hi; n++) {                                                          \
        if (S == 1) { /* one row of C channels */                                                \
            const T *pa = a + n * C, *pb = b + n * C;                                            \
            T *po = out + n * C;                                                                 \
            if (a) {                                                                             \
                _Pragma("omp simd")                                                              \
                for (int64_t c = 0; c < C; c++)                                                  \
                    po[c] = pa[c] * p[c] + (pb[c] - q[c]) * r[c] + u[c];                         \
            } else {                                                                             \
                _Pragma("omp simd")                                                              \
                for (int64_t c = 0; c < C; c++)                                                  \
                    po[c] = (pb[c] - q[c]) * r[c] + u[c];                                        \
            }                                                                                    \
            continue;                                                                            \
        }                                                                                        \
        for (int64_t c = 0; c < C; c++) { /* C runs of S values of one channel */               \
            const int64_t off = (n * C + c) * S;                                                 \
            const T *pa = a + off, *pb = b + off, qc = q[c], rc = r[c], uc = u[c];               \
            T *po = out + off;                                                                   \
            if (a) {                                                                             \
                const T pc = p[c];                                                               \
                _Pragma("omp simd")                                                              \
                for (int64_t s = 0; s < S; s++) po[s] = pa[s] * pc + (pb[s] - qc) * rc + uc;     \
            } else {                                                                             \
                _Pragma("omp simd")                                                              \
                for (int64_t s = 0; s < S; s++) po[s] = (pb[s] - qc) * rc + uc;                  \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
static void affine2_##SUFFIX(const T *a, const T *b, T *out, const T *p, const T *q, const T *r, \
                             const T *u, int64_t N, int64_t C, int64_t S, int nt) {              \
    if (nt == 1 || N * C * S < PAR_MIN) {                                                        \
        affine_rows_##SUFFIX(a, b, out, p, q, r, u, 0, N, C, S);                                 \
        return;                                                                                  \
    }                                                                                            \
    _Pragma("omp parallel num_threads(nt)")                                                      \
    {                                                                                            \
        int t = omp_get_thread_num(), tn = omp_get_num_threads();                                \
        affine_rows_##SUFFIX(a, b, out, p, q, r, u, N * t / tn, N * (t + 1) / tn, C, S);         \
    }                                                                                            \
}                                                                                                \
                                                                                                 \
/* Training-mode forward: y, per-channel mean/invstd/biased var, running statistics updated    \
 * as PyTorch does (running_var gets the unbiased variance; momentum < 0 means a cumulative      \
 * average over num_batches_tracked). weight, bias, running_* and num_batches may be NULL. */    \
int bn_forward_##SUFFIX(const T *x, T *y, int64_t N, int64_t C, int64_t S, const T *weight,     \
                        const T *bias, double eps, T *mean, T *invstd, T *var,                   \
                        T *running_mean, T *running_var, int64_t *num_batches, double momentum,  \
                        int nt) {                                                                \
    double *s1 = malloc(sizeof(double) * 2 * C), *s2 = s1 + C;                                   \
    T *k = malloc(sizeof(T) * 4 * C), *zero = k + C, *scale = zero + C, *shift = scale + C;      \
    if (!s1 || !k) { free(s1); free(k); return -1; }                                             \
    for (int64_t c = 0; c < C; c++) { k[c] = x[S > 1 ? c * S : c]; zero[c] = 0; }                \
    if (reduce2_##SUFFIX(x, x, k, k, N, C, S, s1, s2, nt)) { free(s1); free(k); return -1; }     \
    const double n = (double)N * (double)S;                                                      \
    double factor = momentum;                                                                    \
    if (num_batches) {                                                                           \
        *num_batches += 1;                                                                       \
        if (momentum < 0) factor = 1.0 / (double)*num_batches;                                   \
    }                                                                                            \
    for (int64_t c = 0; c < C; c++) {                                                            \
        double d = s1[c] / n, m = k[c] + d, v = s2[c] / n - d * d;                               \
        if (v < 0) v = 0;                                                                        \
        double r = 1.0 / sqrt(v + eps);                                                          \
        mean[c] = (T)m;                                                                          \
        var[c] = (T)v;                                                                           \
        invstd[c] = (T)r;                                                                        \
        scale[c] = (T)(weight ? (double)weight[c] * r : r);                                      \
        shift[c] = bias ? bias[c] : (T)0;                                                        \
        if (running_mean) {                                                                      \
            running_mean[c] = (T)((1.0 - factor) * running_mean[c] + factor * m);                \
            running_var[c] = (T)((1.0 - factor) * running_var[c] + factor * v * n / (n - 1));    \
        }                                                                                        \
    }                                                                                            \
    affine2_##SUFFIX(NULL, x, y, zero, mean, scale, shift, N, C, S, nt);                         \
    free(s1);                                                                                    \
    free(k);                                                                                     \
    return 0;                                                                                    \
}                                                                                                \
                                                                                                 \
/* Backward: dweight = sum(dy * xhat), dbias = sum(dy) (either may be NULL), and if dx is not    \
 * NULL, dx = a*dy + (x - mean)*b + c with a = weight*invstd, b = -a*invstd*dweight/n,            \
 * c = -a*dbias/n: the analytic gradient of BN on batch statistics. */                          \
int bn_backward_##SUFFIX(const T *dy, const T *x, T *dx, int64_t N, int64_t C, int64_t S,       \
                         const T *weight, const T *mean, const T *invstd, T *dweight, T *dbias,  \
                         int nt) {                                                               \
    double *sdy = malloc(sizeof(double) * 2 * C), *sdx = sdy + C;                                \
    T *coef = malloc(sizeof(T) * 4 * C), *a = coef, *b = a + C, *cc = b + C, *zero = cc + C;     \
    if (!sdy || !coef) { free(sdy); free(coef); return -1; }                                     \
    for (int64_t c = 0; c < C; c++) zero[c] = 0;                                                 \
    if (reduce2_##SUFFIX(dy, x, zero, mean, N, C, S, sdy, sdx, nt)) {                            \
        free(sdy);                                                                               \
        free(coef);                                                                              \
        return -1;                                                                               \
    }                                                                                            \
    const double n = (double)N * (double)S;                                                      \
    for (int64_t c = 0; c < C; c++) {                                                            \
        double r = invstd[c], dg = sdx[c] * r, ac = weight ? (double)weight[c] * r : r;          \
        if (dweight) dweight[c] = (T)dg;                                                         \
        if (dbias) dbias[c] = (T)sdy[c];                                                         \
        a[c] = (T)ac;                                                                            \
        b[c] = (T)(-ac * r * dg / n);                                                            \
        cc[c] = (T)(-ac * sdy[c] / n);                                                           \
    }                                                                                            \
    if (dx) affine2_##SUFFIX(dy, x, dx, a, mean, b, cc, N, C, S, nt);                            \
    free(sdy);                                                                                   \
    free(coef);                                                                                  \
    return 0;                                                                                    \
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
