"""Progress on a terminal (a pty) and off it: each log line is printed once, bars or not."""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap

from autoscale_jax import progress

_SCRIPT = textwrap.dedent('''
    import time

    from absl import app, flags, logging
    from autoscale_jax import progress

    def main(_):
      progress.route_logs_around_bars()
      with progress.Progress(4, 'bar', 'step', terminal={terminal}) as bar:
        for i in range(4):
          bar.update(1, loss=1.5)
          time.sleep(0.15)  # past tqdm's minimum redraw interval
          logging.info('marker line %d', i)

    flags.FLAGS.set_default('alsologtostderr', True)  # as autoscale_jax.main.run does
    app.run(main)
''')


def _run_on_pty(terminal: bool) -> str:
  leader, follower = pty.openpty()
  fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 160, 0, 0))  # rows, cols
  proc = subprocess.Popen([sys.executable, '-c', _SCRIPT.format(terminal=terminal)],
                          stdout=follower, stderr=follower, stdin=subprocess.DEVNULL)
  os.close(follower)
  chunks = []
  while True:
    try:
      data = os.read(leader, 65536)
    except OSError:  # the follower closed: the child is done
      break
    if not data:
      break
    chunks.append(data)
  os.close(leader)
  assert proc.wait(timeout=120) == 0
  return b''.join(chunks).decode(errors='replace')


def test_each_log_line_printed_once_with_bars():
  out = _run_on_pty(terminal=True)
  for i in range(4):
    assert out.count(f'marker line {i}') == 1, out
  assert 'bar:' in out and '%|' in out  # the tqdm bar itself was drawn
  assert 'Traceback' not in out  # absl's handler leaves the wrapped stderr open at exit


def test_plain_mode_has_no_bar_and_logs_once():
  out = _run_on_pty(terminal=False)
  for i in range(4):
    assert out.count(f'marker line {i}') == 1, out
  assert '|' not in out.replace('] ', '')  # no tqdm bar characters


def test_format_eta():
  assert progress.format_eta(59) == '0m59s'
  assert progress.format_eta(3 * 3600 + 61) == '3h01m'
  assert progress.format_eta(float('nan')) == '?'
  assert progress.format_eta(float('inf')) == '?'
