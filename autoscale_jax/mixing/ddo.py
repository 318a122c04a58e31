"""Direct Data Optimization at one budget: the run plan, the per-domain fits, the convex solve."""

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from autoscale_jax.errors import UserError
from autoscale_jax.mixing._numerics import bisect, x64
from autoscale_jax.mixing.powerlaw import DegenerateFitWarning, PowerLaw, fit_rows

# A multiplier this close (relative) to a bound counts as sitting on it.
_ON_BOUND = 1e-9


@dataclasses.dataclass(frozen=True, eq=False)
class Perturbation:
  """One run of a DDO plan: the base quantities with one domain (None: no domain) scaled."""
  domain: int | None
  factor: float
  replicate: int
  quantities: np.ndarray

  def to_dict(self) -> dict[str, Any]:
    return {'domain': self.domain, 'factor': self.factor, 'replicate': self.replicate,
            'quantities': self.quantities.tolist()}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'Perturbation':
    return cls(d['domain'], d['factor'], d['replicate'], np.asarray(d['quantities'], np.float64))


def _positive_vector(name: str, values: ArrayLike) -> np.ndarray:
  v = np.asarray(values, np.float64)
  if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)) or not np.all(v > 0):
    raise UserError(f'{name} must be a non-empty 1-D array of finite values > 0; got {values!r}.')
  return v


def perturbation_plan(base_quantities: ArrayLike, factors: Sequence[float] = (1 / 5, 3),
                      replicates: int = 1) -> list[Perturbation]:
  """The runs of one DDO: base, then each domain scaled by each factor, all others fixed.

  m domains and k factors give (1 + m k) runs per replicate (2m + 1 for the paper's 1/5 and 3).
  Replicates (seeds) come one whole set after another, so a first full DDO is ready earliest.
  """
  base = _positive_vector('base_quantities', base_quantities)
  factors = tuple(float(f) for f in factors)
  if (not factors or not all(np.isfinite(f) and f > 0 and f != 1 for f in factors)
      or len(set(factors)) != len(factors)):
    raise UserError(f'factors must be distinct finite values > 0 other than 1; got {factors}.')
  if int(replicates) != replicates or replicates < 1:
    raise UserError(f'replicates must be a whole number >= 1; got {replicates}.')
  plan = []
  for r in range(int(replicates)):
    plan.append(Perturbation(None, 1.0, r, base.copy()))
    for i in range(base.size):
      for f in factors:
        q = base.copy()
        q[i] *= f
        plan.append(Perturbation(i, f, r, q))
  return plan


def fit_domains(plan: Sequence[Perturbation], objectives: ArrayLike) -> list[PowerLaw]:
  """One power law per domain from the plan's measured objectives (aligned with plan).

  For domain i the points are x = N_i / N_i_base and y = objective / objective_base, where the
  base objective is the mean over the base runs; every replicate is a point of one joint fit, so
  the residuals carry the seed noise that bootstrapping needs.
  """
  objectives = np.asarray(objectives, np.float64)
  if objectives.shape != (len(plan),):
    raise UserError(f'objectives must hold one value per plan entry ({len(plan)}); got shape '
                    f'{objectives.shape}.')
  if not np.all(np.isfinite(objectives)) or not np.all(objectives > 0):
    raise UserError('objectives must be finite and > 0 (did a run diverge or not finish?).')
  bases = [k for k, p in enumerate(plan) if p.domain is None]
  if not bases:
    raise UserError('the plan has no base run (an entry with domain None); build it with '
                    'perturbation_plan.')
  base = plan[bases[0]].quantities
  if any(not np.array_equal(plan[k].quantities, base) for k in bases):
    raise UserError('the base runs of the plan disagree on their quantities.')
  base_objective = objectives[bases].mean()
  points = []
  for i in range(base.size):
    runs = bases + [k for k, p in enumerate(plan) if p.domain == i]
    if len(runs) == len(bases):
      raise UserError(f'the plan has no perturbed run for domain {i}.')
    points.append((tuple(plan[k].quantities[i] / base[i] for k in runs),
                   objectives[runs] / base_objective))
  fits = [None] * base.size
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', DegenerateFitWarning)  # re-raised below, naming the domain
    for x in dict.fromkeys(x for x, _ in points):  # domains sharing x: one batched fit
      domains = [i for i, (xi, _) in enumerate(points) if xi == x]
      for i, fit in zip(domains, fit_rows(x, [points[i][1] for i in domains], None)):
        fits[i] = fit
  for i, fit in enumerate(fits):
    if fit.degenerate:
      warnings.warn(f'Degenerate power-law fit for domain {i}: {fit.message}.',
                    DegenerateFitWarning, stacklevel=2)
  return fits


def _broadcast(name: str, value: ArrayLike | None, m: int, default: float) -> np.ndarray:
  v = np.asarray(default if value is None else value, np.float64)
  if v.ndim > 1 or v.size not in (1, m) or np.any(np.isnan(v)) or np.any(v < 0):
    raise UserError(f'{name} must be >= 0, a scalar or one value per domain ({m}); got {value!r}.')
  return np.broadcast_to(v, (m,)).copy()


@jax.jit
def _solve_kernel(a, b, cost, lower, upper, total):
  """Exact KKT solve: every domain's multiplier is a monotone function of one price lambda.

  Interior domains satisfy f_i'(n_i) = -lambda cost_i, i.e. n_i = (lambda cost_i / b_i)^(-1/(b_i+1))
  - a_i, clipped to its box; the sum falls monotonically in lambda, so bisect on log lambda. Flat
  domains (b = 0) gain nothing: they stay at their lower bound unless the others are full, and
  then share the rest at one common multiplier.
  """
  flat = b <= 0
  log_b = jnp.log(jnp.where(flat, 1.0, b))

  def response(log_price):
    n = jnp.exp((log_b - jnp.log(cost) - log_price) / (b + 1)) - a
    return jnp.where(flat, lower, jnp.clip(n, lower, upper))

  def log_price_at(n):
    return jnp.where(flat, jnp.nan, log_b - jnp.log(cost) - (b + 1) * jnp.log(n + a))

  # Above the largest price at a lower bound everything sits at its lower bound; below the
  # smallest price at min(upper, total / cost) the sum reaches the total (or every box is full).
  top = jnp.nanmax(log_price_at(lower))
  bottom = jnp.nanmin(log_price_at(jnp.minimum(upper, total / cost)))
  any_curved = ~jnp.all(flat)
  log_price = bisect(lambda lp: total - jnp.dot(cost, response(lp)),
                     jnp.where(any_curved, bottom, 0.0), jnp.where(any_curved, top, 0.0))
  n = response(log_price)
  rest = total - jnp.dot(cost, jnp.where(flat, 0.0, n))
  level = bisect(lambda t: jnp.dot(cost, jnp.where(flat, jnp.clip(t, lower, upper), 0.0)) - rest,
                 0.0, total / jnp.min(cost))
  return jnp.where(flat, jnp.clip(level, lower, upper), n)


@x64
def solve_ddo(fits: Sequence[PowerLaw], total: float, lower: ArrayLike,
              upper: ArrayLike | None = None, cost: ArrayLike | None = None) -> np.ndarray:
  """Multipliers n minimising sum_i fits[i](n_i) s.t. sum_i cost_i n_i = total, lower <= n <= upper.

  The paper's problem has cost = 1 and total = m (uniform base quantities). For base quantities
  N_base that are not uniform, cost = N_base / mean(N_base) keeps the token budget: sum n N_base =
  sum N_base. lower and upper are scalars or per-domain arrays (upper may encode the data on
  disk); None means no upper bound. Exact to float64 rounding (KKT + bisection in jax).
  """
  if not fits or not all(isinstance(f, PowerLaw) for f in fits):
    raise UserError('solve_ddo needs a non-empty sequence of PowerLaw fits.')
  m = len(fits)
  lo = _broadcast('lower', lower, m, 0.0)
  hi = _broadcast('upper', upper, m, np.inf)
  c = _positive_vector('cost', np.ones(m) if cost is None else cost)
  if c.size != m:
    raise UserError(f'cost needs one value per fit ({m}); got {c.size}.')
  if np.any(lo > hi):
    raise UserError(f'lower must not exceed upper; domains {np.nonzero(lo > hi)[0].tolist()} do.')
  if not (np.isfinite(total) and total > 0):
    raise UserError(f'total must be finite and > 0; got {total}.')
  slack = 1e-12 * total
  if c @ lo > total + slack or c @ hi < total - slack:
    raise UserError(f'total={total} is outside what the bounds allow ([{c @ lo:.6g}, {c @ hi:.6g}] '
                    'for sum cost * n): loosen lower/upper or change the total.')
  # Pad to a power of two with inert domains (flat, boxed at 0) so few shapes get compiled.
  pad = (1 << (m - 1).bit_length()) - m
  a, b = np.array([(f.a, f.b) for f in fits] + [(1.0, 0.0)] * pad, np.float64).T
  padded = [np.concatenate([v, np.full(pad, fill)]) for v, fill in ((c, 1.0), (lo, 0.0), (hi, 0.0))]
  return np.asarray(_solve_kernel(a, b, *padded, jnp.float64(total)))[:m]


def ddo_weights(n: ArrayLike, base_quantities: ArrayLike) -> np.ndarray:
  """Mixture weights w_i = n_i N_i_base / sum_j n_j N_j_base of solved multipliers."""
  q = np.asarray(n, np.float64) * _positive_vector('base_quantities', base_quantities)
  return q / q.sum()


def pinned_domains(n: ArrayLike, lower: ArrayLike,
                   upper: ArrayLike | None = None) -> tuple[int, ...]:
  """Domains whose solved multiplier sits on a bound: their optimum is the bound, not the law's."""
  n = np.asarray(n, np.float64)
  lo = _broadcast('lower', lower, n.size, 0.0)
  hi = _broadcast('upper', upper, n.size, np.inf)
  on = (n <= lo * (1 + _ON_BOUND)) | (n >= hi * (1 - _ON_BOUND))
  return tuple(int(i) for i in np.nonzero(on)[0])


@dataclasses.dataclass(frozen=True, eq=False)
class DDOProblem:
  """Everything one budget's DDO measured: enough to solve it again, e.g. on resampled fits."""
  base_quantities: np.ndarray
  fits: tuple[PowerLaw, ...]
  lower: float | tuple[float, ...]
  upper: float | tuple[float, ...] | None = None

  def __post_init__(self):
    base = _positive_vector('base_quantities', self.base_quantities)
    object.__setattr__(self, 'base_quantities', base)
    object.__setattr__(self, 'fits', tuple(self.fits))
    if len(self.fits) != base.size:
      raise UserError(f'DDOProblem needs one fit per domain ({base.size}); got {len(self.fits)}.')

  @property
  def budget(self) -> float:
    return float(self.base_quantities.sum())

  def multipliers(self) -> np.ndarray:
    """Solved multipliers, keeping the base's token budget (see solve_ddo's cost)."""
    base = self.base_quantities
    return solve_ddo(self.fits, base.size, self.lower, self.upper, cost=base / base.mean())

  def optimum(self) -> np.ndarray:
    """Optimal per-domain token quantities at this budget."""
    return self.multipliers() * self.base_quantities

  def pinned(self) -> tuple[int, ...]:
    return pinned_domains(self.multipliers(), self.lower, self.upper)

  def to_dict(self) -> dict[str, Any]:
    def plain(v):
      return v if v is None or np.isscalar(v) else [float(u) for u in v]
    return {'base_quantities': self.base_quantities.tolist(),
            'fits': [f.to_dict() for f in self.fits],
            'lower': plain(self.lower), 'upper': plain(self.upper)}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'DDOProblem':
    return cls(np.asarray(d['base_quantities'], np.float64),
               tuple(PowerLaw.from_dict(f) for f in d['fits']), d['lower'], d['upper'])
