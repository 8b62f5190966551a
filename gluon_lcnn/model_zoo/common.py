"""Layer factory and density helpers shared by every model family.

One constructor builds both the dense network and its LCNN twin: a dictionary size of ``None``
gives ``gluon.nn.Conv2D`` / ``gluon.nn.Dense``, an int gives ``LookupConv2D`` / ``LookupDense``
with the same geometry. ``initial_sparsity`` and ``l1_lambda`` travel in ``lookup_kwargs``.
"""
import math
from collections import OrderedDict

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from ..nn.lookup import LookupConv2D, LookupDense, lookup_layers

__all__ = ['conv2d', 'dense', 'conv_bn_relu', 'FeatureBatchNorm', 'split_lookup_kwargs',
           'sizes_tuple',
           'set_lookup_density', 'PUBLISHED_DENSITIES',
           'ASSUMED_DENSITIES']

_LOOKUP_KEYS = ('initial_sparsity', 'l1_lambda', 'form')

# Fraction of non-zero lookup entries per lookup layer reported for the published AlexNet
# models (conv1..conv5, fc6, fc7; docs/ARCHITECTURE.md, "How MACs are counted"). Used by `set_lookup_density(net, 'published')`,
# `flops --density published` and the model benchmarks.
PUBLISHED_DENSITIES = {
    'alexnet_lcnn_fast': (0.083, 0.034, 0.008, 0.013, 0.027, 0.001, 0.002),
    'alexnet_lcnn_accurate': (0.129, 0.040, 0.029, 0.034, 0.071, 0.006, 0.007),
}

# Not published: what we assume for models the paper gives only totals for (see the
# derivation in resnet.py). ResNet-18 has 20 lookup convs: the stem, then 19 in the stages.
ASSUMED_DENSITIES = {
    'resnet18_lcnn_fast': (0.083,) + (0.0205,) * 19,
    'resnet18_lcnn_accurate': (0.129,) + (0.0435,) * 19,
}


def split_lookup_kwargs(kwargs):
    """Pop the lookup-layer options (initial_sparsity, l1_lambda, form) out of a constructor's
    kwargs."""
    return {k: kwargs.pop(k) for k in _LOOKUP_KEYS if k in kwargs}


def sizes_tuple(dictionary_sizes, count, family):
    """Validate per-layer dictionary sizes: None (all dense) or a sequence of `count` entries."""
    if dictionary_sizes is None:
        return (None,) * count
    if isinstance(dictionary_sizes, (int, np.integer)):
        raise ValueError('%s: dictionary_sizes must be a sequence of %d entries (int or None), '
                         'got the single int %r' % (family, count, dictionary_sizes))
    sizes = tuple(None if s is None else int(s) for s in dictionary_sizes)
    if len(sizes) != count:
        raise ValueError('%s: dictionary_sizes needs %d entries (int or None), got %d: %r'
                         % (family, count, len(sizes), dictionary_sizes))
    for s in sizes:
        if s is not None and s < 1:
            raise ValueError('%s: dictionary sizes must be positive, got %r' % (family, sizes))
    return sizes


def conv2d(channels, kernel_size, strides=1, padding=0, dictionary_size=None, groups=1,
           use_bias=True, in_channels=0, activation=None, lookup_kwargs=None, **kwargs):
    """Conv2D when `dictionary_size` is None, otherwise a LookupConv2D of the same geometry.

    Grouped convolutions have no lookup form here and must get ``dictionary_size=None``.
    """
    if dictionary_size is None:
        return nn.Conv2D(channels, kernel_size, strides=strides, padding=padding, groups=groups,
                         use_bias=use_bias, in_channels=in_channels, activation=activation,
                         **kwargs)
    if groups != 1:
        raise ValueError('conv2d: a lookup convolution cannot be grouped (groups=%d); give this '
                         'layer dictionary_size=None' % groups)
    return LookupConv2D(channels, kernel_size, strides=strides, padding=padding,
                        dictionary_size=dictionary_size, in_channels=in_channels,
                        use_bias=use_bias, activation=activation, **(lookup_kwargs or {}),
                        **kwargs)


def dense(units, dictionary_size=None, use_bias=True, in_units=0, activation=None,
          lookup_kwargs=None, **kwargs):
    """Dense when `dictionary_size` is None, otherwise a LookupDense of the same geometry."""
    if dictionary_size is None:
        return nn.Dense(units, use_bias=use_bias, in_units=in_units, activation=activation,
                        **kwargs)
    return LookupDense(units, dictionary_size=dictionary_size, in_units=in_units,
                       use_bias=use_bias, activation=activation, **(lookup_kwargs or {}), **kwargs)


class FeatureBatchNorm(nn.BatchNorm):
    """``nn.BatchNorm`` of (N, C) features (after a Dense layer), run on their (N, C, 1, 1) view.

    MXNet 1.9's MKLDNN BatchNorm runs a 2-D input as (N, C, 1, 1) but looks its primitive up
    under a key that does not tell the two apart: after a BatchNorm of a real (N, C, 1, 1)
    tensor in a blocked layout (AlexNet's fc6, a convolution with a 1x1 output) a BatchNorm of
    (N, C) features of the same width (fc7) reuses that primitive, and on AVX-512 CPUs the
    process dies with a segmentation fault. The explicit 4-D view gets a primitive of its own.
    Same parameters, same names and same folding by ``deploy.to_inference`` as ``nn.BatchNorm``.
    """

    def _alias(self):
        return 'batchnorm'

    def hybrid_forward(self, F, x, gamma, beta, running_mean, running_var):
        y = super().hybrid_forward(F, F.reshape(x, (0, 0, 1, 1)), gamma, beta, running_mean,
                                   running_var)
        return F.Flatten(y)


def conv_bn_relu(seq, channels, kernel_size, strides=1, padding=0, dictionary_size=None,
                 groups=1, lookup_kwargs=None, relu=True):
    """Append conv (no bias: BN follows, so deploy can fold it) + BatchNorm (+ ReLU) to `seq`."""
    seq.add(conv2d(channels, kernel_size, strides, padding, dictionary_size, groups=groups,
                   use_bias=False, lookup_kwargs=lookup_kwargs))
    seq.add(nn.BatchNorm())
    if relu:
        seq.add(nn.Activation('relu'))
    return seq


def _sample_indices(rng, size, count):
    """`count` distinct indices in [0, size) without permuting all of them (P can be 150 M)."""
    if count * 4 > size:
        return rng.permutation(size)[:count]
    picked = np.unique(rng.randint(0, size, int(count * 1.1) + 16))
    while picked.size < count:
        picked = np.union1d(picked, rng.randint(0, size, count))
    return rng.choice(picked, count, replace=False)


def set_lookup_density(net, densities, seed=0):
    """Sparsify every lookup layer's P to a given fraction of non-zeros (random survivors).

    For benchmarks and MAC counts of models nobody has trained here: survivors get a random
    sign and a magnitude of at least twice the layer's threshold, all other entries become
    exactly zero, so ``layer.density()`` reports the requested value (up to rounding to whole
    entries). The dictionary is left as it is.

    Parameters
    ----------
    net : Block
        An initialized network containing LookupConv2D / LookupDense layers.
    densities : sequence of float, dict, float or str
        A sequence gives one density per lookup layer in registration order (the order of
        ``gluon_lcnn.nn.lookup_layers(net)``); a dict maps layer names to densities (others
        untouched); a float applies to every layer; a string names a model in
        ``PUBLISHED_DENSITIES`` (e.g. ``'alexnet_lcnn_fast'``) or ``ASSUMED_DENSITIES``.
    seed : int
        Seed of the numpy generator that picks the survivors.

    Returns
    -------
    OrderedDict
        layer name -> density now in effect.
    """
    layers = lookup_layers(net)
    if not layers:
        raise ValueError('set_lookup_density: %s has no lookup layers' % type(net).__name__)
    if isinstance(densities, str):
        known = dict(ASSUMED_DENSITIES, **PUBLISHED_DENSITIES)
        if densities.lower() not in known:
            raise ValueError('set_lookup_density: no published densities for %r; known: %s'
                             % (densities, sorted(known)))
        densities = known[densities.lower()]
    if isinstance(densities, (int, float)):
        targets = OrderedDict((name, float(densities)) for name in layers)
    elif isinstance(densities, dict):
        unknown = sorted(set(densities) - set(layers))
        if unknown:
            raise ValueError('set_lookup_density: %s are not lookup layers of this net (it has %s)'
                             % (unknown, list(layers)))
        targets = OrderedDict((k, float(v)) for k, v in densities.items())
    else:
        densities = list(densities)
        if len(densities) != len(layers):
            raise ValueError('set_lookup_density: got %d densities for %d lookup layers (%s)'
                             % (len(densities), len(layers), list(layers)))
        targets = OrderedDict(zip(layers, (float(d) for d in densities)))
    rng = np.random.RandomState(seed)
    result = OrderedDict()
    for name, density in targets.items():
        if not 0.0 <= density <= 1.0:
            raise ValueError('set_lookup_density: density for %s must be in [0, 1], got %r'
                             % (name, density))
        layer = layers[name]
        shape = layer.lookup.shape
        size = int(np.prod(shape))
        keep = int(round(density * size))
        alive = _sample_indices(rng, size, keep)
        # Survivors: random sign, magnitude uniform in [2 t, max(4 t, init bound)], so they
        # clear the threshold t by a margin; everything else is exactly zero.
        low = 2.0 * layer.threshold if layer.threshold > 0 else 1e-3
        high = max(2.0 * low, 1.0 / math.sqrt(size / float(shape[0])))
        values = np.zeros(size, dtype=np.float32)
        values[alive] = rng.uniform(low, high, keep) * rng.choice((-1.0, 1.0), keep)
        layer.lookup.set_data(mx.nd.array(values.reshape(shape), dtype=layer.lookup.dtype))
        result[name] = keep / float(size)
    return result
