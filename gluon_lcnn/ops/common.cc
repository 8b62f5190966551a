// Attribute parsing and validation shared by the LCNN sparse operators (see common.h).
#include "common.h"

#include <cctype>
#include <cstdlib>
#include <sstream>
#include <type_traits>

namespace lcnn {

static bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }
static bool is_digit(char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; }

static void skip_space(const std::string& s, size_t* i) {
  while (*i < s.size() && is_space(s[*i])) ++*i;
}

// One decimal integer from s[*i]: white space, an optional sign, at least one digit; false
// (nothing consumed) on anything else or when it does not fit int64_t.
static bool read_int(const std::string& s, size_t* i, int64_t* out) {
  size_t k = *i;
  skip_space(s, &k);
  bool neg = false;
  if (k < s.size() && (s[k] == '+' || s[k] == '-')) neg = s[k++] == '-';
  if (k >= s.size() || !is_digit(s[k])) return false;
  const uint64_t limit = neg ? uint64_t(INT64_MAX) + 1 : uint64_t(INT64_MAX);
  uint64_t v = 0;
  for (; k < s.size() && is_digit(s[k]); ++k) {
    const uint64_t digit = static_cast<uint64_t>(s[k] - '0');
    if (v > (limit - digit) / 10) return false;
    v = v * 10 + digit;
  }
  *out = neg ? static_cast<int64_t>(0 - v) : static_cast<int64_t>(v);
  *i = k;
  return true;
}

bool parse_int(const std::string& text, int64_t* out) {
  size_t i = 0;
  if (!read_int(text, &i, out)) return false;
  skip_space(text, &i);
  return i == text.size();
}

bool parse_tuple(const std::string& text, std::vector<int64_t>* out) {
  out->clear();
  const size_t n = text.size();
  size_t i = 0;
  int64_t v = 0;
  skip_space(text, &i);
  if (i < n && (is_digit(text[i]) || text[i] == '-')) {  // a bare integer
    if (!parse_int(text, &v)) return false;
    out->push_back(v);
    return true;
  }
  if (i >= n || (text[i] != '(' && text[i] != '[')) return false;
  ++i;
  skip_space(text, &i);
  const auto closes = [&](size_t k) { return k < n && (text[k] == ')' || text[k] == ']'); };
  if (closes(i)) {
    ++i;
  } else {
    for (;;) {
      if (!read_int(text, &i, &v)) return false;
      out->push_back(v);
      skip_space(text, &i);
      if (i < n && text[i] == 'L') ++i;  // Python 2 longs, e.g. "(3L, 3L)"
      if (i >= n) return false;
      const char c = text[i++];
      if (c == ')' || c == ']') break;
      if (c != ',') return false;
      skip_space(text, &i);
      if (closes(i)) {  // a trailing comma, e.g. "(3,)"
        ++i;
        break;
      }
    }
  }
  skip_space(text, &i);
  return i == n;
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
  int64_t v = 0;
  if (!parse_int(it->second, &v)) {
    MX_ERROR_MSG << op << ": attribute " << key << "='" << it->second
                 << "' is not an integer";
    return false;
  }
  if (v < lo || v > hi) {
    MX_ERROR_MSG << op << ": attribute " << key << "=" << v << " is out of range ["
                 << lo << ", " << hi << "]";
    return false;
  }
  *out = v;
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
  if (!parse_tuple(it->second, &v)) {
    MX_ERROR_MSG << op << ": attribute " << key << "='" << it->second
                 << "' is not an int or a pair of ints: malformed (write e.g. 3 or (3, 3))";
    return false;
  }
  if (v.empty() || v.size() > 2) {
    MX_ERROR_MSG << op << ": attribute " << key << "='" << it->second
                 << "' is not an int or a pair of ints: it holds " << v.size() << " values";
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
  std::string s = it->second;
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (s == "true" || s == "1") {
    *out = true;
  } else if (s == "false" || s == "0") {
    *out = false;
  } else {
    MX_ERROR_MSG << op << ": attribute " << key << "='" << it->second << "' is not a boolean";
    return false;
  }
  return true;
}

bool get_weight_dtype(const char* op, const Attrs& attrs, const char* key, int* out) {
  auto it = attrs.find(key);
  if (it == attrs.end() || it->second == "float32") {
    *out = mxnet::ext::kFloat32;
  } else if (it->second == "float16") {
    *out = mxnet::ext::kFloat16;
  } else {
    MX_ERROR_MSG << op << ": attribute " << key << "='" << it->second
                 << "' is not a weight type: use 'float32' or 'float16'";
    return false;
  }
  return true;
}

template <typename T>
static std::string join_shape(const std::vector<T>& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    os << (i ? ", " : "");
    if (std::is_same<T, unsigned int>::value && shape[i] == static_cast<T>(kUnknownDim)) {
      os << "?";
    } else {
      os << shape[i];
    }
  }
  os << (shape.size() == 1 ? ",)" : ")");
  return os.str();
}

std::string shape_str(const std::vector<unsigned int>& shape) { return join_shape(shape); }
std::string shape_str(const std::vector<int64_t>& shape) { return join_shape(shape); }

bool check_known(const char* op, const char* name, const std::vector<unsigned int>& shape) {
  for (unsigned int dim : shape) {
    if (dim == kUnknownDim) {
      MX_ERROR_MSG << op << ": input '" << name << "' has an unknown dimension, shape "
                   << shape_str(shape) << "; under MXNet's default shape semantics a 0 in a "
                   << "shape means unknown, so zero-size inputs need mx.util.set_np_shape(True)";
      return false;
    }
  }
  return true;
}

static int64_t dtype_bytes(int t) {
  switch (t) {
    case mxnet::ext::kFloat64: case mxnet::ext::kInt64: return 8;
    case mxnet::ext::kFloat32: case mxnet::ext::kInt32: return 4;
    case mxnet::ext::kFloat16: return 2;
    default: return 1;
  }
}

bool check_no_alias(const char* op, const std::vector<const char*>& names,
                    const std::vector<MXTensor>& inputs, const std::vector<MXTensor>& outputs) {
  for (const MXTensor& out : outputs) {
    const int64_t out_size = out.size();
    if (out_size <= 0) continue;
    const uintptr_t o0 = reinterpret_cast<uintptr_t>(out.data_ptr);
    const uintptr_t o1 = o0 + static_cast<uintptr_t>(out_size * dtype_bytes(out.dtype));
    for (size_t k = 0; k < inputs.size(); ++k) {
      const int64_t in_size = inputs[k].size();
      if (in_size <= 0) continue;
      const uintptr_t i0 = reinterpret_cast<uintptr_t>(inputs[k].data_ptr);
      const uintptr_t i1 = i0 + static_cast<uintptr_t>(in_size * dtype_bytes(inputs[k].dtype));
      if (o0 < i1 && i0 < o1) {
        MX_ERROR_MSG << op << ": the output shares memory with input '"
                     << (k < names.size() ? names[k] : "?") << "' (out= names an input or a "
                     << "view of one); write to a separate array";
        return false;
      }
    }
  }
  return true;
}

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
