// IEEE binary16 (MXNet's float16, stored as uint16_t bits) to float32, scalar and 8 at a time.
// Weights stored as float16 halve the bytes a memory-bound layer streams; the kernels widen
// them in registers and compute in float32. With F16C (the build adds -mf16c where the CPU has
// it) one vcvtph2ps widens 8 values; otherwise a few integer operations do the same, exactly.
#ifndef GLUON_LCNN_OPS_HALF_H_
#define GLUON_LCNN_OPS_HALF_H_

#include <cstdint>
#include <cstring>

#include "vec.h"

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace lcnn {

typedef uint16_t half_bits;

inline float half_to_float(half_bits h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  // Shift exponent and mantissa into float position and scale by 2^112 (the exponent bias
  // difference): exact for normal and subnormal values. Infinity and NaN keep an all-ones
  // exponent. Then the sign.
  uint32_t bits = static_cast<uint32_t>(h & 0x7fffu) << 13;
  float f;
  if ((h & 0x7c00u) == 0x7c00u) {
    bits |= 0x7f800000u;
    std::memcpy(&f, &bits, 4);
  } else {
    std::memcpy(&f, &bits, 4);
    f *= 5.192296858534828e+33f;  // 2^112
  }
  return (h & 0x8000u) ? -f : f;
#endif
}

// 8 consecutive values from p (any alignment) as float32.
inline v8 load8(const float* p) { return *reinterpret_cast<const v8u*>(p); }

inline v8 load8(const half_bits* p) {
#if defined(__F16C__)
  return (v8)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
#else
  v8 out;
  for (int k = 0; k < 8; ++k) out[k] = half_to_float(p[k]);
  return out;
#endif
}

inline float load1(const float* p) { return *p; }
inline float load1(const half_bits* p) { return half_to_float(*p); }

}  // namespace lcnn

#endif  // GLUON_LCNN_OPS_HALF_H_
