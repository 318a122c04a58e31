"""Checkpoint faults and the NaN guard.

A truncated, bit-flipped or half-deleted newest checkpoint is detected (orbax alone reads a
flipped bit without complaint; the per-leaf checksums saved with each checkpoint catch it), set
aside, and training falls back to the previous one and says so; a checkpoint or a finished run
of another config is refused with one sentence naming what differs; a non-finite loss stops the
run naming the step and the last good checkpoint, and no checkpoint ever holds a non-finite value.
"""

import glob
import json
import logging
import os
import re
import shutil

import jax
import numpy as np
import pytest

import kill_harness
import resume_worker
from autoscale_jax import pipeline
from autoscale_jax.errors import ConfigError
from autoscale_jax.pipeline import registry
from autoscale_jax.train import loop, runs
from autoscale_jax.train.checkpoint import Checkpointer


# ------------------------------------------------------------------------ Checkpointer alone
def _largest_data_file(step_dir: str) -> str:
  return max(glob.glob(f'{step_dir}/state/**/d/*', recursive=True), key=os.path.getsize)


def _flip_one_bit(step_dir: str) -> None:
  path = _largest_data_file(step_dir)
  data = bytearray(open(path, 'rb').read())
  data[len(data) // 2] ^= 0x10
  open(path, 'wb').write(bytes(data))


def _truncate(step_dir: str) -> None:
  path = _largest_data_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 2)


CORRUPTIONS = {
    'truncated_data_file': _truncate,
    'one_flipped_bit': _flip_one_bit,  # decodes fine: only the checksum catches it
    'state_deleted': lambda d: shutil.rmtree(f'{d}/state'),
    'meta_garbage': lambda d: open(f'{d}/meta/metadata', 'w').write('{"fingerpr'),
    'empty_step_directory': lambda d: [shutil.rmtree(d), os.makedirs(d)],
}


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """Three checkpoints (steps 1, 2, 3) of the tiny GPT-2 and the state at each step."""
  trainer = resume_worker.make_trainer()
  directory = tmp_path_factory.mktemp('ckpt') / 'checkpoints'
  ckpt = Checkpointer(directory, fingerprint='f', every=1, keep=3, use_async=True)
  state, states = trainer.init_state(resume_worker.KEY), {}
  for step in range(1, 4):
    batch = trainer.put_batch(resume_worker.synthetic_batch(step, 16))
    state, _ = trainer.step(state, batch, resume_worker.KEY, 10)
    states[step] = jax.device_get(state)
    ckpt.maybe_save(step, state)
  ckpt.close()
  return trainer, directory, states


@pytest.mark.parametrize('corruption', list(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(saved, corruption, tmp_path,
                                                               caplog):
  trainer, template, states = saved
  directory = tmp_path / 'checkpoints'
  shutil.copytree(template, directory)
  CORRUPTIONS[corruption](str(directory / '3'))

  ckpt = Checkpointer(directory, fingerprint='f', every=1, keep=3)
  with caplog.at_level(logging.WARNING):
    state, meta = ckpt.restore(trainer.abstract_state)
  assert meta['step'] == 2
  for got, want in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(states[2])):
    np.testing.assert_array_equal(got, want)
  warning = [r.getMessage() for r in caplog.records if 'unreadable' in r.getMessage()]
  assert len(warning) == 1 and 'step 3' in warning[0] and 'falling back to step 2' in warning[0]
  # Set aside (kept for inspection), out of the way of the step-3 checkpoint written again.
  assert ckpt.manager.all_steps() == [1, 2]
  assert [p.name.split('-')[0] for p in (tmp_path / 'checkpoints.unreadable').iterdir()] == ['3']
  assert ckpt.maybe_save(3, state)
  ckpt.close()


def test_checkpoint_of_another_run_is_refused_naming_the_difference(saved, tmp_path):
  trainer, template, _ = saved
  directory = tmp_path / 'checkpoints'
  before = {'model': {'d_model': 128, 'num_layers': 2}, 'lr': 0.003}
  ckpt = Checkpointer(directory, fingerprint='a', every=1, keep=2, description=before)
  ckpt.maybe_save(1, trainer.init_state(resume_worker.KEY))
  ckpt.close()
  now = {'model': {'d_model': 64, 'num_layers': 2}, 'lr': 0.003}
  with pytest.raises(ConfigError) as e:
    Checkpointer(directory, fingerprint='b', every=1, keep=2,
                 description=now).restore(trainer.abstract_state)
  message = str(e.value)
  assert 'model.d_model: 128 in the checkpoint, 64 now' in message
  assert message.count('. ') == 0 and message.endswith('.') and '\n' not in message
  assert Checkpointer(directory, fingerprint='a', every=1, keep=2).restore(
      trainer.abstract_state) is not None  # refused, not damaged


# ------------------------------------------------------------------------ a real run
STEPS = 8


def _config(**train):
  c = kill_harness.config()
  c.data.prefetch = 0
  c.train.tokens = STEPS * 8 * 32
  c.train.eval_every = 0
  c.train.log_every = 2
  for k, v in train.items():
    c.train[k] = v
  return c


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('prepared')
  kill_harness.prepare(workdir)
  return workdir


def _only_run(workdir):
  (run,) = (workdir / 'runs').iterdir()
  return run


def test_training_resumes_from_the_previous_checkpoint_when_the_newest_is_corrupt(
    prepared, tmp_path, caplog):
  workdir = tmp_path / 'w'
  shutil.copytree(prepared, workdir)
  pipeline.dispatch(_config(), str(workdir))
  run = _only_run(workdir)
  first = json.loads((run / 'result.json').read_text())
  curve = kill_harness.curve(run)
  assert sorted(int(p.name) for p in (run / 'checkpoints').iterdir()) == [4, 8]

  # The final checkpoint loses a bit and the run is asked again (as after a kill before
  # result.json): it must notice, resume from step 4 and end exactly where it ended before.
  _flip_one_bit(str(run / 'checkpoints' / '8'))
  (run / 'result.json').unlink()
  with caplog.at_level(logging.INFO):
    pipeline.dispatch(_config(), str(workdir))
  log = '\n'.join(r.getMessage() for r in caplog.records)
  assert 'The checkpoint at step 8' in log and 'falling back to step 4' in log
  assert 'resuming from the checkpoint at step 4' in log
  second = json.loads((run / 'result.json').read_text())
  assert second['objective'] == first['objective'] and second['val_loss'] == first['val_loss']
  assert kill_harness.curve(run) == curve

  # The same run directory with another model: refused in one sentence naming the field, and
  # nothing in the run directory changes.
  (run / 'result.json').unlink()
  files = {p: p.read_bytes() for p in run.rglob('*') if p.is_file()}
  other = _config()
  other.model.overrides.num_layers = 1
  tok, stores = registry.prepare_data(other, workdir)
  with pytest.raises(ConfigError, match=r'model\.overrides\.num_layers: None in the checkpoint, '
                                        r'1 now.*; restore that config or point the run at a '
                                        r'fresh directory\.$'):
    runs.run(other, runs.Run('other', run, np.asarray(first['requested_sequences']), 0),
             stores=stores, tokenizer=tok)
  assert {p: p.read_bytes() for p in run.rglob('*') if p.is_file()} == files


def test_non_finite_loss_stops_the_run_naming_step_and_last_good_checkpoint(prepared, tmp_path):
  workdir = tmp_path / 'w'
  shutil.copytree(prepared, workdir)
  # Warmup from lr 0 keeps the first steps finite; then lr 1e9 blows the weights up.
  config = _config(lr=1e9, warmup_steps=4, checkpoint_every=1, keep_checkpoints=100,
                   log_every=100)
  with pytest.raises(loop.TrainingDiverged) as e:
    pipeline.dispatch(config, str(workdir))
  message = str(e.value)
  match = re.search(
      r'became (nan|inf|-inf) at step (\d+); the last good checkpoint is step (\d+) in (\S+); '
      r'lower config\.train\.lr', message)
  assert match, message
  step, good = int(match.group(2)), int(match.group(3))
  assert 1 <= good < step
  run = _only_run(workdir)
  assert not (run / 'result.json').exists()
  saved_steps = sorted(int(p.name) for p in (run / 'checkpoints').iterdir())
  assert saved_steps[-1] == good  # nothing non-finite was saved
  trainer = runs.Trainers(config, _tokenizer(config, workdir), 4).single
  state, _ = Checkpointer(run / 'checkpoints', fingerprint=json.loads(
      (run / 'config.json').read_text())['fingerprint'], every=1, keep=100).restore(
          trainer.abstract_state)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))


def _tokenizer(config, workdir):
  return registry.prepare_data(config, workdir)[0]


def test_small_replicated_arrays_are_saved_whole_and_large_ones_by_every_replica():
  """checkpoint.py's array handler: replica-parallel saving only where a slice is >= 1 MiB."""
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  from orbax.checkpoint._src.serialization import replica_slices

  from autoscale_jax.train import checkpoint
  handler = checkpoint.ocp.type_handlers.get_type_handler(jax.Array)
  settings = (0, handler._use_replica_parallel, handler._min_slice_bytes_for_replica_parallel)
  replicated = NamedSharding(Mesh(jax.devices(), ('d',)), PartitionSpec())
  small = jax.device_put(np.zeros((64, 64), np.float32), replicated)  # 16 KiB
  large = jax.device_put(np.zeros((1024, 2048), np.float32), replicated)  # 8 MiB: 1 MiB each
  assert len(replica_slices.get_replica_slices(small, *settings).replica_slices) == 1
  assert len(replica_slices.get_replica_slices(large, *settings).replica_slices) == 8
