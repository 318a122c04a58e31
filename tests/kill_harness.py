"""SIGKILL a training run at chosen moments, restart it, and compare it with an uninterrupted run.

Shared by tests/test_kill.py (a few kills, in CI) and bench/kill_long.py (many kills). The run is
`python -m autoscale_jax.main --config=configs/tiny.py --config.mode=train` with TINY_FLAGS: a
24-step run of the tiny GPT-2 that checkpoints every 4 steps and logs every step, so the harness
can see which step the process is at (its log lines on stderr) and when a checkpoint is being
written (orbax's `<step>.orbax-checkpoint-tmp*` directory) or has just been committed (`<step>`).

Kinds of kill:
  step    SIGKILL as soon as the process logs step `step` (between checkpoints, or at one).
  tmp     SIGKILL as soon as the temporary directory of the checkpoint at `step` appears: in the
          middle of writing it (async: while the state is being serialised in the background).
  commit  SIGKILL as soon as the final directory of the checkpoint at `step` appears: just after
          orbax renamed it into place, while it may still be finalising and deleting old steps.
"""

import dataclasses
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS, EVERY = 24, 4  # the run's length and checkpoint interval
TINY = {  # overrides of configs/tiny.py
    'data.max_docs': 12,
    'data.seq_len': 32,
    'data.val_sequences': 4,
    'data.tokenizer.vocab_size': 300,
    'data.tokenizer.train_chars': 20_000,
    'train.batch_size': 8,
    'train.tokens': STEPS * 8 * 32,
    'train.log_every': 1,
    'train.checkpoint_every': EVERY,
    'train.keep_checkpoints': 2,
    'train.eval_every': 8,
    'eval.batch_size': 8,
}
TINY_FLAGS = tuple(f'--config.{k}={v}' for k, v in TINY.items())


def set_steps(steps: int) -> None:
  """Makes the run `steps` long (bench/kill_long.py: room for many kills)."""
  global STEPS, TINY_FLAGS  # pylint: disable=global-statement
  STEPS = steps
  TINY['train.tokens'] = steps * TINY['train.batch_size'] * TINY['data.seq_len']
  TINY_FLAGS = tuple(f'--config.{k}={v}' for k, v in TINY.items())
# Fields of metrics.jsonl that are results (the rest, tokens/s, MFU and ETA, are timings).
RESULT_FIELDS = re.compile(r'^(step|loss|grad_norm|lr|objective|val_loss/.*)$')
_STEP_LINE = re.compile(r'\] step (\d+)/\d+ ')
_RESUMED = re.compile(r'resuming from the checkpoint at step (\d+)')


@dataclasses.dataclass
class Kill:
  kind: str  # step | tmp | commit
  step: int


@dataclasses.dataclass
class Launch:
  """What one process did: how it ended, the last step it logged, where it resumed from."""
  kill: Kill | None
  returncode: int
  killed: bool
  last_step: int
  resumed_from: int | None
  seconds: float
  log: str


def env(devices: int = 8) -> dict[str, str]:
  """The environment of a CPU training process with `devices` fake devices."""
  out = dict(os.environ)
  out.update(XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get('PYTHONPATH'))
                                        if p))
  return out


def command(workdir: pathlib.Path, *extra: str, mode: str = 'train') -> list[str]:
  return [sys.executable, '-m', 'autoscale_jax.main', f'--config={ROOT / "configs" / "tiny.py"}',
          f'--workdir={workdir}', f'--config.mode={mode}', *TINY_FLAGS, *extra]


def config(mode: str = 'train'):
  """The config the command trains, built in this process."""
  from autoscale_jax.configs import tiny  # pylint: disable=g-import-not-at-top
  c = tiny.get_config()
  c.mode = mode
  for key, value in TINY.items():
    *parents, leaf = key.split('.')
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def prepare(workdir: pathlib.Path) -> None:
  """Tokenizer and token stores, in this process; copy the workdir to give several runs the
  same tokenizer (trainers break ties differently in each process)."""
  from autoscale_jax import pipeline  # pylint: disable=g-import-not-at-top
  pipeline.dispatch(config('prepare'), str(workdir))


def run_dir(workdir: pathlib.Path) -> pathlib.Path | None:
  dirs = sorted((pathlib.Path(workdir) / 'runs').glob('*/'))
  assert len(dirs) <= 1, dirs
  return dirs[0] if dirs else None


def _checkpoint_entries(workdir: pathlib.Path) -> set[tuple[str, int]]:
  """(name, inode) of every entry of the run's checkpoint directory."""
  run = run_dir(workdir)
  try:
    with os.scandir(run / 'checkpoints') as entries:
      return {(e.name, e.inode()) for e in entries}
  except (FileNotFoundError, TypeError):  # no run or no checkpoint directory yet
    return set()


def launch(workdir: pathlib.Path, kill: Kill | None = None, *, timeout: float = 300,
           extra: tuple[str, ...] = ()) -> Launch:
  """Runs the training command once; SIGKILLs it at `kill` (None: lets it finish)."""
  t0 = time.time()
  proc = subprocess.Popen(command(workdir, *extra), env=env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, cwd=ROOT)
  lines: list[str] = []
  state = {'last_step': 0, 'killed': False}
  done = threading.Event()

  def do_kill():
    if not state['killed'] and proc.poll() is None:
      state['killed'] = True
      proc.send_signal(signal.SIGKILL)

  def read():
    for line in proc.stdout:
      lines.append(line)
      if m := _STEP_LINE.search(line):
        state['last_step'] = int(m.group(1))
        if kill and kill.kind == 'step' and state['last_step'] >= kill.step:
          do_kill()
    done.set()

  stale = _checkpoint_entries(workdir)  # left by an earlier launch: not this launch's writes

  def watch():  # polls the checkpoint directory for the moment a kill of kind tmp/commit wants
    while not done.is_set() and not state['killed']:
      for name, _ in _checkpoint_entries(workdir) - stale:
        step, _, rest = name.partition('.')
        if not step.isdigit() or int(step) < kill.step:
          continue
        if (kill.kind == 'tmp' and 'tmp' in rest) or (kill.kind == 'commit' and not rest):
          do_kill()
          break
      time.sleep(0.0005)

  reader = threading.Thread(target=read, daemon=True)
  reader.start()
  if kill and kill.kind in ('tmp', 'commit'):
    threading.Thread(target=watch, daemon=True).start()
  try:
    proc.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    do_kill()
    proc.wait()
    raise AssertionError(f'training did not end within {timeout}s:\n' + ''.join(lines[-50:]))
  finally:
    reader.join(timeout=10)
  log = ''.join(lines)
  resumed = _RESUMED.search(log)
  return Launch(kill=kill, returncode=proc.returncode, killed=state['killed'],
                last_step=state['last_step'],
                resumed_from=int(resumed.group(1)) if resumed else None,
                seconds=time.time() - t0, log=log)


def start_pipeline(config_path: pathlib.Path, workdir: pathlib.Path,
                   log: pathlib.Path) -> subprocess.Popen:
  """`python -m autoscale_jax.main` on a config file, its stderr appended to `log`."""
  return subprocess.Popen(
      [sys.executable, '-m', 'autoscale_jax.main', f'--config={config_path}',
       f'--workdir={workdir}'], stdout=subprocess.DEVNULL, stderr=log.open('a'))


def kill_when(proc: subprocess.Popen, ready, what: str, log: pathlib.Path, *,
              poll: float = 0.1, timeout: float = 400) -> None:
  """SIGKILL `proc` as soon as ready() holds (checked every `poll` s); fails, quoting the log's
  end, if the process ended first."""
  deadline = time.time() + timeout
  while not ready() and proc.poll() is None and time.time() < deadline:
    time.sleep(poll)
  assert proc.poll() is None, f'the pipeline ended before {what}:\n{log.read_text()[-3000:]}'
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def newest_checkpoint(workdir: pathlib.Path) -> int:
  """The newest committed checkpoint step of the run (0 when none)."""
  return max([int(n) for n, _ in _checkpoint_entries(workdir) if n.isdigit()], default=0)


def kill_and_resume(workdir: pathlib.Path, kills, *, timeout: float = 300,
                    report=None) -> list[Launch]:
  """Launches the run once per kill, then once more to the end; checks each restart resumed.

  `kills` is a list of Kill, or a function (launches so far, workdir) -> Kill, or None for the
  final launch (which it must return eventually).
  """
  plan = kills if callable(kills) else (
      lambda done, _: kills[len(done)] if len(done) < len(kills) else None)
  launches = []
  while True:
    kill = plan(launches, workdir)
    previous = launches[-1] if launches else None
    result = launch(workdir, kill, timeout=timeout)
    launches.append(result)
    if report:
      report(result)
    if kill is not None and not result.killed:
      raise AssertionError(f'{kill} never triggered (the run ended with {result.returncode}):\n'
                           + result.log[-3000:])
    if previous is not None and previous.last_step >= EVERY * 2 and (
        'already finished' not in result.log):
      # A kill costs at most one checkpoint interval plus the checkpoint being written.
      assert result.resumed_from is not None, result.log[-3000:]
      assert result.resumed_from >= previous.last_step - 2 * EVERY, (previous, result.resumed_from)
    if kill is None:
      if result.returncode != 0:
        raise AssertionError(f'the final launch failed ({result.returncode}):\n' +
                             result.log[-5000:])
      return launches


def curve(run: pathlib.Path) -> list[dict]:
  """metrics.jsonl without the timing fields."""
  records = [json.loads(l) for l in (run / 'metrics.jsonl').read_text().splitlines() if l.strip()]
  return [{k: v for k, v in r.items() if RESULT_FIELDS.match(k)} for r in records]


def final_state(run: pathlib.Path) -> dict[str, np.ndarray]:
  """Every leaf of the newest checkpoint's state (params, optimizer state, counters) as numpy."""
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  steps = sorted(int(p.name) for p in (run / 'checkpoints').iterdir() if p.name.isdigit())
  path = run / 'checkpoints' / str(steps[-1]) / 'state'
  metadata = ocp.StandardCheckpointer().metadata(path)
  tree = metadata.item_metadata.tree if hasattr(metadata, 'item_metadata') else metadata
  target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree)
  with ocp.StandardCheckpointer() as ckptr:
    state = ckptr.restore(path, target)
  leaves = jax.tree_util.tree_leaves_with_path(state)
  return {'step': np.array(steps[-1]),
          **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}}


def differences(reference: pathlib.Path, run: pathlib.Path) -> list[str]:
  """Where two finished runs differ (empty when the curve and the final state are bitwise equal)."""
  out = []
  a, b = curve(reference), curve(run)
  if a != b:
    steps = [x.get('step') for x, y in zip(a, b) if x != y]
    out.append(f'metrics.jsonl differs ({len(a)} vs {len(b)} records; first differing step '
               f'{steps[:1] or "-"})')
  sa, sb = final_state(reference), final_state(run)
  if sa.keys() != sb.keys():
    out.append(f'state leaves differ: {sorted(set(sa) ^ set(sb))[:5]}')
  for k in sorted(sa.keys() & sb.keys()):
    x, y = sa[k], sb[k]
    if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
      out.append(f'state leaf {k} differs')
  ra = json.loads((reference / 'result.json').read_text())
  rb = json.loads((run / 'result.json').read_text())
  for key in ('objective', 'val_loss', 'trained_sequences', 'steps', 'evals'):
    if ra[key] != rb[key]:
      out.append(f'result.json {key}: {ra[key]} != {rb[key]}')
  return out
