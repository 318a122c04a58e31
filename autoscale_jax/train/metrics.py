"""Metrics: jsonl (atomic, consistent with the last checkpoint), TensorBoard, MFU, log lines."""

import json
import time

import jax
from absl import logging
from etils import epath

from autoscale_jax import lead
from autoscale_jax.io import write_text_atomic
from autoscale_jax.train.chips import CHIPS, chip_of

# Dense bf16 peak FLOP/s per device kind (train/chips.py, with its sources); fp32 runs reach
# less, set train.peak_flops.
PEAK_FLOPS = {kind: chip.peak_flops for kind, chip in CHIPS.items()}


def device_peak_flops(configured: float = 0.0, device: jax.Device | None = None) -> float:
  """Peak FLOP/s of one device: the config's value, else the table, else 0 (MFU not shown)."""
  if configured > 0:
    return float(configured)
  chip = chip_of((device or jax.devices()[0]).device_kind)
  return chip.peak_flops if chip else 0.0


class MetricWriter:
  """Keeps every record in memory and rewrites metrics.jsonl atomically on flush.

  Flushes happen at checkpoints, so after a kill the file holds exactly the records up to the
  restored step and the resumed run appends the rest: the curve is the same as without the kill.
  Object stores (gs://) cannot append, which is the other reason for whole-file rewrites.
  """

  def __init__(self, workdir: epath.Path, *, tensorboard: bool = True):
    self.path = epath.Path(workdir) / 'metrics.jsonl'
    self.records: list[dict] = []
    self._tb = None
    self._main = lead.is_lead()
    if self.path.exists():
      self.records = [json.loads(l) for l in self.path.read_text().splitlines() if l.strip()]
    if tensorboard and self._main:
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(str(epath.Path(workdir) / 'tb'))
      except Exception as e:  # TensorBoard is a convenience; never fail a run over it.
        logging.warning('TensorBoard disabled: %s', e)

  def truncate(self, step: int) -> None:
    """Drops records past `step` (written after the checkpoint we resume from)."""
    self.records = [r for r in self.records if r['step'] <= step]

  def write(self, step: int, scalars: dict) -> None:
    record = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    self.records.append(record)
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(k, float(v), int(step))

  def flush(self) -> None:
    if self._main:
      write_text_atomic(self.path, ''.join(json.dumps(r) + '\n' for r in self.records))
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    self.flush()
    if self._tb is not None:
      self._tb.close()


class Throughput:
  """Tokens/s, MFU and ETA between consecutive log lines."""

  def __init__(self, flops_per_token: float, peak_flops_total: float, total_steps: int):
    self.flops_per_token = flops_per_token
    self.peak = peak_flops_total
    self.total_steps = total_steps
    self._t, self._step = None, None

  def start(self, step: int) -> None:
    self._t, self._step = time.perf_counter(), step

  def update(self, step: int, tokens_per_step: int) -> dict:
    now = time.perf_counter()
    dt = max(now - self._t, 1e-9)
    steps = step - self._step
    tps = steps * tokens_per_step / dt
    out = {'tokens_per_s': tps, 'eta_s': (self.total_steps - step) * dt / max(steps, 1)}
    if self.peak > 0:
      out['mfu'] = tps * self.flops_per_token / self.peak
    self._t, self._step = now, step
    return out


