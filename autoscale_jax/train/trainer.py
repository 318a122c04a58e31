"""Sharded training: pure train/eval steps, then a Trainer that jits them with explicit shardings.

Pure functions first (loss with gradient accumulation, one optimizer step, per-domain eval sums,
the objective); `Trainer` binds them to a model, an optimizer and a mesh. The driver that reads
data, restores checkpoints and loops lives in `train/loop.py`.
"""

import contextlib
import dataclasses
import functools
import math
from collections.abc import Iterable, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from autoscale_jax.errors import ConfigError
from autoscale_jax.models import ModelSpec
from autoscale_jax.train import mesh as mesh_lib, optim

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any
  opt_state: Any
  domain_sequences: jax.Array  # int32[m]: sequences of each domain trained on so far


# ------------------------------------------------------------------------------ pure functions
def split_micro_batches(batch: Batch, grad_accum: int) -> Batch:
  """[B, ...] -> [grad_accum, B / grad_accum, ...]: micro-batch k holds rows k, k + grad_accum,
  ... so that every device keeps its own rows; its key is fold_in(step key, k)."""
  def split(x):
    x = x.reshape((x.shape[0] // grad_accum, grad_accum) + x.shape[1:])
    return jnp.swapaxes(x, 0, 1)
  return jax.tree.map(split, batch)


def loss_and_grads(params, batch: Batch, rng: jax.Array, *, per_example_loss, grad_accum: int):
  """Summed loss, token count and summed gradients over `grad_accum` micro-batches.

  Sums (not means) are accumulated and divided once by the total token count, so accumulation
  is the same mathematical step as one big batch, also when examples carry different counts.
  """
  def micro(params, mb, key):
    def f(p):
      loss_sum, count = per_example_loss(p, mb, key, train=True)
      return loss_sum.sum(), count.sum()
    (loss_sum, count), grads = jax.value_and_grad(f, has_aux=True)(params)
    return loss_sum, count, grads

  if grad_accum == 1:
    return micro(params, batch, rng)
  micro_batches = split_micro_batches(batch, grad_accum)
  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)

  def body(carry, xs):
    k, mb = xs
    loss_sum, count, grads = micro(params, mb, jax.random.fold_in(rng, k))
    acc_loss, acc_count, acc_grads = carry
    acc_grads = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc_grads, grads)
    return (acc_loss + loss_sum, acc_count + count, acc_grads), None

  init = (jnp.float32(0), jnp.float32(0), zeros)
  (loss_sum, count, grads), _ = jax.lax.scan(body, init, (jnp.arange(grad_accum), micro_batches))
  return loss_sum, count, grads


def as_horizon(train_cfg: ml_collections.ConfigDict, value, runs: int = 0) -> np.ndarray:
  """optim.horizon's int32[3] (int32[runs, 3] for a stack) from horizons as they are, or from
  the runs' total steps (int, or int[runs]), with the config's warmup."""
  value = np.asarray(value)
  if value.ndim == (1 if runs else 0):
    return np.stack([optim.horizon(train_cfg, int(t)) for t in value.reshape(-1)]).reshape(
        value.shape + (3,))
  return value.astype(np.int32)


def train_step(state: TrainState, batch: Batch, rng: jax.Array, horizon: jax.Array, *,
               per_example_loss, tx: optax.GradientTransformation,
               train_cfg: ml_collections.ConfigDict, grad_accum: int, num_domains: int):
  """One optimizer step on the global batch; pure, so it is the same on 1 or 1000 devices.

  `horizon` (optim.horizon: the run's length, warmup and cooldown start) is an argument, not a
  constant, so runs of any length share the compiled step.
  """
  step_rng = jax.random.fold_in(rng, state.step)
  loss_sum, count, grads = loss_and_grads(state.params, batch, step_rng,
                                          per_example_loss=per_example_loss,
                                          grad_accum=grad_accum)
  count = jnp.maximum(count, 1.0)
  grads = jax.tree.map(lambda g, p: (g / count).astype(p.dtype), grads, state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  lr = optim.learning_rate(train_cfg, state.step, horizon)
  params = jax.tree.map(lambda p, u: (p - lr * u).astype(p.dtype), state.params, updates)
  mask = batch.get('mask', jnp.ones(batch['domain'].shape, jnp.float32))
  seen = jax.ops.segment_sum((mask > 0).astype(jnp.int32), batch['domain'],
                             num_segments=num_domains)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            domain_sequences=state.domain_sequences + seen)
  metrics = {'loss': loss_sum / count, 'grad_norm': optax.tree.norm(grads), 'lr': lr,
             'tokens': count}
  return new_state, metrics


# Per-domain statistics of an evaluation (the last axis of eval_step's output): the token-level
# loss sum and token count, then over sequences their count, the sum of their mean losses, the
# sum of squared deviations of those from the domain's mean (combined across batches by
# merge_eval, which keeps it exact in float32) and the sum of their perplexities.
EVAL_STATS = ('loss_sum', 'tokens', 'sequences', 'seq_loss', 'seq_loss_m2', 'seq_ppl')
PERPLEXITIES = ('token', 'sequence')


def eval_step(params, batch: Batch, rng: jax.Array, *, per_example_loss, num_domains: int):
  """EVAL_STATS per domain of one validation batch, [num_domains, 6] (padding rows masked)."""
  loss_sum, count = per_example_loss(params, batch, rng, train=False)
  real = count > 0
  seq_loss = jnp.where(real, loss_sum / jnp.maximum(count, 1), 0.0)
  domain = jnp.where(real, batch['domain'], num_domains)  # padding -> overflow segment

  def per_domain(values):
    return jax.ops.segment_sum(values, domain, num_segments=num_domains + 1)

  n = per_domain(real.astype(loss_sum.dtype))
  mean = per_domain(seq_loss) / jnp.maximum(n, 1)
  m2 = per_domain(jnp.where(real, (seq_loss - mean[domain])**2, 0.0))
  columns = [per_domain(loss_sum), per_domain(count), n, per_domain(seq_loss), m2,
             per_domain(jnp.where(real, jnp.exp(seq_loss), 0.0))]
  return jnp.stack(columns, axis=-1)[:num_domains]


def merge_eval(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Two EVAL_STATS arrays [..., m, 6] of disjoint sequences -> the stats of all of them."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  out = a + b
  n_a, n_b = a[..., 2], b[..., 2]
  n = np.maximum(n_a + n_b, 1)
  with np.errstate(divide='ignore', invalid='ignore'):
    delta = np.where((n_a > 0) & (n_b > 0), b[..., 3] / np.maximum(n_b, 1)
                     - a[..., 3] / np.maximum(n_a, 1), 0.0)
  out[..., 4] = a[..., 4] + b[..., 4] + delta**2 * n_a * n_b / n
  return out


def summarize_eval(stats: np.ndarray) -> dict[str, np.ndarray]:
  """From EVAL_STATS [..., m, 6]: per domain the token-mean loss, the two perplexities and the
  standard error of the loss over the validation sequences (nan below 2 sequences)."""
  loss_sum, tokens, n, _, m2, ppl = np.moveaxis(np.asarray(stats, np.float64), -1, 0)
  with np.errstate(divide='ignore', invalid='ignore'):
    loss = np.where(tokens > 0, loss_sum / tokens, math.nan)
    var = np.where(n > 1, m2 / (n - 1), math.nan)
    return {'loss': loss, 'ppl_token': np.exp(loss),
            'ppl_sequence': np.where(n > 0, ppl / n, math.nan),
            'loss_se': np.sqrt(var / np.maximum(n, 1))}


def check_batch(train_cfg: ml_collections.ConfigDict, dp: int) -> None:
  """The global batch must split into grad_accum micro-batches that split over dp devices."""
  batch, accum = int(train_cfg.batch_size), int(train_cfg.grad_accum)
  if accum < 1 or batch % accum:
    raise ConfigError(f'config.train.batch_size ({batch}) must be divisible by '
                      f'config.train.grad_accum ({accum}).')
  if (batch // accum) % dp:
    raise ConfigError(
        f'config.train.batch_size / grad_accum = {batch // accum} is not divisible by the '
        f'data-parallel size {dp} (mesh data x fsdp); change the batch or the mesh.')


OBJECTIVES = ('mean_ppl', 'mean_loss', 'weighted_ppl', 'weighted_loss')


def objective(per_domain_loss: dict[str, float], cfg: ml_collections.ConfigDict,
              per_domain_ppl: dict[str, float] | None = None) -> float:
  """The number DDO minimises: by default the equal-weight mean of per-domain perplexities.

  *_ppl objectives use `per_domain_ppl` when given (eval.perplexity='sequence'), else exp(loss).
  """
  kind = cfg.objective
  if kind not in OBJECTIVES:
    raise ConfigError(f"config.eval.objective is '{kind}'; use one of {', '.join(OBJECTIVES)}.")
  if cfg.get('perplexity', 'token') not in PERPLEXITIES:
    raise ConfigError(f"config.eval.perplexity is '{cfg.perplexity}'; use 'token' (exp of the "
                      "token-mean loss) or 'sequence' (mean of per-sequence perplexities).")
  names = list(per_domain_loss)
  if kind.startswith('weighted'):
    weights = dict(cfg.objective_weights or {})
    unknown = sorted(set(weights) - set(names))
    if unknown:
      raise ConfigError(f'config.eval.objective_weights names unknown domain(s) {unknown}; '
                        f'the domains are {names}.')
    w = np.array([float(weights.get(n, 0.0)) for n in names])
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
      raise ConfigError('config.eval.objective_weights must be finite, non-negative and not all '
                        'zero.')
    w = w / w.sum()
  else:
    w = np.full(len(names), 1.0 / len(names))
  losses = np.array([per_domain_loss[n] for n in names], np.float64)
  if not kind.endswith('ppl'):
    values = losses
  elif per_domain_ppl is not None:
    values = np.array([per_domain_ppl[n] for n in names], np.float64)
  else:
    values = np.exp(losses)
  return float(np.dot(w, values))


# ------------------------------------------------------------------------------ binding
def mesh_context(mesh: Mesh, rules: Sequence) -> contextlib.ExitStack:
  """Mesh and logical-axis rules active while tracing (for activation sharding constraints)."""
  stack = contextlib.ExitStack()
  stack.enter_context(jax.set_mesh(mesh))
  stack.enter_context(nn.logical_axis_rules(rules))
  return stack


def run_key(seed: int) -> jax.Array:
  """A run's random key: init (fold 1), dropout/masks per step (fold step), eval (fold 2)."""
  return jax.random.PRNGKey(int(seed))


def abstract_key(sharding: NamedSharding, lead: tuple[int, ...] = ()) -> jax.ShapeDtypeStruct:
  """run_key's shape and dtype (after `lead` dims), placed by `sharding`."""
  key = jax.eval_shape(lambda: run_key(0))
  return jax.ShapeDtypeStruct(lead + key.shape, key.dtype, sharding=sharding)


def lower_program(trainer: Any, program: str, inputs: tuple,
                  rules: Sequence) -> jax.stages.Lowered:
  """trainer's jitted `_<program>` lowered for `inputs`, under the context it runs in (init
  without the logical rules, as init_state calls it)."""
  fn = getattr(trainer, f'_{program}')
  with (jax.set_mesh(trainer.mesh) if program == 'init' else mesh_context(trainer.mesh, rules)):
    return fn.lower(*inputs)


def logical_param_specs(model: ModelSpec, rng: jax.Array):
  """Abstract params (unboxed) and their logical PartitionSpecs, without allocating anything."""
  boxed = jax.eval_shape(
      lambda r: model.module.init(r, model.dummy_tokens(), deterministic=True), rng)
  specs = nn.get_partition_spec(boxed)['params']
  return nn.unbox(boxed)['params'], specs


@dataclasses.dataclass
class Trainer:
  """A model, an optimizer and a mesh, with the steps jitted under explicit shardings.

  The seed is not the trainer's: every call takes the run's key (run_key), so one trainer and
  one compiled step serve runs of any seed and any length.
  """
  model: ModelSpec
  train_cfg: ml_collections.ConfigDict
  mesh: Mesh
  rules: Sequence
  num_domains: int

  def __post_init__(self):
    self.tx = optim.make_optimizer(self.train_cfg)
    self.grad_accum = int(self.train_cfg.grad_accum)
    check_batch(self.train_cfg, mesh_lib.data_parallel_size(self.mesh, self.rules))
    abstract_params, specs = logical_param_specs(self.model, run_key(0))
    with mesh_context(self.mesh, self.rules):
      param_sh = nn.logical_to_mesh_sharding(specs, self.mesh, self.rules)
    replicated = NamedSharding(self.mesh, P())
    abstract_opt = jax.eval_shape(self.tx.init, abstract_params)
    opt_sh = optax.tree_map_params(self.tx, lambda _, s: s, abstract_opt, param_sh,
                                   transform_non_params=lambda _: replicated)
    self.state_shardings = TrainState(step=replicated, params=param_sh, opt_state=opt_sh,
                                      domain_sequences=replicated)
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
        TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params,
                   opt_state=abstract_opt,
                   domain_sequences=jax.ShapeDtypeStruct((self.num_domains,), jnp.int32)),
        self.state_shardings)
    self.batch_shardings = {
        'tokens': mesh_lib.batch_sharding(self.mesh, self.rules, 2),
        'domain': mesh_lib.batch_sharding(self.mesh, self.rules, 1),
        'mask': mesh_lib.batch_sharding(self.mesh, self.rules, 1),
    }
    step = functools.partial(train_step, per_example_loss=self.model.per_example_loss,
                             tx=self.tx, train_cfg=self.train_cfg, grad_accum=self.grad_accum,
                             num_domains=self.num_domains)
    self._train_step = jax.jit(step, in_shardings=(self.state_shardings, self.batch_shardings,
                                                   replicated, replicated),
                               out_shardings=(self.state_shardings, replicated),
                               donate_argnums=(0,))
    evaluate = functools.partial(eval_step, per_example_loss=self.model.per_example_loss,
                                 num_domains=self.num_domains)
    self._eval_step = jax.jit(evaluate, in_shardings=(param_sh, self.batch_shardings,
                                                      replicated),
                              out_shardings=replicated)
    self._init = jax.jit(self.make_state, out_shardings=self.state_shardings)

  def abstract_batch(self, batch_size: int, lead: tuple[int, ...] = (),
                     shardings: dict | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    """A global batch of `batch_size` rows (after `lead` dims, e.g. a stack's runs), abstract."""
    shapes = {'tokens': ((batch_size, self.model.row_len), jnp.int32),
              'domain': ((batch_size,), jnp.int32), 'mask': ((batch_size,), jnp.float32)}
    shardings = shardings or self.batch_shardings
    return {k: jax.ShapeDtypeStruct(lead + s, d, sharding=shardings[k])
            for k, (s, d) in shapes.items()}

  def abstract_inputs(self, eval_batch_size: int) -> dict[str, tuple]:
    """Each jitted program's arguments as sharded ShapeDtypeStructs: what lower() compiles
    ahead of time, for this machine's devices or a TPU slice's that is not here (preflight)."""
    replicated = NamedSharding(self.mesh, P())
    key = abstract_key(replicated)
    total = jax.ShapeDtypeStruct((3,), jnp.int32, sharding=replicated)
    return {'init': (key,),
            'train_step': (self.abstract_state, self.abstract_batch(
                int(self.train_cfg.batch_size)), key, total),
            'eval_step': (self.abstract_state.params, self.abstract_batch(eval_batch_size), key)}

  def lower(self, program: str, eval_batch_size: int) -> jax.stages.Lowered:
    """Program 'init', 'train_step' or 'eval_step' lowered for abstract_inputs()."""
    return lower_program(self, program, self.abstract_inputs(eval_batch_size)[program],
                         self.rules)

  def make_state(self, rng: jax.Array) -> TrainState:
    """The initial state drawn from `rng` (pure: init_state jits it, stacks vmap it)."""
    variables = self.model.module.init(rng, self.model.dummy_tokens(), deterministic=True)
    params = nn.unbox(variables)['params']
    return TrainState(step=jnp.int32(0), params=params, opt_state=self.tx.init(params),
                      domain_sequences=jnp.zeros((self.num_domains,), jnp.int32))

  def init_state(self, rng: jax.Array) -> TrainState:
    """The initial state of a run with key `rng`."""
    # No logical-rules context here: out_shardings place the params; the rules would only
    # re-constrain init intermediates (and flax's DenseGeneral init reshapes before boxing).
    with jax.set_mesh(self.mesh):
      return self._init(jax.random.fold_in(rng, 1))

  def put_batch(self, batch: dict[str, np.ndarray]) -> Batch:
    """Host arrays of the whole global batch -> sharded jax.Arrays (single-process helper)."""
    batch = dict(batch)
    batch.setdefault('mask', np.ones(np.shape(batch['domain']), np.float32))
    return {k: jax.device_put(np.asarray(v), self.batch_shardings[k]) for k, v in batch.items()}

  def step(self, state: TrainState, batch: Batch, rng: jax.Array,
           horizon: int | np.ndarray) -> tuple[TrainState, dict]:
    """One step of a run with key `rng` and schedule `horizon` (optim.horizon's int32[3], or
    the run's total steps, from which the config's schedule derives the rest)."""
    with mesh_context(self.mesh, self.rules):
      return self._train_step(state, batch, rng, as_horizon(self.train_cfg, horizon))

  def evaluate(self, params, batches: Iterable[Batch], rng: jax.Array) -> np.ndarray:
    """Per-domain EVAL_STATS [m, 6] (float64) over fixed validation batches."""
    stats = np.zeros((self.num_domains, len(EVAL_STATS)), np.float64)
    eval_rng = jax.random.fold_in(rng, 2)  # fixed: BERT masks the same positions every time
    with mesh_context(self.mesh, self.rules):
      for batch in batches:
        stats = merge_eval(stats, jax.device_get(self._eval_step(params, batch, eval_rng)))
    return stats
