"""The study as data: families, recipes, candidates, and the jobs they expand to.

Every job is one command (a training run of train_scripts/train_fashion_mnist.py or a
``python -m gluon_lcnn compress`` run) with its own directory under ``runs/study/<family>/``;
a job is done when its directory holds ``done.json``. Jobs whose inputs are not known yet
(the LCNN runs need the tuned L1 strength, compress runs the trained dense net) appear once
what they need is done, so one ``jobs(...)`` call per scheduler pass gives everything that
can run now.
"""
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, 'train_scripts', 'train_fashion_mnist.py')

# One training recipe for every from-scratch run (dense and LCNN): SGD + Nesterov, cosine
# decay after a one-epoch warm-up, random horizontal flips.
RECIPE = dict(batch_size=128, lr=0.05, warmup_epochs=1.0, lr_mode='cosine', wd=1e-4,
              augment='crop')
# Few-shot runs: the same recipe on k images per class, an "epoch" being enough passes over
# them for ~updates_per_epoch updates, so every k gets the same number of updates.
FEWSHOT_RECIPE = dict(lr=0.05, warmup_epochs=0.25, lr_mode='cosine', wd=5e-4, augment='crop')

FAMILIES = {
    'lenet': dict(
        title='LeNet-5 (Caffe widths: conv 20, 50; fc 500)',
        dense='lenet', lcnn=dict(accurate='lenet_lcnn_accurate', fast='lenet_lcnn_fast'),
        model_args=['in_channels=1'],
        epochs=6, seeds=3, holdout=10000,
        # Held-out check that the epoch budget is enough: the dense net also runs this long.
        convergence_epochs=12,
        initial_sparsity=0.01,
        l1_candidates=dict(accurate=[0.25, 0.5, 1.0], fast=[2.0, 4.0, 8.0]),
        compress=dict(methods=['lcnn', 'lowrank', 'prune'], targets=[2, 4, 8, 16], epochs=3,
                      lcnn_seeds=3),
        fewshot=dict(shots=[1, 5, 10, 50], draws=3, epochs=4, updates_per_epoch=100,
                     batch_size=32)),
    # The cheapest zoo net whose dense forward pass cost >= 3 ms at batch 1 on one thread of
    # the AVX2 machine it was chosen on (33 M MACs; an AVX-512 core runs it in under 1 ms:
    # RESULTS.md prints the measured time): ResNet-18 with its ImageNet stem, so 28x28
    # becomes 7x7 at stage 1.
    # The 3x3 thumbnail stem would cost 456 M MACs, AlexNet at 28x28 151 M.
    'resnet18': dict(
        title='ResNet-18 v1 (ImageNet stem, 28x28 input)',
        dense='resnet18_v1',
        lcnn=dict(accurate='resnet18_lcnn_accurate', fast='resnet18_lcnn_fast'),
        model_args=['in_channels=1'],
        epochs=6, seeds=3, holdout=10000, convergence_epochs=None,
        initial_sparsity=0.01,
        l1_candidates=dict(accurate=[0.5, 1.0], fast=[2.0, 5.0]),
        # Two targets, not four: a 3-epoch fine-tune costs ~5 core-minutes here, and the
        # family must fit in about two hours of a 2-core machine.
        compress=dict(methods=['lcnn', 'lowrank', 'prune'], targets=[4, 16], epochs=3,
                      lcnn_seeds=3),
        fewshot=None),
}
# Accuracy a variant may give up against the dense net on the held-out slice (top-1, as a
# fraction) when its L1 strength is chosen: the targets.
TOLERANCE = dict(accurate=0.005, fast=0.02)

# --quick: the whole pipeline on a few thousand images, one seed, for tests and smoke runs.
QUICK = dict(epochs=1, seeds=1, holdout=1000, train_limit=1000, convergence_epochs=None,
             l1_first_only=True, targets=[4], compress_epochs=1, lcnn_seeds=1,
             fewshot=dict(shots=[1], draws=1, epochs=1, updates_per_epoch=5, batch_size=32))


def family_config(name, quick=False):
    """The preset of family ``name``, with the --quick reductions applied."""
    if name not in FAMILIES:
        raise ValueError('unknown study family %r (known: %s)' % (name, ', '.join(FAMILIES)))
    cfg = dict(FAMILIES[name])
    cfg['train_limit'] = 0
    if quick:
        cfg.update(epochs=QUICK['epochs'], seeds=QUICK['seeds'], holdout=QUICK['holdout'],
                   train_limit=QUICK['train_limit'],
                   convergence_epochs=QUICK['convergence_epochs'])
        cfg['l1_candidates'] = {v: c[:1] for v, c in cfg['l1_candidates'].items()}
        cfg['compress'] = dict(cfg['compress'], targets=QUICK['targets'],
                               epochs=QUICK['compress_epochs'], lcnn_seeds=QUICK['lcnn_seeds'])
        if cfg['fewshot']:
            cfg['fewshot'] = dict(QUICK['fewshot'])
    return cfg


class Job:
    """One command of the study: ``key`` names it (and its directory below the family's)."""

    def __init__(self, family, key, cmd, kind, info):
        self.family, self.key, self.cmd, self.kind, self.info = family, key, cmd, kind, info

    def directory(self, runs_dir):
        return os.path.join(runs_dir, self.family, self.key)

    def __repr__(self):
        return 'Job(%s/%s)' % (self.family, self.key)


def _flags(options):
    out = []
    for key, value in options.items():
        out += ['--' + key.replace('_', '-'), str(value)]
    return out


def _train_cmd(cfg, model, save_dir, epochs, seed, extra=None, recipe=RECIPE):
    cmd = [sys.executable, TRAIN, '--model', model, '--num-epochs', str(epochs),
           '--save-dir', save_dir, '--resume', '--no-progress', '--no-horovod',
           '--keep-checkpoints', '1', '--seed', str(seed)] + _flags(recipe)
    if cfg['train_limit']:
        cmd += ['--train-limit', str(cfg['train_limit'])]
    for item in cfg['model_args']:
        cmd += ['--model-arg', item]
    return cmd + _flags(extra or {})


def _lcnn_flags(cfg, l1):
    return dict(l1_lambda=l1, initial_sparsity=cfg['initial_sparsity'])


def tune_jobs(family, cfg, runs_dir):
    """Held-out runs: the dense net, and every L1 candidate of each LCNN variant."""
    jobs = []
    held = dict(holdout=cfg['holdout'])
    d = lambda key: os.path.join(runs_dir, family, key)  # noqa: E731
    jobs.append(Job(family, 'tune/dense', _train_cmd(cfg, cfg['dense'], d('tune/dense'),
                                                     cfg['epochs'], 0, held),
                    'tune', dict(variant='dense', epochs=cfg['epochs'])))
    for variant, candidates in cfg['l1_candidates'].items():
        for l1 in candidates:
            key = 'tune/%s_l1_%g' % (variant, l1)
            jobs.append(Job(family, key, _train_cmd(
                cfg, cfg['lcnn'][variant], d(key), cfg['epochs'], 0,
                dict(held, **_lcnn_flags(cfg, l1))), 'tune',
                dict(variant=variant, l1_lambda=l1, epochs=cfg['epochs'])))
    return jobs


def convergence_jobs(family, cfg, runs_dir):
    """The dense net on the held-out split with a longer budget: is ``epochs`` enough?"""
    if not cfg['convergence_epochs']:
        return []
    key = 'tune/dense_%dep' % cfg['convergence_epochs']
    return [Job(family, key, _train_cmd(cfg, cfg['dense'], os.path.join(runs_dir, family, key),
                                        cfg['convergence_epochs'], 0,
                                        dict(holdout=cfg['holdout'])),
                'convergence', dict(variant='dense', epochs=cfg['convergence_epochs']))]


def choose_l1(tune_results, variant, tolerance):
    """The L1 strength of ``variant`` from held-out results ({key: result}): the candidate
    with the largest MAC speed-up among those within ``tolerance`` of the dense net's held-out
    top-1 (same epochs), else the most accurate one. Returns (l1, reason)."""
    dense = [r for r in tune_results.values() if r['variant'] == 'dense']
    if not dense:
        raise ValueError('choose_l1: no dense held-out run to compare %s with' % variant)
    floor = dense[0]['top1'] - tolerance
    cands = [r for r in tune_results.values() if r['variant'] == variant]
    if not cands:
        raise ValueError('choose_l1: no held-out runs of %s' % variant)
    within = [r for r in cands if r['top1'] >= floor]
    if within:
        best = max(within, key=lambda r: r['mac_speedup'])
        return best['l1_lambda'], ('largest MAC speed-up within %.1f points of dense'
                                   % (100 * tolerance))
    best = max(cands, key=lambda r: r['top1'])
    return best['l1_lambda'], 'none within %.1f points of dense: the most accurate' % (
        100 * tolerance)


def final_jobs(family, cfg, runs_dir, chosen):
    """Test-set runs from scratch: the dense net (seed 0: the one compress starts from; its
    other seeds give the dense row's spread) and each LCNN variant with its chosen L1."""
    jobs = []
    for seed in range(cfg['seeds']):
        key = 'final/dense/seed%d' % seed
        jobs.append(Job(family, key, _train_cmd(cfg, cfg['dense'],
                                                os.path.join(runs_dir, family, key),
                                                cfg['epochs'], seed),
                        'final', dict(variant='dense', seed=seed)))
    for variant, l1 in sorted(chosen.items()):
        for seed in range(cfg['seeds']):
            key = 'final/%s/seed%d' % (variant, seed)
            jobs.append(Job(family, key, _train_cmd(
                cfg, cfg['lcnn'][variant], os.path.join(runs_dir, family, key), cfg['epochs'],
                seed, _lcnn_flags(cfg, l1)), 'final',
                dict(variant=variant, seed=seed, l1_lambda=l1)))
    return jobs


def dense_params(runs_dir, family, cfg):
    return os.path.join(runs_dir, family, 'final', 'dense', 'seed0',
                        'epoch-%04d.params' % cfg['epochs'])


def compress_jobs(family, cfg, runs_dir):
    """Every method and target from the trained dense net (seed 0), plus int8."""
    c = cfg['compress']
    params = dense_params(runs_dir, family, cfg)
    base = [sys.executable, '-m', 'gluon_lcnn', 'compress', '--model', cfg['dense'],
            '--params', params, '--epochs', str(c['epochs']), '--resume', '--no-progress',
            '--no-horovod', '--no-measure', '--keep-checkpoints', '1',
            '--batch-size', str(RECIPE['batch_size']), '--augment', RECIPE['augment']]
    for item in cfg['model_args']:
        base += ['--model-arg', item]
    if cfg['train_limit']:
        base += ['--train-limit', str(cfg['train_limit'])]
    key = 'compress/int8'
    jobs = [Job(family, key, base + ['--method', 'int8', '--target-speedup', '2', '--out',
                                     os.path.join(runs_dir, family, key)],
                'compress', dict(method='int8', target=None, seed=0))]
    # Seed-major: every method and target once before the LCNN rows' extra seeds, so a study
    # cut short still has one point of every curve.
    for seed in range(c['lcnn_seeds']):
        for method in c['methods']:
            if method != 'lcnn' and seed > 0:
                continue
            for target in c['targets']:
                key = 'compress/%s_%gx/seed%d' % (method, target, seed)
                out = os.path.join(runs_dir, family, key)
                jobs.append(Job(family, key, base + [
                    '--method', method, '--target-speedup', str(target), '--out', out,
                    '--seed', str(seed)], 'compress',
                    dict(method=method, target=target, seed=seed)))
    return jobs


def fewshot_jobs(family, cfg, runs_dir, chosen):
    """Dense and both LCNN variants (chosen L1) on k images per class, several draws."""
    fs = cfg['fewshot']
    if not fs:
        return []
    models = [('dense', cfg['dense'], {})] + [
        (v, cfg['lcnn'][v], _lcnn_flags(cfg, l1)) for v, l1 in sorted(chosen.items())]
    jobs = []
    for k in fs['shots']:
        images = 10 * k
        batch = min(fs['batch_size'], images)
        repeats = max(1, int(math.ceil(fs['updates_per_epoch'] * batch / float(images))))
        for draw in range(fs['draws']):
            for variant, model, extra in models:
                key = 'fewshot/k%d/%s/draw%d' % (k, variant, draw)
                flags = dict(extra, per_class=k, subset_seed=draw, epoch_repeats=repeats,
                             batch_size=batch)
                cmd = _train_cmd(dict(cfg, train_limit=0), model,
                                 os.path.join(runs_dir, family, key), fs['epochs'], draw,
                                 flags, recipe=FEWSHOT_RECIPE)
                jobs.append(Job(family, key, cmd, 'fewshot',
                                dict(variant=variant, k=k, draw=draw)))
    return jobs


def chosen_l1(family, cfg, runs_dir, results):
    """{variant: (l1, reason)} once every tuning run of ``family`` is done, else None."""
    tune = tune_jobs(family, cfg, runs_dir)
    if not all(j.key in results for j in tune):
        return None
    tuned = {j.key: dict(results[j.key], **j.info) for j in tune}
    return {v: choose_l1(tuned, v, TOLERANCE[v]) for v in cfg['l1_candidates']}


def jobs(family, cfg, runs_dir, results):
    """Every job of ``family`` that can run given ``results`` ({key: result of a done job}),
    in priority order: tuning, the dense net compress starts from, from-scratch LCNN, the
    other dense seeds (every comparison needs the dense row's spread), compress, few-shot,
    the convergence check."""
    choice = chosen_l1(family, cfg, runs_dir, results)
    chosen = {v: l1 for v, (l1, _) in choice.items()} if choice else {}
    finals = final_jobs(family, cfg, runs_dir, chosen)
    out = tune_jobs(family, cfg, runs_dir) + finals[:1] + finals[cfg['seeds']:] + \
        finals[1:cfg['seeds']]
    if 'final/dense/seed0' in results:
        out += compress_jobs(family, cfg, runs_dir)
    if chosen:
        out += fewshot_jobs(family, cfg, runs_dir, chosen)
    return out + convergence_jobs(family, cfg, runs_dir)
