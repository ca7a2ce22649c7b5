/* One GPT-2 decode step (a single new token against the KV cache), in C, on every core.
 *
 * Why: a decoded token reads every weight once (495 MB for GPT-2 124M) and does little else, so its
 * speed is the memory bandwidth. PyTorch's matrix-vector products stream from one core here, and the
 * ~600 small ops a token cost more than the arithmetic. This file does the whole step in one call:
 * one OpenMP region in which the threads split each product's output columns between them.
 *
 * The region runs on PyTorch's own OpenMP threads: this library links libgomp.so.1, and the dynamic
 * linker hands it the copy torch already loaded. Two thread pools on two cores would fight: torch's
 * workers spin after each op while ours wait for the core.
 *
 * It is the same network as gpt2core/model.py (pre-norm blocks, tanh GELU, causal attention over the
 * cache) at fp32; only the order of the additions differs, so logits agree to float rounding
 * (tests/test_native.py holds it to the PyTorch model). Weights are read in place from the model's
 * tensors: every Linear is stored (in, out), so y = b + sum_i x[i] * W[i, :] streams W row by row.
 *
 * Built by gpt2core/native.py with the machine's C compiler; loaded with ctypes.
 */
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#define CPU_RELAX() __builtin_ia32_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

/* Between the phases of a step the threads wait for each other dozens of times a token: a spinning
 * barrier costs well under a microsecond, where OpenMP's own (under OMP_WAIT_POLICY=PASSIVE, as the
 * app sets) would sleep in the kernel at each one. Sense-reversing, so it can be reused at once. */
typedef struct {
    atomic_int count;
    atomic_int sense;
} Barrier;

static void barrier_wait(Barrier *b, int n_threads, int *local_sense) {
    int s = !*local_sense;
    *local_sense = s;
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == n_threads - 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        atomic_store_explicit(&b->sense, s, memory_order_release);
    } else {
        /* Spin, then yield: with another busy process on the machine, the thread we wait for may have lost
         * its core, and spinning on ours would keep it off for a whole time slice at each barrier. */
        for (int spins = 0; atomic_load_explicit(&b->sense, memory_order_acquire) != s; spins++) {
            if (spins < 4096) CPU_RELAX();
            else sched_yield();
        }
    }
}

static pthread_mutex_t step_mu = PTHREAD_MUTEX_INITIALIZER;   /* one step at a time per process */

/* ---- LayerNorm with its statistics ------------------------------------------------------------------
 * out = (x - mean) / sqrt(var + eps) * w + b over a row of d, and, where the pointer is not NULL, what
 * the explorer shows of it: the input's mean and (biased) variance, x_hat, and the output's mean and
 * variance. One visit to the row while it is in L1, where torch needs a pass over the whole tensor
 * per statistic. Sums in double, a few lanes at a time (omp simd lets the compiler reorder them). */
static void layer_norm_row(const float *restrict x, const float *restrict w, const float *restrict b,
                           float *restrict out, int64_t d, float eps, float *in_mean, float *in_var,
                           float *restrict normalized, float *out_mean, float *out_var) {
    double mean = 0.0, var = 0.0;
    #pragma omp simd reduction(+:mean)
    for (int64_t i = 0; i < d; i++) mean += x[i];
    mean /= (double)d;
    #pragma omp simd reduction(+:var)
    for (int64_t i = 0; i < d; i++) { const double c = x[i] - mean; var += c * c; }
    var /= (double)d;
    const float m = (float)mean, rstd = 1.0f / sqrtf((float)var + eps);
    double osum = 0.0;
    #pragma omp simd reduction(+:osum)
    for (int64_t i = 0; i < d; i++) {
        const float xh = (x[i] - m) * rstd;
        out[i] = xh * w[i] + b[i];
        osum += out[i];
    }
    if (normalized) {
        #pragma omp simd
        for (int64_t i = 0; i < d; i++) normalized[i] = (x[i] - m) * rstd;
    }
    if (in_mean) *in_mean = m;
    if (in_var) *in_var = (float)var;
    const double omean = osum / (double)d;
    if (out_mean) *out_mean = (float)omean;
    if (out_var) {
        double ov = 0.0;
        #pragma omp simd reduction(+:ov)
        for (int64_t i = 0; i < d; i++) { const double c = out[i] - omean; ov += c * c; }
        *out_var = (float)(ov / (double)d);
    }
}

/* ---- GELU -------------------------------------------------------------------------------------------
 * gelu(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3), computed as x / (1 + exp(-2u)),
 * the same function (0.5 (1 + tanh u) is the logistic of 2u), with a vectorised exp: torch's tanh
 * kernel took 2 ms for 256 x 3072 values here. exp is Cephes' expf polynomial (about 1 ulp), with its
 * argument clamped to +-88.4, and 0 where the logistic is 0 in float. */
#if defined(__AVX2__) && defined(__FMA__)
static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
    x = _mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f));
    __m256 fx = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    const __m256 z = _mm256_mul_ps(x, x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_add_ps(_mm256_fmadd_ps(y, z, x), _mm256_set1_ps(1.0f));
    const __m256i n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(0x7f)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(n));
}

static inline __m256 gelu256(__m256 x) {
    const __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
    const __m256 u = _mm256_mul_ps(_mm256_set1_ps(0.7978845608028654f), _mm256_fmadd_ps(_mm256_set1_ps(0.044715f), x3, x));
    const __m256 a = _mm256_mul_ps(_mm256_set1_ps(-2.0f), u);
    const __m256 y = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), exp256(a)));
    /* Where exp(a) would overflow, the logistic is 0 (exactly, in float): so is gelu. */
    const __m256 saturated = _mm256_cmp_ps(a, _mm256_set1_ps(88.3762626647949f), _CMP_GE_OQ);
    return _mm256_blendv_ps(y, _mm256_and_ps(x, _mm256_set1_ps(-0.0f)), saturated);   /* +-0 */
}
#endif

static inline float gelu_one(float x) {
    const float u = 0.7978845608028654f * (x + 0.044715f * x * x * x);
    float a = -2.0f * u;
    if (a >= 88.3762626647949f) return copysignf(0.0f, x);   /* the logistic is 0 in float */
    if (a < -88.3762626647949f) a = -88.3762626647949f;
    return x / (1.0f + expf(a));
}

/* y[0..n) = gelu(x[0..n)); y may be x. */
static void gelu_span(const float *x, float *y, int64_t n) {
    int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, gelu256(_mm256_loadu_ps(x + i)));
#endif
    for (; i < n; i++) y[i] = gelu_one(x[i]);
}

/* row[0..n) = softmax(row[0..n)), in place. */
static void softmax_row(float *row, int64_t n) {
    float mx = -INFINITY, sum = 0.0f;
    for (int64_t s = 0; s < n; s++) mx = row[s] > mx ? row[s] : mx;
    int64_t s = 0;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 vsum = _mm256_setzero_ps();
    const __m256 vmx = _mm256_set1_ps(mx);
    for (; s + 8 <= n; s += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(row + s), vmx));
        _mm256_storeu_ps(row + s, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, vsum);
    for (int j = 0; j < 8; j++) sum += lanes[j];
#endif
    for (; s < n; s++) { row[s] = expf(row[s] - mx); sum += row[s]; }
    const float inv = 1.0f / sum;
    for (s = 0; s < n; s++) row[s] *= inv;
}

/* ---- kernels ------------------------------------------------------------------------------------ */

/* Columns [c0, c1) of y = b + x W, W (K, N) row-major. Four rows at a time, so y (in L1/L2) is
 * read and written once per four rows of W streamed from memory. */
static void matvec_cols(const float *restrict x, const float *restrict W, const float *restrict b,
                        float *restrict y, int64_t K, int64_t N, int64_t c0, int64_t c1) {
    int64_t n = c1 - c0;
    float *restrict yy = y + c0;
    if (n <= 0) return;
    if (b) memcpy(yy, b + c0, (size_t)n * sizeof(float));
    else memset(yy, 0, (size_t)n * sizeof(float));
    int64_t i = 0;
    for (; i + 4 <= K; i += 4) {
        const float a0 = x[i], a1 = x[i + 1], a2 = x[i + 2], a3 = x[i + 3];
        const float *restrict w0 = W + i * N + c0;
        const float *restrict w1 = w0 + N;
        const float *restrict w2 = w1 + N;
        const float *restrict w3 = w2 + N;
        for (int64_t c = 0; c < n; c++)
            yy[c] += a0 * w0[c] + a1 * w1[c] + a2 * w2[c] + a3 * w3[c];
    }
    for (; i < K; i++) {
        const float a = x[i];
        const float *restrict w = W + i * N + c0;
        for (int64_t c = 0; c < n; c++)
            yy[c] += a * w[c];
    }
}

/* This thread's share of the columns of an N-wide output: multiples of 16 floats (a 64-byte line),
 * so no two threads write the same line. */
static void column_range(int64_t N, int tid, int nt, int64_t *c0, int64_t *c1) {
    int64_t per = ((N + nt - 1) / nt + 15) / 16 * 16;
    *c0 = tid * per < N ? tid * per : N;
    *c1 = *c0 + per < N ? *c0 + per : N;
}

static void matvec_part(const float *x, const float *W, const float *b, float *y, int64_t K, int64_t N,
                        int apply_gelu, int tid, int nt) {
    int64_t c0, c1;
    column_range(N, tid, nt, &c0, &c1);
    matvec_cols(x, W, b, y, K, N, c0, c1);
    if (apply_gelu)
        gelu_span(y + c0, y + c0, c1 - c0);
}

/* The same product split by rows instead: this thread streams rows [k0, k1) of W, one contiguous run of
 * memory, into its own partial sums over every column (part + tid * N); after a barrier each thread adds
 * up the partials of its columns. Split by columns, each thread would read a short piece of every row
 * (1.5 KiB of each 3 KiB row of a 768-wide matrix), and the hardware prefetcher restarts at each one:
 * this read the block matrices of GPT-2 124M 5-30% faster here (AMD EPYC). */
static void matvec_rows_part(const float *x, const float *W, const float *b, float *y, int64_t K, int64_t N,
                             int apply_gelu, float *part, Barrier *bar, int *sense, int tid, int nt) {
    const int64_t k0 = K * tid / nt, k1 = K * (tid + 1) / nt;
    matvec_cols(x + k0, W + k0 * N, NULL, part + tid * N, k1 - k0, N, 0, N);
    barrier_wait(bar, nt, sense);
    int64_t c0, c1;
    column_range(N, tid, nt, &c0, &c1);
    for (int64_t c = c0; c < c1; c++) {
        float sum = b ? b[c] : 0.0f;
        for (int t = 0; t < nt; t++) sum += part[t * N + c];
        y[c] = sum;
    }
    if (apply_gelu)
        gelu_span(y + c0, y + c0, c1 - c0);
}

/* Heads tid, tid + nt, ...: store this token's k and v in the cache, then attend over positions 0..pos. */
static void attention_part(const float *qkv, float *kc, float *vc, float *z, float *sc, int64_t n_head,
                           int64_t hs, int64_t max_len, int64_t pos, int tid, int nt) {
    const int64_t d = n_head * hs, S = pos + 1;
    const float scale = 1.0f / sqrtf((float)hs);
    for (int64_t h = tid; h < n_head; h += nt) {
        const float *q = qkv + h * hs;
        float *K = kc + h * max_len * hs, *V = vc + h * max_len * hs;
        memcpy(K + pos * hs, qkv + d + h * hs, (size_t)hs * sizeof(float));
        memcpy(V + pos * hs, qkv + 2 * d + h * hs, (size_t)hs * sizeof(float));
        for (int64_t s = 0; s < S; s++) {
            const float *k = K + s * hs;
            float dot = 0.0f;
            for (int64_t j = 0; j < hs; j++) dot += q[j] * k[j];
            sc[s] = dot * scale;
        }
        softmax_row(sc, S);
        float *zh = z + h * hs;
        for (int64_t j = 0; j < hs; j++) zh[j] = 0.0f;
        for (int64_t s = 0; s < S; s++) {
            const float pw = sc[s], *v = V + s * hs;
            for (int64_t j = 0; j < hs; j++) zh[j] += pw * v[j];
        }
    }
}

/* ---- the step ------------------------------------------------------------------------------------
 * ptrs: wte, wpe, ln_f.w, ln_f.b, head (d, vocab), then per layer
 *       ln_1.w, ln_1.b, c_attn.W (d, 3d), c_attn.b (or NULL), attn.c_proj.W (d, d), attn.c_proj.b,
 *       ln_2.w, ln_2.b, c_fc.W (d, 4d), c_fc.b, mlp.c_proj.W (4d, d), mlp.c_proj.b
 * dims: n_layer, n_head, d, vocab, max_len (the cache's), threads, wte stride for a token, wte stride
 *       for a feature (the embedding table is read as wte[token * s0 + i * s1])
 * kc, vc: (n_layer, n_head, max_len, hs); scratch: gpt2_scratch_floats(d, max_len, threads) floats.
 * Returns 0, or -1 if pos or token is out of range. */
#define PER_LAYER 12

int64_t gpt2_scratch_floats(int64_t d, int64_t max_len, int64_t threads) {
    return 9 * d + threads * (2 * d + max_len) + threads * 4 * d;
}

int gpt2_decode_step(const float *const *ptrs, const int64_t *dims, float eps, float *kc, float *vc,
                     int64_t pos, int64_t token, float *logits, float *scratch) {
    const int64_t L = dims[0], nh = dims[1], d = dims[2], V = dims[3], max_len = dims[4];
    const int64_t s0 = dims[6], s1 = dims[7], hs = d / nh;
    int threads = (int)dims[5];
    if (pos < 0 || pos >= max_len || token < 0 || token >= V) return -1;
    if (threads < 1) threads = 1;
    const float *wte = ptrs[0], *wpe = ptrs[1], *lnf_w = ptrs[2], *lnf_b = ptrs[3], *head = ptrs[4];
    /* Shared: what one thread writes and others read. Private: each thread keeps its own copy of the
     * residual stream and its LayerNorm, recomputed redundantly (d floats) rather than waited for. */
    float *qkv = scratch, *z = qkv + 3 * d, *h = z + d, *tmp = h + 4 * d;
    float *priv = tmp + d, *part = priv + threads * (2 * d + max_len);   /* row-split partial sums */
    Barrier bar = {0, 0};

    pthread_mutex_lock(&step_mu);
    #pragma omp parallel num_threads(threads)
    {
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        int sense = 0;
        float *x = priv + tid * (2 * d + max_len), *xn = x + d, *sc = xn + d;
        for (int64_t i = 0; i < d; i++) x[i] = wte[token * s0 + i * s1] + wpe[pos * d + i];
        for (int64_t l = 0; l < L; l++) {
            const float *const *p = ptrs + 5 + l * PER_LAYER;
            layer_norm_row(x, p[0], p[1], xn, d, eps, NULL, NULL, NULL, NULL, NULL);
            matvec_rows_part(xn, p[2], p[3], qkv, d, 3 * d, 0, part, &bar, &sense, tid, nt);
            barrier_wait(&bar, nt, &sense);
            attention_part(qkv, kc + l * nh * max_len * hs, vc + l * nh * max_len * hs, z, sc, nh, hs,
                           max_len, pos, tid, nt);
            barrier_wait(&bar, nt, &sense);
            matvec_rows_part(z, p[4], p[5], tmp, d, d, 0, part, &bar, &sense, tid, nt);
            barrier_wait(&bar, nt, &sense);
            for (int64_t i = 0; i < d; i++) x[i] += tmp[i];
            layer_norm_row(x, p[6], p[7], xn, d, eps, NULL, NULL, NULL, NULL, NULL);
            matvec_rows_part(xn, p[8], p[9], h, d, 4 * d, 1, part, &bar, &sense, tid, nt);
            barrier_wait(&bar, nt, &sense);
            matvec_rows_part(h, p[10], p[11], tmp, 4 * d, d, 0, part, &bar, &sense, tid, nt);
            barrier_wait(&bar, nt, &sense);
            for (int64_t i = 0; i < d; i++) x[i] += tmp[i];
        }
        layer_norm_row(x, lnf_w, lnf_b, xn, d, eps, NULL, NULL, NULL, NULL, NULL);
        matvec_part(xn, head, NULL, logits, d, V, 0, tid, nt);
    }
    pthread_mutex_unlock(&step_mu);
    return 0;
}

/* y = b + x W on every thread, for tests and the bandwidth benchmark. */
void gpt2_matvec(const float *x, const float *W, const float *b, float *y, int64_t K, int64_t N, int threads) {
    #pragma omp parallel num_threads(threads < 1 ? 1 : threads)
    matvec_part(x, W, b, y, K, N, 0, omp_get_thread_num(), omp_get_num_threads());
}

/* ---- matrix products for prompts (M > 1 rows) ------------------------------------------------------
 * Y (M, N) = b + X (M, K) W (K, N), all row-major. MKL's sgemm runs well below what this CPU (AMD,
 * AVX2) does for some of GPT-2's shapes, at 16 rows most of all (bench/ measures it). This is the
 * classic register-blocked kernel: a 6 x 16 block of Y lives in twelve 8-wide registers while k runs
 * over K, one broadcast of X and two loads of W per k. X is packed k-major, 6 rows at a time, so the
 * kernel reads it as one stream (rows of 3072 floats are 12 KiB apart, and would alias in L1).
 * W is read packed (gpt2_pack_weight below), so W is read from memory once per product. */
typedef float v8f __attribute__((vector_size(32), aligned(4)));

#define NR 16
#define MR 6
#define KC 256

/* One 6 x (2 V) tile over kc values of k, V floats a register (VT): MR x 2 accumulators while k runs,
 * one broadcast of X and two loads of W per k. The first k block starts from the bias; later ones from Y. */
#define DEFINE_GEMM_BLOCK(NAME, VT, V)                                                                        \
static inline __attribute__((always_inline)) void NAME(int mr, const float *restrict Xp, int64_t kc,          \
                                                        const float *restrict W, int64_t ldw,                \
                                                        const float *restrict b, int first,                  \
                                                        float *restrict Y, int64_t ldy) {                    \
    VT acc[MR][2];                                                                                           \
    if (first) {                                                                                             \
        VT b0 = {0}, b1 = {0};                                                                               \
        if (b) { b0 = *(const VT *)b; b1 = *(const VT *)(b + V); }                                           \
        for (int r = 0; r < mr; r++) { acc[r][0] = b0; acc[r][1] = b1; }                                     \
    } else {                                                                                                 \
        for (int r = 0; r < mr; r++) { acc[r][0] = *(VT *)(Y + r * ldy); acc[r][1] = *(VT *)(Y + r * ldy + V); } \
    }                                                                                                        \
    for (int64_t k = 0; k < kc; k++) {                                                                       \
        const VT w0 = *(const VT *)(W + k * ldw), w1 = *(const VT *)(W + k * ldw + V);                       \
        for (int r = 0; r < mr; r++) {                                                                       \
            const float xv = Xp[k * MR + r];                                                                 \
            acc[r][0] += xv * w0;                                                                            \
            acc[r][1] += xv * w1;                                                                            \
        }                                                                                                    \
    }                                                                                                        \
    for (int r = 0; r < mr; r++) {                                                                           \
        *(VT *)(Y + r * ldy) = acc[r][0];                                                                    \
        *(VT *)(Y + r * ldy + V) = acc[r][1];                                                                \
    }                                                                                                        \
}

/* A switch on mr so that each case has a constant mr and the row loops unroll. */
#define DEFINE_GEMM_TILE(NAME, BLOCK)                                                                         \
static void NAME(int mr, const float *Xp, int64_t kc, const float *W, int64_t ldw, const float *b, int first, \
                 float *Y, int64_t ldy) {                                                                    \
    switch (mr) {                                                                                            \
        case 6: BLOCK(6, Xp, kc, W, ldw, b, first, Y, ldy); break;                                           \
        case 5: BLOCK(5, Xp, kc, W, ldw, b, first, Y, ldy); break;                                           \
        case 4: BLOCK(4, Xp, kc, W, ldw, b, first, Y, ldy); break;                                           \
        case 3: BLOCK(3, Xp, kc, W, ldw, b, first, Y, ldy); break;                                           \
        case 2: BLOCK(2, Xp, kc, W, ldw, b, first, Y, ldy); break;                                           \
        default: BLOCK(1, Xp, kc, W, ldw, b, first, Y, ldy); break;                                          \
    }                                                                                                        \
}

DEFINE_GEMM_BLOCK(gemm_block, v8f, 8)
DEFINE_GEMM_TILE(gemm_tile, gemm_block)

/* The prompt products read W in panels PW columns wide. With AVX-512, 32: a 6 x 32 block of Y in twelve
 * 16-wide registers, one broadcast of X per two 16-wide multiply-adds (where the 16-wide block needs
 * one per one), which is what lets a CPU with two 512-bit FMA units (Intel's) run near its peak.
 * Without it, 16: the block above. Which is faster than torch's own product on a machine is measured
 * there (gpt2core.backend), not assumed. */
#if defined(__AVX512F__)
#define PW 32
typedef float v16f __attribute__((vector_size(64), aligned(4)));

DEFINE_GEMM_BLOCK(gemm_block_wide, v16f, 16)
DEFINE_GEMM_TILE(gemm_tile_wide, gemm_block_wide)
#else
#define PW NR
#define gemm_tile_wide gemm_tile
#endif

/* k values per block of a product: a panel's block (LKC x PW floats, 16 KiB) stays in L1. */
#define LKC (KC * NR / PW)

int64_t gpt2_panel_width(void) { return PW; }

/* W (K, N) as ceil(N / PW) panels, each (K, PW) and contiguous, with the columns past N zero: the
 * kernel then reads a panel as one stream. Rows of W are N floats apart (201 KB for the head), so a
 * panel read in place is a separate miss for each 64-byte piece, and the 3072 rows of the MLP's
 * projection, 3 KiB apart, crowd into a few cache sets. Weights are constant between edits, so
 * gpt2core.model.Linear packs each once and keeps the copy (bench/RESULTS.md: packing inside every
 * product cost 6-11% of its time at 256 rows). Copied 64 panels at a time: 4 KiB of each row in,
 * 64 streams out, where a whole row at once would write to thousands of pages. */
int64_t gpt2_packed_floats(int64_t K, int64_t N) { return (N + PW - 1) / PW * K * PW; }

void gpt2_pack_weight(const float *W, int64_t K, int64_t N, float *P, int threads) {
    const int64_t panels = (N + PW - 1) / PW, group = 64;
    #pragma omp parallel for num_threads(threads < 1 ? 1 : threads) schedule(static)
    for (int64_t g0 = 0; g0 < panels; g0 += group)
        for (int64_t k = 0; k < K; k++)
            for (int64_t p = g0; p < panels && p < g0 + group; p++) {
                const int64_t n0 = p * PW, cols = N - n0 < PW ? N - n0 : PW;
                float *dst = P + (p * K + k) * PW;
                memcpy(dst, W + k * N + n0, (size_t)cols * sizeof(float));
                for (int64_t c = cols; c < PW; c++) dst[c] = 0.0f;
            }
}

/* Y (M, N) = b + X (M, K) @ W, with W packed by gpt2_pack_weight. Threads take disjoint ranges of
 * panels; each panel (KC x 16 of it, 16 KiB) stays in L1 while every row block of X passes over it.
 * Returns 0, or -1 if the buffer for packed X could not be allocated. */
int gpt2_linear_packed(const float *X, const float *P, const float *b, float *Y, int64_t M, int64_t K,
                       int64_t N, int threads) {
    const int64_t panels = (N + PW - 1) / PW;
    const int64_t blocks = (M + MR - 1) / MR, n_kb = (K + LKC - 1) / LKC;
    if (threads < 1) threads = 1;
    /* X packed once for everyone: [k block][row block][k][MR]. Not zeroed: a tile reads only the rows
     * and the k of its block that are there (mr, kc), and zeroing 3 MB at 256 rows cost more than packing. */
    float *Xp = malloc((size_t)(blocks * MR * n_kb * LKC) * sizeof(float));
    if (!Xp) return -1;
    #pragma omp parallel num_threads(threads)
    {
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        for (int64_t ib = tid; ib < blocks; ib += nt)
            for (int64_t kb = 0; kb < n_kb; kb++) {
                float *dst = Xp + (kb * blocks + ib) * LKC * MR;
                const int64_t k0 = kb * LKC, kc = K - k0 < LKC ? K - k0 : LKC;
                for (int64_t r = 0; r < MR && ib * MR + r < M; r++) {
                    const float *src = X + (ib * MR + r) * K + k0;
                    for (int64_t k = 0; k < kc; k++) dst[k * MR + r] = src[k];
                }
            }
        #pragma omp barrier
        const int64_t p0 = panels * tid / nt, p1 = panels * (tid + 1) / nt;
        for (int64_t p = p0; p < p1; p++) {
            const int64_t n0 = p * PW;
            const float *panel = P + p * K * PW;
            if (N - n0 >= PW) {
                for (int64_t kb = 0; kb < n_kb; kb++) {
                    const int64_t k0 = kb * LKC, kc = K - k0 < LKC ? K - k0 : LKC;
                    for (int64_t ib = 0; ib < blocks; ib++)
                        gemm_tile_wide(M - ib * MR < MR ? (int)(M - ib * MR) : MR, Xp + (kb * blocks + ib) * LKC * MR,
                                  kc, panel + k0 * PW, PW, b ? b + n0 : NULL, kb == 0, Y + ib * MR * N + n0, N);
                }
            } else {   /* the last, partial panel: each tile in a local buffer, its valid columns copied */
                const int64_t cols = N - n0;
                float bias[PW] = {0}, tile[MR * PW];
                if (b) memcpy(bias, b + n0, (size_t)cols * sizeof(float));
                for (int64_t ib = 0; ib < blocks; ib++) {
                    const int mr = M - ib * MR < MR ? (int)(M - ib * MR) : MR;
                    for (int64_t kb = 0; kb < n_kb; kb++) {
                        const int64_t k0 = kb * LKC, kc = K - k0 < LKC ? K - k0 : LKC;
                        gemm_tile_wide(mr, Xp + (kb * blocks + ib) * LKC * MR, kc, panel + k0 * PW, PW, bias, kb == 0,
                                  tile, PW);
                    }
                    for (int r = 0; r < mr; r++)
                        memcpy(Y + (ib * MR + r) * N + n0, tile + r * PW, (size_t)cols * sizeof(float));
                }
            }
        }
    }
    free(Xp);
    return 0;
}

/* ---- LayerNorm over rows, with whichever statistics are asked for (NULL: not) ------------------------ */
void gpt2_layer_norm(const float *x, const float *w, const float *b, float *out, int64_t rows, int64_t d,
                     float eps, float *in_mean, float *in_var, float *normalized, float *out_mean,
                     float *out_var, int threads) {
    #pragma omp parallel for num_threads(threads < 1 ? 1 : threads) schedule(static)
    for (int64_t r = 0; r < rows; r++)
        layer_norm_row(x + r * d, w, b, out + r * d, d, eps, in_mean ? in_mean + r : NULL,
                       in_var ? in_var + r : NULL, normalized ? normalized + r * d : NULL,
                       out_mean ? out_mean + r : NULL, out_var ? out_var + r : NULL);
}

void gpt2_gelu(const float *x, float *y, int64_t n, int threads) {
    const int64_t chunk = 4096;
    #pragma omp parallel for num_threads(threads < 1 ? 1 : threads) schedule(static)
    for (int64_t c0 = 0; c0 < n; c0 += chunk)
        gelu_span(x + c0, y + c0, (c0 + chunk < n ? c0 + chunk : n) - c0);
}

/* ---- causal self-attention over a whole prompt (no cache) -------------------------------------------
 * qkv (B, T, 3d) as c_attn writes it; z (B, T, d) with the heads side by side, as c_proj reads it, so
 * neither the (B, nh, T, hs) transposes nor their copies are made. Where not NULL, scores (B, nh, T, T)
 * gets the scaled dot products with -inf above the diagonal and pattern (B, nh, T, T) the softmax,
 * which is what the explorer's attention views draw. Keys after a query are never computed.
 *
 * Both products run on the 6 x 16 kernel above, six queries at a time: the scores of a block are
 * (q / sqrt(hs)) K^T, with K packed in 16-key panels, and its z the softmax rows times V, with V
 * packed in 16-column panels. A thread takes whole heads, and packs each head's Q, K and V once. */
/* Floats of scratch a thread needs: its head's packed Q, K and V, and one block's scores, softmax and z. */
static int64_t attention_scratch_floats(int64_t T, int64_t hs) {
    const int64_t Tq = (T + MR - 1) / MR * MR, Tk = (T + NR - 1) / NR * NR, hsp = (hs + NR - 1) / NR * NR;
    return Tq * hs + Tk * hs + hsp * Tk + MR * Tk + Tk * MR + MR * hsp;
}

int gpt2_attention(const float *qkv, int64_t B, int64_t T, int64_t nh, int64_t hs, float *z, float *scores,
                   float *pattern, int threads) {
    const int64_t d = nh * hs, ld = 3 * d;
    const float scale = 1.0f / sqrtf((float)hs);
    const int64_t Tq = (T + MR - 1) / MR * MR, Tk = (T + NR - 1) / NR * NR, hsp = (hs + NR - 1) / NR * NR;
    const int64_t per_thread = attention_scratch_floats(T, hs);
    if (threads < 1) threads = 1;
    float *scratch = malloc((size_t)threads * per_thread * sizeof(float));
    if (!scratch) return -1;
    #pragma omp parallel num_threads(threads)
    {
        float *Qp = scratch + omp_get_thread_num() * per_thread;   /* [T/6][hs][6], scaled */
        float *Kp = Qp + Tq * hs;                                   /* [T/16][hs][16] */
        float *Vp = Kp + Tk * hs;                                   /* [hs/16][T][16] */
        float *S = Vp + hsp * Tk;                                   /* a block's rows of scores, (6, Tk) */
        float *Pp = S + MR * Tk;                                    /* the block's softmax rows, [Tk][6] */
        float *Zt = Pp + Tk * MR;                                   /* the block's z, (6, hsp) */
        #pragma omp for collapse(2) schedule(static)
        for (int64_t b = 0; b < B; b++)
            for (int64_t h = 0; h < nh; h++) {
                const float *base = qkv + b * T * ld + h * hs;
                memset(Qp, 0, (size_t)(Tq * hs + Tk * hs + hsp * Tk) * sizeof(float));   /* the padding */
                for (int64_t t = 0; t < T; t++) {
                    const float *q = base + t * ld, *k = q + d, *v = q + 2 * d;
                    for (int64_t j = 0; j < hs; j++) {
                        Qp[((t / MR) * hs + j) * MR + t % MR] = q[j] * scale;
                        Kp[((t / NR) * hs + j) * NR + t % NR] = k[j];
                        Vp[((j / NR) * Tk + t) * NR + j % NR] = v[j];
                    }
                }
                float *sc = scores ? scores + (b * nh + h) * T * T : NULL;
                float *pt = pattern ? pattern + (b * nh + h) * T * T : NULL;
                for (int64_t t0 = 0; t0 < T; t0 += MR) {
                    const int mr = T - t0 < MR ? (int)(T - t0) : MR;
                    const int64_t n_keys = t0 + mr;   /* keys 0 .. the block's last query */
                    for (int64_t p = 0; p * NR < n_keys; p++)
                        gemm_tile(mr, Qp + (t0 / MR) * hs * MR, hs, Kp + p * hs * NR, NR, NULL, 1, S + p * NR, Tk);
                    for (int r = 0; r < mr; r++) {
                        const int64_t t = t0 + r;
                        float *row = S + r * Tk;
                        if (sc) {
                            memcpy(sc + t * T, row, (size_t)(t + 1) * sizeof(float));
                            for (int64_t s = t + 1; s < T; s++) sc[t * T + s] = -INFINITY;
                        }
                        softmax_row(row, t + 1);
                        for (int64_t s = t + 1; s < n_keys; s++) row[s] = 0.0f;
                        if (pt) {
                            memcpy(pt + t * T, row, (size_t)(t + 1) * sizeof(float));
                            memset(pt + t * T + t + 1, 0, (size_t)(T - t - 1) * sizeof(float));
                        }
                        for (int64_t s = 0; s < n_keys; s++) Pp[s * MR + r] = row[s];
                    }
                    for (int64_t p = 0; p * NR < hs; p++)
                        gemm_tile(mr, Pp, n_keys, Vp + p * Tk * NR, NR, NULL, 1, Zt + p * NR, hsp);
                    for (int r = 0; r < mr; r++)
                        memcpy(z + (b * T + t0 + r) * d + h * hs, Zt + r * hsp, (size_t)hs * sizeof(float));
                }
            }
    }
    free(scratch);
    return 0;
}
