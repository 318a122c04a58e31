"""Does AutoScale's claim hold at the scales this machine reaches? A resumable study in stages.

Corpus: the demo corpus (CPython code, State of the Union speeches, Shakespeare's plays, BBC
news); model: the demo's 2-layer GPT-2 (d 128, seq 128, batch 16, BPE 4096), warmup 10% of each
run, 256 validation sequences per domain. One workdir holds every run; a stage trains only what
it needs (finished runs are found again by their fingerprints) and writes a small JSON summary to
bench/results/scale_study/<stage>.json, which is committed, so a later session (or machine)
continues from the summaries. Each stage is sized to finish within 75 minutes on 2 CPU cores.

Stages, in order (--stage=next, the default, runs the first one without a summary):
  pilot          seed noise (3 seeds) of the objective and of each domain's loss, for the base
                 mixture and one x3 perturbation per domain, at 50k, 200k and 800k tokens (16x);
                 each domain's own effect: the change of the objective ratio beyond what the
                 x3 run's extra tokens alone explain (read off the base runs' budget curve)
  ddo            DDO at the two budgets the pilot's rule chooses, 2 replicates, then the
                 prediction at 4x the larger one (the pilot decides; see choose_budgets)
  validate       predicted vs uniform, natural and reuse at the target, 3 seeds each
  at_ddo_budget  DDO's own optimum vs the same baselines at the larger DDO budget, 3 seeds:
                 is DDO right at the scale it measured?
  direct         a full DDO at the target (ddo.check_budgets): is the extrapolation right?
  report         the bench/RESULTS.md section from the summaries (trains nothing)

  python bench/scale_study.py --workdir=/tmp/scale_study [--stage=next|NAME] [--max-minutes=75]

A stage that would run past --max-minutes pauses at it (checkpointed, as on preemption) and the
same command resumes it; its summary is written when it completes. The ddo summary keeps the DDO
budgets' files, so the later stages run on a new machine without retraining DDO.
"""

import json
import os
import pathlib
import signal
import sys
import threading
import time
import warnings

import ml_collections
import numpy as np
from absl import logging
from etils import epath

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _common  # noqa: E402  pylint: disable=g-import-not-at-top
from autoscale_jax import defaults, pipeline  # noqa: E402
from autoscale_jax.data.mixture import counts_from_weights  # noqa: E402
from autoscale_jax.mixing import PINNED_MODES, AutoScaleModel, DDOProblem  # noqa: E402
from autoscale_jax.pipeline import ddo, lock, registry  # noqa: E402
from autoscale_jax.report import tables  # noqa: E402

SUMMARIES = _common.ROOT / 'bench' / 'results' / 'scale_study'
STAGES = ('pilot', 'ddo', 'validate', 'at_ddo_budget', 'direct', 'report')
PILOT_BUDGETS = (50_000, 200_000, 800_000)
PILOT_SEEDS = (0, 1, 2)
PILOT_FACTOR = 3.0
Z_RULE = 3.0  # each domain's own effect must be >= this many noise standard deviations
TARGET_FACTOR = 4  # the target is this many times the larger DDO budget


def study_config() -> ml_collections.ConfigDict:
  """The demo config with the study's settings (every stage shares them, so runs are shared)."""
  c = defaults.get_config()
  c.mode = 'autoscale'
  c.data.val_sequences = 256  # evaluation noise small next to the effects measured
  c.data.max_epochs = 2  # x3 perturbations at large budgets may repeat a small domain (warned)
  c.validate.seeds = 3
  c.validate.eval_every = 50
  c.predict.pinned = 'extrapolate'  # the paper's AutoScale is what the study tests (it ran so)
  c.validate.baselines = ml_collections.ConfigDict(
      {'uniform': 'uniform', 'natural': 'natural', 'reuse': 'reuse'})
  return c


def summary_path(stage: str) -> pathlib.Path:
  return SUMMARIES / f'{stage}.json'


def read_summary(stage: str) -> dict:
  path = summary_path(stage)
  if not path.exists():
    raise SystemExit(f'stage {stage!r} has no summary yet ({path}); run --stage={stage} first.')
  return json.loads(path.read_text())


def write_json(path: pathlib.Path, summary: dict) -> None:
  """A committed summary, written atomically (write, then rename)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps(summary, indent=1, sort_keys=True) + '\n')
  tmp.replace(path)
  print(f'wrote {path.relative_to(_common.ROOT)}')


def write_summary(stage: str, summary: dict) -> None:
  write_json(summary_path(stage), summary)


def pause_after(minutes: float) -> None:
  """SIGTERM to this process after `minutes`: the training loop checkpoints and exits, as when
  preempted, and rerunning the same command resumes; only a finished stage writes its summary."""
  timer = threading.Timer(minutes * 60, os.kill, (os.getpid(), signal.SIGTERM))
  timer.daemon = True
  timer.start()


def header(stage: str, start: float) -> dict:
  """What every stage summary opens with: the command, machine, load and wall time."""
  return {'stage': stage, 'command': _common.command(), 'machine': _common.machine(),
          'load': _common.load(), 'wall_min': round((time.time() - start) / 60, 1),
          'finished': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}


# ------------------------------------------------------------------------------ pilot
def pilot(workdir: epath.Path) -> dict:
  """Base and x3-per-domain runs, 3 seeds, three budgets; the noise table and each domain's z."""
  config = study_config()
  start = time.time()
  with lock.workdir_lock(workdir):
    exp = registry.Experiment(config, workdir)
    names, m = exp.mix_names, len(exp.mix_names)
    index, results = [], []
    for budget in PILOT_BUDGETS:  # one stack per budget: runs of similar lengths
      specs = []
      for point in ['base', *names]:
        weights = np.full(m, 1.0 / m)
        if point != 'base':
          weights[names.index(point)] *= PILOT_FACTOR
        tokens = budget * weights.sum()
        for seed in PILOT_SEEDS:
          counts = counts_from_weights(weights / weights.sum(), tokens, exp.seq_len)
          specs.append(registry.RunSpec(f'{point} @ {budget:,} seed{seed}', exp.full(counts),
                                        seed))
          index.append((budget, point, seed))
      results += exp.train(specs, f'pilot @ {budget:,} tokens')
  table = {}
  for (budget, point, seed), r in zip(index, results):
    entry = table.setdefault(str(budget), {}).setdefault(point, {'objective': [], 'val_loss': {},
                                                                 'val_loss_se': {}, 'tokens': 0})
    entry['objective'].append(r['objective'])
    entry['tokens'] = int(sum(r['trained_tokens']))
    for d in names:
      entry['val_loss'].setdefault(d, []).append(r['val_loss'][d])
      entry['val_loss_se'].setdefault(d, []).append(r['val_loss_se'][d])
  summary = {**header('pilot', start), 'budgets': list(PILOT_BUDGETS), 'seeds': list(PILOT_SEEDS),
             'factor': PILOT_FACTOR, 'domains': names, 'runs': table}
  summary['analysis'] = analyse_pilot(summary)
  return summary


def analyse_pilot(p: dict) -> dict:
  """Per budget: the objective's seed noise, each domain's loss noise, and per domain the x3
  effect on the objective ratio beyond the extra tokens, in units of its seed noise (z)."""
  budgets = [int(b) for b in p['budgets']]
  base_obj = np.array([np.mean(p['runs'][str(b)]['base']['objective']) for b in budgets])
  out = {}
  for b in budgets:
    runs = p['runs'][str(b)]
    base = np.array(runs['base']['objective'])
    row = {'objective_mean': float(base.mean()),
           'objective_sd_pct': float(100 * base.std(ddof=1) / base.mean()),
           'loss_sd': {d: float(np.std(runs['base']['val_loss'][d], ddof=1)) for d in p['domains']},
           'loss_se_eval': {d: float(np.mean(runs['base']['val_loss_se'][d]))
                            for d in p['domains']},
           'domains': {}}
    for d in p['domains']:
      ratio = np.array(runs[d]['objective']) / base  # paired by seed
      more = runs[d]['tokens'] / runs['base']['tokens']
      # What the extra tokens alone do: the base runs' objective along the budget (log-log,
      # linear between the pilot budgets, extended from the last two beyond them).
      steps = float(np.exp(np.interp(np.log(b * more), np.log(budgets), np.log(base_obj),
                                     right=None))) if b * more <= budgets[-1] else float(
          np.exp(np.log(base_obj[-1]) + (np.log(base_obj[-1]) - np.log(base_obj[-2]))
                 / (np.log(budgets[-1]) - np.log(budgets[-2])) * np.log(b * more / budgets[-1])))
      steps_ratio = steps / base_obj[budgets.index(b)]
      effect = float(ratio.mean() - steps_ratio)
      sd = float(ratio.std(ddof=1))
      row['domains'][d] = {'ratio_mean': float(ratio.mean()), 'ratio_sd': sd,
                           'steps_ratio': steps_ratio, 'effect': effect,
                           'z': effect / sd if sd > 0 else float('inf')}
    out[str(b)] = row
  out['choice'] = choose_budgets(out, budgets)
  return out


def choose_budgets(rows: dict, budgets: list[int]) -> dict:
  """The rule: the smallest pilot budget b such that at b and at 4b (both measured) every
  domain's |z| >= Z_RULE; DDO runs at (b, 4b) and predicts at TARGET_FACTOR x 4b. When no pair
  passes, the pair with the largest smallest |z|, ties going to the larger budgets (and the
  report says the rule failed)."""
  pairs = [(b, 4 * b) for b in budgets if 4 * b in budgets]

  def worst(pair):
    return min(abs(rows[str(b)]['domains'][d]['z']) for b in pair for d in rows[str(b)]['domains'])

  passing = [pair for pair in pairs if worst(pair) >= Z_RULE]
  # Without a passing pair, the largest worst |z|, ties to the larger budgets (less noise).
  pair = passing[0] if passing else max(pairs, key=lambda p: (round(worst(p), 6), p))
  return {'ddo_budgets': list(pair), 'target': TARGET_FACTOR * pair[1],
          'smallest_abs_z': worst(pair), 'rule_met': bool(passing), 'rule': (
              f'smallest pilot budget b with |z| >= {Z_RULE:g} for every domain at b and 4b; '
              f'target {TARGET_FACTOR}x the larger')}


# ------------------------------------------------------------------------------ pipeline stages
def pipeline_config(stage: str) -> ml_collections.ConfigDict:
  """The study config with the pilot's budgets and what `stage` adds (validation, checks)."""
  pilot_summary = read_summary('pilot')
  choice = choose_budgets(pilot_summary['analysis'], pilot_summary['budgets'])
  small, large = choice['ddo_budgets']
  c = study_config()
  c.ddo.budgets = (small, large)
  c.ddo.replicates = 2
  c.predict.targets = (large, choice['target'])
  c.validate.enabled = stage in ('validate', 'at_ddo_budget')
  c.validate.targets = (choice['target'],) if stage == 'validate' else (large,)
  c.ddo.check_budgets = (choice['target'],) if stage == 'direct' else ()
  if stage == 'direct':
    # One replicate at the target (its 2m+1 runs are each a target-sized run); the DDO budgets'
    # results are read back as they are (a finished budget is never redone).
    c.ddo.replicates = 1
  return c


BUDGET_FILES = ('plan', 'fits', 'optimum')


def restore_budgets(workdir: epath.Path, budgets) -> None:
  """On a new machine (an empty workdir), the DDO budgets' files from the committed ddo summary:
  a budget with its optimum.json is reused as is, so later stages need none of its runs."""
  if not summary_path('ddo').exists():
    return
  saved = read_summary('ddo').get('budget_files', {})
  for b in budgets:
    folder = workdir / 'budgets' / str(b)
    if str(b) in saved and not (folder / 'optimum.json').exists():
      folder.mkdir(parents=True, exist_ok=True)
      for name in BUDGET_FILES:  # optimum.json last: its presence says the budget is done
        (folder / f'{name}.json').write_text(json.dumps(saved[str(b)][name]))
      print(f'restored budgets/{b}/ from {summary_path("ddo").relative_to(_common.ROOT)}')


def finished_runs(workdir: epath.Path) -> set[str]:
  """Fingerprints of the runs finished in `workdir` (their result.json written)."""
  return {p.parent.name for p in (workdir / 'runs').glob('*/result.json')}


def run_files(workdir: epath.Path, fingerprints) -> dict:
  """Each run's result.json, for a committed summary (a few KB each): what a later stage on
  another machine needs instead of training the run again."""
  return {f: json.loads((workdir / 'runs' / f / 'result.json').read_text())
          for f in sorted(fingerprints)}


def restore_runs(workdir: epath.Path, summaries) -> None:
  """Finished runs back into an empty workdir from committed summaries' run files: a run with
  its result.json is never trained again (its checkpoints are not kept, so a restored run
  cannot be evaluated downstream). A run with the same fingerprint already there is kept."""
  restored = 0
  for s in summaries:
    for f, record in s.get('run_files', {}).items():
      path = workdir / 'runs' / f / 'result.json'
      if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix('.tmp')
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
        restored += 1
  if restored:
    print(f'restored {restored} finished runs from committed summaries')


def run_pipeline(stage: str, workdir: epath.Path) -> dict:
  start = time.time()
  config = pipeline_config(stage)
  if stage != 'ddo':
    restore_budgets(workdir, config.ddo.budgets)
  pipeline.dispatch(config, str(workdir))
  summary = {**header(stage, start), 'ddo_budgets': list(config.ddo.budgets),
             'replicates': int(config.ddo.replicates)}
  predictions = json.loads((workdir / 'autoscale' / 'predictions.json').read_text())
  summary['prediction'] = {k: predictions[k] for k in ('domains', 'optima', 'targets', 'noise',
                                                       'pinned', 'notes')}
  summary['fits'] = {str(b): json.loads((workdir / 'budgets' / str(b) / 'fits.json').read_text())
                     for b in config.ddo.budgets}
  if stage == 'ddo':  # what a later stage on another machine needs instead of the DDO runs
    summary['budget_files'] = {
        str(b): {name: json.loads((workdir / 'budgets' / str(b) / f'{name}.json').read_text())
                 for name in BUDGET_FILES} for b in config.ddo.budgets}
  if config.validate.enabled:
    target = config.validate.targets[0]
    v = json.loads((workdir / 'validation' / f'{target}.json').read_text())
    summary['validation'] = {
        'target': target, 'seeds': v['seeds'], 'verdicts': v['verdicts'],
        'runs': {n: {k: r[k] for k in ('weights', 'objective', 'val_ppl', 'val_loss_se')} |
                 {'seed_objectives': [s['objective'] for s in r['seeds']]}
                 for n, r in v['runs'].items()}}
  if config.ddo.check_budgets:
    budget = config.ddo.check_budgets[0]
    summary['check'] = check = json.loads(
        (workdir / 'checks' / str(budget) / 'check.json').read_text())
    # predict.pinned's two modes on the same DDO results, against the DDO measured here.
    problems = [DDOProblem.from_dict(json.loads(ddo.optimum_file(workdir, b).read_text())
                                     ['problem']) for b in config.ddo.budgets]
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      summary['pinned_modes'] = {
          mode: {'weights': (w := AutoScaleModel.from_ddo(problems, mode).predict_weights(
              budget)).tolist(), 'l1': float(np.abs(w - np.asarray(check['ddo'])).sum())}
          for mode in PINNED_MODES}
  return summary


# ------------------------------------------------------------------------------ report
def interval(d: dict, fmt: str = '+.2f') -> str:
  """A seed interval for the RESULTS tables: '[low, high]', or '1 seed' when there is none."""
  return '1 seed' if d['low'] is None else f"[{format(d['low'], fmt)}, {format(d['high'], fmt)}]"


def report_section() -> str:
  """The bench/RESULTS.md section from every summary present (later stages may be missing)."""
  have = {s: json.loads(summary_path(s).read_text()) for s in STAGES[:-1]
          if summary_path(s).exists()}
  lines = ['Corpus: the demo corpus (code, speeches, plays, news); the demo model (GPT-2, 2 '
           'layers, d 128, seq 128, batch 16, BPE 4096), warmup 10% of each run, 256 validation '
           'sequences per domain, objective = mean of the four domains\' validation perplexities. '
           'Stages resume from one workdir; each wrote bench/results/scale_study/<stage>.json.', '']
  for stage, s in have.items():
    lines.append(f"- {stage}: `{s['command']}` ({s['finished']}, {s['wall_min']} min; load "
                 f"{s['load']})")
  lines.append('')
  if 'pilot' in have:
    p, a = have['pilot'], have['pilot']['analysis']
    lines += ['### Pilot: seed noise and each domain\'s effect', '',
              'Base = uniform mixture; "x3" = one domain tripled, the others fixed; 3 seeds each '
              '(seed s shares its initialization across mixtures). Objective sd: over seeds, % of '
              'the mean. Per domain: the x3 run\'s objective ratio to base (seed-paired mean ± '
              'sd), what its extra tokens alone explain (the base runs\' budget curve), the '
              'effect beyond that and z = effect / sd.', '',
              '| budget | objective | sd % | ' + ' | '.join(
                  f'{d}: ratio ± sd, steps, z' for d in p['domains']) + ' |',
              '|---|---|---|' + '---|' * len(p['domains'])]
    for b in p['budgets']:
      row = a[str(b)]
      cells = [f"{r['ratio_mean']:.4f} ± {r['ratio_sd']:.4f}, {r['steps_ratio']:.4f}, "
               f"{r['z']:+.1f}" for r in (row['domains'][d] for d in p['domains'])]
      lines.append(f"| {b:,} | {row['objective_mean']:.1f} | {row['objective_sd_pct']:.2f} | "
                   + ' | '.join(cells) + ' |')
    lines += ['', 'Per-domain validation loss: sd over seeds (base runs) vs the standard error '
              'of one evaluation (256 sequences):', '',
              '| budget | ' + ' | '.join(p['domains']) + ' |', '|---|' + '---|' * len(p['domains'])]
    for b in p['budgets']:
      row = a[str(b)]
      lines.append(f'| {b:,} | ' + ' | '.join(
          f"{row['loss_sd'][d]:.4f} vs {row['loss_se_eval'][d]:.4f}" for d in p['domains'])
          + ' |')
    c = a['choice']
    met = ('rule met' if c['rule_met'] else
           'RULE NOT MET: even the largest pilot budgets are this noisy here')
    lines += ['', f"Rule: {c['rule']}. Chosen: DDO at {c['ddo_budgets'][0]:,} and "
              f"{c['ddo_budgets'][1]:,} tokens, target {c['target']:,}; smallest |z| there "
              f"{c['smallest_abs_z']:.1f} ({met}).", '']
  for stage, title in (('validate', 'Verdicts at the target'),
                       ('at_ddo_budget', 'Verdicts at the larger DDO budget (DDO\'s own optimum)')):
    if stage not in have:
      continue
    v = have[stage]['validation']
    lines += [f'### {title}: {v["target"]:,} tokens, {len(v["seeds"])} seeds', '',
              '| baseline | predicted | baseline | difference [95%] | relative | verdict | '
              'tokens saved [95%] |', '|---|---|---|---|---|---|---|']
    for name, c in v['verdicts'].items():
      o = c['objective']
      lines.append(f"| {name} | {v['runs']['predicted']['objective']:.2f} | "
                   f"{v['runs'][name]['objective']:.2f} | {o['mean']:+.2f} {interval(o)} | "
                   f"{100 * c['relative']:+.2f}% | {o['verdict']} | "
                   f"{tables.saved_text(c['tokens_saved'])} |")
    lines.append('')
  if 'direct' in have:
    c = have['direct']['check']
    lines += ['### The extrapolation against a direct DDO at the target', '',
              f"L1 distance to the DDO optimum measured at {c['budget']:,} tokens "
              f"({c['kind']}): AutoScale {c['l1_predicted']:.3f}; the "
              f"{c['nearest_below']['budget']:,}-token optimum reused "
              f"{c['l1_reused']:.3f}.", '',
              '| domain | DDO at target | AutoScale (extrapolate) | AutoScale (hold) | reused |',
              '|---|---|---|---|---|']
    modes = have['direct']['pinned_modes']
    for i, d in enumerate(c['domains']):
      lines.append(f"| {d} | {c['ddo'][i]:.3f} | {c['predicted'][i]:.3f} | "
                   f"{modes['hold']['weights'][i]:.3f} | {c['nearest_below']['weights'][i]:.3f} |")
    lines += ['', 'predict.pinned on the same DDO results, L1 to the DDO at the target: '
              + ', '.join(f"{mode} {r['l1']:.3f}" for mode, r in modes.items()) + '.', '']
  if 'ddo' in have:
    d = have['ddo']
    ddo_tokens = sum(sum(r['quantities']) for f in d['fits'].values() for r in f['runs'])
    target = max(int(t) for t in d['prediction']['targets'])
    lines += [f'Cost: the DDO proxy runs ({len(d["ddo_budgets"])} budgets, '
              f'{d["replicates"]} replicates) trained {ddo_tokens:,.0f} tokens, '
              f'{ddo_tokens / target:.2f}x one target run of {target:,}; interval noise '
              f"{d['prediction']['noise']['source']} (sigma "
              f"{d['prediction']['noise']['sigma']:.3g}); predict.pinned = "
              f"{d['prediction']['pinned']}.", '']
  reading = SUMMARIES / 'reading.md'  # the plain reading, written by hand from the numbers
  if reading.exists():
    lines += ['### Reading', '', reading.read_text().strip(), '']
  return '\n'.join(lines)


def main() -> None:
  parser = _common.stage_parser(__doc__, '/tmp/scale_study', STAGES)
  args = parser.parse_args()
  logging.set_verbosity(logging.INFO)  # the pipeline's progress lines (no absl app here)
  pause_after(args.max_minutes)
  stage = args.stage
  if stage == 'next':
    stage = next((s for s in STAGES[:-1] if not summary_path(s).exists()), 'report')
  workdir = epath.Path(args.workdir)
  print(f'scale study: stage {stage} in {workdir}')
  if stage == 'report':
    text = report_section()
    _common.write_section('## Scale study (issue 14): does the AutoScale claim hold here?',
                          text.splitlines())
    print(text)
    return
  summary = pilot(workdir) if stage == 'pilot' else run_pipeline(stage, workdir)
  write_summary(stage, summary)


if __name__ == '__main__':
  main()
