"""RegMix (Liu et al. 2024): regress the objective on the mixture, then search Dirichlet samples.

A swarm of proxy runs at random mixtures gives (mixture, objective) pairs; a regressor (linear or
LightGBM) learns the map, scores many candidate mixtures, and the mean of the top-k best-scored
candidates is the answer (averaging steadies the regressor's noisy argmin).
"""

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from autoscale_jax.errors import UserError
from autoscale_jax.mixing.mixing_law import check_bounds, check_mixtures

KINDS = ('linear', 'lightgbm')
# Candidate concentrations: each candidate draws its own symmetric Dirichlet concentration (per
# domain) log-uniformly from this range (RegMix scales its concentrations from 0.1 to 5), so
# candidates run from near-vertex mixtures (0.1) to near-uniform ones (5).
CONCENTRATION = (0.1, 5.0)
# LightGBM settings for a swarm of tens to hundreds of runs (its default min_child_samples=20
# would leave a small swarm a handful of leaves); `params` overrides any of them.
_LIGHTGBM_PARAMS = {'objective': 'regression', 'learning_rate': 0.01, 'num_leaves': 15,
                    'min_data_in_leaf': 3, 'seed': 0, 'deterministic': True, 'verbose': -1,
                    'num_threads': 1}
_LIGHTGBM_ROUNDS = 1000


def _lightgbm():
  try:
    import lightgbm
  except ImportError:
    raise UserError('RegMixRegressor(kind="lightgbm") needs LightGBM, which is not installed: '
                    'pip install -e ".[regmix]" (or use kind="linear").') from None
  return lightgbm


class RegMixRegressor:
  """Mixture (m,) -> objective regression: 'linear' (least squares) or 'lightgbm' (boosting).

  'linear' fits objective = b + sum_j a_j r_j. On the simplex 1 = sum_j r_j, so the intercept
  column is a sum of the others; numpy's lstsq returns the minimum-norm solution, whose
  predictions on the simplex are the unique least-squares ones. 'lightgbm' imports LightGBM on
  construction, so a missing install stops before any fitting; `params` adds to or overrides its
  settings (rounds via 'num_boost_round').
  """

  def __init__(self, kind: str = 'linear', params: dict[str, Any] | None = None):
    if kind not in KINDS:
      raise UserError(f'kind must be one of {KINDS}; got {kind!r}.')
    if kind == 'lightgbm':
      _lightgbm()
    elif params:
      raise UserError('params only applies to kind="lightgbm"; drop it for kind="linear".')
    self.kind = kind
    self.params = dict(params or {})
    self.m: int | None = None
    self._coef: np.ndarray | None = None
    self._booster = None

  def fit(self, mixtures: ArrayLike, objective: ArrayLike) -> 'RegMixRegressor':
    """Fits on mixtures (n, m) on the simplex and their measured objective (n,); returns self."""
    r = check_mixtures('mixtures', mixtures)
    y = np.asarray(objective, np.float64)
    if y.shape != (r.shape[0],):
      raise UserError(f'objective must hold one value per mixture ({r.shape[0]}); got shape '
                      f'{y.shape}.')
    if not np.all(np.isfinite(y)):
      raise UserError('objective must be finite (did a run diverge or not finish?).')
    if r.shape[0] < 2:
      raise UserError('RegMixRegressor.fit needs at least 2 mixtures.')
    if self.kind == 'linear':
      features = np.concatenate([np.ones((r.shape[0], 1)), r], axis=1)
      self._coef = np.linalg.lstsq(features, y, rcond=None)[0]
    else:
      lgb = _lightgbm()
      params = {**_LIGHTGBM_PARAMS, **self.params}
      rounds = int(params.pop('num_boost_round', _LIGHTGBM_ROUNDS))
      self._booster = lgb.train(params, lgb.Dataset(r, y), num_boost_round=rounds)
    self.m = r.shape[1]
    return self

  def predict(self, mixtures: ArrayLike) -> np.ndarray:
    """Predicted objective (n',) at mixtures (n', m)."""
    if self.m is None:
      raise UserError('RegMixRegressor.predict needs a fitted regressor: call fit first.')
    r = check_mixtures('mixtures', mixtures, self.m)
    if self.kind == 'linear':
      return self._coef[0] + r @ self._coef[1:]
    return np.asarray(self._booster.predict(r), np.float64)


def _whole(name: str, value: Any, least: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
    raise UserError(f'{name} must be a whole number >= {least}; got {value!r}.')
  return int(value)


def regmix_search(regressor: RegMixRegressor, m: int, samples: int, top_k: int,
                  rng: np.random.Generator, lower: ArrayLike | None = None,
                  upper: ArrayLike | None = None) -> np.ndarray:
  """Weights (m,): the mean of the top_k lowest-scored of `samples` random candidate mixtures.

  Candidates are symmetric Dirichlet draws, each with its own concentration (log-uniform in
  CONCENTRATION, as RegMix varies it), so the search covers vertices, edges and the interior.
  RegMix centres its draws on the natural token distribution; here every domain is treated
  alike. Candidates outside lower/upper (scalars or (m,) proportions) are rejected, and the mean
  of in-bound candidates is in bounds too.
  """
  if not isinstance(regressor, RegMixRegressor) or regressor.m is None:
    raise UserError('regmix_search needs a fitted RegMixRegressor (call .fit first).')
  m = _whole('m', m, 2)
  if regressor.m != m:
    raise UserError(f'm={m} but the regressor was fitted on {regressor.m} domains.')
  samples = _whole('samples', samples, 1)
  top_k = _whole('top_k', top_k, 1)
  if top_k > samples:
    raise UserError(f'top_k={top_k} exceeds samples={samples}; lower top_k or draw more samples.')
  if not isinstance(rng, np.random.Generator):
    raise UserError('rng must be a numpy Generator, e.g. np.random.default_rng(seed).')
  lo, hi = check_bounds(lower, upper, m)
  log_conc = rng.uniform(math.log(CONCENTRATION[0]), math.log(CONCENTRATION[1]), (samples, 1))
  draws = rng.standard_gamma(np.broadcast_to(np.exp(log_conc), (samples, m)))
  totals = draws.sum(axis=1, keepdims=True)
  ok = totals[:, 0] > 0  # every gamma draw of a row can underflow at tiny concentrations
  candidates = draws[ok] / totals[ok]
  candidates = candidates[np.all((candidates >= lo) & (candidates <= hi), axis=1)]
  if len(candidates) < top_k:
    raise UserError(f'only {len(candidates)} of {samples} candidate mixtures fall within '
                    f'lower/upper, fewer than top_k={top_k}: raise samples or loosen the bounds.')
  scores = regressor.predict(candidates)
  best = np.argsort(scores, kind='stable')[:top_k]
  return candidates[best].mean(axis=0)
