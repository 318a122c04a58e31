"""AdamW with warmup + decay, decoupled weight decay on matrices only, global-norm clipping.

The learning rate is a jnp function of (step, total_steps) applied inside the train step, not a
constant baked into the optimizer: runs of different lengths then share one compiled step (the
pipeline trains dozens of proxy runs with the same shapes), and a stacked batch of runs can give
each run its own schedule length.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from autoscale_jax.errors import ConfigError, check_number

SCHEDULES = ('cosine', 'linear', 'constant')


def check_schedule(cfg: ml_collections.ConfigDict) -> None:
  if cfg.schedule not in SCHEDULES:
    raise ConfigError(f"config.train.schedule is '{cfg.schedule}'; use one of "
                      f"{', '.join(SCHEDULES)}.")


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


def learning_rate(cfg: ml_collections.ConfigDict, step, total_steps) -> jax.Array:
  """Linear warmup from 0 to cfg.lr, then decay to min_lr_ratio * lr at the run's last step.

  Each run decays over its own length, so every proxy run of a DDO is a complete training run.
  """
  check_schedule(cfg)
  step = jnp.asarray(step, jnp.float32)
  total = jnp.asarray(total_steps, jnp.float32)
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


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """The schedule of one run as a function of the step (for logs and plots)."""
  check_schedule(cfg)
  return lambda step: learning_rate(cfg, step, total_steps)


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
