"""The per-domain law (x + a)^-b + c and its least-squares fit (jax, float64, autodiff LM)."""

import dataclasses
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from autoscale_jax.errors import UserError
from autoscale_jax.mixing._numerics import levenberg_marquardt, x64

# Start search: a coarse log a grid, profiled (best a per b) on a fine log b grid; LM then
# polishes the best few local minima of that profile.
_GRID_LOG_A = np.linspace(-10.0, 10.0, 41)
_GRID_LOG_B = np.linspace(-7.0, 3.0, 81)
_PROFILE_STEPS = 10
_STARTS = 4
_LM_STEPS = 150
_LOG_LIMIT = 25.0
_PARAMS = 3
# Fits whose cost differs by less than this fraction of the data's spread count as equally good.
_TIE = 1e-20
# Equally good fits whose log b differ by more than this are distinct laws, worth reporting.
_DISTINCT = 1e-3
# An exactly determined fit leaving more than this share of the spread unexplained missed; below
# it (residuals ~1% of the points' spread) the gap is under a proxy run's seed noise.
_EXACT = 1e-4


class DegenerateFitWarning(UserWarning):
  """A power-law fit whose data do not support the law; the fit says how it was handled."""


@dataclasses.dataclass(frozen=True)
class PowerLaw:
  """f(x) = (x + a)^-b + c: a domain's objective ratio as a function of its quantity multiplier.

  a > 0 and b > 0 for a fitted law; b == 0 (a constant) is the documented fallback for a
  degenerate fit, which the solve then leaves at its lower bound. A fit also carries its points
  (x, weights), residuals y - f(x) and diagnostics, so it can be bootstrapped and saved; equality
  compares the law (a, b, c) only.
  """
  a: float
  b: float
  c: float
  x: tuple[float, ...] = dataclasses.field(default=(), compare=False)
  residuals: tuple[float, ...] = dataclasses.field(default=(), compare=False)
  weights: tuple[float, ...] | None = dataclasses.field(default=None, compare=False)
  degenerate: bool = dataclasses.field(default=False, compare=False)
  message: str = dataclasses.field(default='', compare=False)

  def __post_init__(self):
    # Plain Python types keep the law hashable and JSON-friendly whatever the caller passed.
    for name in ('a', 'b', 'c'):
      object.__setattr__(self, name, float(getattr(self, name)))
    object.__setattr__(self, 'x', tuple(float(v) for v in self.x))
    object.__setattr__(self, 'residuals', tuple(float(v) for v in self.residuals))
    if self.weights is not None:
      object.__setattr__(self, 'weights', tuple(float(v) for v in self.weights))
    object.__setattr__(self, 'degenerate', bool(self.degenerate))
    if not all(math.isfinite(v) for v in (self.a, self.b, self.c)):
      raise UserError(f'PowerLaw needs finite a, b, c; got a={self.a}, b={self.b}, c={self.c}.')
    if self.a <= 0 or self.b < 0:
      raise UserError(f'PowerLaw needs a > 0 and b >= 0; got a={self.a}, b={self.b}.')
    if len(self.residuals) != len(self.x):
      raise UserError('PowerLaw.residuals must have one entry per point in PowerLaw.x.')

  def __call__(self, x: Any) -> Any:
    """Evaluates on numpy or jax arrays alike (jax.grad of it gives the marginal gain)."""
    return (x + self.a)**(-self.b) + self.c

  @property
  def rmse(self) -> float:
    """Root-mean-square residual of the fit; nan for a law that was not fitted."""
    return float(np.sqrt(np.mean(np.square(self.residuals)))) if self.residuals else math.nan

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'PowerLaw':
    return cls(**d)


def _projected_residuals(p: jax.Array, x: jax.Array, y: jax.Array, sw: jax.Array) -> jax.Array:
  """Weighted residuals with c solved exactly for (a, b) = exp(p): c is linear, so eliminate it."""
  g = (x + jnp.exp(p[0]))**(-jnp.exp(p[1]))
  c = jnp.sum(sw**2 * (y - g)) / jnp.sum(sw**2)
  return sw * (y - g - c)


def _starts(x: jax.Array, y: jax.Array, sw: jax.Array) -> jax.Array:
  """Starts at the _STARTS best local minima of the cost profiled over log a on a log b grid.

  The law is not convex in its parameters and three points often admit two exact fits along one
  narrow valley; profiling (best a for each b) makes that valley a smooth 1-D curve whose local
  minima each lead LM to a distinct fit.
  """
  grid_a, grid_b = jnp.asarray(_GRID_LOG_A), jnp.asarray(_GRID_LOG_B)
  grid = jnp.stack(jnp.meshgrid(grid_a, grid_b), axis=-1)  # [log b index, log a index, (a, b)]
  cost = jnp.sum(jax.vmap(jax.vmap(lambda p: _projected_residuals(p, x, y, sw)))(grid)**2, -1)
  log_a = grid_a[jnp.argmin(jnp.where(jnp.isnan(cost), jnp.inf, cost), axis=1)]

  def profile(log_a, log_b):
    residuals = lambda q: _projected_residuals(jnp.stack([q[0], log_b]), x, y, sw)
    return levenberg_marquardt(residuals, log_a[None], _PROFILE_STEPS, _LOG_LIMIT)

  log_a, cost = jax.vmap(profile)(log_a, grid_b)
  cost = jnp.where(jnp.isnan(cost), jnp.inf, cost)
  padded = jnp.pad(cost, 1, constant_values=jnp.inf)
  local_min = (cost <= padded[:-2]) & (cost <= padded[2:])
  _, best = jax.lax.top_k(-jnp.where(local_min, cost, jnp.inf), _STARTS)
  return jnp.stack([log_a[best, 0], grid_b[best]], axis=-1)


@jax.jit
def _fit_kernel(x: jax.Array, ys: jax.Array, sw: jax.Array) -> jax.Array:
  """Fits every row of ys; per row returns [log a, log b, c, log a, log b of the other law]."""

  def fit_row(y):
    def fit(p):
      return levenberg_marquardt(lambda q: _projected_residuals(q, x, y, sw), p, _LM_STEPS,
                                 _LOG_LIMIT)
    ps, costs = jax.vmap(fit)(_starts(x, y, sw))
    costs = jnp.where(jnp.isnan(costs), jnp.inf, costs)
    # Three points often admit two exact laws; among equally good fits take the largest b (the
    # other has a near-logarithmic b << 1) and return the smallest-b one too, to report it.
    spread = jnp.sum(sw**2 * (y - jnp.sum(sw**2 * y) / jnp.sum(sw**2))**2)
    tied = costs <= jnp.min(costs) + _TIE * spread
    p = ps[jnp.argmax(jnp.where(tied, ps[:, 1], -jnp.inf))]
    other = ps[jnp.argmin(jnp.where(tied, ps[:, 1], jnp.inf))]
    g = (x + jnp.exp(p[0]))**(-jnp.exp(p[1]))
    return jnp.concatenate([p, jnp.sum(sw**2 * (y - g), keepdims=True) / jnp.sum(sw**2), other])

  return jax.vmap(fit_row)(ys)


def _check_points(x: np.ndarray, ys: np.ndarray, w: np.ndarray) -> None:
  if x.ndim != 1 or ys.shape[-1] != x.size or w.shape != x.shape:
    raise UserError(f'fit_power_law needs x, y and weights of one length; got shapes {x.shape}, '
                    f'{ys.shape[-1:]}, {w.shape}.')
  if not (np.all(np.isfinite(x)) and np.all(x > 0)):
    raise UserError('fit_power_law needs finite quantity multipliers x > 0.')
  if not np.all(np.isfinite(ys)):
    raise UserError('fit_power_law needs finite objective ratios y (did a run diverge?).')
  if not (np.all(np.isfinite(w)) and np.all(w >= 0)):
    raise UserError('fit_power_law needs finite weights >= 0.')
  if np.unique(x[w > 0]).size < _PARAMS:
    raise UserError('fit_power_law needs points at 3 or more distinct x (with weight > 0) to fit '
                    '(x + a)^-b + c; test more perturbation factors.')


def _convex(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> bool:
  """Whether the secant slopes of the points (replicates averaged) increase, as a convex law's
  do."""
  keep = w > 0
  ux, inverse = np.unique(x[keep], return_inverse=True)
  uy = np.bincount(inverse, w[keep] * y[keep]) / np.bincount(inverse, w[keep])
  slopes = np.diff(uy) / np.diff(ux)
  return bool(np.all(np.diff(slopes) >= 0))


def _describe(row: np.ndarray, slope: float, misfit: float,
              convex: bool = True) -> tuple[bool, str]:
  """(degenerate, message) for one kernel row [log a, log b, c, other log a, other log b].

  misfit: the fit's share of the data's weighted spread left unexplained when the 3 parameters
  meet exactly 3 points (else 0), where any misfit means the points do not have the law's shape;
  convex: whether the points bend the way the law does (else no curvature could match them).
  """
  log_a, log_b, _, other_log_a, other_log_b = row
  if slope >= 0:
    return True, (f'the objective does not decrease with more data of this domain (slope of y on '
                  f'log x = {slope:+.3g}); fell back to a flat law, so the solve keeps the domain '
                  'at its lower bound')
  if log_b <= -_LOG_LIMIT or max(log_a, log_b) >= _LOG_LIMIT:
    return True, (f'the best fit runs to the edge of the parameter space (a={math.exp(log_a):.3g}, '
                  f'b={math.exp(log_b):.3g}): the points are not shaped like (x + a)^-b + c; kept '
                  'that edge fit, check the runs')
  if misfit > _EXACT:
    why = ('the objective is not convex in x' if not convex else
           'they fall convexly, but the law (its amplitude is fixed at 1) cannot bend that way '
           'over these x')
    return True, (f'3 points that no (x + a)^-b + c passes through (unexplained share '
                  f'{misfit:.2g}): {why}; kept the least-squares fit, check the runs')
  if log_b - other_log_b > _DISTINCT:
    return False, (f'another law fits as well (a={math.exp(other_log_a):.4g}, '
                   f'b={math.exp(other_log_b):.4g}); took the larger b. A fourth distinct x '
                   '(perturbation factor) would tell them apart')
  return False, ''


@x64
def fit_rows(x: ArrayLike, ys: ArrayLike, weights: ArrayLike | None) -> list[PowerLaw]:
  """fit_power_law for every row of ys against the same x: one compiled call for the batch."""
  x = np.asarray(x, np.float64)
  ys = np.atleast_2d(np.asarray(ys, np.float64))
  w = np.ones_like(x) if weights is None else np.asarray(weights, np.float64)
  _check_points(x, ys, w)
  rows = np.asarray(_fit_kernel(jnp.asarray(x), jnp.asarray(ys), jnp.asarray(np.sqrt(w))))
  # Sign of the weighted covariance of y with log x: >= 0 means more data did not help.
  lx = np.log(x) - np.average(np.log(x), weights=w)
  slopes = (ys * (w * lx)).sum(axis=1) / np.sum(w * lx**2)
  exact = np.count_nonzero(w) == _PARAMS
  fits = []
  for y, row, slope in zip(ys, rows, slopes):
    law = (1.0, 0.0, np.average(y, weights=w) - 1.0) if slope >= 0 else (
        math.exp(row[0]), math.exp(row[1]), row[2])
    residuals = y - PowerLaw(*law)(x)
    spread = np.sum(w * (y - np.average(y, weights=w))**2)
    misfit = np.sum(w * residuals**2) / spread if exact and slope < 0 else 0.0
    degenerate, message = _describe(row, slope, misfit, _convex(x, y, w))
    fits.append(PowerLaw(*law, x=x, residuals=residuals, weights=None if weights is None else w,
                         degenerate=degenerate, message=message))
    if degenerate:
      warnings.warn(f'Degenerate power-law fit: {message}.', DegenerateFitWarning, stacklevel=4)
  return fits


def fit_power_law(x: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None) -> PowerLaw:
  """Least-squares (x + a)^-b + c through (x, y): exact for 3 points, flagged when degenerate.

  Levenberg-Marquardt on (log a, log b) keeps a, b > 0, with c eliminated in closed form and
  jax.jacfwd Jacobians, from several searched starts, in float64. A degenerate fit warns
  (DegenerateFitWarning) and returns with .degenerate set and .message saying what was done.
  """
  return fit_rows(x, y, weights)[0]


def bootstrap_fits(fit: PowerLaw, samples: int, rng: np.random.Generator,
                   noise: float | None = None) -> list[PowerLaw]:
  """Refits of fit's curve plus resampled residuals, or Gaussian noise of std `noise` if given.

  Residuals are inflated by sqrt(n / (n - 3)) for the 3 fitted parameters; an exactly determined
  fit (3 points) has no residual information, so without `noise` its refits equal the fit.
  """
  if not fit.x:
    raise UserError('bootstrap_fits needs a fitted PowerLaw (one from fit_power_law).')
  x, n = np.array(fit.x), len(fit.x)
  if noise is None:
    inflation = math.sqrt(n / (n - _PARAMS)) if n > _PARAMS else 0.0
    draws = rng.choice(np.array(fit.residuals) * inflation, size=(samples, n))
  else:
    draws = rng.normal(0.0, noise, size=(samples, n))
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DegenerateFitWarning)  # counted by the caller, not repeated
    return fit_rows(x, fit(x) + draws, fit.weights)

