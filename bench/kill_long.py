"""The long version of tests/test_kill.py: many SIGKILLs at random moments, then a bitwise check.

Trains the tiny config (48 steps, a checkpoint every 4) once straight and once with --kills
SIGKILLs, each at a random step and of a random kind: `step` (as soon as the process logs that
step: between checkpoints, or right at one), `tmp` (as soon as the checkpoint's temporary
directory appears: mid-write) or `commit` (as soon as its final directory appears: just after
the rename, while orbax may still be finalising and deleting old steps). After every kill the
run is restarted; the last start runs to the end. Then the loss curve (metrics.jsonl without
timings), the final checkpoint's state (every leaf, bitwise) and result.json must equal the
straight run's.

  python bench/kill_long.py --kills 20 [--seed S] [--workdir DIR]

Prints one line per start and the verdict; writes the table to bench/RESULTS.md. Exit status 1
when anything differs.
"""

import argparse
import os
import pathlib
import random
import shutil
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'tests'))
sys.path.insert(0, str(ROOT / 'bench'))
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'autoscale_jax_test_jit_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import _common  # noqa: E402  pylint: disable=g-import-not-at-top
import kill_harness as kh  # noqa: E402  pylint: disable=g-import-not-at-top


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--kills', type=int, default=20)
  p.add_argument('--steps', type=int, default=48, help='training steps (a checkpoint every 4)')
  p.add_argument('--seed', type=int, default=None, help='default: drawn at random (printed)')
  p.add_argument('--workdir', default=None, help='default: a fresh temporary directory')
  args = p.parse_args()
  kh.set_steps(args.steps)
  seed = args.seed if args.seed is not None else random.SystemRandom().randrange(10**6)
  rng = random.Random(seed)

  def plan(done, workdir):
    """A random kill near the newest checkpoint on disk (one that will trigger), or None."""
    newest = kh.newest_checkpoint(workdir)
    if len(done) >= args.kills or newest >= kh.STEPS:
      return None
    kind = rng.choice(['step', 'tmp', 'commit'])
    if kind == 'step':  # anywhere near: even before the resumed process logs its first step
      step = max(1, newest + rng.randint(-kh.EVERY, 2 * kh.EVERY))
    else:  # one of the next two checkpoints this start writes
      step = newest + kh.EVERY * rng.randint(1, 2)
    return kh.Kill(kind, min(step, kh.STEPS))

  root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix='kill_long_'))
  print(f'seed {seed}; {args.kills} kills; workdir {root}', flush=True)

  t0 = time.time()
  kh.prepare(root / 'prepared')
  for name in ('reference', 'interrupted'):
    shutil.rmtree(root / name, ignore_errors=True)
    shutil.copytree(root / 'prepared', root / name)
  straight = kh.launch(root / 'reference')
  assert straight.returncode == 0, straight.log[-5000:]
  print(f'uninterrupted run: {straight.seconds:.1f}s', flush=True)

  header = ['start', 'kill', 'at step', 'resumed from', 'last step logged', 'killed', 's']
  rows = []

  def report(launch: kh.Launch) -> None:
    k = launch.kill
    row = [len(rows) + 1, k.kind if k else '(to the end)', k.step if k else '',
           launch.resumed_from if launch.resumed_from is not None else 'scratch',
           launch.last_step, 'yes' if launch.killed else 'no', f'{launch.seconds:.1f}']
    rows.append(row)
    print('  '.join(f'{h}={v}' for h, v in zip(header, row)), flush=True)

  launches = kh.kill_and_resume(root / 'interrupted', plan, report=report)
  killed = sum(l.killed for l in launches)
  diffs = kh.differences(kh.run_dir(root / 'reference'), kh.run_dir(root / 'interrupted'))
  records = len(kh.curve(kh.run_dir(root / 'reference')))
  leaves = len(kh.final_state(kh.run_dir(root / 'reference')))
  verdict = ('IDENTICAL: metrics.jsonl ({} records), final state ({} leaves) and result.json '
             'bitwise equal to the uninterrupted run'.format(records, leaves) if not diffs
             else 'DIFFERENT: ' + '; '.join(diffs))
  print(verdict)
  print(f'total {time.time() - t0:.0f}s')
  _common.write_section('## Kill and resume (bitwise)', [
      f'Machine: {_common.machine()}; load average {_common.load()} at the end (shared machine).',
      f'Seed {seed}: {killed} SIGKILLs (at most {args.kills}: the run may finish first) of the '
      f'tiny run ({kh.STEPS} steps, checkpoint every {kh.EVERY}), each start resuming from the '
      'newest checkpoint it can read.', '',
      *_common.table(header, rows, 'lllrrlr'), '', f'Verdict: {verdict}.'])
  return 0 if not diffs else 1


if __name__ == '__main__':
  sys.exit(main())
