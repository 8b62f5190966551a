// The flattened-plane lookup kernel and the output epilogue (see lookup_kernel.h).
#include "lookup_kernel.h"

#include <algorithm>
#include <limits>

#include "vec.h"

namespace lcnn {

namespace {

// One block of NV vectors: every non-zero costs one offset load and one broadcast for NV
// multiply-adds of a contiguous input run.
template <int NV>
inline void run_block(const float* __restrict src, const int32_t* __restrict off,
                      const float* __restrict val, int64_t cnt, float* __restrict out) {
  // Unrolled by hand-pragma: left as loops, GCC turns the zeroing and the final stores of the
  // accumulator array into memset / memcpy through the stack.
  v8 acc[NV];
#pragma GCC unroll 16
  for (int k = 0; k < NV; ++k) acc[k] = v8{};
  for (int64_t e = 0; e < cnt; ++e) {
    const float* in = src + off[e];
    const v8 v = splat(val[e]);
#pragma GCC unroll 16
    for (int k = 0; k < NV; ++k) acc[k] += v * *reinterpret_cast<const v8u*>(in + 8 * k);
  }
#pragma GCC unroll 16
  for (int k = 0; k < NV; ++k) *reinterpret_cast<v8u*>(out + 8 * k) = acc[k];
}

template <int NV>
void run_blocks(const float* src, const int32_t* off, const float* val, int64_t cnt,
                int64_t len, float* out) {
  for (int64_t t = 0; t < len; t += 8 * NV) run_block<NV>(src + t, off, val, cnt, out + t);
}

typedef void (*RunFn)(const float*, const int32_t*, const float*, int64_t, int64_t, float*);

const RunFn kRuns[kMaxVectors + 1] = {
    nullptr,        run_blocks<1>,  run_blocks<2>, run_blocks<3>, run_blocks<4>,
    run_blocks<5>,  run_blocks<6>,  run_blocks<7>, run_blocks<8>, run_blocks<9>,
    run_blocks<10>, run_blocks<11>, run_blocks<12>};

inline float fmax2(float a, float b) { return a > b ? a : b; }  // as lcnn_max_pool

inline float activate(float x, const Epilogue& ep) { return ep.relu ? relu(x) : x; }

}  // namespace

void lookup_run(const float* src, const int32_t* off, const float* val, int64_t cnt,
                int64_t len, float* out) {
  if (len <= 0) return;
  // Equal blocks of at most kMaxVectors: a 13x15 run (25 vectors) is 3 blocks of 9 rather
  // than 12 + 12 + 1, whose last block would pay a whole walk over the non-zeros for 1 vector.
  const int64_t vectors = (len + 7) / 8;
  const int64_t blocks = (vectors + kMaxVectors - 1) / kMaxVectors;
  const int64_t nv = (vectors + blocks - 1) / blocks;
  kRuns[nv](src, off, val, cnt, len, out);
}

namespace {

// A row is written in whole vectors when its spill past wo stays inside the tile's later rows,
// which are written after it; otherwise (the last rows, narrow planes) it stops at wo: what
// follows the tile may be another thread's. Compile-time RELU / RES keep the loop free of
// branches.
template <bool RELU, bool RES>
void finish_rows_impl(const float* __restrict sums, int64_t wph, int64_t y0, int64_t y1,
                      int64_t wo, float bias, const float* __restrict residual,
                      float* __restrict out) {
  const v8 b = splat(bias);
  const int64_t vectors = (wo + 7) / 8;
  for (int64_t y = y0; y < y1; ++y) {
    const float* s = sums + (y - y0) * wph;
    float* o = out + y * wo;
    const float* r = RES ? residual + y * wo : nullptr;
    const int64_t whole = y * wo + 8 * vectors <= y1 * wo ? vectors : wo / 8;
    for (int64_t k = 0; k < whole; ++k) {
      v8 v = *reinterpret_cast<const v8u*>(s + 8 * k) + b;
      if (RES) v += *reinterpret_cast<const v8u*>(r + 8 * k);
      if (RELU) v = relu(v);
      *reinterpret_cast<v8u*>(o + 8 * k) = v;
    }
    for (int64_t x = 8 * whole; x < wo; ++x) {
      float v = s[x] + bias;
      if (RES) v += r[x];
      o[x] = RELU ? relu(v) : v;
    }
  }
}

}  // namespace

void finish_rows(const float* sums, int64_t wph, int64_t y0, int64_t y1, int64_t wo,
                 const Epilogue& ep, float* out) {
  if (ep.residual) {
    (ep.relu ? finish_rows_impl<true, true> : finish_rows_impl<false, true>)(
        sums, wph, y0, y1, wo, ep.bias, ep.residual, out);
  } else {
    (ep.relu ? finish_rows_impl<true, false> : finish_rows_impl<false, false>)(
        sums, wph, y0, y1, wo, ep.bias, nullptr, out);
  }
}

void finish_pooled(const float* sums, int64_t wph, int64_t ho, int64_t wo, const Epilogue& ep,
                   int64_t pho, int64_t pwo, float* row_buf, float* out) {
  // x -> act(x + bias) is non-decreasing, so it commutes with the maximum: it is applied to
  // the pooled values only (a quarter of the conv outputs for a 3x3/2 pool).
  const float lowest = -std::numeric_limits<float>::infinity();
  const int64_t kh = ep.pool_kernel[0], kw = ep.pool_kernel[1];
  const int64_t sh = ep.pool_stride[0], sw = ep.pool_stride[1];
  for (int64_t py = 0; py < pho; ++py) {
    // Vertical maximum of the window's rows (inside the plane) into row_buf, then horizontal.
    const int64_t ya = std::max<int64_t>(py * sh - ep.pool_pad[0], 0);
    const int64_t yb = std::min<int64_t>(py * sh - ep.pool_pad[0] + kh, ho);
    for (int64_t x = 0; x < wo; ++x) row_buf[x] = lowest;
    for (int64_t y = ya; y < yb; ++y) {
      const float* __restrict s = sums + y * wph;
      for (int64_t x = 0; x < wo; ++x) row_buf[x] = fmax2(row_buf[x], s[x]);
    }
    float* o = out + py * pwo;
    for (int64_t px = 0; px < pwo; ++px) {
      const int64_t xa = std::max<int64_t>(px * sw - ep.pool_pad[1], 0);
      const int64_t xb = std::min<int64_t>(px * sw - ep.pool_pad[1] + kw, wo);
      float m = lowest;
      for (int64_t x = xa; x < xb; ++x) m = fmax2(m, row_buf[x]);
      o[px] = activate(m + ep.bias, ep);
    }
  }
}

}  // namespace lcnn
