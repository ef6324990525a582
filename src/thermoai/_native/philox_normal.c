/* Standard normal draws from Philox4x32-10 and Box-Muller, for thermoai.philox.

   Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011) maps a 128-bit
   counter and a 64-bit key to four 32-bit words. Block b of a call uses the counter (b_lo, b_hi, c_lo,
   c_hi) with b the block index and c the caller's 64-bit stream offset; its four words (w0, w1, w2, w3)
   give four normals by Box-Muller on the pairs (w0, w1) and (w2, w3):

       u = (floor(w_even / 2^9) + 1/2) 2^-23 in (0, 1)     radius  r = sqrt(-2 ln u)
       v =  floor(w_odd / 2^8) 2^-24        in [0, 1)     angle   2 pi v
       z_even = r cos(2 pi v),  z_odd = r sin(2 pi v)

   Element i of the output is normal i of that sequence, times ``scale``. ln, sin and cos are written
   here as Cephes' single-precision polynomials (relative error below 2e-7) so that the loops vectorise
   without libm and without -ffast-math (which would change the floating-point mode of the process);
   compiled with -ffp-contract=off every operation rounds as written, so tests/test_philox.py compares the
   output bit for bit with a NumPy float32 transcription. No state: a draw is a pure function of
   (key, offset, n). */

#include <stdint.h>
#include <string.h>

#define BLOCK 64 /* Philox blocks per inner batch: 256 normals */

static inline float as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t as_uint(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* natural log of x in (0, 1], Cephes logf; branch-free so that the loop vectorises */
static inline float cephes_logf(float x) {
    uint32_t bits = as_uint(x);
    int32_t e = (int32_t)((bits >> 23) & 0xff) - 126;      /* x = m 2^e, m in [0.5, 1) */
    float m = as_float((bits & 0x007fffffu) | 0x3f000000u);
    float small = (float)(m < 0.707106781186547524f);      /* then use 2m in [1, sqrt 2) and e - 1 */
    float fe = (float)e - small;
    float t = m * (1.0f + small) - 1.0f;                   /* exact */
    float z = t * t;
    float p = 7.0376836292e-2f;
    p = p * t - 1.1514610310e-1f;
    p = p * t + 1.1676998740e-1f;
    p = p * t - 1.2420140846e-1f;
    p = p * t + 1.4249322787e-1f;
    p = p * t - 1.6668057665e-1f;
    p = p * t + 2.0000714765e-1f;
    p = p * t - 2.4999993993e-1f;
    p = p * t + 3.3333331174e-1f;
    float y = t * z * p;
    y += -2.12194440e-4f * fe;
    y += -0.5f * z;
    return t + y + 0.693359375f * fe;
}

/* sin and cos of 2 pi v for v in [0, 1): exact quadrant reduction on v, Cephes sinf/cosf kernels on
   [-pi/4, pi/4] */
static inline void sincos_2pi(float v, float *s, float *c) {
    float x = 4.0f * v;                       /* exact */
    float q = (float)(int32_t)(x + 0.5f);     /* nearest quadrant, 0..4 */
    float phi = (x - q) * 1.57079632679489662f;
    int32_t k = ((int32_t)q) & 3;
    float z = phi * phi;
    float sp = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * phi + phi;
    float cp = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z
               - 0.5f * z + 1.0f;
    uint32_t odd = 0u - (uint32_t)(k & 1);   /* quadrant k: angle = k pi/2 + phi; selects as bit masks */
    uint32_t sb = as_uint(sp), cb = as_uint(cp);
    uint32_t sa = (sb & ~odd) | (cb & odd), ca = (cb & ~odd) | (sb & odd);
    *s = as_float(sa ^ ((uint32_t)(k & 2) << 30));
    *c = as_float(ca ^ ((uint32_t)((k + 1) & 2) << 30));
}

static inline void philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1,
                                 uint32_t out[4]) {
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0;
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* the four words of blocks first .. first + count - 1 (count <= BLOCK), words[j][b] */
#if defined(__AVX512F__)
#include <immintrin.h>
/* 16 blocks per vector: the 32x32 -> 64-bit products of even and odd lanes by vpmuludq */
static inline void mulhilo16(__m512i a, __m512i m, __m512i *hi, __m512i *lo) {
    __m512i even = _mm512_mul_epu32(a, m);
    __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
    *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
    *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

static void words(uint64_t first, int count, uint64_t offset, uint64_t key, uint32_t w[4][BLOCK]) {
    const __m512i m0 = _mm512_set1_epi32((int)0xD2511F53u), m1 = _mm512_set1_epi32((int)0xCD9E8D57u);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int b = 0; b < count; b += 16) {
        uint64_t ctr = first + (uint64_t)b;  /* lanes hold the counters ctr .. ctr + 15 */
        __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)ctr), lane);
        __m512i c1 = _mm512_set1_epi32((int)(uint32_t)(ctr >> 32));
        /* lanes whose low word wrapped past 2^32 carry into the high word */
        __mmask16 wrapped = _mm512_cmplt_epu32_mask(c0, _mm512_set1_epi32((int)(uint32_t)ctr));
        c1 = _mm512_mask_add_epi32(c1, wrapped, c1, _mm512_set1_epi32(1));
        __m512i c2 = _mm512_set1_epi32((int)(uint32_t)offset), c3 = _mm512_set1_epi32((int)(uint32_t)(offset >> 32));
        uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
        for (int r = 0; r < 10; r++) {
            __m512i hi0, lo0, hi1, lo1;
            mulhilo16(c0, m0, &hi0, &lo0);
            mulhilo16(c2, m1, &hi1, &lo1);
            c0 = _mm512_xor_si512(_mm512_xor_si512(hi1, c1), _mm512_set1_epi32((int)k0));
            c2 = _mm512_xor_si512(_mm512_xor_si512(hi0, c3), _mm512_set1_epi32((int)k1));
            c1 = lo1;
            c3 = lo0;
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        _mm512_storeu_si512((void *)&w[0][b], c0);
        _mm512_storeu_si512((void *)&w[1][b], c1);
        _mm512_storeu_si512((void *)&w[2][b], c2);
        _mm512_storeu_si512((void *)&w[3][b], c3);
    }
}
#else
static void words(uint64_t first, int count, uint64_t offset, uint64_t key, uint32_t w[4][BLOCK]) {
    uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
    uint32_t c2 = (uint32_t)offset, c3 = (uint32_t)(offset >> 32);
    for (int b = 0; b < count; b++) {
        uint64_t ctr = first + (uint64_t)b;
        uint32_t out[4];
        philox4x32_10((uint32_t)ctr, (uint32_t)(ctr >> 32), c2, c3, k0, k1, out);
        w[0][b] = out[0]; w[1][b] = out[1]; w[2][b] = out[2]; w[3][b] = out[3];
    }
}
#endif

static void normals(int count, float scale, uint32_t w[4][BLOCK], float z[4][BLOCK]) {
    for (int pair = 0; pair < 2; pair++) {
        for (int b = 0; b < count; b++) {
            /* u on the 23-bit midpoint grid, exact: 2^-24 <= u <= 1 - 2^-24; v on the 24-bit grid */
            float u = ((float)(w[2 * pair][b] >> 9) + 0.5f) * 1.1920928955078125e-7f;
            float v = (float)(w[2 * pair + 1][b] >> 8) * 5.9604644775390625e-8f;
            float r = scale * __builtin_sqrtf(-2.0f * cephes_logf(u));
            float s, c;
            sincos_2pi(v, &s, &c);
            z[2 * pair][b] = r * c;
            z[2 * pair + 1][b] = r * s;
        }
    }
}

/* out[i] = scale z_i (add = 0) or out[i] += scale z_i (add = 1), i < n, z the normals of (key, offset) */
static void fill(float *out, int64_t n, uint64_t key, uint64_t offset, float scale, int add) {
    uint32_t w[4][BLOCK];
    float z[4][BLOCK];
    int64_t blocks = (n + 3) / 4;
    for (int64_t first = 0; first < blocks; first += BLOCK) {
        int count = (int)((blocks - first) < BLOCK ? (blocks - first) : BLOCK);
        words((uint64_t)first, count, offset, key, w);
        normals(count, scale, w, z);
        float *o = out + first * 4;
        if (4 * (first + count) <= n) {  /* a whole batch: no bounds checks, so the loops vectorise */
            if (add) {
                for (int b = 0; b < count; b++)
                    for (int j = 0; j < 4; j++) o[4 * b + j] += z[j][b];
            } else {
                for (int b = 0; b < count; b++)
                    for (int j = 0; j < 4; j++) o[4 * b + j] = z[j][b];
            }
        } else {
            int64_t left = n - first * 4;
            for (int64_t i = 0; i < left; i++) {
                float v = z[i & 3][i >> 2];
                o[i] = add ? o[i] + v : v;
            }
        }
    }
}

void thermoai_philox_normal_f32(float *out, int64_t n, uint64_t key, uint64_t offset, float scale) {
    fill(out, n, key, offset, scale, 0);
}

void thermoai_philox_add_normal_f32(float *out, int64_t n, uint64_t key, uint64_t offset, float scale) {
    fill(out, n, key, offset, scale, 1);
}

/* the raw words of blocks 0 .. blocks - 1, for the known-answer tests: out[4 b + j] */
void thermoai_philox_words(uint32_t *out, int64_t blocks, uint64_t key, uint64_t offset) {
    uint32_t w[4][BLOCK];
    for (int64_t first = 0; first < blocks; first += BLOCK) {
        int count = (int)((blocks - first) < BLOCK ? (blocks - first) : BLOCK);
        words((uint64_t)first, count, offset, key, w);
        for (int b = 0; b < count; b++)
            for (int j = 0; j < 4; j++) out[4 * (first + b) + j] = w[j][b];
    }
}
