"""The prediction stage: AutoScaleModel fitted to the DDO optima, the mixture at every target.

Writes autoscale/model.json and autoscale/predictions.json; needs no data and trains nothing.
"""

import warnings
from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import logging
from etils import epath

from autoscale_jax.data.mixture import resolve_weights
from autoscale_jax.errors import ConfigError, UserError, check_number
from autoscale_jax.lead import write_json
from autoscale_jax.mixing import (
  PINNED_MODES,
  AutoScaleModel,
  DDOProblem,
  cap_to_data,
  conservative as conservative_lib,
)
from autoscale_jax.mixing.confidence import combine_noise
from autoscale_jax.pipeline import ddo
from autoscale_jax.pipeline.registry import (
  format_weights,
  positive_tokens,
  read_json,
  tokens_key,
  trainable_mask,
)

POLICIES = ('plain', 'conservative')  # predict.policy: the prediction as is, or shrunk


def targets(config: ml_collections.ConfigDict) -> list[int]:
  """The prediction targets of the config, sorted."""
  return sorted(positive_tokens(config.predict.targets, 'config.predict.targets'))


def check(config: ml_collections.ConfigDict) -> tuple[list[int], list[int]]:
  """The sorted DDO budgets and targets, checked before any DDO run trains."""
  budgets, goals = ddo.budgets(config), targets(config)
  if len(budgets) < 2:
    raise ConfigError(f'config.ddo.budgets has {len(budgets)} budget; AutoScale needs two or more '
                      'DDO budgets to extrapolate.')
  p = config.predict
  check_number(p.interval_level, 'config.predict.interval_level', more_than=0, below=1)
  check_number(p.interval_samples, 'config.predict.interval_samples', least=2, whole=True)
  check_number(p.noise, 'config.predict.noise', least=0)
  if p.policy not in POLICIES:
    raise ConfigError(f"config.predict.policy is '{p.policy}'; use 'plain' (the prediction as "
                      "is) or 'conservative' (moved from predict.prior towards it only as far as "
                      'the measured noise supports).')
  if p.policy == 'conservative':  # a bad prior stops here, not after the DDO has trained
    names = [d.name for d, t in zip(config.data.domains, trainable_mask(config)) if t]
    resolve_weights(p.prior, names, np.ones(len(names)), 'config.predict.prior')
  if p.pinned not in PINNED_MODES:
    raise ConfigError(f"config.predict.pinned is '{p.pinned}'; use 'extrapolate' (every domain "
                      "follows the law, as in the paper) or 'hold' (domains on a DDO bound keep "
                      'their weight).')
  return budgets, goals


def noise(config: ml_collections.ConfigDict, workdir: epath.Path,
          budgets: Sequence[int]) -> dict:
  """The seed noise of DDO's objective ratios: pooled over the replicated runs of every budget
  (budgets/*/fits.json), or config.predict.noise, named as an assumption, when none repeat."""
  measured = combine_noise([ddo.replicate_noise(read_json(ddo.fits_file(workdir, b))['runs'])
                            for b in budgets if ddo.fits_file(workdir, b).exists()])
  if measured is not None:
    return {'sigma': measured.sigma, 'dof': measured.dof, 'source': 'replicates'}
  return {'sigma': float(config.predict.noise), 'dof': 0, 'source': 'config.predict.noise',
          'measured_by': str(config.predict.noise_source)}


def prior(config: ml_collections.ConfigDict, optimum: dict) -> np.ndarray:
  """predict.prior's weights over the mixture's domains; 'natural' needs the token shares the
  DDO recorded (optimum.json 'natural_weights', absent from results of older versions)."""
  names, natural = optimum['domains'], optimum.get('natural_weights')
  if config.predict.prior == 'natural' and natural is None:
    raise ConfigError("config.predict.prior is 'natural', but these DDO results predate the "
                      'record of the natural shares; use uniform or given weights, or rerun the '
                      'DDO in a fresh workdir.')
  return resolve_weights(config.predict.prior, names,
                         np.ones(len(names)) if natural is None else np.asarray(natural),
                         'config.predict.prior')


def gains(config: ml_collections.ConfigDict, problems: Sequence[DDOProblem],
          budgets: Sequence[int], mixtures: dict[str, np.ndarray], sigma: float,
          names: Sequence[str], last_laws: np.ndarray | None = None) -> dict:
  """Before any target run: at each DDO budget, the fitted model's objective ratio (to that
  budget's base run) for each mixture, and the recommended mixture's gain over each other
  (paired by bootstrap draw), with predict.interval_level bootstrap intervals; 'extrapolated'
  names, per mixture, the domains outside the factors that budget's plan tested (e.g. a
  natural share 4.7x the uniform one), where its ratio rests on a law beyond its data.
  last_laws: the largest budget's refits (conservative.refit_laws), when already drawn."""
  level = float(config.predict.interval_level)
  ends = [(1 - level) / 2, (1 + level) / 2]
  labels, out = list(mixtures), {}
  for k, (b, problem) in enumerate(zip(budgets, problems)):
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # exactly determined fits: the interval is the point
      points, draws = conservative_lib.ratio_draws(
          problem, list(mixtures.values()), samples=int(config.predict.interval_samples),
          noise=sigma or None, seed=int(config.seed),
          laws=last_laws if k == len(problems) - 1 else None)
    rec = labels.index('recommended')

    def interval(point: float, values: np.ndarray) -> dict:
      low, high = np.quantile(values, ends)
      return {'point': float(point), 'low': float(low), 'high': float(high)}
    out[tokens_key(b)] = {
        'ratios': {n: interval(points[k], draws[:, k]) for k, n in enumerate(labels)},
        'gain_over': {n: interval(points[k] - points[rec], draws[:, k] - draws[:, rec])
                      for k, n in enumerate(labels) if k != rec},
        'extrapolated': {n: [names[i] for i in conservative_lib.extrapolated_domains(problem, w)]
                         for n, w in mixtures.items()}}
  return out


def _capped(model: AutoScaleModel, target: int, available: np.ndarray | None,
            names: list[str]) -> tuple[np.ndarray, list[str]]:
  """The predicted weights at `target`, capped at the data on disk (when known)."""
  q = model.predict(target)
  if available is None:
    return q / target, []
  try:
    q, capped = cap_to_data(q, available)
  except UserError as e:
    raise ConfigError(f'config.predict.targets ({target:,} tokens): {e}') from None
  return q / target, [names[i] for i in capped]


def run(config: ml_collections.ConfigDict, workdir: epath.Path,
        optima: Sequence[dict] | None = None) -> dict:
  """Fits AutoScaleModel to the DDO optima and predicts every target (and check budget); writes
  autoscale/.

  `optima` (from ddo.run) or, for mode=predict, budgets/*/optimum.json of the configured budgets.
  """
  budgets, goals = check(config)
  if optima is None:
    missing = [b for b in budgets if not ddo.optimum_file(workdir, b).exists()]
    if missing:
      raise ConfigError(f'no DDO result for budget(s) {missing} in {workdir}/budgets; run '
                        '--config.mode=ddo (or autoscale) first.')
    optima = [read_json(ddo.optimum_file(workdir, b)) for b in budgets]
  names = optima[0]['domains']
  problems = [DDOProblem.from_dict(o['problem']) for o in optima]
  # The data on disk at max_epochs (recorded by DDO; absent from results of older versions).
  available = (np.asarray(optima[-1]['available_tokens'], np.float64)
               if 'available_tokens' in optima[-1] else None)
  sigma = noise(config, workdir, budgets)
  mode = str(config.predict.pinned)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    model = AutoScaleModel.from_ddo(problems, mode)
    intervals = {t: model.predict_weights_interval(
        t, level=float(config.predict.interval_level),
        samples=int(config.predict.interval_samples),
        noise=sigma['sigma'] or None, seed=int(config.seed)) for t in goals}
    path = (model.path_test(samples=int(config.predict.interval_samples),
                            noise=sigma['sigma'] or None, seed=int(config.seed)).to_dict()
            if len(budgets) >= 3 else None)
  notes = sorted({str(w.message) for w in caught})
  if available is None:
    notes.append('the DDO results predate the record of the data on disk, so predictions are '
                 'not capped at config.data.max_epochs.')
  for note in notes:
    logging.warning('[predict] %s', note)
  draws = dict(samples=int(config.predict.interval_samples), noise=sigma['sigma'] or None,
               seed=int(config.seed))
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # exactly determined fits: refits equal to the fit
    last_laws = conservative_lib.refit_laws(problems[-1], **draws)  # for the policy and gains
  policy = {'name': str(config.predict.policy)}
  if policy['name'] == 'conservative':  # how far the largest DDO budget's fits back the move
    base_prior = prior(config, optima[-1])
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # a law overflowing on the path: no evidence there
      shrunk = conservative_lib.shrink(problems[-1], base_prior, optima[-1]['weights'],
                                       level=float(config.predict.interval_level), **draws,
                                       laws=last_laws)
    policy.update(shrunk.to_dict(), prior=_prior_name(config.predict.prior),
                  prior_weights=base_prior.tolist(), budget=budgets[-1])
    policy['extrapolated'] = [names[i] for i in shrunk.extrapolated]
    policy['prior_extrapolated'] = [names[i] for i in shrunk.prior_extrapolated]
  write_json(workdir / 'autoscale' / 'model.json', {'domains': names, **model.to_dict(),
                                                    't': model.t.tolist(),
                                                    'residual': model.residual,
                                                    'held': [names[i] for i in model.held]})
  entries = {}
  for t, iv in intervals.items():
    weights, capped = _capped(model, t, available, names)
    low, high, plain = iv.low, iv.high, {}
    if policy['name'] == 'conservative':  # shrunk by the same fraction, intervals too
      plain, f = {'plain': weights.tolist()}, policy['fraction']
      weights = conservative_lib.blend(base_prior, weights, f)
      low, high = ((1 - f) * base_prior + f * v for v in (low, high))
    entries[tokens_key(t)] = {'quantities': (weights * t).tolist(), 'weights': weights.tolist(),
                              'uncapped': iv.weights.tolist(), 'capped': capped, **plain,
                              'low': low.tolist(), 'high': high.tolist()}
    if capped:
      logging.warning('[predict] %s tokens: %s capped at the data on disk (x%d epochs).',
                      f'{t:,}', ', '.join(capped), int(config.data.max_epochs))
  predictions = {
      'domains': names, 'budgets': budgets, 'notes': notes, 'pinned': mode, 'noise': sigma,
      'level': float(config.predict.interval_level),
      'optima': {tokens_key(b): o['weights'] for b, o in zip(budgets, optima)},
      'targets': entries, 'path': path, 'policy': policy,
      'checks': {tokens_key(b): _capped(model, b, available, names)[0].tolist()
                 for b in ddo.check_budgets(config)},
      'geometric': [{'tokens': float(q.sum()), 'weights': (q / q.sum()).tolist()}
                    for q in (model.geometric_step(k) for k in range(3))],
  }
  recommended = np.asarray(entries[tokens_key(goals[0])]['weights'])
  mixtures = {'recommended': recommended, 'uniform': np.full(len(names), 1 / len(names))}
  if 'natural_weights' in optima[-1]:
    mixtures['natural'] = np.asarray(optima[-1]['natural_weights'])
  predictions['gains'] = {'target': goals[0], 'level': float(config.predict.interval_level),
                          'budgets': gains(config, problems, budgets, mixtures, sigma['sigma'],
                                           names, last_laws)}
  write_json(workdir / 'autoscale' / 'predictions.json', predictions)
  for t in goals:
    logging.info('[predict] %s tokens: %s', f'{t:,}',
                 format_weights(names, predictions['targets'][tokens_key(t)]['weights']))
  for line in gain_lines(predictions):
    logging.info('[predict] %s', line)
  return predictions


def _prior_name(value) -> str:
  return value if isinstance(value, str) else 'the given weights'


def gain_lines(predictions: dict) -> list[str]:
  """The predicted gains in words: per DDO budget, each mixture's objective ratio and interval."""
  g = predictions.get('gains')
  if not g:
    return []
  level = int(round(100 * g['level']))
  return [f"at {int(b):,} tokens the fitted model expects objective ratios (to that budget's base "
          'run; lower is better) ' + ', '.join(
              f"{name} {r['point']:.4f} [{r['low']:.4f}, {r['high']:.4f}]"
              for name, r in rows['ratios'].items()) + f' ({level}% intervals)'
          for b, rows in g['budgets'].items()]
