"""The C++ max-pool operator lcnn_max_pool (deploy's fast pool for plain-NCHW data).

Equality with MXNet's Pooling (max, 'valid' convention) over kernels, strides, pads, odd sizes
and batches, shape inference through symbols, validation messages for bad attributes and
inputs, and the refused backward. Budget: about 3 s on 2 cores.
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet.base import MXNetError

import gluon_lcnn  # noqa: F401  (loads the operator library)
from gluon_lcnn.nn.sparse import LcnnMaxPool


def reference(x, kernel, stride, pad):
    return mx.nd.Pooling(x, kernel=kernel, stride=stride, pad=pad, pool_type='max',
                         pooling_convention='valid').asnumpy()


# (data shape, kernel, stride, pad): AlexNet's/ResNet's 3x3/s2 pools, the specialised
# horizontal kernels (2/2, 3/1, 3/3) and the generic one, asymmetric and padded windows,
# single rows/columns, a kernel as large as the padded input, and a threaded size.
CASES = [
    ((1, 4, 55, 55), (3, 3), (2, 2), (0, 0)),
    ((2, 3, 13, 10), (3, 3), (2, 2), (1, 1)),
    ((3, 2, 8, 9), (2, 2), (2, 2), (0, 0)),
    ((2, 3, 7, 11), (3, 3), (1, 1), (1, 1)),
    ((1, 2, 9, 10), (3, 3), (3, 3), (2, 2)),
    ((2, 3, 13, 10), (2, 3), (2, 1), (1, 0)),
    ((2, 5, 11, 7), (5, 4), (3, 2), (2, 1)),
    ((1, 3, 1, 9), (1, 3), (1, 2), (0, 1)),
    ((2, 2, 4, 5), (6, 7), (1, 1), (1, 1)),
    ((1, 1, 6, 6), (1, 1), (1, 1), (0, 0)),
    ((4, 32, 27, 27), (3, 3), (2, 2), (0, 0)),
]


@pytest.mark.parametrize('shape,kernel,stride,pad', CASES)
def test_equals_mxnet_pooling(shape, kernel, stride, pad):
    x = mx.nd.array(np.random.RandomState(0).randn(*shape))
    got = mx.nd.lcnn_max_pool(x, kernel=kernel, stride=stride, pad=pad).asnumpy()
    np.testing.assert_array_equal(got, reference(x, kernel, stride, pad))


def test_all_negative_input_never_takes_the_padding():
    x = -1 - mx.nd.array(np.random.RandomState(1).rand(2, 3, 6, 7))
    got = mx.nd.lcnn_max_pool(x, kernel=(3, 3), stride=(2, 2), pad=(1, 1)).asnumpy()
    assert (got < -1).all()
    np.testing.assert_array_equal(got, reference(x, (3, 3), (2, 2), (1, 1)))


def test_defaults_and_symbol_shape_inference():
    x = mx.nd.array(np.random.RandomState(2).randn(2, 3, 6, 5))
    np.testing.assert_array_equal(mx.nd.lcnn_max_pool(x, kernel=2).asnumpy(),
                                  reference(x, (2, 2), (1, 1), (0, 0)))
    sym = mx.sym.lcnn_max_pool(mx.sym.var('data'), kernel=(3, 3), stride=(2, 2), pad=(1, 0))
    _, out_shapes, _ = sym.infer_shape(data=(2, 3, 13, 10))
    assert out_shapes == [(2, 3, 7, 4)]


def test_max_pool_block_hybridized():
    x = mx.nd.array(np.random.RandomState(3).randn(2, 3, 13, 10))
    block = LcnnMaxPool((3, 2), (1, 2), (1, 0))
    want = reference(x, (3, 2), (1, 2), (1, 0))
    np.testing.assert_array_equal(block(x).asnumpy(), want)
    block.hybridize()
    np.testing.assert_array_equal(block(x).asnumpy(), want)


@pytest.mark.parametrize('attrs,shape,message', [
    ({}, (1, 1, 5, 5), "missing required attribute 'kernel'"),
    ({'kernel': (0, 3)}, (1, 1, 5, 5), 'kernel.*out of range'),
    ({'kernel': 'x'}, (1, 1, 5, 5), 'kernel.*not an int'),
    ({'kernel': '3 3'}, (1, 1, 5, 5), "kernel='3 3' is not an int or a pair of ints: malformed"),
    ({'kernel': 2, 'pad': '(1,,1)'}, (1, 1, 5, 5), r"pad='\(1,,1\)' is not an int or a pair"),
    ({'kernel': 3, 'stride': (2, 0)}, (1, 1, 5, 5), 'stride.*out of range'),
    ({'kernel': 3, 'pad': -1}, (1, 1, 5, 5), 'pad.*out of range'),
    ({'kernel': 3, 'pad': (1, 3)}, (1, 1, 5, 5), r'pad=\(1, 3\) must be smaller than kernel'),
    ({'kernel': (3, 8)}, (1, 1, 5, 5), r'kernel=\(3, 8\) is larger than the padded input'),
    ({'kernel': 2}, (5, 5), r'data must be 4-D \(N, C, H, W\), got shape \(5, 5\)'),
])
def test_bad_attributes_and_shapes_raise(attrs, shape, message):
    x = mx.nd.zeros(shape)
    with pytest.raises(MXNetError, match=message):
        mx.nd.lcnn_max_pool(x, **attrs).wait_to_read()


def test_zero_width_with_padding_is_refused():
    # Every window would hold padding only and have no maximum (it used to give -inf); MXNet's
    # Pooling refuses this too. A zero height used to crash: tests/test_op_faults.py runs that
    # in a child process. Zero sizes need numpy shape semantics.
    with mx.util.np_shape(True):
        x = mx.nd.zeros((1, 2, 4, 0))
        with pytest.raises(MXNetError, match=r'data has zero width \(shape \(1, 2, 4, 0\)\)'):
            mx.nd.lcnn_max_pool(x, kernel=(2, 2), pad=(1, 1)).wait_to_read()


def test_non_float32_data_is_refused():
    x = mx.nd.zeros((1, 1, 5, 5), dtype='float64')
    with pytest.raises(MXNetError, match="input 'data' must be float32, got float64"):
        mx.nd.lcnn_max_pool(x, kernel=3).wait_to_read()


def test_backward_is_refused():
    x = mx.nd.ones((1, 2, 5, 5))
    x.attach_grad()
    with pytest.raises(MXNetError, match='inference only'):
        with mx.autograd.record():
            y = mx.nd.lcnn_max_pool(x, kernel=3)
        y.backward()
        x.grad.wait_to_read()
