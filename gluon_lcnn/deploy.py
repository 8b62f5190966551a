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
  algorithm search). A conv whose kernel covers its whole input (AlexNet's fc6) is also timed in
  its fully connected form (``CoveringConv``). The choice is simply the block type left in the
  graph, so it survives hybridize / export / ``SymbolBlock.imports``,
* times each MaxPool2D against ``LcnnMaxPool`` together with the layer before it (MKLDNN pools
  plain NCHW data, which the sparse op writes, with a slow reference kernel),
* drops Dropout (the identity at inference).

Blocks whose ``hybrid_forward`` uses its children in custom ways (e.g. a ResNet BasicBlock with
``body`` and ``downsample``) are copied and their children converted one by one, so folding happens
inside their inner sequences. Patterns it does not know stay as they are and remain correct.
Every inference block it builds lives in ``gluon_lcnn.nn.sparse``; the timing is
``gluon_lcnn.timing``'s.
"""
import copy
from collections import OrderedDict

import mxnet as mx
import numpy as np
from mxnet.gluon import Block, HybridBlock, nn
from mxnet.gluon.block import _BlockScope

from .convert import replace_child
from .flops import PRUNED_DENSITY, probe_forward
from .nn.lookup import LookupConv2D, LookupDense
from .nn.sparse import (WEIGHT_DTYPES, CoveringConv, LcnnDense, LcnnMaxPool,
                        SparseCoveringConv, SparseLookupConv2D, SparseLookupDense,
                        initialize_constants)
from .timing import medians, time_blocks_interleaved

__all__ = ['to_inference', 'fold_batchnorm_params']

_CHOICES = ('auto', 'sparse', 'dense')


def _np(param):
    return param.data().asnumpy().astype(np.float64)


class _Layer:
    """A conv-like layer in numpy form, ready to be folded and rebuilt.

    kind is 'conv' or 'dense'; exactly one of ``weight`` (dense layers) or ``lookup`` +
    ``dictionary`` (lookup layers) is set. A pruned Conv2D / Dense (exact zeros, density <=
    flops.PRUNED_DENSITY, 0.7) is a lookup layer with identity dictionary: lookup = W,
    dictionary = None. Arrays are float64 until the block is built.
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
            self._sparse_weight_as_lookup()
        else:
            self.kind = 'dense'
            self.weight = _np(block.weight)
            self.bias = _np(block.bias) if block.bias is not None else None
            self.flatten = block._flatten
            self.act = block.act._act_type if block.act is not None else None
            self._sparse_weight_as_lookup()

    def _sparse_weight_as_lookup(self):
        """A pruned weight (density <= PRUNED_DENSITY; denser ones are not worth the sparse op)
        becomes a lookup layer with identity dictionary (P = W, D = None), run or timed on the
        sparse op like one."""
        if self.groups != 1 or self.dilation != (1, 1):
            return  # the sparse op has neither
        if np.count_nonzero(self.weight) <= PRUNED_DENSITY * self.weight.size:
            self.lookup, self.weight = self.weight, None

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
        if self.dictionary is None:
            return self.lookup
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
        self.ctx = ctx
        relu = self.act == 'relu'
        if self.kind == 'conv':
            block = SparseLookupConv2D(
                self._f32(self.lookup), bias=self._f32(self.bias),
                dictionary=self._f32(self.dictionary), strides=self.strides,
                padding=self.padding, relu=relu, prefix=self.prefix)
        else:
            block = SparseLookupDense(
                self._f32(self.lookup), bias=self._f32(self.bias),
                dictionary=self._f32(self.dictionary), relu=relu, flatten=self.flatten,
                prefix=self.prefix)
        initialize_constants(block, ctx)
        if self.act is None or relu:
            return block
        seq = nn.HybridSequential(prefix=self.prefix + 'act_')
        seq.add(block, nn.Activation(self.act))
        return seq

    def covers_input(self, shape):
        """True if this conv's kernel covers its whole unpadded input: it is an fc layer."""
        return (self.kind == 'conv' and shape is not None and tuple(shape[2:]) == self.kernel
                and self.padding == (0, 0) and self.dilation == (1, 1) and self.groups == 1)

    def build_dense_fc(self, ctx):
        """A covering conv as nn.Dense on the flattened input (weight (m, c*kh*kw))."""
        self.ctx = ctx
        weight = self.effective_weight()
        fc = nn.Dense(weight.shape[0], in_units=int(np.prod(weight.shape[1:])),
                      activation=self.act, use_bias=self.bias is not None,
                      prefix=self.prefix + 'fc_')
        fc.initialize(ctx=ctx)
        fc.weight.set_data(self._f32(weight.reshape(weight.shape[0], -1)))
        if self.bias is not None:
            fc.bias.set_data(self._f32(self.bias))
        return CoveringConv(None, fc, prefix=self.prefix)

    def build_sparse_fc(self, ctx):
        """A covering lookup conv as 1x1 dictionary conv + SparseLookupDense over (q, i, j)."""
        self.ctx = ctx
        dictionary = None  # identity (a pruned conv): the fc reads x itself
        if self.dictionary is not None:
            d, c = self.dictionary.shape[:2]
            dictionary = nn.Conv2D(d, 1, in_channels=c, use_bias=False,
                                   prefix=self.prefix + 'dict_')
            dictionary.initialize(ctx=ctx)
            dictionary.weight.set_data(self._f32(self.dictionary.reshape(d, c, 1, 1)))
        # S (N, d, kh, kw) flattens in (q, i, j) order, the order of P's columns below.
        fc = SparseLookupDense(self._f32(self.lookup.reshape(self.lookup.shape[0], -1)),
                               bias=self._f32(self.bias), relu=self.act == 'relu',
                               prefix=self.prefix + 'fc_')
        initialize_constants(fc, ctx)
        return CoveringConv(dictionary, fc, prefix=self.prefix)


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


def _is_plain_sequence(block):
    """A (Hybrid)Sequential that runs its children in a chain (not e.g. HybridConcurrent,
    a subclass whose children are parallel branches)."""
    if isinstance(block, nn.HybridSequential):
        return type(block).hybrid_forward is nn.HybridSequential.hybrid_forward
    return isinstance(block, nn.Sequential) and type(block).forward is nn.Sequential.forward


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


def _lcnn_pool(block):
    """A LcnnMaxPool equal to MaxPool2D ``block``, or None for variants it does not cover."""
    if not isinstance(block, nn.MaxPool2D):
        return None
    kw = block._kwargs
    if (kw['global_pool'] or kw['pooling_convention'] != 'valid' or kw['layout'] != 'NCHW'
            or kw['pool_type'] != 'max'
            or any(p >= k for p, k in zip(kw['pad'], kw['kernel']))):  # lcnn_max_pool refuses
        return None
    return LcnnMaxPool(kw['kernel'], kw['stride'], kw['pad'], prefix=block.prefix)


class _Converter:
    def __init__(self, choose, fast_pool, ctx):
        self.choose = choose
        self.fast_pool = fast_pool
        self.ctx = ctx
        self.pending = []       # [parent, key, layer]: lookup layers whose kernel is to pick
        self.pending_pools = []  # [parent, key, prev_key, alternative]: pools to pick
        self.choices = OrderedDict()  # lookup layer prefix -> {'choice': ...}

    def layer_block(self, layer, parent, key):
        """Inference block for one folded layer; lookup layers in 'auto' mode are recorded."""
        if not layer.is_lookup:
            if (self.choose == 'auto' and layer.kind == 'conv' and layer.padding == (0, 0)
                    and layer.groups == 1 and layer.dilation == (1, 1)):
                self.pending.append([parent, key, layer])  # may cover its input: fc form
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
        if _is_plain_sequence(block):
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
            alternative = _lcnn_pool(child)
            if _is_conv_like(child):
                layer = _Layer(child)
                if i + 1 < len(children) and _can_fold_bn(layer, children[i + 1]):
                    layer.fold_batchnorm(children[i + 1])
                    i += 1
                if layer.act is None and i + 1 < len(children) and _is_relu(children[i + 1]):
                    layer.act = 'relu'
                    i += 1
                converted = self.layer_block(layer, new, key)
            elif isinstance(child, nn.Dropout):
                i += 1  # identity at inference
                continue
            elif alternative is not None and self.fast_pool is True:
                converted = alternative
            else:
                converted = self.convert(child, new, key)
                if alternative is not None and self.fast_pool is None:
                    prev_key = str(len(new._children) - 1) if new._children else None
                    self.pending_pools.append([new, key, prev_key, alternative])
            new._children[key] = converted
            i += 1


def _input_shapes(net, slots, input_shape, ctx):
    """Input shape of the block in each (parent, key) slot, from one imperative forward pass."""
    shapes = {}
    handles = []
    for parent, key in slots:
        def hook(b, inputs, _slot=(id(parent), key)):
            shapes.setdefault(_slot, tuple(inputs[0].shape))
        handles.append(parent._children[key].register_forward_pre_hook(hook))
    probe_forward(net, input_shape, ctx, handles)
    return shapes


def _time_candidates(candidates, shape, ctx, repeat, warmup, before=()):
    """Median seconds of each candidate block (after the blocks ``before``) on one random input.

    The candidates run alternately, round by round, so a shared machine's changing load hits
    them alike; each gets at most ~1 s after 3 rounds, so big batches keep the search short.
    """
    chains = []
    for block in candidates:
        chain = nn.HybridSequential(prefix='timing_')
        chain.add(*(list(before) + [block]))
        chains.append(chain)
    x = mx.nd.random.uniform(-1, 1, shape=shape, ctx=ctx)
    times = time_blocks_interleaved(chains, x, repeat=repeat, warmup=warmup,
                                    max_seconds=len(chains) * 1.0)
    for chain in chains:
        chain.hybridize(False)  # drop the timing graphs; the caller hybridizes the whole net
    return medians(times)


def _half_form(block, shape, ctx):
    """The float16-weight form of inference block ``block`` (input ``shape``), or None.

    nn.Dense -> LcnnDense; SparseLookupDense with a dictionary -> the same with a float16
    dictionary computed inside the op; CoveringConv -> SparseCoveringConv (sparse form) or
    CoveringConv over an LcnnDense (dense form), as a Conv2D that covers its input. Built from
    the block's own (folded) weights.
    """
    def const(param):
        return None if param is None else param.data().asnumpy()

    def dense(fc, prefix, weight=None):
        act = fc.act._act_type if fc.act is not None else None
        weight = const(fc.weight) if weight is None else weight
        new = LcnnDense(weight, const(fc.bias), relu=act == 'relu',
                        flatten=getattr(fc, '_flatten', True), weight_dtype='float16',
                        prefix=prefix)
        if act in (None, 'relu'):
            return initialize_constants(new, ctx)
        seq = nn.HybridSequential(prefix=prefix + 'act_')
        seq.add(initialize_constants(new, ctx), nn.Activation(act))
        return seq

    if isinstance(block, nn.Dense):
        return dense(block, block.prefix)
    if isinstance(block, nn.Conv2D) and shape is not None and _covers(block, shape):
        # A dense conv that is a fully connected layer (the dense twin's fc6).
        weight = const(block.weight)
        return CoveringConv(None, dense(block, block.prefix + 'fc_',
                                        weight.reshape(weight.shape[0], -1)),
                            prefix=block.prefix)
    if isinstance(block, SparseLookupDense) and block.has_dictionary and \
            block.weight_dtype == 'float32':
        return initialize_constants(SparseLookupDense(
            block.lookup_dense(), const(block.bias), const(block.dictionary), relu=block.relu,
            flatten=block.flatten, prefix=block.prefix, weight_dtype='float16'), ctx)
    if isinstance(block, CoveringConv) and shape is not None:
        fc, dictionary = block.fc, block.dictionary
        if dictionary is None and isinstance(fc, nn.Dense):
            return CoveringConv(None, dense(fc, fc.prefix), prefix=block.prefix)
        if isinstance(dictionary, nn.Conv2D) and isinstance(fc, SparseLookupDense) and \
                not fc.has_dictionary:
            d = dictionary.weight.shape[0]
            lookup = fc.lookup_dense().reshape((fc.units, d) + tuple(shape[2:]))
            return initialize_constants(SparseCoveringConv(
                lookup, const(fc.bias), const(dictionary.weight), relu=fc.relu,
                prefix=block.prefix, weight_dtype='float16'), ctx)
    return None


def _covers(conv, shape):
    """Whether plain NCHW Conv2D ``conv``'s kernel covers its whole unpadded input ``shape``."""
    kw = conv._kwargs
    return (_is_conv_like(conv) and tuple(kw['kernel']) == tuple(shape[2:])
            and tuple(kw['pad']) == (0, 0) and tuple(kw['dilate']) == (1, 1)
            and kw['num_group'] == 1)


def _half_slots(parent, found):
    """(parent, key) of every block below ``parent`` that may get float16 weights."""
    for key, child in parent._children.items():
        if isinstance(child, (nn.Dense, nn.Conv2D, SparseLookupDense, CoveringConv)):
            found.append((parent, key))
        else:
            _half_slots(child, found)
    return found


def _store_half_weights(root, choose, choices, input_shape, ctx, kw):
    """Give the dense layers and fc forms in ``root`` float16 weights: always for 'sparse' /
    'dense', where it measures faster for 'auto'; record it in ``choices``."""
    slots = _half_slots(root, [])
    shapes = _input_shapes(root, slots, input_shape, ctx) if slots and input_shape else {}
    for parent, key in slots:
        current = parent._children[key]
        shape = shapes.get((id(parent), key))
        half = _half_form(current, shape, ctx)
        if half is None or (choose == 'auto' and shape is None):  # None: not reached
            continue
        entry = choices.setdefault(current.prefix, OrderedDict(
            [('choice', 'sparse' if isinstance(current, SparseLookupDense) else 'dense'),
             ('input_shape', shape)]))
        pick = 'float16'
        if choose == 'auto':
            times = _time_candidates([current, half], shape, **kw)
            entry['float32_s'], entry['float16_s'] = times
            pick = 'float16' if times[1] < times[0] else 'float32'
        entry['weight_dtype'] = pick
        if pick == 'float16':
            replace_child(parent, key, half)


class FusedBasicBlock(HybridBlock):
    """A ResNet BasicBlock ``relu(body(x) + shortcut(x))`` whose add and ReLU run inside the
    body's last sparse conv (``SparseLookupConv2D(residual=True, relu=True)``): one op call
    instead of three (conv, add, relu)."""

    def __init__(self, head, tail, downsample, prefix=None):
        super().__init__(prefix=prefix)
        self.head = head          # the body without its last conv
        self.tail = tail          # that conv, taking the shortcut as its residual input
        self.downsample = downsample

    def hybrid_forward(self, F, x):
        shortcut = self.downsample(x) if self.downsample is not None else x
        return self.tail(self.head(x), shortcut)


def _with_fusion(block, ctx, **fusion):
    """A copy of SparseLookupConv2D ``block`` (same constants) with ``fusion`` attributes."""
    def const(param):
        return None if param is None else param.data().asnumpy()
    new = SparseLookupConv2D(block.lookup_dense(), bias=const(block.bias),
                             dictionary=const(block.dictionary), strides=block.strides,
                             padding=block.padding, relu=fusion.pop('relu', block.relu),
                             prefix=block.prefix, fuse_dictionary=block._fuse, **fusion)
    return initialize_constants(new, ctx)


def _pool_spec(block):
    """(kernel, stride, pad) of a max pool the sparse op can fuse, or None."""
    if isinstance(block, nn.MaxPool2D):
        block = _lcnn_pool(block)
    if isinstance(block, LcnnMaxPool):
        return (block._kernel, block._strides, block._padding)
    return None


def _fusable_basic_block(block):
    """True for a zoo ResNet BasicBlockV1 whose body ends in a plain sparse conv."""
    from .model_zoo.resnet import BasicBlockV1
    if type(block) is not BasicBlockV1 or not _is_plain_sequence(block.body) \
            or len(block.body._children) < 2:
        return False
    last = list(block.body._children.values())[-1]
    return (isinstance(last, SparseLookupConv2D) and not last.relu and not last.residual
            and last.pool is None)


def _fusion_slots(parent, found):
    """(parent, key, kind) below ``parent`` where a fusion applies: 'pool' marks a sparse conv
    followed by a max pool in a plain sequence, 'residual' a fusable BasicBlock."""
    children = list(parent._children.items())
    for i, (key, child) in enumerate(children):
        if _fusable_basic_block(child):
            found.append((parent, key, 'residual'))
            continue
        if (_is_plain_sequence(parent) and isinstance(child, SparseLookupConv2D)
                and not child.residual and child.pool is None and i + 1 < len(children)
                and _pool_spec(children[i + 1][1]) is not None):
            found.append((parent, key, 'pool'))
        _fusion_slots(child, found)
    return found


def _fuse_epilogues(root, fuse, choose, choices, input_shape, ctx, kw):
    """Fuse max pools and BasicBlock tails into the sparse convs before them: always for
    ``fuse=True``; for ``fuse=None`` in 'auto' mode where it measures faster than the unfused
    blocks, on the real input shape; record it in ``choices``."""
    if fuse is False or (fuse is None and choose != 'auto'):
        return
    slots = _fusion_slots(root, [])
    shapes = (_input_shapes(root, [(p, k) for p, k, _ in slots], input_shape, ctx)
              if slots and input_shape else {})
    for parent, key, kind in slots:
        current = parent._children[key]
        if kind == 'pool':
            keys = list(parent._children)
            pool_key = keys[keys.index(key) + 1]
            pool = parent._children[pool_key]
            fused = _with_fusion(current, ctx, pool=_pool_spec(pool))
            unfused = nn.HybridSequential(prefix='timing_')
            unfused.add(current, pool)
            prefix = current.prefix
        else:
            body = list(current.body._children.values())
            head = nn.HybridSequential(prefix='')
            head.add(*body[:-1])
            fused = FusedBasicBlock(head, _with_fusion(body[-1], ctx, residual=True, relu=True),
                                    current.downsample, prefix=current.prefix)
            unfused = current
            prefix = body[-1].prefix
        entry = choices.setdefault(prefix, OrderedDict([('choice', 'sparse')]))
        if fuse is None:
            shape = shapes.get((id(parent), key))
            if shape is None:  # not reached by the forward pass: keep what is there
                continue
            t_unfused, t_fused = _time_candidates([unfused, fused], shape, **kw)
            entry['unfused_s'], entry['fused_s'] = t_unfused, t_fused
            if t_fused >= t_unfused:
                entry['fusion'] = None
                continue
        entry['fusion'] = kind
        replace_child(parent, key, fused)
        if kind == 'pool':
            del parent._children[pool_key]  # the conv writes the pooled map itself


def to_inference(net, input_shape=None, choose='auto', fast_pool=None, ctx=None, repeat=15,
                 warmup=3, weight_dtype='float32', fuse=None):
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
        A conv whose kernel covers its whole unpadded input (AlexNet's fc6) also gets its fully
        connected form timed in 'auto' mode (``CoveringConv``; dense Conv2D layers too).
    fast_pool : bool or None
        MaxPool2D (floor mode) as ``LcnnMaxPool``: True always, False never, None (default)
        decides by timing the pool together with the layer before it in 'auto' mode and keeps
        MaxPool2D otherwise.
    ctx : Context, optional
        Where the new parameters live; default the context of ``net``'s parameters.
    repeat, warmup : int
        Timed runs (median) and warm-up runs per candidate in 'auto' mode.
    weight_dtype : {'float32', 'float16'}
        'float32' (default) keeps every weight float32. 'float16' stores the weights of the
        fully connected layers as float16: the dictionaries of lookup dense layers and of
        covering convs' fc form (``SparseLookupDense`` / ``SparseCoveringConv`` with
        ``weight_dtype='float16'``) and dense Dense layers such as the classifier
        (``LcnnDense``); activations, biases, P and convolutions stay float32 and every
        product accumulates in float32. At batch 1 these layers stream their weights from
        memory, so half the bytes is nearly half their time. In 'auto' mode each such layer is
        timed in both precisions after the kernel choice and keeps the faster; 'sparse' /
        'dense' always use float16. Rounding each weight to 11 significant bits changes the
        outputs slightly: on LeNet-LCNN trained 300 steps on Fashion-MNIST the logits moved by
        at most 1.4e-3 (they span ~28) and all 2000 top-1 predictions tested agreed
        (tests/test_fp16_weights.py; README, "Half-precision weights").
    fuse : bool or None
        Fuse what follows a sparse conv into its op call: a max pool right after it (the op
        writes the pooled map) and the add + ReLU of a zoo ResNet ``BasicBlockV1`` whose body
        ends in a sparse conv (``FusedBasicBlock``; the shortcut is the op's residual input).
        True fuses wherever possible, False never; None (default) times the fused against
        the unfused blocks in 'auto' mode, after the kernel and pool choices, and keeps the
        faster (in 'sparse' / 'dense' mode it does not fuse). The entry of a fused conv in
        ``kernel_choices`` says 'fusion' ('pool', 'residual' or None when timed slower) and,
        when timed, 'unfused_s' / 'fused_s'.

    Returns
    -------
    Block
        A HybridBlock (for a HybridBlock input) computing the same function as ``net`` in
        inference mode (Dropout removed). ``result.kernel_choices`` maps each lookup layer's
        prefix (and each timed pool's) to {'choice', 'input_shape', and in 'auto' mode the
        seconds of both candidates}; with ``weight_dtype='float16'`` the entry of every layer
        that could store float16 weights (dense layers get one too) also says
        'weight_dtype' (the type kept) and, in 'auto' mode, 'float32_s' / 'float16_s'.
    """
    if choose not in _CHOICES:
        raise ValueError("to_inference: choose must be one of %s, got %r" % (_CHOICES, choose))
    if fast_pool not in (None, True, False):
        raise ValueError('to_inference: fast_pool must be None, True or False, got %r'
                         % (fast_pool,))
    if fuse not in (None, True, False):
        raise ValueError('to_inference: fuse must be None, True or False, got %r' % (fuse,))
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
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError('to_inference: weight_dtype must be one of %s, got %r'
                         % (WEIGHT_DTYPES, weight_dtype))
    if choose == 'auto' and input_shape is None:
        raise ValueError("to_inference: choose='auto' needs input_shape to time each layer on "
                         "its real shape; pass input_shape or choose='sparse'/'dense'")

    conv = _Converter(choose, fast_pool if choose == 'auto' else bool(fast_pool), ctx)
    root = conv.convert(net)
    if conv.pending and conv.pending[0][0] is None:
        # The net itself is a single lookup layer: time it as the child of a wrapper.
        wrapper = nn.HybridSequential(prefix='')
        wrapper.add(root)
        conv.pending[0][:2] = [wrapper, '0']
        root = wrapper
    slots = [(p[0], p[1]) for p in conv.pending]
    slots += [(p[0], p[2] if p[2] is not None else p[1]) for p in conv.pending_pools]
    shapes = _input_shapes(root, slots, input_shape, ctx) if slots else {}
    kw = dict(ctx=ctx, repeat=repeat, warmup=warmup)
    for parent, key, layer in conv.pending:
        shape = shapes.get((id(parent), key))
        if shape is None:  # not reached by the forward pass: keep what is there
            continue
        current = parent._children[key]
        candidates = OrderedDict([('sparse' if layer.is_lookup else 'dense', current)])
        if layer.is_lookup:
            candidates['dense'] = layer.build_dense(ctx)
        if layer.covers_input(shape):
            if layer.is_lookup and layer.act in (None, 'relu'):
                candidates['sparse_fc'] = layer.build_sparse_fc(ctx)
            candidates['dense_fc'] = layer.build_dense_fc(ctx)
        if len(candidates) == 1:
            continue
        times = OrderedDict(zip(candidates, _time_candidates(list(candidates.values()), shape,
                                                             **kw)))
        pick = min(times, key=times.get)
        conv.choices[layer.prefix] = dict([('choice', pick), ('input_shape', shape)] +
                                          [(name + '_s', t) for name, t in times.items()])
        if candidates[pick] is not current:
            replace_child(parent, key, candidates[pick])
    for parent, key, prev_key, alternative in conv.pending_pools:
        # In context: the previous layer's output layout decides which pool is faster.
        shape = shapes.get((id(parent), prev_key if prev_key is not None else key))
        if shape is None:
            continue
        before = [parent._children[prev_key]] if prev_key is not None else []
        t_pool, t_lcnn = _time_candidates([parent._children[key], alternative], shape,
                                            before=before, **kw)
        pick = 'lcnn_pool' if t_lcnn < t_pool else 'mkldnn'
        conv.choices[alternative.prefix] = {'choice': pick, 'input_shape': shape,
                                            'mkldnn_s': t_pool, 'lcnn_pool_s': t_lcnn}
        if pick == 'lcnn_pool':
            replace_child(parent, key, alternative)
    if len(root._children) == 1 and conv.pending and root is conv.pending[0][0]:
        root = root._children['0']
    holder = nn.Sequential(prefix='')  # so that the root itself has a slot too
    holder.add(root)
    _fuse_epilogues(holder, fuse, choose, conv.choices, input_shape, ctx, kw)
    root = holder._children['0']
    if weight_dtype == 'float16':
        holder = nn.HybridSequential(prefix='')  # so that the root itself has a slot too
        holder.add(root)
        _store_half_weights(holder, choose, conv.choices, input_shape, ctx, kw)
        root = holder._children['0']
    root.kernel_choices = conv.choices
    return root
