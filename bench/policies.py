"""Which prediction rule should the product use? A simulation over many synthetic worlds.

Issue 28. Every world (pipeline/worlds.py: a per-domain power law with cross-domain transfer,
seed noise with a component shared by the runs of one seed) is run through the product's own
plan, fits, solve and prediction (mixing/), without training: each DDO run's losses are read off
the world. Every policy's mixture is then scored at 4x and 30x the largest DDO budget with the
world's clean objective against its true optimum there. The rule and the scoring were fixed in
bench/RESULTS.md ("Prediction policies under noise") before the first stage ran; RULES below is
that text.

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
from autoscale_jax.errors import UserError  # noqa: E402
from autoscale_jax.lead import write_json  # noqa: E402
from autoscale_jax.mixing import (  # noqa: E402
  AutoScaleModel,
  DDOProblem,
  Perturbation,
  conservative,
  fit_domains,
  perturbation_plan,
)
from autoscale_jax.mixing.confidence import combine_noise, paired_difference  # noqa: E402
from autoscale_jax.mixing.mixing_law import MixingLaw  # noqa: E402
from autoscale_jax.mixing.powerlaw import fit_power_law  # noqa: E402
from autoscale_jax.pipeline import worlds  # noqa: E402
from autoscale_jax.pipeline.ddo import replicate_noise  # noqa: E402

SUMMARIES = _common.ROOT / 'bench' / 'results' / 'policies'
# Stage -> (world preset, domains, largest DDO budget B, config.synthetic fields over the preset's).
# cpu-noisy: the cpu preset with its noise raised 0.055 -> 0.15 nats, 0.072 / 0.027 times, so that
# its pooled objective-ratio noise is the 0.072 the scale study measured on real text (the cpu
# preset's is 0.027: its 200k runs are 2-4x quieter than the pilot's, docs/design.md).
PRESETS = {'cpu': ('cpu', 4, 800_000.0, {}), 'cpu-noisy': ('cpu', 4, 800_000.0, {'noise': 0.15}),
           'paper': ('paper', 7, 1.2e9, {}), 'noiseless': ('noiseless', 7, 1.2e9, {})}
STAGES = (*PRESETS, 'real', 'report')
WORLDS = 200
REPLICATES = (1, 2, 4)
TARGETS = (4, 30)  # x the largest DDO budget
FACTORS, LOWER, UPPER = (0.2, 3.0), 0.2, 3.0  # the product's ddo.factors and its bounds
LEVEL, SAMPLES, GRID = 0.9, 100, 21  # predict.interval_level, interval_samples; the path grid
HARM = 0.005  # "worse than uniform": the objective more than 0.5% above uniform's
# Trajectory branches share part of their trunk's run noise: rho = 1 - 0.59^2, where 0.59 is the
# measured ratio of the optimum's movement sd, trajectories over separate runs (issue 27, (c)).
RHO = 0.65
CALIBRATION_WORLDS = range(10_000, 10_020)  # for the 1-replicate fallback noise, not studied
_TRUNK = 1 << 40  # seed offset keying a trajectory's own noise apart from any run's
SECTION = '## Prediction policies under noise (issue 28)'
POLICIES = {
    'uniform': 'equal weights',
    'natural': "the world's natural shares",
    'mixing_law': 'the mixing law fitted to a Dirichlet swarm at the largest budget, as many runs '
                  "as the 3-budget DDO's tokens buy, its optimum used as is",
    'reuse': 'the largest budget\'s DDO optimum as is',
    'extrapolate-2': 'AutoScale, every domain follows the law, budgets B/4 and B',
    'hold-2': "AutoScale, domains on a bound or shrinking held (the product's default), B/4, B",
    'extrapolate-3': 'AutoScale extrapolate, budgets B/4, B/2, B',
    'hold-3': 'AutoScale hold, budgets B/4, B/2, B',
    'traj-extrapolate-3': 'extrapolate-3 on trajectory runs (noise correlated by RHO)',
    'traj-hold-3': 'hold-3 on trajectory runs',
    'ct-reuse': 'reuse, constant-total plan with per-domain own-loss fits',
    'ct-hold-2': 'hold-2, constant-total plan',
    'ct-hold-3': 'hold-3, constant-total plan',
    'cons-hold-2': 'conservative rule, prior uniform, on hold-2',
    'cons-hold-3': 'conservative rule, prior uniform, on hold-3',
    'cons-reuse': 'conservative rule, prior uniform, on reuse',
    'cons-natural-hold-2': 'conservative rule, prior natural, on hold-2',
}


# ------------------------------------------------------------------------------ one world
def budgets_of(largest: float) -> tuple[float, float, float]:
  return largest / 4, largest / 2, largest


def plan_of(m: int, budget: float, replicates: int, constant_total: bool) -> list[Perturbation]:
  """The product's DDO plan (uniform base, factors 1/5 and 3); constant_total rescales the other
  domains so that every run trains `budget` tokens."""
  plan = perturbation_plan(np.full(m, budget / m), FACTORS, replicates)
  if not constant_total:
    return plan
  out = []
  for p in plan:
    q = p.quantities.copy()
    if p.domain is not None:
      others = np.arange(m) != p.domain
      q[others] *= (budget - q[p.domain]) / q[others].sum()
    out.append(Perturbation(p.domain, p.factor, p.replicate, q))
  return out


def losses_of(world: worlds.World, plan: list[Perturbation],
              trunk_scale: float | None) -> np.ndarray:
  """Per-domain losses of the plan's runs; trunk_scale (largest budget / this budget) makes
  them trajectory branches: a share RHO of the run's own noise is its trunk's, common to the
  branches of one plan entry at every budget."""
  tokens = np.array([p.quantities for p in plan])
  seeds = np.array([p.replicate for p in plan], np.int64)
  if trunk_scale is None:
    return world.losses(tokens, seeds)
  own = (np.sqrt(RHO) * world.run_noise(tokens * trunk_scale, seeds + _TRUNK)
         + np.sqrt(1 - RHO) * world.run_noise(tokens, seeds))
  z = np.sqrt(world.shared) * world.seed_noise(seeds) + np.sqrt(1 - world.shared) * own
  return world.clean(tokens) + world.noise_sd(tokens.sum(-1)) * z


def problem_of(world: worlds.World, plan: list[Perturbation], losses: np.ndarray,
               constant_total: bool) -> DDOProblem:
  """The DDO problem the product would build: one law per domain of the objective ratio over
  the base and that domain's runs; constant_total: one law per domain of its own share of the
  objective (c_d e^L_d / base objective) over all 2m+1 runs."""
  objectives = world.objective(losses)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    if not constant_total:
      fits = fit_domains(plan, objectives)
    else:
      base = plan[0].quantities
      base_objective = objectives[[k for k, p in enumerate(plan) if p.domain is None]].mean()
      shares = np.exp(losses) * world.weights_of_objective() / base_objective
      x = np.array([p.quantities for p in plan]) / base
      fits = [fit_power_law(x[:, d], shares[:, d]) for d in range(world.m)]
  return DDOProblem(plan[0].quantities, fits, LOWER, UPPER)


def sigma_of(plans, objectives) -> float | None:
  """The product's predict noise from replicates: pooled over the budgets (None without)."""
  parts = [replicate_noise([{'domain': p.domain, 'factor': p.factor, 'objective': float(o)}
                            for p, o in zip(plan, obj)]) for plan, obj in zip(plans, objectives)]
  noise = combine_noise(parts)
  return None if noise is None else noise.sigma


def ddo(world: worlds.World, largest: float, replicates: int, *, constant_total: bool = False,
        trajectory: bool = False) -> tuple[list[DDOProblem], float | None, float]:
  """The three budgets' DDO problems, the replicate noise and the tokens the plans train."""
  problems, plans, objectives, tokens = [], [], [], 0.0
  for b in budgets_of(largest):
    plan = plan_of(world.m, b, replicates, constant_total)
    losses = losses_of(world, plan, largest / b if trajectory else None)
    problems.append(problem_of(world, plan, losses, constant_total))
    plans.append(plan)
    objectives.append(world.objective(losses))
    tokens += sum(p.quantities.sum() for p in plan)
  return problems, sigma_of(plans, objectives), tokens


def world_of(stage: str, seed: int) -> worlds.World:
  name, m, _, fields = PRESETS[stage]
  return worlds.preset(name, m, seed, **fields)


def fallback_noise(stage: str) -> float:
  """What a user without replicates would put in predict.noise: the world's noise as a scale
  study measures it (4 replicates, pooled over the budgets), median over worlds not studied."""
  largest = PRESETS[stage][2]
  sigmas = [ddo(world_of(stage, s), largest, 4)[1] for s in CALIBRATION_WORLDS]
  return float(np.median([s or 0.0 for s in sigmas]))


def autoscale(problems: list[DDOProblem], mode: str, target: float) -> tuple[np.ndarray, bool]:
  """AutoScale's weights at `target` (False), or the largest budget's optimum when the optima
  give no path to extrapolate along (True): what a user is left with."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      return AutoScaleModel.from_ddo(problems, mode).predict_weights(target), False
  except UserError:
    return problems[-1].optimum() / problems[-1].budget, True


def mixing_law(world: worlds.World, largest: float, tokens: float) -> np.ndarray:
  """The mixing law's answer from a swarm at the largest budget, at equal proxy tokens."""
  n = max(world.m + 1, int(tokens // largest))
  rng = np.random.default_rng([world.seed, world.m, int(tokens)])
  mixtures = rng.dirichlet(np.ones(world.m), n)
  law = MixingLaw.fit(mixtures, world.losses(mixtures * largest, 0))
  return law.optimize(perplexity=True)


def simulate(stage: str, seed: int, replicates: int, fallback: float) -> dict:
  """Every policy's mixture in world `seed` of the stage's preset, scored at each target."""
  world, largest = world_of(stage, seed), PRESETS[stage][2]
  m = world.m
  std, sigma, tokens = ddo(world, largest, replicates)
  traj = ddo(world, largest, replicates, trajectory=True)[0]
  ct = ddo(world, largest, replicates, constant_total=True)[0]
  noise = sigma if sigma is not None else (fallback or None)
  uniform = np.full(m, 1.0 / m)
  answer = std[-1].optimum() / largest
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    laws = conservative.refit_laws(std[-1], samples=SAMPLES, noise=noise, seed=0)
    shrunk = {prior: conservative.shrink(std[-1], weights, answer, level=LEVEL, samples=SAMPLES,
                                         noise=noise, seed=0, grid=GRID, laws=laws)
              for prior, weights in (('uniform', uniform), ('natural', world.natural))}
  swarm = mixing_law(world, largest, tokens)
  out = {'values': {}, 'optimum': [], 'fell_back': {}, 'sigma': noise,
         'fraction': {k: s.fraction for k, s in shrunk.items()},
         'natural_outside': bool(conservative.extrapolated_domains(std[-1], world.natural))}
  for ratio in TARGETS:
    target = ratio * largest
    weights, fell = {'uniform': uniform, 'natural': world.natural, 'mixing_law': swarm,
                     'reuse': answer, 'ct-reuse': ct[-1].optimum() / largest}, {}
    for name, problems in (('', std), ('traj-', traj), ('ct-', ct)):
      for mode in ('extrapolate', 'hold'):
        for k in (2, 3):
          key = f'{name}{mode}-{k}'
          if key in POLICIES:
            chosen = [problems[0], problems[2]] if k == 2 else problems
            weights[key], fell[key] = autoscale(chosen, mode, target)
    for key, plain in (('cons-hold-2', 'hold-2'), ('cons-hold-3', 'hold-3'),
                       ('cons-reuse', 'reuse')):
      weights[key] = conservative.blend(uniform, weights[plain], shrunk['uniform'].fraction)
    weights['cons-natural-hold-2'] = conservative.blend(world.natural, weights['hold-2'],
                                                        shrunk['natural'].fraction)
    optimum = world.value(world.optimum(target), target)
    out['optimum'].append(float(optimum))
    for key in POLICIES:
      out['values'].setdefault(key, []).append(float(world.value(weights[key], target)))
    out['fell_back'][str(ratio)] = sorted(k for k, v in fell.items() if v)
  return out


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
