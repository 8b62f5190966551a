"""Inference blocks that run an LCNN layer through the C++ sparse-lookup operator.

A trained lookup layer is y = P * (D x) + b with a sparse P. These blocks take the (already
thresholded) lookup tensor, pack it once into compressed rows (``pack_lookup``) held as constant
parameters, and compute

    S = D x            (1x1 conv / F.FullyConnected, dense, skipped if D is None)
    y = lookup(S) + b  (F.lcnn_sparse_conv / F.lcnn_sparse_dense, optional fused ReLU)

For convolutions the operator computes S itself by default (``fuse_dictionary=True``: one op
call and no MKLDNN 1x1 convolution, which at batch 1 costs more in fixed overhead than the
small dictionary product does); ``fuse_dictionary=False`` uses ``F.Convolution`` for S.

Everything lives in constants (grad_req 'null'), so ``hybridize()``, ``export()``,
``SymbolBlock.imports`` and the Module API work after ``import gluon_lcnn``. Inference only:
the operators have no backward. With ``dictionary=None`` the input is S itself, which runs
magnitude-pruned sparse CNNs (D = identity) through the same operator.

The other inference blocks ``deploy.to_inference`` may leave in a graph live here too:
``CoveringConv`` (a conv whose kernel covers its input, run as a fully connected layer) and
``LcnnMaxPool`` (max pooling by the C++ op ``lcnn_max_pool``).

Half-precision weights (``to_inference(..., weight_dtype='float16')``): ``SparseLookupDense``
and ``SparseCoveringConv`` with ``weight_dtype='float16'`` store the dictionary as float16 and
compute S = D x inside ``lcnn_sparse_dense``; ``LcnnDense`` is a dense layer with a float16
weight (``lcnn_dense``). Inputs, outputs, bias and P stay float32 and the products accumulate
in float32; only the stored weights are rounded (relative error <= 2^-11 per weight).

``gluon_lcnn.flops`` counts the sparse blocks from what they expose (``nnz``, ``dictionary_size``,
``has_dictionary``, ``kernel_size``, ``flatten``) with ``flops.lookup_macs``, the formula it uses
for the training layers too.
"""
from collections import namedtuple

import mxnet as mx
import numpy as np
from mxnet.gluon import HybridBlock

from .. import ops  # noqa: F401  (importing it loads the operator library)
from .lookup import _pair

__all__ = ['pack_lookup', 'PackedLookup', 'SparseLookupConv2D', 'SparseLookupDense',
           'CoveringConv', 'SparseCoveringConv', 'LcnnDense', 'LcnnMaxPool',
           'initialize_constants', 'WEIGHT_DTYPES']

WEIGHT_DTYPES = ('float32', 'float16')

PackedLookup = namedtuple('PackedLookup', ['indptr', 'dict_index', 'kernel_offset', 'value',
                                           'shape', 'nnz'])
PackedLookup.__doc__ = """A lookup tensor P (m, d[, kh, kw]) as compressed rows per output unit.

indptr : int32 (m + 1,)      non-zeros of row r are entries indptr[r] .. indptr[r+1]-1
dict_index : int32 (L,)      dictionary index q of each entry
kernel_offset : int32 (L,)   i * kw + j of each entry (all 0 for a 2-D P)
value : float32 (L,)         P[r, q, i, j]
shape : tuple                shape of P
nnz : int                    number of non-zeros; L = max(nnz, 1) because MXNet 1.x reads a 0
                             in a shape as "unknown", so an all-zero P keeps one unused entry.
"""


def _to_numpy(value, name):
    if value is None:
        return None
    if isinstance(value, mx.nd.NDArray):
        value = value.asnumpy()
    value = np.asarray(value)
    if value.dtype.kind not in 'fiu':
        raise ValueError('%s must be a numeric array, got dtype %s' % (name, value.dtype))
    if not np.all(np.isfinite(value)):
        raise ValueError('%s contains NaN or infinite values' % name)
    return value.astype(np.float32)


def _check_weight_dtype(weight_dtype, owner):
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError('%s: weight_dtype must be one of %s, got %r'
                         % (owner, WEIGHT_DTYPES, weight_dtype))
    return weight_dtype


def _stored(weight, weight_dtype, owner, name):
    """``weight`` (float32 numpy) as the stored type; float16 must hold every value."""
    if weight_dtype == 'float32':
        return weight
    largest = float(np.abs(weight).max()) if weight.size else 0.0
    if largest > np.finfo(np.float16).max:
        raise ValueError('%s: %s has a value of magnitude %g, beyond float16 (max %g); use '
                         "weight_dtype='float32'" % (owner, name, largest,
                                                     np.finfo(np.float16).max))
    return weight.astype(np.float16)


def pack_lookup(lookup):
    """Pack a thresholded lookup tensor (zeros = absent entries) for the sparse operators.

    Parameters
    ----------
    lookup : numpy.ndarray or NDArray
        (m, d, kh, kw) for a convolution or (units, d) for a dense layer.

    Returns
    -------
    PackedLookup
        Entries of each row in (q, i, j) order, which is also the order the operator reads
        its input planes in.
    """
    p = _to_numpy(lookup, 'lookup')
    if p.ndim not in (2, 4) or min(p.shape) < 1:
        raise ValueError('lookup must have shape (m, d, kh, kw) or (units, d) with every size '
                         '>= 1, got %s' % (p.shape,))
    m, d = p.shape[:2]
    k = int(np.prod(p.shape[2:], dtype=np.int64))
    if m >= 2 ** 31 - 1 or p.size // m >= 2 ** 31:
        raise ValueError('lookup of shape %s is too large for int32 indices' % (p.shape,))
    flat = p.reshape(m, d * k)
    rows, cols = np.nonzero(flat)  # row-major: sorted by row, then (q, i, j)
    nnz = int(rows.size)
    if nnz >= 2 ** 31:
        raise ValueError('lookup has %d non-zeros, more than int32 indices allow' % nnz)
    indptr = np.zeros(m + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows, minlength=m), out=indptr[1:])
    dict_index = (cols // k).astype(np.int32)
    kernel_offset = (cols % k).astype(np.int32)
    value = flat[rows, cols].astype(np.float32)
    if nnz == 0:
        dict_index = np.zeros(1, np.int32)
        kernel_offset = np.zeros(1, np.int32)
        value = np.zeros(1, np.float32)
    return PackedLookup(indptr, dict_index, kernel_offset, value, tuple(p.shape), nnz)


class _SparseLookupBase(HybridBlock):
    """Constants shared by both blocks: packed P, optional dictionary and bias."""

    def _init_constants(self, packed, dictionary, bias, out_features):
        self._packed_shape = packed.shape
        self._nnz = packed.nnz
        if bias is not None:
            bias = _to_numpy(bias, 'bias')
            if bias.shape != (out_features,):
                raise ValueError('%s: bias must have shape (%d,), got %s'
                                 % (type(self).__name__, out_features, bias.shape))
        def const(name, arr):
            # An explicit dtype keeps the int32 indices (nd.array alone would cast to float32).
            return self.params.get_constant(name, mx.nd.array(arr, dtype=arr.dtype))
        with self.name_scope():
            self.indptr = const('indptr', packed.indptr)
            self.dict_index = const('dict_index', packed.dict_index)
            if packed.kernel_offset is not None:
                self.kernel_offset = const('kernel_offset', packed.kernel_offset)
            self.value = const('value', packed.value)
            self.dictionary = (const('dictionary', dictionary)
                               if dictionary is not None else None)
            self.bias = const('bias', bias) if bias is not None else None

    @property
    def nnz(self):
        """Number of non-zero lookup entries."""
        return self._nnz

    @property
    def density(self):
        """Fraction of non-zero lookup entries."""
        return self._nnz / float(np.prod(self._packed_shape))

    @property
    def dictionary_size(self):
        return self._packed_shape[1]

    @property
    def has_dictionary(self):
        """False when the input is S itself (identity dictionary)."""
        return self.dictionary is not None

    def lookup_dense(self):
        """The lookup tensor P as a dense numpy array (unpacked from the constants)."""
        p = np.zeros((self._packed_shape[0], int(np.prod(self._packed_shape[1:]))), np.float32)
        indptr = self.indptr.data().asnumpy()
        rows = np.repeat(np.arange(p.shape[0]), np.diff(indptr))
        k = int(np.prod(self._packed_shape[2:]))
        cols = self.dict_index.data().asnumpy()[:self._nnz].astype(np.int64) * k
        if k > 1:
            cols += self.kernel_offset.data().asnumpy()[:self._nnz]
        p[rows, cols] = self.value.data().asnumpy()[:self._nnz]
        return p.reshape(self._packed_shape)


class SparseLookupConv2D(_SparseLookupBase):
    """Inference-only LCNN convolution: 1x1 dictionary conv, then the sparse lookup operator.

    Parameters
    ----------
    lookup : numpy.ndarray or NDArray
        (m, d, kh, kw), zeros for absent entries (already thresholded).
    bias : array (m,) or None
    dictionary : array (d, c, 1, 1) or (d, c), or None
        None means identity: the input already is S (N, d, H, W), e.g. a magnitude-pruned
        sparse CNN whose weight is passed as ``lookup``.
    strides, padding : int or (int, int)
    relu : bool
        Fuse a ReLU after the bias.
    prefix : str or None
    fuse_dictionary : bool, default True
        Compute S = D x inside the sparse operator instead of a separate 1x1 F.Convolution.
    residual : bool, default False
        The block takes a second input of the conv output's shape, added before the ReLU:
        ``block(x, shortcut) = relu(conv(x) + bias + shortcut)`` (a ResNet block's tail).
    pool : ((kh, kw), (sh, sw), (ph, pw)) or None
        Max pool the (activated) conv output inside the op, as ``LcnnMaxPool`` with these
        sizes would; the block then returns the pooled map. Not together with ``residual``.
    """

    def __init__(self, lookup, bias=None, dictionary=None, strides=1, padding=0, relu=False,
                 prefix=None, params=None, fuse_dictionary=True, residual=False, pool=None):
        super().__init__(prefix=prefix, params=params)
        self._residual = bool(residual)
        self._pool = None
        if pool is not None:
            try:
                self._pool = tuple(_pair(v, 'pool') for v in pool)
            except (TypeError, ValueError):
                self._pool = ()
            if (len(self._pool) != 3 or min(self._pool[0]) < 1 or min(self._pool[1]) < 1
                    or min(self._pool[2]) < 0
                    or any(p >= k for p, k in zip(self._pool[2], self._pool[0]))):
                raise ValueError('SparseLookupConv2D: pool must be (kernel, stride, pad) with '
                                 'kernel, stride >= 1 and 0 <= pad < kernel, got %r' % (pool,))
            if self._residual:
                raise ValueError('SparseLookupConv2D: pool and residual cannot be fused '
                                 'together')
        packed = pack_lookup(lookup)
        if len(packed.shape) != 4:
            raise ValueError('SparseLookupConv2D: lookup must be 4-D (m, d, kh, kw), got %s'
                             % (packed.shape,))
        m, d, kh, kw = packed.shape
        self._strides = _pair(strides, 'strides')
        self._padding = _pair(padding, 'padding')
        if min(self._strides) < 1 or min(self._padding) < 0:
            raise ValueError('SparseLookupConv2D: strides must be >= 1 and padding >= 0, got '
                             '%r, %r' % (strides, padding))
        self._kernel = (kh, kw)
        self._relu = bool(relu)
        self._fuse = bool(fuse_dictionary)
        if dictionary is not None:
            dictionary = _to_numpy(dictionary, 'dictionary')
            if dictionary.ndim == 2:
                dictionary = dictionary.reshape(dictionary.shape + (1, 1))
            if dictionary.ndim != 4 or dictionary.shape[0] != d or dictionary.shape[2:] != (1, 1):
                raise ValueError('SparseLookupConv2D: dictionary must have shape (%d, c, 1, 1) '
                                 'for a lookup with d=%d, got %s' % (d, d, dictionary.shape))
        self._in_channels = dictionary.shape[1] if dictionary is not None else d
        self._init_constants(packed, dictionary, bias, m)

    kernel_size = property(lambda self: self._kernel)
    strides = property(lambda self: self._strides)
    padding = property(lambda self: self._padding)
    channels = property(lambda self: self._packed_shape[0])
    in_channels = property(lambda self: self._in_channels)
    relu = property(lambda self: self._relu)
    residual = property(lambda self: self._residual)
    pool = property(lambda self: self._pool)

    def hybrid_forward(self, F, x, *shortcut, indptr, dict_index, kernel_offset, value,
                       dictionary=None, bias=None):
        if len(shortcut) != (1 if self._residual else 0):
            raise ValueError('%s: expected %d input(s) (data%s), got %d'
                             % (type(self).__name__, 1 + self._residual,
                                ', shortcut' if self._residual else '', 1 + len(shortcut)))
        d = self.dictionary_size
        fused = dictionary is not None and self._fuse
        if dictionary is None or fused:
            head = [x, dictionary] if fused else [x]
        else:
            head = [F.Convolution(x, dictionary, kernel=(1, 1), num_filter=d, no_bias=True,
                                  name='dict')]
        args = head + [indptr, dict_index, kernel_offset, value] + (
            [bias] if bias is not None else []) + list(shortcut)
        fusion = {}
        if self._residual:
            fusion['residual'] = True
        if self._pool is not None:
            fusion.update(pool_kernel=self._pool[0], pool_stride=self._pool[1],
                          pool_pad=self._pool[2])
        return F.lcnn_sparse_conv(*args, num_filter=self.channels, dictionary_size=d,
                                  kernel=self._kernel, stride=self._strides, pad=self._padding,
                                  relu=self._relu, no_bias=bias is None, with_dictionary=fused,
                                  name='lookup', **fusion)

    def __repr__(self):
        return ('{name}({cin} -> {m}, kernel_size={k}, stride={s}, padding={p}, '
                'dictionary_size={d}{dict}, density={dens:.4f}{relu})').format(
                    name=type(self).__name__, cin=self._in_channels, m=self.channels,
                    k=self._kernel, s=self._strides, p=self._padding, d=self.dictionary_size,
                    dict='' if self.has_dictionary else ' (identity)', dens=self.density,
                    relu=(', relu' if self._relu else '')
                    + (', residual' if self._residual else '')
                    + (', pool=%s' % (self._pool,) if self._pool else ''))


class SparseLookupDense(_SparseLookupBase):
    """Inference-only LCNN fully connected layer: dense dictionary, then the sparse lookup.

    Parameters
    ----------
    lookup : numpy.ndarray or NDArray
        (units, d), zeros for absent entries.
    bias : array (units,) or None
    dictionary : array (d, in_units) or None (identity: the input is S with d features)
    relu : bool
        Fuse a ReLU after the bias.
    flatten : bool
        Like ``gluon.nn.Dense``: True flattens all but the first axis, False maps the last axis.
    prefix : str or None
    weight_dtype : {'float32', 'float16'}
        'float32' (default): S = D x by F.FullyConnected, then the sparse op. 'float16': the
        dictionary is stored as float16 (half the bytes: at batch 1 the layer is bound by
        streaming D) and the sparse op computes S itself, in float32 arithmetic. Each stored
        weight is rounded to 11 significant bits (relative error <= 2^-11); on LeNet-LCNN
        trained 300 steps on Fashion-MNIST that moved the logits by at most 1.4e-3 (they span
        ~28) and kept all 2000 top-1 predictions tested (tests/test_fp16_weights.py).
    """

    def __init__(self, lookup, bias=None, dictionary=None, relu=False, flatten=True,
                 prefix=None, params=None, weight_dtype='float32'):
        super().__init__(prefix=prefix, params=params)
        self._weight_dtype = _check_weight_dtype(weight_dtype, 'SparseLookupDense')
        packed = pack_lookup(lookup)
        if len(packed.shape) != 2:
            raise ValueError('SparseLookupDense: lookup must be 2-D (units, d), got %s'
                             % (packed.shape,))
        units, d = packed.shape
        if dictionary is not None:
            dictionary = _to_numpy(dictionary, 'dictionary')
            if dictionary.ndim != 2 or dictionary.shape[0] != d:
                raise ValueError('SparseLookupDense: dictionary must have shape (%d, in_units) '
                                 'for a lookup with d=%d, got %s' % (d, d, dictionary.shape))
        self._in_units = dictionary.shape[1] if dictionary is not None else d
        self._relu = bool(relu)
        self._flatten = bool(flatten)
        if dictionary is not None:
            dictionary = _stored(dictionary, weight_dtype, 'SparseLookupDense', 'dictionary')
        elif weight_dtype != 'float32':
            raise ValueError("SparseLookupDense: weight_dtype=%r stores the dictionary; this "
                             "layer has none (identity)" % (weight_dtype,))
        self._init_constants(packed._replace(kernel_offset=None), dictionary, bias, units)

    units = property(lambda self: self._packed_shape[0])
    in_units = property(lambda self: self._in_units)
    relu = property(lambda self: self._relu)
    flatten = property(lambda self: self._flatten)
    weight_dtype = property(lambda self: self._weight_dtype)

    def hybrid_forward(self, F, x, indptr, dict_index, value, dictionary=None, bias=None):
        d = self.dictionary_size
        fused = dictionary is not None and self._weight_dtype != 'float32'
        if fused:
            s = F.flatten(x) if self._flatten else x
            head = [s if self._flatten else F.reshape(s, shape=(-1, self._in_units)),
                    dictionary]
        else:
            if dictionary is not None:
                s = F.FullyConnected(x, dictionary, num_hidden=d, no_bias=True,
                                     flatten=self._flatten, name='dict')
            else:
                s = F.flatten(x) if self._flatten else x
            head = [s if self._flatten else F.reshape(s, shape=(-1, d))]
        args = head + [indptr, dict_index, value] + ([bias] if bias is not None else [])
        extra = dict(with_dictionary=True, weight_dtype=self._weight_dtype) if fused else {}
        out = F.lcnn_sparse_dense(*args, num_hidden=self.units, dictionary_size=d,
                                  relu=self._relu, no_bias=bias is None, name='lookup', **extra)
        if not self._flatten:
            out = F.reshape_like(out, s, lhs_begin=0, lhs_end=1, rhs_begin=0, rhs_end=-1)
        return out

    def __repr__(self):
        return ('{name}({cin} -> {u}, dictionary_size={d}{dict}, density={dens:.4f}{relu}{dt})'
                ).format(name=type(self).__name__, cin=self._in_units, u=self.units,
                         d=self.dictionary_size,
                         dict='' if self.has_dictionary else ' (identity)', dens=self.density,
                         relu=', relu' if self._relu else '',
                         dt='' if self._weight_dtype == 'float32' else ', ' + self._weight_dtype)


class CoveringConv(HybridBlock):
    """A convolution whose kernel covers its whole unpadded input, run as a fully connected
    layer: optional 1x1 ``dictionary`` conv, then ``fc`` on the flattened map, reshaped back to
    (N, m, 1, 1). AlexNet's fc6 (6x6 kernel on a 6x6 map) is one; the sparse conv op is a poor
    fit there (one output pixel per row), the sparse dense op is not.
    """

    def __init__(self, dictionary, fc, prefix=None):
        super().__init__(prefix=prefix)
        with self.name_scope():
            self.dictionary = dictionary
            self.fc = fc

    def hybrid_forward(self, F, x):
        if self.dictionary is not None:
            x = self.dictionary(x)
        return F.reshape(self.fc(x), shape=(0, 0, 1, 1))


class SparseCoveringConv(_SparseLookupBase):
    """A lookup conv whose kernel covers its whole unpadded input (AlexNet's fc6), in one call
    of ``lcnn_sparse_dense``: x (N, c, kh, kw) -> (N, m, 1, 1), S = D x computed by the op on
    every one of the kh * kw pixels (``pixels``), then P over S's (q, i, j) columns. Same
    numbers as ``CoveringConv`` of a 1x1 dictionary conv and a ``SparseLookupDense``, one op
    call instead of three.

    Parameters
    ----------
    lookup : array (m, d, kh, kw), zeros for absent entries.
    bias : array (m,) or None
    dictionary : array (d, c) or (d, c, 1, 1)
    relu : bool
    weight_dtype : {'float32', 'float16'}
        How the dictionary is stored (see ``SparseLookupDense``).
    """

    def __init__(self, lookup, bias=None, dictionary=None, relu=False, prefix=None,
                 params=None, weight_dtype='float32'):
        super().__init__(prefix=prefix, params=params)
        self._weight_dtype = _check_weight_dtype(weight_dtype, 'SparseCoveringConv')
        p = _to_numpy(lookup, 'lookup')
        if p.ndim != 4:
            raise ValueError('SparseCoveringConv: lookup must be 4-D (m, d, kh, kw), got %s'
                             % (p.shape,))
        m, d, kh, kw = p.shape
        if dictionary is None:
            raise ValueError('SparseCoveringConv: needs a dictionary (d, c)')
        dictionary = _to_numpy(dictionary, 'dictionary')
        dictionary = dictionary.reshape(dictionary.shape[:2]) if (
            dictionary.ndim == 4 and dictionary.shape[2:] == (1, 1)) else dictionary
        if dictionary.ndim != 2 or dictionary.shape[0] != d:
            raise ValueError('SparseCoveringConv: dictionary must have shape (%d, c) for a '
                             'lookup with d=%d, got %s' % (d, d, dictionary.shape))
        self._kernel = (kh, kw)
        self._atoms = d
        self._in_channels = dictionary.shape[1]
        self._relu = bool(relu)
        # Columns in (q, i, j) order: S's layout as the op computes it.
        packed = pack_lookup(p.reshape(m, d * kh * kw))
        self._init_constants(packed._replace(kernel_offset=None),
                             _stored(dictionary, weight_dtype, 'SparseCoveringConv',
                                     'dictionary'), bias, m)
        self._lookup_shape = (m, d, kh, kw)

    kernel_size = property(lambda self: self._kernel)
    channels = property(lambda self: self._packed_shape[0])
    in_channels = property(lambda self: self._in_channels)
    relu = property(lambda self: self._relu)
    weight_dtype = property(lambda self: self._weight_dtype)

    @property
    def dictionary_size(self):
        return self._atoms

    def lookup_dense(self):
        """The lookup tensor P (m, d, kh, kw) as a dense numpy array."""
        return super().lookup_dense().reshape(self._lookup_shape)

    def hybrid_forward(self, F, x, indptr, dict_index, value, dictionary, bias=None):
        pixels = self._kernel[0] * self._kernel[1]
        args = [F.flatten(x), dictionary, indptr, dict_index, value] + (
            [bias] if bias is not None else [])
        out = F.lcnn_sparse_dense(*args, num_hidden=self.channels,
                                  dictionary_size=self._atoms * pixels, relu=self._relu,
                                  no_bias=bias is None, with_dictionary=True, pixels=pixels,
                                  weight_dtype=self._weight_dtype, name='lookup')
        return F.reshape(out, shape=(0, 0, 1, 1))

    def __repr__(self):
        return ('{name}({cin} -> {m}, kernel_size={k}, dictionary_size={d}, density={dens:.4f}'
                '{relu}, {dt})').format(name=type(self).__name__, cin=self._in_channels,
                                        m=self.channels, k=self._kernel, d=self._atoms,
                                        dens=self.density, relu=', relu' if self._relu else '',
                                        dt=self._weight_dtype)


class LcnnDense(HybridBlock):
    """Inference-only fully connected layer by the C++ op ``lcnn_dense``, for weights stored as
    float16 (``weight_dtype='float16'``, the point of it: at batch 1 a big dense layer such as
    AlexNet's classifier streams its whole weight for one matrix-vector product, so half the
    bytes is nearly half the time) or float32. Input, output and bias are float32 and the
    products accumulate in float32.

    Parameters
    ----------
    weight : array (units, in_units)
    bias : array (units,) or None
    relu : bool
        Fuse a ReLU after the bias.
    flatten : bool
        Like ``gluon.nn.Dense``.
    weight_dtype : {'float16', 'float32'}
    """

    def __init__(self, weight, bias=None, relu=False, flatten=True, weight_dtype='float16',
                 prefix=None, params=None):
        super().__init__(prefix=prefix, params=params)
        self._weight_dtype = _check_weight_dtype(weight_dtype, 'LcnnDense')
        weight = _to_numpy(weight, 'weight')
        if weight.ndim != 2 or min(weight.shape) < 1:
            raise ValueError('LcnnDense: weight must be 2-D (units, in_units), got %s'
                             % (weight.shape,))
        self._units, self._in_units = weight.shape
        if bias is not None:
            bias = _to_numpy(bias, 'bias')
            if bias.shape != (self._units,):
                raise ValueError('LcnnDense: bias must have shape (%d,), got %s'
                                 % (self._units, bias.shape))
        self._relu = bool(relu)
        self._flatten = bool(flatten)
        weight = _stored(weight, weight_dtype, 'LcnnDense', 'weight')
        with self.name_scope():
            self.weight = self.params.get_constant('weight',
                                                   mx.nd.array(weight, dtype=weight.dtype))
            self.bias = (self.params.get_constant('bias', mx.nd.array(bias))
                         if bias is not None else None)

    units = property(lambda self: self._units)
    in_units = property(lambda self: self._in_units)
    relu = property(lambda self: self._relu)
    flatten = property(lambda self: self._flatten)
    weight_dtype = property(lambda self: self._weight_dtype)

    def lcnn_macs(self, in_shape, out_shape):
        """What ``flops.profile`` counts: units * in_units per row, as for ``nn.Dense``."""
        rows = int(in_shape[0]) if self._flatten else int(np.prod(out_shape[:-1]))
        macs = self._units * self._in_units * rows
        return dict(kind='dense', dense_macs=macs, macs=macs)

    def hybrid_forward(self, F, x, weight, bias=None):
        x2 = F.flatten(x) if self._flatten else F.reshape(x, shape=(-1, self._in_units))
        args = [x2, weight] + ([bias] if bias is not None else [])
        out = F.lcnn_dense(*args, num_hidden=self._units, relu=self._relu,
                           no_bias=bias is None, weight_dtype=self._weight_dtype, name='fwd')
        if not self._flatten:
            out = F.reshape_like(out, x, lhs_begin=0, lhs_end=1, rhs_begin=0, rhs_end=-1)
        return out

    def __repr__(self):
        return '%s(%d -> %d, %s%s)' % (type(self).__name__, self._in_units, self._units,
                                       self._weight_dtype, ', relu' if self._relu else '')


class LcnnMaxPool(HybridBlock):
    """Max pooling (NCHW, floor mode) by the C++ op ``lcnn_max_pool`` (forward only).

    MXNet 1.9's MKLDNN pools plain-NCHW data with oneDNN's reference ``simple_nchw`` kernel:
    AlexNet's pool1 (1x64x55x55) takes 3.5 ms on one core there, 0.56 ms as a block of strided
    slices and maxima, 0.13 ms with ``lcnn_max_pool`` (per-call overhead included). The sparse op
    writes plain NCHW, so its pools hit that path; data in MKLDNN's blocked layout (after a dense
    conv) is pooled fast, hence ``deploy.to_inference`` times both in context ('lcnn_pool' vs
    'mkldnn' in ``kernel_choices``).
    """

    def __init__(self, pool_size, strides, padding=(0, 0), prefix=None):
        super().__init__(prefix=prefix)
        self._kernel, self._strides, self._padding = (tuple(pool_size), tuple(strides),
                                                      tuple(padding))

    def hybrid_forward(self, F, x):
        return F.lcnn_max_pool(x, kernel=self._kernel, stride=self._strides, pad=self._padding)

    def __repr__(self):
        return '%s(size=%s, stride=%s, padding=%s)' % (type(self).__name__, self._kernel,
                                                       self._strides, self._padding)


def initialize_constants(block, ctx=None):
    """Initialize the parameters of ``block`` that have no data yet (the sparse blocks'
    constants), leaving initialized ones as they are; ``block.initialize()`` would warn about
    those. Returns ``block``."""
    for p in block.collect_params().values():
        if p._data is None:
            p.initialize(ctx=ctx)
    return block
