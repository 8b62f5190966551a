"""Command-line helpers shared by the model-building commands (flops, export, benchmark,
archive, predict): argparse types for shapes and counts, --model/--classes/--arg, building a zoo
model from them, checking an input shape against a net, one-line error messages.
"""
import argparse
import ast
import os
import re

import mxnet as mx
import numpy as np


# ---------------------------------------------------------------- CLI: python -m gluon_lcnn flops
# Elements an MXNet tensor may hold (the pip builds lack USE_INT64_TENSOR_SIZE).
MAX_TENSOR_SIZE = 2 ** 31 - 1
_LAYOUTS = {3: 'C,H,W', 4: 'N,C,H,W'}


def parse_shape(text, ndim=None):
    """'1,3,224,224' (or '1x3x224x224') -> (1, 3, 224, 224).

    ``argparse.ArgumentTypeError`` (a usage error) unless every entry is an integer >= 1, there
    are ``ndim`` of them (an int or a tuple of allowed counts; any number when None) and the
    whole tensor fits ``MAX_TENSOR_SIZE`` elements.
    """
    try:
        shape = tuple(int(s) for s in str(text).replace('x', ',').split(','))
    except ValueError:
        raise argparse.ArgumentTypeError('expected comma-separated integers such as 1,3,224,224,'
                                         ' got %r' % text)
    if min(shape) < 1:
        raise argparse.ArgumentTypeError('sizes must be >= 1, got %r' % text)
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if len(shape) not in allowed:
            raise argparse.ArgumentTypeError('expected %s (%s numbers), got %d in %r' % (
                ' or '.join(_LAYOUTS.get(n, '%d sizes' % n) for n in allowed),
                ' or '.join(map(str, allowed)), len(shape), text))
    size = int(np.prod(shape, dtype=np.float64))
    if size > MAX_TENSOR_SIZE:
        raise argparse.ArgumentTypeError('%r is %d elements, more than the %d an MXNet tensor can '
                                         'hold' % (text, size, MAX_TENSOR_SIZE))
    return shape


def nchw_shape(text):
    """``parse_shape`` for a zoo model's input batch: exactly N,C,H,W."""
    return parse_shape(text, ndim=4)


def positive_int(text):
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError('expected an integer, got %r' % text)
    if value < 1:
        raise argparse.ArgumentTypeError('must be >= 1, got %r' % text)
    return value


def error_line(err):
    """One line telling what went wrong: ``str(err)`` without the C++ stack MXNet puts in its
    messages ('Traceback ...', 'File ...' lines, '[12:00:00] src/x.cc:10:' positions)."""
    import re
    lines = []
    for line in str(err).splitlines():
        line = line.strip()
        if not line or line.startswith(('Traceback (most recent call last)', 'File "')):
            continue
        line = re.sub(r'\[\d\d:\d\d:\d\d\] \S+:\d+: ', '', line)
        line = re.sub(r'^(MXNetError: )+', '', line).replace('MXNetError: ', '')
        lines.append(line)
        break
    return lines[0] if lines else type(err).__name__


def parse_kwargs(items):
    """['classes=10', 'thumbnail=True'] -> {'classes': 10, 'thumbnail': True}."""
    out = {}
    for item in items or ():
        if '=' not in item:
            raise ValueError('model argument %r is not KEY=VALUE' % item)
        key, value = item.split('=', 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def add_model_arguments(parser):
    """--model, --classes, --arg KEY=VALUE: the options every model-building command shares."""
    parser.add_argument('--model', required=True, help='a name from gluon_lcnn.list_models()')
    parser.add_argument('--classes', type=positive_int, default=None, help='number of classes')
    parser.add_argument('--arg', action='append', default=[], metavar='KEY=VALUE',
                        help='extra constructor argument, e.g. --arg thumbnail=True (repeatable)')


# Constructor arguments checked before building: the zoo would fail late or obscurely on them.
_INT_KWARGS = {'classes': 1, 'input_size': 1, 'in_channels': 0}   # name: smallest value


def make_model(name, **kwargs):
    """``model_zoo.get_model(name, **kwargs)`` for the command line: an unknown or bad
    constructor argument (``--arg``, ``--classes``) is a ValueError naming it."""
    from .model_zoo import get_model
    for key, low in _INT_KWARGS.items():
        value = kwargs.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < low):
            raise ValueError('%s must be an integer >= %d, got %r' % (key, low, value))
    try:
        return get_model(name, **kwargs)
    except TypeError as err:
        if 'unexpected keyword argument' not in str(err):
            raise
        raise ValueError('%s: no such constructor argument (%s)' % (name, error_line(err)))
    except (AssertionError, mx.base.MXNetError) as err:
        if not set(kwargs) - {'prefix'}:
            raise   # the defaults do not build: a bug, not bad input
        raise ValueError('cannot build %s with %s: %s' % (
            name, ', '.join('%s=%r' % kv for kv in sorted(kwargs.items())), error_line(err)))


def build_model(args):
    kwargs = parse_kwargs(args.arg)
    if args.classes is not None:
        kwargs['classes'] = args.classes
    return make_model(args.model, **kwargs)


def check_input_shape(net, shape, name=None, label=None):
    """ValueError unless ``net`` (called ``name`` in the message) takes an input of ``shape``
    (rank, channels, size) and none of its tensors outgrows ``MAX_TENSOR_SIZE``; shape
    inference only, nothing is computed. ``label`` names the shape in the message (default
    '--input-shape N,C,H,W')."""
    shape = tuple(int(v) for v in shape)
    label = label or '--input-shape ' + ','.join(map(str, shape))
    name = name or net.name
    params = list(net.collect_params().values())
    # A symbolic call caches each parameter's variable with the shape known now; later forward
    # passes must build theirs afresh, once deferred shapes are settled.
    saved = [p._var for p in params]
    try:
        _, shapes, _ = net(mx.sym.var('data')).get_internals().infer_shape(data=shape)
    except mx.base.MXNetError as err:
        raise ValueError('%s does not fit %s: %s' % (label, name, error_line(err)))
    finally:
        for p, var in zip(params, saved):
            p._var = var
    biggest = max((int(np.prod(s, dtype=np.float64)) for s in shapes or () if s), default=0)
    if biggest > MAX_TENSOR_SIZE:
        raise ValueError('%s is too large for %s: it needs a tensor of %d elements, more than '
                         'the %d MXNet can hold' % (label, name, biggest, MAX_TENSOR_SIZE))


def check_params_file(path):
    """FileNotFoundError / ValueError unless ``path`` is a file (existing, not a directory)."""
    if os.path.isdir(path):
        raise ValueError('%s is a directory, not a parameter file' % path)
    if not os.path.isfile(path):
        raise FileNotFoundError('no parameter file at %s' % path)


def load_parameters(net, path, ctx=None, model=None):
    """``net.load_parameters(path, ctx)`` refusing bad input with a message naming the file.

    FileNotFoundError when there is no such file; ValueError when it is a directory, no
    parameter file (empty, text, truncated) or holds the parameters of another model than
    ``model`` (or of other constructor arguments: --classes, --arg).
    """
    check_params_file(path)
    try:
        net.load_parameters(path, ctx=ctx or mx.cpu())
    except mx.base.MXNetError as err:
        message = error_line(err)
        if 'Invalid NDArray file format' in message:
            raise ValueError('%s is not a parameter file written by save_parameters (%s)'
                             % (path, message)) from err
        raise ValueError('cannot load parameters from %s: %s' % (path, message)) from err
    except AssertionError as err:
        # Gluon's own hint (allow_missing / ignore_extra) is no use on the command line.
        message = re.sub(r'\s*[^.]*(allow_missing|ignore_extra)[^.]*\.', '', error_line(err))
        raise ValueError('%s does not hold parameters of %s as built here (another model, or '
                         'other --classes / --arg?): %s' % (path, model or net.name, message)
                         ) from err
