"""The conservative prediction rule: move from a prior mixture towards the DDO answer only as far
as the fitted laws' noise says the move still helps.

At one budget the separable DDO model predicts the objective ratio of any mixture w,
J(w) = 1 + sum_i [f_i(n_i) - f_i(1)] with multipliers n_i = w_i N / N_i_base. Along the path
w(s) = (1 - s) prior + s answer the improvement over the prior is I(s) = J(prior) - J(w(s)).
Refitting every law on bootstrap draws (as AutoScaleModel.predict_weights_interval does) gives
draws of I(s); the rule takes the fraction s whose lower interval end is highest, and the prior
itself when no fraction's lower end is above 0: a move the noise cannot tell from no gain is not
made. blend() shrinks another prediction (e.g. AutoScale's at the target) by the same fraction.
"""

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from autoscale_jax.errors import UserError, check_number
from autoscale_jax.mixing.ddo import _ON_BOUND, DDOProblem, _broadcast
from autoscale_jax.mixing.powerlaw import PowerLaw, bootstrap_fits

# Weights must sum to 1 within this.
_SUM_TOL = 1e-6


class RatioInterval(NamedTuple):
  """A mixture's predicted objective ratio J(w) (fitted laws) with its bootstrap interval."""
  point: float
  low: float
  high: float


@dataclasses.dataclass(frozen=True, eq=False)
class Shrinkage:
  """shrink's choice along prior -> answer, with the whole grid behind it.

  fraction: the chosen s (0 the prior, 1 the answer); weights: the mixture there; gain: the point
  improvement I(s) over the prior (fitted laws); lower: its lower interval end; evidence:
  lower > 0 (without it the prior is kept). extrapolated / prior_extrapolated: domains whose
  multiplier at the chosen mixture / at the prior lies outside the factors the plan tested, where
  the fitted law is extrapolated.
  """
  fraction: float
  weights: np.ndarray
  gain: float
  lower: float
  evidence: bool
  level: float
  fractions: np.ndarray
  gains: np.ndarray
  lower_bounds: np.ndarray
  extrapolated: tuple[int, ...]
  prior_extrapolated: tuple[int, ...]

  def to_dict(self) -> dict[str, Any]:
    """Plain JSON (a lower end that could not be computed, -inf, becomes None)."""
    finite = lambda v: float(v) if np.isfinite(v) else None
    return {'fraction': self.fraction, 'weights': self.weights.tolist(), 'gain': self.gain,
            'lower': finite(self.lower), 'evidence': self.evidence, 'level': self.level,
            'fractions': self.fractions.tolist(), 'gains': self.gains.tolist(),
            'lower_bounds': [finite(v) for v in self.lower_bounds],
            'extrapolated': list(self.extrapolated),
            'prior_extrapolated': list(self.prior_extrapolated)}


def _weights(name: str, values: ArrayLike, m: int) -> np.ndarray:
  w = np.asarray(values, np.float64)
  if w.shape != (m,):
    raise UserError(f'{name} must hold one weight per domain ({m}); got shape {w.shape}.')
  if not np.all(np.isfinite(w)) or np.any(w < 0):
    raise UserError(f'{name} must be finite weights >= 0; got {w.tolist()}.')
  if abs(w.sum() - 1) > _SUM_TOL:
    raise UserError(f'{name} must sum to 1 (within {_SUM_TOL:g}); they sum to {w.sum():.9g}.')
  return w


def _check_draws(samples: int, noise: float | None, level: float = 0.5) -> None:
  check_number(level, 'level', more_than=0, below=1, error=UserError)
  check_number(samples, 'samples', least=1, whole=True, error=UserError)
  if noise is not None:
    check_number(noise, 'noise', least=0, error=UserError)


def _multipliers(problem: DDOProblem, weights: np.ndarray) -> np.ndarray:
  """n_i = w_i N / N_i_base for mixtures along the last axis, at the problem's budget."""
  return weights * (problem.budget / problem.base_quantities)


def _laws(fits: Sequence[Sequence[PowerLaw]]) -> np.ndarray:
  """[3, samples, domains] parameters (a, b, c) of fits[sample][domain]."""
  return np.array([[(f.a, f.b, f.c) for f in row] for row in fits], np.float64).transpose(2, 0, 1)


def _ratios(laws: np.ndarray, n: np.ndarray) -> np.ndarray:
  """J = 1 + sum_i [f_i(n_i) - f_i(1)] for every law sample [S] and multiplier row [K]: [S, K]."""
  a, b, c = (p[:, None, :] for p in laws)
  return 1 + np.sum(((n + a)**-b + c) - ((1 + a)**-b + c), axis=-1)


def refit_laws(problem: DDOProblem, *, samples: int = 200, noise: float | None = None,
               seed: int = 0) -> np.ndarray:
  """[3, samples, domains] refitted laws, drawn domain by domain from default_rng(seed) exactly
  as AutoScaleModel.predict_weights_interval draws one problem's, so a seed means the same refits.
  Fitting is the cost here; everything after it is array arithmetic, so one refit can serve
  shrink towards several priors (its `laws`)."""
  _check_draws(samples, noise)
  return _refits(problem, samples, noise, seed)


def _given_or_refit(problem: DDOProblem, laws: np.ndarray | None, samples: int,
                    noise: float | None, seed: int) -> np.ndarray:
  """`laws` (refit_laws of this problem, checked for its shape) or, when None, the refits."""
  if laws is None:
    return _refits(problem, samples, noise, seed)
  if np.shape(laws) != (3, samples, problem.base_quantities.size):
    raise UserError(f'laws must be refit_laws of this problem with samples={samples} (shape '
                    f'{(3, samples, problem.base_quantities.size)}); got {np.shape(laws)}.')
  return np.asarray(laws)


def _refits(problem: DDOProblem, samples: int, noise: float | None, seed: int) -> np.ndarray:
  if noise is None and all(len(f.x) <= 3 for f in problem.fits):
    warnings.warn('Every DDO fit is exactly determined, so resampling residuals adds no noise '
                  'and the interval has zero width; pass noise= or run replicates.', stacklevel=3)
  rng = np.random.default_rng(seed)
  per_domain = [bootstrap_fits(f, int(samples), rng, noise) for f in problem.fits]
  return _laws(list(zip(*per_domain)))


def path_fractions(grid: int = 21) -> np.ndarray:
  """The fractions s shrink tries: `grid` evenly spaced points from 0 (prior) to 1 (answer)."""
  check_number(grid, 'grid', least=2, whole=True, error=UserError)
  return np.linspace(0.0, 1.0, int(grid))


def blend(prior: ArrayLike, weights: ArrayLike, fraction: float) -> np.ndarray:
  """(1 - fraction) prior + fraction weights: another prediction shrunk by shrink's fraction."""
  p = np.asarray(prior, np.float64)
  p = _weights('prior', p, p.size)
  w = _weights('weights', weights, p.size)
  s = check_number(fraction, 'fraction', least=0, most=1, error=UserError)
  return (1 - s) * p + s * w


def predicted_ratio(problem: DDOProblem, weights: ArrayLike) -> float:
  """J(w) = 1 + sum_i [f_i(n_i) - f_i(1)]: the objective relative to the base run that the fitted
  separable model predicts for mixture w at the problem's budget (lower is better)."""
  w = _weights('weights', weights, problem.base_quantities.size)
  return float(_ratios(_laws([problem.fits]), _multipliers(problem, w)[None])[0, 0])


def extrapolated_domains(problem: DDOProblem, weights: ArrayLike) -> tuple[int, ...]:
  """Domains whose multiplier under mixture w lies outside [problem.lower, problem.upper] (the
  factors the plan tested): there the prediction rests on the law beyond its data."""
  m = problem.base_quantities.size
  n = _multipliers(problem, _weights('weights', weights, m))
  lo = _broadcast('lower', problem.lower, m, 0.0)
  hi = _broadcast('upper', problem.upper, m, np.inf)
  outside = (n < lo * (1 - _ON_BOUND)) | (n > hi * (1 + _ON_BOUND))
  return tuple(int(i) for i in np.nonzero(outside)[0])


def _path(problem: DDOProblem, prior: ArrayLike, answer: ArrayLike,
          fractions: ArrayLike) -> np.ndarray:
  """The mixtures [prior, w(s) for each s], validated: [1 + len(fractions), domains]."""
  m = problem.base_quantities.size
  p, a = _weights('prior', prior, m), _weights('answer', answer, m)
  s = np.asarray(fractions, np.float64)
  if s.ndim != 1 or s.size == 0 or not np.all((s >= 0) & (s <= 1)):
    raise UserError(f'fractions must be a non-empty 1-D array of values in [0, 1]; got {s!r}.')
  return np.vstack([p, (1 - s)[:, None] * p + s[:, None] * a])


def _improvements(problem: DDOProblem, laws: np.ndarray, mixtures: np.ndarray) -> np.ndarray:
  """I = J(prior) - J(w(s)) for mixtures [prior, path...]: [S, len(path)]."""
  j = _ratios(laws, _multipliers(problem, mixtures))
  return j[:, :1] - j[:, 1:]


def improvement_draws(problem: DDOProblem, prior: ArrayLike, answer: ArrayLike,
                      fractions: ArrayLike, *, samples: int = 200, noise: float | None = None,
                      seed: int = 0) -> np.ndarray:
  """[samples, fractions] bootstrap draws of I(s) = J(prior) - J((1 - s) prior + s answer).

  Draw b uses sample b's refit of every domain's law (bootstrap_fits with `noise`, the objective
  ratio's seed-to-seed std, or the fit's own residuals when None).
  """
  _check_draws(samples, noise)
  mixtures = _path(problem, prior, answer, fractions)
  return _improvements(problem, _refits(problem, samples, noise, seed), mixtures)


def _lower_ends(draws: np.ndarray, level: float) -> np.ndarray:
  lower = np.quantile(draws, (1 - level) / 2, axis=0)
  return np.where(np.isnan(lower), -np.inf, lower)  # inf - inf (a law overflowing): no evidence


def shrink(problem: DDOProblem, prior: ArrayLike, answer: ArrayLike, *, level: float = 0.9,
           samples: int = 200, noise: float | None = None, seed: int = 0,
           grid: int = 21, laws: np.ndarray | None = None) -> Shrinkage:
  """The fraction of the way from prior to answer whose improvement has the highest lower end
  (np.quantile at (1 - level) / 2 of improvement_draws; ties go to the smaller fraction).

  When no fraction's lower end is above 0 the noise cannot tell any move from none, so the prior
  is kept (fraction 0, evidence False). `laws`: this problem's refit_laws with the same samples,
  noise and seed, computed once for several priors (None: refitted here).
  """
  _check_draws(samples, noise, level)
  fractions = path_fractions(grid)
  mixtures = _path(problem, prior, answer, fractions)
  gains = _improvements(problem, _laws([problem.fits]), mixtures)[0]
  laws = _given_or_refit(problem, laws, samples, noise, seed)
  lower = _lower_ends(_improvements(problem, laws, mixtures), level)
  best = int(np.argmax(lower))  # the first of equal maxima: the one closest to the prior
  evidence = bool(lower[best] > 0)
  if not evidence:
    best = 0
  weights, prior = mixtures[1 + best], mixtures[0]
  return Shrinkage(float(fractions[best]), weights, float(gains[best]), float(lower[best]),
                   evidence, float(level), fractions, gains, lower,
                   extrapolated_domains(problem, weights), extrapolated_domains(problem, prior))


def ratio_draws(problem: DDOProblem, mixtures: Sequence[ArrayLike], *, samples: int = 200,
                noise: float | None = None, seed: int = 0,
                laws: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
  """J(w) of each mixture under the fitted laws [K] and under every refit [samples, K] (the same
  refits as shrink with the same seed): one refit serves any number of mixtures and any
  difference between them (e.g. a recommended mixture's gain over uniform, paired by draw).
  `laws`: refit_laws already computed with the same samples, noise and seed (as in shrink)."""
  _check_draws(samples, noise)
  m = problem.base_quantities.size
  if len(mixtures) == 0:
    raise UserError('mixtures must name at least one mixture.')
  n = _multipliers(problem, np.array([_weights(f'mixtures[{k}]', w, m)
                                      for k, w in enumerate(mixtures)]))
  return (_ratios(_laws([problem.fits]), n)[0],
          _ratios(_given_or_refit(problem, laws, samples, noise, seed), n))


def ratio_intervals(problem: DDOProblem, mixtures: Sequence[ArrayLike], *, level: float = 0.9,
                    samples: int = 200, noise: float | None = None,
                    seed: int = 0) -> list[RatioInterval]:
  """J(w) for each mixture with its `level` bootstrap interval (ratio_draws' quantiles): the
  objective predicted before any validation run, e.g. for recommended, uniform and natural."""
  _check_draws(samples, noise, level)
  points, draws = ratio_draws(problem, mixtures, samples=samples, noise=noise, seed=seed)
  low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
  return [RatioInterval(float(p), float(lo), float(hi)) for p, lo, hi in zip(points, low, high)]
