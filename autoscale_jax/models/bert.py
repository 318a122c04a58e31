"""BERT masked language model (Devlin et al. 2019) in Flax linen.

Word + position + token-type embeddings with LayerNorm, post-LayerNorm blocks with exact GELU,
padding masked out of attention, and the MLM head (dense + GELU + LayerNorm, then a decoder tied
to the word embeddings with its own bias). The pooler (tanh dense over [CLS]) is optional: MLM
pre-training does not use it, but checkpoints meant for fine-tuning (and the published parameter
count) include it.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from autoscale_jax.models import layers

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """BERT hyper-parameters plus the special ids masking needs; `d_ff=None` means 4 * d_model."""
  vocab_size: int = 30522
  max_len: int = 512
  type_vocab_size: int = 2
  num_layers: int = 12
  num_heads: int = 12
  d_model: int = 768
  d_ff: int | None = None
  dropout: float = 0.1  # embeddings, attention probabilities and residual branches
  ln_eps: float = 1e-12
  dtype: Any = 'float32'  # compute dtype (str or jnp dtype)
  param_dtype: Any = 'float32'
  remat: str = 'none'  # none | full | dots
  scan_layers: bool = True  # nn.scan over blocks; params get a leading 'layers' axis
  scan_unroll: int = 1  # scanned blocks per loop iteration; 0 = all (no loop, compiles every layer)
  attention_impl: str = 'xla'  # xla | cudnn, for jax.nn.dot_product_attention
  mlm_head: bool = True  # False: return the final hidden states
  pooler: bool = False  # True: add the [CLS] pooler; its output goes to the 'intermediates' sow
  pad_id: int = 0
  unk_id: int = 100
  cls_id: int = 101
  sep_id: int = 102
  mask_id: int = 103

  def __post_init__(self):
    object.__setattr__(self, 'dtype', jnp.dtype(self.dtype))
    object.__setattr__(self, 'param_dtype', jnp.dtype(self.param_dtype))
    if self.d_ff is None:
      object.__setattr__(self, 'd_ff', 4 * self.d_model)
    layers.check_config(self)

  @property
  def special_ids(self) -> tuple[int, ...]:
    """Ids never chosen as MLM targets nor inserted as random replacements."""
    return tuple(sorted({self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id}))


SIZES: dict[str, dict] = {
    'tiny': dict(num_layers=2, d_model=128, num_heads=2, d_ff=512),
    'base': dict(num_layers=12, d_model=768, num_heads=12, d_ff=3072),
    'large': dict(num_layers=24, d_model=1024, num_heads=16, d_ff=4096),
}


def config_for(size: str, **overrides) -> BertConfig:
  """The named BERT size with per-field overrides (e.g. vocab_size of a trained tokenizer)."""
  return layers.sized_config(BertConfig, SIZES, size, overrides)


class Block(nn.Module):
  """Post-LayerNorm block: ln(x + attn(x)), then ln(x + mlp(x))."""
  config: BertConfig
  deterministic: bool

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> tuple[Array, None]:
    cfg = self.config
    drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
    h = layers.SelfAttention(cfg, causal=False, name='attn')(x, mask, self.deterministic)
    x = layers.layer_norm(cfg, 'ln_attn')(x + drop(h))
    h = layers.Mlp(cfg, approximate_gelu=False, name='mlp')(x)
    x = layers.layer_norm(cfg, 'ln_mlp')(x + drop(h))
    return layers.constrain(x), None


class BERT(nn.Module):
  """tokens int32[B, T] -> MLM logits float32[B, T, vocab_size] (hidden states without the head)."""
  config: BertConfig

  @nn.compact
  def __call__(self, tokens: Array, token_types: Array | None = None, *,
               deterministic: bool = True) -> Array:
    cfg = self.config
    if tokens.shape[1] > cfg.max_len:
      raise ValueError(f'Sequence length {tokens.shape[1]} exceeds BertConfig.max_len='
                       f'{cfg.max_len}; raise max_len or shorten data.seq_len.')
    if token_types is None:
      token_types = jnp.zeros_like(tokens)
    words = layers.embedding(cfg, cfg.vocab_size, ('vocab', 'embed'), 'word_embed')
    x = (words(tokens)
         + layers.embedding(cfg, cfg.max_len, ('position', 'embed'), 'position_embed')(
             jnp.arange(tokens.shape[1])[None])
         # A two-row table, replicated like the positions.
         + layers.embedding(cfg, cfg.type_vocab_size, ('position', 'embed'), 'type_embed')(
             token_types))
    x = layers.layer_norm(cfg, 'ln_embed')(x)
    x = nn.Dropout(cfg.dropout, deterministic=deterministic)(x)
    mask = (tokens != cfg.pad_id)[:, None, None, :]  # keys that may be attended to
    x = layers.apply_blocks(Block, cfg, layers.constrain(x), mask, deterministic)
    if cfg.pooler:
      pooled = nn.tanh(nn.Dense(cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                                kernel_init=layers.normal(('embed', 'mlp')),
                                bias_init=layers.zeros(('mlp',)), name='pooler')(x[:, 0]))
      self.sow('intermediates', 'pooled', pooled)
    if not cfg.mlm_head:
      return x
    h = nn.Dense(cfg.d_model, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                 kernel_init=layers.normal(('embed', 'mlp')), bias_init=layers.zeros(('mlp',)),
                 name='mlm_transform')(x)
    h = layers.layer_norm(cfg, 'mlm_ln')(nn.gelu(h, approximate=False))
    bias = self.param('mlm_bias', layers.zeros(('vocab',)), (cfg.vocab_size,), cfg.param_dtype)
    return words.attend(h).astype(jnp.float32) + bias.astype(jnp.float32)


def mask_tokens(rng: Array, tokens: Array, *, vocab_size: int, mask_id: int,
                special_ids: tuple[int, ...], rate: float = 0.15) -> tuple[Array, Array, Array]:
  """BERT's MLM corruption: returns (inputs, targets, weights).

  Each non-special position is chosen with probability `rate`; a chosen position becomes
  `mask_id` with probability 0.8, a uniformly random non-special token with 0.1, and stays as it
  is with 0.1. targets are the original tokens; weights are 1.0 at chosen positions only.
  `special_ids` (distinct ids below vocab_size) must be static under jit.
  """
  choose_key, action_key, random_key = jax.random.split(rng, 3)
  specials = sorted(set(special_ids))
  is_special = jnp.isin(tokens, jnp.asarray(specials, tokens.dtype))
  chosen = jax.random.bernoulli(choose_key, rate, tokens.shape) & ~is_special
  # Draw from the vocab_size - len(specials) ordinary ids, then step over each special id.
  random_tokens = jax.random.randint(random_key, tokens.shape, 0, vocab_size - len(specials),
                                     tokens.dtype)
  for s in specials:
    random_tokens = random_tokens + (random_tokens >= s).astype(tokens.dtype)
  action = jax.random.uniform(action_key, tokens.shape)
  inputs = jnp.where(chosen & (action < 0.8), mask_id,
                     jnp.where(chosen & (action < 0.9), random_tokens, tokens))
  return inputs, tokens, chosen.astype(jnp.float32)


def per_token_loss(module: BERT, params: Any, batch: dict[str, Array], rng: Array, *,
                   train: bool) -> tuple[Array, Array]:
  """MLM cross-entropy at every position [B, T], weighted 1 at the masked positions only.

  `params` is the 'params' collection; batch['tokens'] is int32[B, T]; optional batch['mask']
  float32[B] zeroes padding examples. `rng` is split into a masking key (used in eval too, so a
  fixed key gives a deterministic validation loss) and a dropout key (train only).
  """
  cfg = module.config
  if not cfg.mlm_head:
    raise ValueError('BertConfig.mlm_head is False, so there are no MLM logits to score; '
                     'set mlm_head=True to train.')
  mask_rng, dropout_rng = jax.random.split(rng)
  inputs, targets, weights = mask_tokens(
      mask_rng, batch['tokens'], vocab_size=cfg.vocab_size, mask_id=cfg.mask_id,
      special_ids=cfg.special_ids)
  logits = module.apply({'params': params}, inputs, deterministic=not train,
                        rngs={'dropout': dropout_rng} if train else None)
  return layers.token_cross_entropy(logits, targets, weights, batch.get('mask'))


def per_example_loss(module: BERT, params: Any, batch: dict[str, Array], rng: Array, *,
                     train: bool) -> tuple[Array, Array]:
  """per_token_loss summed per example: (loss_sum [B], masked positions [B])."""
  return layers.summed(per_token_loss(module, params, batch, rng, train=train))


def flops_per_token(config: BertConfig, seq_len: int) -> float:
  """Training FLOPs per token: 6 * (L * (4 d^2 + 2 d d_ff) + H) + 12 * L * seq_len * d.

  H = d^2 + V d (MLM transform and tied decoder, applied at every position) with the MLM head,
  else 0. The first term is forward + backward (3 x 2 FLOPs per weight) over the matmuls; the
  second the attention scores and weighted values. See layers.matmul_flops_per_token.
  """
  d = config.d_model
  head = d * d + config.vocab_size * d if config.mlm_head else 0
  return layers.matmul_flops_per_token(config, seq_len, head)


def param_count(config: BertConfig) -> int:
  return layers.param_count(BERT(config))
