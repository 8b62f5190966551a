"""Fault handling of the C++ operators (lcnn_max_pool, lcnn_sparse_conv, lcnn_sparse_dense).

Empty dimensions (a 0 in any axis of any input) under numpy and under MXNet's default shape
semantics, each case in a child process so that a crash fails its case instead of pytest; out=
naming an input (or a view of one); NaN through the fused ReLU on every kernel path; attribute
strings parsed with MXNet's own grammar. Budget: about 8 s on 2 cores.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest
from mxnet.base import MXNetError

import gluon_lcnn  # noqa: F401  (loads the operator library)
from gluon_lcnn import ops

# --- empty dimensions ---------------------------------------------------------------------------

# Runs the cases it reads from stdin in order, one tagged JSON line before and one after each,
# so the parent knows which case a crash interrupted (MXNet prints to stdout too, untagged).
# Only the operator library is loaded, not gluon_lcnn.
CHILD = textwrap.dedent('''
    import json, sys
    import numpy as np
    import mxnet as mx
    from mxnet.base import MXNetError

    job = json.load(sys.stdin)
    mx.library.load(job['lib'], verbose=False)

    def f32(*shape, seed=0):
        return mx.nd.array(np.random.RandomState(seed).randn(*shape).astype(np.float32))

    def i32(a):
        return mx.nd.array(np.asarray(a, np.int32), dtype=np.int32)

    def packed(m, d, k):
        """indptr, dict_index, kernel_offset, value of a random lookup tensor (m, d, k)."""
        rng = np.random.RandomState(1)
        p = rng.randn(m, d, k) * (rng.rand(m, d, k) < 0.5)
        rows, q, off = np.nonzero(p)
        return (i32(np.searchsorted(rows, np.arange(m + 1))), i32(q), i32(off),
                mx.nd.array(p[rows, q, off].astype(np.float32)))

    def conv(data, dictionary=None, indptr=None, dict_index=None, kernel_offset=None,
             value=None, bias=None, **attrs):
        """lcnn_sparse_conv with m=4, d=3, kernel 3x3 and a bias; any input can be replaced."""
        ip, q, off, val = packed(4, 3, 9)
        args = [data] + ([] if dictionary is None else [dictionary])
        for given, default in ((indptr, ip), (dict_index, q), (kernel_offset, off),
                               (value, val), (bias, BIAS)):
            args.append(default if given is None else given)
        attrs = dict(dict(num_filter=4, dictionary_size=3, kernel=(3, 3), pad=(1, 1),
                          with_dictionary=dictionary is not None), **attrs)
        return mx.nd.lcnn_sparse_conv(*args, **attrs)

    def dense(data, indptr=None, dict_index=None, value=None, bias=None, **attrs):
        """lcnn_sparse_dense with 5 units, dictionary_size 6 and a bias."""
        ip, q, _, val = packed(5, 6, 1)
        args = [data] + [default if given is None else given for given, default in
                         ((indptr, ip), (dict_index, q), (value, val), (bias, f32(5)))]
        return mx.nd.lcnn_sparse_dense(*args, num_hidden=5, dictionary_size=6, **attrs)

    def pool_shapes(shape, **attrs):
        sym = mx.sym.lcnn_max_pool(mx.sym.var('d'), **attrs)
        return sym.infer_shape(d=shape)[1]

    BIAS = mx.nd.array([0.5, -1.0, 2.0, -0.25])
    TAG = '@case '
    for name, np_shape, expr in job['cases']:
        print(TAG + json.dumps({'start': name}), flush=True)
        mx.util.set_np_shape(np_shape)
        try:
            out = eval(expr)
            if isinstance(out, mx.nd.NDArray):
                a = out.asnumpy()
                res = {'shape': list(a.shape), 'values': a.ravel().tolist()}
            else:
                res = {'shape': [list(s) for s in out]}
        except MXNetError as err:
            res = {'error': str(err)}
        print(TAG + json.dumps(dict(res, case=name)), flush=True)
''')

BIAS = np.array([0.5, -1.0, 2.0, -0.25], np.float32)


def bias_planes(n, h, w, relu=False):
    """What lcnn_sparse_conv must give when every window reads zeros only: the bias."""
    b = np.maximum(BIAS, 0) if relu else BIAS
    return np.broadcast_to(b[None, :, None, None], (n, 4, h, w))


# name: (expression run in the child, what numpy shape semantics must give). An expected value
# is a shape tuple (empty result), an array (the result) or an error pattern. Under the default
# semantics MXNet passes a 0 as "unknown", so every case must raise naming that.
EMPTY_CASES = {
    # lcnn_max_pool: empty batch or channels give an empty result; a window over zero rows or
    # columns holds padding only and has no maximum (MXNet's Pooling refuses these too).
    'pool_batch0': ("mx.nd.lcnn_max_pool(f32(0, 2, 4, 4), kernel=2, pad=1)", (0, 2, 5, 5)),
    'pool_channels0': ("mx.nd.lcnn_max_pool(f32(1, 0, 4, 4), kernel=2, pad=1)", (1, 0, 5, 5)),
    'pool_height0_pad': ("mx.nd.lcnn_max_pool(f32(1, 2, 0, 4), kernel=2, pad=1)",
                         'data has zero height'),
    'pool_width0_pad': ("mx.nd.lcnn_max_pool(f32(1, 2, 4, 0), kernel=(1, 2), pad=(0, 1))",
                        'data has zero width'),
    'pool_height0': ("mx.nd.lcnn_max_pool(f32(1, 2, 0, 4), kernel=1)", 'data has zero height'),
    'pool_all0': ("mx.nd.lcnn_max_pool(f32(0, 0, 0, 0), kernel=1)", 'data has zero height'),
    'pool_symbol_height0': ("pool_shapes((1, 2, 0, 4), kernel=2, pad=1)",
                            'data has zero height'),
    'pool_symbol_batch0': ("pool_shapes((0, 2, 4, 4), kernel=2, pad=1)", [[0, 2, 5, 5]]),
    # lcnn_sparse_conv: zero-padded windows over zero rows or columns read zeros: the bias.
    'conv_batch0': ("conv(f32(0, 3, 6, 6))", (0, 4, 6, 6)),
    'conv_channels0': ("conv(f32(2, 0, 6, 6))", 'wrong data channels'),
    'conv_height0': ("conv(f32(2, 3, 0, 6), pad=(2, 2), relu=True)", bias_planes(2, 2, 8, True)),
    'conv_width0': ("conv(f32(2, 3, 6, 0), pad=(2, 2))", bias_planes(2, 8, 2)),
    'conv_height0_strided': ("conv(f32(2, 3, 0, 5), pad=(2, 2), stride=(2, 2))",
                             bias_planes(2, 1, 4)),
    'conv_width0_strided': ("conv(f32(1, 3, 5, 0), pad=(1, 3), stride=(1, 2))",
                            bias_planes(1, 5, 2)),
    'conv_height0_unpadded': ("conv(f32(2, 3, 0, 6))", 'smaller than the kernel'),
    'conv_dict_batch0': ("conv(f32(0, 5, 6, 6), f32(3, 5, 1, 1))", (0, 4, 6, 6)),
    'conv_dict_channels0': ("conv(f32(2, 0, 6, 6), f32(3, 0, 1, 1))", bias_planes(2, 6, 6)),
    'conv_dict_height0': ("conv(f32(2, 5, 0, 6), f32(3, 5, 1, 1), pad=(2, 2))",
                          bias_planes(2, 2, 8)),
    'conv_dict_rows0': ("conv(f32(2, 5, 6, 6), f32(0, 5, 1, 1))", 'dictionary must have shape'),
    'conv_nnz0': ("conv(f32(2, 3, 6, 6), dict_index=i32([]), kernel_offset=i32([]), "
                  "value=f32(0))", 'dict_index must be 1-D and non-empty'),
    'conv_dict_kernel0': ("conv(f32(2, 5, 6, 6), f32(3, 5, 0, 1))", 'dictionary must have shape'),
    'conv_offset0': ("conv(f32(2, 3, 6, 6), kernel_offset=i32([]))", 'must be 1-D and non-empty'),
    'conv_value0': ("conv(f32(2, 3, 6, 6), value=f32(0))", 'must be 1-D and non-empty'),
    'conv_indptr0': ("conv(f32(2, 3, 6, 6), indptr=i32([]))", 'indptr must have shape'),
    'conv_bias0': ("conv(f32(2, 3, 6, 6), bias=f32(0))", 'bias must have shape'),
    # lcnn_sparse_dense
    'dense_batch0': ("dense(f32(0, 6))", (0, 5)),
    'dense_features0': ("dense(f32(2, 0))", 'wrong data channels'),
    'dense_nnz0': ("dense(f32(2, 6), dict_index=i32([]), value=f32(0))",
                   'dict_index must be 1-D and non-empty'),
    'dense_value0': ("dense(f32(2, 6), value=f32(0))", 'value must be 1-D and non-empty'),
    'dense_indptr0': ("dense(f32(2, 6), indptr=i32([]))", 'indptr must have shape'),
    'dense_bias0': ("dense(f32(2, 6), bias=f32(0))", 'bias must have shape'),
}


def run_cases():
    """{(np_shape, case): result} from child processes, every case under numpy (True) and the
    default (False) shape semantics; a case that kills its child reports the crash and the next
    child carries on after it."""
    results = {}
    todo = [(np_shape, name) for np_shape in (True, False) for name in sorted(EMPTY_CASES)]
    env = dict(os.environ, OMP_NUM_THREADS='1')  # tiny cases: no thread pool to start
    while todo:
        job = dict(lib=os.environ.get('GLUON_LCNN_OPS_LIB') or ops.lib_path(),
                   cases=[('%d:%s' % key, key[0], EMPTY_CASES[key[1]][0]) for key in todo])
        proc = subprocess.run([sys.executable, '-c', CHILD], input=json.dumps(job), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=120)
        started = None
        for line in proc.stdout.splitlines():
            if not line.startswith('@case '):
                continue
            msg = json.loads(line[len('@case '):])
            if 'start' in msg:
                started = msg['start']
            else:
                results[msg['case']] = msg
        if proc.returncode != 0:
            if started is None or started in results:
                raise AssertionError('child failed outside a case:\n' + proc.stderr[-2000:])
            results[started] = {'crash': proc.returncode, 'stderr': proc.stderr[-1000:]}
        todo = [key for key in todo if '%d:%s' % key not in results]
        assert proc.returncode != 0 or not todo, 'child stopped early:\n' + proc.stderr[-2000:]
    return results


@pytest.fixture(scope='module')
def empty_results():
    """{np_shape: {case: result}} for numpy (True) and the default (False) shape semantics."""
    results = run_cases()
    return {np_shape: {name: results['%d:%s' % (np_shape, name)] for name in EMPTY_CASES}
            for np_shape in (True, False)}


@pytest.mark.parametrize('name', sorted(EMPTY_CASES))
def test_empty_dimensions_numpy_semantics(empty_results, name):
    got = empty_results[True][name]
    want = EMPTY_CASES[name][1]
    assert 'crash' not in got, 'crashed (%s): %s' % (got['crash'], got['stderr'])
    if isinstance(want, str):
        assert 'error' in got, 'expected an error matching %r, got %r' % (want, got)
        assert want in got['error'], got['error']
        return
    assert 'error' not in got, got['error']
    if isinstance(want, tuple):
        assert tuple(got['shape']) == want and got['values'] == []
    elif isinstance(want, list):
        assert got['shape'] == want
    else:
        np.testing.assert_array_equal(np.reshape(got['values'], got['shape']), want)


@pytest.mark.parametrize('name', sorted(EMPTY_CASES))
def test_empty_dimensions_default_semantics(empty_results, name):
    got = empty_results[False][name]
    assert 'crash' not in got, 'crashed (%s): %s' % (got['crash'], got['stderr'])
    assert 'error' in got, 'a 0 means "unknown" here, yet the op returned %r' % got
    assert 'unknown dimension' in got['error'] and 'set_np_shape' in got['error'], got['error']


# --- shared helpers for the in-process tests ----------------------------------------------------

def packed_args(lookup):
    """indptr, dict_index[, kernel_offset], value NDArrays of a dense lookup array."""
    from gluon_lcnn.nn import pack_lookup
    p = pack_lookup(lookup)
    arrays = [p.indptr, p.dict_index] + ([p.kernel_offset] if lookup.ndim == 4 else []) + [p.value]
    return [mx.nd.array(a, dtype=a.dtype) for a in arrays]


def random_lookup(shape, density, seed):
    rng = np.random.RandomState(seed)
    lookup = (rng.randn(*shape) * (rng.rand(*shape) < density)).astype(np.float32)
    lookup[0] = 0  # an output channel / unit with no non-zeros: the bias-only path
    return lookup


def with_nans(shape, seed, fraction=0.02):
    rng = np.random.RandomState(seed)
    x = rng.randn(*shape).astype(np.float32)
    x[rng.rand(*shape) < fraction] = np.nan
    return x


def relu_keeping_nan(x):
    """MXNet's relu (mx.nd.relu): x <= 0 -> 0, NaN stays NaN."""
    return np.where(x <= 0, np.float32(0), x)


# --- NaN through the fused ReLU -----------------------------------------------------------------

# Batches below 8 take the scalar gather path, from 8 on the transposed vector path (full
# 64-sample blocks and tails).
@pytest.mark.parametrize('batch', [1, 5, 7, 8, 9, 16, 70])
def test_dense_relu_keeps_nan_on_every_path(batch):
    lookup = random_lookup((6, 10), 0.5, batch)
    bias = np.random.RandomState(1).randn(6).astype(np.float32)
    bias[0] = np.nan  # the unit without non-zeros: NaN through the bias alone
    bias[1] = -1.0
    x = mx.nd.array(with_nans((batch, 10), batch, fraction=0.1))
    args = [x] + packed_args(lookup) + [mx.nd.array(bias)]
    attrs = dict(num_hidden=6, dictionary_size=10)
    raw = mx.nd.lcnn_sparse_dense(*args, **attrs).asnumpy()
    fused = mx.nd.lcnn_sparse_dense(*args, relu=True, **attrs).asnumpy()
    assert np.isnan(raw).any() and (raw < 0).any()
    np.testing.assert_array_equal(fused, relu_keeping_nan(raw))
    np.testing.assert_array_equal(fused, mx.nd.relu(mx.nd.array(raw)).asnumpy())


# Output widths hitting the multi-row blocks (narrow rows), 64-wide blocks with tails, the last
# row's buffered tail, a stride, and the fused dictionary.
@pytest.mark.parametrize('shape,stride,fuse', [
    ((2, 3, 9, 13), (1, 1), False),
    ((1, 3, 5, 70), (1, 1), False),
    ((1, 3, 6, 30), (2, 2), False),
    ((2, 4, 7, 11), (1, 1), True),
])
def test_conv_relu_keeps_nan_on_every_path(shape, stride, fuse):
    n, c, h, w = shape
    d = 3
    lookup = random_lookup((5, d, 3, 3), 0.4, h * w)
    bias = np.array([np.nan, -1.0, 0.5, -0.25, 2.0], np.float32)  # channel 0: no non-zeros
    x = with_nans(shape, h)
    args = [mx.nd.array(x)]
    if fuse:
        args.append(mx.nd.array(np.random.RandomState(2).randn(d, c, 1, 1)))
    args += packed_args(lookup) + [mx.nd.array(bias)]
    attrs = dict(num_filter=5, dictionary_size=d, kernel=(3, 3), stride=stride, pad=(1, 1),
                 with_dictionary=fuse)
    raw = mx.nd.lcnn_sparse_conv(*args, **attrs).asnumpy()
    fused = mx.nd.lcnn_sparse_conv(*args, relu=True, **attrs).asnumpy()
    assert np.isnan(raw[:, 1:]).any() and (raw < 0).any()
    np.testing.assert_array_equal(fused, relu_keeping_nan(raw))


# --- out= aliasing an input ---------------------------------------------------------------------

def dense_args(batch, seed=0):
    lookup = random_lookup((6, 6), 0.5, seed)
    return ([mx.nd.array(np.random.RandomState(seed).randn(batch, 6))] + packed_args(lookup)
            + [mx.nd.array(np.arange(6, dtype=np.float32))])


DENSE = dict(num_hidden=6, dictionary_size=6)


@pytest.mark.parametrize('batch', [2, 16])
def test_dense_out_aliasing_data_is_refused(batch):
    args = dense_args(batch)
    before = args[0].asnumpy()
    with pytest.raises(MXNetError, match="output shares memory with input 'data'"):
        mx.nd.lcnn_sparse_dense(*args, out=args[0], **DENSE).wait_to_read()
    np.testing.assert_array_equal(args[0].asnumpy(), before)  # refused before any write


def test_dense_out_overlapping_a_view_of_data_is_refused():
    big = mx.nd.array(np.random.RandomState(0).randn(5, 6))
    args = dense_args(4)
    args[0] = big[0:4]
    with pytest.raises(MXNetError, match="shares memory with input 'data'"):
        mx.nd.lcnn_sparse_dense(*args, out=big[1:5], **DENSE).wait_to_read()


def test_dense_out_aliasing_bias_is_refused():
    args = dense_args(1)
    with pytest.raises(MXNetError, match="shares memory with input 'bias'"):
        mx.nd.lcnn_sparse_dense(*args, out=args[-1].reshape((1, 6)), **DENSE).wait_to_read()


def test_separate_out_still_works():
    args = dense_args(3)
    want = mx.nd.lcnn_sparse_dense(*args, **DENSE).asnumpy()
    out = mx.nd.zeros((3, 6))
    mx.nd.lcnn_sparse_dense(*args, out=out, **DENSE)
    np.testing.assert_array_equal(out.asnumpy(), want)
    big = mx.nd.zeros((6, 6))  # data and out: adjacent views of one array, no overlap
    big[0:3] = args[0]
    args[0] = big[0:3]
    mx.nd.lcnn_sparse_dense(*args, out=big[3:6], **DENSE)
    np.testing.assert_array_equal(big[3:6].asnumpy(), want)


def test_conv_out_aliasing_data_or_dictionary_is_refused():
    lookup = random_lookup((3, 3, 3, 3), 0.5, 0)
    x = mx.nd.array(np.random.RandomState(0).randn(2, 3, 5, 5))
    args = [x] + packed_args(lookup)
    attrs = dict(num_filter=3, dictionary_size=3, kernel=(3, 3), pad=(1, 1), no_bias=True)
    with pytest.raises(MXNetError, match="shares memory with input 'data'"):
        mx.nd.lcnn_sparse_conv(*args, out=x, **attrs).wait_to_read()
    # Fused dictionary (3, 4, 1, 1) and output (3, 4, 1, 1): 3 samples, 4 filters, 1x1.
    dictionary = mx.nd.array(np.random.RandomState(1).randn(3, 4, 1, 1))
    args = ([mx.nd.array(np.ones((3, 4, 1, 1))), dictionary]
            + packed_args(random_lookup((4, 3, 1, 1), 0.9, 1)))
    with pytest.raises(MXNetError, match="shares memory with input 'dictionary'"):
        mx.nd.lcnn_sparse_conv(*args, out=dictionary, num_filter=4, dictionary_size=3,
                               kernel=1, no_bias=True, with_dictionary=True).wait_to_read()


def test_max_pool_out_aliasing_data_is_refused():
    x = mx.nd.array(np.random.RandomState(0).randn(1, 2, 6, 6))
    with pytest.raises(MXNetError, match="shares memory with input 'data'"):
        mx.nd.lcnn_max_pool(x, kernel=3, pad=1, out=x).wait_to_read()


# --- attribute strings --------------------------------------------------------------------------

# Accepted by MXNet's own tuple grammar (mismatched brackets included, as MXNet reads them) ...
GOOD_TUPLES = ['2', ' 2 ', '02', '(2, 2)', '(2,2)', '[2,2]', '[2, 2]', ' (2, 2) ', '(2L, 2L)',
               '(2 L, 2)', '(2, 2,)', '( 2 , 2 )', '(+2, 2)', '(02, 2)', '(2,\t2)', '(2, 2)\n',
               '[2,2)', '(2,)']
# ... and refused by it.
BAD_TUPLES = ['(1,,2)', '3 3', '2L', '((2,2))', '(2 2)', '(2,2', '2,2', '', '+2', '(2, 2) x',
              '0x2', '2.0', '(2.0, 2)', '(,2)', '(2,,)', 'L', '2 L', '(,)', '(2L , 2)', '(- 2, 2)',
              '2a', '(2, 2))']


def mxnet_parses_kernel(text):
    """Whether MXNet's Pooling accepts `text` as a kernel tuple (its shape checks aside)."""
    try:
        mx.nd.Pooling(mx.nd.zeros((1, 1, 6, 6)), kernel=text, pool_type='max').wait_to_read()
    except MXNetError as err:
        return 'Invalid Parameter format' not in str(err)
    return True


@pytest.mark.parametrize('text', GOOD_TUPLES + BAD_TUPLES)
def test_tuple_grammar_matches_mxnet(text):
    assert mxnet_parses_kernel(text) == (text in GOOD_TUPLES)
    x = mx.nd.zeros((1, 1, 6, 6))
    if text in GOOD_TUPLES:
        assert mx.nd.lcnn_max_pool(x, kernel=text).shape == (1, 1, 5, 5)
        assert mx.nd.lcnn_max_pool(x, kernel=3, stride=text).shape == (1, 1, 2, 2)
    else:
        pattern = "attribute kernel='%s' is not an int or a pair of ints: malformed"
        with pytest.raises(MXNetError, match=re.escape(pattern % text)):
            mx.nd.lcnn_max_pool(x, kernel=text).wait_to_read()


@pytest.mark.parametrize('text,message', [
    ('()', "kernel='()' is not an int or a pair of ints: it holds 0 values"),
    ('(1, 2, 3)', "kernel='(1, 2, 3)' is not an int or a pair of ints: it holds 3 values"),
])
def test_tuple_arity(text, message):
    with pytest.raises(MXNetError, match=re.escape(message)):
        mx.nd.lcnn_max_pool(mx.nd.zeros((1, 1, 6, 6)), kernel=text).wait_to_read()


@pytest.mark.parametrize('attr,text', [('pad', '(1,,1)'), ('stride', '[1 1]'),
                                       ('kernel', '3 3'), ('kernel', '((3,3))')])
def test_conv_tuple_attributes_are_strict(attr, text):
    x = mx.nd.zeros((1, 3, 6, 6))
    args = [x] + packed_args(random_lookup((4, 3, 3, 3), 0.5, 0))
    attrs = dict(num_filter=4, dictionary_size=3, kernel=(3, 3), no_bias=True)
    attrs[attr] = text
    with pytest.raises(MXNetError, match=re.escape("attribute %s='%s'" % (attr, text))):
        mx.nd.lcnn_sparse_conv(*args, **attrs).wait_to_read()


def mxnet_parses_int(text):
    try:
        mx.nd.FullyConnected(mx.nd.zeros((2, 6)), mx.nd.zeros((6, 6)), num_hidden=text,
                             no_bias=True).wait_to_read()
    except MXNetError as err:
        return 'Invalid Parameter format' not in str(err)
    return True


@pytest.mark.parametrize('text,good', [
    ('6', True), (' 6', True), ('6 ', True), ('+6', True), ('06', True), ('6\n', True),
    ('6L', False), ('(6)', False), ('[6]', False), ('6.0', False), ('6,', False),
    ('0x6', False), ('- 6', False), ('', False), ('(6,)', False)])
def test_int_grammar_matches_mxnet(text, good):
    assert mxnet_parses_int(text) == good
    args = dense_args(2)
    if good:
        assert mx.nd.lcnn_sparse_dense(*args, num_hidden=text, dictionary_size=6).shape == (2, 6)
    else:
        with pytest.raises(MXNetError, match=re.escape("num_hidden='%s' is not an integer" % text)):
            mx.nd.lcnn_sparse_dense(*args, num_hidden=text, dictionary_size=6).wait_to_read()


@pytest.mark.parametrize('text,value', [('True', True), ('TRUE', True), ('1', True),
                                        ('false', False), ('fAlse', False), ('0', False)])
def test_booleans_read_as_mxnet_reads_them(text, value):
    args = dense_args(4)
    raw = mx.nd.lcnn_sparse_dense(*args, **DENSE).asnumpy()
    assert (raw < 0).any()
    out = mx.nd.lcnn_sparse_dense(*args, relu=text, **DENSE).asnumpy()
    np.testing.assert_array_equal(out, relu_keeping_nan(raw) if value else raw)
