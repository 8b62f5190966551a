// Library entry point: MXNet calls initialize() from mx.library.load() before registering ops.
#include "mxnet/lib_api.h"

mxnet::ext::MXReturnValue initialize(int version) {
  if (version >= 10900) return mxnet::ext::MX_SUCCESS;
  MX_ERROR_MSG << "liblcnn_ops needs MXNet >= 1.9.0, this is version " << version;
  return mxnet::ext::MX_FAIL;
}
