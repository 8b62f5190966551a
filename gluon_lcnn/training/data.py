"""The training and validation batches of a run, each worker's own share: RecordIO, Fashion-MNIST
or synthetic tensors, as the training flags (``options.py``) say."""
from ..data import FashionMNISTBatches, RecordBatches, SyntheticBatches

__all__ = ['get_data']


def get_data(args, hvd, ctx):
    """(train, val) iterables of (data, label, num_valid), each worker's own share."""
    rank, size = hvd.rank(), hvd.size()
    if args.synthetic:
        make = lambda n: SyntheticBatches(args.data_shape, args.batch_size,  # noqa: E731
                                          args.num_classes, n, ctx=ctx, seed=args.seed + rank)
        return make(args.synthetic_batches), make(2)
    if args.dataset == 'fashion-mnist':
        if args.data_shape != (1, 28, 28) or args.num_classes != 10:
            raise ValueError('Fashion-MNIST is 10 classes of 1x28x28: pass --data-shape 1,28,28 '
                             '--num-classes 10')
        root = dict(root=args.data_root) if args.data_root else {}
        subset = dict(holdout=args.holdout, **root)
        train = FashionMNISTBatches(train=True, batch_size=args.batch_size, num_parts=size,
                                    part_index=rank, seed=args.seed, limit=args.train_limit,
                                    mirror=args.augment != 'none', per_class=args.per_class,
                                    subset_seed=args.subset_seed, repeats=args.epoch_repeats,
                                    **subset)
        # With --holdout, "val" is the held-out training slice, never the test set.
        val = FashionMNISTBatches(train=False, batch_size=max(args.batch_size, 256),
                                  num_parts=size, part_index=rank, heldout=args.holdout > 0,
                                  **subset)
        return train, val
    subset_flags = [f for f, unset in (('holdout', 0), ('per_class', 0), ('epoch_repeats', 1))
                    if getattr(args, f) != unset]
    if subset_flags:
        raise ValueError('%s: only for --dataset fashion-mnist'
                         % ', '.join('--' + f.replace('_', '-') for f in subset_flags))
    missing = [f for f in ('rec_train', 'rec_train_idx', 'rec_val', 'rec_val_idx')
               if not getattr(args, f)]
    if missing:
        raise ValueError('RecordIO training needs %s (or --synthetic / --dataset fashion-mnist)'
                         % ', '.join('--' + m.replace('_', '-') for m in missing))
    common = dict(data_shape=args.data_shape, batch_size=args.batch_size, num_parts=size,
                  part_index=rank, num_threads=args.data_nthreads, seed=args.seed)
    train = RecordBatches(args.rec_train, args.rec_train_idx, train=True, augment=args.augment,
                          **common)
    val = RecordBatches(args.rec_val, args.rec_val_idx, train=False, val_resize=args.val_resize,
                        **common)
    return train, val
