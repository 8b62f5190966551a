"""Symbols for Module-API and deployment users, built from the Gluon model zoo.

``get_symbol(name, num_classes=1000, **kwargs)`` traces the zoo model ``name`` (the same
constructor as ``gluon_lcnn.get_model``, so there is one source of truth) on a ``data``
variable and, like MXNet's image-classification ``symbols/``, ends in ``SoftmaxOutput`` named
``softmax`` so ``mx.mod.Module(sym).fit(...)`` trains it; ``softmax=False`` returns the logits.
Parameter names start with ``<name>_``. Lookup layers need ``import gluon_lcnn`` (done here) for
their threshold operator.
"""
import mxnet as mx

from gluon_lcnn.model_zoo import get_model, list_models

__all__ = ['get_symbol', 'list_models']


def get_symbol(name, num_classes=1000, softmax=True, **kwargs):
    """Symbol of zoo model `name` with `num_classes` outputs.

    Parameters
    ----------
    name : str
        A name from ``list_models()``.
    num_classes : int, default 1000
    softmax : bool, default True
        Append ``SoftmaxOutput(name='softmax')`` (label variable ``softmax_label``).
    **kwargs
        Constructor arguments (thumbnail, in_channels, input_size, dictionary_sizes, ...).

    Returns
    -------
    mx.sym.Symbol
        Input variable ``data``.
    """
    kwargs.setdefault('prefix', name.lower() + '_')
    net = get_model(name, classes=num_classes, **kwargs)
    net.hybridize()
    out = net(mx.sym.var('data'))
    if softmax:
        out = mx.sym.SoftmaxOutput(out, name='softmax')
    return out
