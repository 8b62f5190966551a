"""The training loop of train_scripts/train_imagenet.py and ``python -m gluon_lcnn compress``.

``fit(net, args, hvd, ctx, train_data, val_data)`` trains an initialised (and usually
hybridized) net with Horovod's DistributedTrainer: learning rate ``--lr`` times the number of
workers with warm-up, gradient accumulation, the lookup layers' L1 pull in the loss, metrics
summed over workers, one atomic checkpoint per epoch from rank 0 and ``--resume`` from the
newest intact one. ``args`` holds the parsed training flags (``options.py``).

Callbacks let a caller steer training without copying the loop (the compress methods prune or
tighten lookup thresholds as they go). Each is an object with any of:

- ``on_train_begin(trainer, step)``: after a resume (if any) loaded the checkpoint, before the
  first update; ``step`` = updates done so far;
- ``on_step(step)``: right after every optimizer update (``step`` counts from 1);
- ``on_epoch_end(epoch, record)``: after an epoch's validation, before its checkpoint (epoch
  counts from 1; ``record`` is the epoch's history entry, which the callback may extend);
- ``state_dict()`` / ``load_state_dict(state)``: JSON-able state saved in every checkpoint
  (``checkpoint.json``, under ``callbacks``) and given back on ``--resume``.

Every worker runs the callbacks on its own replica; they must act deterministically on the
parameters (identical on every worker after the allreduced update).
"""
import logging
import os
import sys
import time

import mxnet as mx
from mxnet import autograd, gluon
from tqdm import tqdm

from ..nn.lookup import density_report, l1_penalty, lookup_layers
from . import checkpoint as ckpt
from .evaluation import evaluate, topk_correct
from .horovod import allreduce_sums, average_aux_states, broadcast_parameters
from .schedule import WarmupSchedule
from .util import format_density, params_digest

__all__ = ['fit', 'setup_logging', 'write_digest']


def setup_logging(rank, name='train_imagenet'):
    """A logger writing plain lines to stdout: INFO and up on rank 0, WARNING and up on the
    other ranks (rank 0 reports for all: metrics are summed over workers first)."""
    log = logging.getLogger(name)
    for handler in list(log.handlers):   # a command may run again in one process (tests)
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
        f.write(params_digest(net) + '\n')


def _call(callbacks, method, *args):
    for cb in callbacks:
        fn = getattr(cb, method, None)
        if fn is not None:
            fn(*args)


def _callback_states(callbacks):
    return {str(i): cb.state_dict() for i, cb in enumerate(callbacks)
            if hasattr(cb, 'state_dict')}


def fit(net, args, hvd, ctx, train_data, val_data, log=None, callbacks=(), meta=None):
    """Train ``net`` for ``args.num_epochs`` epochs (resuming if ``args.resume``).

    ``meta`` is merged into every checkpoint.json (e.g. what the compress workflow needs to
    rebuild the net). Returns the history: one dict per epoch (losses, accuracies, throughput,
    lookup density), also written to ``args.save_dir``/metrics.json.
    """
    log = log or logging.getLogger('train_imagenet')
    rank, size = hvd.rank(), hvd.size()
    callbacks = list(callbacks)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    has_lookup = bool(lookup_layers(net))
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
    schedule = WarmupSchedule(
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
            loaded = ckpt.load_checkpoint(args.save_dir)
            if loaded is not None:
                for problem in loaded['skipped'] if rank == 0 else ():
                    # Every rank checks the same files: one warning, from rank 0.
                    log.warning('warning: --resume: skipping %s', problem)
                ckpt.load_params_file(net, loaded['params'], ctx=ctx)
                ckpt.load_states_file(trainer, loaded['states'])
                # The loaded optimizer keeps its update count but brought the schedule of the
                # run that saved it: this run's options (--num-epochs, ...) decide.
                trainer.optimizer.lr_scheduler = schedule
        except ckpt.CheckpointError as err:
            raise SystemExit('error: --resume: %s' % err) from None
        if loaded is None:
            log.info('--resume: no checkpoint in %s, starting from scratch' % args.save_dir)
        else:
            start_epoch, history = loaded['epoch'], loaded.get('history', [])
            states = loaded.get('callbacks', {})
            for i, cb in enumerate(callbacks):
                if str(i) in states and hasattr(cb, 'load_state_dict'):
                    cb.load_state_dict(states[str(i)])
            log.info('resuming from %s: continuing at epoch %d', loaded['params'],
                     start_epoch + 1)
    broadcast_parameters(net, hvd, root_rank=0)
    _call(callbacks, 'on_train_begin', trainer, start_epoch * updates_per_epoch)

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
                    total = loss + l1_penalty(net, ctx) if has_lookup else loss
                total.backward()
                loss_sum += loss.sum()
                correct += topk_correct(output, label, num_valid, 1)
                seen += num_valid
            trainer.step(args.batch_size * accum)
            lr = trainer.learning_rate   # the rate of this update
            if accum > 1:
                net.collect_params().zero_grad()
            _call(callbacks, 'on_step', epoch * updates_per_epoch + i + 1)
            if i % 20 == 0 and rank == 0 and not args.no_progress:
                bar.set_postfix(loss='%.4f' % (loss_sum.asscalar() / seen), lr='%.4g' % lr)
            bar.update(1)
        bar.close()
        mx.nd.waitall()
        train_time = time.time() - tic
        average_aux_states(net, hvd, tag='epoch%d' % epoch)
        if args.debug_digest:   # replicas as training left them, before the re-sync below
            write_digest(args.save_dir, 'digest-presync-rank%d.txt' % rank, net)
        broadcast_parameters(net, hvd, root_rank=0, tag='epoch%d' % epoch)
        train = allreduce_sums(
            hvd, dict(loss=loss_sum.asscalar(), correct=correct.asscalar(), count=seen,
                      time=train_time), name='train.%d' % epoch)
        val = evaluate(net, val_data, ctx, hvd, loss_fn, args.dtype, name='val.%d' % epoch)
        density = density_report(net)
        record = dict(epoch=epoch + 1, lr=lr, train_loss=train['loss'] / train['count'],
                      train_top1=train['correct'] / train['count'], val_top1=val['top1'],
                      val_top5=val['top5'], val_loss=val['loss'], val_count=val['count'],
                      epoch_time=train['time'] / size,
                      samples_per_sec=train['count'] / (train['time'] / size),
                      density=density.get('__total__'),
                      layer_density={k: v for k, v in density.items() if k != '__total__'})
        _call(callbacks, 'on_epoch_end', epoch + 1, record)
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
                     % (epoch + 1, args.num_epochs, format_density(density)))
        if rank == 0:
            saved = dict(meta or {}, model=args.model, history=history, workers=size,
                         args=vars(args), callbacks=_callback_states(callbacks))
            ckpt.save_checkpoint(args.save_dir, epoch + 1, net, trainer, saved,
                                 keep=args.keep_checkpoints)
            ckpt.write_json_atomic(os.path.join(args.save_dir, 'metrics.json'),
                                   dict(model=args.model, workers=size, history=history))

    if args.debug_digest:
        write_digest(args.save_dir, 'digest-rank%d.txt' % rank, net)
    if start_epoch >= args.num_epochs and history:
        # Nothing left to train: the last record reports the checkpoint as loaded.
        val = evaluate(net, val_data, ctx, hvd, loss_fn, args.dtype)
        history[-1] = dict(history[-1], val_top1=val['top1'], val_top5=val['top5'])
    return history
