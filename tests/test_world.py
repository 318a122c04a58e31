"""The whole AutoScale pipeline in the synthetic world (config.world='synthetic'): seconds, and
numbers that can be checked against the world's own law."""

import json

import numpy as np
import pytest

from autoscale_jax import pipeline
from autoscale_jax.configs import tiny
from autoscale_jax.pipeline import world
from autoscale_jax.train.trainer import objective


def _config():
  c = tiny.get_config()
  c.mode = 'autoscale'
  c.world = 'synthetic'
  c.ddo.replicates = 3
  c.validate.seeds = 3
  return c


def test_synthetic_pipeline_measures_the_worlds_noise_and_verdicts(tmp_path):
  config = _config()
  pipeline.dispatch(config, str(tmp_path))
  predictions = json.loads((tmp_path / 'autoscale' / 'predictions.json').read_text())
  plan = json.loads((tmp_path / 'budgets' / '8192' / 'plan.json').read_text())
  names = plan['domains']

  # The seed noise of the objective ratio the pipeline measured from the DDO replicates, against
  # the world's own: many seeds of the base run and of a perturbed one (Monte Carlo).
  def mean_ppl(tokens, seed):
    return objective(dict(zip(names, world.losses(tokens, seed))), config.eval)
  base = np.array(plan['runs'][0]['quantities'])
  x3 = np.array(next(r for r in plan['runs'] if r['domain'] == 0 and r['factor'] == 3.0)
                ['quantities'])
  ratios = [mean_ppl(x3, s) / np.mean([mean_ppl(base, s + 1000 * k) for k in range(3)])
            for s in range(400)]
  assert predictions['noise']['source'] == 'replicates'
  assert predictions['noise']['dof'] == 2 * 2 * 9  # 2 budgets x 9 points x (3 - 1)
  assert predictions['noise']['sigma'] == pytest.approx(np.std(ratios), rel=0.5)

  # Each verdict agrees with the noise-free world: the paired mean difference is within 4 sd of
  # the true difference, and 'better' / 'worse' never contradicts its sign.
  v = json.loads((tmp_path / 'validation' / '32768.json').read_text())
  seq_len = config.data.seq_len

  def clean(weights):
    counts = np.round(np.asarray(weights) * 32768 / seq_len) * seq_len
    return objective(dict(zip(names, world.losses(counts, 0, noise=0.0))), config.eval)
  truth = clean(v['runs']['predicted']['weights'])
  for name, c in v['verdicts'].items():
    diff = truth - clean(v['runs'][name]['weights'])
    d = c['objective']
    assert d['n'] == 3
    assert abs(d['mean'] - diff) < 4 * 0.01 * truth, (name, d, diff)
    if d['verdict'] == 'better':
      assert diff < 0
    if d['verdict'] == 'worse':
      assert diff > 0
  assert set(v['verdicts']) == {'uniform', 'natural', 'reuse'}
  report = (tmp_path / 'report' / 'report.md').read_text()
  assert 'measured from the DDO replicates' in report
