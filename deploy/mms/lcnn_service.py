"""MXNet Model Server handler for gluon-lcnn image classifiers.

Self-contained on purpose: the MMS worker may run without gluon_lcnn installed, so this file
needs only mxnet, numpy and OpenCV. ``python -m gluon_lcnn archive`` packs it into a ``.mar``
next to these files::

    signature.json        input name/shape, mean/std, resize, top_k, max_pixels, file names
    synset.txt            one class name per line, in output order
    model-symbol.json     the inference symbol (after gluon_lcnn.deploy.to_inference)
    model-0000.params
    liblcnn_ops.so        the sparse operator library the symbol calls (loaded before the symbol)

Every request is one JPEG or PNG image (raw body or a multipart field). The answer is JSON,
``[{"class": name, "probability": p}, ...]`` best first; a body that is empty, not a JPEG/PNG,
undecodable or larger than ``max_pixels`` gets a 4xx status and ``{"error": ..., "code": ...}``
for that request only, so the rest of an MMS batch and the worker are unaffected.
``python -m gluon_lcnn predict`` runs the same code in-process.
"""
import json
import logging
import os
import struct
import warnings

import cv2
import mxnet as mx
import numpy as np

__all__ = ['RequestError', 'image_size', 'preprocess', 'make_signature', 'ImageClassifier',
           'handle']

SIGNATURE_FILE = 'signature.json'
SYNSET_FILE = 'synset.txt'
DEFAULT_MAX_PIXELS = 25_000_000   # ~5000 x 5000: far beyond any photo worth classifying
logger = logging.getLogger(__name__)


class RequestError(Exception):
    """A problem with one request's input; ``status`` is the HTTP code to answer with."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = int(status)
        self.message = message

    def to_json(self):
        return json.dumps({'error': self.message, 'code': self.status}, separators=(',', ':'))


# --------------------------------------------------------------------------- image input
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# JPEG start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def image_size(data):
    """(format, width, height) read from a PNG or JPEG header, without decoding the pixels.

    Reading the header first lets a pixel-count limit reject a decompression bomb before
    OpenCV allocates it. Raises RequestError 415 for other formats and 400 for a truncated
    or malformed header.
    """
    if data.startswith(_PNG_MAGIC):
        if len(data) < 24 or data[12:16] != b'IHDR':
            raise RequestError(400, 'truncated PNG: no IHDR header')
        width, height = struct.unpack('>II', data[16:24])
        return 'png', width, height
    if data.startswith(b'\xff\xd8'):
        pos = 2
        while pos + 4 <= len(data):
            if data[pos] != 0xFF:
                raise RequestError(400, 'malformed JPEG: bad marker at byte %d' % pos)
            marker = data[pos + 1]
            if marker == 0xFF:              # fill byte before a marker
                pos += 1
                continue
            if marker in (0x01,) or 0xD0 <= marker <= 0xD7:   # markers without a length
                pos += 2
                continue
            if marker in (0xD9, 0xDA):      # end of image / start of scan before any frame
                break
            (length,) = struct.unpack('>H', data[pos + 2:pos + 4])
            if marker in _JPEG_SOF:
                if pos + 9 > len(data):
                    break
                height, width = struct.unpack('>HH', data[pos + 5:pos + 9])
                return 'jpeg', width, height
            pos += 2 + length
        raise RequestError(400, 'truncated or malformed JPEG: no frame header')
    raise RequestError(415, 'unsupported content: expected a JPEG or PNG image (%d bytes, '
                            'starting %r)' % (len(data), bytes(data[:8])))


def preprocess(data, signature):
    """Encoded image bytes -> float32 array (C, H, W) as the model expects it.

    Decodes with OpenCV (gray or RGB as ``signature['channels']``), resizes (shorter side to
    ``resize`` then a centre crop, or straight to the input size when ``resize`` is None),
    scales to [0, 1] and normalises with the signature's per-channel mean and std.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise RequestError(415, 'expected an image body, got %s' % type(data).__name__)
    if not data:
        raise RequestError(400, 'empty request body: send a JPEG or PNG image')
    _, width, height = image_size(data)
    max_pixels = int(signature.get('max_pixels', DEFAULT_MAX_PIXELS))
    if width * height > max_pixels:
        raise RequestError(413, 'image of %dx%d pixels exceeds the limit of %d pixels'
                                % (width, height, max_pixels))
    if width == 0 or height == 0:
        raise RequestError(400, 'image header says %dx%d pixels' % (width, height))
    channels, out_h, out_w = signature['data_shape'][1:]
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if img is None:
        raise RequestError(400, 'could not decode the image (corrupt or truncated JPEG/PNG)')
    if channels == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img = _resize(img, signature.get('resize'), out_h, out_w)
    img = img.reshape(out_h, out_w, channels).astype(np.float32) / 255.0
    img = (img - np.asarray(signature['mean'], np.float32)) / np.asarray(signature['std'],
                                                                        np.float32)
    return img.transpose(2, 0, 1)


def _resize(img, shorter, out_h, out_w):
    h, w = img.shape[:2]
    if shorter:
        scale = float(shorter) / min(h, w)
        new_w, new_h = max(out_w, int(round(w * scale))), max(out_h, int(round(h * scale)))
        img = cv2.resize(img, (new_w, new_h), interpolation=_interpolation(h * w, new_h * new_w))
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
        return img[top:top + out_h, left:left + out_w]
    if (h, w) != (out_h, out_w):
        img = cv2.resize(img, (out_w, out_h), interpolation=_interpolation(h * w, out_h * out_w))
    return img


def _interpolation(before, after):
    # Area averaging avoids aliasing when shrinking; bilinear is the usual choice to enlarge.
    return cv2.INTER_AREA if after < before else cv2.INTER_LINEAR


# --------------------------------------------------------------------------- signature
def make_signature(input_shape, mean=None, std=None, resize=None, top_k=5,
                   max_pixels=DEFAULT_MAX_PIXELS, input_name='data',
                   symbol='model-symbol.json', params='model-0000.params', op_library=None,
                   apply_softmax=True):
    """The validated signature.json content for a model taking ``input_shape`` = (C, H, W).

    ``mean`` and ``std`` are per channel (or one value for all) in [0, 1] pixel units.
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape[1:]) < 1:
        raise ValueError('input_shape must be (channels, height, width) with 1 or 3 channels, '
                         'got %r' % (input_shape,))
    channels = shape[0]

    def per_channel(value, default, name):
        value = [default] if value is None else list(np.atleast_1d(value).astype(float))
        if len(value) == 1:
            value = value * channels
        if len(value) != channels:
            raise ValueError('%s needs 1 or %d values for %d channels, got %r'
                             % (name, channels, channels, value))
        return [float(v) for v in value]
    mean = per_channel(mean, 0.0, 'mean')
    std = per_channel(std, 1.0, 'std')
    if min(std) <= 0:
        raise ValueError('std must be positive, got %r' % (std,))
    if resize is not None and int(resize) < min(shape[1:]):
        raise ValueError('resize (shorter side, %r) must be >= the input height and width %r'
                         % (resize, shape[1:]))
    if int(top_k) < 1 or int(max_pixels) < 1:
        raise ValueError('top_k and max_pixels must be positive, got %r, %r' % (top_k, max_pixels))
    return {
        'inputs': [{'data_name': input_name, 'data_shape': [0] + list(shape)}],
        'input_name': input_name,
        'data_shape': [0] + list(shape),
        'channels': channels,
        'color': 'gray' if channels == 1 else 'rgb',
        'mean': mean,
        'std': std,
        'scale': '1/255',
        'resize': int(resize) if resize else None,
        'top_k': int(top_k),
        'max_pixels': int(max_pixels),
        'apply_softmax': bool(apply_softmax),
        'symbol': symbol,
        'params': params,
        'op_library': op_library,
    }


# --------------------------------------------------------------------------- model
def _missing_ops(symbol_file):
    """Operators the symbol JSON uses that this MXNet does not (yet) know."""
    with open(symbol_file) as f:
        nodes = json.load(f)['nodes']
    used = {n['op'] for n in nodes if n['op'] != 'null'}
    if 'Custom' in used:
        # A training-mode export (archive --no-inference) thresholds P with a Python custom op
        # that only gluon_lcnn registers.
        try:
            import gluon_lcnn.nn  # noqa: F401
        except ImportError:
            raise RuntimeError('symbol %s uses Python custom ops (a training-mode export) that '
                               'need gluon_lcnn installed in the worker; archive the '
                               'to_inference net instead' % symbol_file) from None
    return sorted(used - set(mx.operator.get_all_registered_operators()))


def load_op_library(lib_path, symbol_file):
    """Load ``lib_path`` if the symbol needs operators MXNet does not have yet.

    Skipping an already loaded library matters in-process (``import gluon_lcnn`` loads its
    own copy and a second registration of the same operator names fails).
    """
    missing = _missing_ops(symbol_file)
    if not missing:
        return False
    if not lib_path or not os.path.isfile(lib_path):
        raise RuntimeError('symbol %s uses operators %s that MXNet does not know, and no op '
                           'library was found (%r)' % (symbol_file, missing, lib_path))
    mx.library.load(os.path.abspath(lib_path), verbose=False)
    logger.info('loaded op library %s for operators %s', lib_path, missing)
    still = _missing_ops(symbol_file)
    if still:
        raise RuntimeError('after loading %s MXNet still lacks operators %s' % (lib_path, still))
    return True


class ImageClassifier(object):
    """An exported classifier plus its signature and class names, ready to classify bytes.

    Parameters
    ----------
    model_dir : str
        A directory laid out like an unpacked archive (signature.json, synset.txt, symbol,
        params, optional op library).
    ctx : mx.Context, default mx.cpu()
    """

    def __init__(self, model_dir, ctx=None):
        with open(os.path.join(model_dir, SIGNATURE_FILE)) as f:
            signature = json.load(f)
        synset = os.path.join(model_dir, SYNSET_FILE)
        classes = None
        if os.path.isfile(synset):
            with open(synset) as f:
                classes = [line.rstrip('\n') for line in f if line.strip()]
        lib = signature.get('op_library')
        self._load(os.path.join(model_dir, signature['symbol']),
                   os.path.join(model_dir, signature['params']), signature, classes,
                   os.path.join(model_dir, lib) if lib else None, ctx)

    @classmethod
    def from_files(cls, symbol_file, params_file, signature, classes=None, op_library=None,
                   ctx=None):
        """Build from loose files and a signature dict (see ``make_signature``)."""
        self = cls.__new__(cls)
        self._load(symbol_file, params_file, signature, classes, op_library, ctx)
        return self

    def _load(self, symbol_file, params_file, signature, classes, op_library, ctx):
        self.signature = signature
        self.ctx = ctx or mx.cpu()
        load_op_library(op_library, symbol_file)   # before the symbol: it names the op
        with warnings.catch_warnings():
            # MXNet warns that the input dtype is unknown; float32 is what we feed.
            warnings.filterwarnings('ignore', message='Cannot decide type')
            self.net = mx.gluon.SymbolBlock.imports(symbol_file, [signature['input_name']],
                                                    params_file, ctx=self.ctx)
        self.net.hybridize(static_alloc=True)
        num_out = self.net(mx.nd.zeros([1] + signature['data_shape'][1:], ctx=self.ctx)).shape
        num_classes = int(np.prod(num_out[1:]))
        if classes is None:
            classes = [str(i) for i in range(num_classes)]
        if len(classes) != num_classes:
            raise ValueError('the model has %d outputs but the class list has %d names'
                             % (num_classes, len(classes)))
        self.classes = list(classes)
        self.top_k = min(int(signature.get('top_k', 5)), num_classes)

    def probabilities(self, batch):
        """float32 (N, C, H, W) preprocessed images -> (N, classes) numpy probabilities."""
        out = self.net(mx.nd.array(batch, ctx=self.ctx)).reshape((len(batch), -1))
        if self.signature.get('apply_softmax', True):
            out = mx.nd.softmax(out, axis=1)
        return out.asnumpy()

    def classify(self, images):
        """List of encoded images -> list with, per image, its top-k list or a RequestError."""
        results, arrays, valid = [None] * len(images), [], []
        for i, data in enumerate(images):
            try:
                arrays.append(preprocess(data, self.signature))
                valid.append(i)
            except RequestError as e:
                results[i] = e
        if arrays:
            probs = self.probabilities(np.stack(arrays))   # one forward for the whole batch
            for i, p in zip(valid, probs):
                order = np.argsort(-p)[:self.top_k]
                # 7 significant digits: float32 precision, shorter JSON.
                results[i] = [{'class': self.classes[k], 'probability': float('%.7g' % p[k])}
                              for k in order]
        return results


# --------------------------------------------------------------------------- MMS entry point
_classifier = None
_PHRASES = {400: 'Bad Request', 413: 'Payload Too Large', 415: 'Unsupported Media Type'}


def _request_body(row):
    """The image bytes of one MMS request: raw body ('body'/'data') or the first file field."""
    if not isinstance(row, dict):
        return row
    for key in ('data', 'body'):
        if row.get(key) is not None:
            return row[key]
    for value in row.values():
        if isinstance(value, (bytes, bytearray)):
            return value
    return next(iter(row.values()), b'') if row else b''


def _send_content_type_once():
    """Keep Content-Type out of the per-request header map MMS 1.1.11 sends to its frontend.

    The frontend's decoder (CodecUtils.readMap) checks each header length against the bytes
    received so far instead of waiting for more, so a batch response split across socket
    reads inside that map kills the worker ("Message size exceed limit", "Worker died").
    Content-Type also travels in its own field, which the frontend reads safely, so the map
    entry is a duplicate; dropping it leaves the map empty and the HTTP answer unchanged.
    """
    try:
        from mms.protocol import otf_message_handler as otf
    except ImportError:   # not inside an MMS worker
        return
    encode = getattr(otf, 'encode_response_headers', None)
    if encode is None or getattr(encode, 'lcnn_patched', False):
        return

    def encode_without_content_type(headers):
        return encode({k: v for k, v in headers.items() if k.lower() != 'content-type'})
    encode_without_content_type.lcnn_patched = True
    otf.encode_response_headers = encode_without_content_type


def _aligned(body, idx, context):
    """``body`` plus trailing spaces so this request's record in the batch reply is 16n bytes.

    A second MMS 1.1.11 frontend bug: it reads each record's 4-byte status code without
    checking that 4 bytes have arrived, and dies when a socket read ends right there. Netty
    reads in chunks whose sizes are multiples of 16, and the first record's status code sits
    at byte 86 of the reply (6 mod 16, never cut), so records of 16n bytes keep every later
    status code at the same safe offset. Trailing spaces leave the JSON unchanged. (This holds
    while a batch reply goes out in one socket write, i.e. below ~32 KB: top-k answers of a
    few hundred bytes each.)
    """
    try:
        from mms.protocol.otf_message_handler import encode_response_headers
    except ImportError:   # not inside an MMS worker: nothing to align
        return body
    _, phrase = context.get_response_status(idx)
    fields = [context.get_request_id(idx) or '', context.get_response_content_type(idx) or '',
              phrase or '']
    # Length prefixes of request id, content type, phrase and body, plus the status code.
    size = 5 * 4 + sum(len(f.encode('utf-8')) for f in fields)
    size += len(encode_response_headers(context.get_response_headers(idx)))
    size += len(body.encode('utf-8'))
    return body + ' ' * (-size % 16)


def _dumps(obj):
    # Compact: the whole batch answer goes back to the frontend in one message (see above).
    return json.dumps(obj, separators=(',', ':'))


def handle(data, context):
    """MMS entry point: ``None`` at load time (initialise), else a batch of requests."""
    global _classifier
    if _classifier is None:
        _send_content_type_once()
        model_dir = context.system_properties.get('model_dir')
        _classifier = ImageClassifier(model_dir)
        logger.info('gluon-lcnn model loaded from %s: input %s, %d classes', model_dir,
                    _classifier.signature['data_shape'], len(_classifier.classes))
    if data is None:
        return None
    logger.info('batch of %d request(s)', len(data))   # shows MMS batching in model_log
    results = _classifier.classify([_request_body(row) for row in data])
    out = []
    for idx, res in enumerate(results):
        context.set_response_content_type(idx, 'application/json')
        if isinstance(res, RequestError):
            # Standard reason phrase on the status line; the detail goes in the JSON body.
            context.set_response_status(res.status, _PHRASES.get(res.status, 'Bad Request'), idx)
            body = res.to_json()
        else:
            body = _dumps(res)
        out.append(_aligned(body, idx, context) if len(data) > 1 else body)
    return out
