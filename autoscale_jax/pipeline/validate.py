"""The validation stage: at each target, runs of the predicted mixture and of the baselines, and
the tokens the predicted mixture saves in reaching each baseline's final objective.

Writes validation/<tokens>.json per target.
"""

from collections.abc import Sequence

import ml_collections
import numpy as np
from absl import logging

from autoscale_jax.data.mixture import counts_from_weights, resolve_weights
from autoscale_jax.errors import ConfigError, check_number
from autoscale_jax.lead import write_json
from autoscale_jax.pipeline import predict
from autoscale_jax.pipeline.registry import Experiment, RunSpec, positive_tokens, tokens_key


def targets(config: ml_collections.ConfigDict) -> list[int]:
  """The validation targets (default: every prediction target), sorted."""
  predicted = predict.targets(config)
  chosen = sorted(positive_tokens(config.validate.targets or predicted,
                                  'config.validate.targets'))
  missing = [t for t in chosen if t not in predicted]
  if missing:
    raise ConfigError(f'config.validate.targets {missing} are not among config.predict.targets; '
                      'add them there so they get a predicted mixture.')
  return chosen


def tokens_to_reach(curve: Sequence[dict], level: float) -> float | None:
  """Tokens at which an objective curve (evals in order) first reaches `level` (linear between
  evaluations); None if it never does."""
  previous = None
  for point in curve:
    if point['objective'] <= level:
      if previous is None or previous['objective'] == point['objective']:
        return float(point['tokens'])
      frac = (previous['objective'] - level) / (previous['objective'] - point['objective'])
      return float(previous['tokens'] + frac * (point['tokens'] - previous['tokens']))
    previous = point
  return None


def _specs(exp: Experiment, mixtures: dict[str, np.ndarray], target: int) -> list[RunSpec]:
  return [RunSpec(name, exp.full(counts_from_weights(w, target, exp.seq_len)),
                  int(exp.config.seed), int(exp.config.validate.eval_every))
          for name, w in mixtures.items()]


def _field(target: int) -> str:
  return f'config.validate.targets ({target:,} tokens)'


def check(exp: Experiment) -> dict[str, np.ndarray]:
  """The baselines' weights over the mixture's domains, resolved once; their data needs at every
  target are checked here, before DDO starts training."""
  if 'predicted' in exp.config.validate.baselines:
    raise ConfigError("config.validate.baselines may not be named 'predicted' (that is the "
                      'predicted mixture); rename the baseline.')
  check_number(exp.config.validate.eval_every, 'config.validate.eval_every', least=0, whole=True)
  chosen = targets(exp.config)
  baselines = {n: resolve_weights(w, exp.mix_names, exp.natural[exp.trainable],
                                  f'config.validate.baselines.{n}')
               for n, w in exp.config.validate.baselines.items()}
  for target in chosen:
    for spec in _specs(exp, baselines, target):
      exp.check_run(spec, _field(target))
  return baselines


def run(exp: Experiment, predictions: dict, baselines: dict[str, np.ndarray]) -> list[dict]:
  """Target runs of the predicted mixture and the `baselines` (from check); tokens saved."""
  chosen = targets(exp.config)
  summaries = []
  for k, target in enumerate(chosen):
    mixtures = {'predicted': np.asarray(predictions['targets'][tokens_key(target)]['weights']),
                **baselines}
    specs = _specs(exp, mixtures, target)
    exp.check_run(specs[0], _field(target))  # the baselines passed check() already
    results = exp.train(specs, f'validate {k + 1}/{len(chosen)} @ {target:,} tokens')
    predicted = results[0]
    runs = {}
    for (name, w), r in zip(mixtures.items(), results):
      final = r['objective']
      reach = tokens_to_reach(predicted['evals'], final) if name != 'predicted' else None
      total = r['evals'][-1]['tokens']
      runs[name] = {'weights': w.tolist(), 'fingerprint': r['fingerprint'], 'objective': final,
                    'val_ppl': r['val_ppl'], 'curve': r['evals'],
                    'predicted_reaches_at': reach,
                    'tokens_saved': None if reach is None else 1.0 - reach / total}
    summary = {'target': target, 'domains': exp.names, 'mixture_domains': exp.mix_names,
               'runs': runs}
    write_json(exp.workdir / 'validation' / f'{tokens_key(target)}.json', summary)
    for name, r in runs.items():
      if name != 'predicted':
        saved = r['tokens_saved']
        logging.info('[validate @ %s] predicted %.4f vs %s %.4f: %s', f'{target:,}',
                     predicted['objective'], name, r['objective'],
                     'baseline final objective not reached' if saved is None
                     else f'{100 * saved:.1f}% fewer tokens to reach it')
    summaries.append(summary)
  return summaries
