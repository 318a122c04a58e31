"""Which prediction rule should the product use? A simulation over many synthetic worlds.

Issue 28. Every world (pipeline/worlds.py: a per-domain power law with cross-domain transfer,
seed noise with a component shared by the runs of one seed) is run through the product's own
plan, fits, solve and prediction (mixing/), without training: each DDO run's losses are read off
the world (policy_worlds.py, one world at a time). Every policy's mixture is then scored at 4x
and 30x the largest DDO budget with the world's clean objective against its true optimum there.
The rule and the scoring were fixed in bench/RESULTS.md ("Prediction policies under noise")
before the first stage ran; decisions() applies its two decision rules.

Stages (--stage=next, the default, runs the first without a summary in bench/results/policies/):
  cpu, cpu-noisy, paper, noiseless
                         WORLDS worlds of the preset (PRESETS) x 1, 2 and 4 replicates; one
                         JSON per world and replicate count in the workdir (a rerun skips those),
                         then the stage's summary <stage>.json
  real                   every policy that the committed results allow on the scale study's real
                         DDO (bench/results/scale_study, compare, trajectories), against the DDO
                         measured at the target and the validated objectives
  report                 prints the markdown tables of RESULTS.md from the summaries

  python bench/policies.py --workdir=/tmp/policies [--stage=next|NAME] [--max-minutes=75]

Everything is seeded (worlds by their index, replicates by their seed, the swarm's mixtures by
the world): `python bench/policies.py` in a fresh workdir, stage after stage, writes the same
summaries (numbers rounded to 6 decimals; the run's time and load are kept apart under 'run').
"""

import datetime
import json
import pathlib
import sys
import time
import warnings

import numpy as np
from etils import epath

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _common  # noqa: E402  pylint: disable=g-import-not-at-top
from autoscale_jax.lead import write_json  # noqa: E402
from autoscale_jax.mixing import DDOProblem, conservative  # noqa: E402
from autoscale_jax.mixing.confidence import paired_difference  # noqa: E402
from policy_worlds import (  # noqa: E402
  GRID,
  LEVEL,
  POLICIES,
  PRESETS,
  RHO,
  SAMPLES,
  TARGETS,
  autoscale,
  budgets_of,
  fallback_noise,
  simulate,
)

SUMMARIES = _common.ROOT / 'bench' / 'results' / 'policies'
STAGES = (*PRESETS, 'real', 'report')
WORLDS = 200
REPLICATES = (1, 2, 4)
HARM = 0.005  # "worse than uniform": the objective more than 0.5% above uniform's


# ------------------------------------------------------------------------------ the stages
def world_file(workdir: epath.Path, preset: str, replicates: int, seed: int) -> epath.Path:
  return workdir / preset / f'r{replicates}' / f'world{seed:04d}.json'


def _r6(x) -> float:
  return round(float(x), 6)


def scores(results: list[dict], t: int) -> dict:
  """Per policy, over worlds: regret (J / J* - 1, %) median and p90, share worse than uniform by
  more than HARM, and the mean gain over uniform (1 - J / J_uniform, %)."""
  optimum = np.array([r['optimum'][t] for r in results])
  uniform = np.array([r['values']['uniform'][t] for r in results])
  out = {}
  for key in POLICIES:
    v = np.array([r['values'][key][t] for r in results])
    regret = 100 * (v / optimum - 1)
    out[key] = {'regret_median': _r6(np.median(regret)),
                'regret_p90': _r6(np.percentile(regret, 90)),
                'worse_share': _r6(np.mean(v / uniform - 1 > HARM)),
                'gain_mean': _r6(100 * np.mean(1 - v / uniform))}
  return out


def run_preset(preset: str, workdir: epath.Path, deadline: float) -> dict | None:
  """Simulates every world not yet on disk; the summary once all are (None if paused)."""
  start = time.time()
  fallback = fallback_noise(preset)
  for replicates in REPLICATES:
    for seed in range(WORLDS):
      path = world_file(workdir, preset, replicates, seed)
      if path.exists():
        continue
      if time.time() > deadline:
        print(f'[policies] paused at {preset} r{replicates} world {seed}; rerun to resume')
        return None
      write_json(path, simulate(preset, seed, replicates, fallback))
  _, m, largest, fields = PRESETS[preset]
  settings, fractions = {}, {}
  for replicates in REPLICATES:
    results = [json.loads(world_file(workdir, preset, replicates, s).read_text())
               for s in range(WORLDS)]
    settings[f'r{replicates}'] = {f'{ratio}x': scores(results, t)
                                  for t, ratio in enumerate(TARGETS)}
    fractions[f'r{replicates}'] = {
        prior: {'median': _r6(np.median([r['fraction'][prior] for r in results])),
                'zero_share': _r6(np.mean([r['fraction'][prior] == 0 for r in results])),
                'one_share': _r6(np.mean([r['fraction'][prior] == 1 for r in results]))}
        for prior in ('uniform', 'natural')}
    fractions[f'r{replicates}']['sigma_median'] = _r6(np.median(
        [r['sigma'] or 0.0 for r in results]))
    fractions[f'r{replicates}']['fell_back'] = {
        str(ratio): {k: sum(k in r['fell_back'][str(ratio)] for r in results)
                     for k in sorted({k for r in results for k in r['fell_back'][str(ratio)]})}
        for ratio in TARGETS}
  outside = [json.loads(world_file(workdir, preset, 1, s).read_text())['natural_outside']
             for s in range(WORLDS)]
  return {'preset': PRESETS[preset][0], 'synthetic': fields, 'domains': m,
          'budgets': list(budgets_of(largest)),
          'targets': [r * largest for r in TARGETS], 'worlds': WORLDS,
          'replicates': list(REPLICATES), 'fallback_noise': _r6(fallback), 'rho': RHO,
          'harm': HARM, 'natural_outside_share': _r6(np.mean(outside)),
          'settings': settings, 'conservative': fractions,
          'run': {'command': _common.command(), 'wall_min': round((time.time() - start) / 60, 1),
                  'load': _common.load(), 'machine': _common.machine(),
                  'finished': f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}'}}


# ------------------------------------------------------------------------------ real data
def _load(path: str) -> dict:
  return json.loads((_common.ROOT / 'bench' / 'results' / path).read_text())


def _measured(weights: np.ndarray, validated: dict) -> dict | None:
  """The validated objective of a mixture equal to `weights` (within 1e-6), if one was run."""
  for name, v in validated.items():
    if np.allclose(v['weights'], weights, atol=1e-6):
      return {'as': name, **{k: v[k] for k in ('objective', 'vs_uniform')}}
  return None


def real() -> dict:
  """Every policy the committed real results allow: the scale study's DDO (200k and 800k, 2
  replicates, sigma measured) predicts 3.2M; the DDO measured at 3.2M (direct.json) and the
  3-seed validations (validate.json, compare.json) judge it."""
  study, direct = _load('scale_study/ddo.json'), _load('scale_study/direct.json')['check']
  runs = _load('scale_study/validate.json')['validation']['runs']
  compare, traj = _load('compare/compare.json'), _load('trajectories/ddo.json')['at_target']
  problems = [DDOProblem.from_dict(study['budget_files'][b]['optimum']['problem'])
              for b in sorted(study['budget_files'], key=int)]
  sigma, target = study['prediction']['noise']['sigma'], int(direct['budget'])
  names = study['prediction']['domains']
  m, natural = len(names), np.asarray(runs['natural']['weights'])
  uniform = np.full(m, 1.0 / m)
  validated = {}
  for name, r in runs.items():
    d = paired_difference(r['seed_objectives'], runs['uniform']['seed_objectives'])
    validated[name] = {'weights': r['weights'], 'objective': _r6(r['objective']),
                       'vs_uniform': {'mean': _r6(d.mean), 'low': _r6(d.low), 'high': _r6(d.high),
                                      'verdict': d.verdict}}
  for name, r in compare['methods'].items():
    if r.get('weights') is not None and name not in validated:
      validated[name] = {'weights': r['weights'], 'objective': _r6(r['objective']['mean']),
                         'vs_uniform': {k: r['vs_uniform'][k] for k in ('mean', 'low', 'high',
                                                                         'verdict')}}
  answer = problems[-1].optimum() / problems[-1].budget
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    shrunk = {prior: conservative.shrink(problems[-1], w, answer, level=LEVEL, samples=SAMPLES,
                                         noise=sigma, seed=0, grid=GRID)
              for prior, w in (('uniform', uniform), ('natural', natural))}
  weights = {'uniform': uniform, 'natural': natural, 'reuse': answer,
             'extrapolate-2': autoscale(problems, 'extrapolate', target)[0],
             'hold-2': autoscale(problems, 'hold', target)[0],
             'traj-extrapolate-3': np.asarray(traj['extrapolate']['3']),
             'traj-hold-3': np.asarray(traj['hold']['3']),
             'mixing_law': np.asarray(compare['methods']['mixing_law']['weights'])}
  for key, plain in (('cons-hold-2', 'hold-2'), ('cons-reuse', 'reuse')):
    weights[key] = conservative.blend(uniform, weights[plain], shrunk['uniform'].fraction)
  weights['cons-natural-hold-2'] = conservative.blend(natural, weights['hold-2'],
                                                      shrunk['natural'].fraction)
  ratios = conservative.ratio_intervals(problems[-1], list(weights.values()), level=LEVEL,
                                        samples=SAMPLES, noise=sigma, seed=0)
  rows = {}
  for (key, w), ratio in zip(weights.items(), ratios):
    rows[key] = {'weights': [_r6(v) for v in w],
                 'l1_to_direct': _r6(np.abs(w - np.asarray(direct['ddo'])).sum()),
                 'predicted_ratio_800k': [_r6(v) for v in ratio],
                 'extrapolated_at_800k': [names[i] for i in
                                          conservative.extrapolated_domains(problems[-1], w)],
                 'measured': _measured(w, validated)}
  return {'domains': names, 'target': target, 'sigma': sigma, 'direct_ddo': direct['ddo'],
          'conservative': {k: {'fraction': s.fraction, 'gain': _r6(s.gain),
                               'lower': _r6(s.lower), 'evidence': s.evidence,
                               'prior_extrapolated': [names[i] for i in s.prior_extrapolated]}
                           for k, s in shrunk.items()},
          'natural_multipliers_800k': [_r6(v) for v in natural * m], 'policies': rows,
          'run': {'command': _common.command(),
                  'finished': f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}'}}


# ------------------------------------------------------------------------------ the report
NOISY = ('cpu', 'cpu-noisy', 'paper')


def decisions(summaries: dict) -> list[str]:
  """The rules fixed beforehand (RESULTS.md), applied to the noisy presets' 18 settings."""
  cells = [summaries[p]['settings'][r][t] for p in NOISY if p in summaries
           for r in summaries[p]['settings'] for t in summaries[p]['settings'][r]]
  need = 14  # of the 18 noisy settings: 3 presets x 3 replicate counts x 2 targets
  safe = sum(c['cons-hold-2']['worse_share'] <= c['hold-2']['worse_share']
             and c['cons-hold-2']['regret_median'] <= c['hold-2']['regret_median'] + 0.1
             for c in cells)
  ct = sum(c['ct-hold-2']['regret_median'] < c['hold-2']['regret_median'] for c in cells)
  complete = len(cells) == 18
  return [f'- D1: cons-hold-2 does no more harm than hold-2 and costs at most 0.1 points of '
          f'median regret in {safe} of {len(cells)} noisy settings (needs {need} of 18): '
          f"predict.policy default -> {'conservative' if complete and safe >= need else 'plain'}.",
          f'- D2: ct-hold-2 has a lower median regret than hold-2 in {ct} of {len(cells)} (needs '
          f"{need} of 18): ddo.plan 'constant_total' "
          f"{'becomes' if complete and ct >= need else 'does not become'} a product option."]


def report() -> list[str]:
  summaries = {p: json.loads((SUMMARIES / f'{p}.json').read_text())
               for p in PRESETS if (SUMMARIES / f'{p}.json').exists()}
  lines = []
  for preset, s in summaries.items():
    for t in (f'{r}x' for r in TARGETS):
      lines += ['', f"**{preset}** ({s['domains']} domains, DDO at "
                f"{', '.join(f'{b:,.0f}' for b in s['budgets'])}; target {t}; {s['worlds']} "
                'worlds): regret median / p90 (%), share worse than uniform by >0.5%, mean gain '
                'over uniform (%)', '']
      header = ['policy'] + [f'{r[1:]} replicate(s)' for r in s['settings']]
      rows = [[key] + [f"{c['regret_median']:.2f} / {c['regret_p90']:.2f}, "
                       f"{100 * c['worse_share']:.0f}%, {c['gain_mean']:+.2f}"
                       for c in (s['settings'][r][t][key] for r in s['settings'])]
              for key in POLICIES]
      lines += _common.table(header, rows)
  return lines + [''] + real_table() + [''] + decisions(summaries)


def real_table() -> list[str]:
  """The real-data check as a table (from real.json)."""
  path = SUMMARIES / 'real.json'
  if not path.exists():
    return []
  r = json.loads(path.read_text())
  rows = []
  for key, p in r['policies'].items():
    point, lo, hi = p['predicted_ratio_800k']
    m = p['measured']
    rows.append([key, ', '.join(f'{w:.3f}' for w in p['weights']), f"{p['l1_to_direct']:.3f}",
                 f'{point:.3f} [{lo:.3f}, {hi:.3f}]',
                 '' if m is None else f"{m['objective']:.2f} ({m['as']}); "
                 f"{m['vs_uniform']['mean']:+.2f} [{m['vs_uniform']['low']:+.2f}, "
                 f"{m['vs_uniform']['high']:+.2f}] {m['vs_uniform']['verdict']}"])
  c = r['conservative']
  return [f"Real text ({', '.join(r['domains'])}; the scale study's DDO at 200k and 800k, 2 "
          f"replicates, sigma {r['sigma']:.4f}; target {r['target']:,}). Conservative fraction: "
          f"prior uniform {c['uniform']['fraction']:.2f} (lower bound "
          f"{c['uniform']['lower']:+.4f}),"
          f" prior natural {c['natural']['fraction']:.2f} ({c['natural']['lower']:+.4f}). Natural "
          f"multipliers at 800k: {', '.join(f'{v:.2f}' for v in r['natural_multipliers_800k'])} "
          '(tested: 0.2-3).', '',
          *_common.table(['policy', 'weights', 'L1 to DDO at target', 'fitted ratio at 800k [90%]',
                          'measured at target (3 seeds); minus uniform [95%]'], rows, 'lllll')]


def main() -> None:
  args = _common.stage_parser(__doc__, '/tmp/policies', STAGES).parse_args()
  stage = args.stage
  if stage == 'next':
    stage = next((s for s in STAGES[:-1] if not (SUMMARIES / f'{s}.json').exists()), 'report')
  deadline = time.time() + 60 * args.max_minutes
  if stage == 'report':
    print('\n'.join(report()))
    return
  summary = real() if stage == 'real' else run_preset(stage, epath.Path(args.workdir), deadline)
  if summary is not None:
    SUMMARIES.mkdir(parents=True, exist_ok=True)
    (SUMMARIES / f'{stage}.json').write_text(json.dumps(summary, indent=1) + '\n')
    print(f'[policies] {stage}: wrote {SUMMARIES / stage}.json')


if __name__ == '__main__':
  main()
