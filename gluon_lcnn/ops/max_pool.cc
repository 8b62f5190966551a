// lcnn_max_pool: 2-D max pooling of plain NCHW float32 data (inference only).
//
//   out[n, c, y, x] = max over the kh x kw window at (y * sh - ph, x * sw - pw)
//
// MXNet's 'valid' convention: H' = floor((H + 2 ph - kh) / sh) + 1; padding never wins (-inf).
// MXNet 1.9's MKLDNN pools plain NCHW (what lcnn_sparse_conv writes) with oneDNN's reference
// kernel; this one takes the maximum of the window's kh rows first (contiguous, vectorised) into
// a row buffer with -inf borders, then the horizontal maximum over kw with stride sw.
#include <omp.h>

#include <algorithm>
#include <climits>
#include <limits>

#include "common.h"

namespace {

using namespace lcnn;  // NOLINT
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;

const char* const kOp = "lcnn_max_pool";

struct PoolParam {
  int64_t kernel[2], stride[2], pad[2];
};

bool parse(const Attrs& attrs, PoolParam* p) {
  const int64_t big = INT_MAX / 4;
  if (!get_pair(kOp, attrs, "kernel", false, 0, 1, big, p->kernel) ||
      !get_pair(kOp, attrs, "stride", true, 1, 1, big, p->stride) ||
      !get_pair(kOp, attrs, "pad", true, 0, 0, big, p->pad))
    return false;
  for (int k = 0; k < 2; ++k) {
    // A window of padding only would have no maximum.
    if (p->pad[k] >= p->kernel[k]) {
      MX_ERROR_MSG << kOp << ": pad=(" << p->pad[0] << ", " << p->pad[1]
                   << ") must be smaller than kernel=(" << p->kernel[0] << ", "
                   << p->kernel[1] << ")";
      return false;
    }
  }
  return true;
}

// Output shape for data shape `ds` (N, C, H, W), or false with a message.
template <typename T>
bool out_shape(const PoolParam& p, const std::vector<T>& ds, std::vector<T>* os) {
  if (ds.size() != 4) {
    MX_ERROR_MSG << kOp << ": data must be 4-D (N, C, H, W), got shape " << shape_str(ds);
    return false;
  }
  *os = ds;
  for (int k = 0; k < 2; ++k) {
    // Every window of an empty axis holds padding only (MXNet's Pooling refuses these too).
    if (ds[2 + k] == 0) {
      MX_ERROR_MSG << kOp << ": data has zero " << (k == 0 ? "height" : "width")
                   << " (shape " << shape_str(ds) << "): every pooling window would hold "
                   << "padding only and have no maximum";
      return false;
    }
    const int64_t padded = static_cast<int64_t>(ds[2 + k]) + 2 * p.pad[k];
    if (p.kernel[k] > padded) {
      MX_ERROR_MSG << kOp << ": kernel=(" << p.kernel[0] << ", " << p.kernel[1]
                   << ") is larger than the padded input (" << ds[2] + 2 * p.pad[0] << ", "
                   << ds[3] + 2 * p.pad[1] << ") of data " << shape_str(ds);
      return false;
    }
    (*os)[2 + k] = static_cast<T>((padded - p.kernel[k]) / p.stride[k] + 1);
  }
  return true;
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  PoolParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  PoolParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  if (!check_types(kOp, {"data"}, {mxnet::ext::kFloat32}, in_types)) return MX_FAIL;
  (*out_types)[0] = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  PoolParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  if (in->size() != 1) {
    MX_ERROR_MSG << kOp << ": expected 1 input, got " << in->size();
    return MX_FAIL;
  }
  if (!check_known(kOp, "data", (*in)[0])) return MX_FAIL;
  return out_shape(p, (*in)[0], &(*out)[0]) ? MX_SUCCESS : MX_FAIL;
}

inline float fmax2(float a, float b) { return a > b ? a : b; }  // maps to one vector max

// out[x] = max(row[x * sw .. x * sw + kw)): with compile-time kw and sw (the common pools) the
// loop over x vectorises with strided loads; other sizes take the runtime loop.
template <int KW, int SW>
void hmax_fixed(const float* __restrict row, int64_t, int64_t, float* __restrict out,
                int64_t wo) {
  for (int64_t x = 0; x < wo; ++x) {
    float m = row[x * SW];
    for (int j = 1; j < KW; ++j) m = fmax2(m, row[x * SW + j]);
    out[x] = m;
  }
}

void hmax_any(const float* __restrict row, int64_t kw, int64_t sw, float* __restrict out,
              int64_t wo) {
  for (int64_t x = 0; x < wo; ++x) {
    const float* w = row + x * sw;
    float m = w[0];
    for (int64_t j = 1; j < kw; ++j) m = fmax2(m, w[j]);
    out[x] = m;
  }
}

typedef void (*HmaxFn)(const float*, int64_t, int64_t, float*, int64_t);

HmaxFn pick_hmax(int64_t kw, int64_t sw) {
  if (kw == 3 && sw == 2) return hmax_fixed<3, 2>;
  if (kw == 2 && sw == 2) return hmax_fixed<2, 2>;
  if (kw == 3 && sw == 1) return hmax_fixed<3, 1>;
  if (kw == 3 && sw == 3) return hmax_fixed<3, 3>;
  return hmax_any;
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  PoolParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  if (inputs->size() != 1 || outputs->size() != 1) {
    MX_ERROR_MSG << kOp << ": expected 1 input and 1 output";
    return MX_FAIL;
  }
  MXTensor& in = (*inputs)[0];  // data<T>() is not const
  MXTensor& out = (*outputs)[0];
  if (in.ctx.dev_type != "cpu") {
    MX_ERROR_MSG << kOp << ": only CPU is supported, input 'data' is on " << in.ctx.dev_type;
    return MX_FAIL;
  }
  if (in.dtype != mxnet::ext::kFloat32 || out.dtype != mxnet::ext::kFloat32) {
    MX_ERROR_MSG << kOp << ": data must be float32";
    return MX_FAIL;
  }
  std::vector<int64_t> os;
  if (!out_shape(p, in.shape, &os)) return MX_FAIL;
  if (out.shape != os) {
    MX_ERROR_MSG << kOp << ": output shape " << shape_str(out.shape) << " does not match "
                 << shape_str(os) << " for data " << shape_str(in.shape);
    return MX_FAIL;
  }
  if (!check_no_alias(kOp, {"data"}, *inputs, *outputs)) return MX_FAIL;
  const int64_t planes = in.shape[0] * in.shape[1], H = in.shape[2], W = in.shape[3];
  const int64_t Ho = os[2], Wo = os[3];
  const int64_t kh = p.kernel[0], kw = p.kernel[1], sh = p.stride[0], sw = p.stride[1];
  const int64_t ph = p.pad[0], pw = p.pad[1];
  if (planes == 0) return MX_SUCCESS;  // H, W > 0 (out_shape), so Ho, Wo >= 1
  // Per thread one padded row: pw -inf, W row maxima, then -inf up to the last window's end.
  const int64_t row_len = (Wo - 1) * sw + kw;
  const int64_t row_stride = (row_len + 15) / 16 * 16;
  const int64_t work = planes * Ho * (kh * W + Wo * kw);
  const int threads = work > 32768 ? omp_get_max_threads() : 1;
  if (static_cast<int64_t>(sizeof(float)) * row_stride * threads > INT_MAX / 2) {
    MX_ERROR_MSG << kOp << ": input " << shape_str(in.shape) << " is too large for one call";
    return MX_FAIL;
  }
  float* rows = static_cast<float*>(
      res.alloc_cpu(static_cast<int>(sizeof(float) * row_stride * threads)));
  if (!rows) {
    MX_ERROR_MSG << kOp << ": could not allocate scratch memory";
    return MX_FAIL;
  }
  const float ninf = -std::numeric_limits<float>::infinity();
  const HmaxFn hmax = pick_hmax(kw, sw);
  const float* X = in.data<float>();
  float* O = out.data<float>();
#pragma omp parallel num_threads(threads)
  {
    float* row = rows + row_stride * omp_get_thread_num();
    // Borders stay -inf: only [pw, pw + W) is rewritten below.
    for (int64_t i = 0; i < row_len; ++i) row[i] = ninf;
    float* __restrict mid = row + pw;
    const int64_t wv = std::min(W, row_len - pw);  // input columns some window reaches
#pragma omp for schedule(static)
    for (int64_t pl = 0; pl < planes; ++pl) {
      const float* x = X + pl * H * W;
      float* o = O + pl * Ho * Wo;
      for (int64_t oy = 0; oy < Ho; ++oy) {
        // Rows [y0, y1) of the window inside the input; never empty: pad < kernel and H >= 1.
        const int64_t y0 = std::max<int64_t>(oy * sh - ph, 0);
        const int64_t y1 = std::min<int64_t>(oy * sh - ph + kh, H);
        const float* __restrict r0 = x + y0 * W;
        for (int64_t i = 0; i < wv; ++i) mid[i] = r0[i];
        for (int64_t y = y0 + 1; y < y1; ++y) {
          const float* __restrict r = x + y * W;
          for (int64_t i = 0; i < wv; ++i) mid[i] = fmax2(mid[i], r[i]);
        }
        hmax(row, kw, sw, o + oy * Wo, Wo);
      }
    }
  }
  return MX_SUCCESS;
}

MXReturnValue backward(const Attrs&, std::vector<MXTensor>*, std::vector<MXTensor>*,
                       const OpResource&) {
  return inference_only(kOp, "mxnet.gluon.nn.MaxPool2D");
}

REGISTER_OP(lcnn_max_pool)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu");

}  // namespace
