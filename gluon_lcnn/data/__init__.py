"""Input pipelines: Fashion-MNIST (real data from the Debian package) and RecordIO."""
from .fashion_mnist import FashionMNIST, FASHION_MNIST_ROOT, load_fashion_mnist
