/* olmo2 decode glue: everything a one-token step does between its matmuls, for one fp32
 * activation row (batch 1), in four calls per layer instead of ~60 aten ops.
 *
 *   olmo2_attn_step    QK-norm over the full q/k width, rotate-half RoPE, write k/v at the
 *                      cache position, attention of the one query over positions 0..pos
 *   olmo2_add_rmsnorm  out = x + rmsnorm(y) * w     (OLMo 2's post-sublayer norm + residual)
 *   olmo2_rmsnorm      out = rmsnorm(x) * w         (the final norm)
 *   olmo2_silu_mul     out = silu(g) * u            (SwiGLU)
 *
 * Why (benchmarks/RESULTS.md, "Fused decode glue"): with int4 weights the 1B streams ~0.8 GB
 * a token, ~30 ms at this host's bandwidth, while the eager step's glue — ~1000 small aten
 * ops a token, each a dispatch, an allocation and often an OpenMP fork — cost 20-26 ms more,
 * and its attention read the whole preallocated cache under a mask. Here the glue reads
 * each vector once and attention reads only the filled positions.
 *
 * Numerics: fp32 throughout, as the eager path; the sums run in a different order (8-lane
 * partial sums, a polynomial exp), so results differ from aten's in the last bits — the
 * decode step is not the bit-exact path (the model's forward is; tests bound the
 * difference and check greedy tokens). Layouts: q [H*D], k, v [Hkv*D] (heads contiguous, as
 * the projections write them), cache k/v [Hkv, cap, D] (olmo2/infer/kvcache.py, batch 1),
 * cos/sin one row [D] of the model's RoPE tables.
 *
 * AVX2+FMA only (every CPU the library runs on has it): this is memory- and latency-bound
 * work on 2048-wide vectors and a few MB of cache, where AVX-512 buys nothing measurable.
 * Threads: attention splits heads statically over `nthreads` once the filled cache is 1 MiB
 * or more (each head's sums in a fixed order, so the result does not depend on the thread
 * count); the rest is one thread.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TGT __attribute__((target("avx2,fma")))

TGT static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* e^x for 8 lanes: x = n ln2 + r with |r| <= ln2/2, e^r by a degree-6 polynomial (the
 * Taylor coefficients, refit by Cephes for this range; relative error ~2e-7), 2^n by adding
 * n to the exponent field. x is clamped to [-87.3, 88.3] so 2^n stays a normal float:
 * softmax and silu only need e^x ~ 0 below that and never reach the top. */
TGT static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    /* r = x - n ln2 in two steps (ln2 split hi + lo) so the reduction stays exact enough */
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}

/* 1 / sqrt(mean(x^2) + eps) over n (a multiple of 8) */
TGT static float inv_rms(const float *x, int n, float eps) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
        a0 = _mm256_fmadd_ps(v0, v0, a0);
        a1 = _mm256_fmadd_ps(v1, v1, a1);
    }
    for (; i < n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        a0 = _mm256_fmadd_ps(v, v, a0);
    }
    return 1.0f / sqrtf(hsum8(_mm256_add_ps(a0, a1)) / (float)n + eps);
}

/* out = (x * r) * w, the order of the model's RMSNorm (normalise, then the weight) */
TGT static void scale_mul(const float *x, float r, const float *w, int n, float *out) {
    const __m256 rv = _mm256_set1_ps(r);
    for (int i = 0; i < n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), rv), _mm256_loadu_ps(w + i)));
}

/* x [D] rotated in place by one row of the tables: out[i] = x[i] cos[i] - x[i+D/2] sin[i],
 * out[i+D/2] = x[i+D/2] cos[i+D/2] + x[i] sin[i+D/2] (rotate-half over the full head) */
TGT static void rope(float *x, const float *c, const float *s, int D) {
    const int h = D / 2;
    for (int i = 0; i < h; i += 8) {
        __m256 x1 = _mm256_loadu_ps(x + i), x2 = _mm256_loadu_ps(x + h + i);
        __m256 o1 = _mm256_fnmadd_ps(x2, _mm256_loadu_ps(s + i), _mm256_mul_ps(x1, _mm256_loadu_ps(c + i)));
        __m256 o2 = _mm256_fmadd_ps(x1, _mm256_loadu_ps(s + h + i), _mm256_mul_ps(x2, _mm256_loadu_ps(c + h + i)));
        _mm256_storeu_ps(x + i, o1);
        _mm256_storeu_ps(x + h + i, o2);
    }
}

/* Shapes are checked by the caller (olmo2/infer/fused.py): D % 16 == 0, H % Hkv == 0,
 * 0 <= pos < cap. q, k are overwritten (normed, rotated); v is copied into the cache.
 * Returns 0, or -2 when out of memory. */
TGT int olmo2_attn_step(int nthreads, float *q, float *k, const float *v, const float *qnw, const float *knw, float eps,
                    const float *cos_row, const float *sin_row, float *kc, float *vc, int cap, int pos, int H,
                    int Hkv, int D, float scale, float *y) {
    scale_mul(q, inv_rms(q, H * D, eps), qnw, H * D, q);
    scale_mul(k, inv_rms(k, Hkv * D, eps), knw, Hkv * D, k);
    for (int h = 0; h < H; h++) rope(q + (size_t)h * D, cos_row, sin_row, D);
    for (int h = 0; h < Hkv; h++) {
        rope(k + (size_t)h * D, cos_row, sin_row, D);
        memcpy(kc + ((size_t)h * cap + pos) * D, k + (size_t)h * D, sizeof(float) * D);
        memcpy(vc + ((size_t)h * cap + pos) * D, v + (size_t)h * D, sizeof(float) * D);
    }
    const int L = pos + 1, group = H / Hkv, L8 = (L + 7) & ~7;
    float *scores = malloc(sizeof(float) * (size_t)L8 * H);
    if (!scores) return -2;
    /* a second thread only where there is memory to stream: forking for a few KB of cache
     * (a tiny model, the first tokens) costs more than it saves, and far more when the
     * other core is busy and the fork waits for it */
    const int nt = (size_t)L * Hkv * D * 2 * sizeof(float) >= ((size_t)1 << 20) ? nthreads : 1;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int h = 0; h < H; h++) {
        const float *qh = q + (size_t)h * D;
        const float *kh = kc + (size_t)(h / group) * cap * D, *vh = vc + (size_t)(h / group) * cap * D;
        float *sc = scores + (size_t)h * L8;
        /* scores, and their max */
        float m = -INFINITY;
        for (int l = 0; l < L; l++) {
            const float *kl = kh + (size_t)l * D;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            for (int d = 0; d < D; d += 16) {
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + d), _mm256_loadu_ps(kl + d), a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(qh + d + 8), _mm256_loadu_ps(kl + d + 8), a1);
            }
            sc[l] = hsum8(_mm256_add_ps(a0, a1)) * scale;
            m = sc[l] > m ? sc[l] : m;
        }
        for (int l = L; l < L8; l++) sc[l] = -INFINITY; /* exp8 clamps: these become ~0, then are skipped */
        /* softmax numerators in place, and their sum (the padding lanes left out) */
        const __m256 mv = _mm256_set1_ps(m);
        __m256 sv = _mm256_setzero_ps();
        for (int l = 0; l < L8; l += 8) {
            __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + l), mv));
            if (l + 8 > L) e = _mm256_blendv_ps(_mm256_setzero_ps(), e,
                                                _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                                                    _mm256_set1_epi32(L - l), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))));
            _mm256_storeu_ps(sc + l, e);
            sv = _mm256_add_ps(sv, e);
        }
        const float inv = 1.0f / hsum8(sv);
        /* y_h = sum_l p_l v_l / sum: D/8 accumulators (D <= 256 keeps them in registers or L1) */
        __m256 acc[32];
        const int nv = D / 8;
        for (int j = 0; j < nv; j++) acc[j] = _mm256_setzero_ps();
        for (int l = 0; l < L; l++) {
            const __m256 p = _mm256_set1_ps(sc[l]);
            const float *vl = vh + (size_t)l * D;
            for (int j = 0; j < nv; j++) acc[j] = _mm256_fmadd_ps(p, _mm256_loadu_ps(vl + 8 * j), acc[j]);
        }
        const __m256 iv = _mm256_set1_ps(inv);
        for (int j = 0; j < nv; j++) _mm256_storeu_ps(y + (size_t)h * D + 8 * j, _mm256_mul_ps(acc[j], iv));
    }
    free(scores);
    return 0;
}

/* n % 8 == 0 for the three below (checked by the caller) */
TGT int olmo2_add_rmsnorm(const float *x, const float *yv, const float *w, float eps, int n, float *out) {
    const float r = inv_rms(yv, n, eps);
    const __m256 rv = _mm256_set1_ps(r);
    for (int i = 0; i < n; i += 8) {
        __m256 t = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(yv + i), rv), _mm256_loadu_ps(w + i));
        _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(x + i), t));
    }
    return 0;
}

TGT int olmo2_rmsnorm(const float *x, const float *w, float eps, int n, float *out) {
    scale_mul(x, inv_rms(x, n, eps), w, n, out);
    return 0;
}

/* silu(g) u = g / (1 + e^-g) * u */
TGT int olmo2_silu_mul(const float *g, const float *u, int n, float *out) {
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int i = 0; i < n; i += 8) {
        __m256 gv = _mm256_loadu_ps(g + i);
        __m256 sg = _mm256_div_ps(gv, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv))));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(sg, _mm256_loadu_ps(u + i)));
    }
    return 0;
}
