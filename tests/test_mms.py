"""Serving with MXNet Model Server: archive, real server on 127.0.0.1, handler, predict CLI.

A LeNet-LCNN is trained briefly on real Fashion-MNIST in the fixture and archived with the CLI
(``python -m gluon_lcnn archive``); an RGB LeNet-LCNN is archived with ``export_archive``. One
MMS process (free ports, logs/pid/tmp files inside a tmp dir) serves both for the module and is
stopped by the fixture finalizer whatever happens. Budget: 35-110 s on 2 shared cores
(measured; mostly the 120 training steps and the JVM + worker start-up).
"""
import concurrent.futures
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import zipfile

import cv2
import mxnet as mx
import numpy as np
import pytest
import requests

import gluon_lcnn
from gluon_lcnn import archive, deploy, serving
from gluon_lcnn.__main__ import main as cli
from gluon_lcnn.data import fashion_mnist

HOST = '127.0.0.1'
N_TEST = 48          # Fashion-MNIST test images sent to the server
TRAIN_STEPS = 120   # ~75-80% test accuracy; 300 steps reach ~87%


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope='module')
def work(tmp_path_factory):
    return tmp_path_factory.mktemp('mms')


@pytest.fixture(scope='module')
def fashion(work):
    """Briefly trained 28x28 gray LeNet-LCNN, its archive (via the CLI) and reference outputs."""
    mx.random.seed(0)
    np.random.seed(0)
    x, y = fashion_mnist.load_fashion_mnist(train=True)
    net = gluon_lcnn.get_model('lenet_lcnn_fast', classes=10)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    trainer = mx.gluon.Trainer(net.collect_params(), 'adam', {'learning_rate': 2e-3})
    loss_fn = mx.gluon.loss.SoftmaxCrossEntropyLoss()
    batch = 64
    for step in range(TRAIN_STEPS):
        idx = np.random.randint(0, len(x), batch)
        with mx.autograd.record():
            loss = loss_fn(net(mx.nd.array(x[idx])), mx.nd.array(y[idx]))
        loss.backward()
        trainer.step(batch)
    params = str(work / 'lenet.params')
    net.save_parameters(params)
    classes_file = work / 'classes.txt'
    classes_file.write_text('\n'.join(fashion_mnist.CLASSES) + '\n')

    store = work / 'store'
    rc = cli(['archive', '--model', 'lenet_lcnn_fast', '--params', params, '--out', str(store),
              '--name', 'fashion', '--classes-file', str(classes_file),
              '--input-shape', '1,28,28', '--mean', str(fashion_mnist.MEAN),
              '--std', str(fashion_mnist.STD), '--top-k', '3', '--kernel', 'sparse'])
    assert rc == 0

    # Reference: deploy.to_inference in this process on the same images, normalised by hand.
    tx, ty = fashion_mnist.load_fashion_mnist(train=False, normalize=False)
    pixels = np.round(tx[:N_TEST, 0] * 255).astype(np.uint8)
    pngs = [cv2.imencode('.png', p)[1].tobytes() for p in pixels]
    inf = deploy.to_inference(net, input_shape=(1, 1, 28, 28), choose='sparse')
    ref_in = (pixels[:, None].astype(np.float32) / 255 - fashion_mnist.MEAN) / fashion_mnist.STD
    probs = mx.nd.softmax(inf(mx.nd.array(ref_in))).asnumpy()
    return {'mar': str(store / 'fashion.mar'), 'pngs': pngs, 'labels': ty[:N_TEST],
            'probs': probs, 'classes': list(fashion_mnist.CLASSES), 'net': net, 'params': params}


@pytest.fixture(scope='module')
def rgb(work):
    """An RGB LeNet-LCNN (3x28x28, resize 32 + centre crop) archived with export_archive."""
    mx.random.seed(1)
    net = gluon_lcnn.get_model('lenet_lcnn_fast', classes=6, in_channels=3)
    net.initialize(mx.init.Xavier())
    classes = ['cat', 'dog', 'person', 'car', 'tree', 'ship']
    mar = archive.export_archive(net, str(work / 'store'), 'rgb', (3, 28, 28), classes=classes,
                                 mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225],
                                 resize=32, top_k=4)
    import matplotlib.cbook
    with matplotlib.cbook.get_sample_data('grace_hopper.jpg', asfileobj=True) as f:
        photo = f.read()
    return {'mar': mar, 'photo': photo, 'classes': classes, 'net': net}


def _free_port(taken=()):
    """A free port below 32767: MMS 1.1.11 refuses larger ones, so bind(0) will not do."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32700)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError('no free port found in 20000-32700')


def _wait(predicate, timeout, what):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if predicate():
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError('timed out after %ds waiting for %s' % (timeout, what))


def _session():
    session = requests.Session()
    session.trust_env = False   # never route 127.0.0.1 through a proxy
    return session


class Server(object):
    def __init__(self, root, inference, management):
        self.root, self.url, self.mgmt = root, inference, management
        self.http = _session()

    def predict(self, model, body, session=None, **kw):
        return (session or self.http).post('%s/predictions/%s' % (self.url, model), data=body,
                                           timeout=60, **kw)

    def healthy(self):
        r = self.http.get(self.url + '/ping', timeout=5)
        return r.status_code == 200 and r.json().get('status') == 'Healthy'

    def log(self, name='mms_log.log'):   # the workers' stdout lands here
        path = os.path.join(self.root, 'logs', name)
        return open(path).read() if os.path.isfile(path) else ''


@pytest.fixture(scope='module')
def server(work, fashion, rgb):
    """A real MMS on free 127.0.0.1 ports serving both archives; always stopped afterwards."""
    root = work / 'server'
    (root / 'logs').mkdir(parents=True)
    ports = (_free_port(),)
    ports += (_free_port(ports),)
    inference, management = ['http://%s:%d' % (HOST, p) for p in ports]
    config = root / 'config.properties'
    config.write_text('\n'.join([
        'inference_address=' + inference,
        'management_address=' + management,
        'model_store=' + str(work / 'store'),
        'default_workers_per_model=1',
        # Image bodies stay bytes even when a client claims JSON (MMS would json.loads them).
        'decode_input_request=false',
        'default_response_timeout=60',
        # Small heap, and no hsperfdata files in /tmp.
        'vmargs=-Xmx384m -XX:-UsePerfData -XX:+UseSerialGC',
    ]) + '\n')
    env = dict(os.environ, TMPDIR=str(root), TEMP=str(root), LOG_LOCATION=str(root / 'logs'),
               METRICS_LOCATION=str(root / 'logs'), OMP_NUM_THREADS='1')
    # The venv's launcher: it starts Java with `--python <this python>` for the workers.
    mms = os.path.join(os.path.dirname(sys.executable), 'multi-model-server')
    assert os.path.isfile(mms), 'multi-model-server not installed next to %s' % sys.executable
    out = open(str(root / 'server.out'), 'w')
    proc = subprocess.Popen([mms, '--start', '--foreground', '--mms-config', str(config)],
                            cwd=str(root), env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)   # own process group: workers die with it
    srv = Server(str(root), inference, management)
    try:
        _wait(lambda: proc.poll() is not None or srv.healthy(), 90, 'MMS /ping')
        assert proc.poll() is None, 'MMS exited: %s' % open(str(root / 'server.out')).read()
        for name, batch in (('fashion', 8), ('rgb', 1)):
            r = srv.http.post(management + '/models', timeout=120, params={
                'url': name + '.mar', 'model_name': name, 'batch_size': batch,
                'max_batch_delay': 50, 'initial_workers': 1, 'synchronous': 'true'})
            assert r.status_code == 200, (r.status_code, r.text, srv.log())
        yield srv
    finally:
        try:
            subprocess.run([mms, '--stop'], cwd=str(root), env=env, timeout=30,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pass
        for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        out.close()
        if proc.poll() is None:
            proc.kill()
        print('--- MMS log tail ---\n' + srv.log()[-5000:])


# --------------------------------------------------------------------------- handler, no server
def test_image_size_reads_png_and_jpeg_headers():
    img = np.zeros((37, 53, 3), np.uint8)
    assert serving.image_size(cv2.imencode('.png', img)[1].tobytes()) == ('png', 53, 37)
    assert serving.image_size(cv2.imencode('.jpg', img)[1].tobytes()) == ('jpeg', 53, 37)
    progressive = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert serving.image_size(progressive) == ('jpeg', 53, 37)
    for bad, code in ((b'GIF89a....', 415), (b'\x89PNG\r\n\x1a\n\x00', 400),
                      (b'\xff\xd8\xff\xe0\x00\x10JFIF', 400)):
        with pytest.raises(serving.RequestError) as e:
            serving.image_size(bad)
        assert e.value.status == code


def test_preprocess_matches_manual_pipeline(rgb):
    """Handler preprocessing = OpenCV decode, RGB, shorter side 32, centre crop, normalise."""
    sig = serving.make_signature((3, 28, 28), mean=[0.485, 0.456, 0.406],
                                 std=[0.229, 0.224, 0.225], resize=32)
    got = serving.preprocess(rgb['photo'], sig)
    img = cv2.cvtColor(cv2.imdecode(np.frombuffer(rgb['photo'], np.uint8), 1), cv2.COLOR_BGR2RGB)
    h, w = img.shape[:2]
    scale = 32.0 / min(h, w)
    nw, nh = int(round(w * scale)), int(round(h * scale))
    img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    top, left = (nh - 28) // 2, (nw - 28) // 2
    img = img[top:top + 28, left:left + 28].astype(np.float32) / 255
    want = ((img - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
    assert got.shape == (3, 28, 28)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _jpeg(pixels, *params):
    return cv2.imencode('.jpg', pixels, list(params))[1].tobytes()


def _png_of_size(width, height):
    """A black gray PNG: a thin strip of a million pixels is about 1 KB."""
    from PIL import Image
    out = io.BytesIO()
    Image.new('L', (width, height)).save(out, 'PNG')
    return out.getvalue()


def _damaged_jpegs(jpeg, seed=0):
    """(name, bytes): the JPEG cut short, and its header followed by garbage."""
    rng = np.random.RandomState(seed)
    sos = jpeg.index(b'\xff\xda')   # OpenCV writes no thumbnail: the first SOS is the scan
    data = sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], 'big')
    return [('half', jpeg[:len(jpeg) // 2]), ('90%', jpeg[:len(jpeg) * 9 // 10]),
            ('no end marker', jpeg[:-2]),
            ('header + garbage', jpeg[:data] + rng.bytes(len(jpeg) - data)),
            ('garbage inside', jpeg[:data + 40] + b'\xff\x3a' + rng.bytes(200)
             + jpeg[data + 242:])]


def _fashion_pixels(fashion, i=0):
    return cv2.imdecode(np.frombuffer(fashion['pngs'][i], np.uint8), cv2.IMREAD_GRAYSCALE)


def test_truncated_or_corrupt_images_get_400(fashion, rgb):
    """OpenCV decodes these without complaint (a half JPEG came back "sneaker" 0.70)."""
    gray = serving.make_signature((1, 28, 28))
    color = serving.make_signature((3, 28, 28), resize=32)
    pixels = _fashion_pixels(fashion)
    jpegs = [('fashion', _jpeg(pixels), gray),
             ('progressive', _jpeg(pixels, cv2.IMWRITE_JPEG_PROGRESSIVE, 1), gray),
             ('restart markers', _jpeg(pixels, cv2.IMWRITE_JPEG_RST_INTERVAL, 1), gray),
             ('photo', rgb['photo'], color)]
    for name, jpeg, sig in jpegs:
        assert serving.preprocess(jpeg, sig).shape == tuple(sig['data_shape'][1:])
        # Bytes after the end-of-image marker are allowed (some cameras append data).
        assert serving.preprocess(jpeg + b'\0' * 64, sig).shape == tuple(sig['data_shape'][1:])
        for damage, body in _damaged_jpegs(jpeg):
            with pytest.raises(serving.RequestError) as e:
                serving.preprocess(body, sig)
            assert e.value.status == 400, (name, damage)
            assert 'truncated or corrupt JPEG' in e.value.message, (name, damage)
    png = fashion['pngs'][0]
    flipped = bytearray(png)
    flipped[len(png) // 2] ^= 0xFF   # inside IDAT: its CRC no longer matches
    for body in (png[:len(png) // 2], png[:-2], bytes(flipped)):
        with pytest.raises(serving.RequestError) as e:
            serving.preprocess(body, gray)
        assert e.value.status == 400 and 'PNG' in e.value.message


def test_pixel_limit_counts_the_resized_image():
    """--resize scales the shorter side: a 1 KB 1 x 1,000,000 PNG would become 256 x 256e6."""
    sig = serving.make_signature((3, 224, 224), resize=256)
    for width, height in ((1, 1000000), (1000000, 1)):
        strip = _png_of_size(width, height)
        assert len(strip) < 5000
        with pytest.raises(serving.RequestError) as e:
            serving.preprocess(strip, sig)
        assert e.value.status == 413 and 'after resizing its shorter side to 256' in \
            e.value.message
    small = serving.make_signature((3, 28, 28), resize=32, max_pixels=1000000)
    with pytest.raises(serving.RequestError) as e:   # 1 x 60,000 -> 32 x 1,920,000
        serving.preprocess(_png_of_size(1, 60000), small)
    assert e.value.status == 413 and '32x1920000' in e.value.message
    # A panorama stays well inside the limit; the check uses the size _resize produces.
    assert serving.preprocess(_png_of_size(1000, 250), sig).shape == (3, 224, 224)
    assert serving.resized_size(1000, 250, 256, 224, 224) == (1024, 256)
    assert serving.resized_size(1000, 250, None, 224, 224) == (224, 224)


def test_decoder_failure_fails_only_that_image(fashion, monkeypatch):
    """An OpenCV error (or any other) while preparing one image answers that image only."""
    from gluon_lcnn.predict import load_classifier
    classifier = load_classifier(model_dir=fashion['mar'])
    pngs = fashion['pngs']
    real = cv2.imdecode

    def imdecode(buf, flags):
        if buf.tobytes() == pngs[1]:
            raise cv2.error('OpenCV(4.8.1) loadsave.cpp:79: error: (-215:Assertion failed) '
                            'pixels <= CV_IO_MAX_IMAGE_PIXELS')
        if buf.tobytes() == pngs[3]:
            raise MemoryError()
        return real(buf, flags)
    monkeypatch.setattr(serving.images.cv2, 'imdecode', imdecode)
    results = classifier.classify(pngs[:5])
    assert [r.status if isinstance(r, serving.RequestError) else 200 for r in results] == \
        [200, 400, 200, 500, 200]
    assert 'could not decode' in results[1].message
    for i in (0, 2, 4):
        assert results[i][0]['class'] == fashion['classes'][int(fashion['probs'][i].argmax())]


def test_make_signature_validates():
    with pytest.raises(ValueError, match='channels'):
        serving.make_signature((2, 28, 28))
    with pytest.raises(ValueError, match='mean'):
        serving.make_signature((3, 28, 28), mean=[0.1, 0.2])
    with pytest.raises(ValueError, match='std'):
        serving.make_signature((1, 28, 28), std=0)
    with pytest.raises(ValueError, match='resize'):
        serving.make_signature((3, 224, 224), resize=100)


def test_archive_contents(fashion):
    with zipfile.ZipFile(fashion['mar']) as z:
        names = set(z.namelist())
        sig = json.loads(z.read('signature.json'))
        manifest = json.loads(z.read('MAR-INF/MANIFEST.json'))
        synset = z.read('synset.txt').decode().split('\n')
        symbol = json.loads(z.read('model-symbol.json'))
    assert {'model-symbol.json', 'model-0000.params', 'lcnn_service.py',
            'liblcnn_ops.so'} <= names
    # The serving code the handler imports travels with it (the worker has no gluon_lcnn).
    assert {'lcnn_serving/%s.py' % m for m in ('__init__', 'errors', 'images', 'signature',
                                               'classifier', 'handler')} <= names
    assert manifest['model']['handler'] == 'lcnn_service:handle'
    assert sig['data_shape'] == [0, 1, 28, 28] and sig['input_name'] == 'data'
    assert sig['mean'] == [pytest.approx(fashion_mnist.MEAN)]
    assert sig['op_library'] == 'liblcnn_ops.so' and sig['top_k'] == 3
    assert synset[:10] == fashion['classes']
    # The inference symbol: BN folded, no training-only custom op, the sparse C++ ops.
    ops = {n['op'] for n in symbol['nodes']}
    assert 'BatchNorm' not in ops and 'Custom' not in ops
    assert {'lcnn_sparse_conv', 'lcnn_sparse_dense'} <= ops


def test_training_graph_archive_gives_the_same_answers(fashion, work):
    """inference=False exports the trained graph (BN, native thresholding) as it is."""
    from gluon_lcnn.predict import load_classifier
    mar = archive.export_archive(fashion['net'], str(work / 'plain'), 'plain', (1, 28, 28),
                                 mean=fashion_mnist.MEAN, std=fashion_mnist.STD, top_k=10,
                                 inference=False)
    with zipfile.ZipFile(mar) as z:
        ops = {n['op'] for n in json.loads(z.read('model-symbol.json'))['nodes']}
    assert 'BatchNorm' in ops and '_greater_scalar' in ops and 'Custom' not in ops
    answers = load_classifier(model_dir=mar).classify(fashion['pngs'][:8])
    for top, ref in zip(answers, fashion['probs']):
        got = sorted((int(e['class']), e['probability']) for e in top)
        np.testing.assert_allclose([p for _, p in got], ref, atol=1e-4)


def test_archive_cli_errors(work, capsys):
    assert cli(['archive', '--model', 'lenet_lcnn_fast', '--params', str(work / 'missing'),
                '--out', str(work / 'x')]) == 1
    assert 'no parameter file' in capsys.readouterr().err
    with pytest.raises(ValueError, match='archive name'):
        archive.export_archive(None, str(work / 'x'), 'bad name!', (1, 28, 28))


def test_predict_cli_matches_in_process_reference(fashion, work, capsys):
    paths = []
    for i, png in enumerate(fashion['pngs'][:8]):
        paths.append(str(work / ('fm%d.png' % i)))
        open(paths[-1], 'wb').write(png)
    garbage = str(work / 'garbage.png')
    open(garbage, 'wb').write(b'not an image at all')
    assert cli(['predict', '--model-dir', fashion['mar']] + paths + [garbage]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]['code'] == 415 and 'JPEG or PNG' in lines[-1]['error']
    want = [fashion['classes'][k] for k in fashion['probs'][:8].argmax(1)]
    assert [line['predictions'][0]['class'] for line in lines[:8]] == want
    # Loose exported files (--symbol/--params) give the same answers.
    unpacked = work / 'unpacked'
    with zipfile.ZipFile(fashion['mar']) as z:
        z.extractall(str(unpacked))
    assert cli(['predict', '--symbol', str(unpacked / 'model-symbol.json'),
                '--params', str(unpacked / 'model-0000.params'), '--input-shape', '1,28,28',
                '--mean', str(fashion_mnist.MEAN), '--std', str(fashion_mnist.STD),
                '--classes-file', str(unpacked / 'synset.txt'), '--top-k', '1'] + paths) == 0
    loose = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line['predictions'][0]['class'] for line in loose] == want
    assert all(len(line['predictions']) == 1 for line in loose)


@pytest.fixture
def archive_handler(monkeypatch):
    """``load(model_dir)``: ``handle`` of an unpacked archive, imported as the MMS worker does
    (``lcnn_service`` from the model directory, with the archive's copy of the serving code);
    the imported modules are forgotten afterwards."""
    import importlib

    def ours():
        return [m for m in sys.modules if m.split('.')[0] in ('lcnn_service', 'lcnn_serving')]

    def load(model_dir):
        monkeypatch.syspath_prepend(str(model_dir))
        module = importlib.import_module('lcnn_service')
        assert module.handle.__module__ == 'lcnn_serving.handler'
        assert os.path.dirname(sys.modules['lcnn_serving'].__file__) == \
            os.path.join(str(model_dir), 'lcnn_serving')
        return module.handle
    assert not ours()
    yield load
    for name in ours():
        del sys.modules[name]


def _parse_worker_reply(msg):
    """Split a worker's binary batch reply (mms.protocol.otf_message_handler) into records."""
    import struct

    def take_int(pos):
        return struct.unpack('!i', bytes(msg[pos:pos + 4]))[0], pos + 4

    def take_str(pos):
        n, pos = take_int(pos)
        return bytes(msg[pos:pos + n]), pos + n
    code, pos = take_int(0)
    _, pos = take_str(pos)
    records = []
    while True:
        n, _ = take_int(pos)
        if n == -1:
            return code, records
        _, pos = take_str(pos)                  # request id
        _, pos = take_str(pos)                  # content type
        status_at = pos
        status, pos = take_int(pos)
        _, pos = take_str(pos)                  # reason phrase
        headers, pos = take_int(pos)
        for _ in range(2 * headers):
            _, pos = take_str(pos)
        body, pos = take_str(pos)
        records.append({'status': status, 'status_at': status_at, 'headers': headers,
                        'body': json.loads(body.decode())})


def test_handler_batch_reply_is_safe_for_the_mms_frontend(fashion, work, archive_handler):
    """In-process MMS Service + the archive's handler on a mixed batch: per-request statuses,
    and no status code a 16-byte-multiple socket read could cut (the MMS 1.1.11 frontend bug
    worked around)."""
    import uuid
    from mms.service import Service
    model_dir = work / 'unpacked_service'
    with zipfile.ZipFile(fashion['mar']) as z:
        z.extractall(str(model_dir))
    handle = archive_handler(model_dir)
    service = Service('fashion', str(model_dir), None, handle, None, 8)
    handle(None, service.context)               # MMS's load call
    bodies = [fashion['pngs'][0], b'junk', b'', fashion['pngs'][1], b'\x89PNG\r\n\x1a\nxx',
              fashion['pngs'][2], cv2.imencode('.png', np.zeros((6000, 6000), np.uint8))[1]
              .tobytes(), fashion['pngs'][3]]
    batch = [{'requestId': str(uuid.uuid4()).encode(), 'headers': [],
              'parameters': [{'name': 'body', 'contentType': 'application/octet-stream',
                              'value': bytearray(b)}]} for b in bodies]
    code, records = _parse_worker_reply(service.predict(batch))
    assert code == 200
    assert [r['status'] for r in records] == [200, 415, 400, 200, 400, 200, 413, 200]
    for png, k in enumerate((0, 3, 5, 7)):
        top1 = records[k]['body'][0]['class']
        assert top1 == fashion['classes'][int(fashion['probs'][png].argmax())]
    for r in records:
        assert r['headers'] == 0                # no header map for the frontend to misread
        assert (r['status_at'] + 3) // 16 == r['status_at'] // 16 and r['status_at'] % 16, r


# --------------------------------------------------------------------------- real server
def test_server_fashion_mnist_matches_to_inference(server, fashion):
    # The worker (no gluon_lcnn imported) loaded the archive's own copy of the op library.
    assert 'loaded op library' in server.log() and 'liblcnn_ops.so' in server.log()
    correct = 0
    for png, ref, label in zip(fashion['pngs'], fashion['probs'], fashion['labels']):
        r = server.predict('fashion', png)
        assert r.status_code == 200, r.text
        assert r.headers['content-type'].startswith('application/json')
        top = r.json()
        assert len(top) == 3
        assert top[0]['class'] == fashion['classes'][int(ref.argmax())]
        for entry in top:
            k = fashion['classes'].index(entry['class'])
            assert entry['probability'] == pytest.approx(float(ref[k]), abs=1e-4)
        correct += top[0]['class'] == fashion['classes'][int(label)]
    # Trained for a few hundred steps: clearly better than chance (10%).
    assert correct / float(len(fashion['pngs'])) > 0.5


def test_server_rgb_photo(server, rgb, work):
    r = server.predict('rgb', rgb['photo'], headers={'Content-Type': 'image/jpeg'})
    assert r.status_code == 200, r.text
    top = r.json()
    assert [sorted(e) for e in top] == [['class', 'probability']] * 4
    probs = [e['probability'] for e in top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert {e['class'] for e in top} <= set(rgb['classes'])
    # Multipart upload works too, and the answer equals the in-process handler's.
    r2 = server.http.post(server.url + '/predictions/rgb', timeout=60,
                          files={'data': ('hopper.jpg', rgb['photo'], 'image/jpeg')})
    assert r2.status_code == 200 and r2.json() == top
    from gluon_lcnn.predict import load_classifier
    local = load_classifier(model_dir=rgb['mar']).classify([rgb['photo']])[0]
    assert [e['class'] for e in local] == [e['class'] for e in top]
    np.testing.assert_allclose([e['probability'] for e in local], probs, atol=1e-5)


def test_server_bad_inputs_get_4xx_and_worker_survives(server, fashion):
    big = cv2.imencode('.png', np.zeros((6000, 6000), np.uint8))[1].tobytes()   # 36 MPixel
    cases = [
        (b'', {}, 400),
        (b'this is not an image', {}, 415),
        (b'{"broken json', {'Content-Type': 'application/json'}, 415),
        (fashion['pngs'][0][:60], {}, 400),        # truncated PNG
        (b'\xff\xd8\xff\xe0' + os.urandom(500), {}, 400),   # JPEG magic, garbage after
        (big, {}, 413),
    ]
    for body, headers, code in cases:
        r = server.predict('fashion', body, headers=headers)
        assert r.status_code == code, (code, r.status_code, r.text)
        err = r.json()
        assert err['code'] == code and err['error']
        assert server.healthy()
    r = server.predict('fashion', fashion['pngs'][0])
    assert r.status_code == 200 and r.json()[0]['class']


def test_server_truncated_corrupt_and_thin_images(server, fashion, rgb):
    """Damaged JPEG/PNGs get 400 and a thin strip 413 (rgb resizes to 32), each with a
    message; the worker keeps answering."""
    jpeg = _jpeg(_fashion_pixels(fashion))
    r = server.predict('fashion', jpeg)
    assert r.status_code == 200, r.text
    cases = [('fashion', body, 400) for _, body in _damaged_jpegs(jpeg)]
    cases += [('rgb', rgb['photo'][:len(rgb['photo']) // 2], 400),
              ('fashion', fashion['pngs'][0][:-2], 400),
              ('rgb', _png_of_size(1, 1000000), 413)]
    for model, body, code in cases:
        r = server.predict(model, body)
        assert r.status_code == code, (model, code, r.status_code, r.text)
        err = r.json()
        assert err['code'] == code and err['error']
    assert server.healthy()
    r = server.predict('rgb', rgb['photo'])
    assert r.status_code == 200 and r.json()[0]['class'] in rgb['classes']


def test_server_mixed_batch_per_request_status(server, fashion):
    """Good and bad requests arriving together (one MMS batch) each get their own status."""
    bodies = [fashion['pngs'][i] if i % 2 else b'garbage %d' % i for i in range(16)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: server.predict('fashion', b, session=_session()),
                                bodies))
    for i, r in enumerate(results):
        if i % 2:
            assert r.status_code == 200, r.text
            assert r.json()[0]['class'] == fashion['classes'][int(fashion['probs'][i].argmax())]
        else:
            assert r.status_code == 415, r.text
    assert server.healthy()


def test_server_concurrent_clients(server, fashion):
    """8 clients x 50 requests: zero errors, every answer right, and MMS batched requests."""
    n_clients, n_requests = 8, 50
    expected = [fashion['classes'][int(k)] for k in fashion['probs'].argmax(1)]

    def client(seed):
        session = _session()
        errors = []
        for j in range(n_requests):
            i = (seed * n_requests + j) % len(fashion['pngs'])
            try:
                r = server.predict('fashion', fashion['pngs'][i], session=session)
                if r.status_code != 200 or r.json()[0]['class'] != expected[i]:
                    errors.append((i, r.status_code, r.text[:200]))
            except requests.RequestException as e:
                errors.append((i, 'exception', repr(e)))
        return errors

    t = time.time()
    with concurrent.futures.ThreadPoolExecutor(n_clients) as pool:
        errors = sum(pool.map(client, range(n_clients)), [])
    elapsed = time.time() - t
    assert errors == [], errors[:5]
    print('%d requests in %.1fs (%.0f req/s)' % (n_clients * n_requests, elapsed,
                                                 n_clients * n_requests / elapsed))
    sizes = [int(line.split('batch of ')[1].split()[0])
             for line in server.log().splitlines() if 'batch of ' in line]
    assert sizes and max(sizes) > 1, 'MMS never sent a batch of more than one request'
    assert server.healthy()
