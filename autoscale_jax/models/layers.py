"""Transformer pieces shared by GPT-2 and BERT.

The two models differ only in where LayerNorm sits, whether attention is causal and what sits on
top of the stack, so attention, MLP, LayerNorm, the (scanned, rematerialized) block stack, the
loss and the config helpers live here once. Every parameter carries logical axis names and the
main activations carry logical constraints, which the trainer maps onto its mesh.
"""

import functools
import math
from typing import Any, Callable, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array

# Logical names the trainer's rules (configs/*.py c.mesh.rules) know about.
PARAM_AXES = frozenset({'vocab', 'embed', 'mlp', 'heads', 'kv', 'layers', 'norm', 'position'})
REMAT_POLICIES = {
    # Save nothing: least memory, one extra forward pass per block.
    'full': None,
    # Keep the outputs of the weight matmuls, recompute attention and elementwise ops.
    'dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
ATTENTION_IMPLS = ('xla', 'cudnn')
INIT_STD = 0.02


class TransformerConfig(Protocol):
  """The fields of GPT2Config and BertConfig that the shared layers read."""
  num_layers: int
  num_heads: int
  d_model: int
  d_ff: int
  dropout: float
  ln_eps: float
  dtype: Any
  param_dtype: Any
  remat: str
  scan_layers: bool
  scan_unroll: int
  attention_impl: str


# Sizes that must be whole numbers >= 1 wherever a config has them (max_len, vocab_size and
# type_vocab_size are not in TransformerConfig: the families add them).
POSITIVE_SIZES = ('num_layers', 'num_heads', 'd_model', 'd_ff', 'max_len', 'vocab_size',
                  'type_vocab_size')


def check_config(config: TransformerConfig) -> None:
  """Stops a bad model config early with one sentence naming the field."""
  name = type(config).__name__
  for field in POSITIVE_SIZES:
    value = getattr(config, field, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f'{name}.{field}={value!r} must be a whole number >= 1; fix it in '
                       'config.model.overrides or pick another config.model.size.')
  if not 0 <= config.dropout < 1:
    raise ValueError(f'{name}.dropout={config.dropout!r} must be in [0, 1) (a probability; 0 '
                     'disables dropout); set config.model.dropout to a value in that range.')
  if not 0 < config.ln_eps < 1:
    raise ValueError(f'{name}.ln_eps={config.ln_eps!r} must be in (0, 1) (LayerNorm adds it to '
                     'the variance); fix it in config.model.overrides.')
  if config.d_model % config.num_heads:
    raise ValueError(f'{name}.d_model={config.d_model} must be divisible by '
                     f'num_heads={config.num_heads}; change one of them.')
  if config.remat not in ('none', *REMAT_POLICIES):
    raise ValueError(f"{name}.remat={config.remat!r} is unknown; use 'none', 'full' or 'dots'.")
  if config.scan_unroll < 0:
    raise ValueError(f'{name}.scan_unroll={config.scan_unroll} must be >= 0 (0 or num_layers '
                     'unrolls the whole stack, 1 keeps a rolled loop).')
  if config.attention_impl not in ATTENTION_IMPLS:
    raise ValueError(f'{name}.attention_impl={config.attention_impl!r} is unknown; '
                     f'use one of {ATTENTION_IMPLS}.')


def sized_config(config_cls: type, sizes: dict[str, dict], size: str, overrides: dict) -> Any:
  """Builds config_cls from a named size plus per-field overrides."""
  if size not in sizes:
    raise ValueError(f'Unknown {config_cls.__name__} size {size!r}; '
                     f'valid sizes: {", ".join(sizes)}.')
  # An unknown override field raises the dataclass's TypeError naming it.
  return config_cls(**{**sizes[size], **overrides})


def param_count(module: nn.Module, seq_len: int = 1) -> int:
  """Counts parameters from abstract shapes, so even the largest models cost no memory."""
  tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  shapes = jax.eval_shape(lambda t: module.init(jax.random.key(0), t), tokens)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes['params']))


def matmul_flops_per_token(config: TransformerConfig, seq_len: int, head_params: int) -> float:
  """Training FLOPs per token: 6 * (matmul weights) + 12 * num_layers * seq_len * d_model.

  Forward costs 2 FLOPs per weight of every matmul (attention q/k/v/out, the two MLP matmuls and
  the `head_params` weights of the output head) plus 2 * seq_len * d_model for the attention
  scores and 2 * seq_len * d_model for the weighted sum of values, in every layer (the causal
  mask is not discounted). Backward costs twice the forward. Embedding gathers, biases,
  LayerNorm and softmax are not counted.
  """
  d = config.d_model
  block_weights = 4 * d * d + 2 * d * config.d_ff
  weights = config.num_layers * block_weights + head_params
  return float(6 * weights + 12 * config.num_layers * seq_len * d)


def normal(names: tuple[str, ...], std: float = INIT_STD) -> Callable:
  """Normal initializer boxed with logical axis names, so the trainer can shard it."""
  return nn.with_logical_partitioning(nn.initializers.normal(std), names)


def zeros(names: tuple[str, ...]) -> Callable:
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


def layer_norm(config: TransformerConfig, name: str) -> nn.LayerNorm:
  """LayerNorm whose statistics are computed in float32 whatever the compute dtype."""
  return nn.LayerNorm(
      epsilon=config.ln_eps, dtype=config.dtype, param_dtype=config.param_dtype,
      force_float32_reductions=True,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ('norm',)),
      bias_init=zeros(('norm',)), name=name)


def embedding(config: TransformerConfig, num: int, names: tuple[str, str], name: str) -> nn.Embed:
  return nn.Embed(num, config.d_model, dtype=config.dtype, param_dtype=config.param_dtype,
                  embedding_init=normal(names), name=name)


def constrain(x: Array, names: tuple[str, ...] = ('batch', 'length', 'embed')) -> Array:
  return nn.with_logical_constraint(x, names)


def _attention_with_dropout(q: Array, k: Array, v: Array, mask: Array | None, causal: bool,
                            dropout: Callable[[Array], Array]) -> Array:
  """Plain attention with dropout on the probabilities, which the fused kernels lack."""
  logits = jnp.einsum('btnh,bsnh->bnts', q, k, preferred_element_type=jnp.float32)
  logits = logits / math.sqrt(q.shape[-1])
  if causal:
    t = q.shape[1]
    causal_mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
    mask = causal_mask if mask is None else mask & causal_mask
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  probs = dropout(jax.nn.softmax(logits, axis=-1)).astype(v.dtype)
  return jnp.einsum('bnts,bsnh->btnh', probs, v)


class Projection(nn.Module):
  """Dense layer over the last `contract` input axes into `features`, kernel kept unflattened.

  Used instead of nn.DenseGeneral, which initializes a flattened kernel and reshapes it: with a
  mesh active during init, the logical-sharding constraint is applied to the flat kernel and
  fails. Here the kernel is created at its true rank, one logical name per axis; the bias takes
  the names of the feature axes.
  """
  features: tuple[int, ...]
  contract: int
  names: tuple[str, ...]  # logical names of the kernel: contracted axes, then feature axes
  dtype: Any
  param_dtype: Any
  std: float = INIT_STD

  @nn.compact
  def __call__(self, x: Array) -> Array:
    in_shape = x.shape[-self.contract:]
    kernel = self.param('kernel', normal(self.names, self.std), in_shape + self.features,
                        self.param_dtype)
    bias = self.param('bias', zeros(self.names[self.contract:]), self.features, self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    dims = tuple(range(x.ndim - self.contract, x.ndim)), tuple(range(self.contract))
    return jax.lax.dot_general(x, kernel, (dims, ((), ()))) + bias


class SelfAttention(nn.Module):
  """Multi-head self-attention with biases; q/k/v/out kernels keep the head axis explicit."""
  config: TransformerConfig
  causal: bool
  out_std: float = INIT_STD

  @nn.compact
  def __call__(self, x: Array, mask: Array | None, deterministic: bool) -> Array:
    cfg = self.config
    head_dim = cfg.d_model // cfg.num_heads
    proj = functools.partial(Projection, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    q, k, v = (
        constrain(proj((cfg.num_heads, head_dim), 1, ('embed', 'heads', 'kv'), name=n)(x),
                  ('batch', 'length', 'heads', 'kv'))
        for n in ('query', 'key', 'value'))
    if deterministic or cfg.dropout == 0.0:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=self.causal,
                                         implementation=cfg.attention_impl)
    else:
      dropout = nn.Dropout(cfg.dropout, deterministic=False, name='attn_dropout')
      out = _attention_with_dropout(q, k, v, mask, self.causal, dropout)
    out = proj((cfg.d_model,), 2, ('heads', 'kv', 'embed'), std=self.out_std, name='out')(out)
    return constrain(out)


class Mlp(nn.Module):
  """Position-wise feed-forward block (d_model -> d_ff -> d_model)."""
  config: TransformerConfig
  approximate_gelu: bool
  out_std: float = INIT_STD

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.config
    dense = functools.partial(nn.Dense, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    h = dense(cfg.d_ff, kernel_init=normal(('embed', 'mlp')), bias_init=zeros(('mlp',)),
              name='fc')(x)
    h = nn.gelu(constrain(h, ('batch', 'length', 'mlp')), approximate=self.approximate_gelu)
    out = dense(cfg.d_model, kernel_init=normal(('mlp', 'embed'), self.out_std),
                bias_init=zeros(('embed',)), name='proj')(h)
    return constrain(out)


def apply_blocks(block_cls: type[nn.Module], config: TransformerConfig, x: Array,
                 mask: Array | None, deterministic: bool) -> Array:
  """Runs config.num_layers blocks inside the calling compact module.

  `block_cls(config, deterministic)` must map (x, mask) -> (x, None), the carry signature nn.scan
  needs. With scan_layers one block is compiled and its params get a leading 'layers' axis
  (submodule 'layers'); otherwise blocks are unrolled as 'layer_0', 'layer_1', ...
  config.scan_unroll > 1 (0 = all) unrolls that many scanned blocks per loop iteration: the
  same stacked params, but a fully unrolled stack has no loop, so XLA skips the zero-filled
  residual buffers and their dynamic slices/updates (on CPU ~8-10% of a step's time) at the
  cost of compiling every layer.
  """
  block = block_cls
  rolled = config.scan_layers and config.scan_unroll == 1
  if config.remat != 'none':
    # Under a rolled scan the loop boundary already stops CSE from undoing remat.
    block = nn.remat(block, policy=REMAT_POLICIES[config.remat], prevent_cse=not rolled)
  if config.scan_layers:
    block = nn.scan(block, variable_axes={'params': 0},
                    split_rngs={'params': True, 'dropout': True}, in_axes=nn.broadcast,
                    length=config.num_layers, unroll=config.scan_unroll or config.num_layers,
                    metadata_params={nn.PARTITION_NAME: 'layers'})
    x, _ = block(config, deterministic, name='layers')(x, mask)
    return x
  for i in range(config.num_layers):
    x, _ = block(config, deterministic, name=f'layer_{i}')(x, mask)
  return x


def token_cross_entropy(logits: Array, targets: Array, weights: Array,
                        example_mask: Array | None) -> tuple[Array, Array]:
  """Token cross-entropies [B, T] and their weights [B, T] (0 where not scored).

  `example_mask` (float [B], 0 for padding examples) zeroes whole examples.
  """
  losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  if example_mask is not None:
    weights = weights * example_mask[:, None]
  return losses, weights


def summed(token_losses: tuple[Array, Array]) -> tuple[Array, Array]:
  """(losses, weights) per token -> per example the weighted loss sum and the weight sum."""
  losses, weights = token_losses
  return (losses * weights).sum(axis=-1), weights.sum(axis=-1)

