"""quantize_int8: MKLDNN int8 of a dense LeNet trained on real Fashion-MNIST, against fp32."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import gluon_lcnn
from gluon_lcnn import compare
from gluon_lcnn.data import load_fashion_mnist
from gluon_lcnn.deploy import to_inference
from gluon_lcnn.quantize import _calibration_batches, quantize_int8

TRAIN_STEPS, BATCH, NUM_TEST = 200, 32, 500


@pytest.fixture(scope='module')
def trained():
    """LeNet after 200 Adam steps (batch 32) on Fashion-MNIST; calibration and test images."""
    mx.random.seed(3)
    rng = np.random.RandomState(3)
    xs, ys = load_fashion_mnist(train=True)
    xt, yt = load_fashion_mnist(train=False)
    net = gluon_lcnn.get_model('lenet', in_channels=1, classes=10)
    net.initialize(mx.init.Xavier())
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 2e-3})
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    order = rng.permutation(len(xs))
    for step in range(TRAIN_STEPS):
        idx = order[step * BATCH:(step + 1) * BATCH]
        with autograd.record():
            loss = loss_fn(net(mx.nd.array(xs[idx])), mx.nd.array(ys[idx]))
        loss.backward()
        trainer.step(BATCH)
    # Calibration: training images the net was not trained on in these steps.
    calib_idx = order[-4 * BATCH:]
    calib = [mx.nd.array(xs[calib_idx[k * BATCH:(k + 1) * BATCH]]) for k in range(4)]
    test_x = mx.nd.array(xt[:NUM_TEST])
    return dict(net=net, calib=calib, calib_x=xs[calib_idx], calib_y=ys[calib_idx],
                test_x=test_x, test_y=yt[:NUM_TEST], fp32=net(test_x).asnumpy())


@pytest.fixture(scope='module')
def quantized(trained):
    return quantize_int8(trained['net'], trained['calib'], input_shape=(1, 1, 28, 28))


def _agreement(a, b):
    return float((a.argmax(axis=1) == b.argmax(axis=1)).mean())


def test_int8_logits_close_to_fp32(trained, quantized):
    fp32, int8 = trained['fp32'], quantized(trained['test_x']).asnumpy()
    assert int8.shape == fp32.shape == (NUM_TEST, 10) and int8.dtype == np.float32
    acc_fp32 = float((fp32.argmax(axis=1) == trained['test_y']).mean())
    acc_int8 = float((int8.argmax(axis=1) == trained['test_y']).mean())
    error = np.abs(int8 - fp32).max() / np.abs(fp32).max()
    print('int8 vs fp32: max error %.4f of max |logit|, top-1 agreement %.3f, accuracy %.3f -> '
          '%.3f' % (error, _agreement(int8, fp32), acc_fp32, acc_int8))
    assert acc_fp32 > 0.75   # the net did learn (measured 0.838)
    # Measured: max |int8 - fp32| = 1.9% of max |fp32|, top-1 agreement 99.8%, accuracy
    # 0.838 -> 0.836.
    assert np.abs(int8 - fp32).max() <= 0.05 * np.abs(fp32).max()
    assert _agreement(int8, fp32) >= 0.97
    assert acc_int8 >= acc_fp32 - 0.02


def test_the_graph_is_int8_and_the_input_net_unchanged(trained, quantized, tmp_path):
    net = trained['net']
    before = {k: v.data().asnumpy() for k, v in net.collect_params().items()}
    quantize_int8(net, trained['calib'][:1])
    for k, v in net.collect_params().items():
        np.testing.assert_array_equal(v.data().asnumpy(), before[k])
    np.testing.assert_array_equal(net(trained['test_x']).asnumpy(), trained['fp32'])
    quantized.export(str(tmp_path / 'q'))
    ops = [n['op'] for n in json.loads((tmp_path / 'q-symbol.json').read_text())['nodes']]
    # conv+bn+relu fused by MKLDNN; no fp32 BatchNorm or Convolution left.
    assert ops.count('_sg_mkldnn_conv') == 2 and '_contrib_quantize_v2' in ops
    assert 'BatchNorm' not in ops and 'Convolution' not in ops
    assert {n['name'] for n in json.loads((tmp_path / 'q-symbol.json').read_text())['nodes']
            if n['op'] == '_sg_mkldnn_conv'} == {'quantized_sg_mkldnn_conv_bn_act_0',
                                                 'quantized_sg_mkldnn_conv_bn_act_1'}


def test_export_and_imports_round_trip(trained, quantized, tmp_path):
    x = trained['test_x'][:32]
    expected = quantized(x).asnumpy()
    quantized.export(str(tmp_path / 'lenet_int8'))
    loaded = gluon.SymbolBlock.imports(str(tmp_path / 'lenet_int8-symbol.json'), ['data'],
                                       str(tmp_path / 'lenet_int8-0000.params'))
    np.testing.assert_allclose(loaded(x).asnumpy(), expected, rtol=1e-5, atol=1e-5)
    loaded.hybridize(static_alloc=True, static_shape=True)
    np.testing.assert_allclose(loaded(x).asnumpy(), expected, rtol=1e-5, atol=1e-5)


def test_entropy_calibration_from_a_dataloader(trained):
    loader = gluon.data.DataLoader(gluon.data.ArrayDataset(trained['calib_x'],
                                                           trained['calib_y']),
                                   batch_size=BATCH)
    q = quantize_int8(trained['net'], loader, calib_mode='entropy', num_calib_batches=2)
    agreement = _agreement(q(trained['test_x']).asnumpy(), trained['fp32'])
    print('entropy calibration: top-1 agreement %.3f' % agreement)
    assert agreement >= 0.97


def test_excluded_layer_stays_fp32(trained):
    q = quantize_int8(trained['net'], trained['calib'][0],
                      exclude_layers=[trained['net'].name + '_conv0_fwd'])
    out = q(trained['test_x']).asnumpy()
    assert _agreement(out, trained['fp32']) >= 0.97
    sym = q._cached_graph[1]
    names = [n['name'] for n in json.loads(sym.tojson())['nodes'] if n['op'] == '_sg_mkldnn_conv']
    assert sorted(names) == ['quantized_sg_mkldnn_conv_bn_act_1', 'sg_mkldnn_conv_bn_act_0']


def test_calibration_batches_of_different_sizes_are_rebatched():
    batches = _calibration_batches([np.zeros((5, 1, 4, 4)), (mx.nd.ones((3, 1, 4, 4)), None),
                                    mx.nd.ones((4, 1, 4, 4))], None, None)
    assert [b.shape for b in batches] == [(5, 1, 4, 4)] * 2   # 12 images: 2 x 5, 2 dropped
    assert all(b.dtype == np.float32 for b in batches)
    assert len(_calibration_batches([mx.nd.ones((2, 3))] * 5, 3, None)) == 3


def test_lcnn_layers_are_refused_and_their_dense_form_quantizes():
    mx.random.seed(0)
    lcnn = gluon_lcnn.get_model('lenet_lcnn_fast', in_channels=1, classes=10)
    lcnn.initialize(mx.init.Xavier())
    x = mx.nd.random.normal(shape=(64, 1, 28, 28))
    lcnn(x)
    with pytest.raises(ValueError, match="LCNN layers.*choose='dense'"):
        quantize_int8(lcnn, x)
    inference = to_inference(lcnn, choose='sparse')
    with pytest.raises(ValueError, match='LCNN layers'):
        quantize_int8(inference, x)
    # Dense Conv2D / Dense with P_eff . D; fast_pool: LcnnMaxPool, a custom op left in fp32.
    dense = to_inference(lcnn, choose='dense', fast_pool=True)
    with autograd.predict_mode():
        reference = lcnn(x).asnumpy()
    q = quantize_int8(dense, x[:16])
    out = q(x).asnumpy()
    # Random weights, so a looser bound than the trained net's (measured 2.6%).
    assert np.abs(out - reference).max() <= 0.1 * np.abs(reference).max()
    ops = [n['op'] for n in json.loads(q._cached_graph[1].tojson())['nodes']]
    assert ops.count('lcnn_max_pool') == 2 and ops.count('_contrib_dequantize') >= 2


def test_argument_errors(trained):
    net, calib = trained['net'], trained['calib'][0]
    with pytest.raises(ValueError, match='calib_mode must be one of'):
        quantize_int8(net, calib, calib_mode='kl')
    with pytest.raises(ValueError, match='quantized_dtype'):
        quantize_int8(net, calib, quantized_dtype='int4')
    with pytest.raises(ValueError, match='calib_data is empty'):
        quantize_int8(net, [])
    with pytest.raises(ValueError, match='calib_data is required'):
        quantize_int8(net, None)
    with pytest.raises(ValueError, match='calibration batch 0 has shape'):
        quantize_int8(net, np.zeros((0, 1, 28, 28), np.float32))
    with pytest.raises(ValueError, match='calibration batch 1 has shape'):
        quantize_int8(net, [calib, mx.nd.zeros((2, 1, 32, 32))])
    with pytest.raises(ValueError, match='input_shape'):
        quantize_int8(net, calib, input_shape=(1, 3, 28, 28))
    with pytest.raises(ValueError, match='calibration batch 0 is a str'):
        quantize_int8(net, ['images'])
    with pytest.raises(ValueError, match='num_calib_batches'):
        quantize_int8(net, calib, num_calib_batches=0)
    with pytest.raises(ValueError, match='not nodes of the net'):
        quantize_int8(net, calib, exclude_layers=['nope_fwd'])
    with pytest.raises(ValueError, match='exclude_layers must be a list'):
        quantize_int8(net, calib, exclude_layers=net.name + '_conv0_fwd')
    with pytest.raises(ValueError, match='CPU'):
        quantize_int8(net, calib, ctx=mx.gpu(0))
    with pytest.raises(ValueError, match='HybridBlock'):
        quantize_int8(gluon.nn.Sequential(), calib)
    fresh = gluon_lcnn.get_model('lenet', in_channels=1, classes=10)
    fresh.initialize()   # deferred: shapes unknown until a forward pass
    with pytest.raises(ValueError, match='not initialized'):
        quantize_int8(fresh, calib)


def test_compare_models_times_int8_in_the_same_run():
    rows = compare.compare_models('lenet_lcnn_fast', batches=(2,), density=0.1, size=28,
                                  repeat=3, warmup=1, int8=True)
    row = rows[0]
    assert row['int8_ms'] > 0 and row['int8_min_ms'] <= row['int8_ms']
    assert row['lcnn_vs_int8'] > 0 and row['int8_speedup'] > 0
    assert 'random' in row['int8_calibration']
    text = compare.render_models(rows)
    header = [c.strip() for c in text.splitlines()[0].strip('|').split('|')]
    assert header[-4:] == ['int8 ms', 'int8 best ms', 'int8 speedup', 'LCNN vs int8']
    assert 'quantize_int8' in text and 'random images' in text
    plain = compare.render_models(compare.compare_models(
        'lenet_lcnn_fast', batches=(1,), density=0.1, size=28, repeat=2, warmup=1))
    assert 'int8' not in plain
