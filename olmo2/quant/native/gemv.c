/* olmo2 decode kernels: y[M, N] = x[M, K] @ W[N, K]^T for a few activation rows (M small)
 * and a big weight in one of olmo2's stored formats (olmo2/quant/formats.py):
 *
 *   int8  w[n,k] = q[n,k] * s[n]                 q int8, s bf16 per output row
 *   int4  w[n,k] = (q[n,k] - 8) * s[n,g] + z[n,g] q 0..15 two per byte (column 2j = low nibble
 *                                               of byte j), s/z bf16 per group of G columns
 *
 * (bf16 and fp32 weights: float.c.) Built by olmo2/quant/native.py with plain `gcc -O3
 * -shared -fopenmp` (no -march; with the other native/*.c into one library): each
 * SIMD body carries its own __attribute__((target(...))) and the caller picks one from
 * the CPU's flags, so the one cached .so runs on an AVX2-only CPU and never executes an
 * instruction the CPU lacks. No torch headers: it compiles in about a second.
 *
 * Why these algorithms (decode is bound by the bytes of W streamed from memory; every
 * inner loop below does a few instructions per 64 weight bytes so that one core keeps up
 * with its share of the memory bandwidth):
 * - int8 multiplies int8 weights by a ~15-bit activation split into two int8 digits:
 *   per block b of 32 columns, xq = round(x * 16383 / amax_b) in [-16383, 16383] (scale
 *   xs_b = amax_b / 16383, shared by every output row), hi = xq >> 7 = floor(xq / 128) in
 *   [-128, 127], lo = xq & 127 = xq - 128 hi in [0, 127]. Two integer dot products per
 *   weight load, combined exactly in int32 as 128 * dot_hi + dot_lo = sum q * xq. Why: one
 *   int8 digit (llama.cpp's Q8_0 activation) cost ~0.5 points of top-1 agreement on the
 *   demo model (98.41% vs aten's 98.89%, which keeps x in bf16); 15 bits make the
 *   activation error ~128x smaller than the weight's own rounding, and the kernel has the
 *   compute to spare (one core computes int8 dot products ~2.5x faster than its share of
 *   the memory bandwidth feeds it weights; benchmarks/RESULTS.md).
 * - int4 multiplies int4 x int8 (the activation quantized per 32 columns to one int8 digit,
 *   xs_b = amax_b / 127): its weight error dominates, and its inner loop has no spare slot.
 *   Per-block scales keep the error of an activation outlier inside its own block
 *   (fbgemm's per-tensor scale lost 2% top-1 agreement on the demo model for this reason).
 * - AVX-512 VNNI: vpdpbusd multiplies unsigned bytes by signed bytes. lo is unsigned, so
 *   dot_lo = vpdpbusd(lo, q) with the signed weight as is. hi is signed, so the weight is
 *   made unsigned by XOR 0x80 (= q + 128) in the register: vpdpbusd(q + 128, hi) =
 *   dot_hi + 128 * sum(hi); the accumulator starts at -128 * sum(hi) over the same 4
 *   columns (precomputed per activation row, "hcorr"), so each int32 lane is exact.
 *   int4 codes 0..15 are unsigned already; the "-8" becomes -8 * sum(xq_b) per row (corr4).
 * - AVX2 (AMD Zen 3 has no VNNI): vpmaddubsw (u8 x s8, int16 pair sums, saturating).
 *   int8: lo (unsigned) times q directly (pair sums <= 2*127*127 = 32258); hi with
 *   llama.cpp's sign trick, |hi| (<= 128: sign_epi8 turns -128 into byte 0x80 = 128
 *   unsigned) times sign(q, hi) (|q| <= 127, formats.py clamps) so pair sums <= 2*128*127
 *   = 32512 < 32767; vpmaddwd by 128 / by 1 then widens to int32. int4 directly
 *   (15 * 127 * 4 per int16 lane at most), then vpmaddwd by ones.
 * - int32 bounds (int8): per lane of 4 columns |sum q*hi| <= 4*127*128 = 65024, so
 *   |128 * dot_hi + dot_lo| <= 8323072 + 64516 < 2^24: no overflow, and the int32 -> fp32
 *   convert is exact (the vpdpbusd intermediate -128*sum(hi) + sum (q+128)*hi is within
 *   +-196096).
 * - The int32 sum of each 4 (int8) or 8 (int4) columns is converted to fp32 and
 *   multiplied by its block's activation scale (and int4's group scale) lane by lane;
 *   lanes are summed once per output row.
 *
 * Threads: output rows are split statically across `nthreads` OpenMP threads. Each output
 * element is computed by one thread in a fixed order, so the result does not depend on
 * the thread count (tests check bitwise equality). native.py links the libgomp that torch
 * already loaded (same soname), so torch and these kernels share one thread pool and do
 * not spin against each other.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define QBLOCK 32 /* activation quantization block (columns) */
/* Software prefetch of the next row quad's weights goes to L2, not L1 (T1, not T0): the
 * streamed weight is read once, and L1 is better left to the activation digits every
 * output row reuses (our reading of it; not profiled). Measured on the 1B's 113 decode GEMVs, 2 threads, variants alternating
 * in one process (Intel Xeon AVX-512, 2026-11-29): int8 GB/s +12% (VNNI) / +3% (AVX2), int4
 * +12% / +26%; a longer distance (8, 12 rows) was no better and NTA halved it. */
#define PF_HINT _MM_HINT_T1

enum { ISA_NONE = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };

int olmo2_native_abi(void) { return 9; } /* 5: gemm.c's olmo2_int8_prefill_mm; 6: float.c's olmo2_f32_mm; 7: gemm4.c's olmo2_int4_prefill_mm; 8: gemm4_amx.c; 9: decode.c */

/* 2 if AVX-512 F/BW/VNNI (and the OS saves zmm state: __builtin_cpu_supports checks),
 * 1 if AVX2+FMA, else 0. */
int olmo2_native_best_isa(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512vnni"))
        return ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ISA_AVX2;
    return ISA_NONE;
}

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ---- activation quantization (once per call) ----
 * xq[k] = round_half_even(x[k] * (127 / amax_b)), xs_b = amax_b / 127, bsum[b] = sum of
 * xq over block b. An all-zero block gets xs = 0 and xq = 0 (its products are 0 whatever
 * the weight). AVX2 (every CPU that runs either path has it): a scalar loop calling
 * nearbyintf cost ~10 us per 2048 columns, as much as streaming 100 KiB of weights. */
__attribute__((target("avx2,fma"))) static void quantize_row(const float *x, int K, int8_t *xq, float *xs,
                                                             int32_t *bsum) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < K / QBLOCK; b++) {
        const float *xb = x + b * QBLOCK;
        __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8), v2 = _mm256_loadu_ps(xb + 16),
               v3 = _mm256_loadu_ps(xb + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v0, absmask), _mm256_and_ps(v1, absmask)),
                                 _mm256_max_ps(_mm256_and_ps(v2, absmask), _mm256_and_ps(v3, absmask)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        const __m256 id = _mm256_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
        /* cvtps rounds to nearest even (the default MXCSR mode), as torch.round does */
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, id)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, id));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, id)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, id));
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        /* |values| <= 127: the saturating packs are exact; the permute undoes their lane interleave */
        __m256i q = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        _mm256_storeu_si256((__m256i *)(xq + b * QBLOCK), _mm256_permutevar8x32_epi32(q, perm));
        xs[b] = amax / 127.f;
        bsum[b] = _mm_cvtsi128_si32(s4);
    }
}

/* The int8 kernels' activation (see the header): xq = round_half_even(x * (16383 / amax_b))
 * in [-16383, 16383] (fl(amax * fl(16383 / amax)) <= 16383 (1 + 2u)^2 < 16383.5, so it never
 * rounds past 16383), split into hi = xq >> 7 and lo = xq & 127; hcorr[l] = -128 * the sum
 * of hi over the 4 columns of int32 lane l; lane8[l] = xs_b of that lane. All-zero block:
 * xs = 0, every digit 0. */
__attribute__((target("avx2,fma"))) static void quantize_row15(const float *x, int K, int8_t *hi, int8_t *lo,
                                                               int32_t *hcorr, float *lane8) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7), m127 = _mm256_set1_epi32(127);
    for (int b = 0; b < K / QBLOCK; b++) {
        const float *xb = x + b * QBLOCK;
        __m256 v[4];
        for (int i = 0; i < 4; i++) v[i] = _mm256_loadu_ps(xb + 8 * i);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absmask), _mm256_and_ps(v[1], absmask)),
                                 _mm256_max_ps(_mm256_and_ps(v[2], absmask), _mm256_and_ps(v[3], absmask)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float amax = _mm_cvtss_f32(m4);
        const __m256 id = _mm256_set1_ps(amax > 0.f ? 16383.f / amax : 0.f);
        __m256i h[4], l[4];
        for (int i = 0; i < 4; i++) {
            __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], id)); /* nearest even, as torch.round */
            h[i] = _mm256_srai_epi32(q, 7);
            l[i] = _mm256_and_si256(q, m127);
            /* -128 * (sum of hi over each 4 consecutive columns): two horizontal pair adds */
            __m256i s2 = _mm256_hadd_epi32(h[i], h[i]);            /* pairs, per 128-bit half */
            __m256i s4 = _mm256_hadd_epi32(s2, s2);                 /* [sum h0..h3 x4 | sum h4..h7 x4] */
            hcorr[b * 8 + 2 * i] = -128 * _mm256_extract_epi32(s4, 0);
            hcorr[b * 8 + 2 * i + 1] = -128 * _mm256_extract_epi32(s4, 4);
        }
        /* every digit fits int8: the saturating packs are exact; the permute undoes their interleave */
        __m256i ph = _mm256_packs_epi16(_mm256_packs_epi32(h[0], h[1]), _mm256_packs_epi32(h[2], h[3]));
        __m256i pl = _mm256_packs_epi16(_mm256_packs_epi32(l[0], l[1]), _mm256_packs_epi32(l[2], l[3]));
        _mm256_storeu_si256((__m256i *)(hi + b * QBLOCK), _mm256_permutevar8x32_epi32(ph, perm));
        _mm256_storeu_si256((__m256i *)(lo + b * QBLOCK), _mm256_permutevar8x32_epi32(pl, perm));
        const float xs = amax / 16383.f;
        for (int j = 0; j < 8; j++) lane8[b * 8 + j] = xs;
    }
}

/* Per activation row, everything the int8 inner loops read besides the weights. */
typedef struct {
    const int8_t *hi, *lo;  /* [K] the two digits of xq */
    const int32_t *hcorr;   /* [K/4] -128 * sum of hi per int32 lane (4 columns) */
    const float *lane8;     /* [K/4] activation scale per int32 lane */
    const float *xs;        /* [K/32] activation scale per block */
} xprep;

/* ---------------------------------------------------------------------------------------
 * int8. Per 64 weight bytes (16 int32 lanes): one weight load, two vpdpbusd, a shift, one
 * int32 -> fp32 convert and one FMA by the lanes' activation scales.
 * ------------------------------------------------------------------------------------- */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma"))) static inline __m512i lanes8_avx512(
    const int8_t *w, const xprep *p, int k) {
    const __m512i q = _mm512_loadu_si512((const void *)(w + k));
    /* sum (q+128)*hi - 128*sum hi = sum q*hi, exact per lane */
    __m512i d = _mm512_dpbusd_epi32(_mm512_loadu_si512((const void *)(p->hcorr + k / 4)),
                                    _mm512_xor_si512(q, _mm512_set1_epi8((char)0x80)),
                                    _mm512_loadu_si512((const void *)(p->hi + k)));
    /* 128 * that + sum lo*q: sum q*xq, |.| < 2^24 (header) */
    return _mm512_dpbusd_epi32(_mm512_slli_epi32(d, 7), _mm512_loadu_si512((const void *)(p->lo + k)), q);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma"))) static float dot8_avx512(const int8_t *w, const xprep *p,
                                                                                    int K) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int k = 0;
    for (; k + 128 <= K; k += 128) {
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes8_avx512(w, p, k)), _mm512_loadu_ps(p->lane8 + k / 4), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes8_avx512(w, p, k + 64)), _mm512_loadu_ps(p->lane8 + k / 4 + 16),
                               acc1);
    }
    for (; k < K; k += 64)
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes8_avx512(w, p, k)), _mm512_loadu_ps(p->lane8 + k / 4), acc0);
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

/* Four output rows at once (rows r*K apart): the activation loads (hcorr, hi, lo, lane
 * scales: four per 64 weight bytes) are shared by the four rows, and each row's sums run
 * in exactly dot8_avx512's order, so a row's result does not depend on being in a quad. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma"))) static void dot8x4_avx512(const int8_t *w, int K,
                                                                                      const xprep *p, float *out) {
    __m512 a0[4], a1[4];
    for (int r = 0; r < 4; r++) a0[r] = a1[r] = _mm512_setzero_ps();
    int k = 0;
    for (; k + 128 <= K; k += 128) {
        const __m512 l0 = _mm512_loadu_ps(p->lane8 + k / 4), l1 = _mm512_loadu_ps(p->lane8 + k / 4 + 16);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            /* four interleaved streams: fetch the next quad's line (see dot4x4_avx512) */
            _mm_prefetch((const char *)(w + (size_t)(r + 4) * K + k), PF_HINT);
            _mm_prefetch((const char *)(w + (size_t)(r + 4) * K + k + 64), PF_HINT);
            a0[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes8_avx512(w + (size_t)r * K, p, k)), l0, a0[r]);
            a1[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes8_avx512(w + (size_t)r * K, p, k + 64)), l1, a1[r]);
        }
    }
    for (; k < K; k += 64) {
        const __m512 l0 = _mm512_loadu_ps(p->lane8 + k / 4);
        for (int r = 0; r < 4; r++)
            a0[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(lanes8_avx512(w + (size_t)r * K, p, k)), l0, a0[r]);
    }
    for (int r = 0; r < 4; r++) out[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0[r], a1[r]));
}

__attribute__((target("avx2,fma"))) static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* sum q*xq over 32 columns as 8 int32 lanes (bounds in the header) */
__attribute__((target("avx2,fma"))) static inline __m256i lanes8_avx2(const int8_t *w, const xprep *p, int k) {
    const __m256i q = _mm256_loadu_si256((const __m256i *)(w + k));
    const __m256i h = _mm256_loadu_si256((const __m256i *)(p->hi + k));
    const __m256i l = _mm256_loadu_si256((const __m256i *)(p->lo + k));
    __m256i ph = _mm256_maddubs_epi16(_mm256_sign_epi8(h, h), _mm256_sign_epi8(q, h));
    __m256i pl = _mm256_maddubs_epi16(l, q);
    return _mm256_add_epi32(_mm256_madd_epi16(ph, _mm256_set1_epi16(128)), _mm256_madd_epi16(pl, _mm256_set1_epi16(1)));
}

__attribute__((target("avx2,fma"))) static float dot8_avx2(const int8_t *w, const xprep *p, int K) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int k = 0;
    for (; k + 64 <= K; k += 64) { /* two blocks of 32 per iteration */
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes8_avx2(w, p, k)), _mm256_set1_ps(p->xs[k / QBLOCK]), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes8_avx2(w, p, k + 32)), _mm256_set1_ps(p->xs[k / QBLOCK + 1]),
                               acc1);
    }
    for (; k < K; k += 32)
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes8_avx2(w, p, k)), _mm256_set1_ps(p->xs[k / QBLOCK]), acc0);
    return hsum256(_mm256_add_ps(acc0, acc1));
}

/* Four rows at once on AVX2, for the reason given at dot8x4_avx512 (same per-row order as
 * dot8_avx2). */
__attribute__((target("avx2,fma"))) static void dot8x4_avx2(const int8_t *w, int K, const xprep *p, float *out) {
    __m256 a0[4], a1[4];
    for (int r = 0; r < 4; r++) a0[r] = a1[r] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 64 <= K; k += 64) {
        const __m256 s0 = _mm256_set1_ps(p->xs[k / QBLOCK]), s1 = _mm256_set1_ps(p->xs[k / QBLOCK + 1]);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            _mm_prefetch((const char *)(w + (size_t)(r + 4) * K + k), PF_HINT);
            a0[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes8_avx2(w + (size_t)r * K, p, k)), s0, a0[r]);
            a1[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes8_avx2(w + (size_t)r * K, p, k + 32)), s1, a1[r]);
        }
    }
    for (; k < K; k += 32) {
        const __m256 s0 = _mm256_set1_ps(p->xs[k / QBLOCK]);
        for (int r = 0; r < 4; r++)
            a0[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes8_avx2(w + (size_t)r * K, p, k)), s0, a0[r]);
    }
    for (int r = 0; r < 4; r++) out[r] = hsum256(_mm256_add_ps(a0[r], a1[r]));
}

/* ---------------------------------------------------------------------------------------
 * int4. The activation is stored split by column parity to match the nibbles: for packed
 * byte j (columns 2j, 2j+1), xe[j] = xq[2j] and xo[j] = xq[2j+1]. An int32 lane of
 * vpdpbusd over packed bytes 4l..4l+3 then covers columns 8l..8l+7: one activation block
 * (32 columns) is 4 lanes and one weight group (G columns) is G/8 lanes.
 * Per group g: sum_k w_k x_k ~= s_g * (sum_l lane4_l * dot_l - corr4_g) + z_g * xsum_g,
 * corr4_g = 8 * sum_{b in g} xs_b * bsum_b and xsum_g = the exact fp32 sum of x over g.
 * ------------------------------------------------------------------------------------- */
typedef struct {
    const int8_t *xe, *xo;
    const float *lane4;
    const float *corr4, *xsum; /* [K/G] */
} xprep4;

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma"))) static float dot4_avx512(const uint8_t *w, const uint16_t *sc,
                                                                                    const uint16_t *zr, const xprep4 *p,
                                                                                    int K, int G, float *sg) {
    const int ng = K / G, L = G / 8; /* int32 lanes per group */
    /* the per-group terms, 16 groups at a time: this runs once per output row, and at
     * K = 2048 a scalar loop here cost as much as the row's 1 KiB of nibbles */
    __m512 tv = _mm512_setzero_ps();
    for (int g = 0; g < ng; g += 16) {
        __mmask16 mk = ng - g >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (ng - g)) - 1);
        __m512 s = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, sc + g)), 16));
        __m512 z = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, zr + g)), 16));
        _mm512_storeu_ps(sg + g, s); /* sg has ng + 16 slots */
        tv = _mm512_fmadd_ps(z, _mm512_maskz_loadu_ps(mk, p->xsum + g), tv);
        tv = _mm512_fnmadd_ps(s, _mm512_maskz_loadu_ps(mk, p->corr4 + g), tv);
    }
    const float tail = _mm512_reduce_add_ps(tv);
    const __m512i lo = _mm512_set1_epi8(0x0F);
    /* lane i of a 16-lane vector -> group offset i / L (only used when L < 16) */
    const __m512i gidx = L >= 16 ? _mm512_setzero_si512()
                                 : (L == 8 ? _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
                                           : _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0));
    __m512 acc = _mm512_setzero_ps();
    for (int j = 0; j < K / 2; j += 64) { /* 64 packed bytes = 128 columns = 16 lanes */
        __m512i b = _mm512_loadu_si512((const void *)(w + j));
        __m512i qlo = _mm512_and_si512(b, lo), qhi = _mm512_and_si512(_mm512_srli_epi16(b, 4), lo);
        __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), qlo, _mm512_loadu_si512((const void *)(p->xe + j)));
        d = _mm512_dpbusd_epi32(d, qhi, _mm512_loadu_si512((const void *)(p->xo + j)));
        int l0 = j / 4, g0 = l0 / L;
        __m512 s = L >= 16 ? _mm512_set1_ps(sg[g0])
                           : _mm512_permutexvar_ps(gidx, _mm512_castps128_ps512(_mm_loadu_ps(sg + g0)));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(s, _mm512_loadu_ps(p->lane4 + l0)), acc);
    }
    return _mm512_reduce_add_ps(acc) + tail;
}

/* Four output rows at once: the activation loads (xe, xo, lane scales) are shared, four
 * independent accumulator chains keep the FMA units busy, and the per-row setup and lane
 * reduction overlap. One row at a time streamed only ~15 GB/s from L2 on one core (about
 * one core's memory bandwidth, so decode was compute-bound); see benchmarks/RESULTS.md. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma"))) static void dot4x4_avx512(
    const uint8_t *w, size_t ldw, const uint16_t *sc, const uint16_t *zr, size_t lds, const xprep4 *p, int K, int G,
    float *sg, float *out) {
    const int ng = K / G, L = G / 8, sstride = ng + 16;
    float tail[4];
    for (int r = 0; r < 4; r++) {
        __m512 tv = _mm512_setzero_ps();
        for (int g = 0; g < ng; g += 16) {
            __mmask16 mk = ng - g >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (ng - g)) - 1);
            __m512 s = _mm512_castsi512_ps(
                _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, sc + r * lds + g)), 16));
            __m512 z = _mm512_castsi512_ps(
                _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, zr + r * lds + g)), 16));
            _mm512_storeu_ps(sg + r * sstride + g, s);
            tv = _mm512_fmadd_ps(z, _mm512_maskz_loadu_ps(mk, p->xsum + g), tv);
            tv = _mm512_fnmadd_ps(s, _mm512_maskz_loadu_ps(mk, p->corr4 + g), tv);
        }
        tail[r] = _mm512_reduce_add_ps(tv);
    }
    const __m512i lo = _mm512_set1_epi8(0x0F);
    const __m512i gidx = L >= 16 ? _mm512_setzero_si512()
                                 : (L == 8 ? _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
                                           : _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0));
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int j = 0; j < K / 2; j += 64) {
        const __m512i xe = _mm512_loadu_si512((const void *)(p->xe + j));
        const __m512i xo = _mm512_loadu_si512((const void *)(p->xo + j));
        const int l0 = j / 4, g0 = l0 / L;
        const __m512 l4 = _mm512_loadu_ps(p->lane4 + l0);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            /* the four rows are one 4 KiB block read as four interleaved streams, which the
             * hardware prefetcher does not follow: fetch the next quad's line explicitly */
            _mm_prefetch((const char *)(w + (r + 4) * ldw + j), PF_HINT);
            __m512i b = _mm512_loadu_si512((const void *)(w + r * ldw + j));
            __m512i d = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(b, lo), xe);
            d = _mm512_dpbusd_epi32(d, _mm512_and_si512(_mm512_srli_epi16(b, 4), lo), xo);
            const float *sr = sg + r * sstride;
            __m512 s = L >= 16 ? _mm512_set1_ps(sr[g0])
                               : _mm512_permutexvar_ps(gidx, _mm512_castps128_ps512(_mm_loadu_ps(sr + g0)));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d), _mm512_mul_ps(s, l4), acc[r]);
        }
    }
    for (int r = 0; r < 4; r++) out[r] = _mm512_reduce_add_ps(acc[r]) + tail[r];
}

__attribute__((target("avx2,fma"))) static float dot4_avx2(const uint8_t *w, const uint16_t *sc, const uint16_t *zr,
                                                           const xprep4 *p, int K, int G, float *sg) {
    const int ng = K / G, L = G / 8;
    __m256 tv = _mm256_setzero_ps();
    int g = 0;
    for (; g + 8 <= ng; g += 8) { /* vectorized for the reason given in dot4_avx512 */
        __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(sc + g))), 16));
        __m256 z = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(zr + g))), 16));
        _mm256_storeu_ps(sg + g, s);
        tv = _mm256_fmadd_ps(z, _mm256_loadu_ps(p->xsum + g), tv);
        tv = _mm256_fnmadd_ps(s, _mm256_loadu_ps(p->corr4 + g), tv);
    }
    float tail = hsum256(tv);
    for (; g < ng; g++) {
        sg[g] = bf16_to_f32(sc[g]);
        tail += -sg[g] * p->corr4[g] + bf16_to_f32(zr[g]) * p->xsum[g];
    }
    const __m256i lo = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    const __m256i gidx = _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0); /* L == 4: two groups per 8 lanes */
    __m256 acc0 = _mm256_setzero_ps();
    for (int j = 0; j < K / 2; j += 32) { /* 32 packed bytes = 64 columns = 8 lanes */
        __m256i b = _mm256_loadu_si256((const __m256i *)(w + j));
        __m256i qlo = _mm256_and_si256(b, lo), qhi = _mm256_and_si256(_mm256_srli_epi16(b, 4), lo);
        /* q <= 15, |xq| <= 127: each int16 pair sum <= 3810, two of them <= 7620 */
        __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(qlo, _mm256_loadu_si256((const __m256i *)(p->xe + j))),
                                       _mm256_maddubs_epi16(qhi, _mm256_loadu_si256((const __m256i *)(p->xo + j))));
        __m256i d = _mm256_madd_epi16(s16, ones);
        int l0 = j / 4, g0 = l0 / L;
        __m256 s = L >= 8 ? _mm256_set1_ps(sg[g0])
                          : _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sg + g0)), gidx);
        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(s, _mm256_loadu_ps(p->lane4 + l0)), acc0);
    }
    return hsum256(acc0) + tail;
}

/* Four rows at once on AVX2, for the reason given at dot4x4_avx512. */
__attribute__((target("avx2,fma"))) static void dot4x4_avx2(const uint8_t *w, size_t ldw, const uint16_t *sc,
                                                            const uint16_t *zr, size_t lds, const xprep4 *p, int K,
                                                            int G, float *sg, float *out) {
    const int ng = K / G, L = G / 8, sstride = ng + 16;
    float tail[4];
    for (int r = 0; r < 4; r++) {
        __m256 tv = _mm256_setzero_ps();
        float t = 0.f;
        int g = 0;
        for (; g + 8 <= ng; g += 8) {
            __m256 s = _mm256_castsi256_ps(
                _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(sc + r * lds + g))), 16));
            __m256 z = _mm256_castsi256_ps(
                _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(zr + r * lds + g))), 16));
            _mm256_storeu_ps(sg + r * sstride + g, s);
            tv = _mm256_fmadd_ps(z, _mm256_loadu_ps(p->xsum + g), tv);
            tv = _mm256_fnmadd_ps(s, _mm256_loadu_ps(p->corr4 + g), tv);
        }
        for (; g < ng; g++) {
            float sv = bf16_to_f32(sc[r * lds + g]);
            sg[r * sstride + g] = sv;
            t += -sv * p->corr4[g] + bf16_to_f32(zr[r * lds + g]) * p->xsum[g];
        }
        tail[r] = hsum256(tv) + t;
    }
    const __m256i lo = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    const __m256i gidx = _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int j = 0; j < K / 2; j += 32) {
        const __m256i xe = _mm256_loadu_si256((const __m256i *)(p->xe + j));
        const __m256i xo = _mm256_loadu_si256((const __m256i *)(p->xo + j));
        const int l0 = j / 4, g0 = l0 / L;
        const __m256 l4 = _mm256_loadu_ps(p->lane4 + l0);
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            if (!(j & 63)) _mm_prefetch((const char *)(w + (r + 4) * ldw + j), PF_HINT); /* see dot4x4_avx512 */
            __m256i b = _mm256_loadu_si256((const __m256i *)(w + r * ldw + j));
            __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(_mm256_and_si256(b, lo), xe),
                                           _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(b, 4), lo), xo));
            __m256i d = _mm256_madd_epi16(s16, ones);
            const float *sr = sg + r * sstride;
            __m256 s = L >= 8 ? _mm256_set1_ps(sr[g0])
                              : _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sr + g0)), gidx);
            acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), _mm256_mul_ps(s, l4), acc[r]);
        }
    }
    for (int r = 0; r < 4; r++) out[r] = hsum256(acc[r]) + tail[r];
}

/* ---------------------------------------------------------------------------------------
 * Entry points. Shapes are checked by the caller (native.py `fits`): K % 64 == 0 (int8),
 * K % 128 == 0 and G in {32, 64, 128, 256} (int4). Return 0 on
 * success, -1 for an unknown ISA or shape, -2 when out of memory.
 * ------------------------------------------------------------------------------------- */
int olmo2_int8_mm(int isa, int nthreads, const float *x, int M, int K, const int8_t *w, const uint16_t *scales, int N,
                  float *y) {
    if (K % 64 || (isa != ISA_AVX2 && isa != ISA_AVX512) || M <= 0 || N <= 0) return -1;
    /* per row: hi, lo (K bytes each), hcorr, lane8 (K/4 x 4 bytes each), xs (K/32 floats) */
    size_t per = (size_t)4 * K + sizeof(float) * (K / QBLOCK);
    char *buf = malloc(per * (size_t)M + 64);
    xprep *ps = malloc(sizeof(xprep) * (size_t)M);
    if (!buf || !ps) {
        free(buf);
        free(ps);
        return -2;
    }
    for (int m = 0; m < M; m++) {
        char *b = buf + per * (size_t)m;
        float *lane8 = (float *)b, *xs = lane8 + K / 4;
        int32_t *hcorr = (int32_t *)(xs + K / QBLOCK);
        int8_t *hi = (int8_t *)(hcorr + K / 4), *lo = hi + K;
        quantize_row15(x + (size_t)m * K, K, hi, lo, hcorr, lane8);
        for (int j = 0; j < K / QBLOCK; j++) xs[j] = lane8[8 * j];
        ps[m] = (xprep){hi, lo, hcorr, lane8, xs};
    }
    /* rows in quads (the split depends on N only, and a row's sums run in the same order
     * in a quad as alone, so results do not depend on the thread count), then N % 4 alone */
    const int quads = N / 4;
#pragma omp parallel num_threads(nthreads)
    {
#pragma omp for schedule(static) nowait
        for (int qd = 0; qd < quads; qd++) {
            const size_t n = (size_t)qd * 4;
            float out[4];
            for (int m = 0; m < M; m++) {
                if (isa == ISA_AVX512)
                    dot8x4_avx512(w + n * K, K, &ps[m], out);
                else
                    dot8x4_avx2(w + n * K, K, &ps[m], out);
                for (int r = 0; r < 4; r++) y[(size_t)m * N + n + r] = bf16_to_f32(scales[n + r]) * out[r];
            }
        }
#pragma omp for schedule(static)
        for (int n = quads * 4; n < N; n++) {
            const int8_t *wn = w + (size_t)n * K;
            float s = bf16_to_f32(scales[n]);
            for (int m = 0; m < M; m++)
                y[(size_t)m * N + n] = s * (isa == ISA_AVX512 ? dot8_avx512(wn, &ps[m], K) : dot8_avx2(wn, &ps[m], K));
        }
    }
    free(buf);
    free(ps);
    return 0;
}

int olmo2_int4_mm(int isa, int nthreads, const float *x, int M, int K, const uint8_t *w, const uint16_t *scales,
                  const uint16_t *zeros, int G, int N, float *y) {
    if (K % 128 || (G != 32 && G != 64 && G != 128 && G != 256) || K % G || M <= 0 || N <= 0 ||
        (isa != ISA_AVX2 && isa != ISA_AVX512))
        return -1;
    const int nb = K / QBLOCK, ng = K / G;
    /* per row: xq (K) + xe/xo (K) + xs, bsum (nb) + lane4 (K/8) + corr4, xsum (ng) */
    size_t per = (size_t)2 * K + sizeof(float) * (2 * nb + K / 8 + 2 * ng);
    char *buf = malloc(per * (size_t)M + 64);
    xprep4 *ps = malloc(sizeof(xprep4) * (size_t)M);
    if (!buf || !ps) {
        free(buf);
        free(ps);
        return -2;
    }
    for (int m = 0; m < M; m++) {
        const float *xm = x + (size_t)m * K;
        float *xs = (float *)(buf + per * (size_t)m), *lane4 = xs + nb, *corr4 = lane4 + K / 8, *xsum = corr4 + ng;
        int32_t *bsum = (int32_t *)(xsum + ng);
        /* 2K bytes: xq (K), then its even/odd split xe, xo (K/2 each) */
        int8_t *xq = (int8_t *)(bsum + nb), *xe = xq + K, *xo = xe + K / 2;
        quantize_row(xm, K, xq, xs, bsum);
        for (int j = 0; j < K / 2; j++) {
            xe[j] = xq[2 * j];
            xo[j] = xq[2 * j + 1];
        }
        for (int l = 0; l < K / 8; l++) lane4[l] = xs[(8 * l) / QBLOCK];
        for (int g = 0; g < ng; g++) {
            float c = 0.f, sx = 0.f;
            for (int b = g * G / QBLOCK; b < (g + 1) * G / QBLOCK; b++) c += xs[b] * (float)bsum[b];
            for (int k = g * G; k < (g + 1) * G; k++) sx += xm[k];
            corr4[g] = 8.f * c;
            xsum[g] = sx;
        }
        ps[m].xe = xe;
        ps[m].xo = xo;
        ps[m].lane4 = lane4;
        ps[m].corr4 = corr4;
        ps[m].xsum = xsum;
    }
    int err = 0;
#pragma omp parallel num_threads(nthreads)
    {
        /* the rows' group scales in fp32; +16 per row: vector stores/loads past ng */
        float *sg = calloc((size_t)4 * (ng + 16), sizeof(float));
        if (!sg) {
#pragma omp atomic write
            err = -2;
        }
        /* rows in quads (the split depends on N only, so results do not depend on the
         * thread count), then the last N % 4 one by one */
        const int quads = N / 4;
#pragma omp for schedule(static) nowait
        for (int qd = 0; qd < quads; qd++) {
            if (!sg) continue;
            const size_t n = (size_t)qd * 4;
            float out[4];
            for (int m = 0; m < M; m++) {
                if (isa == ISA_AVX512)
                    dot4x4_avx512(w + n * (K / 2), K / 2, scales + n * ng, zeros + n * ng, ng, &ps[m], K, G, sg, out);
                else
                    dot4x4_avx2(w + n * (K / 2), K / 2, scales + n * ng, zeros + n * ng, ng, &ps[m], K, G, sg, out);
                for (int r = 0; r < 4; r++) y[(size_t)m * N + n + r] = out[r];
            }
        }
#pragma omp for schedule(static)
        for (int n = quads * 4; n < N; n++) {
            if (!sg) continue;
            const uint8_t *wn = w + (size_t)n * (K / 2);
            const uint16_t *sn = scales + (size_t)n * ng, *zn = zeros + (size_t)n * ng;
            for (int m = 0; m < M; m++)
                y[(size_t)m * N + n] = isa == ISA_AVX512 ? dot4_avx512(wn, sn, zn, &ps[m], K, G, sg)
                                                         : dot4_avx2(wn, sn, zn, &ps[m], K, G, sg);
        }
        free(sg);
    }
    free(buf);
    free(ps);
    return err;
}
