"""Many runs of one model as one program: e.g. the 2m+1 proxy runs of a DDO budget together.

The runs share the model, the optimizer and the config; they differ in their per-domain sequence
counts (hence mixtures and lengths) and may differ in their seeds. Small proxies leave an
accelerator idle and pay per-step dispatch, data and logging costs once per run; stacked, they
pay them once per step for all runs:

  state    every leaf of the TrainState gets a leading run axis [N, ...] (params, Adam moments,
           step, domain_sequences); run r starts from the state its own seed gives it alone.
  step     the pure trainer.train_step for every run, each with its own key, batch and schedule
           horizon[r] (its length first). On accelerators (and whenever the run axis is sharded)
           the runs are vmapped: a run that has consumed its tokens (step >= its length) still
           goes through the step on an all-padding batch, but its new state is discarded by a
           select, so it stops exactly where it would stop alone. On CPU a folded stack is a
           loop over the runs inside the one program instead (plain steps, finished runs skipped
           by lax.cond): XLA:CPU's batched matmuls are slower than the plain ones, and a CPU has
           no idle parallelism for the runs to fill (default_vectorize).
  layout   the run axis is split over the mesh's batch axes (data, fsdp) whose sizes multiply to
           a divisor of N: each device then trains whole runs on its share of their batches, and
           those axes leave the runs' parameter shardings (a run is no longer fsdp-sharded over
           an axis that holds other runs; memory per device is no higher than folded). Where no
           batch axis divides N the run axis is replicated ("folded"): every run is
           data-parallel over the whole mesh exactly as it is alone, all N runs on every device.
           Padding N with dummy runs to make it divide was rejected: it wastes whole runs of
           compute (11 runs on 8 devices would train 16).

Numerically a stacked run equals the same run alone up to float summation order (batched
matmuls, per-device partial sums); tests/test_stacked.py checks 1e-5 relative on CPU. The data
of a stack is data/loader.StackedLoader, the choice stacked-or-not train/memory.py, and the
driver with its checkpoints train/runs.py. What stacking buys is measured by bench/proxy_runs.py.
"""

import dataclasses
import functools
import itertools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from autoscale_jax.train import mesh as mesh_lib
from autoscale_jax.train.trainer import (
  EVAL_STATS,
  Trainer,
  TrainState,
  abstract_key,
  as_horizon,
  eval_step,
  lower_program,
  merge_eval,
  mesh_context,
  train_step,
)


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

  Every call takes the runs' keys, [N] stacked run_key(seed)s, so a stack may span seeds.
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
    vstep = jax.vmap(step, in_axes=(0, 0, 0, 0), **spmd)

    def masked_step(states: TrainState, batches, keys, horizons):
      new, metrics = vstep(states, batches, keys, horizons)
      active = states.step < horizons[:, 0]  # a finished run keeps its state, bit for bit

      def keep(n, o):
        return jnp.where(active.reshape(active.shape + (1,) * (n.ndim - 1)), n, o)
      return jax.tree.map(keep, new, states), metrics

    def looped_step(states: TrainState, batches, keys, horizons):
      def one(r, carry):
        states, metrics = carry
        state, batch, key, horizon = (jax.tree.map(lambda x: x[r], t)
                                      for t in (states, batches, keys, horizons))
        shapes = jax.eval_shape(step, state, batch, key, horizon)[1]
        state, m = jax.lax.cond(  # a finished run is not stepped at all
            state.step < horizon[0], lambda: step(state, batch, key, horizon),
            lambda: (state, jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)))
        put = lambda xs, x: xs.at[r].set(x)  # noqa: E731
        return jax.tree.map(put, states, state), jax.tree.map(put, metrics, m)

      shapes = jax.eval_shape(vstep, states, batches, keys, horizons)[1]
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
      veval = jax.vmap(evaluate, in_axes=(0, None, 0), **spmd)
    else:
      def veval(params, batch, keys):
        return jax.lax.map(lambda pk: evaluate(pk[0], batch, pk[1]), (params, keys))
    self._eval_step = jax.jit(veval,
                              in_shardings=(self.state_shardings.params,
                                            self.run_batch_sharding, replicated),
                              out_shardings=replicated)
    self._init = jax.jit(jax.vmap(trainer.make_state), in_shardings=(replicated,),
                         out_shardings=self.state_shardings)
    self._member = jax.jit(lambda s, r: jax.tree.map(lambda x: x[r], s),
                           in_shardings=(self.state_shardings, replicated),
                           out_shardings=trainer.state_shardings)

  def abstract_inputs(self, eval_batch_size: int) -> dict[str, tuple]:
    """Trainer.abstract_inputs for the stack: every argument with the runs' leading axis."""
    replicated = NamedSharding(self.mesh, P())
    runs, trainer = (self.num_runs,), self.trainer
    keys = abstract_key(replicated, runs)
    shared = {k: self.run_batch_sharding for k in self.batch_shardings}
    return {'init': (keys,),
            'train_step': (self.abstract_state, trainer.abstract_batch(
                int(trainer.train_cfg.batch_size), runs, self.batch_shardings), keys,
                           jax.ShapeDtypeStruct(runs + (3,), jnp.int32, sharding=replicated)),
            'eval_step': (self.abstract_state.params,
                          trainer.abstract_batch(eval_batch_size, shardings=shared), keys)}

  def lower(self, program: str, eval_batch_size: int) -> jax.stages.Lowered:
    """Program 'init', 'train_step' or 'eval_step' of the stack, lowered (Trainer.lower)."""
    return lower_program(self, program, self.abstract_inputs(eval_batch_size)[program],
                         self.rules)

  def init_state(self, keys: jax.Array) -> TrainState:
    """Run r's initial state from keys[r], as Trainer.init_state gives it alone."""
    with jax.set_mesh(self.mesh):
      return self._init(jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys))

  def step(self, state: TrainState, batch, keys: jax.Array, horizons: np.ndarray):
    """One step of every run; run r has schedule horizons[r] (Trainer.step: int32[3] or its
    total steps) and is frozen once it got to its end."""
    horizons = as_horizon(self.trainer.train_cfg, horizons, self.num_runs)
    with mesh_context(self.mesh, self.rules):
      return self._train_step(state, batch, keys, horizons)

  def evaluate(self, params, batches, keys: jax.Array) -> np.ndarray:
    """Per-run, per-domain EVAL_STATS, float64 [N, m, 6]."""
    stats = np.zeros((self.num_runs, self.trainer.num_domains, len(EVAL_STATS)), np.float64)
    eval_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)  # as Trainer.evaluate
    with mesh_context(self.mesh, self.rules):
      for batch in batches:
        stats = merge_eval(stats, jax.device_get(self._eval_step(params, batch, eval_keys)))
    return stats

  def member(self, state: TrainState, r: int) -> TrainState:
    """Run r's state alone, laid out as the single-run Trainer lays it out."""
    with jax.set_mesh(self.mesh):
      return self._member(state, np.int32(r))

  def put_batch(self, batch: Mapping[str, np.ndarray]) -> dict:
    """Host arrays [N, B, ...] of all runs' global batches -> sharded arrays (single process)."""
    batch = dict(batch)
    batch.setdefault('mask', (np.asarray(batch['domain']) >= 0).astype(np.float32))
    return {k: jax.device_put(np.asarray(v), self.batch_shardings[k]) for k, v in batch.items()}
