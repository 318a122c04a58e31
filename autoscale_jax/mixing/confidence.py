"""How much a measured answer can be trusted: seed noise, paired differences, tokens saved.

Pure statistics over numbers the pipeline measured (objectives of runs that differ only in their
mixture, per seed): a t-interval on paired differences with a verdict word, a bootstrap over
seeds for the tokens a mixture saves, and the seed noise of DDO's objective ratios pooled over
replicated runs.
"""

import dataclasses
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from autoscale_jax.errors import UserError

LEVEL = 0.95  # coverage of every interval this module reports unless told otherwise
VERDICTS = ('better', 'worse', 'inconclusive')


@dataclasses.dataclass(frozen=True)
class Paired:
  """The mean of paired differences (candidate minus baseline, lower is better) over n seeds,
  its interval (None with one seed) and the verdict the interval allows."""
  mean: float
  low: float | None
  high: float | None
  n: int
  verdict: str

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def mean_interval(values: ArrayLike, level: float = LEVEL) -> dict[str, Any]:
  """The mean of values (one per seed) with its t-interval (None with one value)."""
  v = np.asarray(values, np.float64)
  if v.ndim != 1 or v.size == 0:
    raise UserError(f'mean_interval needs a non-empty 1-D array; got shape {v.shape}.')
  if not 0 < level < 1:
    raise UserError(f'level must be in (0, 1); got {level}.')
  if v.size == 1:
    return {'mean': float(v[0]), 'low': None, 'high': None, 'n': 1}
  half = float(stats.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
  return {'mean': float(v.mean()), 'low': float(v.mean() - half),
          'high': float(v.mean() + half), 'n': int(v.size)}


def paired_difference(candidate: ArrayLike, baseline: ArrayLike, level: float = LEVEL, *,
                      higher_is_better: bool = False) -> Paired:
  """t-interval on candidate[s] - baseline[s] (seed s of both shares its initialization).

  'better' when the whole interval is below 0 (lower objective or loss; above 0 with
  higher_is_better, e.g. an accuracy), 'worse' when on the other side, 'inconclusive' when it
  contains 0 or, with one seed, when there is no interval at all.
  """
  a, b = np.asarray(candidate, np.float64), np.asarray(baseline, np.float64)
  if a.shape != b.shape or a.ndim != 1 or a.size == 0:
    raise UserError(f'paired_difference needs two equal-length 1-D arrays (one value per seed); '
                    f'got shapes {a.shape} and {b.shape}.')
  d = mean_interval(a - b, level)
  if d['low'] is None:
    return Paired(d['mean'], None, None, 1, 'inconclusive')
  below, above = d['high'] < 0, d['low'] > 0
  if higher_is_better:
    below, above = above, below
  verdict = 'better' if below else 'worse' if above else 'inconclusive'
  return Paired(d['mean'], d['low'], d['high'], d['n'], verdict)


def tokens_to_reach(tokens: ArrayLike, curve: ArrayLike, level: float) -> float | None:
  """Tokens at which an objective curve first reaches `level` (linear between evaluations);
  None if it never does."""
  tokens, curve = np.asarray(tokens, np.float64), np.asarray(curve, np.float64)
  for k in range(curve.size):
    if curve[k] <= level:
      if k == 0 or curve[k - 1] == curve[k]:
        return float(tokens[k])
      frac = (curve[k - 1] - level) / (curve[k - 1] - curve[k])
      return float(tokens[k - 1] + frac * (tokens[k] - tokens[k - 1]))
  return None


def tokens_saved(tokens: ArrayLike, candidate: ArrayLike, baseline_final: float) -> float | None:
  """1 - (tokens the candidate's curve needs to reach the baseline's final objective) / (the
  baseline's tokens, the last entry of `tokens`); None when it never reaches it."""
  tokens = np.asarray(tokens, np.float64)
  reach = tokens_to_reach(tokens, candidate, baseline_final)
  return None if reach is None else 1.0 - reach / float(tokens[-1])


@dataclasses.dataclass(frozen=True)
class Saved:
  """Tokens saved on the seed-mean curves, with a bootstrap interval over seeds.

  `value`, `low` and `high` are None where the curve does not reach the baseline ("not
  reached", which ranks below every reached value); `not_reached` is the share of bootstrap
  samples where it did not.
  """
  value: float | None
  low: float | None
  high: float | None
  not_reached: float
  n: int

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def saved_interval(tokens: ArrayLike, candidate: ArrayLike, baseline_final: ArrayLike,
                   level: float = LEVEL, samples: int = 2000, seed: int = 0) -> Saved:
  """Tokens saved by the candidate (objective curves [seeds, points] at the evaluation points
  `tokens`, the last one the budget) over a baseline's final objectives [seeds], on the seed
  means; the interval resamples seeds (paired: a draw picks seed s of both). With one seed it
  collapses to the value."""
  cand, base = np.asarray(candidate, np.float64), np.asarray(baseline_final, np.float64)
  if cand.ndim != 2 or cand.shape[1] != np.size(tokens) or base.shape != cand.shape[:1]:
    raise UserError(f'saved_interval needs candidate curves [seeds, points] matching tokens and '
                    f'one baseline value per seed; got {cand.shape}, {np.size(tokens)} points '
                    f'and {base.shape}.')
  value = tokens_saved(tokens, cand.mean(0), base.mean())
  n = cand.shape[0]
  draws = np.random.default_rng(seed).integers(0, n, size=(samples, n))
  # Not reached ranks below every reached value: -inf while sorting, None when reported.
  values = np.array([_or_minus_inf(tokens_saved(tokens, cand[i].mean(0), base[i].mean()))
                     for i in draws])
  low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2], method='inverted_cdf')
  return Saved(value, _finite(low), _finite(high), float(np.mean(np.isinf(values))), n)


def _or_minus_inf(v: float | None) -> float:
  return -np.inf if v is None else v


def _finite(v: float) -> float | None:
  return float(v) if np.isfinite(v) else None


@dataclasses.dataclass(frozen=True)
class Noise:
  """Seed-to-seed standard deviation of a quantity pooled over groups of replicates, with its
  degrees of freedom (the number of replicates minus the number of groups)."""
  sigma: float
  dof: int

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def pooled_noise(groups: Sequence[Hashable], values: ArrayLike) -> Noise | None:
  """The pooled within-group standard deviation of `values` (each group: replicates of one
  setting, e.g. one DDO perturbation at one budget); None when no group has two replicates."""
  values = np.asarray(values, np.float64)
  if values.shape != (len(groups),):
    raise UserError(f'pooled_noise needs one group label per value; got {len(groups)} labels '
                    f'for {values.shape} values.')
  squares, dof = 0.0, 0
  for g in dict.fromkeys(groups):
    v = values[[k for k, h in enumerate(groups) if h == g]]
    squares += float(np.sum((v - v.mean())**2))
    dof += v.size - 1
  return Noise(float(np.sqrt(squares / dof)), dof) if dof else None


def combine_noise(parts: Sequence[Noise | None]) -> Noise | None:
  """Pools several estimates (e.g. one per DDO budget) weighting each by its degrees of freedom."""
  parts = [p for p in parts if p is not None]
  dof = sum(p.dof for p in parts)
  if not dof:
    return None
  return Noise(float(np.sqrt(sum(p.sigma**2 * p.dof for p in parts) / dof)), dof)
