"""GPT-2 causal language model (Radford et al. 2019) in Flax linen.

Learned positions, pre-LayerNorm blocks, tanh-GELU MLP, causal attention with biases, a final
LayerNorm and an output layer tied to the token embedding, so parameter counts match the
published 124M/355M/774M/1.5B models. Matmuls run in `dtype`; LayerNorm statistics, softmax and
the logits are float32.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoscale_jax.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GPT2Config:
  """GPT-2 hyper-parameters; `d_ff=None` means 4 * d_model."""
  vocab_size: int = 50257
  max_len: int = 1024
  num_layers: int = 12
  num_heads: int = 12
  d_model: int = 768
  d_ff: int | None = None
  dropout: float = 0.0  # embeddings, attention probabilities and residual branches
  ln_eps: float = 1e-5
  dtype: Any = 'float32'  # compute dtype (str or jnp dtype)
  param_dtype: Any = 'float32'
  remat: str = 'none'  # none | full | dots
  scan_layers: bool = True  # nn.scan over blocks; params get a leading 'layers' axis
  scan_unroll: int = 1  # scanned blocks per loop iteration; 0 = all (no loop, compiles every layer)
  attention_impl: str = 'xla'  # xla | cudnn, for jax.nn.dot_product_attention

  def __post_init__(self):
    object.__setattr__(self, 'dtype', jnp.dtype(self.dtype))
    object.__setattr__(self, 'param_dtype', jnp.dtype(self.param_dtype))
    if self.d_ff is None:
      object.__setattr__(self, 'd_ff', 4 * self.d_model)
    layers.check_config(self)


SIZES: dict[str, dict] = {
    'tiny': dict(num_layers=2, d_model=128, num_heads=4),
    'small': dict(num_layers=12, d_model=768, num_heads=12),
    'medium': dict(num_layers=24, d_model=1024, num_heads=16),
    'large': dict(num_layers=36, d_model=1280, num_heads=20),
    'xl': dict(num_layers=48, d_model=1600, num_heads=25),
}


def config_for(size: str, **overrides) -> GPT2Config:
  """The named GPT-2 size with per-field overrides (e.g. vocab_size of a trained tokenizer)."""
  return layers.sized_config(GPT2Config, SIZES, size, overrides)


class Block(nn.Module):
  """Pre-LayerNorm block: x + attn(ln(x)), then x + mlp(ln(x))."""
  config: GPT2Config
  deterministic: bool

  @nn.compact
  def __call__(self, x: Array, mask: None) -> tuple[Array, None]:
    cfg = self.config
    # GPT-2 scales the init of layers that write into the residual stream by 1/sqrt(2 L).
    out_std = layers.INIT_STD / math.sqrt(2 * cfg.num_layers)
    drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
    h = layers.layer_norm(cfg, 'ln_1')(x)
    x = x + drop(layers.SelfAttention(cfg, causal=True, out_std=out_std, name='attn')(
        h, mask, self.deterministic))
    h = layers.layer_norm(cfg, 'ln_2')(x)
    x = x + drop(layers.Mlp(cfg, approximate_gelu=True, out_std=out_std, name='mlp')(h))
    return layers.constrain(x), None


class GPT2(nn.Module):
  """tokens int32[B, T] -> next-token logits float32[B, T, vocab_size]."""
  config: GPT2Config

  @nn.compact
  def __call__(self, tokens: Array, *, deterministic: bool = True) -> Array:
    cfg = self.config
    if tokens.shape[1] > cfg.max_len:
      raise ValueError(f'Sequence length {tokens.shape[1]} exceeds GPT2Config.max_len='
                       f'{cfg.max_len}; raise max_len or shorten data.seq_len.')
    wte = layers.embedding(cfg, cfg.vocab_size, ('vocab', 'embed'), 'wte')
    wpe = layers.embedding(cfg, cfg.max_len, ('position', 'embed'), 'wpe')
    x = wte(tokens) + wpe(jnp.arange(tokens.shape[1])[None])
    x = nn.Dropout(cfg.dropout, deterministic=deterministic)(x)
    x = layers.apply_blocks(Block, cfg, layers.constrain(x), None, deterministic)
    x = layers.layer_norm(cfg, 'ln_f')(x)
    return wte.attend(x).astype(jnp.float32)


def per_token_loss(module: GPT2, params: Any, batch: dict[str, Array], rng: Array, *,
                   train: bool) -> tuple[Array, Array]:
  """Next-token cross-entropy at every position [B, T], and each position's weight [B, T].

  `params` is the 'params' collection; batch['tokens'] is int32[B, T+1] (inputs are the first T,
  targets the last T); optional batch['mask'] float32[B] zeroes padding examples. `rng` drives
  dropout when `train`.
  """
  tokens = batch['tokens']
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  logits = module.apply({'params': params}, inputs, deterministic=not train,
                        rngs={'dropout': rng} if train else None)
  weights = jnp.ones(targets.shape, jnp.float32)
  return layers.token_cross_entropy(logits, targets, weights, batch.get('mask'))


def per_example_loss(module: GPT2, params: Any, batch: dict[str, Array], rng: Array, *,
                     train: bool) -> tuple[Array, Array]:
  """per_token_loss summed per example: (loss_sum [B], target tokens [B])."""
  return layers.summed(per_token_loss(module, params, batch, rng, train=train))


def flops_per_token(config: GPT2Config, seq_len: int) -> float:
  """Training FLOPs per token: 6 * (L * (4 d^2 + 2 d d_ff) + V d) + 12 * L * seq_len * d.

  The first term is forward + backward (3 x 2 FLOPs per weight) over the attention and MLP
  matmuls and the tied LM head; the second the attention scores and weighted values. See
  layers.matmul_flops_per_token.
  """
  return layers.matmul_flops_per_token(config, seq_len, config.vocab_size * config.d_model)


def param_count(config: GPT2Config) -> int:
  return layers.param_count(GPT2(config))
