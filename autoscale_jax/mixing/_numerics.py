"""Float64 and root-finding helpers shared by the fit, the solve and the extrapolation."""

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
