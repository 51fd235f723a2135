/* The int4 GEMMs' activation x̂ for one block of 32 columns, shared by gemm4.c and
 * gemm4_amx.c: the two must quantize x identically (tests compare both against one fp64
 * emulation of this x̂, and against gemv.c's per-row decode kernel, which computes the same
 * values its own way), so the arithmetic lives in one place. Each caller stores the digits
 * in its own layout.
 *
 * Per block: amax = max |x|, xq = round_half_even(x * (127 / amax)) in [-127, 127] (0 for
 * an all-zero block), scale xs = amax / 127. The digits come back as two vectors of 16 int32:
 * the even columns (ev) and the odd ones (od), because both kernels pair column 2t with
 * column 2t + 1 the way the weight's nibbles are packed (formats.py). Also returned: the
 * block's digit sum (for the zero-point term corr4) and v0 + v1 (for the group's sum of x).
 *
 * Header-only (static inline): each .c file gets its own copy, inlined into callers whose
 * target attributes include XQ4_TARGET. native.py hashes this file with the sources. */
#ifndef OLMO2_XQ4_H
#define OLMO2_XQ4_H
#include <immintrin.h>

#define XQ4_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma"), always_inline))

static inline XQ4_TARGET float xq4_block(const float *x32, __m512i *ev, __m512i *od, int *bsum, __m512 *vsum) {
    const __m512 v0 = _mm512_loadu_ps(x32), v1 = _mm512_loadu_ps(x32 + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    const __m512 id = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
    const __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, id)), i1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, id));
    /* 32 int16 in column order, seen as 16 int32: the even column is the low half of each,
     * the odd one the high half (|xq| <= 127: the narrowing is exact) */
    const __m512i w16 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi32_epi16(i0)),
                                           _mm512_cvtepi32_epi16(i1), 1);
    *ev = _mm512_srai_epi32(_mm512_slli_epi32(w16, 16), 16);
    *od = _mm512_srai_epi32(w16, 16);
    *bsum = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
    *vsum = _mm512_add_ps(v0, v1);
    return amax / 127.f;
}
#endif
