"""JacintoNet11: TI's low-complexity classifier (~0.41 G MACs at 224x224), dense and LCNN.

A 5x5/s2 stem (32), a grouped 3x3 (32, 4 groups), then four stages of a 3x3 conv followed by a
grouped 3x3 conv (4 groups) with widths 64-128-256-512, max-pool 2/s2 between stages, BN + ReLU
after every conv, global average pool, fc. Grouped convolutions have no lookup form and stay
dense in every variant; ``dictionary_sizes = (stem, stage2, stage3, stage4, stage5)`` covers
the five ungrouped convs. ``thumbnail=True`` makes the stem stride 1 for 28x28 / 32x32 inputs.
"""
from mxnet.gluon import nn
from mxnet.gluon.nn import HybridBlock

from .common import conv2d, conv_bn_relu, dense, sizes_tuple, split_lookup_kwargs

__all__ = ['JacintoNet11', 'jacintonet11', 'jacintonet11_lcnn', 'JACINTONET11_DEFAULT_SIZES']

_WIDTHS = (64, 128, 256, 512)
# A starting point (about d = c / 4 of each conv's input), not a published preset.
JACINTONET11_DEFAULT_SIZES = (3, 8, 16, 32, 64)


class JacintoNet11(HybridBlock):
    """JacintoNet11.

    Parameters
    ----------
    classes : int, default 1000
    dictionary_sizes : sequence of 5 (int or None), optional
        For the ungrouped convs (stem, stage2..stage5); None keeps them dense.
    fc_dictionary_size : int, optional
    in_channels : int, default 3
    thumbnail : bool, default False
    groups : int, default 4
        Groups of the second conv of each pair.
    initial_sparsity, l1_lambda : float, optional
    """

    def __init__(self, classes=1000, dictionary_sizes=None, fc_dictionary_size=None,
                 in_channels=3, thumbnail=False, groups=4, **kwargs):
        lk = split_lookup_kwargs(kwargs)
        super().__init__(**kwargs)
        d = sizes_tuple(dictionary_sizes, 5, 'JacintoNet11')
        with self.name_scope():
            self.features = nn.HybridSequential(prefix='')
            with self.features.name_scope():
                f = self.features
                f.add(conv2d(32, 5, 1 if thumbnail else 2, 2, d[0], use_bias=False,
                             in_channels=in_channels, lookup_kwargs=lk))
                f.add(nn.BatchNorm(), nn.Activation('relu'))
                conv_bn_relu(f, 32, 3, 1, 1, None, groups=groups)
                for stage, width in enumerate(_WIDTHS):
                    f.add(nn.MaxPool2D(2, 2))
                    conv_bn_relu(f, width, 3, 1, 1, d[stage + 1], lookup_kwargs=lk)
                    conv_bn_relu(f, width, 3, 1, 1, None, groups=groups)
                f.add(nn.GlobalAvgPool2D(), nn.Flatten())
            self.output = dense(classes, fc_dictionary_size, in_units=_WIDTHS[-1],
                                lookup_kwargs=lk)

    def hybrid_forward(self, F, x):
        return self.output(self.features(x))


def jacintonet11(classes=1000, **kwargs):
    """Dense JacintoNet11 (~0.41 G MACs at 224x224)."""
    return JacintoNet11(classes=classes, **kwargs)


def jacintonet11_lcnn(dictionary_sizes=JACINTONET11_DEFAULT_SIZES, classes=1000, **kwargs):
    """JacintoNet11 with lookup convs where ungrouped (stem, stage2..stage5)."""
    return JacintoNet11(classes=classes, dictionary_sizes=dictionary_sizes, **kwargs)
