"""The only place that knows an experiment is many runs: modes, run planning, results on disk."""

import math

import ml_collections
import numpy as np
from absl import logging
from etils import epath

from autoscale_jax.errors import ConfigError

MODES = ('prepare', 'train', 'ddo', 'predict', 'autoscale', 'report')
WEIGHT_TOLERANCE = 1e-6


def resolve_weights(weights, names: list[str], natural: np.ndarray, field: str) -> np.ndarray:
  """'uniform' | 'natural' | {domain: weight} -> weights aligned with `names`, checked."""
  if isinstance(weights, str):
    if weights == 'uniform':
      return np.full(len(names), 1.0 / len(names))
    if weights == 'natural':
      return np.asarray(natural, np.float64) / np.sum(natural)
    raise ConfigError(f"{field} is '{weights}'; use 'uniform', 'natural' or a dict "
                      f'{{domain: weight}} over {names}.')
  weights = dict(weights)
  unknown = sorted(set(weights) - set(names))
  if unknown:
    raise ConfigError(f'{field} names unknown domain(s) {unknown}; the configured domains are '
                      f'{names}.')
  w = np.array([float(weights.get(n, 0.0)) for n in names])
  bad = [n for n, v in zip(names, w) if not math.isfinite(v) or v < 0]
  if bad:
    raise ConfigError(f'{field} has negative or non-finite weights for {bad}; every weight must '
                      f'be a finite number >= 0.')
  if abs(w.sum() - 1.0) > WEIGHT_TOLERANCE:
    raise ConfigError(f'{field} sums to {w.sum():.6g}, not 1; rescale the weights so they sum '
                      f'to 1.')
  return w


def prepare(config: ml_collections.ConfigDict, workdir: epath.Path):
  """Tokenizer and token stores (built once, reused by every run of the workdir)."""
  from autoscale_jax.data import store, tokenizer
  tok = tokenizer.get_tokenizer(config, workdir)
  stores = store.prepare(config, workdir)
  return tok, stores


def train(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict:
  """mode=train: one run of config.train.tokens tokens with config.train.weights."""
  from autoscale_jax.train import loop
  tok, stores = prepare(config, workdir)
  names = list(stores)
  natural = np.array([s.meta['tokens'] for s in stores.values()], np.float64)
  weights = resolve_weights(config.train.weights, names, natural, 'config.train.weights')
  counts = loop.counts_from_weights(weights, config.train.tokens, config.data.seq_len)
  result = loop.run(config, workdir / 'train', counts=counts, stores=stores, tokenizer=tok,
                    name='train')
  logging.info('train: objective %.4f (%s); per-domain tokens %s', result['objective'],
               result['objective_kind'], dict(zip(names, result['trained_tokens'])))
  return result


def dispatch(config: ml_collections.ConfigDict, workdir: str) -> None:
  mode = config.mode
  if mode not in MODES:
    raise ConfigError(f"config.mode is '{mode}'; use one of {' | '.join(MODES)}.")
  workdir = epath.Path(workdir)
  if mode == 'prepare':
    prepare(config, workdir)
  elif mode == 'train':
    train(config, workdir)
  else:
    raise ConfigError(f"config.mode '{mode}' is not available yet in this build; use prepare "
                      f'or train.')
