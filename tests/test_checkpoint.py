"""Checkpoints that are damaged or asked for nonsense: --keep-checkpoints below 1, SHA-256 sums
in checkpoint.json with fallback to the newest intact epoch, and one-line errors naming the
file for truncated, empty or random params / states / checkpoint.json.

The helpers of gluon_lcnn.training run in-process on a small Dense net; the script runs
in-process (``train_imagenet.main``, one process, synthetic data) except for two real runs that
check what a user sees on stderr. Budget: ~25 s on 2 cores.
"""
import json
import os
import shutil
import subprocess
import sys

import mxnet as mx
import pytest
from mxnet import gluon

from gluon_lcnn import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'train_scripts', 'train_imagenet.py')
ENV = dict(os.environ, OMP_NUM_THREADS='1', MXNET_CPU_WORKER_NTHREADS='1',
           PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
SCRIPT_ARGS = ['--model', 'lenet_lcnn_fast', '--num-classes', '4', '--data-shape', '1,28,28',
               '--synthetic', '--synthetic-batches', '2', '--batch-size', '4', '--no-progress',
               '--no-horovod', '--data-nthreads', '1']


def _script():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import train_imagenet
    finally:
        sys.path.pop(0)
    return train_imagenet


def _net_and_trainer():
    mx.random.seed(0)
    net = gluon.nn.Dense(64, in_units=64)   # 16 KB of weights: room to damage the middle
    net.initialize(mx.init.Xavier())
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1,
                                                          'momentum': 0.9}, kvstore=None)
    with mx.autograd.record():
        loss = net(mx.nd.ones((2, 64))).sum()
    loss.backward()
    trainer.step(2)   # momentum buffers: a states file with content
    return net, trainer


def _save_epochs(save_dir, epochs, keep=2):
    net, trainer = _net_and_trainer()
    history = []
    for epoch in range(1, epochs + 1):
        net.weight.set_data(net.weight.data() + 1)   # every epoch's files differ
        history.append({'epoch': epoch, 'val_top1': epoch / 10.0})
        meta = training.save_checkpoint(str(save_dir), epoch, net, trainer,
                                        {'history': list(history)}, keep=keep)
    return net, trainer, meta


def _zero_middle(path, count=1000):
    data = bytearray(open(path, 'rb').read())
    start = len(data) // 2
    data[start:start + count] = bytes(count)
    open(path, 'wb').write(bytes(data))


def _one_line(message, *names):
    text = str(message)
    assert '\n' not in text.strip(), text
    for name in names:
        assert name in text, (name, text)
    return text


# ------------------------------------------------------------------ 1. --keep-checkpoints
@pytest.mark.parametrize('keep', ['0', '-1'])
def test_keep_checkpoints_below_one_is_a_usage_error(keep, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _script().parse_args(SCRIPT_ARGS + ['--keep-checkpoints', keep])
    assert exit_info.value.code == 2
    assert '--keep-checkpoints must be >= 1' in capsys.readouterr().err


def test_save_checkpoint_refuses_keep_below_one_and_keeps_the_files(tmp_path):
    net, trainer, _ = _save_epochs(tmp_path, 1)
    before = sorted(os.listdir(str(tmp_path)))
    for keep in (0, -3):
        with pytest.raises(ValueError, match='keep must be >= 1'):
            training.save_checkpoint(str(tmp_path), 2, net, trainer, keep=keep)
    assert sorted(os.listdir(str(tmp_path))) == before
    training.save_checkpoint(str(tmp_path), 2, net, trainer, keep=1)
    assert sorted(p.name for p in tmp_path.glob('epoch-*')) == [
        'epoch-0002.params', 'epoch-0002.states']


# ------------------------------------------------------------------ 2. checksums, fallback
def test_checkpoint_json_lists_kept_epochs_with_sha256(tmp_path):
    _, _, meta = _save_epochs(tmp_path, 3, keep=2)
    on_disk = json.loads((tmp_path / 'checkpoint.json').read_text())
    assert on_disk == meta
    assert [e['epoch'] for e in meta['checkpoints']] == [3, 2]
    for entry in meta['checkpoints']:
        for key in ('params', 'states'):
            path = str(tmp_path / entry[key])
            assert entry[key + '_sha256'] == training.file_sha256(path)
    assert meta['params_sha256'] == meta['checkpoints'][0]['params_sha256']
    loaded = training.load_checkpoint(str(tmp_path))
    assert loaded['epoch'] == 3 and loaded['skipped'] == []
    assert loaded['params'] == str(tmp_path / 'epoch-0003.params')


def test_zeroed_bytes_fall_back_to_the_previous_intact_epoch(tmp_path):
    net, trainer, _ = _save_epochs(tmp_path, 3, keep=2)
    _zero_middle(str(tmp_path / 'epoch-0003.params'))
    meta = training.load_checkpoint(str(tmp_path))
    assert meta['epoch'] == 2
    assert meta['params'] == str(tmp_path / 'epoch-0002.params')
    assert meta['states'] == str(tmp_path / 'epoch-0002.states')
    assert [h['epoch'] for h in meta['history']] == [1, 2]
    assert len(meta['skipped']) == 1
    _one_line(meta['skipped'][0], 'epoch-0003.params', 'SHA-256')
    training.load_params_file(net, meta['params'])
    training.load_states_file(trainer, meta['states'])
    # The previous epoch damaged as well (its states): nothing intact, one line naming both.
    _zero_middle(str(tmp_path / 'epoch-0002.states'), count=100)
    with pytest.raises(training.CheckpointError) as err:
        training.load_checkpoint(str(tmp_path))
    _one_line(err.value, 'no intact checkpoint', 'epoch-0003.params', 'epoch-0002.states')


def test_a_missing_newest_file_falls_back_too(tmp_path):
    _save_epochs(tmp_path, 2, keep=2)
    os.remove(str(tmp_path / 'epoch-0002.states'))
    meta = training.load_checkpoint(str(tmp_path))
    assert meta['epoch'] == 1
    _one_line(meta['skipped'][0], 'epoch-0002.states', 'missing')


def test_verify_params_checks_files_of_a_checkpoint_dir(tmp_path):
    _save_epochs(tmp_path, 2, keep=2)
    assert training.verify_params(str(tmp_path / 'epoch-0001.params'))['epoch'] == 2
    _zero_middle(str(tmp_path / 'epoch-0001.params'))
    with pytest.raises(training.CheckpointError) as err:
        training.verify_params(str(tmp_path / 'epoch-0001.params'))
    _one_line(err.value, 'epoch-0001.params', 'SHA-256')
    loose = tmp_path / 'elsewhere'
    loose.mkdir()
    shutil.copy(str(tmp_path / 'epoch-0001.params'), str(loose / 'model.params'))
    assert training.verify_params(str(loose / 'model.params')) is None


# ------------------------------------------------------------------ 3. unreadable files
def _damage(path, how):
    data = open(path, 'rb').read()
    content = {'empty': b'', 'truncated': data[:len(data) // 2],
               'random': os.urandom(max(len(data), 64))}[how]
    open(path, 'wb').write(content)


@pytest.mark.parametrize('how', ['empty', 'truncated', 'random'])
def test_bad_params_and_states_files_give_one_line_naming_them(tmp_path, how):
    net, trainer, _ = _save_epochs(tmp_path, 1)
    for name, load in (('epoch-0001.params', lambda p: training.load_params_file(net, p)),
                       ('epoch-0001.states', lambda p: training.load_states_file(trainer, p))):
        path = str(tmp_path / name)
        shutil.copy(path, path + '.good')
        _damage(path, how)
        with pytest.raises(training.CheckpointError) as err:
            load(path)
        _one_line(err.value, path)
        # With its sum in checkpoint.json the damage is found before loading.
        with pytest.raises(training.CheckpointError) as err:
            training.load_checkpoint(str(tmp_path))
        _one_line(err.value, path)
        shutil.move(path + '.good', path)


@pytest.mark.parametrize('content', [b'', b'{"epoch": 2, "params": "epoch-00', b'\x93\x00\xffjunk',
                                     b'[1, 2, 3]', b'{"epoch": "two"}',
                                     b'{"epoch": 1, "params": "a.params"}'])
def test_bad_checkpoint_json_gives_one_line_naming_it(tmp_path, content):
    _save_epochs(tmp_path, 1)
    path = tmp_path / 'checkpoint.json'
    path.write_bytes(content)
    for check in (training.load_checkpoint,
                  lambda d: training.verify_params(os.path.join(d, 'epoch-0001.params'))):
        with pytest.raises(training.CheckpointError) as err:
            check(str(tmp_path))
        _one_line(err.value, str(path))


def test_checkpoint_json_without_sums_still_loads(tmp_path):
    """checkpoint.json as written before sums were recorded: the newest epoch only."""
    net, trainer, _ = _save_epochs(tmp_path, 1)
    (tmp_path / 'checkpoint.json').write_text(json.dumps(
        {'epoch': 1, 'params': 'epoch-0001.params', 'states': 'epoch-0001.states',
         'history': [{'epoch': 1}]}))
    meta = training.load_checkpoint(str(tmp_path))
    assert meta['epoch'] == 1 and meta['skipped'] == []
    training.load_params_file(net, meta['params'])
    _damage(meta['params'], 'truncated')   # no sum to compare: found when loading
    meta = training.load_checkpoint(str(tmp_path))
    with pytest.raises(training.CheckpointError) as err:
        training.load_params_file(net, meta['params'])
    _one_line(err.value, meta['params'], 'not a loadable parameter file')


# ------------------------------------------------------------------ the script
@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """Two epochs of the script (in-process), checkpoints kept for both."""
    save = tmp_path_factory.mktemp('ckpt') / 'run'
    _script().main(SCRIPT_ARGS + ['--num-epochs', '2', '--save-dir', str(save)])
    assert sorted(p.name for p in save.glob('epoch-*.params')) == [
        'epoch-0001.params', 'epoch-0002.params']
    return save


def test_resume_skips_a_corrupt_newest_epoch_with_a_warning(trained, tmp_path, capsys):
    save = tmp_path / 'run'
    shutil.copytree(str(trained), str(save))
    _zero_middle(str(save / 'epoch-0002.params'))
    capsys.readouterr()
    history = _script().main(SCRIPT_ARGS + ['--num-epochs', '3', '--resume',
                                            '--save-dir', str(save)])
    out = capsys.readouterr().out
    warning = [line for line in out.splitlines() if line.startswith('warning:')]
    assert len(warning) == 1 and 'epoch-0002.params' in warning[0], out
    assert 'continuing at epoch 2' in out and '[epoch 2/3]' in out
    assert [h['epoch'] for h in history] == [1, 2, 3]
    meta = training.load_checkpoint(str(save))
    assert meta['epoch'] == 3 and meta['skipped'] == []   # epoch 2 written afresh


@pytest.mark.parametrize('target', ['epoch-0002.params', 'epoch-0002.states'])
def test_resume_with_nothing_intact_stops_naming_the_file(trained, tmp_path, target):
    save = tmp_path / 'run'
    shutil.copytree(str(trained), str(save))
    _damage(str(save / target), 'truncated')
    _damage(str(save / 'epoch-0001.params'), 'random')
    with pytest.raises(SystemExit) as exit_info:
        _script().main(SCRIPT_ARGS + ['--num-epochs', '3', '--resume', '--save-dir', str(save)])
    _one_line(exit_info.value.code, str(save / target), str(save / 'epoch-0001.params'))


def test_test_only_refuses_a_corrupt_checkpoint_file(trained, tmp_path):
    save = tmp_path / 'run'
    shutil.copytree(str(trained), str(save))
    args = SCRIPT_ARGS + ['--test-only', '--save-dir', str(save)]
    _script().main(args + ['--params', str(save / 'epoch-0001.params')])   # intact
    _zero_middle(str(save / 'epoch-0002.params'))
    with pytest.raises(SystemExit) as exit_info:
        _script().main(args + ['--params', str(save / 'epoch-0002.params')])
    _one_line(exit_info.value.code, str(save / 'epoch-0002.params'), 'SHA-256')


def _run(*args):
    return subprocess.run([sys.executable, SCRIPT] + SCRIPT_ARGS + list(args), cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=120)


def test_script_prints_one_line_for_bad_files(trained, tmp_path):
    """What a user sees: exit status 1 and one stderr line naming the file, no traceback."""
    save = tmp_path / 'run'
    shutil.copytree(str(trained), str(save))
    loose = tmp_path / 'loose.params'
    loose.write_bytes((save / 'epoch-0002.params').read_bytes()[:5000])
    out = _run('--test-only', '--params', str(loose))
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in out.stderr, out.stderr
    assert lines[0].startswith('error: --params: %s is not a loadable parameter file: '
                               % loose), lines
    _damage(str(save / 'checkpoint.json'), 'truncated')
    out = _run('--resume', '--num-epochs', '3', '--save-dir', str(save))
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in out.stderr, out.stderr
    _one_line(lines[0], str(save / 'checkpoint.json'), 'not valid JSON')
