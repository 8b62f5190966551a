"""Half-precision (float16) weight storage: lcnn_dense, lcnn_sparse_dense with the dictionary
fused in (float32 / float16, one pixel or a covering conv's kh x kw), the blocks that use them
(LcnnDense, SparseLookupDense / SparseCoveringConv with weight_dtype) and
to_inference(weight_dtype='float16'), including its accuracy effect on a net trained on
Fashion-MNIST. References are numpy products of the float16-rounded weights in float64.
Budget: about 25 s on 2 cores.
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.base import MXNetError

import gluon_lcnn
from gluon_lcnn.data import load_fashion_mnist
from gluon_lcnn.deploy import to_inference
from gluon_lcnn.nn.sparse import (CoveringConv, LcnnDense, SparseCoveringConv,
                                  SparseLookupDense, initialize_constants, pack_lookup)

RNG = np.random.RandomState(0)


def _rounded(a, dtype):
    return a.astype(dtype).astype(np.float64)


def _nd(a, dtype=None):
    return mx.nd.array(a, dtype=dtype or a.dtype)


def _packed(p):
    pk = pack_lookup(p)
    return [_nd(a) for a in (pk.indptr, pk.dict_index, pk.value)]


def _sparse(shape, density, rng):
    return (rng.randn(*shape) * (rng.rand(*shape) < density)).astype(np.float32)


@pytest.mark.parametrize('dtype', ['float32', 'float16'])
@pytest.mark.parametrize('batch', [1, 2, 3, 9])
def test_lcnn_dense_matches_numpy(dtype, batch):
    # 13 units: one 8-row block plus single rows at batch 1; 4-row blocks and a lone sample else.
    x = RNG.randn(batch, 37).astype(np.float32)
    w = RNG.randn(13, 37).astype(np.float32)
    b = RNG.randn(13).astype(np.float32)
    ref = x.astype(np.float64) @ _rounded(w, dtype).T + b
    out = mx.nd.lcnn_dense(_nd(x), _nd(w, dtype), _nd(b), num_hidden=13, weight_dtype=dtype)
    np.testing.assert_allclose(out.asnumpy(), ref, rtol=1e-5, atol=1e-5)
    out = mx.nd.lcnn_dense(_nd(x), _nd(w, dtype), num_hidden=13, weight_dtype=dtype,
                           relu=True, no_bias=True)
    np.testing.assert_allclose(out.asnumpy(), np.maximum(ref - b, 0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dtype', ['float32', 'float16'])
@pytest.mark.parametrize('pixels', [1, 4, 36, 49])
@pytest.mark.parametrize('batch', [1, 9])
def test_fused_dictionary_matches_numpy(dtype, pixels, batch):
    # 7 atoms: odd, so the last dictionary row runs alone; 36 and 49 pixels pad to 5 and 7
    # vector blocks; batch 9 takes the batched lookup path.
    c, atoms, units = 6, 7, 11
    rng = np.random.RandomState(pixels + batch)
    x = rng.randn(batch, c * pixels).astype(np.float32)
    d = rng.randn(atoms, c).astype(np.float32)
    p = _sparse((units, atoms * pixels), 0.3, rng)
    b = rng.randn(units).astype(np.float32)
    s = np.einsum('qc,ncp->nqp', _rounded(d, dtype), x.reshape(batch, c, pixels))
    ref = s.reshape(batch, -1) @ p.T + b
    out = mx.nd.lcnn_sparse_dense(_nd(x), _nd(d, dtype), *_packed(p), _nd(b), num_hidden=units,
                                  dictionary_size=atoms * pixels, with_dictionary=True,
                                  pixels=pixels, weight_dtype=dtype)
    np.testing.assert_allclose(out.asnumpy(), ref, rtol=1e-4, atol=1e-4)


def _dense_args(weight_dtype='float16', weight_shape=(5, 4)):
    return [mx.nd.ones((2, 4)), mx.nd.ones(weight_shape, dtype=weight_dtype), mx.nd.ones(5)]


@pytest.mark.parametrize('args, attrs, message', [
    (_dense_args('float32'), dict(weight_dtype='float16'), "'weight' must be float16"),
    (_dense_args('float16'), dict(), "'weight' must be float32"),
    (_dense_args(weight_shape=(5, 3)), dict(weight_dtype='float16'), 'weight must have shape'),
    (_dense_args(), dict(weight_dtype='int8'), 'is not a weight type'),
    (_dense_args()[:2], dict(weight_dtype='float16'), 'expects 3 inputs'),
])
def test_lcnn_dense_rejects_bad_inputs(args, attrs, message):
    with pytest.raises(MXNetError, match=message):
        mx.nd.lcnn_dense(*args, num_hidden=5, **attrs).wait_to_read()


def test_lcnn_dense_refuses_out_aliasing_its_input():
    x = mx.nd.ones((4, 4))
    with pytest.raises(MXNetError, match="shares memory with input 'data'"):
        mx.nd.lcnn_dense(x, mx.nd.ones((4, 4), dtype='float16'), num_hidden=4,
                         weight_dtype='float16', no_bias=True, out=x).wait_to_read()


def _fused(x, d, pixels=1, dictionary_size=6, **attrs):
    p = np.eye(5, dictionary_size, dtype=np.float32)
    return mx.nd.lcnn_sparse_dense(x, d, *_packed(p), num_hidden=5,
                                   dictionary_size=dictionary_size, with_dictionary=True,
                                   pixels=pixels, no_bias=True, **attrs)


@pytest.mark.parametrize('x_shape, d_shape, d_dtype, attrs, message', [
    ((2, 4), (6, 4), 'float32', dict(weight_dtype='float16'), "'dictionary' must be float16"),
    ((2, 4), (6, 3), 'float16', dict(weight_dtype='float16'), 'dictionary must have shape'),
    ((2, 8), (3, 4), 'float32', dict(pixels=4), 'not a multiple of pixels=4'),
    ((2, 9), (3, 4), 'float32', dict(pixels=2), 'not a multiple of pixels=2'),
])
def test_fused_dictionary_rejects_bad_inputs(x_shape, d_shape, d_dtype, attrs, message):
    with pytest.raises(MXNetError, match=message):
        _fused(mx.nd.ones(x_shape), mx.nd.ones(d_shape, dtype=d_dtype), **attrs).wait_to_read()


def test_pixels_and_weight_dtype_need_the_dictionary():
    p = np.eye(5, 6, dtype=np.float32)
    for attrs in (dict(pixels=2), dict(weight_dtype='float16')):
        with pytest.raises(MXNetError, match='need with_dictionary=True'):
            mx.nd.lcnn_sparse_dense(mx.nd.ones((2, 6)), *_packed(p), num_hidden=5,
                                    dictionary_size=6, no_bias=True, **attrs).wait_to_read()


def test_blocks_match_their_float32_forms_and_survive_export(tmp_path):
    rng = np.random.RandomState(3)
    p4 = _sparse((9, 5, 3, 3), 0.3, rng)
    d = rng.randn(5, 4).astype(np.float32)
    b = rng.randn(9).astype(np.float32)
    x = mx.nd.array(rng.randn(2, 4, 3, 3))
    w = np.einsum('mqij,qc->mcij', p4, _rounded(d, 'float16'))
    ref = np.maximum(x.asnumpy().reshape(2, -1) @ w.reshape(9, -1).T + b, 0)
    cover = initialize_constants(SparseCoveringConv(p4, b, d, relu=True, weight_dtype='float16'))
    p2 = p4[:, :, 0, 0]
    fc = initialize_constants(SparseLookupDense(p2, b, d, weight_dtype='float16', flatten=False))
    dense = initialize_constants(LcnnDense(w.reshape(9, -1), b, relu=True))
    x2 = mx.nd.array(rng.randn(2, 3, 4))
    fc_ref = x2.asnumpy() @ _rounded(d, 'float16').T @ p2.T + b
    dense_ref = np.maximum(x.asnumpy().reshape(2, -1) @ _rounded(w.reshape(9, -1),
                                                                  'float16').T + b, 0)
    for blk, inp, want in ((cover, x, ref.reshape(2, 9, 1, 1)), (fc, x2, fc_ref),
                           (dense, x, dense_ref)):
        blk.hybridize()
        np.testing.assert_allclose(blk(inp).asnumpy(), want, rtol=1e-4, atol=1e-4)
        path = str(tmp_path / type(blk).__name__)
        blk.export(path)
        loaded = gluon.SymbolBlock.imports(path + '-symbol.json', ['data'],
                                           path + '-0000.params')
        np.testing.assert_array_equal(loaded(inp).asnumpy(), blk(inp).asnumpy())
    assert cover.dictionary.data().dtype == np.float16 and cover.value.data().dtype == np.float32
    assert dense.weight.data().dtype == np.float16
    assert cover.lookup_dense().shape == p4.shape and np.array_equal(cover.lookup_dense(), p4)


def test_blocks_refuse_what_float16_cannot_hold():
    with pytest.raises(ValueError, match='beyond float16'):
        LcnnDense(np.full((2, 2), 1e5, np.float32))
    with pytest.raises(ValueError, match='weight_dtype must be one of'):
        SparseLookupDense(np.eye(2, dtype=np.float32), dictionary=np.eye(2), weight_dtype='int8')
    with pytest.raises(ValueError, match='has none'):
        SparseLookupDense(np.eye(2, dtype=np.float32), weight_dtype='float16')
    net = gluon.nn.Dense(2, in_units=2)
    net.initialize()
    with pytest.raises(ValueError, match='weight_dtype must be one of'):
        to_inference(net, choose='sparse', weight_dtype='half')


def _train_lenet(steps=300, batch=32):
    mx.random.seed(0)
    np.random.seed(0)
    xs, ys = load_fashion_mnist(train=True)
    net = gluon_lcnn.get_model('lenet_lcnn_fast', classes=10)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 2e-3})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    order = np.random.permutation(len(xs))[:steps * batch]
    for i in range(steps):
        idx = order[i * batch:(i + 1) * batch]
        with autograd.record():
            loss = loss_fn(net(mx.nd.array(xs[idx])), mx.nd.array(ys[idx]))
        loss.backward()
        trainer.step(batch)
    return net


def test_trained_net_keeps_its_predictions_in_float16():
    net = _train_lenet()
    xt, yt = load_fashion_mnist(train=False)
    x = mx.nd.array(xt[:2000])
    inf32 = to_inference(net, choose='sparse')
    inf16 = to_inference(net, choose='sparse', weight_dtype='float16')
    kinds = {k: v.get('weight_dtype') for k, v in inf16.kernel_choices.items()}
    fc1 = list(gluon_lcnn.nn.lookup_layers(net).values())[-1]
    assert kinds[fc1.prefix] == 'float16'               # the lookup fc1's dictionary
    assert kinds[net.output.prefix] == 'float16'        # the dense classifier
    assert isinstance(inf16.output, LcnnDense)
    assert 'weight_dtype' not in str(inf32.kernel_choices)
    with autograd.predict_mode():
        a, b = inf32(x).asnumpy(), inf16(x).asnumpy()
    accuracy = float((a.argmax(1) == yt[:2000]).mean())
    agree = float((a.argmax(1) == b.argmax(1)).mean())
    spread = float(a.max() - a.min())
    diff = float(np.abs(a - b).max())
    print('lenet_lcnn_fast, 300 steps: accuracy %.3f; float16 weights: max |logit diff| %.2e '
          '(logit range %.1f), top-1 agreement %.4f' % (accuracy, diff, spread, agree))
    assert accuracy > 0.7                 # it did learn: the comparison means something
    assert 0 < diff < 2e-3 * spread       # rounded, but by float16's 2^-11, not more
    assert agree >= 0.998


def test_auto_records_and_keeps_the_faster_precision():
    from gluon_lcnn.nn import LookupDense
    net = gluon.nn.HybridSequential()
    net.add(LookupDense(64, dictionary_size=16, in_units=32), gluon.nn.Activation('relu'),
            gluon.nn.Dense(10, in_units=64))
    net.initialize(mx.init.Xavier())
    shape = (1, 32)
    inf = to_inference(net, input_shape=shape, weight_dtype='float16', repeat=3, warmup=1)
    for layer, kept in ((net[0], inf[0]), (net[2], inf[1])):
        entry = inf.kernel_choices[layer.prefix]
        assert entry['float32_s'] > 0 and entry['float16_s'] > 0
        faster = 'float16' if entry['float16_s'] < entry['float32_s'] else 'float32'
        assert entry['weight_dtype'] == faster
        assert getattr(kept, 'weight_dtype', 'float32') == faster
    x = mx.nd.array(np.random.RandomState(1).randn(*shape))
    with autograd.predict_mode():
        ref = net(x).asnumpy()
    np.testing.assert_allclose(inf(x).asnumpy(), ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


def test_covering_conv_gets_its_one_call_float16_form():
    from gluon_lcnn import deploy
    rng = np.random.RandomState(2)
    p = _sparse((12, 5, 3, 3), 0.2, rng)
    d = rng.randn(5, 4, 1, 1).astype(np.float32)
    b = rng.randn(12).astype(np.float32)
    dictionary = gluon.nn.Conv2D(5, 1, in_channels=4, use_bias=False)
    dictionary.initialize()
    dictionary.weight.set_data(mx.nd.array(d))
    cover = CoveringConv(dictionary, initialize_constants(
        SparseLookupDense(p.reshape(12, -1), bias=b, relu=True)))
    x = mx.nd.array(rng.randn(2, 4, 3, 3))
    half = deploy._half_form(cover, x.shape, mx.cpu())
    assert isinstance(half, SparseCoveringConv) and half.weight_dtype == 'float16'
    assert half.kernel_size == (3, 3) and half.dictionary_size == 5 and half.nnz == (p != 0).sum()
    np.testing.assert_allclose(half(x).asnumpy(), cover(x).asnumpy(), rtol=1e-2, atol=1e-2)
    dense_cover = CoveringConv(None, gluon.nn.Dense(12, in_units=36, activation='relu'))
    dense_cover.initialize()
    half = deploy._half_form(dense_cover, x.shape, mx.cpu())
    assert isinstance(half.fc, LcnnDense) and half.fc.relu
    np.testing.assert_allclose(half(x).asnumpy(), dense_cover(x).asnumpy(), rtol=1e-2,
                               atol=1e-2)


def test_dense_covering_conv_becomes_a_float16_fully_connected_layer():
    from gluon_lcnn import deploy
    conv = gluon.nn.Conv2D(6, 3, in_channels=4, activation='relu')
    conv.initialize()
    x = mx.nd.array(np.random.RandomState(4).randn(2, 4, 3, 3))
    half = deploy._half_form(conv, x.shape, mx.cpu())
    assert isinstance(half, CoveringConv) and isinstance(half.fc, LcnnDense) and half.fc.relu
    np.testing.assert_allclose(half(x).asnumpy(), conv(x).asnumpy(), rtol=1e-2, atol=1e-2)
    assert deploy._half_form(conv, (2, 4, 5, 5), mx.cpu()) is None  # does not cover 5x5


def test_empty_batch_and_features_under_numpy_shapes():
    pk = pack_lookup(np.eye(5, 6, dtype=np.float32))
    ops = [_nd(a) for a in (pk.indptr, pk.dict_index, pk.value)]
    with mx.util.np_shape(True):
        b = mx.nd.ones((5,))
        w = mx.nd.ones((5, 4), dtype='float16')
        out = mx.nd.lcnn_dense(mx.nd.ones((0, 4)), w, b, num_hidden=5, weight_dtype='float16')
        assert out.shape == (0, 5)
        out = mx.nd.lcnn_dense(mx.nd.ones((2, 0)), mx.nd.ones((5, 0), dtype='float16'), b,
                               num_hidden=5, weight_dtype='float16')
        np.testing.assert_array_equal(out.asnumpy(), np.ones((2, 5)))  # no inputs: the bias
        fused = dict(num_hidden=5, dictionary_size=6, with_dictionary=True, pixels=2,
                     weight_dtype='float16')
        out = mx.nd.lcnn_sparse_dense(mx.nd.ones((0, 8)), mx.nd.ones((3, 4), dtype='float16'),
                                      *ops, b, **fused)
        assert out.shape == (0, 5)
        out = mx.nd.lcnn_sparse_dense(mx.nd.ones((2, 0)), mx.nd.ones((3, 0), dtype='float16'),
                                      *ops, b, **fused)
        np.testing.assert_array_equal(out.asnumpy(), np.ones((2, 5)))


@pytest.mark.parametrize('batch', [1, 2])
def test_fused_relu_keeps_nan(batch):
    x = mx.nd.array(np.full((batch, 2), np.nan, np.float32))
    out = mx.nd.lcnn_dense(x, mx.nd.ones((3, 2), dtype='float16'), num_hidden=3, relu=True,
                           no_bias=True, weight_dtype='float16')
    assert np.isnan(out.asnumpy()).all()
