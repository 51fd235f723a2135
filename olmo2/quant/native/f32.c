/* olmo2's fp32 decode GEMV: y[M, N] = x[M, K] @ W[N, K]^T, fp32 weights and activations,
 * fp32 FMA, for a few activation rows (M < kernels.PREFILL_ROWS).
 *
 * Why it exists: with `--quant none` the model's linears are plain nn.Linear, so PyTorch
 * runs MKL's sgemv. On the Intel host that streams the weight at the memory bandwidth (a
 * native AVX-512 GEMV measured equal to it: 12.9 vs 12.5 GB/s at 1 thread), but on the AMD
 * Zen 3 machine kind (AVX2 + FMA only) MKL's fp32 GEMV streamed only ~13.6 GB/s while
 * llama.cpp's plain AVX2 F32 kernel pulled 22-25 GB/s, and olmo2's fp32 decode ran at 0.49x
 * llama.cpp F32 (docs/cpu-baseline.md). MKL dispatches AMD CPUs to a generic code path
 * (our reading; unconfirmed there). So on CPUs without AVX-512 olmo2 streams the weight with
 * this loop instead (olmo2/quant/f32.py swaps the class of each nn.Linear at inference load;
 * kernels.choose("fp32", ...) decides). Its speed on AMD is unmeasured: no such machine here.
 *
 * Algorithm: the same shape as gemv.c's bf16 kernel without the widening. Four output rows
 * per pass share each activation load (one x vector feeds four weight streams); each row
 * keeps two accumulators (columns k.. and k+W.., W = vector width) so the FMA chains of a
 * quad are 8 deep, enough to hide FMA latency; the next quad's rows are prefetched to L2
 * (PF_HINT, gemv.c's measured choice) one cache line per row per 64 bytes consumed. A row
 * computed alone (the N % 4 tail) runs exactly the quad's per-row order, so results do not
 * depend on how rows are grouped, and output rows are split statically across threads
 * (each element computed by one thread in one order): bitwise equal at any thread count.
 *
 * Numerics: each product is exact-then-rounded inside the FMA; the sum of K products runs
 * in 2W interleaved partial sums, added pairwise at the end, so the error is within the
 * textbook K * u * sum |x||w| (u = 2^-24) of the exact dot product (tests check it against
 * fp64). The order differs from MKL's, so outputs differ from F.linear by rounding only.
 *
 * Shapes: K % 16 == 0 (native.py `fits`; the 1B's K are 2048 and 8192), checked again here.
 * Compiled into the same library as gemv.c/gemm.c, with per-function target attributes
 * and no -march (see gemv.c's header).
 */
#include <immintrin.h>
#include <stddef.h>

#define PF_HINT _MM_HINT_T1 /* as gemv.c: the weight is read once, keep L1 for x */

enum { F32_ISA_AVX2 = 1, F32_ISA_AVX512 = 2 };

__attribute__((target("avx2,fma"))) static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- AVX2: 16 columns (two ymm, one 64-byte line per row) per step ---- */
__attribute__((target("avx2,fma"))) static float dotf_avx2(const float *w, const float *x, int K) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
    }
    return hsum8(_mm256_add_ps(a0, a1));
}

/* Rows w, w+K, w+2K, w+3K; same per-row order as dotf_avx2. */
__attribute__((target("avx2,fma"))) static void dotf4_avx2(const float *w, const float *x, int K, float *out) {
    __m256 a0[4], a1[4];
    for (int r = 0; r < 4; r++) a0[r] = a1[r] = _mm256_setzero_ps();
    for (int k = 0; k < K; k += 16) {
        const __m256 x0 = _mm256_loadu_ps(x + k), x1 = _mm256_loadu_ps(x + k + 8);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            const float *wr = w + (size_t)r * K + k;
            _mm_prefetch((const char *)(wr + (size_t)4 * K), PF_HINT); /* same row, next quad */
            a0[r] = _mm256_fmadd_ps(_mm256_loadu_ps(wr), x0, a0[r]);
            a1[r] = _mm256_fmadd_ps(_mm256_loadu_ps(wr + 8), x1, a1[r]);
        }
    }
    for (int r = 0; r < 4; r++) out[r] = hsum8(_mm256_add_ps(a0[r], a1[r]));
}

/* ---- AVX-512: 32 columns (two zmm, two lines per row) per step; K % 32 == 16 ends with a
 * 16-column step into the first accumulator only ---- */
__attribute__((target("avx512f,fma"))) static float dotf_avx512(const float *w, const float *x, int K) {
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k + 16), _mm512_loadu_ps(x + k + 16), a1);
    }
    if (k < K) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a0);
    return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

__attribute__((target("avx512f,fma"))) static void dotf4_avx512(const float *w, const float *x, int K, float *out) {
    __m512 a0[4], a1[4];
    for (int r = 0; r < 4; r++) a0[r] = a1[r] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        const __m512 x0 = _mm512_loadu_ps(x + k), x1 = _mm512_loadu_ps(x + k + 16);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            const float *wr = w + (size_t)r * K + k;
            _mm_prefetch((const char *)(wr + (size_t)4 * K), PF_HINT);
            _mm_prefetch((const char *)(wr + (size_t)4 * K + 16), PF_HINT);
            a0[r] = _mm512_fmadd_ps(_mm512_loadu_ps(wr), x0, a0[r]);
            a1[r] = _mm512_fmadd_ps(_mm512_loadu_ps(wr + 16), x1, a1[r]);
        }
    }
    if (k < K) {
        const __m512 x0 = _mm512_loadu_ps(x + k);
        for (int r = 0; r < 4; r++) a0[r] = _mm512_fmadd_ps(_mm512_loadu_ps(w + (size_t)r * K + k), x0, a0[r]);
    }
    for (int r = 0; r < 4; r++) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
}

/* Entry point: 0 on success, -1 for an unknown ISA or a shape it does not take. The M
 * activation rows reuse each weight quad from L1/L2 (4 rows x K x 4 bytes: 128 KiB at
 * K = 8192), so a batched decode step streams W once. */
int olmo2_f32_mm(int isa, int nthreads, const float *x, int M, int K, const float *w, int N, float *y) {
    if (K <= 0 || K % 16 || M <= 0 || N <= 0 || (isa != F32_ISA_AVX2 && isa != F32_ISA_AVX512)) return -1;
    const int quads = N / 4;
#pragma omp parallel num_threads(nthreads)
    {
#pragma omp for schedule(static) nowait
        for (int qd = 0; qd < quads; qd++) {
            const size_t n = (size_t)qd * 4;
            float out[4];
            for (int m = 0; m < M; m++) {
                if (isa == F32_ISA_AVX512)
                    dotf4_avx512(w + n * K, x + (size_t)m * K, K, out);
                else
                    dotf4_avx2(w + n * K, x + (size_t)m * K, K, out);
                for (int r = 0; r < 4; r++) y[(size_t)m * N + n + r] = out[r];
            }
        }
#pragma omp for schedule(static)
        for (int n = quads * 4; n < N; n++) {
            const float *wn = w + (size_t)n * K;
            for (int m = 0; m < M; m++)
                y[(size_t)m * N + n] = isa == F32_ISA_AVX512 ? dotf_avx512(wn, x + (size_t)m * K, K)
                                                             : dotf_avx2(wn, x + (size_t)m * K, K);
        }
    }
    return 0;
}
