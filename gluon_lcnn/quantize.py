"""int8 quantization of a dense net with MXNet's MKLDNN backend, as a baseline for LCNN.

``quantize_int8`` is what a user would otherwise pick to speed up a trained dense net on a CPU;
``gluon_lcnn.compare`` times it in the same run as the dense twin and the LCNN model.
"""
import os
import tempfile
import warnings

import mxnet as mx
import numpy as np
from mxnet.contrib import quantization
from mxnet.gluon import HybridBlock, SymbolBlock

from .nn.lookup import LookupConv2D, LookupDense
from .nn.sparse import SparseLookupConv2D, SparseLookupDense

__all__ = ['quantize_int8', 'CALIB_MODES', 'QUANTIZED_DTYPES']

CALIB_MODES = ('naive', 'entropy')
QUANTIZED_DTYPES = ('auto', 'int8', 'uint8')
# CoveringConv may hold a plain Dense (deploy's 'dense_fc'); a sparse one inside is found too.
_LCNN_LAYERS = (LookupConv2D, LookupDense, SparseLookupConv2D, SparseLookupDense)


def quantize_int8(net, calib_data, input_shape=None, calib_mode='naive', num_calib_batches=None,
                  exclude_layers=None, ctx=None, quantized_dtype='auto', exclude_operators=None):
    """The int8-quantized inference form of a trained dense ``net`` (MXNet 1.9 MKLDNN).

    Built with ``mx.contrib.quantization.quantize_net_v2`` (what ``quantize_net`` calls), in
    'full' mode, tensor-wise: the graph is first rewritten by the MKLDNN subgraph backend, which
    fuses Convolution + BatchNorm + ReLU (+ an elementwise sum of a residual branch) and
    FullyConnected + a directly following ReLU into single operators (a BatchNorm after a
    FullyConnected is not folded: it runs as an int8 BatchNorm; ``deploy.to_inference`` of
    the dense net folds it first); then every operator with an int8 kernel (those fused
    convolutions and fully connected layers, pooling, flatten, BatchNorm, concat) runs in int8,
    with its output range taken from the calibration data: ``'naive'`` uses the min and max
    seen, ``'entropy'`` the threshold minimizing the KL divergence from the fp32 outputs
    (better for long-tailed activations, slower to calibrate). Dropout disappears (an identity
    at inference). Operators without an int8 kernel (softmax, custom ops such as
    ``LcnnMaxPool``'s ``lcnn_max_pool``) and layers named in ``exclude_layers`` stay fp32
    between a dequantize and a quantize. MXNet does not exclude any layer by itself: the first
    convolution is quantized too, its input as int8 when the calibration data has negative
    values (``quantized_dtype='auto'``, normalized images) and as uint8 otherwise.
    Calibration data should be real training images, preprocessed as at inference: the ranges
    of random inputs are not those of real activations.

    Parameters
    ----------
    net : HybridBlock
        Trained dense net with initialized parameters; left unchanged (a copy is quantized).
        LCNN layers are refused: quantize the dense net, or give the LCNN net's layers their
        dense form first with ``deploy.to_inference(net, choose='dense')``.
    calib_data : NDArray, numpy array, list of them, or iterable
        One batch, a list of batches, or a gluon DataLoader / any iterable of batches or of
        (data, label, ...) tuples (only the data is used). Batches of different sizes are
        joined and cut into batches of the first one's size, a short rest dropped (MXNet's
        calibration module is bound to one shape).
    input_shape : tuple, optional
        Expected (N, C, H, W) of the net's input: the calibration data must match its
        per-sample shape (C, H, W).
    calib_mode : {'naive', 'entropy'}
        How each layer's int8 range is chosen from the calibration outputs (above).
    num_calib_batches : int, optional
        Use at most this many calibration batches (default all).
    exclude_layers : list of str, optional
        Names of graph nodes to keep in fp32, e.g. ``'alexnet0_conv0_fwd'`` (node names of the
        traced symbol, ``net(mx.sym.var('data')).get_internals()``).
    ctx : Context, optional
        CPU context (the MKLDNN backend); default ``mx.cpu()``.
    quantized_dtype : {'auto', 'int8', 'uint8'}
        Type of quantized activations: 'auto' picks uint8 where the calibrated range is
        non-negative (after a ReLU) and int8 elsewhere.
    exclude_operators : list of str, optional
        Operator types to keep in fp32, e.g. ``['FullyConnected']``.

    Returns
    -------
    SymbolBlock
        Input ``'data'`` (float32), output the net's (float32) logits; hybridizes,
        ``export()``s and loads back with ``SymbolBlock.imports`` like any block.
    """
    if calib_mode not in CALIB_MODES:
        raise ValueError('quantize_int8: calib_mode must be one of %s, got %r'
                         % (CALIB_MODES, calib_mode))
    if quantized_dtype not in QUANTIZED_DTYPES:
        raise ValueError('quantize_int8: quantized_dtype must be one of %s, got %r'
                         % (QUANTIZED_DTYPES, quantized_dtype))
    if num_calib_batches is not None and (isinstance(num_calib_batches, bool) or
                                          not isinstance(num_calib_batches, (int, np.integer))
                                          or num_calib_batches < 1):
        raise ValueError('quantize_int8: num_calib_batches must be a positive int or None, '
                         'got %r' % (num_calib_batches,))
    ctx = ctx or mx.cpu()
    if ctx.device_type != 'cpu':
        raise ValueError('quantize_int8: the MKLDNN int8 backend runs on the CPU, got ctx=%s'
                         % (ctx,))
    _check_net(net)
    batches = _calibration_batches(calib_data, num_calib_batches, input_shape)
    copy, names = _symbol_copy(net, ctx)
    for option, values in (('exclude_layers', exclude_layers),
                           ('exclude_operators', exclude_operators)):
        if values is not None and (isinstance(values, str) or
                                   not all(isinstance(v, str) for v in values)):
            raise ValueError('quantize_int8: %s must be a list of str, got %r' % (option, values))
    unknown = [name for name in exclude_layers or () if name not in names]
    if unknown:
        raise ValueError('quantize_int8: exclude_layers %s are not nodes of the net (nodes: %s)'
                         % (unknown, ', '.join(n for n in names if n.endswith('_fwd'))))
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Cannot decide type')  # of 'data': harmless
        # quantize_net_v2 wraps an iterable whose items are lists of data arrays.
        return quantization.quantize_net_v2(
            copy, quantized_dtype=quantized_dtype, quantize_mode='full',
            quantize_granularity='tensor-wise', exclude_layers=list(exclude_layers or []),
            exclude_operators=list(exclude_operators or []),
            calib_data=[[b] for b in batches], calib_mode=calib_mode, ctx=ctx)


def _check_net(net):
    if not isinstance(net, HybridBlock):
        raise ValueError('quantize_int8: expected a gluon HybridBlock (MXNet quantizes its '
                         'traced graph), got %s' % type(net).__name__)
    lcnn = []
    net.apply(lambda b: lcnn.append(b.name) if isinstance(b, _LCNN_LAYERS) else None)
    if lcnn:
        raise ValueError('quantize_int8: the net has LCNN layers (%s); int8 is a baseline for '
                         'the dense net: quantize the dense twin, or give the lookup layers '
                         "their dense form first with deploy.to_inference(net, choose='dense')"
                         % (', '.join(lcnn[:3]) + (', ...' if len(lcnn) > 3 else '')))
    for name, p in net.collect_params().items():
        if p._data is None:
            raise ValueError('quantize_int8: parameter %s is not initialized (deferred shape?); '
                             'initialize the net and run one forward pass first' % name)


def _as_batch(item, index):
    """One calibration batch as a float32 NDArray on the CPU."""
    if isinstance(item, (tuple, list)):   # (data, label, ...): a DataLoader's items
        if not item:
            raise ValueError('quantize_int8: calibration item %d is empty' % index)
        item = item[0]
    if isinstance(item, np.ndarray):
        item = mx.nd.array(item)
    if not isinstance(item, mx.nd.NDArray):
        raise ValueError('quantize_int8: calibration batch %d is a %s; expected an NDArray or '
                         'numpy array (or a (data, label) pair of them)'
                         % (index, type(item).__name__))
    return item.astype('float32', copy=False).as_in_context(mx.cpu())


def _calibration_batches(calib_data, limit, input_shape):
    """Calibration data -> list of NDArray batches of one shape (see quantize_int8)."""
    if calib_data is None:
        raise ValueError('quantize_int8: calib_data is required (real training images)')
    if isinstance(calib_data, (mx.nd.NDArray, np.ndarray)):
        items = [calib_data]
    else:
        try:
            items = iter(calib_data)
        except TypeError:
            raise ValueError('quantize_int8: calib_data must be an NDArray, a list of batches or '
                             'an iterable such as a DataLoader, got %s'
                             % type(calib_data).__name__) from None
    batches = []
    for index, item in enumerate(items):
        if limit is not None and len(batches) >= limit:
            break
        batch = _as_batch(item, index)
        if batch.ndim < 2 or batch.shape[0] == 0 or batch.size == 0:
            raise ValueError('quantize_int8: calibration batch %d has shape %s; expected '
                             '(N, C, H, W) with N >= 1' % (index, batch.shape))
        if batches and batch.shape[1:] != batches[0].shape[1:]:
            raise ValueError('quantize_int8: calibration batch %d has shape %s, batch 0 %s'
                             % (index, batch.shape, batches[0].shape))
        batches.append(batch)
    if not batches:
        raise ValueError('quantize_int8: calib_data is empty (no calibration batch)')
    if input_shape is not None and tuple(batches[0].shape[1:]) != tuple(input_shape[1:]):
        raise ValueError('quantize_int8: calibration batches have shape %s, input_shape %s'
                         % (batches[0].shape, tuple(input_shape)))
    if any(b.shape != batches[0].shape for b in batches):
        size = batches[0].shape[0]
        joined = mx.nd.concat(*batches, dim=0)
        batches = [joined[i:i + size] for i in range(0, joined.shape[0] - size + 1, size)]
    return batches


def _symbol_copy(net, ctx):
    """A SymbolBlock of ``net``'s traced graph with copies of its parameters; its node names."""
    data = mx.sym.var('data')
    try:
        out = net(data)
    except Exception as err:  # a hybrid_forward that cannot be traced
        raise ValueError('quantize_int8: the net cannot be traced as a symbol (%s: %s)'
                         % (type(err).__name__, err)) from None
    if isinstance(out, (list, tuple)):
        out = mx.sym.Group(list(out))
    source = {p.name: p for p in net.collect_params().values()}
    params = {}
    for name in out.list_arguments():
        if name != 'data':
            params['arg:' + name] = source[name].data().copyto(ctx)
    for name in out.list_auxiliary_states():
        params['aux:' + name] = source[name].data().copyto(ctx)
    with tempfile.TemporaryDirectory() as tmp:
        # SymbolBlock.imports is Gluon's one public way to fill a SymbolBlock's parameters.
        mx.nd.save(os.path.join(tmp, 'net-0000.params'), params)
        out.save(os.path.join(tmp, 'net-symbol.json'))
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='Cannot decide type')
            copy = SymbolBlock.imports(os.path.join(tmp, 'net-symbol.json'), ['data'],
                                       os.path.join(tmp, 'net-0000.params'), ctx=ctx)
    return copy, [node.name for node in out.get_internals()]
