"""Small zoo nets with trained-like BatchNorm statistics, shared by the compress tests."""
import mxnet as mx

import gluon_lcnn
from gluon_lcnn.compare import randomize_batchnorm

MNIST = (2, 1, 28, 28)


def trained_like(net, shape, seed=0):
    """Initialize, run once, and give every BatchNorm random statistics (as after training)."""
    mx.random.seed(seed)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros(shape))
    randomize_batchnorm(net, seed)
    return net


def lenet():
    return trained_like(gluon_lcnn.get_model('lenet'), MNIST)


def alexnet_thumb():
    # fc_units 256 keeps the SVDs small; the layout (fc6 as a covering conv) is AlexNet's.
    return trained_like(gluon_lcnn.get_model('alexnet', thumbnail=True, input_size=28,
                                             in_channels=1, classes=10, fc_units=256), MNIST)
