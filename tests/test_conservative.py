"""The conservative shrink rule against brute-force loops and known laws."""

import functools
import json
import warnings

import numpy as np
import pytest

from autoscale_jax.errors import UserError
from autoscale_jax.mixing import (
  DDOProblem,
  PowerLaw,
  blend,
  bootstrap_fits,
  ddo_weights,
  extrapolated_domains,
  improvement_draws,
  path_fractions,
  predicted_ratio,
  ratio_intervals,
  refit_laws,
  shrink,
)
from autoscale_jax.mixing.powerlaw import fit_rows

# c = 1 - (1 + a)^-b puts each law through y(1) = 1, the base run.
LAWS = [PowerLaw(a, b, 1 - (1 + a)**-b) for a, b in [(0.8, 1.2), (2.0, 0.9), (0.4, 2.0)]]
X = np.array([0.2, 1.0, 3.0])
# Power-of-two shares, so the base mixture's multipliers w_i N / N_i_base are exactly 1.
BASE = np.array([1e6, 2e6, 1e6])
PRIOR = np.array([0.6, 0.2, 0.2])
SAMPLES = 64  # one sample count everywhere: one compiled refit


@functools.cache
def _fits() -> tuple[PowerLaw, ...]:
  """Exact 3-point fits of LAWS, their rows repeated to SAMPLES rows: the batch then has the
  refits' shape, so the fit kernel compiles once for the file instead of twice."""
  ys = np.resize([law(X) for law in LAWS], (SAMPLES, X.size))
  return tuple(fit_rows(X, ys, None)[:len(LAWS)])


def _problem(lower=0.2, upper=3.0) -> DDOProblem:
  return DDOProblem(BASE, _fits(), lower, upper)


def _optimum(problem) -> np.ndarray:
  return ddo_weights(problem.multipliers(), problem.base_quantities)


def _ratio(laws, w) -> float:
  """J(w) = 1 + sum_i [f_i(n_i) - f_i(1)], one domain at a time in Python floats."""
  total = 1.0
  for i, law in enumerate(laws):
    total += law(float(w[i]) * float(BASE.sum()) / float(BASE[i])) - law(1.0)
  return total


def _refits(seed, noise):
  """[domain][sample] refits, drawn in the order the module promises."""
  rng = np.random.default_rng(seed)
  return [bootstrap_fits(f, SAMPLES, rng, noise) for f in _fits()]


def test_draws_and_choice_equal_a_brute_force_loop():
  problem, answer = _problem(), _optimum(_problem())
  fractions = path_fractions(21)
  draws = improvement_draws(problem, PRIOR, answer, fractions, samples=SAMPLES, noise=0.1,
                            seed=7)
  refits = _refits(7, 0.1)
  loop = np.empty((SAMPLES, fractions.size))
  for b in range(SAMPLES):
    laws = [refits[i][b] for i in range(3)]
    for k, s in enumerate(fractions):
      w = [(1 - s) * p + s * a for p, a in zip(PRIOR, answer)]
      loop[b, k] = _ratio(laws, PRIOR) - _ratio(laws, w)
  assert draws.shape == (SAMPLES, 21)
  np.testing.assert_allclose(draws, loop, rtol=0, atol=1e-12)
  assert np.ptp(loop[:, -1]) > 0.01  # the noise does move the draws

  lows = [np.quantile(loop[:, k], 0.05) for k in range(fractions.size)]
  best = 0
  for k in range(fractions.size):
    if lows[k] > lows[best]:
      best = k
  result = shrink(problem, PRIOR, answer, level=0.9, samples=SAMPLES, noise=0.1, seed=7)
  assert 0 < best < 20  # this noise stops short of the answer: the rule is exercised
  assert result.fraction == fractions[best] and result.evidence
  assert result.lower == pytest.approx(lows[best], abs=1e-12)
  np.testing.assert_allclose(result.lower_bounds, lows, rtol=0, atol=1e-12)
  np.testing.assert_array_equal(result.weights, blend(PRIOR, answer, result.fraction))
  assert result.gain == pytest.approx(_ratio(_fits(), PRIOR) - _ratio(_fits(), result.weights),
                                      abs=1e-12)


def test_without_noise_the_optimum_is_taken_in_full():
  problem = _problem()
  answer = _optimum(problem)
  result = shrink(problem, PRIOR, answer, samples=SAMPLES, noise=0.0)
  draws = improvement_draws(problem, PRIOR, answer, result.fractions, samples=SAMPLES, noise=0.0)
  np.testing.assert_allclose(draws, np.broadcast_to(result.gains, draws.shape), atol=1e-9)
  # J is convex along the path with its minimum at the answer: the gain never falls.
  assert np.all(np.diff(result.gains) >= 0)
  assert result.fraction == 1.0 and result.evidence
  np.testing.assert_array_equal(result.weights, answer)
  assert result.gain > 0.3 and result.lower == pytest.approx(result.gain, abs=1e-9)
  # The gain under the laws the fits came from.
  assert result.gain == pytest.approx(_ratio(LAWS, PRIOR) - _ratio(LAWS, answer), rel=1e-6)
  assert json.loads(json.dumps(result.to_dict()))['fraction'] == 1.0
  # Exact fits without noise=: a warning, and refits of the unchanged curve, as with noise 0.
  with pytest.warns(UserWarning, match='exactly determined'):
    blind = improvement_draws(problem, PRIOR, answer, result.fractions, samples=SAMPLES)
  np.testing.assert_array_equal(blind, draws)


def test_prior_at_the_optimum_keeps_the_prior():
  problem = _problem(lower=1.0, upper=1.0)  # every domain pinned at its base quantity
  assert problem.pinned() == (0, 1, 2)
  answer = _optimum(problem)
  np.testing.assert_array_equal(answer, BASE / BASE.sum())
  result = shrink(problem, answer, answer, samples=SAMPLES, noise=0.05)
  assert np.all(result.gains == 0) and np.all(result.lower_bounds == 0)
  assert result.fraction == 0.0 and not result.evidence and result.lower == 0.0
  np.testing.assert_array_equal(result.weights, answer)
  draws = improvement_draws(problem, answer, answer, [0.0, 0.5, 1.0], samples=SAMPLES, noise=0.05)
  assert np.all(draws == 0)


def test_noise_decides_how_far_to_move():
  problem = _problem()
  answer = _optimum(problem)
  results = [shrink(problem, PRIOR, answer, samples=SAMPLES, noise=noise)
             for noise in (1e-4, 0.03, 0.1, 1.0)]
  tiny, huge = results[0], results[-1]
  assert tiny.evidence and tiny.fraction == 1.0
  assert 0 < tiny.gain - tiny.lower < 1e-3
  assert not huge.evidence and huge.fraction == 0.0 and huge.lower == 0.0
  assert np.all(huge.lower_bounds[1:] < 0)  # noise 1 dwarfs an effect of 0.38
  np.testing.assert_array_equal(huge.weights, PRIOR)
  fractions = [r.fraction for r in results]
  assert fractions == sorted(fractions, reverse=True) and len(set(fractions)) == 4
  # One refit shared by two priors chooses exactly as a refit per call does.
  laws = refit_laws(problem, samples=SAMPLES, noise=0.03, seed=0)
  for prior in (PRIOR, np.full(3, 1 / 3)):
    shared = shrink(problem, prior, answer, samples=SAMPLES, noise=0.03, laws=laws)
    alone = shrink(problem, prior, answer, samples=SAMPLES, noise=0.03)
    np.testing.assert_array_equal(shared.lower_bounds, alone.lower_bounds)
    assert shared.fraction == alone.fraction
  with pytest.raises(UserError, match='laws must be refit_laws'):
    shrink(problem, PRIOR, answer, samples=SAMPLES // 2, noise=0.03, laws=laws)


def test_domains_outside_the_tested_factors_are_named():
  problem = _problem()
  # Multipliers w N / N_base = [3.6, 0.1, 0.2]: above upper, below lower, on lower.
  prior = np.array([0.9, 0.05, 0.05])
  assert extrapolated_domains(problem, prior) == (0, 1)
  assert extrapolated_domains(_problem(upper=None), prior) == (1,)
  assert extrapolated_domains(_problem(lower=(0.2, 0.1, 0.2), upper=(3.6, 3, 3)), prior) == ()
  answer = _optimum(problem)  # domain 1 sits on its lower bound: not outside
  moved = shrink(problem, prior, answer, samples=SAMPLES, noise=1e-4)
  assert moved.fraction == 1.0 and moved.extrapolated == () and moved.prior_extrapolated == (0, 1)
  kept = shrink(problem, prior, prior, samples=SAMPLES, noise=0.1)
  assert kept.fraction == 0.0 and kept.extrapolated == kept.prior_extrapolated == (0, 1)


def test_blend_and_predicted_ratios_with_their_intervals():
  problem = _problem()
  answer = _optimum(problem)
  mixed = blend(PRIOR, answer, 0.3)
  np.testing.assert_array_equal(mixed, 0.7 * PRIOR + 0.3 * answer)
  assert mixed.sum() == pytest.approx(1.0, abs=1e-15)
  np.testing.assert_array_equal(blend(PRIOR, answer, 0.0), PRIOR)
  np.testing.assert_array_equal(blend(PRIOR, answer, 1.0), answer)

  base, uniform = BASE / BASE.sum(), np.full(3, 1 / 3)
  mixtures = [answer, uniform, base]
  assert predicted_ratio(problem, base) == 1.0
  assert predicted_ratio(problem, uniform) == pytest.approx(_ratio(LAWS, uniform), rel=1e-6)
  intervals = ratio_intervals(problem, mixtures, level=0.8, samples=SAMPLES, noise=0.02, seed=3)
  refits = _refits(3, 0.02)
  for w, (point, low, high) in zip(mixtures, intervals):
    assert point == predicted_ratio(problem, w) and low <= point <= high
    ratios = [_ratio([refits[i][b] for i in range(3)], w) for b in range(SAMPLES)]
    assert (low, high) == pytest.approx(tuple(np.quantile(ratios, [0.1, 0.9])), abs=1e-12)
  assert intervals[2] == (1.0, 1.0, 1.0)  # every refit predicts the base run's own objective
  assert intervals[0].high < intervals[1].low  # the optimum's predicted gain over uniform


@pytest.mark.parametrize('call, match', [
    (lambda p: shrink(p, [0.5, 0.5], PRIOR), r'prior must hold one weight per domain \(3\)'),
    (lambda p: shrink(p, [0.5, 0.3, 0.1], PRIOR), 'prior must sum to 1'),
    (lambda p: shrink(p, PRIOR, [1.2, -0.1, -0.1]), 'answer must be finite weights >= 0'),
    (lambda p: shrink(p, PRIOR, PRIOR, level=1.0), 'level is 1.0'),
    (lambda p: shrink(p, PRIOR, PRIOR, samples=0), 'samples is 0'),
    (lambda p: shrink(p, PRIOR, PRIOR, samples=2.5), 'samples is 2.5'),
    (lambda p: shrink(p, PRIOR, PRIOR, grid=1), 'grid is 1'),
    (lambda p: shrink(p, PRIOR, PRIOR, noise=-0.1), 'noise is -0.1'),
    (lambda p: improvement_draws(p, PRIOR, PRIOR, [0.0, 1.5]), 'fractions must'),
    (lambda p: blend(PRIOR, PRIOR, 1.5), 'fraction is 1.5'),
    (lambda p: blend(PRIOR, [0.5, 0.5], 0.5), r'weights must hold one weight per domain \(3\)'),
    (lambda p: ratio_intervals(p, [PRIOR, [0.5, 0.6, 0.1]]), r'mixtures\[1\] must sum to 1'),
    (lambda p: ratio_intervals(p, []), 'mixtures must name'),
    (lambda p: predicted_ratio(p, [np.nan, 0.5, 0.5]), 'weights must be finite'),
])
def test_bad_input_stops_with_one_clear_error(call, match):
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # refused before any refit
    with pytest.raises(UserError, match=match):
      call(_problem())
