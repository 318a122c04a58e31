"""Verdicts, tokens saved and seed noise against hand-computed cases and known distributions."""

import numpy as np
import pytest
from scipy import stats

from autoscale_jax.errors import UserError
from autoscale_jax.mixing import confidence as conf
from autoscale_jax.report import verdicts


def test_paired_interval_by_hand():
  cand, base = np.array([10.0, 11.0, 12.0]), np.array([11.0, 11.5, 13.5])
  # Differences -1, -0.5, -1.5: mean -1, sd 0.5.
  half = stats.t.ppf(0.975, 2) * 0.5 / np.sqrt(3)  # 4.303 * 0.2887 = 1.242
  p = conf.paired_difference(cand, base)
  assert p.mean == pytest.approx(-1.0)
  assert (p.low, p.high) == pytest.approx((-1.0 - half, -1.0 + half))
  assert p.verdict == 'inconclusive' and p.n == 3  # the interval reaches +0.24
  tight = conf.paired_difference(cand, cand + np.array([1.0, 1.1, 0.9]))
  assert tight.verdict == 'better' and tight.high < 0
  assert conf.paired_difference(cand + np.array([1.0, 1.1, 0.9]), cand).verdict == 'worse'
  # A score (accuracy): higher is better, the same interval reads the other way.
  more = conf.paired_difference(cand + np.array([1.0, 1.1, 0.9]), cand, higher_is_better=True)
  assert more.verdict == 'better' and more.low > 0
  assert conf.paired_difference(cand, cand + 1.0 + np.array([0, 0.1, -0.1]),
                                higher_is_better=True).verdict == 'worse'
  assert conf.paired_difference(cand, base, higher_is_better=True).verdict == 'inconclusive'


def test_one_seed_has_no_interval():
  p = conf.paired_difference([10.0], [11.0])
  assert (p.mean, p.low, p.high, p.n, p.verdict) == (-1.0, None, None, 1, 'inconclusive')
  with pytest.raises(UserError, match='one value per seed'):
    conf.paired_difference([1.0, 2.0], [1.0])


def test_verdicts_over_many_draws():
  """Equal distributions are inconclusive about 95% of the time; separated ones get the sign."""
  rng = np.random.default_rng(0)
  shared = rng.normal(100, 5, (2000, 5))  # seed effects shared by both mixtures (pairing)
  equal = [conf.paired_difference(s + rng.normal(0, 1, 5), s + rng.normal(0, 1, 5)).verdict
           for s in shared]
  assert 0.93 < equal.count('inconclusive') / len(equal) < 0.97
  apart = [conf.paired_difference(s - 3 + rng.normal(0, 1, 5), s + rng.normal(0, 1, 5)).verdict
           for s in shared[:200]]
  # The t-test's power here, from the noncentral t: effect 3 over sd sqrt(2), 5 seeds.
  power = stats.nct.sf(stats.t.ppf(0.975, 4), 4, 3 / (np.sqrt(2) / np.sqrt(5)))
  assert apart.count('better') / len(apart) == pytest.approx(power, abs=0.05)
  assert 'worse' not in apart


def test_tokens_to_reach_and_saved():
  tokens = np.array([100.0, 200.0, 300.0, 400.0])
  curve = np.array([9.0, 7.0, 5.0, 4.0])
  assert conf.tokens_to_reach(tokens, curve, 6.0) == pytest.approx(250.0)
  assert conf.tokens_to_reach(tokens, curve, 9.5) == 100.0
  assert conf.tokens_to_reach(tokens, curve, 3.0) is None
  assert conf.tokens_saved(tokens, curve, 6.0) == pytest.approx(1 - 250 / 400)
  assert conf.tokens_saved(tokens, curve, 3.0) is None


def test_saved_interval_counts_not_reached_draws():
  tokens = np.array([100.0, 200.0, 300.0, 400.0])
  # Seed 0: the candidate is clearly ahead; seed 1: it never reaches the baseline's final value.
  cand = np.array([[8.0, 6.0, 5.0, 4.0], [9.0, 8.0, 7.5, 7.0]])
  base = np.array([[9.0, 7.0, 6.0, 5.0], [9.0, 7.0, 6.0, 5.0]])
  s = conf.saved_interval(tokens, cand, base[:, -1], samples=4000, seed=1)
  # Mean curves: candidate [8.5, 7, 6.25, 5.5] never reaches 5.0.
  assert s.value is None and s.n == 2
  # Draws: both seed 0 (1/4 of draws) -> reached; else the mix or seed 1 alone -> not reached.
  assert s.not_reached == pytest.approx(0.75, abs=0.03)
  assert s.low is None and s.high == pytest.approx(1 - 300 / 400)
  one = conf.saved_interval(tokens, cand[:1], base[:1, -1])
  assert one.value == one.low == one.high == pytest.approx(0.25) and one.not_reached == 0.0


@pytest.mark.parametrize('sigma,replicates', [(0.01, 2), (0.003, 3)])
def test_pooled_noise_recovers_a_known_sigma(sigma, replicates):
  """Replicated objective ratios of 9 DDO points (2m+1, m = 4) over many draws: within 20%."""
  rng = np.random.default_rng(2)
  estimates = []
  for _ in range(200):
    means = rng.uniform(0.9, 1.1, 9)
    groups = [g for g in range(9) for _ in range(replicates)]
    values = means[groups] + rng.normal(0, sigma, len(groups))
    estimates.append(conf.pooled_noise(groups, values))
  assert estimates[0].dof == 9 * (replicates - 1)
  assert np.mean([e.sigma for e in estimates]) == pytest.approx(sigma, rel=0.2)
  pooled = conf.combine_noise(estimates[:2])
  assert pooled.dof == 2 * estimates[0].dof
  assert pooled.sigma == pytest.approx(np.sqrt((estimates[0].sigma**2
                                                + estimates[1].sigma**2) / 2))
  assert conf.pooled_noise(['a', 'b'], [1.0, 2.0]) is None
  assert conf.combine_noise([None]) is None


def test_a_validation_file_from_before_seeds_is_read_as_one_seed():
  """validation/<tokens>.json as the first version wrote it: one run per mixture, no verdicts."""
  curve = lambda *objs: [{'step': 10 * (k + 1), 'tokens': 1000 * (k + 1), 'objective': o}  # noqa: E731
                         for k, o in enumerate(objs)]
  legacy = {'target': 3000, 'domains': ['a', 'b'], 'mixture_domains': ['a', 'b'], 'runs': {
      'predicted': {'weights': [0.7, 0.3], 'fingerprint': 'f1', 'objective': 9.0,
                    'val_ppl': {'a': 8.0, 'b': 10.0}, 'curve': curve(20.0, 12.0, 9.0),
                    'predicted_reaches_at': None, 'tokens_saved': None},
      'uniform': {'weights': [0.5, 0.5], 'fingerprint': 'f2', 'objective': 10.0,
                  'val_ppl': {'a': 9.0, 'b': 11.0}, 'curve': curve(21.0, 13.0, 10.0),
                  'predicted_reaches_at': 2500.0, 'tokens_saved': 1 / 6}}}
  v = verdicts.upgrade(legacy)
  assert v['seeds'] == [None] and len(v['runs']['uniform']['seeds']) == 1
  c = v['verdicts']['uniform']
  assert c['objective'] == {'mean': -1.0, 'low': None, 'high': None, 'n': 1,
                            'verdict': 'inconclusive'}
  # 12 -> 9 between 2000 and 3000 tokens reaches 10 at 2667: 1 - 2667 / 3000 saved.
  assert c['tokens_saved']['value'] == pytest.approx(1 - (2000 + 1000 * 2 / 3) / 3000)
  assert c['domains']['a']['mean'] == pytest.approx(np.log(8.0) - np.log(9.0))
  assert verdicts.upgrade(v) is v  # today's files pass through
