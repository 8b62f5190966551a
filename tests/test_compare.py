"""Smoke tests of gluon_lcnn.compare (LCNN vs dense twin) on tiny shapes: structure of the results, no speed claims.

Budget: about 20 seconds (one subprocess for the CLI path).
"""
import argparse
import json

import mxnet as mx
import pytest

from gluon_lcnn import compare


def _cells(line):
    """The stripped cells of one markdown table line."""
    return [cell.strip() for cell in line.strip().strip('|').split('|')]


@pytest.mark.parametrize('in_size', [(9, 8), None])
def test_compare_layer_reports_both_paths(in_size):
    row = compare.compare_layer(6, 5, 3, dictionary_size=4, density=0.25, in_size=in_size,
                                  strides=2, padding=1, repeat=3, warmup=1)
    for key in ('dense_ms', 'lcnn_ms', 'lookup_ms', 'speedup', 'mac_ratio', 'lookup_gflops'):
        assert row[key] > 0, key
    assert row['out_size'] == ('5x4' if in_size else '1x1') and row['fc_form_ms'] is None
    assert abs(row['density'] - 0.25) < 0.01


def test_compare_layer_times_the_fc_form_of_a_covering_conv():
    row = compare.compare_layer(4, 6, (3, 2), dictionary_size=3, density=0.3, in_size=(3, 2),
                                  repeat=3, warmup=1)
    assert row['out_size'] == '1x1' and row['fc_form_ms'] > 0 and row['speedup'] > 0


def test_layer_shapes_of_a_zoo_model():
    rows = compare.layer_shapes('lenet_lcnn_fast', size=28)
    assert [r['in_size'] for r in rows] == [(28, 28), (12, 12), None]
    assert [r['dictionary_size'] for r in rows] == [3, 8, 32]


def test_breakdown_of_a_net_with_branches():
    from gluon_lcnn import deploy
    from test_deploy import _residual_net, prepared
    net = _residual_net()
    x = mx.nd.random.normal(shape=(1, 3, 9, 9))
    prepared(net, x)
    inf = deploy.to_inference(net, choose='sparse')
    rows = compare.layer_breakdown(inf, x.shape, repeat=2, warmup=1)
    assert len(rows) == 6 and all(r['ms'] > 0 and r['in_net_ms'] is None for r in rows)


def test_dense_twin_name():
    assert compare.dense_twin_name('alexnet_lcnn_fast') == 'alexnet'
    assert compare.dense_twin_name('lenet_lcnn_accurate') == 'lenet'
    with pytest.raises(ValueError, match='not an LCNN model'):
        compare.dense_twin_name('alexnet')


def test_compare_models_with_breakdown():
    rows = compare.compare_models('lenet_lcnn_fast', batches=(1, 2), density=0.1, size=28,
                                    repeat=3, warmup=1, breakdown=True)
    assert [r['batch'] for r in rows] == [1, 2]
    for row in rows:
        assert row['dense_twin'] == 'lenet' and row['dense_ms'] > 0 and row['lcnn_ms'] > 0
        assert row['mac_ratio'] > 1
        assert set(row['kernels'].values()) <= {'sparse', 'dense', 'sparse_fc', 'dense_fc',
                                                'lcnn_pool', 'mkldnn'}
        assert len([k for k in row['kernels'] if 'lookup' in k]) == 3
    assert 'lcnn_layers' not in rows[1]  # breakdowns at the smallest batch only
    # LeNet is a plain chain: in-net times come from timing the chain's prefixes.
    assert all(r['in_net_ms'] is not None for r in rows[0]['lcnn_layers'])
    types = {r['type'] for r in rows[0]['lcnn_layers']}
    # A pool that to_inference fused into the sparse conv before it has no row of its own.
    assert 'Dense' in types and types & {'MaxPool2D', 'LcnnMaxPool', 'SparseLookupConv2D'}
    text = compare.render_models(rows)
    assert _cells(text.splitlines()[0])[0] == 'model' and 'per layer' in text


def test_cli_runs_each_thread_setting_in_a_subprocess(tmp_path, capsys):
    parser = compare.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(['--model', 'lenet_lcnn_fast', '--batch', '1', '--threads', '1',
                              '--size', '28', '--density', '0.1', '--repeat', '2',
                              '--json', str(tmp_path / 'r.json'),
                              '--markdown', str(tmp_path / 'r.md')])
    rows = compare.run(args)
    assert len(rows) == 1 and rows[0]['threads'] == '1'
    assert json.loads((tmp_path / 'r.json').read_text())[0]['model'] == 'lenet_lcnn_fast'
    table_rows = [_cells(line) for line in capsys.readouterr().out.splitlines()
                  if line.startswith('|')]
    assert ['lenet_lcnn_fast', '0.1', '1', '1'] in [cells[:4] for cells in table_rows]
    with pytest.raises(ValueError, match='unknown model'):
        compare.run(parser.parse_args(['--model', 'nonet_lcnn']))
