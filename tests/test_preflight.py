"""mode=preflight (pipeline/preflight.py, train/aot.py): a tiny GPT-2 and a tiny BERT compiled for
TPU slices on this CPU with libtpu (the tpu extra): memory below the chip's HBM, the plan's step
counts against ddo_plan and validation's own counts, layer-extrapolated costs against an unrolled
compile, a config too large for its mesh refused with exit 2 and a mesh that fits."""

import json
import subprocess
import sys

import numpy as np
import pytest

from autoscale_jax import pipeline
from autoscale_jax.configs import bert_tiny, tiny
from autoscale_jax.data.mixture import counts_from_weights, num_steps
from autoscale_jax.errors import ConfigError, UserError
from autoscale_jax.pipeline import ddo, plan, preflight, validate
from autoscale_jax.train import aot, chips, memory

pytest.importorskip('libtpu', reason='preflight compiles with libtpu (pip install ".[tpu]")')
GiB = 2**30


def _tiny(**mesh):
  c = tiny.get_config()
  c.mode, c.preflight.topology = 'preflight', 'v5e:2x2'
  c.mesh.update(mesh)
  return c


def _workdir_summary(workdir) -> dict:
  return json.loads((workdir / 'preflight.json').read_text())


def test_stacks_are_decided_on_the_slices_hbm_not_this_hosts_ram():
  config = _tiny()
  target = preflight.plan_config(config)
  programs = preflight.Programs(target, aot.topology_devices('v5e:2x2'))
  device = programs.mesh.devices.flat[0]
  assert memory.device_memory(device) == (16e9, 'v5e HBM (chip table)')
  names = preflight.program_names(target, plan.rows(target), programs)
  # The demo's 4 domains: 9 DDO runs a budget, 4 validation mixtures; both stack in 16 GB.
  assert names == ['init', 'train_step', 'eval_step', 'stack4 init', 'stack4 train_step',
                   'stack4 eval_step', 'stack9 init', 'stack9 train_step', 'stack9 eval_step']
  target.train.stack_runs = 'false'  # the plan's config holds it resolved, as a string
  assert preflight.program_names(target, plan.rows(target), programs) == [
      'init', 'train_step', 'eval_step']


def test_tiny_gpt2_on_v5e_fits_and_costs_the_plan_the_pipeline_trains(tmp_path):
  config = _tiny()
  config.train.stack_runs = False  # the stacked programs' decision: the test above
  pipeline.dispatch(config, str(tmp_path))
  summary = _workdir_summary(tmp_path)
  assert summary['chips'] == summary['devices'] == 4 and summary['fits']
  hbm = 16e9 / GiB
  for name in ('init', 'train_step', 'eval_step'):
    row = summary['programs'][name]
    assert 0 < row['arguments_gib'] and 0 < row['total_gib'] < hbm and row['fits'], name
    assert row['hbm_gib'] == pytest.approx(hbm)
  step = summary['programs']['train_step']
  assert 0 < step['mfu_bound'] <= 1 and step['step_s'] > 0
  # The plan's steps, counted independently: DDO's runs from ddo_plan, validation's from the
  # uniform counts of each target (every mixture trains the same number of sequences).
  plan_config = preflight.plan_config(config)
  names = [d.name for d in config.data.domains]
  ones, trainable = np.ones(len(names)), np.ones(len(names), bool)
  batch, seq_len = config.train.batch_size, config.data.seq_len
  ddo_steps = sum(num_steps(spec.counts, batch) for b in ddo.budgets(plan_config)
                  for spec in ddo.ddo_plan(plan_config, names, ones, trainable, b, seq_len)[1])
  assert summary['plan']['DDO budgets']['steps'] == ddo_steps
  mixtures = 1 + len(config.validate.baselines)
  val_steps = sum(num_steps(counts_from_weights(ones / len(names), t, seq_len), batch)
                  for t in validate.targets(plan_config)) * mixtures * config.validate.seeds
  assert summary['plan']['validation']['steps'] == val_steps
  assert summary['plan']['all']['steps'] == ddo_steps + val_steps + summary['plan'].get(
      'check budgets', {'steps': 0})['steps']
  all_row = summary['plan']['all']
  assert all_row['chip_hours_roofline'] == pytest.approx(all_row['hours_roofline'] * 4)


def test_layer_extrapolation_matches_an_unrolled_compile():
  config = _tiny()
  config.model.overrides.num_layers = 4
  devices = aot.topology_devices('v5e:2x2')
  programs = {n: preflight.Programs(config, devices, layers=n) for n in (2, 3, 4)}
  two, three, four = (aot.analyse(programs[n].lowered('train_step'),
                                  list(programs[n].mesh.devices.flat)) for n in (2, 3, 4))
  got = aot.extrapolate(two, three, 4)
  assert four.flops > three.flops > 0 and four.hbm_bytes > three.hbm_bytes
  np.testing.assert_allclose(got['flops'], four.flops, rtol=0.01)
  np.testing.assert_allclose(got['hbm_bytes'], four.hbm_bytes, rtol=0.01)


BIG = '''
import ml_collections
from autoscale_jax.configs import tiny

def get_config():
  c = tiny.get_config()
  c.model.overrides = ml_collections.ConfigDict({'d_model': 8192, 'num_heads': 64})
  c.train.batch_size = c.eval.batch_size = 4
  return c
'''


def test_too_large_for_a_replicated_mesh_exits_2_naming_a_mesh_that_fits(tmp_path):
  """A 1.6B-parameter model replicated on 4 chips (mesh data=-1) needs ~26 GiB of state each;
  sharded over fsdp=4 it fits the v5e's 16 GB."""
  (tmp_path / 'big.py').write_text(BIG)
  flags = (f'--config={tmp_path / "big.py"}', '--config.mode=preflight',
           '--config.preflight.topology=v5e-4', '--config.preflight.mode=train',
           f'--workdir={tmp_path}')
  proc = subprocess.run([sys.executable, '-m', 'autoscale_jax.main', *flags],
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  error = [l for l in proc.stderr.splitlines() if l.startswith('error:')]
  assert len(error) == 1 and 'does not fit:' in error[0] and 'train_step (' in error[0], error
  assert 'mesh.fsdp=4 mesh.tensor=1' in error[0]
  summary = _workdir_summary(tmp_path)
  assert not summary['programs']['train_step']['fits']
  assert summary['programs']['train_step']['total_gib'] > 16e9 / GiB
  fits = summary['alternatives']['meshes'][0]
  assert (fits['fsdp'], fits['tensor']) == (4, 1) and fits['gib_per_device'] < 16e9 / GiB


def test_tiny_bert_on_v4_counts_chips_not_cores(tmp_path):
  config = bert_tiny.get_config()
  config.mode, config.preflight.topology, config.preflight.mode = 'preflight', 'v4-8', 'train'
  summary = preflight.run(config, tmp_path, say_line=lambda line: None)
  assert summary['chips'] == 4 and summary['devices'] == 8  # a v4 chip's two TensorCores
  for name in ('init', 'train_step', 'eval_step'):
    row = summary['programs'][name]
    assert 0 < row['total_gib'] < row['hbm_gib'] == pytest.approx(16.0) and row['fits'], name
  step = summary['programs']['train_step']
  assert step['flops_per_device'] > 0 and 0 < step['mfu_bound'] <= 1
  plan = summary['plan']['all']
  assert plan['steps'] == num_steps([round(config.train.tokens / config.data.seq_len)],
                                    config.train.batch_size)
  assert plan['chip_hours_roofline'] == pytest.approx(plan['hours_roofline'] * 4)


def test_slice_names_and_bad_topologies():
  assert chips.parse_slice('v5p-128').topology == 'v5p:4x4x4'
  assert chips.parse_slice('v5litepod-16').topology == 'v5e:4x4'
  assert chips.parse_slice('v4-32').chips == 16
  assert chips.parse_slice('v6e-256').topology == 'v6e:16x16'
  with pytest.raises(ConfigError, match='v5p-12.*not a slice size'):
    chips.parse_slice('v5p-12')
  with pytest.raises(ConfigError, match='empty'):
    preflight.run(tiny.get_config(), '/nonexistent')


def test_without_libtpu_one_sentence_names_the_extra(monkeypatch):
  monkeypatch.setattr(aot.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(UserError, match=r'pip install "autoscale_jax\[tpu\]"'):
    aot.topology_devices('v5e:2x2')
