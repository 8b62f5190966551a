"""Bad command-line input ends with one error line, never a traceback.

Every case runs the real CLI entry (``gluon_lcnn.__main__.main``) in one child Python shared by
all cases (importing MXNet costs seconds per process), with stdout/stderr captured per case and
any escaping exception printed as the interpreter would; a few cases also run as
``python -m ...`` processes of their own. Budget: ~30 s on 2 cores (LeNet, 28x28 inputs).
"""
import argparse
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {k: v for k, v in os.environ.items() if k != 'GLUON_LCNN_TRACEBACK'}

# Runs json.load(stdin) = {id: argv} through main(); prints {id: [rc, stdout, stderr]}.
DRIVER = r'''
import contextlib, io, json, sys, traceback
from gluon_lcnn.__main__ import main
results = {}
for case, argv in json.load(sys.stdin).items():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exc:
            code = exc.code
            if isinstance(code, str):
                print(code, file=sys.stderr)
            rc = 1 if isinstance(code, str) else (code or 0)
        except BaseException:
            traceback.print_exc()
            rc = 1
    results[case] = [rc, out.getvalue(), err.getvalue()]
print(json.dumps(results))
'''


@pytest.fixture(scope='session')
def files(tmp_path_factory):
    """Parameter files (LeNet LCNN, plain LeNet), an export of the LCNN one, bad files, an image."""
    import mxnet as mx
    import numpy as np
    from PIL import Image
    from gluon_lcnn.export import export_model
    from gluon_lcnn.model_zoo import get_model
    d = tmp_path_factory.mktemp('cli_errors')
    paths = {'dir': str(d)}
    for name in ('lenet_lcnn_fast', 'lenet'):
        net = get_model(name)
        net.initialize()
        net(mx.nd.zeros((1, 1, 28, 28)))
        paths[name] = str(d / (name + '.params'))
        net.save_parameters(paths[name])
    paths['symbol'], paths['exported'], _ = export_model(
        'lenet_lcnn_fast', str(d / 'export'), params=paths['lenet_lcnn_fast'])
    (d / 'corrupt.params').write_bytes(np.random.RandomState(0).bytes(200))
    (d / 'empty.params').write_bytes(b'')
    (d / 'text.params').write_text('not parameters\n')
    for key in ('corrupt', 'empty', 'text'):
        paths[key] = str(d / (key + '.params'))
    paths['image'] = str(d / 'img.png')
    Image.fromarray((np.arange(784) % 256).astype('uint8').reshape(28, 28)).save(paths['image'])
    return paths


def _cases(f):
    """id -> (argv, expected exit status: 2 usage error, 1 error line, 0 success, stderr text)."""
    lenet = ['flops', '--model', 'lenet']
    export = ['export', '--model', 'lenet_lcnn_fast', '--out', os.path.join(f['dir'], 'out')]
    archive = ['archive', '--model', 'lenet_lcnn_fast', '--out', os.path.join(f['dir'], 'mar'),
               '--mean', '0.3', '--std', '0.35']
    predict = ['predict', '--symbol', f['symbol'], '--input-shape', '1,28,28']
    good = predict + ['--params', f['exported']]
    bench = ['benchmark', '--model', 'lenet_lcnn_fast', '--threads', '1', '--size', '28',
             '--batch', '1', '--repeat', '2', '--density', '0.1']
    return {
        # --input-shape: syntax, sizes, rank, tensor size, fit to the model
        'shape_not_int': (lenet + ['--input-shape', '1,x,28,28'], 2, 'comma-separated integers'),
        'shape_zero': (lenet + ['--input-shape', '1,1,0,28'], 2, 'sizes must be >= 1'),
        'shape_negative_eq': (lenet + ['--input-shape=-1,1,28,28'], 2, 'sizes must be >= 1'),
        'shape_negative_space': (lenet + ['--input-shape', '-1,1,28,28'], 2,
                                 'sizes must be >= 1'),
        'shape_rank_flops': (lenet + ['--input-shape', '1,28,28'], 2, 'N,C,H,W (4 numbers)'),
        'shape_rank_export': (export + ['--input-shape', '1,1,28,28,1'], 2, 'N,C,H,W'),
        'shape_rank_archive': (archive + ['--params', f['lenet_lcnn_fast'],
                                          '--input-shape', '28,28'], 2, 'C,H,W or N,C,H,W'),
        'shape_huge': (lenet + ['--input-shape', '100000,1,10000,28'], 2,
                       'more than the 2147483647'),
        'shape_huge_inside': (lenet + ['--input-shape', '1,1,40000,40000'], 1, 'too large'),
        'shape_too_small': (lenet + ['--input-shape', '1,1,8,8'], 1, 'does not fit'),
        'channels_flops': (lenet + ['--arg', 'in_channels=1', '--input-shape', '1,3,28,28'], 1,
                           'does not fit'),
        'channels_export': (export + ['--params', f['lenet_lcnn_fast'],
                                      '--input-shape', '1,3,28,28'], 1, 'does not fit'),
        'channels_archive': (archive + ['--params', f['lenet_lcnn_fast'],
                                        '--input-shape', '3,28,28'], 1, 'does not fit'),
        'huge_archive': (archive + ['--params', f['lenet_lcnn_fast'],
                                    '--input-shape', '1,100000,100000'], 2, 'more than the'),
        'channels_predict': (['predict', '--symbol', f['symbol'], '--params', f['exported'],
                              '--input-shape', '3,28,28', f['image']], 1,
                             'cannot load the model'),
        # constructor arguments
        'arg_unknown': (export + ['--arg', 'nosuchkw=1'], 1, 'nosuchkw'),
        'arg_classes_negative': (export + ['--arg', 'classes=-5'], 1,
                                 'classes must be an integer >= 1'),
        'arg_classes_flops': (lenet + ['--arg', 'classes=0', '--input-shape', '1,1,28,28'], 1,
                              'classes must be an integer >= 1'),
        'classes_zero': (export + ['--classes', '0'], 2, 'argument --classes'),
        'arg_not_kv': (export + ['--arg', 'thumbnail'], 1, 'not KEY=VALUE'),
        # parameter files
        'export_corrupt': (export + ['--params', f['corrupt']], 1, 'not a parameter file'),
        'export_empty': (export + ['--params', f['empty']], 1, 'not a parameter file'),
        'export_text': (export + ['--params', f['text']], 1, 'not a parameter file'),
        'export_dir': (export + ['--params', f['dir']], 1, 'is a directory'),
        'export_missing': (export + ['--params', f['dir'] + '/nope'], 1, 'no parameter file'),
        'export_other_model': (export + ['--params', f['lenet']], 1,
                               'does not hold parameters of lenet_lcnn_fast'),
        'export_other_classes': (export + ['--params', f['lenet_lcnn_fast'], '--classes', '4'],
                                 1, 'does not hold parameters'),
        'archive_corrupt': (archive + ['--params', f['corrupt']], 1, 'not a parameter file'),
        'archive_empty': (archive + ['--params', f['empty']], 1, 'not a parameter file'),
        'archive_text': (archive + ['--params', f['text']], 1, 'not a parameter file'),
        'archive_other_model': (archive + ['--params', f['lenet']], 1,
                                'does not hold parameters of lenet_lcnn_fast'),
        'archive_top_k_zero': (archive + ['--params', f['lenet_lcnn_fast'], '--top-k', '0'], 2,
                               'argument --top-k'),
        'predict_other_model': (predict + ['--params', f['lenet'], f['image']], 1,
                                'cannot load the model'),
        'predict_corrupt': (predict + ['--params', f['corrupt'], f['image']], 1,
                            'Invalid NDArray file format'),
        'predict_text_symbol': (['predict', '--symbol', f['text'], '--params', f['exported'],
                                 '--input-shape', '1,28,28', f['image']], 1,
                                'cannot load the model'),
        # predict's images and options
        'predict_image_dir': (good + [f['dir']], 1, 'is a directory, not an image file'),
        'predict_image_missing': (good + [f['dir'] + '/nope.png'], 1, 'no image file'),
        'predict_batch_zero': (good + ['--batch-size', '0', f['image']], 2,
                               'argument --batch-size: must be >= 1'),
        'predict_top_k_zero': (good + ['--top-k', '0', f['image']], 2,
                               'argument --top-k: must be >= 1'),
        # benchmark values: refused before any worker process starts
        'bench_batch_zero': (bench + ['--batch', '0'], 2, 'argument --batch: must be >= 1'),
        'bench_size_zero': (bench + ['--size', '0'], 2, 'argument --size: must be >= 1'),
        'bench_repeat_zero': (bench + ['--repeat', '0'], 2, 'argument --repeat: must be >= 1'),
        'bench_density_7': (bench + ['--density', '7'], 2, 'must be in [0, 1]'),
        'bench_density_nan': (bench + ['--density', 'nan'], 2, 'must be in [0, 1]'),
        'bench_density_word': (bench + ['--density', 'dense'], 2, "'published', 'init'"),
        'bench_threads_zero': (bench + ['--threads', '0'], 2, 'argument --threads'),
        'bench_size_small': (bench + ['--size', '8'], 1, 'does not fit lenet_lcnn_fast'),
        'bench_size_huge': (bench + ['--size', '100000'], 1, 'too large'),
        'bench_no_published': (bench + ['--density', 'published'], 1,
                               'no densities for lenet_lcnn_fast'),
        # the checks let good input through
        'ok_flops': (lenet + ['--input-shape', '1,1,28,28'], 0, ''),
        'ok_predict_top_k': (good + ['--top-k', '2', f['image']], 0, ''),
    }


@pytest.fixture(scope='session')
def results(files):
    cases = {key: argv for key, (argv, _, _) in _cases(files).items()}
    proc = subprocess.run([sys.executable, '-c', DRIVER], input=json.dumps(cases), cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


CASE_IDS = sorted(_cases(dict.fromkeys(['dir', 'symbol', 'exported', 'lenet', 'lenet_lcnn_fast',
                                        'corrupt', 'empty', 'text', 'image'], '/x')))


@pytest.mark.parametrize('case', CASE_IDS)
def test_bad_input_gives_one_error_line(case, files, results):
    _, want_rc, text = _cases(files)[case]
    rc, out, err = results[case]
    assert 'Traceback' not in err, err
    assert rc == want_rc, (rc, err)
    if want_rc:
        assert text in err, err
        # The message is the last line; argparse puts its usage lines above it.
        last = err.strip().splitlines()[-1]
        assert 'error: ' in last and (want_rc == 2 or len(err.strip().splitlines()) == 1), err
    if case == 'ok_predict_top_k':
        assert len(json.loads(out.strip().splitlines()[-1])['predictions']) == 2


def test_parse_shape():
    from gluon_lcnn.flops import parse_shape
    assert parse_shape('1,3,224,224') == parse_shape('1x3x224x224') == (1, 3, 224, 224)
    for bad in ('1,x,2', '1,,2', '', '1.5,2', '0,1', '-1,2'):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_shape(bad)
    with pytest.raises(argparse.ArgumentTypeError, match='N,C,H,W'):
        parse_shape('1,2,3', ndim=4)
    assert parse_shape('1,28,28', ndim=(3, 4)) == (1, 28, 28)


def test_python_dash_m_prints_one_line(files):
    proc = subprocess.run([sys.executable, '-m', 'gluon_lcnn', 'export', '--model', 'lenet',
                           '--out', os.path.join(files['dir'], 'out'),
                           '--params', files['corrupt']], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        'gluon-lcnn export: error: %s is not a parameter file written by save_parameters '
        '(Check failed: header == kMXAPINDArrayListMagic: Invalid NDArray file format)'
        % files['corrupt']]


def test_benchmark_worker_reports_bad_input_in_one_line():
    job = dict(kind='models', models=['lenet_lcnn_fast'], batches=[1], density='published',
               size=28, seed=0, repeat=2, breakdown=False)
    proc = subprocess.run([sys.executable, '-m', 'gluon_lcnn.compare', '--worker',
                           json.dumps(job)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith('benchmark worker: error: ')
    assert 'no published densities' in proc.stderr


def test_benchmark_run_passes_a_worker_error_on(monkeypatch):
    from gluon_lcnn import compare

    def failing(job, threads):
        raise RuntimeError('benchmark worker (OMP_NUM_THREADS=1) failed:\n'
                           'benchmark worker: error: bad input\n')
    monkeypatch.setattr(compare, 'run_in_subprocess', failing)
    parser = compare.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(['--model', 'lenet_lcnn_fast', '--threads', '1', '--size', '28',
                              '--batch', '1', '--density', '0.1'])
    with pytest.raises(ValueError, match='^bad input$'):
        compare.run(args)

    def crashing(job, threads):
        raise RuntimeError('benchmark worker (OMP_NUM_THREADS=1) failed:\nTraceback ...\nKeyError')
    monkeypatch.setattr(compare, 'run_in_subprocess', crashing)
    with pytest.raises(RuntimeError):   # a crash (a bug) is not turned into an error line
        compare.run(args)
