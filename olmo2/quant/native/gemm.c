/* olmo2 int8 prefill GEMM: y[M, N] = x[M, K] @ (q[N, K] * s[N])^T for many activation rows
 * (M >= 16, a prompt), on the canonical int8 weight as stored (q int8, s bf16 per output
 * row; olmo2/quant/formats.py): no packed copy of the weight is ever made.
 *
 * Built into the same library as gemv.c (native.py compiles both; no -march, each SIMD body
 * carries its own target attribute, see gemv.c's header). Why a second kernel: gemv.c's int8
 * kernel serves M rows by repeating its one-row dot product per (4 weight rows, 1 activation
 * row), so every 64 weight bytes cost ~6 vector ops per activation row (xor, two vpdpbusd,
 * shift, int->fp32 convert, FMA): 54 GFLOP/s at 128 rows and 1 thread, below aten's 68.
 * This kernel spends 2.25 ops per 64 weight bytes per activation row, all but ~0.25 of
 * them vpdpbusd, the instruction that bounds any 15-bit int8 scheme on this hardware:
 * 166-189 GFLOP/s at 128 rows on the 1B's shapes, 1 thread (aten 81-87, same run).
 *
 * The activation: as gemv.c's, ~15 bits per block of (at most) 32 columns, xq =
 * round_half_even(x * (16383 / amax_b)) in [-16383, 16383], scale xs_b = amax_b / 16383,
 * split exactly into hi = xq >> 7 in [-128, 127] and lo = xq & 127 in [0, 127] (so it is as
 * precise as the decode kernel's and the quality report's prefill rows match decode's).
 * What changes is which 32 columns form a block. A vpdpbusd int32 lane l (l = 0..15) of a
 * 64-byte chunk c covers columns 64c + 4l .. 64c + 4l + 3; gemv.c's contiguous blocks put
 * each lane of each chunk in a different block, so every chunk needs its own convert +
 * scale + FMA. Here the block of lane l in group g (g = chunks 8g .. 8g+7, 512 columns) is
 *     B(g, l) = { 64c + 4l + j : 8g <= c < 8g + 8, 0 <= j < 4 }      (32 columns, strided)
 * so one int32 lane accumulates its whole block over 8 chunks and is converted and scaled
 * once per 8 chunks. A strided block localizes an outlier channel exactly as well as a
 * contiguous one (the outlier sets the scale of the 31 other columns of its block, wherever
 * they are). The last group of a K that is not a multiple of 512 has fewer chunks, hence
 * smaller (finer) blocks: K = 64 gives 16 blocks of 4 columns.
 *
 * Per block, per (activation row, weight row) and int32 lane (AVX-512 VNNI):
 *   a  = hcorr = -128 * sum of hi over the lane's block columns      (per activation row)
 *   a += vpdpbusd(q ^ 0x80, hi) per chunk: sum (q + 128) * hi         -> a = sum q * hi
 *   a <<= 7                                                             -> 128 * sum q * hi
 *   a += vpdpbusd(lo, q) per chunk                                      -> sum q * xq
 *   f += fp32(a) * xs_B                                                 (one FMA per block)
 * The hi pass and the lo pass read the tile's weight chunks twice (from L1): that keeps one
 * int32 accumulator per (row, row) pair instead of two, so a 4 x 6 tile (24 accumulators,
 * the 4 activation rows' digits and one weight vector) fits the 32 zmm; 4 x 6 measured ~4%
 * faster than 4 x 4 (alternating in one process).
 * int32 bounds (K up to any size: a lane only ever holds one block of <= 32 columns):
 *   hi pass intermediate: |hcorr| + |sum (q+128) hi| <= 128*32*128 + 32*255*128 = 1568768;
 *   |128 sum q hi| <= 128 * 32*127*128 = 66584576, + |sum lo q| <= 32*127*127 = 516128:
 *   < 67.2e6 < 2^31. The int32 -> fp32 convert rounds above 2^24 (relative error <= 2^-24,
 *   part of the fp32 slack the tests allow); everything before it is exact.
 * AVX-512 VNNI only. An AVX2 version of this tile (vpmaddubsw with llama.cpp's sign trick,
 * 2 x 2 tiles in 16 ymm) was written, tested bitwise equal, and measured slower than gemv.c's
 * per-row AVX2 kernel at every row count (1 thread, weights streamed: 7.2 vs 5.0 ms at 8
 * rows, 11.8 vs 9.3 at 16; ~55 GFLOP/s at 128 rows either way): without vpdpbusd each
 * (row, row, 32 columns) costs ~7 ops either way, and the small tile spills. So AVX2 CPUs
 * keep gemv.c for every row count (native.py dispatches), and fbgemm for int8 prefill.
 *
 * Blocking: the output is cut into tiles of MR activation rows x NR weight rows; a tile
 * keeps its MR*NR (4 x 6) int32 accumulators in registers across a group and its fp32 sums in L1
 * (a per-thread buffer touched once per group). Threads split the weight rows (NR at
 * a time) statically. K is cut into slices of KSLICE columns and M into blocks of MBLOCK
 * rows so the packed activations of one (block, slice) (MBLOCK * KSLICE * 2.25 bytes =
 * 576 KiB) stay in L2 while every weight tile of the slice streams past them; a slice's
 * per-(m, n) sum is added to the previous slices' in y, in slice order. The weight is
 * read once per M block (once for prompts up to 128 tokens).
 * Every output element is computed by one thread with one fixed sequence of operations that
 * depends on M, N and K only, never on the thread count or its tile's shape (tests check
 * bitwise equality across thread counts).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GCHUNKS 8   /* 64-column chunks per group: one lane's block spans a group */
#define KSLICE 2048 /* columns per K slice: a multiple of 64 * GCHUNKS */
#define MBLOCK 128  /* activation rows per M block */
#define MR 4        /* tile: activation rows */
#ifndef NR
#define NR 6        /* tile: weight rows */
#endif

#define T512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma")))
#define T256 __attribute__((target("avx2,fma"))) /* the activation packing only */
#define INLINE inline __attribute__((always_inline))

enum { ISA_AVX512 = 2 };

/* acc += vpdpbusd(u8 a, s8 b), b from a register or straight from memory. Inline asm, not
 * the intrinsic: with the intrinsic GCC 12 copied every accumulator to a scratch register
 * and back around each vpdpbusd (two extra vector moves per multiply, on the same ports),
 * which cost a third of the tile's speed. */
#define DPBUSD(acc, a, b) __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "vm"(b))

/* One activation row, packed once per call: the two digits in column order, and per group
 * g 16 lanes of hcorr (int32) and of block scales (fp32) at [16 g .. 16 g + 15]. */
typedef struct {
    const int8_t *hi, *lo;
    const int32_t *hcorr;
    const float *sc;
} grow;

static INLINE float bf16f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)) of an 8-lane sum. */
static T256 INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Quantize one activation row (see the header). AVX2 code (every AVX-512 CPU has it). Per
 * group: pass 1 takes each lane's |max| over the group's chunks; pass 2 rounds (cvtps:
 * nearest even, torch.round's rule), splits and packs the digits and sums hi per lane.
 * amax > 0 gives xq in [-16383, 16383] (fl(amax * fl(16383 / amax)) < 16383.5,
 * see gemv.c); an all-zero block gets scale 0 and zero digits. */
static T256 void quantize_row(const float *x, int K, int8_t *hi, int8_t *lo, int32_t *hcorr, float *sc) {
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7), m127 = _mm256_set1_epi32(127);
    const int nc = K / 64;
    for (int g = 0, c0 = 0; c0 < nc; g++, c0 += GCHUNKS) {
        const int c1 = c0 + GCHUNKS < nc ? c0 + GCHUNKS : nc;
        /* ymm i of a chunk holds columns 8i..8i+7 = lanes 2i (positions 0-3) and 2i+1 (4-7) */
        __m256 mx[8], inv[8];
        __m256i hs[8];
        for (int i = 0; i < 8; i++) mx[i] = _mm256_setzero_ps(), hs[i] = _mm256_setzero_si256();
        for (int c = c0; c < c1; c++)
            for (int i = 0; i < 8; i++)
                mx[i] = _mm256_max_ps(mx[i], _mm256_and_ps(_mm256_loadu_ps(x + 64 * c + 8 * i), absmask));
        for (int i = 0; i < 8; i++) {
            /* max over the 4 positions of each 128-bit half, broadcast within the half */
            __m256 t = _mm256_max_ps(mx[i], _mm256_permute_ps(mx[i], 0x4E));
            t = _mm256_max_ps(t, _mm256_permute_ps(t, 0xB1));
            __m256 nz = _mm256_cmp_ps(t, _mm256_setzero_ps(), _CMP_GT_OQ);
            inv[i] = _mm256_and_ps(_mm256_div_ps(_mm256_set1_ps(16383.f), t), nz);
            __m256 s = _mm256_div_ps(t, _mm256_set1_ps(16383.f));
            sc[16 * g + 2 * i] = _mm256_cvtss_f32(s);
            sc[16 * g + 2 * i + 1] = _mm_cvtss_f32(_mm256_extractf128_ps(s, 1));
        }
        for (int c = c0; c < c1; c++)
            for (int j = 0; j < 2; j++) { /* 32 columns at a time: one 32-byte store per digit */
                __m256i h[4], l[4];
                for (int i = 0; i < 4; i++) {
                    const int v = 4 * j + i;
                    __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 64 * c + 8 * v), inv[v]));
                    h[i] = _mm256_srai_epi32(q, 7);
                    l[i] = _mm256_and_si256(q, m127);
                    hs[v] = _mm256_add_epi32(hs[v], h[i]);
                }
                /* every digit fits int8: the saturating packs are exact; the permute undoes
                 * their lane interleave */
                __m256i ph = _mm256_packs_epi16(_mm256_packs_epi32(h[0], h[1]), _mm256_packs_epi32(h[2], h[3]));
                __m256i pl = _mm256_packs_epi16(_mm256_packs_epi32(l[0], l[1]), _mm256_packs_epi32(l[2], l[3]));
                _mm256_storeu_si256((__m256i *)(hi + 64 * c + 32 * j), _mm256_permutevar8x32_epi32(ph, perm));
                _mm256_storeu_si256((__m256i *)(lo + 64 * c + 32 * j), _mm256_permutevar8x32_epi32(pl, perm));
            }
        for (int i = 0; i < 8; i++) {
            __m256i s2 = _mm256_hadd_epi32(hs[i], hs[i]);
            __m256i s4 = _mm256_hadd_epi32(s2, s2); /* [lane 2i x4 | lane 2i+1 x4] */
            hcorr[16 * g + 2 * i] = -128 * _mm256_extract_epi32(s4, 0);
            hcorr[16 * g + 2 * i + 1] = -128 * _mm256_extract_epi32(s4, 4);
        }
    }
}

/* One tile over chunks [c0, c1) (c0 a multiple of GCHUNKS): `out` (row stride ldo) gets the
 * tile's sums, added to what the previous slices left there unless `first`; `last` then
 * multiplies by the weight rows' scales. mr <= MR and nr <= NR are constants at every call
 * site, so the loops unroll and the arrays live in registers. */
static T512 INLINE void tile512(const int mr, const int nr, const int8_t *w, size_t ldw, int c0, int c1,
                                const grow *xr, const uint16_t *ws, float *out, size_t ldo, int first, int last,
                                float *f) {
    const __m512i flip = _mm512_set1_epi8((char)0x80);
#pragma GCC unroll 8
    for (int m = 0; m < mr; m++)
#pragma GCC unroll 8
        for (int n = 0; n < nr; n++) _mm512_store_ps(f + 16 * (m * NR + n), _mm512_setzero_ps());
    for (int ca = c0; ca < c1; ca += GCHUNKS) {
        const int cb = ca + GCHUNKS < c1 ? ca + GCHUNKS : c1, g = ca / GCHUNKS;
        __m512i a[MR][NR];
#pragma GCC unroll 8
        for (int m = 0; m < mr; m++) {
            const __m512i h = _mm512_loadu_si512((const void *)(xr[m].hcorr + 16 * g));
#pragma GCC unroll 8
            for (int n = 0; n < nr; n++) a[m][n] = h;
        }
        for (int c = ca; c < cb; c++) {
            __m512i h[MR];
#pragma GCC unroll 8
            for (int m = 0; m < mr; m++) h[m] = _mm512_loadu_si512((const void *)(xr[m].hi + 64 * c));
#pragma GCC unroll 8
            for (int n = 0; n < nr; n++) {
                const __m512i qx = _mm512_xor_si512(_mm512_loadu_si512((const void *)(w + n * ldw + 64 * c)), flip);
#pragma GCC unroll 8
                for (int m = 0; m < mr; m++) DPBUSD(a[m][n], qx, h[m]);
            }
        }
#pragma GCC unroll 8
        for (int m = 0; m < mr; m++)
#pragma GCC unroll 8
            for (int n = 0; n < nr; n++) a[m][n] = _mm512_slli_epi32(a[m][n], 7);
        for (int c = ca; c < cb; c++) {
            __m512i l[MR];
#pragma GCC unroll 8
            for (int m = 0; m < mr; m++) l[m] = _mm512_loadu_si512((const void *)(xr[m].lo + 64 * c));
#pragma GCC unroll 8
            for (int n = 0; n < nr; n++) {
                const __m512i q = _mm512_loadu_si512((const void *)(w + n * ldw + 64 * c));
#pragma GCC unroll 8
                for (int m = 0; m < mr; m++) DPBUSD(a[m][n], l[m], q);
            }
        }
#pragma GCC unroll 8
        for (int m = 0; m < mr; m++) {
            const __m512 s = _mm512_loadu_ps(xr[m].sc + 16 * g);
#pragma GCC unroll 8
            for (int n = 0; n < nr; n++) {
                float *fp = f + 16 * (m * NR + n);
                _mm512_store_ps(fp, _mm512_fmadd_ps(_mm512_cvtepi32_ps(a[m][n]), s, _mm512_load_ps(fp)));
            }
        }
    }
#pragma GCC unroll 8
    for (int m = 0; m < mr; m++)
#pragma GCC unroll 8
        for (int n = 0; n < nr; n++) {
            /* lanes 0-7 + lanes 8-15, then hsum8 */
            const float *fp = f + 16 * (m * NR + n);
            const __m256 lo8 = _mm256_load_ps(fp), hi8 = _mm256_load_ps(fp + 8);
            float r = hsum8(_mm256_add_ps(lo8, hi8));
            if (!first) r = out[m * ldo + n] + r;
            out[m * ldo + n] = last ? bf16f(ws[n]) * r : r;
        }
}

/* Constant (mr, nr) per call so each tile shape is its own unrolled body. */
#define T512_CASE(R, C) \
    case (R) * 8 + (C): tile512(R, C, w, ldw, c0, c1, xr, ws, out, ldo, first, last, f); break;
#define T512_ROW(R) T512_CASE(R, 6) T512_CASE(R, 5) T512_CASE(R, 4) T512_CASE(R, 3) T512_CASE(R, 2) T512_CASE(R, 1)
static T512 void tile512_any(int mr, int nr, const int8_t *w, size_t ldw, int c0, int c1, const grow *xr,
                             const uint16_t *ws, float *out, size_t ldo, int first, int last, float *f) {
    switch (mr * 8 + nr) { T512_ROW(4) T512_ROW(3) T512_ROW(2) T512_ROW(1) }
}

/* Entry point (shapes checked by native.py): K % 64 == 0. Returns 0, -1 for an unknown
 * ISA or shape, -2 when out of memory. */
int olmo2_int8_prefill_mm(int isa, int nthreads, const float *x, int M, int K, const int8_t *w, const uint16_t *scales,
                    int N, float *y) {
    if (K % 64 || isa != ISA_AVX512 || M <= 0 || N <= 0) return -1;
    const int nc = K / 64, ng = (nc + GCHUNKS - 1) / GCHUNKS;
    /* per row: hi, lo (K bytes each), then hcorr and sc (16 lanes of 4 bytes per group);
     * a multiple of 64 bytes, so every row's arrays start cache-line aligned */
    const size_t per = (size_t)2 * K + (size_t)128 * ng;
    char *buf = aligned_alloc(64, per * (size_t)M);
    grow *rows = malloc(sizeof(grow) * (size_t)M);
    if (!buf || !rows) {
        free(buf);
        free(rows);
        return -2;
    }
    const int ntiles = (N + NR - 1) / NR, cs = KSLICE / 64;
#pragma omp parallel num_threads(nthreads)
    {
        /* the tile's fp32 block sums: in memory, touched once per group, so that the 16
         * int32 accumulators and the operands have the 32 zmm registers to themselves (kept
         * in registers too, GCC shuffled every accumulator through a copy per vpdpbusd) */
        float facc[MR * NR * 16] __attribute__((aligned(64)));
#pragma omp for schedule(static)
        for (int m = 0; m < M; m++) {
            char *b = buf + per * (size_t)m;
            int8_t *hi = (int8_t *)b, *lo = hi + K;
            int32_t *hc = (int32_t *)(lo + K);
            float *sc = (float *)(hc + 16 * ng);
            quantize_row(x + (size_t)m * K, K, hi, lo, hc, sc);
            rows[m] = (grow){hi, lo, hc, sc};
        }
        /* (the implicit barrier: every row is packed before any tile reads it) */
        for (int m0 = 0; m0 < M; m0 += MBLOCK) {
            const int m1 = m0 + MBLOCK < M ? m0 + MBLOCK : M;
            for (int c0 = 0; c0 < nc; c0 += cs) {
                const int c1 = c0 + cs < nc ? c0 + cs : nc, first = c0 == 0, last = c1 == nc;
#pragma omp for schedule(static)
                for (int t = 0; t < ntiles; t++) {
                    const int n0 = t * NR, nr = N - n0 < NR ? N - n0 : NR;
                    for (int mm = m0; mm < m1; mm += MR) {
                        const int mr = m1 - mm < MR ? m1 - mm : MR;
                        tile512_any(mr, nr, w + (size_t)n0 * K, K, c0, c1, rows + mm, scales + n0,
                                    y + (size_t)mm * N + n0, N, first, last, facc);
                    }
                }
            }
        }
    }
    free(buf);
    free(rows);
    return 0;
}
