"""compress.lowrank: accnn low-rank decomposition of dense nets."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_lcnn
from gluon_lcnn import flops
from gluon_lcnn.compress.lowrank import (decomposable_layers, lowrank_plan, lowrank_ranks,
                                         to_lowrank)
from gluon_lcnn.deploy import to_inference
from trained_nets import MNIST, alexnet_thumb as _alexnet_thumb, lenet as _lenet
from trained_nets import trained_like as _trained_like

SMALL_RGB = (2, 3, 28, 28)


def _full_rank(block):
    w = block.weight.shape
    if isinstance(block, nn.Dense):
        return min(w)
    return min(w[1] * w[2], w[3] * w[0])


def _predict(net, x):
    with mx.autograd.predict_mode():
        return net(x).asnumpy()


def _rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _params(net):
    return {k: v.data().asnumpy().copy() for k, v in net.collect_params().items()}


@pytest.mark.parametrize('build,shape', [(_lenet, MNIST), (_alexnet_thumb, MNIST)])
def test_full_rank_reproduces_the_net(build, shape):
    net = build()
    before = _params(net)
    ranks = {path: _full_rank(b) for path, b in decomposable_layers(net).items()}
    low = to_lowrank(net, ranks)
    x = mx.nd.random.uniform(-1, 1, shape=shape)
    assert _rel_err(_predict(low, x), _predict(net, x)) < 1e-4
    after = _params(net)  # the input net is untouched
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    # Every conv became a kh x 1 conv and a 1 x kw conv, every Dense two Dense layers.
    convs = [b for b in decomposable_layers(low).values() if isinstance(b, nn.Conv2D)]
    dense = [b for b in decomposable_layers(net).values() if isinstance(b, nn.Conv2D)]
    assert len(convs) == 2 * len(dense)
    assert all(b._kwargs['kernel'][1] == 1 or b._kwargs['kernel'][0] == 1 for b in convs)


def test_resnet18_residual_blocks_at_full_rank():
    net = _trained_like(gluon_lcnn.get_model('resnet18_v1', thumbnail=True, classes=10),
                        SMALL_RGB)
    # Stem, stages 1-2 (body and downsample) and the classifier: the SVDs of stages 3-4
    # would take longer than the rest of this file.
    ranks = {path: _full_rank(b) for path, b in decomposable_layers(net).items()
             if not path.startswith(('features.5', 'features.6'))}
    assert 'features.4.0.downsample.0' in ranks and 'output' in ranks
    low = to_lowrank(net, ranks)
    x = mx.nd.random.uniform(-1, 1, shape=SMALL_RGB)
    assert _rel_err(_predict(low, x), _predict(net, x)) < 1e-4
    body = low.features[4][0].body  # the decomposed pair sits flat in the body sequence
    assert [type(b).__name__ for b in body][:4] == ['Conv2D', 'Conv2D', 'BatchNorm',
                                                    'Activation']
    assert isinstance(low.output, nn.HybridSequential) and len(low.output) == 2


def test_gluoncv_resnet18_at_full_rank():
    gcv = pytest.importorskip('gluoncv')
    net = _trained_like(gcv.model_zoo.get_model('resnet18_v1', thumbnail=True, classes=10),
                        SMALL_RGB)
    ranks = {path: _full_rank(b) for path, b in decomposable_layers(net).items()
             if path.startswith(('features.0', 'features.1.0', 'output'))}
    assert len(ranks) >= 3
    low = to_lowrank(net, ranks)
    x = mx.nd.random.uniform(-1, 1, shape=SMALL_RGB)
    assert _rel_err(_predict(low, x), _predict(net, x)) < 1e-4


def _shares(block):
    w = block.weight.data().asnumpy().astype(np.float64)
    if isinstance(block, nn.Conv2D):
        m, c, kh, kw = w.shape
        w = w.transpose(1, 2, 3, 0).reshape(c * kh, kw * m)
    energy = np.cumsum(np.linalg.svd(w, compute_uv=False) ** 2)
    return energy / energy[-1]


@pytest.mark.parametrize('build,target', [(_lenet, 2.0), (_lenet, 4.0), (_alexnet_thumb, 3.0)])
def test_ranks_meet_the_target_by_profile(build, target):
    net = build()
    plan = lowrank_plan(net, MNIST, target)
    assert plan['ranks'] == lowrank_ranks(net, MNIST, target)
    low = to_lowrank(net, plan['ranks'])
    dense = flops.profile(net, MNIST).totals['dense_macs']
    macs = flops.profile(low, MNIST).totals['macs']
    assert macs == plan['macs']  # the plan's count is the profile's
    assert target <= dense / macs < target * 1.1
    layers = decomposable_layers(net)
    for path, k in plan['ranks'].items():
        share = _shares(layers[path])
        # The smallest rank keeping the common energy fraction.
        assert share[k - 1] >= plan['energy'] - 1e-9
        assert k == 1 or share[k - 2] < plan['energy']
    # A layer is left out only when its pair would cost at least as much as the layer.
    total = flops.profile(net, MNIST).totals['macs']
    for path in set(layers) - set(plan['ranks']):
        k = int(np.searchsorted(_shares(layers[path]), plan['energy'] - 1e-12)) + 1
        alone = flops.profile(to_lowrank(net, {path: k}), MNIST).totals['macs']
        assert alone >= total, path


def test_same_weights_and_ranks_rebuild_the_same_net(tmp_path):
    net = _lenet()
    ranks = lowrank_ranks(net, MNIST, 3.0)
    a, b = to_lowrank(net, ranks), to_lowrank(net, ranks)
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    # A checkpoint of one (as after fine-tuning) loads into a rebuilt one.
    a.collect_params()[next(iter(pa))].set_data(mx.nd.ones(next(iter(pa.values())).shape))
    a.save_parameters(str(tmp_path / 'ft.params'))
    b.load_parameters(str(tmp_path / 'ft.params'))
    x = mx.nd.random.uniform(-1, 1, shape=MNIST)
    np.testing.assert_array_equal(_predict(a, x), _predict(b, x))


@pytest.mark.parametrize('choose', ['auto', 'sparse'])
def test_to_inference_of_a_lowrank_net(choose):
    net = _lenet()
    low = to_lowrank(net, lowrank_ranks(net, MNIST, 2.0))
    inf = to_inference(low, MNIST, choose=choose)
    x = mx.nd.random.uniform(-1, 1, shape=MNIST)
    assert _rel_err(_predict(inf, x), _predict(low, x)) < 1e-4
    left = []
    inf.apply(lambda b: left.append(b) if isinstance(b, nn.BatchNorm) else None)
    assert not left  # each BatchNorm was folded into the second layer of its pair


def test_errors():
    net = _lenet()
    with pytest.raises(ValueError, match='must be > 1'):
        lowrank_ranks(net, MNIST, 1.0)
    with pytest.raises(ValueError, match='not reachable; the best is'):
        lowrank_ranks(net, MNIST, 1e6)
    with pytest.raises(ValueError, match='min_energy must be in'):
        lowrank_ranks(net, MNIST, 2.0, min_energy=1.5)
    with pytest.raises(ValueError, match='not reachable'):
        lowrank_ranks(net, MNIST, 50.0, min_energy=0.999)
    with pytest.raises(ValueError, match="no layer at path 'features.99'"):
        to_lowrank(net, {'features.99': 2})
    with pytest.raises(ValueError, match='is a BatchNorm'):
        to_lowrank(net, {'features.1': 2})
    with pytest.raises(ValueError, match=r'must be an int in \[1, 5\]'):
        to_lowrank(net, {'features.0': 6})
    with pytest.raises(ValueError, match='must be an int'):
        to_lowrank(net, {'features.0': 2.5})
    fresh = gluon_lcnn.get_model('lenet')
    with pytest.raises(ValueError, match='not initialized'):
        to_lowrank(fresh, {'features.0': 2})
