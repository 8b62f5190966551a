"""The lookup kernel over flattened planes and the fused epilogue of lcnn_sparse_conv.

Every geometry is checked against MXNet's dense Convolution on the effective weight (then
Pooling, or + shortcut and ReLU): strides 1/2/4, padding, kernels 1/3/5/11, odd widths, d from
1 to 500, batch 1 and 3, with and without fused pool / residual / ReLU; plus the attribute and
shape validation of the fused forms. Budget: a few seconds.
"""
import mxnet as mx
import numpy as np
import pytest
from mxnet.base import MXNetError

import gluon_lcnn  # noqa: F401  (loads the operator library)
from gluon_lcnn.nn import SparseLookupConv2D


def random_lookup(shape, density, rng):
    p = rng.randn(*shape).astype(np.float32)
    return p * (rng.rand(*shape) < density)


def reference(x, lookup, dictionary, bias, stride, pad, relu, pool=None, shortcut=None):
    """conv (+ shortcut) (+ ReLU) (+ max pool) with MXNet's own dense operators."""
    m, d, kh, kw = lookup.shape
    weight = lookup if dictionary is None else np.einsum(
        'rqij,qc->rcij', lookup, dictionary.reshape(d, -1))
    out = mx.nd.Convolution(mx.nd.array(x), mx.nd.array(weight),
                            None if bias is None else mx.nd.array(bias), kernel=(kh, kw),
                            stride=stride, pad=pad, num_filter=m, no_bias=bias is None)
    if shortcut is not None:
        out = out + mx.nd.array(shortcut)
    if relu:
        out = mx.nd.relu(out)
    if pool is not None:
        out = mx.nd.Pooling(out, kernel=pool[0], stride=pool[1], pad=pool[2], pool_type='max',
                            pooling_convention='valid')
    return out.asnumpy()


CASES = [
    # batch, c, d, m, (H, W), kernel, stride, pad, density, relu, fusion
    (1, 5, 1, 7, (13, 13), (3, 3), (1, 1), (1, 1), 0.5, True, None),
    (3, 6, 30, 9, (13, 13), (3, 3), (1, 1), (1, 1), 0.1, True, 'residual'),
    (1, 8, 500, 6, (13, 13), (3, 3), (1, 1), (1, 1), 0.03, True, None),      # d = 500
    (1, 8, 500, 5, (7, 9), (3, 3), (1, 1), (1, 1), 0.03, False, 'residual'),
    (3, 4, 12, 8, (27, 27), (5, 5), (1, 1), (2, 2), 0.1, True, 'pool'),    # AlexNet conv2
    (1, 3, 3, 6, (51, 49), (11, 11), (4, 4), (2, 2), 0.1, True, 'pool'),   # AlexNet conv1
    (1, 6, 7, 10, (13, 13), (3, 3), (1, 1), (1, 1), 0.2, True, 'pool'),    # conv5 + pool
    (3, 5, 9, 8, (15, 17), (3, 3), (2, 2), (1, 1), 0.2, False, 'residual'),  # strided body
    (1, 6, 9, 8, (14, 14), (1, 1), (2, 2), (0, 0), 0.4, False, None),      # 1x1/s2 shortcut
    (1, 3, 4, 5, (23, 29), (7, 7), (2, 2), (3, 3), 0.2, True, 'pool_pad'),  # ResNet conv1
    (3, 4, 6, 7, (56, 57), (3, 3), (1, 1), (1, 1), 0.1, True, 'residual'),  # long runs, tiles
    (1, 4, 64, 6, (56, 56), (3, 3), (1, 1), (1, 1), 0.05, False, None),    # several row tiles
    (1, 3, 5, 4, (6, 6), (6, 6), (1, 1), (0, 0), 0.5, True, None),         # fc as 6x6 conv
    (3, 2, 3, 4, (1, 9), (1, 3), (1, 1), (0, 1), 0.6, False, 'residual'),  # one row
]
POOLS = {'pool': ((3, 3), (2, 2), (0, 0)), 'pool_pad': ((3, 3), (2, 2), (1, 1))}


@pytest.mark.parametrize('case', CASES)
def test_fused_conv_matches_dense_reference(case):
    n, c, d, m, (h, w), kernel, stride, pad, density, relu, fusion = case
    rng = np.random.RandomState(abs(hash(case)) % 2 ** 31)
    lookup = random_lookup((m, d) + kernel, density, rng)
    dictionary = rng.randn(d, c, 1, 1).astype(np.float32) / np.sqrt(c)
    bias = rng.randn(m).astype(np.float32)
    x = rng.randn(n, c, h, w).astype(np.float32)
    pool = POOLS.get(fusion)
    block = SparseLookupConv2D(lookup, bias=bias, dictionary=dictionary, strides=stride,
                               padding=pad, relu=relu, residual=fusion == 'residual', pool=pool)
    block.initialize()
    shortcut = None
    inputs = [mx.nd.array(x)]
    if fusion == 'residual':
        ho = (h + 2 * pad[0] - kernel[0]) // stride[0] + 1
        wo = (w + 2 * pad[1] - kernel[1]) // stride[1] + 1
        shortcut = rng.randn(n, m, ho, wo).astype(np.float32)
        inputs.append(mx.nd.array(shortcut))
    want = reference(x, lookup, dictionary, bias, stride, pad, relu, pool, shortcut)
    for hybrid in (False, True):
        block.hybridize(hybrid)
        got = block(*inputs).asnumpy()
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * (1 + np.abs(want).max()))


def test_identity_dictionary_with_residual_and_pool():
    rng = np.random.RandomState(3)
    lookup = random_lookup((6, 5, 3, 3), 0.3, rng)
    x = rng.randn(2, 5, 11, 10).astype(np.float32)
    shortcut = rng.randn(2, 6, 11, 10).astype(np.float32)
    res = SparseLookupConv2D(lookup, padding=1, relu=True, residual=True)
    res.initialize()
    np.testing.assert_allclose(
        res(mx.nd.array(x), mx.nd.array(shortcut)).asnumpy(),
        reference(x, lookup, None, None, (1, 1), (1, 1), True, shortcut=shortcut),
        rtol=1e-4, atol=1e-4)
    pool = ((2, 3), (2, 1), (1, 0))
    pooled = SparseLookupConv2D(lookup, padding=1, pool=pool)
    pooled.initialize()
    np.testing.assert_allclose(pooled(mx.nd.array(x)).asnumpy(),
                               reference(x, lookup, None, None, (1, 1), (1, 1), False, pool),
                               rtol=1e-4, atol=1e-4)


def op_inputs(residual_shape=(1, 4, 6, 6)):
    rng = np.random.RandomState(0)
    lookup = random_lookup((4, 3, 3, 3), 0.5, rng)
    block = SparseLookupConv2D(lookup, padding=1)
    block.initialize()
    consts = [getattr(block, n).data() for n in
              ('indptr', 'dict_index', 'kernel_offset', 'value')]
    return [mx.nd.array(rng.randn(1, 3, 6, 6))] + consts, mx.nd.zeros(residual_shape)


@pytest.mark.parametrize('attrs,residual_shape,message', [
    (dict(residual=True), (1, 4, 5, 6), 'residual'),
    (dict(residual=True), (1, 3, 6, 6), 'residual'),
    (dict(residual=True, pool_kernel=(2, 2)), None, 'cannot be fused together'),
    (dict(pool_kernel=(2, 0)), None, 'positive in both axes'),
    (dict(pool_kernel=(2, 2), pool_pad=(2, 0)), None, 'smaller than pool_kernel'),
    (dict(pool_stride=(2, 2)), None, 'without pool_kernel'),
    (dict(pool_kernel=(7, 7)), None, 'smaller than pool_kernel'),
    (dict(pool_kernel=(2, 2), pool_stride=(0, 1)), None, 'pool_stride'),
])
def test_fused_attributes_are_validated(attrs, residual_shape, message):
    args, residual = op_inputs(residual_shape or (1, 4, 6, 6))
    if attrs.get('residual'):
        args.append(residual)
    with pytest.raises(MXNetError, match=message):
        mx.nd.lcnn_sparse_conv(*args, num_filter=4, dictionary_size=3, kernel=(3, 3),
                               pad=(1, 1), no_bias=True, **attrs).wait_to_read()


def test_block_validates_fusion_arguments():
    lookup = np.ones((2, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match='pool must be'):
        SparseLookupConv2D(lookup, pool=((3, 3), (2, 2), (3, 0)))
    with pytest.raises(ValueError, match='pool must be'):
        SparseLookupConv2D(lookup, pool=(3, 2))
    with pytest.raises(ValueError, match='cannot be fused together'):
        SparseLookupConv2D(lookup, residual=True, pool=((3, 3), (2, 2), (0, 0)))
    block = SparseLookupConv2D(lookup, residual=True)
    block.initialize()
    with pytest.raises(ValueError, match='expected 2 input'):
        block(mx.nd.ones((1, 3, 5, 5)))


@pytest.mark.parametrize('hw,kernel,pad,fusion', [
    ((2, 2), (1, 1), (0, 0), None), ((3, 2), (3, 3), (1, 1), 'residual'),
    ((6, 6), (6, 6), (0, 0), None), ((5, 7), (3, 3), (1, 1), 'pool')])
def test_narrow_planes_write_nothing_past_the_output(hw, kernel, pad, fusion):
    # Rows narrower than a vector: the epilogue must stop at the plane's end, so the sample
    # after the output view (a sentinel) stays untouched.
    rng = np.random.RandomState(5)
    m, d, n = 3, 4, 2
    lookup = random_lookup((m, d) + kernel, 0.7, rng)
    block = SparseLookupConv2D(lookup, bias=rng.randn(m), padding=pad,
                               residual=fusion == 'residual',
                               pool=POOLS['pool'] if fusion == 'pool' else None)
    block.initialize()
    x = rng.randn(n, d, *hw).astype(np.float32)
    ho, wo = hw[0] + 2 * pad[0] - kernel[0] + 1, hw[1] + 2 * pad[1] - kernel[1] + 1
    inputs = [mx.nd.array(x)]
    shortcut = None
    if fusion == 'residual':
        shortcut = rng.randn(n, m, ho, wo).astype(np.float32)
        inputs.append(mx.nd.array(shortcut))
    want = reference(x, lookup, None, block.bias.data().asnumpy(), (1, 1), pad, False,
                     POOLS['pool'] if fusion == 'pool' else None, shortcut)
    consts = [getattr(block, k).data() for k in ('indptr', 'dict_index', 'kernel_offset',
                                                  'value', 'bias')]
    big = mx.nd.full((n + 1,) + want.shape[1:], 7.0)
    attrs = dict(residual=True) if fusion == 'residual' else {}
    if fusion == 'pool':
        attrs = dict(pool_kernel=(3, 3), pool_stride=(2, 2))
    mx.nd.lcnn_sparse_conv(*(inputs[:1] + consts + inputs[1:]), num_filter=m,
                           dictionary_size=d, kernel=kernel, pad=pad, out=big[:n], **attrs)
    got = big.asnumpy()
    np.testing.assert_allclose(got[:n], want, rtol=1e-4, atol=1e-4)
    assert (got[n] == 7.0).all()
