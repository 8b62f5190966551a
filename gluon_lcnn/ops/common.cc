// Attribute parsing and validation shared by the LCNN sparse operators (see common.h).
#include "common.h"

#include <cctype>
#include <cstdlib>
#include <sstream>

namespace lcnn {

bool parse_int_list(const std::string& text, std::vector<int64_t>* out) {
  out->clear();
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const char c = text[i];
    if (c == '(' || c == ')' || c == '[' || c == ']' || c == ',' || c == 'L' ||
        std::isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    if (c != '-' && c != '+' && !std::isdigit(static_cast<unsigned char>(c))) return false;
    const char* begin = text.c_str() + i;
    char* end = nullptr;
    const long long v = std::strtoll(begin, &end, 10);
    if (end == begin) return false;
    out->push_back(static_cast<int64_t>(v));
    i += static_cast<size_t>(end - begin);
  }
  return true;
}

bool get_int(const char* op, const Attrs& attrs, const char* key, bool has_default,
             int64_t def, int64_t lo, int64_t hi, int64_t* out) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    if (!has_default) {
      MX_ERROR_MSG << op << ": missing required attribute '" << key << "'";
      return false;
    }
    *out = def;
    return true;
  }
  std::vector<int64_t> v;
  if (!parse_int_list(it->second, &v) || v.size() != 1) {
    MX_ERROR_MSG << op << ": attribute " << key << "='" << it->second
                 << "' is not an integer";
    return false;
  }
  if (v[0] < lo || v[0] > hi) {
    MX_ERROR_MSG << op << ": attribute " << key << "=" << v[0] << " is out of range ["
                 << lo << ", " << hi << "]";
    return false;
  }
  *out = v[0];
  return true;
}

bool get_pair(const char* op, const Attrs& attrs, const char* key, bool has_default,
              int64_t def, int64_t lo, int64_t hi, int64_t out[2]) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    if (!has_default) {
      MX_ERROR_MSG << op << ": missing required attribute '" << key << "'";
      return false;
    }
    out[0] = out[1] = def;
    return true;
  }
  std::vector<int64_t> v;
  if (!parse_int_list(it->second, &v) || v.empty() || v.size() > 2) {
    MX_ERROR_MSG << op << ": attribute " << key << "='" << it->second
                 << "' is not an int or a pair of ints";
    return false;
  }
  out[0] = v[0];
  out[1] = v.size() == 2 ? v[1] : v[0];
  for (int k = 0; k < 2; ++k) {
    if (out[k] < lo || out[k] > hi) {
      MX_ERROR_MSG << op << ": attribute " << key << "='" << it->second
                   << "' has a value out of range [" << lo << ", " << hi << "]";
      return false;
    }
  }
  return true;
}

bool get_bool(const char* op, const Attrs& attrs, const char* key, bool def, bool* out) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    *out = def;
    return true;
  }
  const std::string& s = it->second;
  if (s == "True" || s == "true" || s == "1") {
    *out = true;
  } else if (s == "False" || s == "false" || s == "0") {
    *out = false;
  } else {
    MX_ERROR_MSG << op << ": attribute " << key << "='" << s << "' is not a boolean";
    return false;
  }
  return true;
}

template <typename T>
static std::string join_shape(const std::vector<T>& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << (shape.size() == 1 ? ",)" : ")");
  return os.str();
}

std::string shape_str(const std::vector<unsigned int>& shape) { return join_shape(shape); }
std::string shape_str(const std::vector<int64_t>& shape) { return join_shape(shape); }

static const char* dtype_name(int t) {
  switch (t) {
    case mxnet::ext::kFloat32: return "float32";
    case mxnet::ext::kFloat64: return "float64";
    case mxnet::ext::kFloat16: return "float16";
    case mxnet::ext::kUint8: return "uint8";
    case mxnet::ext::kInt32: return "int32";
    case mxnet::ext::kInt8: return "int8";
    case mxnet::ext::kInt64: return "int64";
    default: return "unknown";
  }
}

bool check_types(const char* op, const std::vector<const char*>& names,
                 const std::vector<int>& want, std::vector<int>* in_types) {
  if (in_types->size() != want.size()) {
    MX_ERROR_MSG << op << ": expected " << want.size() << " inputs, got " << in_types->size();
    return false;
  }
  for (size_t i = 0; i < want.size(); ++i) {
    int& t = (*in_types)[i];
    if (t < 0 || t == mxnet::ext::kUNSET) {
      t = want[i];
    } else if (t != want[i]) {
      MX_ERROR_MSG << op << ": input '" << names[i] << "' must be " << dtype_name(want[i])
                   << ", got " << dtype_name(t);
      return false;
    }
  }
  return true;
}

bool check_packed(const char* op, const int32_t* indptr, int64_t rows, int64_t entries,
                  const int32_t* dict_index, int64_t dict_size, const int32_t* kernel_offset,
                  int64_t kernel_size) {
  if (indptr[0] != 0) {
    MX_ERROR_MSG << op << ": inconsistent indptr: indptr[0]=" << indptr[0] << " must be 0";
    return false;
  }
  for (int64_t r = 0; r < rows; ++r) {
    if (indptr[r + 1] < indptr[r]) {
      MX_ERROR_MSG << op << ": inconsistent indptr: not non-decreasing at row " << r
                   << " (indptr[" << r << "]=" << indptr[r] << ", indptr[" << r + 1
                   << "]=" << indptr[r + 1] << ")";
      return false;
    }
  }
  const int64_t nnz = indptr[rows];
  const int64_t expect = nnz > 0 ? nnz : 1;
  if (entries != expect) {
    MX_ERROR_MSG << op << ": nnz mismatch: indptr[-1]=" << nnz << " non-zeros but the entry "
                 << "arrays hold " << entries << " (expected " << expect << ")";
    return false;
  }
  // A branch-free pass first (vectorises: this runs on every call); the slow loop below only
  // locates the offending entry for the message.
  const uint32_t dmax = static_cast<uint32_t>(dict_size), kmax = static_cast<uint32_t>(kernel_size);
  uint32_t bad = 0;
  for (int64_t e = 0; e < entries; ++e) bad |= static_cast<uint32_t>(dict_index[e]) >= dmax;
  if (kernel_offset) {
    for (int64_t e = 0; e < entries; ++e) bad |= static_cast<uint32_t>(kernel_offset[e]) >= kmax;
  }
  if (!bad) return true;
  for (int64_t e = 0; e < entries; ++e) {
    if (dict_index[e] < 0 || dict_index[e] >= dict_size) {
      MX_ERROR_MSG << op << ": bad dictionary index: dict_index[" << e << "]=" << dict_index[e]
                   << " is outside [0, " << dict_size << ")";
      return false;
    }
    if (kernel_offset && (kernel_offset[e] < 0 || kernel_offset[e] >= kernel_size)) {
      MX_ERROR_MSG << op << ": bad kernel offset: kernel_offset[" << e << "]="
                   << kernel_offset[e] << " is outside [0, " << kernel_size << ")";
      return false;
    }
  }
  return true;
}

MXReturnValue inference_only(const char* op, const char* train_with) {
  MX_ERROR_MSG << op << " is inference only and has no backward; train with " << train_with
               << " and convert with gluon_lcnn.deploy";
  return mxnet::ext::MX_FAIL;
}

}  // namespace lcnn
