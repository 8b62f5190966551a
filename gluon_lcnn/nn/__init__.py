"""Gluon blocks: trainable lookup layers (lookup.py) and sparse inference blocks (sparse.py)."""
from .lookup import (LookupConv2D, LookupDense, lookup_layers, density_report,
                     lookup_threshold, l1_penalty, choose_forms)
from .sparse import (SparseLookupConv2D, SparseLookupDense, pack_lookup, PackedLookup)
