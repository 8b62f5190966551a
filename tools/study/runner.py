"""Runs the study's jobs, ``slots`` at a time (one thread each), resumably.

A job that finished wrote ``done.json`` in its directory (top-1, wall time, and for training
runs MACs against the dense twin) and is never run again; an interrupted one is started again
with ``--resume``, which continues from its last checkpoint. Independent single-threaded jobs
side by side use two cores better than one job with two Horovod workers (no allreduce, no
waiting on the slower worker), so that is how the study uses a 2-core machine.
"""
import json
import os
import subprocess
import sys
import time

from . import plan as study_plan

DONE = 'done.json'


# A compress target the method cannot reach on this net (the command says so and exits 1):
# a finding for the report, not a failure to retry.
UNREACHABLE = 'unreachable.json'
UNREACHABLE_MARK = 'is not reachable'


def read_done(directory):
    path = os.path.join(directory, DONE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def finished(family_dir):
    """{key: result} of every job under ``family_dir`` that wrote its done.json."""
    out = {}
    for dirpath, _, files in os.walk(family_dir):
        if DONE in files:
            out[os.path.relpath(dirpath, family_dir)] = read_done(dirpath)
    return out


def read_unreachable(directory):
    """The command's explanation if ``directory``'s job found its target unreachable."""
    path = os.path.join(directory, UNREACHABLE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)['reason']


def _unreachable_reason(directory):
    with open(os.path.join(directory, 'job.log'), errors='replace') as f:
        lines = [line.strip() for line in f if UNREACHABLE_MARK in line]
    return lines[-1].split('error: ', 1)[-1] if lines else None


def load_trained(directory):
    """(net, checkpoint meta) of a finished training run in ``directory``."""
    import mxnet as mx
    import gluon_lcnn
    from gluon_lcnn import training
    meta = training.load_checkpoint(directory)
    if meta is None:
        raise RuntimeError('no checkpoint in %s' % directory)
    args = meta['args']
    kwargs = training.parse_model_args(args['model_arg'])
    if args.get('initial_sparsity') is not None:
        # The threshold is not a parameter: rebuild the layers with the one trained with.
        kwargs['initial_sparsity'] = args['initial_sparsity']
    net = gluon_lcnn.get_model(args['model'], classes=args['num_classes'], **kwargs)
    net.initialize(ctx=mx.cpu())
    net(mx.nd.zeros((1,) + tuple(args['data_shape'])))
    net.load_parameters(meta['params'], ctx=mx.cpu())
    return net, meta


def _summarise_training(job, directory, wall):
    from gluon_lcnn import flops
    from gluon_lcnn.nn import density_report
    net, meta = load_trained(directory)
    args, history = meta['args'], meta['history']
    prof = flops.profile(net, (1,) + tuple(args['data_shape']))
    density = density_report(net).get('__total__')
    return dict(top1=history[-1]['val_top1'], heldout=bool(args.get('holdout')),
                val_curve=[h['val_top1'] for h in history], macs=prof.totals['macs'],
                dense_macs=prof.totals['dense_macs'], mac_speedup=prof.totals['speedup'],
                density=density, epochs=len(history),
                train_seconds=sum(h['epoch_time'] for h in history), wall_seconds=wall)


def _summarise_compress(job, directory, wall):
    with open(os.path.join(directory, 'report.json')) as f:
        report = json.load(f)
    acc = report['accuracy']
    top1 = acc['finetuned'] if acc['finetuned'] is not None else acc['converted']
    return dict(top1=top1, dense_top1=acc['dense'], converted_top1=acc['converted'],
                mac_speedup=report['mac_speedup'], wall_seconds=wall,
                command=report['command'])


def finish(job, directory, wall):
    """Write the job's done.json (its result) after a successful command."""
    summary = (_summarise_compress if job.kind == 'compress' else _summarise_training)(
        job, directory, wall)
    summary.update(job.info, kind=job.kind,
                   command=summary.get('command') or ' '.join(_shown(job.cmd)))
    tmp = os.path.join(directory, DONE + '.tmp')
    with open(tmp, 'w') as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, os.path.join(directory, DONE))
    return summary


def _shown(cmd):
    # The command as a user types it from the checkout (no absolute interpreter path).
    root = study_plan.ROOT + os.sep
    return ['.venv/bin/python' if c == sys.executable else c.replace(root, '') for c in cmd]


def _attempt_wall(directory):
    # Wall time of earlier, interrupted attempts: a resumed run's cost includes them.
    path = os.path.join(directory, 'attempts.json')
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return []


def _record_attempt(directory, wall):
    """Add one attempt's wall time to the job's attempts.json; returns them all."""
    attempts = _attempt_wall(directory) + [round(wall, 1)]
    with open(os.path.join(directory, 'attempts.json'), 'w') as f:
        json.dump(attempts, f)
    return attempts


def run_all(families, runs_dir, slots=2, quick=False, log=print):
    """Run every job of ``families`` to completion; returns ({family: {key: result}},
    failures). A failed job is reported and not retried in this call; the rest go on."""
    configs = {f: study_plan.family_config(f, quick) for f in families}
    results = {f: {} for f in families}
    failed, running = {}, {}
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=study_plan.ROOT)
    try:
        _loop(families, configs, runs_dir, slots, results, failed, running, env, log)
    finally:
        # Interrupted: stop the children too, so a rerun does not race them (it resumes
        # them from their last checkpoint instead).
        for job, proc, logf, start in running.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
            logf.close()
            _record_attempt(job.directory(runs_dir), time.time() - start)
    return results, failed


def _pending(families, configs, runs_dir, results, failed, running):
    """Jobs that can start now, in priority order. Results found on disk can make further
    jobs known (a finished tuning makes the LCNN runs known), so look until nothing new."""
    while True:
        pending, found = [], False
        for family in families:
            for job in study_plan.jobs(family, configs[family], runs_dir, results[family]):
                ident = (family, job.key)
                if job.key in results[family] or ident in failed or ident in running:
                    continue
                if read_unreachable(job.directory(runs_dir)) is not None:
                    continue
                done = read_done(job.directory(runs_dir))
                if done is not None:
                    results[family][job.key] = done
                    found = True
                    continue
                pending.append(job)
        if not found:
            return pending


def _loop(families, configs, runs_dir, slots, results, failed, running, env, log):
    while True:
        pending = _pending(families, configs, runs_dir, results, failed, running)
        while pending and len(running) < slots:
            job = pending.pop(0)
            directory = job.directory(runs_dir)
            os.makedirs(directory, exist_ok=True)
            logf = open(os.path.join(directory, 'job.log'), 'a')
            log('[study] start %s/%s' % (job.family, job.key))
            proc = subprocess.Popen(job.cmd, cwd=study_plan.ROOT, env=env, stdout=logf,
                                    stderr=subprocess.STDOUT)
            running[(job.family, job.key)] = (job, proc, logf, time.time())
        if not running:
            break
        time.sleep(1.0)
        for ident, (job, proc, logf, start) in list(running.items()):
            if proc.poll() is None:
                continue
            logf.close()
            del running[ident]
            directory = job.directory(runs_dir)
            wall = time.time() - start
            attempts = _record_attempt(directory, wall)
            reason = _unreachable_reason(directory) if job.kind == 'compress' else None
            if proc.returncode != 0 and reason:
                with open(os.path.join(directory, UNREACHABLE), 'w') as f:
                    json.dump(dict(reason=reason, key=job.key), f)
                log('[study] not reachable %s/%s: %s' % (job.family, job.key, reason))
                continue
            if proc.returncode != 0:
                failed[ident] = 'exit %d (see %s)' % (proc.returncode,
                                                      os.path.join(directory, 'job.log'))
                log('[study] FAILED %s/%s: %s' % (job.family, job.key, failed[ident]))
                continue
            result = finish(job, directory, sum(attempts))
            results[job.family][job.key] = result
            log('[study] done  %s/%s: top-1 %.4f%s, %.0f s'
                % (job.family, job.key, result['top1'],
                   ' (held-out)' if result.get('heldout') else '',
                   sum(attempts)))
