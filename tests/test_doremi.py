"""DoReMi's proxy run: the step against a float64 recomputation of the paper's update, invariance
to gradient accumulation and the mesh, and the driver (reference -> proxy) resuming bitwise
after a preemption and after a SIGKILL.

Uses test_stacked's three synthetic domains and tiny GPT-2 (2 of the 8 fake devices)."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from etils import epath

import doremi_worker
import kill_harness
from autoscale_jax.errors import ConfigError
from autoscale_jax.mixing import doremi_update
from autoscale_jax.train import doremi, loop, mesh as mesh_lib, runs
from autoscale_jax.train.checkpoint import Checkpointer
from autoscale_jax.train.trainer import Trainer, run_key
from test_stacked import CONFIG, DOMAINS, STORES, TOKENIZER, TRAINERS, records

STEP_SIZE, SMOOTHING = 1.0, 1e-3
KEY = run_key(3)
UNIFORM = np.array([24, 24, 24])  # the proxy run: 72 sequences, 5 steps of 16 (the last padded)


def _batch(step: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(100 + step)
  rows = [STORES[d].train[rng.integers(0, 300, 6)] for d in DOMAINS[:2]]  # no 'c' in the batch
  rows.append(STORES['c'].train[rng.integers(0, 300, 4)])
  return {'tokens': np.concatenate(rows).astype(np.int32),
          'domain': np.repeat(np.arange(3), [6, 6, 4]).astype(np.int32),
          'mask': np.r_[np.ones(14), np.zeros(2)].astype(np.float32)}  # 2 padding rows of 'c'


def _kind(trainer: Trainer, reference_params) -> doremi.DoReMiTrainer:
  return doremi.DoReMiTrainer(trainer, reference_params, [0, 1, 2], step_size=STEP_SIZE,
                              smoothing=SMOOTHING, reference='ref')


def _reference_params(trainer: Trainer):
  return trainer.init_state(run_key(11)).params  # any other model does as a reference


def test_step_follows_the_paper_in_float64():
  trainer = TRAINERS.single
  kind = _kind(trainer, _reference_params(trainer))
  state = kind.init_state(KEY)
  np.testing.assert_allclose(state.weights, np.full(3, 1 / 3), rtol=1e-7)
  weights, total = np.full(3, 1 / 3), np.zeros(3)
  for s in range(3):
    host = _batch(s)
    batch = trainer.put_batch(host)
    # Independent: per-token losses of both models, then the paper's update in numpy float64.
    jb = {k: jnp.asarray(v) for k, v in host.items()}
    step_key = jax.random.fold_in(KEY, s)
    proxy, w = map(np.asarray, trainer.model.per_token_loss(state.params, jb, step_key,
                                                            train=False))
    ref, _ = map(np.asarray, trainer.model.per_token_loss(kind.reference_params, jb, step_key,
                                                          train=False))
    excess = np.maximum(proxy.astype(np.float64) - ref, 0) * w
    per_domain = np.array([excess[host['domain'] == d].sum() / w[host['domain'] == d].sum()
                           for d in range(3)])
    weights = doremi_update(weights, per_domain, STEP_SIZE, SMOOTHING)
    total += weights
    token_w = weights[host['domain']][:, None] * w
    expected_loss = (proxy * token_w).sum() / token_w.sum()
    state, metrics = kind.step(state, batch, KEY, 5)
    np.testing.assert_allclose(metrics['excess'], per_domain, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(state.weights, weights, rtol=1e-5)
    np.testing.assert_allclose(metrics['loss'], expected_loss, rtol=1e-5)
  assert per_domain.min() > 0  # the reference (another init) is not uniformly worse
  result = kind.result(state)
  np.testing.assert_allclose(result['weights_mean'], total / 3, rtol=1e-5)
  np.testing.assert_allclose(sum(result['weights_mean']), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(state.domain_sequences, [18, 18, 6])  # padding not counted


@pytest.mark.parametrize('shape,accum', [((1, 2, 1), 2), ((2, 2, 2), 1)])
def test_step_is_the_same_with_accumulation_and_on_any_mesh(shape, accum):
  base = TRAINERS.single
  reference = _reference_params(base)
  c = CONFIG.copy_and_resolve_references()
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = shape
  c.train.grad_accum = accum
  other = Trainer(model=base.model, train_cfg=c.train,
                  mesh=mesh_lib.make_mesh(c.mesh, jax.devices()[:int(np.prod(shape))]),
                  rules=c.mesh.rules, num_domains=3)
  a, b = _kind(base, reference), _kind(other, jax.device_get(reference))
  sa, sb = a.init_state(KEY), b.init_state(KEY)
  for s in range(3):
    sa, ma = a.step(sa, base.put_batch(_batch(s)), KEY, 5)
    sb, mb = b.step(sb, other.put_batch(_batch(s)), KEY, 5)
    np.testing.assert_allclose(mb['loss'], ma['loss'], rtol=1e-5)
  np.testing.assert_allclose(sb.weights, sa.weights, rtol=1e-5)
  np.testing.assert_allclose(sb.weight_sum, sa.weight_sum, rtol=1e-5)


def _specs(root: epath.Path) -> tuple[runs.Run, runs.Run]:
  return (runs.Run('reference', root / 'reference', np.array([40, 40, 40]), 0),
          runs.Run('proxy', root / 'proxy', UNIFORM, 0))


def _doremi(root: epath.Path) -> dict:
  reference, proxy = _specs(root)
  return doremi.run(CONFIG, proxy, reference, mixture=[0, 1, 2], step_size=STEP_SIZE,
                    smoothing=SMOOTHING,
                    stores=STORES, tokenizer=TOKENIZER, trainers=TRAINERS)


def _final_state(run_dir: epath.Path, fingerprint: str) -> doremi.DoReMiState:
  kind = _kind(TRAINERS.single, _reference_params(TRAINERS.single))  # its abstract state
  ckpt = Checkpointer(run_dir / 'checkpoints', fingerprint=fingerprint, every=1, keep=1)
  state, _ = ckpt.restore(kind.abstract_state)
  ckpt.close()
  return state


def _assert_same_proxy(got: epath.Path, want: epath.Path, fingerprint: str) -> None:
  """The proxy runs under two roots logged the same numbers and ended in the same state."""
  timing = ('tokens_per_s', 'mfu', 'eta_s')
  strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]
  assert strip(records(got / 'proxy')) == strip(records(want / 'proxy'))
  a, b = (_final_state(r / 'proxy', fingerprint) for r in (got, want))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_proxy_run_needs_a_finished_reference_then_resumes_bitwise(tmp_path, monkeypatch):
  straight_root, killed_root = epath.Path(tmp_path) / 'a', epath.Path(tmp_path) / 'b'
  with pytest.raises(ConfigError, match='reference run .* has no final checkpoint'):
    _doremi(straight_root)
  for root in (straight_root, killed_root):
    runs.run(CONFIG, _specs(root)[0], stores=STORES, tokenizer=TOKENIZER, trainers=TRAINERS)
  straight = _doremi(straight_root)

  # SIGTERM at step 3 of 5: checkpointed there, then resumed by the same call.
  real = Checkpointer.reached_preemption
  monkeypatch.setattr(Checkpointer, 'reached_preemption', lambda self, step: step == 3)
  with pytest.raises(loop.Preempted):
    _doremi(killed_root)
  assert not (killed_root / 'proxy' / 'result.json').exists()
  monkeypatch.setattr(Checkpointer, 'reached_preemption', real)
  resumed = _doremi(killed_root)

  weights = np.array(straight['doremi']['weights_mean'])
  assert straight['steps'] == 5 and abs(weights.sum() - 1) < 1e-6 and weights.min() > 0
  assert not np.allclose(weights, 1 / 3, atol=1e-3)  # the weights moved
  ref_fp = json.loads((straight_root / 'reference' / 'result.json').read_text())['fingerprint']
  assert straight['doremi']['reference'] == ref_fp
  assert straight['fingerprint'] != runs.run_fingerprint(CONFIG, UNIFORM, 0, TOKENIZER.hash)
  drop = ('wall_s_last_session',)
  assert ({k: v for k, v in resumed.items() if k not in drop}
          == {k: v for k, v in straight.items() if k not in drop})
  _assert_same_proxy(killed_root, straight_root, straight['fingerprint'])
  # A finished proxy run is read back without loading its reference again.
  (straight_root / 'reference' / 'checkpoints').rmtree()
  assert _doremi(straight_root) == straight


def _worker(root: epath.Path, kill_at: int | None = None) -> None:
  """tests/doremi_worker.py on `root`; SIGKILLed once its proxy run logged step `kill_at`."""
  worker = pathlib.Path(__file__).with_name('doremi_worker.py')
  proc = subprocess.Popen([sys.executable, str(worker), str(root)], env=kill_harness.env(),
                          cwd=worker.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  if kill_at is None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]
    return
  metrics, deadline = root / 'proxy' / 'metrics.jsonl', time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and any(json.loads(l).get('step', 0) >= kill_at
                                for l in metrics.read_text().splitlines()):
      proc.send_signal(signal.SIGKILL)
      break
    time.sleep(0.05)
  proc.wait(timeout=60)
  assert proc.returncode == -signal.SIGKILL, 'the worker ended before the kill'


def test_proxy_run_survives_sigkill_bitwise(tmp_path):
  straight, killed = epath.Path(tmp_path) / 'straight', epath.Path(tmp_path) / 'killed'
  doremi_worker.main(straight, pause=0.0)  # here; the killed run in worker processes
  _worker(killed, kill_at=6)  # checkpointed at 4, killed at 6 or 7 of 12
  assert not (killed / 'proxy' / 'result.json').exists()
  assert [p.name for p in (killed / 'proxy' / 'checkpoints').iterdir() if p.name.isdigit()] == ['4']
  _worker(killed)
  want, got = (json.loads((r / 'proxy' / 'result.json').read_text()) for r in (straight, killed))
  assert got['doremi'] == want['doremi'] and got['steps'] == want['steps'] == 12
  assert got['fingerprint'] == want['fingerprint']
  _assert_same_proxy(killed, straight, want['fingerprint'])
