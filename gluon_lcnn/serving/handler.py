"""The MXNet Model Server entry point ``handle(data, context)`` and the MMS 1.1.11 frontend
workarounds its batch replies need."""
import json
import logging

from .classifier import ImageClassifier
from .errors import RequestError

__all__ = ['handle']
logger = logging.getLogger(__name__)
_classifier = None   # loaded on MMS's first call
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
