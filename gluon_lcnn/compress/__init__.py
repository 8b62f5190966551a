"""Accelerate a trained dense net: LCNN fine-tune, low-rank decomposition, magnitude pruning.

``compress(model, params, method, target_speedup, out, ...)`` (and ``python -m gluon_lcnn
compress``) runs a method end to end: convert, fine-tune with the training loop, measure
(``workflow.py``). The methods are plain functions on Gluon nets: ``lcnn.py`` (dictionary sizes
for a MAC target, the sparsifying fine-tune), ``lowrank.py`` (accnn's decomposition), ``prune.py``
(gradual magnitude pruning). int8 is ``gluon_lcnn.quantize``.
"""
from .lcnn import LcnnSparsifier, apply_lcnn_plan, lcnn_plan
from .lowrank import lowrank_ranks, to_lowrank
from .prune import (GradualPruner, PruningSchedule, magnitude_prune, prune_sparsities,
                    sparsity_report)
from .workflow import METHODS, compress, load_compressed

__all__ = ['compress', 'load_compressed', 'METHODS', 'lcnn_plan', 'apply_lcnn_plan',
           'LcnnSparsifier', 'lowrank_ranks', 'to_lowrank', 'prune_sparsities',
           'magnitude_prune', 'PruningSchedule', 'GradualPruner', 'sparsity_report']
