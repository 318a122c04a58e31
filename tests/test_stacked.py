"""Stacked proxy runs: equal to runs.run one after another (also across seeds), resumable, skip
finished runs, and the stacked-or-sequential choice.

Three synthetic domains (Zipf token streams, each with its own slope and token order), so the
runs' mixtures change their objectives; the same tiny GPT-2 as the trainer tests on 2 of the 8
fake devices, mesh (data 1, fsdp 2): 4 runs put the run axis on fsdp (so the runs' parameters
are not fsdp-sharded) and are vmapped, 3 runs fold it (each run's parameters and batch split over
fsdp as alone) and, on CPU, are stepped by a loop inside the program.
"""

import json

import jax
import ml_collections
import numpy as np
import pytest
from etils import epath

from autoscale_jax import defaults  # noqa: E402
from autoscale_jax.configs import tiny
from autoscale_jax.data.store import DomainStore  # noqa: E402
from autoscale_jax.errors import ConfigError  # noqa: E402
from autoscale_jax.models import row_len
from autoscale_jax.train import (  # noqa: E402
  memory,
  mesh as mesh_lib,  # noqa: E402
  runs,
  stacked,
)
from autoscale_jax.train.checkpoint import Checkpointer  # noqa: E402

VOCAB, SEQ, BATCH = 512, 32, 16
ROW = row_len('gpt2', SEQ)  # tokens per stored row of the tiny GPT-2
DOMAINS = ('a', 'b', 'c')
# Run lengths 8, 6, 13 and 6 steps of 16 sequences (the third's last batch is padded).
COUNTS = [np.array(c) for c in ([40, 40, 40], [8, 40, 40], [120, 40, 40], [40, 40, 8])]
RTOL = 1e-5


class SyntheticTokenizer:
  vocab_size, hash, special_ids = VOCAB, 'synthetic-zipf', None


def make_stores() -> dict[str, DomainStore]:
  stores = {}
  for d, name in enumerate(DOMAINS):
    rng = np.random.default_rng(d)
    p = 1.0 / np.arange(1, VOCAB + 1) ** (1.0 + 0.3 * d)
    order = rng.permutation(VOCAB)

    def rows(n, rng=rng, p=p / p.sum(), order=order):
      return order[rng.choice(VOCAB, size=(n, ROW), p=p)].astype(np.uint16)
    stores[name] = DomainStore(name, rows(300), rows(8), {'row_len': ROW})
  return stores


def make_config() -> ml_collections.ConfigDict:
  c = tiny.get_config()
  c.data.seq_len = SEQ
  c.model.overrides = ml_collections.ConfigDict(
      dict(num_layers=2, d_model=64, num_heads=4, max_len=SEQ))
  c.model.scan_layers = False  # two unrolled blocks compile faster than a scan on CPU
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, 2, 1
  c.train.batch_size = BATCH
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 2, 4, 8
  c.train.async_checkpoint = False  # the kill test needs the step-8 checkpoint on disk
  c.eval.batch_size = 8
  return c


STORES, TOKENIZER, CONFIG = make_stores(), SyntheticTokenizer(), make_config()
MESH = mesh_lib.make_mesh(CONFIG.mesh, jax.devices()[:2])


TRAINERS = runs.Trainers(CONFIG, TOKENIZER, len(DOMAINS), MESH)


def trainer():
  return TRAINERS.single


def spec(root: epath.Path, i: int, seed: int = 0, counts=None) -> runs.Run:
  return runs.Run(f'run{i}', root / f'run{i}', COUNTS[i] if counts is None else counts, seed)


def train_stacked(root: epath.Path, which: list[int]) -> list[dict]:
  return runs.run_stacked(CONFIG, [spec(root, i) for i in which], stores=STORES,
                          tokenizer=TOKENIZER, trainers=TRAINERS)


def records(run_dir: epath.Path) -> list[dict]:
  return [json.loads(l) for l in (run_dir / 'metrics.jsonl').read_text().splitlines()]


def losses(run_dir: epath.Path) -> list[tuple]:
  """(step, loss, lr) of every training record: the curve, without the timing fields."""
  return [(r['step'], r['loss'], r['lr']) for r in records(run_dir) if 'loss' in r]


def assert_same_run(got: dict, want: dict, got_dir: epath.Path, want_dir: epath.Path,
                    rtol: float = RTOL) -> None:
  assert set(got) == set(want)  # the same result.json schema
  for key in ('fingerprint', 'domains', 'requested_sequences', 'trained_sequences',
              'trained_tokens', 'epochs', 'steps', 'seq_len', 'objective_kind'):
    assert got[key] == want[key], key
  np.testing.assert_allclose(got['objective'], want['objective'], rtol=rtol)
  for name in DOMAINS:
    np.testing.assert_allclose(got['val_loss'][name], want['val_loss'][name], rtol=rtol)
  assert [e['step'] for e in got['evals']] == [e['step'] for e in want['evals']]
  np.testing.assert_allclose([e['objective'] for e in got['evals']],
                             [e['objective'] for e in want['evals']], rtol=rtol)
  g, w = np.array(losses(got_dir)), np.array(losses(want_dir))
  np.testing.assert_array_equal(g[:, 0], w[:, 0])  # logged at the same steps
  np.testing.assert_allclose(g[:, 1], w[:, 1], rtol=rtol)  # final training loss included
  np.testing.assert_allclose(g[:, 2], w[:, 2], rtol=1e-6)  # each run its own schedule length


@pytest.fixture(scope='module', name='sequential')
def fixture_sequential(tmp_path_factory):
  root = epath.Path(tmp_path_factory.mktemp('sequential'))
  results = [runs.run(CONFIG, spec(root, i), stores=STORES, tokenizer=TOKENIZER,
                      trainers=TRAINERS) for i in range(len(COUNTS))]
  return root, results


def test_stacked_equals_sequential(sequential, tmp_path):
  seq_root, seq_results = sequential
  root = epath.Path(tmp_path)
  four = stacked.StackedTrainer(trainer(), 4)
  assert four.run_axes == ('fsdp',) and four.vectorize  # each device steps its 2 runs at once
  results = train_stacked(root, [0, 1, 2, 3])
  assert [r['steps'] for r in results] == [8, 6, 13, 6]
  for i, (got, want) in enumerate(zip(results, seq_results)):
    assert_same_run(got, want, root / f'run{i}', seq_root / f'run{i}')
    assert got == json.loads((root / f'run{i}' / 'result.json').read_text())
    assert ({p.name for p in (root / f'run{i}').iterdir()} ==
            {p.name for p in (seq_root / f'run{i}').iterdir()})
    # Each run's own final checkpoint, readable as loop.run's, holds the same state.
    fp = want['fingerprint']
    mine = Checkpointer(root / f'run{i}' / 'checkpoints', fingerprint=fp, every=1, keep=1)
    theirs = Checkpointer(seq_root / f'run{i}' / 'checkpoints', fingerprint=fp, every=1, keep=1)
    (a, meta), (b, _) = (c.restore(trainer().abstract_state) for c in (mine, theirs))
    assert meta['step'] == want['steps'] == int(a.step) == int(b.step)
    np.testing.assert_array_equal(a.domain_sequences, b.domain_sequences)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    mine.close()
    theirs.close()
  assert not list(root.glob('stack-*'))  # the stacked checkpoints go once every result is out


def test_kill_and_resume_of_the_folded_stack(sequential, tmp_path, monkeypatch):
  seq_root, seq_results = sequential
  which = [0, 1, 2]  # 3 runs on fsdp 2: the run axis is folded (replicated)
  three = stacked.StackedTrainer(trainer(), 3)
  assert three.run_axes == () and not three.vectorize  # on CPU: a loop over runs in the program
  straight_root, killed_root = epath.Path(tmp_path) / 'straight', epath.Path(tmp_path) / 'killed'
  straight = train_stacked(straight_root, which)

  real_step = stacked.StackedTrainer.step
  calls = []

  def dies_after_ten(self, *args):
    if len(calls) == 10:
      raise RuntimeError('killed')
    calls.append(1)
    return real_step(self, *args)

  monkeypatch.setattr(stacked.StackedTrainer, 'step', dies_after_ten)
  with pytest.raises(RuntimeError, match='killed'):
    train_stacked(killed_root, which)
  (stack_dir,) = killed_root.glob('stack-*')
  assert not any((killed_root / f'run{i}' / 'result.json').exists() for i in which)

  def counted(self, *args):
    calls.append(1)
    return real_step(self, *args)

  monkeypatch.setattr(stacked.StackedTrainer, 'step', counted)
  calls.clear()
  resumed = train_stacked(killed_root, which)
  assert len(calls) == 13 - 8  # resumed from the step-8 checkpoint, not from scratch
  assert not stack_dir.exists()
  for i, got, want, alone in zip(which, resumed, straight, seq_results):
    assert_same_run(got, want, killed_root / f'run{i}', straight_root / f'run{i}', rtol=0)
    assert records(killed_root / f'run{i}')[-1] == records(straight_root / f'run{i}')[-1]
    assert_same_run(got, alone, killed_root / f'run{i}', seq_root / f'run{i}')

  # Finished runs are read back, not retrained; a lone unfinished one goes through runs.run.
  monkeypatch.setattr(stacked.StackedTrainer, 'step', None)
  again = train_stacked(straight_root, which)
  assert again == straight
  (straight_root / 'run1' / 'result.json').unlink()
  again = train_stacked(straight_root, which)
  assert again[0] == straight[0] and again[2] == straight[2]
  assert_same_run(again[1], straight[1], straight_root / 'run1', straight_root / 'run1')


def test_a_stack_spans_seeds(sequential, tmp_path):
  """Two runs of one mixture with seeds 0 and 1, stacked: each equals its run alone."""
  seq_root, seq_results = sequential
  root = epath.Path(tmp_path)
  alone = runs.run(CONFIG, spec(root / 'alone', 1, seed=1), stores=STORES, tokenizer=TOKENIZER,
                   trainers=TRAINERS)
  pair = [runs.Run('seed0', root / 'seed0', COUNTS[1], 0),
          runs.Run('seed1', root / 'seed1', COUNTS[1], 1)]
  got = runs.run_stacked(CONFIG, pair, stores=STORES, tokenizer=TOKENIZER, trainers=TRAINERS)
  assert got[0]['fingerprint'] == seq_results[1]['fingerprint'] != alone['fingerprint']
  assert abs(alone['objective'] - seq_results[1]['objective']) > 1e-3  # the seed matters
  assert_same_run(got[0], seq_results[1], root / 'seed0', seq_root / 'run1')
  assert_same_run(got[1], alone, root / 'seed1', root / 'alone' / 'run1')


def test_choose_stacking(monkeypatch):
  t, c = trainer(), make_config()
  c.train.stack_runs = 'auto'
  stack, reason = memory.choose_stacking(c, 11, t)
  assert stack and reason.startswith('stacking 11 runs: est. ') and 'GiB of' in reason
  assert memory.choose_stacking(c, 1, t)[0] is False
  est = [memory.estimate_memory(t, n)['total'] for n in (1, 2, 11)]
  assert 0 < est[0] < est[1] < est[2] <= 11 * est[0]

  monkeypatch.setattr(memory, 'device_memory', lambda device, per_chip=1: (est[2], 'test'))
  stack, reason = memory.choose_stacking(c, 11, t)
  assert not stack and reason.startswith('sequential: 11 stacked runs need est.')
  c.train.stack_runs = True
  stack, reason = memory.choose_stacking(c, 11, t)
  assert stack and 'may run out of memory' in reason
  for off in (False, 'False'):
    c.train.stack_runs = off
    stack, reason = memory.choose_stacking(c, 11, t)
    assert not stack and 'stack_runs=False' in reason
  c.train.stack_runs = 'sometimes'
  with pytest.raises(ConfigError, match='config.train.stack_runs'):
    memory.choose_stacking(c, 11, t)


def test_layout_puts_runs_on_the_batch_axes_that_divide_them():
  big = mesh_lib.make_mesh(defaults.mesh(data=2, fsdp=2, tensor=2))
  rules = CONFIG.mesh.rules
  assert stacked.run_axes_for(big, rules, 4) == ('data', 'fsdp')
  assert stacked.run_axes_for(big, rules, 6) == ('data',)
  assert stacked.run_axes_for(big, rules, 11) == ()
  assert stacked.run_axes_for(MESH, rules, 4) == ('fsdp',)
  t = trainer()
  layout = stacked.stack_layout(t, 4)
  wte = layout.state_shardings.params['wte']['embedding'].spec  # ('vocab', 'embed') alone
  assert tuple(t.state_shardings.params['wte']['embedding'].spec) == ('tensor', 'fsdp')
  assert tuple(wte) == ('fsdp', 'tensor', None)  # runs on fsdp; no run's table split over it
  assert layout.runs_per_device == 2 and layout.inner_dp == 1
  folded = stacked.stack_layout(t, 3)
  assert tuple(folded.state_shardings.params['wte']['embedding'].spec) == (None, 'tensor', 'fsdp')
  assert folded.runs_per_device == 3 and folded.inner_dp == 2
