"""Export a zoo model as ``NAME-symbol.json`` + ``NAME-0000.params``.

``python -m gluon_lcnn export --model NAME --out DIR [--params FILE] [--classes N]
[--input-shape 1,3,224,224] [--arg thumbnail=True]`` builds the model, loads trained
parameters (saved with ``save_parameters``) or initializes it, hybridizes, runs one forward
pass and exports. The files load with ``gluon.SymbolBlock.imports`` and with
``mx.model.load_checkpoint`` + ``mx.mod.Module`` once ``import gluon_lcnn`` has registered the
lookup layers' threshold operator. Parameter names start with ``NAME_``, whatever was built
before in the process.
"""
import os

import mxnet as mx

from .cli_args import (add_model_arguments, check_input_shape, load_parameters, make_model,
                       nchw_shape, parse_kwargs)

__all__ = ['export_model', 'default_input_shape', 'add_arguments', 'run']


def default_input_shape(name, **kwargs):
    """(1, C, H, W) a model of the zoo expects: 28x28 gray for LeNet, 32x32 for thumbnails."""
    channels = kwargs.get('in_channels') or 0
    if name.lower().startswith('lenet'):
        return (1, channels or 1, 28, 28)
    size = kwargs.get('input_size') or (32 if kwargs.get('thumbnail') else 224)
    return (1, channels or 3, size, size)


def export_model(name, out_dir, params=None, input_shape=None, epoch=0, ctx=mx.cpu(),
                 **kwargs):
    """Build zoo model `name`, load `params` (or initialize) and export it into `out_dir`.

    Parameters
    ----------
    name : str
        A name from ``gluon_lcnn.list_models()``.
    out_dir : str
        Created if missing; receives ``<name>-symbol.json`` and ``<name>-%04d.params``.
    params : str, optional
        A ``.params`` file written by ``net.save_parameters``; default: Xavier initialization.
        A missing file, one that is no parameter file or holds another model's parameters is
        refused (FileNotFoundError, ValueError), as are constructor arguments the model does
        not take and an input shape it cannot (ValueError).
    input_shape : tuple, optional
        Input of the tracing forward pass; default ``default_input_shape(name, **kwargs)``.
    epoch : int, default 0
    **kwargs
        Constructor arguments (classes, thumbnail, in_channels, dictionary_sizes, ...).

    Returns
    -------
    (symbol_file, params_file, net)
    """
    key = name.lower()
    kwargs.setdefault('prefix', key + '_')
    net = make_model(key, **kwargs)
    if params:
        load_parameters(net, params, ctx=ctx, model=key)
    else:
        net.initialize(mx.init.Xavier(), ctx=ctx)
    shape = tuple(input_shape) if input_shape else default_input_shape(key, **kwargs)
    check_input_shape(net, shape, key)
    net.hybridize()
    with mx.autograd.predict_mode():
        net(mx.nd.zeros(shape, ctx=ctx))
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(out_dir, key)
    net.export(prefix, epoch=epoch)
    return prefix + '-symbol.json', '%s-%04d.params' % (prefix, epoch), net


def add_arguments(parser):
    add_model_arguments(parser)
    parser.add_argument('--out', required=True, help='output directory')
    parser.add_argument('--params', default=None,
                        help='trained parameters (net.save_parameters); default: random init')
    parser.add_argument('--input-shape', type=nchw_shape, default=None,
                        help='N,C,H,W for the tracing pass (default from the model: '
                             '1,3,224,224; 1,1,28,28 for LeNet; 32x32 with thumbnail)')
    parser.add_argument('--epoch', type=int, default=0)


def run(args):
    kwargs = parse_kwargs(args.arg)
    if args.classes is not None:
        kwargs['classes'] = args.classes
    sym_file, params_file, _ = export_model(args.model, args.out, params=args.params,
                                            input_shape=args.input_shape, epoch=args.epoch,
                                            **kwargs)
    print(sym_file)
    print(params_file)
    return 0
