"""Mixture rules that need no mixing runs, and DoReMi's per-step weight update (numpy, float64)."""

import numpy as np
from numpy.typing import ArrayLike

from autoscale_jax.errors import UserError, check_number
from autoscale_jax.mixing.mixing_law import SIMPLEX_ATOL


def _vector(name: str, values: ArrayLike) -> np.ndarray:
  try:
    v = np.asarray(values, np.float64)
  except (TypeError, ValueError):
    raise UserError(f'{name} must be a 1-D numeric array, one value per domain.') from None
  if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
    raise UserError(f'{name} must be a non-empty 1-D array of finite values; got {values!r}.')
  return v


def _counts(token_counts: ArrayLike) -> np.ndarray:
  counts = _vector('token_counts', token_counts)
  if np.any(counts < 0) or counts.sum() <= 0:
    raise UserError('token_counts must be >= 0 per domain with at least one domain > 0.')
  return counts


def doremi_update(weights: ArrayLike, excess_losses: ArrayLike, step_size: float,
                  smoothing: float) -> np.ndarray:
  """One DoReMi step: w' = w exp(eta max(excess, 0)); w <- (1 - s) w' / sum(w') + s / m.

  weights (m,) on the simplex; excess_losses (m,) per-domain proxy minus reference loss, clipped
  at 0 here. Computed in log space with the largest exponent subtracted, so a large eta * excess
  cannot overflow; smoothing s in [0, 1] keeps every domain's weight >= s / m.
  """
  w = _vector('weights', weights)
  if np.any(w < 0) or abs(w.sum() - 1) > SIMPLEX_ATOL:
    raise UserError('weights must be >= 0 and sum to 1 (a mixture on the simplex).')
  excess = _vector('excess_losses', excess_losses)
  if excess.shape != w.shape:
    raise UserError(f'excess_losses needs one value per domain ({w.size}); got {excess.size}.')
  eta = check_number(step_size, 'step_size', least=0, error=UserError)
  s = check_number(smoothing, 'smoothing', least=0, most=1, error=UserError)
  with np.errstate(divide='ignore'):  # log 0 = -inf: a zero weight stays 0
    return doremi_step(w, excess, eta, s, np)


def doremi_step(weights, excess_losses, step_size, smoothing, xp=np):
  """doremi_update without its checks, in the array namespace `xp`: numpy here, jax.numpy in the
  trainer's jitted DoReMi step, so both use this one formula."""
  log_w = xp.log(weights) + step_size * xp.maximum(excess_losses, 0)
  scaled = xp.exp(log_w - log_w.max())
  return (1 - smoothing) * scaled / scaled.sum() + smoothing / weights.shape[-1]


def temperature_weights(token_counts: ArrayLike, tau: float) -> np.ndarray:
  """counts^(1/tau), normalized: tau = 1 is the natural mixture, tau -> inf uniform over
  non-empty domains, tau < 1 sharpens towards the largest domain."""
  counts = _counts(token_counts)
  tau = check_number(tau, 'tau', more_than=0, error=UserError)
  scaled = (counts / counts.max())**(1 / tau)  # in [0, 1]: no overflow for any tau
  return scaled / scaled.sum()


def unimax_weights(token_counts: ArrayLike, budget: float, max_epochs: float) -> np.ndarray:
  """UniMax (Chung et al. 2023): as uniform as the budget allows, no domain over max_epochs.

  From the smallest domain up, each gets min(remaining budget / remaining domains, max_epochs *
  its tokens); the allocations sum to the budget and are returned as shares of it.
  """
  counts = _counts(token_counts)
  budget = check_number(budget, 'budget', more_than=0, error=UserError)
  max_epochs = check_number(max_epochs, 'max_epochs', more_than=0, error=UserError)
  caps = max_epochs * counts
  if caps.sum() < budget * (1 - 1e-12):
    raise UserError(f'budget={budget:g} tokens is more than max_epochs={max_epochs:g} epochs of '
                    f'all the data ({caps.sum():g} tokens): lower the budget or raise max_epochs.')
  alloc = np.zeros_like(counts)
  remaining = budget
  for done, i in enumerate(np.argsort(counts, kind='stable')):
    alloc[i] = min(remaining / (counts.size - done), caps[i])
    remaining -= alloc[i]
  return alloc / alloc.sum()
