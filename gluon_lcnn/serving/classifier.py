"""An exported classifier (symbol, params, op library, signature, class names) that classifies
encoded images: a batch in, per image its top-k list or a RequestError out."""
import json
import logging
import os
import warnings

import mxnet as mx
import numpy as np

from .errors import RequestError, one_line
from .images import preprocess
from .signature import SIGNATURE_FILE, SYNSET_FILE

__all__ = ['load_op_library', 'ImageClassifier']
logger = logging.getLogger(__name__)


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
                                               '%s: %s' % (type(e).__name__, one_line(e)))
        if arrays:
            probs = self.probabilities(np.stack(arrays))   # one forward for the whole batch
            for i, p in zip(valid, probs):
                order = np.argsort(-p)[:self.top_k]
                # 7 significant digits: float32 precision, shorter JSON.
                results[i] = [{'class': self.classes[k], 'probability': float('%.7g' % p[k])}
                              for k in order]
        return results
