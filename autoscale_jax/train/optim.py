"""AdamW with warmup + decay, decoupled weight decay on matrices only, global-norm clipping."""

import jax
import ml_collections
import optax

from autoscale_jax.errors import ConfigError


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warmup to cfg.lr, then cosine/linear/constant decay to min_lr_ratio * lr at the end.

  The decay length is this run's own length, so runs of different budgets each finish their
  schedule (what DDO needs: every proxy run is a complete training run).
  """
  warmup = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
  decay = max(total_steps - warmup, 1)
  end = cfg.lr * cfg.min_lr_ratio
  if cfg.schedule == 'cosine':
    after = optax.cosine_decay_schedule(cfg.lr, decay, alpha=cfg.min_lr_ratio)
  elif cfg.schedule == 'linear':
    after = optax.linear_schedule(cfg.lr, end, decay)
  elif cfg.schedule == 'constant':
    after = optax.constant_schedule(cfg.lr)
  else:
    raise ConfigError(
        f"config.train.schedule is '{cfg.schedule}'; use 'cosine', 'linear' or 'constant'.")
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


def decay_mask(params):
  """Weight decay applies to dense kernels only: not to biases, LayerNorm or embeddings."""
  def is_kernel(path, _):
    return any(getattr(k, 'key', None) == 'kernel' for k in path)
  return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(cfg: ml_collections.ConfigDict,
                   total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = make_schedule(cfg, total_steps)
  parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
  parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                           weight_decay=cfg.weight_decay, mask=decay_mask))
  return optax.chain(*parts), schedule
