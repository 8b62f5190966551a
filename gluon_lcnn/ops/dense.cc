// lcnn_dense: a fully connected layer whose weight may be stored as float16 (inference only).
//
//   out[n, u] = bias[u] + sum_k weight[u, k] * data[n, k]     (optional fused ReLU)
//
// data (N, in) float32, weight (units, in) float32 or float16 (attribute weight_dtype), bias
// (units,) float32; the output is float32. deploy.to_inference(weight_dtype='float16') runs the
// dense layers of a net (AlexNet's classifier fc8) through it: at batch 1 such a layer streams
// its whole weight from memory for one matrix-vector product, so half the bytes is close to
// half the time. The product is dense_product.h's.
#include <climits>

#include "common.h"
#include "dense_product.h"

namespace {

using namespace lcnn;  // NOLINT
using mxnet::ext::MX_FAIL;
using mxnet::ext::MX_SUCCESS;

const char* const kOp = "lcnn_dense";
const char* const kNames[] = {"data", "weight", "bias"};

struct DenseParam {
  int64_t units;
  bool relu, no_bias;
  int weight_dtype;
};

bool parse(const Attrs& attrs, DenseParam* p) {
  return get_int(kOp, attrs, "num_hidden", false, 0, 1, INT_MAX / 4, &p->units) &&
         get_bool(kOp, attrs, "relu", false, &p->relu) &&
         get_bool(kOp, attrs, "no_bias", false, &p->no_bias) &&
         get_weight_dtype(kOp, attrs, "weight_dtype", &p->weight_dtype);
}

MXReturnValue parse_attrs(const Attrs& attrs, int* num_in, int* num_out) {
  DenseParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  *num_in = p.no_bias ? 2 : 3;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  DenseParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  std::vector<int> want = {mxnet::ext::kFloat32, p.weight_dtype};
  if (!p.no_bias) want.push_back(mxnet::ext::kFloat32);
  std::vector<const char*> names(kNames, kNames + want.size());
  if (!check_types(kOp, names, want, in_types)) return MX_FAIL;
  (*out_types)[0] = mxnet::ext::kFloat32;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const Attrs& attrs, Shapes* in, Shapes* out) {
  DenseParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  const size_t n_in = p.no_bias ? 2 : 3;
  if (in->size() != n_in) {
    MX_ERROR_MSG << kOp << ": expected " << n_in << " inputs, got " << in->size();
    return MX_FAIL;
  }
  if (!p.no_bias && (*in)[2].empty()) (*in)[2] = {static_cast<unsigned>(p.units)};
  for (size_t k = 0; k < n_in; ++k) {
    if (!check_known(kOp, kNames[k], (*in)[k])) return MX_FAIL;
  }
  const auto& data = (*in)[0];
  const auto& weight = (*in)[1];
  if (data.size() != 2) {
    MX_ERROR_MSG << kOp << ": data must be 2-D (N, in_units), got shape " << shape_str(data);
    return MX_FAIL;
  }
  if (weight.size() != 2 || weight[0] != p.units || weight[1] != data[1]) {
    MX_ERROR_MSG << kOp << ": weight must have shape (num_hidden, in_units) = (" << p.units
                 << ", " << data[1] << ") for data " << shape_str(data) << ", got "
                 << shape_str(weight);
    return MX_FAIL;
  }
  if (!p.no_bias && ((*in)[2].size() != 1 || (*in)[2][0] != p.units)) {
    MX_ERROR_MSG << kOp << ": bias must have shape (num_hidden,) = (" << p.units << ",), got "
                 << shape_str((*in)[2]);
    return MX_FAIL;
  }
  (*out)[0] = {data[0], static_cast<unsigned>(p.units)};
  return MX_SUCCESS;
}

MXReturnValue forward(const Attrs& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource&) {
  DenseParam p;
  if (!parse(attrs, &p)) return MX_FAIL;
  std::vector<MXTensor>& in = *inputs;
  const size_t n_in = p.no_bias ? 2 : 3;
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
  if (in[0].dtype != mxnet::ext::kFloat32 || in[1].dtype != p.weight_dtype ||
      (!p.no_bias && in[2].dtype != mxnet::ext::kFloat32) ||
      (*outputs)[0].dtype != mxnet::ext::kFloat32) {
    MX_ERROR_MSG << kOp << ": input types do not match weight_dtype (data, bias and output "
                 << "float32, weight as weight_dtype)";
    return MX_FAIL;
  }
  if (ds.size() != 2 || in[1].shape != std::vector<int64_t>{p.units, ds[1]} ||
      (!p.no_bias && in[2].shape != std::vector<int64_t>{p.units}) ||
      (*outputs)[0].shape != std::vector<int64_t>{ds[0], p.units}) {
    MX_ERROR_MSG << kOp << ": input shapes do not match the attributes (data "
                 << shape_str(ds) << ", weight " << shape_str(in[1].shape) << ")";
    return MX_FAIL;
  }
  if (!check_no_alias(kOp, std::vector<const char*>(kNames, kNames + n_in), in, *outputs))
    return MX_FAIL;
  const float* bias = p.no_bias ? nullptr : in[2].data<float>();
  float* out = (*outputs)[0].data<float>();
  if (p.weight_dtype == mxnet::ext::kFloat16) {
    dense_product(in[0].data<float>(), ds[0], ds[1], in[1].data<half_bits>(), p.units, bias,
                  p.relu, out, p.units);
  } else {
    dense_product(in[0].data<float>(), ds[0], ds[1], in[1].data<float>(), p.units, bias,
                  p.relu, out, p.units);
  }
  return MX_SUCCESS;
}

MXReturnValue backward(const Attrs&, std::vector<MXTensor>*, std::vector<MXTensor>*,
                       const OpResource&) {
  return inference_only(kOp, "gluon.nn.Dense");
}

REGISTER_OP(lcnn_dense)
    .setParseAttrs(parse_attrs)
    .setInferType(infer_type)
    .setInferShape(infer_shape)
    .setForward(forward, "cpu")
    .setBackward(backward, "cpu");

}  // namespace
