/* bnexp's BatchNorm kernels for one element type T, as ordinary C functions.
 *
 * bn_cpu.c includes this file twice: with T = float and NAME(f) = f_f32, then with T = double and
 * NAME(f) = f_f64. Compiler messages and debuggers point at the lines below.
 *
 * Arrays are (N, C, S) and contiguous: element (n, c, s) at (n*C + c)*S + s. A channels_last
 * (N, C, H, W) tensor arrives as (N*H*W, C, 1), which is the same memory. Two shapes of loop:
 * - S > 1 ("channel runs"): each channel is N runs of S contiguous values; threads split channels
 *   for reductions and rows for element-wise passes.
 * - S == 1 ("rows"): an (N, C) matrix, vectorised across each row. Narrow rows (C < WIDE) are
 *   taken k at a time as rows of W = k*C values with the per-channel vectors tiled k times, so
 *   the vector loop stays long; the N % k rows left over run as rows of C (a tiled vector begins
 *   with the plain one).
 */

/* Rows lo..hi of an (N, W) array: adds sum(a - ka) and sum((a - ka) * (b - kb)) per column to s1
 * and s2 (W doubles each). Blocks of RB rows are summed in T into blk (2*W values, in L1, the loop
 * vectorised over the columns); only the blocks' totals are added in double. */
static void NAME(sum_rows)(const T *restrict a, const T *restrict b, const T *ka, const T *kb,
                           int64_t lo, int64_t hi, int64_t W, double *s1, double *s2,
                           T *restrict blk) {
    T *restrict b1 = blk, *restrict b2 = blk + W;
    for (int64_t n0 = lo; n0 < hi; n0 += RB) {
        const int64_t n1 = n0 + RB < hi ? n0 + RB : hi;
        for (int64_t j = 0; j < W; j++) b1[j] = b2[j] = 0;
        for (int64_t n = n0; n < n1; n++) {
            const T *pa = a + n * W, *pb = b + n * W;
#pragma omp simd
            for (int64_t j = 0; j < W; j++) {
                const T da = pa[j] - ka[j];
                b1[j] += da;
                b2[j] += da * (pb[j] - kb[j]);
            }
        }
        for (int64_t j = 0; j < W; j++) {
            s1[j] += b1[j];
            s2[j] += b2[j];
        }
    }
}

/* Channels lo..hi of an (N, C, S) array: sum(a - ka) and sum((a - ka) * (b - kb)), in double. */
static void NAME(sum_channels)(const T *restrict a, const T *restrict b, const T *ka,
                               const T *kb, int64_t N, int64_t C, int64_t S, int64_t lo,
                               int64_t hi, double *sum_a, double *sum_ab) {
    for (int64_t c = lo; c < hi; c++) {
        double s1 = 0.0, s2 = 0.0;
        const double kac = ka[c], kbc = kb[c];
        for (int64_t n = 0; n < N; n++) {
            const T *pa = a + (n * C + c) * S, *pb = b + (n * C + c) * S;
#pragma omp simd reduction(+ : s1, s2)
            for (int64_t s = 0; s < S; s++) {
                const double da = (double)pa[s] - kac;
                s1 += da;
                s2 += da * ((double)pb[s] - kbc);
            }
        }
        sum_a[c] = s1;
        sum_ab[c] = s2;
    }
}

static void NAME(reduce_channels)(const T *a, const T *b, const T *ka, const T *kb, int64_t N,
                                  int64_t C, int64_t S, double *sum_a, double *sum_ab, int nt) {
    if (nt == 1 || N * C * S < PAR_MIN) {
        NAME(sum_channels)(a, b, ka, kb, N, C, S, 0, C, sum_a, sum_ab);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), tn = omp_get_num_threads();
        NAME(sum_channels)(a, b, ka, kb, N, C, S, C * t / tn, C * (t + 1) / tn, sum_a, sum_ab);
    }
}

/* v (C values) repeated k times into out (k*C values). */
static void NAME(tile)(const T *v, int64_t C, int64_t k, T *out) {
    for (int64_t j = 0; j < k * C; j++) out[j] = v[j % C];
}

/* Per-column sums of an (N, C) array: each thread sums its share of the wide rows into its own
 * part (2*W doubles); thread 0's part also takes the leftover rows; then the parts and the k
 * copies of each channel are added up. Returns -1 when it cannot allocate. */
static int NAME(reduce_rows)(const T *a, const T *b, const T *ka, const T *kb, int64_t N,
                             int64_t C, double *sum_a, double *sum_ab, int nt) {
    const int64_t k = widen(C), W = k * C, rows = N / k;
    const int threads = N * C >= PAR_MIN ? nt : 1;
    T kt[4 * WIDE], *kat = kt, *kbt = kt + 2 * WIDE;
    if (k > 1) {
        NAME(tile)(ka, C, k, kat);
        NAME(tile)(kb, C, k, kbt);
    } else {
        kat = (T *)ka;
        kbt = (T *)kb;
    }
    double *part = calloc((size_t)threads * 2 * W, sizeof(double));
    T *blk = malloc((size_t)threads * 2 * W * sizeof(T));
    if (!part || !blk) {
        free(part);
        free(blk);
        return -1;
    }
    if (threads == 1) { /* no parallel region at all: entering one has a fixed cost */
        NAME(sum_rows)(a, b, kat, kbt, 0, rows, W, part, part + W, blk);
    } else {
#pragma omp parallel num_threads(threads)
        {
            const int t = omp_get_thread_num(), tn = omp_get_num_threads();
            double *p = part + (size_t)t * 2 * W;
            NAME(sum_rows)(a, b, kat, kbt, rows * t / tn, rows * (t + 1) / tn, W, p, p + W,
                           blk + (size_t)t * 2 * W);
        }
    }
    NAME(sum_rows)(a + rows * W, b + rows * W, kat, kbt, 0, N - rows * k, C, part, part + W, blk);
    for (int64_t c = 0; c < C; c++) {
        double s1 = 0.0, s2 = 0.0;
        for (int t = 0; t < threads; t++) {
            for (int64_t j = c; j < W; j += C) {
                s1 += part[(size_t)t * 2 * W + j];
                s2 += part[(size_t)t * 2 * W + W + j];
            }
        }
        sum_a[c] = s1;
        sum_ab[c] = s2;
    }
    free(part);
    free(blk);
    return 0;
}

/* Per-channel sums of (a - ka[c]) and (a - ka[c]) * (b - kb[c]) over n and s, in double. */
static int NAME(reduce2)(const T *a, const T *b, const T *ka, const T *kb, int64_t N, int64_t C,
                         int64_t S, double *sum_a, double *sum_ab, int nt) {
    if (S == 1) return NAME(reduce_rows)(a, b, ka, kb, N, C, sum_a, sum_ab, nt);
    NAME(reduce_channels)(a, b, ka, kb, N, C, S, sum_a, sum_ab, nt);
    return 0;
}

/* out = a * p + (b - q) * r + u for rows lo..hi of an (N, W) array, the coefficients one per
 * column; with a == NULL the first term is left out. */
static void NAME(affine_rows)(const T *restrict a, const T *restrict b, T *restrict out,
                              const T *p, const T *q, const T *r, const T *u, int64_t lo,
                              int64_t hi, int64_t W) {
    if (!a) {
        for (int64_t n = lo; n < hi; n++) {
            const T *pb = b + n * W;
            T *po = out + n * W;
#pragma omp simd
            for (int64_t j = 0; j < W; j++) po[j] = (pb[j] - q[j]) * r[j] + u[j];
        }
        return;
    }
    for (int64_t n = lo; n < hi; n++) {
        const T *pa = a + n * W, *pb = b + n * W;
        T *po = out + n * W;
#pragma omp simd
        for (int64_t j = 0; j < W; j++) po[j] = pa[j] * p[j] + (pb[j] - q[j]) * r[j] + u[j];
    }
}

/* The same for rows lo..hi of an (N, C, S) array with S > 1: C runs of S values per row, the
 * coefficients one per channel. */
static void NAME(affine_channels)(const T *restrict a, const T *restrict b, T *restrict out,
                                  const T *p, const T *q, const T *r, const T *u, int64_t lo,
                                  int64_t hi, int64_t C, int64_t S) {
    for (int64_t n = lo; n < hi; n++) {
        for (int64_t c = 0; c < C; c++) {
            const int64_t off = (n * C + c) * S;
            const T *pb = b + off, qc = q[c], rc = r[c], uc = u[c];
            T *po = out + off;
            if (a) {
                const T *pa = a + off, pc = p[c];
#pragma omp simd
                for (int64_t s = 0; s < S; s++) po[s] = pa[s] * pc + (pb[s] - qc) * rc + uc;
            } else {
#pragma omp simd
                for (int64_t s = 0; s < S; s++) po[s] = (pb[s] - qc) * rc + uc;
            }
        }
    }
}

static void NAME(affine_rows_par)(const T *a, const T *b, T *out, const T *p, const T *q,
                                  const T *r, const T *u, int64_t rows, int64_t W, int nt) {
    if (nt == 1 || rows * W < PAR_MIN) {
        NAME(affine_rows)(a, b, out, p, q, r, u, 0, rows, W);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        const int t = omp_get_thread_num(), tn = omp_get_num_threads();
        NAME(affine_rows)(a, b, out, p, q, r, u, rows * t / tn, rows * (t + 1) / tn, W);
    }
}

/* out = a * p[c] + (b - q[c]) * r[c] + u[c] over an (N, C, S) array (a may be NULL). */
static void NAME(affine2)(const T *a, const T *b, T *out, const T *p, const T *q, const T *r,
                          const T *u, int64_t N, int64_t C, int64_t S, int nt) {
    if (S > 1) {
        if (nt == 1 || N * C * S < PAR_MIN) {
            NAME(affine_channels)(a, b, out, p, q, r, u, 0, N, C, S);
            return;
        }
#pragma omp parallel num_threads(nt)
        {
            const int t = omp_get_thread_num(), tn = omp_get_num_threads();
            NAME(affine_channels)(a, b, out, p, q, r, u, N * t / tn, N * (t + 1) / tn, C, S);
        }
        return;
    }
    const int64_t k = widen(C), W = k * C, rows = N / k;
    if (k == 1) {
        NAME(affine_rows_par)(a, b, out, p, q, r, u, N, C, nt);
        return;
    }
    T coef[4][2 * WIDE];
    NAME(tile)(a ? p : q, C, k, coef[0]); /* p is unused (may be NULL) without a */
    NAME(tile)(q, C, k, coef[1]);
    NAME(tile)(r, C, k, coef[2]);
    NAME(tile)(u, C, k, coef[3]);
    NAME(affine_rows_par)(a, b, out, coef[0], coef[1], coef[2], coef[3], rows, W, nt);
    const int64_t off = rows * W;
    NAME(affine_rows)(a ? a + off : NULL, b + off, out + off, coef[0], coef[1], coef[2],
                      coef[3], 0, N - rows * k, C);
}

/* Per-channel statistics from the shifted sums (shift k, sums s1 = sum(x - k) and
 * s2 = sum((x - k)^2) over n values), the forward's scale and shift, and the running statistics
 * updated as PyTorch does: running_var gets the unbiased variance; momentum < 0 means a
 * cumulative average over num_batches_tracked. */
static void NAME(finish_stats)(const T *k, const double *s1, const double *s2, double n,
                               int64_t C, const T *weight, const T *bias, double eps, T *mean,
                               T *invstd, T *var, T *scale, T *shift, T *running_mean,
                               T *running_var, int64_t *num_batches, double momentum) {
    double factor = momentum;
    if (num_batches) {
        *num_batches += 1;
        if (momentum < 0) factor = 1.0 / (double)*num_batches;
    }
    for (int64_t c = 0; c < C; c++) {
        const double d = s1[c] / n, m = k[c] + d;
        double v = s2[c] / n - d * d;
        if (v < 0) v = 0;
        const double r = 1.0 / sqrt(v + eps);
        mean[c] = (T)m;
        var[c] = (T)v;
        invstd[c] = (T)r;
        scale[c] = (T)(weight ? (double)weight[c] * r : r);
        shift[c] = bias ? bias[c] : (T)0;
        if (running_mean) {
            running_mean[c] = (T)((1.0 - factor) * running_mean[c] + factor * m);
            running_var[c] = (T)((1.0 - factor) * running_var[c] + factor * v * n / (n - 1));
        }
    }
}

/* Training-mode forward: y, stats = the per-channel (mean, invstd, biased var) as a (3, C) array,
 * running statistics updated. weight, bias, running_* and num_batches may be NULL. Returns 0,
 * or -1 when it cannot allocate its per-channel buffers. */
int NAME(bn_forward)(const T *x, T *y, int64_t N, int64_t C, int64_t S, const T *weight,
                     const T *bias, double eps, T *stats, T *running_mean, T *running_var,
                     int64_t *num_batches, double momentum, int nt) {
    T *mean = stats, *invstd = stats + C, *var = stats + 2 * C;
    double *s1 = malloc(sizeof(double) * 2 * C), *s2 = s1 ? s1 + C : NULL;
    T *k = malloc(sizeof(T) * 3 * C), *scale = k ? k + C : NULL, *shift = k ? k + 2 * C : NULL;
    int rc = -1;
    if (s1 && k) {
        for (int64_t c = 0; c < C; c++) k[c] = x[S > 1 ? c * S : c]; /* shift: first values */
        rc = NAME(reduce2)(x, x, k, k, N, C, S, s1, s2, nt);
    }
    if (rc == 0) {
        NAME(finish_stats)(k, s1, s2, (double)N * (double)S, C, weight, bias, eps, mean, invstd,
                           var, scale, shift, running_mean, running_var, num_batches, momentum);
        NAME(affine2)(NULL, x, y, NULL, mean, scale, shift, N, C, S, nt);
    }
    free(s1);
    free(k);
    return rc;
}

/* Backward from the forward's stats: dweight = sum(dy * xhat), dbias = sum(dy) (either may be
 * NULL), and if dx is not NULL, dx = a*dy + (x - mean)*b + c with a = weight*invstd,
 * b = -a*invstd*dweight/n, c = -a*dbias/n: the analytic gradient of BN on batch statistics.
 * Returns 0, or -1 when it cannot allocate its per-channel buffers. */
int NAME(bn_backward)(const T *dy, const T *x, T *dx, int64_t N, int64_t C, int64_t S,
                      const T *weight, const T *stats, T *dweight, T *dbias, int nt) {
    const T *mean = stats, *invstd = stats + C;
    double *sdy = malloc(sizeof(double) * 2 * C), *sdx = sdy ? sdy + C : NULL;
    T *coef = calloc(4 * (size_t)C, sizeof(T)); /* a, b, c, and C zeros: dy's shift */
    int rc = -1;
    if (sdy && coef) rc = NAME(reduce2)(dy, x, coef + 3 * C, mean, N, C, S, sdy, sdx, nt);
    if (rc == 0) {
        const double n = (double)N * (double)S;
        T *a = coef, *b = coef + C, *cc = coef + 2 * C;
        for (int64_t c = 0; c < C; c++) {
            const double r = invstd[c], dg = sdx[c] * r, ac = weight ? (double)weight[c] * r : r;
            if (dweight) dweight[c] = (T)dg;
            if (dbias) dbias[c] = (T)sdy[c];
            a[c] = (T)ac;
            b[c] = (T)(-ac * r * dg / n);
            cc[c] = (T)(-ac * sdy[c] / n);
        }
        if (dx) NAME(affine2)(dy, x, dx, a, mean, b, cc, N, C, S, nt);
    }
    free(sdy);
    free(coef);
    return rc;
}
