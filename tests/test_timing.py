"""The timing primitives (gluon_lcnn.timing) on tiny blocks: structure, no speed claims."""
import mxnet as mx
import pytest
from mxnet.gluon import nn

from gluon_lcnn import timing


def test_time_call_is_a_median_of_positive_times():
    calls = []
    seconds = timing.time_call(lambda: calls.append(1), repeat=7, warmup=2)
    assert len(calls) == 9 and seconds >= 0
    with pytest.raises(ValueError, match='repeat'):
        timing.time_call(lambda: None, repeat=0)


def test_time_block_hybridizes_and_times():
    block = nn.Dense(4, in_units=3)
    block.initialize()
    assert timing.time_block(block, mx.nd.ones((2, 3)), repeat=3, warmup=1) > 0
    assert block._active


def test_interleaved_timing_alternates_blocks():
    a, b = nn.Dense(4, in_units=3), nn.Dense(5, in_units=3)
    for block in (a, b):
        block.initialize()
    times = timing.time_blocks_interleaved([a, b], mx.nd.ones((2, 3)), repeat=4, warmup=1)
    assert [len(t) for t in times] == [4, 4] and min(min(t) for t in times) > 0


def test_interleaved_calls_run_in_rounds_with_rewarm():
    order = []
    times = timing.time_calls_interleaved([lambda: order.append('a'), lambda: order.append('b')],
                                          repeat=2, warmup=1, rewarm=1)
    assert order == ['a', 'b'] + ['a', 'a', 'b', 'b'] * 2
    assert [len(t) for t in times] == [2, 2]
    assert timing.medians([[3.0, 1.0, 2.0]]) == [2.0]
    with pytest.raises(ValueError, match='repeat'):
        timing.time_calls_interleaved([lambda: None], repeat=0)
