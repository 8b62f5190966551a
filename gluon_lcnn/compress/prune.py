"""Gradual magnitude pruning of a trained dense net (jacinto): zero the smallest weights.

A pruned layer keeps its Conv2D / Dense form with exact zeros in the weight. ``flops.profile``
counts such a layer at nnz(W) MACs per output pixel (row), and ``deploy.to_inference`` runs it
on the sparse lookup operator with an identity dictionary (D = I, P = W) when that measures
faster than the dense kernel.

The sparsity rule (``prune_sparsities``, jacinto's): one uniform sparsity s for every prunable
layer (Conv2D with groups 1 and dilation 1, Dense), the first convolution kept dense
(``skip_first``: it sees the image, has few weights and is sensitive). s is the smallest value
whose pruned net reaches the target MAC speed-up, counting each layer as ``flops.profile``
would after ``magnitude_prune`` (round(s * size) zeros; a layer counts at nnz(W) only once its
density is <= ``flops.PRUNED_DENSITY`` = 0.7, so small targets get s = 0.3). Sparsities are
capped at ``MAX_SPARSITY``.

The schedule (``PruningSchedule``): sparsity 0 before ``begin_step``, the final sparsity s_f
from ``end_step`` on, in between with t = (step - begin) / (end - begin)

    cubic:  s_f * (1 - (1 - t)^3)                      (Zhu & Gupta 2017)
    step:   s_f * floor(t * steps) / steps             (``steps`` equal increments)

and only recomputed every ``frequency`` steps (step counted from ``begin_step``; ``end_step``
is always a pruning event). ``GradualPruner.on_step(step)``, called right after every
``trainer.step``, recomputes the masks by magnitude whenever the scheduled sparsity changes
(after re-applying the old masks, so a pruned weight is 0, the smallest magnitude, and stays
pruned: the update has moved it off zero by momentum) and multiplies the weights
by the masks after every update, so pruned weights are exactly zero whatever momentum or
weight decay do. Ties in magnitude are broken by position (lower flat index pruned first), so
every Horovod worker, holding identical weights after the allreduced step, computes identical
masks. After ``--resume``, ``restore(step)`` recomputes the masks from the loaded weights.
The masks act on the parameter arrays: a Trainer must not update on a kvstore
(``update_on_kvstore=False``, as Horovod's DistributedTrainer and single-device training do).
"""
from collections import OrderedDict

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from ..convert import _walk
from ..flops import PRUNED_DENSITY, profile

__all__ = ['prune_sparsities', 'magnitude_prune', 'PruningSchedule', 'GradualPruner',
           'masks_from_zeros', 'sparsity_report', 'prunable_layers', 'MAX_SPARSITY']

MAX_SPARSITY = 0.99  # beyond this a layer is all but gone; no useful target needs it
_KINDS = ('cubic', 'step')


def _is_layer(block):
    return isinstance(block, (nn.Conv2D, nn.Dense)) and not isinstance(block, nn.Conv2DTranspose)


def _is_prunable(block):
    """What the sparse operator can run: Conv2D (groups 1, dilation 1, NCHW) or Dense."""
    if isinstance(block, nn.Dense):
        return True
    if not _is_layer(block):
        return False
    kw = block._kwargs
    return (kw['num_group'] == 1 and tuple(kw['dilate']) == (1, 1)
            and kw.get('layout', 'NCHW') == 'NCHW')


def prunable_layers(net):
    """OrderedDict path -> block of the Conv2D (groups 1, dilation 1) / Dense layers."""
    return OrderedDict((path, child) for _, _, child, path in _walk(net) if _is_prunable(child))


def _pruned_count(size, sparsity):
    """Weights ``magnitude_prune`` zeroes in a layer of ``size`` at ``sparsity``."""
    return min(size, int(np.floor(sparsity * size + 0.5)))


def _counted(nnz, size):
    """MACs per output pixel flops.profile charges a layer with ``nnz`` non-zero weights."""
    return nnz if nnz <= PRUNED_DENSITY * size else size


def _check_sparsity(name, path, value):
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise ValueError('%s: sparsity for %r must be a number in [0, 1), got %r'
                         % (name, path, value))
    if not 0 <= s < 1:
        raise ValueError('%s: sparsity for %r must be in [0, 1), got %r' % (name, path, value))
    return s


def _resolve(name, net, paths):
    layers = OrderedDict((path, child) for _, _, child, path in _walk(net))
    found = OrderedDict()
    for path in paths:
        if path not in layers:
            raise ValueError('%s: no layer at path %r' % (name, path))
        if not _is_layer(layers[path]):
            raise ValueError('%s: %r is a %s, not a Conv2D or Dense'
                             % (name, path, type(layers[path]).__name__))
        if layers[path].weight._data is None:
            raise ValueError('%s: layer %r has no initialized weight; initialize or load the '
                             'net first' % (name, path))
        found[path] = layers[path]
    return found


def _weight_numpy(block):
    return block.weight.data(block.weight.list_ctx()[0]).asnumpy()


def prune_sparsities(net, input_shape, target_speedup, skip_first=True):
    """Final sparsity per layer so that the pruned net reaches ``target_speedup`` in MACs.

    Parameters
    ----------
    net : Block
        Initialized dense net.
    input_shape : tuple of int
        Input shape with batch; MACs counted by ``flops.profile`` on it.
    target_speedup : float > 1
        Wanted dense MACs / MACs after pruning.
    skip_first : bool, default True
        Keep the first convolution (in forward order) dense.

    Returns
    -------
    OrderedDict path -> sparsity, one uniform value (module docstring) for every prunable
    layer the forward pass reaches.
    """
    try:
        target = float(target_speedup)
    except (TypeError, ValueError):
        raise ValueError('prune_sparsities: target_speedup must be a number > 1, got %r'
                         % (target_speedup,))
    if not target > 1:
        raise ValueError('prune_sparsities: target_speedup must be > 1, got %r'
                         % (target_speedup,))
    counts = profile(net, input_shape)
    candidates = prunable_layers(net)
    layers = []  # (path, size, nnz now, MACs per weight)
    first_conv_seen, seen = False, set()
    for row in counts.rows:
        block = candidates.get(row['path'])
        if block is None or row['path'] in seen:
            continue  # not prunable, or a shared layer run again
        seen.add(row['path'])
        if isinstance(block, nn.Conv2D) and not first_conv_seen:
            first_conv_seen = True
            if skip_first:
                continue
        size = int(np.prod(block.weight.shape))
        nnz = int(np.count_nonzero(_weight_numpy(block)))
        layers.append((row['path'], size, nnz, row['dense_macs'] // size))
    if not layers:
        raise ValueError('prune_sparsities: the net has no prunable Conv2D / Dense layer%s'
                         % (' besides the first conv' if skip_first else ''))
    dense = counts.totals['dense_macs']
    others = counts.totals['macs'] - sum(_counted(nnz, size) * per
                                         for _, size, nnz, per in layers)

    def speedup(s):
        macs = others + sum(_counted(min(nnz, size - _pruned_count(size, s)), size) * per
                            for _, size, nnz, per in layers)
        return dense / float(macs) if macs else float('inf')

    if speedup(MAX_SPARSITY) < target:
        raise ValueError('prune_sparsities: target_speedup %.3gx is not reachable; the best is '
                         '%.3gx (every prunable layer at sparsity %g%s)'
                         % (target, speedup(MAX_SPARSITY), MAX_SPARSITY,
                            ', the first conv dense' if skip_first else ''))
    lo, hi = 0.0, MAX_SPARSITY
    if speedup(lo) < target:
        for _ in range(60):  # smallest sparsity that meets the target
            mid = 0.5 * (lo + hi)
            if speedup(mid) >= target:
                hi = mid
            else:
                lo = mid
        lo = hi
    return OrderedDict((path, lo) for path, _, _, _ in layers)


def _magnitude_mask(weight, sparsity):
    """0/1 mask (weight's dtype) zeroing the round(sparsity * size) smallest |w|; among equal
    magnitudes the lower flat index goes first, so the result depends on the weights only."""
    magnitude = np.abs(weight).ravel()
    count = _pruned_count(magnitude.size, sparsity)
    mask = np.ones(magnitude.size, dtype=weight.dtype)
    if count == 0:
        return mask.reshape(weight.shape)
    cut = np.partition(magnitude, count - 1)[count - 1]  # the count-th smallest magnitude
    below = magnitude < cut
    mask[below] = 0
    ties = np.flatnonzero(magnitude == cut)[:count - int(below.sum())]
    mask[ties] = 0
    return mask.reshape(weight.shape)


def _apply_mask(block, mask):
    """weight *= mask on every context, in place (the Trainer keeps the same arrays)."""
    for data in block.weight.list_data():
        data *= mask.as_in_context(data.context)


def magnitude_prune(net, sparsities):
    """Zero, per layer, the smallest-|w| fraction of the weight (in place).

    Parameters
    ----------
    net : Block
    sparsities : dict path -> float in [0, 1)
        Fraction of each layer's weights to zero (round(s * size) of them).

    Returns
    -------
    OrderedDict path -> NDArray mask of 0/1 (the weight's shape, dtype and first context).
    """
    values = OrderedDict((path, _check_sparsity('magnitude_prune', path, s))
                         for path, s in sparsities.items())
    layers = _resolve('magnitude_prune', net, values)
    masks = OrderedDict()
    for path, block in layers.items():
        weight = _weight_numpy(block)
        masks[path] = mx.nd.array(_magnitude_mask(weight, values[path]),
                                  ctx=block.weight.list_ctx()[0], dtype=weight.dtype)
        _apply_mask(block, masks[path])
    return masks


def masks_from_zeros(net, paths):
    """OrderedDict path -> NDArray 0/1 mask: 1 where the layer's weight is non-zero."""
    masks = OrderedDict()
    for path, block in _resolve('masks_from_zeros', net, list(paths)).items():
        weight = block.weight.data(block.weight.list_ctx()[0])
        masks[path] = (weight != 0).astype(weight.dtype)
    return masks


def sparsity_report(net):
    """OrderedDict path -> fraction of exactly zero weights, for every initialized Conv2D /
    Dense layer."""
    report = OrderedDict()
    for _, _, block, path in _walk(net):
        if _is_layer(block) and block.weight._data is not None:
            weight = block.weight.data(block.weight.list_ctx()[0])
            report[path] = 1.0 - float((weight != 0).sum().asscalar()) / weight.size
    return report


class PruningSchedule:
    """Sparsity per layer as a function of the update step (module docstring).

    Parameters
    ----------
    final_sparsities : dict path -> float in [0, 1)
    begin_step, end_step : int, 0 <= begin_step <= end_step
        Pruning starts at begin_step (sparsity 0 before) and reaches the final sparsity at
        end_step.
    frequency : int >= 1
        Steps between pruning events.
    kind : 'cubic' or 'step'
    steps : int >= 1
        Increments of the 'step' kind.
    """

    def __init__(self, final_sparsities, begin_step, end_step, frequency=1, kind='cubic',
                 steps=4):
        self.final_sparsities = OrderedDict(
            (path, _check_sparsity('PruningSchedule', path, s))
            for path, s in final_sparsities.items())
        for name, value in (('begin_step', begin_step), ('end_step', end_step),
                            ('frequency', frequency), ('steps', steps)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError('PruningSchedule: %s must be an int, got %r' % (name, value))
        if not 0 <= begin_step <= end_step:
            raise ValueError('PruningSchedule: need 0 <= begin_step <= end_step, got %r, %r'
                             % (begin_step, end_step))
        if frequency < 1 or steps < 1:
            raise ValueError('PruningSchedule: frequency and steps must be >= 1, got %r, %r'
                             % (frequency, steps))
        if kind not in _KINDS:
            raise ValueError('PruningSchedule: kind must be one of %s, got %r' % (_KINDS, kind))
        self.begin_step, self.end_step = int(begin_step), int(end_step)
        self.frequency, self.kind, self.steps = int(frequency), kind, int(steps)

    def progress(self, step):
        """t in [0, 1] at ``step``, held constant between pruning events."""
        if step >= self.end_step:
            return 1.0
        if step < self.begin_step:
            return 0.0
        event = self.begin_step + (step - self.begin_step) // self.frequency * self.frequency
        return (event - self.begin_step) / float(self.end_step - self.begin_step)

    def fraction(self, step):
        """The share of the final sparsity scheduled at ``step``."""
        t = self.progress(step)
        if self.kind == 'cubic':
            return 1.0 - (1.0 - t) ** 3
        return np.floor(t * self.steps + 1e-9) / self.steps

    def sparsity_at(self, step):
        """OrderedDict path -> sparsity at ``step`` (number of updates done so far)."""
        share = self.fraction(step)
        return OrderedDict((path, s * share) for path, s in self.final_sparsities.items())


class GradualPruner:
    """Applies a ``PruningSchedule`` to ``net`` during fine-tuning (module docstring).

    Call ``on_step(step)`` right after every ``trainer.step`` (step = updates done so far,
    1-based); after loading a checkpoint call ``restore(step)`` with the step it was saved at.
    ``masks`` holds the current OrderedDict path -> NDArray mask.
    """

    def __init__(self, net, schedule):
        if not isinstance(schedule, PruningSchedule):
            raise ValueError('GradualPruner: schedule must be a PruningSchedule, got %s'
                             % type(schedule).__name__)
        self.net = net
        self.schedule = schedule
        self.layers = _resolve('GradualPruner', net, schedule.final_sparsities)
        self.masks = None
        self._sparsities = None  # what the masks were computed for

    def _update_masks(self, sparsities):
        masks = OrderedDict(self.masks or ())
        for path, block in self.layers.items():
            if self._sparsities is not None and self._sparsities[path] == sparsities[path]:
                continue
            weight = _weight_numpy(block)
            masks[path] = mx.nd.array(_magnitude_mask(weight, sparsities[path]),
                                      ctx=block.weight.list_ctx()[0], dtype=weight.dtype)
        self.masks, self._sparsities = masks, sparsities

    def on_step(self, step):
        """Zero the pruned weights; at a pruning event recompute the masks first."""
        sparsities = self.schedule.sparsity_at(step)
        if sparsities != self._sparsities:
            # The update just moved pruned weights off zero: re-zero them before ranking
            # magnitudes, so they rank lowest and stay pruned.
            self._apply()
            self._update_masks(sparsities)
        self._apply()

    def _apply(self):
        if self.masks is None:
            return
        for path, block in self.layers.items():
            if self._sparsities[path] > 0:
                _apply_mask(block, self.masks[path])

    def restore(self, step):
        """Masks from the (loaded) weights at the sparsity scheduled for ``step``."""
        self.masks = self._sparsities = None
        self.on_step(step)
