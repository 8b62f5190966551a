// lcnn_sparse_conv: the lookup stage of an LCNN convolution (inference only).
//
//   out[n, r, y, x] = bias[r] + sum_{e in row r} value[e] * S[n, q_e, y*sh + i_e - ph, x*sw + j_e - pw]
//
// S is the dictionary output (N, d, H, W), or, with with_dictionary=True, computed here as
// S = D x from the input x (N, c, H, W) and D (d, c, 1, 1) by a register-blocked GEMM (saves a
// separate 1x1 convolution call). The lookup tensor P (m, d, kh, kw) arrives packed as
// compressed rows per output channel r: indptr (m+1,), and per non-zero e the dictionary index
// q_e, the kernel offset i_e*kw + j_e and the value (see gluon_lcnn/nn/sparse.py:pack_lookup).
//
// Fused epilogue (attributes): relu, an optional `residual` input (N, m, Ho, Wo) added before
// the ReLU (a ResNet block's shortcut: out = relu(conv + bias + residual)), and an optional max
// pool (pool_kernel, pool_stride, pool_pad; MXNet's 'valid' convention) of the activated conv
// output, so the op writes the pooled map directly. Pool and residual do not combine.
//
// How it is fast: S is copied once per call into zero-padded planes, split into sh*sw stride
// phases so that every shifted read is contiguous again. Each output channel is computed over
// the phase-plane width (lookup_kernel.h): its non-zeros become constant offsets into the
// flattened planes and stream over one long contiguous run in register blocks of up to 96
// floats; the sums go to a per-thread buffer and the epilogue writes the Wo valid columns of
// each row (or the pooled map). Threads split (sample, row tile, output channel) items,
// channels innermost so a tile's input rows stay in cache, dynamically (channels differ in
// nnz); every output is summed by one thread in a fixed order, so results do not depend on the
// thread count.
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "common.h"
#include "lookup_kernel.h"
#include "vec.h"

namespace {

using namespace lcnn;  // NOLINT
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;

const char* const kOp = "lcnn_sparse_conv";

// Two-vector shuffle with constant lane indices (0-7: a, 8-15: b), GCC or clang spelling.
#if defined(__clang__)
#define LCNN_SHUFFLE(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
typedef int v8i __attribute__((vector_size(32)));
#define LCNN_SHUFFLE(a, b, ...) __builtin_shuffle(a, b, v8i{__VA_ARGS__})
#endif

// De-interleaves 8*SW consecutive floats into SW vectors: out[pj][k] = in[k*SW + pj].
template <int SW>
inline void deinterleave(const float* in, v8* out) {
  const v8 a = *reinterpret_cast<const v8u*>(in), b = *reinterpret_cast<const v8u*>(in + 8);
  if (SW == 2) {
    out[0] = LCNN_SHUFFLE(a, b, 0, 2, 4, 6, 8, 10, 12, 14);
    out[1] = LCNN_SHUFFLE(a, b, 1, 3, 5, 7, 9, 11, 13, 15);
  } else {  // SW == 4
    const v8 c = *reinterpret_cast<const v8u*>(in + 16), d = *reinterpret_cast<const v8u*>(in + 24);
    const v8 ab0 = LCNN_SHUFFLE(a, b, 0, 4, 8, 12, 1, 5, 9, 13);
    const v8 ab1 = LCNN_SHUFFLE(a, b, 2, 6, 10, 14, 3, 7, 11, 15);
    const v8 cd0 = LCNN_SHUFFLE(c, d, 0, 4, 8, 12, 1, 5, 9, 13);
    const v8 cd1 = LCNN_SHUFFLE(c, d, 2, 6, 10, 14, 3, 7, 11, 15);
    out[0] = LCNN_SHUFFLE(ab0, cd0, 0, 1, 2, 3, 8, 9, 10, 11);
    out[1] = LCNN_SHUFFLE(ab0, cd0, 4, 5, 6, 7, 12, 13, 14, 15);
    out[2] = LCNN_SHUFFLE(ab1, cd1, 0, 1, 2, 3, 8, 9, 10, 11);
    out[3] = LCNN_SHUFFLE(ab1, cd1, 4, 5, 6, 7, 12, 13, 14, 15);
  }
}

// Zeroed floats after the phase planes: a run's last register block reads up to kRunSlack
// floats past the end of the last plane.
constexpr int64_t kInputSlack = kRunSlack + kSlack;

// Input positions: with_dictionary inserts the dictionary right after data and shifts the rest.
constexpr int kDictInput = 1;

struct ConvParam {
  int64_t m, d, kernel[2], stride[2], pad[2];
  int64_t pool_kernel[2], pool_stride[2], pool_pad[2];  // pool_kernel (0, 0): no pooling
  bool relu, no_bias, with_dictionary, residual;
  int indptr() const { return with_dictionary ? 2 : 1; }
  int count() const {
    return (with_dictionary ? 6 : 5) + (no_bias ? 0 : 1) + (residual ? 1 : 0);
  }
  int residual_index() const { return count() - 1; }
  bool pooled() const { return pool_kernel[0] > 0; }
};

// The fused pool's attributes: both kernel sizes or none, pad smaller than the kernel (a window
// of padding only has no maximum), and no residual beside it.
bool check_pool(const ConvParam& p) {
  const bool any = p.pool_kernel[0] > 0 || p.pool_kernel[1] > 0;
  if (any && (p.pool_kernel[0] == 0 || p.pool_kernel[1] == 0)) {
    MX_ERROR_MSG << kOp << ": pool_kernel=(" << p.pool_kernel[0] << ", " << p.pool_kernel[1]
                 << ") must be positive in both axes (or (0, 0): no pooling)";
    return false;
  }
  if (!any && (p.pool_pad[0] > 0 || p.pool_pad[1] > 0 || p.pool_stride[0] > 1 ||
               p.pool_stride[1] > 1)) {
    MX_ERROR_MSG << kOp << ": pool_stride / pool_pad given without pool_kernel";
    return false;
  }
  for (int k = 0; any && k < 2; ++k) {
    if (p.pool_pad[k] >= p.pool_kernel[k]) {
      MX_ERROR_MSG << kOp << ": pool_pad=(" << p.pool_pad[0] << ", " << p.pool_pad[1]
                   << ") must be smaller than pool_kernel=(" << p.pool_kernel[0] << ", "
                   << p.pool_kernel[1] << ")";
      return false;
    }
  }
  if (any && p.residual) {
    MX_ERROR_MSG << kOp << ": residual and pool_kernel cannot be fused together";
    return false;
  }
  return true;
}

bool parse(const Attrs& attrs, ConvParam* p) {
  const int64_t big = INT_MAX / 4;
  return get_int(kOp, attrs, "num_filter", false, 0, 1, big, &p->m) &&
         get_int(kOp, attrs, "dictionary_size", false, 0, 1, big, &p->d) &&
         get_pair(kOp, attrs, "kernel", false, 0, 1, 4096, p->kernel) &&
         get_pair(kOp, attrs, "stride", true, 1, 1, 4096, p->stride) &&
         get_pair(kOp, attrs, "pad", true, 0, 0, 4096, p->pad) &&
         get_bool(kOp, attrs, "relu", false, &p->relu) &&
         get_bool(kOp, attrs, "no_bias", false, &p->no_bias) &&
         get_bool(kOp, attrs, "with_dictionary", false, &p->with_dictionary) &&
         get_bool(kOp, attrs, "residual", false, &p->residual) &&
         get_pair(kOp, attrs, "pool_kernel", true, 0, 0, 4096, p->pool_kernel) &&
         get_pair(kOp, attrs, "pool_stride", true, 1, 1, 4096, p->pool_stride) &&
         get_pair(kOp, attrs, "pool_pad", true, 0, 0, 4096, p->pool_pad) && check_pool(*p);
}

std::vector<const char*> input_names(const ConvParam& p) {
  std::vector<const char*> names = {"data"};
  if (p.with_dictionary) names.push_back("dictionary");
  for (const char* n : {"indptr", "dict_index", "kernel_offset", "value"}) names.push_back(n);
  if (!p.no_bias) names.push_back("bias");
  if (p.residual) names.push_back("residual");
  return names;
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  ConvParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  *num_in = p.count();
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  ConvParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  std::vector<int> want = {mxnet::ext::kFloat32};
  if (p.with_dictionary) want.push_back(mxnet::ext::kFloat32);
  for (int t : {mxnet::ext::kInt32, mxnet::ext::kInt32, mxnet::ext::kInt32, mxnet::ext::kFloat32})
    want.push_back(t);
  if (!p.no_bias) want.push_back(mxnet::ext::kFloat32);
  if (p.residual) want.push_back(mxnet::ext::kFloat32);
  if (!check_types(kOp, input_names(p), want, in_types)) return MX_FAIL;
  (*out_types)[0] = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

// Output size along one axis, or -1 (with a message) when the kernel does not fit.
int64_t out_size(int64_t in, int64_t k, int64_t s, int64_t p, const char* axis) {
  if (in + 2 * p < k) {
    MX_ERROR_MSG << kOp << ": input " << axis << "=" << in << " with pad " << p
                 << " is smaller than the kernel (" << k << ")";
    return -1;
  }
  return (in + 2 * p - k) / s + 1;
}

// The fused pool's output size along one axis of the conv output, or -1 with a message.
int64_t pooled_size(int64_t in, int64_t k, int64_t s, int64_t p, const char* axis) {
  if (in == 0 || in + 2 * p < k) {
    MX_ERROR_MSG << kOp << ": conv output " << axis << "=" << in << " with pool_pad " << p
                 << " is smaller than pool_kernel (" << k << ")";
    return -1;
  }
  return (in + 2 * p - k) / s + 1;
}

// The op's output shape (N, m, Ho', Wo') for conv output (ho, wo): pooled when pool_kernel is
// set; false (with a message) when the pool does not fit.
bool result_dims(const ConvParam& p, int64_t ho, int64_t wo, int64_t* rh, int64_t* rw) {
  *rh = ho;
  *rw = wo;
  if (!p.pooled()) return true;
  *rh = pooled_size(ho, p.pool_kernel[0], p.pool_stride[0], p.pool_pad[0], "height");
  *rw = pooled_size(wo, p.pool_kernel[1], p.pool_stride[1], p.pool_pad[1], "width");
  return *rh >= 0 && *rw >= 0;
}

// Checks the dictionary's shape against data (N, c, H, W): (d, c, 1, 1) or (d, c).
template <typename Shape>
bool check_dictionary(const ConvParam& p, const Shape& dict, int64_t c) {
  const bool ok = (dict.size() == 4 && dict[2] == 1 && dict[3] == 1) || dict.size() == 2;
  if (!ok || static_cast<int64_t>(dict[0]) != p.d) {
    MX_ERROR_MSG << kOp << ": dictionary must have shape (dictionary_size, c, 1, 1) = ("
                 << p.d << ", c, 1, 1), got " << shape_str(dict);
    return false;
  }
  if (static_cast<int64_t>(dict[1]) != c) {
    MX_ERROR_MSG << kOp << ": wrong data channels: data has " << c
                 << " channels but the dictionary expects " << dict[1];
    return false;
  }
  return true;
}

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  ConvParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  const std::vector<const char*> names = input_names(p);
  if (in->size() != names.size()) {
    MX_ERROR_MSG << kOp << ": expected " << names.size() << " inputs, got " << in->size();
    return MX_FAIL;
  }
  const int ip = p.indptr(), ib = ip + 4;  // indptr, then dict_index, kernel_offset, value
  // Shapes that follow from the attributes are filled in when unknown.
  if ((*in)[ip].empty()) (*in)[ip] = {static_cast<unsigned>(p.m + 1)};
  if (!p.no_bias && (*in)[ib].empty()) (*in)[ib] = {static_cast<unsigned>(p.m)};
  const auto& data = (*in)[0];
  if (data.size() != 4) {
    MX_ERROR_MSG << kOp << ": data must be 4-D (N, C, H, W), got shape " << shape_str(data);
    return MX_FAIL;
  }
  if (!check_known(kOp, names[0], data)) return MX_FAIL;
  if (p.with_dictionary && (*in)[kDictInput].empty())
    (*in)[kDictInput] = {static_cast<unsigned>(p.d), data[1], 1, 1};
  const int64_t ho = out_size(data[2], p.kernel[0], p.stride[0], p.pad[0], "height");
  const int64_t wo = out_size(data[3], p.kernel[1], p.stride[1], p.pad[1], "width");
  if (ho < 0 || wo < 0) return MX_FAIL;
  const std::vector<unsigned> conv_shape = {data[0], static_cast<unsigned>(p.m),
                                            static_cast<unsigned>(ho), static_cast<unsigned>(wo)};
  if (p.residual && (*in)[p.residual_index()].empty()) (*in)[p.residual_index()] = conv_shape;
  for (size_t k = 1; k < names.size(); ++k) {
    if (!check_known(kOp, names[k], (*in)[k])) return MX_FAIL;
  }
  if (p.with_dictionary) {
    if (!check_dictionary(p, (*in)[kDictInput], data[1])) return MX_FAIL;
  } else if (data[1] != p.d) {
    MX_ERROR_MSG << kOp << ": wrong data channels: data has " << data[1]
                 << " channels but dictionary_size=" << p.d << " (data shape "
                 << shape_str(data) << ")";
    return MX_FAIL;
  }
  if ((*in)[ip].size() != 1 || (*in)[ip][0] != p.m + 1) {
    MX_ERROR_MSG << kOp << ": indptr must have shape (num_filter + 1,) = (" << p.m + 1
                 << ",), got " << shape_str((*in)[ip]);
    return MX_FAIL;
  }
  const auto& idx = (*in)[ip + 1];
  for (int k = ip + 1; k <= ip + 3; ++k) {
    if ((*in)[k].size() != 1 || (*in)[k][0] == 0) {
      MX_ERROR_MSG << kOp << ": " << names[k] << " must be 1-D and non-empty, got "
                   << shape_str((*in)[k]);
      return MX_FAIL;
    }
    if ((*in)[k] != idx) {
      MX_ERROR_MSG << kOp << ": nnz mismatch: " << names[k] << " has shape "
                   << shape_str((*in)[k]) << " but dict_index has " << shape_str(idx);
      return MX_FAIL;
    }
  }
  if (!p.no_bias && ((*in)[ib].size() != 1 || (*in)[ib][0] != p.m)) {
    MX_ERROR_MSG << kOp << ": bias must have shape (num_filter,) = (" << p.m << ",), got "
                 << shape_str((*in)[ib]);
    return MX_FAIL;
  }
  if (p.residual && (*in)[p.residual_index()] != conv_shape) {
    MX_ERROR_MSG << kOp << ": residual must have the conv output's shape "
                 << shape_str(conv_shape) << ", got " << shape_str((*in)[p.residual_index()]);
    return MX_FAIL;
  }
  int64_t rh, rw;
  if (!result_dims(p, ho, wo, &rh, &rw)) return MX_FAIL;
  (*out)[0] = {data[0], static_cast<unsigned>(p.m), static_cast<unsigned>(rh),
               static_cast<unsigned>(rw)};
  return MX_SUCCESS;
}

// The fused dictionary: S[q, t] = sum_c D[q, c] X[c, t] over a block of QB dictionary rows and
// 8*NV pixels, accumulated in QB*NV vector registers; each step broadcasts one weight per row
// (QB sequential streams through D) against NV vectors of one input channel. Reads X only
// inside [t, t + 8*NV).
template <int QB, int NV>
inline void dict_block(const float* __restrict x, int64_t T, int64_t C,
                       const float* __restrict dq, float* __restrict s) {
  v8 acc[QB][NV];
  for (int i = 0; i < QB; ++i)
    for (int k = 0; k < NV; ++k) acc[i][k] = v8{};
  for (int64_t c = 0; c < C; ++c, x += T, ++dq) {
    v8 xv[NV];
    for (int k = 0; k < NV; ++k) xv[k] = *reinterpret_cast<const v8u*>(x + 8 * k);
    for (int i = 0; i < QB; ++i) {
      const v8 w = splat(dq[i * C]);
      for (int k = 0; k < NV; ++k) acc[i][k] += w * xv[k];
    }
  }
  for (int i = 0; i < QB; ++i)
    for (int k = 0; k < NV; ++k) *reinterpret_cast<v8u*>(s + i * T + 8 * k) = acc[i][k];
}

template <int NV>
void dict_pixels(const float* x, int64_t T, int64_t C, const float* D, int64_t d, float* s) {
  int64_t q = 0;
  for (; q + 6 <= d; q += 6) dict_block<6, NV>(x, T, C, D + q * C, s + q * T);
  switch (d - q) {
    case 1: dict_block<1, NV>(x, T, C, D + q * C, s + q * T); break;
    case 2: dict_block<2, NV>(x, T, C, D + q * C, s + q * T); break;
    case 3: dict_block<3, NV>(x, T, C, D + q * C, s + q * T); break;
    case 4: dict_block<4, NV>(x, T, C, D + q * C, s + q * T); break;
    case 5: dict_block<5, NV>(x, T, C, D + q * C, s + q * T); break;
    default: break;
  }
}

// S (d, T) = D X for pixels [t0, t1) of one image X (C, T); D is (d, C) row-major.
void dictionary_range(const float* X, int64_t T, int64_t C, const float* D, int64_t d,
                      int64_t t0, int64_t t1, float* S) {
  int64_t t = t0;
  for (; t + 16 <= t1; t += 16) dict_pixels<2>(X + t, T, C, D, d, S + t);
  for (; t + 8 <= t1; t += 8) dict_pixels<1>(X + t, T, C, D, d, S + t);
  if (t < t1 && t1 - t0 >= 8) {  // the last < 8 pixels: one block ending at t1 (recomputes a
    dict_pixels<1>(X + t1 - 8, T, C, D, d, S + t1 - 8);  // few of this range's pixels)
    t = t1;
  }
  for (; t < t1; ++t)  // a range of fewer than 8 pixels
    for (int64_t q = 0; q < d; ++q) {
      float acc = 0.f;
      for (int64_t c = 0; c < C; ++c) acc += D[q * C + c] * X[c * T + t];
      S[q * T + t] = acc;
    }
}

// Splits one image row (W floats) into the sw phase rows dst[pj][w] = row[w*sw + pj - pw] of
// length wph, zero outside the image. SW > 0 fixes the stride at compile time so the interior
// loop becomes vector shuffles; SW = 0 handles any stride.
template <int SW>
void split_row(const float* row, int64_t W, int64_t pw, int64_t sw_any, int64_t wph,
               float* const* dst) {
  const int64_t sw = SW > 0 ? SW : sw_any;
  // Interior columns [wa, wb): every phase column w*sw + pj - pw (pj < sw) lies inside [0, W).
  const int64_t wa = std::min((pw + sw - 1) / sw, wph);
  const int64_t wb = std::max(wa, std::min(W + pw - sw >= 0 ? (W + pw - sw) / sw + 1 : 0, wph));
  for (int64_t w = 0; w < wph; ++w) {  // edge columns, with bounds checks
    if (w == wa) w = wb;
    if (w >= wph) break;
    for (int64_t pj = 0; pj < sw; ++pj) {
      const int64_t x = w * sw + pj - pw;
      dst[pj][w] = (x >= 0 && x < W) ? row[x] : 0.f;
    }
  }
  if (wb == wa) return;
  const float* in = row + wa * sw - pw;
  int64_t w = wa;
  if (SW == 2 || SW == 4) {  // 8 columns of every phase row per step, reads stay in the row
    for (; w + 8 <= wb; w += 8) {
      v8 out[SW > 0 ? SW : 1];
      deinterleave<SW>(in + (w - wa) * SW, out);
      for (int pj = 0; pj < SW; ++pj) *reinterpret_cast<v8u*>(dst[pj] + w) = out[pj];
    }
  }
  in += (w - wa) * sw;
  for (int64_t pj = 0; pj < sw; ++pj) {
    float* __restrict out = dst[pj];
    for (int64_t w2 = w; w2 < wb; ++w2) out[w2] = in[(w2 - w) * sw + pj];
  }
}

// Copies S[n, q] (H, W) into its sh*sw phase planes: plane (pi, pj) holds the zero-padded rows
// pi, pi+sh, ... and columns pj, pj+sw, ... of the padded image.
void split_phases(const float* img, int64_t H, int64_t W, const ConvParam& p, int64_t hph,
                  int64_t wph, float* planes) {
  const int64_t sh = p.stride[0], sw = p.stride[1], plane = hph * wph;
  if (sh == 1 && sw == 1) {  // the common case: one zero-padded plane, rows copied in vectors
    const int64_t ph = p.pad[0], pw = p.pad[1];
    std::memset(planes, 0, sizeof(float) * ph * wph);
    std::memset(planes + (ph + H) * wph, 0, sizeof(float) * (hph - ph - H) * wph);
    for (int64_t y = 0; y < H; ++y) {
      float* row = planes + (y + ph) * wph;
      const float* src = img + y * W;
      for (int64_t x = 0; x < pw; ++x) row[x] = 0.f;
      float* out = row + pw;
      int64_t x = 0;
      for (; x + 8 <= W; x += 8)
        *reinterpret_cast<v8u*>(out + x) = *reinterpret_cast<const v8u*>(src + x);
      for (; x < W; ++x) out[x] = src[x];
      for (int64_t x2 = pw + W; x2 < wph; ++x2) row[x2] = 0.f;
    }
    return;
  }
  float* dst[64];  // sw phase rows; sw <= 4096 is checked, larger strides take the slow loop
  for (int64_t pi = 0; pi < sh; ++pi) {
    for (int64_t u = 0; u < hph; ++u) {
      const int64_t y = u * sh + pi - p.pad[0];
      if (sw > 64) {  // unusual: write element by element
        for (int64_t w = 0; w < wph; ++w)
          for (int64_t pj = 0; pj < sw; ++pj) {
            const int64_t x = w * sw + pj - p.pad[1];
            planes[(pi * sw + pj) * plane + u * wph + w] =
                (y >= 0 && y < H && x >= 0 && x < W) ? img[y * W + x] : 0.f;
          }
        continue;
      }
      for (int64_t pj = 0; pj < sw; ++pj) dst[pj] = planes + (pi * sw + pj) * plane + u * wph;
      if (y < 0 || y >= H) {
        for (int64_t pj = 0; pj < sw; ++pj) std::memset(dst[pj], 0, sizeof(float) * wph);
        continue;
      }
      const float* src = img + y * W;
      switch (sw) {
        case 1: split_row<1>(src, W, p.pad[1], sw, wph, dst); break;
        case 2: split_row<2>(src, W, p.pad[1], sw, wph, dst); break;
        case 4: split_row<4>(src, W, p.pad[1], sw, wph, dst); break;
        default: split_row<0>(src, W, p.pad[1], sw, wph, dst); break;
      }
    }
  }
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  ConvParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  std::vector<MXTensor>& in = *inputs;
  const std::vector<const char*> names = input_names(p);
  if (in.size() != names.size() || outputs->size() != 1) {
    MX_ERROR_MSG << kOp << ": expected " << names.size() << " inputs and 1 output";
    return MX_FAIL;
  }
  for (size_t k = 0; k < in.size(); ++k) {
    if (in[k].ctx.dev_type != "cpu") {
      MX_ERROR_MSG << kOp << ": only CPU is supported, input '" << names[k] << "' is on "
                   << in[k].ctx.dev_type;
      return MX_FAIL;
    }
  }
  // Cheap re-checks of what infer_shape established (shapes cannot change behind our back in
  // the symbolic path, but imperative callers reach forward with whatever they pass).
  const int ip = p.indptr(), ib = ip + 4;
  const std::vector<int64_t>& ds = in[0].shape;
  if (ds.size() != 4 || (!p.with_dictionary && ds[1] != p.d) ||
      (p.with_dictionary && !check_dictionary(p, in[kDictInput].shape, ds[1])) ||
      in[ip].shape.size() != 1 || in[ip].shape[0] != p.m + 1 || in[ip + 1].shape.size() != 1 ||
      in[ip + 2].shape != in[ip + 1].shape || in[ip + 3].shape != in[ip + 1].shape ||
      (!p.no_bias && (in[ib].shape.size() != 1 || in[ib].shape[0] != p.m))) {
    MX_ERROR_MSG << kOp << ": input shapes do not match the attributes (data "
                 << shape_str(ds) << ", indptr " << shape_str(in[ip].shape) << ")";
    return MX_FAIL;
  }
  const int64_t N = ds[0], C = ds[1], H = ds[2], W = ds[3];
  const int64_t kh = p.kernel[0], kw = p.kernel[1], sh = p.stride[0], sw = p.stride[1];
  const int64_t Ho = out_size(H, kh, sh, p.pad[0], "height");
  const int64_t Wo = out_size(W, kw, sw, p.pad[1], "width");
  if (Ho < 0 || Wo < 0) return MX_FAIL;
  int64_t Hr, Wr;  // the op's output: the conv output, or its pooled map
  if (!result_dims(p, Ho, Wo, &Hr, &Wr)) return MX_FAIL;
  const std::vector<int64_t>& os = (*outputs)[0].shape;
  if (os.size() != 4 || os[0] != N || os[1] != p.m || os[2] != Hr || os[3] != Wr) {
    MX_ERROR_MSG << kOp << ": output shape " << shape_str(os) << " is not (" << N << ", "
                 << p.m << ", " << Hr << ", " << Wr << ")";
    return MX_FAIL;
  }
  const float* residual = nullptr;
  if (p.residual) {
    const std::vector<int64_t>& rs = in[p.residual_index()].shape;
    if (rs.size() != 4 || rs[0] != N || rs[1] != p.m || rs[2] != Ho || rs[3] != Wo) {
      MX_ERROR_MSG << kOp << ": residual shape " << shape_str(rs) << " is not the conv "
                   << "output's (" << N << ", " << p.m << ", " << Ho << ", " << Wo << ")";
      return MX_FAIL;
    }
    residual = in[p.residual_index()].data<float>();
  }
  const int32_t* indptr = in[ip].data<int32_t>();
  const int32_t* dict_index = in[ip + 1].data<int32_t>();
  const int32_t* kernel_offset = in[ip + 2].data<int32_t>();
  const float* value = in[ip + 3].data<float>();
  const float* bias = p.no_bias ? nullptr : in[ib].data<float>();
  const int64_t entries = in[ip + 1].shape[0];
  if (!check_no_alias(kOp, names, in, *outputs)) return MX_FAIL;
  if (!check_packed(kOp, indptr, p.m, entries, dict_index, p.d, kernel_offset, kh * kw))
    return MX_FAIL;
  if (N == 0) return MX_SUCCESS;  // nothing to write (H or W = 0 needs no care: pad reads 0)

  // Geometry of the phase planes (stride 1: one plane per dictionary channel, just padded).
  const int64_t hph = (H + 2 * p.pad[0] + sh - 1) / sh;
  const int64_t wph = (W + 2 * p.pad[1] + sw - 1) / sw;
  const int64_t plane = hph * wph;
  const int64_t sample = p.d * sh * sw * plane;  // floats of one sample's phase planes
  // With the fused dictionary, S = D x of each sample is staged before the phase split.
  const int64_t staged = p.with_dictionary ? p.d * H * W : 0;
  // Output rows per tile: the input rows a tile reads from all phase planes stay within
  // ~256 KB (half of L2), but a tile's run is at least one full register block; a fused pool
  // needs the whole channel at once.
  const int64_t rows_in = (kh - 1) / sh;  // extra phase rows a tile reads
  const int64_t row_bytes = 4 * p.d * sh * sw * wph;
  int64_t tile_rows = (256 << 10) / std::max<int64_t>(row_bytes, 1) - rows_in;
  tile_rows = std::max<int64_t>(tile_rows, (kRunSlack + wph - 1) / wph);
  if (p.pooled() || tile_rows > Ho) tile_rows = Ho;
  tile_rows = std::max<int64_t>(tile_rows, 1);
  const int64_t tiles = (Ho + tile_rows - 1) / tile_rows;
  // Per thread: the sums of one tile (computed over the phase width) and a pool row buffer.
  const int64_t threads = std::max(1, omp_get_max_threads());
  const int64_t sums_floats = tile_rows * wph + kRunSlack + Wo + 16;
  const int64_t limit = INT_MAX;  // alloc_cpu takes an int byte count; the parts stay < limit/5
  if (4 * (sample + staged + kInputSlack) > limit / 5 || 4 * (entries + kh * kw) > limit / 5 ||
      4 * threads * sums_floats > limit / 5) {
    MX_ERROR_MSG << kOp << ": input " << shape_str(ds) << " is too large for one call";
    return MX_FAIL;
  }
  // Samples per chunk so the phase (and staging) buffers stay under ~256 MB.
  const int64_t chunk = std::max<int64_t>(
      1, std::min<int64_t>(N, (int64_t(256) << 20) / (4 * (sample + staged))));
  const int64_t nnz = indptr[p.m];
  // One allocation carved in parts: alloc_cpu hands out MXNet's temporary workspace, and a
  // second call would return (a resized) the same memory.
  const int64_t phase_floats = chunk * sample + kInputSlack;
  const int64_t staged_floats = chunk * staged;
  const int64_t buffer_floats = threads * sums_floats;
  const int64_t off_ints = std::max<int64_t>(nnz, 1) + kh * kw;
  char* scratch = static_cast<char*>(res.alloc_cpu(static_cast<int>(
      4 * (phase_floats + staged_floats + buffer_floats + off_ints) + 64)));
  if (!scratch) {
    MX_ERROR_MSG << kOp << ": could not allocate scratch memory";
    return MX_FAIL;
  }
  float* phases = reinterpret_cast<float*>(
      scratch + (64 - reinterpret_cast<uintptr_t>(scratch) % 64) % 64);
  float* staging = phases + phase_floats;
  float* buffers = staging + staged_floats;
  int32_t* offsets = reinterpret_cast<int32_t*>(buffers + buffer_floats);
  // The last register block of a run reads past the last plane (its sums are discarded).
  std::memset(phases + chunk * sample, 0, sizeof(float) * kInputSlack);
  // Kernel position (i, j) reads phase plane (i mod sh, j mod sw) shifted by (i / sh) rows and
  // (j / sw) columns: a table over the kh*kw positions keeps divisions out of the entry loop.
  int32_t* kernel_table = offsets + std::max<int64_t>(nnz, 1);
  for (int64_t i = 0; i < kh; ++i)
    for (int64_t j = 0; j < kw; ++j)
      kernel_table[i * kw + j] =
          static_cast<int32_t>(((i % sh) * sw + j % sw) * plane + (i / sh) * wph + j / sw);
  const int64_t dict_stride = sh * sw * plane;
  for (int64_t e = 0; e < nnz; ++e)
    offsets[e] = static_cast<int32_t>(dict_index[e] * dict_stride) +
                 kernel_table[kernel_offset[e]];
  const float* X = in[0].data<float>();
  const float* D = p.with_dictionary ? in[kDictInput].data<float>() : nullptr;
  const int64_t m = p.m, d = p.d, HW = H * W;
  // Dictionary work items: 256-pixel ranges times blocks of dictionary rows, so that a small
  // map (13x13: one pixel range) still gives every thread work. The split is fixed by the
  // shape, and each S value is summed over c in order whatever the split.
  const int64_t pixel_items = std::max<int64_t>(1, (HW + 255) / 256);  // HW = 0: one no-op
  const int64_t q_parts = std::min<int64_t>((d + 5) / 6, std::max<int64_t>(1, 8 / pixel_items));
  const int64_t q_block = ((d + q_parts - 1) / q_parts + 5) / 6 * 6;
  const int64_t q_items = (d + q_block - 1) / q_block;
  const int64_t dict_items = pixel_items * q_items;
  float* O = (*outputs)[0].data<float>();
  const int64_t conv_plane = Ho * Wo, out_plane = Hr * Wr;
  const int64_t planes_per_q = sh * sw * hph * wph;
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t nb = std::min(chunk, N - n0);
    // One parallel region; nested loops rather than a flattened index, because 64-bit
    // divisions per work item cost as much as a small layer's whole channel.
#pragma omp parallel
    {
      // S of each sample: the input itself, or D x computed here.
      const float* S = X + n0 * d * HW;
      if (p.with_dictionary) {
        for (int64_t n = 0; n < nb; ++n) {
#pragma omp for schedule(static) nowait
          for (int64_t item = 0; item < dict_items; ++item) {
            const int64_t t0 = item / q_items * 256, q0 = item % q_items * q_block;
            dictionary_range(X + (n0 + n) * C * HW, HW, C, D + q0 * C,
                             std::min(q_block, d - q0), t0, std::min(HW, t0 + 256),
                             staging + (n * d + q0) * HW);
          }
        }
#pragma omp barrier
        S = staging;
      }
      for (int64_t n = 0; n < nb; ++n) {
#pragma omp for schedule(static) nowait
        for (int64_t q = 0; q < d; ++q)
          split_phases(S + (n * d + q) * HW, H, W, p, hph, wph,
                       phases + n * sample + q * planes_per_q);
      }
#pragma omp barrier
      float* sums = buffers + omp_get_thread_num() * sums_floats;
      float* row_buf = sums + tile_rows * wph + kRunSlack;
      Epilogue ep;
      ep.relu = p.relu;
      for (int k = 0; k < 2; ++k) {
        ep.pool_kernel[k] = p.pool_kernel[k];
        ep.pool_stride[k] = p.pool_stride[k];
        ep.pool_pad[k] = p.pool_pad[k];
      }
      // Work items (sample, row tile, channel), channels innermost: all channels of a tile
      // reuse the same input rows from cache. Dynamic chunks: channels differ in nnz.
      for (int64_t n = 0; n < nb; ++n) {
        for (int64_t tile = 0; tile < tiles; ++tile) {
          const int64_t y0 = tile * tile_rows, y1 = std::min(Ho, y0 + tile_rows);
          // The run ends at the tile's last valid column: no sums past it are needed.
          const int64_t len = (y1 - y0 - 1) * wph + Wo;
#pragma omp for schedule(dynamic, 4) nowait
          for (int64_t r = 0; r < m; ++r) {
            const int64_t plane_index = (n0 + n) * m + r;
            lookup_run(phases + n * sample + y0 * wph, offsets + indptr[r], value + indptr[r],
                       indptr[r + 1] - indptr[r], len, sums);
            ep.bias = bias ? bias[r] : 0.f;
            if (p.pooled()) {
              finish_pooled(sums, wph, Ho, Wo, ep, Hr, Wr, row_buf, O + plane_index * out_plane);
            } else {
              ep.residual = residual ? residual + plane_index * conv_plane : nullptr;
              finish_rows(sums, wph, y0, y1, Wo, ep, O + plane_index * conv_plane);
            }
          }
        }
      }
    }
  }
  return MX_SUCCESS;
}

MXReturnValue backward(const Attrs&, std::vector<MXTensor>*, std::vector<MXTensor>*,
                       const OpResource&) {
  return inference_only(kOp, "gluon_lcnn.nn.LookupConv2D");
}

REGISTER_OP(lcnn_sparse_conv)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu");

}  // namespace
