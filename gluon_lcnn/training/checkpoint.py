"""Atomic checkpoints (checkpoint.json, the params and trainer-state files, their SHA-256) and
verified loading.
"""
import hashlib
import json
import os

import mxnet as mx

CHECKPOINT_FILE = 'checkpoint.json'


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
