"""Registry of every model: one flat dict name -> constructor, as in GluonCV's model zoo."""
import difflib
import os

import mxnet as mx

from . import alexnet as _alexnet
from . import lenet as _lenet
from . import jacintonet as _jacintonet
from . import resnet as _resnet
from . import vgg as _vgg

__all__ = ['get_model', 'list_models']

_models = {}
for _module in (_lenet, _alexnet, _resnet, _vgg, _jacintonet):
    for _name in _module.__all__:
        if _name[0].islower():
            _models[_name] = getattr(_module, _name)


def get_model(name, pretrained=False, ctx=mx.cpu(), root=os.path.join('~', '.mxnet', 'models'),
              **kwargs):
    """Build a model of the zoo by name.

    Parameters
    ----------
    name : str
        A name from ``list_models()`` (case-insensitive), e.g. 'alexnet_lcnn_fast'.
    pretrained : bool, default False
        Load ``<root>/<name>.params``; there are no downloads, so the file must exist.
    ctx : Context, default cpu
        Where pretrained parameters are loaded.
    root : str, default '~/.mxnet/models'
        Directory searched for pretrained parameters.
    **kwargs
        Passed to the constructor: ``classes``, ``in_channels``, ``thumbnail``,
        ``dictionary_sizes``, ``initial_sparsity``, ``l1_lambda``, ``prefix`` ...

    Returns
    -------
    HybridBlock
        Uninitialized unless ``pretrained``.
    """
    key = name.lower()
    if key not in _models:
        close = difflib.get_close_matches(key, list(_models), n=5, cutoff=0.5)
        raise ValueError('unknown model %r; %sall models: %s'
                         % (name, ('did you mean %s? ' % ', '.join(close)) if close else '',
                            ', '.join(sorted(_models))))
    net = _models[key](**kwargs)
    if pretrained:
        path = os.path.join(os.path.expanduser(root), key + '.params')
        if not os.path.isfile(path):
            raise FileNotFoundError('pretrained=True: no parameters for %r at %s (nothing is '
                                    'downloaded; put a .params file saved with '
                                    'save_parameters there, or pass root=)' % (key, path))
        net.load_parameters(path, ctx=ctx)
    return net


def list_models():
    """Sorted names accepted by get_model."""
    return sorted(_models)
