"""The C++ sparse-lookup operator library (inference only: forward, CPU), with a max pool and a
dense layer for float16 weights.

``load()`` builds ``liblcnn_ops.so`` when it is missing or older than its sources and registers
its operators with MXNet once; ``import gluon_lcnn`` calls it. Afterwards these exist in
``mx.nd``, ``mx.sym`` and as ``F.<op>`` in ``hybrid_forward``:

``lcnn_sparse_conv(data, [dictionary,] indptr, dict_index, kernel_offset, value[, bias],
num_filter=m, dictionary_size=d, kernel=(kh, kw), stride=(1, 1), pad=(0, 0), relu=False,
no_bias=False, with_dictionary=False)``
    data S (N, d, H, W) float32 -> (N, m, H', W'); with ``with_dictionary=True`` data is x
    (N, c, H, W) and the op first computes S = D x with the dictionary (d, c, 1, 1). The lookup
    tensor P (m, d, kh, kw) comes packed by ``gluon_lcnn.nn.sparse.pack_lookup``: compressed
    rows per output channel (indptr int32 (m+1,)), and per non-zero its dictionary index
    (int32), kernel offset i*kw + j (int32) and value (float32).
``lcnn_sparse_dense(data, [dictionary,] indptr, dict_index, value[, bias], num_hidden=u,
dictionary_size=d, relu=False, no_bias=False, with_dictionary=False, pixels=1,
weight_dtype='float32')``
    data (N, d) float32 -> (N, u) with P (u, d) packed the same way (no kernel offsets). With
    ``with_dictionary=True`` data is x (N, c * pixels) and the op first computes S = D x with
    the dictionary (d / pixels, c) stored as ``weight_dtype`` (float32 or float16); pixels > 1
    is a conv whose kernel covers its input, x its flattened (c, kh, kw) map.
``lcnn_dense(data, weight[, bias], num_hidden=u, relu=False, no_bias=False,
weight_dtype='float32')``
    data (N, in) float32 -> (N, u), weight (u, in) float32 or float16 (widened in registers,
    float32 arithmetic): the dense layers of ``to_inference(..., weight_dtype='float16')``.
``lcnn_max_pool(data, kernel=(kh, kw), stride=(1, 1), pad=(0, 0))``
    data (N, C, H, W) float32 -> (N, C, H', W'), max pooling as MXNet's Pooling(pool_type='max',
    pooling_convention='valid') computes it (padding never wins; pad < kernel); for the
    plain-NCHW output of lcnn_sparse_conv, which MKLDNN's pooling handles slowly.

Malformed inputs (bad indices, inconsistent indptr, wrong shapes or attributes) raise an
MXNetError naming the problem; attribute strings follow the grammar of MXNet's own operator
parameters ("3", "(3, 3)", "[3,3]"; not "3 3" or "(3,,3)"). So does ``out=`` naming an input or a
view of one. Empty inputs need numpy shape semantics (``mx.util.set_np_shape(True)``; MXNet's
default reads a 0 in a shape as unknown, and the ops refuse unknown dimensions). An empty batch
(for lcnn_max_pool also channels) gives an empty result; lcnn_max_pool refuses an empty height or
width (windows of padding only); lcnn_sparse_conv computes an empty height, width or fused input
channel axis as a zero-padded convolution does: the bias. The fused ``relu=True`` is MXNet's
relu on every path: NaN stays NaN. There is no backward: train with gluon_lcnn.nn.LookupConv2D.

Set ``GLUON_LCNN_OPS_LIB=/path/to/liblcnn_ops.so`` to load a prebuilt library instead (no build).
"""
import os
import sys
import threading

import mxnet as mx

__all__ = ['load', 'autoload', 'lib_path', 'OP_NAMES']

OP_NAMES = ('lcnn_sparse_conv', 'lcnn_sparse_dense', 'lcnn_max_pool', 'lcnn_dense')
_lock = threading.Lock()
_loaded = False


def lib_path():
    """Where the operator library lives (it may not be built yet)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), 'liblcnn_ops.so')


def load():
    """Build (if needed) and load the operator library once; return its path.

    Raises ``gluon_lcnn.ops.build.BuildError`` when the library is missing or stale and cannot
    be compiled (no C++ compiler, compile error).
    """
    global _loaded
    with _lock:
        if _loaded:
            return lib_path()
        from .build import BuildError, build
        path = os.environ.get('GLUON_LCNN_OPS_LIB')
        if path:  # a prebuilt (e.g. sanitizer) library, used as is
            path = os.path.abspath(path)
        else:
            try:
                path = build()
            except BuildError as err:
                raise BuildError('gluon_lcnn needs its C++ operator library: %s' % err) from None
        mx.library.load(path, verbose=False)
        _loaded = True
        return path


def autoload():
    """``load()`` as ``import gluon_lcnn`` runs it: skipped inside ``python -m
    gluon_lcnn.ops.build`` itself, which would otherwise compile twice."""
    if 'gluon_lcnn.ops.build' not in getattr(sys, 'orig_argv', ()):
        load()


autoload()
