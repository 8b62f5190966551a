// lcnn_sparse_dense: the lookup stage of an LCNN fully connected layer (inference only).
//
//   out[n, u] = bias[u] + sum_{e in row u} value[e] * S[n, q_e]
//
// S (N, d) is the dictionary output, the lookup matrix P (units, d) arrives as compressed rows:
// indptr (units+1,), dict_index and value per non-zero. For small batches each output is a
// gather-sum with four partial sums; from 8 samples on, S is transposed once so that every
// non-zero becomes a contiguous multiply-add over up to 64 samples held in vector registers.
//
// with_dictionary=True: data is x and the op computes S = D x itself (one call instead of a
// FullyConnected / 1x1 Convolution and this op), with the dictionary stored as float32 or
// float16 (weight_dtype; widened in registers, half.h). pixels=K > 1 is a convolution whose
// kernel covers its K-pixel input (AlexNet's fc6 as a fully connected layer): x (N, c*K) is the
// flattened (c, kh, kw) map, D is (d/K, c), S[q*K + p] = sum_c D[q, c] x[c*K + p] in P's
// column order (q, i, j).
#include <omp.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "common.h"
#include "dense_product.h"
#include "half.h"
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
  int64_t units, d, pixels;
  bool relu, no_bias, with_dictionary;
  int weight_dtype;
};

bool parse(const Attrs& attrs, DenseParam* p) {
  const int64_t big = INT_MAX / 4;
  if (!(get_int(kOp, attrs, "num_hidden", false, 0, 1, big, &p->units) &&
        get_int(kOp, attrs, "dictionary_size", false, 0, 1, big, &p->d) &&
        get_bool(kOp, attrs, "relu", false, &p->relu) &&
        get_bool(kOp, attrs, "no_bias", false, &p->no_bias) &&
        get_bool(kOp, attrs, "with_dictionary", false, &p->with_dictionary) &&
        get_int(kOp, attrs, "pixels", true, 1, 1, big, &p->pixels) &&
        get_weight_dtype(kOp, attrs, "weight_dtype", &p->weight_dtype)))
    return false;
  if (!p->with_dictionary && (p->pixels != 1 || p->weight_dtype != mxnet::ext::kFloat32)) {
    MX_ERROR_MSG << kOp << ": pixels and weight_dtype describe the dictionary; they need "
                 << "with_dictionary=True";
    return false;
  }
  if (p->d % p->pixels != 0) {
    MX_ERROR_MSG << kOp << ": dictionary_size=" << p->d << " (columns of P) is not a multiple "
                 << "of pixels=" << p->pixels;
    return false;
  }
  return true;
}

// Input names in order: data, [dictionary,] indptr, dict_index, value, [bias].
std::vector<const char*> input_names(const DenseParam& p) {
  std::vector<const char*> names = {"data"};
  if (p.with_dictionary) names.push_back("dictionary");
  for (const char* n : {"indptr", "dict_index", "value"}) names.push_back(n);
  if (!p.no_bias) names.push_back("bias");
  return names;
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  DenseParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  *num_in = static_cast<int>(input_names(p).size());
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  DenseParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  std::vector<int> want = {mxnet::ext::kFloat32};
  if (p.with_dictionary) want.push_back(p.weight_dtype);
  for (int t : {mxnet::ext::kInt32, mxnet::ext::kInt32, mxnet::ext::kFloat32}) want.push_back(t);
  if (!p.no_bias) want.push_back(mxnet::ext::kFloat32);
  if (!check_types(kOp, input_names(p), want, in_types)) return MX_FAIL;
  (*out_types)[0] = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  DenseParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  const std::vector<const char*> names = input_names(p);
  const size_t n_in = names.size(), off = p.with_dictionary ? 1 : 0;
  if (in->size() != n_in) {
    MX_ERROR_MSG << kOp << ": expected " << n_in << " inputs, got " << in->size();
    return MX_FAIL;
  }
  auto& indptr = (*in)[1 + off];
  if (indptr.empty()) indptr = {static_cast<unsigned>(p.units + 1)};
  if (!p.no_bias && (*in)[4 + off].empty()) (*in)[4 + off] = {static_cast<unsigned>(p.units)};
  for (size_t k = 0; k < n_in; ++k) {
    if (!check_known(kOp, names[k], (*in)[k])) return MX_FAIL;
  }
  const auto& data = (*in)[0];
  if (data.size() != 2) {
    MX_ERROR_MSG << kOp << ": data must be 2-D (N, " << (p.with_dictionary ? "in_units" :
                 "dictionary_size") << "), got shape " << shape_str(data);
    return MX_FAIL;
  }
  if (!p.with_dictionary && data[1] != p.d) {
    MX_ERROR_MSG << kOp << ": wrong data channels: data has " << data[1]
                 << " features but dictionary_size=" << p.d;
    return MX_FAIL;
  }
  if (p.with_dictionary) {
    const auto& dict = (*in)[1];
    if (data[1] % p.pixels != 0) {
      MX_ERROR_MSG << kOp << ": wrong data channels: data has " << data[1] << " features, "
                   << "not a multiple of pixels=" << p.pixels;
      return MX_FAIL;
    }
    const int64_t atoms = p.d / p.pixels, channels = data[1] / p.pixels;
    if (dict.size() != 2 || dict[0] != atoms || dict[1] != channels) {
      MX_ERROR_MSG << kOp << ": dictionary must have shape (dictionary_size / pixels, "
                   << "in_features / pixels) = (" << atoms << ", " << channels << ") for data "
                   << shape_str(data) << ", got " << shape_str(dict);
      return MX_FAIL;
    }
  }
  if (indptr.size() != 1 || indptr[0] != p.units + 1) {
    MX_ERROR_MSG << kOp << ": indptr must have shape (num_hidden + 1,) = (" << p.units + 1
                 << ",), got " << shape_str(indptr);
    return MX_FAIL;
  }
  for (size_t k = 2 + off; k <= 3 + off; ++k) {
    if ((*in)[k].size() != 1 || (*in)[k][0] == 0) {
      MX_ERROR_MSG << kOp << ": " << names[k] << " must be 1-D and non-empty, got "
                   << shape_str((*in)[k]);
      return MX_FAIL;
    }
  }
  if ((*in)[3 + off] != (*in)[2 + off]) {
    MX_ERROR_MSG << kOp << ": nnz mismatch: value has shape " << shape_str((*in)[3 + off])
                 << " but dict_index has " << shape_str((*in)[2 + off]);
    return MX_FAIL;
  }
  if (!p.no_bias && ((*in)[4 + off].size() != 1 || (*in)[4 + off][0] != p.units)) {
    MX_ERROR_MSG << kOp << ": bias must have shape (num_hidden,) = (" << p.units << ",), got "
                 << shape_str((*in)[4 + off]);
    return MX_FAIL;
  }
  (*out)[0] = {data[0], static_cast<unsigned>(p.units)};
  return MX_SUCCESS;
}

// R dictionary rows (row stride c) by NB blocks of 8 pixels of one sample: out[r * ldo + p] =
// sum_k D[r, k] xp[k * kp + p], xp holding each channel's pixels padded to kp with zeros.
template <int R, int NB>
void pixel_block(const float* __restrict D, int64_t c, const float* __restrict xp, int64_t kp,
                 float* __restrict out, int64_t ldo) {
  v8 acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = v8{};
  for (int64_t k = 0; k < c; ++k) {
    const float* row = xp + k * kp;
    for (int r = 0; r < R; ++r) {
      const v8 w = splat(D[r * c + k]);
      for (int b = 0; b < NB; ++b) acc[r][b] += w * load8(row + 8 * b);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int b = 0; b < NB; ++b) *reinterpret_cast<v8u*>(out + r * ldo + 8 * b) = acc[r][b];
}

// Rows [q0, q0 + R) of S for pixel blocks [b0, b0 + nb): about 10 accumulators in registers.
template <int R>
void pixel_rows(int nb, const float* D, int64_t c, const float* xp, int64_t kp, float* out,
                int64_t ldo) {
  switch (nb) {
    case 5: pixel_block<R, 5>(D, c, xp, kp, out, ldo); break;
    case 4: pixel_block<R, 4>(D, c, xp, kp, out, ldo); break;
    case 3: pixel_block<R, 3>(D, c, xp, kp, out, ldo); break;
    case 2: pixel_block<R, 2>(D, c, xp, kp, out, ldo); break;
    default: pixel_block<R, 1>(D, c, xp, kp, out, ldo); break;
  }
}

// S (N, atoms * K) of the covering-conv form from x (N, c * K) and a float32 D (atoms, c);
// scratch xp holds c * kp + 4 * kp floats.
void dictionary_pixels(const float* x, int64_t N, int64_t c, int64_t K, const float* D,
                       int64_t atoms, float* S, float* xp) {
  const int64_t kp = (K + 7) / 8 * 8, blocks = kp / 8;
  // Few pixel blocks per pass: more rows at once, so that ~8-10 accumulators hide latency.
  const int chunk = static_cast<int>(std::min<int64_t>(blocks, 5));
  const int rows = chunk >= 3 ? 2 : 4;
  float* tmp = xp + c * kp;
  for (int64_t n = 0; n < N; ++n) {
    const float* xn = x + n * c * K;
    for (int64_t k = 0; k < c; ++k) {
      std::memcpy(xp + k * kp, xn + k * K, sizeof(float) * K);
      std::memset(xp + k * kp + K, 0, sizeof(float) * (kp - K));
    }
    float* sn = S + n * atoms * K;
    for (int64_t q = 0; q < atoms; q += rows) {
      const int r_here = static_cast<int>(std::min<int64_t>(rows, atoms - q));
      for (int64_t b0 = 0; b0 < blocks; b0 += chunk) {
        const int nb = static_cast<int>(std::min<int64_t>(chunk, blocks - b0));
        const float* dq = D + q * c;
        float* o = tmp + 8 * b0;
        const float* xb = xp + 8 * b0;
        if (r_here == 4) {
          pixel_rows<4>(nb, dq, c, xb, kp, o, kp);
        } else if (r_here == 2) {
          pixel_rows<2>(nb, dq, c, xb, kp, o, kp);
        } else {
          for (int r = 0; r < r_here; ++r) pixel_rows<1>(nb, dq + r * c, c, xb, kp, o + r * kp, kp);
        }
      }
      for (int r = 0; r < r_here; ++r)
        std::memcpy(sn + (q + r) * K, tmp + r * kp, sizeof(float) * K);
    }
  }
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource& res) {
  DenseParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  std::vector<MXTensor>& in = *inputs;
  const std::vector<const char*> names = input_names(p);
  const size_t n_in = names.size(), off = p.with_dictionary ? 1 : 0;
  if (in.size() != n_in || outputs->size() != 1) {
    MX_ERROR_MSG << kOp << ": expected " << n_in << " inputs and 1 output";
    return MX_FAIL;
  }
  for (size_t k = 0; k < n_in; ++k) {
    if (in[k].ctx.dev_type != "cpu") {
      MX_ERROR_MSG << kOp << ": only CPU is supported, input '" << names[k] << "' is on "
                   << in[k].ctx.dev_type;
      return MX_FAIL;
    }
  }
  const std::vector<int64_t>& ds = in[0].shape;
  MXTensor &t_indptr = in[1 + off], &t_index = in[2 + off], &t_value = in[3 + off];
  const int64_t atoms = p.d / p.pixels;
  const bool data_ok = ds.size() == 2 &&
      (p.with_dictionary ? ds[1] % p.pixels == 0 &&
                               in[1].shape == std::vector<int64_t>{atoms, ds[1] / p.pixels} &&
                               in[1].dtype == p.weight_dtype
                         : ds[1] == p.d);
  if (!data_ok || t_indptr.shape.size() != 1 || t_indptr.shape[0] != p.units + 1 ||
      t_index.shape.size() != 1 || t_value.shape != t_index.shape ||
      (!p.no_bias && (in[4 + off].shape.size() != 1 || in[4 + off].shape[0] != p.units)) ||
      (*outputs)[0].shape != std::vector<int64_t>{ds[0], p.units}) {
    MX_ERROR_MSG << kOp << ": input shapes do not match the attributes (data "
                 << shape_str(ds) << ", indptr " << shape_str(t_indptr.shape) << ")";
    return MX_FAIL;
  }
  const int32_t* indptr = t_indptr.data<int32_t>();
  const int32_t* dict_index = t_index.data<int32_t>();
  const float* value = t_value.data<float>();
  const float* bias = p.no_bias ? nullptr : in[4 + off].data<float>();
  if (!check_no_alias(kOp, names, in, *outputs)) return MX_FAIL;
  if (!check_packed(kOp, indptr, p.units, t_index.shape[0], dict_index, p.d, nullptr, 0))
    return MX_FAIL;
  const int64_t N = ds[0], d = p.d, units = p.units;
  float* O = (*outputs)[0].data<float>();
  if (N == 0) return MX_SUCCESS;

  // One scratch allocation per call (alloc_cpu hands out one workspace): S when the op
  // computes it, the padded input map of the covering form, the batched path's transposes.
  const int64_t K = p.pixels, kp = (K + 7) / 8 * 8, channels = ds[1] / K;
  const int64_t s_floats = p.with_dictionary ? N * d : 0;
  // The covering form widens a float16 D once per call (it is read once per pixel block).
  const int64_t wide_floats = p.with_dictionary && K > 1 && p.weight_dtype !=
      mxnet::ext::kFloat32 ? atoms * channels : 0;
  const int64_t pad_floats = p.with_dictionary && K > 1 ? channels * kp + 4 * kp + wide_floats
                                                        : 0;
  const int64_t np = (N + 7) / 8 * 8;
  const int64_t batch_floats = N >= 8 ? (d + units) * np : 0;
  const int64_t floats = s_floats + pad_floats + batch_floats;
  if (static_cast<double>(sizeof(float)) * (floats + kSlack) > INT_MAX / 2) {
    MX_ERROR_MSG << kOp << ": input " << shape_str(ds) << " is too large for one call";
    return MX_FAIL;
  }
  float* scratch = nullptr;
  if (floats > 0) {
    scratch = static_cast<float*>(res.alloc_cpu(static_cast<int>(sizeof(float) * floats)));
    if (!scratch) {
      MX_ERROR_MSG << kOp << ": could not allocate scratch memory";
      return MX_FAIL;
    }
  }
  const float* S = in[0].data<float>();
  if (p.with_dictionary) {
    float* s_out = scratch;
    const bool half = p.weight_dtype == mxnet::ext::kFloat16;
    if (K == 1 && half) {
      dense_product(S, N, channels, in[1].data<half_bits>(), d, nullptr, false, s_out, d);
    } else if (K == 1) {
      dense_product(S, N, channels, in[1].data<float>(), d, nullptr, false, s_out, d);
    } else {
      const float* dict = in[1].data<float>();
      float* pad = scratch + s_floats;
      if (half) {
        float* wide = pad + pad_floats - wide_floats;
        const half_bits* h = in[1].data<half_bits>();
        const int64_t count = atoms * channels;
        int64_t i = 0;
        for (; i + 8 <= count; i += 8) *reinterpret_cast<v8u*>(wide + i) = load8(h + i);
        for (; i < count; ++i) wide[i] = half_to_float(h[i]);
        dict = wide;
      }
      dictionary_pixels(S, N, channels, K, dict, atoms, s_out, pad);
    }
    S = s_out;
  }
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
  // to 64 samples held in registers (independent accumulators, one pass over the row). Then
  // the output transposed, Ot (units, Np), written with vector stores and transposed at the end
  // (writing O column by column would hit one cache set per unit: rows are units * 4 bytes
  // apart).
  float* st = scratch + s_floats + pad_floats;
  float* ot = st + d * np;
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
