"""Deploy conversion: a trained (LCNN or dense) Gluon net -> a fast inference HybridBlock.

``to_inference`` is a pure function: it never changes the net it is given. It walks the net's
children and, inside every (Hybrid)Sequential,

* folds a BatchNorm that directly follows a Conv2D / Dense / LookupConv2D / LookupDense into that
  layer (weights and bias scaled per output channel; for a lookup layer the scale goes into P's
  rows and the shift into the bias, the dictionary D is unchanged),
* fuses a ReLU that follows the (folded) layer into it,
* turns every lookup layer into an inference block: ``SparseLookupConv2D`` / ``SparseLookupDense``
  (dictionary as a dense 1x1 conv / fc, then the sparse C++ op), or a dense Conv2D / Dense with the
  effective weight P.D, whichever measures faster on the layer's real input shape (like cuDNN's
  algorithm search). The choice is simply the block type left in the graph, so it survives
  hybridize / export / ``SymbolBlock.imports``.

Blocks whose ``hybrid_forward`` uses its children in custom ways (e.g. a ResNet BasicBlock with
``body`` and ``downsample``) are copied and their children converted one by one, so folding happens
inside their inner sequences. Patterns it does not know stay as they are and remain correct.
"""
import copy
from collections import OrderedDict

import mxnet as mx
import numpy as np
from mxnet.gluon import Block, HybridBlock, nn
from mxnet.gluon.block import _BlockScope

from .nn.lookup import LookupConv2D, LookupDense

__all__ = ['to_inference', 'fold_batchnorm_params']

_CHOICES = ('auto', 'sparse', 'dense')


def _np(param):
    return param.data().asnumpy().astype(np.float64)


class _Layer:
    """A conv-like layer in numpy form, ready to be folded and rebuilt.

    kind is 'conv' or 'dense'; exactly one of ``weight`` (dense layers) or ``lookup`` +
    ``dictionary`` (lookup layers) is set. Arrays are float64 until the block is built.
    """

    def __init__(self, block):
        self.prefix = block.prefix
        self.act = None
        self.weight = self.lookup = self.dictionary = None
        self.dilation, self.groups, self.flatten = (1, 1), 1, True
        if isinstance(block, (LookupConv2D, LookupDense)):
            self.kind = 'conv' if isinstance(block, LookupConv2D) else 'dense'
            # The forward pass zeroes |P| <= threshold: deploy exactly what it computes.
            self.lookup = block.masked_lookup_data().asnumpy().astype(np.float64)
            self.dictionary = _np(block.dictionary)
            self.bias = _np(block.bias) if block.bias is not None else None
            self.act = block.activation
            if self.kind == 'conv':
                self.kernel, self.strides, self.padding = (block.kernel_size, block.strides,
                                                           block.padding)
            else:
                self.flatten = block.flatten
        elif isinstance(block, nn.Conv2D):
            kw = block._kwargs
            self.kind = 'conv'
            self.weight = _np(block.weight)
            self.bias = _np(block.bias) if block.bias is not None else None
            self.kernel, self.strides = tuple(kw['kernel']), tuple(kw['stride'])
            self.padding, self.dilation = tuple(kw['pad']), tuple(kw['dilate'])
            self.groups = kw['num_group']
            self.act = block.act._act_type if block.act is not None else None
        else:
            self.kind = 'dense'
            self.weight = _np(block.weight)
            self.bias = _np(block.bias) if block.bias is not None else None
            self.flatten = block._flatten
            self.act = block.act._act_type if block.act is not None else None

    @property
    def is_lookup(self):
        return self.lookup is not None

    @property
    def out_features(self):
        return (self.lookup if self.is_lookup else self.weight).shape[0]

    def fold_batchnorm(self, bn):
        """Absorb the inference-mode BatchNorm ``bn`` that follows this layer."""
        scale, shift = fold_batchnorm_params(bn)
        if scale.shape[0] != self.out_features:
            raise ValueError('BatchNorm %s has %d channels but the layer before it %d outputs'
                             % (bn.name, scale.shape[0], self.out_features))
        rows = scale.reshape((-1,) + (1,) * ((self.lookup if self.is_lookup else
                                              self.weight).ndim - 1))
        if self.is_lookup:
            self.lookup = self.lookup * rows
        else:
            self.weight = self.weight * rows
        bias = self.bias if self.bias is not None else np.zeros(self.out_features)
        self.bias = bias * scale + shift

    def effective_weight(self):
        """Dense weight (m, c, kh, kw) or (units, in_units): W[r, :, i, j] = sum_q P[r,q,i,j] D[q]."""
        if not self.is_lookup:
            return self.weight
        d = self.dictionary.reshape(self.dictionary.shape[0], -1)
        if self.kind == 'dense':
            return self.lookup @ d
        # (m, kh, kw, d) @ (d, c) -> (m, c, kh, kw); a BLAS product (einsum would loop in numpy).
        return np.ascontiguousarray((self.lookup.transpose(0, 2, 3, 1) @ d).transpose(0, 3, 1, 2))

    def _f32(self, a):
        return None if a is None else mx.nd.array(a.astype(np.float32), ctx=self.ctx)

    def build_dense(self, ctx):
        """Dense Conv2D / Dense block with the effective (folded) weight."""
        self.ctx = ctx
        weight = self.effective_weight()
        act = self.act
        if self.kind == 'conv':
            block = nn.Conv2D(weight.shape[0], self.kernel, strides=self.strides,
                              padding=self.padding, dilation=self.dilation, groups=self.groups,
                              in_channels=weight.shape[1] * self.groups, activation=act,
                              use_bias=self.bias is not None, prefix=self.prefix)
        else:
            block = nn.Dense(weight.shape[0], in_units=weight.shape[1], activation=act,
                             use_bias=self.bias is not None, flatten=self.flatten,
                             prefix=self.prefix)
        block.initialize(ctx=ctx)
        block.weight.set_data(self._f32(weight))
        if self.bias is not None:
            block.bias.set_data(self._f32(self.bias))
        return block

    def build_sparse(self, ctx):
        """``SparseLookupConv2D`` / ``SparseLookupDense`` (+ an Activation if not ReLU)."""
        from .nn import sparse  # the op library loads on first use
        self.ctx = ctx
        relu = self.act == 'relu'
        if self.kind == 'conv':
            block = sparse.SparseLookupConv2D(
                self._f32(self.lookup), bias=self._f32(self.bias),
                dictionary=self._f32(self.dictionary), strides=self.strides,
                padding=self.padding, relu=relu, prefix=self.prefix)
        else:
            block = sparse.SparseLookupDense(
                self._f32(self.lookup), bias=self._f32(self.bias),
                dictionary=self._f32(self.dictionary), relu=relu, flatten=self.flatten,
                prefix=self.prefix)
        _initialize_missing(block, ctx)
        if self.act is None or relu:
            return block
        seq = nn.HybridSequential(prefix=self.prefix + 'act_')
        seq.add(block, nn.Activation(self.act))
        return seq


def _initialize_missing(block, ctx):
    """Initialize parameters (the sparse blocks' constants) that have no data yet."""
    for p in block.collect_params().values():
        if p._data is None:
            p.initialize(ctx=ctx)


def fold_batchnorm_params(bn):
    """(scale, shift) float64 arrays such that bn(x) == x * scale + shift in inference mode."""
    kw = bn._kwargs
    var = _np(bn.running_var)
    gamma = np.ones_like(var) if kw.get('fix_gamma', False) else _np(bn.gamma)
    scale = gamma / np.sqrt(var + kw['eps'])
    shift = _np(bn.beta) - _np(bn.running_mean) * scale
    return scale, shift


def _is_conv_like(block):
    if isinstance(block, (LookupConv2D, LookupDense, nn.Dense)):
        return True
    # Only plain NCHW convolutions: not Conv2DTranspose (a subclass with another op).
    return (isinstance(block, nn.Conv2D) and block._op_name == 'Convolution'
            and block._kwargs['layout'] == 'NCHW')


def _can_fold_bn(layer, block):
    # BN must normalise the channel axis of the layer's output (NCHW conv, flattened fc).
    return (isinstance(block, nn.BatchNorm) and block._kwargs['axis'] == 1
            and layer.act is None and (layer.kind == 'conv' or layer.flatten))


def _is_relu(block):
    return isinstance(block, nn.Activation) and block._act_type == 'relu'


def _shell(block):
    """A shallow copy of ``block`` without children, hooks or cached graphs.

    Its own parameters stay shared (read only); the caller adds converted children.
    """
    new = copy.copy(block)
    new._children = OrderedDict()
    new._forward_hooks = OrderedDict()
    new._forward_pre_hooks = OrderedDict()
    new._scope = _BlockScope(new)
    if isinstance(block, HybridBlock):
        new._cached_graph = ()
        new._cached_op = None
        new._cached_op_args = []
        new._active = False
        new._flags = []
    return new


class _Converter:
    def __init__(self, choose, ctx):
        self.choose = choose
        self.ctx = ctx
        self.pending = []   # [(parent, key, layer)] lookup layers whose kernel is still to pick
        self.choices = OrderedDict()  # lookup layer prefix -> {'choice': ...}

    def layer_block(self, layer, parent, key):
        """Inference block for one folded layer; lookup layers in 'auto' mode are recorded."""
        if not layer.is_lookup:
            return layer.build_dense(self.ctx)
        if self.choose == 'dense':
            self.choices[layer.prefix] = {'choice': 'dense', 'input_shape': None}
            return layer.build_dense(self.ctx)
        self.choices[layer.prefix] = {'choice': 'sparse', 'input_shape': None}
        block = layer.build_sparse(self.ctx)
        if self.choose == 'auto':
            self.pending.append([parent, key, layer])
        return block

    def convert(self, block, parent=None, key=None):
        if _is_conv_like(block):
            return self.layer_block(_Layer(block), parent, key)
        new = _shell(block)
        if isinstance(block, (nn.Sequential, nn.HybridSequential)):
            self._convert_sequence(block, new)
            return new
        mapping = {}
        for name, child in block._children.items():
            mapping[id(child)] = new._children[name] = self.convert(child, new, name)
        # Custom hybrid_forward code reaches children through attributes (self.body, ...):
        # point those at the converted children too (bypassing Block.__setattr__'s type check).
        for attr, value in list(new.__dict__.items()):
            if isinstance(value, Block) and id(value) in mapping:
                new.__dict__[attr] = mapping[id(value)]
            elif isinstance(value, (list, tuple)) and any(id(v) in mapping for v in value):
                new.__dict__[attr] = type(value)(mapping.get(id(v), v) for v in value)
        return new

    def _convert_sequence(self, seq, new):
        children = list(seq._children.values())
        i = 0
        while i < len(children):
            child = children[i]
            key = str(len(new._children))
            if _is_conv_like(child):
                layer = _Layer(child)
                if i + 1 < len(children) and _can_fold_bn(layer, children[i + 1]):
                    layer.fold_batchnorm(children[i + 1])
                    i += 1
                if layer.act is None and i + 1 < len(children) and _is_relu(children[i + 1]):
                    layer.act = 'relu'
                    i += 1
                converted = self.layer_block(layer, new, key)
            else:
                converted = self.convert(child, new, key)
            new._children[key] = converted
            i += 1


def _replace(parent, key, old, new):
    parent._children[key] = new
    for attr, value in list(parent.__dict__.items()):
        if value is old:
            parent.__dict__[attr] = new


def _input_shapes(net, blocks, input_shape, ctx):
    """Input shape of every block in ``blocks``, from one imperative forward pass of ``net``."""
    shapes = {}
    handles = []
    for block in blocks:
        def hook(b, inputs, _id=id(block)):
            shapes.setdefault(_id, tuple(inputs[0].shape))
        handles.append(block.register_forward_pre_hook(hook))
    try:
        with mx.autograd.predict_mode():
            net(mx.nd.zeros(input_shape, ctx=ctx))
        mx.nd.waitall()
    finally:
        for h in handles:
            h.detach()
    return shapes


def _time_block(block, shape, ctx, repeat, warmup):
    from .benchmark import time_block
    x = mx.nd.random.uniform(-1, 1, shape=shape, ctx=ctx)
    seconds = time_block(block, x, repeat=repeat, warmup=warmup)
    block.hybridize(False)  # drop the timing graph; the whole net is hybridized later
    return seconds


def to_inference(net, input_shape=None, choose='auto', ctx=None, repeat=15, warmup=3):
    """Convert a trained net into an inference HybridBlock (the input net is left unchanged).

    Parameters
    ----------
    net : Block
        Trained network (LCNN or dense) with initialized parameters.
    input_shape : tuple of int, optional
        Shape of one input batch, e.g. (1, 3, 224, 224). Needed by ``choose='auto'`` to time
        each lookup layer on its real input shape.
    choose : {'auto', 'sparse', 'dense'}
        Kernel for lookup layers: 'auto' measures the sparse op and a dense convolution with
        the effective weight once per layer and keeps the faster; 'sparse' / 'dense' force one.
    ctx : Context, optional
        Where the new parameters live; default the context of ``net``'s parameters.
    repeat, warmup : int
        Timed runs (median) and warm-up runs per candidate in 'auto' mode.

    Returns
    -------
    Block
        A HybridBlock (for a HybridBlock input) computing the same function as ``net`` in
        inference mode. ``result.kernel_choices`` maps each lookup layer's prefix to
        {'choice', 'input_shape', 'sparse_s', 'dense_s'} (timings only in 'auto' mode).
    """
    if choose not in _CHOICES:
        raise ValueError("to_inference: choose must be one of %s, got %r" % (_CHOICES, choose))
    if not isinstance(net, Block):
        raise ValueError('to_inference: expected a gluon Block, got %s' % type(net).__name__)
    params = net.collect_params()
    for name, p in params.items():
        if p._data is None:
            raise ValueError('to_inference: parameter %s is not initialized (deferred shape?); '
                             'initialize the net and run one forward pass first' % name)
    if ctx is None:
        ctxs = [p.list_ctx()[0] for p in params.values()]
        ctx = ctxs[0] if ctxs else mx.cpu()
    if choose == 'auto' and input_shape is None:
        raise ValueError("to_inference: choose='auto' needs input_shape to time each layer on "
                         "its real shape; pass input_shape or choose='sparse'/'dense'")

    conv = _Converter(choose, ctx)
    root = conv.convert(net)
    if conv.pending:
        current = [p[0]._children[p[1]] if p[0] is not None else root for p in conv.pending]
        shapes = _input_shapes(root, current, input_shape, ctx)
        for (parent, key, layer), sparse_block in zip(conv.pending, current):
            shape = shapes.get(id(sparse_block))
            if shape is None:  # not reached by a forward pass: keep the sparse op
                continue
            dense_block = layer.build_dense(ctx)
            t_sparse = _time_block(sparse_block, shape, ctx, repeat, warmup)
            t_dense = _time_block(dense_block, shape, ctx, repeat, warmup)
            pick = 'sparse' if t_sparse <= t_dense else 'dense'
            conv.choices[layer.prefix] = {'choice': pick, 'input_shape': shape,
                                          'sparse_s': t_sparse, 'dense_s': t_dense}
            if pick == 'dense':
                if parent is None:
                    root = dense_block
                else:
                    _replace(parent, key, sparse_block, dense_block)
    root.kernel_choices = conv.choices
    return root
