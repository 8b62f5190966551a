"""Helpers the training scripts share: Horovod (or a one-process stand-in), the learning-rate
schedule (an ``mx.lr_scheduler.LRScheduler``), atomic checkpoints, evaluation with metrics
summed over workers.

The training loop itself lives in ``train_scripts/train_imagenet.py`` (one flat script, as in
Horovod's examples); ``train_scripts/train_fashion_mnist.py`` runs the same loop on other data.
"""
import hashlib
import json
import math
import os

import mxnet as mx
import numpy as np

__all__ = ['init_horovod', 'LocalHorovod', 'allreduce_sums', 'broadcast_parameters',
           'average_aux_states', 'WarmupSchedule',
           'learning_rate', 'save_checkpoint', 'load_checkpoint', 'write_json_atomic',
           'CheckpointError', 'read_checkpoint_json', 'verify_params', 'load_params_file',
           'load_states_file', 'file_sha256',
           'evaluate', 'topk_correct', 'params_digest', 'format_density', 'parse_model_args']

CHECKPOINT_FILE = 'checkpoint.json'


class LocalHorovod:
    """The part of ``horovod.mxnet`` the scripts use, for a single process without Horovod.

    ``allreduce`` returns a copy (the sum over one worker), ``broadcast_parameters`` does nothing
    and ``DistributedTrainer`` is a plain ``gluon.Trainer`` without a kvstore (``compression`` is
    accepted and has nothing to compress): with one worker these are exactly what Horovod
    computes.
    """
    Sum = 'sum'
    Average = 'average'

    class Compression:
        """Names of Horovod's gradient compressions; one worker sends nothing to compress."""
        none = None
        fp16 = 'fp16'

    def init(self):
        pass

    @staticmethod
    def size():
        return 1

    @staticmethod
    def rank():
        return 0

    @staticmethod
    def local_rank():
        return 0

    @staticmethod
    def allreduce(tensor, op=None, name=None):
        return tensor.copy()

    @staticmethod
    def broadcast_parameters(params, root_rank=0):
        pass

    @staticmethod
    def DistributedTrainer(params, optimizer, optimizer_params=None, compression=None):
        return mx.gluon.Trainer(params, optimizer, optimizer_params, kvstore=None)

    def __repr__(self):
        return 'LocalHorovod(size=1)'


def init_horovod(enabled=True):
    """``horovod.mxnet`` after ``hvd.init()``, or a ``LocalHorovod`` when it is not installed.

    Started with plain ``python`` (no horovodrun) Horovod itself runs as a world of size 1, so the
    stand-in is only needed where Horovod is missing, or when ``enabled`` is False.
    """
    if enabled:
        try:
            import horovod.mxnet as hvd
        except ImportError:
            hvd = None
        if hvd is not None:
            hvd.init()
            return hvd
    hvd = LocalHorovod()
    hvd.init()
    return hvd


def allreduce_sums(hvd, values, name):
    """Sum a dict of numbers over all workers (float64, one allreduce); returns a new dict."""
    keys = sorted(values)
    local = mx.nd.array([float(values[k]) for k in keys], dtype='float64')
    total = hvd.allreduce(local, op=hvd.Sum, name=name).asnumpy()
    return {k: float(v) for k, v in zip(keys, total)}


def broadcast_parameters(net, hvd, root_rank=0, tag='init'):
    """Give every worker rank ``root_rank``'s parameters (``hvd.broadcast_parameters``, but safe
    for MKLDNN).

    On CPU, an inference-mode forward pass (the one that settles deferred shapes, or an
    evaluation) leaves convolution weights in MKLDNN's blocked layout; Horovod's in-place
    broadcast of such an array fails ("can't generate TBlob for MKLDNN data"). Each parameter
    therefore travels as a plain copy and is written back with ``set_data``, which converts
    the layout. The training script also calls this at the end of every epoch: with MKLDNN
    weights and MXNet's threaded engine, replicas were seen to drift apart by rounding
    (~1e-8 relative, none under NaiveEngine), and a checkpoint must describe every worker.
    """
    if hvd.size() == 1:
        return
    for name, param in sorted(net.collect_params().items()):
        plain = mx.nd.array(param.data().asnumpy(), dtype=param.dtype)
        # Horovod keys collectives by name: the tag keeps each call's names unique.
        param.set_data(hvd.broadcast(plain, root_rank=root_rank,
                                     name='%s.param.%s' % (tag, name)))


def average_aux_states(net, hvd, tag=''):
    """Average the non-trained parameters (BatchNorm running statistics) over workers.

    Gradients are allreduced, so trained parameters agree everywhere, but each worker updates
    its running mean/var from its own batches; averaging them at the end of an epoch makes every
    worker evaluate, and rank 0 save, the same model.
    """
    if hvd.size() == 1:
        return
    for name, param in sorted(net.collect_params().items()):
        if param.grad_req == 'null':
            data = param.data()
            data[:] = hvd.allreduce(data, op=hvd.Average, name='%s.aux.%s' % (tag, name))


class WarmupSchedule(mx.lr_scheduler.LRScheduler):
    """The training learning-rate schedule as an MXNet ``LRScheduler``, for the optimizer's
    ``lr_scheduler`` parameter.

    Linear warm-up from ~0 to ``base_lr`` over ``warmup_epochs`` (Goyal et al.: needed once
    ``base_lr`` is scaled by the number of workers), then

    - ``step``: ``base_lr * decay_factor ** k`` after the k-th epoch in ``decay_epochs``;
    - ``cosine``: half a cosine from ``base_lr`` down to ``final_lr`` at ``num_epochs``;
    - ``poly``: ``(base_lr - final_lr) * (1 - t) ** power + final_lr``, t the post-warm-up progress.

    The optimizer calls it with ``num_update``, the number of updates counted so far including
    the one about to be made (1 for the first), and saves that count with its states; update
    ``num_update - 1`` (0-based) gets ``learning_rate(num_update - 1, ...)``.
    """

    def __init__(self, steps_per_epoch, base_lr, num_epochs, warmup_epochs=0.0, mode='cosine',
                 decay_epochs=(), decay_factor=0.1, power=2.0, final_lr=0.0):
        if mode not in ('step', 'cosine', 'poly'):
            raise ValueError("lr mode must be 'step', 'cosine' or 'poly', got %r" % (mode,))
        if steps_per_epoch < 1:
            raise ValueError('steps_per_epoch must be >= 1, got %r' % (steps_per_epoch,))
        super().__init__(base_lr)   # the optimizer sets base_lr to its learning_rate
        self.steps_per_epoch, self.num_epochs = steps_per_epoch, num_epochs
        self.warmup_epochs, self.mode = warmup_epochs, mode
        self.decay_epochs, self.decay_factor = tuple(decay_epochs), decay_factor
        self.power, self.final_lr = power, final_lr

    def __call__(self, num_update):
        step = max(num_update - 1, 0)   # 0 before the first update: the first update's rate
        base_lr, final_lr = self.base_lr, self.final_lr
        epoch = float(step) / self.steps_per_epoch
        warmup_steps = self.warmup_epochs * self.steps_per_epoch
        if step < warmup_steps:
            return base_lr * (step + 1) / warmup_steps
        if self.mode == 'step':
            return base_lr * self.decay_factor ** sum(1 for e in self.decay_epochs if epoch >= e)
        span = max(self.num_epochs - self.warmup_epochs, 1e-12)
        t = min(max((epoch - self.warmup_epochs) / span, 0.0), 1.0)
        if self.mode == 'cosine':
            return final_lr + (base_lr - final_lr) * 0.5 * (1 + math.cos(math.pi * t))
        return final_lr + (base_lr - final_lr) * (1 - t) ** self.power


def learning_rate(step, steps_per_epoch, base_lr, num_epochs, warmup_epochs=0.0, mode='cosine',
                  decay_epochs=(), decay_factor=0.1, power=2.0, final_lr=0.0):
    """Learning rate at optimizer update ``step`` (0-based): ``WarmupSchedule``, which see."""
    return WarmupSchedule(steps_per_epoch, base_lr, num_epochs, warmup_epochs, mode,
                          decay_epochs, decay_factor, power, final_lr)(step + 1)


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic(path, write):
    """Run ``write(tmp_path)``, flush it to disk, then rename over ``path`` (all or nothing)."""
    tmp = '%s.tmp-%d' % (path, os.getpid())
    try:
        write(tmp)
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_json_atomic(path, obj):
    """Write ``obj`` as JSON so that readers see the old file or the new one, never a torn one."""
    def write(tmp):
        with open(tmp, 'w') as f:
            json.dump(obj, f, indent=1, sort_keys=True)
    _atomic(path, write)


class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable, or not the file checkpoint.json recorded.

    The message is one line that names the file and what is wrong with it.
    """


def file_sha256(path, chunk_size=1 << 20):
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()


def _checkpoint_entries(meta):
    """The epochs checkpoint.json lists, newest first, each {epoch, params, states, *_sha256}.

    Files written before checksums were recorded list only the newest epoch, without sums.
    """
    entries = meta.get('checkpoints')
    if entries is None:
        entries = [{k: meta[k] for k in ('epoch', 'params', 'states', 'params_sha256',
                                          'states_sha256') if k in meta}]
    return sorted(entries, key=lambda e: -e['epoch'])


def read_checkpoint_json(path):
    """The content of the checkpoint.json at ``path``, checked for the fields the loaders use.

    Raises CheckpointError naming the file when it is empty, not JSON (truncated, random
    bytes) or lacks the epoch and file names.
    """
    try:
        with open(path, 'rb') as f:
            raw = f.read()
    except OSError as err:
        raise CheckpointError('cannot read %s: %s' % (path, err.strerror or err)) from None
    if not raw.strip():
        raise CheckpointError('%s is empty' % path)
    try:
        meta = json.loads(raw.decode('utf-8'))
    except (UnicodeDecodeError, ValueError) as err:
        raise CheckpointError('%s is not valid JSON (truncated or corrupt?): %s'
                              % (path, str(err).splitlines()[0])) from None

    def bad(what):
        return CheckpointError('%s is not a checkpoint description: %s' % (path, what))
    if not isinstance(meta, dict):
        raise bad('a JSON %s instead of an object' % type(meta).__name__)
    entries = meta.get('checkpoints', [meta])
    if not isinstance(entries, list) or not entries:
        raise bad('"checkpoints" is not a non-empty list')
    for entry in entries:
        if not isinstance(entry, dict):
            raise bad('a checkpoint entry is not an object')
        epoch = entry.get('epoch')
        if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
            raise bad('"epoch" is %r, not a positive integer' % (epoch,))
        for key in ('params', 'states'):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise bad('no %r file name for epoch %d' % (key, epoch))
            digest = entry.get(key + '_sha256')
            if digest is not None and not isinstance(digest, str):
                raise bad('%s_sha256 of epoch %d is not a string' % (key, epoch))
    if not isinstance(meta.get('args', {}), dict):
        raise bad('"args" is not an object')
    history = meta.get('history', [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise bad('"history" is not a list of objects')
    return meta


def _verify_file(path, digest, meta_path):
    """None if ``path`` exists and (when ``digest`` is known) has that SHA-256, else why not."""
    if not os.path.isfile(path):
        return '%s is missing' % path
    if digest is None:
        return None
    try:
        actual = file_sha256(path)
    except OSError as err:
        return 'cannot read %s: %s' % (path, err.strerror or err)
    if actual != digest:
        return ('%s does not match the SHA-256 recorded in %s (corrupt or changed since it was '
                'saved: %s..., expected %s...)' % (path, meta_path, actual[:12], digest[:12]))
    return None


def save_checkpoint(save_dir, epoch, net, trainer, info=None, keep=2):
    """Save parameters, trainer state and ``info`` after ``epoch`` (1-based epochs completed).

    Files: ``epoch-NNNN.params``, ``epoch-NNNN.states`` and ``checkpoint.json`` naming them. Each
    is written to a temporary name and renamed, and checkpoint.json goes last, so a run killed
    at any instant leaves the previous complete checkpoint in place (plus, at worst, a stale
    ``*.tmp-PID`` file that the next save removes). Only the newest ``keep`` epochs (>= 1) are
    kept; checkpoint.json lists them under ``checkpoints``, newest first, with the SHA-256 of
    each file, so that ``load_checkpoint`` can detect a corrupt file and fall back to an earlier
    epoch. Call on one worker only (rank 0).

    Returns
    -------
    dict
        What checkpoint.json now holds.
    """
    if int(keep) < 1:
        raise ValueError('keep must be >= 1 (the checkpoint just written), got %r' % (keep,))
    epoch = int(epoch)
    os.makedirs(save_dir, exist_ok=True)
    stem = 'epoch-%04d' % epoch
    entry = dict(epoch=epoch, params=stem + '.params', states=stem + '.states')
    for key, write in (('params', net.save_parameters), ('states', trainer.save_states)):
        path = os.path.join(save_dir, entry[key])
        _atomic(path, write)
        entry[key + '_sha256'] = file_sha256(path)
    meta_path = os.path.join(save_dir, CHECKPOINT_FILE)
    try:   # earlier epochs still kept, with their sums (a checkpoint.json of this run)
        earlier = _checkpoint_entries(read_checkpoint_json(meta_path))
    except CheckpointError:
        earlier = []
    entries = [entry] + [e for e in earlier if epoch - keep < e['epoch'] < epoch
                         and os.path.isfile(os.path.join(save_dir, e['params']))]
    meta = dict(info or {}, checkpoints=entries[:keep], **entry)
    write_json_atomic(meta_path, meta)
    # Temporaries of a run killed mid-write (another pid) are garbage now.
    own = '.tmp-%d' % os.getpid()
    for name in os.listdir(save_dir):
        if '.tmp-' in name and not name.endswith(own):
            os.remove(os.path.join(save_dir, name))
    for old in range(epoch - keep, 0, -1):
        for ext in ('.params', '.states'):
            path = os.path.join(save_dir, 'epoch-%04d%s' % (old, ext))
            if os.path.exists(path):
                os.remove(path)
    return meta


def load_checkpoint(save_dir, verify=True):
    """checkpoint.json of ``save_dir`` with absolute ``params``/``states`` paths, or None.

    With ``verify`` the newest epoch whose files exist and match their recorded SHA-256 is
    chosen: ``epoch``, ``params`` and ``states`` describe it, and ``skipped`` holds one line per
    newer epoch passed over, naming its bad file (empty when the newest is intact). Raises
    CheckpointError (one line naming the file) when checkpoint.json is unreadable or no kept
    epoch is intact.
    """
    path = os.path.join(save_dir, CHECKPOINT_FILE)
    if not os.path.isfile(path):
        return None
    meta = read_checkpoint_json(path)
    skipped = []
    for entry in _checkpoint_entries(meta):
        files = {key: os.path.join(save_dir, entry[key]) for key in ('params', 'states')}
        problem = None
        for key in ('params', 'states') if verify else ():
            problem = problem or _verify_file(files[key], entry.get(key + '_sha256'), path)
        if problem is None:
            meta.update(entry, **files)
            meta['skipped'] = skipped
            if skipped:   # the history as it stood after the epoch resumed from
                meta['history'] = [h for h in meta.get('history', [])
                                   if h.get('epoch', 0) <= entry['epoch']]
            return meta
        skipped.append('epoch %d: %s' % (entry['epoch'], problem))
    raise CheckpointError('no intact checkpoint in %s: %s' % (save_dir, '; '.join(skipped)))


def verify_params(params_path):
    """Check a parameter file against the checkpoint.json next to it, if there is one.

    Returns that checkpoint.json's content (None for a file outside a checkpoint directory).
    Raises CheckpointError naming the file when checkpoint.json is unreadable, or when it
    recorded a SHA-256 for this file and the file no longer matches it.
    """
    folder = os.path.dirname(os.path.abspath(params_path))
    meta_path = os.path.join(folder, CHECKPOINT_FILE)
    if not os.path.isfile(meta_path):
        return None
    meta = read_checkpoint_json(meta_path)
    name = os.path.basename(params_path)
    for entry in _checkpoint_entries(meta):
        if os.path.basename(entry['params']) == name:
            problem = _verify_file(params_path, entry.get('params_sha256'), meta_path)
            if problem:
                raise CheckpointError(problem)
    return meta


def _load_error(path, what, err):
    message = next((line.strip() for line in str(err).splitlines()
                    if line.strip() and not line.strip().startswith(('Traceback', 'File "'))),
                   type(err).__name__)
    # MXNet prefixes its messages with a time and a source position: '[12:00:00] src/x.cc:1: '.
    import re
    message = re.sub(r'^(MXNetError: )*(\[[\d:]+\] \S+:\d+: )?', '', message)
    return CheckpointError('%s is not a loadable %s file: %s' % (path, what, message))


def load_params_file(net, path, ctx=None):
    """``net.load_parameters(path, ctx)``; CheckpointError naming the file when it is missing,
    no parameter file (empty, truncated, random bytes) or holds another model's parameters."""
    if not os.path.isfile(path):
        raise CheckpointError('no parameter file at %s' % path)
    if os.path.getsize(path) == 0:
        raise CheckpointError('%s is empty (no parameter file)' % path)
    try:
        net.load_parameters(path, ctx=ctx)
    except (mx.base.MXNetError, AssertionError, ValueError, OSError) as err:
        raise _load_error(path, 'parameter', err) from None


def load_states_file(trainer, path):
    """``trainer.load_states(path)``; CheckpointError naming the file when it is missing or no
    trainer-state file (empty, truncated, random bytes, another optimizer's)."""
    if not os.path.isfile(path):
        raise CheckpointError('no trainer-state file at %s' % path)
    if os.path.getsize(path) == 0:
        raise CheckpointError('%s is empty (no trainer-state file)' % path)
    try:
        trainer.load_states(path)
    except Exception as err:   # unpickling garbage raises almost anything
        raise _load_error(path, 'trainer-state', err) from None


def topk_correct(output, label, num_valid, k):
    """Number of the first ``num_valid`` rows whose label is among the top ``k`` outputs (NDArray)."""
    output = output[:num_valid]
    label = label[:num_valid].astype('float32')
    if k == 1:
        return (output.argmax(axis=1) == label).sum()
    top = mx.nd.topk(output, axis=1, k=k, ret_typ='indices').astype('float32')
    return (top == label.reshape((-1, 1))).sum()


def evaluate(net, batches, ctx, hvd, loss_fn=None, dtype='float32', name='val'):
    """Top-1, top-5 and mean loss of ``net`` over every worker's share of ``batches``.

    Counts are summed over workers before dividing, so the result is the accuracy on the whole
    set, identical on every worker and independent of how the set was split.

    Returns
    -------
    dict
        top1, top5, loss, count.
    """
    loss_fn = loss_fn or mx.gluon.loss.SoftmaxCrossEntropyLoss()
    zero = lambda: mx.nd.zeros((1,), ctx=ctx, dtype='float64')  # noqa: E731
    correct1, correct5, loss_sum = zero(), zero(), zero()
    count, k = 0, None
    for data, label, num_valid in batches:
        data = data.as_in_context(ctx).astype(dtype, copy=False)
        label = label.as_in_context(ctx)
        output = net(data).astype('float32', copy=False)
        k = k or min(5, output.shape[1])
        correct1 += topk_correct(output, label, num_valid, 1).astype('float64')
        correct5 += topk_correct(output, label, num_valid, k).astype('float64')
        loss_sum += loss_fn(output[:num_valid], label[:num_valid]).sum().astype('float64')
        count += num_valid
    sums = allreduce_sums(hvd, dict(correct1=correct1.asscalar(), correct5=correct5.asscalar(),
                                    loss=loss_sum.asscalar(), count=count), name=name)
    n = max(sums['count'], 1.0)
    return dict(top1=sums['correct1'] / n, top5=sums['correct5'] / n, loss=sums['loss'] / n,
                count=int(sums['count']))


def params_digest(net):
    """SHA-256 over every parameter (sorted by name): equal digests mean bit-identical models."""
    digest = hashlib.sha256()
    for name, param in sorted(net.collect_params().items()):
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(param.data().asnumpy()).tobytes())
    return digest.hexdigest()


def format_density(report, limit=12):
    """One line from ``gluon_lcnn.nn.density_report``: total, then per layer."""
    if not report:
        return 'no lookup layers'
    layers = [(k, v) for k, v in report.items() if k != '__total__']
    parts = ['%s %.4f' % (k, v) for k, v in layers[:limit]]
    if len(layers) > limit:
        parts.append('... (%d more)' % (len(layers) - limit))
    return 'total %.4f: %s' % (report['__total__'], ', '.join(parts))


def parse_model_args(items):
    """['thumbnail=True', 'fc_units=1024'] -> {'thumbnail': True, 'fc_units': 1024}."""
    import ast
    out = {}
    for item in items or ():
        if '=' not in item:
            raise ValueError('--model-arg %r is not KEY=VALUE' % (item,))
        key, value = item.split('=', 1)
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out
