"""The learning-rate schedule: ``WarmupSchedule``, an ``mx.lr_scheduler.LRScheduler``."""
import math

import mxnet as mx


class WarmupSchedule(mx.lr_scheduler.LRScheduler):
    """The training learning-rate schedule as an MXNet ``LRScheduler``, for the optimizer's
    ``lr_scheduler`` parameter.

    Linear warm-up from ~0 to ``base_lr`` over ``warmup_epochs`` (Goyal et al.: needed once
    ``base_lr`` is scaled by the number of workers), then

    - ``step``: ``base_lr * decay_factor ** k`` after the k-th epoch in ``decay_epochs``;
    - ``cosine``: half a cosine from ``base_lr`` down to ``final_lr`` at ``num_epochs``;
    - ``poly``: ``(base_lr - final_lr) * (1 - t) ** power + final_lr``, t the post-warm-up progress.

    The optimizer calls it with ``num_update``, the number of updates counted so far including
    the one about to be made (1 for the first), and saves that count with its states; update
    ``num_update - 1`` (0-based) gets ``learning_rate(num_update - 1, ...)``.
    """

    def __init__(self, steps_per_epoch, base_lr, num_epochs, warmup_epochs=0.0, mode='cosine',
                 decay_epochs=(), decay_factor=0.1, power=2.0, final_lr=0.0):
        if mode not in ('step', 'cosine', 'poly'):
            raise ValueError("lr mode must be 'step', 'cosine' or 'poly', got %r" % (mode,))
        if steps_per_epoch < 1:
            raise ValueError('steps_per_epoch must be >= 1, got %r' % (steps_per_epoch,))
        super().__init__(base_lr)   # the optimizer sets base_lr to its learning_rate
        self.steps_per_epoch, self.num_epochs = steps_per_epoch, num_epochs
        self.warmup_epochs, self.mode = warmup_epochs, mode
        self.decay_epochs, self.decay_factor = tuple(decay_epochs), decay_factor
        self.power, self.final_lr = power, final_lr

    def __call__(self, num_update):
        step = max(num_update - 1, 0)   # 0 before the first update: the first update's rate
        base_lr, final_lr = self.base_lr, self.final_lr
        epoch = float(step) / self.steps_per_epoch
        warmup_steps = self.warmup_epochs * self.steps_per_epoch
        if step < warmup_steps:
            return base_lr * (step + 1) / warmup_steps
        if self.mode == 'step':
            return base_lr * self.decay_factor ** sum(1 for e in self.decay_epochs if epoch >= e)
        span = max(self.num_epochs - self.warmup_epochs, 1e-12)
        t = min(max((epoch - self.warmup_epochs) / span, 0.0), 1.0)
        if self.mode == 'cosine':
            return final_lr + (base_lr - final_lr) * 0.5 * (1 + math.cos(math.pi * t))
        return final_lr + (base_lr - final_lr) * (1 - t) ** self.power


def learning_rate(step, steps_per_epoch, base_lr, num_epochs, warmup_epochs=0.0, mode='cosine',
                  decay_epochs=(), decay_factor=0.1, power=2.0, final_lr=0.0):
    """Learning rate at optimizer update ``step`` (0-based): ``WarmupSchedule``, which see."""
    return WarmupSchedule(steps_per_epoch, base_lr, num_epochs, warmup_epochs, mode,
                          decay_epochs, decay_factor, power, final_lr)(step + 1)
