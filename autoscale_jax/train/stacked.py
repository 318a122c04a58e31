"""Many runs of one model as one program: the 2m+1 proxy runs of a DDO budget trained together.

The runs of a budget share the model, the optimizer and the config; they differ only in their
per-domain sequence counts, hence in their mixtures and lengths. Small proxies leave an
accelerator idle and pay per-step dispatch, data and logging costs once per run; stacked, they
pay them once per step for all runs:

  state    every leaf of the TrainState gets a leading run axis [N, ...] (params, Adam moments,
           step, domain_sequences); all runs start from the same initial state, as they do
           sequentially (the init rng does not depend on the mixture).
  step     the pure trainer.train_step for every run, each with its own batch and its own
           schedule length total_steps[r]. On accelerators (and whenever the run axis is
           sharded) the runs are vmapped: a run that has consumed its tokens (step >= its
           total_steps) still goes through the step on an all-padding batch, but its new state
           is discarded by a select, so it stops exactly where it would stop alone. On CPU a
           folded stack is a loop over the runs inside the one program instead (plain steps,
           finished runs skipped by lax.cond): XLA:CPU's batched matmuls are slower than the
           plain ones, and a CPU has no idle parallelism for the runs to fill (default_vectorize).
  data     the exact-count sampler run for every run's counts: run r's batch at step s is the
           one the single-run Loader gives it at step s (padding past its end).
  layout   the run axis is split over the mesh's batch axes (data, fsdp) whose sizes multiply to
           a divisor of N: each device then trains whole runs on its share of their batches, and
           those axes leave the runs' parameter shardings (a run is no longer fsdp-sharded over
           an axis that holds other runs; memory per device is no higher than folded). Where no
           batch axis divides N the run axis is replicated ("folded"): every run is
           data-parallel over the whole mesh exactly as it is alone, all N runs on every device.
           Padding N with dummy runs to make it divide was rejected: it wastes whole runs of
           compute (11 runs on 8 devices would train 16).
  results  every run's directory gets what loop.run writes (config.json, metrics.jsonl,
           TensorBoard events, a final checkpoint of that run's own state, and result.json
           built by the same loop.result_record), so a run's result does not say, and does not
           depend on, how it was trained.
  resume   the stacked state is checkpointed by one Checkpointer in
           <parent of the first run dir>/stack-<fingerprint>/checkpoints, where the fingerprint
           hashes the member runs' fingerprints in order; a killed stack resumes from its newest
           readable checkpoint. Finished runs (result.json present) are left out of a stack; once
           every member's result.json is written the stacked checkpoints are deleted.

Numerically a stacked run equals the same run alone up to float summation order (batched
matmuls, per-device partial sums); tests/test_stacked.py checks 1e-5 relative on CPU. All runs
of a stack share config.seed (initialisation, dropout, BERT masks, row order), so replicates
with other seeds go in other stacks. What it buys is measured by bench/proxy_runs.py.

Public entry points: run_stacked (always stacked), choose_stacking (stacked or sequential, with
the reason for the log line) and run_many (what the pipeline calls for one budget: chooses, logs,
then trains stacked or one run after another).
"""

import collections
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from autoscale_jax.data import loader as loader_lib
from autoscale_jax.data import mixture
from autoscale_jax import progress
from autoscale_jax.errors import ConfigError
from autoscale_jax.io import write_json_atomic
from autoscale_jax.train import loop
from autoscale_jax.train import mesh as mesh_lib
from autoscale_jax.train import metrics as metrics_lib
from autoscale_jax.train.checkpoint import Checkpointer
from autoscale_jax.train.trainer import Trainer, TrainState, eval_step, train_step

GiB = 2**30
# 'auto' stacks when the estimate is at most this fraction of the free device memory: the
# estimate ignores XLA's scratch buffers and fragmentation.
MEMORY_FRACTION = 0.8
# Without memory_stats (CPU), a device is assumed to get this share of the host's RAM, divided
# among the process's devices (fake CPU devices share one host).
CPU_MEMORY_FRACTION = 0.25
CPU_FALLBACK_BYTES = 2 * GiB  # when even the host RAM is unknown


# ------------------------------------------------------------------------------ layout
def _strip(target, axes: Sequence[str]):
  """A rule target or PartitionSpec entry without the given mesh axes (None when nothing left)."""
  if target is None:
    return None
  if isinstance(target, str):
    return None if target in axes else target
  kept = tuple(a for a in target if a not in axes)
  return kept or None


def run_axes_for(mesh: Mesh, rules: Sequence, num_runs: int) -> tuple[str, ...]:
  """Batch mesh axes to split the run axis over: the largest product of sizes dividing N.

  Only axes of size > 1 count; on ties the earlier (outer) axes win. () = fold (replicate).
  """
  candidates = [a for a in mesh_lib.batch_axes(rules) if mesh.shape[a] > 1]
  best, best_size = (), 1
  for k in range(1, len(candidates) + 1):
    for axes in itertools.combinations(candidates, k):
      size = int(np.prod([mesh.shape[a] for a in axes]))
      if num_runs % size == 0 and size > best_size:
        best, best_size = axes, size
  return best


@dataclasses.dataclass(frozen=True)
class StackLayout:
  """Where N stacked runs live on the mesh (see the module docstring, "layout")."""
  run_axes: tuple[str, ...]  # mesh axes the run axis is split over; () = folded (replicated)
  rules: tuple  # the logical rules without the run axes (params and activations of one run)
  inner_batch_axes: tuple[str, ...]  # mesh axes one run's batch is split over
  runs_per_device: int
  inner_dp: int  # devices one run's batch is split over
  state_shardings: TrainState
  abstract_state: TrainState  # ShapeDtypeStructs [N, ...] with their shardings


def stack_layout(trainer: Trainer, num_runs: int) -> StackLayout:
  """The stacked state's shardings: the trainer's, with the run axis in front."""
  mesh = trainer.mesh
  run_axes = run_axes_for(mesh, trainer.rules, num_runs)
  run_spec = None if not run_axes else run_axes[0] if len(run_axes) == 1 else run_axes
  # The mesh axes that hold runs leave the logical rules, so params and activations are not
  # also split over them (a mesh axis may appear once per PartitionSpec).
  rules = tuple((name, _strip(target, run_axes)) for name, target in trainer.rules)
  inner = mesh_lib.batch_axes(rules)

  def stacked(sharding: NamedSharding) -> NamedSharding:
    return NamedSharding(mesh, P(run_spec, *(_strip(e, run_axes) for e in sharding.spec)))

  shardings = jax.tree.map(stacked, trainer.state_shardings)
  return StackLayout(
      run_axes=run_axes, rules=rules, inner_batch_axes=inner,
      runs_per_device=num_runs // int(np.prod([mesh.shape[a] for a in run_axes])),
      inner_dp=int(np.prod([mesh.shape[a] for a in inner])), state_shardings=shardings,
      abstract_state=jax.tree.map(
          lambda a, sh: jax.ShapeDtypeStruct((num_runs,) + a.shape, a.dtype, sharding=sh),
          trainer.abstract_state, shardings))


def default_vectorize(mesh: Mesh) -> bool:
  """vmap the runs on accelerators; loop over them inside the program on CPU.

  A CPU step is compute-bound and XLA:CPU's batched matmuls are slower than N plain ones (the
  11-run vmapped tiny step measured ~1.1-2x the time of 11 single steps), so there the stacked
  program loops over the runs (one plain step each, skipping finished runs) and saves only the
  per-step and per-run fixed costs. A GPU/TPU step of a small proxy leaves the chip idle, and the
  vmapped step of N runs costs little more than one.
  """
  return mesh.devices.flat[0].platform != 'cpu'


class StackedTrainer:
  """A Trainer's model and optimizer, its state stacked over N runs, one jitted step for all.

  vectorize: vmap over the runs (True) or loop over them inside the program (False, only with
  the folded layout); None = default_vectorize. A sharded run axis is always vmapped (each
  device steps its own runs at once).
  """

  def __init__(self, trainer: Trainer, num_runs: int, vectorize: bool | None = None):
    if num_runs < 1:
      raise ValueError(f'num_runs must be >= 1, got {num_runs}.')
    self.trainer, self.num_runs = trainer, num_runs
    mesh = self.mesh = trainer.mesh
    self.layout = layout = stack_layout(trainer, num_runs)
    if vectorize is None:
      vectorize = default_vectorize(mesh)
    self.vectorize = bool(vectorize or layout.run_axes)
    self.run_axes, self.rules = layout.run_axes, layout.rules
    self.state_shardings, self.abstract_state = layout.state_shardings, layout.abstract_state
    run_spec = self.state_shardings.step.spec[0]
    inner = layout.inner_batch_axes or None
    self.batch_shardings = {'tokens': NamedSharding(mesh, P(run_spec, inner, None)),
                            'domain': NamedSharding(mesh, P(run_spec, inner)),
                            'mask': NamedSharding(mesh, P(run_spec, inner))}
    self.run_batch_sharding = NamedSharding(mesh, P(inner))  # one run's batch (validation)
    replicated = NamedSharding(mesh, P())
    spmd = {'spmd_axis_name': self.run_axes} if self.run_axes else {}

    step = functools.partial(train_step, per_example_loss=trainer.model.per_example_loss,
                             tx=trainer.tx, train_cfg=trainer.train_cfg,
                             grad_accum=trainer.grad_accum, num_domains=trainer.num_domains)
    vstep = jax.vmap(step, in_axes=(0, 0, None, 0), **spmd)

    def masked_step(states: TrainState, batches, rng, total_steps):
      new, metrics = vstep(states, batches, rng, total_steps)
      active = states.step < total_steps  # a finished run keeps its state, bit for bit

      def keep(n, o):
        return jnp.where(active.reshape(active.shape + (1,) * (n.ndim - 1)), n, o)
      return jax.tree.map(keep, new, states), metrics

    def looped_step(states: TrainState, batches, rng, total_steps):
      def one(r, carry):
        states, metrics = carry
        state, batch, total = (jax.tree.map(lambda x: x[r], t)
                               for t in (states, batches, total_steps))
        shapes = jax.eval_shape(step, state, batch, rng, total)[1]
        state, m = jax.lax.cond(  # a finished run is not stepped at all
            state.step < total, lambda: step(state, batch, rng, total),
            lambda: (state, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)))
        put = lambda xs, x: xs.at[r].set(x)  # noqa: E731
        return jax.tree.map(put, states, state), jax.tree.map(put, metrics, m)

      shapes = jax.eval_shape(vstep, states, batches, rng, total_steps)[1]
      metrics = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
      return jax.lax.fori_loop(0, num_runs, one, (states, metrics))

    self._train_step = jax.jit(masked_step if self.vectorize else looped_step,
                               in_shardings=(self.state_shardings, self.batch_shardings,
                                             replicated, replicated),
                               out_shardings=(self.state_shardings, replicated),
                               donate_argnums=(0,))
    evaluate = functools.partial(eval_step, per_example_loss=trainer.model.per_example_loss,
                                 num_domains=trainer.num_domains)
    if self.vectorize:
      veval = jax.vmap(evaluate, in_axes=(0, None, None), **spmd)
    else:
      def veval(params, batch, rng):
        return jax.lax.map(lambda p: evaluate(p, batch, rng), params)
    self._eval_step = jax.jit(veval,
                              in_shardings=(self.state_shardings.params,
                                            self.run_batch_sharding, replicated),
                              out_shardings=(replicated, replicated))
    self._stack = jax.jit(
        lambda s: jax.tree.map(lambda x: jnp.broadcast_to(x, (num_runs,) + x.shape), s),
        in_shardings=(trainer.state_shardings,), out_shardings=self.state_shardings)
    self._member = jax.jit(lambda s, r: jax.tree.map(lambda x: x[r], s),
                           in_shardings=(self.state_shardings, replicated),
                           out_shardings=trainer.state_shardings)

  def mesh_context(self):
    """Trainer.mesh_context (it reads .mesh and .rules) with this layout's rules."""
    return Trainer.mesh_context(self)  # type: ignore[arg-type]

  def init_state(self) -> TrainState:
    """N copies of the trainer's initial state (what every run starts from alone)."""
    single = self.trainer.init_state()
    with jax.set_mesh(self.mesh):
      return self._stack(single)

  def step(self, state: TrainState, batch, total_steps: np.ndarray):
    """One step of every run; run r is total_steps[r] long and frozen once it got there."""
    with self.mesh_context():
      return self._train_step(state, batch, self.trainer.rng,
                              np.asarray(total_steps, np.int32))

  def evaluate(self, params, batches) -> np.ndarray:
    """Per-run, per-domain mean validation loss, float64 [N, m]."""
    m = self.trainer.num_domains
    sums = np.zeros((self.num_runs, m), np.float64)
    counts = np.zeros((self.num_runs, m), np.float64)
    eval_rng = jax.random.fold_in(self.trainer.rng, 2)  # as Trainer.evaluate
    with self.mesh_context():
      for batch in batches:
        s, c = self._eval_step(params, batch, eval_rng)
        sums += np.asarray(jax.device_get(s), np.float64)
        counts += np.asarray(jax.device_get(c), np.float64)
    return np.where(counts > 0, sums / np.maximum(counts, 1), math.nan)

  def member(self, state: TrainState, r: int) -> TrainState:
    """Run r's state alone, laid out as the single-run Trainer lays it out."""
    with jax.set_mesh(self.mesh):
      return self._member(state, np.int32(r))

  def put_batch(self, batch: Mapping[str, np.ndarray]) -> dict:
    """Host arrays [N, B, ...] of all runs' global batches -> sharded arrays (single process)."""
    batch = dict(batch)
    batch.setdefault('mask', (np.asarray(batch['domain']) >= 0).astype(np.float32))
    return {k: jax.device_put(np.asarray(v), self.batch_shardings[k]) for k, v in batch.items()}


# ------------------------------------------------------------------------------ data
class StackedLoader(loader_lib.Loader):
  """Batches of all runs at once: [N, B] slots, run r's the single-run Loader's batch s.

  One Loader per member checks its counts against the stores (totals, epochs, max_epochs) as a
  single run would; this class only replaces `batch` (the sampler for every run, then this
  process's block of (run, slot) rows read from the memmaps) and inherits the prefetching
  iterator.
  """

  def __init__(self, stores: Mapping, counts: Sequence[np.ndarray], *, seed: int,
               batch_size: int, shardings: Mapping[str, NamedSharding],
               run_sharding: NamedSharding, start_step: int = 0, prefetch: int = 2,
               max_epochs: int = 1):
    # pylint: disable=super-init-not-called  # the members are the Loaders; see the docstring
    self.members = [loader_lib.Loader(stores, c, seed=seed, batch_size=batch_size,
                                      sharding=run_sharding, start_step=start_step, prefetch=0,
                                      max_epochs=max_epochs) for c in counts]
    self.names, self._stores = list(stores), list(stores.values())
    self.counts = np.stack([m.counts for m in self.members])
    self.rows = self.members[0].rows
    self.seed, self.batch_size, self.start_step = seed, batch_size, start_step
    self.prefetch = prefetch
    self.num_steps = max(m.num_steps for m in self.members)
    self.epochs = [m.epochs for m in self.members]
    self._shardings = shardings
    n = len(self.members)
    index = shardings['domain'].addressable_devices_indices_map((n, batch_size))
    self.local_runs = np.unique(np.concatenate([np.arange(n)[i[0]] for i in index.values()]))
    self.local_slots = np.unique(np.concatenate([np.arange(batch_size)[i[1]]
                                                 for i in index.values()]))

  def batch(self, step: int) -> dict:
    n, b = len(self.members), self.batch_size
    # One sampler call per run (not vmapped): the program single runs compiled, for any N.
    drawn = [mixture.sample(self.seed, self.counts[r], self.rows, step, b)
             for r in self.local_runs]
    domain = np.stack([np.asarray(d) for d, _ in drawn])[:, self.local_slots]
    row = np.stack([np.asarray(r) for _, r in drawn])[:, self.local_slots]
    # pylint: disable=protected-access  # the loader's row gather, shared rather than copied
    tokens = np.stack([loader_lib._gather(self._stores, 'train', d, r)
                       for d, r in zip(domain, row)])

    def put(key, local):
      return jax.make_array_from_process_local_data(self._shardings[key], local,
                                                    (n, b) + local.shape[2:])
    return {'tokens': put('tokens', tokens), 'domain': put('domain', domain.astype(np.int32)),
            'mask': put('domain', (domain >= 0).astype(np.float32))}


# ------------------------------------------------------------------------------ memory
def device_memory(device: jax.Device) -> tuple[int, str]:
  """Free bytes of one device and where the figure comes from."""
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  # backends without the call
    stats = None
  if stats and stats.get('bytes_limit'):
    free = int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))
    return free, 'memory_stats'
  try:
    host = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (AttributeError, ValueError, OSError):
    return CPU_FALLBACK_BYTES, 'default'
  share = int(host * CPU_MEMORY_FRACTION / max(len(jax.local_devices()), 1))
  return share, f'{CPU_MEMORY_FRACTION:.0%} of host RAM per {len(jax.local_devices())} devices'


def _shard_bytes(abstract) -> int:
  return sum(int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize
             for a in jax.tree.leaves(abstract))


def estimate_memory(trainer: Trainer, num_runs: int,
                    vectorize: bool | None = None) -> dict[str, int]:
  """Per-device bytes of N stacked runs: state (params + Adam moments), gradients, activations.

  State and gradients are exact from the shapes and the stacked layout; activations are a
  transformer rule of thumb per token and layer (residual stream, attention and MLP inputs,
  attention scores, logits) for the micro-batch each device holds per run. Vmapped runs
  (`vectorize`, as StackedTrainer decides it) hold every run's gradients and activations at
  once; a loop over the runs one run's. With remat, one residual per layer plus one layer's
  activations are kept.
  """
  layout = stack_layout(trainer, num_runs)
  if vectorize is None:
    vectorize = default_vectorize(trainer.mesh)
  at_once = layout.runs_per_device if vectorize or layout.run_axes else 1
  state = _shard_bytes(layout.abstract_state)
  grads = _shard_bytes(layout.abstract_state.params) // layout.runs_per_device * at_once
  cfg = trainer.model.config
  d, layers, heads = cfg.d_model, cfg.num_layers, cfg.num_heads
  d_ff = getattr(cfg, 'd_ff', 4 * d)
  length = trainer.model.row_len - (trainer.model.family == 'gpt2')
  micro = int(trainer.train_cfg.batch_size) // trainer.grad_accum
  tokens = micro // layout.inner_dp * length
  itemsize = jnp.dtype(cfg.dtype).itemsize
  per_layer = 10 * d + 2 * d_ff + 2 * heads * length  # values per token
  if cfg.remat == 'none':
    body = tokens * itemsize * layers * per_layer
  else:
    body = tokens * itemsize * (layers * 2 * d + per_layer)
  logits = tokens * cfg.vocab_size * 4 * 2  # float32 logits and their gradient
  activations = (body + logits) * at_once
  return {'state': state, 'grads': grads, 'activations': activations,
          'total': state + grads + activations}


def _parse_stack_runs(value) -> str:
  """config.train.stack_runs -> 'auto' | 'yes' | 'no' (bools, or strings from the command line)."""
  if isinstance(value, (bool, np.bool_)):
    return 'yes' if value else 'no'
  text = str(value).strip().lower()
  if text in ('auto', ''):
    return 'auto'
  if text in ('true', '1', 'yes'):
    return 'yes'
  if text in ('false', '0', 'no'):
    return 'no'
  raise ConfigError(f"config.train.stack_runs is {value!r}; use 'auto', True or False.")


def choose_stacking(config: ml_collections.ConfigDict, num_runs: int, trainer: Trainer,
                    mesh: Mesh | None = None) -> tuple[bool, str]:
  """Whether to train `num_runs` runs stacked, and why (one line for the log).

  config.train.stack_runs: 'auto' (default) stacks when the per-device estimate of N stacked
  runs (estimate_memory) is at most MEMORY_FRACTION of the device's free memory (memory_stats;
  on CPU a conservative share of the host RAM); True always stacks (warning in the reason when
  it does not fit the estimate); False never does.
  """
  mode = _parse_stack_runs(config.train.get('stack_runs', 'auto'))
  if num_runs < 2:
    plural = '' if num_runs == 1 else 's'
    return False, f'sequential: {num_runs} run{plural} to train, nothing to stack'
  if mode == 'no':
    return False, (f'sequential: {num_runs} runs one after another '
                   '(config.train.stack_runs=False)')
  mesh = mesh or trainer.mesh
  device = next((d for d in mesh.devices.flat if d.process_index == jax.process_index()),
                mesh.devices.flat[0])
  est = estimate_memory(trainer, num_runs)['total']
  free, source = device_memory(device)
  fits = est <= MEMORY_FRACTION * free
  figures = f'est. {est / GiB:.2f} GiB of {free / GiB:.2f} GiB per device ({source})'
  if mode == 'yes':
    note = '' if fits else f'; over {MEMORY_FRACTION:.0%} of it, may run out of memory'
    return True, f'stacking {num_runs} runs (config.train.stack_runs=True): {figures}{note}'
  if fits:
    return True, f'stacking {num_runs} runs: {figures}'
  return False, (f'sequential: {num_runs} stacked runs need {figures}, more than '
                 f'{MEMORY_FRACTION:.0%}; set config.train.stack_runs=True to force')


# ------------------------------------------------------------------------------ trainers
_CACHE: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 4


def _cached(key: tuple, build):
  """Trainers of the same config and mesh are reused, so repeated budgets compile once."""
  if key not in _CACHE:
    _CACHE[key] = build()
    while len(_CACHE) > _CACHE_SIZE:
      _CACHE.popitem(last=False)
  _CACHE.move_to_end(key)
  return _CACHE[key]


def _trainer_key(config, tokenizer, num_domains: int, mesh: Mesh | None) -> tuple:
  mesh_key = None if mesh is None else (tuple(d.id for d in mesh.devices.flat),
                                        tuple(mesh.shape.items()))
  return (config.to_json_best_effort(sort_keys=True), tokenizer.hash, tokenizer.vocab_size,
          num_domains, mesh_key)


def shared_trainer(config, tokenizer, num_domains: int, mesh: Mesh | None = None) -> Trainer:
  """loop.build_trainer, built once per (config, tokenizer, mesh) in this process."""
  key = ('trainer',) + _trainer_key(config, tokenizer, num_domains, mesh)
  return _cached(key, lambda: loop.build_trainer(config, tokenizer, num_domains, mesh))


def shared_stacked_trainer(trainer: Trainer, num_runs: int) -> StackedTrainer:
  """StackedTrainer(trainer, num_runs), built once per trainer and N in this process."""
  return _cached(('stacked', id(trainer), num_runs), lambda: StackedTrainer(trainer, num_runs))


# ------------------------------------------------------------------------------ runs
def _pending(config, run_dirs, counts, names, stores,
             tokenizer) -> tuple[list[int], dict[int, dict]]:
  """Indices of the runs to train, and the results of the finished ones.

  A finished run is read back by loop.run, which refuses a result.json of another config.
  """
  done, pending = {}, []
  for i, run_dir in enumerate(run_dirs):
    if (run_dir / 'result.json').exists():
      done[i] = loop.run(config, run_dir, counts=counts[i], stores=stores, tokenizer=tokenizer,
                         name=names[i])
    else:
      pending.append(i)
  return pending, done


def _check_lists(run_dirs, counts, names) -> None:
  if not (len(run_dirs) == len(counts) == len(names)):
    raise ValueError(f'run_dirs ({len(run_dirs)}), counts ({len(counts)}) and names '
                     f'({len(names)}) must have one entry per run.')
  if len(set(map(str, run_dirs))) != len(run_dirs):
    raise ValueError('run_dirs must be distinct: two runs cannot share a directory.')


def stack_fingerprint(fingerprints: Sequence[str]) -> str:
  """Identifies a stacked state: its member runs' fingerprints, in stack order."""
  return hashlib.sha256(json.dumps(list(fingerprints)).encode()).hexdigest()[:16]


def run_stacked(config: ml_collections.ConfigDict, run_dirs: list[epath.Path], *,
                counts: list[np.ndarray], stores: dict, tokenizer, names: list[str],
                mesh: Mesh | None = None) -> list[dict]:
  """Trains runs i = 0..N-1 (counts[i] sequences of each domain, in run_dirs[i]) as one stack.

  Returns every run's result (loop.run's result.json); runs already finished are read back and
  left out of the stack, and a single remaining run is trained by loop.run.
  """
  run_dirs = [epath.Path(d) for d in run_dirs]
  _check_lists(run_dirs, counts, names)
  trainer = shared_trainer(config, tokenizer, len(stores), mesh)
  pending, done = _pending(config, run_dirs, counts, names, stores, tokenizer)
  return _train(config, run_dirs, pending, done, counts=counts, stores=stores,
                tokenizer=tokenizer, names=names, trainer=trainer)


def run_many(config: ml_collections.ConfigDict, run_dirs: list[epath.Path], *,
             counts: list[np.ndarray], stores: dict, tokenizer, names: list[str],
             mesh: Mesh | None = None, trainer: Trainer | None = None) -> list[dict]:
  """The runs of one budget, stacked or one after another as choose_stacking decides (logged).

  `trainer` (loop.build_trainer of the same config) is shared with the caller's other runs.
  """
  run_dirs = [epath.Path(d) for d in run_dirs]
  _check_lists(run_dirs, counts, names)
  trainer = trainer or shared_trainer(config, tokenizer, len(stores), mesh)
  pending, done = _pending(config, run_dirs, counts, names, stores, tokenizer)
  stack, reason = choose_stacking(config, len(pending), trainer)
  if pending:
    logging.info('%s', reason)
  if stack:
    return _train(config, run_dirs, pending, done, counts=counts, stores=stores,
                  tokenizer=tokenizer, names=names, trainer=trainer)
  for i in pending:
    done[i] = loop.run(config, run_dirs[i], counts=counts[i], stores=stores,
                       tokenizer=tokenizer, trainer=trainer, name=names[i])
  return [done[i] for i in range(len(run_dirs))]


def _train(config, run_dirs, pending, done, *, counts, stores, tokenizer, names,
           trainer) -> list[dict]:
  """The pending runs as one stack (one alone by loop.run); all results in run order."""
  if len(pending) == 1:
    i = pending[0]
    done[i] = loop.run(config, run_dirs[i], counts=counts[i], stores=stores,
                       tokenizer=tokenizer, trainer=trainer, name=names[i])
  elif pending:
    results = _train_stack(config, [run_dirs[i] for i in pending],
                           [np.asarray(counts[i], np.int64) for i in pending],
                           [names[i] for i in pending], stores, tokenizer, trainer)
    done.update(zip(pending, results))
  return [done[i] for i in range(len(run_dirs))]


@dataclasses.dataclass
class _Member:
  """What the stacked loop keeps per run."""
  name: str
  run_dir: epath.Path
  counts: np.ndarray
  fingerprint: str
  description: dict
  total_steps: int
  writer: metrics_lib.MetricWriter = None
  evals: list = None
  meter: metrics_lib.Throughput = None


def _train_stack(config, run_dirs, counts, names, stores, tokenizer, trainer) -> list[dict]:
  tcfg = config.train
  domains = list(stores)
  seq_len, batch_size = int(config.data.seq_len), int(tcfg.batch_size)
  members = [_Member(name=n, run_dir=d, counts=c,
                     fingerprint=loop.run_fingerprint(config, c, tokenizer.hash),
                     description=loop.run_description(config, c, tokenizer.hash),
                     total_steps=loop.checked_num_steps(n, c, batch_size))
             for n, d, c in zip(names, run_dirs, counts)]
  n = len(members)
  totals = np.array([m.total_steps for m in members], np.int64)
  last = int(totals.max())
  fingerprint = stack_fingerprint([m.fingerprint for m in members])
  label = f'stack-{fingerprint}'
  stack_dir = run_dirs[0].parent / label
  stacked = shared_stacked_trainer(trainer, n)
  mesh, model = trainer.mesh, trainer.model

  # Data first: bad counts (too few rows, too many epochs) stop before anything is written.
  data = StackedLoader(stores, counts, seed=config.seed, batch_size=batch_size,
                       shardings=stacked.batch_shardings,
                       run_sharding=trainer.batch_shardings['domain'],
                       prefetch=config.data.prefetch, max_epochs=config.data.max_epochs)

  # Restore or initialise the stacked state (refused before anything is written if foreign).
  ckpt = Checkpointer(stack_dir / 'checkpoints', fingerprint=fingerprint,
                      every=tcfg.checkpoint_every, keep=tcfg.keep_checkpoints,
                      use_async=tcfg.async_checkpoint,
                      description={m.name: m.description for m in members})
  restored = ckpt.restore(stacked.abstract_state)
  if jax.process_index() == 0:
    write_json_atomic(stack_dir / 'stack.json', {
        'fingerprint': fingerprint, 'runs': [
            {'name': m.name, 'dir': str(m.run_dir), 'fingerprint': m.fingerprint,
             'total_steps': m.total_steps} for m in members]})
  for m in members:
    m.run_dir.mkdir(parents=True, exist_ok=True)
    loop.write_run_config(m.run_dir, config, counts=m.counts, names=domains,
                          fingerprint=m.fingerprint, total_steps=m.total_steps,
                          stack={'fingerprint': fingerprint, 'dir': str(stack_dir)})
  if restored is None:
    state, start = stacked.init_state(), 0
    logging.info('[%s] %d runs stacked, no checkpoint; starting from scratch (%d-%d steps, %d '
                 'devices, mesh %s, run axis on %s).', label, n, totals.min(), last, mesh.size,
                 dict(mesh.shape), stacked.run_axes or 'no mesh axis (folded)')
  else:
    state, meta = restored
    start = int(meta['step'])
    logging.info('[%s] resuming %d stacked runs from the checkpoint at step %d of %d.', label,
                 n, start, last)
  peak = metrics_lib.device_peak_flops(tcfg.peak_flops) * mesh.size
  for m in members:
    m.writer = metrics_lib.MetricWriter(m.run_dir)
    m.evals = loop.resume_records(m.writer, min(start, m.total_steps), m.total_steps)
    m.meter = metrics_lib.Throughput(model.flops_per_token, peak, m.total_steps)
    m.meter.start(min(start, m.total_steps))
  data.start_step = start
  val = loader_lib.val_batches(stores, int(config.eval.batch_size), stacked.run_batch_sharding)

  def evaluate(step: int, which: list[int], at=None) -> None:
    losses = stacked.evaluate(state.params, val)
    for r in which:
      m = members[r]
      at_step = int(step if at is None else at[r])
      m.evals.append(loop.record_eval(m.writer, m.name, at_step, domains, losses[r],
                                      config.eval))

  def close_writers() -> None:
    for m in members:
      m.writer.close()

  tokens_per_run_step = batch_size * seq_len
  stack_meter = metrics_lib.Throughput(model.flops_per_token, peak, last)
  stack_meter.start(start)
  stack_tokens, last_log = 0, start
  t0 = time.time()
  step = start
  with loop._Preemption() as preemption:  # pylint: disable=protected-access
    for batch in data:
      state, metrics = stacked.step(state, batch, totals)
      step += 1
      active = [r for r in range(n) if step <= totals[r]]  # runs that trained at this step
      stack_tokens += len(active) * tokens_per_run_step
      stop = preemption.reached(step) and step < last
      logged = [r for r in active if step % tcfg.log_every == 0 or step == totals[r]]
      saving = ckpt.due(step, final=step == last or stop)
      if logged or saving:  # never log, or checkpoint, a non-finite state (as loop.run)
        metrics = jax.device_get(metrics)
        for r in (active if saving else logged):
          for key, what in (('loss', 'training loss'), ('grad_norm', 'gradient norm')):
            if not np.isfinite(metrics[key][r]):
              raise loop.diverged(members[r].name, metrics[key][r], step, ckpt, what)
      for r in logged:
        m = members[r]
        speed = m.meter.update(step, tokens_per_run_step)
        m.writer.write(step, {'loss': metrics['loss'][r], 'grad_norm': metrics['grad_norm'][r],
                              'lr': metrics['lr'][r], **speed})
      if logged and (step % tcfg.log_every == 0 or step == last):
        speed = stack_meter.update(step, stack_tokens / max(step - last_log, 1))
        stack_tokens, last_log = 0, step
        losses = np.asarray(metrics['loss'])[active]
        mfu = f"  mfu {100 * speed['mfu']:.1f}%" if 'mfu' in speed else ''
        logging.info('[%s] step %d/%d  %d of %d runs active  loss %.4f-%.4f  %.0f tok/s%s  '
                     'eta %s', label, step, last, len(active), n, losses.min(), losses.max(),
                     speed['tokens_per_s'], mfu, progress.format_eta(speed['eta_s']))
      if tcfg.eval_every and step % tcfg.eval_every == 0:
        which = [r for r in active if step < totals[r]]
        if which:
          evaluate(step, which)
      if saving:  # metrics first, as loop.run: they may run past the checkpoint, never short
        for m in members:
          m.writer.flush()
        ckpt.maybe_save(step, state, final=True)
      if stop:
        ckpt.close()
        close_writers()
        raise SystemExit(f'[{label}] preempted (SIGTERM): checkpoint of {n} stacked runs saved '
                         f'at step {step}; rerun the same command to resume.')

  # A finished run's state froze at its own last step: evaluate them all now, at those steps.
  evaluate(last, list(range(n)), at=totals)
  ckpt.close()
  close_writers()
  wall = time.time() - t0
  seen = np.asarray(jax.device_get(state.domain_sequences), np.int64)
  # Each run's directory also gets its own final checkpoint, as loop.run leaves it.
  saved = []
  for r, m in enumerate(members):
    own = Checkpointer(m.run_dir / 'checkpoints', fingerprint=m.fingerprint,
                       every=tcfg.checkpoint_every, keep=tcfg.keep_checkpoints,
                       use_async=tcfg.async_checkpoint, description=m.description)
    own.maybe_save(m.total_steps, stacked.member(state, r), final=True)
    saved.append(own)
  for own in saved:
    own.close()
  results = []
  for r, m in enumerate(members):
    result = loop.result_record(config, name=m.name, fingerprint=m.fingerprint, names=domains,
                                counts=m.counts, seen=seen[r], stores=stores,
                                steps=m.total_steps, evals=m.evals, wall_s=wall)
    if jax.process_index() == 0:
      write_json_atomic(m.run_dir / 'result.json', result)
    results.append(result)
  if jax.process_index() == 0:  # every member has its result and its own final checkpoint
    stack_dir.rmtree(missing_ok=True)
  logging.info('[%s] %d stacked runs finished in %.1fs.', label, n, wall)
  return results
