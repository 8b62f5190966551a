"""RecordIO packing (python -m gluon_lcnn.data.pack) and the input pipelines built on it.

Budget: ~10 s (one CLI subprocess; everything else is small generated images in-process).
"""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from gluon_lcnn.data import (FashionMNISTBatches, RecordBatches, count_records,
                             load_fashion_mnist, pack_arrays, pack_folder, read_record)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_folder(root, classes=3, per_class=4, size=(20, 24), seed=0):
    """Random BGR images ROOT/<class>/<i>.png, a distinct size per image; returns {relpath: img}."""
    rng = np.random.RandomState(seed)
    images = {}
    for c in range(classes):
        os.makedirs(os.path.join(root, 'class_%d' % c))
        for i in range(per_class):
            img = rng.randint(0, 256, size=(size[0] + i, size[1] + c, 3)).astype(np.uint8)
            rel = os.path.join('class_%d' % c, '%02d.png' % i)
            cv2.imwrite(os.path.join(root, rel), img)
            images[rel] = img
    # Files that are not images are ignored.
    open(os.path.join(root, 'class_0', 'notes.txt'), 'w').close()
    return images


def read_lst(prefix):
    with open(prefix + '.lst') as f:
        return [line.rstrip('\n').split('\t') for line in f]


def test_pack_folder_png_round_trip(tmp_path):
    images = make_folder(str(tmp_path / 'img'))
    prefix = str(tmp_path / 'out' / 'data')
    assert pack_folder(str(tmp_path / 'img'), prefix, encoding='.png', shuffle=False) == 12
    assert count_records(prefix + '.idx') == 12
    with open(prefix + '.classes.txt') as f:
        assert f.read() == '0\tclass_0\n1\tclass_1\n2\tclass_2\n'
    rows = read_lst(prefix)
    assert [int(r[0]) for r in rows] == list(range(12))
    for index, label, rel in rows:
        got_label, got = read_record(prefix, int(index))
        assert got_label == float(label) == float(rel.split(os.sep)[0][-1])
        np.testing.assert_array_equal(got, images[rel])   # PNG is lossless


def test_pack_folder_shuffle_resize_and_iterator(tmp_path):
    make_folder(str(tmp_path / 'img'), classes=2, per_class=5, size=(40, 50))
    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    pack_folder(str(tmp_path / 'img'), a, resize=16, seed=3)
    pack_folder(str(tmp_path / 'img'), b, resize=16, seed=3, num_workers=2)
    assert read_lst(a) == read_lst(b)                      # seeded, worker-count independent
    assert [r[2] for r in read_lst(a)] != sorted(r[2] for r in read_lst(a))   # shuffled
    for i in range(10):
        _, img = read_record(a, i)
        assert min(img.shape[:2]) == 16 and img.shape[2] == 3
    batches = RecordBatches(a + '.rec', a + '.idx', (3, 16, 16), batch_size=4, train=False)
    labels = np.concatenate([lab.asnumpy()[:n] for _, lab, n in batches])
    assert sorted(labels.tolist()) == [0.0] * 5 + [1.0] * 5


@pytest.mark.parametrize('parts', [1, 2, 3])
def test_record_batches_split_covers_every_record_once(tmp_path, parts):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(23, 8, 8, 3)).astype(np.uint8)
    labels = np.arange(23)      # label = record index, so coverage is checkable
    prefix = str(tmp_path / 'arr')
    pack_arrays(images, labels, prefix)
    seen, train_lengths = [], []
    for rank in range(parts):
        val = RecordBatches(prefix + '.rec', prefix + '.idx', (3, 8, 8), 4, train=False,
                            num_parts=parts, part_index=rank, mean=(0, 0, 0), std=(1, 1, 1))
        for data, label, n in val:
            seen.extend(label.asnumpy()[:n].astype(int).tolist())
            # Pixels come back as packed (BGR on disk, RGB out of the iterator).
            for row, idx in zip(data.asnumpy()[:n], label.asnumpy()[:n].astype(int)):
                np.testing.assert_array_equal(row, images[idx][:, :, ::-1].transpose(2, 0, 1))
        train = RecordBatches(prefix + '.rec', prefix + '.idx', (3, 8, 8), 4, train=True,
                              num_parts=parts, part_index=rank, augment='none')
        train_lengths.append(sum(1 for _ in train))
        assert train_lengths[-1] == len(train)
    assert sorted(seen) == list(range(23))
    assert len(set(train_lengths)) == 1     # Horovod needs equal step counts on every worker


def test_fashion_mnist_cli_gray_round_trip(tmp_path):
    prefix = str(tmp_path / 'fm')
    out = subprocess.run([sys.executable, '-m', 'gluon_lcnn.data.pack', 'fashion-mnist', prefix,
                          '--split', 'test', '--limit', '50'], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'packed 50 records' in out.stdout
    x, y = load_fashion_mnist(train=False, normalize=False)
    batches = RecordBatches(prefix + '.rec', prefix + '.idx', (1, 28, 28), 50, train=False,
                            mean=(0,), std=(1,))
    data, label, n = next(iter(batches))
    assert n == 50
    np.testing.assert_array_equal(data.asnumpy(), np.round(x[:50] * 255))
    np.testing.assert_array_equal(label.asnumpy(), y[:50])


def test_fashion_mnist_batches_shard_the_split():
    evals = [FashionMNISTBatches(train=False, batch_size=1000, num_parts=3, part_index=r)
             for r in range(3)]
    assert sum(n for e in evals for _, _, n in e) == 10000
    trains = [FashionMNISTBatches(train=True, batch_size=500, num_parts=2, part_index=r,
                                  limit=4000) for r in range(2)]
    assert len(trains[0]) == len(trains[1]) == 4
    firsts = [next(iter(t))[0].asnumpy() for t in trains]
    assert not np.array_equal(firsts[0], firsts[1])          # disjoint shares
    trains[0].set_epoch(1)
    assert not np.array_equal(next(iter(trains[0]))[0].asnumpy(), firsts[0])   # reshuffled


def test_pack_errors(tmp_path):
    with pytest.raises(ValueError, match='not a directory'):
        pack_folder(str(tmp_path / 'missing'), str(tmp_path / 'x'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='no class sub-folders'):
        pack_folder(str(tmp_path / 'empty'), str(tmp_path / 'x'))
    (tmp_path / 'empty' / 'cls').mkdir()
    with pytest.raises(ValueError, match='no images'):
        pack_folder(str(tmp_path / 'empty'), str(tmp_path / 'x'))
    with pytest.raises(ValueError, match='encoding'):
        pack_arrays(np.zeros((2, 4, 4), np.uint8), [0, 1], str(tmp_path / 'x'), encoding='.gif')
    with pytest.raises(ValueError, match='2 images but 3 labels'):
        pack_arrays(np.zeros((2, 4, 4), np.uint8), [0, 1, 2], str(tmp_path / 'x'))
    with pytest.raises(ValueError, match='uint8'):
        pack_arrays(np.zeros((2, 4, 4), np.float32), [0, 1], str(tmp_path / 'x'))
    with pytest.raises(ValueError, match='no full batch'):
        pack_arrays(np.zeros((3, 4, 4), np.uint8), [0, 1, 2], str(tmp_path / 'y'))
        RecordBatches(str(tmp_path / 'y.rec'), str(tmp_path / 'y.idx'), (1, 4, 4), 4)
