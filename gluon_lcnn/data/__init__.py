"""Input pipelines: Fashion-MNIST (real data from the Debian package) and RecordIO.

Every training pipeline is an iterable of ``(data, label, num_valid)`` batches with ``len()``
batches per epoch and ``set_epoch(epoch)``, so one training loop serves all of them.
"""
from .fashion_mnist import (FashionMNIST, FASHION_MNIST_ROOT, load_fashion_mnist,
                            fashion_mnist_slice, FashionMNISTBatches)
from .recordio import RecordBatches, SyntheticBatches, count_records

_PACK = ('pack_folder', 'pack_arrays', 'pack_fashion_mnist', 'list_images', 'read_record')


def __getattr__(name):
    # pack.py is also a script (python -m gluon_lcnn.data.pack); importing it here eagerly
    # would make runpy warn that the module was imported before it ran.
    if name in _PACK:
        from . import pack
        return getattr(pack, name)
    raise AttributeError('module %r has no attribute %r' % (__name__, name))
