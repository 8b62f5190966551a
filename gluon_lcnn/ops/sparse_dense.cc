// lcnn_sparse_dense: the lookup stage of an LCNN fully connected layer (inference only).
//
//   out[n, u] = bias[u] + sum_{e in row u} value[e] * S[n, q_e]
//
// S (N, d) is the dictionary output, the lookup matrix P (units, d) arrives as compressed rows:
// indptr (units+1,), dict_index and value per non-zero. For small batches each output is a
// gather-sum with four partial sums; from 8 samples on, S is transposed once so that every
// non-zero becomes a contiguous multiply-add over up to 64 samples held in vector registers.
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "common.h"
#include "vec.h"

namespace {

using namespace lcnn;  // NOLINT
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;

const char* const kOp = "lcnn_sparse_dense";

// out[0 .. 8*NV) = bias + sum_e val[e] * st[idx[e] * np ..]: 8*NV samples of one output unit
// in NV vector registers.
template <int NV, bool RELU>
void dense_block(const float* __restrict st, int64_t np, const int32_t* __restrict idx,
                 const float* __restrict val, int32_t n, float bias, float* __restrict out) {
  v8 acc[NV];
  for (int k = 0; k < NV; ++k) acc[k] = splat(bias);
  for (int32_t e = 0; e < n; ++e) {
    const float* in = st + idx[e] * np;
    const v8 v = splat(val[e]);
    for (int k = 0; k < NV; ++k) acc[k] += v * *reinterpret_cast<const v8u*>(in + 8 * k);
  }
  for (int k = 0; k < NV; ++k) {
    if (RELU) acc[k] = relu(acc[k]);
    *reinterpret_cast<v8u*>(out + 8 * k) = acc[k];
  }
}

typedef void (*BlockFn)(const float*, int64_t, const int32_t*, const float*, int32_t, float,
                        float*);

template <bool RELU>
BlockFn tail_fn(int nv) {
  static const BlockFn table[8] = {
      dense_block<1, RELU>, dense_block<1, RELU>, dense_block<2, RELU>, dense_block<3, RELU>,
      dense_block<4, RELU>, dense_block<5, RELU>, dense_block<6, RELU>, dense_block<7, RELU>};
  return table[nv];
}

struct DenseParam {
  int64_t units, d;
  bool relu, no_bias;
};

bool parse(const Attrs& attrs, DenseParam* p) {
  const int64_t big = INT_MAX / 4;
  return get_int(kOp, attrs, "num_hidden", false, 0, 1, big, &p->units) &&
         get_int(kOp, attrs, "dictionary_size", false, 0, 1, big, &p->d) &&
         get_bool(kOp, attrs, "relu", false, &p->relu) &&
         get_bool(kOp, attrs, "no_bias", false, &p->no_bias);
}

const char* const kNames[] = {"data", "indptr", "dict_index", "value", "bias"};

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  DenseParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  *num_in = p.no_bias ? 4 : 5;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  DenseParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  std::vector<int> want = {mxnet::ext::kFloat32, mxnet::ext::kInt32, mxnet::ext::kInt32,
                           mxnet::ext::kFloat32};
  if (!p.no_bias) want.push_back(mxnet::ext::kFloat32);
  std::vector<const char*> names(kNames, kNames + want.size());
  if (!check_types(kOp, names, want, in_types)) return MX_FAIL;
  (*out_types)[0] = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  DenseParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  const size_t n_in = p.no_bias ? 4 : 5;
  if (in->size() != n_in) {
    MX_ERROR_MSG << kOp << ": expected " << n_in << " inputs, got " << in->size();
    return MX_FAIL;
  }
  if ((*in)[1].empty()) (*in)[1] = {static_cast<unsigned>(p.units + 1)};
  if (!p.no_bias && (*in)[4].empty()) (*in)[4] = {static_cast<unsigned>(p.units)};
  for (size_t k = 0; k < n_in; ++k) {
    if (!check_known(kOp, kNames[k], (*in)[k])) return MX_FAIL;
  }
  const auto& data = (*in)[0];
  if (data.size() != 2) {
    MX_ERROR_MSG << kOp << ": data must be 2-D (N, dictionary_size), got shape "
                 << shape_str(data);
    return MX_FAIL;
  }
  if (data[1] != p.d) {
    MX_ERROR_MSG << kOp << ": wrong data channels: data has " << data[1]
                 << " features but dictionary_size=" << p.d;
    return MX_FAIL;
  }
  if ((*in)[1].size() != 1 || (*in)[1][0] != p.units + 1) {
    MX_ERROR_MSG << kOp << ": indptr must have shape (num_hidden + 1,) = (" << p.units + 1
                 << ",), got " << shape_str((*in)[1]);
    return MX_FAIL;
  }
  for (int k = 2; k <= 3; ++k) {
    if ((*in)[k].size() != 1 || (*in)[k][0] == 0) {
      MX_ERROR_MSG << kOp << ": " << kNames[k] << " must be 1-D and non-empty, got "
                   << shape_str((*in)[k]);
      return MX_FAIL;
    }
  }
  if ((*in)[3] != (*in)[2]) {
    MX_ERROR_MSG << kOp << ": nnz mismatch: value has shape " << shape_str((*in)[3])
                 << " but dict_index has " << shape_str((*in)[2]);
    return MX_FAIL;
  }
  if (!p.no_bias && ((*in)[4].size() != 1 || (*in)[4][0] != p.units)) {
    MX_ERROR_MSG << kOp << ": bias must have shape (num_hidden,) = (" << p.units << ",), got "
                 << shape_str((*in)[4]);
    return MX_FAIL;
  }
  (*out)[0] = {data[0], static_cast<unsigned>(p.units)};
  return MX_SUCCESS;
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  DenseParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  std::vector<MXTensor>& in = *inputs;
  const size_t n_in = p.no_bias ? 4 : 5;
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
  const std::vector<int64_t>& ds = in[0].shape;
  if (ds.size() != 2 || ds[1] != p.d || in[1].shape.size() != 1 ||
      in[1].shape[0] != p.units + 1 || in[2].shape.size() != 1 || in[3].shape != in[2].shape ||
      (!p.no_bias && (in[4].shape.size() != 1 || in[4].shape[0] != p.units)) ||
      (*outputs)[0].shape != std::vector<int64_t>{ds[0], p.units}) {
    MX_ERROR_MSG << kOp << ": input shapes do not match the attributes (data "
                 << shape_str(ds) << ", indptr " << shape_str(in[1].shape) << ")";
    return MX_FAIL;
  }
  const int32_t* indptr = in[1].data<int32_t>();
  const int32_t* dict_index = in[2].data<int32_t>();
  const float* value = in[3].data<float>();
  const float* bias = p.no_bias ? nullptr : in[4].data<float>();
  if (!check_no_alias(kOp, std::vector<const char*>(kNames, kNames + n_in), in, *outputs))
    return MX_FAIL;
  if (!check_packed(kOp, indptr, p.units, in[2].shape[0], dict_index, p.d, nullptr, 0))
    return MX_FAIL;
  const int64_t N = ds[0], d = p.d, units = p.units;
  const float* S = in[0].data<float>();
  float* O = (*outputs)[0].data<float>();
  const bool fuse_relu = p.relu;
  const int64_t work = (indptr[units] + units) * N;

  if (N < 8) {
#pragma omp parallel for schedule(static) if (work > 32768)
    for (int64_t u = 0; u < units; ++u) {
      const int32_t e0 = indptr[u], e1 = indptr[u + 1];
      for (int64_t n = 0; n < N; ++n) {
        const float* s = S + n * d;
        // Four partial sums: one chain of dependent adds would wait on every multiply-add.
        float a0 = bias ? bias[u] : 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
        int32_t e = e0;
        for (; e + 4 <= e1; e += 4) {
          a0 += value[e] * s[dict_index[e]];
          a1 += value[e + 1] * s[dict_index[e + 1]];
          a2 += value[e + 2] * s[dict_index[e + 2]];
          a3 += value[e + 3] * s[dict_index[e + 3]];
        }
        for (; e < e1; ++e) a0 += value[e] * s[dict_index[e]];
        const float acc = (a0 + a1) + (a2 + a3);
        O[n * units + u] = fuse_relu ? relu(acc) : acc;
      }
    }
    return MX_SUCCESS;
  }
  // Batched: St (d, Np) with Np = N rounded up to 8; non-zero e adds value * St[q_e, :] to up
  // to 64 samples held in registers (independent accumulators, one pass over the row).
  const int64_t np = (N + 7) / 8 * 8;
  if (static_cast<int64_t>(sizeof(float)) * (d * np + kSlack) > INT_MAX / 2) {
    MX_ERROR_MSG << kOp << ": input " << shape_str(ds) << " is too large for one call";
    return MX_FAIL;
  }
  // One allocation (alloc_cpu returns the same workspace twice): St, then the output
  // transposed, Ot (units, Np), written with vector stores and transposed at the end (writing
  // O column by column would hit one cache set per unit: rows are units * 4 bytes apart).
  if (static_cast<int64_t>(sizeof(float)) * (d + units) * np > INT_MAX / 2) {
    MX_ERROR_MSG << kOp << ": input " << shape_str(ds) << " is too large for one call";
    return MX_FAIL;
  }
  float* st = static_cast<float*>(
      res.alloc_cpu(static_cast<int>(sizeof(float) * (d + units) * np)));
  float* ot = st + d * np;
  if (!st) {
    MX_ERROR_MSG << kOp << ": could not allocate scratch memory";
    return MX_FAIL;
  }
#pragma omp parallel for schedule(static) if (N * d > 65536)
  for (int64_t q = 0; q < d; ++q) {
    float* row = st + q * np;
    for (int64_t n = 0; n < N; ++n) row[n] = S[n * d + q];
    for (int64_t n = N; n < np; ++n) row[n] = 0.f;
  }
  const int tail = static_cast<int>(np % 64 / 8);
  const BlockFn full_block = fuse_relu ? dense_block<8, true> : dense_block<8, false>;
  const BlockFn tail_block = fuse_relu ? tail_fn<true>(tail) : tail_fn<false>(tail);
#pragma omp parallel for schedule(static) if (work > 32768)
  for (int64_t u = 0; u < units; ++u) {
    const float b = bias ? bias[u] : 0.f;
    const int32_t e0 = indptr[u], cnt = indptr[u + 1] - e0;
    int64_t n0 = 0;
    for (; n0 + 64 <= np; n0 += 64)
      full_block(st + n0, np, dict_index + e0, value + e0, cnt, b, ot + u * np + n0);
    if (tail > 0) tail_block(st + n0, np, dict_index + e0, value + e0, cnt, b, ot + u * np + n0);
  }
#pragma omp parallel for schedule(static) if (N * units > 65536)
  for (int64_t n = 0; n < N; ++n) {
    float* row = O + n * units;
    for (int64_t u = 0; u < units; ++u) row[u] = ot[u * np + n];
  }
  return MX_SUCCESS;
}

MXReturnValue backward(const Attrs&, std::vector<MXTensor>*, std::vector<MXTensor>*,
                       const OpResource&) {
  return inference_only(kOp, "gluon_lcnn.nn.LookupDense");
}

REGISTER_OP(lcnn_sparse_dense)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu");

}  // namespace
