#!/usr/bin/env python
"""The main job end to end on real data (what `make demo` runs).

1. trains a LeNet-LCNN on Fashion-MNIST with the project's training script (L1-driven sparsity),
2. prints its test accuracy, per-layer lookup density and MACs against the dense twin,
3. converts it to the sparse inference graph (deploy.to_inference), checks the accuracy is
   unchanged and measures latency against the dense twin in this same process.

    python tools/demo.py [--model lenet_lcnn_fast] [--epochs 2] [--out runs/demo]
"""
import argparse
import os
import subprocess
import sys
import time

import mxnet as mx
import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
root = os.path.dirname(here)

import gluon_lcnn  # noqa: E402
from gluon_lcnn import compare, deploy, flops, timing  # noqa: E402
from gluon_lcnn.data import load_fashion_mnist  # noqa: E402
from gluon_lcnn.training import load_checkpoint, parse_model_args, small_input_args  # noqa: E402


def accuracy(net, x, y, batch=1000):
    correct = 0
    for i in range(0, len(x), batch):
        pred = net(mx.nd.array(x[i:i + batch])).argmax(axis=1).asnumpy()
        correct += int((pred == y[i:i + batch]).sum())
    return correct / float(len(x))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='lenet_lcnn_fast')
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--l1-lambda', type=float, default=2.0)
    parser.add_argument('--out', default=os.path.join(root, 'runs', 'demo'))
    args = parser.parse_args()

    print('== 1. train %s on Fashion-MNIST (%d epochs, l1_lambda=%g)'
          % (args.model, args.epochs, args.l1_lambda), flush=True)
    start = time.time()
    subprocess.check_call([sys.executable, os.path.join(root, 'train_scripts', 'train_fashion_mnist.py'),
                           '--model', args.model, '--num-epochs', str(args.epochs),
                           '--l1-lambda', str(args.l1_lambda), '--save-dir', args.out,
                           '--no-progress'])
    print('training took %.0f s' % (time.time() - start))

    model_args = parse_model_args(small_input_args(args.model))
    net = build_model_from(args.model, model_args)
    net.load_parameters(load_checkpoint(args.out)['params'], ctx=mx.cpu())
    twin_name = compare.dense_twin_name(args.model)
    twin = build_model_from(twin_name, model_args)
    shape = (1, 1, 28, 28)

    print('\n== 2. the trained LCNN')
    x_test, y_test = load_fashion_mnist(train=False)
    acc = accuracy(net, x_test, y_test)
    print('test accuracy (training graph): %.4f' % acc)
    for name, value in gluon_lcnn.nn.density_report(net).items():
        print('  density %-28s %.4f' % (name, value))
    lcnn_profile = flops.profile(net, shape)
    dense_macs = flops.profile(twin, shape).totals['macs']
    print(lcnn_profile.table())
    print('MACs per image: dense twin %s %.2f M, LCNN %.2f M -> %.1fx fewer'
          % (twin_name, dense_macs / 1e6, lcnn_profile.totals['macs'] / 1e6,
             dense_macs / lcnn_profile.totals['macs']))

    print('\n== 3. sparse inference graph vs the dense twin (same process)')
    fast = deploy.to_inference(net, input_shape=shape)
    fast_acc = accuracy(fast, x_test, y_test)
    print('test accuracy (inference graph): %.4f (training graph %.4f)' % (fast_acc, acc))
    dense = deploy.to_inference(twin, input_shape=shape, choose='dense')
    for batch in (1, 32):
        x = mx.nd.array(np.random.RandomState(0).randn(batch, *shape[1:]).astype('float32'))
        t_dense, t_lcnn = timing.medians(timing.time_blocks_interleaved([dense, fast], x,
                                                                        repeat=200))
        print('batch %2d: dense twin %.3f ms, LCNN %.3f ms -> measured %.2fx (MAC ratio %.1fx), '
              '%d threads' % (batch, t_dense * 1e3, t_lcnn * 1e3, t_dense / t_lcnn,
                              dense_macs / lcnn_profile.totals['macs'],
                              int(os.environ.get('OMP_NUM_THREADS', os.cpu_count()))))
    if abs(fast_acc - acc) > 0.002:
        sys.exit('inference graph accuracy differs from the training graph')


def build_model_from(name, model_args):
    net = gluon_lcnn.get_model(name, classes=10, **model_args)
    net.initialize(mx.init.Xavier(), ctx=mx.cpu())
    net(mx.nd.zeros((1, 1, 28, 28)))
    return net


if __name__ == '__main__':
    main()
