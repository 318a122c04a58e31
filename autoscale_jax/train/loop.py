"""One training run, narrated: mesh -> data -> model -> shardings -> restore -> loop -> eval -> result.

A run is defined by the config and per-domain sequence counts. Its directory holds checkpoints,
metrics.jsonl, TensorBoard events and, written atomically last, result.json; a run whose
result.json exists is finished and is never trained again.
"""

import hashlib
import json
import math
import signal
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from autoscale_jax.data import loader as loader_lib
from autoscale_jax.data import mixture
from autoscale_jax import progress
from autoscale_jax.errors import ConfigError, UserError
from autoscale_jax.io import write_json_atomic
from autoscale_jax.models import ModelSpec, build_model
from autoscale_jax.train import mesh as mesh_lib
from autoscale_jax.train import metrics as metrics_lib
from autoscale_jax.train import optim
from autoscale_jax.train.checkpoint import Checkpointer
from autoscale_jax.train.trainer import Trainer, check_batch, objective


class TrainingDiverged(UserError):
  """The loss became NaN/inf; the message names the step and the last good checkpoint."""


def run_description(config: ml_collections.ConfigDict, counts: np.ndarray,
                    tokenizer_hash: str) -> dict:
  """Everything that shapes a run's result (not logging or checkpoint cadence), as JSON data."""
  shaping = {
      'model': config.model.to_dict(),
      'optimizer': {k: config.train[k] for k in (
          'batch_size', 'grad_accum', 'lr', 'warmup_steps', 'schedule', 'min_lr_ratio',
          'weight_decay', 'b1', 'b2', 'eps', 'clip_norm')},
      'seq_len': config.data.seq_len,
      'domains': [d.name for d in config.data.domains],
      'val_sequences': config.data.val_sequences,
      'counts': [int(c) for c in counts],
      'seed': config.seed,
      'tokenizer': tokenizer_hash,
      'eval': config.eval.to_dict(),
  }
  return json.loads(json.dumps(shaping, sort_keys=True, default=str))


def run_fingerprint(config: ml_collections.ConfigDict, counts: np.ndarray,
                    tokenizer_hash: str) -> str:
  """Hash of run_description: runs with the same fingerprint train to the same result."""
  blob = json.dumps(run_description(config, counts, tokenizer_hash), sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


class _Preemption:
  """Turns SIGTERM (TPU/GPU preemption notice) into a checkpoint at the next step boundary.

  Single process: a Python SIGTERM handler sets `requested`. Several processes must agree on
  the step at which all of them save and stop, so there the JAX preemption service (started by
  jax.distributed.initialize, which catches SIGTERM itself) decides: call `reached(step)` at
  every step, on every process.
  """

  def __init__(self):
    self.requested = False
    self._previous = None
    self._service = False

  def __enter__(self):
    if jax.process_count() > 1:
      from jax._src import distributed  # pylint: disable=g-import-not-at-top
      self._service = distributed.global_state.preemption_sync_manager is not None
    if not self._service:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
      except ValueError:  # not the main thread
        self._previous = None
    return self

  def reached(self, step: int) -> bool:
    """Whether the run should checkpoint at `step` and stop (the same on every process)."""
    if self._service and not self.requested:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      self.requested = multihost_utils.reached_preemption_sync_point(step)
    return self.requested

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def checked_num_steps(name: str, counts: np.ndarray, batch_size: int) -> int:
  """Steps of a run of `counts` sequences; refuses a budget smaller than one batch."""
  total_steps = mixture.num_steps(counts, batch_size)
  if total_steps < 1:
    raise ConfigError(f'[{name}] the budget holds {int(np.sum(counts))} sequences, less than one '
                      f'batch of {batch_size}; raise the budget or lower config.train.batch_size.')
  return total_steps


def write_run_config(run_dir: epath.Path, config: ml_collections.ConfigDict, *,
                     counts: np.ndarray, names: list[str], fingerprint: str, total_steps: int,
                     **extra) -> None:
  """<run_dir>/config.json: what the run is (config, counts, fingerprint, length)."""
  if jax.process_index() == 0:
    write_json_atomic(epath.Path(run_dir) / 'config.json', {
        'config': json.loads(config.to_json_best_effort()),
        'counts': np.asarray(counts).tolist(), 'domains': list(names),
        'fingerprint': fingerprint, 'total_steps': int(total_steps), **extra})


def resume_records(writer: metrics_lib.MetricWriter, start: int, total_steps: int) -> list[dict]:
  """Drops the records a resumed run will write again; returns the evaluations it keeps.

  Records past the restored step go, and so does a final evaluation (step == total_steps)
  written before a kill that came ahead of result.json: it is redone, not listed twice.
  """
  writer.truncate(start)
  writer.records = [r for r in writer.records
                    if not ('objective' in r and r['step'] >= total_steps)]
  return [r for r in writer.records if 'objective' in r]


def record_eval(writer: metrics_lib.MetricWriter, name: str, step: int, names: list[str],
                losses, eval_cfg: ml_collections.ConfigDict) -> dict:
  """Writes one evaluation (objective and per-domain losses) to the run's metrics and log."""
  per_domain = {n: float(l) for n, l in zip(names, losses)}
  record = {'objective': objective(per_domain, eval_cfg),
            **{f'val_loss/{n}': l for n, l in per_domain.items()}}
  writer.write(step, record)
  logging.info('[%s] eval step %d: objective %.4f  %s', name, step, record['objective'],
               '  '.join(f'{n} {math.exp(l):.2f}' for n, l in per_domain.items()))
  return {'step': step, **record}


def diverged(name: str, loss: float, step: int, ckpt: Checkpointer,
             what: str = 'training loss') -> TrainingDiverged:
  """The error for a non-finite loss (or gradient norm), naming the last good checkpoint.

  Runs check before every checkpoint, so every checkpoint on disk holds finite values.
  """
  ckpt.wait()
  good = ckpt.manager.latest_step()
  where = (f'the last good checkpoint is step {good} in {ckpt.manager.directory}'
           if good is not None else 'no checkpoint was saved before it')
  return TrainingDiverged(
      f'[{name}] the {what} became {loss} at step {step}; {where}; lower config.train.lr or raise '
      f'config.train.warmup_steps and rerun.')


def result_record(config: ml_collections.ConfigDict, *, name: str, fingerprint: str,
                  names: list[str], counts: np.ndarray, seen: np.ndarray, stores: dict,
                  steps: int, evals: list[dict], wall_s: float) -> dict:
  """The result.json of a finished run (the same for single and stacked runs).

  `evals` are record_eval's returns in step order, the last one the final evaluation; `seen`
  the sequences of each domain the run trained on.
  """
  final = evals[-1]
  seq_len = int(config.data.seq_len)
  tokens_per_step = int(config.train.batch_size) * seq_len
  counts, seen = np.asarray(counts, np.int64), np.asarray(seen, np.int64)
  rows = np.array([s.train.shape[0] for s in stores.values()])
  return {
      'name': name,
      'fingerprint': fingerprint,
      'domains': list(names),
      'objective': final['objective'],
      'objective_kind': config.eval.objective,
      'val_loss': {n: final[f'val_loss/{n}'] for n in names},
      'val_ppl': {n: math.exp(final[f'val_loss/{n}']) for n in names},
      'requested_sequences': counts.tolist(),
      'trained_sequences': seen.tolist(),
      'trained_tokens': (seen * seq_len).tolist(),
      'epochs': mixture.epochs(counts, rows).tolist(),
      'steps': int(steps),
      'seq_len': seq_len,
      'evals': [{'step': e['step'], 'objective': e['objective'],
                 'tokens': e['step'] * tokens_per_step} for e in evals],
      'wall_s_last_session': wall_s,
  }


def check_config(config: ml_collections.ConfigDict,
                 mesh: jax.sharding.Mesh | None = None) -> None:
  """Every training setting that can be checked without data: optimizer, loop cadence, model,
  mesh against the devices (or the given mesh), batch splits, objective. Cheap (nothing is
  compiled), so callers run it before prepare; build_trainer runs it again."""
  optim.check_optimizer(config.train)
  for section, field, low in (('train', 'batch_size', 1), ('train', 'grad_accum', 1),
                              ('train', 'log_every', 1), ('train', 'checkpoint_every', 1),
                              ('train', 'keep_checkpoints', 1), ('train', 'eval_every', 0),
                              ('eval', 'batch_size', 1)):
    value = config[section][field]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      raise ConfigError(f'config.{section}.{field} is {value!r}; it must be an integer >= '
                        f'{low}.')
  build_model(config.model, vocab_size=1, seq_len=int(config.data.seq_len))
  mesh = mesh or mesh_lib.make_mesh(config.mesh)
  dp = mesh_lib.data_parallel_size(mesh, config.mesh.rules)
  check_batch(config.train, dp)
  if config.eval.batch_size % dp:
    raise ConfigError(f'config.eval.batch_size ({config.eval.batch_size}) is not divisible by '
                      f'the data-parallel size {dp} (mesh data x fsdp); change it to a multiple '
                      f'of {dp}.')
  objective({d.name: 0.0 for d in config.data.domains}, config.eval)


def build_trainer(config: ml_collections.ConfigDict, tokenizer, num_domains: int,
                  mesh: jax.sharding.Mesh | None = None) -> Trainer:
  """The model and its jitted steps; one Trainer serves every run of an experiment, whatever
  its length (the schedule length is a traced input), so the steps compile once."""
  mesh = mesh or mesh_lib.make_mesh(config.mesh)
  check_config(config, mesh)
  model: ModelSpec = build_model(config.model, vocab_size=tokenizer.vocab_size,
                                 seq_len=int(config.data.seq_len),
                                 special_ids=getattr(tokenizer, 'special_ids', None))
  return Trainer(model=model, train_cfg=config.train, mesh=mesh, rules=config.mesh.rules,
                 num_domains=num_domains, seed=config.seed)


def run(config: ml_collections.ConfigDict, run_dir: epath.PathLike, *, counts: np.ndarray,
        stores: dict, tokenizer, mesh: jax.sharding.Mesh | None = None,
        trainer: Trainer | None = None, name: str = 'run') -> dict:
  """Trains one model on exactly counts[i] sequences of domain i; returns (and saves) its result.

  `trainer` (from build_trainer with the same config) lets many runs share compiled steps.
  """
  run_dir = epath.Path(run_dir)
  counts = np.asarray(counts, np.int64)
  fingerprint = run_fingerprint(config, counts, tokenizer.hash)
  result_path = run_dir / 'result.json'
  if result_path.exists():
    result = json.loads(result_path.read_text())
    if result.get('fingerprint', fingerprint) != fingerprint:
      raise ConfigError(f'[{name}] {run_dir} holds a finished run of another config (fingerprint '
                        f'{result["fingerprint"]}, not {fingerprint}); point this run at a '
                        'fresh directory.')
    logging.info('[%s] already finished (%s); not training again.', name, result_path)
    return result
  names = list(stores)
  tcfg = config.train
  seq_len = int(config.data.seq_len)
  batch_size = int(tcfg.batch_size)
  total_steps = checked_num_steps(name, counts, batch_size)

  # Mesh, model, shardings.
  trainer = trainer or build_trainer(config, tokenizer, len(names), mesh)
  mesh, model = trainer.mesh, trainer.model
  description = run_description(config, counts, tokenizer.hash)
  run_dir.mkdir(parents=True, exist_ok=True)

  # Restore or initialise (a checkpoint of another run is refused before anything is written).
  ckpt = Checkpointer(run_dir / 'checkpoints', fingerprint=fingerprint,
                      every=tcfg.checkpoint_every, keep=tcfg.keep_checkpoints,
                      use_async=tcfg.async_checkpoint, description=description)
  restored = ckpt.restore(trainer.abstract_state)
  write_run_config(run_dir, config, counts=counts, names=names, fingerprint=fingerprint,
                   total_steps=total_steps)
  if restored is None:
    state, start = trainer.init_state(), 0
    logging.info('[%s] no checkpoint; starting from scratch (%d steps, %d devices, mesh %s).',
                 name, total_steps, mesh.size, dict(mesh.shape))
  else:
    state, meta = restored
    start = int(meta['step'])
    logging.info('[%s] resuming from the checkpoint at step %d of %d.', name, start, total_steps)
  writer = metrics_lib.MetricWriter(run_dir)
  evals = resume_records(writer, start, total_steps)

  # Data.
  data = loader_lib.Loader(stores, counts, seed=config.seed, batch_size=batch_size,
                           sharding=trainer.batch_shardings['domain'], start_step=start,
                           prefetch=config.data.prefetch,
                           max_epochs=config.data.max_epochs)
  val = loader_lib.val_batches(stores, int(config.eval.batch_size),
                               trainer.batch_shardings['domain'])

  def evaluate(step: int) -> dict:
    losses, _ = trainer.evaluate(state.params, val)
    return record_eval(writer, name, step, names, losses, config.eval)

  # Loop.
  tokens_per_step = batch_size * seq_len
  meter = metrics_lib.Throughput(
      model.flops_per_token,
      metrics_lib.device_peak_flops(tcfg.peak_flops) * mesh.size, total_steps)
  meter.start(start)
  t0 = time.time()
  step = start
  with _Preemption() as preemption:
    for batch in data:
      state, m = trainer.step(state, batch, total_steps)
      step += 1
      stop = preemption.reached(step) and step < total_steps
      logged = step % tcfg.log_every == 0 or step == total_steps
      saving = ckpt.due(step, final=step == total_steps or stop)
      if logged or saving:  # never log, or checkpoint, a non-finite state
        m = jax.device_get(m)
        for key, what in (('loss', 'training loss'), ('grad_norm', 'gradient norm')):
          if not np.isfinite(m[key]):
            raise diverged(name, m[key], step, ckpt, what)
      if logged:
        speed = meter.update(step, tokens_per_step)
        writer.write(step, {'loss': m['loss'], 'grad_norm': m['grad_norm'],
                            'lr': m['lr'], **speed})
        mfu = f"  mfu {100 * speed['mfu']:.1f}%" if 'mfu' in speed else ''
        logging.info('[%s] step %d/%d  loss %.4f  %.0f tok/s%s  eta %s', name, step,
                     total_steps, m['loss'], speed['tokens_per_s'], mfu,
                     progress.format_eta(speed['eta_s']))
      if tcfg.eval_every and step % tcfg.eval_every == 0 and step < total_steps:
        evals.append(evaluate(step))
      if saving:
        # Metrics first: after a kill, metrics.jsonl may run past the restored checkpoint (the
        # resumed run truncates it) but never stops short of it.
        writer.flush()
        ckpt.maybe_save(step, state, final=True)
      if stop:
        ckpt.close()
        writer.close()
        raise SystemExit(f'[{name}] preempted (SIGTERM): checkpoint saved at step {step}; rerun '
                         f'the same command to resume.')

  evals.append(evaluate(step))
  ckpt.close()
  writer.close()
  seen = np.asarray(jax.device_get(state.domain_sequences), np.int64)
  result = result_record(config, name=name, fingerprint=fingerprint, names=names,
                         counts=counts, seen=seen, stores=stores, steps=step, evals=evals,
                         wall_s=time.time() - t0)
  if jax.process_index() == 0:
    write_json_atomic(result_path, result)
  return result
