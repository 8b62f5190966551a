// out[n, u] = bias[u] + sum_k W[u, k] x[n, k]: the dense matrix product of the LCNN ops whose
// weights may be stored as float16 (lcnn_dense, and the fused dictionary of lcnn_sparse_dense).
// At batch 1 it is a matrix-vector product bound by the bytes of W it streams, which is why W
// may be half precision; it is widened in registers (half.h) and accumulated in float32.
// Blocks of rows of W share each load of x; the rows of a block stay in cache while every
// sample pair passes, so W is read from memory once.
#ifndef GLUON_LCNN_OPS_DENSE_PRODUCT_H_
#define GLUON_LCNN_OPS_DENSE_PRODUCT_H_

#include <omp.h>

#include <cstdint>

#include "half.h"
#include "vec.h"

namespace lcnn {

inline float hsum(v8 v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

// R rows of W (row stride ldw) times S samples of x (row stride ldx), over k in [0, in).
template <typename W, int R, int S>
void dot_block(const float* __restrict x, int64_t ldx, const W* __restrict w, int64_t ldw,
               int64_t in, float out[8][2]) {
  v8 acc[R][S];
  for (int r = 0; r < R; ++r)
    for (int s = 0; s < S; ++s) acc[r][s] = v8{};
  int64_t k = 0;
  for (; k + 8 <= in; k += 8) {
    v8 xs[S];
    for (int s = 0; s < S; ++s) xs[s] = load8(x + s * ldx + k);
    for (int r = 0; r < R; ++r) {
      const v8 wr = load8(w + r * ldw + k);
      for (int s = 0; s < S; ++s) acc[r][s] += wr * xs[s];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int s = 0; s < S; ++s) {
      float t = hsum(acc[r][s]);
      for (int64_t j = k; j < in; ++j) t += load1(w + r * ldw + j) * x[s * ldx + j];
      out[r][s] = t;
    }
  }
}

// x (N, in) row-major, W (units, in), bias (units,) or null; out[n * ldo + u]. One sample: 8
// rows at a time (8 independent accumulator chains hide the multiply-add latency); more: 4 rows
// by 2 samples. Rows left over go one by one.
template <typename W>
void dense_product(const float* x, int64_t N, int64_t in, const W* w, int64_t units,
                   const float* bias, bool fuse_relu, float* out, int64_t ldo) {
  const int rows = N == 1 ? 8 : 4;
  const int64_t blocks = (units + rows - 1) / rows;
  // Threads only for work worth a parallel region (a tiny layer would pay more to start one).
#pragma omp parallel for schedule(static) if (N * in * units > 262144)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t u0 = b * rows;
    const int n_rows = static_cast<int>(units - u0 < rows ? units - u0 : rows);
    for (int64_t n0 = 0; n0 < N; n0 += 2) {
      const int samples = N - n0 < 2 ? 1 : 2;
      float acc[8][2];
      const float* xs = x + n0 * in;
      if (n_rows == 8) {
        dot_block<W, 8, 1>(xs, in, w + u0 * in, in, in, acc);
      } else if (n_rows == 4 && samples == 2) {
        dot_block<W, 4, 2>(xs, in, w + u0 * in, in, in, acc);
      } else {
        for (int r = 0; r < n_rows; ++r) {
          float one[8][2];
          if (samples == 2) {
            dot_block<W, 1, 2>(xs, in, w + (u0 + r) * in, in, in, one);
          } else {
            dot_block<W, 1, 1>(xs, in, w + (u0 + r) * in, in, in, one);
          }
          acc[r][0] = one[0][0];
          acc[r][1] = one[0][1];
        }
      }
      for (int r = 0; r < n_rows; ++r) {
        for (int s = 0; s < samples; ++s) {
          const float v = acc[r][s] + (bias ? bias[u0 + r] : 0.f);
          out[(n0 + s) * ldo + u0 + r] = fuse_relu ? relu(v) : v;
        }
      }
    }
  }
}

}  // namespace lcnn

#endif  // GLUON_LCNN_OPS_DENSE_PRODUCT_H_
