"""The runs of one workdir: prepared data, tokenizer, trainer, run directories, which runs are
finished, and training a list of them. The stages say which runs they want; this module knows
no stage, and it is the only one in the pipeline that calls into autoscale_jax.train and the data
store, so a change of those APIs is made here alone."""

import copy
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from autoscale_jax.errors import ConfigError
from autoscale_jax.lead import write_json
from autoscale_jax.pipeline import world
from autoscale_jax.progress import Progress, format_eta

# config.world: train for real, or read losses off a synthetic world (pipeline/world.py): the
# tests' fixed one or a preset of the family (pipeline/worlds.py).
WORLDS = ('', *world.WORLDS)


# ------------------------------------------------------------------------------ small helpers
def tokens_key(tokens: float) -> str:
  """How a token count names a folder or a json key (budgets/<tokens>/, validation/<tokens>)."""
  return str(int(round(tokens)))


def read_json(path: epath.Path):
  return json.loads(path.read_text())


def format_weights(names: Sequence[str], weights: Sequence[float]) -> str:
  return ', '.join(f'{n} {w:.3f}' for n, w in zip(names, weights))


def positive_tokens(values, field: str) -> list[int]:
  """One or more token budgets of a config field, each a finite number > 0."""
  values = [values] if np.isscalar(values) else list(values)
  if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                           for v in values):
    raise ConfigError(f'{field} must be one or more token budgets > 0; got {values}.')
  return [int(round(v)) for v in values]


def trainable_mask(config: ml_collections.ConfigDict) -> np.ndarray:
  """Domains a mixture may train on; `eval_only` domains are only measured (held out)."""
  mask = np.array([not d.get('eval_only', False) for d in config.data.domains])
  if not mask.any():
    raise ConfigError('every domain in config.data.domains is eval_only; at least one domain must '
                      'be trainable (set eval_only=False on it).')
  return mask


def devices_line(config: ml_collections.ConfigDict) -> str:
  """The devices and mesh the config would train on, or why this machine cannot (dry runs)."""
  from autoscale_jax.train import mesh as mesh_lib
  try:
    mesh = mesh_lib.make_mesh(config.mesh)
    return f'{mesh.size} {jax.devices()[0].platform} device(s), mesh {dict(mesh.shape)}'
  except ConfigError as e:
    return f'{jax.device_count()} device(s) here; the configured mesh needs others ({e})'


def downstream_settings(config: ml_collections.ConfigDict) -> dict | None:
  """What a run's downstream evaluation is (None when off): lm-evaluation-harness tasks for a
  GPT-2 (eval.harness_tasks), fine-tuning tasks for a BERT (eval.finetune_tasks); the other
  family's field is refused."""
  ecfg, family = config.eval, config.model.family
  harness, finetune = tuple(ecfg.harness_tasks), tuple(ecfg.finetune_tasks)
  if harness and family != 'gpt2':
    raise ConfigError('config.eval.harness_tasks scores a causal LM (model.family gpt2); for a '
                      f'{family} use config.eval.finetune_tasks, or set harness_tasks=().')
  if finetune and family != 'bert':
    raise ConfigError('config.eval.finetune_tasks fine-tunes a BERT (model.family bert); for a '
                      f'{family} use config.eval.harness_tasks, or set finetune_tasks=().')
  if harness:
    from autoscale_jax.errors import check_number
    from autoscale_jax.evaluate import harness as harness_lib
    check_number(ecfg.num_fewshot, 'config.eval.num_fewshot', least=0, whole=True)
    check_number(ecfg.harness_limit, 'config.eval.harness_limit', least=0, whole=True)
    harness_lib.import_lm_eval()  # the optional extra, before anything trains
    return {'kind': 'harness', 'tasks': list(harness), 'num_fewshot': int(ecfg.num_fewshot),
            'limit': int(ecfg.harness_limit)}
  if finetune:
    return {'kind': 'finetune', 'tasks': list(finetune), **ecfg.finetune.to_dict()}
  return None


# ------------------------------------------------------------------------------ runs
@dataclasses.dataclass
class RunSpec:
  """One training run a stage wants: its label, per-domain sequence counts and seed.

  `reference` and `kind` make it a DoReMi proxy run (Experiment.doremi_spec) against that run.
  `trajectory` (train/trajectory.kind) makes it a 'wsd' run of a trajectory: a trunk, with the
  `branches` it saves the starting states of, or a branch, trained on a prefix of the batches of
  `stream` (its trunk's counts).
  """
  name: str
  counts: np.ndarray
  seed: int
  eval_every: int = 0
  reference: 'RunSpec | None' = None
  kind: dict | None = None
  trajectory: dict | None = None
  stream: np.ndarray | None = None
  branches: tuple['RunSpec', ...] = ()


def prepare_data(config: ml_collections.ConfigDict, workdir: epath.Path) -> tuple:
  """The tokenizer and the token stores of config.data, built once under the workdir."""
  from autoscale_jax.data import store, tokenizer
  from autoscale_jax.models import row_len
  family = config.model.family
  tok = tokenizer.get_tokenizer(config.data, workdir, family=family)
  stores = store.prepare(config.data, workdir, family=family,
                         row_len=row_len(family, config.data.seq_len))
  return tok, stores


class Experiment:
  """The prepared data, tokenizer and trainers of one workdir, and how to train runs in it."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: epath.Path):
    from autoscale_jax.train import runs
    # Settings a run would otherwise only meet after prepare (or at its end) are checked first.
    runs.check_config(config)
    # The world (checked here, before any data is prepared) stands in for every run's training.
    self.world = world.get(config) if config.world else None
    self.trainable = trainable_mask(config)
    self.config = config
    self.workdir = workdir
    self.tokenizer, self.stores = prepare_data(config, workdir)
    self.names = list(self.stores)
    self.seq_len = int(config.data.seq_len)
    self.rows = np.array([s.train.shape[0] for s in self.stores.values()], np.int64)
    self.natural = np.array([s.meta['tokens'] for s in self.stores.values()], np.float64)
    self.mix_names = [n for n, t in zip(self.names, self.trainable) if t]  # the mixture's domains
    # Tokens of each mixture domain a run may train on: its rows, data.max_epochs times over.
    self.available_tokens = (self.rows[self.trainable] * int(config.data.max_epochs)
                             * float(self.seq_len))
    # The compiled programs every run of the experiment shares (built when first trained); a
    # trajectory's runs ('wsd' whatever train.schedule says) have their own.
    self.trainers = runs.Trainers(config, self.tokenizer, len(self.names))
    self._wsd_trainers: runs.Trainers | None = None
    self._session_tokens = 0
    self._session_seconds = 0.0
    self._run_configs: dict[tuple, ml_collections.ConfigDict] = {}

  # -- configuration of one run
  def run_config(self, spec: RunSpec) -> ml_collections.ConfigDict:
    """The experiment's config with the run's evaluation cadence, and for a trajectory's run
    the 'wsd' schedule (one copy per cadence and schedule)."""
    key = (int(spec.eval_every), spec.trajectory is not None)
    if key not in self._run_configs:
      config = copy.deepcopy(self.config)
      config.train.eval_every = key[0]
      if key[1]:
        config.train.schedule = 'wsd'
      self._run_configs[key] = config
    return self._run_configs[key]

  def trainers_for(self, spec: RunSpec):
    from autoscale_jax.train import runs
    if spec.trajectory is None or self.config.train.schedule == 'wsd':
      return self.trainers
    if self._wsd_trainers is None:
      self._wsd_trainers = runs.Trainers(self.run_config(spec), self.tokenizer, len(self.names))
    return self._wsd_trainers

  def run_dir(self, spec: RunSpec) -> epath.Path:
    from autoscale_jax.train.runs import run_fingerprint
    return self.workdir / 'runs' / run_fingerprint(self.run_config(spec), spec.counts, spec.seed,
                                                   self.tokenizer.hash,
                                                   spec.kind or spec.trajectory)

  def doremi_spec(self, name: str, counts: np.ndarray, reference: RunSpec, *,
                  step_size: float, smoothing: float) -> RunSpec:
    """A DoReMi proxy run of `counts` (uniform) against the run `reference` (train/doremi.py),
    with the reference's seed and evaluation cadence."""
    from autoscale_jax.train import doremi
    kind = doremi.settings(self.run_dir(reference).name, step_size, smoothing)
    return RunSpec(name, counts, reference.seed, reference.eval_every, reference, kind)

  def check_run(self, spec: RunSpec, field: str) -> None:
    """Fails before any training if a run needs more data than the stores hold."""
    batch = int(self.config.train.batch_size)
    if spec.counts.sum() < batch:
      raise ConfigError(
          f'{field}: run {spec.name} holds {int(spec.counts.sum()) * self.seq_len:,} tokens, less '
          f'than one batch ({batch} x {self.seq_len} tokens); raise the budget or lower '
          f'config.train.batch_size.')
    allowed = self.rows * int(self.config.data.max_epochs)
    over = np.nonzero(spec.counts > allowed)[0]
    if over.size:
      i = int(over[0])
      raise ConfigError(
          f'{field}: run {spec.name} needs {int(spec.counts[i]) * self.seq_len:,} tokens of domain '
          f"'{self.names[i]}' but its store holds {int(self.rows[i]) * self.seq_len:,} "
          f'(x{self.config.data.max_epochs} epochs); lower the budget, add data '
          f'(config.data.max_docs=0 reads all) or allow repetition with config.data.max_epochs.')

  def full(self, counts: np.ndarray) -> np.ndarray:
    """Counts over the mixture's domains -> counts over all domains (0 for eval-only ones)."""
    out = np.zeros(len(self.names), np.int64)
    out[self.trainable] = counts
    return out

  # -- training
  def train(self, specs: Sequence[RunSpec], stage: str) -> list[dict]:
    """Results of `specs`, training those not finished yet, with progress (runs done of total)
    and, after each group, a log line with an ETA.

    Runs sharing an evaluation cadence form a group, trained stacked when config.train.stack_runs
    allows and memory fits (the trainer logs which and why), else one after another. Specs that
    are the same run (one run directory, e.g. two methods' identical mixtures) train once.
    """
    first: dict[str, int] = {}
    for k, spec in enumerate(specs):
      first.setdefault(str(self.run_dir(spec)), k)
    if len(first) < len(specs):
      unique = self.train([specs[k] for k in first.values()], stage)
      by_dir = dict(zip(first, unique))
      return [by_dir[str(self.run_dir(spec))] for spec in specs]
    results: list[dict | None] = [None] * len(specs)
    todo = []
    for k, spec in enumerate(specs):
      path = self.run_dir(spec) / 'result.json'
      if path.exists():
        results[k] = read_json(path)
      else:
        todo.append(k)
    logging.info('[%s] %d runs: %d finished earlier, %d to train.', stage, len(specs),
                 len(specs) - len(todo), len(todo))
    remaining = sum(int(specs[k].counts.sum()) for k in todo) * self.seq_len
    groups: dict[tuple, list[int]] = {}  # by cadence; DoReMi runs, trajectories' runs apart
    for k in todo:
      groups.setdefault((specs[k].eval_every, specs[k].kind is not None,
                         specs[k].trajectory is not None, specs[k].stream is not None),
                        []).append(k)
    with Progress(len(specs), f'[{stage}] runs', 'run', initial=len(specs) - len(todo)) as bar:
      for members in groups.values():
        t0 = time.time()
        out = self._train_group([specs[k] for k in members], stage)
        tokens = sum(int(specs[k].counts.sum()) for k in members) * self.seq_len
        remaining -= tokens
        self._session_tokens += tokens
        self._session_seconds += time.time() - t0
        for k, result in zip(members, out):
          results[k] = result
        bar.update(len(members))
        eta = remaining * self._session_seconds / max(self._session_tokens, 1)
        logging.info('[%s] %d/%d runs done (%s); ETA %s', stage,
                     sum(r is not None for r in results), len(specs),
                     ', '.join(f"{specs[k].name} {results[k]['objective']:.4f}" for k in members),
                     format_eta(eta))
    return results

  def _train_group(self, specs: Sequence[RunSpec], stage: str) -> list[dict]:
    """Runs of one evaluation cadence (any seeds), stacked or one after another (DoReMi proxy
    runs, whose references must be finished, and trajectory branches, each from its own
    branch point, one after another); in a synthetic world (config.world), their results
    straight from its law."""
    from autoscale_jax.train import runs
    if self.world is not None:
      out = []
      for s in specs:
        record = world.result(self.run_config(s), name=f'{stage}/{s.name}',
                              fingerprint=self.run_dir(s).name, names=self.names, counts=s.counts,
                              seed=s.seed, rows=self.rows, world=self.world)
        if s.kind:
          record['doremi'] = world.doremi(self.run_config(s), s.kind, s.counts,
                                          s.reference.counts, self.trainable, world=self.world)
        write_json(self.run_dir(s) / 'result.json', record)
        out.append(record)
      return out
    if specs[0].kind:  # DoReMi proxy runs go one at a time, after their reference
      from autoscale_jax.train import doremi
      return [doremi.run(self.run_config(s), self._run(s, stage), self._run(s.reference, stage),
                         mixture=np.flatnonzero(self.trainable).tolist(),
                         step_size=s.kind['step_size'], smoothing=s.kind['smoothing'],
                         stores=self.stores, tokenizer=self.tokenizer, trainers=self.trainers)
              for s in specs]
    trainers = self.trainers_for(specs[0])
    if specs[0].stream is not None:
      from autoscale_jax.train import trajectory
      return [trajectory.run_branch(self.run_config(s), self._run(s, stage), stores=self.stores,
                                    tokenizer=self.tokenizer, trainers=trainers) for s in specs]
    return runs.run_many(
        self.run_config(specs[0]),
        [self._run(s, stage) for s in specs], stores=self.stores, tokenizer=self.tokenizer,
        trainers=trainers)

  # -- downstream evaluation
  def downstream(self, specs: Sequence[RunSpec]) -> list[dict | None]:
    """Each finished run's downstream scores (downstream_settings; None when off), evaluated
    once per run and setting: <run dir>/downstream-<hash of the settings>.json. Every process
    evaluates (the model may be sharded over all of them); process 0 writes."""
    settings = downstream_settings(self.config)
    if settings is None:
      return [None] * len(specs)
    if self.world is not None:
      logging.warning('downstream evaluation needs trained models; a synthetic world has none.')
      return [None] * len(specs)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    out = []
    for spec in specs:
      run_dir = self.run_dir(spec)
      path = run_dir / f'downstream-{key}.json'
      if not path.exists():
        t0 = time.time()
        record = {'settings': settings, **self._evaluate(spec, run_dir, settings)}
        write_json(path, record)
        logging.info('[downstream] %s: %s (%.0fs)', spec.name, ', '.join(
            f'{t} {v:.4f}' for t, v in record['scores'].items()), time.time() - t0)
        out.append(record)
      else:
        out.append(read_json(path))
    return out

  def _evaluate(self, spec: RunSpec, run_dir: epath.Path, settings: dict) -> dict:
    """One run's downstream results from its final checkpoint in `run_dir`; 'scores' holds
    each task's main score (accuracy for the harness's choice tasks; finetune.py names its own)."""
    from autoscale_jax.train import runs
    ckpt = runs.checkpointer(self.run_config(spec), run_dir / 'checkpoints', run_dir.name, None)
    restored = ckpt.restore(self.trainers.single.abstract_state)
    ckpt.close()
    if restored is None:
      raise ConfigError(f'[{spec.name}] {run_dir} has no final checkpoint to evaluate downstream; '
                        'delete its result.json to train it again.')
    trainer, params = self.trainers.single, restored[0].params
    if settings['kind'] == 'harness':
      from autoscale_jax.evaluate import harness
      result = harness.evaluate(
          trainer.model, params, self.tokenizer, tasks=settings['tasks'], seq_len=self.seq_len,
          num_fewshot=settings['num_fewshot'], limit=settings['limit'] or None,
          task_root=self.workdir / 'tasks', batch_size=int(self.config.eval.batch_size),
          mesh=trainer.mesh, rules=self.config.mesh.rules)
      scores = {t: r.get('acc', r.get('acc_norm')) for t, r in result['tasks'].items()}
    else:
      from autoscale_jax.evaluate import finetune
      result = finetune.evaluate(trainer.model, params, self.tokenizer,
                                 tasks=settings['tasks'], cfg=self.config.eval.finetune,
                                 seq_len=self.seq_len, mesh=trainer.mesh,
                                 rules=self.config.mesh.rules)
      scores = {t: r['score'] for t, r in result['tasks'].items()}
    return {**result, 'scores': scores}

  def _run(self, spec: RunSpec, stage: str):
    from autoscale_jax.train import runs, trajectory
    t = spec.trajectory
    on_step = trajectory.branch_saver(
        self.run_config(spec), [self._run(b, stage) for b in spec.branches],
        self.tokenizer.hash) if spec.branches else None
    return runs.Run(f'{stage}/{spec.name}', self.run_dir(spec), spec.counts, spec.seed,
                    stream=spec.stream, warmup=t and t['warmup_steps'], kind=t, on_step=on_step)
