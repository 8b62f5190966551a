"""docs/RESULTS.md and docs/results_<family>.png from the study's run directories.

Everything here is read from the runs' own files (done.json, the compress reports, the
latency_<t>t.json of ``measure``); nothing is typed in by hand.
"""
import datetime
import math
import os

from tabulate import tabulate

from . import plan as study_plan
from .runner import finished, read_unreachable

METHOD_NAMES = dict(lcnn='LCNN (compress)', lowrank='low-rank', prune='pruning', int8='int8')
# Accuracy losses (points of top-1 against dense) at which the methods are compared.
LOSS_BUDGETS = (0.5, 1.0, 2.0)


def collect(runs_dir, family):
    """{key: result} of every finished job of ``family``."""
    return finished(os.path.join(runs_dir, family))


def mean_std(values):
    n = len(values)
    if not n:
        return float('nan'), float('nan'), 0
    mean = sum(values) / float(n)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float('nan')
    return mean, std, n


def fmt_acc(values):
    mean, std, n = mean_std(values)
    if not n:
        return '-'
    if n == 1:
        return '%.2f (1 run)' % (100 * mean)
    return '%.2f ± %.2f (%d)' % (100 * mean, 100 * std, n)


def _speedups(latency, keys, batch, threads):
    lat = latency.get(threads)
    if not lat:
        return []
    ms = lat['ms'][str(batch)]
    return [ms['final/dense/seed0'] / ms[k] for k in keys if k in ms]


def rows(results, latency):
    """The study table of one family: one row per method and setting, seeds pooled."""
    groups = []

    def add(label, method, target, keys):
        keys = [k for k in keys if k in results]
        if keys:
            groups.append((label, method, target, keys))
    add('dense', 'dense', None, sorted(k for k in results if k.startswith('final/dense/')))
    add('int8 (of dense)', 'int8', None, ['compress/int8'])
    for variant in ('accurate', 'fast'):
        keys = sorted(k for k in results if k.startswith('final/%s/' % variant))
        if keys:
            add('LCNN-%s, from scratch (L1 %g)' % (variant, results[keys[0]]['l1_lambda']),
                'lcnn-' + variant, None, keys)
    targets = sorted({r['target'] for r in results.values()
                      if r.get('kind') == 'compress' and r.get('target')})
    for method in ('lcnn', 'lowrank', 'prune'):
        for target in targets:
            add('%s %gx' % (METHOD_NAMES[method], target), method, target,
                sorted(k for k, r in results.items() if r.get('kind') == 'compress'
                       and r['method'] == method and r['target'] == target))
    dense_mean = mean_std([results[k]['top1'] for k in groups[0][3]])[0] if groups else None
    table = []
    for label, method, target, keys in groups:
        accs = [results[k]['top1'] for k in keys]
        timed = ['final/dense/seed0'] if method == 'dense' else keys
        row = dict(label=label, method=method, target=target, keys=keys, accs=accs,
                   loss=100 * (dense_mean - mean_std(accs)[0]),
                   mac_speedup=mean_std([1.0 if method in ('dense', 'int8')
                                         else results[k]['mac_speedup'] for k in keys])[0])
        for threads in (1, 2):
            for batch in (1, 64):
                s = _speedups(latency, timed, batch, threads)
                row['s_b%d_%dt' % (batch, threads)] = mean_std(s)[0] if s else None
        table.append(row)
    return table


def _fmt_speed(v):
    return '-' if v is None else '%.2fx' % v


def render_table(table, latency):
    dense_ms = {}
    for threads, lat in latency.items():
        for batch, ms in lat['ms'].items():
            dense_ms[(int(batch), threads)] = ms['final/dense/seed0']
    cols = [(1, 1), (64, 1), (1, 2), (64, 2)]
    headers = ['model', 'test top-1 % (mean ± std, runs)', 'loss vs dense (points)',
               'MAC speed-up'] + [
        'measured b%d, %dt%s' % (b, t, (' (dense %.2f ms)' % dense_ms[(b, t)])
                                 if (b, t) in dense_ms else '') for b, t in cols]
    body = [[r['label'], fmt_acc(r['accs']), '%+.2f' % -r['loss'] if r['method'] != 'dense'
             else '-', '%.2fx' % r['mac_speedup']] +
            [_fmt_speed(r['s_b%d_%dt' % c]) for c in cols] for r in table]
    return tabulate(body, headers=headers, tablefmt='pipe', disable_numparse=True,
                    colalign=['left'] + ['right'] * (len(headers) - 1))


def best_at_loss(table, key='s_b64_1t'):
    """{method: {budget: best measured speed-up among its rows within budget}}."""
    families = {'LCNN (any)': ('lcnn', 'lcnn-accurate', 'lcnn-fast'), 'low-rank': ('lowrank',),
                'pruning': ('prune',), 'int8': ('int8',)}
    out = {}
    for name, methods in families.items():
        out[name] = {}
        for budget in LOSS_BUDGETS:
            cands = [r for r in table if r['method'] in methods and r['loss'] <= budget
                     and r[key] is not None]
            best = max(cands, key=lambda r: r[key]) if cands else None
            out[name][budget] = best
    return out


def render_best(table, key='s_b64_1t'):
    best = best_at_loss(table, key)
    headers = ['method'] + ['best at ≤ %g point loss' % b for b in LOSS_BUDGETS]
    body = [[name] + ['-' if r is None else '%.2fx (%s)' % (r[key], r['label'])
                      for r in per.values()] for name, per in best.items()]
    return tabulate(body, headers=headers, tablefmt='pipe', disable_numparse=True)


def targets_text(table):
    """The issue's targets, checked against the table (b64, 1 thread)."""
    lines = []
    for variant, budget, speed in (('accurate', 0.5, 3.0), ('fast', 2.0, 10.0)):
        r = next((r for r in table if r['method'] == 'lcnn-' + variant), None)
        if r is None or r['s_b64_1t'] is None:
            lines.append('- LCNN-%s: not measured yet.' % variant)
            continue
        ok = r['loss'] <= budget and r['s_b64_1t'] >= speed
        lines.append('- LCNN-%s from scratch: %.2f points %s dense at %.2fx measured (batch '
                     '64, 1 thread); target within %g point at >= %gx: **%s**.'
                     % (variant, abs(r['loss']), 'below' if r['loss'] >= 0 else 'above',
                        r['s_b64_1t'], budget, speed, 'met' if ok else 'missed'))
    best = best_at_loss(table)
    for budget in LOSS_BUDGETS:
        ours = best['LCNN (any)'][budget]
        rivals = {m: per[budget] for m, per in best.items() if m != 'LCNN (any)' and per[budget]}
        if ours is None:
            lines.append('- At <= %g point loss no LCNN row qualifies: LCNN is not ahead.'
                         % budget)
            continue
        top = max(rivals.items(), key=lambda kv: kv[1]['s_b64_1t']) if rivals else None
        if top is None or ours['s_b64_1t'] > top[1]['s_b64_1t']:
            lines.append('- At <= %g point loss LCNN is ahead: %.2fx (%s)%s.'
                         % (budget, ours['s_b64_1t'], ours['label'],
                            '' if top is None else ' against %s %.2fx' % (
                                top[0], top[1]['s_b64_1t'])))
        else:
            lines.append('- At <= %g point loss LCNN is **not** ahead: %.2fx (%s) against %s '
                         '%.2fx.' % (budget, ours['s_b64_1t'], ours['label'], top[0],
                                     top[1]['s_b64_1t']))
    return lines


def tuning_table(results, cfg):
    tune = {k: r for k, r in results.items() if k.startswith('tune/')}
    body = []
    for key in sorted(tune, key=lambda k: (tune[k]['variant'] != 'dense', k)):
        r = tune[key]
        body.append([key[5:], r['variant'], '-' if r.get('l1_lambda') is None
                     else '%g' % r['l1_lambda'], r['epochs'], '%.2f' % (100 * r['top1']),
                     '%.2fx' % r['mac_speedup'],
                     '-' if r.get('density') is None else '%.3f' % r['density'],
                     ' '.join('%.1f' % (100 * v) for v in r['val_curve'])])
    return tabulate(body, headers=['run', 'variant', 'L1', 'epochs', 'held-out top-1 %',
                                   'MAC speed-up', 'lookup density',
                                   'held-out top-1 per epoch'],
                    tablefmt='pipe', disable_numparse=True)


def fewshot_table(results, cfg):
    fs = cfg['fewshot']
    if not fs:
        return None, []
    variants = ['dense', 'accurate', 'fast']
    body, verdicts = [], []
    for k in fs['shots']:
        cells, stats = [], {}
        for v in variants:
            accs = [r['top1'] for key, r in results.items()
                    if key.startswith('fewshot/k%d/%s/' % (k, v))]
            stats[v] = mean_std(accs)
            cells.append(fmt_acc(accs))
        body.append([k, 10 * k] + cells)
        d = stats['dense']
        for v in ('accurate', 'fast'):
            m = stats[v]
            if m[2] and d[2]:
                diff = 100 * (m[0] - d[0])
                noise = 100 * math.sqrt((m[1] if m[2] > 1 else 0) ** 2 +
                                        (d[1] if d[2] > 1 else 0) ** 2)
                verdicts.append((k, v, diff, noise))
    table = tabulate(body, headers=['k per class', 'images', 'dense', 'LCNN-accurate',
                                    'LCNN-fast'],
                     tablefmt='pipe', disable_numparse=True)
    return table, verdicts


def plot(table, family, title, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    styles = dict(lcnn=('tab:blue', '-o'), lowrank=('tab:orange', '-s'),
                  prune=('tab:green', '-^'))
    for ax, key, name in ((axes[0], 's_b1_1t', 'batch 1'), (axes[1], 's_b64_1t', 'batch 64')):
        for method, (color, style) in styles.items():
            pts = sorted((r for r in table if r['method'] == method and r[key]),
                         key=lambda r: r[key])
            if pts:
                ax.errorbar([r[key] for r in pts], [100 * mean_std(r['accs'])[0] for r in pts],
                            yerr=[_err(r['accs']) for r in pts], fmt=style, color=color,
                            capsize=3, label=METHOD_NAMES[method])
                for r in pts:
                    ax.annotate('%gx' % r['target'], (r[key], 100 * mean_std(r['accs'])[0]),
                                textcoords='offset points', xytext=(4, -10), fontsize=7,
                                color=color)
        for method, marker, color, label in (
                ('dense', 'D', 'black', 'dense'), ('int8', 'P', 'tab:red', 'int8'),
                ('lcnn-accurate', '*', 'tab:purple', 'LCNN-accurate, scratch'),
                ('lcnn-fast', 'X', 'tab:brown', 'LCNN-fast, scratch')):
            r = next((r for r in table if r['method'] == method and r[key]), None)
            if r is not None:
                ax.errorbar([r[key]], [100 * mean_std(r['accs'])[0]], yerr=[_err(r['accs'])],
                            fmt=marker, color=color, markersize=9, capsize=3, label=label)
        ax.set_xscale('log')
        fmt = FuncFormatter(lambda v, _: '%gx' % float('%.2g' % v))
        ax.xaxis.set_major_formatter(fmt)
        ax.xaxis.set_minor_formatter(fmt)
        ax.tick_params(axis='x', which='minor', labelsize=7)
        ax.set_xlabel('measured CPU speed-up vs dense, %s, 1 thread (log)' % name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel('Fashion-MNIST test top-1 (%), mean ± std')
    axes[1].legend(loc='lower left', fontsize=8)
    fig.suptitle('%s: accuracy vs measured speed-up' % title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _err(accs):
    mean, std, n = mean_std(accs)
    return 100 * std if n > 1 else 0.0


def headline(family, cfg, table):
    """One sentence with the family's key numbers (for the top of RESULTS.md)."""
    by = {r['method']: r for r in table if r['target'] is None}
    parts = []
    if 'dense' in by:
        parts.append('dense %s' % fmt_acc(by['dense']['accs']))
    for variant in ('accurate', 'fast'):
        r = by.get('lcnn-' + variant)
        if r and r['s_b64_1t']:
            parts.append('LCNN-%s %s at %.2fx measured (batch 64, 1 thread; %.2fx at batch 1)'
                         % (variant, fmt_acc(r['accs']), r['s_b64_1t'], r['s_b1_1t']))
    best = best_at_loss(table)
    at1 = {m: b[1.0] for m, b in best.items()}
    fast1 = ', '.join('%s %.2fx' % (m, r['s_b64_1t']) for m, r in at1.items() if r)
    if fast1:
        parts.append('fastest within 1 point of dense (batch 64): %s' % fast1)
    return '**%s:** %s.' % (cfg['title'].split(' (')[0], '; '.join(parts))


def _relative(command):
    # Paths inside the checkout as a user types them from its top.
    return command.replace(study_plan.ROOT + os.sep, '')


def training_cost(results):
    """'dense 5.1 min, LCNN-accurate 5.6 min ...': mean wall time of a from-scratch run."""
    parts = []
    for variant in ('dense', 'accurate', 'fast'):
        walls = [r['wall_seconds'] for k, r in results.items()
                 if k.startswith('final/%s/' % variant)]
        if walls:
            parts.append('%s %.1f min' % ('dense' if variant == 'dense' else 'LCNN-' + variant,
                                          sum(walls) / len(walls) / 60.0))
    return ', '.join(parts)


def _compute_seconds(results):
    return sum(r.get('wall_seconds') or 0 for r in results.values())


def write(families, runs_dir, docs_dir, latency, quick, command, session_seconds):
    from gluon_lcnn.timing import machine_summary
    os.makedirs(docs_dir, exist_ok=True)
    now = datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC')
    sections, heads, total = [], [], 0.0
    for family in families:
        cfg = study_plan.family_config(family, quick)
        results = collect(runs_dir, family)
        lat = latency.get(family) or {}
        compute = _compute_seconds(results) + sum(l['seconds'] for l in lat.values())
        total += compute
        sections += ['## %s' % cfg['title'], '']
        if not results:
            sections += ['Not run yet: `.venv/bin/python tools/results.py --families %s` '
                         '(or `make results`) trains and measures it.' % family, '']
            continue
        table = rows(results, lat)
        unreachable = unreachable_runs(family, cfg, runs_dir, results)
        expected = len(_all_jobs(family, cfg, runs_dir, results)) - len(unreachable)
        sections += ['%d of %d runs finished; compute %.1f core-hours (each run one thread; '
                     'measuring included).' % (len(results), expected, compute / 3600.0), '']
        if len(results) < expected:
            sections += ['**Incomplete:** the runs not finished yet are missing from the tables; '
                         'rerunning the command continues them.', '']
            sections += ['- `%s`: %s' % (key, why)
                         for key, why in missing_runs(family, cfg, runs_dir, results)] + ['']
        if unreachable:
            sections += ['Not reachable (the method says so; these runs have no row):', ''] + [
                '- `%s`: %s' % item for item in unreachable] + ['']
        heads.append(headline(family, cfg, table))
        png = 'results_%s.png' % family
        if table:
            plot(table, family, cfg['title'], os.path.join(docs_dir, png))
        sections += ['### Accuracy and measured speed-up', '',
                     render_table(table, lat), '', '![%s](%s)' % (family, png), '']
        if lat:
            sections += ['Measured: %s.' % '; '.join(
                '%s thread(s) at %s (%s; at end: %s; %.0f s)'
                % (t, l['date'], l['machine_at_start'], l['machine_at_end'].split(', ')[-1],
                   l['seconds']) for t, l in sorted(lat.items())), '']
        sections += ['### Best measured speed-up at a given accuracy loss (batch 64, 1 thread)',
                     '', render_best(table), '', '### Against the targets', ''] + \
            targets_text(table) + ['']
        fs_table, verdicts = fewshot_table(results, cfg)
        if fs_table:
            sections += ['### Few-shot: k training images per class', '',
                         'Test top-1 %% on all 10k test images, mean ± std over draws of the '
                         'k images (draw d also seeds the run). Each run: %d epochs of ~%d '
                         'updates (batch %d or all images), lr %g cosine, wd %g, flips; L1 as '
                         'chosen above. Not tuned.' % (
                             cfg['fewshot']['epochs'], cfg['fewshot']['updates_per_epoch'],
                             cfg['fewshot']['batch_size'], study_plan.FEWSHOT_RECIPE['lr'],
                             study_plan.FEWSHOT_RECIPE['wd']), '', fs_table, '']
            for k, v, diff, noise in verdicts:
                if not noise:
                    verdict = 'one draw each, no spread to judge it by'
                elif abs(diff) <= noise:
                    verdict = 'within noise'
                else:
                    verdict = 'ahead beyond noise' if diff > 0 else 'behind beyond noise'
                sections.append('- k=%d, LCNN-%s vs dense: %+.2f points (std of the difference '
                                '%.2f): %s.' % (k, v, diff, noise, verdict))
            sections.append('')
        sections += ['### Hyper-parameters, chosen on the held-out slice', '',
                     'Every from-scratch run: %s; %d epochs of the %s training images.'
                     % (', '.join('%s %s' % (k.replace('_', ' '), v)
                                  for k, v in study_plan.RECIPE.items()), cfg['epochs'],
                        '%d' % cfg['train_limit'] if cfg['train_limit'] else 'all 60k'),
                     'The L1 strength of each LCNN variant (threshold %g) was chosen on runs '
                     'that hold out the last %d training images and report accuracy on them '
                     '(`--holdout`); the test set played no part:' % (
                         cfg['initial_sparsity'], cfg['holdout']), '',
                     tuning_table(results, cfg), '']
        if cfg['convergence_epochs']:
            sections += [convergence_text(results, cfg), '']
        cost = training_cost(results)
        if cost:
            sections += ['Wall time of one from-scratch run on the test split (one thread, '
                         'evaluation included): %s.' % cost, '']
        from .plan import chosen_l1
        choice = chosen_l1(family, cfg, runs_dir, results)
        for variant, (l1, why) in sorted((choice or {}).items()):
            sections.append('- LCNN-%s: L1 %g (%s).' % (variant, l1, why))
        sections += ['', 'Compress runs: fine-tune %d epoch(s) from the dense net of seed 0; '
                     'LCNN compress runs %d seeds of the fine-tune.' % (
                         cfg['compress']['epochs'], cfg['compress']['lcnn_seeds']), '',
                     '### Commands (one run of each kind)', '']
        seen = set()
        for key in sorted(results):
            kind = key.split('/')[0] + '/' + key.split('/')[1].split('_')[0]
            if kind not in seen:
                seen.add(kind)
                sections.append('- `%s`' % _relative(results[key]['command']))
        sections.append('')
    lines = ['# Results: accuracy against measured speed-up on Fashion-MNIST', '',
             'Generated by `%s` (%s) at %s on %s. Nothing below is edited by hand: every '
             'number comes from the runs\' own files under `runs/study/`. Total compute of '
             'the runs shown: %.1f core-hours; this invocation %.1f min.'
             % (command, 'quick smoke run' if quick else 'the full study', now,
                machine_summary(), total / 3600.0, session_seconds / 60.0), '',
             'Top-1 is on the 10k test images. *Measured* speed-up: `to_inference` of the '
             'model against `to_inference` of the trained dense net, interleaved in one '
             'process at batch 1 and 64, with 1 and 2 threads (best of 3 rounds of medians of '
             '20 runs); the int8 graph runs as exported. MAC speed-up: '
             '`gluon_lcnn.flops.profile`, against the dense net.', '']
    if heads:
        lines += ['**Headline.**', ''] + ['- ' + h for h in heads] + ['']
    lines += sections
    path = os.path.join(docs_dir, 'RESULTS.md')
    with open(path, 'w') as f:
        f.write('\n'.join(lines))
    return path


def convergence_text(results, cfg):
    """Is the epoch budget enough? The dense net's held-out top-1 at ``epochs`` and at the
    longer ``convergence_epochs`` budget, side by side."""
    short, long_ = results.get('tune/dense'), results.get(
        'tune/dense_%dep' % cfg['convergence_epochs'])
    if not (short and long_):
        return ('The %d-epoch dense run that checks the %d-epoch budget has not finished.'
                % (cfg['convergence_epochs'], cfg['epochs']))
    gain = 100 * (long_['top1'] - short['top1'])
    return ('Epoch budget: the dense net reaches %.2f%% held-out top-1 in %d epochs and %.2f%% '
            'in %d (same recipe): %+.2f points for twice the cost. Every row above uses %d '
            'epochs, so all methods share that budget; read absolute accuracies with it in '
            'mind.' % (100 * short['top1'], cfg['epochs'], 100 * long_['top1'],
                       cfg['convergence_epochs'], gain, cfg['epochs']))


def missing_runs(family, cfg, runs_dir, results):
    """[(key, why)] of the expected runs without a result: failed (the last line of its
    log), interrupted, or not started."""
    out = []
    for job in _all_jobs(family, cfg, runs_dir, results):
        if job.key in results or read_unreachable(job.directory(runs_dir)) is not None:
            continue
        log_path = os.path.join(job.directory(runs_dir), 'job.log')
        if not os.path.isfile(log_path):
            out.append((job.key, 'not started'))
            continue
        with open(log_path, errors='replace') as f:
            lines = [line.strip() for line in f if line.strip()]
        errors = [line for line in lines if 'Error' in line or 'error:' in line]
        out.append((job.key, 'failed or interrupted; its log ends: %s'
                    % (errors or lines or ['(empty)'])[-1][:200].replace('`', "'")))
    return out


def unreachable_runs(family, cfg, runs_dir, results):
    """[(key, reason)] of the compress runs whose target the method cannot reach."""
    found = []
    for job in _all_jobs(family, cfg, runs_dir, results):
        reason = read_unreachable(job.directory(runs_dir))
        if reason is not None and job.key not in results:
            found.append((job.key, reason))
    return found


def _all_jobs(family, cfg, runs_dir, results):
    # The expected number of runs once everything is known (LCNN runs need the tuned L1).
    jobs = study_plan.jobs(family, cfg, runs_dir, results)
    tuned = study_plan.chosen_l1(family, cfg, runs_dir, results)
    if tuned is None:
        fake = {v: c[0] for v, c in cfg['l1_candidates'].items()}
        jobs = study_plan.final_jobs(family, cfg, runs_dir, fake) + \
            study_plan.tune_jobs(family, cfg, runs_dir) + \
            study_plan.compress_jobs(family, cfg, runs_dir) + \
            study_plan.fewshot_jobs(family, cfg, runs_dir, fake) + \
            study_plan.convergence_jobs(family, cfg, runs_dir)
    elif 'final/dense/seed0' not in results:
        jobs = jobs + study_plan.compress_jobs(family, cfg, runs_dir)
    return jobs
