"""Synthetic worlds standing in for training (config.world), so that whole pipelines (DDO,
prediction, validation, comparison of methods) run in seconds, through the same stage code as
real runs, against a loss landscape whose structure is known.

config.world = 'synthetic' is the tests' one fixed world. Domain d's validation loss after a run
that trained N_j tokens of each domain j:

  L_d = E_d + A_d (1 + sum_j T_dj N_j / N0)^(-alpha_d)

a power law in effective tokens with cross-domain transfer T (1 on the diagonal), plus a small
multiplicative seed noise. The parameters are drawn once from a fixed generator, so every run of
every test sees the same world.

The presets ('cpu', 'paper', 'noiseless'; defaults.WORLD_PRESETS) are worlds of the family in
pipeline/worlds.py: the same law, drawn by config.synthetic, with calibrated effects and noise.
"""

import hashlib

import ml_collections
import numpy as np

from autoscale_jax import defaults
from autoscale_jax.errors import ConfigError
from autoscale_jax.pipeline import worlds

N0 = 10_000.0  # tokens: the scale of the effective-token power law
NOISE = 0.002  # seed-to-seed sd of the loss, relative
WORLDS = ('synthetic', *defaults.WORLD_PRESETS)  # config.world's values other than '' (train)


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


class _Synthetic(worlds.World):
  """The 'synthetic' world as a worlds.World: its losses are losses() above, run by run, bit
  for bit what they always were (its optimum and objective use the family's code; its noise is
  relative, NOISE, not the family's additive one, and its natural shares are uniform)."""

  def clean(self, tokens) -> np.ndarray:
    tokens = np.asarray(tokens, np.float64)
    rows = [losses(t, 0, noise=0.0) for t in tokens.reshape(-1, self.m)]
    return np.reshape(rows, tokens.shape)

  def losses(self, tokens, seeds) -> np.ndarray:
    tokens, seeds = np.asarray(tokens, np.float64), np.asarray(seeds, np.int64)
    shape = np.broadcast_shapes(tokens.shape[:-1], seeds.shape)
    tokens = np.broadcast_to(tokens, (*shape, self.m)).reshape(-1, self.m)
    rows = [losses(t, int(s)) for t, s in zip(tokens, np.broadcast_to(seeds, shape).ravel())]
    return np.reshape(rows, (*shape, self.m))


def _objective(config: ml_collections.ConfigDict, names: tuple[str, ...]) -> tuple:
  """config.eval's objective as (kind, weights per domain or None), checked as runs check it."""
  from autoscale_jax.train.trainer import objective
  objective(dict.fromkeys(names, 0.0), config.eval)  # the same ConfigErrors as a run's
  kind = config.eval.objective
  if not kind.startswith('weighted'):
    return kind, None
  given = dict(config.eval.objective_weights or {})
  weights = np.array([float(given.get(n, 0.0)) for n in names])
  return kind, weights / weights.sum()


def get(config: ml_collections.ConfigDict) -> worlds.World:
  """The world of config.world over config.data.domains, scored by config.eval's objective."""
  if config.world not in WORLDS:
    raise ConfigError(f"config.world is '{config.world}'; use '' (train), 'synthetic' (the "
                      "tests' fixed world) or a preset of the family of synthetic worlds "
                      f"({', '.join(WORLDS[1:])}; config.synthetic says which world).")
  names = tuple(d.name for d in config.data.domains)
  kind, weights = _objective(config, names)
  if config.world == 'synthetic':
    p = parameters(len(names))
    return _Synthetic(names=names, E=p['E'], A=p['A'], alpha=p['alpha'], T=p['T'], scale=N0,
                      natural=np.full(len(names), 1.0 / len(names)),
                      noise=np.full(len(names), NOISE), reference=1.0,
                      objective_kind=kind, objective_weights=weights)
  spec = defaults.synthetic_spec(config)
  if spec['num_domains'] not in (0, len(names)):
    raise ConfigError(f"config.synthetic.num_domains is {spec['num_domains']} but "
                      f'config.data.domains has {len(names)}; a pipeline needs 0 (a world over '
                      'its domains).')
  return worlds.make(spec, names, objective=kind, objective_weights=weights)


def result(config: ml_collections.ConfigDict, *, name: str, fingerprint: str, names: list[str],
           counts: np.ndarray, seed: int, rows: np.ndarray,
           world: worlds.World | None = None) -> dict:
  """The result.json a run of `counts` sequences would write, in the synthetic world (`world`,
  by default config.world's): its evaluations every config.train.eval_every steps and at the
  end, as loop.result_record."""
  from autoscale_jax.data import mixture
  from autoscale_jax.train import loop
  from autoscale_jax.train.trainer import objective
  world = world or get(config)
  seq_len = int(config.data.seq_len)
  counts = np.asarray(counts, np.int64)
  steps = mixture.num_steps(counts, int(config.train.batch_size))
  every = int(config.train.eval_every)
  at = sorted({*(range(every, steps, every) if every else ()), steps})
  evaluated = world.losses(np.array([counts * seq_len * step / steps for step in at]), seed)
  evals = []
  for step, loss in zip(at, evaluated):
    per_domain = dict(zip(names, loss.tolist()))
    evals.append({'step': step, 'objective': objective(per_domain, config.eval),
                  **{f'val_loss/{n}': v for n, v in per_domain.items()},
                  **{f'val_loss_se/{n}': 0.0 for n in names},
                  **{f'val_ppl/{n}': float(np.exp(v)) for n, v in per_domain.items()}})
  return loop.result_record(config, name=name, fingerprint=fingerprint, names=names,
                            counts=counts, seen=counts, rows=rows, steps=steps, evals=evals,
                            wall_s=0.0)


def doremi(config: ml_collections.ConfigDict, kind: dict, counts: np.ndarray,
           reference_counts: np.ndarray, trainable: np.ndarray,
           world: worlds.World | None = None) -> dict:
  """The result entry of a DoReMi proxy run (train/doremi.py) in this world: a proxy that
  trains `counts` (uniform) with its loss reweighted by the domain weights gains each step
  weight x the step's tokens of every domain; its excess over the reference (which trained
  `reference_counts`) is that of the clean losses. The weights follow the same update."""
  from autoscale_jax.data import mixture
  from autoscale_jax.mixing.heuristics import doremi_step
  world = world or get(config)
  seq_len = int(config.data.seq_len)
  steps = mixture.num_steps(counts, int(config.train.batch_size))
  per_step = float(np.sum(counts)) * seq_len / steps
  reference = world.clean(np.asarray(reference_counts) * seq_len)
  idx = np.flatnonzero(trainable)
  weights, total = np.zeros(trainable.size), np.zeros(trainable.size)
  weights[idx] = 1.0 / idx.size
  tokens = np.zeros(trainable.size)
  for _ in range(steps):
    excess = world.clean(tokens) - reference
    weights[idx] = doremi_step(weights[idx], excess[idx], kind['step_size'], kind['smoothing'])
    tokens = tokens + weights * per_step
    total += weights
  return {**kind, 'weights_mean': (total / steps).tolist(), 'weights_last': weights.tolist()}
