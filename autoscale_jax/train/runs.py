"""Training runs, narrated: fingerprint -> mesh and model -> restore -> data -> loop -> result.

A run is defined by the config, its per-domain sequence counts and its seed. Its directory holds
config.json, checkpoints/, metrics.jsonl, TensorBoard events and, written atomically last,
result.json; a run whose result.json exists is finished and is never trained again.

Runs go one at a time (`run`) or N at once as one program (`run_stacked`, train/stacked.py;
`run_many` chooses, train/memory.py), through one train/loop.train_loop into the same files: a
result does not depend on how it was trained. A stack is checkpointed as one state in <parent of
its first run dir>/stack-<hash>/ (its members' fingerprints, in order), deleted once every member
wrote its result and its own final checkpoint.
"""

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from autoscale_jax import defaults, lead
from autoscale_jax.data import loader as loader_lib, mixture
from autoscale_jax.errors import ConfigError, check_number
from autoscale_jax.models import build_model
from autoscale_jax.train import loop, memory, mesh as mesh_lib, metrics as metrics_lib, optim
from autoscale_jax.train.checkpoint import Checkpointer
from autoscale_jax.train.stacked import StackedTrainer
from autoscale_jax.train.trainer import Trainer, check_batch, objective, run_key

# What shapes a run's result, by config section: the fingerprint hashes exactly these.
# Evaluation cadence, logging, checkpointing and stacking stay out, so changing them never
# retrains a finished run. (The eval fields below were hashed from the start and stay.)
MODEL_FIELDS = ('family', 'size', 'overrides', 'dropout', 'dtype', 'param_dtype', 'remat',
                'scan_layers')
OPTIMIZER_FIELDS = ('batch_size', 'grad_accum', 'lr', 'warmup_steps', 'schedule',
                    'min_lr_ratio', 'weight_decay', 'b1', 'b2', 'eps', 'clip_norm')
EVAL_FIELDS = ('objective', 'objective_weights', 'batch_size')
# Fields added after runs were first fingerprinted, with the value every earlier run had: a
# field is hashed only away from that value, so adding one changes no existing fingerprint.
# ('train', 'warmup_ratio') counts only where it acts, i.e. when train.warmup_steps is 0; the
# cooldown's fields (WSD_FIELDS) only when train.schedule is 'wsd', which no earlier run used.
LATER_FIELDS = {('model', 'scan_unroll'): 1, ('model', 'attention_impl'): 'xla',
                ('train', 'warmup_ratio'): 0.0, ('eval', 'perplexity'): 'token'}
WSD_FIELDS = ('cooldown_fraction', 'cooldown_shape')


@dataclasses.dataclass(frozen=True)
class Run:
  """One run to train: its label in logs, its directory, sequences per domain and seed; for a
  trajectory's runs (train/trajectory.py) also the counts its batches are a prefix of (`stream`,
  never stacked), its `warmup` steps, a fingerprint `kind`, and `on_step(step, state_fn)`."""
  name: str
  run_dir: epath.Path
  counts: np.ndarray
  seed: int
  stream: np.ndarray | None = None
  warmup: int | None = None
  kind: dict | None = None
  on_step: Callable[[int, Callable[[], Any]], None] | None = None


def _plain(value):
  return value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value


def run_description(config: ml_collections.ConfigDict, counts: np.ndarray, seed: int,
                    tokenizer_hash: str, kind: dict | None = None) -> dict:
  """Everything that shapes a run's result, as JSON data (what the fingerprint hashes).

  `kind`: the settings of a run kind other than plain training (e.g. DoReMi's, train/doremi.py).
  """
  shaping_sections = {
      'model': {k: _plain(config.model[k]) for k in MODEL_FIELDS},
      'optimizer': {k: config.train[k] for k in OPTIMIZER_FIELDS},
      'eval': {k: _plain(config.eval[k]) for k in EVAL_FIELDS},
  }
  for (section, field), legacy in LATER_FIELDS.items():
    value = config[section][field]
    if section == 'train' and field == 'warmup_ratio' and config.train.warmup_steps:
      value = legacy  # a fixed warmup_steps overrides the ratio
    if value != legacy:
      shaping_sections['optimizer' if section == 'train' else section][field] = value
  if config.train.schedule == 'wsd':
    shaping_sections['optimizer'].update({k: config.train[k] for k in WSD_FIELDS})
  shaping = {
      **shaping_sections,
      'seq_len': config.data.seq_len,
      'domains': [d.name for d in config.data.domains],
      'val_sequences': config.data.val_sequences,
      'counts': [int(c) for c in counts],
      'seed': int(seed),
      'tokenizer': tokenizer_hash,
  }
  if config.get('world'):  # a synthetic world's results never pass for trained ones
    shaping['world'] = config.world
    if config.world in defaults.WORLD_PRESETS:  # which world of the family, as drawn
      shaping['synthetic'] = defaults.synthetic_spec(config)
  if kind:
    shaping['kind'] = kind
  return json.loads(json.dumps(shaping, sort_keys=True, default=str))


def run_fingerprint(config: ml_collections.ConfigDict, counts: np.ndarray, seed: int,
                    tokenizer_hash: str, kind: dict | None = None) -> str:
  """Hash of run_description: runs with the same fingerprint train to the same result."""
  blob = json.dumps(run_description(config, counts, seed, tokenizer_hash, kind),
                    sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


def stack_fingerprint(fingerprints: Sequence[str]) -> str:
  """Identifies a stacked state: its member runs' fingerprints, in stack order."""
  return hashlib.sha256(json.dumps(list(fingerprints)).encode()).hexdigest()[:16]


def checked_num_steps(name: str, counts: np.ndarray, batch_size: int) -> int:
  """Steps of a run of `counts` sequences; refuses a budget smaller than one batch."""
  total_steps = mixture.num_steps(counts, batch_size)
  if total_steps < 1:
    raise ConfigError(f'[{name}] the budget holds {int(np.sum(counts))} sequences, less than one '
                      f'batch of {batch_size}; raise the budget or lower config.train.batch_size.')
  return total_steps


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
    check_number(config[section][field], f'config.{section}.{field}', least=low, whole=True)
  check_number(config.train.peak_flops, 'config.train.peak_flops', least=0)
  build_model(config.model, vocab_size=1, seq_len=int(config.data.seq_len))
  mesh = mesh or mesh_lib.make_mesh(config.mesh)
  dp = mesh_lib.data_parallel_size(mesh, config.mesh.rules)
  check_batch(config.train, dp)
  if config.eval.batch_size % dp:
    raise ConfigError(f'config.eval.batch_size ({config.eval.batch_size}) is not divisible by '
                      f'the data-parallel size {dp} (mesh data x fsdp); change it to a multiple '
                      f'of {dp}.')
  objective({d.name: 0.0 for d in config.data.domains}, config.eval)


class Trainers:
  """The compiled programs of one experiment: one Trainer for runs of any seed and length, and
  a StackedTrainer per stack size, each built on first use and kept by whoever owns this."""

  def __init__(self, config: ml_collections.ConfigDict, tokenizer, num_domains: int,
               mesh: jax.sharding.Mesh | None = None):
    self._config, self._tokenizer, self._num_domains = config, tokenizer, num_domains
    self._mesh = mesh
    self._single: Trainer | None = None
    self._stacked: dict[int, StackedTrainer] = {}

  @property
  def single(self) -> Trainer:
    if self._single is None:
      config = self._config
      mesh = self._mesh or mesh_lib.make_mesh(config.mesh)
      check_config(config, mesh)
      model = build_model(config.model, vocab_size=self._tokenizer.vocab_size,
                          seq_len=int(config.data.seq_len),
                          special_ids=getattr(self._tokenizer, 'special_ids', None))
      self._single = Trainer(model=model, train_cfg=config.train, mesh=mesh,
                             rules=config.mesh.rules, num_domains=self._num_domains)
    return self._single

  def stacked(self, num_runs: int) -> StackedTrainer:
    if num_runs not in self._stacked:
      self._stacked[num_runs] = StackedTrainer(self.single, num_runs)
    return self._stacked[num_runs]


# ------------------------------------------------------------------------------ programs
class _Single:
  """loop.Program of one run: the trainer's step with the run's key and length."""

  def __init__(self, trainer: Trainer, seed: int, horizon: np.ndarray, val: list):
    self.trainer, self.key, self.horizon, self.val = trainer, run_key(seed), horizon, val

  def step(self, state, batch):
    return self.trainer.step(state, batch, self.key, self.horizon)

  def evaluate(self, state) -> np.ndarray:
    return self.trainer.evaluate(state.params, self.val, self.key)[None]


class _Stack:
  """loop.Program of N stacked runs, each with its own key and length."""

  def __init__(self, stacked: StackedTrainer, seeds: Sequence[int], horizons: np.ndarray,
               val: list):
    self.stacked, self.horizons, self.val = stacked, horizons, val
    self.keys = jnp.stack([run_key(s) for s in seeds])

  def step(self, state, batch):
    return self.stacked.step(state, batch, self.keys, self.horizons)

  def evaluate(self, state) -> np.ndarray:
    return self.stacked.evaluate(state.params, self.val, self.keys)


# ------------------------------------------------------------------------------ helpers
def checkpointer(config: ml_collections.ConfigDict, directory: epath.Path, fingerprint: str,
                 description: dict | None) -> Checkpointer:
  """The checkpointer of a run (or stack) directory, with train.* cadence and retention."""
  tcfg = config.train
  return Checkpointer(directory, fingerprint=fingerprint, every=tcfg.checkpoint_every,
                      keep=tcfg.keep_checkpoints, use_async=tcfg.async_checkpoint,
                      description=description)


def _write_run_config(run: Run, config: ml_collections.ConfigDict, *, names: list[str],
                      fingerprint: str, total_steps: int, **extra) -> None:
  """<run_dir>/config.json: what the run is (config, seed, counts, fingerprint, length)."""
  run.run_dir.mkdir(parents=True, exist_ok=True)
  config_json = json.loads(config.to_json_best_effort())
  config_json['seed'] = int(run.seed)
  lead.write_json(run.run_dir / 'config.json', {
      'config': config_json, 'counts': np.asarray(run.counts).tolist(), 'domains': names,
      'fingerprint': fingerprint, 'total_steps': int(total_steps), **extra})


def _member(run: Run, config: ml_collections.ConfigDict, start: int,
            total_steps: int) -> loop.Member:
  writer = metrics_lib.MetricWriter(run.run_dir)
  evals = loop.resume_records(writer, min(start, total_steps), total_steps)
  return loop.Member(name=run.name, run_dir=run.run_dir, total_steps=total_steps,
                     log_every=loop.log_every(config.train, total_steps), writer=writer,
                     evals=evals)


def finished(config: ml_collections.ConfigDict, run: Run, tokenizer,
              kind: dict | None = None) -> dict | None:
  """A finished run's result, or None; a result.json of another config is refused."""
  path = run.run_dir / 'result.json'
  if not path.exists():
    return None
  result = json.loads(path.read_text())
  fingerprint = run_fingerprint(config, run.counts, run.seed, tokenizer.hash, kind or run.kind)
  if result.get('fingerprint', fingerprint) != fingerprint:
    raise ConfigError(f'[{run.name}] {run.run_dir} holds a finished run of another config '
                      f'(fingerprint {result["fingerprint"]}, not {fingerprint}); point this run '
                      'at a fresh directory.')
  logging.info('[%s] already finished (%s); not training again.', run.name, path)
  return result


def _rows(stores: dict) -> np.ndarray:
  return np.array([s.train.shape[0] for s in stores.values()], np.int64)


def _peak(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> float:
  return metrics_lib.device_peak_flops(config.train.peak_flops) * mesh.size


# ------------------------------------------------------------------------------ drivers
def run(config: ml_collections.ConfigDict, spec: Run, *, stores: dict, tokenizer,
        trainers: Trainers | None = None, kind=None) -> dict:
  """Trains one model on exactly spec.counts[i] sequences of domain i; returns its result.

  `kind`: a trainer of another run kind (e.g. doremi.DoReMiTrainer) with the Trainer's
  interface plus `settings` (hashed into the fingerprint) and `result(state)` (its entry in
  result.json, under settings['kind']).
  """
  settings = kind.settings if kind is not None else spec.kind
  done = finished(config, spec, tokenizer, settings)
  if done is not None:
    return done
  names = list(stores)
  counts = np.asarray(spec.counts, np.int64)
  total_steps = checked_num_steps(spec.name, counts, int(config.train.batch_size))
  trainer = kind or (trainers or Trainers(config, tokenizer, len(names))).single
  mesh = trainer.mesh
  fingerprint = run_fingerprint(config, counts, spec.seed, tokenizer.hash, settings)
  description = run_description(config, counts, spec.seed, tokenizer.hash, settings)
  spec.run_dir.mkdir(parents=True, exist_ok=True)

  # Restore or initialise (a checkpoint of another run is refused before anything is written).
  ckpt = checkpointer(config, spec.run_dir / 'checkpoints', fingerprint, description)
  restored = ckpt.restore(trainer.abstract_state)
  _write_run_config(spec, config, names=names, fingerprint=fingerprint, total_steps=total_steps)
  if restored is None:
    state, start = trainer.init_state(run_key(spec.seed)), 0
    logging.info('[%s] no checkpoint; starting from scratch (%d steps, %d devices, mesh %s).',
                 spec.name, total_steps, mesh.size, dict(mesh.shape))
  else:
    state, start = restored[0], int(restored[1]['step'])
    logging.info('[%s] resuming from the checkpoint at step %d of %d.', spec.name, start,
                 total_steps)

  data = loader_lib.Loader(stores, counts if spec.stream is None else spec.stream,
                           seed=spec.seed, batch_size=int(config.train.batch_size),
                           sharding=trainer.batch_shardings['domain'], start_step=start,
                           prefetch=config.data.prefetch, max_epochs=config.data.max_epochs,
                           end_step=total_steps)
  val = loader_lib.val_batches(stores, int(config.eval.batch_size),
                               trainer.batch_shardings['domain'])
  member = _member(spec, config, start, total_steps)
  t0 = time.time()
  after_step = spec.on_step and (lambda step, state: spec.on_step(step, lambda: state))
  state, step = loop.train_loop(
      _Single(trainer, spec.seed, optim.horizon(config.train, total_steps, spec.warmup), val),
      state, start=start, batches=data, members=[member], ckpt=ckpt, label=spec.name,
      domains=names, config=config, flops_per_token=trainer.model.flops_per_token,
      peak_flops=_peak(config, mesh), after_step=after_step)
  seen = np.asarray(jax.device_get(state.domain_sequences), np.int64)
  result = loop.result_record(config, name=spec.name, fingerprint=fingerprint, names=names,
                              counts=counts, seen=seen, rows=_rows(stores), steps=step,
                              evals=member.evals, wall_s=time.time() - t0)
  if kind is not None:
    result[settings['kind']] = kind.result(state)
  lead.write_json(spec.run_dir / 'result.json', result)
  return result


def run_stacked(config: ml_collections.ConfigDict, specs: Sequence[Run], *, stores: dict,
                tokenizer, trainers: Trainers | None = None) -> list[dict]:
  """Trains `specs` as one stack; finished runs are read back and left out of it, and a single
  remaining run is trained by `run`. Returns every run's result, in order."""
  trainers = trainers or Trainers(config, tokenizer, len(stores))
  results, pending = _split(config, specs, tokenizer)
  if len(pending) == 1:
    results[pending[0]] = run(config, specs[pending[0]], stores=stores, tokenizer=tokenizer,
                              trainers=trainers)
  elif pending:
    out = _train_stack(config, [specs[i] for i in pending], stores, tokenizer, trainers)
    results.update(zip(pending, out))
  return [results[i] for i in range(len(specs))]


def run_many(config: ml_collections.ConfigDict, specs: Sequence[Run], *, stores: dict,
             tokenizer, trainers: Trainers | None = None) -> list[dict]:
  """`specs` stacked or one after another, as memory.choose_stacking decides (logged)."""
  trainers = trainers or Trainers(config, tokenizer, len(stores))
  results, pending = _split(config, specs, tokenizer)
  stack, reason = memory.choose_stacking(config, len(pending), trainers.single)
  if pending:
    logging.info('%s', reason)
  if stack:
    return run_stacked(config, specs, stores=stores, tokenizer=tokenizer, trainers=trainers)
  for i in pending:
    results[i] = run(config, specs[i], stores=stores, tokenizer=tokenizer, trainers=trainers)
  return [results[i] for i in range(len(specs))]


def _split(config, specs: Sequence[Run], tokenizer) -> tuple[dict[int, dict], list[int]]:
  """Results of the finished runs by index, and the indices of the others."""
  if len({str(s.run_dir) for s in specs}) != len(specs):
    raise ValueError('run directories must be distinct: two runs cannot share a directory.')
  results, pending = {}, []
  for i, spec in enumerate(specs):
    done = finished(config, spec, tokenizer)
    if done is None:
      pending.append(i)
    else:
      results[i] = done
  return results, pending


def _train_stack(config: ml_collections.ConfigDict, specs: list[Run], stores: dict, tokenizer,
                 trainers: Trainers) -> list[dict]:
  domains = list(stores)
  batch_size = int(config.train.batch_size)
  counts = [np.asarray(s.counts, np.int64) for s in specs]
  seeds = [int(s.seed) for s in specs]
  fingerprints = [run_fingerprint(config, c, s.seed, tokenizer.hash, s.kind)
                  for c, s in zip(counts, specs)]
  descriptions = [run_description(config, c, s.seed, tokenizer.hash, s.kind)
                  for c, s in zip(counts, specs)]
  totals = np.array([checked_num_steps(s.name, c, batch_size) for s, c in zip(specs, counts)],
                    np.int64)
  n, last = len(specs), int(totals.max())
  fingerprint = stack_fingerprint(fingerprints)
  label = f'stack-{fingerprint}'
  stack_dir = specs[0].run_dir.parent / label
  trainer, stacked = trainers.single, trainers.stacked(n)
  mesh = trainer.mesh

  # Data first: bad counts (too few rows, too many epochs) stop before anything is written.
  data = loader_lib.StackedLoader(stores, counts, seeds=seeds, batch_size=batch_size,
                                  shardings=stacked.batch_shardings,
                                  run_sharding=trainer.batch_shardings['domain'],
                                  prefetch=config.data.prefetch,
                                  max_epochs=config.data.max_epochs)

  # Restore or initialise the stacked state (refused before anything is written if foreign).
  ckpt = checkpointer(config, stack_dir / 'checkpoints', fingerprint,
                       {s.name: d for s, d in zip(specs, descriptions)})
  restored = ckpt.restore(stacked.abstract_state)
  lead.write_json(stack_dir / 'stack.json', {'fingerprint': fingerprint, 'runs': [
      {'name': s.name, 'dir': str(s.run_dir), 'fingerprint': f, 'total_steps': int(t)}
      for s, f, t in zip(specs, fingerprints, totals)]})
  for s, f, t in zip(specs, fingerprints, totals):
    _write_run_config(s, config, names=domains, fingerprint=f, total_steps=t,
                      stack={'fingerprint': fingerprint, 'dir': str(stack_dir)})
  horizons = np.stack([optim.horizon(config.train, t, s.warmup) for s, t in zip(specs, totals)])
  program = _Stack(stacked, seeds, horizons, loader_lib.val_batches(
      stores, int(config.eval.batch_size), stacked.run_batch_sharding))
  if restored is None:
    state, start = stacked.init_state(program.keys), 0
    logging.info('[%s] %d runs stacked, no checkpoint; starting from scratch (%d-%d steps, %d '
                 'devices, mesh %s, run axis on %s).', label, n, totals.min(), last, mesh.size,
                 dict(mesh.shape), stacked.run_axes or 'no mesh axis (folded)')
  else:
    state, start = restored[0], int(restored[1]['step'])
    logging.info('[%s] resuming %d stacked runs from the checkpoint at step %d of %d.', label,
                 n, start, last)
  members = [_member(s, config, start, int(t)) for s, t in zip(specs, totals)]
  data.start_step = start
  t0 = time.time()
  hooks = [(r, s.on_step) for r, s in enumerate(specs) if s.on_step]
  after_step = hooks and (lambda step, state: [hook(step, lambda r=r: stacked.member(state, r))
                                               for r, hook in hooks])
  state, _ = loop.train_loop(
      program, state, start=start, batches=data, members=members, ckpt=ckpt, label=label,
      domains=domains, config=config, flops_per_token=trainer.model.flops_per_token,
      peak_flops=_peak(config, mesh), after_step=after_step or None)
  wall = time.time() - t0
  seen = np.asarray(jax.device_get(state.domain_sequences), np.int64)
  # Each run's directory also gets its own final checkpoint, as `run` leaves it.
  own = [checkpointer(config, s.run_dir / 'checkpoints', f, d)
         for s, f, d in zip(specs, fingerprints, descriptions)]
  for r, c in enumerate(own):
    c.maybe_save(int(totals[r]), stacked.member(state, r), final=True)
  for c in own:
    c.close()
  results = []
  for r, (s, f) in enumerate(zip(specs, fingerprints)):
    result = loop.result_record(config, name=s.name, fingerprint=f, names=domains,
                                counts=counts[r], seen=seen[r], rows=_rows(stores),
                                steps=int(totals[r]), evals=members[r].evals, wall_s=wall)
    lead.write_json(s.run_dir / 'result.json', result)
    results.append(result)
  if lead.is_lead():  # every member has its result and its own final checkpoint
    stack_dir.rmtree(missing_ok=True)
  logging.info('[%s] %d stacked runs finished in %.1fs.', label, n, wall)
  return results
