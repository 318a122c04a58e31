"""AutoScaleModel against a synthetic separable power-law world whose optimum is known."""

import json
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from scipy.optimize import brentq

from autoscale_jax.errors import UserError
from autoscale_jax.mixing import AutoScaleModel, DDOProblem, PowerLaw, cap_to_data, fit_power_law

RNG = np.random.default_rng(0)
BETA = RNG.uniform(1.0, 5.0, 7)
GAMMA = RNG.uniform(0.1, 0.6, 7)


def world_optimum(budget, beta=BETA, gamma=GAMMA):
  """argmin sum_i beta_i N_i^-gamma_i s.t. sum N_i = budget, and its log price -ln lambda.

  Independent KKT: beta_i gamma_i N_i^(-gamma_i - 1) = lambda, solved for lambda with brentq.
  """
  def quantities(log_price):
    return (beta * gamma / np.exp(log_price))**(1 / (gamma + 1))
  log_price = brentq(lambda lp: np.log(quantities(lp).sum()) - np.log(budget), -400, 50,
                     xtol=1e-14, rtol=1e-15)
  return quantities(log_price), -log_price


@pytest.mark.parametrize('scale', [10, 100, 1000])
def test_two_budgets_predict_the_optimum_far_out(scale):
  model = AutoScaleModel.fit({1e8: world_optimum(1e8)[0], 3e8: world_optimum(3e8)[0]})
  target = 3e8 * scale
  q = model.predict(target)
  assert np.max(np.abs(q / world_optimum(target)[0] - 1)) < 1e-6
  assert q.sum() == pytest.approx(target, rel=1e-12)
  assert model.predict_weights(target).sum() == pytest.approx(1.0, rel=1e-12)
  assert model.residual < 1e-12 and model.held == ()


def test_geometric_step_is_the_papers_sequence():
  n1, n2 = world_optimum(1e8)[0], world_optimum(2e8)[0]
  model = AutoScaleModel.fit({1e8: n1, 2e8: n2})
  assert model.geometric_step(0) == pytest.approx(n2, rel=1e-12)
  assert model.geometric_step(1) == pytest.approx(n2**2 / n1, rel=1e-12)
  assert model.geometric_step(2) == pytest.approx(n2**3 / n1**2, rel=1e-12)


def test_three_noisy_budgets_recover_the_optimum_within_the_noise():
  sigma = 1e-3  # log-normal noise on each measured optimum
  budgets, target = [1e8, 3e8, 1e9], 1e10
  rng = np.random.default_rng(1)
  optima = {}
  for b in budgets:
    q = world_optimum(b)[0] * np.exp(rng.normal(0, sigma, BETA.size))
    optima[b] = q * b / q.sum()
  model = AutoScaleModel.fit(optima)
  assert 0.1 * sigma < model.residual < 2 * sigma
  # Leverage of a straight-line fit in the true t (-ln lambda) at the target: how far the noise
  # of the measured points carries there.
  t = np.array([world_optimum(b)[1] for b in budgets])
  t_target = world_optimum(target)[1]
  leverage = np.sqrt(1 / t.size + (t_target - t.mean())**2 / np.sum((t - t.mean())**2))
  error = np.log(model.predict_weights(target) / (world_optimum(target)[0] / target))
  assert np.max(np.abs(error)) < 5 * sigma * leverage
  exact = AutoScaleModel.fit({b: world_optimum(b)[0] for b in budgets})
  assert exact.residual < 1e-12
  assert np.max(np.abs(exact.predict(target) / world_optimum(target)[0] - 1)) < 1e-6


def test_pinned_domains_keep_their_weight_and_the_rest_follows_the_law():
  # Domain 0 sat on a bound (1% of the budget): the others share the rest optimally.
  n1 = np.concatenate([[1e6], world_optimum(0.99e8, BETA[1:], GAMMA[1:])[0]])
  n2 = np.concatenate([[3e6], world_optimum(2.97e8, BETA[1:], GAMMA[1:])[0]])
  with pytest.warns(UserWarning, match=r'Domains \[0\] are pinned'):
    model = AutoScaleModel.fit({1e8: n1, 3e8: n2}, pinned=[0])
  assert model.held == (0,)
  w = model.predict_weights(3e10)
  assert w[0] == pytest.approx(0.01, rel=1e-12) and w.sum() == pytest.approx(1.0, rel=1e-12)
  # The others follow the exact law restricted to the free domains.
  free = world_optimum(3e10 * 0.99, BETA[1:], GAMMA[1:])[0]
  assert np.max(np.abs(model.predict(3e10)[1:] / free - 1)) < 1e-6


def test_shrinking_domain_is_held_with_a_warning():
  n1, n2 = world_optimum(1e8)[0], world_optimum(3e8)[0]
  n2[2] = n1[2] * 0.9
  n2 *= 3e8 / n2.sum()
  with pytest.warns(UserWarning, match=r'Domains \[2\] do not grow'):
    model = AutoScaleModel.fit({1e8: n1, 3e8: n2})
  assert model.held == (2,)
  assert model.predict_weights(1e10)[2] == pytest.approx(n2[2] / 3e8, rel=1e-12)


@pytest.mark.parametrize('optima, match', [
    ({1e8: np.ones(3) * 1e8 / 3}, '2 or more budgets'),
    ({1e8: [5e7, 5e7], 2e8: [1e8, 5e7]}, 'sum to'),
    ({1e8: [1e8, 0.0], 2e8: [1e8, 1e8]}, '> 0'),
])
def test_bad_optima_stop_with_one_clear_error(optima, match):
  with pytest.raises(UserError, match=match):
    AutoScaleModel.fit(optima)


def _ddo_problems():
  """Two budgets' DDO problems whose fits come from noisy oversampled points."""
  rng = np.random.default_rng(3)
  laws = [PowerLaw(a, b, 1 - (1 + a)**-b) for a, b in [(0.8, 1.2), (2.0, 0.9), (0.4, 2.0)]]
  x = np.repeat([0.2, 1.0, 3.0], 2)
  problems = []
  for budget, shift in ((3e6, 0.0), (3e7, 0.3)):
    fits = tuple(fit_power_law(x, PowerLaw(f.a + shift, f.b, f.c)(x)
                               + rng.normal(0, 1e-3, x.size)) for f in laws)
    problems.append(DDOProblem(np.full(3, budget / 3), fits, 0.2, 3.0))
  return problems


def test_interval_from_ddo_covers_the_point_and_round_trips():
  problems = _ddo_problems()
  with pytest.warns(UserWarning, match=r'Domains \[1\] are pinned \(on a DDO bound'):
    model = AutoScaleModel.from_ddo(problems)
  assert model.budgets.tolist() == [3e6, 3e7] and model.held == (1,)
  interval = model.predict_weights_interval(3e8, level=0.9, samples=16, seed=0)
  assert interval.samples.shape == (16, 3)
  assert np.all(interval.low <= interval.high) and np.any(interval.high - interval.low > 0)
  assert np.allclose(interval.samples.sum(axis=1), 1.0)
  with pytest.warns(UserWarning, match='pinned'):
    again = AutoScaleModel.from_dict(json.loads(json.dumps(model.to_dict())))
  assert np.array_equal(again.predict(3e8), model.predict(3e8))
  with pytest.raises(UserError, match='from_ddo'):
    AutoScaleModel.fit({3e6: model.quantities[0], 3e7: model.quantities[1]}
                       ).predict_weights_interval(3e8)


def test_exactly_determined_fits_warn_that_the_interval_is_blind():
  x = np.array([0.2, 1.0, 3.0])
  problems = [DDOProblem(np.full(2, b / 2), (fit_power_law(x, PowerLaw(1.0, 1.0 + s, 0.0)(x)),
                                             fit_power_law(x, PowerLaw(2.0, 0.5, 0.0)(x))), 0.2)
              for b, s in ((1e6, 0.0), (1e7, 0.2))]
  model = AutoScaleModel.from_ddo(problems)
  with pytest.warns(UserWarning, match='exactly determined'):
    blind = model.predict_weights_interval(1e8, samples=4)
  assert np.allclose(blind.low, blind.high)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    seen = model.predict_weights_interval(1e8, samples=8, noise=1e-3)
  assert np.all(seen.high - seen.low > 0)


def test_importing_and_using_mixing_keeps_jax_default_dtypes():
  """Float64 stays local to mixing: the training code's float32 defaults must not change."""
  code = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from autoscale_jax.mixing import AutoScaleModel, PowerLaw, fit_power_law, solve_ddo
      x = np.array([0.2, 1.0, 3.0])
      fit = fit_power_law(x, PowerLaw(1.0, 1.0, 0.0)(x))
      n = solve_ddo([fit, PowerLaw(2.0, 0.5, 0.0)], total=2, lower=0.2)
      q = AutoScaleModel.fit({1e6: [4e5, 6e5], 1e7: [3e6, 7e6]}).predict(1e8)
      assert n.dtype == np.float64 and q.dtype == np.float64
      assert not jax.config.read('jax_enable_x64')
      assert jnp.ones(1).dtype == jnp.float32 and jnp.arange(3.0).dtype == jnp.float32
      print('ok')
  """)
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=False)
  assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr


def test_extrapolate_mode_follows_the_papers_geometric_step_for_a_domain_on_a_bound():
  """Domain 1 sits on a DDO bound at both budgets: 'hold' keeps its weight, 'extrapolate' (the
  paper) moves it along N^(k+2) = N^(2) (N^(2) / N^(1))^k like every other domain."""
  problems = _ddo_problems()
  assert all(1 in p.pinned() for p in problems)
  n1, n2 = problems[0].optimum(), problems[1].optimum()
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    held = AutoScaleModel.from_ddo(problems, 'hold')
  paper = AutoScaleModel.from_ddo(problems, 'extrapolate')
  assert paper.held == () and paper.mode == 'extrapolate'
  for k in (1, 2):
    by_hand = n2 * (n2 / n1)**k
    np.testing.assert_allclose(paper.predict(by_hand.sum()), by_hand, rtol=1e-9)
    np.testing.assert_allclose(paper.geometric_step(k), by_hand, rtol=1e-12)
  target = (n2 * (n2 / n1)).sum()
  assert held.predict_weights(target)[1] == pytest.approx(n2[1] / n2.sum(), rel=1e-12)
  assert paper.predict_weights(target)[1] != pytest.approx(n2[1] / n2.sum(), rel=1e-3)
  again = AutoScaleModel.from_dict(json.loads(json.dumps(paper.to_dict())))
  assert again.mode == 'extrapolate' and np.array_equal(again.predict(target),
                                                        paper.predict(target))


def test_extrapolating_a_shrinking_domain_takes_the_root_past_the_minimum():
  """With a shrinking domain the total sum_i N_i(t) falls, then rises: the predicted budget is
  reached on the rising branch (the geometric step's), and one below the minimum is refused."""
  n1 = np.array([5e7, 3e7, 2e7])
  n2 = np.array([2.5e7, 1.2e8, 5.5e7])  # domain 0 halves, the others grow
  with pytest.warns(UserWarning, match=r'Domains \[0\] do not grow .* extrapolated all the same'):
    model = AutoScaleModel.fit({1e8: n1, 2e8: n2}, mode='extrapolate')
  for k in (1, 3):
    by_hand = n2 * (n2 / n1)**k
    np.testing.assert_allclose(model.predict(by_hand.sum()), by_hand, rtol=1e-9)
  t = np.linspace(-3, 0, 3001)  # the total's minimum lies below t = 0 (the first budget)
  totals = np.exp(model.alpha[:, None] + model.slope[:, None] * t).sum(0)
  assert 0 < np.argmin(totals) < t.size - 1
  with pytest.raises(UserError, match='below the smallest total the fitted law reaches'):
    model.predict(0.9 * totals.min())


def test_cap_to_data_moves_the_excess_to_the_others_in_proportion():
  q, capped = cap_to_data([60.0, 30.0, 10.0], [40.0, 100.0, 100.0])
  np.testing.assert_allclose(q, [40.0, 45.0, 15.0])
  assert capped == [0]
  # A second domain goes over once the first one's excess arrives: both end at their caps.
  q, capped = cap_to_data([60.0, 30.0, 10.0], [40.0, 42.0, 100.0])
  np.testing.assert_allclose(q, [40.0, 42.0, 18.0])
  assert capped == [0, 1]
  q, capped = cap_to_data([1.0, 2.0], [5.0, 5.0])
  np.testing.assert_allclose(q, [1.0, 2.0])
  assert capped == []
  with pytest.raises(UserError, match='less than the'):
    cap_to_data([60.0, 40.0], [30.0, 30.0])
