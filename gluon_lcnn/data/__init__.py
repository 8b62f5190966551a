"""Input pipelines: Fashion-MNIST (real data from the Debian package) and RecordIO.

Every training pipeline is an iterable of ``(data, label, num_valid)`` batches with ``len()``
batches per epoch and ``set_epoch(epoch)``, so one training loop serves all of them.
"""
from .fashion_mnist import (FashionMNIST, FASHION_MNIST_ROOT, load_fashion_mnist,
                            FashionMNISTBatches)
from .pack import pack_folder, pack_arrays, pack_fashion_mnist, list_images, read_record
from .recordio import RecordBatches, SyntheticBatches, count_records
