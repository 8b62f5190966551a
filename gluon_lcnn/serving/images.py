"""Untrusted image bytes -> the model's input: format and size checks, completeness, decoding.

Every request is one JPEG or PNG image. A body that is empty (400), not a JPEG/PNG (415),
truncated, corrupt or undecodable (400), or of more than ``max_pixels`` pixels before or after
the ``resize`` of its shorter side (413) raises a ``RequestError`` with that status.
"""
import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageFile

from .errors import RequestError, one_line
from .signature import DEFAULT_MAX_PIXELS

__all__ = ['image_size', 'resized_size', 'preprocess']

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
                                % (claimed.upper(), len(data), one_line(e))) from None
    fmt = _FORMATS.get(img.format)
    if fmt != claimed:
        raise RequestError(400, 'malformed %s: read as %s' % (claimed.upper(), img.format))
    return fmt, img


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
        raise RequestError(400, 'truncated or corrupt PNG: %s' % one_line(e)) from None
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
        raise RequestError(400, 'could not decode the %s: %s' % (fmt.upper(), one_line(e))
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
                                % (width, height, one_line(e))) from None
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
