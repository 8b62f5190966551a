"""Model zoo: dense networks and their LCNN twins, built by one constructor per family.

``get_model(name, **kwargs)`` / ``list_models()``; presets are dicts in each family's module
(``ALEXNET_PRESETS``, ...); ``set_lookup_density`` sparsifies lookup layers to given densities.
"""
from .common import ASSUMED_DENSITIES, PUBLISHED_DENSITIES, set_lookup_density
from .model_zoo import get_model, list_models
