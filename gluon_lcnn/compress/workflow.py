"""Compress a trained dense net: convert, fine-tune, measure (``python -m gluon_lcnn compress``).

    python -m gluon_lcnn compress --model lenet --params dense.params --method lcnn \\
        --target-speedup 4 --data fashion-mnist --epochs 3 --out runs/lenet_lcnn4
    horovodrun -np 2 -H localhost:2 python -m gluon_lcnn compress ... (same flags)

Methods: ``lcnn`` (lookup layers fitted to the weights, then a sparsifying fine-tune,
``compress/lcnn.py``), ``lowrank`` (accnn's kh x 1 + 1 x kw / SVD decomposition with ranks from
equalised energy, ``compress/lowrank.py``), ``prune`` (gradual magnitude pruning to the sparsity
the target needs, ``compress/prune.py``) and ``int8`` (MKLDNN quantization of the dense net,
calibrated on training images; no fine-tune). Every method:

1. builds the zoo model, loads the dense parameters (``--params``) and measures their accuracy;
2. converts (deterministically: ``--resume`` rebuilds the same net) and measures again;
3. fine-tunes with the training loop of train_imagenet.py (every training flag applies:
   ``--lr``, ``--batch-size``, Horovod, checkpoints in OUT/finetune, ``--resume``);
4. writes OUT/compressed.params, OUT/compress.json (what rebuilds the net: ``load_compressed``;
   int8 writes OUT/int8-symbol.json + int8-0000.params instead) and OUT/report.json + report.md: accuracy dense -> converted -> fine-tuned, MAC speed-up
   (dense MACs of the original net / MACs of the compressed one) and the speed-up of
   ``to_inference`` of the compressed net against ``to_inference`` of the dense net, measured
   interleaved in this process at batch 1 and 64 (rank 0 only).
"""
import argparse
import datetime
import json
import os
import sys
import time
import warnings

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet.gluon import nn

from .. import flops, timing
from ..model_zoo import get_model
from ..training import checkpoint as ckpt
from ..training import (FASHION_MNIST_DEFAULTS, add_training_arguments, check_training_args,
                        evaluate, fit, get_data, init_horovod, parse_model_args, setup_logging,
                        small_input_args)
from . import lcnn as lcnn_method

__all__ = ['compress', 'load_compressed', 'remeasure', 'convert', 'measure_speedup',
           'add_arguments', 'run', 'METHODS']

METHODS = ('lcnn', 'lowrank', 'prune', 'int8')
SPEC_FILE = 'compress.json'
# Fine-tuning defaults: a trained net needs a small, short schedule, not a warm-up from scratch.
FINETUNE_DEFAULTS = dict(lr=0.01, warmup_epochs=0.0, num_epochs=3, lr_mode='cosine')
MEASURE_BATCHES = (1, 64)


def add_arguments(parser):
    """The compress options, plus every training flag (fine-tune schedule, Horovod, data)."""
    g = parser.add_argument_group('compress')
    g.add_argument('--method', required=True, choices=METHODS)
    g.add_argument('--target-speedup', type=float, required=True,
                   help='MAC speed-up to reach (dense MACs / compressed MACs), > 1; '
                        'int8 ignores it')
    g.add_argument('--out', required=True, help='output directory (checkpoints, report)')
    g.add_argument('--data', dest='dataset', default=argparse.SUPPRESS,
                   choices=['fashion-mnist', 'rec'],
                   help='training data (default fashion-mnist, rec when --rec-train is given)')
    g.add_argument('--epochs', dest='num_epochs', type=int, default=argparse.SUPPRESS,
                   help='fine-tune epochs (alias of --num-epochs; default %d)'
                        % FINETUNE_DEFAULTS['num_epochs'])
    g.add_argument('--ramp', type=float, default=0.6,
                   help='lcnn / prune: fraction of the fine-tune that sparsifies; the rest '
                        'trains the final support')
    g.add_argument('--calib-batches', type=int, default=4,
                   help='int8: training batches used for calibration')
    g.add_argument('--no-measure', action='store_true',
                   help='skip the measured speed-up (report MACs and accuracy only)')
    add_training_arguments(parser)
    parser.set_defaults(model=None, dataset=None, **FINETUNE_DEFAULTS)
    return parser


def _finish_args(args):
    """Defaults that depend on the data, and the checks argparse cannot do."""
    if not args.model:
        raise ValueError('--model NAME is required (the zoo name of the dense net)')
    if '_lcnn' in args.model:
        raise ValueError('--model %s is an LCNN: compress takes the dense model (%s)'
                         % (args.model, args.model.split('_lcnn')[0]))
    if not args.params:
        raise ValueError('--params FILE is required (the trained dense parameters)')
    if args.method != 'int8' and not args.target_speedup > 1:
        raise ValueError('--target-speedup must be > 1, got %r' % (args.target_speedup,))
    if not 0 < args.ramp <= 1:
        raise ValueError('--ramp must be in (0, 1], got %r' % (args.ramp,))
    if args.dataset is None:
        args.dataset = 'rec' if args.rec_train else 'fashion-mnist'
    if args.dataset == 'fashion-mnist':
        for key in ('data_shape', 'num_classes', 'batch_size', 'augment'):
            if getattr(args, key) == _IMAGENET_DEFAULTS[key]:
                setattr(args, key, FASHION_MNIST_DEFAULTS[key])
        if not args.model_arg:
            args.model_arg = small_input_args(args.model)
    if isinstance(args.data_shape, str):   # parsed flags (not a rebuilt spec): check them
        check_training_args(_RaiseErrors(), args)
    args.params = os.path.abspath(args.params)
    args.save_dir = os.path.join(args.out, 'finetune')
    return args


class _RaiseErrors:
    """Stands in for a parser in check_training_args: a bad flag is a ValueError here."""

    @staticmethod
    def error(message):
        raise ValueError(message)


_IMAGENET_DEFAULTS = dict(data_shape='3,224,224', num_classes=1000, batch_size=64,
                          augment='imagenet')


def _parser():
    return add_arguments(argparse.ArgumentParser(prog='gluon-lcnn compress',
                                                 description=__doc__.split('\n')[0]))


def build_dense(args, ctx):
    """The zoo model of ``args``, initialised, shapes settled, ``--params`` loaded."""
    kwargs = parse_model_args(args.model_arg)
    kwargs.setdefault('classes', args.num_classes)
    net = get_model(args.model, **kwargs)
    net.initialize(mx.init.Xavier(), ctx=ctx)
    net(mx.nd.zeros((1,) + tuple(args.data_shape), ctx=ctx))
    try:
        ckpt.load_params_file(net, args.params, ctx=ctx)
    except ckpt.CheckpointError as err:
        raise ValueError('--params: %s' % err) from None
    return net


def convert(net, method, target_speedup, input_shape, plan=None):
    """(converted net, plan) for ``method``; ``plan`` from an earlier call rebuilds the same net.

    lcnn and lowrank return a new structure initialised from ``net``'s weights (lcnn converts
    ``net`` in place); prune returns ``net`` itself, which the fine-tune prunes gradually
    (``one_shot_prune`` gives the converted-accuracy point).
    """
    if method == 'lcnn':
        plan = plan or dict(layers=lcnn_method.lcnn_plan(net, input_shape, target_speedup))
        return lcnn_method.apply_lcnn_plan(net, plan['layers'], plan.get('thresholds')), plan
    if method == 'lowrank':
        from .lowrank import decomposable_layers, lowrank_ranks, to_lowrank
        # The classifier stays, as in the lcnn plan: few MACs, and the most sensitive layer.
        classifier = [p for p, b in decomposable_layers(net).items() if isinstance(b, nn.Dense)]
        plan = plan or dict(ranks=lowrank_ranks(net, input_shape, target_speedup,
                                                skip=classifier[-1:]))
        return to_lowrank(net, plan['ranks']), plan
    if method == 'prune':
        from .prune import prune_sparsities
        plan = plan or dict(sparsities=prune_sparsities(net, input_shape, target_speedup))
        return net, plan
    raise ValueError('convert: method must be one of lcnn, lowrank, prune; got %r' % (method,))


def _callbacks(method, net, plan, args, steps, log):
    input_shape = (1,) + tuple(args.data_shape)
    if method == 'lcnn':
        return [lcnn_method.LcnnSparsifier(net, plan['layers'], input_shape,
                                           args.target_speedup, steps, args.lr,
                                           momentum=args.momentum, ramp=args.ramp, log=log)]
    if method == 'prune':
        from .prune import GradualPruner, PruningSchedule
        end = max(1, int(round(args.ramp * steps)))
        schedule = PruningSchedule(plan['sparsities'], begin_step=0, end_step=end,
                                   frequency=max(1, end // 20))
        return [_PruningCallback(GradualPruner(net, schedule))]
    return []


class _PruningCallback:
    """A GradualPruner in the training loop: masks from the loaded weights on --resume."""

    def __init__(self, pruner):
        self.pruner = pruner

    def on_train_begin(self, trainer, step):
        if step:
            self.pruner.restore(step)

    def on_step(self, step):
        self.pruner.on_step(step)

    def on_epoch_end(self, epoch, record):
        from .prune import sparsity_report
        record['weight_sparsity'] = sparsity_report(self.pruner.net)


def _quantize(net, train_data, args, ctx):
    from ..quantize import quantize_int8
    batches = []
    for i, (data, _, _) in enumerate(train_data):
        if i >= args.calib_batches:
            break
        batches.append(data.as_in_context(ctx))
    return quantize_int8(net, batches, input_shape=(1,) + tuple(args.data_shape), ctx=ctx)


def measure_speedup(dense, compressed, image_shape, ctx, batches=MEASURE_BATCHES, repeat=20,
                    int8=False):
    """{batch: dict(dense_ms, compressed_ms, speedup)}: ``to_inference`` of both nets (the int8
    net as it is), timed interleaved on the same input in this process."""
    from ..deploy import to_inference
    results = {}
    for batch in batches:
        shape = (batch,) + tuple(image_shape)
        fast_dense = to_inference(dense, shape, ctx=ctx)
        fast = compressed if int8 else to_inference(compressed, shape, ctx=ctx)
        x = mx.nd.random.uniform(shape=shape, ctx=ctx)
        times = timing.medians(timing.time_blocks_interleaved([fast_dense, fast], x,
                                                              repeat=repeat, warmup=3))
        results[batch] = dict(dense_ms=1e3 * times[0], compressed_ms=1e3 * times[1],
                              speedup=times[0] / times[1])
    return results


def load_compressed(out_dir, ctx=None):
    """The fine-tuned compressed net of a ``compress`` run (OUT/compressed.params +
    compress.json), rebuilt from the dense checkpoint it names."""
    spec = json.load(open(os.path.join(out_dir, SPEC_FILE)))
    ctx = ctx or mx.cpu()
    if spec['method'] == 'int8':
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='Cannot decide type')  # of 'data'
            return gluon.SymbolBlock.imports(os.path.join(out_dir, 'int8-symbol.json'),
                                             ['data'], os.path.join(out_dir, 'int8-0000.params'),
                                             ctx=ctx)
    args = _spec_args(spec)
    net, _ = convert(build_dense(args, ctx), spec['method'], spec['target_speedup'],
                     (1,) + args.data_shape, spec['plan'])
    net(mx.nd.zeros((1,) + args.data_shape, ctx=ctx))
    ckpt.load_params_file(net, os.path.join(out_dir, 'compressed.params'), ctx=ctx)
    return net


def _spec_args(spec):
    args = argparse.Namespace(**spec['args'])
    args.data_shape = tuple(args.data_shape)
    return args


def remeasure(out_dir, ctx=None):
    """Time a finished run again (e.g. on a quieter machine): rebuilds the dense and the
    compressed net, replaces the report's ``measured`` figures and rewrites report.json / .md.
    The thread count is the process's (``OMP_NUM_THREADS``)."""
    ctx = ctx or mx.cpu()
    spec = json.load(open(os.path.join(out_dir, SPEC_FILE)))
    with open(os.path.join(out_dir, 'report.json')) as f:
        report = json.load(f)
    args = _spec_args(spec)
    dense = build_dense(args, ctx)
    measured = measure_speedup(dense, load_compressed(out_dir, ctx), args.data_shape, ctx,
                               int8=spec['method'] == 'int8')
    report.update(measured={str(b): m for b, m in measured.items()},
                  measured_date=datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC'),
                  measured_machine=timing.machine_summary(),
                  threads=os.environ.get('OMP_NUM_THREADS', 'default'))
    _write_report(out_dir, report)
    return report


def _accuracy(net, val_data, ctx, hvd, args):
    return evaluate(net, val_data, ctx, hvd, gluon.loss.SoftmaxCrossEntropyLoss(),
                    args.dtype)['top1']


def _write_report(out, report):
    ckpt.write_json_atomic(os.path.join(out, 'report.json'), report)
    acc = report['accuracy']
    rows = ['| method | target | MAC speed-up | measured b1 | measured b64 | dense | converted '
            '| fine-tuned |', '|---|---|---|---|---|---|---|---|']
    measured = report.get('measured') or {}

    def cell(batch):
        m = measured.get(str(batch))
        return ('%.2fx (%.2f / %.2f ms)' % (m['speedup'], m['dense_ms'], m['compressed_ms'])
                if m else '-')
    rows.append('| %s | %s | %.2fx | %s | %s | %.4f | %.4f | %s |' % (
        report['method'], '-' if report['method'] == 'int8' else '%gx' % report['target_speedup'],
        report['mac_speedup'], cell(1), cell(64), acc['dense'], acc['converted'],
        '-' if acc['finetuned'] is None else '%.4f' % acc['finetuned']))
    when = report['date'] + ('; measured again %s (%s)' % (report['measured_date'],
                                                           report['measured_machine'])
                             if 'measured_date' in report else '')
    text = ['# %s: %s of %s' % (os.path.basename(os.path.abspath(out)), report['method'],
                                report['model']), '',
            '`%s`' % report['command'], '',
            '%s; %s; %d worker(s); compute %.0f s. Measured: `to_inference` of each net, '
            'interleaved in one process (%s thread(s)), median.' % (
                when, report['machine'], report['workers'], report['seconds'],
                report['threads']), ''] + rows + ['']
    with open(os.path.join(out, 'report.md'), 'w') as f:
        f.write('\n'.join(text))


def _convert_and_finetune(args, hvd, ctx, log, train_data, val_data, spec, acc):
    """Steps 2-3 for lcnn / lowrank / prune: (fine-tuned net, history); fills ``acc`` and
    ``spec`` (written to OUT/compress.json on rank 0, before and after the fine-tune)."""
    rank = hvd.rank()
    input_shape = (1,) + tuple(args.data_shape)
    spec_path = os.path.join(args.out, SPEC_FILE)
    plan = None
    if args.resume and os.path.isfile(spec_path):
        earlier = json.load(open(spec_path))
        if (earlier['method'], earlier['dense_sha256']) != (args.method, spec['dense_sha256']):
            raise ValueError('--resume: %s is a %s run of another dense checkpoint; use a '
                             'new --out' % (spec_path, earlier['method']))
        plan = earlier['plan']
    net, plan = convert(build_dense(args, ctx), args.method, args.target_speedup,
                        input_shape, plan)
    net(mx.nd.zeros(input_shape, ctx=ctx))
    if args.method == 'prune':
        from .prune import magnitude_prune
        one_shot = build_dense(args, ctx)
        magnitude_prune(one_shot, plan['sparsities'])
        acc['converted'] = _accuracy(one_shot, val_data, ctx, hvd, args)
    else:
        acc['converted'] = _accuracy(net, val_data, ctx, hvd, args)
    log.info('compress %s: converted top-1 %.4f' % (args.method, acc['converted']))
    spec['plan'] = plan
    if rank == 0:
        ckpt.write_json_atomic(spec_path, spec)
    from ..nn.lookup import choose_forms
    choose_forms(net, args.batch_size)
    if not args.no_hybridize:
        net.hybridize(static_alloc=True)
    steps = (len(train_data) // args.grad_accumulation) * args.num_epochs
    callbacks = _callbacks(args.method, net, plan, args, steps, log)
    history = fit(net, args, hvd, ctx, train_data, val_data, log=log, callbacks=callbacks,
                  meta=dict(compress=dict(method=args.method, plan=plan)))
    for cb in callbacks:   # the final support (thresholds) belongs to the compressed net
        if hasattr(cb, 'thresholds'):
            plan = dict(plan, thresholds=cb.thresholds())
    spec['plan'] = plan
    acc['finetuned'] = history[-1]['val_top1'] if history else acc['converted']
    if rank == 0:
        net.save_parameters(os.path.join(args.out, 'compressed.params'))
        ckpt.write_json_atomic(spec_path, spec)
    return net, history


def run(args):
    """The compress command (all ranks under horovodrun); returns the report dict on rank 0."""
    tic = time.time()
    args = _finish_args(args)
    hvd = init_horovod(enabled=not args.no_horovod)
    rank = hvd.rank()
    log = setup_logging(rank, 'gluon_lcnn.compress')
    ctx = mx.cpu()
    mx.random.seed(args.seed)
    np.random.seed(args.seed)
    input_shape = (1,) + tuple(args.data_shape)
    os.makedirs(args.out, exist_ok=True)
    spec_path = os.path.join(args.out, SPEC_FILE)
    dense_sha = ckpt.file_sha256(args.params)

    dense = build_dense(args, ctx)
    train_data, val_data = get_data(args, hvd, ctx)
    acc = dict(dense=_accuracy(dense, val_data, ctx, hvd, args), converted=None, finetuned=None)
    log.info('compress %s: dense %s top-1 %.4f' % (args.method, args.model, acc['dense']))
    dense_macs = flops.profile(dense, input_shape).totals['dense_macs']

    spec = dict(method=args.method, target_speedup=args.target_speedup, model=args.model,
                dense_sha256=dense_sha, plan=None, args=_jsonable(vars(args)))
    if args.method == 'int8':
        net, spec['plan'] = _quantize(dense, train_data, args, ctx), {}
        acc['converted'] = _accuracy(net, val_data, ctx, hvd, args)
        history = []
        if rank == 0:   # a quantized graph: symbol + params, for SymbolBlock.imports
            net.export(os.path.join(args.out, 'int8'))
            ckpt.write_json_atomic(spec_path, spec)
    else:
        net, history = _convert_and_finetune(args, hvd, ctx, log, train_data, val_data, spec,
                                             acc)
    if rank != 0:
        return None
    if args.method == 'int8':
        mac_speedup = 1.0
    else:
        mac_speedup = dense_macs / float(flops.profile(net, input_shape).totals['macs'])
    measured = None
    if not args.no_measure:
        measured = measure_speedup(dense, net, args.data_shape, ctx, int8=args.method == 'int8')
    report = dict(method=args.method, model=args.model, target_speedup=args.target_speedup,
                  mac_speedup=mac_speedup, accuracy=acc,
                  measured={str(b): m for b, m in (measured or {}).items()},
                  history=history, workers=hvd.size(),
                  threads=os.environ.get('OMP_NUM_THREADS', 'default'),
                  command=' '.join(['python -m gluon_lcnn compress'] + list(
                      getattr(args, 'argv', None) or sys.argv[2:])),
                  date=datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC'),
                  machine=timing.machine_summary(), seconds=time.time() - tic)
    _write_report(args.out, report)
    log.info('compress %s: %.2fx MACs; top-1 dense %.4f -> converted %.4f -> fine-tuned %s%s'
             % (args.method, mac_speedup, acc['dense'], acc['converted'],
                '-' if acc['finetuned'] is None else '%.4f' % acc['finetuned'],
                ''.join('; measured b%s %.2fx' % (b, m['speedup'])
                        for b, m in report['measured'].items())))
    return report


def _jsonable(d):
    out = {}
    for k, v in d.items():
        if isinstance(v, tuple):
            v = list(v)
        if v is None or isinstance(v, (str, int, float, bool, list, dict)):
            out[k] = v
    return out


def compress(model, params, method, target_speedup, out, **options):
    """Python API of the compress command: ``compress('lenet', 'dense.params', 'lcnn', 4,
    'runs/x', num_epochs=2, batch_size=64)``. ``options`` are training flags by their
    argparse names (``num_epochs``, ``lr``, ``dataset``, ``no_horovod`` ...). Returns the report
    (None on ranks other than 0)."""
    args = _parser().parse_args(['--method', method, '--target-speedup', str(target_speedup),
                                 '--out', out, '--model', model, '--params', params])
    unknown = sorted(k for k in options if not hasattr(args, k))
    if unknown:
        raise ValueError('compress: unknown options %s' % unknown)
    for key, value in options.items():
        setattr(args, key, value)
    args.argv = ['--model', model, '--params', params, '--method', method,
                 '--target-speedup', str(target_speedup), '--out', out] + [
        '--%s %s' % (k.replace('_', '-'), v) for k, v in sorted(options.items())]
    return run(args)
