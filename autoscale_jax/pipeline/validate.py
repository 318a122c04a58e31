"""The validation stage: at each target, runs of the predicted mixture and of the baselines with
validate.seeds seeds each, compared seed by seed (report/verdicts.py).

Writes validation/<tokens>.json per target.
"""

import ml_collections
import numpy as np
from absl import logging

from autoscale_jax.data.mixture import counts_from_weights, resolve_weights
from autoscale_jax.errors import ConfigError, check_number
from autoscale_jax.lead import write_json
from autoscale_jax.mixing import cap_to_data, confidence
from autoscale_jax.pipeline import predict
from autoscale_jax.pipeline.registry import (
  Experiment,
  RunSpec,
  downstream_settings,
  positive_tokens,
  tokens_key,
)
from autoscale_jax.report import verdicts
from autoscale_jax.report.verdicts import PREDICTED

# Baseline keyword: the DDO optimum of the largest DDO budget, reused as is at the target (the
# practice AutoScale claims to beat).
REUSE = 'reuse'
# Downstream scores are compared with this baseline's (the paper's comparison), when validated.
DOWNSTREAM_REFERENCE = 'uniform'


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


def seeds(config: ml_collections.ConfigDict) -> list[int]:
  """The seeds every validation mixture trains with: config.seed, config.seed + 1, ..."""
  check_number(config.validate.seeds, 'config.validate.seeds', least=1, whole=True)
  return [int(config.seed) + s for s in range(int(config.validate.seeds))]


def _specs(exp: Experiment, mixtures: dict[str, np.ndarray], target: int) -> list[RunSpec]:
  """Runs of every mixture and seed, mixture by mixture (seed s of each shares its init)."""
  chosen = seeds(exp.config)
  return [RunSpec(verdicts.run_label(name, s, len(chosen)),
                  exp.full(counts_from_weights(w, target, exp.seq_len)), seed,
                  int(exp.config.validate.eval_every))
          for name, w in mixtures.items() for s, seed in enumerate(chosen)]


def _field(target: int) -> str:
  return f'config.validate.targets ({target:,} tokens)'


def check(exp: Experiment) -> dict[str, np.ndarray | None]:
  """The baselines' weights over the mixture's domains, resolved once (None for 'reuse', known
  after DDO); their data needs at every target are checked here, before DDO starts training."""
  if PREDICTED in exp.config.validate.baselines:
    raise ConfigError("config.validate.baselines may not be named 'predicted' (that is the "
                      'predicted mixture); rename the baseline.')
  check_number(exp.config.validate.eval_every, 'config.validate.eval_every', least=0, whole=True)
  downstream_settings(exp.config)
  seeds(exp.config)
  chosen = targets(exp.config)
  baselines = {n: None if isinstance(w, str) and w == REUSE else
               resolve_weights(w, exp.mix_names, exp.natural[exp.trainable],
                               f'config.validate.baselines.{n}')
               for n, w in exp.config.validate.baselines.items()}
  known = {n: w for n, w in baselines.items() if w is not None}
  for target in chosen:
    for spec in _specs(exp, known, target):
      exp.check_run(spec, _field(target))
  return baselines


def reused_weights(exp: Experiment, predictions: dict, target: int) -> np.ndarray:
  """The optimum of the largest DDO budget, used as is at `target` (capped_weights)."""
  reused = np.asarray(predictions['optima'][tokens_key(max(predictions['budgets']))])
  return capped_weights(exp, reused, target, 'the reused optimum')


def capped_weights(exp: Experiment, weights: np.ndarray, target: int, what: str) -> np.ndarray:
  """`weights` at `target` except where they would need more of a domain than the data holds
  (capped there, like the prediction, and logged)."""
  quantities, capped = cap_to_data(np.asarray(weights) * target, exp.available_tokens)
  if capped:
    logging.warning('[%s tokens] %s needs more of %s than the data holds (x%d epochs): capped '
                    'there.', f'{target:,}', what, ', '.join(exp.mix_names[i] for i in capped),
                    int(exp.config.data.max_epochs))
  return quantities / target


def train_mixtures(exp: Experiment, mixtures: dict[str, np.ndarray], target: int,
                   stage: str) -> dict[str, dict]:
  """Every mixture at `target` tokens with every seed (their data needs checked first; the
  same run is trained once); per mixture its seeds and their means (report/verdicts.py)."""
  specs = _specs(exp, mixtures, target)
  for spec in specs:
    exp.check_run(spec, _field(target))
  results = exp.train(specs, stage)
  scores = exp.downstream(specs)
  entries = [verdicts.seed_entry(r, spec.seed, d) for spec, r, d in zip(specs, results, scores)]
  per_seed = len(seeds(exp.config))
  return {name: verdicts.mixture_entry(w, entries[i * per_seed:(i + 1) * per_seed])
          for i, (name, w) in enumerate(mixtures.items())}


def run(exp: Experiment, predictions: dict,
        baselines: dict[str, np.ndarray | None]) -> list[dict]:
  """Target runs of the predicted mixture and the `baselines` (from check), every seed; the
  verdicts (report/verdicts.py) go into validation/<tokens>.json."""
  chosen = targets(exp.config)
  largest = tokens_key(max(predictions['budgets']))
  summaries = []
  for k, target in enumerate(chosen):
    reused = reused_weights(exp, predictions, target)
    mixtures = {PREDICTED: np.asarray(predictions['targets'][tokens_key(target)]['weights']),
                **{n: reused if w is None else w for n, w in baselines.items()}}
    runs = train_mixtures(exp, mixtures, target,
                          f'validate {k + 1}/{len(chosen)} @ {target:,} tokens')
    summary = {'target': target, 'domains': exp.names, 'mixture_domains': exp.mix_names,
               'seeds': seeds(exp.config), 'level': confidence.LEVEL,
               'reuse_budget': int(largest), 'runs': runs,
               'verdicts': verdicts.compare(runs, exp.names),
               'downstream': verdicts.downstream(runs, DOWNSTREAM_REFERENCE)}
    write_json(exp.workdir / 'validation' / f'{tokens_key(target)}.json', summary)
    for name, v in summary['verdicts'].items():
      d = v['objective']
      interval = ('' if d['low'] is None else '95% interval ') + verdicts.interval_text(d)
      logging.info('[validate @ %s] predicted minus %s: %+.4g (%+.2f%%), %s: %s', f'{target:,}',
                   name, d['mean'], 100 * v['relative'], interval, d['verdict'])
    summaries.append(summary)
  return summaries
