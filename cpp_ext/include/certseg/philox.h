/* Philox4x32-10 and Box-Muller, written once for the CPU and the GPU.
 *
 * Everything here is a CERTSEG_HD inline function: under nvcc it is compiled as
 * __host__ __device__, under a plain C++ compiler as an ordinary inline function.
 * The CPU loops (src/cpu.cpp) and the CUDA kernels (src/cuda.cu) call the same
 * code, so what the CPU tests prove about the numbers holds on the GPU too.
 *
 * The noise contract (identical to certseg_rt/kernels.py, the numpy reference):
 *   key      = (seed & 0xFFFFFFFF, seed >> 32)                  for a uint64 seed
 *   counter  = (e / 4, s & 0xFFFFFFFF, s >> 32, 0)              element e of sample s
 *   u_i      = ((double) r_i + 0.5) * 2^-32                     in (0, 1), never 0 or 1
 *   z0, z1   = sqrt(-2 ln u0) * (cos, sin)(2 pi u1)             in double
 *   z2, z3   = sqrt(-2 ln u2) * (cos, sin)(2 pi u3)
 *   eps[e]   = (float) z[e % 4]
 *
 * Philox: Salmon, Moraes, Dror, Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11.
 */
#ifndef CERTSEG_PHILOX_H
#define CERTSEG_PHILOX_H

#include <stdint.h>

#if defined(__CUDACC__)
#define CERTSEG_HD __host__ __device__
#else
#define CERTSEG_HD
#endif

#include <math.h> /* ::log, ::sqrt, ::cos, ::sin: glibc on the host, CUDA's libdevice on the device */

namespace certseg {

/* Philox4x32 constants: the two multipliers and the Weyl key increments. */
constexpr uint32_t kPhiloxM0 = 0xD2511F53u;
constexpr uint32_t kPhiloxM1 = 0xCD9E8D57u;
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u;  /* golden ratio */
constexpr uint32_t kPhiloxW1 = 0xBB67AE85u;  /* sqrt(3) - 1 */
constexpr int kPhiloxRounds = 10;

/* 2^-32 and the 2*pi numpy uses (2.0 * np.pi, a double product that is exact). */
constexpr double kTwoPowMinus32 = 2.3283064365386962890625e-10;
constexpr double kTwoPi = 2.0 * 3.141592653589793;

struct Words4 {
  uint32_t w[4];
};

/* hi and lo 32-bit halves of the 64-bit product a * b. */
CERTSEG_HD inline void mul_hi_lo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
#if defined(__CUDA_ARCH__)
  *hi = __umulhi(a, b);
  *lo = a * b;
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
#endif
}

/* One Philox S-box round on the counter c with round key (k0, k1). */
CERTSEG_HD inline void philox_round(uint32_t c[4], uint32_t k0, uint32_t k1) {
  uint32_t hi0, lo0, hi1, lo1;
  mul_hi_lo(kPhiloxM0, c[0], &hi0, &lo0);
  mul_hi_lo(kPhiloxM1, c[2], &hi1, &lo1);
  const uint32_t n0 = hi1 ^ c[1] ^ k0;
  const uint32_t n2 = hi0 ^ c[3] ^ k1;
  c[0] = n0;
  c[1] = lo1;
  c[2] = n2;
  c[3] = lo0;
}

/* Philox4x32-10: the block cipher output for counter ctr under key (key0, key1). */
CERTSEG_HD inline Words4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                       uint32_t key0, uint32_t key1) {
  Words4 out;
  out.w[0] = c0;
  out.w[1] = c1;
  out.w[2] = c2;
  out.w[3] = c3;
  uint32_t k0 = key0, k1 = key1;
  for (int r = 0; r < kPhiloxRounds; ++r) {
    if (r > 0) {  /* bump the key between rounds (mod 2^32) */
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    philox_round(out.w, k0, k1);
  }
  return out;
}

/* Double-precision multiply and add that are never contracted into an FMA. */
CERTSEG_HD inline double dmul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;  /* host code is compiled with -ffp-contract=off */
#endif
}
CERTSEG_HD inline double dadd(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

/* A 32-bit word to the open interval (0, 1): (r + 0.5) * 2^-32 (exact in double). */
CERTSEG_HD inline double uniform_open(uint32_t r) {
  return dmul(dadd(static_cast<double>(r), 0.5), kTwoPowMinus32);
}

/* Box-Muller on two uniforms: z0 = R cos(theta), z1 = R sin(theta) in double.
 *
 * The one place where host and device may differ: log, cos and sin are the platform's (glibc on the host,
 * CUDA's libdevice on the GPU, within 1-2 double ulp of each other).  Every other operation is correctly
 * rounded on both, so after the rounding to float32 the normals are bit-identical except where a double
 * lies within those ulps of a float32 rounding boundary (about one element in 10^8), and such an element
 * is 1 float32 ulp off.  tests/test_torch_cuda.py counts and bounds these on a GPU. */
CERTSEG_HD inline void box_muller(uint32_t ra, uint32_t rb, double* z0, double* z1) {
  const double ua = uniform_open(ra);
  const double ub = uniform_open(rb);
  const double radius = ::sqrt(dmul(-2.0, ::log(ua)));
  const double angle = dmul(kTwoPi, ub);
  *z0 = dmul(radius, ::cos(angle));
  *z1 = dmul(radius, ::sin(angle));
}

/* The key of a 64-bit seed. */
CERTSEG_HD inline uint32_t seed_key0(uint64_t seed) { return static_cast<uint32_t>(seed); }
CERTSEG_HD inline uint32_t seed_key1(uint64_t seed) { return static_cast<uint32_t>(seed >> 32); }

/* The four float32 normals of Philox block `block` (elements 4*block .. 4*block+3) of sample `sample`. */
CERTSEG_HD inline void normal4(uint64_t seed, uint64_t sample, uint32_t block, float z[4]) {
  const Words4 r = philox4x32_10(block, static_cast<uint32_t>(sample), static_cast<uint32_t>(sample >> 32), 0u,
                                 seed_key0(seed), seed_key1(seed));
  double d0, d1, d2, d3;
  box_muller(r.w[0], r.w[1], &d0, &d1);
  box_muller(r.w[2], r.w[3], &d2, &d3);
  z[0] = static_cast<float>(d0);
  z[1] = static_cast<float>(d1);
  z[2] = static_cast<float>(d2);
  z[3] = static_cast<float>(d3);
}

}  // namespace certseg

#endif  // CERTSEG_PHILOX_H
