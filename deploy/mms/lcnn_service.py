"""MXNet Model Server handler for gluon-lcnn image classifiers.

Self-contained on purpose: the MMS worker may run without gluon_lcnn installed, so this file
needs only mxnet, numpy, OpenCV and Pillow (which MMS itself requires). ``python -m gluon_lcnn
archive`` packs it into a ``.mar`` next to these files::

    signature.json        input name/shape, mean/std, resize, top_k, max_pixels, file names
    synset.txt            one class name per line, in output order
    model-symbol.json     the inference symbol (after gluon_lcnn.deploy.to_inference)
    model-0000.params
    liblcnn_ops.so        the sparse operator library the symbol calls (loaded before the symbol)

Every request is one JPEG or PNG image (raw body or a multipart field). The answer is JSON,
``[{"class": name, "probability": p}, ...]`` best first; a body that is empty (400), not a
JPEG/PNG (415), truncated, corrupt or undecodable (400), or of more than ``max_pixels`` pixels
before or after the ``resize`` of its shorter side (413) gets that status and
``{"error": ..., "code": ...}`` for that request only, so the rest of an MMS batch and the
worker are unaffected.
``python -m gluon_lcnn predict`` runs the same code in-process.
"""
import io
import json
import logging
import os
import warnings

import cv2
import mxnet as mx
import numpy as np
from PIL import Image, ImageFile

__all__ = ['RequestError', 'image_size', 'resized_size', 'preprocess', 'make_signature',
           'ImageClassifier', 'handle']

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
_JPEG_MAGIC = b'\xff\xd8'
# Pillow's names -> ours; MPO is a JPEG with extra frames (Pillow identifies it by its APP2).
_FORMATS = {'JPEG': 'jpeg', 'MPO': 'jpeg', 'PNG': 'png'}


def _open_image(data):
    """(format, PIL image) of encoded bytes: Pillow parses the header only, no pixels yet.

    RequestError 415 for content that is neither JPEG nor PNG, 400 for one that starts like
    them but has a truncated or malformed header, 413 for Pillow's decompression-bomb guard
    (more than twice ``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    claimed = 'png' if data.startswith(_PNG_MAGIC) else (
        'jpeg' if data.startswith(_JPEG_MAGIC) else None)
    if claimed is None:
        raise RequestError(415, 'unsupported content: expected a JPEG or PNG image (%d bytes, '
                                'starting %r)' % (len(data), bytes(data[:8])))
    try:
        with warnings.catch_warnings():
            # Our own max_pixels decides; Pillow's warning below its hard limit is noise.
            warnings.simplefilter('ignore', Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=('JPEG', 'PNG'))
    except Image.DecompressionBombError as e:
        raise RequestError(413, 'image refused before decoding: %s' % e) from None
    except Exception as e:   # any parse failure of untrusted bytes is the request's fault
        raise RequestError(400, 'truncated or malformed %s header (%d bytes): %s'
                                % (claimed.upper(), len(data), _one_line(e))) from None
    fmt = _FORMATS.get(img.format)
    if fmt != claimed:
        raise RequestError(400, 'malformed %s: read as %s' % (claimed.upper(), img.format))
    return fmt, img


def _one_line(err):
    text = str(err).strip().splitlines()
    return text[-1].strip() if text else type(err).__name__


def image_size(data):
    """(format, width, height) read from a PNG or JPEG header, without decoding the pixels.

    Reading the header first lets a pixel-count limit reject a decompression bomb before
    anything allocates it. Raises RequestError 415 for other formats, 400 for a truncated or
    malformed header and 413 past Pillow's decompression-bomb limit.
    """
    fmt, img = _open_image(data)
    return (fmt,) + tuple(img.size)


# Markers that may sit between the scans of a progressive JPEG, each with a length: DHT, DAC,
# SOS, DQT, DNL, DRI, APPn, COM.
_JPEG_SEGMENTS = {0xC4, 0xCC, 0xDA, 0xDB, 0xDC, 0xDD, 0xFE} | set(range(0xE0, 0xF0))


def _jpeg_stream_problem(data):
    """Why the marker structure of a JPEG is broken, or None when it is sound.

    Walks the header segments by their lengths to the first start-of-scan, then the
    entropy-coded data: there a 0xFF byte may only be stuffing (FF 00), fill (FF FF), a
    restart marker (FF D0-D7), a table or scan header of a progressive JPEG, or the
    end-of-image marker FF D9, which must come (bytes after it are ignored: some cameras append
    data). Garbage after a valid header rarely passes: it has no end-of-image marker, or a
    0xFF followed by anything else.
    """
    n, pos, scan = len(data), 2, False
    while True:
        if not scan:   # a header segment starts at pos
            while pos + 1 < n and data[pos] == 0xFF and data[pos + 1] == 0xFF:
                pos += 1
            if pos + 4 > n:
                return 'the data ends at byte %d, before the image data' % n
            if data[pos] != 0xFF:   # junk between segments: skipped, as libjpeg does
                pos = data.find(b'\xff', pos)
                if pos < 0:
                    return 'no image data after the header'
                continue
            marker = data[pos + 1]
            if marker == 0xD9:
                return 'end-of-image marker at byte %d before any image data' % pos
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:   # TEM, RSTn: no length
                pos += 2
                continue
            length = int.from_bytes(data[pos + 2:pos + 4], 'big')
            if length < 2:
                return 'segment 0xFF%02X at byte %d has length %d' % (marker, pos, length)
            pos += 2 + length
            scan = marker == 0xDA
            continue
        ff = data.find(b'\xff', pos)
        if ff < 0 or ff + 1 >= n:
            return 'no end-of-image marker after the image data'
        marker = data[ff + 1]
        if marker == 0xD9:
            return None
        if marker == 0xFF:
            pos = ff + 1
        elif marker == 0x00 or 0xD0 <= marker <= 0xD7:
            pos = ff + 2
        elif marker in _JPEG_SEGMENTS:
            pos, scan = ff, False
        else:
            return 'corrupt image data: marker 0xFF%02X at byte %d' % (marker, ff)


def _check_complete(fmt, img, data):
    """RequestError 400 unless the whole encoded image is there and intact.

    OpenCV decodes a truncated JPEG, or a valid header followed by garbage, without an error
    (the missing part comes out grey or smeared), so the data is checked first: a JPEG must
    have a sound marker structure up to its end-of-image marker (``_jpeg_stream_problem``); a
    PNG has the CRC of every chunk checked up to IEND (Pillow's ``verify``), and OpenCV refuses
    a PNG whose compressed data ends early. JPEG carries no checksum: damage inside its coded
    data that keeps the marker structure intact can still pass.
    """
    if fmt == 'jpeg':
        problem = _jpeg_stream_problem(data)
        if problem:
            raise RequestError(400, 'truncated or corrupt JPEG: %s' % problem)
        return
    # A process-wide switch that other code may have turned on (gluoncv.data does on import);
    # it would let verify skip bad checksums.
    tolerant, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        img.verify()
    except Exception as e:   # OSError, SyntaxError, struct.error ... from the bytes
        raise RequestError(400, 'truncated or corrupt PNG: %s' % _one_line(e)) from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = tolerant


def resized_size(width, height, shorter, out_h, out_w):
    """(width, height) of the image ``preprocess`` resizes to before its centre crop."""
    if not shorter:
        return out_w, out_h
    scale = float(shorter) / min(height, width)
    return max(out_w, int(round(width * scale))), max(out_h, int(round(height * scale)))


def preprocess(data, signature):
    """Encoded image bytes -> float32 array (C, H, W) as the model expects it.

    Checks the header (format, pixel count, and the pixel count after resizing), then that the
    data is complete, then decodes with OpenCV (gray or RGB as ``signature['channels']``),
    resizes (shorter side to ``resize`` then a centre crop, or straight to the input size when
    ``resize`` is None), scales to [0, 1] and normalises with the signature's per-channel mean
    and std. Every problem with the image is a RequestError (4xx) for this image only.
    """
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise RequestError(415, 'expected an image body, got %s' % type(data).__name__)
    if not data:
        raise RequestError(400, 'empty request body: send a JPEG or PNG image')
    fmt, pil_image = _open_image(data)
    width, height = pil_image.size
    max_pixels = int(signature.get('max_pixels', DEFAULT_MAX_PIXELS))
    if width * height > max_pixels:
        raise RequestError(413, 'image of %dx%d pixels exceeds the limit of %d pixels'
                                % (width, height, max_pixels))
    if width == 0 or height == 0:
        raise RequestError(400, 'image header says %dx%d pixels' % (width, height))
    channels, out_h, out_w = signature['data_shape'][1:]
    shorter = signature.get('resize')
    new_w, new_h = resized_size(width, height, shorter, out_h, out_w)
    if new_w * new_h > max_pixels:
        # A thin strip (1 x 60,000) is tiny encoded but huge once its shorter side is scaled up.
        raise RequestError(413, 'image of %dx%d pixels would be %dx%d after resizing its '
                                'shorter side to %d, more than the limit of %d pixels'
                                % (width, height, new_w, new_h, shorter, max_pixels))
    _check_complete(fmt, pil_image, data)
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    try:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    except cv2.error as e:
        raise RequestError(400, 'could not decode the %s: %s' % (fmt.upper(), _one_line(e))
                           ) from None
    if img is None:
        raise RequestError(400, 'could not decode the image (corrupt or truncated %s)'
                                % fmt.upper())
    if sorted(img.shape[:2]) != sorted((height, width)):   # EXIF rotation may swap them
        raise RequestError(400, 'corrupt %s: header says %dx%d pixels, decoded %dx%d'
                                % (fmt.upper(), width, height, img.shape[1], img.shape[0]))
    try:
        if channels == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        img = _resize(img, shorter, out_h, out_w)
    except cv2.error as e:
        raise RequestError(400, 'could not resize the %dx%d image: %s'
                                % (width, height, _one_line(e))) from None
    img = img.reshape(out_h, out_w, channels).astype(np.float32) / 255.0
    img = (img - np.asarray(signature['mean'], np.float32)) / np.asarray(signature['std'],
                                                                        np.float32)
    return img.transpose(2, 0, 1)


def _resize(img, shorter, out_h, out_w):
    h, w = img.shape[:2]
    if shorter:
        new_w, new_h = resized_size(w, h, shorter, out_h, out_w)
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
            except Exception as e:   # a bug or a library failure: this image only, logged
                logger.exception('preprocessing request %d of the batch failed', i)
                results[i] = RequestError(500, 'internal error while preprocessing the image: '
                                               '%s: %s' % (type(e).__name__, _one_line(e)))
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
_PHRASES = {400: 'Bad Request', 413: 'Payload Too Large', 415: 'Unsupported Media Type',
            500: 'Internal Server Error'}


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
