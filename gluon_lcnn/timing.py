"""Timing primitives shared by to_inference's kernel choice, gluon_lcnn.compare, benchmarks/
and tools/.

How speed is measured (docs/ARCHITECTURE.md, "How speed is measured"): in one process, on the
same input for every candidate, warm-up runs first, then many timed runs with the candidates run
alternately round by round (so a shared machine's changing load hits them alike), and the median
of each candidate's runs is its time.
MXNet fixes its thread count when it starts, so comparisons across thread settings need one
process per setting (``gluon_lcnn.compare.run_in_subprocess``).

``time_calls_interleaved`` is that loop; everything else here wraps it.
"""
import os
import platform
import time

import mxnet as mx
import numpy as np

__all__ = ['time_calls_interleaved', 'time_blocks_interleaved', 'time_call', 'time_block',
           'medians', 'machine_summary']


def _wait(out):
    """Block until ``out`` (an NDArray, a list / tuple of them, or None) is computed."""
    if isinstance(out, (list, tuple)):
        for o in out:
            _wait(o)
    elif out is not None:
        out.wait_to_read()


def time_calls_interleaved(fns, repeat=30, warmup=5, max_seconds=None, rewarm=0):
    """Per-round wall times (seconds) of several calls, run alternately.

    ``warmup`` untimed rounds first. One timed round then runs every call in turn: ``rewarm``
    untimed runs (its weights back in the cache, as in back-to-back inference), then one timed
    run. A call's result is waited on if it is an NDArray (or a list of them), so asynchronous
    MXNet work is inside the timed span. Stops after ``repeat`` rounds, or earlier (after at
    least 3) once ``max_seconds`` of timed rounds have passed.

    Returns one list of seconds per call, in the order of ``fns``.
    """
    if repeat < 1:
        raise ValueError('time_calls_interleaved: repeat must be >= 1, got %r' % (repeat,))
    fns = list(fns)
    for _ in range(max(0, warmup)):
        for fn in fns:
            _wait(fn())
    times = [[] for _ in fns]
    start = time.perf_counter()
    for _ in range(repeat):
        for fn, series in zip(fns, times):
            for _ in range(max(0, rewarm)):
                _wait(fn())
            t0 = time.perf_counter()
            _wait(fn())
            series.append(time.perf_counter() - t0)
        if max_seconds is not None and len(times[0]) >= 3 and \
                time.perf_counter() - start > max_seconds:
            break
    return times


def medians(times):
    """Median of each series returned by the interleaved timers, as floats."""
    return [float(np.median(t)) for t in times]


def time_blocks_interleaved(blocks, x, repeat=30, warmup=5, max_seconds=None, rewarm=1):
    """``time_calls_interleaved`` of the inference forwards ``block(x)`` of several blocks.

    Each block is hybridized with static memory first; all run in predict mode on the same
    input ``x``. Returns one list of seconds per block.
    """
    calls = []
    for block in blocks:
        block.hybridize(static_alloc=True, static_shape=True)
        calls.append(lambda b=block: b(x))
    with mx.autograd.predict_mode():
        return time_calls_interleaved(calls, repeat=repeat, warmup=warmup,
                                      max_seconds=max_seconds, rewarm=rewarm)


def time_call(fn, repeat=30, warmup=5, max_seconds=None):
    """Median wall time (seconds) of ``fn()`` (its NDArray result, if any, is waited on)."""
    return medians(time_calls_interleaved([fn], repeat=repeat, warmup=warmup,
                                          max_seconds=max_seconds))[0]


def time_block(block, x, repeat=30, warmup=5, max_seconds=None, hybridize=True):
    """Median seconds of one inference forward ``block(x)`` (hybridized with static memory)."""
    if hybridize and hasattr(block, 'hybridize'):
        block.hybridize(static_alloc=True, static_shape=True)

    def once():
        with mx.autograd.predict_mode():
            return block(x)
    return time_call(once, repeat=repeat, warmup=warmup, max_seconds=max_seconds)


def machine_summary():
    """'CPU model, N cores, load average a b c': the line results documents state."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    cpu = line.split(':', 1)[1].strip()
                    break
    except OSError:
        pass
    return '%s, %d cores, load average %s' % (cpu, os.cpu_count() or 0,
                                                ' '.join('%.1f' % v for v in os.getloadavg()))
