"""Model zoo: registry, dense/LCNN variants, small inputs, hybridize + export, presets, densities.

Budget: ~25 s on 2 cores (small inputs; the 224x224 nets only run shape-level forwards).
"""

import mxnet as mx
import numpy as np
import pytest

import gluon_lcnn
from gluon_lcnn.model_zoo import PUBLISHED_DENSITIES, set_lookup_density
from gluon_lcnn.model_zoo.alexnet import ALEXNET_PRESETS
from gluon_lcnn.nn import LookupConv2D, LookupDense, density_report, lookup_layers


def _lookup_sizes(net):
    return [layer.dictionary_size for layer in lookup_layers(net).values()]


def test_list_models_has_every_family_and_preset():
    names = gluon_lcnn.list_models()
    for family in ('lenet', 'alexnet'):
        assert family in names
        assert family + '_lcnn' in names
        assert family + '_lcnn_fast' in names
        assert family + '_lcnn_accurate' in names
    for name in ('resnet18_v1', 'resnet34_v1', 'resnet18_lcnn', 'resnet34_lcnn',
                 'resnet18_lcnn_fast', 'resnet18_lcnn_accurate', 'vgg16', 'vgg16_lcnn',
                 'jacintonet11', 'jacintonet11_lcnn'):
        assert name in names
    assert names == sorted(names)


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="did you mean.*alexnet_lcnn"):
        gluon_lcnn.get_model('alexnet_lcn')
    with pytest.raises(ValueError, match='all models'):
        gluon_lcnn.get_model('no_such_thing_at_all')


def test_get_model_is_case_insensitive():
    assert isinstance(gluon_lcnn.get_model('LeNet'), mx.gluon.HybridBlock)


def test_pretrained_missing_file_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'lenet.params')):
        gluon_lcnn.get_model('lenet', pretrained=True, root=str(tmp_path))


def test_pretrained_loads_params_from_root(tmp_path):
    net = gluon_lcnn.get_model('lenet_lcnn_fast', classes=10)
    net.initialize()
    x = mx.nd.random.uniform(shape=(2, 1, 28, 28))
    ref = net(x)
    net.save_parameters(str(tmp_path / 'lenet_lcnn_fast.params'))
    loaded = gluon_lcnn.get_model('lenet_lcnn_fast', pretrained=True, root=str(tmp_path),
                                  classes=10)
    np.testing.assert_allclose(loaded(x).asnumpy(), ref.asnumpy(), rtol=1e-5, atol=1e-6)


def test_alexnet_presets_use_published_dictionary_sizes():
    assert _lookup_sizes(gluon_lcnn.get_model('alexnet_lcnn_fast')) == [3, 30, 30, 30, 30, 512, 512]
    assert _lookup_sizes(gluon_lcnn.get_model('alexnet_lcnn_accurate')) == \
        [3, 500, 500, 500, 30, 1024, 1024]
    assert ALEXNET_PRESETS['fast'] == (3, 30, 30, 30, 30, 512, 512)


def test_resnet18_presets_and_stage_sizes():
    from gluon_lcnn.model_zoo.resnet import RESNET18_PRESETS
    from gluon_lcnn.model_zoo import ASSUMED_DENSITIES
    for preset in ('fast', 'accurate'):
        net = gluon_lcnn.get_model('resnet18_lcnn_' + preset)
        stem, s1, s2, s3, s4 = RESNET18_PRESETS[preset]
        # stem, 4 convs per stage, plus a 1x1 shortcut in stages 2-4; the fc stays dense.
        assert _lookup_sizes(net) == [stem] + [s1] * 4 + [s2] * 5 + [s3] * 5 + [s4] * 5
        assert len(ASSUMED_DENSITIES['resnet18_lcnn_' + preset]) == 20
        assert isinstance(net.output, mx.gluon.nn.Dense)


def test_resnet34_and_lenet_defaults_are_their_own_presets():
    from gluon_lcnn.model_zoo.lenet import LENET_PRESETS
    from gluon_lcnn.model_zoo.resnet import RESNET18_PRESETS, RESNET34_PRESETS
    stem, s1, s2, s3, s4 = RESNET34_PRESETS['accurate']
    assert RESNET34_PRESETS['accurate'] != RESNET18_PRESETS['accurate']
    # stem, then 6 / 8 / 12 / 6 convs per stage plus a 1x1 shortcut in stages 2-4.
    assert _lookup_sizes(gluon_lcnn.get_model('resnet34_lcnn')) == \
        [stem] + [s1] * 6 + [s2] * 9 + [s3] * 13 + [s4] * 7
    assert _lookup_sizes(gluon_lcnn.get_model('lenet_lcnn')) == list(LENET_PRESETS['accurate'])


def test_jacintonet_grouped_convs_stay_dense():
    net = gluon_lcnn.get_model('jacintonet11_lcnn')
    convs = [b for b in _blocks(net) if isinstance(b, (mx.gluon.nn.Conv2D, LookupConv2D))]
    assert len(convs) == 10
    assert [type(c).__name__ for c in convs] == ['LookupConv2D', 'Conv2D'] * 5
    assert all(c._kwargs['num_group'] == 4 for c in convs if type(c).__name__ == 'Conv2D')


def test_dense_and_lookup_variants_share_the_constructor():
    dense = gluon_lcnn.get_model('alexnet')
    assert not lookup_layers(dense)
    convs = [b for b in _blocks(dense) if isinstance(b, mx.gluon.nn.Conv2D)]
    assert [c._channels for c in convs] == [64, 192, 384, 256, 256, 4096]
    lcnn = gluon_lcnn.get_model('alexnet_lcnn', dictionary_sizes=(None, 8, None, None, None,
                                                                  None, 16))
    assert [type(b) for b in lookup_layers(lcnn).values()] == [LookupConv2D, LookupDense]


def test_lookup_kwargs_pass_through():
    net = gluon_lcnn.get_model('lenet_lcnn', dictionary_sizes=(2, 4, 8), initial_sparsity=0.2,
                               l1_lambda=0.5)
    layers = list(lookup_layers(net).values())
    assert _lookup_sizes(net) == [2, 4, 8]
    assert all(l.initial_sparsity == 0.2 and l.l1_lambda == 0.5 for l in layers)


def test_bad_dictionary_sizes_are_rejected():
    with pytest.raises(ValueError, match='needs 7 entries'):
        gluon_lcnn.get_model('alexnet_lcnn', dictionary_sizes=(3, 30))
    with pytest.raises(ValueError, match='sequence'):
        gluon_lcnn.get_model('lenet_lcnn', dictionary_sizes=8)


def test_alexnet_too_small_input_says_thumbnail():
    with pytest.raises(ValueError, match='thumbnail'):
        gluon_lcnn.get_model('alexnet', input_size=32)


def _blocks(net):
    yield net
    for child in net._children.values():
        yield from _blocks(child)


SMALL_CASES = [
    ('lenet', (2, 1, 28, 28), {}),
    ('lenet_lcnn_fast', (2, 3, 32, 32), dict(thumbnail=True, in_channels=3)),
    ('lenet_lcnn_accurate', (2, 1, 28, 28), {}),
    ('alexnet_lcnn_fast', (2, 1, 28, 28), dict(thumbnail=True, input_size=28, in_channels=1)),
    ('alexnet', (2, 3, 32, 32), dict(thumbnail=True, fc_units=256)),
    ('alexnet_lcnn_accurate', (2, 3, 32, 32), dict(thumbnail=True, fc_units=256)),
    ('resnet18_lcnn_fast', (2, 1, 28, 28), dict(thumbnail=True, in_channels=1)),
    ('resnet34_v1', (2, 3, 32, 32), dict(thumbnail=True)),
    ('vgg16_lcnn', (2, 1, 28, 28), dict(thumbnail=True, input_size=28, in_channels=1,
                                         fc_units=64)),
    ('jacintonet11_lcnn', (2, 3, 32, 32), dict(thumbnail=True)),
]


@pytest.mark.parametrize('name,shape,kwargs', SMALL_CASES, ids=[c[0] for c in SMALL_CASES])
def test_small_inputs_hybridize_and_export(name, shape, kwargs, tmp_path):
    net = gluon_lcnn.get_model(name, classes=10, **kwargs)
    net.initialize(mx.init.Xavier())
    x = mx.nd.random.uniform(shape=shape)
    with mx.autograd.predict_mode():
        ref = net(x)
    assert ref.shape == (shape[0], 10)
    net.hybridize()
    with mx.autograd.predict_mode():
        out = net(x)
    np.testing.assert_allclose(out.asnumpy(), ref.asnumpy(), rtol=1e-4, atol=1e-5)
    prefix = str(tmp_path / name)
    net.export(prefix)
    loaded = mx.gluon.SymbolBlock.imports(prefix + '-symbol.json', ['data'],
                                          prefix + '-0000.params')
    np.testing.assert_allclose(loaded(x).asnumpy(), ref.asnumpy(), rtol=1e-4, atol=1e-5)


def test_set_lookup_density_published_alexnet():
    # Thumbnail with narrow fc layers: the same 7 lookup layers without a 75 M-entry fc6.
    net = gluon_lcnn.get_model('alexnet_lcnn_fast', thumbnail=True, fc_units=256, classes=10)
    net.initialize()
    got = set_lookup_density(net, 'alexnet_lcnn_fast', seed=1)
    report = density_report(net)
    for want, (name, value) in zip(PUBLISHED_DENSITIES['alexnet_lcnn_fast'], got.items()):
        assert abs(value - want) < 1e-3
        assert abs(report[name] - want) < 1e-3
    # The forward pass still runs with the sparse P (a lookup layer computes its effective W).
    layer = next(iter(lookup_layers(net).values()))
    w = layer.effective_weight().asnumpy()
    assert w.shape == (64, 3, 5, 5)
    assert net(mx.nd.ones((1, 3, 32, 32))).shape == (1, 10)


def test_set_lookup_density_forms_and_errors():
    net = gluon_lcnn.get_model('lenet_lcnn_fast')
    net.initialize()
    net(mx.nd.zeros((1, 1, 28, 28)))
    got = set_lookup_density(net, 0.5)
    assert all(abs(v - 0.5) < 0.02 for v in got.values())
    first = next(iter(got))
    set_lookup_density(net, {first: 0.0})
    assert density_report(net)[first] == 0.0
    with pytest.raises(ValueError, match='3 lookup layers'):
        set_lookup_density(net, [0.1, 0.2])
    with pytest.raises(ValueError, match='no published densities'):
        set_lookup_density(net, 'vgg16_lcnn_fast')
    with pytest.raises(ValueError, match=r'\[0, 1\]'):
        set_lookup_density(net, 1.5)


def test_feature_batch_norm_is_batch_norm_of_2d_features():
    """FeatureBatchNorm (the BN after AlexNet's and VGG's fc7) computes what nn.BatchNorm does
    on (N, C), in training and inference, with the same parameter names and shapes."""
    from mxnet.gluon import nn
    from gluon_lcnn.model_zoo.common import FeatureBatchNorm
    x = mx.nd.random.normal(shape=(8, 24))
    ours, ref = FeatureBatchNorm(), nn.BatchNorm()
    assert ours.prefix.startswith('batchnorm')
    for bn in (ours, ref):
        bn.initialize()
        bn(x)
        for p in bn.collect_params().values():
            p.set_data(mx.nd.random.uniform(0.5, 1.5, shape=p.shape, ctx=p.list_ctx()[0]))
    for p, q in zip(ours.collect_params().values(), ref.collect_params().values()):
        q.set_data(p.data())
    np.testing.assert_allclose(ours(x).asnumpy(), ref(x).asnumpy(), rtol=1e-5, atol=1e-5)
    with mx.autograd.record():
        a, b = ours(x), ref(x)
    np.testing.assert_allclose(a.asnumpy(), b.asnumpy(), rtol=1e-4, atol=1e-4)
    assert a.shape == (8, 24)


@pytest.mark.parametrize('name', ['alexnet', 'alexnet_lcnn_fast', 'vgg16'])
def test_fc6_then_fc7_batch_norm_runs_at_224(name):
    # fc6 (a conv with a 1x1 output) and fc7 (Dense) have BatchNorms of the same width: a plain
    # nn.BatchNorm after fc7 crashes MXNet 1.9's MKLDNN on AVX-512 CPUs.
    net = gluon_lcnn.get_model(name)
    net.initialize()
    with mx.autograd.record():
        y = net(mx.nd.ones((2, 3, 224, 224)))
    assert y.shape == (2, 1000) and np.isfinite(y.asnumpy()).all()
    assert np.isfinite(net(mx.nd.ones((1, 3, 224, 224))).asnumpy()).all()
