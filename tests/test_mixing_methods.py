"""Data Mixing Laws, RegMix, DoReMi's update and the heuristics, checked against scipy and hand
computations."""

import json
import sys

import numpy as np
import pytest
from scipy.optimize import minimize

from autoscale_jax.errors import UserError
from autoscale_jax.mixing import (
  MixingLaw,
  RegMixRegressor,
  doremi_update,
  regmix_search,
  temperature_weights,
  unimax_weights,
)

M = 4  # training domains (mixture columns)
KV = 4  # validation domains (loss columns)


def _simplex_min(f, m, lower=0.0, upper=1.0):
  """(argmin, min) of f over {sum r = 1, lower <= r <= upper} by SLSQP from the centre and every
  vertex: an optimizer independent of the one under test."""
  best = None
  for start in [np.full(m, 1.0 / m)] + list(np.eye(m)):
    res = minimize(f, np.clip(start, lower, upper), method='SLSQP', bounds=[(lower, upper)] * m,
                   constraints=[{'type': 'eq', 'fun': lambda r: r.sum() - 1}],
                   options={'ftol': 1e-14, 'maxiter': 1000})
    if res.success and np.all(res.x >= lower - 1e-9) and (best is None or res.fun < best[1]):
      best = (res.x, float(res.fun))
  return best


@pytest.fixture(scope='module')
def world():
  """A known mixing law (c in [1, 3], k in [0.5, 2], t in [-3, 1]) and a law fitted to it from 40
  noiseless Dirichlet mixtures."""
  rng = np.random.default_rng(0)
  c, k = rng.uniform(1, 3, KV), rng.uniform(0.5, 2, KV)
  t = rng.uniform(-3, 1, (KV, M))
  true = lambda r: c + k * np.exp(np.atleast_2d(r) @ t.T)
  mixtures = rng.dirichlet(np.ones(M), 40)
  return true, MixingLaw.fit(mixtures, true(mixtures)), rng


def test_mixing_law_predicts_fresh_mixtures(world):
  true, law, rng = world
  fresh = rng.dirichlet(np.ones(M), 20)
  np.testing.assert_allclose(law.predict(fresh), true(fresh), rtol=1e-3)
  assert law.predict(fresh).shape == (20, KV)
  assert len(law.rmse) == KV and max(law.rmse) < 1e-6


def test_mixing_law_optimum_matches_scipy_on_the_true_law(world):
  true, law, _ = world
  w = law.optimize()
  assert w.shape == (M,) and abs(w.sum() - 1) < 1e-9 and np.all(w >= 0)
  _, best = _simplex_min(lambda r: true(r).mean(), M)
  assert true(w).mean() <= best * (1 + 1e-3)


def test_mixing_law_optimum_respects_lower_bounds(world):
  true, law, _ = world
  w = law.optimize(lower=0.1)
  assert abs(w.sum() - 1) < 1e-9 and np.all(w >= 0.1 - 1e-12)
  _, best = _simplex_min(lambda r: true(r).mean(), M, lower=0.1)
  assert true(w).mean() <= best * (1 + 1e-3)
  # Without the bound this law's optimum leaves some domain below 0.1, so the bound binds.
  assert np.any(law.optimize() < 0.1 - 1e-6)


def test_mixing_law_perplexity_and_objective_weights(world):
  true, law, _ = world
  w = law.optimize(perplexity=True)
  _, best = _simplex_min(lambda r: np.exp(true(r)).mean(), M)
  assert np.exp(true(w)).mean() <= best * (1 + 1e-3)
  # One validation domain alone (weights one-hot): the optimum of that domain's true loss.
  for i in range(KV):
    one = np.eye(KV)[i]
    w = law.optimize(objective_weights=one)
    _, best = _simplex_min(lambda r: true(r)[0, i], M)
    assert true(w)[0, i] <= best * (1 + 1e-3)


def test_mixing_law_round_trips_through_json(world):
  _, law, rng = world
  again = MixingLaw.from_dict(json.loads(json.dumps(law.to_dict())))
  probe = rng.dirichlet(np.ones(M), 5)
  np.testing.assert_array_equal(again.predict(probe), law.predict(probe))
  assert again.rmse == law.rmse


def _bowl(r):
  """Linear in r plus a quadratic bowl around the uniform mixture; the optimum is vertex 0.

  The gradient at e_0 is a + (e_0 - u) = [1.75, 2.25, 2.75, 3.25]: every other coordinate's
  slope exceeds domain 0's by >= 0.5, so (KKT on the simplex) e_0 is the exact optimum.
  """
  a = np.array([1.0, 2.5, 3.0, 3.5])
  r = np.atleast_2d(r)
  return r @ a + 0.5 * np.sum((r - 1 / M)**2, axis=-1)


def test_regmix_linear_search_finds_the_optimum_vertex():
  """A linear regressor's best mixture is the vertex of its smallest slope; here that is the true
  optimum (e_0, see _bowl), and the top-k lowest-scored candidates are near-vertex Dirichlet
  draws (concentrations down to 0.1), so their mean sits within ~1e-3 of e_0. (With an interior
  optimum a linear model could not find it; that case is MixingLaw's.)"""
  rng = np.random.default_rng(1)
  mixtures = rng.dirichlet(np.ones(M), 64)
  reg = RegMixRegressor(kind='linear').fit(mixtures, _bowl(mixtures))
  w = regmix_search(reg, M, samples=20000, top_k=20, rng=rng)
  x, best = _simplex_min(lambda r: _bowl(r)[0], M)
  assert np.argmax(x) == 0 and best == pytest.approx(1.375, abs=1e-6)
  assert abs(w.sum() - 1) < 1e-9
  assert _bowl(w)[0] <= best * 1.01
  bounded = regmix_search(reg, M, samples=20000, top_k=20, rng=rng, lower=0.1)
  assert np.all(bounded >= 0.1) and abs(bounded.sum() - 1) < 1e-9


def test_regmix_linear_is_least_squares_despite_the_collinear_intercept():
  rng = np.random.default_rng(2)
  mixtures = rng.dirichlet(np.ones(M), 30)
  y = mixtures @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.7  # exactly affine: the fit reproduces it
  reg = RegMixRegressor().fit(mixtures, y)
  probe = rng.dirichlet(np.ones(M), 7)
  np.testing.assert_allclose(reg.predict(probe), probe @ np.array([1.0, -2.0, 0.5, 3.0]) + 0.7,
                             rtol=1e-10)


def test_regmix_lightgbm_missing_says_how_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'lightgbm', None)
  with pytest.raises(UserError, match=r'pip install -e "\.\[regmix\]"'):
    RegMixRegressor(kind='lightgbm')


def test_regmix_search_says_when_bounds_reject_too_many():
  rng = np.random.default_rng(3)
  mixtures = rng.dirichlet(np.ones(M), 20)
  reg = RegMixRegressor().fit(mixtures, mixtures[:, 0])
  with pytest.raises(UserError, match='raise samples or loosen the bounds'):
    regmix_search(reg, M, samples=50, top_k=10, rng=rng, lower=0.24)


def test_doremi_update_by_hand():
  # w = [0.5, 0.3, 0.2], excess = [0.1, -0.2, 0.3], eta = 2, s = 0.1:
  # w' = [0.5 e^0.2, 0.3 e^0 (clipped), 0.2 e^0.6] = [0.6107013790800849, 0.3, 0.3644237600781018]
  # sum(w') = 1.2751251391581866, w'/sum = [0.4789344671561086, 0.2352710261818337,
  # 0.2857945066620579], then 0.9 * that + 0.1 / 3:
  w = doremi_update([0.5, 0.3, 0.2], [0.1, -0.2, 0.3], step_size=2.0, smoothing=0.1)
  np.testing.assert_allclose(w, [0.4643743537738311, 0.2450772568969836, 0.2905483893291854],
                             rtol=1e-12)
  assert w.sum() == pytest.approx(1.0, abs=1e-15)
  # Negative excess is clipped: all-negative excess leaves the weights as they were (s = 0).
  np.testing.assert_allclose(doremi_update([0.5, 0.3, 0.2], [-1, -2, -3], 5.0, 0.0),
                             [0.5, 0.3, 0.2], rtol=1e-15)
  # Smoothing 1 gives uniform; a huge exponent stays finite and puts (1 - s) + s/m on its domain.
  np.testing.assert_allclose(doremi_update([0.5, 0.3, 0.2], [1, 2, 3], 1.0, 1.0), [1 / 3] * 3)
  w = doremi_update([0.5, 0.3, 0.2], [0, 0, 1e4], 1.0, 0.3)
  np.testing.assert_allclose(w, [0.1, 0.1, 0.8], rtol=1e-12)


def test_temperature_weights():
  counts = np.array([1.0, 4.0, 9.0, 16.0])
  np.testing.assert_allclose(temperature_weights(counts, 1.0), counts / 30, rtol=1e-15)
  np.testing.assert_allclose(temperature_weights(counts, 2.0), [0.1, 0.2, 0.3, 0.4], rtol=1e-14)
  np.testing.assert_allclose(temperature_weights(counts, 1e6), [0.25] * 4, rtol=1e-5)
  assert temperature_weights([1e-300, 1e300], 0.01)[1] == 1.0  # no overflow at small tau


def test_unimax_caps_the_small_domain_and_shares_the_rest():
  # Budget 300, 2 epochs: the uniform share 75 exceeds the 10-token domain's cap of 20, so it
  # takes 20 and the others split the remaining 280 evenly (93.33 each, under their cap of 200).
  w = unimax_weights([100, 10, 100, 100], budget=300, max_epochs=2)
  np.testing.assert_allclose(w, np.array([280 / 3, 20, 280 / 3, 280 / 3]) / 300, rtol=1e-14)
  # No cap binds: uniform, whatever the sizes.
  np.testing.assert_allclose(unimax_weights([100, 200, 300], 300, 1), [1 / 3] * 3, rtol=1e-14)
  # Every cap binds exactly: the budget is all the data, max_epochs times.
  np.testing.assert_allclose(unimax_weights([10, 30], 80, 2), [0.25, 0.75], rtol=1e-14)


def test_unimax_refuses_a_budget_the_data_cannot_cover():
  with pytest.raises(UserError, match='budget=100.*max_epochs=4'):
    unimax_weights([10, 10], budget=100, max_epochs=4)


@pytest.mark.parametrize('call, match', [
    (lambda: MixingLaw.fit([[0.5, 0.6]] * 5, np.ones((5, 2))), 'sum to 1'),
    (lambda: MixingLaw.fit([[-0.5, 1.5]] * 5, np.ones((5, 2))), 'finite proportions >= 0'),
    (lambda: MixingLaw.fit(np.full((5, 2), 0.5), np.ones((4, 2))), 'one row per mixture'),
    (lambda: MixingLaw.fit(np.full((5, 2), 0.5), -np.ones((5, 2))), 'losses must be finite'),
    (lambda: MixingLaw.fit(np.full((2, 2), 0.5), np.ones((2, 2))), 'at least m \\+ 1'),
    (lambda: MixingLaw([1.0], [1.0], [[0.0, 0.0]]).optimize(lower=0.6), 'sum\\(lower\\)'),
    (lambda: MixingLaw([1.0], [1.0], [[0.0, 0.0]]).optimize(objective_weights=[1, 1]),
     'objective_weights'),
    (lambda: MixingLaw([1.0], [1.0], [[0.0, 0.0]]).predict([[0.2, 0.3, 0.5]]), 'needs 2'),
    (lambda: RegMixRegressor(kind='ridge'), 'kind'),
    (lambda: RegMixRegressor().fit(np.full((3, 2), 0.5), [1.0, 2.0]), 'objective'),
    (lambda: RegMixRegressor().predict(np.full((3, 2), 0.5)), 'call fit first'),
    (lambda: regmix_search(RegMixRegressor().fit(np.eye(2), [1.0, 2.0]), 3, 10, 2,
                           np.random.default_rng(0)), 'fitted on 2 domains'),
    (lambda: regmix_search(RegMixRegressor().fit(np.eye(2), [1.0, 2.0]), 2, 10, 20,
                           np.random.default_rng(0)), 'top_k'),
    (lambda: regmix_search(RegMixRegressor().fit(np.eye(2), [1.0, 2.0]), 2, 10, 2, 0), 'rng'),
    (lambda: doremi_update([0.5, 0.5], [0.1, 0.2, 0.3], 1.0, 0.1), 'excess_losses'),
    (lambda: doremi_update([0.5, 0.6], [0.1, 0.2], 1.0, 0.1), 'sum to 1'),
    (lambda: doremi_update([0.5, 0.5], [0.1, 0.2], 1.0, 1.5), 'smoothing'),
    (lambda: temperature_weights([1, 2], -1.0), 'tau'),
    (lambda: temperature_weights([1, -2], 1.0), 'token_counts'),
    (lambda: unimax_weights([1, 2], 0, 1), 'budget'),
])
def test_bad_input_is_a_user_error(call, match):
  with pytest.raises(UserError, match=match):
    call()
