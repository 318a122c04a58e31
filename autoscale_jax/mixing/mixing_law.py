"""Data Mixing Laws (Ye et al. 2024): L_i(r) = c_i + k_i exp(t_i . r) per validation domain.

Fitted on a swarm of proxy runs at random mixtures r (rows on the simplex), then the objective
(a weighted mean of the predicted losses or perplexities) minimised over the simplex, with
optional per-domain bounds. float64 jax inside, numpy in and out.
"""

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from autoscale_jax.errors import UserError
from autoscale_jax.mixing._numerics import bisect, levenberg_marquardt, x64

# Mixture rows must sum to 1 within this.
SIMPLEX_ATOL = 1e-6
# Fit: starts at t = 0 and t = +-_START_T e_j (every domain's exponent pushed either way), then
# Levenberg-Marquardt; parameters are clipped to +-_LOG_LIMIT so exp never overflows.
_START_T = 3.0
_LM_STEPS = 300
_LOG_LIMIT = 50.0
# Optimize: projected-gradient iterations and the most step halvings one iteration may take.
_PG_STEPS = 1000
_HALVINGS = 60


def check_mixtures(name: str, mixtures: ArrayLike, m: int | None = None) -> np.ndarray:
  """mixtures as a float64 (n, m) array of rows on the simplex, or a UserError naming `name`."""
  try:
    r = np.asarray(mixtures, np.float64)
  except (TypeError, ValueError):
    raise UserError(f'{name} must be a numeric (n, m) array of mixture proportions.') from None
  if r.ndim != 2 or r.shape[0] == 0 or r.shape[1] < 2:
    raise UserError(f'{name} must be a 2-D array with one row per mixture and one column per '
                    f'domain (at least 2); got shape {r.shape}.')
  if m is not None and r.shape[1] != m:
    raise UserError(f'{name} has {r.shape[1]} domain columns; this needs {m}.')
  if not np.all(np.isfinite(r)) or np.any(r < 0):
    raise UserError(f'{name} must hold finite proportions >= 0.')
  off = np.nonzero(np.abs(r.sum(axis=1) - 1) > SIMPLEX_ATOL)[0]
  if off.size:
    raise UserError(f'every row of {name} must sum to 1 (within {SIMPLEX_ATOL:g}); rows '
                    f'{off[:5].tolist()} do not: normalize the mixtures.')
  return r


def check_bounds(lower: ArrayLike | None, upper: ArrayLike | None,
                 m: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-domain proportion bounds (defaults 0 and 1) that leave the simplex non-empty."""
  bounds = []
  for name, value, default in (('lower', lower, 0.0), ('upper', upper, 1.0)):
    v = np.asarray(default if value is None else value, np.float64)
    if v.ndim > 1 or v.size not in (1, m) or not np.all((v >= 0) & (v <= 1)):
      raise UserError(f'{name} must be a proportion in [0, 1], a scalar or one per domain ({m}); '
                      f'got {value!r}.')
    bounds.append(np.broadcast_to(v, (m,)).copy())
  lo, hi = bounds
  if np.any(lo > hi):
    raise UserError(f'lower must not exceed upper; domains {np.nonzero(lo > hi)[0].tolist()} do.')
  if lo.sum() > 1 + SIMPLEX_ATOL or hi.sum() < 1 - SIMPLEX_ATOL:
    raise UserError(f'no mixture fits the bounds: they need sum(lower) <= 1 <= sum(upper); got '
                    f'sum(lower)={lo.sum():.6g}, sum(upper)={hi.sum():.6g}.')
  return lo, hi


def _residuals(p: jax.Array, r: jax.Array, y: jax.Array) -> jax.Array:
  """Residuals of p = [c, log k, t_j - t_m for j < m]: on the simplex t_m folds into k."""
  return p[0] + jnp.exp(p[1] + r[:, :-1] @ p[2:]) - y


def _start(v: jax.Array, r: jax.Array, y: jax.Array) -> jax.Array:
  """[c, log k, v]: c and k > 0 by linear least squares for the exponents v, else a flat guess."""
  g = jnp.exp(r[:, :-1] @ v)
  gc, yc = g - g.mean(), y - y.mean()
  var, cov = jnp.dot(gc, gc), jnp.dot(gc, yc)
  sd_g = jnp.sqrt(var / g.size)
  k = jnp.where((cov > 0) & (sd_g > 1e-12), cov / jnp.where(var > 0, var, 1.0),
                y.std() / jnp.where(sd_g > 1e-12, sd_g, 1.0))
  k = jnp.maximum(k, 1e-12 * (jnp.abs(y.mean()) + 1.0))
  return jnp.concatenate([jnp.stack([y.mean() - k * g.mean(), jnp.log(k)]), v])


@jax.jit
def _fit_kernel(r: jax.Array, ys: jax.Array, starts: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Best [c, log k, v] and its cost for every row of ys (one validation domain per row)."""

  def fit_row(y):
    def fit(v):
      p = _start(v, r, y)
      limit = jnp.concatenate([jnp.array([jnp.inf]), jnp.full(p.size - 1, _LOG_LIMIT)])  # c free
      return levenberg_marquardt(lambda q: _residuals(q, r, y), p, _LM_STEPS, limit)

    ps, costs = jax.vmap(fit)(starts)
    best = jnp.argmin(jnp.where(jnp.isnan(costs), jnp.inf, costs))
    return ps[best], costs[best]

  return jax.vmap(fit_row)(ys)


def _project(x: jax.Array, lo: jax.Array, hi: jax.Array) -> jax.Array:
  """Euclidean projection onto {sum = 1, lo <= r <= hi}: clip(x - tau), tau by bisection."""
  tau = bisect(lambda tau: 1.0 - jnp.sum(jnp.clip(x - tau, lo, hi)), jnp.min(x - hi),
               jnp.max(x - lo))
  return jnp.clip(x - tau, lo, hi)


@functools.partial(jax.jit, static_argnames='perplexity')
def _optimize_kernel(c, k, t, weights, lo, hi, starts, perplexity):
  """Projected gradient with backtracking from every start; returns the best point and value."""

  def objective(r):
    loss = c + k * jnp.exp(t @ r)
    return jnp.dot(weights, jnp.exp(loss) if perplexity else loss)

  value_and_grad = jax.value_and_grad(objective)

  def descend(r0):
    r0 = _project(r0, lo, hi)

    def iteration(_, state):
      r, step = state
      f, g = value_and_grad(r)

      def shrink(s):
        cand = _project(r - s[0] * g, lo, hi)
        d = cand - r
        # The proximal-gradient sufficient decrease; nan (overflow) counts as not sufficient.
        enough = objective(cand) <= f + jnp.dot(g, d) + jnp.dot(d, d) / (2 * s[0])
        return s[0] / 2, s[1] + 1, enough

      def keep_going(s):
        return ~s[2] & (s[1] < _HALVINGS)

      step, _, _ = jax.lax.while_loop(keep_going, shrink, (step, 0, False))
      step = step * 2  # undo the last halving: that step was accepted
      return _project(r - step * g, lo, hi), jnp.minimum(step * 2, 1e12)

    r, _ = jax.lax.fori_loop(0, _PG_STEPS, iteration, (r0, jnp.float64(1.0)))
    return r, objective(r)

  rs, values = jax.vmap(descend)(starts)
  best = jnp.argmin(jnp.where(jnp.isnan(values), jnp.inf, values))
  return rs[best], values[best]


@dataclasses.dataclass(frozen=True, eq=False)
class MixingLaw:
  """Per validation domain i: L_i(r) = c[i] + k[i] exp(t[i] . r), r the mixture proportions.

  c (kv,), k (kv,) > 0 and t (kv, m) for kv validation and m training domains. On the simplex
  adding a constant to t[i] and dividing k[i] by its exp changes nothing, so t is stored centred
  (each row sums to 0); only predictions are meaningful, not the parameters one by one. rmse
  holds each domain's fit residual (empty for a law built by hand).
  """
  c: np.ndarray
  k: np.ndarray
  t: np.ndarray
  rmse: tuple[float, ...] = ()

  def __post_init__(self):
    c, k, t = (np.asarray(v, np.float64) for v in (self.c, self.k, self.t))
    if c.ndim != 1 or k.shape != c.shape or t.ndim != 2 or t.shape[0] != c.size or c.size == 0:
      raise UserError(f'MixingLaw needs c (kv,), k (kv,) and t (kv, m); got shapes {c.shape}, '
                      f'{k.shape}, {t.shape}.')
    if not all(np.all(np.isfinite(v)) for v in (c, k, t)) or np.any(k <= 0):
      raise UserError('MixingLaw needs finite c, k, t and k > 0.')
    rmse = tuple(float(v) for v in self.rmse)
    if rmse and len(rmse) != c.size:
      raise UserError(f'MixingLaw.rmse needs one value per validation domain ({c.size}).')
    for name, v in (('c', c), ('k', k), ('t', t), ('rmse', rmse)):
      object.__setattr__(self, name, v)

  @property
  def domains(self) -> int:
    """m, the number of training domains (mixture columns)."""
    return self.t.shape[1]

  @classmethod
  @x64
  def fit(cls, mixtures: ArrayLike, losses: ArrayLike) -> 'MixingLaw':
    """Least-squares law per validation domain from losses (n, kv) measured at mixtures (n, m).

    Each domain is fitted on its own: Levenberg-Marquardt (jax.jacfwd Jacobians, float64) on
    [c, log k, t_j - t_m] (k > 0 by construction; t_m folds into k on the simplex), from 2m + 1
    starts (t = 0 and +-3 along each domain) whose c, k come from linear least squares; the
    lowest-cost fit is kept. Needs n >= m + 1 mixtures (the law's free parameters).
    """
    r = check_mixtures('mixtures', mixtures)
    n, m = r.shape
    try:
      y = np.asarray(losses, np.float64)
    except (TypeError, ValueError):
      raise UserError('losses must be a numeric (n, kv) array.') from None
    if y.ndim == 1:
      y = y[:, None]
    if y.ndim != 2 or y.shape[0] != n or y.shape[1] == 0:
      raise UserError(f'losses must have one row per mixture ({n}) and one column per validation '
                      f'domain; got shape {y.shape}.')
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
      raise UserError('losses must be finite and > 0 (did a run diverge or not finish?).')
    if n < m + 1:
      raise UserError(f'MixingLaw.fit needs at least m + 1 = {m + 1} mixtures for {m} domains; '
                      f'got {n}: run more proxy mixtures.')
    t0 = np.concatenate([np.zeros((1, m)), _START_T * np.eye(m), -_START_T * np.eye(m)])
    starts = t0[:, :-1] - t0[:, -1:]
    p, _ = _fit_kernel(jnp.asarray(r), jnp.asarray(y.T), jnp.asarray(starts))
    p = np.asarray(p)
    t = np.concatenate([p[:, 2:], np.zeros((p.shape[0], 1))], axis=1)
    shift = t.mean(axis=1)
    law = cls(p[:, 0], np.exp(p[:, 1] + shift), t - shift[:, None])
    rmse = np.sqrt(np.mean((law.predict(r) - y)**2, axis=0))
    return dataclasses.replace(law, rmse=tuple(rmse))

  def predict(self, mixtures: ArrayLike) -> np.ndarray:
    """Predicted losses (n', kv) at mixtures (n', m)."""
    r = check_mixtures('mixtures', mixtures, self.domains)
    return self.c + self.k * np.exp(r @ self.t.T)

  @x64
  def optimize(self, objective_weights: ArrayLike | None = None, lower: ArrayLike | None = None,
               upper: ArrayLike | None = None, perplexity: bool = False) -> np.ndarray:
    """Mixture weights (m,) minimising the weighted mean of predicted losses (or perplexities).

    objective_weights (kv,) >= 0, default equal; lower/upper bound each proportion (scalars or
    (m,)). With k > 0 the objective is convex in r, so projected gradient (backtracking step,
    exact projection onto {sum = 1, lower <= r <= upper} by bisection) reaches the optimum; it
    runs from the bounded simplex's centre and every vertex's projection, keeping the best.
    """
    kv, m = self.t.shape
    if objective_weights is None:
      w = np.full(kv, 1.0 / kv)
    else:
      w = np.asarray(objective_weights, np.float64)
      if w.shape != (kv,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise UserError(f'objective_weights must be {kv} finite values >= 0 (one per validation '
                        f'domain), not all 0; got {objective_weights!r}.')
      w = w / w.sum()
    lo, hi = check_bounds(lower, upper, m)
    starts = np.concatenate([np.full((1, m), 1.0 / m), np.eye(m)])
    r, _ = _optimize_kernel(*(jnp.asarray(v) for v in (self.c, self.k, self.t, w, lo, hi, starts)),
                            perplexity=bool(perplexity))
    return np.clip(np.asarray(r), lo, hi)

  def to_dict(self) -> dict[str, Any]:
    return {'c': self.c.tolist(), 'k': self.k.tolist(), 't': self.t.tolist(),
            'rmse': list(self.rmse)}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'MixingLaw':
    return cls(d['c'], d['k'], d['t'], tuple(d.get('rmse', ())))
