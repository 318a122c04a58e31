"""The only place that knows an experiment is many runs: modes, run planning, results on disk.

Workdir layout (every file written atomically; a file's presence means its step is done):

  data/                      token stores and the tokenizer (data/store.py)
  runs/<fingerprint>/        one training run: config.json, checkpoints/, metrics.jsonl,
                             result.json (written last; a run with it is never trained again)
  budgets/<tokens>/          one DDO budget: plan.json, fits.json, optimum.json
  autoscale/                 model.json (the fitted AutoScaleModel), predictions.json
  validation/<tokens>.json   target runs of the predicted mixture against the baselines
  report/                    report.md and its plots (report.py; rebuilt by mode=report)
  LOCK                       who is running a pipeline here right now
"""

import contextlib
import dataclasses
import json
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from autoscale_jax.data.mixture import counts_from_weights, resolve_weights
from autoscale_jax.errors import ConfigError
from autoscale_jax.mixing import (AutoScaleModel, DDOProblem, Perturbation, ddo_weights,
                                  fit_domains, perturbation_plan)
from autoscale_jax.io import write_json_atomic
from autoscale_jax.progress import format_eta

MODES = ('prepare', 'train', 'ddo', 'predict', 'autoscale', 'report')


# ------------------------------------------------------------------------------ small helpers
def _tokens_key(tokens: float) -> str:
  return str(int(round(tokens)))


def _read_json(path: epath.Path):
  return json.loads(path.read_text())


def _write_json(path: epath.Path, obj) -> None:
  if jax.process_index() == 0:
    write_json_atomic(path, obj)


def trainable_mask(config: ml_collections.ConfigDict) -> np.ndarray:
  """Domains a mixture may train on; `eval_only` domains are only measured (held out)."""
  mask = np.array([not d.get('eval_only', False) for d in config.data.domains])
  if not mask.any():
    raise ConfigError('every domain in config.data.domains is eval_only; at least one domain must '
                      'be trainable (set eval_only=False on it).')
  return mask


def _positive_tokens(values, field: str) -> list[int]:
  values = [values] if np.isscalar(values) else list(values)
  if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0
                           for v in values):
    raise ConfigError(f'{field} must be one or more token budgets > 0; got {values}.')
  return [int(round(v)) for v in values]


@contextlib.contextmanager
def workdir_lock(workdir: epath.Path) -> Iterator[None]:
  """One pipeline per workdir: a second one would train the same runs into the same folders.

  The lock names its holder (host, pid, start time). A lock left by a dead process on this host
  is taken over with a warning; on another host the user decides (the message says how).
  """
  if jax.process_index() != 0:
    yield
    return
  workdir.mkdir(parents=True, exist_ok=True)
  lock = workdir / 'LOCK'
  me = {'host': socket.gethostname(), 'pid': os.getpid(), 'since': time.strftime('%Y-%m-%d %H:%M:%S')}
  local = '://' not in str(workdir)
  for _ in range(2):
    try:
      if local:  # atomic create: exactly one of two racing pipelines gets it
        fd = os.open(os.fspath(lock), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        with os.fdopen(fd, 'w') as f:
          f.write(json.dumps(me))
      elif lock.exists():
        raise FileExistsError
      else:
        lock.write_text(json.dumps(me))
      break
    except FileExistsError:
      try:
        holder = json.loads(lock.read_text())
      except (OSError, ValueError):
        holder = {}
      if holder.get('host') == me['host'] and not _alive(holder.get('pid')):
        logging.warning('Taking over %s left by pid %s, which is no longer running.', lock,
                        holder.get('pid'))
        lock.unlink(missing_ok=True)
        continue
      raise ConfigError(
          f'{workdir} is in use by another pipeline (host {holder.get("host", "?")}, pid '
          f'{holder.get("pid", "?")}, since {holder.get("since", "?")}); wait for it to finish, '
          f'or delete {lock} if that process is gone.') from None
  try:
    yield
  finally:
    lock.unlink(missing_ok=True)


def _alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except (TypeError, ValueError, ProcessLookupError):
    return False
  except PermissionError:
    return True
  return True


# ------------------------------------------------------------------------------ run planning
@dataclasses.dataclass
class RunSpec:
  """One training run the pipeline wants: its label, per-domain sequence counts and seed."""
  name: str
  counts: np.ndarray
  seed: int
  eval_every: int = 0


class Experiment:
  """The prepared data, tokenizer and trainers of one workdir, and how to train runs in it."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: epath.Path):
    from autoscale_jax.data import store, tokenizer
    from autoscale_jax.train import loop
    # Settings a run would otherwise only meet after prepare (or at its end) are checked first.
    loop.check_config(config)
    self.trainable = trainable_mask(config)
    self.config = config
    self.workdir = workdir
    self.tokenizer = tokenizer.get_tokenizer(config, workdir)
    self.stores = store.prepare(config, workdir)
    self.names = list(self.stores)
    self.seq_len = int(config.data.seq_len)
    self.rows = np.array([s.train.shape[0] for s in self.stores.values()], np.int64)
    self.natural = np.array([s.meta['tokens'] for s in self.stores.values()], np.float64)
    self.mix_names = [n for n, t in zip(self.names, self.trainable) if t]  # the mixture's domains
    self._trainers = {}
    self._session_tokens = 0
    self._session_seconds = 0.0

  # -- configuration of one run
  def run_config(self, spec: RunSpec) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(self.config.to_dict())
    config.seed = int(spec.seed)
    config.train.eval_every = int(spec.eval_every)
    return config

  def run_dir(self, spec: RunSpec) -> epath.Path:
    from autoscale_jax.train.loop import run_fingerprint
    return self.workdir / 'runs' / run_fingerprint(self.run_config(spec), spec.counts,
                                                   self.tokenizer.hash)

  def finished(self, spec: RunSpec) -> bool:
    return (self.run_dir(spec) / 'result.json').exists()

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
  def _trainer(self, seed: int):
    from autoscale_jax.train import loop
    if seed not in self._trainers:
      config = ml_collections.ConfigDict(self.config.to_dict())
      config.seed = int(seed)
      mesh = next(iter(self._trainers.values())).mesh if self._trainers else None
      self._trainers[seed] = loop.build_trainer(config, self.tokenizer, len(self.names), mesh)
    return self._trainers[seed]

  def train(self, specs: Sequence[RunSpec], stage: str) -> list[dict]:
    """Results of `specs`, training those not finished yet, with a progress line and an ETA.

    Runs sharing a seed and an evaluation cadence go together to stacked.run_many, which trains
    them as one vmapped program when config.train.stack_runs allows and memory fits (it logs
    which and why), else one after another.
    """
    from autoscale_jax.train import stacked
    results = [None] * len(specs)
    todo = []
    for k, spec in enumerate(specs):
      path = self.run_dir(spec) / 'result.json'
      if path.exists():
        results[k] = _read_json(path)
      else:
        todo.append(k)
    logging.info('[%s] %d runs: %d finished earlier, %d to train.', stage, len(specs),
                 len(specs) - len(todo), len(todo))
    remaining = sum(int(specs[k].counts.sum()) for k in todo) * self.seq_len
    groups = {}
    for k in todo:
      groups.setdefault((specs[k].seed, specs[k].eval_every), []).append(k)
    for members in groups.values():
      first = specs[members[0]]
      t0 = time.time()
      out = stacked.run_many(
          self.run_config(first), [self.run_dir(specs[k]) for k in members],
          counts=[specs[k].counts for k in members], stores=self.stores,
          tokenizer=self.tokenizer, names=[f'{stage}/{specs[k].name}' for k in members],
          trainer=self._trainer(first.seed))
      tokens = sum(int(specs[k].counts.sum()) for k in members) * self.seq_len
      remaining -= tokens
      self._session_tokens += tokens
      self._session_seconds += time.time() - t0
      for k, result in zip(members, out):
        results[k] = result
      eta = remaining * self._session_seconds / max(self._session_tokens, 1)
      logging.info('[%s] %d/%d runs done (%s); ETA %s', stage,
                   sum(r is not None for r in results), len(specs),
                   ', '.join(f"{specs[k].name} {results[k]['objective']:.4f}" for k in members),
                   format_eta(eta))
    return results


# ------------------------------------------------------------------------------ DDO
def ddo_plan(config: ml_collections.ConfigDict, names: list[str], natural: np.ndarray,
             trainable: np.ndarray, budget: int,
             seq_len: int) -> tuple[list[Perturbation], list[RunSpec], np.ndarray]:
  """The 2m+1 (x replicates) runs of one budget over the trainable domains, with quantities
  rounded to whole sequences; run counts cover all domains (0 for eval-only ones).

  The perturbations carry the realised token quantities, so the fits use what was trained.
  """
  all_names, names, natural = names, [n for n, t in zip(names, trainable) if t], natural[trainable]
  base_w = resolve_weights(config.ddo.base_weights, names, natural, 'config.ddo.base_weights')
  if np.any(base_w <= 0):
    raise ConfigError('config.ddo.base_weights must give every domain a weight > 0 (DDO scales '
                      'each domain from its base quantity); use uniform or positive weights.')
  try:
    nominal = perturbation_plan(base_w * budget, tuple(config.ddo.factors),
                                int(config.ddo.replicates))
  except ValueError as e:
    raise ConfigError(f'config.ddo: {e}') from e
  plan, specs = [], []
  for p in nominal:
    counts = np.maximum(np.round(p.quantities / seq_len), 1).astype(np.int64)
    plan.append(Perturbation(p.domain, p.factor, p.replicate, counts * float(seq_len)))
    label = 'base' if p.domain is None else f'{names[p.domain]} x{p.factor:g}'
    if config.ddo.replicates > 1:
      label += f' seed{p.replicate}'
    full = np.zeros(len(all_names), np.int64)
    full[trainable] = counts
    specs.append(RunSpec(label, full, int(config.seed) + p.replicate))
  return plan, specs, plan[0].quantities


def ddo_bounds(config: ml_collections.ConfigDict, base: np.ndarray,
               available: np.ndarray) -> tuple[float, list[float]]:
  """Multiplier bounds: the smallest factor tested below; above, the data on disk (and, with
  ddo.upper='factor', the largest factor tested: the fits are not trusted beyond it)."""
  factors = [float(f) for f in config.ddo.factors]
  lower = min(min(factors), 1.0)
  upper = available / base
  if config.ddo.upper == 'factor':
    upper = np.minimum(upper, max(max(factors), 1.0))
  elif config.ddo.upper != 'data':
    raise ConfigError(f"config.ddo.upper is '{config.ddo.upper}'; use 'factor' or 'data'.")
  return lower, [float(u) for u in upper]


def run_ddo_budget(exp: Experiment, budget: int, index: int, count: int) -> dict:
  """Trains (or reuses) one budget's runs, fits each domain, solves; writes budgets/<tokens>/."""
  config, names = exp.config, exp.mix_names
  folder = exp.workdir / 'budgets' / _tokens_key(budget)
  optimum_path = folder / 'optimum.json'
  stage = f'ddo {index + 1}/{count} @ {budget:,} tokens'
  if optimum_path.exists():
    logging.info('[%s] done earlier; reusing %s.', stage, optimum_path)
    return _read_json(optimum_path)
  plan, specs, base = ddo_plan(config, exp.names, exp.natural, exp.trainable, budget,
                               exp.seq_len)
  _write_json(folder / 'plan.json', {
      'budget': budget, 'domains': names, 'base_quantities': base.tolist(),
      'factors': list(config.ddo.factors), 'replicates': int(config.ddo.replicates),
      'runs': [{'name': s.name, 'fingerprint': exp.run_dir(s).name, 'seed': s.seed,
                'counts': s.counts.tolist(), **p.to_dict()} for s, p in zip(specs, plan)]})
  results = exp.train(specs, stage)
  objectives = np.array([r['objective'] for r in results])
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    fits = fit_domains(plan, objectives)
  notes = [str(w.message) for w in caught]
  for note in notes:
    logging.warning('[%s] %s', stage, note)
  available = exp.rows[exp.trainable] * int(config.data.max_epochs) * float(exp.seq_len)
  lower, upper = ddo_bounds(config, base, available)
  problem = DDOProblem(base, tuple(fits), lower, tuple(upper))
  n = problem.multipliers()
  _write_json(folder / 'fits.json', {
      'budget': budget, 'domains': names, 'fits': [f.to_dict() for f in fits], 'notes': notes,
      'runs': [{'name': s.name, 'fingerprint': exp.run_dir(s).name, 'objective': r['objective'],
                **p.to_dict()} for s, p, r in zip(specs, plan, results)]})
  optimum = {
      'budget': budget, 'domains': names, 'problem': problem.to_dict(),
      'multipliers': n.tolist(), 'quantities': problem.optimum().tolist(),
      'weights': ddo_weights(n, base).tolist(), 'pinned': [names[i] for i in problem.pinned()],
      'base_weights': (base / base.sum()).tolist()}
  _write_json(optimum_path, optimum)
  logging.info('[%s] optimal weights %s%s', stage, _fmt_weights(names, optimum['weights']),
               f" (on a bound: {', '.join(optimum['pinned'])})" if optimum['pinned'] else '')
  return optimum


def _fmt_weights(names: Sequence[str], weights: Sequence[float]) -> str:
  return ', '.join(f'{n} {w:.3f}' for n, w in zip(names, weights))


def check_ddo(exp: Experiment) -> list[int]:
  """Every budget's data needs, checked before the first run trains; the sorted budgets."""
  budgets = sorted(_positive_tokens(exp.config.ddo.budgets, 'config.ddo.budgets'))
  for budget in budgets:
    _, specs, _ = ddo_plan(exp.config, exp.names, exp.natural, exp.trainable, budget,
                           exp.seq_len)
    for spec in specs:
      exp.check_run(spec, f'config.ddo.budgets ({budget:,} tokens)')
  return budgets


def ddo(exp: Experiment) -> list[dict]:
  budgets = check_ddo(exp)
  return [run_ddo_budget(exp, b, k, len(budgets)) for k, b in enumerate(budgets)]


# ------------------------------------------------------------------------------ prediction
def check_predict(config: ml_collections.ConfigDict) -> tuple[list[int], list[int]]:
  """The sorted DDO budgets and targets, checked before any DDO run trains."""
  budgets = sorted(_positive_tokens(config.ddo.budgets, 'config.ddo.budgets'))
  targets = sorted(_positive_tokens(config.predict.targets, 'config.predict.targets'))
  if len(budgets) < 2:
    raise ConfigError(f'config.ddo.budgets has {len(budgets)} budget; AutoScale needs two or more '
                      'DDO budgets to extrapolate.')
  return budgets, targets


def predict(config: ml_collections.ConfigDict, workdir: epath.Path,
            optima: Sequence[dict] | None = None) -> dict:
  """Fits AutoScaleModel to the DDO optima and predicts every target; writes autoscale/.

  `optima` (from ddo()) or, for mode=predict, budgets/*/optimum.json of the configured budgets.
  """
  budgets, targets = check_predict(config)
  if optima is None:
    missing = [b for b in budgets
               if not (workdir / 'budgets' / _tokens_key(b) / 'optimum.json').exists()]
    if missing:
      raise ConfigError(f'no DDO result for budget(s) {missing} in {workdir}/budgets; run '
                        '--config.mode=ddo (or autoscale) first.')
    optima = [_read_json(workdir / 'budgets' / _tokens_key(b) / 'optimum.json') for b in budgets]
  names = optima[0]['domains']
  problems = [DDOProblem.from_dict(o['problem']) for o in optima]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    model = AutoScaleModel.from_ddo(problems)
    intervals = {t: model.predict_weights_interval(
        t, level=float(config.predict.interval_level),
        samples=int(config.predict.interval_samples),
        noise=float(config.predict.noise) or None, seed=int(config.seed)) for t in targets}
  notes = sorted({str(w.message) for w in caught})
  for note in notes:
    logging.warning('[predict] %s', note)
  write = _write_json
  write(workdir / 'autoscale' / 'model.json', {'domains': names, **model.to_dict(),
                                               't': model.t.tolist(),
                                               'residual': model.residual,
                                               'held': [names[i] for i in model.held]})
  predictions = {
      'domains': names, 'budgets': budgets, 'notes': notes,
      'level': float(config.predict.interval_level),
      'optima': {_tokens_key(b): o['weights'] for b, o in zip(budgets, optima)},
      'targets': {_tokens_key(t): {
          'quantities': model.predict(t).tolist(), 'weights': iv.weights.tolist(),
          'low': iv.low.tolist(), 'high': iv.high.tolist()} for t, iv in intervals.items()},
      'geometric': [{'tokens': float(q.sum()), 'weights': (q / q.sum()).tolist()}
                    for q in (model.geometric_step(k) for k in range(3))],
  }
  write(workdir / 'autoscale' / 'predictions.json', predictions)
  for t in targets:
    logging.info('[predict] %s tokens: %s', f'{t:,}',
                 _fmt_weights(names, predictions['targets'][_tokens_key(t)]['weights']))
  return predictions


# ------------------------------------------------------------------------------ validation
def _validation_mixtures(exp: Experiment, predictions: dict, target: int) -> dict[str, np.ndarray]:
  mixtures = {'predicted': np.asarray(predictions['targets'][_tokens_key(target)]['weights'])}
  for name, weights in exp.config.validate.baselines.items():
    mixtures[name] = resolve_weights(weights, exp.mix_names, exp.natural[exp.trainable],
                                     f'config.validate.baselines.{name}')
  return mixtures


def tokens_to_reach(curve: Sequence[dict], level: float) -> float | None:
  """Tokens at which an objective curve (evals in order) first reaches `level` (linear between
  evaluations); None if it never does."""
  previous = None
  for point in curve:
    if point['objective'] <= level:
      if previous is None or previous['objective'] == point['objective']:
        return float(point['tokens'])
      frac = (previous['objective'] - level) / (previous['objective'] - point['objective'])
      return float(previous['tokens'] + frac * (point['tokens'] - previous['tokens']))
    previous = point
  return None


def validation_targets(config: ml_collections.ConfigDict) -> list[int]:
  predicted = _positive_tokens(config.predict.targets, 'config.predict.targets')
  targets = sorted(_positive_tokens(config.validate.targets or predicted,
                                    'config.validate.targets'))
  missing = [t for t in targets if t not in predicted]
  if missing:
    raise ConfigError(f'config.validate.targets {missing} are not among config.predict.targets; '
                      'add them there so they get a predicted mixture.')
  return targets


def _baseline_specs(exp: Experiment, mixtures: dict[str, np.ndarray], target: int) -> list[RunSpec]:
  return [RunSpec(name, exp.full(counts_from_weights(w, target, exp.seq_len)),
                  int(exp.config.seed),
                  int(exp.config.validate.eval_every)) for name, w in mixtures.items()]


def check_validation(exp: Experiment) -> None:
  """The baselines' data needs at every target, checked before DDO starts training."""
  if 'predicted' in exp.config.validate.baselines:
    raise ConfigError("config.validate.baselines may not be named 'predicted' (that is the "
                      'predicted mixture); rename the baseline.')
  for target in validation_targets(exp.config):
    baselines = {n: resolve_weights(w, exp.mix_names, exp.natural[exp.trainable],
                                    f'config.validate.baselines.{n}')
                 for n, w in exp.config.validate.baselines.items()}
    for spec in _baseline_specs(exp, baselines, target):
      exp.check_run(spec, f'config.validate.targets ({target:,} tokens)')


def validate(exp: Experiment, predictions: dict) -> list[dict]:
  """Target runs of the predicted mixture and the baselines; tokens saved against each."""
  targets = validation_targets(exp.config)
  summaries = []
  for k, target in enumerate(targets):
    mixtures = _validation_mixtures(exp, predictions, target)
    specs = _baseline_specs(exp, mixtures, target)
    for spec in specs:
      exp.check_run(spec, f'config.validate.targets ({target:,} tokens)')
    results = exp.train(specs, f'validate {k + 1}/{len(targets)} @ {target:,} tokens')
    predicted = results[0]
    runs = {}
    for (name, w), r in zip(mixtures.items(), results):
      final = r['objective']
      reach = tokens_to_reach(predicted['evals'], final) if name != 'predicted' else None
      total = r['evals'][-1]['tokens']
      runs[name] = {'weights': w.tolist(), 'fingerprint': r['fingerprint'], 'objective': final,
                    'val_ppl': r['val_ppl'], 'curve': r['evals'],
                    'predicted_reaches_at': reach,
                    'tokens_saved': None if reach is None else 1.0 - reach / total}
    summary = {'target': target, 'domains': exp.names, 'mixture_domains': exp.mix_names,
               'runs': runs}
    _write_json(exp.workdir / 'validation' / f'{_tokens_key(target)}.json', summary)
    for name, r in runs.items():
      if name != 'predicted':
        saved = r['tokens_saved']
        logging.info('[validate @ %s] predicted %.4f vs %s %.4f: %s', f'{target:,}',
                     predicted['objective'], name, r['objective'],
                     'baseline final objective not reached' if saved is None
                     else f'{100 * saved:.1f}% fewer tokens to reach it')
    summaries.append(summary)
  return summaries


# ------------------------------------------------------------------------------ modes
def train(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict:
  """mode=train: one run of config.train.tokens tokens with config.train.weights."""
  exp = Experiment(config, workdir)
  weights = resolve_weights(config.train.weights, exp.mix_names, exp.natural[exp.trainable],
                            'config.train.weights')
  tokens = _positive_tokens(config.train.tokens, 'config.train.tokens')[0]
  spec = RunSpec('train', exp.full(counts_from_weights(weights, tokens, exp.seq_len)),
                 int(config.seed),
                 int(config.train.eval_every))
  exp.check_run(spec, 'config.train.tokens')
  result = exp.train([spec], 'train')[0]
  logging.info('train: objective %.4f (%s) in %s; per-domain tokens %s', result['objective'],
               result['objective_kind'], exp.run_dir(spec),
               dict(zip(exp.names, result['trained_tokens'])))
  return result


def dry_run(config: ml_collections.ConfigDict, out: Callable[[str], None] = print) -> None:
  """Prints what the configured mode would train (runs, tokens, steps, devices); trains nothing.

  Needs no data: natural-proportion mixtures and data-size bounds are marked as such.
  """
  from autoscale_jax.data.mixture import num_steps
  from autoscale_jax.train import mesh as mesh_lib
  names = [d.name for d in config.data.domains]
  trainable = trainable_mask(config)
  mix_names = [n for n, t in zip(names, trainable) if t]
  seq_len, batch = int(config.data.seq_len), int(config.train.batch_size)
  try:
    mesh = mesh_lib.make_mesh(config.mesh)
    devices = f'{mesh.size} {jax.devices()[0].platform} device(s), mesh {dict(mesh.shape)}'
  except ConfigError as e:
    devices = f'{jax.device_count()} device(s) here; the configured mesh needs others ({e})'
  out(f'Plan for mode={config.mode}: {config.model.family}-{config.model.size}, '
      f'{len(names)} domains, seq_len {seq_len}, batch {batch} sequences '
      f'({batch * seq_len:,} tokens/step); {devices}.')
  rows = []

  def add(stage: str, name: str, counts: np.ndarray) -> None:
    rows.append((stage, name, int(counts.sum()) * seq_len, num_steps(counts, batch),
                 ' '.join(f'{int(c) * seq_len:,}' for c in counts)))

  def mixture(weights, field: str) -> tuple[np.ndarray, str]:
    """Weights over all domains; 'natural' needs the data, so it is shown as uniform."""
    if isinstance(weights, str) and weights == 'natural':
      weights, note = 'uniform', ' (natural: shares known after prepare)'
    else:
      note = ''
    full = np.zeros(len(names))
    full[trainable] = resolve_weights(weights, mix_names, np.ones(len(mix_names)), field)
    return full, note

  if config.mode == 'train':
    w, note = mixture(config.train.weights, 'config.train.weights')
    add('train', str(config.train.weights) + note,
        counts_from_weights(w, config.train.tokens, seq_len))
  if config.mode in ('ddo', 'autoscale'):
    natural = config.ddo.base_weights == 'natural'
    for b in sorted(_positive_tokens(config.ddo.budgets, 'config.ddo.budgets')):
      _, specs, _ = ddo_plan(config, names, np.ones(len(names)), trainable, b, seq_len)
      for spec in specs:
        add(f'ddo {b:,}', spec.name + (' (natural base: sizes after prepare)' if natural else ''),
            spec.counts)
  if config.mode == 'autoscale' and config.validate.enabled:
    for t in validation_targets(config):
      even, _ = mixture('uniform', 'config.validate')
      add(f'validate {t:,}', 'predicted (weights after DDO)', counts_from_weights(even, t, seq_len))
      for name, weights in config.validate.baselines.items():
        w, note = mixture(weights, f'config.validate.baselines.{name}')
        add(f'validate {t:,}', name + note, counts_from_weights(w, t, seq_len))
  if config.mode in ('predict', 'autoscale'):
    out('predict: targets ' + ', '.join(f'{t:,}' for t in sorted(
        _positive_tokens(config.predict.targets, 'config.predict.targets'))) + ' tokens')
  header = ('stage', 'run', 'tokens', 'steps', 'per-domain tokens (' + ' '.join(names) + ')')
  if rows:
    w0 = max(len(header[0]), *(len(r[0]) for r in rows))
    w1 = max(len(header[1]), *(len(r[1]) for r in rows))
    out(f'{header[0]:<{w0}}  {header[1]:<{w1}}  {header[2]:>15}  {header[3]:>9}  {header[4]}')
    for r in rows:
      out(f'{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]:>15,}  {r[3]:>9,}  {r[4]}')
    out(f'{len(rows)} runs, {sum(r[2] for r in rows):,} tokens, {sum(r[3] for r in rows):,} '
        'steps in all (runs already finished in the workdir are skipped when it trains).')


def dispatch(config: ml_collections.ConfigDict, workdir: str) -> None:
  mode = config.mode
  if mode not in MODES:
    raise ConfigError(f"config.mode is '{mode}'; use one of {' | '.join(MODES)}.")
  if config.get('dry_run', False):
    dry_run(config)
    return
  workdir = epath.Path(workdir)
  from autoscale_jax import report
  if mode == 'report':
    report.write_report(workdir)
    return
  with workdir_lock(workdir):
    if mode == 'prepare':
      Experiment(config, workdir)
    elif mode == 'train':
      train(config, workdir)
    elif mode == 'ddo':
      ddo(Experiment(config, workdir))
    elif mode == 'predict':
      predict(config, workdir)
    else:  # autoscale: prepare -> DDO per budget -> fit -> predict -> validate -> report
      check_predict(config)
      exp = Experiment(config, workdir)
      check_ddo(exp)
      if config.validate.enabled:
        check_validation(exp)
      predictions = predict(config, workdir, ddo(exp))
      if config.validate.enabled:
        validate(exp, predictions)
      path = report.write_report(workdir)
      print(f'AutoScale finished; report: {path}', file=sys.stderr)
