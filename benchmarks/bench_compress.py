"""Compress benchmark: a dense net trained on Fashion-MNIST, then every compress method at
several targets, as a user runs them; one table of accuracy and speed-up.

1. trains the dense model with train_scripts/train_fashion_mnist.py (skipped when its
   checkpoint exists);
2. runs ``python -m gluon_lcnn compress`` for each method and target (skipped when that run's
   report.json exists, so an interrupted benchmark continues where it stopped; ``--remeasure``
   times the finished runs again, e.g. once the machine is quiet);
3. writes benchmarks/results/compress_<model>.md + .json from the runs' reports: method, target,
   MAC speed-up, measured speed-up at batch 1 and 64 (``to_inference`` of the compressed net
   against ``to_inference`` of the dense net, interleaved in one process, one thread), top-1
   dense -> converted -> fine-tuned, and each run's command.

    .venv/bin/python benchmarks/bench_compress.py --model lenet --dense-epochs 5 \\
        --epochs 2 --targets 2 4
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from gluon_lcnn import timing  # noqa: E402
from gluon_lcnn.compare import markdown_table  # noqa: E402

TRAIN = os.path.join(ROOT, 'train_scripts', 'train_fashion_mnist.py')
METHODS = ('lcnn', 'lowrank', 'prune')


def _run(cmd, env):
    print('+ ' + ' '.join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', default='lenet', help='dense zoo model')
    p.add_argument('--dense-epochs', type=int, default=5)
    p.add_argument('--epochs', type=int, default=2, help='fine-tune epochs per run')
    p.add_argument('--targets', type=float, nargs='+', default=[2.0, 4.0])
    p.add_argument('--methods', nargs='+', default=list(METHODS) + ['int8'],
                   choices=list(METHODS) + ['int8'])
    p.add_argument('--remeasure', action='store_true',
                   help='time every finished run again (e.g. on a quieter machine) before '
                        'writing the table')
    p.add_argument('--work-dir', default=os.path.join(ROOT, 'runs', 'bench_compress'))
    p.add_argument('--out', default=None,
                   help='results path without extension (default benchmarks/results/'
                        'compress_<model>)')
    args = p.parse_args()
    tic = time.time()
    load_start = timing.machine_summary()
    # One thread: the measured speed-ups are those of a small CPU, and runs do not compete.
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    work = os.path.join(args.work_dir, args.model)
    dense_dir = os.path.join(work, 'dense')
    dense_params = os.path.join(dense_dir, 'epoch-%04d.params' % args.dense_epochs)
    if not os.path.isfile(dense_params):
        _run([sys.executable, TRAIN, '--model', args.model, '--num-epochs',
              str(args.dense_epochs), '--save-dir', dense_dir, '--resume', '--no-progress',
              '--no-horovod'], env)
    runs = [(m, t) for m in args.methods if m != 'int8' for t in args.targets]
    if 'int8' in args.methods:
        runs.append(('int8', 0))
    reports = []
    for method, target in runs:
        out = os.path.join(work, '%s_%gx' % (method, target) if target else method)
        if not os.path.isfile(os.path.join(out, 'report.json')):
            _run([sys.executable, '-m', 'gluon_lcnn', 'compress', '--model', args.model,
                  '--params', dense_params, '--method', method, '--target-speedup',
                  str(target or 2), '--epochs', str(args.epochs), '--out', out, '--resume',
                  '--no-progress', '--no-horovod'], env)
        elif args.remeasure:
            _run([sys.executable, '-c', 'import sys; from gluon_lcnn.compress.workflow import '
                  'remeasure; remeasure(sys.argv[1])', out], env)
        with open(os.path.join(out, 'report.json')) as f:
            reports.append(json.load(f))
    rows = []
    for r in reports:
        acc, meas = r['accuracy'], r['measured']
        rows.append(dict(
            method=r['method'], target='-' if r['method'] == 'int8' else '%gx' % r['target_speedup'],
            mac_speedup='%.2fx' % r['mac_speedup'],
            b1='%.2fx (%.3g / %.3g ms)' % (meas['1']['speedup'], meas['1']['dense_ms'],
                                           meas['1']['compressed_ms']),
            b64='%.2fx (%.3g / %.3g ms)' % (meas['64']['speedup'], meas['64']['dense_ms'],
                                            meas['64']['compressed_ms']),
            dense='%.4f' % acc['dense'], converted='%.4f' % acc['converted'],
            finetuned='-' if acc['finetuned'] is None else '%.4f' % acc['finetuned'],
            seconds='%.0f' % r['seconds']))
    columns = [('method', 'method'), ('target', 'target'), ('mac_speedup', 'MAC speed-up'),
               ('b1', 'measured b1 (dense / compressed)'), ('b64', 'measured b64'),
               ('dense', 'top-1 dense'), ('converted', 'converted'),
               ('finetuned', 'fine-tuned'), ('seconds', 'run s')]
    table = markdown_table(rows, columns)
    out = args.out or os.path.join(HERE, 'results', 'compress_%s' % args.model)
    command = ' '.join(['.venv/bin/python', 'benchmarks/bench_compress.py'] + sys.argv[1:])
    when = datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC')
    with open(out + '.json', 'w') as f:
        json.dump(dict(command=command, date=when, machine=load_start, reports=reports), f,
                  indent=1)
    commands = ['- `%s`%s' % (r['command'], ' (measured again %s, %s)' % (
        r['measured_date'], r['measured_machine']) if 'measured_date' in r else '')
        for r in reports]
    text = ['`%s`' % command, '',
            '%s; at start: %s; this invocation: %.0f s (runs it reused keep their own time). '
            'Dense %s trained %d epochs on the 60k Fashion-MNIST training images; every '
            'compress run fine-tunes %d epoch(s); top-1 on the 10k test images. Measured: '
            '`to_inference` of the compressed net against `to_inference` of the dense net, '
            'interleaved in one process, 1 thread, median.'
            % (when, load_start, time.time() - tic, args.model, args.dense_epochs, args.epochs),
            '', table, '', 'Runs:', ''] + commands + ['']
    with open(out + '.md', 'w') as f:
        f.write('\n'.join(text))
    print(table)


if __name__ == '__main__':
    main()
