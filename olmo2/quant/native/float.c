/* olmo2's float-weight decode GEMV: y[M, N] = x[M, K] @ W[N, K]^T with fp32 activations,
 * W fp32 (olmo2_f32_mm) or bf16 (olmo2_bf16_mm), fp32 FMA, for a few activation rows
 * (M < kernels.PREFILL_ROWS). Both dtypes run one loop (`rows_avx512`, `rows_avx2`); only
 * the weight load differs (`w16_avx512`, `w8_avx2`): a bf16 weight is widened to fp32
 * exactly, by a 16-bit left shift.
 *
 * Why bf16: `--quant bf16` decodes on this kernel on every CPU (kernels.choose). Decode is
 * bound by the weight bytes streamed from memory, and bf16 halves them. The first bf16 GEMV
 * (gemv.c, one output row at a time, no software prefetch) streamed 10.9 GB/s at 2 threads,
 * 54% of the bandwidth probe (int4's four-row kernel: 99%), and bf16 decode sat at parity
 * with llama.cpp BF16 (1.06x, 0.93-1.08 per round). This loop is the one the int8/int4/fp32
 * kernels already ran. Measured against the one-row kernel, call by call in one process on
 * the 1B's 113 decode GEMVs (benchmarks/native_gemv_ab.py, Intel host, 2026-11-29): 2 threads,
 * idle, 26.9 vs 19.4 GB/s (89% vs 64% of the read probe), 1.40x per round (AVX2 path 1.36x);
 * whole-1B bf16 decode 8.39 vs 6.48 tok/s, 1.25-1.33x per round; 1 thread, loaded,
 * 1.34x (AVX-512) and 1.47x (AVX2), 13.3 vs 9.7 and 11.0 vs 7.9 GB per CPU-second; eight
 * rows per pass, four accumulators per row, prefetching two quads ahead,
 * or splitting each weight dword into even/odd columns (no widening shuffle) measured the
 * same within the noise, so the loop stays the fp32 one (benchmarks/RESULTS.md, "Native
 * bf16 GEMV").
 *
 * Why fp32: with `--quant none` the linears are plain nn.Linear, so PyTorch runs MKL's
 * sgemv. On the Intel host that streams the weight at the memory bandwidth, but on the AMD
 * Zen 3 machine kind (AVX2 + FMA only) it streamed only ~13.6 GB/s while llama.cpp's plain
 * AVX2 F32 kernel pulled 22-25 GB/s, and olmo2's fp32 decode ran at 0.49x llama.cpp F32
 * (docs/cpu-baseline.md). MKL dispatches AMD CPUs to a generic code path (our reading;
 * unconfirmed there). So on CPUs without AVX-512 olmo2 streams fp32 weights with this loop
 * (olmo2/quant/f32.py swaps the class of each nn.Linear at inference load; kernels.choose
 * ("fp32", ...) decides). Its speed on AMD is unmeasured: no such machine here.
 *
 * Algorithm: four output rows per pass share each activation load (one x vector feeds four
 * weight streams); each row keeps two accumulators (columns k.. and k+W.., W = vector
 * width) so the FMA chains of a quad are 8 deep, enough to hide FMA latency; the next
 * quad's rows are prefetched to L2 (PF_HINT, gemv.c's measured choice), one cache line per
 * row per 64 weight bytes consumed. Why the prefetch: a quad is four interleaved streams
 * (4 KiB apart for a bf16 row of K = 2048: one page each), which the hardware prefetcher
 * does not run far enough ahead of (our reading; gemv.c's int8/int4 kernels measured
 * +12-26% from the same prefetch).
 * A row computed alone (the N % 4 tail) runs the same function with one row, so results do
 * not depend on how rows are grouped, and output rows are split statically across threads
 * (each element computed by one thread in one order): bitwise equal at any thread count.
 * The bf16 sums run in the order of gemv.c's former one-row kernel, so its outputs are
 * bitwise unchanged.
 *
 * Numerics: each product is exact (a widened bf16 weight times an fp32 activation fits the
 * FMA's exact product; an fp32 one is rounded once inside it); the sum of K products runs
 * in 2W interleaved partial sums, added pairwise at the end, so the error is within the
 * textbook K * u * sum |x||w| (u = 2^-24) of the exact dot product (tests check it against
 * fp64). The order differs from MKL's/oneDNN's, so outputs differ from F.linear by rounding.
 *
 * Shapes: K % 16 == 0 (native.py `fits`; the 1B's K are 2048 and 8192), checked again here.
 * Compiled into the same library as gemv.c/gemm.c, with per-function target attributes
 * and no -march (see gemv.c's header).
 */
#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#define PF_HINT _MM_HINT_T1 /* as gemv.c: the weight is read once, keep L1 for x */
#define INLINE __attribute__((always_inline)) static inline

enum { FL_ISA_AVX2 = 1, FL_ISA_AVX512 = 2 };

/* ---- AVX-512: 32 columns (two zmm) per step; K % 32 == 16 ends with a 16-column step into
 * the first accumulator only ---- */

/* Weights i..i+15 of w (esz bytes each: 4 fp32, 2 bf16) as fp32. esz is a constant at every
 * call site, so the branch folds away. */
__attribute__((target("avx512f,fma"))) INLINE __m512 w16_avx512(const void *w, size_t i, int esz) {
    if (esz == 4) return _mm512_loadu_ps((const float *)w + i);
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* R rows (4: a quad; 1: a tail row) of w, K apart, against one activation row x: out[r]. */
__attribute__((target("avx512f,fma"))) INLINE void rows_avx512(const void *w, int esz, int R, const float *x, int K,
                                                              float *out) {
    __m512 a0[4], a1[4];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm512_setzero_ps();
    const char *wb = (const char *)w;
    const size_t next = (size_t)R * K * esz; /* bytes to the same column of the next group */
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const size_t i = (size_t)r * K + k;
            for (int b = 0; b < 32 * esz; b += 64) _mm_prefetch(wb + i * esz + next + b, PF_HINT);
            a0[r] = _mm512_fmadd_ps(w16_avx512(w, i, esz), x0, a0[r]);
            a1[r] = _mm512_fmadd_ps(w16_avx512(w, i + 16, esz), x1, a1[r]);
        }
    }
    if (k < K) {
        const __m512 x0 = _mm512_loadu_ps(x + k);
        for (int r = 0; r < R; r++) a0[r] = _mm512_fmadd_ps(w16_avx512(w, (size_t)r * K + k, esz), x0, a0[r]);
    }
    for (int r = 0; r < R; r++) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
}

/* ---- AVX2: 16 columns (two ymm) per step ---- */

__attribute__((target("avx2,fma"))) static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) INLINE __m256 w8_avx2(const void *w, size_t i, int esz) {
    if (esz == 4) return _mm256_loadu_ps((const float *)w + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx2,fma"))) INLINE void rows_avx2(const void *w, int esz, int R, const float *x, int K,
                                                         float *out) {
    __m256 a0[4], a1[4];
    for (int r = 0; r < R; r++) a0[r] = a1[r] = _mm256_setzero_ps();
    const char *wb = (const char *)w;
    const size_t next = (size_t)R * K * esz;
    for (int k = 0; k < K; k += 16) {
        const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            const size_t i = (size_t)r * K + k;
            /* one line per 64 weight bytes: every step for fp32, every other one for bf16 */
            if ((16 * esz) >= 64 || !((k * esz) & 63)) _mm_prefetch(wb + i * esz + next, PF_HINT);
            a0[r] = _mm256_fmadd_ps(w8_avx2(w, i, esz), x0, a0[r]);
            a1[r] = _mm256_fmadd_ps(w8_avx2(w, i + 8, esz), x1, a1[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = hsum8(_mm256_add_ps(a0[r], a1[r]));
}

/* The eight instances: {fp32, bf16} x {AVX-512, AVX2} x {quad, one row}. */
typedef void (*rows_fn)(const void *w, const float *x, int K, float *out);
#define ROWS_FN(name, isa, body, esz, R)                                                                 \
    __attribute__((target(isa))) static void name(const void *w, const float *x, int K, float *out) { \
        body(w, esz, R, x, K, out);                                                                    \
    }
ROWS_FN(f32x4_avx512, "avx512f,fma", rows_avx512, 4, 4)
ROWS_FN(f32x1_avx512, "avx512f,fma", rows_avx512, 4, 1)
ROWS_FN(bf16x4_avx512, "avx512f,fma", rows_avx512, 2, 4)
ROWS_FN(bf16x1_avx512, "avx512f,fma", rows_avx512, 2, 1)
ROWS_FN(f32x4_avx2, "avx2,fma", rows_avx2, 4, 4)
ROWS_FN(f32x1_avx2, "avx2,fma", rows_avx2, 4, 1)
ROWS_FN(bf16x4_avx2, "avx2,fma", rows_avx2, 2, 4)
ROWS_FN(bf16x1_avx2, "avx2,fma", rows_avx2, 2, 1)

/* Rows in quads (the split depends on N only), then the last N % 4 one by one. The M
 * activation rows reuse each weight quad from L1/L2 (4 rows x K x esz bytes: at most 128
 * KiB at K = 8192), so a batched decode step streams W once. */
static void gemv(rows_fn quad, rows_fn one, size_t esz, int nthreads, const float *x, int M, int K, const char *w,
                 int N, float *y) {
    const int quads = N / 4;
#pragma omp parallel num_threads(nthreads)
    {
#pragma omp for schedule(static) nowait
        for (int qd = 0; qd < quads; qd++) {
            const size_t n = (size_t)qd * 4;
            float out[4];
            for (int m = 0; m < M; m++) {
                quad(w + n * K * esz, x + (size_t)m * K, K, out);
                for (int r = 0; r < 4; r++) y[(size_t)m * N + n + r] = out[r];
            }
        }
#pragma omp for schedule(static)
        for (int n = quads * 4; n < N; n++)
            for (int m = 0; m < M; m++) one(w + (size_t)n * K * esz, x + (size_t)m * K, K, &y[(size_t)m * N + n]);
    }
}

/* Entry points: 0 on success, -1 for an unknown ISA or a shape they do not take. */
static int bad(int isa, int M, int K, int N) {
    return K <= 0 || K % 16 || M <= 0 || N <= 0 || (isa != FL_ISA_AVX2 && isa != FL_ISA_AVX512);
}

int olmo2_f32_mm(int isa, int nthreads, const float *x, int M, int K, const float *w, int N, float *y) {
    if (bad(isa, M, K, N)) return -1;
    const int z = isa == FL_ISA_AVX512;
    gemv(z ? f32x4_avx512 : f32x4_avx2, z ? f32x1_avx512 : f32x1_avx2, 4, nthreads, x, M, K, (const char *)w, N, y);
    return 0;
}

int olmo2_bf16_mm(int isa, int nthreads, const float *x, int M, int K, const uint16_t *w, int N, float *y) {
    if (bad(isa, M, K, N)) return -1;
    const int z = isa == FL_ISA_AVX512;
    gemv(z ? bf16x4_avx512 : bf16x4_avx2, z ? bf16x1_avx512 : bf16x1_avx2, 2, nthreads, x, M, K, (const char *)w, N,
         y);
    return 0;
}
