"""The DDO stage: per budget, the 2m+1 perturbed runs, a power law per domain, the optimum.

budgets/<tokens>/ holds plan.json (written before training), fits.json and optimum.json (written
last: a budget with it is done and is reused as is). ddo.check_budgets get the same under
checks/<tokens>/, never read by the AutoScale fit, plus check.json: how far the prediction and
the reused optimum of the nearest DDO budget below are from the DDO optimum there.
"""

import dataclasses
import warnings

import ml_collections
import numpy as np
from absl import logging
from etils import epath

from autoscale_jax.data.mixture import resolve_weights
from autoscale_jax.errors import ConfigError
from autoscale_jax.lead import write_json
from autoscale_jax.mixing import (
  DDOProblem,
  Perturbation,
  ddo_weights,
  fit_domains,
  perturbation_plan,
)
from autoscale_jax.mixing.confidence import Noise, pooled_noise
from autoscale_jax.pipeline import trajectories
from autoscale_jax.pipeline.registry import (
  Experiment,
  RunSpec,
  format_weights,
  positive_tokens,
  read_json,
  tokens_key,
)
from autoscale_jax.report.verdicts import run_label


def budgets(config: ml_collections.ConfigDict) -> list[int]:
  """The DDO budgets of the config, sorted."""
  return sorted(positive_tokens(config.ddo.budgets, 'config.ddo.budgets'))


CHECKS = 'checks'  # the folder of the check budgets' DDO (beside budgets/)


def check_budgets(config: ml_collections.ConfigDict) -> list[int]:
  """The budgets where a full DDO checks the prediction (never fitted), sorted."""
  return sorted(positive_tokens(config.ddo.check_budgets, 'config.ddo.check_budgets')
                if config.ddo.check_budgets else [])


def optimum_file(workdir: epath.Path, budget: int, folder: str = 'budgets') -> epath.Path:
  """Where a budget's optimum is (the stage's last write: the budget is done once it exists)."""
  return workdir / folder / tokens_key(budget) / 'optimum.json'


def fits_file(workdir: epath.Path, budget: int, folder: str = 'budgets') -> epath.Path:
  return workdir / folder / tokens_key(budget) / 'fits.json'


def replicate_noise(runs: list[dict]) -> Noise | None:
  """Seed noise of the objective ratio (objective / mean base objective) from one budget's runs
  (fits.json 'runs'): pooled over the replicates of every plan point; None without replicates."""
  base = np.mean([r['objective'] for r in runs if r['domain'] is None])
  return pooled_noise([(r['domain'], r['factor']) for r in runs],
                      [r['objective'] / base for r in runs])


def ddo_plan(config: ml_collections.ConfigDict, names: list[str], natural: np.ndarray,
             trainable: np.ndarray, budget: int,
             seq_len: int) -> tuple[list[Perturbation], list[RunSpec], np.ndarray]:
  """The 2m+1 (x replicates) runs of one budget over the trainable domains, with quantities
  rounded to whole sequences; run counts cover all domains (0 for eval-only ones).

  The perturbations carry the realised token quantities, so the fits use what was trained.
  """
  all_names, names, natural = names, [n for n, t in zip(names, trainable) if t], natural[trainable]
  base_w = resolve_weights(config.ddo.base_weights, names, natural, 'config.ddo.base_weights')
  if np.any(base_w <= 0):
    raise ConfigError('config.ddo.base_weights must give every domain a weight > 0 (DDO scales '
                      'each domain from its base quantity); use uniform or positive weights.')
  try:
    nominal = perturbation_plan(base_w * budget, tuple(config.ddo.factors),
                                int(config.ddo.replicates))
  except ValueError as e:
    raise ConfigError(f'config.ddo: {e}') from e
  plan, specs = [], []
  for p in nominal:
    counts = np.maximum(np.round(p.quantities / seq_len), 1).astype(np.int64)
    plan.append(Perturbation(p.domain, p.factor, p.replicate, counts * float(seq_len)))
    label = run_label('base' if p.domain is None else f'{names[p.domain]} x{p.factor:g}',
                      p.replicate, int(config.ddo.replicates))
    full = np.zeros(len(all_names), np.int64)
    full[trainable] = counts
    specs.append(RunSpec(label, full, int(config.seed) + p.replicate))
  return plan, specs, plan[0].quantities


def trajectory_layout(config: ml_collections.ConfigDict, names: list[str], natural: np.ndarray,
                      trainable: np.ndarray, seq_len: int):
  """ddo.trajectories: the largest budget's plan (perturbations, run specs: the trunks) and
  trajectories.layout's shared warmup and per-entry Points at every budget."""
  sizes = budgets(config)
  nominal, specs, _ = ddo_plan(config, names, natural, trainable, sizes[-1], seq_len)
  warmup, points = trajectories.layout(config, sizes, [s.counts for s in specs])
  return nominal, specs, warmup, points


def cost(config: ml_collections.ConfigDict, names: list[str], natural: np.ndarray,
         trainable: np.ndarray, seq_len: int) -> tuple[int, int]:
  """(tokens every DDO budget's runs train in all, what separate runs of them would train):
  equal unless ddo.trajectories, whose branches train only their cooldown."""
  if config.ddo.trajectories:
    _, _, _, points = trajectory_layout(config, names, natural, trainable, seq_len)
    sizes, batch = budgets(config), int(config.train.batch_size)
    parts = [trajectories.tokens(points, b, batch, seq_len, sizes[-1]) for b in sizes]
    return sum(p[0] for p in parts), sum(p[1] for p in parts)
  total = sum(int(spec.counts.sum()) * seq_len for b in budgets(config)
              for spec in ddo_plan(config, names, natural, trainable, b, seq_len)[1])
  return total, total


def total_tokens(config: ml_collections.ConfigDict, names: list[str], natural: np.ndarray,
                 trainable: np.ndarray, seq_len: int) -> int:
  """What every DDO budget's runs train in all (the proxy compute of AutoScale)."""
  return cost(config, names, natural, trainable, seq_len)[0]


def ddo_bounds(config: ml_collections.ConfigDict, base: np.ndarray,
               available: np.ndarray) -> tuple[float, list[float]]:
  """Multiplier bounds: the smallest factor tested below; above, the data on disk (and, with
  ddo.upper='factor', the largest factor tested: the fits are not trusted beyond it)."""
  factors = [float(f) for f in config.ddo.factors]
  lower = min(min(factors), 1.0)
  upper = available / base
  if config.ddo.upper == 'factor':
    upper = np.minimum(upper, max(max(factors), 1.0))
  elif config.ddo.upper != 'data':
    raise ConfigError(f"config.ddo.upper is '{config.ddo.upper}'; use 'factor' or 'data'.")
  return lower, [float(u) for u in upper]


def _plan(exp: Experiment, budget: int,
          root: str = 'budgets') -> tuple[list[Perturbation], list[RunSpec], np.ndarray]:
  """A budget's plan: separate runs, or with ddo.trajectories (not for check budgets) the
  trunks at the largest budget and their cooldown branches at the others."""
  args = (exp.config, exp.names, exp.natural, exp.trainable)
  if not (exp.config.ddo.trajectories and root == 'budgets'):
    return ddo_plan(*args, budget, exp.seq_len)
  nominal, tops, warmup, points = trajectory_layout(*args, exp.seq_len)
  sizes = budgets(exp.config)
  trunks = trajectory_specs(exp, tops, sizes, warmup, points)
  specs = trunks if budget == sizes[-1] else [t.branches[sizes.index(budget)] for t in trunks]
  plan = trajectories.perturbations(nominal, [e[budget] for e in points], exp.trainable,
                                    exp.seq_len)
  return plan, specs, plan[0].quantities


def trajectory_specs(exp: Experiment, tops: list[RunSpec], sizes: list[int], warmup: int,
                     points: list[dict]) -> list[RunSpec]:
  """Each run of the largest size as a trunk, with its branches at the smaller sizes (in order);
  trajectories.layout gives `warmup` and `points`."""
  trunks = []
  for top, entry in zip(tops, points):
    trunk = dataclasses.replace(top, trajectory=trajectories.kind(warmup))
    fingerprint = exp.run_dir(trunk).name
    branches = tuple(RunSpec(top.name, entry[b].counts, top.seed, stream=top.counts,
                             trajectory=trajectories.kind(warmup, fingerprint,
                                                          entry[b].branch_step))
                     for b in sizes[:-1])
    trunks.append(dataclasses.replace(trunk, branches=branches))
  return trunks


def check(exp: Experiment) -> list[int]:
  """Every budget's (and check budget's) data needs, checked before the first run trains; the
  sorted DDO budgets."""
  sizes = budgets(exp.config)
  for field, group in (('budgets', sizes), ('check_budgets', check_budgets(exp.config))):
    for budget in group:
      for spec in _plan(exp, budget, 'budgets' if field == 'budgets' else CHECKS)[1]:
        exp.check_run(spec, f'config.ddo.{field} ({budget:,} tokens)')
  return sizes


def run_budget(exp: Experiment, budget: int, stage: str, root: str = 'budgets') -> dict:
  """Trains (or reuses) one budget's runs, fits each domain, solves; writes <root>/<tokens>/."""
  config, names = exp.config, exp.mix_names
  optimum_path = optimum_file(exp.workdir, budget, root)
  folder = optimum_path.parent
  if optimum_path.exists():
    logging.info('[%s] done earlier; reusing %s.', stage, optimum_path)
    return read_json(optimum_path)
  plan, specs, base = _plan(exp, budget, root)
  write_json(folder / 'plan.json', {
      'budget': budget, 'domains': names, 'base_quantities': base.tolist(),
      'factors': list(config.ddo.factors), 'replicates': int(config.ddo.replicates),
      'trajectories': any(s.trajectory for s in specs),
      'runs': [{'name': s.name, 'fingerprint': exp.run_dir(s).name, 'seed': s.seed,
                'counts': s.counts.tolist(), **p.to_dict(),
                'trained_tokens': _trained_tokens(exp, s),
                **({'trajectory': s.trajectory} if s.trajectory else {})}
               for s, p in zip(specs, plan)]})
  results = exp.train(specs, stage)
  objectives = np.array([r['objective'] for r in results])
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    fits = fit_domains(plan, objectives)
  notes = [str(w.message) for w in caught]
  for note in notes:
    logging.warning('[%s] %s', stage, note)
  lower, upper = ddo_bounds(config, base, exp.available_tokens)
  problem = DDOProblem(base, tuple(fits), lower, tuple(upper))
  n = problem.multipliers()
  write_json(folder / 'fits.json', {
      'budget': budget, 'domains': names, 'fits': [f.to_dict() for f in fits], 'notes': notes,
      'runs': [{'name': s.name, 'fingerprint': exp.run_dir(s).name, 'objective': r['objective'],
                **p.to_dict()} for s, p, r in zip(specs, plan, results)]})
  optimum = {
      'budget': budget, 'domains': names, 'problem': problem.to_dict(),
      'multipliers': n.tolist(), 'quantities': problem.optimum().tolist(),
      'weights': ddo_weights(n, base).tolist(), 'pinned': [names[i] for i in problem.pinned()],
      'base_weights': (base / base.sum()).tolist(),
      'natural_weights': (exp.natural[exp.trainable] / exp.natural[exp.trainable].sum()).tolist(),
      'available_tokens': exp.available_tokens.tolist()}
  write_json(optimum_path, optimum)
  logging.info('[%s] optimal weights %s%s', stage, format_weights(names, optimum['weights']),
               f" (on a bound: {', '.join(optimum['pinned'])})" if optimum['pinned'] else '')
  return optimum


def _trained_tokens(exp: Experiment, spec: RunSpec) -> int:
  """Tokens a run trains itself: a trajectory branch only its cooldown (from its branch step)."""
  batch = int(exp.config.train.batch_size)
  if spec.stream is not None:
    steps = -(-int(spec.counts.sum()) // batch)
    return (steps - int(spec.trajectory['branch_step'])) * batch * exp.seq_len
  return int(spec.counts.sum()) * exp.seq_len


def run(exp: Experiment) -> list[dict]:
  """The optimum of every budget, smallest first (budgets done earlier are read back). With
  ddo.trajectories the largest budget trains first: its runs are the trunks the others branch
  off."""
  sizes = check(exp)
  order = sizes[-1:] + sizes[:-1] if exp.config.ddo.trajectories else sizes
  optima = {b: run_budget(exp, b, f'ddo {k + 1}/{len(sizes)} @ {b:,} tokens')
            for k, b in enumerate(order)}
  return [optima[b] for b in sizes]


def _l1(a, b) -> float:
  return float(np.abs(np.asarray(a) - np.asarray(b)).sum())


def run_checks(exp: Experiment, predictions: dict) -> list[dict]:
  """A full DDO at every check budget, and checks/<tokens>/check.json: the AutoScale prediction
  and the optimum of the nearest DDO budget below (reused as is) against that DDO's optimum."""
  sizes, out = budgets(exp.config), []
  chosen = check_budgets(exp.config)
  for k, budget in enumerate(chosen):
    optimum = run_budget(exp, budget, f'check {k + 1}/{len(chosen)} @ {budget:,} tokens', CHECKS)
    below = [b for b in sizes if b < budget]
    reused = predictions['optima'][tokens_key(below[-1])] if below else None
    predicted = predictions['checks'][tokens_key(budget)]
    check = {
        'budget': budget, 'domains': exp.mix_names,
        'kind': 'interpolation' if sizes[0] < budget < sizes[-1] else 'extrapolation',
        'ddo': optimum['weights'], 'predicted': predicted,
        'nearest_below': None if reused is None else {'budget': below[-1], 'weights': reused},
        'l1_predicted': _l1(predicted, optimum['weights']),
        'l1_reused': None if reused is None else _l1(reused, optimum['weights'])}
    write_json(exp.workdir / CHECKS / tokens_key(budget) / 'check.json', check)
    logging.info('[check @ %s tokens, %s] L1 distance to the DDO optimum: AutoScale %.3f, '
                 'reused optimum of %s: %s', f'{budget:,}', check['kind'],
                 check['l1_predicted'], 'none below' if reused is None else f'{below[-1]:,}',
                 '-' if reused is None else f"{check['l1_reused']:.3f}")
    out.append(check)
  return out
