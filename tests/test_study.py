"""The real-data study (tools/results.py, tools/study/): hyper-parameter choice, the job plan,
and a whole --quick run end to end, resumed.

Budget: ~2.5 min (the quick study: 13 short training / compress runs two at a time, one
latency measurement, the report; then two reruns that train at most one job).
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))

from study import plan  # noqa: E402

RESULTS = os.path.join(ROOT, 'tools', 'results.py')


def _tuned(dense, **variants):
    out = {'tune/dense': dict(variant='dense', top1=dense, epochs=6)}
    for name, (l1, top1, speed) in variants.items():
        variant = name.split('_')[0]
        out['tune/' + name] = dict(variant=variant, l1_lambda=l1, top1=top1, mac_speedup=speed,
                                   epochs=6)
    return out


def test_choose_l1_takes_the_fastest_within_tolerance_else_the_most_accurate():
    tuned = _tuned(0.90, accurate_a=(0.25, 0.899, 2.0), accurate_b=(0.5, 0.896, 3.0),
                   accurate_c=(1.0, 0.890, 5.0))
    l1, why = plan.choose_l1(tuned, 'accurate', 0.005)
    assert l1 == 0.5 and 'largest MAC speed-up' in why
    tuned = _tuned(0.90, fast_a=(2.0, 0.87, 10.0), fast_b=(4.0, 0.86, 20.0))
    l1, why = plan.choose_l1(tuned, 'fast', 0.02)
    assert l1 == 2.0 and 'most accurate' in why
    with pytest.raises(ValueError, match='no held-out runs of fast'):
        plan.choose_l1(_tuned(0.9, accurate_a=(1.0, 0.9, 2.0)), 'fast', 0.02)


def test_plan_orders_jobs_and_waits_for_what_they_need(tmp_path):
    cfg = plan.family_config('lenet')
    runs = str(tmp_path)
    keys = [j.key for j in plan.jobs('lenet', cfg, runs, {})]
    # Nothing known yet: tuning, the dense nets, and the convergence check; no LCNN run from
    # scratch (its L1 is not chosen), no compress run (no dense net), no few-shot run.
    assert keys[0] == 'tune/dense' and 'final/dense/seed0' in keys
    assert not any(k.startswith(('final/accurate', 'compress/', 'fewshot/')) for k in keys)
    assert keys[-1] == 'tune/dense_12ep'
    done = {j.key: dict(top1=0.9, mac_speedup=1.0 + i) for i, j in
            enumerate(plan.tune_jobs('lenet', cfg, runs))}
    done['final/dense/seed0'] = dict(top1=0.91)
    jobs = plan.jobs('lenet', cfg, runs, done)
    keys = [j.key for j in jobs]
    assert keys.index('final/accurate/seed0') < keys.index('final/dense/seed1') \
        < keys.index('compress/lcnn_2x/seed0') < keys.index('fewshot/k1/dense/draw0')
    # One point of every curve before the extra LCNN seeds (a study cut short has them all).
    assert keys.index('compress/prune_16x/seed0') < keys.index('compress/lcnn_2x/seed1')
    assert len([k for k in keys if k.startswith('compress/lcnn_')]) == 4 * 3
    assert len([k for k in keys if k.startswith('compress/prune_')]) == 4
    assert len([k for k in keys if k.startswith('fewshot/')]) == 4 * 3 * 3
    # The chosen L1 reaches the command line; compress starts from the seed-0 dense net.
    fast = next(j for j in jobs if j.key == 'final/fast/seed1')
    assert fast.cmd[fast.cmd.index('--l1-lambda') + 1] == str(fast.info['l1_lambda'])
    lcnn = next(j for j in jobs if j.key == 'compress/lcnn_4x/seed2')
    assert lcnn.cmd[lcnn.cmd.index('--params') + 1] == plan.dense_params(runs, 'lenet', cfg)
    # Few-shot: every k gets about the same number of updates per epoch.
    for k in (1, 50):
        job = next(j for j in jobs if j.key == 'fewshot/k%d/fast/draw0' % k)
        batch = int(job.cmd[job.cmd.index('--batch-size', job.cmd.index('--per-class')) + 1])
        repeats = int(job.cmd[job.cmd.index('--epoch-repeats') + 1])
        assert 100 <= repeats * 10 * k // batch <= 120


def test_report_names_missing_runs_and_judges_the_epoch_budget(tmp_path):
    from study import report, runner
    cfg = plan.family_config('lenet')
    runs = str(tmp_path)
    for key, top1 in (('tune/dense', 0.90), ('tune/dense_12ep', 0.912)):
        os.makedirs(os.path.join(runs, 'lenet', key))
        with open(os.path.join(runs, 'lenet', key, 'done.json'), 'w') as f:
            json.dump(dict(top1=top1, variant='dense'), f)
    broken = os.path.join(runs, 'lenet', 'tune', 'fast_l1_2')
    os.makedirs(broken)
    with open(os.path.join(broken, 'job.log'), 'w') as f:
        f.write('[epoch 1/6] ...\nValueError: lookup density collapsed\n')
    # A target the method says it cannot reach is a finding, not a missing run.
    prune = os.path.join(runs, 'lenet', 'compress', 'prune_16x', 'seed0')
    os.makedirs(prune)
    with open(os.path.join(prune, 'job.log'), 'w') as f:
        f.write('gluon-lcnn compress: error: prune_sparsities: target_speedup 16x is not '
                'reachable; the best is 7.44x\n')
    assert runner._unreachable_reason(prune).startswith('prune_sparsities: target_speedup 16x')
    with open(os.path.join(prune, runner.UNREACHABLE), 'w') as f:
        json.dump(dict(reason=runner._unreachable_reason(prune)), f)
    results = report.collect(runs, 'lenet')
    assert report.unreachable_runs('lenet', cfg, runs, results) == [
        ('compress/prune_16x/seed0', 'prune_sparsities: target_speedup 16x is not reachable; '
         'the best is 7.44x')]
    missing = dict(report.missing_runs('lenet', cfg, runs, results))
    assert 'tune/dense' not in missing and missing['tune/accurate_l1_0.5'] == 'not started'
    assert missing['tune/fast_l1_2'].endswith('ValueError: lookup density collapsed')
    assert 'final/fast/seed2' in missing and 'compress/prune_8x/seed0' in missing
    assert 'compress/prune_16x/seed0' not in missing
    text = report.convergence_text(results, cfg)
    assert '90.00% held-out top-1 in 6 epochs and 91.20% in 12' in text and '+1.20' in text


def _run(args, timeout=900):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, RESULTS] + args, cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_quick_study_end_to_end_then_resumes_without_redoing_work(tmp_path):
    runs, docs = str(tmp_path / 'runs'), str(tmp_path / 'docs')
    common = ['--quick', '--families', 'lenet', '--runs-dir', runs, '--docs-dir', docs,
              '--threads', '1']
    out = _run(common)
    family = os.path.join(runs, 'lenet')
    for key in ('tune/dense', 'final/dense/seed0', 'final/accurate/seed0', 'final/fast/seed0',
                'compress/lcnn_4x/seed0', 'compress/lowrank_4x/seed0',
                'compress/prune_4x/seed0', 'compress/int8', 'fewshot/k1/fast/draw0'):
        with open(os.path.join(family, key, 'done.json')) as f:
            done = json.load(f)
        assert 0.0 < done['top1'] <= 1.0, key
    # Tuning never reads the test set: its runs report held-out accuracy.
    with open(os.path.join(family, 'tune', 'dense', 'job.log')) as f:
        log = f.read()
    assert 'held-out accuracy' in log and 'test accuracy' not in log
    with open(os.path.join(family, 'latency_1t.json')) as f:
        latency = json.load(f)
    assert latency['keys'][0] == 'final/dense/seed0' and 'compress/int8' in latency['keys']
    assert all(ms > 0 for ms in latency['ms']['64'].values())
    text = open(os.path.join(docs, 'RESULTS.md')).read()
    for row in ('| dense ', '| int8 (of dense)', '| LCNN-accurate, from scratch',
                '| LCNN-fast, from scratch', '| LCNN (compress) 4x', '| low-rank 4x',
                '| pruning 4x', 'Few-shot', 'held-out top-1'):
        assert row in text, row
    assert os.path.getsize(os.path.join(docs, 'results_lenet.png')) > 10000
    assert out.count('[study] start') == 13

    # Resumable: a rerun starts nothing and measures nothing again ...
    out = _run(common)
    assert '[study] start' not in out and 'measuring' not in out
    # ... and a run whose result is lost is run again, alone (it resumes from its checkpoint).
    os.remove(os.path.join(family, 'compress', 'lowrank_4x', 'seed0', 'done.json'))
    out = _run(common)
    assert out.count('[study] start') == 1 and 'start lenet/compress/lowrank_4x' in out
