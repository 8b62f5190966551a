"""Low-rank decomposition of a trained dense net (accnn): each layer as two thinner layers.

Convolution W (m, c, kh, kw) -> a kh x 1 conv with K filters, then a 1 x kw conv:

    conv (K, c, kh, 1), stride (sh, 1), pad (ph, 0), no bias
    conv (m, K, 1, kw), stride (1, sw), pad (0, pw), with the bias and activation

W[r, c, i, j] = sum_k A[k, c, i] B[r, k, j] is a rank-K factorisation of W arranged as the
(c*kh) x (kw*m) matrix M[(c, i), (j, r)]; the truncated SVD M ~= U_K S_K V_K^T gives the best
one in the least-squares sense (A = (U_K sqrt S_K)^T, B = V_K sqrt S_K) and is exact at full
rank K = min(c*kh, kw*m). Zero padding of the first conv's output along the width equals zero
padding of the input there (the first conv has no bias), so the pair computes the same function
as the dense conv. A Dense (units, in) becomes Dense(K, no bias) then Dense(units) with the
original bias, activation and flatten: the SVD of W itself.

MACs per output pixel (N * H' * W' of them): dense m*c*kh*kw; decomposed K*c*kh on every
(N * H' * W_in) pixel of the intermediate map plus m*K*kw. A Dense: K*(in + units) per row
against units*in.

The rank rule (accnn's): the energy of a layer is the sum of the squared singular values of its
M, and rank K keeps the top-K share. One common fraction e is kept in every layer, each layer
taking the smallest K whose share is >= e; ``lowrank_ranks`` bisects e for the largest value
whose decomposed net still reaches the target speed-up (dense MACs / MACs, both as
``gluon_lcnn.flops.profile`` counts them). A layer whose pair would not cost fewer MACs than
the layer at its K stays as it is.

Placement: inside a plain (Hybrid)Sequential the two layers replace the old one flat (the
sequence's children are renumbered), so ``deploy.to_inference`` folds a following BatchNorm
into the second layer and fuses a following ReLU as for any layer; elsewhere (a layer held by a
custom block, such as a net's output Dense) they go into a HybridSequential in its slot. The new
layers are named ``<old prefix>lowrank0_`` / ``lowrank1_``. ``to_lowrank`` is deterministic
(float64 SVD, signs fixed), so the same dense weights and ranks rebuild the same net.
"""
import copy
from collections import OrderedDict

import mxnet as mx
import numpy as np
from mxnet.gluon import Block, nn
from mxnet.gluon.parameter import Parameter, ParameterDict

from ..convert import _walk, replace_child
from ..deploy import _is_plain_sequence, _shell
from ..flops import probe_forward, profile

__all__ = ['lowrank_ranks', 'lowrank_plan', 'to_lowrank', 'decomposable_layers']


def _is_decomposable(block):
    """Plain NCHW Conv2D (groups 1, dilation 1) or Dense."""
    if isinstance(block, nn.Conv2D) and not isinstance(block, nn.Conv2DTranspose):
        kw = block._kwargs
        return (block._op_name == 'Convolution' and kw.get('layout', 'NCHW') == 'NCHW'
                and kw['num_group'] == 1 and tuple(kw['dilate']) == (1, 1))
    return isinstance(block, nn.Dense)


def decomposable_layers(net):
    """OrderedDict path -> block of the layers ``to_lowrank`` can decompose."""
    return OrderedDict((path, child) for _, _, child, path in _walk(net)
                       if _is_decomposable(child))


def _weight(block):
    if block.weight._data is None:
        raise ValueError('lowrank: layer %s has no initialized weight; initialize or load the '
                         'net first' % block.name)
    return block.weight.data(block.weight.list_ctx()[0]).asnumpy().astype(np.float64)


def _matrix(block, weight):
    """The matrix the layer's decomposition factors: (c*kh, kw*m) for a conv, W for a Dense."""
    if isinstance(block, nn.Dense):
        return weight
    m, c, kh, kw = weight.shape
    return weight.transpose(1, 2, 3, 0).reshape(c * kh, kw * m)


def _energy_share(block):
    """Cumulative kept-energy fractions for K = 1 .. full rank."""
    s = np.linalg.svd(_matrix(block, _weight(block)), compute_uv=False)
    energy = np.cumsum(s ** 2)
    return energy / energy[-1] if energy[-1] > 0 else np.ones_like(energy)


def _macs(block, in_shape, out_shape, rank):
    """MACs of the decomposed pair at ``rank``, as flops.profile counts two Conv2D / Dense."""
    if isinstance(block, nn.Dense):
        units, in_units = block.weight.shape
        rows = int(in_shape[0]) if block._flatten else int(np.prod(out_shape[:-1]))
        return rank * (in_units + units) * rows
    m, c, kh, kw = block.weight.shape
    n, _, h_out, w_out = out_shape
    w_in = int(in_shape[3])
    return rank * c * kh * n * h_out * w_in + m * rank * kw * n * h_out * w_out


def _layer_shapes(net, blocks, input_shape):
    """(input shape, output shape) of each block from one forward pass of zeros."""
    shapes, handles = {}, []
    for path, block in blocks.items():
        def hook(b, inputs, output, _path=path):
            shapes.setdefault(_path, (tuple(inputs[0].shape), tuple(output.shape)))
        handles.append(block.register_forward_hook(hook))
    ctx = next(iter(net.collect_params().values())).list_ctx()[0]
    probe_forward(net, input_shape, ctx, handles)
    return shapes


def _check_target(name, target_speedup):
    try:
        target = float(target_speedup)
    except (TypeError, ValueError):
        raise ValueError('%s: target_speedup must be a number > 1, got %r'
                         % (name, target_speedup))
    if not target > 1:
        raise ValueError('%s: target_speedup must be > 1, got %r' % (name, target_speedup))
    return target


def lowrank_ranks(net, input_shape, target_speedup, min_energy=None, skip=()):
    """Rank K per layer so that the decomposed net reaches ``target_speedup`` in MACs.

    Parameters
    ----------
    net : Block
        A trained dense net (its Conv2D with groups 1 / Dense layers are candidates).
    input_shape : tuple of int
        Input shape with batch, e.g. (1, 3, 224, 224); the MACs are counted on it.
    target_speedup : float > 1
        Wanted dense MACs / MACs of the decomposed net (``flops.profile`` counts).
    min_energy : float in [0, 1], optional
        Lowest kept-energy fraction accepted; a target that needs less is a ValueError.
    skip : iterable of str
        Paths of layers to keep as they are (e.g. the classifier: few MACs, and the layer the
        accuracy is most sensitive to); their MACs still count.

    Returns
    -------
    OrderedDict path -> K of the layers to decompose (forward order), for ``to_lowrank``;
    ``lowrank_plan`` also returns the energy fraction and the MAC counts.
    """
    return lowrank_plan(net, input_shape, target_speedup, min_energy, skip)['ranks']


def lowrank_plan(net, input_shape, target_speedup, min_energy=None, skip=()):
    """``lowrank_ranks`` with its working: dict(ranks, energy, dense_macs, macs, speedup)."""
    target = _check_target('lowrank_ranks', target_speedup)
    floor = 0.0 if min_energy is None else float(min_energy)
    if not 0 <= floor <= 1:
        raise ValueError('lowrank_ranks: min_energy must be in [0, 1], got %r' % (min_energy,))
    counts = profile(net, input_shape)  # also initializes a fresh net
    candidates = decomposable_layers(net)
    unknown = sorted(set(skip) - set(candidates))
    if unknown:
        raise ValueError('lowrank_ranks: skip names no decomposable layer: %s' % unknown)
    candidates = OrderedDict((p, b) for p, b in candidates.items() if p not in set(skip))
    if not candidates:
        raise ValueError('lowrank_ranks: the net has no Conv2D (groups 1) or Dense layer')
    shapes = _layer_shapes(net, candidates, input_shape)
    current = {row['path']: row['macs'] for row in counts.rows}
    layers = []  # (path, kept-energy shares, MACs now, MACs at rank K for K = 1..)
    for path, block in candidates.items():
        if path not in shapes or path not in current:
            continue  # not reached by the forward pass
        share = _energy_share(block)
        ranks = np.arange(1, share.size + 1)
        layers.append((path, share, current[path], _macs(block, *shapes[path], ranks)))
    dense = counts.totals['dense_macs']
    others = counts.totals['macs'] - sum(now for _, _, now, _ in layers)

    def plan(energy):
        ranks, total = OrderedDict(), others
        for path, share, now, macs in layers:
            k = min(int(np.searchsorted(share, energy - 1e-12)), share.size - 1)
            if macs[k] < now:
                ranks[path] = k + 1
            total += min(macs[k], now)
        return ranks, total

    ranks, total = plan(floor)
    if dense / float(total) < target:
        raise ValueError('lowrank_ranks: target_speedup %.3gx is not reachable; the best is '
                         '%.3gx (kept energy %.3g)' % (target, dense / float(total), floor))
    lo, hi = floor, 1.0
    for _ in range(60):  # largest energy whose plan still meets the target
        mid = 0.5 * (lo + hi)
        if dense / float(plan(mid)[1]) >= target:
            lo = mid
        else:
            hi = mid
    ranks, total = plan(lo)
    return dict(ranks=ranks, energy=lo, dense_macs=dense, macs=total,
                speedup=dense / float(total))


# ---------------------------------------------------------------- copying a net
def _copy_param(param):
    new = copy.copy(param)
    new._var = None
    new._trainer = None
    new._grad = None
    if param._data is not None:
        new._init_impl(param._data[0].copy(), param.list_ctx())
    return new


def _copy_block(block, params):
    """A copy of ``block`` with its own parameters (``params``: id(old) -> new, shared ones
    copied once) and no cached graph; hybridize it again if needed."""
    new = _shell(block)   # no children, hooks or cached graph; parameters replaced below

    def fresh(p):
        if id(p) not in params:
            params[id(p)] = _copy_param(p)
        return params[id(p)]
    new._params = ParameterDict(block._params.prefix, block._params._shared)
    for name, p in block._params.items():
        new._params._params[name] = fresh(p)
    new._reg_params = OrderedDict((k, fresh(p)) for k, p in block._reg_params.items())
    mapping = {}
    for key, child in block._children.items():
        mapping[id(child)] = new._children[key] = _copy_block(child, params)
    for attr, value in list(vars(new).items()):
        if isinstance(value, Parameter) and id(value) in params:
            object.__setattr__(new, attr, params[id(value)])
        elif isinstance(value, Block) and id(value) in mapping:
            object.__setattr__(new, attr, mapping[id(value)])
        elif isinstance(value, (list, tuple)) and any(id(v) in mapping for v in value):
            object.__setattr__(new, attr, type(value)(mapping.get(id(v), v) for v in value))
    return new


# ---------------------------------------------------------------- the decomposition
def _svd(matrix):
    """U, s, Vt with each pair's sign fixed (largest |U[:, k]| entry positive): deterministic."""
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    signs[signs == 0] = 1
    return u * signs, s, vt * signs[:, None]


def _act(block):
    return None if block.act is None else block.act._act_type


def _set(block, ctx, weight, bias=None):
    block.initialize(ctx=ctx)
    block.weight.set_data(mx.nd.array(weight, dtype='float32'))
    if bias is not None:
        block.bias.set_data(bias)


def _decompose(block, rank):
    """[first, second] layers of ``block`` at ``rank``, initialised from its weights."""
    weight = _weight(block)
    u, s, vt = _svd(_matrix(block, weight))
    root = np.sqrt(s[:rank])
    left, right = u[:, :rank] * root, vt[:rank].T * root  # M ~= left @ right.T
    ctx = block.weight.list_ctx()
    bias = block.bias.data(ctx[0]) if block.bias is not None else None
    p0, p1 = block.prefix + 'lowrank0_', block.prefix + 'lowrank1_'
    if isinstance(block, nn.Dense):
        units, in_units = weight.shape
        first = nn.Dense(rank, use_bias=False, flatten=block._flatten, in_units=in_units,
                         prefix=p0)
        second = nn.Dense(units, use_bias=bias is not None, flatten=block._flatten,
                          activation=_act(block), in_units=rank, prefix=p1)
        _set(first, ctx, right.T)
        _set(second, ctx, left, bias)
        return [first, second]
    m, c, kh, kw = weight.shape
    kwargs = block._kwargs
    (sh, sw), (ph, pw) = tuple(kwargs['stride']), tuple(kwargs['pad'])
    first = nn.Conv2D(rank, (kh, 1), strides=(sh, 1), padding=(ph, 0), use_bias=False,
                      in_channels=c, prefix=p0)
    second = nn.Conv2D(m, (1, kw), strides=(1, sw), padding=(0, pw), use_bias=bias is not None,
                       activation=_act(block), in_channels=rank, prefix=p1)
    # left[(c, i), k] -> (K, c, kh, 1); right[(j, r), k] -> (m, K, 1, kw).
    _set(first, ctx, left.T.reshape(rank, c, kh, 1))
    _set(second, ctx, right.reshape(kw, m, rank).transpose(1, 2, 0).reshape(m, rank, 1, kw),
         bias)
    return [first, second]


def _full_rank(block):
    shape = block.weight.shape
    if isinstance(block, nn.Dense):
        return min(shape)
    m, c, kh, kw = shape
    return min(c * kh, kw * m)


def to_lowrank(net, ranks):
    """A new net with each layer in ``ranks`` replaced by its rank-K decomposition.

    Parameters
    ----------
    net : Block
        Initialized dense net; left unchanged (the result has its own copies of all
        parameters).
    ranks : dict path -> int
        As ``lowrank_ranks`` returns: dotted child paths of Conv2D (groups 1) / Dense layers
        and their rank K, 1 <= K <= full rank (min(c*kh, kw*m) for a conv, min(units, in) for
        a Dense).

    Returns
    -------
    Block : the decomposed net (module docstring: layout, naming, exactness at full rank).
    """
    if not isinstance(net, Block):
        raise ValueError('to_lowrank: expected a gluon Block, got %s' % type(net).__name__)
    for name, p in net.collect_params().items():
        if p._data is None:
            raise ValueError('to_lowrank: parameter %s is not initialized; initialize or load '
                             'the net (and run one forward pass) first' % name)
    holder = nn.HybridSequential(prefix='')
    holder._children['net'] = _copy_block(net, {})
    found = {path[len('net.'):]: (parent, key, child)
             for parent, key, child, path in _walk(holder) if path.startswith('net.')}
    todo = []
    for path, rank in ranks.items():
        if path not in found:
            raise ValueError('to_lowrank: no layer at path %r' % (path,))
        parent, key, block = found[path]
        if not _is_decomposable(block):
            raise ValueError('to_lowrank: %r is a %s, not a Conv2D (groups 1, dilation 1) or '
                             'Dense' % (path, type(block).__name__))
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or \
                not 1 <= rank <= _full_rank(block):
            raise ValueError('to_lowrank: rank for %r must be an int in [1, %d], got %r'
                             % (path, _full_rank(block), rank))
        todo.append((parent, key, block, int(rank)))
    by_parent = OrderedDict()
    for parent, key, block, rank in todo:
        by_parent.setdefault(id(parent), (parent, {}))[1][key] = _decompose(block, rank)
    for parent, pairs in by_parent.values():
        if _is_plain_sequence(parent):
            children = OrderedDict()
            for key, child in parent._children.items():
                for new in pairs.get(key, [child]):
                    children[str(len(children))] = new
            parent._children = children
        else:
            for key, pair in pairs.items():
                seq = nn.HybridSequential(prefix='')
                seq.add(*pair)
                replace_child(parent, key, seq)
    return holder._children['net']
