"""Helpers the training scripts share: Horovod (or a one-process stand-in), the learning-rate
schedule (an ``mx.lr_scheduler.LRScheduler``), atomic checkpoints, evaluation with metrics
summed over workers.

``loop.fit`` is the training loop of ``train_scripts/train_imagenet.py`` (and of
``train_fashion_mnist.py`` and ``python -m gluon_lcnn compress``), ``options.py`` their flags,
``data.py`` their batches.
"""
from .checkpoint import (CHECKPOINT_FILE, CheckpointError, _atomic, _checkpoint_entries,  # noqa: F401
                         _fsync_dir, _load_error, _verify_file, file_sha256, load_checkpoint,
                         load_params_file, load_states_file, read_checkpoint_json,
                         save_checkpoint, verify_params, write_json_atomic)
from .data import get_data
from .evaluation import evaluate, topk_correct
from .horovod import (LocalHorovod, allreduce_sums, average_aux_states, broadcast_parameters,
                      init_horovod)
from .loop import fit, setup_logging, write_digest
from .options import (FASHION_MNIST_DEFAULTS, SMALL_INPUT_ARGS, add_training_arguments,
                      check_training_args, small_input_args)
from .schedule import WarmupSchedule, learning_rate
from .util import format_density, params_digest, parse_model_args

__all__ = ['init_horovod', 'LocalHorovod', 'allreduce_sums', 'broadcast_parameters',
           'average_aux_states', 'WarmupSchedule',
           'learning_rate', 'save_checkpoint', 'load_checkpoint', 'write_json_atomic',
           'CheckpointError', 'read_checkpoint_json', 'verify_params', 'load_params_file',
           'load_states_file', 'file_sha256',
           'evaluate', 'topk_correct', 'params_digest', 'format_density', 'parse_model_args',
           'fit', 'setup_logging', 'write_digest', 'get_data', 'add_training_arguments',
           'check_training_args', 'FASHION_MNIST_DEFAULTS', 'SMALL_INPUT_ARGS',
           'small_input_args']
