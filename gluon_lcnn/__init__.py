"""gluon-lcnn: lookup-based convolutional networks (LCNN) for MXNet/Gluon."""
__version__ = '0.1.0'

from . import nn
from . import deploy
from .model_zoo import get_model, list_models
from .convert import to_lcnn
from . import ops  # builds (if needed) and loads the C++ sparse-lookup operator library
from . import flops
