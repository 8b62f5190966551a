"""Trainable lookup layers: a small dictionary D plus a sparse lookup tensor P.

A convolution W (m, c, kh, kw) is written as W[r, :, i, j] = sum_q P[r, q, i, j] * D[q, :]
with D (d, c) and P (m, d, kh, kw). On every forward pass entries with |P| <= threshold count as
zero (``P_eff = P * (|P| > threshold)``, native ops only, so masked entries get exactly zero
gradient by themselves); ``l1_penalty(net)`` added to the loss pulls the surviving entries
towards zero, so P grows sparse over training. threshold = initial_sparsity / sqrt(kh * kw * d)
and P starts uniform in +-1/sqrt(kh * kw * d). The dense layer is the 1x1, H = W = 1 case.

Each layer computes the same function in one of two forms (``form=``):

- ``factored``: a 1x1 convolution c -> d (S = D x) and then a kh x kw convolution d -> m with
  P_eff. Per forward pass over a batch of N: N * (d*c*H*W + m*d*kh*kw*H'*W') multiply-adds.
- ``composed``: W = P_eff (x) D once per pass (one small matmul), then one ordinary convolution
  with W; autograd carries the gradients back to P and D through W. Cost:
  m*d*kh*kw*c + N * m*c*kh*kw*H'*W'.

``auto`` (the default) takes the cheaper by that arithmetic (backward passes scale the same way)
from the input shape the layer last saw in an imperative call, and the batch size set by
``choose_forms(net, batch_size)`` if any. Without a known shape it compares the per-image terms
only, i.e. assumes N*H*W large. No form changes the parameters, so either runs any checkpoint.
"""
import math
import weakref
from collections import OrderedDict

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock

__all__ = ['LookupConv2D', 'LookupDense', 'lookup_layers', 'density_report', 'lookup_threshold',
           'l1_penalty', 'choose_forms', 'FORMS']

_ACTIVATIONS = ('relu', 'sigmoid', 'tanh', 'softrelu', 'softsign')
FORMS = ('auto', 'factored', 'composed')


def lookup_threshold(initial_sparsity, fan_in):
    """Magnitude at or below which a lookup entry counts as zero; fan_in = kh * kw * d."""
    return float(initial_sparsity) / math.sqrt(fan_in)


def _pair(value, name):
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError('%s must be an int or a pair of ints, got %r' % (name, value))
    return value


class _LookupLayer(HybridBlock):
    """What every lookup layer shares: parameters D and P, thresholding, forms, validation."""

    def __init__(self, out_features, dictionary_size, in_features, kernel, use_bias, activation,
                 initial_sparsity, l1_lambda, form='auto', **kwargs):
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
        if form not in FORMS:
            raise ValueError('%s: form must be one of %s, got %r'
                             % (type(self).__name__, FORMS, form))
        self._out_features = int(out_features)
        self._dictionary_size = int(dictionary_size)
        self._in_features = int(in_features)
        self._activation = activation
        self._form = form
        self._form_batch = None      # set by choose_forms: the training batch size
        self._seen_shape = None      # input shape of the last imperative call
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

    # Subclasses: parameter shapes, input checks, the cost of each form and the two maps.
    _in_name = _out_name = ''

    def _dictionary_shape(self):
        raise NotImplementedError

    def _lookup_shape(self):
        raise NotImplementedError

    def form_costs(self, input_shape=None, batch_size=None):
        """{'factored': MACs, 'composed': MACs} of one forward pass (see the module docstring).

        ``input_shape`` defaults to the shape of the last imperative call, ``batch_size`` to
        ``choose_forms``' batch or the input's first axis. With no shape known, only the
        per-image terms are compared (the per-pass term of 'composed' counts as 0).
        """
        raise NotImplementedError

    @property
    def form(self):
        """'auto', 'factored' or 'composed', as given to the constructor."""
        return self._form

    def resolved_form(self, input_shape=None, batch_size=None):
        """The form a forward pass with ``input_shape`` runs ('factored' or 'composed')."""
        if self._form != 'auto':
            return self._form
        costs = self.form_costs(input_shape, batch_size)
        return 'composed' if costs['composed'] < costs['factored'] else 'factored'

    def _masked_lookup(self, F, lookup):
        """P with the threshold applied; the mask carries no gradient, so masked entries get 0."""
        return lookup * (F.abs(lookup) > self.threshold)

    def _graph_form(self):
        """The form hybrid_forward builds. 'composed' needs the input width (D's full shape)."""
        form = self.resolved_form()
        if form == 'composed' and not all(self.dictionary.shape or (0,)):
            return 'factored'
        return form

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
            self._seen_shape = tuple(x.shape)
            known = self.dictionary.shape
            if known and not all(known):
                # Settle D's input width now, so the first graph can use the composed form.
                self.dictionary.shape = self._dictionary_shape_for(x.shape)
        return super().forward(x, *args)

    def _check_in_features(self, got):
        known = self._in_features or (self.dictionary.shape[1] if self.dictionary.shape else 0)
        if known and got != known:
            raise ValueError('%s %s: input has %d features along the channel axis but %s=%d'
                             % (type(self).__name__, self.name, got, self._in_name, known))

    def _batch_and_shape(self, input_shape, batch_size):
        shape = tuple(input_shape) if input_shape is not None else self._seen_shape
        batch = batch_size or self._form_batch or (shape[0] if shape else None)
        return shape, batch


class LookupConv2D(_LookupLayer):
    """2-D convolution W = P (x) D with a small dictionary D and a sparse lookup tensor P.

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
        Strength of the L1 pull on surviving lookup entries (see ``l1_penalty``).
    form : 'auto', 'factored' or 'composed', default 'auto'
        How training computes the layer (module docstring); all three give the same function.
    """
    _in_name, _out_name = 'in_channels', 'channels'

    def __init__(self, channels, kernel_size, strides=1, padding=0, dictionary_size=None,
                 in_channels=0, use_bias=True, activation=None, initial_sparsity=0.01,
                 l1_lambda=0.0, form='auto', **kwargs):
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
                         activation, initial_sparsity, l1_lambda, form, **kwargs)

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

    def _dictionary_shape_for(self, input_shape):
        return (self._dictionary_size, int(input_shape[1]), 1, 1)

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

    def form_costs(self, input_shape=None, batch_size=None):
        shape, batch = self._batch_and_shape(input_shape, batch_size)
        m, d = self._channels, self._dictionary_size
        kh, kw = self._kernel
        if shape is None:   # per image, N*H*W large, H' = H
            c = self.in_channels or d
            return dict(factored=d * c + m * d * kh * kw, composed=m * c * kh * kw)
        c, h, w = shape[1:]
        out_h = (h + 2 * self._padding[0] - kh) // self._strides[0] + 1
        out_w = (w + 2 * self._padding[1] - kw) // self._strides[1] + 1
        return dict(factored=batch * (d * c * h * w + m * d * kh * kw * out_h * out_w),
                    composed=m * d * kh * kw * c + batch * m * c * kh * kw * out_h * out_w)

    def _window_covers_input(self):
        """True when the last input is exactly one unpadded window (AlexNet's and VGG's fc6).

        The convolution is then a matrix product, which runs far faster as FullyConnected
        than as a convolution (MKLDNN's backward of a 6x6 kernel over a 6x6 map is slow).
        """
        shape = self._seen_shape
        return (shape is not None and self._padding == (0, 0)
                and tuple(shape[2:]) == self._kernel)

    def _apply(self, F, data, weight, bias, name):
        """Convolution of ``data`` with ``weight`` (m, channels, kh, kw) and this geometry."""
        m = self._out_features
        if self._window_covers_input():
            out = F.FullyConnected(data, F.reshape(weight, shape=(m, -1)), bias, num_hidden=m,
                                   no_bias=bias is None, flatten=True, name=name)
            return F.reshape(out, shape=(0, 0, 1, 1))
        return F.Convolution(data, weight, bias, kernel=self._kernel, stride=self._strides,
                             pad=self._padding, num_filter=m, no_bias=bias is None, name=name)

    def hybrid_forward(self, F, x, dictionary, lookup, bias=None):
        p = self._masked_lookup(F, lookup)
        if self._graph_form() == 'composed':
            m, d = self._out_features, self._dictionary_size
            kh, kw = self._kernel
            rows = F.dot(F.reshape(F.transpose(p, axes=(0, 2, 3, 1)), shape=(-1, d)),
                         F.reshape(dictionary, shape=(d, -1)))
            weight = F.transpose(F.reshape(rows, shape=(m, kh, kw, -1)), axes=(0, 3, 1, 2))
            out = self._apply(F, x, weight, bias, 'composed')
        else:
            s = F.Convolution(x, dictionary, kernel=(1, 1), num_filter=self._dictionary_size,
                              no_bias=True, name='dict')
            # D has no bias, so padding S equals padding x.
            out = self._apply(F, s, p, bias, 'lookup')
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
                'dictionary_size={d}{act}, form={f})').format(
                    name=type(self).__name__, cin=self.in_channels or None, m=self._channels,
                    k=self._kernel, s=self._strides, p=self._padding, d=self._dictionary_size,
                    act=', activation=%s' % self._activation if self._activation else '',
                    f=self._form)


class LookupDense(_LookupLayer):
    """Fully connected layer y = (P_eff D) x + b with a small dictionary D and sparse P.

    Parameters mirror ``gluon.nn.Dense`` plus ``dictionary_size``, ``initial_sparsity``,
    ``l1_lambda`` and ``form`` (see LookupConv2D). With ``flatten=False`` the map applies to the
    last axis. Costs per pass: factored N*(d*c + m*d), composed m*d*c + N*m*c.
    """
    _in_name, _out_name = 'in_units', 'units'

    def __init__(self, units, dictionary_size=None, in_units=0, use_bias=True, activation=None,
                 initial_sparsity=0.01, l1_lambda=0.0, flatten=True, form='auto', **kwargs):
        self._flatten = bool(flatten)
        self._units = int(units)
        super().__init__(units, dictionary_size, in_units, (1, 1), use_bias, activation,
                         initial_sparsity, l1_lambda, form, **kwargs)

    units = property(lambda self: self._units)
    activation = property(lambda self: self._activation)
    flatten = property(lambda self: self._flatten)

    @property
    def in_units(self):
        return self._in_features or (self.dictionary.shape[1] if self.dictionary.shape else 0)

    def _dictionary_shape(self):
        return (self._dictionary_size, self._in_features)

    def _dictionary_shape_for(self, input_shape):
        width = int(np.prod(input_shape[1:])) if self._flatten else int(input_shape[-1])
        return (self._dictionary_size, width)

    def _lookup_shape(self):
        return (self._out_features, self._dictionary_size)

    def _check_input(self, shape):
        if len(shape) < (2 if self._flatten else 1):
            raise ValueError('LookupDense %s: input of shape %s has no feature axis for in_units'
                             % (self.name, shape))
        self._check_in_features(int(np.prod(shape[1:])) if self._flatten else shape[-1])

    def form_costs(self, input_shape=None, batch_size=None):
        shape, batch = self._batch_and_shape(input_shape, batch_size)
        m, d = self._units, self._dictionary_size
        if shape is None:
            c = self.in_units or d
            return dict(factored=d * c + m * d, composed=m * c)
        c = self._dictionary_shape_for(shape)[1]
        rows = batch if self._flatten else int(np.prod(shape[:-1])) * batch // max(shape[0], 1)
        return dict(factored=rows * (d * c + m * d), composed=m * d * c + rows * m * c)

    def hybrid_forward(self, F, x, dictionary, lookup, bias=None):
        p = self._masked_lookup(F, lookup)
        fc = dict(num_hidden=self._units, no_bias=bias is None, flatten=self._flatten)
        if self._graph_form() == 'composed':
            out = F.FullyConnected(x, F.dot(p, dictionary), bias, name='composed', **fc)
        else:
            s = F.FullyConnected(x, dictionary, num_hidden=self._dictionary_size, no_bias=True,
                                 flatten=self._flatten, name='dict')
            out = F.FullyConnected(s, p, bias, name='lookup', **fc)
        return self._activate(F, out)

    def effective_weight(self):
        """The dense weight (units, in_units) this layer computes."""
        return mx.nd.dot(self.masked_lookup_data(), self.dictionary.data())

    def __repr__(self):
        return '{name}({cin} -> {u}, dictionary_size={d}{act}, form={f})'.format(
            name=type(self).__name__, cin=self.in_units or None, u=self._units,
            d=self._dictionary_size,
            act=', activation=%s' % self._activation if self._activation else '', f=self._form)


def lookup_layers(net):
    """Every lookup layer under ``net`` (depth first, in registration order), keyed by name."""
    found = OrderedDict()

    def add(block):
        if isinstance(block, _LookupLayer):
            found[block.name] = block
    # Block.apply visits children before their parent; lookup layers have no child blocks, so
    # they still come in depth-first registration order.
    net.apply(add)
    return found


def choose_forms(net, batch_size):
    """Let every 'auto' lookup layer under ``net`` choose its form for training batches of
    ``batch_size``, from the input shape it saw in the last imperative forward pass.

    Call it after one forward pass and before the first hybridized call (a built graph keeps the
    form it was built with). Returns OrderedDict layer name -> 'factored' or 'composed'.
    """
    if int(batch_size) < 1:
        raise ValueError('choose_forms: batch_size must be >= 1, got %r' % (batch_size,))
    chosen = OrderedDict()
    for name, layer in lookup_layers(net).items():
        layer._form_batch = int(batch_size)
        chosen[name] = layer.resolved_form()
    return chosen


def l1_penalty(net, ctx=None):
    """The L1 term of every lookup layer under ``net``: sum of l1_lambda * threshold * |P_eff|.

    Add it to the per-sample loss before ``backward`` (``loss = loss_fn(out, y) +
    l1_penalty(net)``): it then reaches P's gradient once per sample, and ``trainer.step(batch)``
    turns that into a pull of ``l1_lambda * threshold * sign(P)`` per step on every surviving
    entry, whatever the batch size (with gradient accumulation too). It runs as one cached graph
    with static memory (no host synchronisation, no per-step allocation of P-sized temporaries),
    and Horovod's gradient averaging leaves the pull, identical on every worker, unchanged.
    Returns an NDArray of shape (1,), zero when no layer has an L1 pull.
    """
    layers = [layer for layer in lookup_layers(net).values() if layer.l1_lambda]
    if not layers:
        return mx.nd.zeros((1,), ctx=ctx or mx.current_context())
    lookups = [layer.lookup.data(ctx) for layer in layers]
    key = tuple((layer.name, layer.l1_lambda, layer.threshold, str(p.dtype), p.shape)
                for layer, p in zip(layers, lookups)) + (str(lookups[0].context),)
    cached = _PENALTY_GRAPHS.get(net)
    if cached is None or cached[0] != key:
        terms = []
        for i, (layer, lookup) in enumerate(zip(layers, lookups)):
            p = mx.sym.var('lookup%d' % i)
            if lookup.dtype == np.float16:   # a float16 sum over millions of entries overflows
                p = mx.sym.cast(p, dtype='float32')
            # |P_eff| summed as P . sign-mask: a matrix product is far faster than sum(abs())
            # on CPU, and the blocked sign-mask makes the gradient exactly sign(P) * mask.
            t = layer.threshold
            sign_mask = mx.sym.BlockGrad((p > t) - (p < -t))
            terms.append(mx.sym.dot(mx.sym.reshape(p, shape=(1, -1)),
                                    mx.sym.reshape(sign_mask, shape=(-1, 1))).reshape((1,))
                         * (layer.l1_lambda * t))
        graph = mx.sym.add_n(*terms) if len(terms) > 1 else terms[0]
        cached = (key, mx.nd.CachedOp(graph, flags=[('static_alloc', True),
                                                     ('static_shape', True)]))
        _PENALTY_GRAPHS[net] = cached
    return cached[1](*lookups)


_PENALTY_GRAPHS = weakref.WeakKeyDictionary()   # net -> (layers' key, CachedOp)


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
