"""Trainer: sharding-invariance, gradient accumulation, checkpoint resume, optimizer pieces."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from autoscale_jax import defaults  # noqa: E402
from autoscale_jax.configs import tiny
from autoscale_jax.errors import ConfigError  # noqa: E402
from autoscale_jax.models import build_model  # noqa: E402
from autoscale_jax.train import (
  mesh as mesh_lib,  # noqa: E402
  optim,  # noqa: E402
)
from autoscale_jax.train.trainer import (  # noqa: E402
  Trainer,
  loss_and_grads,
  objective,
  run_key,
  summarize_eval,
)

KEY = run_key(0)  # the key of every run here (seed 0)

VOCAB, SEQ, BATCH = 512, 32, 16


def _batch(step: int, batch: int = BATCH) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(step)
  return {'tokens': rng.integers(0, VOCAB, (batch, SEQ + 1)).astype(np.int32),
          'domain': rng.integers(0, 4, batch).astype(np.int32)}


def _trainer(shape=(-1, 1, 1), devices=None, grad_accum=1, family='gpt2', dropout=0.0):
  c = tiny.get_config()
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = shape
  c.train.grad_accum = grad_accum
  c.model.family = family
  c.model.dropout = dropout
  c.model.overrides = ml_collections.ConfigDict(dict(num_layers=1, d_model=64, max_len=64))
  model = build_model(c.model, vocab_size=VOCAB, seq_len=SEQ)
  return Trainer(model=model, train_cfg=c.train, mesh=mesh_lib.make_mesh(c.mesh, devices),
                 rules=c.mesh.rules, num_domains=4)


def _losses(trainer: Trainer, steps: int = 5) -> list[float]:
  state = trainer.init_state(KEY)
  out = []
  for s in range(steps):
    batch = trainer.put_batch(_batch(s % 2))  # two batches: it can learn
    state, m = trainer.step(state, batch, KEY, 20)
    out.append(float(m['loss']))
  return out


def test_losses_equal_across_meshes():
  reference = _losses(_trainer((1, 1, 1), devices=jax.devices()[:1]))
  assert reference[-1] < reference[0]  # it trains
  for shape in [(8, 1, 1), (4, 2, 1), (2, 2, 2)]:
    losses = _losses(_trainer(shape))
    np.testing.assert_allclose(losses, reference, rtol=1e-5, err_msg=str(shape))


def test_params_are_sharded_as_the_rules_say():
  trainer = _trainer((2, 2, 2))
  state = trainer.init_state(KEY)
  wte = state.params['wte']['embedding']  # ('vocab', 'embed') -> ('tensor', 'fsdp')
  assert wte.sharding.spec == jax.sharding.PartitionSpec('tensor', 'fsdp')
  assert wte.addressable_shards[0].data.shape == (wte.shape[0] // 2, wte.shape[1] // 2)
  mu = jax.tree_util.tree_leaves(state.opt_state)  # Adam moments follow the params
  assert any(getattr(x, 'sharding', None) == wte.sharding and x.shape == wte.shape for x in mu)


@pytest.mark.parametrize('family', ['gpt2', 'bert'])
def test_grad_accumulation_equals_full_batch(family):
  trainer = _trainer(family=family)
  params = trainer.init_state(KEY).params
  batch = {k: jnp.asarray(v) for k, v in _batch(0).items()}
  if family == 'bert':
    batch['tokens'] = batch['tokens'][:, :SEQ]
  batch['mask'] = jnp.ones(BATCH, jnp.float32)
  rng = jax.random.PRNGKey(3)
  results = {}
  for accum in (1, 4):
    fn = jax.jit(lambda p, b, r, a=accum: loss_and_grads(
        p, b, r, per_example_loss=trainer.model.per_example_loss, grad_accum=a))
    loss_sum, count, grads = fn(params, batch, rng)
    results[accum] = (loss_sum / count, jax.tree.map(lambda g, c=count: g / c, grads))
  if family == 'gpt2':  # BERT masks per micro-batch with its own key: same math, other draws
    np.testing.assert_allclose(results[4][0], results[1][0], rtol=1e-6)
    for g4, g1 in zip(jax.tree_util.tree_leaves(results[4][1]),
                      jax.tree_util.tree_leaves(results[1][1])):
      np.testing.assert_allclose(g4, g1, rtol=1e-6, atol=1e-8)
  else:
    assert np.isfinite(results[4][0])


def test_grad_accumulation_step_matches_full_batch_step():
  full, accum = _trainer((2, 2, 2), grad_accum=1), _trainer((2, 2, 2), grad_accum=4)
  s1, s4 = full.init_state(KEY), accum.init_state(KEY)
  for s in range(3):
    s1, m1 = full.step(s1, full.put_batch(_batch(s)), KEY, 20)
    s4, m4 = accum.step(s4, accum.put_batch(_batch(s)), KEY, 20)
    np.testing.assert_allclose(m4['loss'], m1['loss'], rtol=1e-6)
  # Adam divides by sqrt(v): float32 summation-order noise in near-zero gradients grows to
  # ~1e-6 in the parameters after a few steps; the gradients themselves agree to 1e-6 above.
  for a, b in zip(jax.tree_util.tree_leaves(s4.params), jax.tree_util.tree_leaves(s1.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_domain_sequences_counted_from_batches():
  trainer = _trainer()
  state = trainer.init_state(KEY)
  expected = np.zeros(4, np.int64)
  for s in range(3):
    b = _batch(s)
    b['mask'] = (np.arange(BATCH) < BATCH - s).astype(np.float32)  # padding slots don't count
    expected += np.bincount(b['domain'][b['mask'] > 0], minlength=4)
    state, _ = trainer.step(state, trainer.put_batch(b), KEY, 20)
  np.testing.assert_array_equal(np.asarray(state.domain_sequences), expected)


def test_checkpoint_resume_in_fresh_process_is_bitwise(tmp_path):
  worker = os.path.join(os.path.dirname(__file__), 'resume_worker.py')

  def run(ckpt, until, out):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(worker)))
    subprocess.run([sys.executable, worker, '--ckpt', str(ckpt), '--until', str(until),
                    '--out', str(out)], check=True, env=env)
    return np.load(out)

  straight = run(tmp_path / 'a', 10, tmp_path / 'straight.npz')
  first = run(tmp_path / 'b', 5, tmp_path / 'first.npz')
  second = run(tmp_path / 'b', 10, tmp_path / 'second.npz')
  assert int(straight['start']) == 0 and int(first['start']) == 0
  assert int(second['start']) == 5  # restored, not retrained
  np.testing.assert_array_equal(np.concatenate([first['losses'], second['losses']]),
                                straight['losses'])
  keys = [k for k in straight.files if k not in ('start', 'losses')]
  assert keys
  for k in keys:
    np.testing.assert_array_equal(second[k], straight[k], err_msg=k)


def test_decay_mask_only_kernels():
  params = {'wte': {'embedding': jnp.ones((4, 2))}, 'ln': {'scale': jnp.ones(2),
            'bias': jnp.ones(2)}, 'mlp': {'fc': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}}}
  mask = optim.decay_mask(params)
  assert mask['mlp']['fc']['kernel'] is True
  assert not any([mask['wte']['embedding'], mask['ln']['scale'], mask['ln']['bias'],
                  mask['mlp']['fc']['bias']])
  cfg = tiny.get_config().train
  cfg.lr, cfg.weight_decay, cfg.clip_norm = 0.1, 0.5, 0.0
  tx = optim.make_optimizer(cfg)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)  # zero gradients: only decay moves a leaf
  assert float(jnp.abs(updates['mlp']['fc']['kernel']).max()) > 0
  assert float(jnp.abs(updates['wte']['embedding']).max()) == 0
  assert float(jnp.abs(updates['mlp']['fc']['bias']).max()) == 0


@pytest.mark.parametrize('kind,end', [('cosine', 0.1), ('linear', 0.1), ('constant', 1.0)])
def test_schedule_warmup_then_decay(kind, end):
  cfg = ml_collections.ConfigDict(dict(lr=1.0, warmup_steps=10, schedule=kind, min_lr_ratio=0.1))
  sched = optim.make_schedule(cfg, total_steps=110)
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(5)), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(sched(10)), 1.0, rtol=1e-6)
  np.testing.assert_allclose(float(sched(110)), end, rtol=1e-6)
  with pytest.raises(ConfigError, match='config.train.schedule'):
    optim.make_schedule(ml_collections.ConfigDict(dict(cfg.to_dict(), schedule='step')), 10)


@pytest.mark.parametrize('total,expected', [(49, 5), (147, 15), (10, 1), (100, 10)])
def test_warmup_ratio_is_a_share_of_each_run_rounded_up(total, expected):
  cfg = ml_collections.ConfigDict(dict(lr=1.0, warmup_steps=0, warmup_ratio=0.1,
                                       schedule='constant', min_lr_ratio=0.1))
  assert float(optim.warmup_steps(cfg, total)) == expected
  sched = optim.make_schedule(cfg, total_steps=total)
  np.testing.assert_allclose(float(sched(expected - 1)), (expected - 1) / expected, rtol=1e-6)
  assert float(sched(expected)) == 1.0  # warm from step `expected` on
  cfg.warmup_steps = 20  # a fixed count overrides the ratio
  assert float(optim.warmup_steps(cfg, total)) == 20
  cfg.warmup_ratio = 1.0
  with pytest.raises(ConfigError,
                     match=r'train\.warmup_ratio is 1\.0; it must be a number >= 0 and < 1'):
    optim.check_optimizer(cfg)


def test_eval_statistics_match_a_float64_reference():
  """Trainer.evaluate's per-domain stats, summarised, against numpy on the per-example losses."""
  trainer = _trainer()
  params = trainer.init_state(KEY).params
  batches = [trainer.put_batch(_batch(100 + k)) for k in range(3)]
  stats = trainer.evaluate(params, batches, KEY)
  summary = summarize_eval(stats)
  per_seq = {d: [] for d in range(4)}
  token_sums = np.zeros(4)
  token_counts = np.zeros(4)
  for k in range(3):
    host = _batch(100 + k)
    loss_sum, count = trainer.model.per_example_loss(params, {k2: jnp.asarray(v) for k2, v in
                                                              host.items()}, KEY, train=False)
    for d, ls, c in zip(host['domain'], np.asarray(loss_sum, np.float64), np.asarray(count)):
      per_seq[d].append(ls / c)
      token_sums[d] += ls
      token_counts[d] += c
  for d in range(4):
    x = np.array(per_seq[d])
    np.testing.assert_allclose(summary['loss'][d], token_sums[d] / token_counts[d], rtol=1e-5)
    np.testing.assert_allclose(summary['ppl_sequence'][d], np.mean(np.exp(x)), rtol=1e-5)
    np.testing.assert_allclose(summary['loss_se'][d], x.std(ddof=1) / np.sqrt(x.size), rtol=1e-3)
  # Mean of exps >= exp of mean (Jensen): sequence perplexity is never below the token one here.
  assert np.all(summary['ppl_sequence'] >= summary['ppl_token'] * (1 - 1e-6))


def test_objectives_against_hand_computation():
  losses = {'a': 1.0, 'b': 2.0, 'c': 3.0}
  cfg = ml_collections.ConfigDict(dict(objective='mean_ppl', objective_weights={}))
  assert objective(losses, cfg) == pytest.approx((np.e + np.e ** 2 + np.e ** 3) / 3)
  cfg.objective = 'mean_loss'
  assert objective(losses, cfg) == pytest.approx(2.0)
  cfg.objective = 'weighted_loss'
  cfg.objective_weights = {'a': 3.0, 'c': 1.0}  # held-out style: b gets no weight
  assert objective(losses, cfg) == pytest.approx(0.75 * 1 + 0.25 * 3)
  cfg.objective_weights = {'zz': 1.0}
  with pytest.raises(ConfigError, match='unknown domain'):
    objective(losses, cfg)
  cfg.objective, cfg.objective_weights = 'mean_ppl', {}
  ppl = {'a': 4.0, 'b': 8.0, 'c': 9.0}  # e.g. per-sequence perplexities (eval.perplexity)
  assert objective(losses, cfg, ppl) == pytest.approx(7.0)
  cfg.perplexity = 'word'
  with pytest.raises(ConfigError, match=r"config\.eval\.perplexity is 'word'"):
    objective(losses, cfg)


def test_batch_not_divisible_by_data_parallel_is_refused():
  c = tiny.get_config()
  c.train.batch_size = 12
  model = build_model(c.model, vocab_size=VOCAB, seq_len=SEQ)
  with pytest.raises(ConfigError, match='data-parallel size 8'):
    Trainer(model=model, train_cfg=c.train, mesh=mesh_lib.make_mesh(c.mesh),
            rules=c.mesh.rules, num_domains=4)


def test_mesh_shapes_and_errors():
  c = defaults.mesh(data=-1, fsdp=2, tensor=2)
  assert dict(mesh_lib.make_mesh(c).shape) == {'data': 2, 'fsdp': 2, 'tensor': 2}
  multi = defaults.mesh(data=2, fsdp=2, tensor=1, dcn_data=2)
  m = mesh_lib.make_mesh(multi)
  assert dict(m.shape) == {'data': 4, 'fsdp': 2, 'tensor': 1}
  # slice 0 (devices 0-3) holds the first half of the data axis
  assert {d.id for d in m.devices[:2].ravel()} == {0, 1, 2, 3}
  with pytest.raises(ConfigError, match='multiplies to 6'):
    mesh_lib.make_mesh(defaults.mesh(data=3, fsdp=2, tensor=1))
  with pytest.raises(ConfigError, match='at most one'):
    mesh_lib.make_mesh(defaults.mesh(data=-1, fsdp=-1, tensor=1))
