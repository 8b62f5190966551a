#!/usr/bin/env python
"""Train a gluon-lcnn model (dense or LCNN) on ImageNet-style RecordIO data with Horovod.

    horovodrun -np 4 -H localhost:4 python train_scripts/train_imagenet.py \
        --model alexnet_lcnn_fast --rec-train train.rec --rec-train-idx train.idx \
        --rec-val val.rec --rec-val-idx val.idx --batch-size 64 --lr 0.05 --l1-lambda 1e-4

Every worker reads its own part of the records, gradients are averaged with Horovod's
DistributedTrainer, the learning rate is ``--lr`` times the number of workers with a linear
warm-up, metrics are summed over workers before they are printed, and rank 0 writes an atomic
checkpoint per epoch (``--resume`` continues from it). Without horovodrun (or without Horovod
installed) the same code runs as one process. ``--dataset fashion-mnist`` swaps the RecordIO
input for Fashion-MNIST (see train_fashion_mnist.py); ``--synthetic`` feeds random tensors.
"""
import argparse

import mxnet as mx
import numpy as np
from mxnet import gluon

import gluon_lcnn
from gluon_lcnn import training
from gluon_lcnn.nn import choose_forms, density_report


def parse_args(argv=None, defaults=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    training.add_training_arguments(p)
    if defaults:
        p.set_defaults(**defaults)
    return training.check_training_args(p, p.parse_args(argv))


def build_net(args):
    kwargs = training.parse_model_args(args.model_arg)
    kwargs.setdefault('classes', args.num_classes)
    if args.l1_lambda is not None:
        kwargs['l1_lambda'] = args.l1_lambda
    if args.initial_sparsity is not None:
        kwargs['initial_sparsity'] = args.initial_sparsity
    if args.lookup_form != 'auto':
        kwargs['form'] = args.lookup_form
    return gluon_lcnn.get_model(args.model, **kwargs)


def _accuracy_name(args):
    # --holdout evaluates on held-out training images, which must not pass for test accuracy.
    return 'held-out accuracy' if args.holdout else 'test accuracy'


def main(argv=None, defaults=None):
    args = parse_args(argv, defaults)
    hvd = training.init_horovod(enabled=not args.no_horovod)
    rank, size = hvd.rank(), hvd.size()

    log = training.setup_logging(rank)
    ctx = mx.gpu(hvd.local_rank()) if mx.context.num_gpus() > 0 else mx.cpu()
    if args.dtype == 'float16' and ctx.device_type != 'gpu':
        raise ValueError('--dtype float16 needs a GPU (MXNet has no float16 convolutions on CPU)')
    mx.random.seed(args.seed + rank)
    np.random.seed(args.seed + rank)

    if args.params:
        # A file in a training run's save directory must still match the SHA-256 its
        # checkpoint.json recorded. The lookup threshold is not stored with the parameters
        # either: it comes from the same checkpoint.json.
        try:
            meta = training.verify_params(args.params)
        except training.CheckpointError as err:
            raise SystemExit('error: --params: %s' % err) from None
        if meta is not None and args.initial_sparsity is None:
            args.initial_sparsity = meta.get('args', {}).get('initial_sparsity')
    net = build_net(args)
    net.initialize(mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2), ctx=ctx)
    # One forward pass settles every deferred shape (lookup dictionaries, dense inputs), so all
    # parameters exist before they are loaded, broadcast or counted.
    net(mx.nd.zeros((1,) + args.data_shape, ctx=ctx))
    if args.params:
        try:
            training.load_params_file(net, args.params, ctx=ctx)
        except training.CheckpointError as err:
            raise SystemExit('error: --params: %s' % err) from None
    if args.benchmark:
        from gluon_lcnn import flops
        result = flops.profile(net, (1,) + args.data_shape)
        log.info(result.table())
        t = result.totals
        log.info('%s at %s: %.2f M dense-equivalent MACs, %.2f M MACs (%.2fx)'
                 % (args.model, 'x'.join(map(str, args.data_shape)), t['dense_macs'] / 1e6,
                    t['macs'] / 1e6, t['speedup']))
        return result
    if args.dtype == 'float16':
        net.cast('float16')
    forms = list(choose_forms(net, args.batch_size).values())
    if forms:
        log.info('lookup layers: %d composed, %d factored (--lookup-form %s, batch %d)'
                 % (forms.count('composed'), forms.count('factored'), args.lookup_form,
                    args.batch_size))
    if not args.no_hybridize:
        net.hybridize(static_alloc=True)

    train_data, val_data = training.get_data(args, hvd, ctx)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    if args.test_only:
        val = training.evaluate(net, val_data, ctx, hvd, loss_fn, args.dtype)
        log.info('test-only %s: top-1 %.6f top-5 %.6f loss %.4f on %d images'
                 % (args.params, val['top1'], val['top5'], val['loss'], val['count']))
        log.info('lookup density %s', training.format_density(density_report(net)))
        log.info('%s: %.4f' % (_accuracy_name(args), val['top1']))
        return val

    history = training.fit(net, args, hvd, ctx, train_data, val_data, log=log)
    log.info('%s: %.4f' % (_accuracy_name(args), history[-1]['val_top1']))
    return history


if __name__ == '__main__':
    main()
