"""to_inference: BN folding, ReLU fusion, sparse/dense kernels, zoo models, export round trip.

Budget: about 1 minute on the 2-core CI machine (zoo models run at thumbnail sizes).
"""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import HybridBlock, nn

import gluon_lcnn
from gluon_lcnn import deploy
from gluon_lcnn.compare import randomize_batchnorm
from gluon_lcnn.model_zoo import get_model, list_models, set_lookup_density
from gluon_lcnn.nn import LookupConv2D, LookupDense
from gluon_lcnn.nn.sparse import CoveringConv, LcnnMaxPool, SparseLookupConv2D, SparseLookupDense

RTOL = 1e-4


def rel_err(out, ref):
    out, ref = out.asnumpy(), ref.asnumpy()
    return float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))


def blocks_of(net, kind):
    found = [net] if isinstance(net, kind) else []
    for child in net._children.values():
        found.extend(blocks_of(child, kind))
    return found


def prepared(net, x, seed=0, density=None):
    """Initialize, run once, give BN non-trivial statistics (and P a density)."""
    net.initialize(mx.init.Xavier())
    net(x)
    randomize_batchnorm(net, seed)
    if density is not None:
        set_lookup_density(net, density, seed=seed)
    return net


# Random layer configs: (in_channels, channels, kernel, strides, padding, dictionary, in_size)
CONV_CONFIGS = [
    (3, 8, (3, 2), (2, 1), (1, 0), 3, (11, 9)),
    (6, 5, (1, 3), 1, (0, 1), 4, (7, 8)),
    (4, 7, (5, 5), (2, 3), (2, 1), 6, (13, 12)),
    (5, 4, 1, 1, 0, 2, (6, 5)),
]


@pytest.mark.parametrize('choose', ['sparse', 'dense'])
@pytest.mark.parametrize('config', range(len(CONV_CONFIGS)))
def test_lookup_conv_bn_relu_folds(config, choose):
    c, m, k, s, p, d, size = CONV_CONFIGS[config]
    rng = np.random.RandomState(config)
    net = nn.HybridSequential()
    net.add(LookupConv2D(m, k, strides=s, padding=p, dictionary_size=d, initial_sparsity=0.5),
            nn.BatchNorm(), nn.Activation('relu'),
            LookupConv2D(m + 1, 3, padding=1, dictionary_size=d, use_bias=False),
            nn.BatchNorm(),
            nn.Flatten(), LookupDense(6, dictionary_size=3), nn.BatchNorm(), nn.Activation('relu'),
            nn.Dense(3))
    x = mx.nd.array(rng.normal(0, 1, (3, c) + size))
    prepared(net, x, seed=config)
    ref = net(x)
    inf = deploy.to_inference(net, choose=choose)
    assert not blocks_of(inf, nn.BatchNorm)
    # Every ReLU was fused into the layer before it.
    assert not any(isinstance(b, nn.Activation) for b in inf._children.values())
    assert len(inf) == 5
    sparse_blocks = blocks_of(inf, (SparseLookupConv2D, SparseLookupDense))
    assert len(sparse_blocks) == (3 if choose == 'sparse' else 0)
    if choose == 'sparse':
        assert sparse_blocks[0].relu and not sparse_blocks[1].relu and sparse_blocks[2].relu
    assert [v['choice'] for v in inf.kernel_choices.values()] == [choose] * 3
    assert rel_err(inf(x), ref) < RTOL
    inf.hybridize()
    assert rel_err(inf(x), ref) < RTOL


@pytest.mark.parametrize('choose', ['sparse', 'dense'])
def test_dense_net_folds_and_unusual_bn(choose):
    # Conv2D/Dense + BN folding (the dense twin gets the same treatment), grouped convs,
    # BN without scale/center, and patterns that must stay: BN after a conv with activation.
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, (3, 2), strides=(2, 1), padding=(1, 0)), nn.BatchNorm(),
            nn.Activation('relu'),
            nn.Conv2D(6, 3, groups=2, use_bias=False), nn.BatchNorm(scale=False, center=False),
            nn.Conv2D(6, 1, activation='relu'), nn.BatchNorm(),
            LookupConv2D(5, 3, padding=1, dictionary_size=3, activation='sigmoid'),
            nn.MaxPool2D(), nn.Dense(10), nn.BatchNorm(), nn.Activation('relu'), nn.Dense(3))
    x = mx.nd.random.normal(shape=(2, 3, 12, 11))
    prepared(net, x)
    ref = net(x)
    inf = deploy.to_inference(net, choose=choose)
    assert len(blocks_of(inf, nn.BatchNorm)) == 1  # the one after the activated conv
    assert rel_err(inf(x), ref) < RTOL


class _Residual(HybridBlock):
    """A ResNet-style block: children used through attributes in a custom hybrid_forward."""

    def __init__(self, channels, **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential()
            self.body.add(LookupConv2D(channels, 3, padding=1, dictionary_size=4, use_bias=False),
                          nn.BatchNorm(), nn.Activation('relu'),
                          LookupConv2D(channels, 3, padding=1, dictionary_size=5),
                          nn.BatchNorm())
            self.downsample = nn.HybridSequential()
            self.downsample.add(nn.Conv2D(channels, 1, use_bias=False), nn.BatchNorm())

    def hybrid_forward(self, F, x):
        return F.relu(self.body(x) + self.downsample(x))


def _residual_net():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(4, 3), nn.BatchNorm(), _Residual(6), nn.GlobalAvgPool2D(), nn.Dense(3))
    return net


def test_residual_blocks_fold_inside_and_input_unchanged():
    net = _residual_net()
    x = mx.nd.random.normal(shape=(2, 3, 9, 9))
    prepared(net, x)
    ref = net(x)
    before = {k: v.data().asnumpy().copy() for k, v in net.collect_params().items()}
    structure = repr(net)
    inf = deploy.to_inference(net, choose='sparse')
    assert isinstance(inf[1], _Residual) and inf[1].body is inf[1]._children['body']
    assert not blocks_of(inf, nn.BatchNorm)
    assert len(blocks_of(inf, SparseLookupConv2D)) == 2
    assert rel_err(inf(x), ref) < RTOL
    # Pure function: the training net is untouched and still computes the same.
    assert repr(net) == structure and len(blocks_of(net, nn.BatchNorm)) == 4
    for k, v in net.collect_params().items():
        np.testing.assert_array_equal(v.data().asnumpy(), before[k])
    assert rel_err(net(x), ref) == 0


def test_parallel_branches_are_not_folded_together():
    # HybridConcurrent subclasses HybridSequential but its children are parallel branches:
    # the BatchNorm branch must not be folded into the conv branch next to it.
    from mxnet.gluon.contrib.nn import HybridConcurrent
    branches = HybridConcurrent(axis=1)
    branches.add(LookupConv2D(5, 3, padding=1, dictionary_size=2), nn.BatchNorm(),
                 nn.Activation('relu'))
    net = nn.HybridSequential()
    net.add(nn.Conv2D(4, 1), branches, nn.BatchNorm())
    x = mx.nd.random.normal(shape=(2, 3, 6, 6))
    prepared(net, x)
    ref = net(x)
    inf = deploy.to_inference(net, choose='sparse')
    assert isinstance(inf[1], HybridConcurrent) and len(inf[1]) == 3
    assert rel_err(inf(x), ref) < RTOL


def test_auto_choice_is_measured_and_kept_in_the_graph(tmp_path):
    net = _residual_net()
    x = mx.nd.random.normal(shape=(1, 3, 9, 9))
    prepared(net, x, density=0.2)
    ref = net(x)
    inf = deploy.to_inference(net, input_shape=x.shape, choose='auto', repeat=3, warmup=1)
    choices = inf.kernel_choices
    assert len(choices) == 2
    assert [v['input_shape'] for v in choices.values()] == [(1, 4, 7, 7), (1, 6, 7, 7)]
    for info in choices.values():
        assert info['sparse_s'] > 0 and info['dense_s'] > 0
        assert info['choice'] == min(('sparse', 'dense'), key=lambda k: info[k + '_s'])
    assert len(blocks_of(inf, SparseLookupConv2D)) == sum(
        v['choice'] == 'sparse' for v in choices.values())
    assert rel_err(inf(x), ref) < RTOL
    inf.hybridize()
    inf(x)
    inf.export(str(tmp_path / 'auto'))
    graph = json.loads((tmp_path / 'auto-symbol.json').read_text())
    ops = [n['op'] for n in graph['nodes']]
    assert ops.count('lcnn_sparse_conv') == len(blocks_of(inf, SparseLookupConv2D))


def test_shape_probe_hooks_raise_no_hybridize_warning():
    # The shape pass hooks the layers it times; running it must not hybridize them with the
    # hooks on (MXNet warns "is being hybridized while still having forward hook/pre-hook").
    import warnings
    net = get_model('lenet_lcnn_fast', classes=10, in_channels=1)
    x = mx.nd.random.normal(shape=(1, 1, 28, 28))
    prepared(net, x, density=0.2)
    net.hybridize(static_alloc=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        inf = deploy.to_inference(net, input_shape=x.shape, repeat=2, warmup=1)
        gluon_lcnn.flops.profile(net, x.shape)
        inf.hybridize(static_alloc=True, static_shape=True)
        inf(x)
    assert not [w for w in caught if 'hook' in str(w.message)]
    assert net._active and dict(net._flags)['static_alloc']   # hybridization restored as it was


def test_export_import_round_trip_in_a_fresh_process(tmp_path):
    net = get_model('lenet_lcnn_fast')
    x = mx.nd.random.normal(shape=(2, 1, 28, 28))
    prepared(net, x, density=0.3)
    ref = net(x)
    inf = deploy.to_inference(net, choose='sparse')
    inf.hybridize()
    assert rel_err(inf(x), ref) < RTOL
    prefix = str(tmp_path / 'lenet')
    inf.export(prefix)
    np.save(str(tmp_path / 'x.npy'), x.asnumpy())
    np.save(str(tmp_path / 'ref.npy'), ref.asnumpy())
    # The op library must come back with a plain `import gluon_lcnn`.
    code = ('import sys, numpy as np, mxnet as mx, gluon_lcnn\n'
            'p = sys.argv[1]\n'
            'net = mx.gluon.SymbolBlock.imports(p + "-symbol.json", ["data"], '
            'p + "-0000.params")\n'
            'out = net(mx.nd.array(np.load(sys.argv[2]))).asnumpy()\n'
            'ref = np.load(sys.argv[3])\n'
            'print(float(np.abs(out - ref).max() / np.abs(ref).max()))\n')
    proc = subprocess.run([sys.executable, '-c', code, prefix, str(tmp_path / 'x.npy'),
                           str(tmp_path / 'ref.npy')], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < RTOL


# Small variants of every zoo family: (constructor kwargs, input shape).
SMALL = {
    'lenet': (dict(), (2, 1, 28, 28)),
    'alexnet': (dict(thumbnail=True, input_size=32, fc_units=128, classes=10), (2, 3, 32, 32)),
    'resnet': (dict(thumbnail=True, classes=10), (2, 3, 32, 32)),
    'vgg': (dict(thumbnail=True, input_size=32, fc_units=128, classes=10), (1, 3, 32, 32)),
    'jacintonet': (dict(thumbnail=True, classes=10), (2, 3, 32, 32)),
}
LCNN_MODELS = [name for name in list_models() if 'lcnn' in name]


def _small(name):
    for family, spec in SMALL.items():
        if name.startswith(family):
            return spec
    return dict(thumbnail=True, classes=10), (1, 3, 32, 32)


def test_every_lcnn_model_is_listed():
    assert LCNN_MODELS, 'no LCNN model in the zoo'


@pytest.mark.parametrize('name', LCNN_MODELS)
def test_zoo_lcnn_models_match(name):
    kwargs, shape = _small(name)
    net = get_model(name, **kwargs)
    x = mx.nd.random.normal(shape=shape)
    prepared(net, x, seed=1, density=0.1)
    ref = net(x)
    n_lookup = len(gluon_lcnn.nn.lookup_layers(net))
    for choose in ('sparse', 'dense'):
        inf = deploy.to_inference(net, choose=choose, fast_pool=choose == 'sparse')
        n_sparse = len(blocks_of(inf, (SparseLookupConv2D, SparseLookupDense)))
        assert n_sparse == (n_lookup if choose == 'sparse' else 0)
        assert not blocks_of(inf, nn.BatchNorm), '%s: a BatchNorm was not folded' % name
        inf.hybridize()
        assert rel_err(inf(x), ref) < RTOL, (name, choose)


@pytest.mark.parametrize('pool', [(3, 2, 0), ((2, 3), (2, 1), 0), (3, 2, 1), ((3, 2), 1, (1, 0))])
def test_lcnn_max_pool_equal_max_pool(pool):
    size, stride, pad = pool
    ref_pool = nn.MaxPool2D(size, stride, pad)
    x = mx.nd.random.normal(shape=(2, 3, 13, 10))
    fast = LcnnMaxPool(ref_pool._kwargs['kernel'], ref_pool._kwargs['stride'],
                                ref_pool._kwargs['pad'])
    np.testing.assert_array_equal(fast(x).asnumpy(), ref_pool(x).asnumpy())
    fast.hybridize()
    np.testing.assert_array_equal(fast(x).asnumpy(), ref_pool(x).asnumpy())


def test_pools_dropout_and_a_single_layer_net():
    net = nn.HybridSequential()
    net.add(LookupConv2D(6, 3, dictionary_size=3), nn.BatchNorm(), nn.Activation('relu'),
            nn.MaxPool2D(3, 2), nn.Dropout(0.5), nn.MaxPool2D(2, ceil_mode=True), nn.Dense(4))
    x = mx.nd.random.normal(shape=(1, 3, 17, 16))
    prepared(net, x, density=0.3)
    ref = net(x)
    inf = deploy.to_inference(net, choose='sparse', fast_pool=True)
    kinds = [type(b) for b in inf._children.values()]
    # ceil-mode pools stay MaxPool2D; Dropout (identity at inference) is gone.
    assert kinds == [SparseLookupConv2D, LcnnMaxPool, nn.MaxPool2D, nn.Dense]
    assert rel_err(inf(x), ref) < RTOL
    # fuse=False: the pool choice itself (a fused pool leaves no pool block to look at).
    inf = deploy.to_inference(net, input_shape=x.shape, repeat=2, warmup=1, fuse=False)
    pool = inf.kernel_choices[net[3].prefix]
    assert pool['choice'] in ('lcnn_pool', 'mkldnn') and pool['input_shape'] == (1, 3, 17, 16)
    assert type(inf[1]) is (LcnnMaxPool if pool['choice'] == 'lcnn_pool' else nn.MaxPool2D)
    assert rel_err(inf(x), ref) < RTOL
    # A lone lookup layer converts to a lone inference block.
    layer = net[0]
    single = deploy.to_inference(layer, input_shape=x.shape, repeat=2, warmup=1)
    assert type(single) in (SparseLookupConv2D, nn.Conv2D)
    assert rel_err(single(x), layer(x)) < RTOL


def test_covering_conv_runs_as_fully_connected():
    # AlexNet's fc6 pattern: the kernel covers the whole unpadded input map.
    net = nn.HybridSequential()
    net.add(LookupConv2D(8, (3, 2), dictionary_size=3, use_bias=False), nn.BatchNorm(),
            nn.Activation('relu'), nn.Conv2D(5, 1), nn.Flatten(), nn.Dense(2))
    x = mx.nd.random.normal(shape=(2, 4, 3, 2))
    prepared(net, x, density=0.4)
    head = net[:3]
    layer = deploy._Layer(net[0])
    layer.fold_batchnorm(net[1])
    layer.act = 'relu'
    for block in (layer.build_sparse_fc(mx.cpu()), layer.build_dense_fc(mx.cpu())):
        assert isinstance(block, CoveringConv)
        assert block(x).shape == (2, 8, 1, 1) and rel_err(block(x), head(x)) < RTOL
        block.hybridize()
        assert rel_err(block(x), head(x)) < RTOL
    inf = deploy.to_inference(net, input_shape=x.shape, repeat=2, warmup=1)
    info = inf.kernel_choices[net[0].prefix]
    assert set(info) >= {'sparse_s', 'dense_s', 'sparse_fc_s', 'dense_fc_s'}
    assert info['choice'] == min(('sparse', 'dense', 'sparse_fc', 'dense_fc'),
                                 key=lambda k: info[k + '_s'])
    # The 1x1 Conv2D on a 1x1 map covers its input too: timed as conv and as fc.
    assert set(inf.kernel_choices[net[3].prefix]) >= {'dense_s', 'dense_fc_s'}
    assert rel_err(inf(x), net(x)) < RTOL


def test_pools_and_covering_convs_export_and_import(tmp_path):
    net = nn.HybridSequential()
    net.add(LookupConv2D(6, 3, dictionary_size=3), nn.BatchNorm(), nn.Activation('relu'),
            nn.MaxPool2D(3, 2, 1), LookupConv2D(7, 4, dictionary_size=2), nn.Flatten(),
            nn.Dense(3))
    x = mx.nd.random.normal(shape=(2, 3, 9, 9))
    prepared(net, x, density=0.5)
    ref = net(x)
    layer = deploy._Layer(net[4])
    inf = deploy.to_inference(net, choose='sparse', fast_pool=True)
    inf._children['2'] = layer.build_sparse_fc(mx.cpu())  # fc form of the covering conv
    inf.hybridize()
    assert rel_err(inf(x), ref) < RTOL
    inf.export(str(tmp_path / 'net'))
    back = mx.gluon.SymbolBlock.imports(str(tmp_path / 'net-symbol.json'), ['data'],
                                        str(tmp_path / 'net-0000.params'))
    assert rel_err(back(x), ref) < RTOL


def test_bad_arguments_raise():
    net = _residual_net()
    with pytest.raises(ValueError, match='not initialized'):
        deploy.to_inference(net, choose='sparse')
    x = mx.nd.random.normal(shape=(1, 3, 9, 9))
    prepared(net, x)
    with pytest.raises(ValueError, match='choose must be one of'):
        deploy.to_inference(net, choose='fastest')
    with pytest.raises(ValueError, match='fast_pool'):
        deploy.to_inference(net, choose='dense', fast_pool='yes')
    with pytest.raises(ValueError, match='needs input_shape'):
        deploy.to_inference(net)
    with pytest.raises(ValueError, match='gluon Block'):
        deploy.to_inference(lambda v: v, choose='dense')


@pytest.mark.parametrize('name', LCNN_MODELS)
def test_zoo_lcnn_models_match_with_fused_epilogues(name):
    kwargs, shape = _small(name)
    net = get_model(name, **kwargs)
    x = mx.nd.random.normal(shape=shape)
    prepared(net, x, seed=2, density=0.1)
    ref = net(x)
    inf = deploy.to_inference(net, choose='sparse', fast_pool=True, fuse=True)
    fused = [b for b in blocks_of(inf, SparseLookupConv2D) if b.pool or b.residual]
    if name.startswith('resnet'):
        assert blocks_of(inf, deploy.FusedBasicBlock) and any(b.residual for b in fused)
    if name.startswith('alexnet'):
        assert any(b.pool for b in fused) and not blocks_of(inf, LcnnMaxPool)
    kinds = {inf.kernel_choices[b.prefix].get('fusion') for b in fused}
    assert kinds <= {'pool', 'residual'}
    inf.hybridize()
    assert rel_err(inf(x), ref) < RTOL, name


def test_fusion_is_timed_in_auto_mode_and_refused_when_malformed():
    net = nn.HybridSequential(prefix='')
    with net.name_scope():
        net.add(LookupConv2D(8, 3, dictionary_size=4, padding=1, in_channels=3),
                nn.Activation('relu'), nn.MaxPool2D(3, 2))
    net.initialize()
    x = mx.nd.random.normal(shape=(1, 3, 15, 15))
    ref = net(x)
    inf = deploy.to_inference(net, input_shape=x.shape, choose='auto', repeat=3, warmup=1)
    entry = [v for k, v in inf.kernel_choices.items() if 'fused_s' in v]
    if isinstance(inf[0], SparseLookupConv2D):  # dense may win the kernel choice: no fusion
        assert len(entry) == 1 and entry[0]['fusion'] in ('pool', None)
        assert (inf[0].pool is not None) == (entry[0]['fusion'] == 'pool')
        assert len(inf) == (1 if inf[0].pool else 2)
    assert rel_err(inf(x), ref) < RTOL
    plain = deploy.to_inference(net, choose='sparse', fast_pool=True, fuse=False)
    assert [type(b) for b in plain] == [SparseLookupConv2D, LcnnMaxPool]
    with pytest.raises(ValueError, match='fuse'):
        deploy.to_inference(net, choose='sparse', fuse='yes')
