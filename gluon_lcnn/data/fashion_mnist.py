"""Fashion-MNIST from local files (Debian's dataset-fashion-mnist package).

Gluon's FashionMNIST verifies upstream SHA-1 hashes and downloads on a mismatch; Debian ships the
same images recompressed, so the hashes differ and there is no network. This subclass keeps
Gluon's parsing and only drops the hash check for files that are already present.
FashionMNISTBatches serves one Horovod worker's share of a split as training/evaluation batches.
"""
import os

import numpy as np
from mxnet import gluon

FASHION_MNIST_ROOT = os.environ.get('FASHION_MNIST_ROOT', '/usr/share/datasets/fashion-mnist')
MEAN, STD = 0.2860, 0.3530   # of the training images scaled to [0, 1]
CLASSES = ('t-shirt/top', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker',
           'bag', 'ankle boot')


class FashionMNIST(gluon.data.vision.FashionMNIST):
    """``gluon.data.vision.FashionMNIST`` reading local idx.gz files without a hash check."""

    def __init__(self, root=FASHION_MNIST_ROOT, train=True, transform=None):
        root = os.path.expanduser(root)
        names = ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz',
                 't10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')
        missing = [n for n in names[:2] if train] + [n for n in names[2:] if not train]
        missing = [n for n in missing if not os.path.isfile(os.path.join(root, n))]
        if missing:
            raise FileNotFoundError(
                'Fashion-MNIST files %s not found in %s: install the Debian package '
                'dataset-fashion-mnist (make install) or pass root=' % (missing, root))
        super().__init__(root, train, transform)

    def _get_data(self):
        # A None hash makes Gluon's download() accept the existing file as it is.
        for attr in ('_train_data', '_train_label', '_test_data', '_test_label'):
            setattr(self, attr, (getattr(self, attr)[0], None))
        super()._get_data()


def load_fashion_mnist(train=True, root=FASHION_MNIST_ROOT, normalize=True):
    """The whole split as arrays: images float32 (N, 1, 28, 28), labels int32 (N,)."""
    ds = FashionMNIST(root=root, train=train)
    x = ds._data.asnumpy().transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    if normalize:
        x = (x - MEAN) / STD
    return x, ds._label.astype(np.int32)


def fashion_mnist_slice(part, root=FASHION_MNIST_ROOT, holdout=0, limit=0, per_class=0,
                        subset_seed=0):
    """Images and labels of one slice of Fashion-MNIST, normalised as ``load_fashion_mnist``.

    ``part`` is 'test' (the 10k test images), 'heldout' (the last ``holdout`` training images)
    or 'train': the training images before those, then the first ``limit`` of them (0: all),
    then ``per_class`` images of each class drawn with ``subset_seed`` (0: all), kept in their
    original order.
    """
    if part not in ('train', 'heldout', 'test'):
        raise ValueError("fashion_mnist_slice: part must be 'train', 'heldout' or 'test', got %r"
                         % (part,))
    for name, value in (('holdout', holdout), ('limit', limit), ('per_class', per_class)):
        if value < 0:
            raise ValueError('fashion_mnist_slice: %s must be >= 0, got %r' % (name, value))
    if part == 'test':
        return load_fashion_mnist(train=False, root=root)
    images, labels = load_fashion_mnist(train=True, root=root)
    if holdout >= len(labels):
        raise ValueError('fashion_mnist_slice: holdout %d leaves no training images (there are '
                         '%d)' % (holdout, len(labels)))
    if part == 'heldout':
        if not holdout:
            raise ValueError("fashion_mnist_slice: 'heldout' needs holdout > 0")
        return images[len(labels) - holdout:], labels[len(labels) - holdout:]
    images, labels = images[:len(labels) - holdout], labels[:len(labels) - holdout]
    if limit:
        images, labels = images[:limit], labels[:limit]
    if per_class:
        rng = np.random.RandomState(subset_seed)
        keep = []
        for c in range(len(CLASSES)):
            members = np.flatnonzero(labels == c)
            if len(members) < per_class:
                raise ValueError('fashion_mnist_slice: class %d has %d training images, fewer '
                                 'than per_class=%d' % (c, len(members), per_class))
            keep.append(rng.choice(members, per_class, replace=False))
        keep = np.sort(np.concatenate(keep))
        images, labels = images[keep], labels[keep]
    return images, labels


class FashionMNISTBatches:
    """Batches of one worker's share of Fashion-MNIST, as ``(data, label, num_valid)``.

    Training (``train=True``): every epoch all workers draw the same permutation (seeded by
    ``seed + epoch``) and worker ``rank`` takes every ``num_parts``-th index; incomplete batches
    are dropped so all workers run the same number of steps (Horovod needs that). Evaluation:
    fixed order, worker ``rank`` takes a contiguous slice, the last batch may be short, so the
    shards together cover the split exactly once.

    Parameters
    ----------
    root : str
        Folder with the four idx .gz files.
    train : bool
        Which split to read, and the training/evaluation behaviour above.
    batch_size : int
        Per-worker batch size.
    num_parts, part_index : int
        Number of workers and this worker's rank.
    limit : int
        Use only the first ``limit`` images (0: all); for quick runs.
    mirror : bool
        Random horizontal flips (training only).
    holdout : int
        Keep the last ``holdout`` training images out of training, for choosing
        hyper-parameters without touching the test set.
    heldout : bool
        With ``train=False``: evaluate on those held-out training images instead of the test
        split (needs ``holdout``).
    per_class : int
        Training: only ``per_class`` images of each class (few-shot), drawn with
        ``subset_seed`` from the training images left after ``holdout`` and ``limit``.
    repeats : int
        Training: one epoch passes over the images ``repeats`` times (each pass its own
        shuffle), so that tiny few-shot sets still give a useful number of updates per epoch.
    """

    def __init__(self, root=FASHION_MNIST_ROOT, train=True, batch_size=128, num_parts=1,
                 part_index=0, seed=0, limit=0, mirror=False, ctx=None, dtype='float32',
                 holdout=0, heldout=False, per_class=0, subset_seed=0, repeats=1):
        import mxnet as mx
        if batch_size < 1:
            raise ValueError('FashionMNISTBatches: batch_size must be >= 1, got %r' % batch_size)
        if not 0 <= part_index < num_parts:
            raise ValueError('FashionMNISTBatches: part_index %r not in [0, num_parts=%r)'
                             % (part_index, num_parts))
        if repeats < 1:
            raise ValueError('FashionMNISTBatches: repeats must be >= 1, got %r' % repeats)
        images, labels = fashion_mnist_slice(
            'train' if train else ('heldout' if heldout else 'test'), root=root,
            holdout=holdout, limit=limit, per_class=per_class, subset_seed=subset_seed)
        self.repeats = int(repeats) if train else 1
        self.train = bool(train)
        self.batch_size = int(batch_size)
        self.num_parts, self.part_index = int(num_parts), int(part_index)
        self.seed, self.mirror = int(seed), bool(mirror)
        self.ctx = ctx or mx.cpu()
        self.dtype = dtype
        self.epoch = 0
        self._images, self._labels = images, labels
        self.num_examples = len(labels)
        if self.train and self.num_examples * self.repeats < self.batch_size * self.num_parts:
            raise ValueError('FashionMNISTBatches: %d training images (x %d repeats) are fewer '
                             'than one batch per worker (%d x %d)'
                             % (self.num_examples, self.repeats, self.batch_size,
                                self.num_parts))

    def set_epoch(self, epoch):
        """Choose the shuffle of ``epoch`` (same on every worker)."""
        self.epoch = int(epoch)

    def _indices(self):
        n = self.num_examples
        if self.train:
            rng = np.random.RandomState(self.seed + self.epoch)
            order = np.concatenate([rng.permutation(n) for _ in range(self.repeats)])
            return order[self.part_index::self.num_parts][:len(self) * self.batch_size]
        bounds = np.linspace(0, n, self.num_parts + 1).astype(int)
        return np.arange(bounds[self.part_index], bounds[self.part_index + 1])

    def __len__(self):
        if self.train:
            return self.num_examples * self.repeats // (self.batch_size * self.num_parts)
        bounds = np.linspace(0, self.num_examples, self.num_parts + 1).astype(int)
        share = bounds[self.part_index + 1] - bounds[self.part_index]
        return -(-share // self.batch_size)

    def __iter__(self):
        import mxnet as mx
        indices = self._indices()
        rng = np.random.RandomState(self.seed * 7919 + self.epoch * 31 + self.part_index)
        for start in range(0, len(indices), self.batch_size):
            take = indices[start:start + self.batch_size]
            data = self._images[take]
            if self.train and self.mirror:
                flip = rng.rand(len(take)) < 0.5
                data = data.copy()
                data[flip] = data[flip, :, :, ::-1]
            yield (mx.nd.array(data, ctx=self.ctx, dtype=self.dtype),
                   mx.nd.array(self._labels[take], ctx=self.ctx, dtype='float32'), len(take))
