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

    python benchmarks/bench_op_kernels.py [--batch 1] [--repeat 200] [--json out.json]
"""
import os
import sys

# Set before mxnet is imported: OpenMP reads its thread count once.
os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('MXNET_ENGINE_TYPE', 'NaiveEngine')

import argparse  # noqa: E402
import json  # noqa: E402

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import gluon_lcnn  # noqa: E402,F401  (loads the operator library)
from gluon_lcnn.flops import lookup_macs  # noqa: E402
from gluon_lcnn.nn.sparse import pack_lookup  # noqa: E402
from gluon_lcnn.timing import medians, time_call, time_calls_interleaved  # noqa: E402

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
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--repeat', type=int, default=200)
    parser.add_argument('--warmup', type=int, default=20)
    parser.add_argument('--layers', nargs='*', default=None, help='subset, e.g. conv1 conv3')
    parser.add_argument('--json', default=None, help='also write the rows to this file')
    args = parser.parse_args(argv)
    rng = np.random.RandomState(0)
    rows = []
    overhead = call_overhead(args.repeat, args.warmup)
    print('OMP_NUM_THREADS=%s MXNET_ENGINE_TYPE=%s batch=%d, median of %d runs; fixed cost of '
          'one lcnn_sparse_conv call: %.1f us'
          % (os.environ['OMP_NUM_THREADS'], os.environ['MXNET_ENGINE_TYPE'], args.batch,
             args.repeat, 1e6 * overhead))
    header = ('layer', 'density', 'dense ms', 'dense GF/s', 'lcnn ms', 'dict + lookup ms',
              'lookup GF/s', 'kernel GF/s', 'speedup', 'unfused', 'MAC ratio', 'realised')
    print('| ' + ' | '.join(header) + ' |')
    print('|' + '---|' * len(header))
    for spec in ALEXNET_FAST:
        if args.layers and spec[0] not in args.layers:
            continue
        row = bench_layer(*spec, batch=args.batch, repeat=args.repeat, warmup=args.warmup,
                          rng=rng, overhead=overhead)
        rows.append(row)
        print('| %s | %.3f | %.3f | %.1f | %.3f | %.3f + %.3f | %.1f | %.1f | %.1fx | %.1fx '
              '| %.1fx | %.0f%% |' % (
                  row['layer'], row['density'], row['dense_ms'], row['dense_gflops'],
                  row['lcnn_ms'], row['dict_ms'], row['lookup_ms'], row['lookup_gflops'],
                  row['kernel_gflops'], row['speedup'], row['speedup_unfused'],
                  row['mac_ratio'], 100 * row['efficiency']))
        sys.stdout.flush()
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
