"""Single-op timing of the sparse-lookup kernel against MXNet's MKLDNN dense convolution.

For each AlexNet LCNN-fast conv layer (the zoo's alexnet_lcnn_fast shapes and dictionary sizes,
published lookup densities: model_zoo/common.py) this times, in one process and on the same input:

- dense : mx.nd.Convolution with a dense weight of the layer's shape (MKLDNN),
- lcnn  : mx.nd.lcnn_sparse_conv with the dictionary fused (x -> output, one call; what
          SparseLookupConv2D runs by default), random P at the published density,
- dict + lookup: the unfused pair, a 1x1 mx.nd.Convolution (MKLDNN) for S = D x and
          mx.nd.lcnn_sparse_conv on S,

median of many runs after warm-up, the calls interleaved round by round so that load from
other processes hits all of them alike. It prints the useful GFLOP/s of the lookup stage
(2 * nnz * H' * W' per image), the measured speedup dense / lcnn, the theoretical MAC ratio
dense / (dictionary + lookup MACs) and their quotient (the fraction of the theoretical
speedup realised). MXNet charges every imperative op call a fixed cost (Python, dispatch) of
tens of microseconds, which dominates the small 13x13 layers at batch 1; it is measured once
(the op on a 1x1 input) and "kernel GF/s" is the lookup throughput with it subtracted.
Defaults: one thread and the NaiveEngine, so single-op times are clean.

Two more tables:

- per-call fixed cost: every operator of the library on a 1x1 input against MXNet's built-in
  FullyConnected (and relu) of the same size, in the same process: once per imperative call
  (what a lone ``mx.nd`` call or a one-layer block costs) and per op inside a hybridized graph
  (the slope of a chain of 21 ops over a chain of 1: what each op adds to a whole net),
- the AlexNet LCNN-fast fully connected layers (fc6 as the covering conv 256x6x6 -> 4096 with
  d=512, fc7 4096 -> 4096 with d=512, fc8 the dense 4096 -> 1000 classifier; published
  densities): what to_inference builds with float32 weights (MKLDNN dictionary / classifier +
  the sparse op) against one fused call with the dictionary (or weight) stored as float32 and
  as float16. Weights are in cache here (the timer re-warms every call); inside a whole net
  they are not, which favours float16 more (bench_models.py --weight-dtype measures that).

    python benchmarks/bench_op_kernels.py [--batch 1] [--repeat 200] [--json out.json]

Writes benchmarks/results/op_kernels.md and .json (command, date, machine load) unless --out
says otherwise.
"""
import os
import sys

# Set before mxnet is imported: OpenMP reads its thread count once.
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MXNET_ENGINE_TYPE', 'NaiveEngine')

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gluon_lcnn  # noqa: E402,F401  (loads the operator library)
from gluon_lcnn.flops import lookup_macs  # noqa: E402
from gluon_lcnn.nn.sparse import initialize_constants, pack_lookup  # noqa: E402
from gluon_lcnn.timing import (machine_summary, medians, time_call,  # noqa: E402
                               time_calls_interleaved)

# name, c, m, (H, W), kernel, stride, pad, dictionary size, published density (LCNN-fast)
ALEXNET_FAST = [
    ('conv1', 3, 64, (224, 224), 11, 4, 2, 3, 0.083),
    ('conv2', 64, 192, (27, 27), 5, 1, 2, 30, 0.034),
    ('conv3', 192, 384, (13, 13), 3, 1, 1, 30, 0.008),
    ('conv4', 384, 256, (13, 13), 3, 1, 1, 30, 0.013),
    ('conv5', 256, 256, (13, 13), 3, 1, 1, 30, 0.027),
]


def call_overhead(repeat, warmup):
    """Median time of lcnn_sparse_conv on a 1x1 input: MXNet's fixed per-call cost."""
    packed = pack_lookup(np.ones((1, 1, 1, 1), np.float32))
    ops = [mx.nd.array(a, dtype=a.dtype) for a in
           (packed.indptr, packed.dict_index, packed.kernel_offset, packed.value)]
    s_in = mx.nd.ones((1, 1, 1, 1))
    return time_call(lambda: mx.nd.lcnn_sparse_conv(
        s_in, *ops, num_filter=1, dictionary_size=1, kernel=(1, 1), no_bias=True),
        repeat=repeat, warmup=warmup)


# name, input (c, H, W) or (features,), outputs, dictionary size (None: dense), density
ALEXNET_FAST_FC = [
    ('fc6', (256, 6, 6), 4096, 512, 0.001),
    ('fc7', (4096,), 4096, 512, 0.002),
    ('fc8', (4096,), 1000, None, 1.0),
]


def _consts(*arrays):
    return [mx.nd.array(a, dtype=a.dtype) for a in arrays]


def tiny_calls():
    """name -> (one call on a 1x1 input, the same op as a function of F and x for graphs)."""
    packed = pack_lookup(np.ones((1, 1), np.float32))
    dense_p = _consts(packed.indptr, packed.dict_index, packed.value)
    conv_p = _consts(*pack_lookup(np.ones((1, 1, 1, 1), np.float32))[:4])
    one, w16 = mx.nd.ones((1, 1)), mx.nd.ones((1, 1), dtype='float16')
    bias = mx.nd.ones((1,))
    ops = [
        ('FullyConnected (MXNet)', lambda F, x, c: F.FullyConnected(x, c['w'], c['b'],
                                                                    num_hidden=1)),
        ('relu (MXNet)', lambda F, x, c: F.relu(x)),
        ('lcnn_sparse_dense', lambda F, x, c: F.lcnn_sparse_dense(
            x, c['ip'], c['di'], c['v'], c['b'], num_hidden=1, dictionary_size=1)),
        ('lcnn_sparse_dense, float16 dictionary fused', lambda F, x, c: F.lcnn_sparse_dense(
            x, c['w16'], c['ip'], c['di'], c['v'], c['b'], num_hidden=1, dictionary_size=1,
            with_dictionary=True, weight_dtype='float16')),
        ('lcnn_dense, float16 weight', lambda F, x, c: F.lcnn_dense(
            x, c['w16'], c['b'], num_hidden=1, weight_dtype='float16')),
        # These two take (1, 1, 1, 1) inputs (per_call_costs gives them one).
        ('lcnn_sparse_conv', lambda F, x, c: F.lcnn_sparse_conv(
            x, c['cip'], c['cdi'], c['cko'], c['cv'], c['b'], num_filter=1, dictionary_size=1,
            kernel=(1, 1))),
        ('lcnn_max_pool', lambda F, x, c: F.lcnn_max_pool(x, kernel=(1, 1))),
    ]
    consts = dict(w=one, b=bias, w16=w16, ip=dense_p[0], di=dense_p[1], v=dense_p[2],
                  cip=conv_p[0], cdi=conv_p[1], cko=conv_p[2], cv=conv_p[3])
    return ops, consts


# The constants each op of tiny_calls reads.
_USES = {'FullyConnected (MXNet)': 'w b', 'relu (MXNet)': '',
         'lcnn_sparse_dense': 'ip di v b', 'lcnn_sparse_dense, float16 dictionary fused':
         'w16 ip di v b', 'lcnn_dense, float16 weight': 'w16 b',
         'lcnn_sparse_conv': 'cip cdi cko cv b', 'lcnn_max_pool': ''}


class _Chain(mx.gluon.HybridBlock):
    """``length`` calls of one op in a row (1x1 in, 1x1 out), its constants as graph inputs."""

    def __init__(self, op, consts, length):
        super().__init__()
        self._op, self._length, self._names = op, length, sorted(consts)
        with self.name_scope():
            for name in self._names:
                setattr(self, 'c_' + name, self.params.get_constant(name, consts[name]))

    def hybrid_forward(self, F, x, **kwargs):
        c = {name: kwargs['c_' + name] for name in self._names}
        for _ in range(self._length):
            x = self._op(F, x, c)
        return x


def per_call_costs(repeat, warmup):
    """Rows: per imperative call and per op inside a graph, microseconds, interleaved."""
    ops, consts = tiny_calls()
    inputs = [mx.nd.ones((1, 1, 1, 1) if name.startswith(('lcnn_sparse_conv', 'lcnn_max_pool'))
                         else (1, 1)) for name, _ in ops]
    imperative = medians(time_calls_interleaved(
        [lambda op=op, x=x: op(mx.nd, x, consts) for (_, op), x in zip(ops, inputs)],
        repeat=repeat, warmup=warmup))
    calls = []
    for (name, op), x in zip(ops, inputs):
        for length in (1, 21):
            chain = _Chain(op, {k: consts[k] for k in _USES[name].split()}, length)
            initialize_constants(chain)
            chain.hybridize(static_alloc=True, static_shape=True)
            calls.append(lambda chain=chain, x=x: chain(x))
    with mx.autograd.predict_mode():
        in_graph = medians(time_calls_interleaved(calls, repeat=repeat, warmup=warmup))
    rows = []
    for i, (name, _) in enumerate(ops):
        one, many = in_graph[2 * i], in_graph[2 * i + 1]
        rows.append(dict(op=name, call_us=1e6 * imperative[i], graph_call_us=1e6 * one,
                         per_op_in_graph_us=1e6 * (many - one) / 20))
    return rows


def bench_fc(name, in_shape, units, d, density, batch, repeat, warmup, rng):
    """One AlexNet fc layer: to_inference's float32 form against the fused float32 / float16
    calls (ms, medians of interleaved calls)."""
    x = mx.nd.array(rng.randn(batch, *in_shape))
    bias = mx.nd.array(rng.randn(units) * 0.1)
    flat = x.reshape((batch, -1))
    features = flat.shape[1]
    if d is None:  # the dense classifier
        w = mx.nd.array(rng.randn(units, features) * 0.02)
        w16 = w.astype('float16')
        calls = [lambda: mx.nd.FullyConnected(x, w, bias, num_hidden=units),
                 lambda: mx.nd.lcnn_dense(flat, w, bias, num_hidden=units),
                 lambda: mx.nd.lcnn_dense(flat, w16, bias, num_hidden=units,
                                          weight_dtype='float16')]
        weight_mb = 4e-6 * w.size
    else:
        c = in_shape[0]
        pixels = int(np.prod(in_shape[1:]))
        dictionary = mx.nd.array(rng.randn(d, c) * 0.05)
        d16 = dictionary.astype('float16')
        cols = d * pixels
        lookup = (rng.randn(units, cols) * (rng.rand(units, cols) < density)).astype(np.float32)
        packed = _consts(*[a for a in pack_lookup(lookup)[:4] if a is not None])
        ip, di, _, val = packed
        sparse = dict(num_hidden=units, dictionary_size=cols)
        fused = dict(sparse, with_dictionary=True, pixels=pixels)
        if pixels > 1:  # CoveringConv: 1x1 dictionary conv (MKLDNN), flatten, sparse op
            d4 = mx.nd.array(dictionary.asnumpy().reshape(d, c, 1, 1))  # not a view: MKLDNN
            def unfused():
                s = mx.nd.Convolution(x, d4, kernel=(1, 1), num_filter=d, no_bias=True)
                return mx.nd.lcnn_sparse_dense(s.reshape((batch, -1)), ip, di, val, bias,
                                               **sparse)
        else:
            def unfused():
                s = mx.nd.FullyConnected(x, dictionary, num_hidden=d, no_bias=True)
                return mx.nd.lcnn_sparse_dense(s, ip, di, val, bias, **sparse)
        calls = [unfused,
                 lambda: mx.nd.lcnn_sparse_dense(flat, dictionary, ip, di, val, bias, **fused),
                 lambda: mx.nd.lcnn_sparse_dense(flat, d16, ip, di, val, bias,
                                                 weight_dtype='float16', **fused)]
        weight_mb = 4e-6 * dictionary.size
    ref = calls[0]().asnumpy()
    for call in calls[1:]:
        err = float(np.abs(call().asnumpy() - ref).max())
        assert err <= 1e-2 * (1 + float(np.abs(ref).max())), (name, err)
    t32, f32, f16 = medians(time_calls_interleaved(calls, repeat=repeat, warmup=warmup))
    return dict(layer=name, batch=batch, weight_mb=weight_mb, float32_ms=1e3 * t32,
                fused_float32_ms=1e3 * f32, fused_float16_ms=1e3 * f16,
                speedup_float16=t32 / f16)


def bench_layer(name, c, m, hw, k, s, p, d, density, batch, repeat, warmup, rng, overhead=0.0):
    h, w = hw
    x = mx.nd.array(rng.randn(batch, c, h, w))
    weight = mx.nd.array(rng.randn(m, c, k, k) * 0.05)
    bias = mx.nd.array(rng.randn(m))
    dictionary = mx.nd.array(rng.randn(d, c, 1, 1) * 0.1)
    lookup = rng.randn(m, d, k, k).astype(np.float32) * (rng.rand(m, d, k, k) < density)
    packed = pack_lookup(lookup)
    ops = [mx.nd.array(a, dtype=a.dtype) for a in
           (packed.indptr, packed.dict_index, packed.kernel_offset, packed.value)]
    s_in = mx.nd.Convolution(x, dictionary, kernel=(1, 1), num_filter=d, no_bias=True)
    attrs = dict(num_filter=m, dictionary_size=d, kernel=(k, k), stride=(s, s), pad=(p, p))

    def dense():
        return mx.nd.Convolution(x, weight, bias, kernel=(k, k), stride=(s, s), pad=(p, p),
                                 num_filter=m)

    def dict_conv():
        return mx.nd.Convolution(x, dictionary, kernel=(1, 1), num_filter=d, no_bias=True)

    def lookup_op():
        return mx.nd.lcnn_sparse_conv(s_in, *ops, bias, **attrs)

    def fused_op():
        return mx.nd.lcnn_sparse_conv(x, dictionary, *ops, bias, with_dictionary=True, **attrs)

    out = lookup_op()
    err = float(mx.nd.abs(fused_op() - out).max().asscalar())
    assert err <= 1e-3 * (1 + float(mx.nd.abs(out).max().asscalar())), err
    ho, wo = out.shape[2:]
    t_dense, t_fused, t_dict, t_lookup = medians(time_calls_interleaved(
        [dense, fused_op, dict_conv, lookup_op], repeat=repeat, warmup=warmup))
    macs = lookup_macs(lookup.shape, packed.nnz, x.shape, out.shape)
    dense_macs = macs['dense_macs']
    lookup_stage_macs = packed.nnz * batch * ho * wo  # the useful work of the lookup op alone
    ratio = t_dense / t_fused
    mac_ratio = dense_macs / float(macs['macs'])
    return dict(layer=name, batch=batch, density=packed.nnz / float(lookup.size), nnz=packed.nnz,
                dense_ms=1e3 * t_dense, lcnn_ms=1e3 * t_fused, dict_ms=1e3 * t_dict,
                lookup_ms=1e3 * t_lookup, speedup_unfused=t_dense / (t_dict + t_lookup),
                dense_gflops=2e-9 * dense_macs / t_dense,
                lookup_gflops=2e-9 * lookup_stage_macs / t_lookup,
                kernel_gflops=2e-9 * lookup_stage_macs / max(t_lookup - overhead, 1e-9),
                speedup=ratio, mac_ratio=mac_ratio, efficiency=ratio / mac_ratio)


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--repeat', type=int, default=200)
    parser.add_argument('--warmup', type=int, default=20)
    parser.add_argument('--layers', nargs='*', default=None, help='subset, e.g. conv1 conv3 fc8')
    parser.add_argument('--json', default=None, help='also write the rows to this file')
    parser.add_argument('--out', default=os.path.join(here, 'results', 'op_kernels'),
                        help='results path without extension (.md and .json are written)')
    args = parser.parse_args(argv)
    rng = np.random.RandomState(0)
    lines = []

    def emit(text=''):
        print(text)
        lines.append(text)
        sys.stdout.flush()

    machine = machine_summary()
    overhead = call_overhead(args.repeat, args.warmup)
    emit('OMP_NUM_THREADS=%s MXNET_ENGINE_TYPE=%s batch=%d, median of %d runs; fixed cost of '
         'one lcnn_sparse_conv call: %.1f us'
         % (os.environ['OMP_NUM_THREADS'], os.environ['MXNET_ENGINE_TYPE'], args.batch,
            args.repeat, 1e6 * overhead))
    emit()
    header = ('layer', 'density', 'dense ms', 'dense GF/s', 'lcnn ms', 'dict + lookup ms',
              'lookup GF/s', 'kernel GF/s', 'speedup', 'unfused', 'MAC ratio', 'realised')
    emit('| ' + ' | '.join(header) + ' |')
    emit('|' + '---|' * len(header))
    rows = []
    for spec in ALEXNET_FAST:
        if args.layers and spec[0] not in args.layers:
            continue
        row = bench_layer(*spec, batch=args.batch, repeat=args.repeat, warmup=args.warmup,
                          rng=rng, overhead=overhead)
        rows.append(row)
        emit('| %s | %.3f | %.3f | %.1f | %.3f | %.3f + %.3f | %.1f | %.1f | %.1fx | %.1fx '
             '| %.1fx | %.0f%% |' % (
                 row['layer'], row['density'], row['dense_ms'], row['dense_gflops'],
                 row['lcnn_ms'], row['dict_ms'], row['lookup_ms'], row['lookup_gflops'],
                 row['kernel_gflops'], row['speedup'], row['speedup_unfused'],
                 row['mac_ratio'], 100 * row['efficiency']))
    emit()
    emit('Fully connected layers of LCNN-fast (batch %d): float32 = what to_inference builds '
         'with float32 weights (MKLDNN dictionary conv / FullyConnected, then the sparse op; '
         'fc8 MXNet FullyConnected), fused = one lcnn_sparse_dense (fc8: lcnn_dense) call with '
         'the dictionary (weight) stored as float32 / float16. Weight MB = float32 dictionary '
         '(fc8: weight).' % args.batch)
    emit()
    emit('| layer | weight MB | float32 ms | fused float32 ms | fused float16 ms | '
         'float16 speedup |')
    emit('|---|---|---|---|---|---|')
    fc_rows = []
    for spec in ALEXNET_FAST_FC:
        if args.layers and spec[0] not in args.layers:
            continue
        row = bench_fc(*spec, batch=args.batch, repeat=args.repeat, warmup=args.warmup,
                       rng=rng)
        fc_rows.append(row)
        emit('| %s | %.1f | %.3f | %.3f | %.3f | %.2fx |' % (
            row['layer'], row['weight_mb'], row['float32_ms'], row['fused_float32_ms'],
            row['fused_float16_ms'], row['speedup_float16']))
    emit()
    emit('Per-call fixed cost on a 1x1 input (us): one imperative call; one hybridized graph '
         'of the op (the CachedOp call); and per op inside a graph (chain of 21 minus chain '
         'of 1, over 20).')
    emit()
    emit('| op | imperative call us | graph of 1 op us | per op in a graph us |')
    emit('|---|---|---|---|')
    call_rows = per_call_costs(args.repeat, args.warmup)
    for row in call_rows:
        emit('| %s | %.1f | %.1f | %.1f |' % (row['op'], row['call_us'], row['graph_call_us'],
                                              row['per_op_in_graph_us']))
    result = dict(conv=rows, fc=fc_rows, per_call=call_rows)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=1)
    if args.out:
        command = ' '.join(['.venv/bin/python', 'benchmarks/bench_op_kernels.py'] +
                           list(sys.argv[1:] if argv is None else argv))
        when = datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC')
        end_load = machine_summary().split('load average ')[-1]
        with open(args.out + '.json', 'w') as f:
            json.dump(dict(command=command, date=when, machine=machine, end_load=end_load,
                           **result), f, indent=1)
        with open(args.out + '.md', 'w') as f:
            f.write('`%s`\n\n%s; %s at the start, %s at the end\n\n%s\n'
                    % (command, when, machine, end_load, '\n'.join(lines)))
        print('\nwrote %s.md and %s.json' % (args.out, args.out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
