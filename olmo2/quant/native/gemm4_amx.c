/* olmo2 int4 prefill GEMM on AMX-INT8 (Intel Sapphire Rapids and later): the same product
 * and the same numerics as gemm4.c (read its header first), with the integer dot products
 * done by the tile unit instead of AVX-512 VNNI.
 *
 * Why: gemm4.c spends ~6 vector ops per (activation row, weight row, 128 columns), and the
 * two AVX-512 ports are its bound (~200 GFLOP/s per core). One TDPBUSD multiplies a 16 x 32
 * byte tile by a 32 x 16 one (8192 multiply-adds); the per-block fp32 work left to AVX-512
 * is ~2.3 ops per 16 (row, row) pairs per 32 columns, ~10x fewer vector ops per product.
 * Measured on the 1B's 7 block shapes at 128 rows, 1 thread, G = 128, per CPU-second, the
 * three kernels alternating in one process (2026-11-29 ~21:55 UTC, loaded host): ~460
 * GFLOP/s vs gemm4.c's ~225 and gemv.c's per-row ~115 (G = 32: 316 / 189 / 89). What it
 * took: A tiles block-major (with a K-byte row stride a tile's 16 rows fell into one or two
 * L1 sets: 304 -> 379), four C tiles in rotation (tile registers are not renamed, so two
 * made each block wait for the last one's store: 379 -> 432), and the activation block
 * scales summed per weight group before the group scale (no multiply per block: 432 -> 463).
 * Without the fp32 per-block work the loop ran ~540, so that work is still the larger part.
 *
 * Layout. Per activation block b (32 columns; the decode kernel's x̂, one int8 digit each):
 *   A = 16 weight rows x 32 bytes (unsigned codes 0..15): for row n, bytes 0..15 are the
 *       low nibbles of the block's 16 packed bytes (columns 32b + 2t) and bytes 16..31 the
 *       high nibbles (columns 32b + 2t + 1). Unpacked once per 16-row weight panel per
 *       M block into a per-thread buffer (the stored nibbles are never copied elsewhere).
 *   B = the block of 16 activation rows in the tile unit's 4-byte-interleaved layout, in
 *       A's column order: B[r][4i + u] = xq[m_i][column of A byte 4r + u]. Packed once per
 *       call.
 *   C[n][i] = sum over the block of q * xq: exact in int32 (|C| <= 32 * 15 * 127 = 60960),
 *       converted exactly to fp32.
 * Per four blocks b..b+3 (one tile-unit pass), C_b row n being the 16 activation rows of
 * weight row n (one zmm) and xs_b the 16 rows' block scales:
 *     t = sum over the blocks of one weight group g of fp32(C_b[n]) * xs_b  (fp32, in b order)
 *     acc[n] += t * s_{n,g}                     (one, two or four groups: G >= 128, 64, 32)
 * then, as in gemm4.c, acc[n] += z_{n,g} * xsum_g[m] - s_{n,g} * corr4_g[m] per group, and
 * lane i of acc[n] is y[m_i, n]: no horizontal sums. The products and x̂ equal gemv.c's and
 * gemm4.c's; the fp32 sums run in another order (tests: within the fp32 slack).
 *
 * The tile unit needs the OS's permission per process (arch_prctl ARCH_REQ_XCOMP_PERM,
 * Linux >= 5.16; olmo2_amx_available() asks once) and a tile configuration per thread
 * (loaded at the start of each parallel region, released at its end). Every output element
 * is computed by one thread with one fixed sequence of operations that depends on K and G
 * only (not on the thread count, M, N or its tile).
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "xq4.h"

/* The tile intrinsics need GCC >= 11 or clang >= 12. With an older compiler this file
 * builds as the two entry points saying "no AMX" (callers then run gemm4.c), so the rest of
 * the library (every other kernel) still builds: one failed file would fail them all. */
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11)
#define OLMO2_HAVE_AMX 1
#else
#define OLMO2_HAVE_AMX 0
int olmo2_amx_available(void) { return 0; }
int olmo2_int4_prefill_amx_mm(int isa, int nthreads, const float *x, int M, int K, const uint8_t *w,
                              const uint16_t *scales, const uint16_t *zeros, int G, int N, float *y) {
    (void)isa, (void)nthreads, (void)x, (void)M, (void)K, (void)w, (void)scales, (void)zeros, (void)G, (void)N, (void)y;
    return -1;
}
#endif
#if OLMO2_HAVE_AMX

#define TAMX __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define ABUDGET (1 << 20) /* bytes of packed activations per M block (L2 is 2 MiB per core) */

enum { ISA_AVX512 = 2 };

/* 1 if the CPU has AMX-TILE and AMX-INT8 and the OS granted this process the tile state
 * (asked once; the grant is per process), else 0. */
int olmo2_amx_available(void) {
    static int state = -1;
    if (state >= 0) return state;
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    state = 0;
    if ((d >> 24 & 1) && (d >> 25 & 1) && syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                                                  18 /* XFEATURE_XTILEDATA */) == 0)
        state = 1;
    return state;
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;

/* tmm0-3: C (16 x 16 int32) of four consecutive blocks, tmm4/5: A (16 x 32 bytes), tmm6/7:
 * B (8 x 64 bytes), alternating: tile registers are not renamed, so a register reused by
 * the next block would wait for this block's instruction that reads it. */
static TAMX void config(void) {
    tilecfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 4; t++) c.colsb[t] = 64, c.rows[t] = 16;
    for (int t = 4; t < 6; t++) c.colsb[t] = 32, c.rows[t] = 16;
    for (int t = 6; t < 8; t++) c.colsb[t] = 64, c.rows[t] = 8;
    /* the intrinsic's asm claims to read only 8 bytes of c: make every store to it visible */
    __asm__ volatile("" : : "r"(&c) : "memory");
    _tile_loadconfig(&c);
}

static TAMX void release(void) { _tile_release(); }

/* Quantize row i of an activation tile (gemv.c's op sequence, as gemm4.c's pack_row) into
 * the tile's B blocks (512 bytes per block), its lane of the block scales xsv (16 floats per
 * block) and of the per-group terms c4v / xsv_ (16 floats per group). */
static TAMX void pack_row(const float *x, int K, int G, int i, int8_t *bt, float *xsv, float *c4v, float *xsm) {
    const int nb = K / 32, bpg = G / 32;
    float cacc = 0.f;
    __m512 sx = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m512i ev, od;
        __m512 vs;
        int bsum;
        const float xs = xq4_block(x + 32 * b, &ev, &od, &bsum, &vs);
        uint32_t q[8]; /* A's column order: 16 even columns, then 16 odd ones */
        _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(ev));
        _mm_storeu_si128((__m128i *)(q + 4), _mm512_cvtepi32_epi8(od));
        int8_t *blk = bt + (size_t)512 * b;
        for (int r = 0; r < 8; r++) memcpy(blk + 64 * r + 4 * i, &q[r], 4);
        xsv[16 * b + i] = xs;
        cacc += xs * (float)bsum;
        sx = _mm512_add_ps(sx, vs);
        if ((b + 1) % bpg == 0) {
            const int g = b / bpg;
            c4v[16 * g + i] = 8.f * cacc;
            xsm[16 * g + i] = _mm512_reduce_add_ps(sx);
            cacc = 0.f;
            sx = _mm512_setzero_ps();
        }
    }
}

/* Unpack nr <= 16 weight rows (K/2 packed bytes each) into A's byte order, block-major:
 * block b's tile is 512 contiguous bytes (row n at 32 n), rows nr..15 zero. (Row-major with
 * a K-byte row stride put a tile's 16 rows 2-8 KiB apart, in one or two L1 sets.) */
static TAMX void unpack_panel(const uint8_t *w, int K, int nr, uint8_t *ab) {
    const __m512i lo = _mm512_set1_epi8(0x0F);
    /* [lo lane 0, hi lane 0, lo lane 1, hi lane 1] and [lanes 2, 3] as qword indices */
    const __m512i i0 = _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), i1 = _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15);
    for (int n = 0; n < 16; n++) {
        if (n >= nr) {
            for (int b = 0; b < K / 32; b++) memset(ab + 512 * (size_t)b + 32 * n, 0, 32);
            continue;
        }
        for (int j = 0; j < K / 2; j += 64) { /* 64 packed bytes = blocks j/16 .. j/16 + 3 */
            const __m512i v = _mm512_loadu_si512((const void *)(w + (size_t)n * (K / 2) + j));
            const __m512i l = _mm512_and_si512(v, lo), h = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo);
            const __m512i o0 = _mm512_permutex2var_epi64(l, i0, h), o1 = _mm512_permutex2var_epi64(l, i1, h);
            uint8_t *o = ab + (size_t)512 * (j / 16) + 32 * n;
            _mm256_store_si256((__m256i *)o, _mm512_castsi512_si256(o0));
            _mm256_store_si256((__m256i *)(o + 512), _mm512_extracti64x4_epi64(o0, 1));
            _mm256_store_si256((__m256i *)(o + 1024), _mm512_castsi512_si256(o1));
            _mm256_store_si256((__m256i *)(o + 1536), _mm512_extracti64x4_epi64(o1, 1));
        }
    }
}

/* One (16 weight rows) x (16 activation rows) tile over all of K. ab: the unpacked panel
 * (row stride K); bt: the activation tile's B blocks; xsv/c4v/xsm: its per-block scales and
 * per-group terms; sg/zg: the panel's group scales/zeros in fp32 (row stride ng); cb: 4 KiB
 * scratch for four C tiles. Returns acc through `out` (16 x 16, out[16 n + i] = y[m_i, n]). */
static TAMX void tile(const uint8_t *ab, int K, int G, const int8_t *bt, const float *xsv, const float *c4v,
                      const float *xsm, const float *sg, const float *zg, int32_t *cb, float *out) {
    const int nb = K / 32, ng = K / G, bpg = G / 32;
    __m512 acc[16];
    for (int n = 0; n < 16; n++) acc[n] = _mm512_setzero_ps();
    /* tileloadd's asm declares no memory input: keep the panel/activation stores before it */
    __asm__ volatile("" : : : "memory");
    for (int b = 0; b < nb; b += 4) { /* nb is a multiple of 4 (K % 128 == 0) */
        const uint8_t *a = ab + (size_t)512 * b;
        const int8_t *bb = bt + (size_t)512 * b;
        _tile_loadd(4, a, 32);
        _tile_loadd(6, bb, 64);
        _tile_zero(0);
        _tile_dpbusd(0, 4, 6);
        _tile_loadd(5, a + 512, 32);
        _tile_loadd(7, bb + 512, 64);
        _tile_zero(1);
        _tile_dpbusd(1, 5, 7);
        _tile_stored(0, cb, 64);
        _tile_loadd(4, a + 1024, 32);
        _tile_loadd(6, bb + 1024, 64);
        _tile_zero(2);
        _tile_dpbusd(2, 4, 6);
        _tile_stored(1, cb + 256, 64);
        _tile_loadd(5, a + 1536, 32);
        _tile_loadd(7, bb + 1536, 64);
        _tile_zero(3);
        _tile_dpbusd(3, 5, 7);
        _tile_stored(2, cb + 512, 64);
        _tile_stored(3, cb + 768, 64);
        /* the four blocks' products, scaled by the activation's block scales and summed
         * per weight group, then by the group scale: one group (G >= 128), two (G = 64) or
         * four (G = 32) */
        const __m512 x0 = _mm512_load_ps(xsv + 16 * b), x1 = _mm512_load_ps(xsv + 16 * b + 16),
                     x2 = _mm512_load_ps(xsv + 16 * b + 32), x3 = _mm512_load_ps(xsv + 16 * b + 48);
        const int g = b / bpg;
#define CV(h, n) _mm512_cvtepi32_ps(_mm512_load_si512((const void *)(cb + 256 * (h) + 16 * (n))))
        if (bpg >= 4) {
#pragma GCC unroll 16
            for (int n = 0; n < 16; n++) {
                __m512 t = _mm512_mul_ps(CV(0, n), x0);
                t = _mm512_fmadd_ps(CV(1, n), x1, t);
                t = _mm512_fmadd_ps(CV(2, n), x2, t);
                t = _mm512_fmadd_ps(CV(3, n), x3, t);
                acc[n] = _mm512_fmadd_ps(t, _mm512_set1_ps(sg[n * ng + g]), acc[n]);
            }
        } else if (bpg == 2) {
#pragma GCC unroll 16
            for (int n = 0; n < 16; n++) {
                const __m512 t0 = _mm512_fmadd_ps(CV(1, n), x1, _mm512_mul_ps(CV(0, n), x0));
                const __m512 t1 = _mm512_fmadd_ps(CV(3, n), x3, _mm512_mul_ps(CV(2, n), x2));
                acc[n] = _mm512_fmadd_ps(t0, _mm512_set1_ps(sg[n * ng + g]), acc[n]);
                acc[n] = _mm512_fmadd_ps(t1, _mm512_set1_ps(sg[n * ng + g + 1]), acc[n]);
            }
        } else {
#pragma GCC unroll 16
            for (int n = 0; n < 16; n++) {
                const float *sr = sg + n * ng + g;
                acc[n] = _mm512_fmadd_ps(_mm512_mul_ps(CV(0, n), x0), _mm512_set1_ps(sr[0]), acc[n]);
                acc[n] = _mm512_fmadd_ps(_mm512_mul_ps(CV(1, n), x1), _mm512_set1_ps(sr[1]), acc[n]);
                acc[n] = _mm512_fmadd_ps(_mm512_mul_ps(CV(2, n), x2), _mm512_set1_ps(sr[2]), acc[n]);
                acc[n] = _mm512_fmadd_ps(_mm512_mul_ps(CV(3, n), x3), _mm512_set1_ps(sr[3]), acc[n]);
            }
        }
#undef CV
    }
    for (int g = 0; g < ng; g++) {
        const __m512 xm = _mm512_load_ps(xsm + 16 * g), c4 = _mm512_load_ps(c4v + 16 * g);
#pragma GCC unroll 16
        for (int n = 0; n < 16; n++) {
            acc[n] = _mm512_fmadd_ps(_mm512_set1_ps(zg[n * ng + g]), xm, acc[n]);
            acc[n] = _mm512_fnmadd_ps(_mm512_set1_ps(sg[n * ng + g]), c4, acc[n]);
        }
    }
    for (int n = 0; n < 16; n++) _mm512_store_ps(out + 16 * n, acc[n]);
}

/* Entry point: gemm4.c's arguments and shape rules. Returns 0, -1 (unknown ISA or shape, or
 * no AMX), -2 (out of memory). */
int olmo2_int4_prefill_amx_mm(int isa, int nthreads, const float *x, int M, int K, const uint8_t *w,
                              const uint16_t *scales, const uint16_t *zeros, int G, int N, float *y) {
    if (K % 128 || (G != 32 && G != 64 && G != 128 && G != 256) || K % G || M <= 0 || N <= 0 ||
        isa != ISA_AVX512 || !olmo2_amx_available())
        return -1;
    const int nb = K / 32, ng = K / G, nmt = (M + 15) / 16, nnt = (N + 15) / 16;
    /* per activation tile: B blocks (512 bytes each), xsv (16 floats per block), c4v and
     * xsm (16 floats per group): all multiples of 64 bytes */
    const size_t per = (size_t)512 * nb + 64 * (size_t)nb + 2 * 64 * (size_t)ng;
    char *buf = aligned_alloc(64, per * nmt);
    if (!buf) return -2;
    memset(buf, 0, per * nmt); /* the rows past M of the last tile: zero digits, scales, terms */
    int mtb = (int)(ABUDGET / ((size_t)16 * K)); /* activation tiles per M block */
    if (mtb < 1) mtb = 1;
    int err = 0;
#pragma omp parallel num_threads(nthreads)
    {
        uint8_t *ab = aligned_alloc(64, (size_t)16 * K);
        float *sgz = aligned_alloc(64, sizeof(float) * 32 * (size_t)ng + 64);
        int32_t *cb = aligned_alloc(64, 4096);
        float *out = aligned_alloc(64, 1024);
        if (!ab || !sgz || !cb || !out) {
#pragma omp atomic write
            err = -2;
        }
#pragma omp for schedule(static)
        for (int m = 0; m < M; m++) {
            char *t = buf + per * (size_t)(m / 16);
            float *xsv = (float *)(t + (size_t)512 * nb), *c4v = xsv + 16 * (size_t)nb, *xsm = c4v + 16 * (size_t)ng;
            pack_row(x + (size_t)m * K, K, G, m % 16, (int8_t *)t, xsv, c4v, xsm);
        }
        /* (the implicit barrier: every row is packed before any tile reads it) */
        if (ab && sgz && cb && out) config();
        for (int t0 = 0; t0 < nmt; t0 += mtb) {
            const int t1 = t0 + mtb < nmt ? t0 + mtb : nmt;
#pragma omp for schedule(static)
            for (int nt = 0; nt < nnt; nt++) {
                if (!ab || !sgz || !cb || !out) continue;
                const int n0 = 16 * nt, nr = N - n0 < 16 ? N - n0 : 16;
                unpack_panel(w + (size_t)n0 * (K / 2), K, nr, ab);
                float *sg = sgz, *zg = sgz + 16 * (size_t)ng;
                for (int n = 0; n < 16; n++)
                    for (int g = 0; g < ng; g++) {
                        uint32_t us = n < nr ? (uint32_t)scales[(size_t)(n0 + n) * ng + g] << 16 : 0;
                        uint32_t uz = n < nr ? (uint32_t)zeros[(size_t)(n0 + n) * ng + g] << 16 : 0;
                        memcpy(sg + n * ng + g, &us, 4);
                        memcpy(zg + n * ng + g, &uz, 4);
                    }
                for (int mt = t0; mt < t1; mt++) {
                    const char *t = buf + per * (size_t)mt;
                    const float *xsv = (const float *)(t + (size_t)512 * nb), *c4v = xsv + 16 * (size_t)nb,
                                *xsm = c4v + 16 * (size_t)ng;
                    tile(ab, K, G, (const int8_t *)t, xsv, c4v, xsm, sg, zg, cb, out);
                    const int m0 = 16 * mt, mr = M - m0 < 16 ? M - m0 : 16;
                    for (int i = 0; i < mr; i++)
                        for (int n = 0; n < nr; n++) y[(size_t)(m0 + i) * N + n0 + n] = out[16 * n + i];
                }
            }
        }
        if (ab && sgz && cb && out) release();
        free(ab);
        free(sgz);
        free(cb);
        free(out);
    }
    free(buf);
    return err;
}
#endif /* OLMO2_HAVE_AMX */
