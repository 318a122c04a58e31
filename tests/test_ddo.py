"""DDO plan, per-domain fits and the solve, checked against scipy.optimize and KKT."""

import json
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize

from autoscale_jax.errors import UserError
from autoscale_jax.mixing import (
  DDOProblem,
  DegenerateFitWarning,
  Perturbation,
  PowerLaw,
  ddo_weights,
  fit_domains,
  perturbation_plan,
  pinned_domains,
  solve_ddo,
)


def test_plan_is_base_first_then_one_domain_scaled_per_run():
  base = np.array([1e6, 2e6, 3e6])
  plan = perturbation_plan(base)
  assert len(plan) == 2 * 3 + 1
  assert plan[0].domain is None and plan[0].factor == 1 and np.array_equal(plan[0].quantities, base)
  for p in plan[1:]:
    expect = base.copy()
    expect[p.domain] *= p.factor
    assert np.array_equal(p.quantities, expect)
  assert {(p.domain, p.factor) for p in plan[1:]} == {(i, f) for i in range(3) for f in (1 / 5, 3)}


def test_plan_with_more_factors_and_replicates():
  plan = perturbation_plan(np.ones(4), factors=(0.5, 2, 4), replicates=2)
  assert len(plan) == 2 * (1 + 4 * 3)
  assert [p.replicate for p in plan] == [0] * 13 + [1] * 13
  assert plan[13].domain is None
  again = [Perturbation.from_dict(json.loads(json.dumps(p.to_dict()))) for p in plan]
  assert all(np.array_equal(a.quantities, p.quantities) and a.domain == p.domain for a, p in
             zip(again, plan))


@pytest.mark.parametrize('kwargs, match', [
    ({'base_quantities': [1.0, 0.0]}, 'base_quantities'),
    ({'base_quantities': [1.0], 'factors': (1.0, 3.0)}, 'factors'),
    ({'base_quantities': [1.0], 'replicates': 0}, 'replicates'),
])
def test_plan_refuses_bad_input(kwargs, match):
  with pytest.raises(UserError, match=match):
    perturbation_plan(**kwargs)


def _objectives(plan, laws, noise=0.0, seed=0):
  """A world in which objective / objective_base is exactly laws[i](x) for domain i's runs."""
  rng = np.random.default_rng(seed)
  base = plan[0].quantities
  out = []
  for p in plan:
    value = 1.0 if p.domain is None else laws[p.domain](p.quantities[p.domain] / base[p.domain])
    out.append(2.5 * value * (1 + noise * rng.standard_normal()))
  return np.array(out)


def test_fit_domains_recovers_each_domains_law():
  # c = 1 - (1 + a)^-b puts each law through y(1) = 1, the base run.
  laws = [PowerLaw(a, b, 1 - (1 + a)**-b) for a, b in [(0.8, 1.2), (2.0, 0.9), (0.4, 2.0)]]
  plan = perturbation_plan(np.array([1e6, 1e6, 1e6]), factors=(0.2, 0.5, 2, 3))
  fits = fit_domains(plan, _objectives(plan, laws))
  for fit, law in zip(fits, laws):
    assert (fit.a, fit.b, fit.c) == pytest.approx((law.a, law.b, law.c), rel=1e-7, abs=1e-9)
    assert sorted(fit.x) == [0.2, 0.5, 1.0, 2.0, 3.0]


def test_fit_domains_fits_replicates_jointly():
  laws = [PowerLaw(a, b, 1 - (1 + a)**-b) for a, b in [(0.8, 1.2), (2.0, 0.9)]]
  plan = perturbation_plan(np.array([1e6, 1e6]), replicates=3)
  fits = fit_domains(plan, _objectives(plan, laws, noise=1e-4))
  for fit, law in zip(fits, laws):
    assert len(fit.x) == 9 and 0 < fit.rmse < 5e-4
    assert np.max(np.abs(fit(np.array([0.2, 1, 3])) - law(np.array([0.2, 1, 3])))) < 5e-4


def test_fit_domains_refuses_misaligned_or_bad_objectives():
  plan = perturbation_plan(np.ones(2))
  with pytest.raises(UserError, match='one value per plan entry'):
    fit_domains(plan, np.ones(3))
  with pytest.raises(UserError, match='finite'):
    fit_domains(plan, [1.0, 1.0, np.nan, 1.0, 1.0])


def _scipy_solve(a, b, total, lower, upper, cost):
  """Independent reference: SLSQP on the same convex problem, analytic gradient.

  At ftol 1e-15 SLSQP sometimes stops with status 8 ("positive directional derivative for
  linesearch"): it has reached float64 precision and no step improves. Which problem does so
  depends on the BLAS kernels (OPENBLAS_CORETYPE=Sandybridge fails problem 44 here, CI's machine
  problem 62, at 8e-9 from the optimum). Such a stop is taken only at a feasible point; how close
  it is to the optimum is what the caller asserts.
  """
  result = minimize(lambda n: np.sum((n + a)**-b), np.clip(total / cost.sum(), lower, upper),
                    jac=lambda n: -b * (n + a)**(-b - 1), method='SLSQP',
                    bounds=[(lo, None if np.isinf(hi) else hi) for lo, hi in zip(lower, upper)],
                    constraints=[{'type': 'eq', 'fun': lambda n: cost @ n - total,
                                  'jac': lambda n: cost}],
                    options={'ftol': 1e-15, 'maxiter': 1000})
  precision_stop = result.status == 8 and abs(cost @ result.x - total) <= 1e-9 * total
  assert result.success or precision_stop, result.message
  return result.x


def _random_problem(rng, k):
  m = int(rng.integers(2, 51))
  a = np.exp(rng.uniform(np.log(0.05), np.log(5), m))
  b = np.exp(rng.uniform(np.log(0.1), np.log(3), m))
  lower = np.full(m, 0.2)
  upper = [np.full(m, np.inf), np.full(m, 3.0), rng.uniform(1.05, 3.0, m)][k % 3]
  cost = np.ones(m) if k % 2 else rng.uniform(0.5, 2.0, m)
  total = float(m) if k % 2 else float(cost.sum())
  return a, b, total, lower, upper, cost


def test_solve_matches_scipy_and_kkt_on_200_random_problems():
  rng = np.random.default_rng(0)
  active_bounds = 0
  for k in range(200):
    a, b, total, lower, upper, cost = _random_problem(rng, k)
    fits = [PowerLaw(ai, bi, 0.0) for ai, bi in zip(a, b)]
    n = solve_ddo(fits, total, lower, upper, cost=cost)
    assert isinstance(n, np.ndarray) and n.dtype == np.float64
    assert np.max(np.abs(n - _scipy_solve(a, b, total, lower, upper, cost))) < 1e-6
    assert cost @ n == pytest.approx(total, rel=1e-12)
    assert np.all(n >= lower) and np.all(n <= upper)
    # KKT with the analytic marginal gains b (n + a)^(-b-1) per unit cost: equal price for
    # interior domains, no cheaper gain left at a lower bound, no dearer one at an upper bound.
    price = b * (n + a)**(-b - 1) / cost
    at_lower, at_upper = np.isclose(n, lower, rtol=1e-9), np.isclose(n, upper, rtol=1e-9)
    interior = ~(at_lower | at_upper)
    active_bounds += (~interior).any()
    lam = np.median(price[interior])
    assert np.allclose(price[interior], lam, rtol=1e-9)
    assert np.all(price[at_lower] <= lam * (1 + 1e-9))
    assert np.all(price[at_upper] >= lam * (1 - 1e-9))
  assert active_bounds > 100  # the set exercises both free and bound-constrained optima


def test_flat_fits_stay_at_their_lower_bound_or_share_what_is_left():
  fits = [PowerLaw(1.0, 0.0, 0.0), PowerLaw(1.0, 1.0, 0.0), PowerLaw(0.5, 0.5, 0.0)]
  n = solve_ddo(fits, 3.0, 0.2)
  assert n[0] == pytest.approx(0.2, abs=1e-12) and n.sum() == pytest.approx(3.0)
  n = solve_ddo(fits, 3.0, 0.2, upper=[5.0, 1.0, 1.0])  # the others are full: flat takes the rest
  assert n == pytest.approx([1.0, 1.0, 1.0])
  n = solve_ddo([PowerLaw(1.0, 0.0, 0.0)] * 3, 3.0, 0.2, upper=[0.5, 5.0, 5.0])
  assert n == pytest.approx([0.5, 1.25, 1.25])  # no information: as equal as the box allows


def test_infeasible_or_bad_bounds_stop_with_one_clear_error():
  fits = [PowerLaw(1.0, 1.0, 0.0)] * 3
  with pytest.raises(UserError, match='outside what the bounds allow'):
    solve_ddo(fits, 3.0, 0.2, upper=0.5)
  with pytest.raises(UserError, match='lower must not exceed upper'):
    solve_ddo(fits, 3.0, [0.2, 2.0, 0.2], upper=1.0)
  with pytest.raises(UserError, match='total'):
    solve_ddo(fits, -1.0, 0.2)


def test_weights_pins_and_problem_round_trip():
  base = np.array([1e6, 3e6])
  assert ddo_weights([2.0, 0.0], base) == pytest.approx([1.0, 0.0])
  assert ddo_weights([1.0, 1.0], base) == pytest.approx([0.25, 0.75])
  assert pinned_domains([0.2, 1.0, 3.0], 0.2, 3.0) == (0, 2)
  fits = (PowerLaw(1.0, 2.0, 0.0), PowerLaw(1.0, 0.1, 0.0), PowerLaw(1.0, 1.0, 0.0))
  problem = DDOProblem(np.array([1e6, 2e6, 1e6]), fits, 0.2, (3.0, 3.0, 3.0))
  q = problem.optimum()
  assert q.sum() == pytest.approx(problem.budget, rel=1e-12)  # the budget is kept
  assert problem.pinned() == (1,)  # the near-flat domain sits on the lower bound
  again = DDOProblem.from_dict(json.loads(json.dumps(problem.to_dict())))
  assert np.array_equal(again.optimum(), q)


def test_solve_is_silent_and_accepts_scalar_bounds():
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    n = solve_ddo([PowerLaw(1.0, 1.0, 0.0)] * 7, total=7, lower=0.2)
  assert n == pytest.approx(np.ones(7))


def test_fit_domains_names_the_domain_of_a_degenerate_fit():
  laws = [PowerLaw(0.8, 1.2, 1 - 1.8**-1.2), PowerLaw(1.0, 0.0, 0.0)]  # domain 1: no gain
  plan = perturbation_plan(np.ones(2))
  objectives = _objectives(plan, laws)
  objectives[plan.index(next(p for p in plan if p.domain == 1 and p.factor == 3))] *= 1.01
  with pytest.warns(DegenerateFitWarning, match='for domain 1: the objective does not decrease'):
    fits = fit_domains(plan, objectives)
  assert not fits[0].degenerate and fits[1].degenerate and fits[1].b == 0
