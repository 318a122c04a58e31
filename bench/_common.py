"""Helpers shared by the benchmarks: machine line, interleaved timing, RESULTS.md sections."""

import argparse
import datetime
import os
import pathlib
import platform
import re
import shlex
import statistics
import sys
import time

RESULTS = pathlib.Path(__file__).with_name('RESULTS.md')
ROOT = pathlib.Path(__file__).resolve().parent.parent


def cpu_model() -> str:
  info = pathlib.Path('/proc/cpuinfo')
  if info.exists():
    names = re.findall(r'model name\s*:\s*(.+)', info.read_text())
    if names:
      return names[0]
  return platform.processor() or platform.machine()


def machine(extra: str = '') -> str:
  import jax  # pylint: disable=import-outside-toplevel
  dev = jax.devices()[0]
  text = (f'{cpu_model()}, nproc {os.cpu_count()}, jax {jax.__version__} on {dev.platform} '
          f'({dev.device_kind}), Python {platform.python_version()}')
  return text + (f', {extra}' if extra else '')


def load() -> str:
  """The 1/5/15-minute load averages (the machine is shared: figures are only side by side)."""
  return ' '.join(f'{x:.2f}' for x in os.getloadavg())


def command() -> str:
  args = ' '.join(shlex.quote(a) for a in sys.argv[1:])
  script = os.path.relpath(sys.argv[0], ROOT)
  return f'python {script}' + (f' {args}' if args else '')


def timed(fn, n: int) -> float:
  """Seconds per call of fn() over n calls (fn must block until its work is done)."""
  start = time.perf_counter()
  for _ in range(n):
    fn()
  return (time.perf_counter() - start) / n


def calibrate(fn, target_s: float, max_n: int = 1000) -> int:
  """Calls per repetition so one repetition lasts about target_s (fn already warmed up)."""
  once = timed(fn, 1)
  return max(1, min(max_n, int(target_s / max(once, 1e-9))))


def interleaved(fns: dict, reps: int, target_s: float) -> dict[str, list[float]]:
  """Seconds per call of every fn, repetitions interleaved (A B C, then C B A, ...).

  Interleaving makes the figures of one repetition share the machine's load at that moment,
  so their ratios are fair even when absolute figures drift.
  """
  counts = {k: calibrate(f, target_s) for k, f in fns.items()}
  times = {k: [] for k in fns}
  order = list(fns)
  for r in range(reps):
    for k in (order if r % 2 == 0 else order[::-1]):
      times[k].append(timed(fns[k], counts[k]))
  return times


def median(xs) -> float:
  return statistics.median(xs)


def write_section(heading: str, body: list[str]) -> None:
  """Replaces (or appends) the section `heading` of RESULTS.md, leaving the others untouched."""
  now = datetime.datetime.now().astimezone()
  section = '\n'.join([heading, '', f'Command: `{command()}` (run {now:%Y-%m-%d %H:%M %Z}).',
                       *body, ''])
  text = RESULTS.read_text() if RESULTS.exists() else '# Benchmark results\n'
  pattern = re.compile(rf'^{re.escape(heading)}\n.*?(?=^## |\Z)', re.S | re.M)
  text = (pattern.sub(lambda _: section + '\n', text) if pattern.search(text)
          else text.rstrip('\n') + '\n\n' + section)
  RESULTS.write_text(text.rstrip('\n') + '\n')


def table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
  """A markdown table; align is one char per column ('l' or 'r')."""
  cells = [[str(c) for c in row] for row in rows]
  widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
  align = align or 'l' + 'r' * (len(header) - 1)

  def line(row):
    return '| ' + ' | '.join(c.ljust(w) if a == 'l' else c.rjust(w)
                             for c, w, a in zip(row, widths, align)) + ' |'
  sep = '|' + '|'.join('-' * (w + 1) + ':' if a == 'r' else '-' * (w + 2)
                       for w, a in zip(widths, align)) + '|'
  return [line(header), sep, *(line(r) for r in cells)]


def stage_parser(doc: str, workdir: str, stages) -> argparse.ArgumentParser:
  """The arguments of a study run in resumable stages: its workdir, the stage ('next': the first
  without a summary) and the pause after --max-minutes."""
  parser = argparse.ArgumentParser(description=doc.splitlines()[0])
  parser.add_argument('--workdir', default=workdir)
  parser.add_argument('--stage', default='next', choices=('next', *stages))
  parser.add_argument('--max-minutes', type=float, default=75.0,
                      help='pause (SIGTERM: checkpoint and exit) after this long; rerun resumes')
  return parser
