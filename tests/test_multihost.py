"""Two processes on localhost (jax.distributed over gloo, 4 CPU devices each) train the tiny config
with fsdp=8 spanning both, through the real command line: one of them gets SIGTERM (a preemption
notice to one host) and both checkpoint at the same step and stop; that checkpoint then fails
its checksums, so on restart both set it aside and restore the previous one together; the loss
curve equals that of one process with 8 devices (this one, to 1e-5 relative).
"""

import json
import re
import shutil
import signal
import socket
import subprocess
import time

import numpy as np

import kill_harness as kh
from autoscale_jax import pipeline

STEPS = 16
FLAGS = ('--config.mesh.data=1', '--config.mesh.fsdp=8',  # parameters sharded over both hosts
         f'--config.train.tokens={STEPS * 8 * 32}', '--config.train.eval_every=0')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_pair(workdir, tmp_path, tag):
  port = _free_port()
  procs, logs = [], []
  for i in (0, 1):
    env = kh.env(devices=4)
    # No persistent compilation cache: only process 0 reads it (the keys of the others differ),
    # so process 1 would compile for half a minute while process 0 waits in gloo, whose
    # connection setup times out after 30 s.
    env.pop('JAX_COMPILATION_CACHE_DIR', None)
    env['JAX_ENABLE_COMPILATION_CACHE'] = 'false'
    env.update(AUTOSCALE_COORDINATOR=f'127.0.0.1:{port}', AUTOSCALE_NUM_PROCESSES='2',
               AUTOSCALE_PROCESS_ID=str(i))
    logs.append(tmp_path / f'{tag}{i}.log')
    procs.append(subprocess.Popen(kh.command(workdir, *FLAGS), env=env, cwd=kh.ROOT,
                                  stdout=logs[-1].open('w'), stderr=subprocess.STDOUT))
  return procs, logs


def _wait(procs, logs, timeout=600):
  deadline = time.time() + timeout
  for p in procs:
    try:
      p.wait(timeout=max(1, deadline - time.time()))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise AssertionError('timed out:\n' + '\n'.join(l.read_text()[-3000:] for l in logs))
  return [p.returncode for p in procs], [l.read_text() for l in logs]


def _losses(workdir) -> dict[int, float]:
  run = kh.run_dir(workdir)
  records = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r['loss'] for r in records if 'loss' in r}


def test_two_processes_fsdp_across_hosts_preempt_resume_and_match_one_process(tmp_path):
  prepared = tmp_path / 'prepared'
  kh.prepare(prepared)  # one tokenizer for both set-ups
  single, multi = tmp_path / 'single', tmp_path / 'multi'
  shutil.copytree(prepared, single)
  shutil.copytree(prepared, multi)

  # Two processes; SIGTERM reaches process 1 only, after step 5.
  procs, logs = _start_pair(multi, tmp_path, 'first')
  deadline = time.time() + 600
  while not re.search(r'\] step [5-9]/', logs[1].read_text()) and time.time() < deadline:
    assert procs[1].poll() is None, logs[1].read_text()[-3000:]
    time.sleep(0.1)
  procs[1].send_signal(signal.SIGTERM)
  codes, texts = _wait(procs, logs)
  for t in texts:  # one mesh over both processes' devices
    assert f"({STEPS} steps, 8 devices, mesh {{'data': 1, 'fsdp': 8, 'tensor': 1}})" in t, t[-3000:]
  saved = [re.search(r'preempted \(SIGTERM\): checkpoint saved at step (\d+)', t) for t in texts]
  assert all(saved), '\n'.join(t[-3000:] for t in texts)
  step = int(saved[0].group(1))
  assert int(saved[1].group(1)) == step and 5 < step < STEPS  # the same step on both hosts
  assert codes == [1, 1]
  checkpoints = kh.run_dir(multi) / 'checkpoints'
  previous, last = sorted(int(p.name) for p in checkpoints.iterdir())
  assert last == step and previous == (step - 1) // 4 * 4

  # That checkpoint no longer matches its checksums (as after a flipped bit): both processes
  # must see it, set it aside together and resume from the previous one.
  meta_file = checkpoints / str(step) / 'meta' / 'metadata'
  meta = json.loads(meta_file.read_text())
  meta['checksums'][0] = (meta['checksums'][0] + 1) % 2**32
  meta_file.write_text(json.dumps(meta))
  procs, logs = _start_pair(multi, tmp_path, 'second')
  codes, texts = _wait(procs, logs)
  assert codes == [0, 0], '\n'.join(t[-3000:] for t in texts)
  for t in texts:
    assert f'The checkpoint at step {step} in {checkpoints} is unreadable' in t, t[-3000:]
    assert f'falling back to step {previous}' in t
    assert f'resuming from the checkpoint at step {previous} of {STEPS}' in t

  # The same run in this process, on its 8 devices.
  config = kh.config()
  config.mesh.data, config.mesh.fsdp = 1, 8
  config.train.tokens, config.train.eval_every = STEPS * 8 * 32, 0
  pipeline.dispatch(config, str(single))
  a, b = _losses(single), _losses(multi)
  assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-5)
  ra, rb = (json.loads((kh.run_dir(w) / 'result.json').read_text()) for w in (single, multi))
  np.testing.assert_allclose(rb['objective'], ra['objective'], rtol=1e-5)
  assert rb['trained_sequences'] == ra['trained_sequences']
