"""The family of synthetic worlds (config.world = cpu | paper | noiseless; pipeline/worlds.py):
reproducible draws, the configured noise and its shared part, the true optimum, the presets'
calibration, fingerprints, and a pipeline through a preset world."""

import copy
import json

import numpy as np
import pytest

from autoscale_jax import defaults, pipeline
from autoscale_jax.configs import tiny
from autoscale_jax.errors import ConfigError
from autoscale_jax.pipeline import world, worlds
from autoscale_jax.train import runs

PRESETS = tuple(defaults.WORLD_PRESETS)


def _config(name: str = 'cpu'):
  c = tiny.get_config()
  c.world = name
  return c


def test_a_world_is_its_seed_and_a_field_rescales_the_same_draws():
  a, b = worlds.preset('cpu', 4, seed=3), worlds.preset('cpu', 4, seed=3)
  for field in ('E', 'A', 'alpha', 'T', 'natural', 'noise'):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  tokens = np.array([[1e4, 2e4, 3e4, 4e4], [5e4, 5e4, 5e4, 5e4]])
  np.testing.assert_array_equal(a.losses(tokens, [0, 1]), b.losses(tokens, [0, 1]))
  # A run's losses depend on its seed and counts alone, not on what else is evaluated with it.
  np.testing.assert_array_equal(a.losses(tokens, [0, 1])[1], a.losses(tokens[1], 1))
  assert not np.allclose(a.E, worlds.preset('cpu', 4, seed=4).E)
  assert a.natural.sum() == pytest.approx(1.0) and np.all(np.diag(a.T) == 1.0)
  # More noise or transfer: the same world otherwise (the same draws, rescaled).
  noisier = worlds.preset('cpu', 4, seed=3, noise=0.11)
  np.testing.assert_array_equal(noisier.E, a.E)
  np.testing.assert_allclose(noisier.noise, 2 * a.noise)
  more = worlds.preset('cpu', 4, seed=3, transfer=0.3)
  off = ~np.eye(4, dtype=bool)
  np.testing.assert_allclose(more.T[off], 2 * a.T[off])
  np.testing.assert_array_equal(more.alpha, a.alpha)
  # The pipeline's world is the preset's over the config's domains; at_ddo_budgets moves it to
  # the config's budgets (tiny's largest, 16k tokens, is the cpu preset's 800k): the same clean
  # losses at token counts scaled by their ratio.
  config = _config('cpu')
  config.synthetic.seed, config.synthetic.at_ddo_budgets = 3, False
  piped = world.get(config)
  assert piped.names == tuple(d.name for d in config.data.domains)
  np.testing.assert_array_equal(piped.A, a.A)
  config.synthetic.at_ddo_budgets = True
  moved, k = world.get(config), max(config.ddo.budgets) / defaults.PRESET_BUDGETS['cpu']
  assert moved.scale == pytest.approx(a.scale * k) and moved.reference == pytest.approx(
      a.reference * k)
  np.testing.assert_allclose(moved.clean(tokens * k), a.clean(tokens), rtol=1e-12)
  np.testing.assert_allclose(moved.noise_sd(tokens.sum(-1) * k), a.noise_sd(tokens.sum(-1)),
                             rtol=1e-12)
  # A reference budget's reducible loss at the uniform mixture is what the spec says, on
  # average over domains (each domain's is reducible x e^(spread u)).
  spec = defaults.WORLD_PRESETS['cpu']
  reducible = a.clean(np.full(4, spec['reference'] / 4)) - a.E
  assert np.all(np.abs(np.log(reducible / spec['reducible'])) <= spec['spread'] + 1e-12)


def test_the_noise_has_the_configured_sd_and_its_shared_part_pairs_seeds():
  w = worlds.preset('cpu', 4, seed=1)
  spec = defaults.WORLD_PRESETS['cpu']
  seeds = np.arange(4000)
  for budget in (50e3, 200e3, 800e3):
    base = np.full(4, budget / 4)
    expected = w.noise * (budget / spec['reference'])**spec['noise_exponent']
    np.testing.assert_allclose(w.noise_sd(budget), expected)
    np.testing.assert_allclose(w.losses(base, seeds).std(0), expected, rtol=0.08)
    np.testing.assert_allclose(w.losses(base, seeds).mean(0), w.clean(base),
                               atol=4 * expected.max() / np.sqrt(seeds.size))
  # Two mixtures of one budget: paired by seed, the shared half of the variance cancels.
  a, b = np.array([6e4, 4e4, 5e4, 5e4]), np.array([4e4, 6e4, 5e4, 5e4])
  for shared in (0.0, 0.5, 0.9):
    ws = worlds.preset('cpu', 4, seed=1, shared=shared)
    paired = (ws.losses(a, seeds) - ws.losses(b, seeds)).var(0)
    unpaired = (ws.losses(a, seeds) - ws.losses(b, seeds + 10_000)).var(0)
    np.testing.assert_allclose(paired / unpaired, 1 - shared, atol=0.08)
  assert np.array_equal(worlds.preset('noiseless', 3).losses(a[:3], 7),
                        worlds.preset('noiseless', 3).clean(a[:3]))


@pytest.mark.parametrize('name', PRESETS)
def test_the_true_optimum_is_the_brute_force_minimum_over_the_simplex(name):
  step = 0.005
  grid = np.arange(0.0, 1.0 + step / 2, step)
  a, b = np.meshgrid(grid, grid)
  keep = a + b <= 1.0 + 1e-9
  simplex = np.stack([a[keep], b[keep], np.clip(1.0 - a[keep] - b[keep], 0, None)], -1)
  budgets = (50e3, 800e3, 3.2e6) if name == 'cpu' else (0.3e9, 1.2e9, 10e9)
  for seed in range(3):
    w = worlds.preset(name, 3, seed=seed)
    for budget in budgets:
      values = w.value(simplex, budget)
      best = simplex[np.argmin(values)]
      optimum = w.optimum(budget)
      assert optimum.sum() == pytest.approx(1.0) and optimum.min() >= 0
      assert w.value(optimum, budget) <= values.min() * (1 + 1e-12), (seed, budget)
      assert np.abs(optimum - best).max() <= 2 * step, (seed, budget, optimum, best)
  # Over the domains of a mask (the others at 0), and for the mean loss: the same search.
  w = worlds.make({**defaults.WORLD_PRESETS[name], 'seed': 5}, 4, objective='mean_loss')
  budget = budgets[1]
  optimum = w.optimum(budget, mask=[True, True, False, True])
  assert optimum[2] == 0.0
  padded = np.insert(simplex, 2, 0.0, axis=1)
  values = w.value(padded, budget)
  assert w.value(optimum, budget) <= values.min() * (1 + 1e-12)
  assert np.abs(optimum - padded[np.argmin(values)]).max() <= 2 * step


def test_cpu_preset_effects_and_noise_are_the_pilots():
  """The scale study's pilot (bench/RESULTS.md): a domain's loss sd over seeds 0.03-0.13 nats;
  tripling one domain lowered its own loss by 0.16-0.59 nats at 50k, 0.37-1.23 at 200k and
  0.44-0.78 at 800k tokens, and the mean perplexity to 0.87-1.03, 0.59-0.82 and 0.74-0.84 of
  the base run's; the effect beyond the extra tokens, in seed-noise units, |z| 3.8-7.6 at 800k."""
  table = worlds.calibration('cpu', (50e3, 200e3, 800e3), 3.0, worlds=10, seeds=100)
  pilot = {50e3: ((0.16, 0.59), (0.87, 1.03)), 200e3: ((0.37, 1.23), (0.59, 0.82)),
           800e3: ((0.44, 0.78), (0.74, 0.84))}
  for budget, ((own_lo, own_hi), (ratio_lo, ratio_hi)) in pilot.items():
    row = table[budget]
    assert 0.02 <= row['loss_sd'][0] and row['loss_sd'][2] <= 0.15, (budget, row['loss_sd'])
    assert own_lo <= -row['own'][1] <= own_hi, (budget, row['own'])
    assert ratio_lo <= row['ratio'][1] <= ratio_hi, (budget, row['ratio'])
  assert 2 <= abs(table[800e3]['z'][1]) <= 8


def test_paper_preset_effects_are_the_papers_ddo_at_1_2b():
  """AutoScale's GPT-2 Large DDO at 1.2B tokens: a domain cut to 1/5 raises its own perplexity
  by 20-30% and the mean perplexity by 1-8%."""
  for name in ('paper', 'noiseless'):
    row = worlds.calibration(name, (1.2e9,), 0.2, num_domains=7, worlds=10, seeds=50)[1.2e9]
    own = np.expm1(row['own'])
    assert 0.2 <= own[1] <= 0.3 and 0.15 <= own[0] and own[2] <= 0.4, own
    assert 0.01 <= row['ratio'][0] - 1 and row['ratio'][2] - 1 <= 0.08, row['ratio']
  assert worlds.preset('paper', 7).noise_sd(1.2e9) == pytest.approx(np.full(7, 0.005))


def test_a_preset_world_is_in_the_fingerprint_a_real_run_is_not():
  counts = np.array([10, 20, 30, 40])

  def fp(config):
    return runs.run_fingerprint(config, counts, 0, 'tok')
  real, synthetic, cpu = _config(''), _config('synthetic'), _config('cpu')
  base = {n: fp(c) for n, c in (('real', real), ('synthetic', synthetic), ('cpu', cpu))}
  assert len(set(base.values())) == 3
  assert fp(_config('paper')) not in base.values()
  assert fp(_config('paper')) != fp(_config('noiseless'))
  for field, value in (('seed', 1), ('num_domains', 4), ('noise', 0.01), ('shared', 0.0),
                       ('transfer', 0.3), ('spread', 0.0), ('scale', 1e3)):
    for name, config in (('real', real), ('synthetic', synthetic), ('cpu', cpu)):
      changed = copy.deepcopy(config)
      changed.synthetic[field] = value
      if name == 'cpu' and field != 'num_domains':  # 0 and 4 are the same world here
        assert fp(changed) != base[name], field
      elif name != 'cpu':
        assert fp(changed) == base[name], (name, field)
  # A field set to the preset's own value is the same world, the same runs.
  same = copy.deepcopy(cpu)
  same.synthetic.noise = defaults.WORLD_PRESETS['cpu']['noise']
  assert fp(same) == base['cpu']
  k = max(cpu.ddo.budgets) / defaults.PRESET_BUDGETS['cpu']
  preset = defaults.WORLD_PRESETS['cpu']
  assert runs.run_description(cpu, counts, 0, 'tok')['synthetic'] == pytest.approx({
      **preset, 'seed': 0, 'num_domains': 0, 'scale': preset['scale'] * k,
      'reference': preset['reference'] * k})


def test_a_bad_world_or_field_is_one_sentence():
  with pytest.raises(ConfigError, match="use '' .*'synthetic'.*cpu, paper, noiseless"):
    world.get(_config('cpus'))
  config = _config('paper')
  config.synthetic.num_domains = 7
  with pytest.raises(ConfigError, match='num_domains is 7 but config.data.domains has 4'):
    world.get(config)
  config = _config('cpu')
  config.synthetic.shared = 1.5
  with pytest.raises(ConfigError, match='config.synthetic.shared'):
    world.get(config)
  with pytest.raises(ConfigError, match='config.synthetic.scale must be > 0'):
    worlds.preset('cpu', 3, scale=0.0)


def test_results_and_doremi_in_a_preset_world_have_the_synthetic_worlds_form():
  names = [d.name for d in tiny.get_config().data.domains]
  rows = np.full(4, 1000)
  records = {}
  for name in ('synthetic', 'cpu'):
    config = _config(name)
    config.train.eval_every = 4
    records[name] = world.result(config, name='x', fingerprint='f', names=names,
                                 counts=np.array([10, 20, 30, 40]), seed=0, rows=rows)
    answer = world.doremi(config, {'step_size': 1.0, 'smoothing': 1e-3},
                          np.full(4, 64), np.full(4, 64), np.ones(4, bool))
    assert sum(answer['weights_mean']) == pytest.approx(1.0)
  assert records['cpu'].keys() == records['synthetic'].keys()
  assert [e.keys() for e in records['cpu']['evals']] == [
      e.keys() for e in records['synthetic']['evals']]
  seq_len = tiny.get_config().data.seq_len
  expected = world.get(_config('cpu')).losses(np.array([10, 20, 30, 40]) * seq_len, 0)
  np.testing.assert_allclose([records['cpu']['val_loss'][n] for n in names], expected)


def test_an_autoscale_pipeline_in_the_cpu_world_at_its_budgets(tmp_path):
  """The tiny config at the cpu preset's budgets (50k and 200k -> 800k): the data only bound
  what runs may train (max_epochs lets the small stores do), the world does the rest."""
  c = _config('cpu')
  c.mode = 'autoscale'
  c.data.max_docs, c.data.tokenizer.train_chars = 8, 200_000
  c.data.max_epochs = 1000
  c.ddo.budgets = (50_000, 200_000)
  c.predict.targets = (800_000,)
  c.validate.seeds = 2
  pipeline.dispatch(c, str(tmp_path))
  predictions = json.loads((tmp_path / 'autoscale' / 'predictions.json').read_text())
  weights = np.array(predictions['targets']['800000']['weights'])
  assert weights.sum() == pytest.approx(1.0)
  verdicts = json.loads((tmp_path / 'validation' / '800000.json').read_text())['verdicts']
  assert set(verdicts) == {'uniform', 'natural', 'reuse'}
  run = next((tmp_path / 'runs').glob('*/result.json'))
  record = json.loads(run.read_text())
  assert {'objective', 'evals', 'trained_sequences'} <= record.keys()
  assert (tmp_path / 'report' / 'report.md').exists()
