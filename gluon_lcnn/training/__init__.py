"""Helpers the training scripts share: Horovod (or a one-process stand-in), the learning-rate
schedule (an ``mx.lr_scheduler.LRScheduler``), atomic checkpoints, evaluation with metrics
summed over workers.

The training loop itself lives in ``train_scripts/train_imagenet.py`` (one flat script, as in
Horovod's examples); ``train_scripts/train_fashion_mnist.py`` runs the same loop on other data.
"""
from .checkpoint import (CHECKPOINT_FILE, CheckpointError, _atomic, _checkpoint_entries,  # noqa: F401
                         _fsync_dir, _load_error, _verify_file, file_sha256, load_checkpoint,
                         load_params_file, load_states_file, read_checkpoint_json,
                         save_checkpoint, verify_params, write_json_atomic)
from .evaluation import evaluate, topk_correct
from .horovod import (LocalHorovod, allreduce_sums, average_aux_states, broadcast_parameters,
                      init_horovod)
from .schedule import WarmupSchedule, learning_rate
from .util import format_density, params_digest, parse_model_args

__all__ = ['init_horovod', 'LocalHorovod', 'allreduce_sums', 'broadcast_parameters',
           'average_aux_states', 'WarmupSchedule',
           'learning_rate', 'save_checkpoint', 'load_checkpoint', 'write_json_atomic',
           'CheckpointError', 'read_checkpoint_json', 'verify_params', 'load_params_file',
           'load_states_file', 'file_sha256',
           'evaluate', 'topk_correct', 'params_digest', 'format_density', 'parse_model_args']
