"""Multiply-accumulate (MAC) and parameter counts per layer, dense-equivalent versus actual.

``profile(net, input_shape)`` runs one non-hybridized forward pass of zeros with forward hooks
to learn every layer's input and output shape, then counts:

- ``nn.Conv2D``: m * (c / groups) * kh * kw * H' * W' per image; ``nn.Dense``: units * in_units
  per row. A pruned weight, one with at most ``PRUNED_DENSITY`` (0.7) of its entries non-zero,
  counts nnz(W) per output pixel / row instead, as the sparse engine skips the zeros
  (``deploy.to_inference`` runs such layers on the sparse op); its dense-equivalent count stays
  the full one. Denser weights count in full: every trained or randomly initialised dense layer
  (whose few exact zeros, e.g. from a float32 uniform init, no engine would exploit);
- lookup layers, training form (``LookupConv2D`` / ``LookupDense``) and inference form (the
  ``SparseLookupConv2D`` / ``SparseLookupDense`` blocks ``deploy.to_inference`` builds) alike,
  by the one formula ``lookup_macs``: what the inference op computes, S = D x (d * c MACs per
  input pixel, every one of the H * W pixels: ``lcnn_sparse_conv`` applies the dictionary to
  all of them, also where a stride larger than the kernel skips some, as in a 1x1/s2 shortcut)
  plus nnz(P) per output pixel (H' * W'); dense layers d * in_units + nnz(P) per row. nnz is
  taken *now*, after the threshold, so the count follows training or
  ``model_zoo.set_lookup_density``. The dense-equivalent count of a lookup layer is that of a
  Conv2D/Dense with the same geometry.
- Other blocks may describe themselves (see ``_describe``): define ``lcnn_macs(input_shape,
  output_shape) -> dict`` (keys kind, dense_macs, macs, nnz, density), or expose ``nnz`` (int
  or method) and ``dictionary_size``, optionally ``has_dictionary`` (False: the input already
  is S, no dictionary MACs), convolutions also ``kernel_size``, dense ones optionally
  ``flatten``: then they are counted by ``lookup_macs`` as the sparse blocks are. Channels come
  from the shapes.

BatchNorm, activations, pooling, dropout, flatten and other elementwise work are ignored: they
cost O(activations), a few percent of a conv layer's MACs. Counts cover the whole input shape
(batch included), so pass batch 1 for per-image numbers.
"""
from collections import OrderedDict

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

# The command-line helpers live in cli_args; they stay importable from here.
from .cli_args import (MAX_TENSOR_SIZE, add_model_arguments, build_model,  # noqa: F401
                       check_input_shape, error_line, make_model, nchw_shape, parse_kwargs,
                       parse_shape, positive_int)
from .nn.lookup import LookupConv2D, LookupDense

__all__ = ['profile', 'Profile', 'lookup_macs', 'add_arguments', 'run', 'PRUNED_DENSITY']

# A Conv2D / Dense weight with at most this share of non-zeros is a pruned layer: counted at
# nnz(W) here and deployed on the sparse op (identity dictionary) by deploy.to_inference.
PRUNED_DENSITY = 0.7


def _value(attr):
    return attr() if callable(attr) else attr


def _params(block):
    total = 0
    for p in block.collect_params().values():
        if p.shape and all(s > 0 for s in p.shape):
            total += int(np.prod(p.shape))
    return total


def lookup_macs(lookup_shape, nnz, in_shape, out_shape, dictionary=True, flatten=True):
    """MACs of one lookup layer: dict(dense_macs, macs, nnz, density). The only LCNN formula.

    lookup_shape : P's shape, (m, d, kh, kw) for a convolution or (units, d) for a dense layer.
    nnz : surviving (non-zero) lookup entries.
    in_shape, out_shape : the layer's input and output shapes, batch included: (N, c, H, W) ->
        (N, m, H', W') for a convolution.
    dictionary : False when the input already is S (an identity dictionary): no S = D x MACs.
    flatten : dense layers only, as ``nn.Dense``: True maps N flattened rows, False every
        leading index of the input.

    Convolution: d * c * N * H * W for S = D x (over every input pixel, as the inference op
    computes it) + nnz * N * H' * W'; dense equivalent m * c * kh * kw * N * H' * W'. Dense layer:
    (d * in_units + nnz) per row against units * in_units.
    """
    lookup_shape = tuple(int(v) for v in lookup_shape)
    m, d = lookup_shape[:2]
    nnz = int(nnz)
    density = nnz / float(np.prod(lookup_shape))
    if len(lookup_shape) == 4:
        n, c, h, w = (int(v) for v in in_shape)
        kh, kw = lookup_shape[2:]
        positions = _positions(out_shape)
        dict_macs = d * c * n * h * w if dictionary else 0
        return dict(dense_macs=m * c * kh * kw * positions, macs=dict_macs + nnz * positions,
                    nnz=nnz, density=density)
    if len(lookup_shape) != 2:
        raise ValueError('lookup_macs: lookup_shape must be (m, d, kh, kw) or (units, d), got %s'
                         % (lookup_shape,))
    in_units = int(np.prod(in_shape[1:])) if flatten else int(in_shape[-1])
    rows = _dense_rows(in_shape, out_shape, flatten)
    dict_macs = d * in_units if dictionary else 0
    return dict(dense_macs=m * in_units * rows, macs=(dict_macs + nnz) * rows, nnz=nnz,
                density=density)


def _positions(shape):
    """Output positions of a conv output (N, C, H, W): N * H * W."""
    return int(shape[0]) * int(np.prod(shape[2:]))


def _dense_rows(in_shape, out_shape, flatten):
    # Rows the fully connected map runs over: the batch when flattening, else every leading index.
    return int(in_shape[0]) if flatten else int(np.prod(out_shape[:-1]))


def _nnz(layer):
    """Surviving lookup entries of a training-form lookup layer, after the threshold."""
    return int((mx.nd.abs(layer.lookup.data()) > layer.threshold).sum().asscalar())


def _weight_nnz(block):
    """(nnz, density) of a pruned Conv2D / Dense weight (density <= PRUNED_DENSITY), else
    (None, None)."""
    weight = block.weight
    if weight._data is None:
        return None, None
    data = weight.data(weight.list_ctx()[0])
    nnz = int((data != 0).sum().asscalar())
    if nnz > PRUNED_DENSITY * data.size:
        return None, None
    return nnz, nnz / float(data.size)


def _describe(block, in_shape, out_shape):
    """dict(kind, dense_macs, macs, nnz, density) for a counted block, else None."""
    if hasattr(block, 'lcnn_macs'):
        info = dict(block.lcnn_macs(in_shape, out_shape))
        info.setdefault('nnz', None)
        info.setdefault('density', None)
        return info
    if isinstance(block, LookupConv2D):
        return dict(lookup_macs(block.lookup.shape, _nnz(block), in_shape, out_shape),
                    kind='lookup_conv')
    if isinstance(block, LookupDense):
        return dict(lookup_macs(block.lookup.shape, _nnz(block), in_shape, out_shape,
                                flatten=block.flatten), kind='lookup_dense')
    if isinstance(block, nn.Conv2D) and not isinstance(block, nn.Conv2DTranspose):
        kw = block._kwargs
        m, c, groups = kw['num_filter'], in_shape[1], kw['num_group']
        macs = m * (c // groups) * int(np.prod(kw['kernel'])) * _positions(out_shape)
        nnz, density = _weight_nnz(block)
        return dict(kind='conv' if groups == 1 else 'conv_g%d' % groups, dense_macs=macs,
                    macs=macs if nnz is None else nnz * _positions(out_shape), nnz=nnz,
                    density=density)
    if isinstance(block, nn.Dense):
        flatten = block._flatten
        in_units = int(np.prod(in_shape[1:])) if flatten else int(in_shape[-1])
        rows = _dense_rows(in_shape, out_shape, flatten)
        macs = block._units * in_units * rows
        nnz, density = _weight_nnz(block)
        return dict(kind='dense', dense_macs=macs, macs=macs if nnz is None else nnz * rows,
                    nnz=nnz, density=density)
    # Duck typing: the sparse inference blocks of gluon_lcnn.nn.sparse, or any like them.
    if hasattr(block, 'nnz') and hasattr(block, 'dictionary_size'):
        d = int(_value(block.dictionary_size))
        dictionary = bool(_value(getattr(block, 'has_dictionary', True)))
        if hasattr(block, 'kernel_size'):
            kh, kw = _value(block.kernel_size)
            return dict(lookup_macs((out_shape[1], d, kh, kw), _value(block.nnz), in_shape,
                                    out_shape, dictionary=dictionary), kind='sparse_conv')
        flatten = bool(getattr(block, 'flatten', True))
        return dict(lookup_macs((out_shape[-1], d), _value(block.nnz), in_shape, out_shape,
                                dictionary=dictionary, flatten=flatten), kind='sparse_dense')
    return None


def _shape(x):
    if isinstance(x, (list, tuple)):
        x = x[0]
    return tuple(int(s) for s in x.shape)


class Profile:
    """Result of ``profile``: ``rows`` (list of dicts) and ``totals`` (dict).

    Row keys: name, kind, output_shape, params, dense_macs, macs, nnz, density.
    Totals: params, dense_macs, macs, speedup (dense_macs / macs), layers, input_shape.
    """

    def __init__(self, rows, input_shape):
        self.rows = rows
        dense = sum(r['dense_macs'] for r in rows)
        macs = sum(r['macs'] for r in rows)
        self.totals = OrderedDict([
            ('input_shape', tuple(input_shape)), ('layers', len(rows)),
            ('params', sum(r['params'] for r in rows)), ('dense_macs', dense), ('macs', macs),
            ('speedup', dense / float(macs) if macs else float('inf'))])

    def to_dict(self):
        """Plain JSON-able dict {'rows': [...], 'totals': {...}}."""
        rows = [dict(r, output_shape=list(r['output_shape'])) for r in self.rows]
        totals = dict(self.totals, input_shape=list(self.totals['input_shape']))
        return {'rows': rows, 'totals': totals}

    def table(self, tablefmt='github'):
        """The per-layer table plus a totals line, formatted with tabulate."""
        from tabulate import tabulate

        def mega(v):
            return '%.2f' % (v / 1e6)
        body = [[r['name'], r['kind'], 'x'.join(map(str, r['output_shape'])), r['params'],
                 mega(r['dense_macs']), mega(r['macs']),
                 '' if r['nnz'] is None else r['nnz'],
                 '' if r['density'] is None else '%.4f' % r['density'],
                 '%.1fx' % (r['dense_macs'] / float(r['macs'])) if r['macs'] else '']
                for r in self.rows]
        t = self.totals
        body.append(['total', '', 'x'.join(map(str, t['input_shape'])), t['params'],
                     mega(t['dense_macs']), mega(t['macs']), '', '', '%.1fx' % t['speedup']])
        return tabulate(body, headers=['layer', 'kind', 'output', 'params', 'dense MMACs',
                                       'MMACs', 'nnz(P)', 'density', 'speedup'],
                        tablefmt=tablefmt)

    def __str__(self):
        return self.table()


def probe_forward(net, input_shape, ctx, handles):
    """One imperative inference forward of zeros through ``net`` so its hooks (``handles``) see
    every block; the hooks are detached and each block's hybridization restored afterwards.

    Blocks run imperatively by switching their ``_active`` flag off, not by ``hybridize(False)``:
    that would warn about the hooks just attached ("is being hybridized while still having
    forward hook/pre-hook") and reset the blocks' static_alloc / static_shape flags."""
    active = {}

    def deactivate(block):
        if isinstance(block, mx.gluon.HybridBlock):
            active[id(block)] = (block, block._active)
            block._active = False
    net.apply(deactivate)
    try:
        with mx.autograd.predict_mode():
            net(mx.nd.zeros(input_shape, ctx=ctx))
        mx.nd.waitall()
    finally:
        for h in handles:
            h.detach()
        for block, was in active.values():
            block._active = was


def profile(net, input_shape=(1, 3, 224, 224), ctx=None):
    """Count MACs and parameters of every conv, dense and lookup layer of `net`.

    Parameters
    ----------
    net : Block
        Any Gluon network; uninitialized parameters are initialized (default initializer) so
        a freshly built model can be counted directly. A hybridized net is run imperatively
        once (hooks need it) and its hybridization restored afterwards.
    input_shape : tuple of int
        Shape of the zeros input, batch included (batch 1 gives per-image counts).
    ctx : Context, optional
        Defaults to the context of the net's parameters (or cpu).

    Returns
    -------
    Profile
        ``.rows``, ``.totals`` (dense_macs, macs, speedup, params), ``.table()``, ``.to_dict()``.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if not input_shape or min(input_shape) < 1:
        raise ValueError('profile: input_shape must be positive ints, got %r' % (input_shape,))
    params = net.collect_params()
    fresh = [p for p in params.values() if p._data is None and not p._deferred_init]
    for p in fresh:
        p.initialize(ctx=ctx or mx.cpu())
    if ctx is None:
        ctxs = [c for p in params.values() if p._data is not None for c in p.list_ctx()]
        ctx = ctxs[0] if ctxs else mx.cpu()
    records, handles = [], []

    def visit(block, path):
        handles.append(block.register_forward_hook(
            lambda b, inputs, output, _path=path: records.append((_path, b, inputs, output))))
        for key, child in block._children.items():
            visit(child, path + '.' + key if path else key)
    visit(net, '')
    probe_forward(net, input_shape, ctx, handles)
    rows = []
    for path, block, inputs, output in records:
        info = _describe(block, _shape(inputs), _shape(output))
        if info is None:
            continue
        rows.append(OrderedDict([
            ('name', block.name), ('path', path), ('kind', info['kind']),
            ('output_shape', _shape(output)), ('params', _params(block)),
            ('dense_macs', int(info['dense_macs'])), ('macs', int(info['macs'])),
            ('nnz', info['nnz']), ('density', info['density'])]))
    return Profile(rows, input_shape)


# ---------------------------------------------------------------- CLI: python -m gluon_lcnn flops
def _density_arg(text, model):
    from .model_zoo import ASSUMED_DENSITIES, PUBLISHED_DENSITIES
    table = {'published': PUBLISHED_DENSITIES, 'assumed': ASSUMED_DENSITIES}.get(text)
    if table is None:
        try:
            return float(text)
        except ValueError:
            raise ValueError("--density must be 'published', 'assumed' or a float, got %r" % text)
    if model.lower() not in table:
        raise ValueError('--density %s: no such densities for %r; they exist for %s'
                         % (text, model, ', '.join(sorted(table))))
    return table[model.lower()]


def add_arguments(parser):
    add_model_arguments(parser)
    parser.add_argument('--input-shape', type=nchw_shape, default=(1, 3, 224, 224),
                        help='N,C,H,W of the zeros input (default 1,3,224,224)')
    parser.add_argument('--density', default=None,
                        help="lookup densities before counting: 'published' (the model's "
                             "published per-layer densities, AlexNet presets), 'assumed' "
                             "(ResNet-18 presets, see model_zoo/resnet.py) or one float for "
                             "every layer; default: as initialized")
    parser.add_argument('--seed', type=int, default=0, help='seed for --density survivors')
    parser.add_argument('--json', default=None, help='also write the result as JSON here')


def run(args):
    import json
    from .model_zoo import set_lookup_density
    net = build_model(args)
    net.initialize()
    check_input_shape(net, args.input_shape, args.model)
    if args.density is not None:
        # Lookup layers with a deferred dictionary need one forward to get their shapes.
        profile(net, args.input_shape)
        set_lookup_density(net, _density_arg(args.density, args.model), seed=args.seed)
    result = profile(net, args.input_shape)
    print(result.table())
    t = result.totals
    print('\n%s: %.1f M dense-equivalent MACs, %.1f M MACs, theoretical speedup %.2fx'
          % (args.model, t['dense_macs'] / 1e6, t['macs'] / 1e6, t['speedup']))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result.to_dict(), f, indent=1)
    return result
