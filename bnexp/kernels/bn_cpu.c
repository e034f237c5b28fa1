/* bnexp's fused BatchNorm kernels for CPU, float32 and float64.
 *
 * Why C: on CPU, a BN layer written as torch ops pays Python and dispatch overhead per op
 * (about 30 ops for forward + backward) and makes extra passes over memory; stock PyTorch runs
 * one C++ kernel each way. These functions do the arithmetic of bn_forward/bn_backward in
 * bnexp/norm.py (the reference) in the fewest passes: forward reads x once for the statistics
 * and once to write y; backward reads (x, dy) once for the two reductions and once to write dx.
 *
 * Statistics accumulate in double, shifted by each channel's first value (the "shifted data"
 * algorithm: sum(x-K) and sum((x-K)^2) in one pass without the cancellation of sum(x^2)).
 * Threads come from the OpenMP runtime PyTorch already loaded; small inputs run on one thread.
 * Results depend on the thread count only through the order in which partial sums are added.
 * Built by bnexp/kernels/cpu.py (cc -O3 -march=native -fopenmp). The exported functions are
 * bn_forward_f32/f64 and bn_backward_f32/f64; their bodies are in bn_cpu_impl.h, written once
 * for an element type T and included here for float and for double.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#else /* built without OpenMP (cpu.py retries so where -fopenmp fails): one thread */
static int omp_get_thread_num(void) { return 0; }
static int omp_get_num_threads(void) { return 1; }
#endif

#define PAR_MIN 32768 /* elements below which one thread is faster than waking others */
#define RB 64         /* rows of an (N, C) input summed in the input's precision */
#define WIDE 64       /* (N, C) inputs with fewer columns are processed as rows of >= WIDE */
#define VEC 16        /* values in the widest vector register (AVX-512, float) */

/* How many rows of C values to take as one row: 1 when C >= WIDE; otherwise enough for at least
 * WIDE values, and a whole number of vectors where that stays under 2*WIDE (no scalar tail in
 * the vector loop). The per-channel vectors tiled to that width fit in 2*WIDE values. */
static int64_t widen(int64_t C) {
    if (C >= WIDE) return 1;
    const int64_t k = (WIDE + C - 1) / C;
    for (int64_t j = k; j * C < 2 * WIDE; j++)
        if ((j * C) % VEC == 0) return j;
    return k;
}

#define CONCAT_(a, b) a##_##b
#define CONCAT(a, b) CONCAT_(a, b)

#define T float
#define NAME(f) CONCAT(f, f32)
#include "bn_cpu_impl.h"
#undef T
#undef NAME

#define T double
#define NAME(f) CONCAT(f, f64)
#include "bn_cpu_impl.h"
#undef T
#undef NAME
