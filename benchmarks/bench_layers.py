"""Layer benchmark: every lookup layer shape of AlexNet / ResNet-18 (224x224), dense vs LCNN.

For each shape, in one process on the same input (run alternately): MKLDNN's dense Conv2D (or
Dense) with bias, the LCNN path (1x1 dictionary conv + sparse lookup op, bias; for fc6, whose
kernel covers its input, also its fully connected form) and the sparse lookup stage alone,
with random P at the published per-layer densities (AlexNet) or the zoo's assumed ones
(ResNet-18). Prints a markdown table (MAC ratio beside the measured ratio, the lookup stage's
useful GFLOP/s) and writes benchmarks/results/layers.json + layers.md.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_layers.py
"""
import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gluon_lcnn import compare  # noqa: E402
from gluon_lcnn.model_zoo.common import ASSUMED_DENSITIES, PUBLISHED_DENSITIES  # noqa: E402

COLUMNS = [('model', 'model'), ('layer', 'layer'), ('in_channels', 'c'), ('channels', 'm'),
           ('kernel', 'k'), ('stride', 's'), ('in_size', 'input'), ('dictionary', 'd'),
           ('density', 'density'), ('dense_ms', 'dense ms'), ('lcnn_ms', 'LCNN ms'),
           ('fc_form_ms', 'LCNN fc form ms'),
           ('lookup_ms', 'lookup ms'), ('mac_ratio', 'MAC ratio'), ('speedup', 'measured'),
           ('lookup_gflops', 'lookup GFLOP/s')]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', nargs='+',
                        default=['alexnet_lcnn_fast', 'alexnet_lcnn_accurate',
                                 'resnet18_lcnn_fast', 'resnet18_lcnn_accurate'])
    parser.add_argument('--size', type=int, default=224)
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--repeat', type=int, default=25)
    parser.add_argument('--out', default=os.path.join(here, 'results', 'layers'),
                        help='writes OUT.json and OUT.md')
    args = parser.parse_args()
    rows = []
    for name in args.model:
        densities = PUBLISHED_DENSITIES.get(name) or ASSUMED_DENSITIES.get(name)
        if densities is None:
            raise SystemExit('bench_layers: no published or assumed densities for %s' % name)
        seen = set()
        for shape, density in zip(compare.layer_shapes(name, args.size), densities):
            key = (shape['in_channels'], shape['channels'], shape['kernel'], shape['strides'],
                   shape['padding'], shape['in_size'], shape['dictionary_size'], density)
            if key in seen:  # ResNet repeats shapes: time each once
                continue
            seen.add(key)
            row = compare.compare_layer(
                shape['in_channels'], shape['channels'], shape['kernel'],
                shape['dictionary_size'], density, in_size=shape['in_size'],
                strides=shape['strides'], padding=shape['padding'], batch=args.batch,
                repeat=args.repeat)
            row['model'] = name
            row['layer'] = shape['name'].split('_', 1)[-1]
            rows.append(row)
            print(compare.markdown_table([row], COLUMNS).splitlines()[-1], flush=True)
    threads = os.environ.get('OMP_NUM_THREADS', 'default')
    command = 'OMP_NUM_THREADS=%s .venv/bin/python benchmarks/bench_layers.py %s' % (
        threads, ' '.join(sys.argv[1:]))
    when = datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC')
    load = ' '.join('%.1f' % v for v in os.getloadavg())
    text = ('`%s`\n\n%s, load average %s. Batch %d, %dx%d input; speedup: dense vs the faster '
            'LCNN form, median of per-round ratios.\n\n%s\n'
            % (command.strip(), when, load, args.batch, args.size, args.size,
               compare.markdown_table(rows, COLUMNS)))
    print('\n' + text)
    with open(args.out + '.json', 'w') as f:
        json.dump({'command': command.strip(), 'date': when, 'load': load, 'threads': threads,
                   'batch': args.batch, 'size': args.size, 'rows': rows}, f, indent=1)
    with open(args.out + '.md', 'w') as f:
        f.write(text)


if __name__ == '__main__':
    main()
