"""Model benchmark: whole-network latency (batch 1) and throughput (batch 32), LCNN vs dense twin.

Each thread setting runs in its own subprocess with OMP_NUM_THREADS set (MXNet fixes its thread
count at start); inside it the LCNN model and its dense twin (same family without ``_lcnn_*``)
are built with random weights, BatchNorm given non-trivial statistics, P set to the published
per-layer densities (``--density published``), both converted by ``deploy.to_inference``
(BN folded, ReLU fused, kernels chosen by measurement) and timed on the same input: median of
many runs after warm-up. Prints markdown and writes benchmarks/results/<out>.json + .md.

    .venv/bin/python benchmarks/bench_models.py --model alexnet_lcnn_fast alexnet_lcnn_accurate \
        --density published --batch 1 32 --threads 1 all --breakdown
"""
import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gluon_lcnn import compare, timing  # noqa: E402


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = compare.add_arguments(argparse.ArgumentParser(description=__doc__.split('\n')[0]))
    parser.add_argument('--out', default=None,
                        help='results path without extension (default benchmarks/results/'
                             'models_<models>)')
    args = parser.parse_args()
    out = args.out or os.path.join(here, 'results', 'models_' + '_'.join(args.model))
    json_path, md_path = args.json or out + '.json', args.markdown or out + '.md'
    args.json = args.markdown = None  # written below, with the command and machine
    rows = compare.run(args)
    command = ' '.join(['.venv/bin/python', 'benchmarks/bench_models.py'] + sys.argv[1:])
    when = datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC')
    machine = timing.machine_summary()
    with open(json_path, 'w') as f:
        json.dump({'command': command, 'date': when, 'machine': machine, 'rows': rows}, f,
                  indent=1)
    with open(md_path, 'w') as f:
        f.write('`%s`\n\n%s; %s\n\n%s\n' % (command, when, machine,
                                            compare.render_models(rows)))
    print('\nwrote %s and %s' % (json_path, md_path))


if __name__ == '__main__':
    main()
