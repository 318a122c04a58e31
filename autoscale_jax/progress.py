"""Progress for long stretches (tokenizing, each training run, a stage's runs): a tqdm bar on a
terminal, a plain log line at most every `interval_s` seconds otherwise; only process 0 shows it.

Log lines and bars share stderr: `route_logs_around_bars` (called once by main) makes absl's log
lines clear the bars, print, and redraw them, so neither garbles the other.
"""

import sys
import time

from absl import logging
from tqdm import tqdm

from autoscale_jax import lead

INTERVAL_S = 30.0  # plain mode: at most one line per bar this often (and one at the end)


def on_terminal() -> bool:
  return sys.stderr.isatty()


class _AroundBars:
  """A stream for absl's handler that writes between tqdm's redraws.

  It compares equal to the stream it wraps: absl writes a record a second time, straight to
  sys.stderr, whenever its handler's stream is not sys.stderr.
  """

  def __init__(self, stream):
    self._stream = stream

  def __eq__(self, other) -> bool:
    return other is self or other is self._stream

  def __hash__(self) -> int:
    return hash(self._stream)

  def write(self, text: str) -> None:
    with tqdm.external_write_mode(file=self._stream):
      self._stream.write(text)

  def flush(self) -> None:
    self._stream.flush()


def route_logs_around_bars() -> None:
  """On a terminal, absl's log lines clear the progress bars and redraw them after."""
  if on_terminal():
    handler = logging.get_absl_handler().python_handler
    if not isinstance(handler.stream, _AroundBars):
      handler.stream = _AroundBars(sys.stderr)


def format_eta(seconds: float) -> str:
  if seconds != seconds or seconds == float('inf'):
    return '?'
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m' if h else f'{m}m{s:02d}s'


class Progress:
  """Counts `total` units of work with a description; `update(n, **fields)` adds n done.

  `fields` (e.g. loss=2.31) are shown next to the count. Use as a context manager or close().
  """

  def __init__(self, total: float, desc: str, unit: str = 'it', *, initial: float = 0,
               interval_s: float = INTERVAL_S, terminal: bool | None = None):
    self.total, self.desc, self.unit = total, desc, unit
    self.n = initial
    self.interval_s = interval_s
    self._fields: dict = {}
    self._shown = lead.is_lead()
    terminal = on_terminal() if terminal is None else terminal
    self._bar = None
    if self._shown and terminal:
      self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=True,
                       dynamic_ncols=True, leave=False, file=sys.stderr)
    self._t0 = self._last = time.monotonic()
    self._n0 = initial

  def update(self, n: float = 1, **fields) -> None:
    self.n += n
    self._fields.update(fields)
    if self._bar is not None:
      self._bar.update(n)
      if fields:
        self._bar.set_postfix({k: _short(v) for k, v in self._fields.items()}, refresh=False)
    elif self._shown and time.monotonic() - self._last >= self.interval_s:
      self._line()

  def _line(self) -> None:
    self._last = now = time.monotonic()
    rate = (self.n - self._n0) / max(now - self._t0, 1e-9)
    eta = (self.total - self.n) / rate if rate > 0 else float('nan')
    extra = ''.join(f'  {k} {_short(v)}' for k, v in self._fields.items())
    share = f' ({100 * self.n / self.total:.0f}%)' if self.total else ''
    logging.info('%s: %s/%s %s%s%s  eta %s', self.desc, _short(self.n), _short(self.total),
                 self.unit, share, extra, format_eta(eta))

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    elif self._shown and self.n and time.monotonic() - self._last >= 1.0:
      self._line()
    self._shown = False

  def __enter__(self) -> 'Progress':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _short(value) -> str:
  if isinstance(value, float) and not value.is_integer():
    return f'{value:.4g}'
  if isinstance(value, (int, float)):
    return f'{int(value):,}'
  return str(value)
