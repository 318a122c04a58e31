"""AutoScale: from DDO optima at two or more budgets, the optimal quantities at any budget.

Under the separable power-law model every domain's log optimal quantity is affine in one shared
scalar t (t = -ln lambda up to an affine change): ln N_i*(t) = alpha_i + s_i t. Two budgets fix it
exactly; three or more fit it by least squares (the centred log-quantity matrix is rank one).
"""

import dataclasses
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from autoscale_jax.errors import UserError
from autoscale_jax.mixing._numerics import bisect, x64
from autoscale_jax.mixing.ddo import DDOProblem
from autoscale_jax.mixing.powerlaw import bootstrap_fits

# Optima must sum to their budget key within this relative tolerance.
_BUDGET_RTOL = 1e-3


class WeightInterval(NamedTuple):
  """Predicted weights with a bootstrap interval per domain (and the samples behind it)."""
  weights: np.ndarray
  low: np.ndarray
  high: np.ndarray
  samples: np.ndarray


@jax.jit
def _scaling_t(alpha: jax.Array, slope: jax.Array, log_total: jax.Array) -> jax.Array:
  """t with sum_i exp(alpha_i + slope_i t) = exp(log_total); slopes > 0 make the sum increasing.

  Bracket: at the low end every term is at most total / m, at the high end one term is total.
  """
  lo = jnp.min((log_total - jnp.log(alpha.size) - alpha) / slope)
  hi = jnp.min((log_total - alpha) / slope)
  return bisect(lambda t: jax.nn.logsumexp(alpha + slope * t) - log_total, lo, hi)


def _check_optima(optima: Mapping[float, ArrayLike]) -> tuple[np.ndarray, np.ndarray]:
  """Budgets (ascending) and their optimal quantities as a (budgets, domains) array."""
  if len(optima) < 2:
    raise UserError(f'AutoScaleModel.fit needs optima at 2 or more budgets; got {len(optima)}.')
  budgets = np.array(sorted(float(b) for b in optima))
  quantities = np.array([np.asarray(optima[b], np.float64) for b in sorted(optima)])
  if quantities.ndim != 2 or quantities.shape[1] == 0:
    raise UserError('every budget needs one optimal quantity per domain, the same domains each.')
  if not np.all(np.isfinite(quantities)) or not np.all(quantities > 0):
    raise UserError('optimal quantities must be finite and > 0 (a domain with 0 tokens cannot be '
                    'extrapolated on a log scale).')
  if np.any(np.diff(budgets) <= 0) or budgets[0] <= 0:
    raise UserError(f'budgets must be distinct and > 0; got {budgets.tolist()}.')
  sums = quantities.sum(axis=1)
  off = np.abs(sums - budgets) > _BUDGET_RTOL * budgets
  if np.any(off):
    raise UserError(f'optima at budgets {budgets[off].tolist()} sum to {sums[off].tolist()} '
                    'tokens: each budget\'s quantities must sum to it (for non-uniform base '
                    'quantities solve with cost=base/mean(base), as DDOProblem does).')
  return budgets, quantities


def _rank_one(logs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
  """Least-squares logs[k, i] ~ alpha_i + slope_i t_k, in the gauge t_0 = 0, t_1 = 1."""
  mean = logs.mean(axis=0)
  u, s, vt = np.linalg.svd(logs - mean, full_matrices=False)
  scores = u[:, 0] * s[0]
  step = scores[1] - scores[0]
  if step == 0:
    raise UserError('the two smallest budgets have the same optimal log-quantities up to a '
                    'constant: they do not show how the mixture scales.')
  alpha = mean + scores[0] * vt[0]
  residual = float(np.sqrt(np.mean((logs - mean - np.outer(scores, vt[0]))**2)))
  return alpha, step * vt[0], (scores - scores[0]) / step, residual


@dataclasses.dataclass(frozen=True, eq=False)
class AutoScaleModel:
  """ln N_i*(t) = alpha_i + slope_i t fitted to DDO optima; predicts the optimum at any budget.

  Domains in `held` are not extrapolated: those the caller pinned (e.g. on a DDO bound at a
  measured budget, where the optimum is the bound and not the law's) and those whose optimal
  quantity does not grow with the budget. They keep their weight at the largest measured budget
  and fit() warns about them; the law covers the others. t is 0 at the smallest budget and 1 at
  the next; `residual` is the RMS log-quantity misfit (0 up to rounding with two budgets).
  """
  budgets: np.ndarray
  quantities: np.ndarray
  held: tuple[int, ...]
  alpha: np.ndarray
  slope: np.ndarray
  t: np.ndarray
  residual: float
  ddo: tuple[DDOProblem, ...] | None = None

  @classmethod
  def fit(cls, optima: Mapping[float, ArrayLike], pinned: Iterable[int] = ()) -> 'AutoScaleModel':
    """Fits the law to {budget_tokens: optimal per-domain quantities} (2 or more budgets)."""
    budgets, quantities = _check_optima(optima)
    m = quantities.shape[1]
    held = {int(i) for i in pinned}
    if not held <= set(range(m)):
      raise UserError(f'pinned names domains {sorted(held - set(range(m)))} outside 0..{m - 1}.')
    if held:
      warnings.warn(f'Domains {sorted(held)} are pinned (on a DDO bound, or by the caller): '
                    'held at their weights at the largest budget instead of extrapolated.',
                    stacklevel=2)
    logs = np.log(quantities)
    while True:
      free = np.array([i for i in range(m) if i not in held], dtype=int)
      if free.size == 0:
        raise UserError('every domain is pinned or shrinks with the budget: nothing follows the '
                        'scaling law, so there is nothing to extrapolate.')
      alpha, slope, t, residual = _rank_one(logs[:, free])
      shrinking = free[slope <= 0]
      if shrinking.size == 0:
        break
      warnings.warn(f'Domains {shrinking.tolist()} do not grow with the budget; held at their '
                    'weights at the largest budget instead of extrapolated.', stacklevel=2)
      held |= set(shrinking.tolist())
    if np.any(np.diff(t) <= 0):
      warnings.warn(f'The fitted scale t = {np.round(t, 3).tolist()} does not rise with the '
                    'budget: the optima do not follow one scaling path; trust predictions less.',
                    stacklevel=2)
    full_alpha, full_slope = np.full(m, np.nan), np.full(m, np.nan)
    full_alpha[free], full_slope[free] = alpha, slope
    return cls(budgets, quantities, tuple(sorted(held)), full_alpha, full_slope, t, residual)

  @classmethod
  def from_ddo(cls, problems: Sequence[DDOProblem]) -> 'AutoScaleModel':
    """Solves each budget's DDO, holds the domains that land on a bound, fits the law.

    Keeps the problems, which the uncertainty (predict_weights_interval) needs.
    """
    problems = tuple(sorted(problems, key=lambda p: p.budget))
    pinned = {i for p in problems for i in p.pinned()}
    model = cls.fit({p.budget: p.optimum() for p in problems}, pinned)
    return dataclasses.replace(model, ddo=problems)

  @property
  def _free(self) -> np.ndarray:
    return np.isfinite(self.slope)

  @property
  def _held_weights(self) -> np.ndarray:
    """Weights at the largest measured budget, for held domains (0 for the others)."""
    return np.where(self._free, 0.0, self.quantities[-1] / self.quantities[-1].sum())

  def _complete(self, free_quantities: np.ndarray, total: float) -> np.ndarray:
    """All domains' quantities at budget `total` from the free domains' ones (rescaled to fit)."""
    held = self._held_weights
    q = held * total
    q[self._free] = free_quantities * ((1 - held.sum()) * total / free_quantities.sum())
    return q

  @x64
  def predict(self, target: float) -> np.ndarray:
    """Optimal per-domain token quantities at `target` tokens; they sum to target."""
    if not (np.isfinite(target) and target > 0):
      raise UserError(f'target budget must be finite and > 0; got {target}.')
    free = self._free
    log_free_total = np.log(target) + np.log1p(-self._held_weights.sum())
    t = float(_scaling_t(self.alpha[free], self.slope[free], jnp.float64(log_free_total)))
    return self._complete(np.exp(self.alpha[free] + self.slope[free] * t), target)

  def predict_weights(self, target: float) -> np.ndarray:
    """Optimal mixture weights at `target` tokens."""
    return self.predict(target) / target

  def geometric_step(self, k: int) -> np.ndarray:
    """The paper's sequence N^(k+2) = N^(2) (N^(2) / N^(1))^k (t = k + 1), budget implied."""
    if int(k) != k or k < 0:
      raise UserError(f'geometric_step needs a whole k >= 0; got {k}.')
    free_quantities = np.exp(self.alpha[self._free] + self.slope[self._free] * (k + 1))
    return self._complete(free_quantities,
                          free_quantities.sum() / (1 - self._held_weights.sum()))

  def predict_weights_interval(self, target: float, level: float = 0.9, samples: int = 100,
                               noise: float | None = None, seed: int = 0) -> WeightInterval:
    """Weights at `target` with a `level` bootstrap interval over the DDO fits' noise.

    Every sample refits each domain's law on its fitted curve plus resampled residuals (or
    Gaussian noise of std `noise`, in objective-ratio units, e.g. the seed-to-seed spread),
    re-solves every budget's DDO and refits the extrapolation. Needs a model from from_ddo.
    Exactly determined fits (3 points) carry no residuals: pass `noise` or run replicates.
    """
    if self.ddo is None:
      raise UserError('predict_weights_interval needs the DDO fits: build the model with '
                      'AutoScaleModel.from_ddo.')
    if not 0 < level < 1:
      raise UserError(f'level must be in (0, 1); got {level}.')
    if noise is None and all(len(f.x) <= 3 for p in self.ddo for f in p.fits):
      warnings.warn('Every DDO fit is exactly determined, so resampling residuals adds no noise '
                    'and the interval has zero width; pass noise= or run replicates.',
                    stacklevel=2)
    rng = np.random.default_rng(seed)
    refits = [[bootstrap_fits(f, samples, rng, noise) for f in p.fits] for p in self.ddo]
    draws = []
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')  # per-sample holds and fit notes would drown the result
      for s in range(samples):
        problems = [dataclasses.replace(p, fits=tuple(f[s] for f in fits))
                    for p, fits in zip(self.ddo, refits)]
        draws.append(AutoScaleModel.from_ddo(problems).predict_weights(target))
    draws = np.array(draws)
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return WeightInterval(self.predict_weights(target), low, high, draws)

  def to_dict(self) -> dict[str, Any]:
    """The inputs that rebuild this model exactly (from_dict refits them)."""
    return {'budgets': self.budgets.tolist(), 'quantities': self.quantities.tolist(),
            'held': list(self.held),
            'ddo': None if self.ddo is None else [p.to_dict() for p in self.ddo]}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'AutoScaleModel':
    if d.get('ddo') is not None:
      return cls.from_ddo([DDOProblem.from_dict(p) for p in d['ddo']])
    return cls.fit(dict(zip(d['budgets'], d['quantities'])), d['held'])
