"""The C++ sparse-lookup operators and the inference blocks built on them.

Equivalence with MXNet's dense Convolution / FullyConnected on the effective weight, export and
re-import (SymbolBlock, Module), validation errors for malformed packed tensors and attributes,
and thread-count independence. Budget: about 30 s on 2 cores.
"""
import json
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest
from mxnet.base import MXNetError

import gluon_lcnn  # noqa: F401  (loads the operator library)
from gluon_lcnn.nn import SparseLookupConv2D, SparseLookupDense, pack_lookup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_lookup(shape, density, rng):
    p = rng.randn(*shape).astype(np.float32)
    return p * (rng.rand(*shape) < density)


def dense_conv_reference(x, lookup, dictionary, bias, stride, pad, relu):
    """What the sparse block must compute, with MXNet's own dense convolution."""
    m, d, kh, kw = lookup.shape
    weight = lookup if dictionary is None else np.einsum(
        'rqij,qc->rcij', lookup, dictionary.reshape(d, -1))
    out = mx.nd.Convolution(mx.nd.array(x), mx.nd.array(weight),
                            None if bias is None else mx.nd.array(bias), kernel=(kh, kw),
                            stride=stride, pad=pad, num_filter=m, no_bias=bias is None)
    return (mx.nd.relu(out) if relu else out).asnumpy()


CONV_CASES = [
    # batch, c, d, m, (H, W), kernel, stride, pad, density, relu, dictionary, bias
    (1, 6, 5, 8, (9, 11), (3, 3), (1, 1), (1, 1), 0.3, False, True, True),
    (3, 4, 5, 7, (9, 11), (3, 2), (2, 1), (1, 2), 0.3, True, True, True),
    (2, 3, 3, 6, (23, 21), (11, 11), (4, 4), (2, 2), 0.08, True, True, True),  # AlexNet conv1
    (2, 8, 8, 9, (13, 13), (5, 5), (1, 1), (2, 2), 1.0, False, False, True),   # identity, full
    (2, 5, 4, 6, (7, 8), (3, 3), (2, 2), (0, 0), 0.0, True, True, True),       # all zero
    (1, 6, 6, 5, (10, 10), (1, 3), (1, 3), (0, 1), 0.5, False, False, False),  # no bias
    (2, 4, 6, 10, (6, 6), (6, 6), (1, 1), (0, 0), 0.1, True, True, True),     # fc as 6x6 conv
    (1, 3, 4, 40, (40, 37), (3, 3), (1, 1), (1, 1), 0.05, False, True, True),  # long rows
    (1, 3, 4, 8, (9, 150), (2, 3), (3, 70), (3, 4), 0.5, True, True, True),    # odd strides
    (2, 3, 4, 5, (70, 140), (3, 3), (1, 1), (1, 1), 0.2, False, True, False),  # 64+ wide rows
    (1, 4, 64, 6, (27, 27), (3, 3), (1, 1), (1, 1), 0.05, True, True, True),   # row tiles
]


@pytest.mark.parametrize('fuse', [True, False])
@pytest.mark.parametrize('case', CONV_CASES)
def test_conv_matches_dense_convolution(case, fuse):
    n, c, d, m, (h, w), kernel, stride, pad, density, relu, use_dict, use_bias = case
    rng = np.random.RandomState(hash(case) % 2 ** 31)
    lookup = random_lookup((m, d) + kernel, density, rng)
    dictionary = rng.randn(d, c, 1, 1).astype(np.float32) if use_dict else None
    bias = rng.randn(m).astype(np.float32) if use_bias else None
    x = rng.randn(n, c if use_dict else d, h, w).astype(np.float32)
    block = SparseLookupConv2D(lookup, bias=bias, dictionary=dictionary, strides=stride,
                               padding=pad, relu=relu, fuse_dictionary=fuse)
    block.initialize()
    want = dense_conv_reference(x, lookup, dictionary, bias, stride, pad, relu)
    got = block(mx.nd.array(x)).asnumpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))
    assert block.nnz == int(np.count_nonzero(lookup))
    assert block.density == pytest.approx(np.count_nonzero(lookup) / lookup.size)
    assert (block.kernel_size, block.strides, block.padding) == (kernel, stride, pad)
    assert (block.channels, block.in_channels, block.dictionary_size) == (m, x.shape[1], d)
    np.testing.assert_array_equal(block.lookup_dense(), lookup)


@pytest.mark.parametrize('batch,flatten,density,use_dict,relu', [
    (1, True, 0.3, True, False),
    (3, False, 0.3, True, True),
    (20, True, 0.3, True, True),     # transposed, vectorised-over-batch path
    (70, True, 0.3, True, False),    # 64-sample register blocks plus a tail
    (13, True, 1.0, False, False),
    (4, True, 0.0, True, True),
])
def test_dense_matches_fully_connected(batch, flatten, density, use_dict, relu):
    rng = np.random.RandomState(batch)
    units, d, in_units = 9, 6, 12
    lookup = random_lookup((units, d), density, rng)
    dictionary = rng.randn(d, in_units).astype(np.float32) if use_dict else None
    bias = rng.randn(units).astype(np.float32)
    width = in_units if use_dict else d
    shape = (batch, 2, width) if not flatten else (batch, width)
    x = mx.nd.array(rng.randn(*shape))
    weight = lookup @ dictionary if use_dict else lookup
    want = mx.nd.FullyConnected(x, mx.nd.array(weight), mx.nd.array(bias), num_hidden=units,
                                flatten=flatten)
    want = (mx.nd.relu(want) if relu else want).asnumpy()
    block = SparseLookupDense(lookup, bias=bias, dictionary=dictionary, relu=relu,
                              flatten=flatten)
    block.initialize()
    got = block(x).asnumpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))
    block.hybridize()
    np.testing.assert_allclose(block(x).asnumpy(), got, rtol=1e-6, atol=1e-6)


def small_net(rng):
    net = mx.gluon.nn.HybridSequential(prefix='net_')
    with net.name_scope():
        net.add(SparseLookupConv2D(random_lookup((6, 4, 3, 3), 0.3, rng),
                                   bias=rng.randn(6).astype(np.float32),
                                   dictionary=rng.randn(4, 3, 1, 1).astype(np.float32),
                                   strides=2, padding=1, relu=True),
                SparseLookupDense(random_lookup((5, 7), 0.4, rng),
                                  bias=rng.randn(5).astype(np.float32),
                                  dictionary=rng.randn(7, 6 * 4 * 4).astype(np.float32)))
    net.initialize()
    return net


def test_hybridize_export_imports_and_module(tmp_path):
    rng = np.random.RandomState(0)
    net = small_net(rng)
    x = mx.nd.array(rng.randn(2, 3, 8, 8))
    want = net(x).asnumpy()
    net.hybridize()
    np.testing.assert_allclose(net(x).asnumpy(), want, rtol=1e-6, atol=1e-6)
    prefix = str(tmp_path / 'sparse')
    net.export(prefix)
    graph = json.load(open(prefix + '-symbol.json'))
    assert {'lcnn_sparse_conv', 'lcnn_sparse_dense'} <= {n['op'] for n in graph['nodes']}

    imported = mx.gluon.SymbolBlock.imports(prefix + '-symbol.json', ['data'],
                                            prefix + '-0000.params')
    np.testing.assert_array_equal(imported(x).asnumpy(), net(x).asnumpy())

    sym, args, aux = mx.model.load_checkpoint(prefix, 0)
    assert args['net_sparselookupconv2d0_indptr'].dtype == np.int32
    mod = mx.mod.Module(sym, data_names=['data'], label_names=None)
    mod.bind(data_shapes=[('data', x.shape)], for_training=False)
    mod.set_params(args, aux)
    mod.forward(mx.io.DataBatch([x]), is_train=False)
    np.testing.assert_allclose(mod.get_outputs()[0].asnumpy(), want, rtol=1e-5, atol=1e-5)


def test_backward_is_refused():
    rng = np.random.RandomState(1)
    block = SparseLookupConv2D(random_lookup((4, 3, 3, 3), 0.5, rng), padding=1)
    block.initialize()
    x = mx.nd.array(rng.randn(1, 3, 5, 5))
    x.attach_grad()
    with pytest.raises(MXNetError, match='inference only'):
        with mx.autograd.record():
            y = block(x)
        y.backward()
        x.grad.wait_to_read()


# --- validation ------------------------------------------------------------------------------

def conv_inputs(m=4, d=3, kernel=(3, 3), density=0.5, shape=(2, 3, 6, 6), seed=2):
    rng = np.random.RandomState(seed)
    packed = pack_lookup(random_lookup((m, d) + kernel, density, rng))
    arrays = dict(data=rng.randn(*shape).astype(np.float32), indptr=packed.indptr.copy(),
                  dict_index=packed.dict_index.copy(), kernel_offset=packed.kernel_offset.copy(),
                  value=packed.value.copy(), bias=np.zeros(m, np.float32))
    attrs = dict(num_filter=m, dictionary_size=d, kernel=kernel, pad=(1, 1))
    return arrays, attrs


def run_conv(arrays, attrs):
    names = ['data', 'indptr', 'dict_index', 'kernel_offset', 'value', 'bias']
    args = [mx.nd.array(arrays[k], dtype=arrays[k].dtype) for k in names if k in arrays]
    if 'bias' not in arrays:
        attrs = dict(attrs, no_bias=True)
    return mx.nd.lcnn_sparse_conv(*args, **attrs).asnumpy()


def test_valid_inputs_run():
    arrays, attrs = conv_inputs()
    assert run_conv(arrays, attrs).shape == (2, 4, 6, 6)


@pytest.mark.parametrize('mutate,message', [
    (lambda a, t: a['dict_index'].__setitem__(1, 3), 'bad dictionary index'),
    (lambda a, t: a['dict_index'].__setitem__(0, -1), 'bad dictionary index'),
    (lambda a, t: a['kernel_offset'].__setitem__(2, 9), 'bad kernel offset'),
    (lambda a, t: a['kernel_offset'].__setitem__(0, -5), 'bad kernel offset'),
    (lambda a, t: a['indptr'].__setitem__(2, a['indptr'][3] + 1), 'inconsistent indptr'),
    (lambda a, t: a['indptr'].__setitem__(0, 1), 'inconsistent indptr'),
    (lambda a, t: a['indptr'].__setitem__(-1, a['indptr'][-1] - 1), 'nnz mismatch'),
    (lambda a, t: a.update(value=a['value'][:-1]), 'nnz mismatch'),
    (lambda a, t: a.update(indptr=a['indptr'][:-1]), 'indptr must have shape'),
    (lambda a, t: a.update(data=a['data'][:, :2]), 'wrong data channels'),
    (lambda a, t: a.update(data=a['data'][0]), 'data must be 4-D'),
    (lambda a, t: a.update(bias=a['bias'][:-1]), 'bias must have shape'),
    (lambda a, t: a.update(indptr=a['indptr'].astype(np.float32)), "'indptr' must be int32"),
    (lambda a, t: (a.update(data=a['data'][:, :, :2]), t.update(pad=0)), 'smaller than the kernel'),
    (lambda a, t: t.pop('kernel'), "missing required attribute 'kernel'"),
    (lambda a, t: t.update(stride=(0, 1)), 'out of range'),
    (lambda a, t: t.update(kernel='(3, x)'), 'not an int or a pair'),
    (lambda a, t: t.update(pad='1 1'), "pad='1 1' is not an int or a pair of ints: malformed"),
    (lambda a, t: t.update(num_filter='4L'), "num_filter='4L' is not an integer"),
    (lambda a, t: t.update(relu='maybe'), 'not a boolean'),
    (lambda a, t: t.update(num_filter=5), 'indptr must have shape'),
])
def test_conv_rejects_malformed_inputs(mutate, message):
    arrays, attrs = conv_inputs()
    mutate(arrays, attrs)
    with pytest.raises(MXNetError, match=message):
        run_conv(arrays, attrs)


@pytest.mark.parametrize('mutate,message', [
    (lambda a: a['dict_index'].__setitem__(0, 6), 'bad dictionary index'),
    (lambda a: a['indptr'].__setitem__(1, -1), 'inconsistent indptr'),
    (lambda a: a.update(value=np.zeros(a['value'].size + 1, np.float32)), 'nnz mismatch'),
    (lambda a: a.update(data=np.zeros((2, 5), np.float32)), 'wrong data channels'),
])
def test_dense_rejects_malformed_inputs(mutate, message):
    rng = np.random.RandomState(3)
    packed = pack_lookup(random_lookup((5, 6), 0.5, rng))
    arrays = dict(data=rng.randn(2, 6).astype(np.float32), indptr=packed.indptr.copy(),
                  dict_index=packed.dict_index.copy(), value=packed.value.copy())
    mutate(arrays)
    args = [mx.nd.array(arrays[k], dtype=arrays[k].dtype)
            for k in ('data', 'indptr', 'dict_index', 'value')]
    with pytest.raises(MXNetError, match=message):
        mx.nd.lcnn_sparse_dense(*args, num_hidden=5, dictionary_size=6, no_bias=True).asnumpy()


def test_python_side_validation():
    with pytest.raises(ValueError, match='NaN'):
        pack_lookup(np.full((2, 2), np.nan))
    with pytest.raises(ValueError, match='shape'):
        pack_lookup(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match='dictionary must have shape'):
        SparseLookupConv2D(np.ones((2, 3, 3, 3)), dictionary=np.ones((4, 5, 1, 1)))
    with pytest.raises(ValueError, match='bias must have shape'):
        SparseLookupDense(np.ones((2, 3)), bias=np.ones(3))
    empty = pack_lookup(np.zeros((3, 2, 1, 1)))
    assert empty.nnz == 0 and empty.value.shape == (1,) and empty.indptr.tolist() == [0] * 4


THREAD_SCRIPT = textwrap.dedent('''
    import sys
    import numpy as np, mxnet as mx
    import gluon_lcnn
    from gluon_lcnn.nn import SparseLookupConv2D, SparseLookupDense
    rng = np.random.RandomState(7)
    conv = SparseLookupConv2D(rng.randn(16, 6, 3, 3) * (rng.rand(16, 6, 3, 3) < .3),
                              bias=rng.randn(16), dictionary=rng.randn(6, 5), strides=2,
                              padding=1, relu=True)
    dense = SparseLookupDense(rng.randn(32, 10) * (rng.rand(32, 10) < .3), bias=rng.randn(32))
    tiled = SparseLookupConv2D(rng.randn(8, 64, 3, 3) * (rng.rand(8, 64, 3, 3) < .1),
                               padding=1)
    conv.initialize(); dense.initialize(); tiled.initialize()
    a = conv(mx.nd.array(rng.randn(3, 5, 40, 37))).asnumpy()
    b = dense(mx.nd.array(rng.randn(19, 10))).asnumpy()
    c = tiled(mx.nd.array(rng.randn(2, 64, 40, 30))).asnumpy()
    np.savez(sys.argv[1], a=a, b=b, c=c)
''')


def test_results_do_not_depend_on_thread_count(tmp_path):
    outs = []
    for threads in (1, 2):
        path = str(tmp_path / ('t%d.npz' % threads))
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=REPO)
        subprocess.run([sys.executable, '-c', THREAD_SCRIPT, path], check=True, env=env,
                       cwd=REPO, timeout=120)
        outs.append(np.load(path))
    for key in ('a', 'b', 'c'):
        np.testing.assert_array_equal(outs[0][key], outs[1][key])


@pytest.mark.parametrize('dict_shape,data_channels,message', [
    ((4, 5, 1, 1), 5, 'dictionary must have shape'),   # 4 rows, dictionary_size=3
    ((3, 5, 2, 1), 5, 'dictionary must have shape'),
    ((3, 5, 1, 1), 6, 'wrong data channels'),
])
def test_fused_dictionary_rejects_mismatches(dict_shape, data_channels, message):
    arrays, attrs = conv_inputs()
    args = [mx.nd.array(np.ones((1, data_channels, 6, 6))), mx.nd.ones(dict_shape)]
    args += [mx.nd.array(arrays[k], dtype=arrays[k].dtype)
             for k in ('indptr', 'dict_index', 'kernel_offset', 'value')]
    with pytest.raises(MXNetError, match=message):
        mx.nd.lcnn_sparse_conv(*args, with_dictionary=True, no_bias=True, **attrs).asnumpy()


def test_build_reports_missing_compiler(monkeypatch):
    from gluon_lcnn.ops import build
    monkeypatch.setenv('CXX', 'no-such-compiler-xyz')
    with pytest.raises(build.BuildError, match='no C.. compiler found'):
        build.find_compiler()
    monkeypatch.delenv('CXX')
    assert build.is_current()  # the library in use was built from the present sources
