// The lookup stage of lcnn_sparse_conv as a sparse-times-dense product over flattened planes,
// and the epilogue that turns its sums into output values (bias, residual, ReLU, max pool).
//
// The output of one channel is computed over the phase-plane width wph instead of Wo: output
// (y, x) sits at flat index y*wph + x and non-zero e reads the flat index plus one constant
// offset off[e] (its dictionary plane, stride phase, and kernel shift i/sh rows, j/sw columns).
// A channel's non-zeros therefore stream over one long contiguous run of the planes, in blocks
// of up to kMaxVectors vectors held in registers; columns x >= Wo are computed and discarded.
#ifndef GLUON_LCNN_OPS_LOOKUP_KERNEL_H_
#define GLUON_LCNN_OPS_LOOKUP_KERNEL_H_

#include <cstdint>

namespace lcnn {

// Vectors of 8 floats per register block: 12 accumulators leave the rest of the 16 AVX
// registers for the broadcast value (the input is a memory operand of the FMA).
constexpr int kMaxVectors = 12;

// Floats a block may read or write past the end of a run: the last block of a run is computed
// whole. Input and output buffers carry this much slack.
constexpr int64_t kRunSlack = 8 * kMaxVectors;

// out[t] = sum_e val[e] * src[off[e] + t] for t in [0, len); writes (not reads) up to
// kRunSlack floats past len. `src` must be readable up to max(off) + len + kRunSlack.
void lookup_run(const float* src, const int32_t* off, const float* val, int64_t cnt,
                int64_t len, float* out);

// What follows the sums of one output channel, applied while they are copied out.
struct Epilogue {
  float bias = 0.f;
  bool relu = false;
  const float* residual = nullptr;  // (Ho, Wo) added before the ReLU, or none
  int64_t pool_kernel[2] = {0, 0};  // 0: no pooling
  int64_t pool_stride[2] = {1, 1};
  int64_t pool_pad[2] = {0, 0};
};

// Rows [y0, y1) of one channel: out[y, x] = act(sums[(y - y0)*wph + x] + bias + residual[y, x])
// for x < wo. `out` and `residual` point at the channel plane's row 0.
void finish_rows(const float* sums, int64_t wph, int64_t y0, int64_t y1, int64_t wo,
                 const Epilogue& ep, float* out);

// A whole channel (ho rows): out (pho, pwo) = max pool of act(sums + bias) with MXNet's
// 'valid' convention; padding never wins. `row_buf` holds wo floats.
void finish_pooled(const float* sums, int64_t wph, int64_t ho, int64_t wo, const Epilogue& ep,
                   int64_t pho, int64_t pwo, float* row_buf, float* out);

}  // namespace lcnn

#endif  // GLUON_LCNN_OPS_LOOKUP_KERNEL_H_
