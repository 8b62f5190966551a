"""VGG-16 with BatchNorm after every conv, dense and LCNN (~15.5 G MACs at 224x224).

Dictionary sizes are per block: ``dictionary_sizes = (block1, ..., block5, fc6, fc7)``; fc6 is a
k x k convolution over the last 512-channel map (k = 7 at 224), so its dictionary lives in the
512-channel space, as in the authors' AlexNet. ``thumbnail=True`` drops the fifth max-pool so
28x28 / 32x32 inputs keep a map for fc6 (give ``input_size``).
"""
from mxnet.gluon import nn
from mxnet.gluon.nn import HybridBlock

from .common import (FeatureBatchNorm, conv2d, conv_bn_relu, dense, sizes_tuple,
                     split_lookup_kwargs)

__all__ = ['VGG16', 'vgg16', 'vgg16_lcnn', 'VGG16_DEFAULT_SIZES']

_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
# A starting point for experiments (about d = c / 4 per block), not a published preset.
VGG16_DEFAULT_SIZES = (3, 16, 32, 64, 128, 256, 512)


class VGG16(HybridBlock):
    """VGG-16 (configuration D) with BN.

    Parameters
    ----------
    classes : int, default 1000
    dictionary_sizes : sequence of 7 (int or None), optional
        (block1..block5, fc6, fc7); block1's size applies to both its convs (the first sees the
        image, so 3 atoms reproduce it exactly for RGB). None keeps layers dense.
    in_channels : int, default 3
    thumbnail : bool, default False
        No fifth max-pool, for 28x28 / 32x32 inputs.
    input_size : int, optional
        Spatial input size, sets fc6's kernel; default 224 (32 with thumbnail).
    fc_units : int, default 4096
    dropout : float, default 0.5
    initial_sparsity, l1_lambda : float, optional
    """

    def __init__(self, classes=1000, dictionary_sizes=None, in_channels=3, thumbnail=False,
                 input_size=None, fc_units=4096, dropout=0.5, **kwargs):
        lk = split_lookup_kwargs(kwargs)
        super().__init__(**kwargs)
        d = sizes_tuple(dictionary_sizes, 7, 'VGG16')
        size = int(input_size or (32 if thumbnail else 224))
        pools = 4 if thumbnail else 5
        fc6_kernel = size
        for _ in range(pools):
            fc6_kernel //= 2
        if fc6_kernel < 1:
            raise ValueError('VGG16: input_size=%d is too small for %d max-pools%s'
                             % (size, pools, '' if thumbnail else ' (try thumbnail=True)'))
        with self.name_scope():
            self.features = nn.HybridSequential(prefix='')
            with self.features.name_scope():
                first = True
                for block, (convs, width) in enumerate(_BLOCKS):
                    for _ in range(convs):
                        self.features.add(conv2d(width, 3, 1, 1, d[block], use_bias=False,
                                                 in_channels=in_channels if first else 0,
                                                 lookup_kwargs=lk))
                        self.features.add(nn.BatchNorm(), nn.Activation('relu'))
                        first = False
                    if block < pools:
                        self.features.add(nn.MaxPool2D(2, 2))
            self.classifier = nn.HybridSequential(prefix='')
            with self.classifier.name_scope():
                conv_bn_relu(self.classifier, fc_units, fc6_kernel, 1, 0, d[5], lookup_kwargs=lk)
                self.classifier.add(nn.Dropout(dropout), nn.Flatten())
                self.classifier.add(dense(fc_units, d[6], use_bias=False, lookup_kwargs=lk))
                self.classifier.add(FeatureBatchNorm(), nn.Activation('relu'), nn.Dropout(dropout))
            self.output = nn.Dense(classes)

    def hybrid_forward(self, F, x):
        return self.output(self.classifier(self.features(x)))


def vgg16(classes=1000, **kwargs):
    """Dense VGG-16 with BN (~15.5 G MACs at 224x224)."""
    return VGG16(classes=classes, **kwargs)


def vgg16_lcnn(dictionary_sizes=VGG16_DEFAULT_SIZES, classes=1000, **kwargs):
    """LCNN VGG-16 with `dictionary_sizes` = (block1..block5, fc6, fc7)."""
    return VGG16(classes=classes, dictionary_sizes=dictionary_sizes, **kwargs)
