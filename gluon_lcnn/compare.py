"""LCNN against its dense twin: layer- and model-level comparisons for benchmarks/ and the
`benchmark` command.

Rules (docs/ARCHITECTURE.md, "How speed is measured"): one process, the same input for every candidate,
warm-up first, median of many runs, and every LCNN figure next to its dense twin measured in the
same run (the timing primitives are in ``gluon_lcnn.timing``). MXNet fixes its thread count when
it starts, so each thread setting runs in its own subprocess with OMP_NUM_THREADS set
(``run_in_subprocess``).
"""
import json
import os
import subprocess
import sys
from collections import OrderedDict

import mxnet as mx
import numpy as np
from mxnet.gluon import nn
from tabulate import tabulate

from . import cli_args, flops
from .deploy import to_inference
from .model_zoo import get_model, list_models, set_lookup_density
from .model_zoo.common import PUBLISHED_DENSITIES
from .nn.lookup import LookupConv2D, lookup_layers
from .nn.sparse import (CoveringConv, SparseLookupConv2D, SparseLookupDense,
                        initialize_constants)
from .quantize import quantize_int8
from .timing import medians, time_block, time_blocks_interleaved

__all__ = ['random_lookup', 'compare_layer', 'layer_shapes', 'randomize_batchnorm',
           'dense_twin_name', 'build_inference', 'total_macs', 'compare_models',
           'layer_breakdown', 'markdown_table', 'render_models', 'add_arguments', 'run',
           'run_in_subprocess']


# --------------------------------------------------------------------------------------------
# Layer level: one lookup layer shape, dense MKLDNN conv vs the LCNN path.

def random_lookup(shape, density, rng):
    """Random lookup tensor with exactly round(density * size) non-zeros (at least one)."""
    size = int(np.prod(shape))
    keep = max(1, int(round(density * size)))
    flat = np.zeros(size, dtype=np.float32)
    idx = rng.choice(size, keep, replace=False)
    flat[idx] = rng.uniform(0.5, 1.5, keep) * rng.choice([-1.0, 1.0], keep)
    return flat.reshape(shape) / np.sqrt(np.prod(shape[1:]) * max(density, 1e-3))


def compare_layer(in_channels, channels, kernel, dictionary_size, density, in_size=None,
                  strides=1, padding=0, batch=1, seed=0, repeat=30, warmup=5, max_seconds=2.0,
                  ctx=None):
    """Time one layer shape three ways in this process, on the same input.

    ``in_size`` None means a fully connected layer (Dense vs SparseLookupDense); otherwise
    (H, W) of a convolution's input (Conv2D vs SparseLookupConv2D).

    Returns an OrderedDict with the geometry, ``dense_ms`` (MKLDNN Conv2D / Dense with bias),
    ``lcnn_ms`` (dictionary + sparse op with bias), ``fc_form_ms`` (for a conv whose kernel
    covers its input: dictionary + sparse dense op, ``nn.sparse.CoveringConv``; else None),
    ``lookup_ms`` (the faster sparse op alone on the dictionary output), ``mac_ratio`` (dense
    MACs / LCNN MACs, by ``flops.lookup_macs``), ``speedup`` (median of per-round ratios of
    dense to the faster LCNN form, all run alternately) and ``lookup_gflops`` (2 * nnz * output
    positions / lookup time: useful work only).
    """
    ctx = ctx or mx.cpu()
    rng = np.random.RandomState(seed)
    conv = in_size is not None
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    sh, sw = (strides, strides) if isinstance(strides, int) else tuple(strides)
    ph, pw = (padding, padding) if isinstance(padding, int) else tuple(padding)
    if conv:
        h, w = in_size
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        lookup = random_lookup((channels, dictionary_size, kh, kw), density, rng)
        x_shape, s_shape = (batch, in_channels, h, w), (batch, dictionary_size, h, w)
    else:
        h = w = ho = wo = 1
        lookup = random_lookup((channels, dictionary_size), density, rng)
        x_shape, s_shape = (batch, in_channels), (batch, dictionary_size)
    dictionary = rng.normal(0, 1.0 / np.sqrt(in_channels),
                            (dictionary_size, in_channels) + ((1, 1) if conv else ()))
    dictionary = mx.nd.array(dictionary.astype(np.float32), ctx=ctx)
    p = mx.nd.array(lookup, ctx=ctx)
    bias = mx.nd.array(rng.normal(0, 0.1, channels).astype(np.float32), ctx=ctx)
    if conv:
        dense = nn.Conv2D(channels, (kh, kw), strides=(sh, sw), padding=(ph, pw),
                          in_channels=in_channels)
        lcnn = SparseLookupConv2D(p, bias=bias, dictionary=dictionary, strides=(sh, sw),
                                  padding=(ph, pw))
        stage = SparseLookupConv2D(p, bias=bias, strides=(sh, sw), padding=(ph, pw))
    else:
        dense = nn.Dense(channels, in_units=in_channels)
        lcnn = SparseLookupDense(p, bias=bias, dictionary=dictionary)
        stage = SparseLookupDense(p, bias=bias)
    dense.initialize(mx.init.Xavier(), ctx=ctx)
    candidates, stages = [lcnn], [stage]
    if conv and (h, w) == (kh, kw) and (ph, pw) == (0, 0):
        # The kernel covers the input (AlexNet's fc6): to_inference also times the fc form.
        flat = SparseLookupDense(lookup.reshape(channels, -1), bias=bias)
        dict_conv = nn.Conv2D(dictionary_size, 1, in_channels=in_channels, use_bias=False)
        dict_conv.initialize(ctx=ctx)
        dict_conv.weight.set_data(dictionary)
        candidates.append(CoveringConv(dict_conv, flat))
        stages.append(flat)
    for block in candidates + stages:
        initialize_constants(block, ctx)
    x = mx.nd.array(rng.normal(0, 1, x_shape).astype(np.float32), ctx=ctx)
    s = mx.nd.array(rng.normal(0, 1, s_shape).astype(np.float32), ctx=ctx)
    kw_t = dict(repeat=repeat, warmup=warmup, max_seconds=max_seconds)
    times = time_blocks_interleaved([dense] + candidates, x, **kw_t)
    dense_t = np.array(times[0])
    forms = medians(times[1:])
    best = int(np.argmin(forms))  # the LCNN form to_inference would keep
    dense_s, lcnn_s = float(np.median(dense_t)), forms[0]
    speedup = float(np.median(dense_t / np.array(times[1 + best])))
    lookup_s = min(medians(time_blocks_interleaved(stages, s, **kw_t)))
    nnz = int(np.count_nonzero(lookup))
    macs = flops.lookup_macs(lookup.shape, nnz, (1,) + x_shape[1:],
                             (1, channels, ho, wo) if conv else (1, channels))
    return OrderedDict([
        ('in_channels', in_channels), ('channels', channels), ('kernel', '%dx%d' % (kh, kw)),
        ('stride', sh), ('in_size', '%dx%d' % (h, w) if conv else 'fc'), ('out_size',
                                                                           '%dx%d' % (ho, wo)),
        ('dictionary', dictionary_size), ('density', nnz / float(lookup.size)), ('batch', batch),
        ('dense_ms', dense_s * 1e3), ('lcnn_ms', lcnn_s * 1e3),
        ('fc_form_ms', forms[1] * 1e3 if len(forms) > 1 else None),
        ('lookup_ms', lookup_s * 1e3),
        ('mac_ratio', macs['dense_macs'] / float(macs['macs'])), ('speedup', speedup),
        ('lookup_gflops', 2.0 * nnz * ho * wo * batch / lookup_s / 1e9),
    ])


def layer_shapes(name, size=224, **kwargs):
    """Geometry of every lookup layer of zoo model ``name`` at input (1, 3, size, size).

    Returns a list of dicts (name, in_channels, channels, kernel, strides, padding, in_size,
    dictionary_size); ``in_size`` is None for LookupDense layers.
    """
    net = get_model(name, **kwargs)
    net.initialize()
    layers = lookup_layers(net)
    seen = {}
    handles = [layer.register_forward_pre_hook(
        lambda b, inputs: seen.setdefault(b.name, inputs[0].shape)) for layer in layers.values()]
    net(mx.nd.zeros((1, 3, size, size)))
    for h in handles:
        h.detach()
    rows = []
    for lname, layer in layers.items():
        shape = seen[lname]
        conv = isinstance(layer, LookupConv2D)
        rows.append(dict(name=lname, in_channels=int(shape[1]) if conv else int(np.prod(shape[1:])),
                         channels=layer.channels if conv else layer.units,
                         kernel=layer.kernel_size if conv else 1,
                         strides=layer.strides if conv else 1,
                         padding=layer.padding if conv else 0,
                         in_size=tuple(shape[2:]) if conv else None,
                         dictionary_size=layer.dictionary_size))
    return rows


# --------------------------------------------------------------------------------------------
# Model level: LCNN net vs its dense twin, both through to_inference (BN folded, ReLU fused).

def randomize_batchnorm(net, seed=0):
    """Give every BatchNorm non-trivial running stats, gamma and beta (so folding is tested)."""
    rng = np.random.RandomState(seed)
    for name, p in net.collect_params().items():
        if p.shape is None or p._data is None:
            continue
        if name.endswith('running_var'):
            value = rng.uniform(0.5, 2.0, p.shape)
        elif name.endswith(('running_mean', 'beta')):
            value = rng.normal(0, 0.5, p.shape)
        elif name.endswith('gamma'):
            value = rng.uniform(0.5, 1.5, p.shape)
        else:
            continue
        p.set_data(mx.nd.array(value.astype(np.float32)))


def dense_twin_name(name):
    """The dense zoo model of an LCNN model's family: 'alexnet_lcnn_fast' -> 'alexnet'."""
    names = list_models()
    key = name.lower()
    if 'lcnn' not in key:
        raise ValueError('dense_twin_name: %r is not an LCNN model (no "lcnn" in the name)' % name)
    base = key.split('_lcnn')[0]
    for candidate in (base, base + '_v1'):
        if candidate in names:
            return candidate
    raise ValueError('dense_twin_name: no dense model %r for %r in the zoo (%s)'
                     % (base, name, ', '.join(names)))


def build_inference(name, input_shape, density=None, seed=0, choose='auto', ctx=None,
                    weight_dtype='float32', **model_kwargs):
    """A zoo model with random weights (and densities) -> ``to_inference`` -> hybridized block.

    density: None leaves P as initialised; 'published' uses the published per-layer densities
    of ``name``; a float or a sequence is passed to ``set_lookup_density``. ``weight_dtype``
    goes to ``to_inference``. Returns (inference block, training net).
    """
    ctx = ctx or mx.cpu()
    mx.random.seed(seed)
    net = get_model(name, **model_kwargs)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    net(mx.nd.zeros(input_shape, ctx=ctx))
    randomize_batchnorm(net, seed)
    if density is not None:
        set_lookup_density(net, name if density == 'published' else density, seed=seed)
    inf = to_inference(net, input_shape=input_shape, choose=choose, ctx=ctx,
                       weight_dtype=weight_dtype)
    inf.hybridize(static_alloc=True, static_shape=True)
    return inf, net


def total_macs(net, input_shape):
    """Multiply-adds of one forward pass of ``net`` on ``input_shape``, per flops.profile."""
    return float(flops.profile(net, input_shape).totals['macs'])


def compare_models(name, batches=(1, 32), density='published', size=224, seed=0, repeat=20,
                   warmup=3, max_seconds=10.0, breakdown=False, int8=False,
                   weight_dtype='float32'):
    """Latency / throughput of zoo model ``name`` and its dense twin, measured in this process.

    Returns a list of OrderedDict rows, one per batch size, with ``dense_ms``, ``lcnn_ms``,
    ``speedup`` (median of per-round dense / LCNN ratios: the two run alternately), the best
    (least disturbed) run of each and their ratio ``speedup_min``, images/s of both (medians),
    ``mac_ratio`` (theoretical, from flops) and the kernel each lookup layer got; with
    ``breakdown`` also per-layer times of both nets at the smallest batch. With ``int8`` the
    dense twin quantized by ``quantize_int8`` (calibrated on random images: a speed figure,
    not an accuracy one) runs in the same interleaved rounds: ``int8_ms``, ``int8_min_ms``,
    ``int8_speedup`` (dense / int8) and ``lcnn_vs_int8`` (int8 / LCNN), both medians of
    per-round ratios.
    """
    twin = dense_twin_name(name)
    rows = []
    for batch in batches:
        shape = (batch, 3, size, size)
        # Both nets store their weights alike (weight_dtype): the twin stays a fair baseline.
        lcnn, lcnn_train = build_inference(name, shape, density=density, seed=seed,
                                           weight_dtype=weight_dtype)
        dense, dense_train = build_inference(twin, shape, seed=seed, weight_dtype=weight_dtype)
        x = mx.nd.array(np.random.RandomState(seed).uniform(-1, 1, shape).astype(np.float32))
        kw = dict(repeat=repeat, warmup=warmup, max_seconds=max_seconds)
        if int8:
            quantized = _int8_twin(dense_train, shape, seed)
            dense_t, lcnn_t, int8_t = time_blocks_interleaved([dense, lcnn, quantized], x, **kw)
        else:
            dense_t, lcnn_t = time_blocks_interleaved([dense, lcnn], x, **kw)
        dense_s, lcnn_s = medians([dense_t, lcnn_t])
        one = (1, 3, size, size)
        lcnn_macs, dense_macs = total_macs(lcnn_train, one), total_macs(dense_train, one)
        row = OrderedDict([
            ('model', name), ('dense_twin', twin), ('threads', _threads()), ('batch', batch),
            ('input', '%dx%d' % (size, size)), ('density', _density_label(name, density)),
            ('weight_dtype', weight_dtype),
            ('dense_ms', dense_s * 1e3), ('lcnn_ms', lcnn_s * 1e3),
            # Median of per-round ratios: both nets ran alternately, under the same load.
            ('speedup', float(np.median(np.array(dense_t) / np.array(lcnn_t)))),
            # Best runs: on a shared machine the least disturbed ones.
            ('dense_min_ms', min(dense_t) * 1e3), ('lcnn_min_ms', min(lcnn_t) * 1e3),
            ('speedup_min', min(dense_t) / min(lcnn_t)),
            ('mac_ratio', dense_macs / lcnn_macs if lcnn_macs and dense_macs else None),
            ('dense_img_s', batch / dense_s), ('lcnn_img_s', batch / lcnn_s),
            ('kernels', OrderedDict((k, v['choice'] + ('/float16' if v.get('weight_dtype') ==
                                                       'float16' else ''))
                                    for k, v in lcnn.kernel_choices.items())),
        ])
        if int8:
            row.update(_int8_columns(dense_t, lcnn_t, int8_t, batch))
        if breakdown and batch == min(batches):  # latency analysis: the smallest batch only
            row['lcnn_layers'] = layer_breakdown(lcnn, shape, **kw)
            row['dense_layers'] = layer_breakdown(dense, shape, **kw)
        rows.append(row)
    return rows


INT8_CALIB_IMAGES = 8   # random images: enough for the ranges a speed comparison needs


def _int8_twin(dense_train, shape, seed):
    """The dense training net (BatchNorm and all: MKLDNN fuses it) quantized to int8."""
    rng = np.random.RandomState(seed + 1)
    calib = [mx.nd.array(rng.uniform(-1, 1, (1,) + shape[1:]).astype(np.float32))
             for _ in range(INT8_CALIB_IMAGES)]
    return quantize_int8(dense_train, calib, input_shape=shape, calib_mode='naive')


def _int8_columns(dense_t, lcnn_t, int8_t, batch):
    int8_s = float(np.median(int8_t))
    return OrderedDict([
        ('int8_ms', int8_s * 1e3), ('int8_min_ms', min(int8_t) * 1e3),
        ('int8_speedup', float(np.median(np.array(dense_t) / np.array(int8_t)))),
        ('lcnn_vs_int8', float(np.median(np.array(int8_t) / np.array(lcnn_t)))),
        ('int8_img_s', batch / int8_s),
        ('int8_calibration', 'naive, %d random images' % INT8_CALIB_IMAGES),
    ])


def _density_label(name, density):
    """'published' / 'assumed' (the zoo's table the densities came from), or the value."""
    if density == 'published':
        return 'published' if name in PUBLISHED_DENSITIES else 'assumed'
    return 'init' if density is None else str(density)


def _threads():
    return os.environ.get('OMP_NUM_THREADS', 'default')


def _leaves(block):
    """Blocks timed one by one in a breakdown: inference layers and child-less blocks."""
    kinds = (nn.Conv2D, nn.Dense, SparseLookupConv2D, SparseLookupDense, CoveringConv)
    if isinstance(block, kinds) or not block._children:
        return [block]
    return [leaf for child in block._children.values() for leaf in _leaves(child)]


def layer_breakdown(net, input_shape, repeat=20, warmup=3, max_seconds=2.0):
    """Per-layer median times of an inference net, alone and inside the net.

    ``ms``: each leaf block alone on its real input shape (its weights stay in the cache).
    ``in_net_ms``: when the leaves run as a plain chain (checked: the chain's output equals the
    net's, as for AlexNet), the growth in time of the chain's prefixes — what the layer costs
    inside the whole net, including fetching its weights from memory and layout conversions;
    None for nets with branches (ResNet), whose elementwise work is then not covered.
    Returns a list of OrderedDicts (layer, type, input, ms, in_net_ms).
    """
    leaves = _leaves(net)
    shapes = {}
    # Hooks only fire imperatively: run a fresh, non-hybridized pass.
    net.hybridize(False)
    handles = [leaf.register_forward_pre_hook(
        lambda b, inputs: shapes.setdefault(id(b), tuple(inputs[0].shape))) for leaf in leaves]
    x = mx.nd.random.uniform(-1, 1, shape=input_shape)
    try:
        with mx.autograd.predict_mode():
            reference = net(x)
        mx.nd.waitall()
    finally:
        for h in handles:
            h.detach()
    leaves = [leaf for leaf in leaves if id(leaf) in shapes]
    rows = []
    for leaf in leaves:
        shape = shapes[id(leaf)]
        seconds = time_block(leaf, mx.nd.random.uniform(-1, 1, shape=shape), repeat=repeat,
                             warmup=warmup, max_seconds=max_seconds)
        leaf.hybridize(False)
        rows.append(OrderedDict([('layer', leaf.name), ('type', type(leaf).__name__),
                                 ('input', 'x'.join(map(str, shape))), ('ms', seconds * 1e3),
                                 ('in_net_ms', None)]))
    chain = nn.HybridSequential(prefix='chain_')
    chain.add(*leaves)
    try:
        with mx.autograd.predict_mode():
            out = chain(x).asnumpy()
    except (mx.base.MXNetError, ValueError):  # branches (ResNet): the leaves do not chain
        out = None
    if out is not None and out.shape == reference.shape and np.allclose(
            out, reference.asnumpy(), rtol=1e-4, atol=1e-5):
        previous = 0.0
        for k, row in enumerate(rows):
            prefix = nn.HybridSequential(prefix='chain_')
            prefix.add(*leaves[:k + 1])
            seconds = time_block(prefix, x, repeat=repeat, warmup=warmup,
                                 max_seconds=max_seconds)
            prefix.hybridize(False)
            row['in_net_ms'] = (seconds - previous) * 1e3
            previous = seconds
    net.hybridize(static_alloc=True, static_shape=True)
    return rows


# --------------------------------------------------------------------------------------------
# Output and the CLI (`python -m gluon_lcnn benchmark ...`, benchmarks/bench_models.py).

def _fmt(value):
    if isinstance(value, float):
        return '%.3g' % value if abs(value) < 100 else '%.0f' % value
    if value is None:
        return '-'
    return str(value)


def markdown_table(rows, columns):
    """A markdown table of ``rows`` (dicts); columns are (key, header) pairs."""
    return tabulate([[_fmt(row.get(k)) for k, _ in columns] for row in rows],
                    headers=[h for _, h in columns], tablefmt='github', disable_numparse=True)


MODEL_COLUMNS = [('model', 'model'), ('density', 'P density'), ('threads', 'threads'),
                 ('batch', 'batch'),
                 ('dense_twin', 'dense twin'), ('dense_ms', 'dense ms'), ('lcnn_ms', 'LCNN ms'),
                 ('speedup', 'measured speedup'), ('dense_min_ms', 'dense best ms'),
                 ('lcnn_min_ms', 'LCNN best ms'), ('speedup_min', 'best-run speedup'),
                 ('mac_ratio', 'MAC ratio'),
                 ('dense_img_s', 'dense img/s'), ('lcnn_img_s', 'LCNN img/s')]
INT8_COLUMNS = [('int8_ms', 'int8 ms'), ('int8_min_ms', 'int8 best ms'),
                ('int8_speedup', 'int8 speedup'), ('lcnn_vs_int8', 'LCNN vs int8')]
BREAKDOWN_COLUMNS = [('layer', 'layer'), ('type', 'type'), ('input', 'input'),
                     ('ms', 'alone ms'), ('in_net_ms', 'in-net ms')]


def _parse_density(text):
    if text in (None, 'none', 'init'):
        return None
    if text == 'published':
        return 'published'
    try:
        value = float(text)
    except ValueError:
        raise ValueError("--density must be 'published', 'init' or a float, got %r" % text)
    if not 0 <= value <= 1:   # also refuses nan
        raise ValueError('--density must be in [0, 1], got %r' % text)
    return value


def _density_option(text):
    """argparse type of --density: the text, once ``_parse_density`` accepts it."""
    import argparse
    try:
        _parse_density(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).replace('--density ', ''))
    return text


def _threads_option(text):
    """argparse type of --threads: the text, once ``_thread_count`` accepts it."""
    import argparse
    try:
        _thread_count(text)
    except ValueError:
        raise argparse.ArgumentTypeError('expected a positive integer or "all", got %r' % text)
    return text


def add_arguments(parser):
    """Options of `python -m gluon_lcnn benchmark` and benchmarks/bench_models.py."""
    parser.add_argument('--model', nargs='+', required=True,
                        help='LCNN zoo model(s), e.g. alexnet_lcnn_fast; each is compared with '
                             'its dense twin (same family without _lcnn_*) in the same process')
    parser.add_argument('--density', default='published', type=_density_option,
                        help="lookup densities: 'published' (model_zoo.PUBLISHED_DENSITIES, random "
                             "P; the zoo's assumed ones for models without published values), "
                             "a float for every layer, or 'init' (as initialised)")
    parser.add_argument('--batch', type=cli_args.positive_int, nargs='+', default=[1, 32],
                        help='batch sizes (1 = latency, larger = throughput)')
    parser.add_argument('--threads', type=_threads_option, nargs='+', default=['1', 'all'],
                        help="thread settings, each run in its own subprocess with "
                             "OMP_NUM_THREADS set; 'all' = every core")
    parser.add_argument('--size', type=cli_args.positive_int, default=224,
                        help='input height and width')
    parser.add_argument('--repeat', type=cli_args.positive_int, default=20,
                        help='timed runs per measurement')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--breakdown', action='store_true',
                        help='also time every layer of both nets, alone and inside the net, at '
                             'the smallest batch (where the time goes)')
    parser.add_argument('--weight-dtype', default='float32', choices=('float32', 'float16'),
                        help="to_inference's weight_dtype for both nets: float16 stores the "
                             "fully connected layers' weights (dictionaries, classifier) as "
                             "float16 where that measures faster")
    parser.add_argument('--int8', action='store_true',
                        help='also time the dense twin quantized to int8 (MKLDNN, '
                             'quantize.quantize_int8, calibrated on %d random images) in the same '
                             'rounds; adds int8 ms and LCNN vs int8' % INT8_CALIB_IMAGES)
    parser.add_argument('--json', default=None, help='write all rows to this JSON file')
    parser.add_argument('--markdown', default=None, help='write the tables to this file')
    return parser


def _thread_count(setting):
    if setting == 'all':
        return os.cpu_count() or 1
    try:
        n = int(setting)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError('--threads: expected a positive int or "all", got %r' % setting)
    return n


def run_in_subprocess(job, threads):
    """Run ``_worker(job)`` in a fresh Python with ``threads`` OpenMP threads; its JSON result."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, '-m', 'gluon_lcnn.compare', '--worker',
                           json.dumps(job)], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True)
    if proc.returncode != 0:
        raise RuntimeError('benchmark worker (OMP_NUM_THREADS=%d) failed:\n%s'
                           % (threads, proc.stderr[-4000:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _worker(job):
    if job['kind'] == 'models':
        rows = []
        for name in job['models']:
            rows.extend(compare_models(name, batches=job['batches'], density=job['density'],
                                       size=job['size'], seed=job['seed'], repeat=job['repeat'],
                                       breakdown=job['breakdown'],
                                       int8=job.get('int8', False),
                                       weight_dtype=job.get('weight_dtype', 'float32')))
        return rows
    raise ValueError('unknown benchmark job %r' % job['kind'])


def render_models(rows):
    """Markdown: the model table, then per-layer breakdowns where measured."""
    int8 = [row for row in rows if 'int8_ms' in row]
    out = [markdown_table(rows, MODEL_COLUMNS + (INT8_COLUMNS if int8 else []))]
    if int8:
        out.append('\nint8 = the dense twin quantized by quantize_int8 (MKLDNN; calibration: %s, '
                   'so a speed figure, not an accuracy one), timed in the same rounds; '
                   'LCNN vs int8 = int8 time / LCNN time.' % int8[0]['int8_calibration'])
    for row in rows:
        kernels = ', '.join('%s=%s' % kv for kv in row['kernels'].items())
        out.append('\nkernels of %s (%s threads, batch %d): %s'
                   % (row['model'], row['threads'], row['batch'], kernels))
        if 'lcnn_layers' in row:
            for key, label in (('lcnn_layers', row['model']), ('dense_layers', row['dense_twin'])):
                out.append('\n%s, %s threads, batch %d, per layer (sum alone %.3g ms; whole '
                           'net %.3g ms)\n'
                           % (label, row['threads'], row['batch'],
                              sum(r['ms'] for r in row[key]),
                              row['lcnn_ms' if key == 'lcnn_layers' else 'dense_ms']))
                out.append(markdown_table(row[key], BREAKDOWN_COLUMNS))
    return '\n'.join(out)


def run(args):
    """Entry of `python -m gluon_lcnn benchmark`: print the markdown tables, return the rows."""
    density = _parse_density(args.density)
    from .model_zoo import list_models
    from .model_zoo.common import ASSUMED_DENSITIES
    for value, option in ((args.batch, '--batch'), (args.size, '--size'),
                          (args.repeat, '--repeat')):
        if min(value if isinstance(value, list) else [value]) < 1:
            raise ValueError('%s must be >= 1, got %r' % (option, value))
    shape = (max(args.batch), 3, args.size, args.size)
    for name in args.model:
        if name.lower() not in list_models():
            raise ValueError('unknown model %r; LCNN models: %s' % (
                name, ', '.join(n for n in list_models() if 'lcnn' in n)))
        twin = dense_twin_name(name)
        if density == 'published' and name.lower() not in dict(ASSUMED_DENSITIES,
                                                               **PUBLISHED_DENSITIES):
            raise ValueError("--density published: the zoo has no densities for %s; give a "
                             "float or 'init'" % name)
        # Before any subprocess: the input must fit both nets (shape inference only).
        for model in (name, twin):
            cli_args.check_input_shape(get_model(model), shape, model,
                                       label='--batch %d --size %d' % (shape[0], args.size))
    job = dict(kind='models', models=args.model, batches=args.batch, density=density,
               size=args.size, seed=args.seed, repeat=args.repeat, breakdown=args.breakdown,
               int8=getattr(args, 'int8', False),
               weight_dtype=getattr(args, 'weight_dtype', 'float32'))
    rows = []
    for setting in args.threads:
        threads = _thread_count(setting)
        try:
            rows.extend(run_in_subprocess(job, threads))
        except RuntimeError as err:
            # The worker refused its input in one line (see the end of this file): pass it on.
            last = str(err).strip().splitlines()[-1]
            if not last.startswith(_WORKER_ERROR):
                raise
            raise ValueError(last[len(_WORKER_ERROR):]) from None
    text = render_models(rows)
    print(text)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(text + '\n')
    return rows


_WORKER_ERROR = 'benchmark worker: error: '

if __name__ == '__main__':
    if len(sys.argv) == 3 and sys.argv[1] == '--worker':
        try:
            result = _worker(json.loads(sys.argv[2]))
        except ValueError as err:   # input the library refuses: one line for run() to pass on
            if os.environ.get('GLUON_LCNN_TRACEBACK'):
                raise
            print(_WORKER_ERROR + cli_args.error_line(err), file=sys.stderr)
            sys.exit(2)
        print(json.dumps(result))
    else:
        from gluon_lcnn.__main__ import main
        sys.exit(main(['benchmark'] + sys.argv[1:]))
