"""RecordIO input pipeline: ``mx.io.ImageRecordIter`` per worker, as ``(data, label, num_valid)``."""
import os

__all__ = ['RecordBatches', 'count_records', 'SyntheticBatches']

# ImageNet channel statistics in 0..255 pixel units (RGB).
IMAGENET_MEAN = (123.68, 116.779, 103.939)
IMAGENET_STD = (58.393, 57.12, 57.375)


def count_records(path_imgidx):
    """Number of records listed in a RecordIO .idx file."""
    if not os.path.isfile(path_imgidx):
        raise ValueError('RecordIO index %r not found (pack data with python -m '
                         'gluon_lcnn.data.pack)' % path_imgidx)
    with open(path_imgidx) as f:
        return sum(1 for line in f if line.strip())


class RecordBatches:
    """One worker's share of a packed .rec file, as an iterable of ``(data, label, num_valid)``.

    Training: random-resized crops (or plain random crops with ``augment='crop'``) and mirror,
    shuffled; each epoch stops after ``len(self)`` batches, the same number on every worker
    (full batches of the smallest part) so Horovod's allreduce never waits on a worker
    that ran out. Evaluation: centre crop (after resizing the shorter side to ``val_resize``
    if given; ImageNet practice is to pack val with ``--resize 256``), no shuffle; the padding of the last batch is reported through ``num_valid`` so the parts
    together count every record exactly once.

    Parameters
    ----------
    path_imgrec, path_imgidx : str
        The packed records and their index.
    data_shape : tuple of int
        (channels, height, width); channels 1 decodes gray images.
    batch_size : int
        Per-worker batch size.
    train : bool
        Training or evaluation behaviour (above).
    num_parts, part_index : int
        Number of workers and this worker's rank.
    augment : {'imagenet', 'crop', 'none'}
        Training augmentation: random-resized crop + mirror, random crop + mirror, or nothing.
    mean, std : tuple of float or None
        Per-channel statistics in pixel units; default ImageNet's (gray: their average).
    val_resize : int
        Evaluation only: resize the shorter side to this before the centre crop (0: don't).
    """

    def __init__(self, path_imgrec, path_imgidx, data_shape, batch_size, train=True,
                 num_parts=1, part_index=0, augment='imagenet', mean=None, std=None,
                 num_threads=4, seed=0, dtype='float32', val_resize=0):
        import mxnet as mx
        if not os.path.isfile(path_imgrec):
            raise ValueError('RecordIO file %r not found' % path_imgrec)
        if augment not in ('imagenet', 'crop', 'none'):
            raise ValueError("RecordBatches: augment must be 'imagenet', 'crop' or 'none', got %r"
                             % (augment,))
        data_shape = tuple(int(v) for v in data_shape)
        if len(data_shape) != 3 or data_shape[0] not in (1, 3):
            raise ValueError('RecordBatches: data_shape must be (1 or 3, height, width), got %r'
                             % (data_shape,))
        self.num_examples = count_records(path_imgidx)
        self.batch_size, self.train = int(batch_size), bool(train)
        self.num_parts, self.part_index = int(num_parts), int(part_index)
        if mean is None:
            mean = IMAGENET_MEAN if data_shape[0] == 3 else (sum(IMAGENET_MEAN) / 3,)
        if std is None:
            std = IMAGENET_STD if data_shape[0] == 3 else (sum(IMAGENET_STD) / 3,)
        norm = {}
        for name, values in (('mean', mean), ('std', std)):
            for channel, value in zip('rgb', values):
                norm['%s_%s' % (name, channel)] = float(value)
        if self.train and augment == 'imagenet':
            aug = dict(random_resized_crop=True, min_random_area=0.08, max_random_area=1.0,
                       min_aspect_ratio=3.0 / 4, max_aspect_ratio=4.0 / 3, rand_mirror=True)
        elif self.train and augment == 'crop':
            aug = dict(rand_crop=True, rand_mirror=True)
        elif self.train:
            aug = {}
        else:
            aug = dict(resize=int(val_resize)) if val_resize else {}
        self.seed, self.epoch = int(seed), 0
        if self.train and len(self) == 0:
            raise ValueError('RecordBatches: %d records split into %d parts give no full batch of '
                             '%d on every worker' % (self.num_examples, self.num_parts,
                                                     self.batch_size))
        # A fresh iterator per pass: its shuffle is then a function of (seed, epoch), so a
        # resumed run sees the same order, and round_batch's carry-over between passes (which
        # shifts the start of the next pass) never applies.
        self._make_iter = lambda seed: mx.io.ImageRecordIter(
            path_imgrec=path_imgrec, path_imgidx=path_imgidx, data_shape=data_shape,
            batch_size=self.batch_size, shuffle=self.train, seed=seed, seed_aug=seed,
            num_parts=self.num_parts, part_index=self.part_index, round_batch=True,
            preprocess_threads=int(num_threads), dtype=dtype, verbose=False, **norm, **aug)

    def set_epoch(self, epoch):
        """Choose the shuffle and augmentation seed of ``epoch``."""
        self.epoch = int(epoch)

    def part_sizes(self):
        """Records in each part: dmlc's indexed split gives every part ceil(n / parts)."""
        step = -(-self.num_examples // self.num_parts)
        return [max(0, min(self.num_examples, (r + 1) * step) - r * step)
                for r in range(self.num_parts)]

    def __len__(self):
        sizes = self.part_sizes()
        if self.train:
            # The smallest part bounds the number of full batches every worker can take.
            return min(sizes) // self.batch_size
        return -(-sizes[self.part_index] // self.batch_size)

    def __iter__(self):
        limit = len(self) if self.train else None
        # With round_batch the last batch of a pass is filled up from the start of the part and
        # batch.pad says how many rows are repeats (round_batch=False reports no pad at all).
        for step, batch in enumerate(self._make_iter(self.seed + 1000003 * self.epoch)):
            if limit is not None and step >= limit:
                break
            yield batch.data[0], batch.label[0], self.batch_size - batch.pad


class SyntheticBatches:
    """``num_batches`` batches of one fixed random tensor, for throughput measurements."""

    def __init__(self, data_shape, batch_size, num_classes, num_batches=50, ctx=None,
                 dtype='float32', seed=0):
        import mxnet as mx
        ctx = ctx or mx.cpu()
        mx.random.seed(seed, ctx=ctx)
        self.num_examples = num_batches * batch_size
        self._data = mx.nd.random.normal(shape=(batch_size,) + tuple(data_shape), ctx=ctx,
                                         dtype=dtype)
        self._label = mx.nd.array(mx.nd.random.randint(0, num_classes, shape=(batch_size,))
                                  .asnumpy(), ctx=ctx)
        self._num_batches = int(num_batches)
        self.batch_size = int(batch_size)

    def set_epoch(self, epoch):
        pass

    def __len__(self):
        return self._num_batches

    def __iter__(self):
        for _ in range(self._num_batches):
            yield self._data, self._label, self.batch_size
