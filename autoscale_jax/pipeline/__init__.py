"""The modes of an experiment (prepare, train, ddo, predict, autoscale, compare, report, preflight),
a stage a module.

Workdir layout (every file written atomically; a file's presence means its step is done):

  data/                      token stores and the tokenizer (data/store.py)
  runs/<fingerprint>/        one training run: config.json, checkpoints/, metrics.jsonl,
                             result.json (written last; a run with it is never trained again)
  budgets/<tokens>/          one DDO budget: plan.json, fits.json, optimum.json (ddo.py)
  checks/<tokens>/           a ddo.check_budgets DDO, as budgets/, + check.json (never fitted)
  autoscale/                 model.json (the fitted AutoScaleModel), predictions.json (predict.py)
  swarm/plan.json            compare: the random-mixture proxy runs RegMix and the mixing law share
  compare/                   compare: methods.json, and <tokens>.json per target (compare.py)
  validation/<tokens>.json   target runs of the predicted mixture against the baselines, every
                             seed, with the verdicts (validate.py)
  report/                    report.md and its plots (autoscale_jax/report; rebuilt by mode=report)
  LOCK                       who is running a pipeline here right now (lock.py)

Stages use the run registry (registry.py); the registry knows no stage.
"""

import ml_collections
from absl import logging
from etils import epath

from autoscale_jax import report
from autoscale_jax.data.mixture import counts_from_weights, resolve_weights
from autoscale_jax.errors import ConfigError
from autoscale_jax.io import check_workdir
from autoscale_jax.lead import say
from autoscale_jax.pipeline import compare, ddo, plan, predict, preflight, validate
from autoscale_jax.pipeline.lock import workdir_lock
from autoscale_jax.pipeline.registry import Experiment, RunSpec, positive_tokens

MODES = ('prepare', 'train', 'ddo', 'predict', 'autoscale', 'compare', 'report', 'preflight')


def train(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict:
  """mode=train: one run of config.train.tokens tokens with config.train.weights."""
  exp = Experiment(config, workdir)
  weights = resolve_weights(config.train.weights, exp.mix_names, exp.natural[exp.trainable],
                            'config.train.weights')
  tokens = positive_tokens(config.train.tokens, 'config.train.tokens')[0]
  spec = RunSpec('train', exp.full(counts_from_weights(weights, tokens, exp.seq_len)),
                 int(config.seed), int(config.train.eval_every))
  exp.check_run(spec, 'config.train.tokens')
  result = exp.train([spec], 'train')[0]
  logging.info('train: objective %.4f (%s) in %s; per-domain tokens %s', result['objective'],
               result['objective_kind'], exp.run_dir(spec),
               dict(zip(exp.names, result['trained_tokens'])))
  return result


def autoscale(config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
  """mode=autoscale: prepare -> DDO per budget -> fit -> predict -> validate -> report.

  Every check that needs no training runs before the first run trains.
  """
  predict.check(config)
  exp = Experiment(config, workdir)
  ddo.check(exp)
  baselines = validate.check(exp) if config.validate.enabled else None
  predictions = predict.run(config, workdir, ddo.run(exp))
  ddo.run_checks(exp, predictions)
  if baselines is not None:
    validate.run(exp, predictions, baselines)
  path = report.write_report(workdir)
  say(f'AutoScale finished; report: {path}', stderr=True)


def dispatch(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Runs config.mode (or, with config.dry_run, prints its plan) in `workdir`."""
  mode = config.mode
  if mode not in MODES:
    raise ConfigError(f"config.mode is '{mode}'; use one of {' | '.join(MODES)}.")
  if config.dry_run:
    (preflight.dry_run if mode == 'preflight' else plan.dry_run)(config)
    return
  if mode == 'preflight':  # writes preflight.json only: no lock, no data
    preflight.run(config, check_workdir(workdir))
    return
  if mode == 'report':
    report.write_report(check_workdir(workdir, create=False))
    return
  workdir = check_workdir(workdir)
  with workdir_lock(workdir):
    if mode == 'prepare':
      Experiment(config, workdir)
    elif mode == 'train':
      train(config, workdir)
    elif mode == 'ddo':
      ddo.run(Experiment(config, workdir))
    elif mode == 'predict':
      predict.run(config, workdir)
    elif mode == 'compare':
      compare.run(config, workdir)
      say(f'compare finished; report: {report.write_report(workdir)}', stderr=True)
    else:
      autoscale(config, workdir)
