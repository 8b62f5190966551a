"""compress.prune: magnitude pruning, its schedule, MAC count and sparse deployment."""
import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

from gluon_lcnn import flops
from gluon_lcnn.compress.prune import (GradualPruner, PruningSchedule, magnitude_prune,
                                       masks_from_zeros, prunable_layers, prune_sparsities,
                                       sparsity_report)
from gluon_lcnn.deploy import to_inference
from trained_nets import MNIST, alexnet_thumb as _alexnet_thumb, lenet as _lenet
from gluon_lcnn.nn.sparse import CoveringConv, SparseLookupConv2D, SparseLookupDense


def _predict(net, x):
    with mx.autograd.predict_mode():
        return net(x).asnumpy()


def _weight(net, path):
    return prunable_layers(net)[path].weight.data().asnumpy()


def test_magnitude_prune_zeroes_the_smallest_fraction():
    net = _lenet()
    before = {p: _weight(net, p) for p in ('features.4', 'features.9')}
    masks = magnitude_prune(net, {'features.4': 0.5, 'features.9': 0.9})
    for path, s in (('features.4', 0.5), ('features.9', 0.9)):
        w, old = _weight(net, path), before[path]
        mask = masks[path].asnumpy()
        assert mask.shape == old.shape and set(np.unique(mask)) <= {0.0, 1.0}
        assert int((w == 0).sum()) == int(np.floor(s * w.size + 0.5))
        np.testing.assert_array_equal(w, old * mask)
        assert np.abs(old[mask == 0]).max() <= np.abs(old[mask == 1]).min()
    assert sparsity_report(net)['features.0'] == 0.0
    assert sparsity_report(net)['features.9'] == pytest.approx(0.9, abs=1e-6)


def test_zero_sparsity_changes_nothing():
    net = _lenet()
    x = mx.nd.random.uniform(-1, 1, shape=MNIST)
    ref = _predict(net, x)
    masks = magnitude_prune(net, {path: 0.0 for path in prunable_layers(net)})
    assert all(m.asnumpy().all() for m in masks.values())
    np.testing.assert_array_equal(_predict(net, x), ref)


def test_ties_go_by_position():
    net = nn.Dense(4, in_units=5)
    net.initialize()
    net.weight.set_data(mx.nd.ones((4, 5)))
    holder = nn.HybridSequential()
    holder.add(net)
    mask = magnitude_prune(holder, {'0': 0.25})['0'].asnumpy().ravel()
    np.testing.assert_array_equal(mask, [0] * 5 + [1] * 15)


@pytest.mark.parametrize('build,target', [(_lenet, 2.0), (_alexnet_thumb, 4.0),
                                          (_alexnet_thumb, 1.1)])
def test_sparsities_meet_the_target_by_profile(build, target):
    net = build()
    sparsities = prune_sparsities(net, MNIST, target)
    first = next(iter(prunable_layers(net)))
    assert first not in sparsities  # the first conv stays dense
    assert len(set(sparsities.values())) == 1  # uniform
    magnitude_prune(net, sparsities)
    speedup = flops.profile(net, MNIST).totals['speedup']
    assert speedup >= target
    if target > 1.5:
        assert speedup < target * 1.01  # no more pruning than the target needs
    else:
        # Below density 0.7 a layer does not count as pruned: the smallest useful sparsity.
        assert next(iter(sparsities.values())) == pytest.approx(0.3, abs=1e-3)
    assert sparsity_report(net)[first] == 0.0


def test_cubic_schedule():
    sched = PruningSchedule({'a': 0.8, 'b': 0.4}, begin_step=10, end_step=110)
    assert sched.sparsity_at(0) == {'a': 0.0, 'b': 0.0}
    assert sched.sparsity_at(10)['a'] == 0.0
    assert sched.sparsity_at(110) == pytest.approx({'a': 0.8, 'b': 0.4})
    assert sched.sparsity_at(500) == pytest.approx({'a': 0.8, 'b': 0.4})
    assert sched.sparsity_at(60)['a'] == pytest.approx(0.8 * (1 - 0.5 ** 3))
    values = [sched.sparsity_at(s)['a'] for s in range(0, 130)]
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert values[11] > 0 and values[109] < 0.8


def test_frequency_and_step_schedule():
    sched = PruningSchedule({'a': 0.6}, begin_step=0, end_step=100, frequency=10)
    # Recomputed only at steps 0, 10, 20, ...: constant in between.
    assert sched.sparsity_at(10) == sched.sparsity_at(19) != sched.sparsity_at(20)
    assert sched.sparsity_at(99)['a'] < 0.6 == sched.sparsity_at(100)['a']
    step = PruningSchedule({'a': 0.6}, 0, 100, kind='step', steps=4)
    got = sorted(set(round(step.sparsity_at(s)['a'], 9) for s in range(0, 120)))
    assert got == pytest.approx([0.0, 0.15, 0.3, 0.45, 0.6])
    assert step.sparsity_at(24)['a'] == 0 and step.sparsity_at(25)['a'] == pytest.approx(0.15)


def _train(net, pruner, steps, seed=1, on_update=None):
    rng = np.random.RandomState(seed)
    trainer = mx.gluon.Trainer(net.collect_params(), 'sgd',
                               {'learning_rate': 0.05, 'momentum': 0.9, 'wd': 1e-3})
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    for step in range(1, steps + 1):
        x = mx.nd.array(rng.uniform(-1, 1, MNIST))
        y = mx.nd.array(rng.randint(0, 10, MNIST[0]))
        with mx.autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(MNIST[0])
        pruner.on_step(step)
        if on_update is not None:
            on_update(step)


def test_gradual_pruner_keeps_pruned_weights_zero_under_momentum():
    net = _lenet()
    start = _weight(net, 'features.9')
    sched = PruningSchedule({'features.4': 0.5, 'features.9': 0.8}, begin_step=2,
                            end_step=8, frequency=2)
    pruner = GradualPruner(net, sched)
    pruned = {}

    def check(step):
        for path, s in sched.sparsity_at(step).items():
            zero = _weight(net, path) == 0
            assert int(zero.sum()) == int(np.floor(s * zero.size + 0.5)), (step, path)
            # Once pruned, always pruned (momentum would revive them otherwise).
            assert not (pruned.get(path, np.zeros_like(zero)) & ~zero).any(), (step, path)
            pruned[path] = zero
    _train(net, pruner, 12, on_update=check)
    assert sparsity_report(net)['features.9'] == pytest.approx(0.8, abs=1e-6)
    assert not np.array_equal(_weight(net, 'features.9')[~pruned['features.9']],
                              start[~pruned['features.9']])  # the survivors did train
    # After a resume the masks come back from the loaded weights.
    again = GradualPruner(net, sched)
    again.restore(12)
    for path, mask in masks_from_zeros(net, sched.final_sparsities).items():
        np.testing.assert_array_equal(again.masks[path].asnumpy(), mask.asnumpy())
        np.testing.assert_array_equal(pruner.masks[path].asnumpy(), mask.asnumpy())


@pytest.mark.parametrize('choose', ['auto', 'sparse'])
def test_to_inference_runs_pruned_layers_sparse(choose):
    net = _alexnet_thumb()
    magnitude_prune(net, prune_sparsities(net, MNIST, 3.0))
    inf = to_inference(net, MNIST, choose=choose)
    x = mx.nd.random.uniform(-1, 1, shape=MNIST)
    ref = _predict(net, x)
    assert np.abs(_predict(inf, x) - ref).max() / np.abs(ref).max() < 1e-4
    blocks = []
    inf.apply(blocks.append)
    sparse = [b for b in blocks if isinstance(b, (SparseLookupConv2D, SparseLookupDense))]
    assert all(not b.has_dictionary for b in sparse)  # D = identity, P = W
    if choose == 'sparse':
        # conv2..conv5, fc6 (a conv), fc7, fc8 on the sparse op; conv1 (not pruned) dense.
        assert len(sparse) == 7
        assert isinstance(inf.features[0], nn.Conv2D)
    assert not any(isinstance(b, nn.BatchNorm) for b in blocks)


def test_covering_conv_with_identity_dictionary():
    from gluon_lcnn.deploy import _Layer
    net = _alexnet_thumb()
    magnitude_prune(net, {'classifier.0': 0.8})
    layer = _Layer(net.classifier[0])
    assert layer.is_lookup and layer.dictionary is None
    fc = layer.build_sparse_fc(mx.cpu())
    assert isinstance(fc, CoveringConv) and fc.dictionary is None
    x = mx.nd.random.uniform(-1, 1, shape=(2, 256, 2, 2))
    np.testing.assert_allclose(_predict(fc, x), _predict(layer.build_dense(mx.cpu()), x),
                               rtol=1e-4, atol=1e-5)


def test_errors():
    net = _lenet()
    with pytest.raises(ValueError, match='must be > 1'):
        prune_sparsities(net, MNIST, 0.5)
    with pytest.raises(ValueError, match='not reachable; the best is'):
        prune_sparsities(net, MNIST, 1e4)
    with pytest.raises(ValueError, match="no layer at path 'nope'"):
        magnitude_prune(net, {'nope': 0.5})
    with pytest.raises(ValueError, match='is a BatchNorm'):
        magnitude_prune(net, {'features.1': 0.5})
    for bad in (1.0, -0.1, 'x'):
        with pytest.raises(ValueError, match=r'must be .*in \[0, 1\)'):
            magnitude_prune(net, {'features.4': bad})
    assert sparsity_report(net)['features.4'] == 0.0  # nothing pruned by the failed calls
    with pytest.raises(ValueError, match='begin_step <= end_step'):
        PruningSchedule({'a': 0.5}, 10, 5)
    with pytest.raises(ValueError, match='kind must be one of'):
        PruningSchedule({'a': 0.5}, 0, 5, kind='linear')
    with pytest.raises(ValueError, match='frequency and steps must be >= 1'):
        PruningSchedule({'a': 0.5}, 0, 5, frequency=0)
    with pytest.raises(ValueError, match=r'in \[0, 1\)'):
        PruningSchedule({'a': 1.5}, 0, 5)
    with pytest.raises(ValueError, match="no layer at path 'a'"):
        GradualPruner(net, PruningSchedule({'a': 0.5}, 0, 5))
