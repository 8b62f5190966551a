#!/usr/bin/env python
"""Train a gluon-lcnn model on Fashion-MNIST with the Horovod loop of train_imagenet.py.

    python train_scripts/train_fashion_mnist.py --model lenet_lcnn_accurate --num-epochs 10
    horovodrun -np 2 -H localhost:2 python train_scripts/train_fashion_mnist.py \
        --model alexnet_lcnn_fast --l1-lambda 1e-4 --save-dir runs/alexnet_fast

Reads the idx files of /usr/share/datasets/fashion-mnist (``--data-root``), takes every flag of
train_imagenet.py (warm-up, sparsity, checkpoints, --resume, --test-only, --benchmark ...) with
Fashion-MNIST defaults, builds models for 1x28x28 input (``--model-arg`` overrides that) and
ends with the accuracy on the full 10k test set as ``test accuracy: 0.xxxx``.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import train_imagenet  # noqa: E402  (the training loop; this file only sets defaults)

DEFAULTS = dict(dataset='fashion-mnist', data_shape='1,28,28', num_classes=10,
                model='lenet_lcnn_accurate', batch_size=128, num_epochs=10, lr=0.05,
                warmup_epochs=1.0, lr_mode='cosine', augment='none', wd=1e-4,
                save_dir=os.path.join('checkpoints', 'fashion-mnist'))

# Constructor options that fit each zoo family to 1x28x28 inputs.
SMALL_INPUT_ARGS = {
    'lenet': ['in_channels=1'],
    'alexnet': ['thumbnail=True', 'input_size=28', 'in_channels=1'],
    'resnet': ['thumbnail=True', 'in_channels=1'],
    'vgg': ['thumbnail=True', 'input_size=28', 'in_channels=1'],
    'jacintonet': ['thumbnail=True', 'in_channels=1'],
}


def small_input_args(model):
    """--model-arg values for a zoo model name at 1x28x28 (family = the name's first part)."""
    for family, args in SMALL_INPUT_ARGS.items():
        if model.lower().startswith(family):
            return list(args)
    return []


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument('--model', default=DEFAULTS['model'])
    peek.add_argument('--model-arg', action='append', default=[])
    known, _ = peek.parse_known_args(argv)
    defaults = dict(DEFAULTS)
    if not known.model_arg:
        defaults['model_arg'] = small_input_args(known.model)
    return train_imagenet.main(argv, defaults)


if __name__ == '__main__':
    main()
