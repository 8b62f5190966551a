"""Pack an image folder or Fashion-MNIST into RecordIO (.rec + .idx + .lst), like MXNet's im2rec.

Usage::

    python -m gluon_lcnn.data.pack folder ROOT PREFIX [--resize 256] [--encoding .jpg]
    python -m gluon_lcnn.data.pack fashion-mnist PREFIX [--split train|test] [--limit N]

``folder`` expects one sub-folder per class (``ROOT/<class>/<image>``); classes are numbered in
sorted order and the mapping is written to ``PREFIX.classes.txt``. ``PREFIX.lst`` lists
``index<TAB>label<TAB>path`` as im2rec does, so the output also works with MXNet's own tools.
"""
import argparse
import os
import random
from multiprocessing import Pool

import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')

__all__ = ['list_images', 'pack_folder', 'pack_arrays', 'pack_fashion_mnist', 'read_record',
           'IMAGE_EXTENSIONS']


def list_images(root):
    """(relative path, label) pairs of an image folder with one sub-folder per class.

    Returns
    -------
    items : list of (str, int)
        Sorted by class, then path.
    classes : list of str
        Class names; ``classes[label]`` is the sub-folder name.
    """
    if not os.path.isdir(root):
        raise ValueError('pack: %r is not a directory' % root)
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError('pack: %r has no class sub-folders (expected ROOT/<class>/<image>)' % root)
    items = []
    for label, name in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, name))):
            for fname in sorted(files):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    items.append((os.path.relpath(os.path.join(dirpath, fname), root), label))
    if not items:
        raise ValueError('pack: no images with extensions %s under %r' % (IMAGE_EXTENSIONS, root))
    return items, classes


def _resize_shorter(img, size):
    import cv2
    h, w = img.shape[:2]
    if size <= 0 or min(h, w) == size:
        return img
    scale = float(size) / min(h, w)
    new = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(img, new, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def _encode(job):
    """Read, resize and encode one image (runs in worker processes)."""
    import cv2
    import mxnet as mx
    index, label, path, resize, color, quality, encoding = job
    img = cv2.imread(path, cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError('pack: cannot decode image %r' % path)
    img = _resize_shorter(img, resize)
    header = mx.recordio.IRHeader(0, float(label), index, 0)
    return index, mx.recordio.pack_img(header, img, quality=quality, img_fmt=encoding)


def _check_encoding(encoding):
    if encoding not in ('.jpg', '.png'):
        raise ValueError("pack: encoding must be '.jpg' or '.png', got %r" % (encoding,))


def _open_writer(prefix):
    import mxnet as mx
    directory = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(directory, exist_ok=True)
    return mx.recordio.MXIndexedRecordIO(prefix + '.idx', prefix + '.rec', 'w')


def pack_folder(root, prefix, resize=0, encoding='.jpg', quality=95, color=True, shuffle=True,
                seed=0, num_workers=1):
    """Pack ``root/<class>/<image>`` into ``prefix.rec``/``.idx``/``.lst``/``.classes.txt``.

    Parameters
    ----------
    root : str
        Image folder with one sub-folder per class.
    prefix : str
        Output path without extension.
    resize : int, default 0
        Resize the shorter side to this many pixels (0 keeps the size).
    encoding : {'.jpg', '.png'}
        '.png' is lossless (what the tests use to check a round trip).
    quality : int
        JPEG quality (or PNG compression level for '.png').
    color : bool
        False stores single-channel (gray) images.
    shuffle : bool
        Shuffle the record order (with ``seed``), as im2rec does by default.
    num_workers : int
        Processes used to decode and encode images.

    Returns
    -------
    int
        Number of records written.
    """
    _check_encoding(encoding)
    items, classes = list_images(root)
    order = list(range(len(items)))
    if shuffle:
        random.Random(seed).shuffle(order)
    jobs = [(i, items[k][1], os.path.join(root, items[k][0]), int(resize), bool(color),
             int(quality), encoding) for i, k in enumerate(order)]
    writer = _open_writer(prefix)
    try:
        if num_workers > 1:
            with Pool(num_workers) as pool:
                for index, record in pool.imap(_encode, jobs, chunksize=64):
                    writer.write_idx(index, record)
        else:
            for job in jobs:
                index, record = _encode(job)
                writer.write_idx(index, record)
    finally:
        writer.close()
    with open(prefix + '.lst', 'w') as f:
        for i, k in enumerate(order):
            f.write('%d\t%d\t%s\n' % (i, items[k][1], items[k][0]))
    with open(prefix + '.classes.txt', 'w') as f:
        f.write(''.join('%d\t%s\n' % (label, name) for label, name in enumerate(classes)))
    return len(jobs)


def pack_arrays(images, labels, prefix, encoding='.png', quality=3):
    """Pack uint8 images (N, H, W) gray or (N, H, W, 3) BGR with integer labels into RecordIO."""
    import mxnet as mx
    _check_encoding(encoding)
    images = np.asarray(images)
    labels = np.asarray(labels).reshape(-1)
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise ValueError('pack: images must be uint8 (N, H, W) or (N, H, W, C), got %s %s'
                         % (images.dtype, images.shape))
    if len(images) != len(labels):
        raise ValueError('pack: %d images but %d labels' % (len(images), len(labels)))
    writer = _open_writer(prefix)
    try:
        for i, (img, label) in enumerate(zip(images, labels)):
            if img.ndim == 3 and img.shape[2] == 1:
                img = img[:, :, 0]
            header = mx.recordio.IRHeader(0, float(label), i, 0)
            writer.write_idx(i, mx.recordio.pack_img(header, img, quality=quality,
                                                     img_fmt=encoding))
    finally:
        writer.close()
    with open(prefix + '.lst', 'w') as f:
        f.write(''.join('%d\t%d\t%d\n' % (i, int(l), i) for i, l in enumerate(labels)))
    return len(images)


def pack_fashion_mnist(prefix, root=None, split='train', limit=0):
    """Pack the Fashion-MNIST ``split`` ('train' or 'test') as lossless gray 28x28 PNG records."""
    from .fashion_mnist import FashionMNIST, FASHION_MNIST_ROOT
    if split not in ('train', 'test'):
        raise ValueError("pack: split must be 'train' or 'test', got %r" % (split,))
    dataset = FashionMNIST(root=root or FASHION_MNIST_ROOT, train=(split == 'train'))
    images, labels = dataset._data.asnumpy()[..., 0], dataset._label
    if limit:
        images, labels = images[:limit], labels[:limit]
    return pack_arrays(images, labels, prefix, encoding='.png')


def read_record(prefix, index):
    """(label, image as uint8 HxW or HxWx3 BGR) of record ``index`` in ``prefix.rec``."""
    import cv2
    import mxnet as mx
    reader = mx.recordio.MXIndexedRecordIO(prefix + '.idx', prefix + '.rec', 'r')
    try:
        header, img = mx.recordio.unpack_img(reader.read_idx(index), cv2.IMREAD_UNCHANGED)
    finally:
        reader.close()
    return header.label, img


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m gluon_lcnn.data.pack',
                                     description=__doc__.split('\n')[0])
    sub = parser.add_subparsers(dest='source', required=True)
    folder = sub.add_parser('folder', help='an image folder with one sub-folder per class')
    folder.add_argument('root')
    folder.add_argument('prefix', help='output path without extension')
    folder.add_argument('--resize', type=int, default=0, help='shorter side in pixels (0: keep)')
    folder.add_argument('--encoding', default='.jpg', choices=['.jpg', '.png'])
    folder.add_argument('--quality', type=int, default=95)
    folder.add_argument('--gray', action='store_true', help='store single-channel images')
    folder.add_argument('--no-shuffle', action='store_true')
    folder.add_argument('--seed', type=int, default=0)
    folder.add_argument('--num-workers', type=int, default=1)
    fmnist = sub.add_parser('fashion-mnist', help='Fashion-MNIST from its idx .gz files')
    fmnist.add_argument('prefix', help='output path without extension')
    fmnist.add_argument('--root', default=None, help='folder with the idx .gz files')
    fmnist.add_argument('--split', default='train', choices=['train', 'test'])
    fmnist.add_argument('--limit', type=int, default=0, help='pack only the first N images')
    args = parser.parse_args(argv)
    if args.source == 'folder':
        count = pack_folder(args.root, args.prefix, resize=args.resize, encoding=args.encoding,
                            quality=args.quality, color=not args.gray,
                            shuffle=not args.no_shuffle, seed=args.seed,
                            num_workers=args.num_workers)
    else:
        count = pack_fashion_mnist(args.prefix, root=args.root, split=args.split,
                                   limit=args.limit)
    print('packed %d records into %s.rec (index %s.idx)' % (count, args.prefix, args.prefix))


if __name__ == '__main__':
    main()
