"""to_lcnn: turn any Gluon network into an LCNN by swapping its Conv2D / Dense layers.

Every ``gluon.nn.Conv2D`` with ``groups == 1``, ``dilation == 1`` and NCHW layout becomes a
``LookupConv2D`` and every ``gluon.nn.Dense`` a ``LookupDense`` with the same geometry (channels,
kernel, strides, padding, use_bias, activation, flatten) and the same parameter prefix, so the
new parameters are named ``<old prefix>dictionary`` / ``lookup`` / ``bias``. What stays dense:

- grouped and depthwise convolutions (the lookup form has no groups), silently: they are
  usually cheap already (MobileNet-style nets keep their depthwise layers);
- dilated convolutions and non-NCHW layouts, with a warning;
- Conv2DTranspose and anything that is not a Conv2D / Dense;
- layers matched by ``skip`` or given dictionary size 0 / None by a callable.

``init_from_weights=True`` starts the LCNN from the trained dense weights W (m, c, kh, kw): the
dictionary D is the top right-singular vectors of the m*kh*kw channel vectors W[r, :, i, j]
(a truncated SVD, the best rank-d subspace in the least-squares sense) and P holds each
vector's coefficients in it. Because D's rows are orthonormal, least squares, orthogonal
matching pursuit and projection all give the same coefficients; ``atoms=k`` keeps only the k
largest per vector (OMP with k atoms). With d >= rank(W) (e.g. d >= c) the layer reproduces
the dense one exactly; below that the error falls monotonically as d grows. If d exceeds the
rank, the extra atoms are random unit vectors with zero coefficients (training can use them).

Thresholding: a lookup layer zeroes |P| <= threshold = initial_sparsity / sqrt(kh*kw*d). The
fitted D, P are rescaled (D / s, P * s, same product) so that P has the spread of the layer's
default initialisation, and with ``initial_sparsity=None`` each converted layer gets the
largest initial_sparsity <= 0.01 whose threshold stays below half its smallest non-zero
coefficient, so no fitted coefficient is cut (read it back as ``layer.initial_sparsity``).
An explicit ``initial_sparsity`` is used as given and may cut small coefficients.
"""
import fnmatch
import logging
import math
import warnings

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from .nn.lookup import LookupConv2D, LookupDense

__all__ = ['to_lcnn', 'fit_lookup']

_log = logging.getLogger(__name__)
_DEFAULT_SPARSITY = 0.01


def fit_lookup(weight, dictionary_size, atoms=None, seed=0):
    """Dictionary D and lookup P with W[r, :, i, j] ~= sum_q P[r, q, i, j] D[q, :].

    Parameters
    ----------
    weight : numpy array, (m, c, kh, kw) or (units, in_units)
    dictionary_size : int
    atoms : int, optional
        Non-zero coefficients kept per channel vector (largest first); None keeps all d.
    seed : int
        For the random extra atoms when d exceeds the rank of the channel vectors.

    Returns
    -------
    (D, P) : numpy float64 arrays, D (d, c), P (m, d, kh, kw) or (units, d); D's rows are
    orthonormal, unscaled.
    """
    w = np.asarray(weight, dtype=np.float64)
    conv = w.ndim == 4
    if not conv and w.ndim != 2:
        raise ValueError('fit_lookup: weight must be 4-D (conv) or 2-D (dense), got shape %s'
                         % (w.shape,))
    d = int(dictionary_size)
    if d < 1:
        raise ValueError('fit_lookup: dictionary_size must be positive, got %r' % dictionary_size)
    if atoms is not None and not 1 <= int(atoms) <= d:
        raise ValueError('fit_lookup: atoms must be in [1, dictionary_size=%d], got %r'
                         % (d, atoms))
    m, c = w.shape[:2]
    kernel = w.shape[2:] if conv else ()
    vectors = w.transpose(0, 2, 3, 1).reshape(-1, c) if conv else w
    _, sing, vt = np.linalg.svd(vectors, full_matrices=False)
    # Directions with (numerically) zero singular value carry nothing: treat as rank-deficient.
    rank = int((sing > sing[0] * 1e-10).sum()) if sing.size and sing[0] > 0 else 0
    used = min(d, rank)
    basis = vt[:used]
    extra = np.zeros((d - used, c))
    if d > used:
        rng = np.random.RandomState(seed)
        extra = rng.randn(d - used, c)
        extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    dictionary = np.vstack([basis, extra])
    coef = np.zeros((vectors.shape[0], d))
    coef[:, :used] = vectors.dot(basis.T)
    if atoms is not None and int(atoms) < d:
        drop = np.argsort(-np.abs(coef), axis=1)[:, int(atoms):]
        np.put_along_axis(coef, drop, 0.0, axis=1)
    if conv:
        lookup = coef.reshape((m,) + tuple(kernel) + (d,)).transpose(0, 3, 1, 2)
    else:
        lookup = coef
    return dictionary, lookup


def _param_ready(param):
    return param is not None and param._data is not None


def _act_type(block):
    act = getattr(block, 'act', None)
    return None if act is None else act._act_type


def _geometry(block):
    """Constructor kwargs of the lookup twin of a Conv2D / Dense, or None (with a reason)."""
    if isinstance(block, nn.Conv2D) and not isinstance(block, nn.Conv2DTranspose):
        w = block.weight
        kw = block._kwargs
        if kw.get('layout', 'NCHW') != 'NCHW':
            return None, 'layout %s (lookup layers are NCHW)' % kw['layout']
        if kw['num_group'] != 1:
            return None, 'grouped (groups=%d)' % kw['num_group']
        if tuple(kw['dilate']) != (1, 1):
            return None, 'dilated (dilation=%s)' % (tuple(kw['dilate']),)
        in_channels = w.shape[1] if w.shape and w.shape[1] else block._in_channels
        return dict(kind='conv', channels=kw['num_filter'], kernel_size=tuple(kw['kernel']),
                    strides=tuple(kw['stride']), padding=tuple(kw['pad']),
                    in_channels=int(in_channels), use_bias=not kw['no_bias'],
                    activation=_act_type(block)), None
    if isinstance(block, nn.Dense):
        w = block.weight
        in_units = w.shape[1] if w.shape and w.shape[1] else block._in_units
        return dict(kind='dense', units=block._units, in_units=int(in_units),
                    use_bias=block.bias is not None, activation=_act_type(block),
                    flatten=block._flatten), None
    return None, None


def _walk(block, path=''):
    """(parent, key, child, path) for every child, depth first in registration order."""
    for key, child in list(block._children.items()):
        child_path = path + '.' + key if path else key
        yield block, key, child, child_path
        yield from _walk(child, child_path)


def replace_child(parent, key, new):
    """Put block ``new`` in child slot ``key`` of ``parent``, and in every attribute of
    ``parent`` that pointed at the old child (custom hybrid_forward code reaches children
    through attributes such as ``self.body``)."""
    old = parent._children[key]
    parent._children[key] = new
    for attr, value in list(vars(parent).items()):
        if value is old:
            # Block.__setattr__ refuses to change an attribute's type (Conv2D -> LookupConv2D).
            object.__setattr__(parent, attr, new)


def _resolve_size(size, path, block):
    if callable(size):
        size = size(path, block)
    if size is None or size == 0:
        return None
    if int(size) < 1:
        raise ValueError('to_lcnn: dictionary size for %s must be positive, got %r' % (path, size))
    return int(size)


def _build(geo, size, prefix, lookup_kwargs):
    if geo['kind'] == 'conv':
        return LookupConv2D(geo['channels'], geo['kernel_size'], strides=geo['strides'],
                            padding=geo['padding'], dictionary_size=size,
                            in_channels=geo['in_channels'], use_bias=geo['use_bias'],
                            activation=geo['activation'], prefix=prefix, **lookup_kwargs)
    return LookupDense(geo['units'], dictionary_size=size, in_units=geo['in_units'],
                       use_bias=geo['use_bias'], activation=geo['activation'],
                       flatten=geo['flatten'], prefix=prefix, **lookup_kwargs)


def _from_weights(old, geo, size, atoms, initial_sparsity, l1_lambda):
    """A lookup layer initialised from `old`'s trained weights (see the module docstring)."""
    ctx = old.weight.list_ctx()
    weight = old.weight.data(ctx[0]).asnumpy()
    dictionary, lookup = fit_lookup(weight, size, atoms=atoms)
    kernel = geo.get('kernel_size', (1, 1))
    fan_in = kernel[0] * kernel[1] * size
    nonzero = np.abs(lookup[lookup != 0])
    if nonzero.size:
        # Rescale so P's spread matches the default init (uniform +-1/sqrt(fan_in)).
        scale = (1.0 / math.sqrt(3.0 * fan_in)) / math.sqrt(np.mean(nonzero ** 2))
        lookup, dictionary = lookup * scale, dictionary / scale
        nonzero = nonzero * scale
    if initial_sparsity is None:
        initial_sparsity = _DEFAULT_SPARSITY
        if nonzero.size:
            keep_all = 0.5 * float(nonzero.min()) * math.sqrt(fan_in)
            initial_sparsity = min(_DEFAULT_SPARSITY, keep_all)
    new = _build(geo, size, old.prefix, dict(initial_sparsity=initial_sparsity,
                                             l1_lambda=l1_lambda))
    new.initialize(ctx=ctx)
    shape = new.dictionary.shape
    new.dictionary.set_data(mx.nd.array(dictionary.reshape(shape), dtype='float32'))
    new.lookup.set_data(mx.nd.array(lookup, dtype='float32'))
    if new.bias is not None:
        new.bias.set_data(old.bias.data(ctx[0]))
    return new


def to_lcnn(net, dictionary_size=32, first_dictionary_size=None, dense_dictionary_size=None,
            skip=(), init_from_weights=False, initial_sparsity=None, l1_lambda=0.0, atoms=None):
    """Replace every Conv2D (groups 1) and Dense in `net` by a lookup layer; returns the net.

    Parameters
    ----------
    net : Block
        Any Gluon network, e.g. ``gluoncv.model_zoo.get_model('resnet18_v1')``. Modified in
        place (the returned object is `net`, or the new layer if `net` itself is a Conv2D/Dense).
    dictionary_size : int or callable, default 32
        Dictionary size d of the converted convolutions. A callable ``f(path, block)`` returning
        an int, or None / 0 to keep that layer dense, decides per layer (path: dotted child keys
        such as ``'features.4.body.0'``).
    first_dictionary_size : int, optional
        d of the first convolution (registration order; usually the one on the image, where
        c = 3 makes 3 atoms enough). Default: as `dictionary_size`.
    dense_dictionary_size : int, optional
        d of converted Dense layers; default as `dictionary_size`; 0 keeps Dense layers dense.
    skip : iterable of str
        fnmatch patterns on a layer's name (``'resnetv10_dense0'``) or path; matches stay dense.
    init_from_weights : bool, default False
        Fit D and P to the dense layer's weights (the net must be initialized); copies the bias.
        Otherwise new layers get the default lookup init (initialized right away if the old
        layer was).
    initial_sparsity : float, optional
        For every new layer; None = 0.01, lowered per layer with `init_from_weights` so the fit
        survives the threshold (module docstring).
    l1_lambda : float, default 0
    atoms : int, optional
        With `init_from_weights`, non-zero coefficients per channel vector (OMP with k atoms).

    Returns
    -------
    Block
    """
    if isinstance(skip, str):
        skip = (skip,)
    skip = tuple(skip)
    first_size = dictionary_size if first_dictionary_size is None else first_dictionary_size
    dense_size = dictionary_size if dense_dictionary_size is None else dense_dictionary_size
    root_holder = nn.HybridSequential(prefix='')
    root_holder._children['net'] = net
    todo, first_seen = [], False
    for parent, key, child, path in _walk(root_holder):
        path = path[len('net.'):] if path.startswith('net.') else ''
        if isinstance(child, (LookupConv2D, LookupDense)):
            continue
        geo, why_not = _geometry(child)
        if geo is None:
            if why_not and not why_not.startswith('grouped'):
                warnings.warn('to_lcnn: %s (%s) stays dense: %s'
                              % (child.name, path or 'root', why_not))
            if why_not and why_not.startswith('grouped') and not first_seen:
                first_seen = True  # the first conv is taken, grouped or not
            continue
        is_first = geo['kind'] == 'conv' and not first_seen
        if geo['kind'] == 'conv':
            first_seen = True
        if any(fnmatch.fnmatch(child.name, p) or fnmatch.fnmatch(path, p) for p in skip):
            continue
        size = first_size if is_first else (dense_size if geo['kind'] == 'dense'
                                            else dictionary_size)
        size = _resolve_size(size, path or child.name, child)
        if size is not None:
            todo.append((parent, key, child, geo, size))
    if init_from_weights:
        missing = [c.name for _, _, c, _, _ in todo if not _param_ready(c.weight)]
        if missing:
            raise ValueError('to_lcnn(init_from_weights=True): layers %s have no initialized '
                             'weights; initialize or load the net first' % missing)
    for parent, key, old, geo, size in todo:
        if init_from_weights:
            new = _from_weights(old, geo, size, atoms, initial_sparsity, l1_lambda)
        else:
            new = _build(geo, size, old.prefix, dict(
                initial_sparsity=_DEFAULT_SPARSITY if initial_sparsity is None
                else initial_sparsity, l1_lambda=l1_lambda))
            if _param_ready(old.weight) and (geo.get('in_channels') or geo.get('in_units')):
                new.initialize(ctx=old.weight.list_ctx())
        replace_child(parent, key, new)
        _log.info('to_lcnn: %s -> %r', old.name, new)
    for _, _, block, _ in _walk(root_holder):
        if isinstance(block, mx.gluon.HybridBlock):
            block._clear_cached_op()
    return root_holder._children['net']
