"""The compress workflow end to end on real Fashion-MNIST: a dense LeNet trained by the training
script, then lcnn / lowrank / prune / int8 from it (convert, fine-tune, report), the compressed
checkpoint rebuilt by load_compressed, to_inference of it against its training graph, --resume,
a 2-worker Horovod run and the command line's one-line errors.

Budget: ~2.5 min on 2 cores (one dense training on 6k images, short fine-tunes on 6k).
"""
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np
import pytest

from gluon_lcnn.compress import compress, load_compressed
from gluon_lcnn.compress.workflow import remeasure
from gluon_lcnn.compress.lcnn import lcnn_plan
from gluon_lcnn.data import load_fashion_mnist
from gluon_lcnn.deploy import to_inference
from gluon_lcnn.nn import lookup_layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
ENV = dict(os.environ, OMP_NUM_THREADS='1', MXNET_CPU_WORKER_NTHREADS='1',
           PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
FINETUNE = dict(num_epochs=1, train_limit=6000, no_horovod=True, no_progress=True)


def _script():
    sys.path.insert(0, os.path.join(ROOT, 'train_scripts'))
    try:
        import train_fashion_mnist
    finally:
        sys.path.pop(0)
    return train_fashion_mnist


@pytest.fixture(scope='module')
def dense(tmp_path_factory):
    """(params path, test accuracy) of a dense LeNet trained one epoch on 6k images."""
    save = tmp_path_factory.mktemp('dense')
    history = _script().main(['--model', 'lenet', '--num-epochs', '1', '--train-limit', '6000',
                              '--no-horovod', '--no-progress', '--save-dir', str(save)])
    return str(save / 'epoch-0001.params'), history[-1]['val_top1']


@pytest.fixture(scope='module')
def test_images():
    x, _ = load_fashion_mnist(train=False)
    return mx.nd.array(x[:64])


def _check_rebuilt(out, report, test_images):
    """The saved compressed net reproduces its training graph and its inference graph."""
    net = load_compressed(str(out))
    with mx.autograd.predict_mode():
        expect = net(test_images).asnumpy()
    fast = to_inference(net, choose='sparse')
    got = fast(test_images).asnumpy()
    np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)
    spec = json.load(open(out / 'compress.json'))
    assert spec['method'] == report['method']
    return net


@pytest.mark.parametrize('method', ['lcnn', 'lowrank', 'prune'])
def test_method_reaches_target_and_round_trips(dense, test_images, tmp_path, method):
    params, dense_top1 = dense
    assert dense_top1 > 0.7   # a trained net: chance is 0.1
    report = compress('lenet', params, method, 4, str(tmp_path), no_measure=True, **FINETUNE)
    acc = report['accuracy']
    assert acc['dense'] == pytest.approx(dense_top1, abs=1e-6)
    assert report['mac_speedup'] >= 4
    # One short fine-tune on 6k images keeps a 4x LeNet far above chance and near the dense net.
    assert acc['finetuned'] > 0.6
    assert acc['finetuned'] > acc['dense'] - 0.2
    assert os.path.isfile(tmp_path / 'report.md')
    net = _check_rebuilt(tmp_path, report, test_images)
    if method == 'lcnn':
        assert lookup_layers(net)   # really lookup layers, at the budgets of the plan
        assert report['history'][-1]['mac_speedup'] == pytest.approx(report['mac_speedup'])


def test_lcnn_plan_budgets(dense):
    import gluon_lcnn
    net = gluon_lcnn.get_model('lenet', in_channels=1, classes=10)
    net.initialize()
    net(mx.nd.zeros((1, 1, 28, 28)))
    plan = lcnn_plan(net, (1, 1, 28, 28), 8)
    assert list(plan) == ['features.0', 'features.4', 'features.9']   # classifier stays dense
    assert all(1 <= e['dictionary_size'] and e['nnz'] >= 1 for e in plan.values())
    with pytest.raises(ValueError, match='must be > 1'):
        lcnn_plan(net, (1, 1, 28, 28), 1)
    with pytest.raises(ValueError, match='out of reach'):
        lcnn_plan(net, (1, 1, 28, 28), 1e4)


def test_int8_and_measured_speedup(dense, tmp_path):
    params, dense_top1 = dense
    report = compress('lenet', params, 'int8', 2, str(tmp_path), **FINETUNE)
    assert report['accuracy']['converted'] == pytest.approx(dense_top1, abs=0.02)
    assert os.path.isfile(tmp_path / 'int8-symbol.json')
    again = remeasure(str(tmp_path))   # a finished run timed again, report rewritten
    assert again['measured']['1']['dense_ms'] > 0 and 'measured_date' in again
    assert json.load(open(tmp_path / 'report.json'))['measured_date'] == again['measured_date']
    for batch in ('1', '64'):
        m = report['measured'][batch]
        assert m['dense_ms'] > 0 and m['compressed_ms'] > 0
        assert m['speedup'] == pytest.approx(m['dense_ms'] / m['compressed_ms'])


def test_resume_continues(dense, tmp_path):
    params, _ = dense
    first = compress('lenet', params, 'lcnn', 3, str(tmp_path), no_measure=True, **FINETUNE)
    options = dict(FINETUNE, num_epochs=2, resume=True)
    second = compress('lenet', params, 'lcnn', 3, str(tmp_path), no_measure=True, **options)
    assert [h['epoch'] for h in second['history']] == [1, 2]
    assert second['history'][0]['val_top1'] == pytest.approx(first['history'][0]['val_top1'])
    assert second['mac_speedup'] >= 3


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, '-m', 'gluon_lcnn', 'compress'] + list(args),
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)


def test_horovod_two_workers(dense, tmp_path):
    params, _ = dense
    out = subprocess.run(
        [os.path.join(BIN, 'horovodrun'), '-np', '2', '--gloo', '-H', 'localhost:2',
         sys.executable, '-m', 'gluon_lcnn', 'compress', '--model', 'lenet', '--params', params,
         '--method', 'prune', '--target-speedup', '3', '--epochs', '1', '--train-limit', '2000',
         '--no-progress', '--no-measure', '--out', str(tmp_path)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.load(open(tmp_path / 'report.json'))
    assert report['workers'] == 2 and report['mac_speedup'] >= 3


@pytest.mark.parametrize('extra, message', [
    (['--method', 'lcnn', '--target-speedup', '1'], '--target-speedup must be > 1'),
    (['--method', 'lcnn', '--target-speedup', '4', '--model', 'lenet_lcnn_fast'],
     'is an LCNN'),
])
def test_bad_arguments_one_line(dense, tmp_path, extra, message):
    params, _ = dense
    base = ['--model', 'lenet', '--params', params, '--out', str(tmp_path)]
    out = _cli(*(base + extra))
    assert out.returncode == 1, out.stderr
    assert out.stderr.count('\n') == 1 and message in out.stderr, out.stderr


def test_bad_method_and_foreign_params(dense, tmp_path):
    params, _ = dense
    out = _cli('--model', 'lenet', '--params', params, '--out', str(tmp_path),
               '--method', 'nosuch', '--target-speedup', '4')
    assert out.returncode == 2 and 'invalid choice' in out.stderr
    out = _cli('--model', 'alexnet', '--params', params, '--out', str(tmp_path),
               '--method', 'prune', '--target-speedup', '4')
    assert out.returncode == 1 and out.stderr.count('\n') == 1, out.stderr
    assert os.path.basename(params) in out.stderr
