"""predict.policy in the product: the conservative rule's fraction and shrunk targets against
the pure-math rule, the no-evidence fallback, predicted gains before validation, and the
report's recommendation line (which never recommends a mixture measurably worse than a
baseline)."""

import json
import shutil

import ml_collections
import numpy as np
import pytest

from autoscale_jax import pipeline, report
from autoscale_jax.configs import tiny
from autoscale_jax.errors import ConfigError
from autoscale_jax.mixing import AutoScaleModel, DDOProblem, conservative as conservative_lib
from autoscale_jax.pipeline import predict, world
from autoscale_jax.report import recommendation, verdicts


def _config(**predict_fields):
  c = tiny.get_config()
  c.mode, c.world = 'autoscale', 'synthetic'
  c.data.max_docs, c.data.max_epochs = 30, 4  # a small corpus: nothing trains here
  c.validate.enabled = False
  for k, v in predict_fields.items():
    c.predict[k] = v
  return c


@pytest.fixture(scope='module', name='workdirs')
def fixture_workdirs(tmp_path_factory):
  """One synthetic DDO, predicted with plain, conservative and a noise that hides every gain."""
  root = tmp_path_factory.mktemp('policy')
  out = {}
  for name, fields in (('plain', {}), ('conservative', {'policy': 'conservative'}),
                       ('noisy', {'policy': 'conservative', 'noise': 0.3})):
    config = _config(**fields)
    if name != 'plain':  # the same DDO results, predicted again (mode=predict) and reported
      shutil.copytree(root / 'plain' / 'budgets', root / name / 'budgets')
      config.mode = 'predict'
    pipeline.dispatch(config, str(root / name))
    if name != 'plain':  # mode=predict writes no report
      report.write_report(root / name)
    out[name] = (config, root / name)
  return out


def _read(workdir, path):
  return json.loads((workdir / path).read_text())


def _conservative_shrinks_by_the_rules_fraction(workdirs):
  config, workdir = workdirs['conservative']
  plain = _read(workdirs['plain'][1], 'autoscale/predictions.json')
  got = _read(workdir, 'autoscale/predictions.json')
  largest = max(config.ddo.budgets)
  optimum = _read(workdir, f'budgets/{largest}/optimum.json')
  want = conservative_lib.shrink(
      DDOProblem.from_dict(optimum['problem']), np.full(4, 0.25), optimum['weights'],
      level=config.predict.interval_level, samples=config.predict.interval_samples,
      noise=config.predict.noise, seed=config.seed)
  policy = got['policy']
  assert policy['name'] == 'conservative' and policy['prior'] == 'uniform'
  assert policy['fraction'] == want.fraction and policy['lower'] == want.lower
  assert 0 < policy['fraction'] <= 1 and policy['evidence']  # the world's effects are clear
  for t, entry in got['targets'].items():
    np.testing.assert_allclose(entry['plain'], plain['targets'][t]['weights'], rtol=1e-12)
    np.testing.assert_allclose(
        entry['weights'], 0.25 * (1 - want.fraction) + want.fraction * np.array(entry['plain']),
        rtol=1e-12)
    assert abs(sum(entry['weights']) - 1) < 1e-12
  report = (workdir / 'report' / 'report.md').read_text()
  assert report.split('\n')[4] == '## Recommendation'  # first after the title and workdir
  assert f"{100 * want.fraction:.0f}% of the way from uniform to the DDO answer" in report


def _no_evidence_returns_the_prior_and_says_so(workdirs):
  _, workdir = workdirs['noisy']
  got = _read(workdir, 'autoscale/predictions.json')
  assert not got['policy']['evidence'] and got['policy']['fraction'] == 0
  for entry in got['targets'].values():
    assert entry['weights'] == [0.25] * 4
  report = (workdir / 'report' / 'report.md').read_text()
  assert 'the proxies show no mixture measurably better than uniform' in report


def _predicted_gains_match_the_fitted_model(workdirs):
  config, workdir = workdirs['plain']
  got = _read(workdir, 'autoscale/predictions.json')['gains']
  target = str(got['target'])
  recommended = _read(workdir, 'autoscale/predictions.json')['targets'][target]['weights']
  for b, block in got['budgets'].items():
    problem = DDOProblem.from_dict(_read(workdir, f'budgets/{b}/optimum.json')['problem'])
    j = {name: conservative_lib.predicted_ratio(problem, w) for name, w in
         (('recommended', recommended), ('uniform', [0.25] * 4))}
    assert block['ratios']['recommended']['point'] == pytest.approx(j['recommended'], rel=1e-12)
    assert block['ratios']['uniform']['point'] == pytest.approx(1.0, abs=1e-12)  # the base
    gain = block['gain_over']['uniform']
    assert gain['point'] == pytest.approx(j['uniform'] - j['recommended'], abs=1e-12)
    assert gain['low'] <= gain['point'] <= gain['high']
    # Domains outside the tested factors, by hand: multiplier w N / N_base beyond [lower, upper].
    optimum = _read(workdir, f'budgets/{b}/optimum.json')
    names, upper = optimum['domains'], np.broadcast_to(problem.upper, (4,))
    for name, w in (('recommended', recommended), ('uniform', [0.25] * 4),
                    ('natural', optimum['natural_weights'])):
      n = np.asarray(w) * problem.budget / problem.base_quantities
      want = [d for d, v, hi in zip(names, n, upper)
              if v < problem.lower * (1 - 1e-9) or v > hi * (1 + 1e-9)]
      assert block['extrapolated'][name] == want, (b, name, n)
  report = (workdir / 'report' / 'report.md').read_text()
  assert 'predicted gain over uniform at' in report.split('## ')[1]  # in the recommendation
  # A natural share far outside the tested factors is flagged where its ratio is shown.
  extreme = [0.97, 0.01, 0.01, 0.01]  # code 3.9x its uniform share, the others 1/25
  problem = DDOProblem.from_dict(_read(workdir, f"budgets/{config.ddo.budgets[-1]}/optimum.json")
                                 ['problem'])
  flagged = predict.gains(config, [problem], [config.ddo.budgets[-1]],
                          {'recommended': np.full(4, 0.25), 'natural': np.array(extreme)}, 0.01,
                          ['a', 'b', 'c', 'd'])
  assert flagged[str(config.ddo.budgets[-1])]['extrapolated'] == {'recommended': [],
                                                                   'natural': ['a', 'b', 'c', 'd']}
  lines = recommendation._gains({'gains': {'target': 32_768, 'level': 0.9, 'budgets': flagged}})
  assert any(line.startswith('| ') and 'natural *' in line for line in lines)
  assert lines[-1].endswith('the ratio is a guess beyond the data: natural (a, b, c, d).')


def test_policies_and_gains_on_one_ddo(workdirs):
  """One DDO (module fixture, built once), three checks: the conservative fraction and shrunk
  targets, the no-evidence fallback, and the predicted gains."""
  _conservative_shrinks_by_the_rules_fraction(workdirs)
  _no_evidence_returns_the_prior_and_says_so(workdirs)
  _predicted_gains_match_the_fitted_model(workdirs)
  # An interval under overwhelming noise leaves out the samples with nothing to extrapolate.
  config, workdir = workdirs['plain']
  problems = [DDOProblem.from_dict(_read(workdir, f'budgets/{b}/optimum.json')['problem'])
              for b in config.ddo.budgets]
  model = AutoScaleModel.from_ddo(problems)
  with pytest.warns(UserWarning, match=r'[1-9]\d* of 20 bootstrap samples gave no optima'):
    interval = model.predict_weights_interval(32_768, samples=20, noise=5.0)
  assert np.all(np.isfinite(interval.samples)) and len(interval.samples) < 20  # left out
  assert np.all(interval.low <= interval.high)


def test_bad_policy_names_the_field():
  with pytest.raises(ConfigError, match='config.predict.policy'):
    predict.check(_config(policy='bold'))
  with pytest.raises(ConfigError,
                     match=r"config.predict.prior names unknown domain\(s\) \['cod'\]"):
    predict.check(_config(policy='conservative', prior={'cod': 1.0}))  # before any DDO run


def _validation(objectives: dict[str, list[float]]) -> dict:
  runs = {name: {'weights': [0.5, 0.5], 'objective': float(np.mean(v)),
                 'seeds': [{'objective': o} for o in v]} for name, v in objectives.items()}
  return {'target': 1000, 'runs': runs}


def test_recommend_never_picks_a_mixture_measurably_worse_than_a_baseline():
  worse = _validation({'predicted': [10.0, 10.2, 10.1], 'uniform': [9.0, 9.1, 9.05],
                       'natural': [11.0, 12.5, 10.0]})
  r = verdicts.recommend(worse)
  assert r['mixture'] == 'uniform'
  assert [w['name'] for w in worse_than(r)] == ['uniform']
  better = _validation({'predicted': [8.0, 8.1, 8.05], 'uniform': [9.0, 9.1, 9.05]})
  r = verdicts.recommend(better)
  assert r['mixture'] == 'predicted' and r['versus']['name'] == 'uniform'
  assert r['versus']['verdict'] == 'better' and r['predicted_worse_than'] == []
  three = verdicts.recommend(_validation({'predicted': [9.6, 9.7, 9.65],
                                         'uniform': [9.5, 9.61, 9.55],
                                         'reuse': [9.0, 9.05, 9.1]}))
  assert three['mixture'] == 'reuse' and three['versus']['name'] == 'uniform'
  assert [w['name'] for w in worse_than(three)] == ['uniform', 'reuse']


def worse_than(r: dict) -> list[dict]:
  return r['predicted_worse_than']


def test_a_prediction_measurably_worse_than_a_baseline_is_not_recommended(tmp_path):
  """The 'paper' world scaled to the tiny budgets, 3 seeds of small noise: the world's true
  optimum at the target, as a baseline, is measurably better than the predicted mixture."""
  config = _config()
  config.world, config.validate.enabled, config.validate.seeds = 'paper', True, 3
  config.synthetic.reference, config.synthetic.scale = 16_384, 16_384 * 10e6 / 1.2e9
  config.synthetic.noise = 1e-5
  target = config.predict.targets[0]
  best = world.get(config).optimum(target)
  names = [d.name for d in config.data.domains]
  config.validate.baselines = ml_collections.ConfigDict(
      {'uniform': 'uniform', 'optimum': dict(zip(names, map(float, best)))})
  pipeline.dispatch(config, str(tmp_path))
  v = _read(tmp_path, f'validation/{target}.json')
  assert v['verdicts']['optimum']['objective']['verdict'] == 'worse'  # the case under test
  r = verdicts.recommend(v)
  assert r['mixture'] == 'optimum' and r['predicted_worse_than'][0]['name'] == 'optimum'
  line = (tmp_path / 'report' / 'report.md').read_text().split('## ')[1]
  assert 'use **optimum**' in line and 'use **predicted**' not in line
  assert 'the predicted mixture is measurably **worse** than optimum' in line
