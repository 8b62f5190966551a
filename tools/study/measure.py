"""Latency of every finished model of a family against its dense twin, in one process.

Run once per thread count (MXNet reads ``OMP_NUM_THREADS`` when it is imported, so each count
is its own process): ``python -m study.measure FAMILY RUNS_DIR OUT.json`` with ``tools`` on the
path. Every model goes through ``gluon_lcnn.deploy.to_inference`` at each batch size (the int8
graph runs as exported); then all of them and the dense twin (``final/dense/seed0``, converted
the same way) run alternately on the same input, ``rounds`` times; the best of the rounds'
medians counts, so a burst of load from elsewhere hurts every model alike.
"""
import datetime
import json
import os
import sys
import time

DENSE = 'final/dense/seed0'


def models(family_dir, results):
    """Keys of the models to time: the dense twin first, then every finished final LCNN and
    compress run (the other dense seeds are the same graph and are not timed again)."""
    keys = [k for k in sorted(results)
            if (k.startswith('final/') and not k.startswith('final/dense/'))
            or k.startswith('compress/')]
    return [DENSE] + keys


def _load(family_dir, key):
    from gluon_lcnn.compress.workflow import load_compressed
    from study.runner import load_trained
    directory = os.path.join(family_dir, key)
    if key.startswith('compress/'):
        return load_compressed(directory)
    return load_trained(directory)[0]


def measure(family_dir, keys, batches=(1, 64), repeat=20, rounds=3, image_shape=(1, 28, 28)):
    import mxnet as mx
    import numpy as np
    from gluon_lcnn.deploy import to_inference
    from gluon_lcnn.timing import machine_summary, medians, time_blocks_interleaved
    tic = time.time()
    machine = machine_summary()
    nets = {key: _load(family_dir, key) for key in keys}
    out = dict(threads=os.environ.get('OMP_NUM_THREADS', 'default'), keys=list(keys),
               date=datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC'),
               machine_at_start=machine, ms={}, kernels={})
    for batch in batches:
        shape = (batch,) + tuple(image_shape)
        blocks = []
        for key in keys:
            if key.endswith('int8'):
                blocks.append(nets[key])
                continue
            inference = to_inference(nets[key], input_shape=shape)
            blocks.append(inference)
            if batch == batches[0]:
                counts = {}
                for choice in getattr(inference, 'kernel_choices', {}).values():
                    counts[choice['choice']] = counts.get(choice['choice'], 0) + 1
                out['kernels'][key] = counts
        x = mx.nd.array(np.random.RandomState(0).uniform(-1, 1, shape).astype('float32'))
        best = [float('inf')] * len(keys)
        for _ in range(rounds):
            times = medians(time_blocks_interleaved(blocks, x, repeat=repeat, warmup=3))
            best = [min(b, t) for b, t in zip(best, times)]
        out['ms'][str(batch)] = {key: 1e3 * t for key, t in zip(keys, best)}
        del blocks
    out['machine_at_end'] = machine_summary()
    out['seconds'] = time.time() - tic
    return out


def main(argv=None):
    family_dir, out_path = (argv or sys.argv[1:])[:2]
    from study.runner import finished
    results = finished(family_dir)
    if DENSE not in results:
        raise SystemExit('measure: %s has no finished %s' % (family_dir, DENSE))
    out = measure(family_dir, models(family_dir, results))
    tmp = out_path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(out, f, indent=1)
    os.replace(tmp, out_path)
    print('[study] measured %d models with %s thread(s) in %.0f s -> %s'
          % (len(out['keys']), out['threads'], out['seconds'], out_path))


if __name__ == '__main__':
    main()
