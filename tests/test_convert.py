"""to_lcnn: layer swapping in any Gluon net (incl. GluonCV ResNet-18), geometry, skipping,
exact reconstruction from dense weights, error falling with the dictionary size.

Budget: ~25 s on 2 cores (32x32 inputs, small dictionaries except one exactness check).
"""
import warnings

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

from gluon_lcnn import to_lcnn
from gluon_lcnn.convert import fit_lookup
from gluon_lcnn.nn import LookupConv2D, LookupDense, lookup_layers


def _small_net():
    net = nn.HybridSequential()
    with net.name_scope():
        net.add(nn.Conv2D(16, 3, padding=1, in_channels=3, activation='relu'),
                nn.Conv2D(24, 3, strides=2, padding=1, in_channels=16),
                nn.BatchNorm(), nn.Activation('relu'),
                nn.Conv2D(24, 3, padding=1, groups=4, in_channels=24),
                nn.Flatten(),
                nn.Dense(10, in_units=24 * 8 * 8))
    return net


def _rel_err(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_gluoncv_resnet18_converts_and_runs():
    gluoncv = pytest.importorskip('gluoncv')
    net = gluoncv.model_zoo.get_model('resnet18_v1', classes=10)
    convs = sum(isinstance(b, nn.Conv2D) for _, _, b, _ in _walk(net))
    net = to_lcnn(net, dictionary_size=16, first_dictionary_size=3, dense_dictionary_size=8)
    layers = lookup_layers(net)
    assert len(layers) == convs + 1
    assert not any(isinstance(b, (nn.Conv2D, nn.Dense)) for _, _, b, _ in _walk(net))
    first = net.features[0]
    assert isinstance(first, LookupConv2D) and first.dictionary_size == 3
    assert (first.kernel_size, first.strides, first.padding) == ((7, 7), (2, 2), (3, 3))
    assert isinstance(net.output, LookupDense) and net.output.dictionary_size == 8
    # Names keep the old prefix; attributes and _children agree.
    assert net.prefix + 'conv0_dictionary' in net.collect_params()
    assert net._children['output'] is net.output
    net.initialize()
    x = mx.nd.random.uniform(shape=(1, 3, 32, 32))
    ref = net(x)
    net.hybridize()
    np.testing.assert_allclose(net(x).asnumpy(), ref.asnumpy(), rtol=1e-4, atol=1e-5)
    assert ref.shape == (1, 10)


def _walk(block, path=''):
    for key, child in block._children.items():
        yield block, key, child, path + '.' + key
        yield from _walk(child, path + '.' + key)


def test_geometry_skip_groups_and_activation():
    net = _small_net()
    net.initialize()
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # grouped convs stay dense without a warning
        net = to_lcnn(net, dictionary_size=4, skip=('*dense*',))
    kinds = [type(b).__name__ for b in net._children.values()]
    assert kinds == ['LookupConv2D', 'LookupConv2D', 'BatchNorm', 'Activation', 'Conv2D',
                     'Flatten', 'Dense']
    c0, c1 = net[0], net[1]
    assert c0.activation == 'relu' and c1.activation is None
    assert c1.strides == (2, 2) and c1.padding == (1, 1) and c1.channels == 24
    assert c0.dictionary_size == 4 and c0.in_channels == 3
    # The old layers were initialized, so the new ones are too: the net runs at once.
    assert net(mx.nd.ones((2, 3, 16, 16))).shape == (2, 10)


def test_dilated_conv_stays_dense_with_warning():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, dilation=2, in_channels=3), nn.Conv2D(8, 1, in_channels=8))
    with pytest.warns(UserWarning, match='dilat'):
        net = to_lcnn(net, dictionary_size=4)
    assert type(net[0]) is nn.Conv2D and isinstance(net[1], LookupConv2D)


def test_callable_dictionary_size_and_root_layer():
    net = _small_net()
    net = to_lcnn(net, dictionary_size=lambda path, block: 5 if path == '1' else None)
    assert [type(b).__name__ for b in lookup_layers(net).values()] == ['LookupConv2D']
    layer = to_lcnn(nn.Dense(7, in_units=5), dictionary_size=3)
    assert isinstance(layer, LookupDense) and layer.units == 7


def test_lookup_kwargs_pass_through():
    net = to_lcnn(_small_net(), dictionary_size=4, initial_sparsity=0.3, l1_lambda=0.1)
    assert all(l.initial_sparsity == 0.3 and l.l1_lambda == 0.1
               for l in lookup_layers(net).values())


def test_init_from_weights_needs_initialized_net():
    with pytest.raises(ValueError, match='initialize'):
        to_lcnn(_small_net(), dictionary_size=4, init_from_weights=True)


def test_init_from_weights_exact_when_dictionary_covers_channels():
    net = _small_net()
    net.initialize(mx.init.Xavier())
    for p in net.collect_params('.*bias').values():
        p.set_data(mx.nd.random.uniform(-1, 1, shape=p.shape))
    x = mx.nd.random.uniform(-1, 1, shape=(2, 3, 16, 16))
    with mx.autograd.predict_mode():
        ref = net(x).asnumpy()
    conv_ref = net[1].weight.data().asnumpy()
    # d >= c for every layer (3 and 16 input channels, dense in_units 1536 >= rank 10).
    net = to_lcnn(net, dictionary_size=16, first_dictionary_size=3, dense_dictionary_size=10,
                  init_from_weights=True)
    np.testing.assert_allclose(net[1].effective_weight().asnumpy(), conv_ref, rtol=1e-4,
                               atol=1e-6)
    with mx.autograd.predict_mode():
        out = net(x).asnumpy()
    assert _rel_err(out, ref) < 1e-5
    # The thresholds sit below every fitted coefficient: nothing was cut.
    for layer in lookup_layers(net).values():
        p = layer.lookup.data().asnumpy()
        assert np.all((p == 0) | (np.abs(p) > layer.threshold))


def test_init_from_weights_error_falls_with_dictionary_size():
    rng = np.random.RandomState(0)
    # Weights with a decaying spectrum over the 32 input channels, like trained filters.
    w = rng.randn(48, 32, 3, 3) * (0.8 ** np.arange(32))[None, :, None, None]
    conv = nn.Conv2D(48, 3, padding=1, in_channels=32)
    conv.initialize()
    conv.weight.set_data(mx.nd.array(w))
    x = mx.nd.random.uniform(-1, 1, shape=(1, 32, 12, 12))
    ref = conv(x).asnumpy()
    errors = []
    for d in (2, 4, 8, 16, 32):
        dense = nn.Conv2D(48, 3, padding=1, in_channels=32)
        dense.initialize()
        dense.weight.set_data(mx.nd.array(w))
        dense.bias.set_data(conv.bias.data())
        layer = to_lcnn(dense, dictionary_size=d, init_from_weights=True)
        errors.append(_rel_err(layer(x).asnumpy(), ref))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 0.1 and errors[-1] < 1e-5, errors


def test_fit_lookup_atoms_and_validation():
    rng = np.random.RandomState(1)
    w = rng.randn(6, 5)
    d, p = fit_lookup(w, 5, atoms=2)
    assert d.shape == (5, 5) and p.shape == (6, 5)
    assert np.all((p != 0).sum(axis=1) <= 2)
    d_full, p_full = fit_lookup(w, 8)   # more atoms than the rank: extra atoms unused
    np.testing.assert_allclose(p_full.dot(d_full), w, atol=1e-10)
    assert np.all(p_full[:, 5:] == 0)
    with pytest.raises(ValueError, match='atoms'):
        fit_lookup(w, 4, atoms=5)
    with pytest.raises(ValueError, match='4-D'):
        fit_lookup(np.zeros((2, 2, 2)), 2)
