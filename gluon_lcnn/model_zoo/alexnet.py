"""AlexNet in the LCNN authors' layout, dense and LCNN.

conv 64/11/s4/p2, 192/5/p2, 384/3/p1, 256/3/p1, 256/3/p1, each + BN + ReLU; max-pool 3/s2
after conv1, conv2, conv5; fc6 as a k x k convolution over the last feature map (k = 6 at
224x224), fc7 4096, fc8 classes; BN + ReLU + dropout 0.5 after fc6 and fc7. ~714 M MACs at 224.

fc6 as a convolution matters for LCNN: its dictionary lives in the 256-channel space, not in
the 9216-wide flattened one. ``thumbnail=True`` swaps conv1 for 5x5/s1/p2 for 28-32 pixel inputs
(give ``input_size`` so fc6's kernel covers the last map: 32 -> 3x3, 28 -> 2x2).
"""
from mxnet.gluon import nn
from mxnet.gluon.nn import HybridBlock

from .common import (FeatureBatchNorm, conv2d, conv_bn_relu, dense, sizes_tuple,
                     split_lookup_kwargs)

__all__ = ['AlexNet', 'alexnet', 'alexnet_lcnn', 'alexnet_lcnn_fast', 'alexnet_lcnn_accurate',
           'ALEXNET_PRESETS']

# Published dictionary sizes for (conv1..conv5, fc6, fc7); fc8 stays dense.
ALEXNET_PRESETS = {
    'fast': (3, 30, 30, 30, 30, 512, 512),
    'accurate': (3, 500, 500, 500, 30, 1024, 1024),
}


def _out(size, kernel, stride, pad):
    return (size + 2 * pad - kernel) // stride + 1


class AlexNet(HybridBlock):
    """The authors' AlexNet.

    Parameters
    ----------
    classes : int, default 1000
    dictionary_sizes : sequence of 7 (int or None), optional
        For conv1..conv5, fc6, fc7; None keeps a layer dense (all None: the dense AlexNet).
    in_channels : int, default 3
    thumbnail : bool, default False
        conv1 5x5/s1/p2 instead of 11x11/s4/p2, for 28x28 / 32x32 inputs.
    input_size : int, optional
        Spatial input size, sets fc6's kernel; default 224 (32 with thumbnail).
    fc_units : int, default 4096
        Width of fc6 and fc7.
    dropout : float, default 0.5
    initial_sparsity, l1_lambda : float, optional
        Passed to every lookup layer.
    """

    def __init__(self, classes=1000, dictionary_sizes=None, in_channels=3, thumbnail=False,
                 input_size=None, fc_units=4096, dropout=0.5, **kwargs):
        lk = split_lookup_kwargs(kwargs)
        super().__init__(**kwargs)
        d = sizes_tuple(dictionary_sizes, 7, 'AlexNet')
        size = int(input_size or (32 if thumbnail else 224))
        conv1 = (5, 1, 2) if thumbnail else (11, 4, 2)
        # Spatial size after conv1/pool, conv2/pool, conv5/pool: fc6 covers what is left.
        s = _out(_out(size, *conv1), 3, 2, 0)
        s = _out(s, 3, 2, 0)
        fc6_kernel = _out(s, 3, 2, 0)
        if fc6_kernel < 1:
            raise ValueError('AlexNet: input_size=%d is too small for this layout%s'
                             % (size, '' if thumbnail else ' (try thumbnail=True)'))
        self.fc6_kernel = fc6_kernel
        with self.name_scope():
            self.features = nn.HybridSequential(prefix='')
            with self.features.name_scope():
                f = self.features
                f.add(conv2d(64, conv1[0], conv1[1], conv1[2], d[0], use_bias=False,
                             in_channels=in_channels, lookup_kwargs=lk))
                f.add(nn.BatchNorm(), nn.Activation('relu'), nn.MaxPool2D(3, 2))
                conv_bn_relu(f, 192, 5, 1, 2, d[1], lookup_kwargs=lk)
                f.add(nn.MaxPool2D(3, 2))
                conv_bn_relu(f, 384, 3, 1, 1, d[2], lookup_kwargs=lk)
                conv_bn_relu(f, 256, 3, 1, 1, d[3], lookup_kwargs=lk)
                conv_bn_relu(f, 256, 3, 1, 1, d[4], lookup_kwargs=lk)
                f.add(nn.MaxPool2D(3, 2))
            self.classifier = nn.HybridSequential(prefix='')
            with self.classifier.name_scope():
                c = self.classifier
                conv_bn_relu(c, fc_units, fc6_kernel, 1, 0, d[5], lookup_kwargs=lk)
                c.add(nn.Dropout(dropout), nn.Flatten())
                c.add(dense(fc_units, d[6], use_bias=False, lookup_kwargs=lk))
                c.add(FeatureBatchNorm(), nn.Activation('relu'), nn.Dropout(dropout))
            self.output = nn.Dense(classes)

    def hybrid_forward(self, F, x):
        return self.output(self.classifier(self.features(x)))


def alexnet(classes=1000, **kwargs):
    """Dense AlexNet (authors' layout). `pretrained`/`ctx`/`root` are handled by get_model."""
    return AlexNet(classes=classes, **kwargs)


def alexnet_lcnn(dictionary_sizes=ALEXNET_PRESETS['fast'], classes=1000, **kwargs):
    """LCNN AlexNet with explicit `dictionary_sizes` for (conv1..conv5, fc6, fc7)."""
    return AlexNet(classes=classes, dictionary_sizes=dictionary_sizes, **kwargs)


def alexnet_lcnn_fast(classes=1000, **kwargs):
    """LCNN-fast: dictionaries ``ALEXNET_PRESETS['fast']`` = (3, 30, 30, 30, 30, 512, 512);
    26.4x fewer MACs than the dense AlexNet at 224x224 with the published lookup densities
    (``python -m gluon_lcnn flops --model alexnet_lcnn_fast --density published``)."""
    return AlexNet(classes=classes, dictionary_sizes=ALEXNET_PRESETS['fast'], **kwargs)


def alexnet_lcnn_accurate(classes=1000, **kwargs):
    """LCNN-accurate: dictionaries ``ALEXNET_PRESETS['accurate']`` = (3, 500, 500, 500, 30, 1024,
    1024); 3.8x fewer MACs than the dense AlexNet at 224x224 with the published lookup
    densities (``python -m gluon_lcnn flops --model alexnet_lcnn_accurate --density published``).
    """
    return AlexNet(classes=classes, dictionary_sizes=ALEXNET_PRESETS['accurate'], **kwargs)
