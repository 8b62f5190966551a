"""Package a trained gluon-lcnn classifier as an MXNet Model Server archive (.mar).

``python -m gluon_lcnn archive --model NAME --params FILE --out DIR [--classes-file FILE]
[--input-shape 1,28,28] [--mean 0.286 --std 0.353]`` rebuilds the zoo model, loads the
trained parameters, converts it with ``gluon_lcnn.deploy.to_inference`` (BN folded, lookup
layers running the sparse C++ operator), exports symbol + params and packs them with the op
library, ``signature.json``, ``synset.txt``, the handler module ``lcnn_service.py`` and the
serving code it imports (a copy of ``gluon_lcnn/serving/`` named ``lcnn_serving``) using
model-archiver. ``export_archive(net, ...)`` does the same for a net you already hold.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import mxnet as mx

from .cli_args import check_params_file, load_parameters

__all__ = ['HANDLER_ENTRY', 'serving_files', 'op_library_path', 'inference_net',
           'export_archive', 'load_parameters', 'add_arguments', 'run']

SERVING_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'serving')
HANDLER_MODULE = 'lcnn_service.py'   # the .mar's handler module, at the top of the archive
HANDLER_ENTRY = 'lcnn_service:handle'
SERVING_PACKAGE = 'lcnn_serving'     # the archive's copy of gluon_lcnn/serving/ (it imports it)


def serving_files():
    """(source path, path inside the archive) of the handler module and the serving code.

    ``predict`` runs the same modules as ``gluon_lcnn.serving``, so what runs in the server and
    in-process is the same code.
    """
    files = [(os.path.join(SERVING_DIR, HANDLER_MODULE), HANDLER_MODULE)]
    for name in sorted(os.listdir(SERVING_DIR)):
        if name.endswith('.py') and name != HANDLER_MODULE:
            files.append((os.path.join(SERVING_DIR, name), os.path.join(SERVING_PACKAGE, name)))
    if not os.path.isfile(files[0][0]) or len(files) == 1:
        raise FileNotFoundError('the serving code is missing from %s (a broken gluon_lcnn '
                                'install?)' % SERVING_DIR)
    return files


def op_library_path():
    """Path of the built sparse-op library (liblcnn_ops.so), or None if it is not built."""
    from .ops import lib_path
    path = lib_path()
    return path if os.path.isfile(path) else None


def inference_net(net, input_shape, kernel='auto'):
    """``deploy.to_inference(net, input_shape=(1,) + input_shape, choose=kernel)``."""
    from .deploy import to_inference
    return to_inference(net, input_shape=(1,) + tuple(input_shape), choose=kernel)


def export_archive(net, out_dir, model_name, input_shape, classes=None, mean=None, std=None,
                   resize=None, top_k=5, max_pixels=None, inference=True, kernel='auto',
                   force=True):
    """Write ``out_dir/model_name.mar`` serving ``net`` and return its path.

    Parameters
    ----------
    net : HybridBlock
        A trained classifier (parameters initialised) returning logits.
    out_dir : str
    model_name : str
        Name of the archive and of the model in MMS (letters, digits, '_', '-', '.').
    input_shape : (C, H, W)
        C is 1 (gray) or 3 (RGB).
    classes : list of str, optional
        Class names in output order (default: the output index).
    mean, std : float or list of float, optional
        Per-channel normalisation in [0, 1] pixel units (default 0 and 1).
    resize : int, optional
        Resize the shorter image side to this and centre-crop; default: resize to (H, W).
    top_k : int, default 5
    max_pixels : int, optional
        Larger images are refused with HTTP 413 (default: the handler's 25 megapixels).
    inference : bool, default True
        Convert with ``deploy.to_inference`` first; False exports ``net`` as it is.
    kernel : {'auto', 'sparse', 'dense'}
        ``to_inference``'s kernel choice for lookup layers ('auto' times both per layer).
    force : bool, default True
        Overwrite an existing archive.
    """
    if not re.match(r'^[A-Za-z0-9][A-Za-z0-9_\-.]*$', model_name):
        raise ValueError('archive name %r: use letters, digits, "_", "-" and "." (MMS model '
                         'names), starting with a letter or digit' % model_name)
    from .serving.signature import SIGNATURE_FILE, SYNSET_FILE, make_signature
    files = serving_files()
    input_shape = tuple(int(v) for v in input_shape)
    lib = op_library_path()
    sig_kwargs = {} if max_pixels is None else {'max_pixels': max_pixels}
    signature = make_signature(
        input_shape, mean=mean, std=std, resize=resize, top_k=top_k,
        op_library=os.path.basename(lib) if lib else None, **sig_kwargs)
    # One forward pass finishes deferred initialisation and checks the input shape early.
    net(mx.nd.zeros((1,) + input_shape))
    model = inference_net(net, input_shape, kernel) if inference else net
    model.hybridize()
    out = model(mx.nd.zeros((1,) + input_shape))
    num_outputs = out.size
    if classes is not None and len(classes) != num_outputs:
        raise ValueError('%d class names given but the model has %d outputs'
                         % (len(classes), num_outputs))
    os.makedirs(out_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix='lcnn_mar_')
    try:
        model.export(os.path.join(staging, 'model'))   # model-symbol.json, model-0000.params
        if lib:
            shutil.copy(lib, staging)
        os.makedirs(os.path.join(staging, SERVING_PACKAGE))
        for src, dst in files:
            shutil.copy(src, os.path.join(staging, dst))
        with open(os.path.join(staging, SIGNATURE_FILE), 'w') as f:
            json.dump(signature, f, indent=2)
        names = list(classes) if classes is not None else [str(i) for i in range(num_outputs)]
        with open(os.path.join(staging, SYNSET_FILE), 'w') as f:
            f.write('\n'.join(names) + '\n')
        cmd = [sys.executable, '-m', 'model_archiver.model_packaging',
               '--model-name', model_name, '--model-path', staging, '--handler', HANDLER_ENTRY,
               '--export-path', os.path.abspath(out_dir)] + (['--force'] if force else [])
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              universal_newlines=True, timeout=300)
        mar = os.path.join(os.path.abspath(out_dir), model_name + '.mar')
        if proc.returncode != 0 or not os.path.isfile(mar):
            raise RuntimeError('model-archiver failed (exit %d): %s'
                               % (proc.returncode, proc.stdout.strip()))
        return mar
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- CLI
def _floats(text):
    try:
        return [float(v) for v in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError('expected comma-separated numbers, got %r' % text)


def _shape(text):
    """'1,28,28' (C,H,W) or '1,1,28,28' (N,C,H,W, N ignored) -> (C, H, W)."""
    from .cli_args import parse_shape
    return parse_shape(text, ndim=(3, 4))[-3:]


def read_classes(path):
    """Class names, one per line (blank lines ignored)."""
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError('classes file %s has no names' % path)
    return names


def add_arguments(parser):
    """Options of ``python -m gluon_lcnn archive``."""
    from .cli_args import add_model_arguments, positive_int
    add_model_arguments(parser)   # --model, --classes, --arg KEY=VALUE as in `export`
    parser.add_argument('--params', required=True, help='trained parameters (save_parameters)')
    parser.add_argument('--out', required=True, help='directory for the .mar')
    parser.add_argument('--name', help='archive / MMS model name (default: --model)')
    parser.add_argument('--classes-file', help='class names, one per line, in output order')
    parser.add_argument('--input-shape', type=_shape,
                        help='C,H,W of one image (default from the model: 1,28,28 for LeNet, '
                             '3,224,224 or 3,32,32 with thumbnail)')
    parser.add_argument('--mean', type=_floats, help='per-channel mean in [0, 1] units, a,b,c')
    parser.add_argument('--std', type=_floats, help='per-channel std in [0, 1] units, a,b,c')
    parser.add_argument('--resize', type=positive_int,
                        help='resize the shorter side to this, then centre-crop to H,W '
                             '(default: resize straight to H,W)')
    parser.add_argument('--top-k', type=positive_int, default=5)
    parser.add_argument('--max-pixels', type=positive_int, help='refuse larger images with '
                        'HTTP 413 (default 25 megapixels)')
    parser.add_argument('--kernel', choices=('auto', 'sparse', 'dense'), default='auto',
                        help='lookup-layer kernel for deploy.to_inference (default: auto, the '
                             'faster on the real input shape)')
    parser.add_argument('--no-inference', action='store_true',
                        help='export the trained net as is, without deploy.to_inference')
    return parser


def run(args):
    """Build the archive described by parsed ``args``; prints and returns 0."""
    from .export import default_input_shape
    from .cli_args import check_input_shape, make_model, parse_kwargs
    check_params_file(args.params)   # before the classes file and the model are read
    classes = read_classes(args.classes_file) if args.classes_file else None
    kwargs = parse_kwargs(args.arg)
    num = args.classes or (len(classes) if classes else None)
    if num:
        kwargs['classes'] = num
    net = make_model(args.model, **kwargs)
    load_parameters(net, args.params, ctx=mx.cpu(), model=args.model)
    shape = args.input_shape or default_input_shape(args.model.lower(), **kwargs)[1:]
    check_input_shape(net, (1,) + tuple(shape), args.model,
                      label='--input-shape ' + ','.join(map(str, shape)))
    if args.mean is None and args.std is None:
        # Easy to forget, and the answers are then silently wrong: say what will happen.
        print('gluon-lcnn archive: no --mean/--std given, the server feeds pixels/255 without '
              'normalisation (Fashion-MNIST training uses --mean 0.286 --std 0.353)',
              file=sys.stderr)
    mar = export_archive(net, args.out, args.name or args.model.lower(), shape,
                         classes=classes, mean=args.mean, std=args.std, resize=args.resize,
                         top_k=args.top_k, max_pixels=args.max_pixels,
                         inference=not args.no_inference, kernel=args.kernel)
    print(mar)
    return 0


if __name__ == '__main__':
    from gluon_lcnn.__main__ import main
    sys.exit(main(['archive'] + sys.argv[1:]))
