// Shared helpers of the LCNN sparse operators: attribute parsing and input validation.
// Every failure writes a message naming the operator, input and value through MX_ERROR_MSG and
// returns false, so the caller can return MX_FAIL and MXNet raises an MXNetError with that text.
#ifndef GLUON_LCNN_OPS_COMMON_H_
#define GLUON_LCNN_OPS_COMMON_H_

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

namespace lcnn {

using mxnet::ext::MXDType;
using mxnet::ext::MXReturnValue;
using mxnet::ext::MXTensor;
using mxnet::ext::OpResource;
using Attrs = std::unordered_map<std::string, std::string>;
using Shapes = std::vector<std::vector<unsigned int> >;

// Floats one vector block of the kernels reads past a plane; scratch buffers carry this much
// zeroed slack so the last (partial) block never reads outside them.
constexpr int kSlack = 64;

// Attribute values are read with the grammar of MXNet's own operator parameters, so a string
// MXNet's Pooling or FullyConnected refuses is refused here too.
//   integer: optional white space, an optional sign, decimal digits, optional white space.
//   tuple:   a bare integer (no sign but '-'), or '(' or '[' then integers, each optionally
//            followed by 'L', separated by ',' with an optional trailing ',', closed by ')' or
//            ']'; white space around the items and at either end.
bool parse_int(const std::string& text, int64_t* out);
bool parse_tuple(const std::string& text, std::vector<int64_t>* out);

// Required (has_default = false) or optional integer attribute in [lo, hi].
bool get_int(const char* op, const Attrs& attrs, const char* key, bool has_default,
             int64_t def, int64_t lo, int64_t hi, int64_t* out);

// An int or 2-tuple attribute ("3" means (3, 3)), each value in [lo, hi].
bool get_pair(const char* op, const Attrs& attrs, const char* key, bool has_default,
              int64_t def, int64_t lo, int64_t hi, int64_t out[2]);

// Boolean attribute: true/false in any case, 1 or 0 (as MXNet reads booleans).
bool get_bool(const char* op, const Attrs& attrs, const char* key, bool def, bool* out);

// Storage type of a weight input: 'float32' (the default) or 'float16', as an MXDType.
bool get_weight_dtype(const char* op, const Attrs& attrs, const char* key, int* out);

// Shape as text "(a, b, c)" for messages; unknown dimensions (infer_shape only) print as "?".
std::string shape_str(const std::vector<unsigned int>& shape);
std::string shape_str(const std::vector<int64_t>& shape);

// How MXNet hands an unknown dimension to infer_shape (-1 as unsigned). Under MXNet's default,
// non-numpy shape semantics a 0 in a shape means unknown and arrives like this too.
constexpr unsigned int kUnknownDim = 0xFFFFFFFFu;

// Refuses a shape with unknown dimensions, with a message naming input `name`: the output shape
// could only carry them on as 4294967295 (the library API has no "unknown"), and an empty
// input under the default semantics would be taken for one of 4294967295 rows.
bool check_known(const char* op, const char* name, const std::vector<unsigned int>& shape);

// Refuses outputs whose memory overlaps an input's (out= naming an input or a view of one): the
// kernels write outputs while they still read inputs. Zero-size tensors overlap nothing.
bool check_no_alias(const char* op, const std::vector<const char*>& names,
                    const std::vector<MXTensor>& inputs, const std::vector<MXTensor>& outputs);

// Input types: each entry of `want` is the required MXDType; unknown (< 0) ones are filled in.
bool check_types(const char* op, const std::vector<const char*>& names,
                 const std::vector<int>& want, std::vector<int>* in_types);

// Checks the compressed rows of a packed lookup tensor before anything is read through them:
// indptr[0] == 0, non-decreasing, indptr[rows] == nnz and the entry arrays hold exactly
// max(nnz, 1) entries (one unused padding entry when nnz == 0, because MXNet 1.x reads a 0 in a
// shape as "unknown"), dict_index in [0, dict_size), kernel_offset (if given) in [0, kernel_size).
bool check_packed(const char* op, const int32_t* indptr, int64_t rows, int64_t entries,
                  const int32_t* dict_index, int64_t dict_size, const int32_t* kernel_offset,
                  int64_t kernel_size);

// The ops are forward only. Each registers a backward anyway, because a hybridized Gluon block or
// CachedOp always derives a gradient graph; running it fails with this message.
MXReturnValue inference_only(const char* op, const char* train_with);

}  // namespace lcnn

#endif  // GLUON_LCNN_OPS_COMMON_H_
