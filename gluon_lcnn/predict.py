"""Classify image files in-process with an exported model, exactly as the model server would.

``python -m gluon_lcnn predict --model-dir DIR_OR_MAR IMAGE...`` reads an archive (``.mar``
or its unpacked directory); ``--symbol S --params P --input-shape C,H,W [--mean --std
--classes-file]`` takes loose exported files instead. Decoding, resizing and normalisation are
the model server's own code (``gluon_lcnn.serving``). Prints one JSON line per image:
``{"image": path, "predictions": [{"class": ..., "probability": ...}, ...]}`` or
``{"image": path, "error": ..., "code": 4xx}``; the exit status is 1 if any image failed.
"""
import json
import os
import shutil
import sys
import tempfile
import zipfile

from .archive import _floats, _shape, check_params_file, read_classes
from .cli_args import positive_int

__all__ = ['load_classifier', 'predict_files', 'add_arguments', 'run']


def load_classifier(model_dir=None, symbol=None, params=None, input_shape=None, mean=None,
                    std=None, resize=None, classes=None, top_k=5, op_library=None):
    """A ``serving.ImageClassifier`` from an archive or from loose files.

    ``model_dir`` may be a ``.mar`` file (unpacked into a temporary directory that is removed
    once the model is loaded) or a directory with the archive's files.
    """
    import gluon_lcnn  # noqa: F401  (loads the op library the symbol may need)
    from .serving import SIGNATURE_FILE, ImageClassifier, make_signature
    if model_dir is not None:
        if symbol or params:
            raise ValueError('give either model_dir or symbol + params, not both')
        if os.path.isfile(model_dir):
            if not zipfile.is_zipfile(model_dir):
                raise ValueError('%s is neither a directory nor a .mar archive' % model_dir)
            tmp = tempfile.mkdtemp(prefix='lcnn_predict_')
            try:
                with zipfile.ZipFile(model_dir) as z:
                    z.extractall(tmp)
                return _loading(model_dir, ImageClassifier, tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isfile(os.path.join(model_dir, SIGNATURE_FILE)):
            raise FileNotFoundError('%s is neither a .mar archive nor a directory with %s'
                                    % (model_dir, SIGNATURE_FILE))
        return _loading(model_dir, ImageClassifier, model_dir)
    if not (symbol and params and input_shape):
        raise ValueError('need model_dir, or symbol, params and input_shape')
    _check_file(symbol, 'symbol file')
    check_params_file(params)
    signature = make_signature(input_shape, mean=mean, std=std, resize=resize, top_k=top_k)
    return _loading('%s with %s' % (symbol, params), ImageClassifier.from_files,
                    symbol, params, signature, classes=classes, op_library=op_library)


def _check_file(path, what):
    """FileNotFoundError / ValueError unless ``path`` is an existing file, not a directory."""
    if os.path.isdir(path):
        raise ValueError('%s is a directory, not %s %s'
                         % (path, 'an' if what[0] in 'aeiou' else 'a', what))
    if not os.path.isfile(path):
        raise FileNotFoundError('no %s at %s' % (what, path))


def _loading(what, load, *args, **kwargs):
    """``load(*args, **kwargs)``; what MXNet or Gluon raise on files that are not the model's
    (garbage, another model's parameters, an input shape it cannot take) becomes one ValueError
    naming ``what``."""
    import mxnet as mx
    from .cli_args import error_line
    try:
        return load(*args, **kwargs)
    except (mx.base.MXNetError, AssertionError, ValueError) as err:
        raise ValueError('cannot load the model %s: %s' % (what, error_line(err))) from err


def predict_files(classifier, paths, batch_size=16):
    """Yield (path, top-k list or RequestError) for every image file, ``batch_size`` at a time."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        images = []
        for path in chunk:
            with open(path, 'rb') as f:
                images.append(f.read())
        for path, result in zip(chunk, classifier.classify(images)):
            yield path, result


def add_arguments(parser):
    """Options of ``python -m gluon_lcnn predict``."""
    parser.add_argument('images', nargs='+', help='JPEG or PNG files')
    parser.add_argument('--model-dir', help='a .mar archive or its unpacked directory')
    parser.add_argument('--symbol', help='exported symbol JSON (instead of --model-dir)')
    parser.add_argument('--params', help='exported params (with --symbol)')
    parser.add_argument('--op-library', help='op library for --symbol (default: gluon_lcnn\'s)')
    parser.add_argument('--input-shape', type=_shape, help='C,H,W (with --symbol)')
    parser.add_argument('--mean', type=_floats, help='per-channel mean in [0, 1] units')
    parser.add_argument('--std', type=_floats, help='per-channel std in [0, 1] units')
    parser.add_argument('--resize', type=positive_int, help='shorter side before the centre crop')
    parser.add_argument('--classes-file', help='class names, one per line (with --symbol)')
    parser.add_argument('--top-k', type=positive_int, help='how many classes to print '
                        '(default: the archive\'s, or 5)')
    parser.add_argument('--batch-size', type=positive_int, default=16,
                        help='images classified together (default 16)')
    return parser


def run(args):
    """Classify ``args.images``; print JSON lines; return 0, or 1 if any image failed."""
    for path in args.images:   # before the model is loaded
        _check_file(path, 'image file')
    classifier = load_classifier(
        model_dir=args.model_dir, symbol=args.symbol, params=args.params,
        input_shape=args.input_shape, mean=args.mean, std=args.std, resize=args.resize,
        classes=read_classes(args.classes_file) if args.classes_file else None,
        top_k=args.top_k or 5, op_library=args.op_library)
    if args.top_k:
        classifier.top_k = min(args.top_k, len(classifier.classes))
    failed = 0
    for path, result in predict_files(classifier, args.images, args.batch_size):
        if isinstance(result, list):
            line = {'image': path, 'predictions': result}
        else:
            line = {'image': path, 'error': result.message, 'code': result.status}
            failed += 1
        print(json.dumps(line))
    return 1 if failed else 0


if __name__ == '__main__':
    from gluon_lcnn.__main__ import main
    sys.exit(main(['predict'] + sys.argv[1:]))
