"""gluon-lcnn: lookup-based convolutional networks (LCNN) for MXNet/Gluon."""
import os
from setuptools import setup, find_packages

here = os.path.dirname(os.path.abspath(__file__))


def read_version():
    with open(os.path.join(here, 'gluon_lcnn', '__init__.py')) as f:
        for line in f:
            if line.startswith('__version__'):
                return line.split('=')[1].strip().strip("'\"")
    raise RuntimeError('no __version__ in gluon_lcnn/__init__.py')


setup(
    name='gluon-lcnn',
    version=read_version(),
    description='LCNN: lookup-based convolutional networks for MXNet/Gluon, with a fast sparse '
                'CPU inference operator',
    packages=find_packages(include=['gluon_lcnn', 'gluon_lcnn.*', 'symbols']),
    package_data={'gluon_lcnn.ops': ['*.cc', '*.h', '*.so']},
    python_requires='>=3.8',
    # What the package imports (tabulate: the MAC table; opencv: the RecordIO packer). Upper
    # bounds matter: numpy 2 breaks mxnet 1.9. The full pinned stack is requirements.txt.
    install_requires=[
        'mxnet==1.9.1',
        'numpy==1.23.5',
        'tabulate',
        'opencv-python==4.8.1.78',
    ],
    extras_require={
        # GPU users swap the CPU wheel for the CUDA 11.2 build of the same version.
        'gpu': ['mxnet-cu112==1.9.1'],
        # GluonCV nets for to_lcnn; scipy >= 1.11 and pillow 10 break gluoncv 0.10.
        'gluoncv': ['gluoncv==0.10.5.post0', 'scipy==1.10.1', 'pillow==9.5.0'],
        # train_scripts/ (progress bars); Horovod itself is the 'horovod' extra.
        'train': ['tqdm'],
        'horovod': ['horovod==0.28.1'],
        'serve': ['multi-model-server==1.1.11', 'model-archiver==1.0.3', 'opencv-python==4.8.1.78'],
    },
    entry_points={'console_scripts': ['gluon-lcnn=gluon_lcnn.__main__:main']},
)
