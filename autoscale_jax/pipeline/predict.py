"""The prediction stage: AutoScaleModel fitted to the DDO optima, the mixture at every target.

Writes autoscale/model.json and autoscale/predictions.json; needs no data and trains nothing.
"""

import warnings
from collections.abc import Sequence

import ml_collections
from absl import logging
from etils import epath

from autoscale_jax.errors import ConfigError, check_number
from autoscale_jax.lead import write_json
from autoscale_jax.mixing import AutoScaleModel, DDOProblem
from autoscale_jax.pipeline import ddo
from autoscale_jax.pipeline.registry import format_weights, positive_tokens, read_json, tokens_key


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
  return budgets, goals


def run(config: ml_collections.ConfigDict, workdir: epath.Path,
        optima: Sequence[dict] | None = None) -> dict:
  """Fits AutoScaleModel to the DDO optima and predicts every target; writes autoscale/.

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
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    model = AutoScaleModel.from_ddo(problems)
    intervals = {t: model.predict_weights_interval(
        t, level=float(config.predict.interval_level),
        samples=int(config.predict.interval_samples),
        noise=float(config.predict.noise) or None, seed=int(config.seed)) for t in goals}
  notes = sorted({str(w.message) for w in caught})
  for note in notes:
    logging.warning('[predict] %s', note)
  write_json(workdir / 'autoscale' / 'model.json', {'domains': names, **model.to_dict(),
                                                    't': model.t.tolist(),
                                                    'residual': model.residual,
                                                    'held': [names[i] for i in model.held]})
  predictions = {
      'domains': names, 'budgets': budgets, 'notes': notes,
      'level': float(config.predict.interval_level),
      'optima': {tokens_key(b): o['weights'] for b, o in zip(budgets, optima)},
      'targets': {tokens_key(t): {
          'quantities': model.predict(t).tolist(), 'weights': iv.weights.tolist(),
          'low': iv.low.tolist(), 'high': iv.high.tolist()} for t, iv in intervals.items()},
      'geometric': [{'tokens': float(q.sum()), 'weights': (q / q.sum()).tolist()}
                    for q in (model.geometric_step(k) for k in range(3))],
  }
  write_json(workdir / 'autoscale' / 'predictions.json', predictions)
  for t in goals:
    logging.info('[predict] %s tokens: %s', f'{t:,}',
                 format_weights(names, predictions['targets'][tokens_key(t)]['weights']))
  return predictions
