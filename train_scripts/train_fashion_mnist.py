#!/usr/bin/env python
"""Train a gluon-lcnn model on Fashion-MNIST with the Horovod loop of train_imagenet.py.

    python train_scripts/train_fashion_mnist.py --model lenet_lcnn_accurate --num-epochs 10
    horovodrun -np 2 -H localhost:2 python train_scripts/train_fashion_mnist.py \
        --model alexnet_lcnn_fast --l1-lambda 1e-4 --save-dir runs/alexnet_fast

Reads the idx files of /usr/share/datasets/fashion-mnist (``--data-root``), takes every flag of
train_imagenet.py (warm-up, sparsity, checkpoints, --resume, --test-only, --benchmark ...) with
Fashion-MNIST defaults, builds models for 1x28x28 input (``--model-arg`` overrides that) and
ends with the accuracy on the full 10k test set as ``test accuracy: 0.xxxx`` (with ``--holdout N``:
on the last N training images, as ``held-out accuracy: 0.xxxx``; the test set is not read).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_imagenet  # noqa: E402  (the training loop; this file only sets defaults)
from gluon_lcnn.training import FASHION_MNIST_DEFAULTS, small_input_args  # noqa: E402


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument('--model', default=FASHION_MNIST_DEFAULTS['model'])
    peek.add_argument('--model-arg', action='append', default=[])
    known, _ = peek.parse_known_args(argv)
    defaults = dict(FASHION_MNIST_DEFAULTS)
    if not known.model_arg:
        defaults['model_arg'] = small_input_args(known.model)
    return train_imagenet.main(argv, defaults)


if __name__ == '__main__':
    main()
