"""Serving gluon-lcnn image classifiers: the code a Model Server archive (.mar) runs, which
``python -m gluon_lcnn predict`` runs in-process.

One concept per module:

    errors.py       RequestError: the HTTP status and message of one bad request
    images.py       image bytes -> model input: JPEG/PNG header, pixel limits, completeness,
                    decoding, resize and centre crop, normalisation
    signature.py    signature.json (make_signature) and the names of the archive's files
    classifier.py   ImageClassifier: symbol + params + op library -> top-k per image
    handler.py      handle(data, context), the MMS entry point, and its MMS 1.1.11 workarounds
    lcnn_service.py the .mar's handler module (``lcnn_service:handle``); not imported here

These modules import only each other (relatively), mxnet, numpy, OpenCV and Pillow (and
gluon_lcnn.nn for a training-mode symbol only): ``archive`` copies them into every .mar as the
package ``lcnn_serving`` next to ``lcnn_service.py``, so an MMS worker runs them without
gluon_lcnn installed. An archive holds::

    lcnn_service.py       the handler module MMS imports
    lcnn_serving/         a copy of this package
    signature.json        input name/shape, mean/std, resize, top_k, max_pixels, file names
    synset.txt            one class name per line, in output order
    model-symbol.json     the inference symbol (after gluon_lcnn.deploy.to_inference)
    model-0000.params
    liblcnn_ops.so        the sparse operator library the symbol calls (loaded before the symbol)

The answer to a request is JSON, ``[{"class": name, "probability": p}, ...]`` best first, or
for a bad image ``{"error": ..., "code": ...}`` with its 4xx status (``images``), for that
request only: the rest of an MMS batch and the worker are unaffected.
"""
from .errors import RequestError
from .signature import SIGNATURE_FILE, SYNSET_FILE, DEFAULT_MAX_PIXELS, make_signature
from .images import image_size, resized_size, preprocess
from .classifier import ImageClassifier, load_op_library

__all__ = ['RequestError', 'SIGNATURE_FILE', 'SYNSET_FILE', 'DEFAULT_MAX_PIXELS',
           'make_signature', 'image_size', 'resized_size', 'preprocess', 'ImageClassifier',
           'load_op_library']
