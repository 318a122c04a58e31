"""AdamW with warmup + decay, decoupled weight decay on matrices only, global-norm clipping.

The learning rate is a jnp function of (step, horizon) applied inside the train step, not a
constant baked into the optimizer: runs of different lengths then share one compiled step (the
pipeline trains dozens of proxy runs with the same shapes), and a stacked batch of runs can give
each run its own schedule length. A run's horizon is int32[3]: (total steps, warmup steps,
cooldown start); only 'wsd' reads the last two, which `horizon` computes in integers, so the
step a trajectory branches at and the step its schedule starts to cool down are one number.
"""

import fractions
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from autoscale_jax.errors import ConfigError, check_number

SCHEDULES = ('cosine', 'linear', 'constant', 'wsd')
COOLDOWN_SHAPES = ('1-sqrt', 'linear')  # 'wsd': how the cooldown falls from lr to the end


def check_schedule(cfg: ml_collections.ConfigDict) -> None:
  if cfg.schedule not in SCHEDULES:
    raise ConfigError(f"config.train.schedule is '{cfg.schedule}'; use one of "
                      f"{', '.join(SCHEDULES)}.")
  if cfg.schedule == 'wsd':
    check_number(cfg.cooldown_fraction, 'config.train.cooldown_fraction', more_than=0, below=1)
    if cfg.cooldown_shape not in COOLDOWN_SHAPES:
      raise ConfigError(f"config.train.cooldown_shape is '{cfg.cooldown_shape}'; use one of "
                        f"{', '.join(COOLDOWN_SHAPES)}.")


def check_optimizer(cfg: ml_collections.ConfigDict) -> None:
  """Refuses optimizer settings that cannot train (before any data or compile work)."""
  check_schedule(cfg)
  for field, bounds in (('lr', {'more_than': 0}), ('warmup_steps', {'least': 0, 'whole': True}),
                        ('warmup_ratio', {'least': 0, 'below': 1}),
                        ('min_lr_ratio', {'least': 0, 'most': 1}),
                        ('b1', {'least': 0, 'below': 1}), ('b2', {'least': 0, 'below': 1}),
                        ('eps', {'least': 0}), ('weight_decay', {'least': 0}),
                        ('clip_norm', {'least': 0})):  # weight_decay, clip_norm: 0 disables
    check_number(cfg[field], f'config.train.{field}', **bounds)


def warmup_steps(cfg: ml_collections.ConfigDict, total_steps):
  """cfg.warmup_steps, or when it is 0 the fraction cfg.warmup_ratio of the run, rounded up.

  A ratio keeps every proxy run's warmup the same share of it (as the AutoScale authors' scripts
  do): a fixed count is a far larger share of the short runs and biases the perturbations.
  """
  if cfg.warmup_steps:
    return jnp.float32(cfg.warmup_steps)
  return jnp.ceil(jnp.float32(cfg.get('warmup_ratio', 0.0)) * total_steps)


def cooldown_start(total_steps: int, fraction: float) -> int:
  """The step a 'wsd' run of `total_steps` starts its cooldown: total - round(fraction x total),
  in exact rational arithmetic (halves round up), so every caller gets the same integer."""
  cool = fractions.Fraction(fraction).limit_denominator(10**9) * int(total_steps)
  return int(total_steps) - math.floor(cool + fractions.Fraction(1, 2))


def horizon(cfg: ml_collections.ConfigDict, total_steps: int,
            warmup: int | None = None) -> np.ndarray:
  """int32[3] (total steps, warmup steps, cooldown start) of one run, the step's schedule input.

  `warmup` overrides the config's (trajectories: one count for a trunk and all its branches).
  Only 'wsd' reads the last two; the other schedules derive their warmup from the total inside
  the step, as they always have.
  """
  total = int(total_steps)
  if cfg.schedule != 'wsd':
    return np.array([total, 0, 0], np.int32)
  if warmup is None:
    warmup = int(cfg.warmup_steps) or math.ceil(float(cfg.get('warmup_ratio', 0.0)) * total)
  start = cooldown_start(total, cfg.cooldown_fraction)
  if start < min(warmup, total - 1):
    raise ConfigError(f'config.train.cooldown_fraction ({cfg.cooldown_fraction}) starts the '
                      f'cooldown of a {total}-step run at step {start}, inside its {warmup}-step '
                      'warmup; lower cooldown_fraction or the warmup, or raise the budget.')
  return np.array([total, warmup, start], np.int32)


def learning_rate(cfg: ml_collections.ConfigDict, step, run_horizon) -> jax.Array:
  """Linear warmup from 0 to cfg.lr, then decay to min_lr_ratio * lr at the run's last step.

  `run_horizon`: `horizon(...)`'s int32[3], or the total steps alone (not for 'wsd'). Each run
  decays over its own length, so every proxy run of a DDO is a complete training run. 'wsd'
  (warmup-stable-decay) holds lr from the warmup's end to the cooldown start, then falls to the
  end value over the rest as 1 - sqrt(fraction done) or linearly.
  """
  check_schedule(cfg)
  step = jnp.asarray(step, jnp.float32)
  run_horizon = jnp.asarray(run_horizon)
  if cfg.schedule == 'wsd':
    total, warmup, start = (run_horizon[..., k].astype(jnp.float32) for k in range(3))
    frac = jnp.clip((step - start) / jnp.maximum(total - start, 1), 0.0, 1.0)
    shape = 1 - jnp.sqrt(frac) if cfg.cooldown_shape == '1-sqrt' else 1 - frac
    peak, end = cfg.lr, cfg.lr * cfg.min_lr_ratio
    after = end + (peak - end) * shape
    return jnp.where(step < warmup, peak * step / jnp.maximum(warmup, 1), after)
  total = (run_horizon if run_horizon.ndim == 0 else run_horizon[..., 0]).astype(jnp.float32)
  warmup = jnp.minimum(warmup_steps(cfg, total), jnp.maximum(total - 1, 0))
  frac = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1), 0.0, 1.0)
  peak, end = cfg.lr, cfg.lr * cfg.min_lr_ratio
  if cfg.schedule == 'cosine':
    after = end + (peak - end) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
  elif cfg.schedule == 'linear':
    after = peak + (end - peak) * frac
  else:
    after = jnp.full_like(frac, peak)
  return jnp.where(step < warmup, peak * step / jnp.maximum(warmup, 1), after)


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int,
                  warmup: int | None = None) -> optax.Schedule:
  """The schedule of one run as a function of the step (for logs, plots and tests)."""
  check_schedule(cfg)
  run_horizon = horizon(cfg, total_steps, warmup)
  return lambda step: learning_rate(cfg, step, run_horizon)


def decay_mask(params):
  """Weight decay applies to dense kernels only: not to biases, LayerNorm or embeddings."""
  def is_kernel(path, _):
    return any(getattr(k, 'key', None) == 'kernel' for k in path)
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """AdamW without the learning-rate scaling: the train step multiplies by -learning_rate(...).

  Equivalent to optax.adamw (whose last stage is the same scaling), decay included.
  """
  check_optimizer(cfg)
  parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
  parts += [optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2, eps=cfg.eps),
            optax.add_decayed_weights(cfg.weight_decay, mask=decay_mask)]
  return optax.chain(*parts)
