"""Trainable lookup layers: a small dictionary D plus a sparse lookup tensor P.

A convolution W (m, c, kh, kw) is written as W[r, :, i, j] = sum_q P[r, q, i, j] * D[q, :]:
D (d, c) is a 1x1 convolution c -> d without bias, P (m, d, kh, kw) a kh x kw convolution d -> m.
On every forward pass entries with |P| <= threshold are zeroed; they receive exactly zero
gradient, and surviving entries get an extra L1 pull `l1_lambda * threshold * sign(P)`, so P
grows sparse over training. threshold = initial_sparsity / sqrt(kh * kw * d) and P starts
uniform in +-1/sqrt(kh * kw * d). This file is the only place that math lives; the dense layer
is the 1x1, H = W = 1 case and reuses it.
"""
import math
from collections import OrderedDict

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock

__all__ = ['LookupConv2D', 'LookupDense', 'lookup_layers', 'density_report', 'lookup_threshold']

_ACTIVATIONS = ('relu', 'sigmoid', 'tanh', 'softrelu', 'softsign')


def lookup_threshold(initial_sparsity, fan_in):
    """Magnitude at or below which a lookup entry counts as zero; fan_in = kh * kw * d."""
    return float(initial_sparsity) / math.sqrt(fan_in)


class _ThresholdLookup(mx.operator.CustomOp):
    """out = P * (|P| > t); dL/dP = mask * (dL/dout + l1_lambda * t * sign(P) * batch)."""

    def __init__(self, threshold, l1_lambda):
        super().__init__()
        self.threshold = threshold
        self.l1_lambda = l1_lambda

    def forward(self, is_train, req, in_data, out_data, aux):
        lookup = in_data[0]
        self.assign(out_data[0], req[0], lookup * (mx.nd.abs(lookup) > self.threshold))

    def backward(self, req, out_grad, in_data, out_data, in_grad, aux):
        lookup = in_data[0]
        mask = mx.nd.abs(lookup) > self.threshold
        grad = out_grad[0]
        if self.l1_lambda:
            # Gluon's Trainer.step(batch_size) divides gradients by the batch size; multiplying
            # here makes the pull `l1_lambda * threshold` per step whatever the batch size.
            batch = float(in_data[1].asscalar())
            grad = grad + (self.l1_lambda * self.threshold * batch) * mx.nd.sign(lookup)
        self.assign(in_grad[0], req[0], grad * mask)
        self.assign(in_grad[1], req[1], mx.nd.zeros_like(in_data[1]))


@mx.operator.register('lcnn_threshold')
class _ThresholdLookupProp(mx.operator.CustomOpProp):
    def __init__(self, threshold, l1_lambda='0'):
        super().__init__(need_top_grad=True)
        self.threshold = float(threshold)
        self.l1_lambda = float(l1_lambda)

    def list_arguments(self):
        return ['lookup', 'batch']

    def list_outputs(self):
        return ['output']

    def infer_shape(self, in_shape):
        return [in_shape[0], (1,)], [in_shape[0]], []

    def infer_type(self, in_type):
        return [in_type[0], np.int64], [in_type[0]], []

    def declare_backward_dependency(self, out_grad, in_data, out_data):
        return [out_grad[0], in_data[0], in_data[1]]

    def create_operator(self, ctx, shapes, dtypes):
        return _ThresholdLookup(self.threshold, self.l1_lambda)


def _pair(value, name):
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError('%s must be an int or a pair of ints, got %r' % (name, value))
    return value


class _LookupLayer(HybridBlock):
    """What every lookup layer shares: parameters D and P, thresholding, density, validation."""

    def __init__(self, out_features, dictionary_size, in_features, kernel, use_bias, activation,
                 initial_sparsity, l1_lambda, **kwargs):
        super().__init__(**kwargs)
        if dictionary_size is None or int(dictionary_size) < 1:
            raise ValueError('%s: dictionary_size must be a positive int, got %r'
                             % (type(self).__name__, dictionary_size))
        if int(out_features) < 1:
            raise ValueError('%s: %s must be a positive int, got %r'
                             % (type(self).__name__, self._out_name, out_features))
        if int(in_features) < 0:
            raise ValueError('%s: %s must be >= 0 (0 = infer), got %r'
                             % (type(self).__name__, self._in_name, in_features))
        if activation is not None and activation not in _ACTIVATIONS:
            raise ValueError('%s: activation must be one of %s or None, got %r'
                             % (type(self).__name__, _ACTIVATIONS, activation))
        if not initial_sparsity >= 0:
            raise ValueError('%s: initial_sparsity must be >= 0, got %r'
                             % (type(self).__name__, initial_sparsity))
        if not l1_lambda >= 0:
            raise ValueError('%s: l1_lambda must be >= 0, got %r' % (type(self).__name__, l1_lambda))
        self._out_features = int(out_features)
        self._dictionary_size = int(dictionary_size)
        self._in_features = int(in_features)
        self._activation = activation
        self.initial_sparsity = float(initial_sparsity)
        self.l1_lambda = float(l1_lambda)
        fan_in = kernel[0] * kernel[1] * self._dictionary_size
        self.threshold = lookup_threshold(initial_sparsity, fan_in)
        with self.name_scope():
            self.dictionary = self.params.get(
                'dictionary', shape=self._dictionary_shape(),
                init=mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2),
                allow_deferred_init=True)
            self.lookup = self.params.get(
                'lookup', shape=self._lookup_shape(),
                init=mx.init.Uniform(1.0 / math.sqrt(fan_in)))
            self.bias = (self.params.get('bias', shape=(self._out_features,), init='zeros')
                         if use_bias else None)

    # Subclasses: parameter shapes, input checks and the two linear maps.
    _in_name = _out_name = ''

    def _dictionary_shape(self):
        raise NotImplementedError

    def _lookup_shape(self):
        raise NotImplementedError

    def _masked_lookup(self, F, x, lookup):
        """P with the threshold applied; its backward carries the mask and the L1 pull."""
        batch = F.slice_axis(F.shape_array(x), axis=0, begin=0, end=1)
        return F.Custom(lookup, batch, op_type='lcnn_threshold',
                        threshold=repr(self.threshold), l1_lambda=repr(self.l1_lambda))

    def _activate(self, F, out):
        return F.Activation(out, act_type=self._activation) if self._activation else out

    def masked_lookup_data(self):
        """The lookup tensor as the forward pass uses it (threshold applied), an NDArray."""
        lookup = self.lookup.data()
        return lookup * (mx.nd.abs(lookup) > self.threshold)

    def density(self):
        """Fraction of lookup entries that survive the threshold."""
        lookup = self.lookup.data()
        return float((mx.nd.abs(lookup) > self.threshold).mean().asscalar())

    @property
    def dictionary_size(self):
        return self._dictionary_size

    def forward(self, x, *args):
        if isinstance(x, mx.nd.NDArray):
            self._check_input(x.shape)
        return super().forward(x, *args)

    def _check_in_features(self, got):
        known = self._in_features or (self.dictionary.shape[1] if self.dictionary.shape else 0)
        if known and got != known:
            raise ValueError('%s %s: input has %d features along the channel axis but %s=%d'
                             % (type(self).__name__, self.name, got, self._in_name, known))


class LookupConv2D(_LookupLayer):
    """2-D convolution as a dictionary (1x1 conv c -> d) followed by a sparse lookup conv d -> m.

    Parameters
    ----------
    channels : int
        Output channels m.
    kernel_size : int or (int, int)
    strides : int or (int, int), default 1
    padding : int or (int, int), default 0
    dictionary_size : int
        Number of dictionary vectors d (in the input-channel space).
    in_channels : int, default 0
        Input channels c; 0 infers them from the first input.
    use_bias : bool, default True
    activation : str or None
        Applied after the bias ('relu', 'sigmoid', 'tanh', 'softrelu', 'softsign').
    initial_sparsity : float, default 0.01
        threshold = initial_sparsity / sqrt(kh * kw * d).
    l1_lambda : float, default 0
        Strength of the L1 pull on surviving lookup entries.
    """
    _in_name, _out_name = 'in_channels', 'channels'

    def __init__(self, channels, kernel_size, strides=1, padding=0, dictionary_size=None,
                 in_channels=0, use_bias=True, activation=None, initial_sparsity=0.01,
                 l1_lambda=0.0, **kwargs):
        self._kernel = _pair(kernel_size, 'kernel_size')
        self._strides = _pair(strides, 'strides')
        self._padding = _pair(padding, 'padding')
        if min(self._kernel) < 1:
            raise ValueError('LookupConv2D: kernel_size must be >= 1, got %r' % (kernel_size,))
        if min(self._strides) < 1:
            raise ValueError('LookupConv2D: strides must be >= 1, got %r' % (strides,))
        if min(self._padding) < 0:
            raise ValueError('LookupConv2D: padding must be >= 0, got %r' % (padding,))
        self._channels = int(channels)
        super().__init__(channels, dictionary_size, in_channels, self._kernel, use_bias,
                         activation, initial_sparsity, l1_lambda, **kwargs)

    kernel_size = property(lambda self: self._kernel)
    strides = property(lambda self: self._strides)
    padding = property(lambda self: self._padding)
    channels = property(lambda self: self._channels)
    activation = property(lambda self: self._activation)

    @property
    def in_channels(self):
        return self._in_features or (self.dictionary.shape[1] if self.dictionary.shape else 0)

    def _dictionary_shape(self):
        return (self._dictionary_size, self._in_features, 1, 1)

    def _lookup_shape(self):
        return (self._out_features, self._dictionary_size) + self._kernel

    def _check_input(self, shape):
        if len(shape) != 4:
            raise ValueError('LookupConv2D %s: expected a 4-D input (N, C, H, W) for in_channels, '
                             'got shape %s' % (self.name, shape))
        self._check_in_features(shape[1])
        for axis, size in enumerate(shape[2:]):
            if size + 2 * self._padding[axis] < self._kernel[axis]:
                raise ValueError('LookupConv2D %s: input %s with padding=%s is smaller than '
                                 'kernel_size=%s' % (self.name, shape, self._padding, self._kernel))

    def hybrid_forward(self, F, x, dictionary, lookup, bias=None):
        s = F.Convolution(x, dictionary, kernel=(1, 1), num_filter=self._dictionary_size,
                          no_bias=True, name='dict')
        p = self._masked_lookup(F, x, lookup)
        # D has no bias, so padding S equals padding x.
        out = F.Convolution(s, p, bias, kernel=self._kernel, stride=self._strides,
                            pad=self._padding, num_filter=self._out_features,
                            no_bias=bias is None, name='lookup')
        return self._activate(F, out)

    def effective_weight(self):
        """The dense weight (channels, in_channels, kh, kw) this layer computes."""
        p = self.masked_lookup_data()
        d = self.dictionary.data()
        m, q, kh, kw = p.shape
        rows = mx.nd.dot(p.transpose((0, 2, 3, 1)).reshape((-1, q)), d.reshape((q, -1)))
        return rows.reshape((m, kh, kw, -1)).transpose((0, 3, 1, 2))

    def __repr__(self):
        return ('{name}({cin} -> {m}, kernel_size={k}, stride={s}, padding={p}, '
                'dictionary_size={d}{act})').format(
                    name=type(self).__name__, cin=self.in_channels or None, m=self._channels,
                    k=self._kernel, s=self._strides, p=self._padding, d=self._dictionary_size,
                    act=', activation=%s' % self._activation if self._activation else '')


class LookupDense(_LookupLayer):
    """Fully connected layer y = P (D x) + b with a small dictionary D and sparse P.

    Parameters mirror ``gluon.nn.Dense`` plus ``dictionary_size``, ``initial_sparsity`` and
    ``l1_lambda`` (see LookupConv2D). With ``flatten=False`` the map applies to the last axis.
    """
    _in_name, _out_name = 'in_units', 'units'

    def __init__(self, units, dictionary_size=None, in_units=0, use_bias=True, activation=None,
                 initial_sparsity=0.01, l1_lambda=0.0, flatten=True, **kwargs):
        self._flatten = bool(flatten)
        self._units = int(units)
        super().__init__(units, dictionary_size, in_units, (1, 1), use_bias, activation,
                         initial_sparsity, l1_lambda, **kwargs)

    units = property(lambda self: self._units)
    activation = property(lambda self: self._activation)
    flatten = property(lambda self: self._flatten)

    @property
    def in_units(self):
        return self._in_features or (self.dictionary.shape[1] if self.dictionary.shape else 0)

    def _dictionary_shape(self):
        return (self._dictionary_size, self._in_features)

    def _lookup_shape(self):
        return (self._out_features, self._dictionary_size)

    def _check_input(self, shape):
        if len(shape) < (2 if self._flatten else 1):
            raise ValueError('LookupDense %s: input of shape %s has no feature axis for in_units'
                             % (self.name, shape))
        self._check_in_features(int(np.prod(shape[1:])) if self._flatten else shape[-1])

    def hybrid_forward(self, F, x, dictionary, lookup, bias=None):
        s = F.FullyConnected(x, dictionary, num_hidden=self._dictionary_size, no_bias=True,
                             flatten=self._flatten, name='dict')
        p = self._masked_lookup(F, x, lookup)
        out = F.FullyConnected(s, p, bias, num_hidden=self._units, no_bias=bias is None,
                               flatten=self._flatten, name='lookup')
        return self._activate(F, out)

    def effective_weight(self):
        """The dense weight (units, in_units) this layer computes."""
        return mx.nd.dot(self.masked_lookup_data(), self.dictionary.data())

    def __repr__(self):
        return '{name}({cin} -> {u}, dictionary_size={d}{act})'.format(
            name=type(self).__name__, cin=self.in_units or None, u=self._units,
            d=self._dictionary_size,
            act=', activation=%s' % self._activation if self._activation else '')


def lookup_layers(net):
    """Every lookup layer under ``net`` (depth first, in registration order), keyed by name."""
    found = OrderedDict()

    def visit(block):
        if isinstance(block, _LookupLayer):
            found[block.name] = block
        for child in block._children.values():
            visit(child)
    visit(net)
    return found


def density_report(net):
    """OrderedDict layer name -> fraction of non-zero lookup entries, plus '__total__'."""
    report = OrderedDict()
    nnz = total = 0
    for name, layer in lookup_layers(net).items():
        lookup = layer.lookup.data()
        alive = int((mx.nd.abs(lookup) > layer.threshold).sum().asscalar())
        report[name] = alive / float(lookup.size)
        nnz += alive
        total += lookup.size
    if total:
        report['__total__'] = nnz / float(total)
    return report
