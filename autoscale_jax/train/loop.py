"""The step loop, once: log, evaluate, divergence guard, checkpoint, preemption, for N >= 1 runs.

A single run and a stack of runs (train/stacked.py) go through the same `train_loop`; what
differs is a `Program`: how a step is called on the state, and how the state is evaluated. Every
program steps N runs at once (a single run is N = 1) and returns metrics with a leading run
axis, so per-run bookkeeping (which runs are still active, each run's metrics, evaluations and
log cadence) is the loop's alone. A run kind with extra state (e.g. per-domain weights updated
every step against a reference model) is another Program: its state is whatever its step
carries, checkpointed and restored like any other.

The drivers that build programs, data and checkpoints for one run or a stack are in
train/runs.py; this module also holds the per-run records both of them write.
"""

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from autoscale_jax import progress
from autoscale_jax.data import mixture
from autoscale_jax.errors import UserError
from autoscale_jax.train import metrics as metrics_lib
from autoscale_jax.train.checkpoint import Checkpointer
from autoscale_jax.train.trainer import objective, summarize_eval

POINTS_PER_RUN = 20  # training records per run at least, whatever train.log_every says


class TrainingDiverged(UserError):
  """The loss became NaN/inf; the message names the step and the last good checkpoint."""


class Preempted(SystemExit):
  """SIGTERM: the state is checkpointed at a step boundary; rerunning resumes from it."""


class Program(Protocol):
  """What the loop drives: N runs stepped together (N = 1 for a single run)."""

  def step(self, state: Any, batch: Any) -> tuple[Any, dict]:
    """One step of every run; metrics 'loss', 'grad_norm', 'lr' with a leading axis of N."""

  def evaluate(self, state: Any) -> np.ndarray:
    """Per-run, per-domain summed evaluation statistics (trainer.EVAL_STATS), [N, m, 6]."""


@dataclasses.dataclass
class Member:
  """One run of the loop: its name, length, and the records it writes to its directory."""
  name: str
  run_dir: epath.Path
  total_steps: int
  log_every: int = 1
  writer: metrics_lib.MetricWriter | None = None
  evals: list = dataclasses.field(default_factory=list)
  meter: metrics_lib.Throughput | None = None


def log_every(train_cfg: ml_collections.ConfigDict, total_steps: int) -> int:
  """train.log_every, shortened for short runs so every curve has POINTS_PER_RUN points."""
  return max(1, min(int(train_cfg.log_every), total_steps // POINTS_PER_RUN))


def diverged(name: str, loss: float, step: int, ckpt: Checkpointer,
             what: str = 'training loss') -> TrainingDiverged:
  """The error for a non-finite loss (or gradient norm), naming the last good checkpoint.

  The loop checks before every checkpoint, so every checkpoint on disk holds finite values.
  """
  ckpt.wait()
  good = ckpt.manager.latest_step()
  where = (f'the last good checkpoint is step {good} in {ckpt.manager.directory}'
           if good is not None else 'no checkpoint was saved before it')
  return TrainingDiverged(
      f'[{name}] the {what} became {loss} at step {step}; {where}; lower config.train.lr or raise '
      f'config.train.warmup_steps (or warmup_ratio) and rerun.')


def record_eval(writer: metrics_lib.MetricWriter, name: str, step: int, names: list[str],
                stats: np.ndarray, eval_cfg: ml_collections.ConfigDict) -> dict:
  """Writes one evaluation to the run's metrics and log: the objective, and per domain the loss,
  its standard error over the validation sequences and the perplexity of eval.perplexity."""
  summary = summarize_eval(stats)
  loss = {n: float(v) for n, v in zip(names, summary['loss'])}
  ppl = {n: float(v) for n, v in zip(names, summary[f"ppl_{eval_cfg.get('perplexity', 'token')}"])}
  record = {'objective': objective(loss, eval_cfg, ppl),
            **{f'val_loss/{n}': v for n, v in loss.items()},
            **{f'val_loss_se/{n}': float(v) for n, v in zip(names, summary['loss_se'])},
            **{f'val_ppl/{n}': v for n, v in ppl.items()}}
  writer.write(step, record)
  logging.info('[%s] eval step %d: objective %.4f  %s', name, step, record['objective'],
               '  '.join(f'{n} {v:.2f}' for n, v in ppl.items()))
  return {'step': step, **record}


def resume_records(writer: metrics_lib.MetricWriter, start: int, total_steps: int) -> list[dict]:
  """Drops the records a resumed run will write again; returns the evaluations it keeps.

  Records past the restored step go, and so does a final evaluation (step == total_steps)
  written before a kill that came ahead of result.json: it is redone, not listed twice.
  """
  writer.truncate(start)
  writer.records = [r for r in writer.records
                    if not ('objective' in r and r['step'] >= total_steps)]
  return [r for r in writer.records if 'objective' in r]


def result_record(config: ml_collections.ConfigDict, *, name: str, fingerprint: str,
                  names: list[str], counts: np.ndarray, seen: np.ndarray, rows: np.ndarray,
                  steps: int, evals: list[dict], wall_s: float) -> dict:
  """The result.json of a finished run (the same for single and stacked runs).

  `evals` are record_eval's returns in step order, the last one the final evaluation; `seen`
  the sequences of each domain the run trained on; `rows` the training rows of each domain.
  """
  final = evals[-1]
  seq_len = int(config.data.seq_len)
  tokens_per_step = int(config.train.batch_size) * seq_len
  counts, seen = np.asarray(counts, np.int64), np.asarray(seen, np.int64)
  return {
      'name': name,
      'fingerprint': fingerprint,
      'domains': list(names),
      'objective': final['objective'],
      'objective_kind': config.eval.objective,
      'perplexity': config.eval.get('perplexity', 'token'),
      'val_loss': {n: final[f'val_loss/{n}'] for n in names},
      # Evaluations from before these fields existed (a run resumed across the change) lack them.
      'val_loss_se': {n: final.get(f'val_loss_se/{n}') for n in names},
      'val_ppl': {n: final.get(f'val_ppl/{n}', math.exp(final[f'val_loss/{n}'])) for n in names},
      'requested_sequences': counts.tolist(),
      'trained_sequences': seen.tolist(),
      'trained_tokens': (seen * seq_len).tolist(),
      'epochs': mixture.epochs(counts, rows).tolist(),
      'steps': int(steps),
      'seq_len': seq_len,
      'evals': [{'step': e['step'], 'objective': e['objective'],
                 'tokens': e['step'] * tokens_per_step,
                 'val_loss': {n: e[f'val_loss/{n}'] for n in names}} for e in evals],
      'wall_s_last_session': wall_s,
  }


def _log_line(label: str, step: int, last: int, losses: np.ndarray, n: int,
              speed: dict) -> None:
  mfu = f"  mfu {100 * speed['mfu']:.1f}%" if 'mfu' in speed else ''
  eta = progress.format_eta(speed['eta_s'])
  if n == 1:
    logging.info('[%s] step %d/%d  loss %.4f  %.0f tok/s%s  eta %s', label, step, last,
                 losses[0], speed['tokens_per_s'], mfu, eta)
  else:
    logging.info('[%s] step %d/%d  %d of %d runs active  loss %.4f-%.4f  %.0f tok/s%s  eta %s',
                 label, step, last, len(losses), n, losses.min(), losses.max(),
                 speed['tokens_per_s'], mfu, eta)


def train_loop(program: Program, state: Any, *, start: int, batches: Iterable,
               members: list[Member], ckpt: Checkpointer, label: str, domains: list[str],
               config: ml_collections.ConfigDict, flops_per_token: float,
               peak_flops: float, after_step: Callable[[int, Any], None] | None = None
               ) -> tuple[Any, int]:
  """Steps `program` from `start` over `batches` until every member reached its length.

  Member r trains while step <= members[r].total_steps (the program freezes it after); it is
  logged every members[r].log_every steps and at its end, evaluated every train.eval_every steps
  before its end and once at its end. Checkpoints come every train.checkpoint_every steps, at
  the end and on preemption, always after the metrics are flushed (after a kill, metrics.jsonl
  may run past the restored checkpoint, which a resumed run truncates, but never stops short of
  it) and never of a non-finite state. `after_step(step, state)` runs after every step (a
  trajectory's trunk saves its branch points there). Returns the final state and step.
  """
  tcfg = config.train
  n = len(members)
  totals = np.array([m.total_steps for m in members], np.int64)
  last = int(totals.max())
  tokens_per_run_step = int(tcfg.batch_size) * int(config.data.seq_len)
  stack_every = log_every(tcfg, last)
  meter = metrics_lib.Throughput(flops_per_token, peak_flops, last)
  meter.start(start)
  for m in members:
    m.meter = metrics_lib.Throughput(flops_per_token, peak_flops, m.total_steps)
    m.meter.start(min(start, m.total_steps))

  def evaluate(which: list[int], at: np.ndarray) -> None:
    losses = program.evaluate(state)
    for r in which:
      m = members[r]
      m.evals.append(record_eval(m.writer, m.name, int(at[r]), domains, losses[r], config.eval))

  def close() -> None:
    ckpt.close()
    for m in members:
      m.writer.close()

  tokens, last_log, step = 0, start, start
  bar = progress.Progress(last, label, 'step', initial=start)
  with ckpt.watch_preemption(), bar:
    for batch in batches:
      state, metrics = program.step(state, batch)
      step += 1
      if after_step is not None:
        after_step(step, state)
      active = [r for r in range(n) if step <= totals[r]]  # the runs that trained at this step
      tokens += len(active) * tokens_per_run_step
      stop = ckpt.reached_preemption(step) and step < last
      logged = [r for r in active
                if step % members[r].log_every == 0 or step == members[r].total_steps]
      saving = ckpt.due(step, final=step == last or stop)
      if logged or saving:  # never log, or checkpoint, a non-finite state
        metrics = {k: np.atleast_1d(np.asarray(v)) for k, v in jax.device_get(metrics).items()}
        for r in (active if saving else logged):
          for key, what in (('loss', 'training loss'), ('grad_norm', 'gradient norm')):
            if not np.isfinite(metrics[key][r]):
              raise diverged(members[r].name, metrics[key][r], step, ckpt, what)
      for r in logged:
        m = members[r]
        speed = m.meter.update(step, tokens_per_run_step)
        m.writer.write(step, {'loss': metrics['loss'][r], 'grad_norm': metrics['grad_norm'][r],
                              'lr': metrics['lr'][r], **speed})
      if logged:
        bar.update(0, loss=float(np.min(metrics['loss'][active])))
      if logged and (step % stack_every == 0 or step == last):
        speed = meter.update(step, tokens / max(step - last_log, 1))
        tokens, last_log = 0, step
        _log_line(label, step, last, metrics['loss'][active], n, speed)
      bar.update(1)
      if tcfg.eval_every and step % tcfg.eval_every == 0:
        due = [r for r in active if step < totals[r]]
        if due:
          evaluate(due, np.full(n, step))
      if saving:
        for m in members:
          m.writer.flush()
        ckpt.maybe_save(step, state, final=True)
      if stop:
        close()
        what = f'checkpoint of {n} stacked runs' if n > 1 else 'checkpoint'
        raise Preempted(f'[{label}] preempted (SIGTERM): {what} saved at step {step}; rerun '
                        'the same command to resume.')
  # A finished run's state froze at its own last step: evaluate them all now, at those steps.
  evaluate(list(range(n)), totals)
  close()
  return state, step
