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
import logging
import os
import sys
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from tqdm import tqdm

import gluon_lcnn
from gluon_lcnn import training
from gluon_lcnn.data import FashionMNISTBatches, RecordBatches, SyntheticBatches
from gluon_lcnn.nn import choose_forms, density_report, l1_penalty


def parse_args(argv=None, defaults=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--model', default='alexnet_lcnn_fast', help='name from gluon_lcnn.list_models()')
    p.add_argument('--model-arg', action='append', default=[], metavar='KEY=VALUE',
                   help='extra constructor argument, e.g. thumbnail=True (repeatable)')
    p.add_argument('--dataset', default='rec', choices=['rec', 'fashion-mnist'])
    p.add_argument('--rec-train', help='training .rec file')
    p.add_argument('--rec-train-idx', help='its .idx file')
    p.add_argument('--rec-val', help='validation .rec file')
    p.add_argument('--rec-val-idx', help='its .idx file')
    p.add_argument('--data-root', default=None, help='Fashion-MNIST folder (idx .gz files)')
    p.add_argument('--train-limit', type=int, default=0,
                   help='Fashion-MNIST: train on the first N images only (0: all)')
    p.add_argument('--augment', default='imagenet', choices=['imagenet', 'crop', 'none'],
                   help='training augmentation (Fashion-MNIST: anything but none = mirror)')
    p.add_argument('--val-resize', type=int, default=0,
                   help='RecordIO validation: shorter side before the centre crop (0: as packed)')
    p.add_argument('--data-shape', default='3,224,224', help='channels,height,width')
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--batch-size', type=int, default=64, help='per worker')
    p.add_argument('--num-epochs', type=int, default=90)
    p.add_argument('--lr', type=float, default=0.025,
                   help='learning rate for one worker; multiplied by the number of workers')
    p.add_argument('--warmup-epochs', type=float, default=5.0,
                   help='linear warm-up from ~0 to the scaled learning rate')
    p.add_argument('--lr-mode', default='cosine', choices=['step', 'cosine', 'poly'])
    p.add_argument('--lr-decay', type=float, default=0.1, help='factor per step (step mode)')
    p.add_argument('--lr-decay-epochs', default='30,60,80', help='epochs of the steps')
    p.add_argument('--lr-power', type=float, default=2.0, help='exponent (poly mode)')
    p.add_argument('--optimizer', default='nag', choices=['sgd', 'nag'])
    p.add_argument('--momentum', type=float, default=0.9)
    p.add_argument('--wd', type=float, default=1e-4, help='weight decay')
    p.add_argument('--l1-lambda', type=float, default=None,
                   help='L1 pull on lookup entries (default: the model preset)')
    p.add_argument('--initial-sparsity', type=float, default=None,
                   help='lookup threshold = s / sqrt(kh*kw*d) (default: the model preset)')
    p.add_argument('--grad-accumulation', type=int, default=1,
                   help='micro-batches summed per optimizer step')
    p.add_argument('--dtype', default='float32', choices=['float32', 'float16'],
                   help='float16 needs a GPU')
    p.add_argument('--fp16-allreduce', action='store_true',
                   help="compress gradients to float16 for the allreduce (Horovod's fp16 "
                        "compression)")
    p.add_argument('--lookup-form', default='auto', choices=['auto', 'factored', 'composed'],
                   help='how lookup layers compute in training (auto: cheaper by MAC count)')
    p.add_argument('--data-nthreads', type=int, default=4, help='decoding threads per worker')
    p.add_argument('--save-dir', default='checkpoints')
    p.add_argument('--keep-checkpoints', type=int, default=2)
    p.add_argument('--resume', action='store_true',
                   help='continue from the last checkpoint in --save-dir')
    p.add_argument('--test-only', action='store_true', help='evaluate --params and exit')
    p.add_argument('--params', default=None, help='parameters for --test-only / --benchmark')
    p.add_argument('--benchmark', action='store_true',
                   help='print the per-layer MAC table (gluon_lcnn.flops) and exit')
    p.add_argument('--synthetic', action='store_true', help='random data, for throughput')
    p.add_argument('--synthetic-batches', type=int, default=20, help='per epoch')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--no-hybridize', action='store_true')
    p.add_argument('--no-horovod', action='store_true', help='one process, even if installed')
    p.add_argument('--no-progress', action='store_true', help='no tqdm bar')
    p.add_argument('--debug-digest', action='store_true',
                   help='every rank writes a SHA-256 of its final parameters to --save-dir')
    if defaults:
        p.set_defaults(**defaults)
    args = p.parse_args(argv)
    args.data_shape = tuple(int(v) for v in args.data_shape.split(','))
    if len(args.data_shape) != 3:
        p.error('--data-shape must be channels,height,width, got %r' % (args.data_shape,))
    if args.grad_accumulation < 1:
        p.error('--grad-accumulation must be >= 1')
    if args.test_only and not args.params:
        p.error('--test-only needs --params FILE')
    if args.keep_checkpoints < 1:
        # 0 would delete the checkpoint just written (and a negative count, all of them).
        p.error('--keep-checkpoints must be >= 1 (2 or more keep an earlier epoch to fall '
                'back to if the newest is corrupt), got %d' % args.keep_checkpoints)
    args.lr_decay_epochs = [float(e) for e in args.lr_decay_epochs.split(',') if e.strip()]
    return args


def get_data(args, hvd, ctx):
    """(train, val) iterables of (data, label, num_valid), each worker's own share."""
    rank, size = hvd.rank(), hvd.size()
    if args.synthetic:
        make = lambda n: SyntheticBatches(args.data_shape, args.batch_size,  # noqa: E731
                                          args.num_classes, n, ctx=ctx, seed=args.seed + rank)
        return make(args.synthetic_batches), make(2)
    if args.dataset == 'fashion-mnist':
        if args.data_shape != (1, 28, 28) or args.num_classes != 10:
            raise ValueError('Fashion-MNIST is 10 classes of 1x28x28: pass --data-shape 1,28,28 '
                             '--num-classes 10')
        root = dict(root=args.data_root) if args.data_root else {}
        train = FashionMNISTBatches(train=True, batch_size=args.batch_size, num_parts=size,
                                    part_index=rank, seed=args.seed, limit=args.train_limit,
                                    mirror=args.augment != 'none', **root)
        val = FashionMNISTBatches(train=False, batch_size=max(args.batch_size, 256),
                                  num_parts=size, part_index=rank, **root)
        return train, val
    missing = [f for f in ('rec_train', 'rec_train_idx', 'rec_val', 'rec_val_idx')
               if not getattr(args, f)]
    if missing:
        raise ValueError('RecordIO training needs %s (or --synthetic / --dataset fashion-mnist)'
                         % ', '.join('--' + m.replace('_', '-') for m in missing))
    common = dict(data_shape=args.data_shape, batch_size=args.batch_size, num_parts=size,
                  part_index=rank, num_threads=args.data_nthreads, seed=args.seed)
    train = RecordBatches(args.rec_train, args.rec_train_idx, train=True, augment=args.augment,
                          **common)
    val = RecordBatches(args.rec_val, args.rec_val_idx, train=False, val_resize=args.val_resize,
                        **common)
    return train, val


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


def setup_logging(rank):
    """The script's logger: plain lines on stdout, INFO and up on rank 0, WARNING and up on the
    other ranks (rank 0 reports for all: metrics are summed over workers first)."""
    log = logging.getLogger('train_imagenet')
    for handler in list(log.handlers):   # main() may run again in one process (tests)
        log.removeHandler(handler)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter('%(message)s'))
    log.addHandler(handler)
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.propagate = False
    return log


def write_digest(save_dir, name, net):
    os.makedirs(save_dir, exist_ok=True)
    with open(os.path.join(save_dir, name), 'w') as f:
        f.write(training.params_digest(net) + '\n')


def main(argv=None, defaults=None):
    args = parse_args(argv, defaults)
    hvd = training.init_horovod(enabled=not args.no_horovod)
    rank, size = hvd.rank(), hvd.size()

    log = setup_logging(rank)
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

    train_data, val_data = get_data(args, hvd, ctx)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    if args.test_only:
        val = training.evaluate(net, val_data, ctx, hvd, loss_fn, args.dtype)
        log.info('test-only %s: top-1 %.6f top-5 %.6f loss %.4f on %d images'
                 % (args.params, val['top1'], val['top5'], val['loss'], val['count']))
        log.info('lookup density %s', training.format_density(density_report(net)))
        log.info('test accuracy: %.4f' % val['top1'])
        return val

    accum = args.grad_accumulation
    updates_per_epoch = len(train_data) // accum
    if updates_per_epoch < 1:
        raise ValueError('%d batches per epoch are fewer than --grad-accumulation %d'
                         % (len(train_data), accum))
    if accum > 1:
        # Sum the micro-batches' gradients; step(batch * accum) then averages them, which is
        # also the convention the lookup layers' L1 pull is scaled for.
        for param in net.collect_params().values():
            if param.grad_req != 'null':
                param.grad_req = 'add'
    # The optimizer asks the schedule for the rate of every update, by its update count.
    schedule = training.WarmupSchedule(
        steps_per_epoch=updates_per_epoch, base_lr=args.lr * size, num_epochs=args.num_epochs,
        warmup_epochs=args.warmup_epochs, mode=args.lr_mode, decay_epochs=args.lr_decay_epochs,
        decay_factor=args.lr_decay, power=args.lr_power)
    optimizer_params = dict(learning_rate=args.lr * size, lr_scheduler=schedule, wd=args.wd,
                            momentum=args.momentum, multi_precision=args.dtype == 'float16')
    compression = hvd.Compression.fp16 if args.fp16_allreduce else hvd.Compression.none
    trainer = hvd.DistributedTrainer(net.collect_params(), args.optimizer, optimizer_params,
                                     compression=compression)

    start_epoch, history = 0, []
    if args.resume:
        # Every worker reads the checkpoint (a shared file system, as for the data) and checks
        # its files against the SHA-256 sums in checkpoint.json; a corrupt newest epoch is
        # skipped for the newest intact one kept (--keep-checkpoints >= 2).
        try:
            meta = training.load_checkpoint(args.save_dir)
            if meta is not None:
                for problem in meta['skipped'] if rank == 0 else ():
                    # Every rank checks the same files: one warning, from rank 0.
                    log.warning('warning: --resume: skipping %s', problem)
                training.load_params_file(net, meta['params'], ctx=ctx)
                training.load_states_file(trainer, meta['states'])
                # The loaded optimizer keeps its update count but brought the schedule of the
                # run that saved it: this run's options (--num-epochs, ...) decide.
                trainer.optimizer.lr_scheduler = schedule
        except training.CheckpointError as err:
            raise SystemExit('error: --resume: %s' % err) from None
        if meta is None:
            log.info('--resume: no checkpoint in %s, starting from scratch' % args.save_dir)
        else:
            start_epoch, history = meta['epoch'], meta.get('history', [])
            log.info('resuming from %s: continuing at epoch %d', meta['params'], start_epoch + 1)
    training.broadcast_parameters(net, hvd, root_rank=0)

    log.info('%s: %d worker(s) on %s, batch %d x %d x %d, %d updates/epoch, lr %.4g, params %s'
             % (args.model, size, ctx, args.batch_size, accum, size, updates_per_epoch,
                args.lr * size, 'float16' if args.dtype == 'float16' else 'float32'))
    for epoch in range(start_epoch, args.num_epochs):
        train_data.set_epoch(epoch)
        batches = iter(train_data)
        loss_sum = mx.nd.zeros((1,), ctx=ctx)
        correct = mx.nd.zeros((1,), ctx=ctx)
        seen = 0
        bar = tqdm(total=updates_per_epoch, desc='epoch %d/%d' % (epoch + 1, args.num_epochs),
                   disable=rank != 0 or args.no_progress, mininterval=2, leave=False)
        tic = time.time()
        for i in range(updates_per_epoch):
            for _ in range(accum):
                data, label, num_valid = next(batches)
                data = data.as_in_context(ctx).astype(args.dtype, copy=False)
                label = label.as_in_context(ctx)
                with autograd.record():
                    output = net(data).astype('float32', copy=False)
                    loss = loss_fn(output, label)
                    # The lookup layers' L1 pull, once per sample (see nn.l1_penalty).
                    total = loss + l1_penalty(net, ctx) if forms else loss
                total.backward()
                loss_sum += loss.sum()
                correct += training.topk_correct(output, label, num_valid, 1)
                seen += num_valid
            trainer.step(args.batch_size * accum)
            lr = trainer.learning_rate   # the rate of this update
            if accum > 1:
                net.collect_params().zero_grad()
            if i % 20 == 0 and rank == 0 and not args.no_progress:
                bar.set_postfix(loss='%.4f' % (loss_sum.asscalar() / seen), lr='%.4g' % lr)
            bar.update(1)
        bar.close()
        mx.nd.waitall()
        train_time = time.time() - tic
        training.average_aux_states(net, hvd, tag='epoch%d' % epoch)
        if args.debug_digest:   # replicas as training left them, before the re-sync below
            write_digest(args.save_dir, 'digest-presync-rank%d.txt' % rank, net)
        training.broadcast_parameters(net, hvd, root_rank=0, tag='epoch%d' % epoch)
        train = training.allreduce_sums(
            hvd, dict(loss=loss_sum.asscalar(), correct=correct.asscalar(), count=seen,
                      time=train_time), name='train.%d' % epoch)
        val = training.evaluate(net, val_data, ctx, hvd, loss_fn, args.dtype,
                                name='val.%d' % epoch)
        density = density_report(net)
        record = dict(epoch=epoch + 1, lr=lr, train_loss=train['loss'] / train['count'],
                      train_top1=train['correct'] / train['count'], val_top1=val['top1'],
                      val_top5=val['top5'], val_loss=val['loss'], val_count=val['count'],
                      epoch_time=train['time'] / size,
                      samples_per_sec=train['count'] / (train['time'] / size),
                      density=density.get('__total__'),
                      layer_density={k: v for k, v in density.items() if k != '__total__'})
        history.append(record)
        log.info('[epoch %d/%d] train loss %.4f top-1 %.4f | val top-1 %.6f top-5 %.6f | '
                 '%.1f samples/s | %.1f s | lr %.4g'
                 % (epoch + 1, args.num_epochs, record['train_loss'], record['train_top1'],
                    val['top1'], val['top5'], record['samples_per_sec'], record['epoch_time'], lr))
        log.info('[epoch %d/%d] throughput %.1f samples/s per worker, %.1f samples/s total '
                 '(%d worker(s))' % (epoch + 1, args.num_epochs, record['samples_per_sec'] / size,
                                     record['samples_per_sec'], size))
        if density:
            log.info('[epoch %d/%d] lookup density %s'
                     % (epoch + 1, args.num_epochs, training.format_density(density)))
        if rank == 0:
            training.save_checkpoint(args.save_dir, epoch + 1, net, trainer,
                                     dict(model=args.model, history=history,
                                          workers=size, args=vars(args)),
                                     keep=args.keep_checkpoints)
            training.write_json_atomic(os.path.join(args.save_dir, 'metrics.json'),
                                       dict(model=args.model, workers=size, history=history))

    if args.debug_digest:
        write_digest(args.save_dir, 'digest-rank%d.txt' % rank, net)
    if start_epoch < args.num_epochs:
        top1 = history[-1]['val_top1']
    else:   # nothing left to train: report the checkpoint as it is
        top1 = training.evaluate(net, val_data, ctx, hvd, loss_fn, args.dtype)['top1']
    log.info('test accuracy: %.4f' % top1)
    return history


if __name__ == '__main__':
    main()
