#!/usr/bin/env python
"""Training-step benchmark: one full step (forward, backward, optimizer update) of every
``*_lcnn_fast`` / ``*_lcnn_accurate`` zoo model against its dense twin.

Each (thread setting, model, form) runs in its own subprocess with OMP_NUM_THREADS set (MXNet
fixes its thread count at start; one form per process keeps peak memory to two models). Inside
it an LCNN model and its dense twin are built with random weights,
hybridized with static memory, and their steps timed alternately on the same random batch (NAG
with momentum and weight decay, as train_imagenet.py; the LCNN loss includes the L1 penalty),
median of ``--repeat`` rounds after warm-up. Each LCNN model runs with every ``--form``:
'auto' (each layer the cheaper form by MAC count for this batch), all 'factored', all
'composed'. ``--memory`` adds the peak resident memory of a few training steps, one fresh
process per model. Writes benchmarks/results/train_step.md (+ .json).

    .venv/bin/python benchmarks/bench_train.py --threads 1 2
"""
import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

# (LCNN model, dense twin, input shape, classes)
PAIRS = [
    ('alexnet_lcnn_fast', 'alexnet', (3, 224, 224), 1000),
    ('alexnet_lcnn_accurate', 'alexnet', (3, 224, 224), 1000),
    ('resnet18_lcnn_fast', 'resnet18_v1', (3, 224, 224), 1000),
    ('resnet18_lcnn_accurate', 'resnet18_v1', (3, 224, 224), 1000),
    ('lenet_lcnn_fast', 'lenet', (1, 28, 28), 10),
    ('lenet_lcnn_accurate', 'lenet', (1, 28, 28), 10),
]
FORMS = ('auto', 'factored', 'composed')


def build_step(name, shape, classes, batch, form=None, seed=0):
    """(step function, forms chosen) for one model: a hybridized net, a trainer, a fixed batch."""
    import mxnet as mx
    from mxnet import autograd, gluon
    import gluon_lcnn
    from gluon_lcnn.nn import choose_forms, l1_penalty

    mx.random.seed(seed)
    kwargs = dict(classes=classes)
    if form is not None:
        kwargs.update(l1_lambda=1e-4)
        if form != 'auto':
            kwargs['form'] = form
    net = gluon_lcnn.get_model(name, **kwargs)
    net.initialize(mx.init.Xavier(rnd_type='gaussian', factor_type='in', magnitude=2))
    net(mx.nd.zeros((1,) + tuple(shape)))
    forms = list(choose_forms(net, batch).values())
    net.hybridize(static_alloc=True)
    trainer = gluon.Trainer(net.collect_params(), 'nag',
                            dict(learning_rate=1e-4, momentum=0.9, wd=1e-4), kvstore=None)
    loss_fn = gluon.loss.SoftmaxCrossEntropyLoss()
    x = mx.nd.random.normal(shape=(batch,) + tuple(shape))
    y = mx.nd.array(mx.nd.random.randint(0, classes, shape=(batch,)).asnumpy())

    def step():
        with autograd.record():
            loss = loss_fn(net(x), y)
            if forms:
                loss = loss + l1_penalty(net)
        loss.backward()
        trainer.step(batch)
        mx.nd.waitall()
    return step, forms


def run_pair(job):
    """Time one LCNN model in the job's forms against its dense twin, interleaved."""
    from gluon_lcnn.timing import time_calls_interleaved, medians
    name, twin, shape, classes = job['pair']
    steps, labels, chosen = [], [], {}
    dense_step, _ = build_step(twin, shape, classes, job['batch'])
    steps.append(dense_step)
    labels.append('dense')
    for form in job['forms']:
        step, forms = build_step(name, shape, classes, job['batch'], form=form)
        steps.append(step)
        labels.append(form)
        chosen[form] = '%d composed / %d factored' % (forms.count('composed'),
                                                      forms.count('factored'))
    times = medians(time_calls_interleaved(steps, repeat=job['repeat'], warmup=job['warmup']))
    return dict(model=name, twin=twin, shape=list(shape), batch=job['batch'],
                threads=job['threads'], dense_s=times[0],
                forms={label: dict(seconds=t, ratio=t / times[0], layers=chosen[label])
                       for label, t in zip(labels[1:], times[1:])})


def peak_memory(job):
    """Peak RSS (MB) of a fresh process that runs a few training steps of one model."""
    step, _ = build_step(job['model'], job['shape'], job['classes'], job['batch'],
                         form=job['form'])
    for _ in range(3):
        step()
    return dict(model=job['model'], batch=job['batch'], form=job['form'],
                peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)


def in_subprocess(kind, job, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), '--worker', kind,
                           json.dumps(job)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError('%s worker %s failed (OMP_NUM_THREADS=%d, exit code %d%s):\n%s'
                           % (kind, job, threads, proc.returncode,
                              ', killed: out of memory?' if proc.returncode < 0 else '',
                              proc.stderr[-3000:]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def render(rows, memory):
    from tabulate import tabulate
    table = []
    for r in rows:
        for form, f in r['forms'].items():
            table.append([r['model'], 'x'.join(map(str, r['shape'])), r['batch'], r['threads'],
                          form, f['layers'], '%.3f' % r['dense_s'], '%.3f' % f['seconds'],
                          '%.2fx' % f['ratio']])
    text = tabulate(table, headers=['model', 'input', 'batch', 'threads', 'form',
                                    'lookup layers', 'dense twin s/step', 'LCNN s/step',
                                    'LCNN / dense'], tablefmt='github')
    if memory:
        mem = [[m['model'], m['form'] or '-', m['batch'], '%.0f' % m['peak_mb']] for m in memory]
        text += '\n\nPeak resident memory of one process training 3 steps (ru_maxrss):\n\n'
        text += tabulate(mem, headers=['model', 'form', 'batch', 'peak MB'], tablefmt='github')
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--model', nargs='+', default=[pair[0] for pair in PAIRS],
                   choices=[pair[0] for pair in PAIRS])
    p.add_argument('--form', nargs='+', default=list(FORMS), choices=FORMS)
    p.add_argument('--threads', nargs='+', type=int, default=[1, 2])
    p.add_argument('--batch', type=int, default=32)
    p.add_argument('--repeat', type=int, default=3)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--memory', action='store_true', help='also measure peak memory per model')
    p.add_argument('--memory-batch', type=int, default=2)
    p.add_argument('--out', default=os.path.join(HERE, 'results', 'train_step'))
    p.add_argument('--worker', nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        kind, job = args.worker[0], json.loads(args.worker[1])
        print(json.dumps(run_pair(job) if kind == 'time' else peak_memory(job)))
        return
    for name in ('batch', 'repeat'):
        if getattr(args, name) < 1:
            p.error('--%s must be >= 1' % name)
    if min(args.threads) < 1:
        p.error('--threads must be >= 1')
    tic = time.time()
    pairs = [pair for pair in PAIRS if pair[0] in args.model]
    rows = []
    for threads in args.threads:
        for pair in pairs:
            for form in args.form:
                row = in_subprocess('time', dict(pair=pair, batch=args.batch, forms=[form],
                                                 repeat=args.repeat, warmup=args.warmup,
                                                 threads=threads), threads)
                rows.append(row)
                print(render([row], []), flush=True)
    memory = []
    if args.memory:
        seen = set()
        for name, twin, shape, classes in pairs:
            for model, form in [(twin, None)] + [(name, f) for f in args.form]:
                if (model, form) in seen:
                    continue
                seen.add((model, form))
                memory.append(in_subprocess('memory', dict(model=model, shape=shape,
                                                           classes=classes, form=form,
                                                           batch=args.memory_batch),
                                            max(args.threads)))
    command = ' '.join(['.venv/bin/python', 'benchmarks/bench_train.py'] +
                       (sys.argv[1:] if argv is None else list(argv)))
    when = datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC')
    from gluon_lcnn.timing import machine_summary
    machine = machine_summary() + ' (at the end)'
    text = render(rows, memory)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + '.json', 'w') as f:
        json.dump(dict(command=command, date=when, machine=machine, rows=rows, memory=memory,
                       seconds=time.time() - tic), f, indent=1)
    with open(args.out + '.md', 'w') as f:
        f.write('# Training step: LCNN vs dense twin\n\n`%s`\n\n%s; %s; %.0f s of compute.\n\n'
                'One step = forward, backward and a NAG update of a batch; times are medians '
                'of interleaved rounds (LCNN and dense twin alternating) in one process per thread '
                'setting, model and form.\n\n%s\n'
                % (command, when, machine, time.time() - tic, text))
    print('\n' + text)
    print('\nwrote %s.md and .json' % args.out)


if __name__ == '__main__':
    main()
