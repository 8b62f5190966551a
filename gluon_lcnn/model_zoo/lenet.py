"""LeNet (MXNet example layout: conv 20 5x5, conv 50 5x5, fc 500, fc classes) and LCNN twins.

Sized for 28x28 gray (Fashion-MNIST) but works on any input >= 16x16 (the fc infers its width).
"""
from mxnet.gluon import nn
from mxnet.gluon.nn import HybridBlock

from .common import conv2d, conv_bn_relu, dense, sizes_tuple, split_lookup_kwargs

__all__ = ['LeNet', 'lenet', 'lenet_lcnn', 'lenet_lcnn_fast', 'lenet_lcnn_accurate',
           'LENET_PRESETS']

# Dictionary sizes for (conv1, conv2, fc1); the classifier stays dense. conv1 sees 1 or 3
# channels, so 3 atoms reproduce any conv1; conv2 sees 20 channels, fc1 800 (50 x 4 x 4).
LENET_PRESETS = {
    'fast': (3, 8, 32),
    'accurate': (3, 16, 128),
}


class LeNet(HybridBlock):
    """LeNet with BatchNorm after each conv and fc1.

    Parameters
    ----------
    classes : int, default 10
    in_channels : int, default 0
        Input channels (0 infers them: 1 for Fashion-MNIST, 3 for RGB).
    thumbnail, input_size : ignored
        Accepted for a uniform interface with the other families.
    dictionary_sizes : sequence of 3 (int or None), optional
        Per lookup-able layer (conv1, conv2, fc1): None keeps it dense.
    initial_sparsity, l1_lambda : float, optional
        Passed to every lookup layer.
    """

    def __init__(self, classes=10, dictionary_sizes=None, in_channels=0, thumbnail=True,
                 input_size=None, **kwargs):
        # thumbnail / input_size are accepted so every family takes the same small-input
        # arguments; LeNet is small-input by design and infers its fc width.
        lk = split_lookup_kwargs(kwargs)
        super().__init__(**kwargs)
        d = sizes_tuple(dictionary_sizes, 3, 'LeNet')
        with self.name_scope():
            self.features = nn.HybridSequential(prefix='')
            with self.features.name_scope():
                self.features.add(conv2d(20, 5, dictionary_size=d[0], use_bias=False,
                                         in_channels=in_channels, lookup_kwargs=lk))
                self.features.add(nn.BatchNorm(), nn.Activation('relu'))
                self.features.add(nn.MaxPool2D(2, 2))
                conv_bn_relu(self.features, 50, 5, dictionary_size=d[1], lookup_kwargs=lk)
                self.features.add(nn.MaxPool2D(2, 2))
                self.features.add(nn.Flatten())
                self.features.add(dense(500, d[2], use_bias=False, lookup_kwargs=lk))
                self.features.add(nn.BatchNorm())
                self.features.add(nn.Activation('relu'))
            self.output = nn.Dense(classes)

    def hybrid_forward(self, F, x):
        return self.output(self.features(x))


def lenet(classes=10, **kwargs):
    """Dense LeNet. `pretrained`/`ctx`/`root` are handled by get_model."""
    return LeNet(classes=classes, **kwargs)


def lenet_lcnn(dictionary_sizes=LENET_PRESETS['accurate'], classes=10, **kwargs):
    """LeNet with lookup layers; `dictionary_sizes` for (conv1, conv2, fc1), by default the
    accurate preset."""
    return LeNet(classes=classes, dictionary_sizes=dictionary_sizes, **kwargs)


def lenet_lcnn_fast(classes=10, **kwargs):
    """LCNN-fast LeNet: ``LENET_PRESETS['fast']``."""
    return LeNet(classes=classes, dictionary_sizes=LENET_PRESETS['fast'], **kwargs)


def lenet_lcnn_accurate(classes=10, **kwargs):
    """LCNN-accurate LeNet: ``LENET_PRESETS['accurate']``."""
    return LeNet(classes=classes, dictionary_sizes=LENET_PRESETS['accurate'], **kwargs)
