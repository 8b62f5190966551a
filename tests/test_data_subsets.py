"""Fashion-MNIST slices for the study: the held-out split, few-shot draws, epoch repeats,
and the training flags that select them.

Budget: ~15 s (the idx files are read a few times; two short CLI subprocesses).
"""
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from gluon_lcnn.data import FashionMNISTBatches, fashion_mnist_slice, load_fashion_mnist
from gluon_lcnn.training import get_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, 'train_scripts', 'train_fashion_mnist.py')


def test_holdout_is_the_tail_of_the_training_split_and_disjoint_from_training():
    full_x, full_y = load_fashion_mnist(train=True)
    train_x, train_y = fashion_mnist_slice('train', holdout=10000)
    held_x, held_y = fashion_mnist_slice('heldout', holdout=10000)
    assert len(train_y) == 50000 and len(held_y) == 10000
    np.testing.assert_array_equal(train_x, full_x[:50000])
    np.testing.assert_array_equal(held_x, full_x[50000:])
    np.testing.assert_array_equal(held_y, full_y[50000:])
    test_x, _ = fashion_mnist_slice('test')
    assert test_x.shape == (10000, 1, 28, 28)
    # No image of the held-out slice is also a test image here (a cheap proxy: the first one).
    assert not (test_x == held_x[0]).all(axis=(1, 2, 3)).any()


def test_per_class_draws_are_balanced_seeded_and_differ_between_seeds():
    a_x, a_y = fashion_mnist_slice('train', holdout=10000, per_class=5, subset_seed=1)
    b_x, b_y = fashion_mnist_slice('train', holdout=10000, per_class=5, subset_seed=1)
    c_x, _ = fashion_mnist_slice('train', holdout=10000, per_class=5, subset_seed=2)
    assert np.bincount(a_y, minlength=10).tolist() == [5] * 10
    np.testing.assert_array_equal(a_x, b_x)
    assert not np.array_equal(a_x, c_x)
    # Drawn from the training part only: every drawn image is one of the first 50k.
    train_x, _ = fashion_mnist_slice('train', holdout=10000)
    flat = train_x.reshape(len(train_x), -1)
    for img in a_x[:3]:
        assert (flat == img.reshape(-1)).all(axis=1).any()


def test_repeats_give_several_shuffled_passes_per_epoch():
    batches = FashionMNISTBatches(train=True, batch_size=10, per_class=1, subset_seed=0,
                                  repeats=7)
    assert len(batches) == 7
    labels = np.concatenate([y.asnumpy() for _, y, _ in batches])
    assert np.bincount(labels.astype(int), minlength=10).tolist() == [7] * 10
    held = FashionMNISTBatches(train=False, batch_size=256, holdout=1000, heldout=True)
    assert sum(n for _, _, n in held) == 1000


@pytest.mark.parametrize('kwargs, message', [
    (dict(part='train', holdout=60000), 'leaves no training images'),
    (dict(part='heldout'), 'needs holdout'),
    (dict(part='train', per_class=7000), 'fewer than per_class'),
    (dict(part='train', limit=-1), 'limit must be >= 0'),
    (dict(part='valid'), "part must be"),
])
def test_bad_slices_name_the_problem(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fashion_mnist_slice(**kwargs)


def test_too_few_images_for_a_batch_even_with_repeats_is_an_error():
    with pytest.raises(ValueError, match='fewer than one batch'):
        FashionMNISTBatches(train=True, batch_size=32, per_class=1, repeats=3)
    with pytest.raises(ValueError, match='repeats must be >= 1'):
        FashionMNISTBatches(train=True, batch_size=8, per_class=1, repeats=0)


def test_subset_flags_are_refused_for_recordio():
    args = SimpleNamespace(synthetic=False, dataset='rec', holdout=100, per_class=0,
                           epoch_repeats=1)
    hvd = SimpleNamespace(rank=lambda: 0, size=lambda: 1)
    with pytest.raises(ValueError, match='--holdout: only for --dataset fashion-mnist'):
        get_data(args, hvd, None)


def test_cli_rejects_negative_subset_flags():
    for flag, value in (('--holdout', '-5'), ('--epoch-repeats', '0')):
        proc = subprocess.run([sys.executable, TRAIN, '--model', 'lenet', flag, value],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert flag in proc.stderr.splitlines()[-1]
