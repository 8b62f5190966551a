"""Timing helpers shared by to_inference's kernel choice, benchmarks/ and the CLI.

Rules (DESIGN.md "Measuring speed honestly"): one process, the same input for every candidate,
warm-up first, median of many runs, and every LCNN figure next to its dense twin measured in the
same run. MXNet fixes its thread count when it starts, so each thread setting runs in its own
subprocess with OMP_NUM_THREADS set (``run_in_subprocess``).
"""
import json
import os
import subprocess
import sys
import time
from collections import OrderedDict

import mxnet as mx
import numpy as np

__all__ = ['time_call', 'time_block', 'compare_layer', 'compare_models', 'layer_breakdown',
           'dense_twin_name', 'markdown_table', 'add_arguments', 'run', 'run_in_subprocess']


def time_call(fn, repeat=30, warmup=5, max_seconds=None):
    """Median wall time (seconds) of ``fn()``, which must block until its work is done.

    ``warmup`` untimed calls first; then ``repeat`` timed calls, stopping early (after at least
    3) once ``max_seconds`` of timed runs have passed.
    """
    if repeat < 1:
        raise ValueError('time_call: repeat must be >= 1, got %r' % repeat)
    for _ in range(max(0, warmup)):
        fn()
    times = []
    start = time.perf_counter()
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if max_seconds is not None and len(times) >= 3 and t0 - start > max_seconds:
            break
    return float(np.median(times))


def _wait(out):
    if isinstance(out, (list, tuple)):
        for o in out:
            _wait(o)
    else:
        out.wait_to_read()


def time_block(block, x, repeat=30, warmup=5, max_seconds=None, hybridize=True):
    """Median seconds of one inference forward ``block(x)`` (hybridized with static memory)."""
    if hybridize and hasattr(block, 'hybridize'):
        block.hybridize(static_alloc=True, static_shape=True)

    def once():
        with mx.autograd.predict_mode():
            _wait(block(x))
    return time_call(once, repeat=repeat, warmup=warmup, max_seconds=max_seconds)
