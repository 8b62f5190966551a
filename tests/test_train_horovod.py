"""train_scripts/train_imagenet.py as real processes: 2 Horovod workers (Gloo, CPU) on a tiny
generated RecordIO set, resume, SIGKILL + resume, --test-only, the one-process fallback; plus the
helpers of gluon_lcnn.training in-process.

Budget: ~60 s on 2 cores (four horovodrun launches of a few seconds each, two plain runs).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import mxnet as mx
import numpy as np
import psutil
import pytest
from mxnet import autograd, gluon

from gluon_lcnn import training
from gluon_lcnn.data import pack_arrays
from gluon_lcnn.nn import LookupConv2D, l1_penalty

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SCRIPT = os.path.join(ROOT, 'train_scripts', 'train_imagenet.py')
ENV = dict(os.environ, OMP_NUM_THREADS='1', MXNET_CPU_WORKER_NTHREADS='1',
           PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))


def horovodrun():
    return [os.path.join(BIN, 'horovodrun'), '-np', '2', '--gloo', '-H', 'localhost:2',
            sys.executable]


@pytest.fixture(scope='module')
def records(tmp_path_factory):
    """64 train + 32 val images 3x32x32, 4 classes told apart by their dominant colour."""
    root = tmp_path_factory.mktemp('rec')
    rng = np.random.RandomState(0)
    for name, count in (('train', 64), ('val', 32)):
        labels = np.arange(count) % 4
        images = rng.randint(0, 80, size=(count, 32, 32, 3))
        for i, label in enumerate(labels):
            images[i, :, :, label % 3] += 120 if label < 3 else 60
            if label == 3:
                images[i] += 60
        pack_arrays(images.astype(np.uint8), labels, str(root / name))
    return root


def train_args(records, save_dir, *extra):
    return [SCRIPT, '--model', 'lenet_lcnn_fast', '--num-classes', '4', '--data-shape',
            '3,32,32', '--rec-train', str(records / 'train.rec'),
            '--rec-train-idx', str(records / 'train.idx'), '--rec-val', str(records / 'val.rec'),
            '--rec-val-idx', str(records / 'val.idx'), '--batch-size', '8', '--lr', '0.01',
            '--warmup-epochs', '0.5', '--augment', 'none', '--l1-lambda', '1e-3',
            '--data-nthreads', '1', '--no-progress', '--save-dir', str(save_dir)] + list(extra)


def run(cmd, timeout=120):
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, 'exit %d\n%s\n%s' % (out.returncode, out.stdout, out.stderr[-3000:])
    return out.stdout


def read_json(path):
    with open(path) as f:
        return json.load(f)


def accuracy_line(stdout):
    lines = [l for l in stdout.splitlines() if 'test accuracy:' in l]
    assert len(lines) == 1, stdout
    return float(lines[0].rsplit(':', 1)[1])


@pytest.fixture(scope='module')
def two_worker_run(records, tmp_path_factory):
    save = tmp_path_factory.mktemp('run') / 'ckpt'
    # A non-default threshold: --test-only must pick it up from checkpoint.json.
    stdout = run(horovodrun() + train_args(records, save, '--num-epochs', '2', '--debug-digest',
                                           '--initial-sparsity', '0.05'))
    return save, stdout


def test_two_workers_train_and_agree(two_worker_run):
    save, stdout = two_worker_run
    assert '2 worker(s)' in stdout
    history = read_json(save / 'metrics.json')['history']
    assert [h['epoch'] for h in history] == [1, 2]
    assert history[1]['train_loss'] < history[0]['train_loss']
    assert history[0]['val_count'] == 32           # both shares together = the whole val set
    assert 0 < history[-1]['density'] <= 1 and 'lookup density total' in stdout
    # Bit-identical replicas straight from the allreduced updates (before the end-of-epoch
    # re-sync from rank 0), and after it.
    for stem in ('digest-presync-rank%d.txt', 'digest-rank%d.txt'):
        digests = [(save / (stem % r)).read_text() for r in range(2)]
        assert digests[0] == digests[1] and len(digests[0].strip()) == 64
    meta = training.load_checkpoint(str(save))
    assert meta['epoch'] == 2 and meta['workers'] == 2
    assert os.path.isfile(meta['params']) and os.path.isfile(meta['states'])
    assert accuracy_line(stdout) == pytest.approx(history[-1]['val_top1'], abs=5e-5)


def test_resume_continues_at_next_epoch(records, two_worker_run, tmp_path):
    save = tmp_path / 'ckpt'
    shutil.copytree(two_worker_run[0], save)
    stdout = run(horovodrun() + train_args(records, save, '--num-epochs', '3', '--resume',
                                           '--initial-sparsity', '0.05'))
    assert 'continuing at epoch 3' in stdout
    assert '[epoch 3/3]' in stdout and '[epoch 1/3]' not in stdout
    assert [h['epoch'] for h in read_json(save / 'metrics.json')['history']] == [1, 2, 3]
    assert read_json(save / 'checkpoint.json')['epoch'] == 3
    assert sorted(p.name for p in save.glob('epoch-*')) == [
        'epoch-0002.params', 'epoch-0002.states', 'epoch-0003.params', 'epoch-0003.states']


def test_test_only_reproduces_accuracy_without_horovod(records, two_worker_run):
    """--test-only on the epoch-2 checkpoint, in one process with horovod made unimportable
    and without --initial-sparsity (the threshold comes from checkpoint.json)."""
    save, _ = two_worker_run
    reported = read_json(save / 'metrics.json')['history'][-1]['val_top1']
    block = ("import sys, runpy; sys.modules['horovod'] = None; sys.argv = sys.argv[1:]; "
             "runpy.run_path(sys.argv[0], run_name='__main__')")
    stdout = run([sys.executable, '-c', block] + train_args(
        records, save, '--test-only', '--params', str(save / 'epoch-0002.params')))
    assert 'test-only' in stdout
    top1 = float(stdout.split('top-1 ')[1].split()[0])
    assert top1 == pytest.approx(reported, abs=1e-6)


def _kill_tree(proc):
    """SIGKILL horovodrun's process group and every descendant (workers sit in own sessions)."""
    root = psutil.Process(proc.pid)
    procs = [root] + root.children(recursive=True)
    try:
        os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
    except ProcessLookupError:
        pass
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
    proc.wait(timeout=30)


def test_sigkill_mid_epoch_then_resume(records, tmp_path):
    save = tmp_path / 'ckpt'
    cmd = horovodrun() + train_args(records, save, '--num-epochs', '50',
                                    '--grad-accumulation', '2')
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (save / 'checkpoint.json').exists():
            assert proc.poll() is None, 'training exited before its first checkpoint'
            assert time.time() < deadline, 'no checkpoint after 120 s'
            time.sleep(0.05)
        time.sleep(0.3)                 # into the next epoch
    finally:
        _kill_tree(proc)
    done = read_json(save / 'checkpoint.json')['epoch']
    assert 1 <= done < 50
    stdout = run([sys.executable] + train_args(records, save, '--num-epochs', str(done + 1),
                                               '--resume', '--grad-accumulation', '2'))
    assert 'continuing at epoch %d' % (done + 1) in stdout
    history = read_json(save / 'metrics.json')['history']
    assert [h['epoch'] for h in history] == list(range(1, done + 2))
    assert not list(save.glob('*.tmp-*'))


# ------------------------------------------------------------------ helpers, in-process
def test_learning_rate_schedule():
    kw = dict(steps_per_epoch=10, base_lr=0.4, num_epochs=10, warmup_epochs=2)
    lr = lambda step, **extra: training.learning_rate(step, **dict(kw, **extra))  # noqa: E731
    assert lr(0) == pytest.approx(0.02) and lr(9) == pytest.approx(0.2)
    assert lr(19) == pytest.approx(0.4) and lr(20) == pytest.approx(0.4)
    assert lr(60) == pytest.approx(0.2)                              # cosine half way
    assert lr(100) == pytest.approx(0.0, abs=1e-12)
    assert lr(60, mode='poly', power=2.0) == pytest.approx(0.1)
    step = dict(mode='step', decay_epochs=(5, 8), decay_factor=0.1)
    assert [lr(s, **step) for s in (49, 50, 80)] == pytest.approx([0.4, 0.04, 0.004])
    with pytest.raises(ValueError, match='lr mode'):
        lr(0, mode='linear')


def _tiny_net(seed=0):
    mx.random.seed(seed)
    net = gluon.nn.HybridSequential()
    net.add(LookupConv2D(4, 3, padding=1, dictionary_size=3, in_channels=2, l1_lambda=0.5,
                         initial_sparsity=0.2))
    net.add(gluon.nn.Dense(3))
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 2, 5, 5)))
    return net


def test_grad_accumulation_matches_one_big_batch():
    """grad_req='add' over micro-batches + step(total) == one batch (L1 pull included)."""
    rng = np.random.RandomState(0)
    x = mx.nd.array(rng.randn(8, 2, 5, 5))
    y = mx.nd.array(rng.randint(0, 3, 8))
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    nets = [_tiny_net(seed=1), _tiny_net(seed=1)]
    hvd = training.LocalHorovod()
    trainers = [hvd.DistributedTrainer(n.collect_params(), 'sgd', {'learning_rate': 0.1})
                for n in nets]
    with autograd.record():
        loss = loss_fn(nets[0](x), y) + l1_penalty(nets[0])
    loss.backward()
    trainers[0].step(8)
    for p in nets[1].collect_params().values():
        p.grad_req = 'add'
    nets[1].collect_params().zero_grad()
    for part in (slice(0, 4), slice(4, 8)):
        with autograd.record():
            loss = loss_fn(nets[1](x[part]), y[part]) + l1_penalty(nets[1])
        loss.backward()
    trainers[1].step(8)
    for (_, a), (_, b) in zip(sorted(nets[0].collect_params().items()),
                              sorted(nets[1].collect_params().items())):
        np.testing.assert_allclose(a.data().asnumpy(), b.data().asnumpy(), rtol=1e-5, atol=1e-6)


def test_checkpoint_write_is_atomic(tmp_path):
    net = _tiny_net()
    trainer = gluon.Trainer(net.collect_params(), 'sgd', {'learning_rate': 0.1}, kvstore=None)
    training.save_checkpoint(str(tmp_path), 1, net, trainer, {'note': 'first'})
    before = (tmp_path / 'checkpoint.json').read_text()

    class Crash(Exception):
        pass

    def crashing_save(path):
        with open(path, 'wb') as f:
            f.write(b'half a file')
        raise Crash()
    net.save_parameters = crashing_save
    with pytest.raises(Crash):
        training.save_checkpoint(str(tmp_path), 2, net, trainer)
    assert (tmp_path / 'checkpoint.json').read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'checkpoint.json', 'epoch-0001.params', 'epoch-0001.states']
    meta = training.load_checkpoint(str(tmp_path))
    assert meta['epoch'] == 1 and meta['note'] == 'first'
    del net.save_parameters
    net.load_parameters(meta['params'])


def test_local_horovod_stand_in():
    hvd = training.init_horovod(enabled=False)
    assert isinstance(hvd, training.LocalHorovod) and hvd.size() == 1 and hvd.rank() == 0
    sums = training.allreduce_sums(hvd, {'a': 1.5, 'b': 2}, name='x')
    assert sums == {'a': 1.5, 'b': 2.0}
    net = _tiny_net()
    before = training.params_digest(net)
    training.average_aux_states(net, hvd)
    assert training.params_digest(net) == before


def test_float16_on_cpu_is_refused(records, tmp_path):
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import train_imagenet
    finally:
        sys.path.pop(0)
    with pytest.raises(ValueError, match='float16 needs a GPU'):
        train_imagenet.main(train_args(records, tmp_path, '--dtype', 'float16',
                                       '--no-horovod')[1:])


def test_two_workers_with_mkldnn_blocked_weights(tmp_path):
    """AlexNet's 64/192/384-channel convs get MKLDNN-blocked weights after the inference-mode
    shape pass; Horovod's in-place broadcast failed on them ("can't generate TBlob for MKLDNN
    data"). Replicas agree after every epoch (re-synced from rank 0)."""
    stdout = run(horovodrun() + [SCRIPT, '--model', 'alexnet', '--model-arg', 'thumbnail=True',
                                 '--data-shape', '3,32,32', '--num-classes', '10', '--synthetic',
                                 '--synthetic-batches', '2', '--batch-size', '4',
                                 '--num-epochs', '2', '--no-progress', '--debug-digest',
                                 '--save-dir', str(tmp_path)])
    assert '[epoch 2/2]' in stdout
    digests = [(tmp_path / ('digest-rank%d.txt' % r)).read_text() for r in range(2)]
    assert digests[0] == digests[1]


def test_two_workers_fp16_allreduce_composed_form(records, tmp_path):
    """Horovod's fp16 gradient compression, the composed lookup form and gradient accumulation
    together: replicas still agree bit for bit, and every epoch reports its throughput."""
    stdout = run(horovodrun() + train_args(records, tmp_path, '--num-epochs', '2',
                                           '--fp16-allreduce', '--lookup-form', 'composed',
                                           '--grad-accumulation', '2', '--debug-digest'))
    assert 'composed, 0 factored (--lookup-form composed, batch 8)' in stdout
    lines = [l for l in stdout.splitlines() if 'throughput' in l]
    assert len(lines) == 2 and all('per worker' in l and '(2 worker(s))' in l for l in lines)
    history = read_json(tmp_path / 'metrics.json')['history']
    assert all(np.isfinite(h['train_loss']) for h in history)
    digests = [(tmp_path / ('digest-presync-rank%d.txt' % r)).read_text() for r in range(2)]
    assert digests[0] == digests[1]
