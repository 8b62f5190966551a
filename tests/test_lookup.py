"""Trainable lookup layers: dense equivalence, gradients, sparsification, export, real data."""
import time

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from gluon_lcnn.data import load_fashion_mnist
from gluon_lcnn.nn import (LookupConv2D, LookupDense, choose_forms, density_report, l1_penalty,
                           lookup_layers)


def _max_rel(a, b):
    a, b = a.asnumpy(), b.asnumpy()
    return np.abs(a - b).max() / max(np.abs(b).max(), 1e-12)


@pytest.mark.parametrize('cfg', [
    dict(shape=(1, 3, 9, 9), channels=4, kernel_size=3, strides=1, padding=0, d=2),
    dict(shape=(3, 5, 12, 11), channels=6, kernel_size=3, strides=2, padding=1, d=4),
    dict(shape=(2, 4, 10, 13), channels=5, kernel_size=(3, 5), strides=(1, 2), padding=(2, 1), d=7),
    dict(shape=(2, 3, 31, 31), channels=8, kernel_size=11, strides=4, padding=2, d=3),
    dict(shape=(4, 8, 6, 6), channels=3, kernel_size=1, strides=1, padding=0, d=16),
    # One window covers the input (fc6-like): the FullyConnected path.
    dict(shape=(3, 4, 5, 3), channels=6, kernel_size=(5, 3), strides=1, padding=0, d=7),
])
@pytest.mark.parametrize('hybridize', [False, True])
def test_conv_matches_dense_convolution(cfg, hybridize):
    layer = LookupConv2D(cfg['channels'], cfg['kernel_size'], strides=cfg['strides'],
                         padding=cfg['padding'], dictionary_size=cfg['d'], initial_sparsity=0.5)
    layer.initialize()
    if hybridize:
        layer.hybridize()
    x = mx.nd.random.normal(shape=cfg['shape'])
    out = layer(x)
    w = layer.effective_weight()
    ref = mx.nd.Convolution(x, w, layer.bias.data(), kernel=w.shape[2:], stride=layer.strides,
                            pad=layer.padding, num_filter=cfg['channels'])
    assert out.shape == ref.shape
    assert _max_rel(out, ref) < 1e-5
    # initial_sparsity=0.5 masks a real fraction of P: the reference must see the same mask.
    assert 0.0 < layer.density() < 1.0


def test_effective_weight_is_the_lookup_formula():
    layer = LookupConv2D(3, 2, dictionary_size=4, in_channels=5)
    layer.initialize()
    p, d = layer.masked_lookup_data().asnumpy(), layer.dictionary.data().asnumpy()[:, :, 0, 0]
    expected = np.einsum('rqij,qc->rcij', p, d)
    np.testing.assert_allclose(layer.effective_weight().asnumpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('flatten,shape', [(True, (4, 3, 5, 2)), (True, (6, 20)), (False, (2, 3, 20))])
def test_dense_matches_fully_connected(flatten, shape):
    layer = LookupDense(7, dictionary_size=5, flatten=flatten, activation='relu',
                        initial_sparsity=0.5)
    layer.initialize()
    x = mx.nd.random.normal(shape=shape)
    out = layer(x)
    ref = mx.nd.relu(mx.nd.FullyConnected(x, layer.effective_weight(), layer.bias.data(),
                                          num_hidden=7, flatten=flatten))
    assert out.shape == ref.shape
    assert _max_rel(out, ref) < 1e-5
    assert layer.effective_weight().shape == (7, int(np.prod(shape[1:])) if flatten else shape[-1])


def test_activation_and_no_bias():
    layer = LookupConv2D(4, 3, padding=1, dictionary_size=3, use_bias=False, activation='relu')
    layer.initialize()
    assert layer.bias is None and 'bias' not in ''.join(layer.collect_params().keys())
    x = mx.nd.random.normal(shape=(2, 3, 5, 5))
    out = layer(x)
    ref = mx.nd.relu(mx.nd.Convolution(x, layer.effective_weight(), no_bias=True, kernel=(3, 3),
                                       pad=(1, 1), num_filter=4))
    assert _max_rel(out, ref) < 1e-5
    assert (out == 0).sum().asscalar() > 0     # the activation really clipped something


def _numeric_grad(f, param, eps=1e-6):
    data = param.data()
    base = data.asnumpy().copy()
    grad = np.zeros_like(base)
    for idx in np.ndindex(base.shape):
        for sign in (1, -1):
            bumped = base.copy()
            bumped[idx] += sign * eps
            data[:] = bumped
            grad[idx] += sign * f()
        grad[idx] /= 2 * eps
    data[:] = base
    return grad


@pytest.mark.parametrize('form', ['factored', 'composed'])
@pytest.mark.parametrize('kind', ['conv', 'dense'])
def test_numeric_gradient(kind, form):
    mx.random.seed(3)
    if kind == 'conv':
        layer = LookupConv2D(2, (2, 3), strides=(1, 2), padding=1, dictionary_size=2,
                             in_channels=3, initial_sparsity=0.2, form=form)
        x = mx.nd.random.normal(shape=(2, 3, 4, 5), dtype='float64')
    else:
        layer = LookupDense(3, dictionary_size=2, in_units=4, initial_sparsity=0.2, form=form)
        x = mx.nd.random.normal(shape=(2, 4), dtype='float64')
    layer.initialize()
    layer.cast('float64')
    # Keep every entry away from the threshold so finite differences don't cross it.
    p = layer.lookup.data().asnumpy()
    p = np.sign(p) * np.maximum(np.abs(p), 3 * layer.threshold)
    layer.lookup.set_data(mx.nd.array(p, dtype='float64'))
    weights = mx.nd.random.normal(shape=layer(x).shape, dtype='float64')

    def loss():
        return float((layer(x) * weights).sum().asscalar())

    with autograd.record():
        out = (layer(x) * weights).sum()
    out.backward()
    for param in (layer.dictionary, layer.lookup):
        numeric = _numeric_grad(loss, param)
        np.testing.assert_allclose(param.grad().asnumpy(), numeric, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('form', ['factored', 'composed'])
@pytest.mark.parametrize('l1_lambda', [0.0, 5.0])
def test_masked_entries_get_exactly_zero_gradient(l1_lambda, form):
    layer = LookupConv2D(4, 3, dictionary_size=3, in_channels=2, initial_sparsity=0.3,
                         l1_lambda=l1_lambda, form=form)
    layer.initialize()
    p = layer.lookup.data().asnumpy()
    p[0, 0] = 0.5 * layer.threshold      # below the threshold: masked
    p[1, 2] = -layer.threshold            # exactly at it: masked too (|P| <= threshold)
    layer.lookup.set_data(mx.nd.array(p))
    x = mx.nd.random.normal(shape=(3, 2, 6, 6))
    with autograd.record():
        loss = layer(x).sum() + l1_penalty(layer)
    loss.backward()
    grad = layer.lookup.grad().asnumpy()
    masked = np.abs(p) <= layer.threshold
    assert masked.sum() >= 18
    assert np.all(grad[masked] == 0.0)
    assert np.all(grad[~masked] != 0.0)


@pytest.mark.parametrize('hybridize', [False, True])
@pytest.mark.parametrize('form', ['factored', 'composed'])
def test_l1_pull_matches_formula(form, hybridize):
    """The pull is l1_lambda * threshold * sign(P) per sample, so per step after step(batch)."""
    layer = LookupDense(3, dictionary_size=4, in_units=5, initial_sparsity=0.1, l1_lambda=2.0,
                        form=form)
    layer.initialize()
    if hybridize:
        layer.hybridize()
    x = mx.nd.random.normal(shape=(6, 5))
    p = layer.lookup.data().asnumpy()
    p[0, 0] = 0.5 * layer.threshold       # masked: no pull
    layer.lookup.set_data(mx.nd.array(p))
    with autograd.record():
        out = layer(x)
        loss = out.sum(axis=1) * 0 + l1_penalty(layer)   # per-sample loss, no data gradient
    loss.backward()
    expected = 2.0 * layer.threshold * np.sign(p) * 6 * (np.abs(p) > layer.threshold)
    np.testing.assert_allclose(layer.lookup.grad().asnumpy(), expected, rtol=1e-6)
    assert expected[0, 0] == 0 and 0 < np.count_nonzero(expected) < 12
    alive = np.abs(p) * (np.abs(p) > layer.threshold)
    assert float(l1_penalty(layer).asscalar()) == pytest.approx(
        2.0 * layer.threshold * alive.sum(), rel=1e-6)


def test_l1_penalty_is_zero_without_pull():
    net = gluon.nn.HybridSequential()
    net.add(LookupDense(3, dictionary_size=2, in_units=4), gluon.nn.Dense(2, in_units=3))
    net.initialize()
    penalty = l1_penalty(net)
    assert penalty.shape == (1,) and float(penalty.asscalar()) == 0.0


_FORM_CASES = [
    ('conv', dict(channels=4, kernel_size=3, strides=1, padding=0, dictionary_size=2), (2, 3, 7, 7)),
    ('conv', dict(channels=6, kernel_size=3, strides=2, padding=1, dictionary_size=9), (2, 5, 8, 7)),
    ('conv', dict(channels=5, kernel_size=(1, 3), strides=(2, 1), padding=(0, 1),
                  dictionary_size=3), (3, 4, 6, 5)),
    ('conv', dict(channels=3, kernel_size=1, strides=2, dictionary_size=6, activation='relu',
                  use_bias=False), (2, 4, 5, 5)),
    # One window covers the whole input (AlexNet's fc6): runs as FullyConnected.
    ('conv', dict(channels=7, kernel_size=(3, 2), dictionary_size=5), (3, 4, 3, 2)),
    ('dense', dict(units=5, dictionary_size=3, activation='tanh'), (4, 2, 3, 2)),
    ('dense', dict(units=4, dictionary_size=6, flatten=False), (2, 3, 7)),
]


def _twin_layers(kind, kwargs, shape):
    """The same layer in both forms, float64, identical parameters, real masking."""
    make = LookupConv2D if kind == 'conv' else LookupDense
    layers = []
    for form in ('factored', 'composed'):
        mx.random.seed(11)
        layer = make(initial_sparsity=0.4, l1_lambda=0.3, form=form, **kwargs)
        layer.initialize(mx.init.Normal(0.5))
        layer.cast('float64')
        layer(mx.nd.zeros(shape, dtype='float64'))
        layers.append(layer)
    for a, b in zip(layers[0].collect_params().values(), layers[1].collect_params().values()):
        b.set_data(a.data())
    return layers


@pytest.mark.parametrize('hybridize', [False, True])
@pytest.mark.parametrize('kind,kwargs,shape', _FORM_CASES)
def test_forms_give_equal_outputs_and_gradients(kind, kwargs, shape, hybridize):
    layers = _twin_layers(kind, kwargs, shape)
    assert 0.0 < layers[0].density() < 1.0
    x = mx.nd.random.normal(shape=shape, dtype='float64')
    head = None
    results = []
    for layer in layers:
        if hybridize:
            layer.hybridize()
        xi = x.copy()
        xi.attach_grad()
        with autograd.record():
            out = layer(xi)
            head = head if head is not None else mx.nd.random.normal(shape=out.shape,
                                                                     dtype='float64')
            loss = (out * head).sum() + l1_penalty(layer)
        loss.backward()
        grads = {k.split('_')[-1]: v.grad().asnumpy() for k, v in layer.collect_params().items()}
        results.append((out.asnumpy(), xi.grad.asnumpy(), grads))
    (out_f, dx_f, g_f), (out_c, dx_c, g_c) = results
    np.testing.assert_allclose(out_c, out_f, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx_c, dx_f, rtol=1e-10, atol=1e-12)
    assert set(g_f) == set(g_c) and {'dictionary', 'lookup'} <= set(g_f)
    for name in g_f:
        np.testing.assert_allclose(g_c[name], g_f[name], rtol=1e-10, atol=1e-12, err_msg=name)
    masked = layers[0].masked_lookup_data().asnumpy() == 0
    assert masked.any() and np.all(g_c['lookup'][masked] == 0)
    # The forward pass really ran two different graphs.
    if hybridize:
        ops = [{n['op'] for n in __import__('json').loads(l._cached_graph[1].tojson())['nodes']}
               for l in layers]
        assert 'dot' in ops[1] and 'dot' not in ops[0]


def test_auto_form_follows_the_cost_formula():
    # d = 500 on 16 input channels, a 16x16 map: the kh x kw conv over d channels is the cost.
    wide = LookupConv2D(32, 3, padding=1, dictionary_size=500, in_channels=16)
    wide.initialize()
    wide(mx.nd.zeros((8, 16, 16, 16)))
    costs = wide.form_costs()
    assert costs == dict(factored=8 * (500 * 16 * 256 + 32 * 500 * 9 * 256),
                         composed=32 * 500 * 9 * 16 + 8 * 32 * 16 * 9 * 256)
    assert wide.resolved_form() == 'composed'
    # A big fully connected layer: composing W costs m*d*c per pass, the batch is small.
    fc = LookupDense(256, dictionary_size=200, in_units=512)
    fc.initialize()
    fc(mx.nd.zeros((4, 512)))
    assert fc.form_costs() == dict(factored=4 * (200 * 512 + 256 * 200),
                                   composed=256 * 200 * 512 + 4 * 256 * 512)
    assert fc.resolved_form() == 'factored'
    # With a large enough training batch the per-pass term amortises.
    net = gluon.nn.HybridSequential()
    net.add(fc)
    assert choose_forms(net, 100000)[fc.name] == 'composed'
    assert LookupDense(4, dictionary_size=2, form='factored').resolved_form() == 'factored'
    with pytest.raises(ValueError, match='batch_size'):
        choose_forms(net, 0)


def test_export_without_gluon_lcnn_loads(tmp_path):
    """Training graphs use native ops only: the exported files load in plain MXNet."""
    import subprocess
    import sys
    net = gluon.nn.HybridSequential()
    net.add(LookupConv2D(6, 3, padding=1, dictionary_size=40, activation='relu', form='composed'),
            LookupConv2D(4, 3, strides=2, dictionary_size=2, form='factored'),
            LookupDense(3, dictionary_size=2, l1_lambda=1.0))
    net.initialize()
    x = mx.nd.random.normal(shape=(2, 3, 6, 6))
    net.hybridize()
    ref = net(x).asnumpy()
    prefix = str(tmp_path / 'train')
    net.export(prefix)
    np.save(str(tmp_path / 'x.npy'), x.asnumpy())
    script = (
        "import sys, numpy as np, mxnet as mx\n"
        "net = mx.gluon.SymbolBlock.imports(sys.argv[1] + '-symbol.json', ['data'],"
        " sys.argv[1] + '-0000.params')\n"
        "np.save(sys.argv[2], net(mx.nd.array(np.load(sys.argv[3]))).asnumpy())\n"
        "assert 'gluon_lcnn' not in sys.modules\n")
    out = str(tmp_path / 'out.npy')
    proc = subprocess.run([sys.executable, '-c', script, prefix, out, str(tmp_path / 'x.npy')],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(out), ref, rtol=1e-5, atol=1e-6)
    assert 'Custom' not in open(prefix + '-symbol.json').read()


def test_l1_makes_lookup_sparse_while_loss_falls():
    mx.random.seed(0)
    np.random.seed(0)
    # Toy task: a linear teacher with 16 inputs and 4 outputs.
    teacher = np.random.randn(4, 16).astype('float32')
    xs = np.random.randn(2048, 16).astype('float32')
    ys = xs.dot(teacher.T)
    net = gluon.nn.HybridSequential()
    net.add(LookupDense(32, dictionary_size=8, activation='relu', l1_lambda=0.5,
                        initial_sparsity=0.2),
            LookupDense(4, dictionary_size=8, l1_lambda=0.5, initial_sparsity=0.2))
    net.initialize(mx.init.Xavier())
    net.hybridize()
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.02, 'momentum': 0.9})
    l2 = gluon.loss.L2Loss()
    losses, densities = [], []
    for step in range(300):
        idx = np.random.randint(0, len(xs), 64)
        x, y = mx.nd.array(xs[idx]), mx.nd.array(ys[idx])
        with autograd.record():
            loss = l2(net(x), y) + l1_penalty(net)
        loss.backward()
        trainer.step(64)
        if step in (0, 299):
            losses.append(float(l2(net(mx.nd.array(xs)), mx.nd.array(ys)).mean().asscalar()))
            densities.append(density_report(net)['__total__'])
    assert densities[1] < 0.8 * densities[0], densities
    assert losses[1] < 0.5 * losses[0], losses


def test_hybridize_export_import_round_trip(tmp_path):
    net = gluon.nn.HybridSequential()
    net.add(LookupConv2D(8, 3, padding=1, dictionary_size=4, activation='relu'),
            gluon.nn.MaxPool2D(2),
            LookupConv2D(6, (1, 3), strides=(1, 2), dictionary_size=5),
            LookupDense(5, dictionary_size=3))
    net.initialize()
    x = mx.nd.random.normal(shape=(2, 3, 8, 8))
    eager = net(x)
    net.hybridize()
    assert _max_rel(net(x), eager) < 1e-6
    prefix = str(tmp_path / 'lcnn')
    net.export(prefix)
    imported = gluon.SymbolBlock.imports(prefix + '-symbol.json', ['data'], prefix + '-0000.params')
    assert _max_rel(imported(x), eager) < 1e-6
    # The Module API loads the same files.
    sym, args, auxs = mx.model.load_checkpoint(prefix, 0)
    mod = mx.mod.Module(sym, data_names=['data'], label_names=None)
    mod.bind(data_shapes=[('data', x.shape)], for_training=False)
    mod.set_params(args, auxs)
    mod.forward(mx.io.DataBatch([x]), is_train=False)
    assert _max_rel(mod.get_outputs()[0], eager) < 1e-6


def test_deferred_in_channels_and_density_report():
    net = gluon.nn.HybridSequential()
    net.add(LookupConv2D(4, 3, dictionary_size=2), LookupDense(3, dictionary_size=2))
    net.initialize()
    net(mx.nd.zeros((1, 6, 5, 5)))
    conv, dense = lookup_layers(net).values()
    assert conv.dictionary.shape == (2, 6, 1, 1) and conv.in_channels == 6
    assert dense.dictionary.shape == (2, 36) and dense.in_units == 36
    report = density_report(net)
    assert list(report) == [conv.name, dense.name, '__total__']
    assert report[conv.name] == pytest.approx(conv.density())
    conv.lookup.set_data(mx.nd.zeros(conv.lookup.shape))
    assert density_report(net)[conv.name] == 0.0


@pytest.mark.parametrize('make,fragment', [
    (lambda: LookupConv2D(4, 3, dictionary_size=0), 'dictionary_size'),
    (lambda: LookupConv2D(4, 3), 'dictionary_size'),
    (lambda: LookupConv2D(4, 3, padding=-1, dictionary_size=2), 'padding'),
    (lambda: LookupConv2D(4, (3, 3, 3), dictionary_size=2), 'kernel_size'),
    (lambda: LookupConv2D(4, 3, strides=0, dictionary_size=2), 'strides'),
    (lambda: LookupConv2D(0, 3, dictionary_size=2), 'channels'),
    (lambda: LookupConv2D(4, 3, dictionary_size=2, activation='gelu'), 'activation'),
    (lambda: LookupDense(4, dictionary_size=-3), 'dictionary_size'),
    (lambda: LookupDense(4, dictionary_size=2, l1_lambda=-1), 'l1_lambda'),
    (lambda: LookupConv2D(4, 3, dictionary_size=2, form='fused'), 'form'),
    (lambda: LookupDense(4, dictionary_size=2, in_units=-2), 'in_units'),
])
def test_invalid_arguments_name_the_argument(make, fragment):
    with pytest.raises(ValueError, match=fragment):
        make()


def test_invalid_inputs_name_the_argument():
    conv = LookupConv2D(4, 3, dictionary_size=2, in_channels=3)
    conv.initialize()
    with pytest.raises(ValueError, match='in_channels'):
        conv(mx.nd.zeros((1, 5, 8, 8)))
    with pytest.raises(ValueError, match='4-D'):
        conv(mx.nd.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match='kernel_size'):
        conv(mx.nd.zeros((1, 3, 2, 8)))
    dense = LookupDense(4, dictionary_size=2)
    dense.initialize()
    dense(mx.nd.zeros((2, 10)))
    with pytest.raises(ValueError, match='in_units'):
        dense(mx.nd.zeros((2, 11)))


def test_lookup_net_learns_fashion_mnist():
    mx.random.seed(1)
    np.random.seed(1)
    xs, ys = load_fashion_mnist(train=True)
    xt, yt = load_fashion_mnist(train=False)
    net = gluon.nn.HybridSequential()
    net.add(LookupConv2D(16, 5, padding=2, dictionary_size=1, use_bias=False),
            gluon.nn.BatchNorm(), gluon.nn.Activation('relu'), gluon.nn.MaxPool2D(2),
            LookupConv2D(32, 5, padding=2, dictionary_size=8, use_bias=False),
            gluon.nn.BatchNorm(), gluon.nn.Activation('relu'), gluon.nn.MaxPool2D(2),
            LookupDense(10, dictionary_size=32, in_units=32 * 7 * 7))
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 2e-3})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    batch, start = 128, time.time()
    order = np.random.permutation(len(xs))
    for i in range(0, 400 * batch, batch):
        idx = order[i % len(xs):i % len(xs) + batch]
        x, y = mx.nd.array(xs[idx]), mx.nd.array(ys[idx])
        with autograd.record():
            loss = loss_fn(net(x), y)
        loss.backward()
        trainer.step(len(idx))
    correct = 0
    for i in range(0, len(xt), 1000):
        pred = net(mx.nd.array(xt[i:i + 1000])).argmax(axis=1).asnumpy()
        correct += int((pred == yt[i:i + 1000]).sum())
    accuracy = correct / float(len(xt))
    print('fashion-mnist test accuracy %.4f after 400 steps (%.1f s)' % (accuracy, time.time() - start))
    assert accuracy > 0.80
