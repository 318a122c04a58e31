"""Float64, root-finding and least-squares helpers shared by the fits, the solves and the
extrapolation."""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

# Bisection steps: 128 halvings take any finite float64 bracket below one ulp of its ends.
BISECT_STEPS = 128


def x64(fn: Callable) -> Callable:
  """Runs fn with 64-bit jax types, locally: flipping the global flag would change training."""

  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    with jax.enable_x64(True):
      return fn(*args, **kwargs)

  return wrapper


def bisect(f: Callable[[jax.Array], jax.Array], lo: jax.Array, hi: jax.Array) -> jax.Array:
  """Root of an increasing f with f(lo) <= 0 <= f(hi); a fixed step count keeps it jit-friendly."""

  def step(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    below = f(mid) < 0
    return jnp.where(below, mid, lo), jnp.where(below, hi, mid)

  lo, hi = jax.lax.fori_loop(0, BISECT_STEPS, step, (lo, hi))
  return 0.5 * (lo + hi)


def levenberg_marquardt(residuals: Callable[[jax.Array], jax.Array], p: jax.Array, steps: int,
                        limit) -> tuple[jax.Array, jax.Array]:
  """Damped Gauss-Newton on residuals(p), parameters clipped to +-limit (a scalar or one per
  parameter) so exp never overflows: rejected steps raise the damping, accepted ones lower it.
  Returns the parameters and their cost (half the squared residuals)."""
  jac = jax.jacfwd(residuals)
  eye = jnp.eye(p.size)

  def cost(p):
    r = residuals(p)
    return 0.5 * jnp.dot(r, r)

  def step(_, state):
    p, mu, current = state
    r, j = residuals(p), jac(p)
    jtj = j.T @ j
    damping = mu * (jnp.diag(jnp.diag(jtj)) + 1e-30 * eye)
    trial = jnp.clip(p - jnp.linalg.solve(jtj + damping, j.T @ r), -limit, limit)
    trial_cost = cost(trial)
    better = trial_cost < current  # False for nan, so a bad step is simply rejected
    return (jnp.where(better, trial, p), jnp.where(better, jnp.maximum(mu / 3, 1e-15), mu * 4),
            jnp.where(better, trial_cost, current))

  p, _, final = jax.lax.fori_loop(0, steps, step, (p, jnp.float64(1e-3), cost(p)))
  return p, final
