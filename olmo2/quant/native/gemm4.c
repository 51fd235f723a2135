/* olmo2 int4 prefill GEMM: y[M, N] = x[M, K] @ W[N, K]^T for many activation rows (from
 * native.INT4_GEMM_ROWS = 8: a prompt, or a batched decode step of 8+ requests), W in olmo2's int4 format as stored (olmo2/quant/formats.py): q uint8 [N, K/2]
 * (column 2j = low nibble of byte j, 2j+1 the high one), bf16 scale s and zero z per group
 * of G columns, w = (q - 8) * s + z. No packed copy of the weight is ever made: the tiles
 * stream the canonical nibbles.
 *
 * Built into the same library as gemv.c and gemm.c (native.py; no -march, the SIMD bodies
 * carry target attributes). Why a third kernel: gemv.c's int4 kernel serves M rows by
 * repeating its one-row dot product per (4 weight rows, 1 activation row), so every 64
 * packed weight bytes cost the nibble unpack (and, shift, and) and the group-scale permute
 * again for every activation row: ~9 vector ops per 128 columns per activation row, 90
 * GFLOP/s per CPU-second at 128 rows on the 1B's shapes. Here a tile of MR activation rows x
 * NR weight rows keeps its MR*NR fp32 accumulators in registers over the whole K loop; each
 * weight chunk is loaded and unpacked once per tile and feeds 2*MR vpdpbusd, and its group
 * scale vector is built once per tile row. Per (activation row, weight row) and 128 columns
 * that leaves 5 ops: 2 vpdpbusd, the int32 -> fp32 convert, the product of the weight's
 * group scale and the activation's block scales, and one FMA (+ 3/MR for the unpack).
 * The scale product cannot be hoisted: both scales change every chunk at G = 128 (and an
 * int32 sum cannot span two weight groups). Measured at 128 rows, 1 thread, on the 1B's
 * 7 block shapes (G = 128, per CPU-second, variants alternating in one process, 2026-11-29):
 * 4 x 4 tiles ~200 GFLOP/s vs gemv.c's ~97; 4 x 6 184, 3 x 8 191, 5 x 4 199, 8 x 2 177;
 * replacing the convert by the 1.5 * 2^23 float trick (moving it off port 0) changed
 * nothing, so the loop is bound by its total vector ops, not by one port.
 *
 * Numerics: the activation is quantized exactly as gemv.c's int4 kernel does it (so the
 * prefill and decode rows of the quality report see the same x̂): per contiguous block of
 * 32 columns, xq = round_half_even(x * (127 / amax_b)) in [-127, 127], xs_b = amax_b / 127,
 * stored split by column parity (xe[j] = xq[2j], xo[j] = xq[2j+1]) to meet the nibbles.
 * An int32 lane l of chunk c (64 packed bytes = 128 columns) covers columns 128c + 8l ..
 * 128c + 8l + 7, inside one weight group (G >= 32) and one activation block, so per lane
 *     d = vpdpbusd(q_lo, xe) + vpdpbusd(q_hi, xo) = sum q * xq over 8 columns (exact),
 * |d| <= 8 * 15 * 127 = 15240: no int32 overflow at any K (a lane never accumulates more
 * than one chunk), and the int32 -> fp32 convert is exact (< 2^24).
 *     acc += fp32(d) * (s_{n,g} * xs_{m,b})              per lane, per chunk (fp32 FMA)
 * The code offset and zero point are per-group terms, as in gemv.c:
 *     y = sum(acc) + sum_g [ z_g * xsum_g - s_g * corr4_g ],
 *     corr4_g = 8 * sum_{b in g} xs_b * sum_{k in b} xq_k,  xsum_g = fp32 sum of x over g,
 * added into the same accumulator (16 groups per FMA) before its one horizontal sum. The
 * integer products and x̂ equal gemv.c's; the fp32 sums run in a different order (gemv.c
 * adds the per-group terms as a separate scalar, and sums xsum in column order), so the
 * two kernels agree to fp32 summation slack, not bit for bit (tests/test_quant_native.py).
 *
 * Blocking: the output is cut into MR x NR tiles; threads split the weight rows (NR at a
 * time) statically, and each tile runs its whole K loop. The activations are packed once
 * per call (1.5 K bytes per row: xe, xo, and one fp32 block scale per lane) and M is cut
 * into blocks whose packed rows fit in ~1 MiB of the 2 MiB L2, so every weight tile of a
 * block streams past activations that stay in L2; the weight is read from memory once per
 * M block (once for a 128-token prompt at K = 2048, twice at K = 8192). No K slicing: a
 * K slice would need the partial sums of every (m, n) kept between slices in fp32, and the
 * L2 already holds a whole M block's K. While the first MR rows of a block run a tile, the
 * next tile's weight rows are prefetched to L2 (its NR streams interleave, which the
 * hardware prefetcher does not follow; see gemv.c's PF_HINT).
 * Every output element is computed by one thread with one fixed sequence of operations that
 * depends on K and G only, never on the thread count, M, N or the tile it lands in (tests
 * check bitwise equality across thread counts and row subsets).
 * AVX-512 VNNI only (native.py dispatches): AVX2 keeps gemv.c's per-row int4 kernel.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "xq4.h"

#define MR 4 /* tile: activation rows */
#define NR 4 /* tile: weight rows */
#define ABUDGET (1 << 20) /* bytes of packed activations per M block (L2 is 2 MiB per core) */

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,fma")))
#define INLINE inline __attribute__((always_inline))

enum { ISA_AVX512 = 2 };

/* acc += vpdpbusd(u8 a, s8 b), b from a register or memory (inline asm for the reason given
 * in gemm.c: GCC 12 copies intrinsic accumulators around each vpdpbusd). */
#define DPBUSD(acc, a, b) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "vm"(b))

/* The packed activations, MR rows per panel so that a tile addresses all its rows from one
 * pointer with constant offsets (per-row pointers cost a GPR reload per use in the 4 x 6
 * tile). Chunk c of a panel (128 columns) holds PANEL_C bytes: xe of its MR rows (64 bytes
 * each), then their xo, then their 16 lane scales (fp32). corr4 and xsum are per row,
 * zero-padded to a multiple of 16 groups so the per-group terms run in whole vectors. */
#define PANEL_C (3 * MR * 64)

/* Quantize and pack one row into slot p of its panel (AVX-512). The block quantization is
 * gemv.c's quantize_row op for op (max of |x|, 127 / amax, multiply, round to nearest
 * even), so xq is the same. */
static T512 void pack_row(const float *x, int K, int G, int ngp, char *p, float *corr4, float *xsum) {
    const int nb = K / 32, bpg = G / 32;
    float cacc = 0.f;
    __m512 sx = _mm512_setzero_ps();
    memset(corr4, 0, sizeof(float) * ngp);
    memset(xsum, 0, sizeof(float) * ngp);
    for (int b = 0; b < nb; b++) {
        __m512i ev, od;
        __m512 vs;
        int bsum;
        const float xs = xq4_block(x + 32 * b, &ev, &od, &bsum, &vs);
        /* block b = 16 packed bytes = 4 lanes of chunk b / 4 */
        char *c = p + (size_t)(b / 4) * PANEL_C + 16 * (b % 4);
        _mm_store_si128((__m128i *)c, _mm512_cvtepi32_epi8(ev));
        _mm_store_si128((__m128i *)(c + MR * 64), _mm512_cvtepi32_epi8(od));
        _mm_store_ps((float *)(c + 2 * MR * 64), _mm_set1_ps(xs));
        cacc += xs * (float)bsum;   /* corr4: gemv.c's order (blocks in column order) */
        sx = _mm512_add_ps(sx, vs);
        if ((b + 1) % bpg == 0) { /* group done */
            const int g = b / bpg;
            corr4[g] = 8.f * cacc;
            xsum[g] = _mm512_reduce_add_ps(sx);
            cacc = 0.f;
            sx = _mm512_setzero_ps();
        }
    }
}

/* One tile: the mr rows of panel a x weight rows [0, nr) of w (row stride ldw bytes), whole
 * K. sg/zg: the nr rows' group scales/zeros in fp32, row stride ngp (zero-padded); c4/xs:
 * the mr rows' corr4 and xsum (row stride ngp). pf: the next tile's weight rows to
 * prefetch (NULL: none). mr, nr are constants at every call site (tile_any), so the loops
 * unroll and acc lives in registers. */
static T512 INLINE void tile(const int mr, const int nr, const uint8_t *w, size_t ldw, int K, int G, const char *a,
                             const float *c4, const float *xs, const float *sg, const float *zg, int ngp,
                             const uint8_t *pf, float *out, size_t ldo) {
    const __m512i lo = _mm512_set1_epi8(0x0F);
    /* lane i of a chunk -> its group's offset within the chunk (G < 128: 2 or 4 groups) */
    const __m512i gidx = G == 64 ? _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0)
                                 : _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    __m512 acc[MR][NR];
#pragma GCC unroll 8
    for (int m = 0; m < mr; m++)
#pragma GCC unroll 8
        for (int n = 0; n < nr; n++) acc[m][n] = _mm512_setzero_ps();
    for (int j = 0; j < K / 2; j += 64, a += PANEL_C) {
        const int g0 = (2 * j) / G;
        if (pf)
#pragma GCC unroll 8
            for (int n = 0; n < nr; n++) _mm_prefetch((const char *)(pf + n * ldw + j), _MM_HINT_T1);
#pragma GCC unroll 8
        for (int n = 0; n < nr; n++) {
            const __m512i b = _mm512_loadu_si512((const void *)(w + n * ldw + j));
            const __m512i ql = _mm512_and_si512(b, lo), qh = _mm512_and_si512(_mm512_srli_epi16(b, 4), lo);
            const float *sr = sg + n * ngp;
            const __m512 sv = G >= 128 ? _mm512_set1_ps(sr[g0])
                                       : _mm512_permutexvar_ps(gidx, _mm512_castps128_ps512(_mm_loadu_ps(sr + g0)));
#pragma GCC unroll 8
            for (int m = 0; m < mr; m++) {
                __m512i d = _mm512_setzero_si512();
                DPBUSD(d, ql, *(const __m512i *)(a + 64 * m));
                DPBUSD(d, qh, *(const __m512i *)(a + 64 * (MR + m)));
                acc[m][n] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d),
                                            _mm512_mul_ps(sv, _mm512_load_ps((const float *)(a + 64 * (2 * MR + m)))),
                                            acc[m][n]);
            }
        }
    }
    /* per-group terms (16 groups per vector), then one horizontal sum per output */
#pragma GCC unroll 8
    for (int n = 0; n < nr; n++)
        for (int g = 0; g < ngp; g += 16) {
            const __m512 s = _mm512_loadu_ps(sg + n * ngp + g), z = _mm512_loadu_ps(zg + n * ngp + g);
#pragma GCC unroll 8
            for (int m = 0; m < mr; m++) {
                acc[m][n] = _mm512_fmadd_ps(z, _mm512_loadu_ps(xs + m * ngp + g), acc[m][n]);
                acc[m][n] = _mm512_fnmadd_ps(s, _mm512_loadu_ps(c4 + m * ngp + g), acc[m][n]);
            }
        }
#pragma GCC unroll 8
    for (int m = 0; m < mr; m++)
#pragma GCC unroll 8
        for (int n = 0; n < nr; n++) out[m * ldo + n] = _mm512_reduce_add_ps(acc[m][n]);
}

#define TILE_CASE(R, C) \
    case (R) * 8 + (C): tile(R, C, w, ldw, K, G, a, c4, xs, sg, zg, ngp, pf, out, ldo); break;
#define TILE_ROW(R) TILE_CASE(R, 4) TILE_CASE(R, 3) TILE_CASE(R, 2) TILE_CASE(R, 1)
static T512 void tile_any(int mr, int nr, const uint8_t *w, size_t ldw, int K, int G, const char *a, const float *c4,
                          const float *xs, const float *sg, const float *zg, int ngp, const uint8_t *pf, float *out,
                          size_t ldo) {
    switch (mr * 8 + nr) { TILE_ROW(4) TILE_ROW(3) TILE_ROW(2) TILE_ROW(1) }
}

/* bf16 -> fp32 of nr rows' scales and zeros (ng per row) into sg/zg (row stride ngp,
 * zero-padded). */
static void widen(const uint16_t *s, const uint16_t *z, int ng, int nr, int ngp, float *sg, float *zg) {
    for (int n = 0; n < nr; n++)
        for (int g = 0; g < ngp; g++) {
            uint32_t us = g < ng ? (uint32_t)s[(size_t)n * ng + g] << 16 : 0;
            uint32_t uz = g < ng ? (uint32_t)z[(size_t)n * ng + g] << 16 : 0;
            memcpy(sg + n * ngp + g, &us, 4);
            memcpy(zg + n * ngp + g, &uz, 4);
        }
}

/* Entry point (shapes checked by native.py): K % 128 == 0, G in {32, 64, 128, 256}, K % G
 * == 0; the same arguments as gemv.c's olmo2_int4_mm. Returns 0, -1 for an unknown ISA or
 * shape, -2 when out of memory. */
int olmo2_int4_prefill_mm(int isa, int nthreads, const float *x, int M, int K, const uint8_t *w,
                          const uint16_t *scales, const uint16_t *zeros, int G, int N, float *y) {
    if (K % 128 || (G != 32 && G != 64 && G != 128 && G != 256) || K % G || M <= 0 || N <= 0 || isa != ISA_AVX512)
        return -1;
    const int ng = K / G, ngp = (ng + 15) / 16 * 16, npanel = (M + MR - 1) / MR;
    /* panels (1.5 K bytes per row slot, chunk after chunk: PANEL_C * K / 128 per panel),
     * then per row corr4 and xsum (ngp floats each); 64-byte aligned throughout */
    const size_t panel = (size_t)PANEL_C * (K / 128), perrow = (size_t)K * 3 / 2;
    char *buf = aligned_alloc(64, panel * npanel + sizeof(float) * 2 * (size_t)ngp * M);
    if (!buf) return -2;
    float *c4 = (float *)(buf + panel * npanel), *xs = c4 + (size_t)ngp * M;
    int mblock = (int)(ABUDGET / perrow) / MR * MR;
    if (mblock < MR) mblock = MR;
    const int ntiles = (N + NR - 1) / NR;
    int err = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *sgz = aligned_alloc(64, sizeof(float) * 2 * NR * (size_t)ngp);
        if (!sgz) {
#pragma omp atomic write
            err = -2;
        }
#pragma omp for schedule(static)
        for (int m = 0; m < M; m++)
            pack_row(x + (size_t)m * K, K, G, ngp, buf + panel * (m / MR) + 64 * (m % MR), c4 + (size_t)ngp * m,
                     xs + (size_t)ngp * m);
        /* (the implicit barrier: every row is packed before any tile reads it) */
        for (int m0 = 0; m0 < M; m0 += mblock) {
            const int m1 = m0 + mblock < M ? m0 + mblock : M;
#pragma omp for schedule(static)
            for (int t = 0; t < ntiles; t++) {
                if (!sgz) continue;
                const int n0 = t * NR, nr = N - n0 < NR ? N - n0 : NR;
                float *sg = sgz, *zg = sgz + NR * ngp;
                widen(scales + (size_t)n0 * ng, zeros + (size_t)n0 * ng, ng, nr, ngp, sg, zg);
                const uint8_t *wt = w + (size_t)n0 * (K / 2);
                for (int mm = m0; mm < m1; mm += MR) {
                    const int mr = m1 - mm < MR ? m1 - mm : MR;
                    /* the first rows' pass prefetches the next tile (the last tile: none) */
                    const uint8_t *pf = mm == m0 && t + 1 < ntiles ? wt + (size_t)NR * (K / 2) : NULL;
                    tile_any(mr, nr, wt, K / 2, K, G, buf + panel * (mm / MR), c4 + (size_t)ngp * mm,
                             xs + (size_t)ngp * mm, sg, zg, ngp, pf, y + (size_t)mm * N + n0, N);
                }
            }
        }
        free(sgz);
    }
    free(buf);
    return err;
}
