"""The wheel works outside the checkout: built, installed into a fresh venv, it archives and
predicts.

``pip wheel --no-deps --no-build-isolation`` runs on a copy of the checkout's tracked and
untracked-but-not-ignored files (what a clean clone has: no build/, no built op library), so
the wheel is what a release would be. It goes into a new venv made by this interpreter; that
venv sees this venv's packages (mxnet, model-archiver, ...) through a .pth file, because
``venv --system-site-packages`` from inside a venv gives the base interpreter's packages, not
the parent venv's. From a directory outside the checkout the installed package builds its op
library on first import, ``python -m gluon_lcnn archive`` packs a tiny LeNet-LCNN and
``python -m gluon_lcnn predict --model-dir`` classifies with the archive. Budget: ~35-60 s on 2
shared cores, most of it the op build.
"""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import cv2
import mxnet as mx
import numpy as np
import pytest

import gluon_lcnn
from gluon_lcnn.ops import build as op_build

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVING = ('__init__', 'errors', 'images', 'signature', 'classifier', 'handler')
OP_SOURCES = op_build.SOURCES + op_build.HEADERS


def _run(cmd, cwd, env=None, timeout=240):
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=timeout)
    assert proc.returncode == 0, '%s failed (%d):\n%s' % (cmd, proc.returncode, proc.stdout)
    return proc.stdout


def _copy_checkout(dest):
    """The files a clean clone has (tracked, or new and not ignored) copied to ``dest``."""
    try:
        names = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others',
                                '--exclude-standard'], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip('no git checkout to build the wheel from')
    for name in filter(None, names.split('\0')):
        src = os.path.join(REPO, name)
        if os.path.isfile(src):   # listed but deleted in the work tree: left out
            os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, name))


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
    if not (os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')):
        pytest.skip('no C++ compiler: the installed package cannot build its op library')
    root = tmp_path_factory.mktemp('wheel')
    src, dist = root / 'src', root / 'dist'
    _copy_checkout(str(src))
    _run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
          '--no-index', '-q', '-w', str(dist), '.'], cwd=str(src))
    wheels = [p for p in os.listdir(str(dist)) if p.endswith('.whl')]
    assert len(wheels) == 1, wheels
    return str(dist / wheels[0])


@pytest.fixture(scope='module')
def venv(wheel, tmp_path_factory):
    """(python, site-packages, env) of a fresh venv with the wheel installed."""
    root = tmp_path_factory.mktemp('venv')
    _run([sys.executable, '-m', 'venv', '--without-pip', str(root / 'env')], cwd=str(root))
    python = str(root / 'env' / 'bin' / 'python')
    site = _run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                cwd=str(root)).strip()
    # This venv's packages, as a plain path: its .pth files (this checkout's editable install)
    # are not read, so gluon_lcnn can only come from the wheel.
    with open(os.path.join(site, 'parent_venv.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith('PYTHON')}
    env.update(OMP_NUM_THREADS='1', MXNET_SUBGRAPH_VERBOSE='0', PYTHONDONTWRITEBYTECODE='1')
    env.pop('GLUON_LCNN_OPS_LIB', None)
    _run([python, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', wheel],
         cwd=str(root), env=env)
    return python, site, env


def test_wheel_carries_handler_serving_code_and_op_sources(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = [z.read(n).decode() for n in names if n.endswith('entry_points.txt')]
    assert 'gluon_lcnn/serving/lcnn_service.py' in names
    assert {'gluon_lcnn/serving/%s.py' % m for m in SERVING} <= names
    assert {'gluon_lcnn/ops/' + s for s in OP_SOURCES} <= names
    assert {'gluon_lcnn/ops/build.py', 'gluon_lcnn/archive.py', 'symbols/__init__.py'} <= names
    # Built where it runs: a library built here (-mavx2 for this CPU) must not travel.
    assert not [n for n in names if n.endswith(('.so', '.stamp'))]
    assert not [n for n in names if n.startswith(('deploy/', 'tests/', 'benchmarks/'))]
    assert 'gluon-lcnn = gluon_lcnn.__main__:main' in entry_points[0]


def test_installed_wheel_archives_and_predicts_outside_the_checkout(venv, tmp_path):
    python, site, env = venv
    work = tmp_path / 'elsewhere'
    work.mkdir()
    installed = os.path.join(site, 'gluon_lcnn')
    where = _run([python, '-I', '-c', 'import importlib.util as u; '
                  'print(u.find_spec("gluon_lcnn").origin)'], cwd=str(work), env=env)
    assert where.strip() == os.path.join(installed, '__init__.py')
    assert not os.path.exists(os.path.join(installed, 'ops', 'liblcnn_ops.so'))

    mx.random.seed(0)
    net = gluon_lcnn.get_model('lenet_lcnn_fast', classes=4)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, 1, 28, 28)))
    net.save_parameters(str(work / 'tiny.params'))
    (work / 'classes.txt').write_text('shirt\nshoe\nbag\ncoat\n')
    out = _run([python, '-m', 'gluon_lcnn', 'archive', '--model', 'lenet_lcnn_fast',
                '--params', 'tiny.params', '--classes-file', 'classes.txt', '--out', 'store',
                '--name', 'tiny', '--input-shape', '1,28,28', '--mean', '0.286',
                '--std', '0.353', '--kernel', 'sparse', '--top-k', '2'], cwd=str(work), env=env)
    mar = str(work / 'store' / 'tiny.mar')
    assert out.strip().splitlines()[-1] == mar
    # The first import built the op library inside the installed package.
    lib = os.path.join(installed, 'ops', 'liblcnn_ops.so')
    assert os.path.isfile(lib) and os.path.isfile(lib + '.stamp')

    with zipfile.ZipFile(mar) as z:
        names = set(z.namelist())
        manifest = json.loads(z.read('MAR-INF/MANIFEST.json'))
        packed = {n: z.read(n) for n in names if n.endswith(('.py', '.so'))}
    assert manifest['model']['handler'] == 'lcnn_service:handle'
    assert {'model-symbol.json', 'model-0000.params', 'signature.json', 'synset.txt'} <= names
    # The handler module and the serving code it imports, from the installed package.
    expected = {'lcnn_service.py': os.path.join(installed, 'serving', 'lcnn_service.py'),
                'liblcnn_ops.so': lib}
    expected.update({'lcnn_serving/%s.py' % m: os.path.join(installed, 'serving', m + '.py')
                     for m in SERVING})
    assert set(expected) <= set(packed)
    for name, path in expected.items():
        with open(path, 'rb') as f:
            assert packed[name] == f.read(), name

    rng = np.random.RandomState(0)
    images = []
    for i in range(3):
        images.append(str(work / ('img%d.png' % i)))
        cv2.imwrite(images[-1], rng.randint(0, 256, (28, 28), np.uint8))
    out = _run([python, '-m', 'gluon_lcnn', 'predict', '--model-dir', mar] + images,
               cwd=str(work), env=env)
    lines = [json.loads(line) for line in out.splitlines() if line.startswith('{')]
    assert [line['image'] for line in lines] == images
    # The same archive loaded in this process gives the same answers.
    from gluon_lcnn.predict import load_classifier
    want = load_classifier(model_dir=mar).classify([open(p, 'rb').read() for p in images])
    for line, top in zip(lines, want):
        assert [e['class'] for e in line['predictions']] == [e['class'] for e in top]
        np.testing.assert_allclose([e['probability'] for e in line['predictions']],
                                   [e['probability'] for e in top], atol=1e-5)


def test_unwritable_package_dir_is_a_build_error(monkeypatch):
    """A library that cannot be written next to its sources says what to do, no traceback."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, 'Permission denied')
    monkeypatch.setattr(op_build, 'is_current', lambda: False)
    monkeypatch.setattr(op_build.tempfile, 'mkstemp', refuse)
    with pytest.raises(op_build.BuildError, match='cannot write .*GLUON_LCNN_OPS_LIB'):
        op_build.build()
