"""DoReMi's proxy run (Xie et al. 2023) as a run kind of the one step loop.

A reference model is first trained as an ordinary run on the reference mixture. The proxy run
then trains on uniformly sampled batches; at every step, before its gradient, the per-domain
excess loss of the batch is measured (per token: proxy loss minus reference loss, clipped at 0,
then averaged over each domain's tokens in the batch), the domain weights take one
exponentiated-gradient step on it (mixing.heuristics.doremi_step, the formula of DESIGN.md
section 1), and the step's loss weights every token by its domain's new weight (normalized by
the sum of the token weights). The answer is the mean of the weights over the run.

The weights and their running sum are part of the state (DoReMiState), so a proxy run is
checkpointed and resumes like any run; the reference parameters are read from the reference
run's own final checkpoint and never change. `runs.run` drives it: DoReMiTrainer has the
Trainer's interface (step, evaluate, init_state, abstract_state), plus the fingerprint entry
and the result entry of the kind.

The proxy forward is computed twice per step, once for the excess and once under the
gradient: one formula for any grad_accum (the excess of the whole batch comes before the
gradient of any micro-batch), at the cost of one extra forward per step.
"""

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from autoscale_jax.errors import ConfigError
from autoscale_jax.mixing.heuristics import doremi_step
from autoscale_jax.train import runs
from autoscale_jax.train.trainer import (
  Batch,
  Trainer,
  TrainState,
  as_horizon,
  lower_program,
  mesh_context,
  split_micro_batches,
  train_step,
)

KIND = 'doremi'


def settings(reference: str, step_size: float, smoothing: float) -> dict:
  """What makes a proxy run DoReMi's, for its fingerprint: the reference run's fingerprint and
  the update's step size and smoothing (on top of its uniform counts and seed)."""
  return {'kind': KIND, 'reference': reference, 'step_size': float(step_size),
          'smoothing': float(smoothing)}


@flax.struct.dataclass
class DoReMiState(TrainState):
  weights: jax.Array  # float32[num_domains]: the current domain weights (0 off the mixture)
  weight_sum: jax.Array  # float32[num_domains]: their sum over the steps taken


def domain_excess(params, reference_params, batch: Batch, rng: jax.Array, *, per_token_loss,
                  num_domains: int, grad_accum: int) -> tuple[jax.Array, jax.Array]:
  """Per domain: the sum over its tokens in the batch of max(proxy - reference loss, 0), and
  its scored tokens. Micro-batches and keys are those of trainer.loss_and_grads, so the
  proxy's dropout (and BERT's masks, shared with the reference) are the gradient pass's."""
  def micro(mb, key):
    proxy, weights = per_token_loss(params, mb, key, train=True)
    reference, _ = per_token_loss(reference_params, mb, key, train=False)
    excess = jnp.maximum(proxy - reference, 0.0) * weights
    domain = mb['domain']  # padding rows have weight 0 (and an id segment_sum drops)
    return (jax.ops.segment_sum(excess.sum(-1), domain, num_segments=num_domains),
            jax.ops.segment_sum(weights.sum(-1), domain, num_segments=num_domains))

  if grad_accum == 1:
    return micro(batch, rng)

  def body(carry, xs):
    k, mb = xs
    sums, tokens = micro(mb, jax.random.fold_in(rng, k))
    return (carry[0] + sums, carry[1] + tokens), None

  zeros = jnp.zeros((num_domains,), jnp.float32)
  (sums, tokens), _ = jax.lax.scan(
      body, (zeros, zeros), (jnp.arange(grad_accum), split_micro_batches(batch, grad_accum)))
  return sums, tokens


def doremi_train_step(state: DoReMiState, batch: Batch, rng: jax.Array, horizon: jax.Array,
                      reference_params, *, per_token_loss, per_example_loss, tx,
                      train_cfg: ml_collections.ConfigDict, grad_accum: int, num_domains: int,
                      mixture: Sequence[int], step_size: float, smoothing: float):
  """One DoReMi step: excess -> new weights -> trainer.train_step on the reweighted loss.

  `mixture` are the indices of the domains the weights are over (eval-only domains keep 0).
  """
  step_rng = jax.random.fold_in(rng, state.step)  # train_step's key for this step
  sums, tokens = domain_excess(state.params, reference_params, batch, step_rng,
                               per_token_loss=per_token_loss, num_domains=num_domains,
                               grad_accum=grad_accum)
  excess = sums / jnp.maximum(tokens, 1.0)  # a domain absent from the batch: 0, no push
  idx = jnp.asarray(mixture)
  weights = jnp.zeros_like(state.weights).at[idx].set(
      doremi_step(state.weights[idx], excess[idx], step_size, smoothing, jnp))

  def reweighted(params, mb, key, *, train):
    loss_sum, count = per_example_loss(params, mb, key, train=train)
    w = weights[jnp.clip(mb['domain'], 0, num_domains - 1)]  # padding rows count 0 anyway
    return loss_sum * w, count * w

  new_state, metrics = train_step(state, batch, rng, horizon, per_example_loss=reweighted,
                                  tx=tx, train_cfg=train_cfg, grad_accum=grad_accum,
                                  num_domains=num_domains)
  new_state = new_state.replace(weights=weights, weight_sum=state.weight_sum + weights)
  return new_state, {**metrics, 'excess': excess}


def _extend(state: TrainState, **extra) -> DoReMiState:
  return DoReMiState(**{f.name: getattr(state, f.name) for f in dataclasses.fields(TrainState)},
                     **extra)


class DoReMiTrainer:
  """A Trainer's model, optimizer and mesh with DoReMi's step and state (see the module doc).

  `reference_params` are the reference run's final parameters; `mixture` the indices of the
  domains the weights are over; the weights start uniform over them (the paper's alpha_0).
  """

  def __init__(self, trainer: Trainer, reference_params: Any, mixture: Sequence[int], *,
               step_size: float, smoothing: float, reference: str):
    self.trainer, self.reference_params = trainer, reference_params
    self.model, self.mesh = trainer.model, trainer.mesh
    self.batch_shardings = trainer.batch_shardings
    self.mixture = tuple(int(i) for i in mixture)
    if not self.mixture or sorted(set(self.mixture)) != sorted(self.mixture) or not all(
        0 <= i < trainer.num_domains for i in self.mixture):
      raise ValueError(f'mixture must be distinct domain indices below {trainer.num_domains}; '
                       f'got {self.mixture}.')
    self.settings = settings(reference, step_size, smoothing)
    m = trainer.num_domains
    replicated = NamedSharding(self.mesh, P())
    self.state_shardings = _extend(trainer.state_shardings, weights=replicated,
                                   weight_sum=replicated)
    vector = jax.ShapeDtypeStruct((m,), jnp.float32, sharding=replicated)
    self.abstract_state = _extend(trainer.abstract_state, weights=vector, weight_sum=vector)
    step = functools.partial(
        doremi_train_step, per_token_loss=trainer.model.per_token_loss,
        per_example_loss=trainer.model.per_example_loss, tx=trainer.tx,
        train_cfg=trainer.train_cfg, grad_accum=trainer.grad_accum, num_domains=m,
        mixture=self.mixture, step_size=float(step_size), smoothing=float(smoothing))
    self._step = jax.jit(step, in_shardings=(self.state_shardings, self.batch_shardings,
                                             replicated, replicated,
                                             trainer.state_shardings.params),
                         out_shardings=(self.state_shardings, replicated), donate_argnums=(0,))
    self._init = jax.jit(self.make_state, out_shardings=self.state_shardings)

  def make_state(self, rng: jax.Array) -> DoReMiState:
    weights = jnp.zeros((self.trainer.num_domains,), jnp.float32).at[
        jnp.asarray(self.mixture)].set(1.0 / len(self.mixture))
    return _extend(self.trainer.make_state(rng), weights=weights,
                   weight_sum=jnp.zeros_like(weights))

  def abstract_inputs(self, eval_batch_size: int) -> dict[str, tuple]:
    """Trainer.abstract_inputs for DoReMi's init and step; the reference's parameters are
    abstract too, so the step compiles before any reference run exists (preflight)."""
    trainer = self.trainer
    plain = trainer.abstract_inputs(eval_batch_size)
    _, batch, key, total = plain['train_step']
    return {'init': plain['init'],
            'step': (self.abstract_state, batch, key, total, trainer.abstract_state.params)}

  def lower(self, program: str, eval_batch_size: int) -> jax.stages.Lowered:
    """Program 'init' or 'step' lowered for abstract_inputs() (Trainer.lower)."""
    return lower_program(self, program, self.abstract_inputs(eval_batch_size)[program],
                         self.trainer.rules)

  def init_state(self, rng: jax.Array) -> DoReMiState:
    with jax.set_mesh(self.mesh):
      return self._init(jax.random.fold_in(rng, 1))  # the model init of trainer.init_state

  def step(self, state: DoReMiState, batch: Batch, rng: jax.Array,
           horizon: int | np.ndarray) -> tuple[DoReMiState, dict]:
    with mesh_context(self.mesh, self.trainer.rules):
      return self._step(state, batch, rng, as_horizon(self.trainer.train_cfg, horizon),
                        self.reference_params)

  def evaluate(self, params, batches, rng: jax.Array) -> np.ndarray:
    return self.trainer.evaluate(params, batches, rng)

  def result(self, state: DoReMiState) -> dict:
    """The result.json entry: the mean weights over the run (the answer) and the last ones."""
    steps = max(int(jax.device_get(state.step)), 1)
    total = np.asarray(jax.device_get(state.weight_sum), np.float64)
    return {**self.settings, 'weights_mean': (total / steps).tolist(),
            'weights_last': np.asarray(jax.device_get(state.weights), np.float64).tolist()}


def run(config: ml_collections.ConfigDict, spec: runs.Run, reference: runs.Run, *,
        mixture: Sequence[int], step_size: float, smoothing: float, stores: dict, tokenizer,
        trainers: runs.Trainers) -> dict:
  """The proxy run `spec` (uniform counts over `mixture`, the indices of the trainable domains)
  against the finished run `reference`; its result holds result['doremi']['weights_mean'], the
  method's answer over all domains."""
  ref_fingerprint = runs.run_fingerprint(config, reference.counts, reference.seed,
                                         tokenizer.hash)
  done = runs.finished(config, spec, tokenizer, settings(ref_fingerprint, step_size, smoothing))
  if done is not None:
    return done
  ckpt = runs.checkpointer(config, reference.run_dir / 'checkpoints', ref_fingerprint, None)
  restored = ckpt.restore(trainers.single.abstract_state)
  ckpt.close()
  if restored is None or not (reference.run_dir / 'result.json').exists():
    raise ConfigError(f'[{spec.name}] the DoReMi reference run {reference.run_dir} has no final '
                      'checkpoint; train it first (it is trained with the proxy run when the '
                      'method is run by mode=compare), or delete its directory to retrain it.')
  kind = DoReMiTrainer(trainers.single, restored[0].params, mixture, step_size=step_size,
                       smoothing=smoothing, reference=ref_fingerprint)
  return runs.run(config, spec, stores=stores, tokenizer=tokenizer, trainers=trainers,
                  kind=kind)
