// lcnn_sparse_conv: the lookup stage of an LCNN convolution (inference only).
//
//   out[n, r, y, x] = bias[r] + sum_{e in row r} value[e] * S[n, q_e, y*sh + i_e - ph, x*sw + j_e - pw]
//
// S is the dictionary output (N, d, H, W); the lookup tensor P (m, d, kh, kw) arrives packed as
// compressed rows per output channel r: indptr (m+1,), and per non-zero e the dictionary index
// q_e, the kernel offset i_e*kw + j_e and the value (see gluon_lcnn/nn/sparse.py:pack_lookup).
//
// How it is fast (DESIGN.md "Kernel facts"): S is copied once per call into zero-padded planes,
// split into sh*sw stride phases so that every shifted read is contiguous again. One output
// channel is then a 1-D sweep over its plane laid out with the phase-plane width Wph (the
// Wph - Wo extra columns per row are computed and dropped): a block of 32 outputs lives in four
// 8-float vector registers while the channel's non-zeros are walked with input offsets computed
// once per call, and is stored once. Threads split (sample, output channel) pairs; every output
// is summed by one thread in a fixed order, so results do not depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "common.h"

namespace {

using namespace lcnn;  // NOLINT
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;

const char* const kOp = "lcnn_sparse_conv";

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));  // unaligned load/store

struct ConvParam {
  int64_t m, d, kernel[2], stride[2], pad[2];
  bool relu, no_bias;
};

bool parse(const Attrs& attrs, ConvParam* p) {
  const int64_t big = INT_MAX / 4;
  return get_int(kOp, attrs, "num_filter", false, 0, 1, big, &p->m) &&
         get_int(kOp, attrs, "dictionary_size", false, 0, 1, big, &p->d) &&
         get_pair(kOp, attrs, "kernel", false, 0, 1, 4096, p->kernel) &&
         get_pair(kOp, attrs, "stride", true, 1, 1, 4096, p->stride) &&
         get_pair(kOp, attrs, "pad", true, 0, 0, 4096, p->pad) &&
         get_bool(kOp, attrs, "relu", false, &p->relu) &&
         get_bool(kOp, attrs, "no_bias", false, &p->no_bias);
}

const char* const kNames[] = {"data", "indptr", "dict_index", "kernel_offset", "value", "bias"};

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  ConvParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  *num_in = p.no_bias ? 5 : 6;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  ConvParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  std::vector<int> want = {mxnet::ext::kFloat32, mxnet::ext::kInt32, mxnet::ext::kInt32,
                           mxnet::ext::kInt32, mxnet::ext::kFloat32};
  if (!p.no_bias) want.push_back(mxnet::ext::kFloat32);
  std::vector<const char*> names(kNames, kNames + want.size());
  if (!check_types(kOp, names, want, in_types)) return MX_FAIL;
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

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  ConvParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  const size_t n_in = p.no_bias ? 5 : 6;
  if (in->size() != n_in) {
    MX_ERROR_MSG << kOp << ": expected " << n_in << " inputs, got " << in->size();
    return MX_FAIL;
  }
  // Shapes that follow from the attributes are filled in when unknown.
  if ((*in)[1].empty()) (*in)[1] = {static_cast<unsigned>(p.m + 1)};
  if (!p.no_bias && (*in)[5].empty()) (*in)[5] = {static_cast<unsigned>(p.m)};
  const auto& data = (*in)[0];
  if (data.size() != 4) {
    MX_ERROR_MSG << kOp << ": data must be 4-D (N, dictionary_size, H, W), got shape "
                 << shape_str(data);
    return MX_FAIL;
  }
  if (data[1] != p.d) {
    MX_ERROR_MSG << kOp << ": wrong data channels: data has " << data[1]
                 << " channels but dictionary_size=" << p.d << " (data shape "
                 << shape_str(data) << ")";
    return MX_FAIL;
  }
  if ((*in)[1].size() != 1 || (*in)[1][0] != p.m + 1) {
    MX_ERROR_MSG << kOp << ": indptr must have shape (num_filter + 1,) = (" << p.m + 1
                 << ",), got " << shape_str((*in)[1]);
    return MX_FAIL;
  }
  const auto& idx = (*in)[2];
  for (int k = 2; k <= 4; ++k) {
    if ((*in)[k].size() != 1 || (*in)[k][0] == 0) {
      MX_ERROR_MSG << kOp << ": " << kNames[k] << " must be 1-D and non-empty, got "
                   << shape_str((*in)[k]);
      return MX_FAIL;
    }
    if ((*in)[k] != idx) {
      MX_ERROR_MSG << kOp << ": nnz mismatch: " << kNames[k] << " has shape "
                   << shape_str((*in)[k]) << " but dict_index has " << shape_str(idx);
      return MX_FAIL;
    }
  }
  if (!p.no_bias && ((*in)[5].size() != 1 || (*in)[5][0] != p.m)) {
    MX_ERROR_MSG << kOp << ": bias must have shape (num_filter,) = (" << p.m << ",), got "
                 << shape_str((*in)[5]);
    return MX_FAIL;
  }
  const int64_t ho = out_size(data[2], p.kernel[0], p.stride[0], p.pad[0], "height");
  const int64_t wo = out_size(data[3], p.kernel[1], p.stride[1], p.pad[1], "width");
  if (ho < 0 || wo < 0) return MX_FAIL;
  (*out)[0] = {data[0], static_cast<unsigned>(p.m), static_cast<unsigned>(ho),
               static_cast<unsigned>(wo)};
  return MX_SUCCESS;
}

// acc[0..NV) = bias; acc += value[e] * plane[off[e] ..]; stored to dst. NV vectors of 8 floats.
template <int NV>
inline void lookup_block(const float* __restrict plane, const int32_t* __restrict off,
                         const float* __restrict val, int64_t n, float bias,
                         float* __restrict dst) {
  v8 acc[NV];
  for (int k = 0; k < NV; ++k) acc[k] = v8{} + bias;
  for (int64_t e = 0; e < n; ++e) {
    const float* src = plane + off[e];
    const v8 v = v8{} + val[e];
    for (int k = 0; k < NV; ++k) acc[k] += v * *reinterpret_cast<const v8u*>(src + 8 * k);
  }
  for (int k = 0; k < NV; ++k) *reinterpret_cast<v8u*>(dst + 8 * k) = acc[k];
}

// Copies S[n] (d, H, W) into phase planes: plane (q, pi, pj) holds padded rows pi, pi+sh, ...
// and columns pj, pj+sw, ... of S[n, q]; zeros where the padded image has no pixel.
void split_phases(const float* src, int64_t H, int64_t W, const ConvParam& p, int64_t hph,
                  int64_t wph, int64_t q, float* dst) {
  const int64_t sh = p.stride[0], sw = p.stride[1];
  for (int64_t pi = 0; pi < sh; ++pi) {
    for (int64_t pj = 0; pj < sw; ++pj) {
      float* plane = dst + ((q * sh + pi) * sw + pj) * hph * wph;
      const float* img = src + q * H * W;
      // Columns w with 0 <= w*sw + pj - pw < W form one contiguous range [w0, w1).
      int64_t w0 = 0;
      while (w0 < wph && w0 * sw + pj - p.pad[1] < 0) ++w0;
      int64_t w1 = w0;
      while (w1 < wph && w1 * sw + pj - p.pad[1] < W) ++w1;
      for (int64_t u = 0; u < hph; ++u) {
        float* row = plane + u * wph;
        const int64_t y = u * sh + pi - p.pad[0];
        if (y < 0 || y >= H) {
          std::memset(row, 0, sizeof(float) * wph);
          continue;
        }
        const float* in = img + y * W + (w0 * sw + pj - p.pad[1]);
        for (int64_t w = 0; w < w0; ++w) row[w] = 0.f;
        if (sw == 1) {
          std::memcpy(row + w0, in, sizeof(float) * (w1 - w0));
        } else {
          for (int64_t w = w0; w < w1; ++w) row[w] = in[(w - w0) * sw];
        }
        for (int64_t w = w1; w < wph; ++w) row[w] = 0.f;
      }
    }
  }
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  ConvParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  std::vector<MXTensor>& in = *inputs;
  const size_t n_in = p.no_bias ? 5 : 6;
  if (in.size() != n_in || outputs->size() != 1) {
    MX_ERROR_MSG << kOp << ": expected " << n_in << " inputs and 1 output";
    return MX_FAIL;
  }
  for (size_t k = 0; k < n_in; ++k) {
    if (in[k].ctx.dev_type != "cpu") {
      MX_ERROR_MSG << kOp << ": only CPU is supported, input '" << kNames[k] << "' is on "
                   << in[k].ctx.dev_type;
      return MX_FAIL;
    }
  }
  // Cheap re-checks of what infer_shape established (shapes cannot change behind our back in
  // the symbolic path, but imperative callers reach forward with whatever they pass).
  const std::vector<int64_t>& ds = in[0].shape;
  if (ds.size() != 4 || ds[1] != p.d || in[1].shape.size() != 1 || in[1].shape[0] != p.m + 1 ||
      in[2].shape.size() != 1 || in[3].shape != in[2].shape || in[4].shape != in[2].shape ||
      (!p.no_bias && (in[5].shape.size() != 1 || in[5].shape[0] != p.m))) {
    MX_ERROR_MSG << kOp << ": input shapes do not match the attributes (data "
                 << shape_str(ds) << ", indptr " << shape_str(in[1].shape) << ")";
    return MX_FAIL;
  }
  const int64_t N = ds[0], H = ds[2], W = ds[3];
  const int64_t kh = p.kernel[0], kw = p.kernel[1], sh = p.stride[0], sw = p.stride[1];
  const int64_t Ho = out_size(H, kh, sh, p.pad[0], "height");
  const int64_t Wo = out_size(W, kw, sw, p.pad[1], "width");
  if (Ho < 0 || Wo < 0) return MX_FAIL;
  const std::vector<int64_t>& os = (*outputs)[0].shape;
  if (os.size() != 4 || os[0] != N || os[1] != p.m || os[2] != Ho || os[3] != Wo) {
    MX_ERROR_MSG << kOp << ": output shape " << shape_str(os) << " is not (" << N << ", "
                 << p.m << ", " << Ho << ", " << Wo << ")";
    return MX_FAIL;
  }
  const int32_t* indptr = in[1].data<int32_t>();
  const int32_t* dict_index = in[2].data<int32_t>();
  const int32_t* kernel_offset = in[3].data<int32_t>();
  const float* value = in[4].data<float>();
  const float* bias = p.no_bias ? nullptr : in[5].data<float>();
  const int64_t entries = in[2].shape[0];
  if (!check_packed(kOp, indptr, p.m, entries, dict_index, p.d, kernel_offset, kh * kw))
    return MX_FAIL;

  // Geometry of the phase planes (stride 1: one plane per dictionary channel, just padded).
  const int64_t hph = (H + 2 * p.pad[0] + sh - 1) / sh;
  const int64_t wph = (W + 2 * p.pad[1] + sw - 1) / sw;
  const int64_t plane = hph * wph;
  const int64_t sample = p.d * sh * sw * plane;  // floats of one sample's phase planes
  const int64_t span = (Ho - 1) * wph + Wo;       // flat outputs computed per channel
  const int64_t tmp_len = span + kSlack;
  const int threads = std::max(1, omp_get_max_threads());
  const int64_t limit = INT_MAX;  // alloc_cpu takes an int byte count; the parts stay < limit/4
  if (4 * (sample + kSlack) > limit / 4 || 4 * tmp_len * threads > limit / 4 ||
      4 * (entries + kh * kw) > limit / 4) {
    MX_ERROR_MSG << kOp << ": input " << shape_str(ds) << " is too large for one call";
    return MX_FAIL;
  }
  // Samples per chunk so the phase buffer stays under ~256 MB.
  const int64_t chunk = std::max<int64_t>(
      1, std::min<int64_t>(N, (int64_t(256) << 20) / (4 * sample)));
  const int64_t nnz = indptr[p.m];
  // One allocation carved in three: alloc_cpu hands out MXNet's temporary workspace, and a
  // second call would return (a resized) the same memory.
  const int64_t phase_floats = chunk * sample + kSlack;
  const int64_t tmp_floats = tmp_len * threads;
  const int64_t off_ints = std::max<int64_t>(nnz, 1) + kh * kw;
  char* scratch = static_cast<char*>(res.alloc_cpu(
      static_cast<int>(4 * (phase_floats + tmp_floats + off_ints) + 64)));
  float* phases = scratch ? reinterpret_cast<float*>(
      scratch + (64 - reinterpret_cast<uintptr_t>(scratch) % 64) % 64) : nullptr;
  float* tmp_all = phases ? phases + phase_floats : nullptr;
  int32_t* offsets = phases ? reinterpret_cast<int32_t*>(tmp_all + tmp_floats) : nullptr;
  if (!phases || !tmp_all || !offsets) {
    MX_ERROR_MSG << kOp << ": could not allocate scratch memory";
    return MX_FAIL;
  }
  std::memset(phases + chunk * sample, 0, sizeof(float) * kSlack);
  std::memset(tmp_all, 0, sizeof(float) * tmp_len * threads);
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
  const float* S = in[0].data<float>();
  float* O = (*outputs)[0].data<float>();
  const int64_t m = p.m, d = p.d, out_plane = Ho * Wo;
  const bool relu = p.relu;
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t nb = std::min(chunk, N - n0);
#pragma omp parallel for schedule(static)
    for (int64_t nq = 0; nq < nb * d; ++nq) {
      const int64_t n = nq / d, q = nq % d;
      split_phases(S + (n0 + n) * d * H * W, H, W, p, hph, wph, q, phases + n * sample);
    }
#pragma omp parallel for schedule(static)
    for (int64_t nr = 0; nr < nb * m; ++nr) {
      const int64_t n = nr / m, r = nr % m;
      float* tmp = tmp_all + omp_get_thread_num() * tmp_len;
      const float* base = phases + n * sample;
      const int32_t* off = offsets + indptr[r];
      const float* val = value + indptr[r];
      const int64_t cnt = indptr[r + 1] - indptr[r];
      const float b = bias ? bias[r] : 0.f;
      float* dst = O + ((n0 + n) * m + r) * out_plane;
      if (cnt == 0) {
        std::fill(dst, dst + out_plane, relu ? std::max(b, 0.f) : b);
        continue;
      }
      int64_t t = 0;
      for (; t + 64 <= span; t += 64) lookup_block<8>(base + t, off, val, cnt, b, tmp + t);
      for (; t + 32 <= span; t += 32) lookup_block<4>(base + t, off, val, cnt, b, tmp + t);
      for (; t < span; t += 8) lookup_block<1>(base + t, off, val, cnt, b, tmp + t);
      for (int64_t y = 0; y < Ho; ++y) {
        const float* src = tmp + y * wph;
        float* row = dst + y * Wo;
        if (relu) {
          for (int64_t x = 0; x < Wo; ++x) row[x] = std::max(src[x], 0.f);
        } else {
          std::memcpy(row, src, sizeof(float) * Wo);
        }
      }
    }
  }
  return MX_SUCCESS;
}

// Registered only so that graphs containing the op can be built (a hybridized Gluon block or
// CachedOp always derives a gradient graph); running it is an error: inference only.
MXReturnValue backward(const Attrs&, std::vector<MXTensor>*, std::vector<MXTensor>*,
                       const OpResource&) {
  MX_ERROR_MSG << kOp << " is inference only and has no backward; train with "
               << "gluon_lcnn.nn.LookupConv2D and convert with gluon_lcnn.deploy";
  return MX_FAIL;
}

REGISTER_OP(lcnn_sparse_conv)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu");

}  // namespace
