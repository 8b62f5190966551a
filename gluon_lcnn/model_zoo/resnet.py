"""ResNet-18 / ResNet-34 (v1, basic blocks) with BN after every conv, dense and LCNN.

Dictionary sizes are given per stage: ``dictionary_sizes = (first, stage1, stage2, stage3,
stage4)``, where `first` is the 7x7 stem and a stage's size applies to all its convolutions
(3x3 and the 1x1 downsample shortcut). ``fc_dictionary_size`` makes the classifier a
LookupDense (default: dense). ``thumbnail=True`` uses a 3x3/s1 stem without max-pool for
28x28 / 32x32 inputs (as GluonCV's ResNetV1 ``thumbnail``).
"""
from mxnet.gluon import nn
from mxnet.gluon.nn import HybridBlock

from .common import conv2d, conv_bn_relu, dense, sizes_tuple, split_lookup_kwargs

__all__ = ['ResNetV1', 'BasicBlockV1', 'resnet18_v1', 'resnet34_v1', 'resnet18_lcnn',
           'resnet34_lcnn', 'resnet18_lcnn_fast', 'resnet18_lcnn_accurate', 'RESNET18_PRESETS',
           'RESNET34_PRESETS']

_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
_WIDTHS = (64, 128, 256, 512)

# How the ResNet-18 presets were chosen. The paper reports 29.2x (fast) and 5.0x (accurate)
# theoretical speedup for ResNet-18 but no per-layer dictionary sizes or densities, so we assume
# the densities the published AlexNet models reached (ASSUMED_DENSITIES in common.py): the stem
# like AlexNet conv1 (0.083 fast, 0.129 accurate), every other conv (3x3 and 1x1 shortcut) the
# mean of AlexNet conv2..conv5 (fast 0.0205, accurate 0.0435). A lookup conv then costs
#   d * c * H * W + density * m * d * kh * kw * H' * W'
# MACs (gluon_lcnn.flops.lookup_macs) against m * c * kh * kw * H' * W' dense (1814 M for
# ResNet-18 at 224x224, the fc stays dense: 0.5 M). Candidates counted with gluon_lcnn.flops
# (`python -m gluon_lcnn flops --model resnet18_lcnn_fast --density assumed`), stage sizes in
# multiples of 8 growing with width:
#   fast:     (3,16,24,32,48) 66.5 M 27.3x | (3,16,24,40,48) 69.6 M 26.1x | (3,16,32,32,48) 25.0x
#   accurate: (3,96,128,192,256) 372 M 4.9x | (3,64,160,256,320) 406 M 4.5x
#             | (3,128,128,256,256) 436 M 4.2x
# The presets were picked as the candidates closest to the published 29.2x and 5.0x when the
# count charged the dictionary only on the input pixels a window reads (29.7x and 5.2x then);
# S = D x is in fact computed on every pixel, which costs the three 1x1/s2 shortcuts 8 M (fast)
# to 55 M (accurate) more. They are kept, so trained checkpoints stay valid.
RESNET18_PRESETS = {
    'fast': (3, 16, 24, 40, 48),
    'accurate': (3, 64, 160, 256, 320),
}

# ResNet-34 (3664 M dense MACs at 224x224) has twice the 3x3 convs per stage, so the same sizes
# cut far more: the ResNet-18 presets give 33.2x / 5.3x here. Its own presets aim at the same
# targets (29.2x fast, 5.0x accurate), same assumed densities (0.083 / 0.129 for the stem,
# 0.0205 / 0.0435 for the other 35 convs) and the current count:
#   fast:     (3,16,32,48,56) 129.5 M 28.3x | (3,16,32,40,56) 122.5 M 29.9x
#             | (3,16,24,48,56) 119.4 M 30.7x
#   accurate: (3,64,160,256,320) 696 M 5.3x | (3,96,160,256,320) 750 M 4.9x
#             | (3,96,192,256,320) 795 M 4.6x
RESNET34_PRESETS = {
    'fast': (3, 16, 32, 40, 56),
    'accurate': (3, 96, 160, 256, 320),
}


class BasicBlockV1(HybridBlock):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN + shortcut (1x1 conv-BN when the shape changes), ReLU."""

    def __init__(self, channels, stride, downsample, dictionary_size=None, lookup_kwargs=None,
                 **kwargs):
        super().__init__(**kwargs)
        with self.name_scope():
            self.body = nn.HybridSequential(prefix='')
            conv_bn_relu(self.body, channels, 3, stride, 1, dictionary_size,
                         lookup_kwargs=lookup_kwargs)
            conv_bn_relu(self.body, channels, 3, 1, 1, dictionary_size,
                         lookup_kwargs=lookup_kwargs, relu=False)
            self.downsample = None
            if downsample:
                self.downsample = nn.HybridSequential(prefix='')
                conv_bn_relu(self.downsample, channels, 1, stride, 0, dictionary_size,
                             lookup_kwargs=lookup_kwargs, relu=False)

    def hybrid_forward(self, F, x):
        out = self.body(x)
        shortcut = self.downsample(x) if self.downsample is not None else x
        return F.Activation(out + shortcut, act_type='relu')


class ResNetV1(HybridBlock):
    """ResNet v1 with basic blocks.

    Parameters
    ----------
    depth : int, 18 or 34
    classes : int, default 1000
    dictionary_sizes : sequence of 5 (int or None), optional
        (stem, stage1, stage2, stage3, stage4); None keeps those convs dense.
    fc_dictionary_size : int, optional
        Dictionary of the classifier (None: dense).
    in_channels : int, default 3
    thumbnail : bool, default False
        3x3/s1 stem, no max-pool: for 28x28 / 32x32 inputs.
    initial_sparsity, l1_lambda : float, optional
        Passed to every lookup layer.
    """

    def __init__(self, depth=18, classes=1000, dictionary_sizes=None, fc_dictionary_size=None,
                 in_channels=3, thumbnail=False, **kwargs):
        lk = split_lookup_kwargs(kwargs)
        super().__init__(**kwargs)
        if depth not in _LAYERS:
            raise ValueError('ResNetV1: depth must be one of %s, got %r' % (sorted(_LAYERS), depth))
        d = sizes_tuple(dictionary_sizes, 5, 'ResNetV1')
        with self.name_scope():
            self.features = nn.HybridSequential(prefix='')
            f = self.features
            stem = (3, 1, 1) if thumbnail else (7, 2, 3)
            f.add(conv2d(64, stem[0], stem[1], stem[2], d[0], use_bias=False,
                         in_channels=in_channels, lookup_kwargs=lk))
            f.add(nn.BatchNorm(), nn.Activation('relu'))
            if not thumbnail:
                f.add(nn.MaxPool2D(3, 2, 1))
            in_width = 64
            for stage, (blocks, width) in enumerate(zip(_LAYERS[depth], _WIDTHS)):
                seq = nn.HybridSequential(prefix='stage%d_' % (stage + 1))
                with seq.name_scope():
                    for i in range(blocks):
                        stride = 2 if (i == 0 and stage > 0) else 1
                        seq.add(BasicBlockV1(width, stride, stride != 1 or in_width != width,
                                             d[stage + 1], lk, prefix=''))
                        in_width = width
                f.add(seq)
            f.add(nn.GlobalAvgPool2D(), nn.Flatten())
            self.output = dense(classes, fc_dictionary_size, in_units=in_width, lookup_kwargs=lk)

    def hybrid_forward(self, F, x):
        return self.output(self.features(x))


def resnet18_v1(classes=1000, **kwargs):
    """Dense ResNet-18 v1 (~1.82 G MACs at 224x224)."""
    return ResNetV1(18, classes=classes, **kwargs)


def resnet34_v1(classes=1000, **kwargs):
    """Dense ResNet-34 v1 (~3.67 G MACs at 224x224)."""
    return ResNetV1(34, classes=classes, **kwargs)


def resnet18_lcnn(dictionary_sizes=RESNET18_PRESETS['accurate'], classes=1000, **kwargs):
    """LCNN ResNet-18 with `dictionary_sizes` = (stem, stage1..stage4)."""
    return ResNetV1(18, classes=classes, dictionary_sizes=dictionary_sizes, **kwargs)


def resnet34_lcnn(dictionary_sizes=RESNET34_PRESETS['accurate'], classes=1000, **kwargs):
    """LCNN ResNet-34 with `dictionary_sizes` = (stem, stage1..stage4); the default is
    ResNet-34's own accurate preset, ``RESNET34_PRESETS['accurate']`` (4.9x theoretical MAC
    reduction at the assumed densities; ``RESNET34_PRESETS['fast']``: 29.9x)."""
    return ResNetV1(34, classes=classes, dictionary_sizes=dictionary_sizes, **kwargs)


def resnet18_lcnn_fast(classes=1000, **kwargs):
    """LCNN-fast ResNet-18: 26.1x theoretical MAC reduction at the assumed densities."""
    return ResNetV1(18, classes=classes, dictionary_sizes=RESNET18_PRESETS['fast'], **kwargs)


def resnet18_lcnn_accurate(classes=1000, **kwargs):
    """LCNN-accurate ResNet-18: 4.5x theoretical MAC reduction at the assumed densities."""
    return ResNetV1(18, classes=classes, dictionary_sizes=RESNET18_PRESETS['accurate'],
                    **kwargs)
