#!/usr/bin/env python
"""The real-data study: regenerate docs/RESULTS.md and docs/results_<family>.png.

    make results                                   # everything; resumable
    .venv/bin/python tools/results.py --families lenet
    .venv/bin/python tools/results.py --quick --runs-dir /tmp/q --docs-dir /tmp/q  # smoke run

On Fashion-MNIST (60k training / 10k test images), for each family of ``study/plan.py``:

1. **tune** on a held-out slice (the last 10k training images; the test set is not read): the
   dense net, and each LCNN variant at every L1 candidate; each variant's L1 is the one with
   the largest MAC speed-up within its tolerance of dense (0.5 point accurate, 2 fast);
2. **train** from scratch on all 60k: dense and both LCNN variants, several seeds;
3. **compress** the dense net (seed 0) with ``python -m gluon_lcnn compress``: lcnn, lowrank
   and prune at every target, int8;
4. **few-shot**: dense and both LCNN variants on k images per class, several draws;
5. **measure**, once per thread count in its own process: every model through ``to_inference``
   against the dense twin, batch 1 and 64 (``study/measure.py``);
6. **report**: the tables and plots, from the runs' own files.

Jobs run two at a time with one thread each; each has its directory under ``--runs-dir``, and
one that finished is never run again, so an interrupted study continues where it stopped
(``--remeasure`` times the finished models again, e.g. on a quieter machine).
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time

# The runner and the report load models; their threads are not what is measured.
os.environ.setdefault('OMP_NUM_THREADS', '1')
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]

from study import plan, runner  # noqa: E402


def measure_family(family, runs_dir, threads, remeasure, log=print):
    """latency_<t>t.json of ``family`` for each thread count (each its own process); one that
    exists and covers every finished model is kept unless ``remeasure``."""
    from study.measure import models
    family_dir = os.path.join(runs_dir, family)
    results = runner.finished(family_dir)
    if 'final/dense/seed0' not in results:
        log('[study] %s: no trained dense net yet, nothing to measure' % family)
        return {}
    wanted = models(family_dir, results)
    out = {}
    for t in threads:
        path = os.path.join(family_dir, 'latency_%dt.json' % t)
        if os.path.isfile(path) and not remeasure:
            with open(path) as f:
                have = json.load(f)
            if have['keys'] == wanted:
                out[t] = have
                continue
        log('[study] measuring %s: %d models, %d thread(s)' % (family, len(wanted), t))
        env = dict(os.environ, OMP_NUM_THREADS=str(t), PYTHONPATH=os.pathsep.join([HERE, ROOT]))
        subprocess.run([sys.executable, '-m', 'study.measure', family_dir, path], cwd=ROOT,
                       env=env, check=True)
        with open(path) as f:
            out[t] = json.load(f)
    return out


def _interrupt(signum, frame):
    raise KeyboardInterrupt('signal %d' % signum)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--families', nargs='+', default=list(plan.FAMILIES),
                   choices=list(plan.FAMILIES))
    p.add_argument('--runs-dir', default=os.path.join(ROOT, 'runs', 'study'))
    p.add_argument('--docs-dir', default=os.path.join(ROOT, 'docs'),
                   help='where RESULTS.md and the plots go')
    p.add_argument('--slots', type=int, default=2, help='jobs run side by side (1 thread each)')
    p.add_argument('--threads', type=int, nargs='+', default=[1, 2],
                   help='thread counts latency is measured at')
    p.add_argument('--quick', action='store_true',
                   help='a smoke run: 1000 images, one epoch, one seed, one target')
    p.add_argument('--no-train', action='store_true',
                   help='only measure and report what has finished')
    p.add_argument('--remeasure', action='store_true', help='time every model again')
    args = p.parse_args(argv)
    if args.slots < 1:
        p.error('--slots must be >= 1')
    tic = time.time()
    if args.quick:
        args.runs_dir = os.path.join(args.runs_dir, 'quick') \
            if args.runs_dir == p.get_default('runs_dir') else args.runs_dir
    # A plain `kill` (or a job scheduler's stop) must stop the training children too, as
    # Ctrl-C does, so that a rerun resumes them instead of racing them.
    signal.signal(signal.SIGTERM, _interrupt)
    failed = {}
    if not args.no_train:
        _, failed = runner.run_all(args.families, args.runs_dir, args.slots, args.quick)
    latency = {f: measure_family(f, args.runs_dir, args.threads, args.remeasure)
               for f in args.families}
    from study import report
    path = report.write(args.families, args.runs_dir, args.docs_dir, latency, args.quick,
                        command=' '.join(['.venv/bin/python', 'tools/results.py'] +
                                         (argv if argv is not None else sys.argv[1:])),
                        session_seconds=time.time() - tic)
    print('[study] wrote %s' % path)
    if failed:
        for (family, key), why in sorted(failed.items()):
            print('[study] failed: %s/%s: %s' % (family, key, why), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
