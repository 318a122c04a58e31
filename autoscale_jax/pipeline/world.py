"""A synthetic world standing in for training (config.world = 'synthetic'), so that whole
pipelines (DDO, prediction, validation, comparison of methods) run in seconds in tests, through
the same stage code as real runs, against a loss landscape whose structure is known.

Domain d's validation loss after a run that trained N_j tokens of each domain j:

  L_d = E_d + A_d (1 + sum_j T_dj N_j / N0)^(-alpha_d)

a power law in effective tokens with cross-domain transfer T (1 on the diagonal), plus a small
multiplicative seed noise. The parameters are drawn once from a fixed generator, so every run of
every test sees the same world.
"""

import hashlib

import ml_collections
import numpy as np

N0 = 10_000.0  # tokens: the scale of the effective-token power law
NOISE = 0.002  # seed-to-seed sd of the loss, relative


def parameters(num_domains: int) -> dict[str, np.ndarray]:
  """The world's E, A, alpha (per domain) and transfer T (domains x domains)."""
  rng = np.random.default_rng(1234)
  transfer = rng.uniform(0.0, 0.3, (num_domains, num_domains))
  np.fill_diagonal(transfer, 1.0)
  return {'E': rng.uniform(2.0, 4.0, num_domains), 'A': rng.uniform(3.0, 6.0, num_domains),
          'alpha': rng.uniform(0.2, 0.5, num_domains), 'T': transfer}


def losses(tokens: np.ndarray, seed: int, noise: float = NOISE) -> np.ndarray:
  """Per-domain validation losses after training `tokens` (per domain) with `seed`."""
  tokens = np.asarray(tokens, np.float64)
  p = parameters(tokens.size)
  clean = p['E'] + p['A'] * (1.0 + p['T'] @ tokens / N0)**(-p['alpha'])
  key = hashlib.sha256(f'{seed}:{tokens.round().tolist()}'.encode()).digest()
  rng = np.random.default_rng(int.from_bytes(key[:8], 'little'))
  return clean * np.exp(noise * rng.standard_normal(tokens.size))


def result(config: ml_collections.ConfigDict, *, name: str, fingerprint: str, names: list[str],
           counts: np.ndarray, seed: int, rows: np.ndarray) -> dict:
  """The result.json a run of `counts` sequences would write, in the synthetic world: its
  evaluations every config.train.eval_every steps and at the end, as loop.result_record."""
  from autoscale_jax.data import mixture
  from autoscale_jax.train import loop
  from autoscale_jax.train.trainer import objective
  seq_len = int(config.data.seq_len)
  counts = np.asarray(counts, np.int64)
  steps = mixture.num_steps(counts, int(config.train.batch_size))
  every = int(config.train.eval_every)
  at = sorted({*(range(every, steps, every) if every else ()), steps})
  evals = []
  for step in at:
    loss = losses(counts * seq_len * step / steps, seed)
    per_domain = dict(zip(names, loss.tolist()))
    evals.append({'step': step, 'objective': objective(per_domain, config.eval),
                  **{f'val_loss/{n}': v for n, v in per_domain.items()},
                  **{f'val_loss_se/{n}': 0.0 for n in names},
                  **{f'val_ppl/{n}': float(np.exp(v)) for n, v in per_domain.items()}})
  return loop.result_record(config, name=name, fingerprint=fingerprint, names=names,
                            counts=counts, seen=counts, rows=rows, steps=steps, evals=evals,
                            wall_s=0.0)


def doremi(config: ml_collections.ConfigDict, kind: dict, counts: np.ndarray,
           reference_counts: np.ndarray, trainable: np.ndarray) -> dict:
  """The result entry of a DoReMi proxy run (train/doremi.py) in this world: a proxy that
  trains `counts` (uniform) with its loss reweighted by the domain weights gains each step
  weight x the step's tokens of every domain; its excess over the reference (which trained
  `reference_counts`) is that of the clean losses. The weights follow the same update."""
  from autoscale_jax.data import mixture
  from autoscale_jax.mixing.heuristics import doremi_step
  seq_len = int(config.data.seq_len)
  steps = mixture.num_steps(counts, int(config.train.batch_size))
  per_step = float(np.sum(counts)) * seq_len / steps
  reference = losses(np.asarray(reference_counts) * seq_len, 0, noise=0.0)
  idx = np.flatnonzero(trainable)
  weights, total = np.zeros(trainable.size), np.zeros(trainable.size)
  weights[idx] = 1.0 / idx.size
  tokens = np.zeros(trainable.size)
  for _ in range(steps):
    excess = losses(tokens, 0, noise=0.0) - reference
    weights[idx] = doremi_step(weights[idx], excess[idx], kind['step_size'], kind['smoothing'])
    tokens = tokens + weights * per_step
    total += weights
  return {**kind, 'weights_mean': (total / steps).tolist(), 'weights_last': weights.tolist()}
