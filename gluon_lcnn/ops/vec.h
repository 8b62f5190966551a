// The 8-float vector type the LCNN kernels compute in (portable GCC/clang vector extensions; the
// build adds AVX2+FMA where the CPU has them) and the fused ReLU every kernel path applies.
#ifndef GLUON_LCNN_OPS_VEC_H_
#define GLUON_LCNN_OPS_VEC_H_

namespace lcnn {

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));  // unaligned load/store

inline v8 splat(float x) { return v8{x, x, x, x, x, x, x, x}; }

// ReLU by one rule on every path, MXNet's relu: x <= 0 gives +0 and NaN stays NaN (every
// comparison with NaN is false). One compare and one select, like max(x, 0).
inline float relu(float x) { return x <= 0.f ? 0.f : x; }
inline v8 relu(v8 x) { return x <= v8{} ? v8{} : x; }

}  // namespace lcnn

#endif  // GLUON_LCNN_OPS_VEC_H_
