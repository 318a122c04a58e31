"""Do DDO budgets from warmup-stable-decay trajectories hold up? A resumable study in stages.

Issue 27. The scale study's corpus, model and settings (bench/scale_study.py: the demo corpus,
2-layer GPT-2, 256 validation sequences per domain, objective = mean perplexity); its committed
cosine runs are the comparison and are not trained again. Each stage writes a small JSON summary
to bench/results/trajectories/<stage>.json, which is committed; a stage finds its runs again in
the workdir by fingerprint, and pauses (SIGTERM, checkpointed) after --max-minutes.

Stages (--stage=next, the default, runs the first one without a summary):
  equivalence  (a) uniform mixture, seeds 0-2: one 'wsd' trunk to 800k tokens with a cooldown
               branch at 200k; each against the pilot's cosine run of that budget and seed
  ddo          (b, d) DDO by trajectories at 200k, 400k and 800k, 3 replicates; the prediction
               at 3.2M with predict.pinned 'extrapolate' and 'hold'
  separate     (c) the third replicate of the scale study's cosine DDO at 200k and 800k (its
               first two are committed), for the replicate spread of the optimum's movement
  report       the bench/RESULTS.md section from the summaries (trains nothing)

  python bench/trajectories.py --workdir=/tmp/trajectories [--stage=next|NAME] [--max-minutes=75]
"""

import dataclasses
import json
import pathlib
import sys
import time
import warnings

import numpy as np
from absl import logging
from etils import epath
from scipy import stats

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _common  # noqa: E402  pylint: disable=g-import-not-at-top
import scale_study as ss  # noqa: E402  pylint: disable=g-import-not-at-top
from autoscale_jax import pipeline  # noqa: E402
from autoscale_jax.data.mixture import counts_from_weights  # noqa: E402
from autoscale_jax.mixing import (  # noqa: E402
  AutoScaleModel,
  DDOProblem,
  Perturbation,
  ddo_weights,
  fit_domains,
)
from autoscale_jax.pipeline import ddo, lock, registry, trajectories  # noqa: E402

SUMMARIES = _common.ROOT / 'bench' / 'results' / 'trajectories'
STAGES = ('equivalence', 'ddo', 'separate', 'report')
SMALL, MIDDLE, LARGE, TARGET = 200_000, 400_000, 800_000, 3_200_000
SEEDS = (0, 1, 2)
REPLICATES = 3
SECTION = '## DDO budgets from trajectories (issue 27)'
# Fixed before the runs (and written into RESULTS.md before them): how each stage is judged.
RULES = [
    '**(a) equivalent**: at both 200k and 800k, the 95% t-interval of the seed-paired '
    'difference (WSD - cosine) / cosine of the objective contains 0 and its mean is within one '
    "seed sd of the cosine runs' objective (the pilot's, in %).",
    '**(c) less noisy**: the replicate sd of the optimum\'s movement from 200k to 800k (the '
    'change of each weight, sd over replicates, root mean square over domains) is at most 0.75x '
    "that of separate runs (a point comparison of 3 and 3 replicates; an F-test's p-value is "
    'given beside it).',
    '**(b), (d), (e)** are reported, not judged: the L1 distances next to their noise floors, the '
    'tokens next to the scale study\'s.',
    '**Defaults**: the shipped configs switch to trajectories with 3 budgets only if (a) and (c) '
    'both hold; otherwise separate runs stay the default and trajectories an option.',
]


def summary_path(stage: str) -> pathlib.Path:
  return SUMMARIES / f'{stage}.json'


def read_summary(stage: str) -> dict:
  return json.loads(summary_path(stage).read_text())


def t_interval(x: np.ndarray) -> dict:
  """Mean and 95% t-interval of paired differences."""
  x = np.asarray(x, np.float64)
  half = stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size)
  return {'mean': float(x.mean()), 'low': float(x.mean() - half), 'high': float(x.mean() + half),
          'values': x.tolist()}


# ------------------------------------------------------------------------------ (a)
def equivalence(workdir: epath.Path) -> dict:
  """Uniform trunks to 800k with a branch at 200k, seeds 0-2, against the pilot's cosine runs."""
  start = time.time()
  config = ss.study_config()
  pilot = ss.read_summary('pilot')
  with lock.workdir_lock(workdir):
    exp = registry.Experiment(config, workdir)
    m = len(exp.mix_names)
    counts = exp.full(counts_from_weights(np.full(m, 1.0 / m), LARGE, exp.seq_len))
    warmup, points = trajectories.layout(config, [SMALL, LARGE], [counts] * len(SEEDS))
    tops = [registry.RunSpec(f'uniform seed{s}', counts, s) for s in SEEDS]
    trunks = ddo.trajectory_specs(exp, tops, [SMALL, LARGE], warmup, points)
    at_large = exp.train(trunks, f'equivalence trunks @ {LARGE:,}')
    at_small = exp.train([t.branches[0] for t in trunks], f'equivalence branches @ {SMALL:,}')
  out = {**ss.header('equivalence', start), 'warmup_steps': warmup, 'seeds': list(SEEDS),
         'budgets': {}}
  for budget, results in ((SMALL, at_small), (LARGE, at_large)):
    cosine = pilot['runs'][str(budget)]['base']
    wsd = np.array([r['objective'] for r in results])
    cos = np.array(cosine['objective'])
    out['budgets'][str(budget)] = {
        'wsd': wsd.tolist(), 'cosine': cos.tolist(),
        'wsd_tokens': int(sum(results[0]['trained_tokens'])), 'cosine_tokens': cosine['tokens'],
        'relative_pct': t_interval(100 * (wsd - cos) / cos),
        'cosine_sd_pct': float(100 * cos.std(ddof=1) / cos.mean()),
        'val_loss_diff': {d: t_interval(np.array([r['val_loss'][d] for r in results])
                                        - np.array(cosine['val_loss'][d]))
                          for d in exp.mix_names}}
  return out


# ------------------------------------------------------------------------------ (b, d)
def ddo_config():
  c = ss.study_config()
  c.ddo.budgets = (SMALL, MIDDLE, LARGE)
  c.ddo.replicates = REPLICATES
  c.ddo.trajectories = True
  c.predict.targets = (LARGE, TARGET)
  c.validate.enabled = False
  return c


def replicate_optima(fits_json: dict, optimum_json: dict) -> dict[int, list[float]]:
  """Each replicate's own DDO optimum: its 2m+1 runs fitted alone, solved with the budget's
  bounds."""
  problem = DDOProblem.from_dict(optimum_json['problem'])
  runs = fits_json['runs']
  out = {}
  for rep in sorted({r['replicate'] for r in runs}):
    mine = [r for r in runs if r['replicate'] == rep]
    plan = [Perturbation(r['domain'], r['factor'], r['replicate'],
                         np.asarray(r['quantities'], np.float64)) for r in mine]
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      fits = fit_domains(plan, [r['objective'] for r in mine])
    base = plan[next(k for k, r in enumerate(mine) if r['domain'] is None)].quantities
    own = dataclasses.replace(problem, fits=tuple(fits), base_quantities=base)
    out[rep] = ddo_weights(own.multipliers(), base).tolist()
  return out


def run_ddo(workdir: epath.Path) -> dict:
  start = time.time()
  config = ddo_config()
  pipeline.dispatch(config, str(workdir))
  budgets = {}
  for b in config.ddo.budgets:
    folder = workdir / 'budgets' / str(b)
    files = {name: json.loads((folder / f'{name}.json').read_text())
             for name in ('plan', 'fits', 'optimum')}
    budgets[str(b)] = {**files, 'replicate_optima': replicate_optima(files['fits'],
                                                                     files['optimum'])}
  predictions = json.loads((workdir / 'autoscale' / 'predictions.json').read_text())
  problems = [DDOProblem.from_dict(budgets[str(b)]['optimum']['problem'])
              for b in config.ddo.budgets]
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    modes = {mode: {str(n): AutoScaleModel.from_ddo([problems[i] for i in idx], mode)
                    .predict_weights(TARGET).tolist()
                    for n, idx in (('2', (0, 2)), ('3', (0, 1, 2)))}
             for mode in ('extrapolate', 'hold')}
  return {**ss.header('ddo', start), 'budgets': budgets, 'predictions': {
      k: predictions[k] for k in ('domains', 'optima', 'targets', 'noise', 'pinned', 'notes',
                                  'path') if k in predictions}, 'at_target': modes}


# ------------------------------------------------------------------------------ (c)
def separate(workdir: epath.Path) -> dict:
  """Replicate 2 of the scale study's cosine DDO (same config, so replicates 0-1 would be the
  committed runs): its 2m+1 runs at 200k and 800k, and its own optimum at each."""
  start = time.time()
  config = ss.study_config()
  config.ddo.budgets, config.ddo.replicates = (SMALL, LARGE), REPLICATES
  committed = ss.read_summary('ddo')['budget_files']
  out = {'budgets': {}}
  with lock.workdir_lock(workdir):
    exp = registry.Experiment(config, workdir)
    for b in (SMALL, LARGE):
      plan, specs, _ = ddo.ddo_plan(config, exp.names, exp.natural, exp.trainable, b,
                                    exp.seq_len)
      mine = [k for k, p in enumerate(plan) if p.replicate == REPLICATES - 1]
      results = exp.train([specs[k] for k in mine], f'separate replicate 2 @ {b:,}')
      fits = {'runs': committed[str(b)]['fits']['runs'] + [
          {'name': specs[k].name, 'objective': r['objective'], **plan[k].to_dict()}
          for k, r in zip(mine, results)]}
      out['budgets'][str(b)] = {'runs': fits['runs'][-len(mine):], 'replicate_optima':
                                replicate_optima(fits, committed[str(b)]['optimum'])}
  return {**ss.header('separate', start), **out}  # the header once the stage is done


# ------------------------------------------------------------------------------ report
def movement_sd(optima_small: dict, optima_large: dict) -> tuple[float, int]:
  """Root mean square over domains of the replicate sd of w(800k) - w(200k); its dof."""
  moves = np.array([np.subtract(optima_large[r], optima_small[r]) for r in optima_small])
  return float(np.sqrt(np.mean(moves.var(axis=0, ddof=1)))), (len(moves) - 1) * (
      moves.shape[1] - 1)


def l1(a, b) -> float:
  return float(np.abs(np.subtract(a, b)).sum())


def fmt_interval(d: dict) -> str:
  return f"{d['mean']:+.2f}% [{d['low']:+.2f}, {d['high']:+.2f}]"


def report_section() -> str:
  have = {s: read_summary(s) for s in STAGES[:-1] if summary_path(s).exists()}
  lines = ['Issue 27: every DDO budget from one warmup-stable-decay (WSD) trunk per plan entry '
           '(ddo.trajectories), cooldown 20% of each run, 1-sqrt shape, to 0.1 lr. The scale '
           "study's corpus, model and settings; its committed cosine runs are the comparison. "
           'Each stage wrote bench/results/trajectories/<stage>.json.', '',
           '### Decision rules (written before the runs)', '', *[f'- {r}' for r in RULES], '']
  for stage, s in have.items():
    lines.append(f"- {stage}: `{s['command']}` ({s['finished']}, {s['wall_min']} min; load "
                 f"{s['load']})")
  lines.append('')
  verdict = {}
  if 'equivalence' in have:
    e = have['equivalence']
    lines += ['### (a) WSD against cosine, uniform mixture, seeds 0-2', '',
              f"Trunk to 800k with a branch at 200k; warmup {e['warmup_steps']} steps for both "
              '(the cosine runs: 10% of their own). Objective (mean perplexity) per seed, and the '
              'seed-paired relative difference with its 95% t-interval (2 dof).', '',
              '| budget | WSD | cosine | (WSD - cosine) / cosine [95%] | cosine seed sd | '
              'equivalent |', '|---|---|---|---|---|---|']
    ok = []
    for b, row in e['budgets'].items():
      r = row['relative_pct']
      eq = r['low'] <= 0 <= r['high'] and abs(r['mean']) <= row['cosine_sd_pct']
      ok.append(eq)
      lines.append(f"| {int(b):,} | {', '.join(f'{v:.2f}' for v in row['wsd'])} | "
                   f"{', '.join(f'{v:.2f}' for v in row['cosine'])} | {fmt_interval(r)} | "
                   f"{row['cosine_sd_pct']:.2f}% | {'yes' if eq else 'no'} |")
    verdict['a'] = all(ok)
    lines += ['', f"(a) {'holds' if verdict['a'] else 'does not hold'}.", '']
  scale = ss.read_summary('ddo')
  cos_opt = {b: scale['budget_files'][str(b)]['optimum']['weights'] for b in (SMALL, LARGE)}
  cos_rep = {b: replicate_optima(scale['budget_files'][str(b)]['fits'],
                                 scale['budget_files'][str(b)]['optimum']) for b in (SMALL, LARGE)}
  if 'ddo' in have:
    d = have['ddo']
    lines += ['### (b) The optimum by trajectories against the cosine DDO', '',
              '| budget | trajectories (3 replicates) | cosine (scale study, 2 replicates) | L1 | '
              'noise floor: L1 between the cosine replicates |', '|---|---|---|---|---|']
    for b in (SMALL, LARGE):
      w = d['budgets'][str(b)]['optimum']['weights']
      lines.append(f"| {b:,} | {', '.join(f'{x:.3f}' for x in w)} | "
                   f"{', '.join(f'{x:.3f}' for x in cos_opt[b])} | {l1(w, cos_opt[b]):.3f} | "
                   f"{l1(cos_rep[b][0], cos_rep[b][1]):.3f} |")
    lines.append('')
  if 'ddo' in have and 'separate' in have:
    d, s = have['ddo'], have['separate']
    traj = movement_sd(*(d['budgets'][str(b)]['replicate_optima'] for b in (SMALL, LARGE)))
    sep_opt = {b: {**{str(k): v for k, v in cos_rep[b].items()},
                   **s['budgets'][str(b)]['replicate_optima']} for b in (SMALL, LARGE)}
    sep = movement_sd(sep_opt[SMALL], sep_opt[LARGE])
    ratio = traj[0] / sep[0]
    p = float(stats.f.cdf(ratio**2, traj[1], sep[1]))
    verdict['c'] = ratio <= 0.75
    lines += ['### (c) Noise of the movement from 200k to 800k', '',
              '| | replicates | sd of the movement (rms over domains) |', '|---|---|---|',
              f'| trajectories | {REPLICATES} | {traj[0]:.4f} |',
              f'| separate runs | {REPLICATES} | {sep[0]:.4f} |', '',
              f"Ratio {ratio:.2f} (F-test, one-sided, trajectories less noisy: p = {p:.2f}); "
              f"(c) {'holds' if verdict['c'] else 'does not hold'}.", '']
  if 'ddo' in have:
    d = have['ddo']
    direct = ss.read_summary('direct')['check']
    lines += ['### (d) Extrapolation to 3.2M from three budgets', '',
              f'L1 to the committed direct DDO at {TARGET:,} (one replicate; its own noise floor '
              'is the L1 between two replicates at 800k in (b): '
              f'{l1(cos_rep[LARGE][0], cos_rep[LARGE][1]):.3f}).', '',
              '| prediction | from | L1 |', '|---|---|---|']
    for mode in ('extrapolate', 'hold'):
      for n in ('2', '3'):
        lines.append(f"| {mode} | trajectories, {n} budgets | "
                     f"{l1(d['at_target'][mode][n], direct['ddo']):.3f} |")
    modes = ss.read_summary('direct')['pinned_modes']
    lines += [f"| extrapolate | separate cosine runs, 2 budgets (scale study) | "
              f"{modes['extrapolate']['l1']:.3f} |",
              f"| hold | separate cosine runs, 2 budgets (scale study) | "
              f"{modes['hold']['l1']:.3f} |",
              f"| reuse the 800k optimum | trajectories | "
              f"{l1(d['budgets'][str(LARGE)]['optimum']['weights'], direct['ddo']):.3f} |",
              f"| reuse the 800k optimum | separate cosine runs (scale study) | "
              f"{direct['l1_reused']:.3f} |", '']
    path, noise = d['predictions']['path'], d['predictions']['noise']
    lines += [f"Do the three optima follow one path (AutoScaleModel.path_test)? "
              f"**{path['verdict']}**: RMS log-quantity residual {path['residual']:.3f} against "
              f"{path['null_median']:.3f} (median; 95th percentile {path['null_95']:.3f}) from "
              "the measured noise alone, p "
              f"= {path['p_value']:.2f}. The noise measured from the 3 replicates: sigma "
              f"{noise['sigma']:.3f} of the objective ratio ({noise['dof']} dof; the scale "
              'study\'s cosine runs: 0.072).', '']
    trained = sum(r['trained_tokens'] for b in d['budgets'].values() for r in b['plan']['runs'])
    separate_cost = sum(sum(r['quantities']) for b in d['budgets'].values()
                        for r in b['plan']['runs'])
    scale_cost = sum(sum(r['quantities']) for f in scale['fits'].values() for r in f['runs'])
    lines += ['### (e) Cost', '',
              f'Trajectories, 3 budgets, 3 replicates: {trained:,.0f} proxy tokens; the same '
              f'runs trained separately: {separate_cost:,.0f}; the scale study (2 budgets, 2 '
              f'replicates, separate runs): {scale_cost:,.0f}.', '']
  reading = SUMMARIES / 'reading.md'
  if reading.exists():
    lines += ['### Reading', '', reading.read_text().strip(), '']
  return '\n'.join(lines)


def main() -> None:
  parser = _common.stage_parser(__doc__, '/tmp/trajectories', STAGES)
  args = parser.parse_args()
  logging.set_verbosity(logging.INFO)
  ss.pause_after(args.max_minutes)
  stage = args.stage
  if stage == 'next':
    stage = next((s for s in STAGES[:-1] if not summary_path(s).exists()), 'report')
  workdir = epath.Path(args.workdir)
  print(f'trajectories study: stage {stage} in {workdir}')
  if stage == 'report':
    text = report_section()
    _common.write_section(SECTION, text.splitlines())
    print(text)
    return
  summary = {'equivalence': equivalence, 'ddo': run_ddo, 'separate': separate}[stage](workdir)
  ss.write_json(summary_path(stage), summary)


if __name__ == '__main__':
  main()
