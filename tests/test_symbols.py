"""symbols.get_symbol and `python -m gluon_lcnn export`: files that SymbolBlock.imports and the
Module API load back with the same outputs; Module can train a get_symbol symbol; CLI dispatch.

Budget: ~15 s on 2 cores (small thumbnail models, one CLI subprocess).
"""
import os
import subprocess
import sys
from collections import namedtuple

import mxnet as mx
import numpy as np
import pytest

import gluon_lcnn
import symbols
from gluon_lcnn.__main__ import COMMANDS, main
from gluon_lcnn.export import export_model

Batch = namedtuple('Batch', ['data'])
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _module_forward(prefix, x, epoch=0):
    sym, arg_params, aux_params = mx.model.load_checkpoint(prefix, epoch)
    mod = mx.mod.Module(sym, data_names=['data'], label_names=None, context=mx.cpu())
    mod.bind(data_shapes=[('data', x.shape)], for_training=False)
    mod.set_params(arg_params, aux_params)
    mod.forward(Batch([x]), is_train=False)
    return mod.get_outputs()[0].asnumpy()


@pytest.mark.parametrize('name,kwargs,shape', [
    ('lenet_lcnn_fast', dict(classes=10), (2, 1, 28, 28)),
    ('resnet18_lcnn_fast', dict(classes=10, thumbnail=True), (2, 3, 32, 32)),
])
def test_export_loads_in_symbolblock_and_module(tmp_path, name, kwargs, shape):
    sym_file, params_file, net = export_model(name, str(tmp_path), input_shape=shape, **kwargs)
    assert os.path.basename(sym_file) == name + '-symbol.json'
    assert os.path.basename(params_file) == name + '-0000.params'
    x = mx.nd.random.uniform(shape=shape)
    with mx.autograd.predict_mode():
        ref = net(x).asnumpy()
    block = mx.gluon.SymbolBlock.imports(sym_file, ['data'], params_file)
    np.testing.assert_allclose(block(x).asnumpy(), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(_module_forward(str(tmp_path / name), x), ref, rtol=1e-4,
                               atol=1e-5)


def test_export_with_trained_params(tmp_path):
    net = gluon_lcnn.get_model('lenet_lcnn_accurate', classes=10)
    net.initialize(mx.init.Xavier())
    x = mx.nd.random.uniform(shape=(1, 1, 28, 28))
    with mx.autograd.predict_mode():
        ref = net(x).asnumpy()
    net.save_parameters(str(tmp_path / 'trained.params'))
    # Through the CLI entry point (in process: same code path as `python -m gluon_lcnn export`).
    rc = main(['export', '--model', 'lenet_lcnn_accurate', '--out', str(tmp_path / 'out'),
               '--classes', '10', '--params', str(tmp_path / 'trained.params')])
    assert rc == 0
    prefix = str(tmp_path / 'out' / 'lenet_lcnn_accurate')
    np.testing.assert_allclose(_module_forward(prefix, x), ref, rtol=1e-4, atol=1e-5)
    assert main(['export', '--model', 'lenet', '--out', str(tmp_path),
                 '--params', str(tmp_path / 'missing.params')]) == 1


def test_get_symbol_shapes_and_names():
    sym = symbols.get_symbol('alexnet_lcnn_fast', num_classes=10, thumbnail=True)
    assert sym.list_outputs() == ['softmax_output']
    assert 'softmax_label' in sym.list_arguments()
    _, out_shapes, _ = sym.infer_shape(data=(2, 3, 32, 32))
    assert out_shapes == [(2, 10)]
    logits = symbols.get_symbol('vgg16', num_classes=7, softmax=False, thumbnail=True,
                                fc_units=32)
    assert logits.infer_shape(data=(1, 3, 32, 32))[1] == [(1, 7)]
    assert all(a == 'data' or a.startswith('vgg16_') for a in logits.list_arguments())


def test_get_symbol_trains_with_module():
    sym = symbols.get_symbol('lenet_lcnn_fast', num_classes=4)
    mod = mx.mod.Module(sym, data_names=['data'], label_names=['softmax_label'])
    mod.bind(data_shapes=[('data', (8, 1, 28, 28))], label_shapes=[('softmax_label', (8,))])
    mod.init_params(mx.init.Xavier())
    mod.init_optimizer(optimizer='sgd', optimizer_params={'learning_rate': 0.1})
    x = mx.nd.random.uniform(shape=(8, 1, 28, 28))
    y = mx.nd.array([0, 1, 2, 3] * 2)
    batch = mx.io.DataBatch([x], [y])
    before = mod.get_params()[0]['lenet_lcnn_fast_lookupconv2d1_lookup'].asnumpy().copy()
    mod.forward_backward(batch)
    mod.update()
    after = mod.get_params()[0]['lenet_lcnn_fast_lookupconv2d1_lookup'].asnumpy()
    assert not np.allclose(before, after)
    assert mod.get_outputs()[0].shape == (8, 4)


def test_cli_dispatch_help_and_errors(capsys):
    assert set(COMMANDS) == {'flops', 'export', 'benchmark', 'archive', 'predict', 'compress'}
    assert main([]) == 0
    assert 'flops' in capsys.readouterr().out
    with pytest.raises(SystemExit, match='unknown command'):
        main(['nope'])
    assert main(['flops', '--model', 'lenet', '--input-shape', '1,1,28,28']) == 0
    assert 'total' in capsys.readouterr().out
    assert main(['flops', '--model', 'nosuchnet']) == 1
    assert 'unknown model' in capsys.readouterr().err


def test_python_dash_m_runs(tmp_path):
    out = subprocess.run([sys.executable, '-m', 'gluon_lcnn', 'export', '--model', 'lenet',
                          '--out', str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert os.path.isfile(str(tmp_path / 'lenet-symbol.json'))
    assert os.path.isfile(str(tmp_path / 'lenet-0000.params'))
