"""flops.profile: pinned totals of the zoo's dense nets at 224x224, hand-computed counts of
lookup layers, grouped convs, the hook for sparse inference blocks, result object and CLI.

Budget: ~30 s on 2 cores (VGG-16 and AlexNet forwards at 224, batch 1).
"""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet.gluon import nn

import gluon_lcnn
from gluon_lcnn import flops
from gluon_lcnn.model_zoo import PUBLISHED_DENSITIES, set_lookup_density
from gluon_lcnn.nn import LookupConv2D, LookupDense

SHAPE = (1, 3, 224, 224)


@pytest.mark.parametrize('name,low,high', [
    ('alexnet', 710e6, 718e6),
    ('resnet18_v1', 1.80e9, 1.84e9),
    ('vgg16', 15.4e9, 15.6e9),
    ('jacintonet11', 0.3e9, 0.5e9),
])
def test_dense_totals_at_224(name, low, high):
    result = flops.profile(gluon_lcnn.get_model(name), SHAPE)
    t = result.totals
    assert low <= t['dense_macs'] <= high, t
    assert t['macs'] == t['dense_macs'] and t['speedup'] == 1.0


def test_alexnet_layers_by_hand():
    rows = flops.profile(gluon_lcnn.get_model('alexnet'), SHAPE).rows
    assert [r['kind'] for r in rows] == ['conv'] * 6 + ['dense'] * 2
    assert rows[0]['dense_macs'] == 64 * 3 * 11 * 11 * 55 * 55
    assert rows[1]['dense_macs'] == 192 * 64 * 5 * 5 * 27 * 27
    assert rows[5]['dense_macs'] == 4096 * 256 * 6 * 6   # fc6 as a 6x6 conv
    assert rows[5]['output_shape'] == (1, 4096, 1, 1)
    assert rows[0]['params'] == 64 * 3 * 11 * 11          # no bias: BN follows


def _lookup_conv(channels, kernel, strides, padding, d, c, nnz, seed=0):
    layer = LookupConv2D(channels, kernel, strides=strides, padding=padding, dictionary_size=d,
                         in_channels=c)
    layer.initialize()
    p = np.zeros(layer.lookup.shape, dtype=np.float32)
    rng = np.random.RandomState(seed)
    p.reshape(-1)[rng.choice(p.size, nnz, replace=False)] = 1.0
    layer.lookup.set_data(mx.nd.array(p))
    return layer


def test_lookup_conv_count_by_hand():
    layer = _lookup_conv(8, 3, 2, 1, d=4, c=5, nnz=17)
    (row,) = flops.profile(layer, (1, 5, 9, 9)).rows
    assert row['kind'] == 'lookup_conv' and row['output_shape'] == (1, 8, 5, 5)
    assert row['nnz'] == 17 and row['density'] == pytest.approx(17 / (8 * 4 * 9))
    # Dictionary over all 9x9 input pixels, then one MAC per non-zero and output pixel.
    assert row['macs'] == 4 * 5 * 81 + 17 * 25
    assert row['dense_macs'] == 8 * 5 * 3 * 3 * 25
    assert row['params'] == 4 * 5 + 8 * 4 * 9 + 8


def test_strided_1x1_lookup_counts_the_dictionary_on_every_pixel():
    layer = _lookup_conv(6, 1, 2, 0, d=3, c=4, nnz=5)
    (row,) = flops.profile(layer, (2, 4, 9, 9)).rows
    assert row['output_shape'] == (2, 6, 5, 5)
    # Batch 2; the 1x1/s2 window reads only 5x5 of the 9x9 pixels, but S = D x is computed on
    # all 9x9 of them (by the factored training form and by lcnn_sparse_conv alike).
    assert row['macs'] == 2 * (3 * 4 * 81 + 5 * 25)
    assert row['dense_macs'] == 2 * 6 * 4 * 25


@pytest.mark.parametrize('kernel,strides,padding,in_hw', [
    (1, 2, 0, (9, 9)),     # a ResNet downsample shortcut: the stride skips pixels
    (3, 2, 1, (9, 8)),
    (3, 1, 1, (7, 7)),
    ((1, 3), (2, 1), (0, 1), (8, 7)),
    (2, 3, 0, (9, 10)),    # 2x2/s3: the windows skip every third row and column
    (3, 2, 0, (8, 8)),     # the last row and column lie outside every window
])
def test_training_and_inference_forms_count_alike(kernel, strides, padding, in_hw):
    from gluon_lcnn.deploy import to_inference
    from gluon_lcnn.nn import SparseLookupConv2D
    layer = _lookup_conv(6, kernel, strides, padding, d=3, c=4, nnz=13)
    shape = (2, 4) + in_hw
    trained = flops.profile(layer, shape).rows
    inference = to_inference(layer, choose='sparse')
    assert isinstance(inference, SparseLookupConv2D)
    deployed = flops.profile(inference, shape).rows
    assert len(trained) == len(deployed) == 1
    for key in ('output_shape', 'dense_macs', 'macs', 'nnz', 'density'):
        assert trained[0][key] == deployed[0][key], key
    # The one formula, by hand: S = D x on all N*H*W pixels + one MAC per nnz and output pixel.
    n, c, h, w = shape
    positions = n * int(np.prod(trained[0]['output_shape'][2:]))
    assert trained[0]['macs'] == 3 * c * n * h * w + 13 * positions


def test_lookup_dense_training_and_inference_forms_count_alike():
    from gluon_lcnn.deploy import to_inference
    layer = LookupDense(7, dictionary_size=3, in_units=10)
    layer.initialize()
    trained = flops.profile(layer, (2, 10)).rows
    deployed = flops.profile(to_inference(layer, choose='sparse'), (2, 10)).rows
    for key in ('dense_macs', 'macs', 'nnz', 'density'):
        assert trained[0][key] == deployed[0][key], key


def test_lookup_dense_and_totals():
    net = nn.HybridSequential()
    net.add(LookupDense(10, dictionary_size=3, in_units=20), nn.Dense(4, in_units=10))
    net.initialize()
    p = np.zeros((10, 3), dtype=np.float32)
    p[:, 0] = 1.0
    net[0].lookup.set_data(mx.nd.array(p))
    result = flops.profile(net, (1, 20))
    lookup, dense = result.rows
    assert lookup['macs'] == 3 * 20 + 10 and lookup['dense_macs'] == 200
    assert dense['macs'] == dense['dense_macs'] == 40 and dense['nnz'] is None
    assert result.totals['dense_macs'] == 240 and result.totals['macs'] == 110
    assert result.totals['speedup'] == pytest.approx(240 / 110)
    json.dumps(result.to_dict())
    table = result.table()
    assert 'total' in table and 'lookup_dense' in table


def test_grouped_conv_and_ignored_layers():
    net = nn.HybridSequential()
    net.add(nn.Conv2D(8, 3, padding=1, groups=4, in_channels=8), nn.BatchNorm(),
            nn.Activation('relu'), nn.MaxPool2D())
    rows = flops.profile(net, (1, 8, 6, 6)).rows
    assert len(rows) == 1 and rows[0]['kind'] == 'conv_g4'
    assert rows[0]['dense_macs'] == 8 * 2 * 9 * 36


class _FakeSparseConv(nn.HybridBlock):
    """Stands in for gluon_lcnn.nn.sparse.SparseLookupConv2D: counted by duck typing."""
    dictionary_size = 4
    kernel_size, strides, padding = (3, 3), (1, 1), (1, 1)

    def nnz(self):
        return 11

    def hybrid_forward(self, F, x):
        return F.concat(x, x, dim=1)


class _SelfCounting(nn.HybridBlock):
    def lcnn_macs(self, in_shape, out_shape):
        return dict(kind='custom', dense_macs=100, macs=10)

    def hybrid_forward(self, F, x):
        return x


def test_hooks_for_other_blocks():
    net = nn.HybridSequential()
    net.add(_FakeSparseConv(), _SelfCounting())
    net.initialize()
    sparse, custom = flops.profile(net, (1, 3, 5, 5)).rows
    assert sparse['kind'] == 'sparse_conv'
    assert sparse['macs'] == 4 * 3 * 25 + 11 * 25
    assert sparse['dense_macs'] == 6 * 3 * 9 * 25
    assert (custom['kind'], custom['macs'], custom['dense_macs']) == ('custom', 10, 100)


def test_hybridized_net_is_restored_and_counts_follow_density():
    net = gluon_lcnn.get_model('lenet_lcnn_fast', classes=10)
    net.initialize()
    net.hybridize()
    x = mx.nd.zeros((1, 1, 28, 28))
    net(x)
    first = flops.profile(net, (1, 1, 28, 28))
    assert net._active and net.features._active
    set_lookup_density(net, 0.05)
    second = flops.profile(net, (1, 1, 28, 28))
    assert second.totals['macs'] < first.totals['macs']
    assert second.totals['dense_macs'] == first.totals['dense_macs']
    assert all(r['density'] == pytest.approx(0.05, abs=0.01) for r in second.rows
               if r['nnz'] is not None)
    net(x)  # still runs hybridized


def test_alexnet_lcnn_fast_conv_layers_at_published_densities():
    # The convolutional part only: fc6's 75 M-entry lookup makes a full forward slow here.
    net = gluon_lcnn.get_model('alexnet_lcnn_fast')
    net.initialize()
    features = net.features
    flops.profile(features, SHAPE)  # completes the deferred dictionary shapes
    published = set_lookup_density(features, PUBLISHED_DENSITIES['alexnet_lcnn_fast'][:5])
    result = flops.profile(features, SHAPE)
    for row, want in zip(result.rows, published.values()):
        assert row['density'] == pytest.approx(want)
    conv1, conv2 = result.rows[:2]
    assert conv1['macs'] == 3 * 3 * 224 * 224 + conv1['nnz'] * 55 * 55
    assert conv2['macs'] == 30 * 64 * 27 * 27 + conv2['nnz'] * 27 * 27
    t = result.totals
    # 656 M dense conv MACs -> about 16 M.
    assert 655e6 < t['dense_macs'] < 657e6
    assert 35 <= t['speedup'] <= 45, t


def test_cli_flops_json(tmp_path, capsys):
    from gluon_lcnn.__main__ import main
    out = tmp_path / 'r.json'
    assert main(['flops', '--model', 'lenet_lcnn_fast', '--input-shape', '1,1,28,28',
                 '--density', '0.1', '--json', str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'theoretical speedup' in printed
    data = json.loads(out.read_text())
    assert data['totals']['speedup'] > 1 and len(data['rows']) == 4
    assert main(['flops', '--model', 'lenet', '--density', 'published']) == 1
    assert 'no such densities' in capsys.readouterr().err


def test_float16_dense_block_counts_like_dense():
    # to_inference(weight_dtype='float16') leaves LcnnDense blocks: same MACs as nn.Dense.
    from gluon_lcnn.nn.sparse import LcnnDense
    w = np.random.RandomState(0).randn(10, 20).astype('float32')
    dense = mx.gluon.nn.Dense(10, in_units=20)
    dense.initialize()
    half = LcnnDense(w, np.zeros(10, 'float32'))
    for shape in ((3, 20), (3, 4, 5)):
        assert (flops.profile(half, shape).totals['macs']
                == flops.profile(dense, shape).totals['macs'] == 3 * 200)
