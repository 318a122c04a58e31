"""One synthetic world through the product's DDO plan, fits, solve and predictions, and every
policy of bench/policies.py scored there (the rule they follow: bench/RESULTS.md, "Prediction
policies under noise"); policies.py runs this over many worlds in stages."""

import warnings

import numpy as np

from autoscale_jax.errors import UserError
from autoscale_jax.mixing import (
  AutoScaleModel,
  DDOProblem,
  Perturbation,
  conservative,
  fit_domains,
  perturbation_plan,
)
from autoscale_jax.mixing.confidence import combine_noise
from autoscale_jax.mixing.mixing_law import MixingLaw
from autoscale_jax.mixing.powerlaw import fit_power_law
from autoscale_jax.pipeline import worlds
from autoscale_jax.pipeline.ddo import replicate_noise

# Stage -> (world preset, domains, largest DDO budget B, config.synthetic fields over the preset's).
# cpu-noisy: the cpu preset with its noise raised 0.055 -> 0.15 nats, 0.072 / 0.027 times, so that
# its pooled objective-ratio noise is the 0.072 the scale study measured on real text (the cpu
# preset's is 0.027: its 200k runs are 2-4x quieter than the pilot's, docs/design.md).
PRESETS = {'cpu': ('cpu', 4, 800_000.0, {}), 'cpu-noisy': ('cpu', 4, 800_000.0, {'noise': 0.15}),
           'paper': ('paper', 7, 1.2e9, {}), 'noiseless': ('noiseless', 7, 1.2e9, {})}
TARGETS = (4, 30)  # x the largest DDO budget
FACTORS, LOWER, UPPER = (0.2, 3.0), 0.2, 3.0  # the product's ddo.factors and its bounds
LEVEL, SAMPLES, GRID = 0.9, 100, 21  # predict.interval_level, interval_samples; the path grid
# Trajectory branches share part of their trunk's run noise: rho = 1 - 0.59^2, where 0.59 is the
# measured ratio of the optimum's movement sd, trajectories over separate runs (issue 27, (c)).
RHO = 0.65
CALIBRATION_WORLDS = range(10_000, 10_020)  # for the 1-replicate fallback noise, not studied
_TRUNK = 1 << 40  # seed offset keying a trajectory's own noise apart from any run's
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
