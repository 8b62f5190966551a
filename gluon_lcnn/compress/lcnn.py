"""LCNN from a trained dense net: dictionary sizes for a MAC target, and the sparsifying fine-tune.

``lcnn_plan(net, input_shape, target_speedup)`` decides, per Conv2D / Dense layer, the
dictionary size d and the number of lookup entries (nnz) the layer may keep:

- the classifier (the last Dense layer) stays dense, as in LCNN-fast (AlexNet's fc8): a few
  per cent of the MACs, and the layer accuracy is most sensitive to;
- every other layer gets the same share of its dense MACs M: a budget B = M / X', with X' the
  per-layer speed-up that makes the whole net (classifier included) reach ``target_speedup``;
- the dictionary gets as many atoms as the budget allows while P keeps at least a quarter of
  its entries: d = min(c, B / (c H W + m kh kw H' W' / 4)), at least 1 (d = c keeps the fit
  exact); the rest of the budget is the layer's nnz (one MAC per entry per output pixel).

``to_lcnn(init_from_weights=True)`` then fits D and P to the trained weights (truncated SVD), and
``LcnnSparsifier`` (a training-loop callback) drives P sparse during the fine-tune, on a schedule
of the measured density:

- every few updates over the first ``ramp`` fraction of the fine-tune, each layer's threshold is
  raised so that its surviving entries follow n(t) = n0 * (budget / n0) ** (1 - (1 - t) ** 3)
  (a cubic ramp in log space, from the converted layer's n0 to its budget at t = 1), measured on
  P as it is then; entries that fall under the threshold are set to exactly zero, with their
  momentum, so they cannot come back;
- the L1 pull of ``l1_penalty`` runs throughout the ramp with lambda = (1 - momentum) /
  (lr * ramp updates): over the whole ramp it alone moves a surviving entry by about one
  threshold, so small entries shrink towards the threshold before it reaches them (the cuts
  remove little signal) without the pull overpowering the data gradient;
- after the ramp the pull is off, the thresholds drop to 0 (dead entries are exact zeros with
  zero momentum: they get no gradient and stay dead; survivors can no longer die of gradient
  noise near the threshold) and the rest of the fine-tune trains the fixed support, so the
  MAC target holds exactly.

Thresholds live in the lookup layers (``layer.threshold``), not in the parameter file: the
callback's state (saved in every checkpoint) and the compressed net's ``compress.json`` keep them.
"""
import math
from collections import OrderedDict

import mxnet as mx
import numpy as np
from mxnet.gluon import nn

from .. import flops
from ..convert import _walk, to_lcnn
from ..nn.lookup import LookupConv2D, LookupDense

__all__ = ['lcnn_plan', 'apply_lcnn_plan', 'LcnnSparsifier', 'layer_shapes']

_MIN_DENSITY = 0.25   # of P's entries the dictionary size leaves room for


def layer_shapes(net, input_shape, ctx=None):
    """OrderedDict path -> (block, input shape, output shape) of every Conv2D / Dense /
    lookup layer, in execution order, from one forward pass (batch as in ``input_shape``)."""
    found, handles = OrderedDict(), []
    kinds = (nn.Conv2D, nn.Dense, LookupConv2D, LookupDense)

    def visit(block, path):
        if isinstance(block, kinds):
            handles.append(block.register_forward_hook(
                lambda b, i, o, _p=path: found.setdefault(
                    _p, (b, tuple(i[0].shape), tuple(o.shape)))))
        for key, child in block._children.items():
            visit(child, path + '.' + key if path else key)
    visit(net, '')
    if ctx is None:
        ctxs = [p.list_ctx()[0] for p in net.collect_params().values() if p._data is not None]
        ctx = ctxs[0] if ctxs else mx.cpu()
    flops.probe_forward(net, tuple(input_shape), ctx, handles)
    return found


def _dense_macs(block, in_shape, out_shape):
    if isinstance(block, nn.Dense):
        return int(np.prod(in_shape[1:])) * int(out_shape[-1])
    kw = block._kwargs
    return (int(out_shape[1]) * int(in_shape[1]) // kw['num_group'] * int(np.prod(kw['kernel']))
            * int(np.prod(out_shape[2:])))


def lcnn_plan(net, input_shape, target_speedup):
    """Per layer: dict(d, nnz, macs budget) for an LCNN of ``net`` at ``target_speedup`` MACs.

    Returns OrderedDict path -> {'dictionary_size', 'nnz', 'dense_macs', 'budget'}, for the
    layers to convert (see the module docstring); ValueError if the target is <= 1 or cannot
    be met with the classifier dense.
    """
    target = float(target_speedup)
    if not target > 1:
        raise ValueError('lcnn_plan: target_speedup must be > 1, got %r' % (target_speedup,))
    shapes = layer_shapes(net, (1,) + tuple(input_shape[1:]))
    convertible = OrderedDict()
    kept = 0
    dense_paths = [p for p, (b, _, _) in shapes.items() if isinstance(b, nn.Dense)]
    for path, (block, in_shape, out_shape) in shapes.items():
        macs = _dense_macs(block, in_shape, out_shape)
        groups = block._kwargs.get('num_group', 1) if isinstance(block, nn.Conv2D) else 1
        if (dense_paths and path == dense_paths[-1]) or groups != 1:
            kept += macs    # the classifier (and grouped convs) stay as they are
            continue
        convertible[path] = (block, in_shape, out_shape, macs)
    total = kept + sum(v[3] for v in convertible.values())
    if not convertible:
        raise ValueError('lcnn_plan: %s has no Conv2D / Dense layer to convert besides the '
                         'classifier' % type(net).__name__)
    allowed = total / target - kept
    if allowed <= 0:
        raise ValueError('lcnn_plan: a %.3gx MAC speed-up is out of reach: the dense classifier '
                         'alone costs %.1f%% of the MACs (at most %.3gx)'
                         % (target, 100.0 * kept / total, total / float(kept)))
    per_layer = sum(v[3] for v in convertible.values()) / allowed   # X' of every layer
    plan = OrderedDict()
    for path, (block, in_shape, out_shape, macs) in convertible.items():
        budget = macs / per_layer
        c = int(in_shape[1]) if isinstance(block, nn.Conv2D) else int(np.prod(in_shape[1:]))
        pixels_in = int(np.prod(in_shape[2:])) if isinstance(block, nn.Conv2D) else 1
        pixels_out = int(np.prod(out_shape[2:])) if isinstance(block, nn.Conv2D) else 1
        m = int(out_shape[1]) if isinstance(block, nn.Conv2D) else int(out_shape[-1])
        taps = int(np.prod(block._kwargs['kernel'])) if isinstance(block, nn.Conv2D) else 1
        # As many atoms as the budget allows while P keeps a quarter of its entries or more.
        per_atom = c * pixels_in + _MIN_DENSITY * m * taps * pixels_out
        d = int(max(1, min(c, budget / per_atom)))
        nnz = int((budget - d * c * pixels_in) // pixels_out)
        if nnz < 1:
            raise ValueError('lcnn_plan: %s cannot reach %.3gx: its dictionary stage alone '
                             'exceeds the budget' % (path, per_layer))
        plan[path] = OrderedDict([('dictionary_size', d), ('nnz', min(nnz, m * d * taps)),
                                  ('dense_macs', int(macs)), ('budget', float(budget))])
    return plan


def apply_lcnn_plan(net, plan, thresholds=None):
    """``to_lcnn(net, init_from_weights=True)`` with the plan's dictionary sizes (in place, as
    to_lcnn; returns the net). ``thresholds`` (layer path -> value) restores the thresholds a
    sparsifying fine-tune set."""
    sizes = {path: entry['dictionary_size'] for path, entry in plan.items()}
    net = to_lcnn(net, dictionary_size=lambda path, block: sizes.get(path),
                  dense_dictionary_size=lambda path, block: sizes.get(path),
                  init_from_weights=True)
    if thresholds:
        layers = {path: block for _, _, block, path in _walk(net)
                  if isinstance(block, (LookupConv2D, LookupDense))}
        unknown = sorted(set(thresholds) - set(layers))
        if unknown:
            raise ValueError('apply_lcnn_plan: thresholds for unknown lookup layers %s'
                             % unknown)
        for name, value in thresholds.items():
            layers[name].threshold = float(value)
    return net


def _alive(layer):
    return int((mx.nd.abs(layer.lookup.data()) > layer.threshold).sum().asscalar())


def _kth_largest(values, k):
    """The threshold below the k largest of ``values`` (flat numpy): exactly k stay above it
    when there are no ties."""
    if k >= values.size:
        return 0.0
    return float(np.partition(values, values.size - k - 1)[values.size - k - 1])


class LcnnSparsifier:
    """Training-loop callback: the density schedule of the module docstring.

    net : the LCNN being fine-tuned (``apply_lcnn_plan``'s result), hybridized or not.
    plan : ``lcnn_plan``'s result; input_shape : one image batch, e.g. (1, 1, 28, 28).
    total_steps : updates of the whole fine-tune; ramp : the fraction that sparsifies.
    lr, momentum : the optimizer's (they size the pull); every : updates between raises.
    """

    def __init__(self, net, plan, input_shape, target_speedup, total_steps, lr, momentum=0.9,
                 ramp=0.6, every=None, log=None):
        self.net = net
        self.target = float(target_speedup)
        self.total_steps = int(total_steps)
        self.ramp_steps = max(1, int(round(ramp * self.total_steps)))
        self.every = int(every or max(1, self.ramp_steps // 20))
        self.log = log
        self.trainer = None
        self.done = False
        shapes = layer_shapes(net, input_shape)
        self.layers = OrderedDict()   # path -> (layer, nnz budget, dictionary MACs, pixels)
        self.fixed = 0                # MACs of the layers that stay dense
        self.dense_total = 0
        for path, (block, in_shape, out_shape) in shapes.items():
            if isinstance(block, (LookupConv2D, LookupDense)):
                entry = plan[path]
                conv = isinstance(block, LookupConv2D)
                c = int(in_shape[1]) if conv else int(np.prod(in_shape[1:]))
                pixels_in = int(np.prod(in_shape[2:])) if conv else 1
                pixels_out = int(np.prod(out_shape[2:])) if conv else 1
                self.layers[path] = (block, entry['nnz'],
                                           block.dictionary_size * c * pixels_in, pixels_out)
                self.dense_total += entry['dense_macs']
            else:
                macs = _dense_macs(block, in_shape, out_shape)
                self.fixed += macs
                self.dense_total += macs
        self.start_nnz = OrderedDict((name, _alive(v[0])) for name, v in self.layers.items())
        self.l1_lambda = (1.0 - float(momentum)) / (float(lr) * self.ramp_steps)
        self._set_lambda(self.l1_lambda)

    def speedup(self, alive=None):
        """MAC speed-up of the net with ``alive`` surviving entries per layer (default: now)."""
        if alive is None:
            alive = {name: _alive(v[0]) for name, v in self.layers.items()}
        macs = self.fixed + sum(dict_macs + alive[name] * pixels
                                for name, (_, _, dict_macs, pixels) in self.layers.items())
        return self.dense_total / float(macs)

    def scheduled_nnz(self, name, step):
        """Surviving entries layer ``name`` may keep after ``step`` updates."""
        t = min(1.0, step / float(self.ramp_steps))
        n0, budget = self.start_nnz[name], self.layers[name][1]
        if n0 <= budget:
            return n0
        frac = 1.0 - (1.0 - t) ** 3
        return int(math.ceil(n0 * (budget / float(n0)) ** frac)) if t < 1 else budget

    def _set_lambda(self, value):
        for layer, _, _, _ in self.layers.values():
            layer.l1_lambda = float(value)

    def _zero_dead(self, layer):
        """Set the entries under the threshold (and their optimizer state) to exactly zero."""
        p = layer.lookup.data()
        keep = mx.nd.abs(p) > layer.threshold
        layer.lookup.set_data(p * keep)
        if self.trainer is not None:
            idx = self.trainer._param2idx.get(layer.lookup.name)
            for updater in self.trainer._updaters:
                state = updater.states.get(idx)
                if isinstance(state, mx.nd.NDArray) and state.shape == p.shape:
                    state[:] = state * keep

    def on_train_begin(self, trainer, step):
        self.trainer = trainer
        if self.done:
            self._set_lambda(0.0)
        self._rebuild()

    def _rebuild(self):
        # Thresholds are constants of built graphs: rebuild them with the current ones.
        if self.net._active:
            self.net.hybridize(static_alloc=True)

    def on_step(self, step):
        if self.done or (step % self.every and step < self.ramp_steps):
            return
        for name, (layer, _, _, _) in self.layers.items():
            p = np.abs(layer.lookup.data().asnumpy()).ravel()
            want = self.scheduled_nnz(name, step)
            if int((p > layer.threshold).sum()) > want:
                layer.threshold = max(layer.threshold, _kth_largest(p, want))
            self._zero_dead(layer)
        self._rebuild()
        if step >= self.ramp_steps:
            # Freeze the support: the dead entries are exact zeros with zero momentum, so a
            # threshold of 0 keeps them dead (zero gradient, nothing to decay) while survivors
            # near the old threshold can no longer die of gradient noise.
            for layer, _, _, _ in self.layers.values():
                layer.threshold = 0.0
            self._rebuild()
            self.done = True
            self.l1_lambda = 0.0
            self._set_lambda(0.0)
            if self.log is not None:
                self.log.info('lcnn: lookup entries at their budgets after %d updates: %.2fx '
                              'MAC speed-up (target %.3gx)' % (step, self.speedup(), self.target))

    def on_epoch_end(self, epoch, record):
        record['mac_speedup'] = self.speedup()

    def thresholds(self):
        return OrderedDict((name, v[0].threshold) for name, v in self.layers.items())

    def state_dict(self):
        return dict(done=self.done, thresholds=self.thresholds(), start_nnz=self.start_nnz)

    def load_state_dict(self, state):
        self.done = bool(state['done'])
        self.start_nnz = OrderedDict((k, int(v)) for k, v in state['start_nnz'].items())
        for name, value in state['thresholds'].items():
            self.layers[name][0].threshold = float(value)
        self.l1_lambda = 0.0 if self.done else self.l1_lambda
        self._set_lambda(self.l1_lambda)
