"""AutoScale: from DDO optima at two or more budgets, the optimal quantities at any budget.

Under the separable power-law model every domain's log optimal quantity is affine in one shared
scalar t (t = -ln lambda up to an affine change): ln N_i*(t) = alpha_i + s_i t. Two budgets fix it
exactly; three or more fit it by least squares (the centred log-quantity matrix is rank one).
"""

import dataclasses
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from autoscale_jax.errors import UserError
from autoscale_jax.mixing._numerics import BISECT_STEPS
from autoscale_jax.mixing.ddo import DDOProblem
from autoscale_jax.mixing.powerlaw import bootstrap_fits

# Optima must sum to their budget key within this relative tolerance.
_BUDGET_RTOL = 1e-3
# Doublings of a search bracket before giving up (2^200 spans any t a law can produce).
_SEARCH_STEPS = 200
# How domains on a DDO bound are treated: 'hold' keeps their weight at the largest budget,
# 'extrapolate' (the paper) extrapolates every domain, shrinking ones included.
PINNED_MODES = ('hold', 'extrapolate')


class WeightInterval(NamedTuple):
  """Predicted weights with a bootstrap interval per domain (and the samples behind it)."""
  weights: np.ndarray
  low: np.ndarray
  high: np.ndarray
  samples: np.ndarray


def _scaling_t(alpha: np.ndarray, slope: np.ndarray, log_total: float) -> float:
  """t with sum_i exp(alpha_i + slope_i t) = exp(log_total), on the branch where the sum grows.

  With every slope > 0 the sum rises with t and the root is unique. With some slopes < 0
  (domains extrapolated although they shrink) the sum is convex in t: it falls to a minimum and
  then rises; the root taken is the one past the minimum, where more tokens mean a larger t as
  between the measured budgets. A total below that minimum is unreachable and refused.
  """
  def excess(t):
    return float(np.logaddexp.reduce(alpha + slope * t)) - log_total

  if not np.any(slope > 0):
    raise UserError('no domain grows with the budget, so no larger budget can be reached: the '
                    'optima shrink for every domain.')
  grow = slope > 0
  hi = float(np.min((log_total - alpha[grow]) / slope[grow]))  # one growing term alone = total
  if np.all(grow):
    lo = float(np.min((log_total - np.log(alpha.size) - alpha) / slope))  # every term <= total/m
  else:
    if np.any(slope < 0):
      def rate(t):  # d/dt of the log-sum: a softmax-weighted mean slope, rising in t
        z = alpha + slope * t
        return float(np.exp(z - np.logaddexp.reduce(z)) @ slope)
      lo = _bisect(rate, *_bracket(rate))  # where the sum is smallest
    else:  # flat domains: the sum falls towards their constant total as t decreases
      lo, step = hi, 1.0
      for _ in range(_SEARCH_STEPS):
        if excess(lo) <= 0:
          break
        lo, step = lo - step, 2 * step
    if excess(lo) > 0:
      raise UserError(f'a total of {np.exp(log_total):.6g} tokens is below the smallest total '
                      f'the fitted law reaches (about {np.exp(log_total + excess(lo)):.6g}): with '
                      'shrinking or flat domains extrapolated, it cannot predict a budget that '
                      'small.')
    hi, step = max(hi, lo), 1.0
    while excess(hi) < 0:
      hi, step = hi + step, 2 * step
  return _bisect(excess, lo, hi)


def _bracket(f) -> tuple[float, float]:
  """a < b with f(a) < 0 < f(b) for an increasing f that changes sign."""
  a, b = -1.0, 1.0
  for _ in range(_SEARCH_STEPS):
    if f(a) < 0 and f(b) > 0:
      return a, b
    a, b = 2 * a if f(a) >= 0 else a, 2 * b if f(b) <= 0 else b
  raise UserError('the fitted scaling law has no minimum total within reach.')


def _bisect(f, lo: float, hi: float) -> float:
  """Root of an increasing f on [lo, hi], to float64 resolution."""
  for _ in range(BISECT_STEPS):
    mid = 0.5 * (lo + hi)
    if mid in (lo, hi):
      break
    if f(mid) < 0:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


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


@dataclasses.dataclass(frozen=True)
class PathTest:
  """AutoScaleModel.path_test: the observed RMS log-quantity residual of the fitted path, the
  residuals noise alone gives when the optima do lie on one path, and the p-value."""
  residual: float
  null: np.ndarray
  p_value: float
  alpha: float = 0.05

  @property
  def verdict(self) -> str:
    return 'one path' if self.p_value >= self.alpha else 'no consistent path'

  def to_dict(self) -> dict[str, Any]:
    return {'residual': self.residual, 'p_value': self.p_value, 'alpha': self.alpha,
            'verdict': self.verdict, 'samples': int(self.null.size),
            'null_median': float(np.median(self.null)),
            'null_95': float(np.quantile(self.null, 0.95))}


def cap_to_data(quantities: ArrayLike, available: ArrayLike) -> tuple[np.ndarray, list[int]]:
  """Quantities with none above what the data allows, keeping their total: a domain over its
  cap is set to it and the excess goes to the others in proportion to their quantities (again
  until none is over). Returns the quantities and the capped domains."""
  q = np.asarray(quantities, np.float64).copy()
  cap = np.asarray(available, np.float64)
  if cap.shape != q.shape or np.any(cap < 0):
    raise UserError(f'available must be one value >= 0 per domain ({q.size}); got {available!r}.')
  total = q.sum()
  if cap.sum() < total * (1 - 1e-12):
    raise UserError(f'the data allows {cap.sum():,.0f} tokens in all, less than the '
                    f'{total:,.0f} the budget needs: add data or allow repetition '
                    '(config.data.max_epochs).')
  capped: list[int] = []
  while True:
    over = [i for i in np.nonzero(q > cap * (1 + 1e-12))[0] if i not in capped]
    if not over:
      return q, sorted(capped)
    capped += [int(i) for i in over]
    q[capped] = cap[capped]
    free = np.array([i not in capped for i in range(q.size)])
    q[free] *= (total - q[~free].sum()) / q[free].sum()


@dataclasses.dataclass(frozen=True, eq=False)
class AutoScaleModel:
  """ln N_i*(t) = alpha_i + slope_i t fitted to DDO optima; predicts the optimum at any budget.

  With mode 'hold', domains in `held` are not extrapolated: those the caller pinned (e.g. on a
  DDO bound at a measured budget, where the optimum is the bound and not the law's) and those
  whose optimal quantity does not grow with the budget. They keep their weight at the largest
  measured budget and fit() warns about them; the law covers the others. With mode
  'extrapolate' (the paper's) every domain follows the law, a shrinking one too (see _scaling_t
  for the budgets that can then be reached). t is 0 at the smallest budget and 1 at the next;
  `residual` is the RMS log-quantity misfit (0 up to rounding with two budgets).
  """
  budgets: np.ndarray
  quantities: np.ndarray
  held: tuple[int, ...]
  alpha: np.ndarray
  slope: np.ndarray
  t: np.ndarray
  residual: float
  ddo: tuple[DDOProblem, ...] | None = None
  mode: str = 'hold'

  @classmethod
  def fit(cls, optima: Mapping[float, ArrayLike], pinned: Iterable[int] = (),
          mode: str = 'hold') -> 'AutoScaleModel':
    """Fits the law to {budget_tokens: optimal per-domain quantities} (2 or more budgets);
    `pinned` domains are held with mode 'hold' and ignored with 'extrapolate'."""
    if mode not in PINNED_MODES:
      raise UserError(f"mode is '{mode}'; use one of {', '.join(PINNED_MODES)}.")
    budgets, quantities = _check_optima(optima)
    m = quantities.shape[1]
    held = {int(i) for i in pinned} if mode == 'hold' else set()
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
      if shrinking.size and mode == 'extrapolate':
        warnings.warn(f'Domains {shrinking.tolist()} do not grow with the budget and are '
                      'extrapolated all the same: their share falls as the budget rises.',
                      stacklevel=2)
      if shrinking.size == 0 or mode == 'extrapolate':
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
    return cls(budgets, quantities, tuple(sorted(held)), full_alpha, full_slope, t, residual,
               mode=mode)

  @classmethod
  def from_ddo(cls, problems: Sequence[DDOProblem], mode: str = 'hold') -> 'AutoScaleModel':
    """Solves each budget's DDO and fits the law; with mode 'hold' the domains that land on a
    bound are held, with 'extrapolate' they follow the law like the others.

    Keeps the problems, which the uncertainty (predict_weights_interval) needs.
    """
    problems = tuple(sorted(problems, key=lambda p: p.budget))
    pinned = {i for p in problems for i in p.pinned()} if mode == 'hold' else set()
    model = cls.fit({p.budget: p.optimum() for p in problems}, pinned, mode)
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

  def predict(self, target: float) -> np.ndarray:
    """Optimal per-domain token quantities at `target` tokens; they sum to target."""
    if not (np.isfinite(target) and target > 0):
      raise UserError(f'target budget must be finite and > 0; got {target}.')
    free = self._free
    log_free_total = np.log(target) + np.log1p(-self._held_weights.sum())
    t = _scaling_t(self.alpha[free], self.slope[free], float(log_free_total))
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
        try:
          draws.append(AutoScaleModel.from_ddo(problems, self.mode).predict_weights(target))
        except UserError:  # this sample's refits give no path to extrapolate along
          pass
    if len(draws) < samples / 2:
      raise UserError(f'{samples - len(draws)} of {samples} bootstrap samples of the fits give no '
                      'optima to extrapolate (every domain pinned or shrinking): the noise is far '
                      'larger than the effects; lower predict.noise or run more replicates.')
    if len(draws) < samples:
      warnings.warn(f'{samples - len(draws)} of {samples} bootstrap samples gave no optima to '
                    'extrapolate and are left out of the interval.', stacklevel=2)
    draws = np.array(draws)
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return WeightInterval(self.predict_weights(target), low, high, draws)

  def path_test(self, samples: int = 100, noise: float | None = None, seed: int = 0,
                alpha: float = 0.05) -> 'PathTest':
    """Do 3 or more budgets' optima follow one path, within their noise?

    Resampling every budget's fits as predict_weights_interval does gives each optimum's spread
    around itself; those deviations, added to the points of the fitted path, give the residuals
    the noise alone would make if the optima lay on one path. p is the share of them at or above
    the observed residual (counting the observed one): below `alpha`, no consistent path.
    """
    if self.ddo is None or len(self.budgets) < 3:
      raise UserError('path_test needs a model from from_ddo with 3 or more budgets (two '
                      'budgets always lie on one path).')
    rng = np.random.default_rng(seed)
    refits = [[bootstrap_fits(f, samples, rng, noise) for f in p.fits] for p in self.ddo]
    free = self._free
    logs = []
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      for s in range(samples):
        logs.append([np.log(dataclasses.replace(p, fits=tuple(f[s] for f in fits)).optimum())
                     for p, fits in zip(self.ddo, refits)])
    deviations = np.array(logs)[:, :, free]
    deviations -= deviations.mean(axis=0)
    path = self.alpha[free] + np.outer(self.t, self.slope[free])
    null = []
    for d in deviations:
      try:
        null.append(_rank_one(path + d)[3])
      except UserError:  # noise folded two budgets onto each other: no path at all
        null.append(np.inf)
    null = np.array(null)
    p_value = float((1 + np.sum(null >= self.residual)) / (1 + samples))
    return PathTest(self.residual, null, p_value, alpha)

  def to_dict(self) -> dict[str, Any]:
    """The inputs that rebuild this model exactly (from_dict refits them)."""
    return {'budgets': self.budgets.tolist(), 'quantities': self.quantities.tolist(),
            'held': list(self.held), 'mode': self.mode,
            'ddo': None if self.ddo is None else [p.to_dict() for p in self.ddo]}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'AutoScaleModel':
    mode = d.get('mode', 'hold')  # models saved before the mode existed held pinned domains
    if d.get('ddo') is not None:
      return cls.from_ddo([DDOProblem.from_dict(p) for p in d['ddo']], mode)
    return cls.fit(dict(zip(d['budgets'], d['quantities'])), d['held'], mode)
