"""Model families behind one interface: the trainer never branches on GPT-2 vs BERT."""

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from autoscale_jax.errors import ConfigError
from autoscale_jax.models import bert, gpt2

FAMILIES = {'gpt2': gpt2, 'bert': bert}
VOCAB_MULTIPLE = 128  # embedding rows are padded to this: fast matmuls, any tensor split works


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A built model: the flax module plus the pieces of its family the trainer needs."""
  family: str
  config: Any  # gpt2.GPT2Config | bert.BertConfig
  module: nn.Module
  # (params, batch, rng, *, train) -> (loss_sum[B], count[B])
  per_example_loss: Callable[..., tuple[jnp.ndarray, jnp.ndarray]]
  # (params, batch, rng, *, train) -> (loss[B, T], weight[B, T]): what per_example_loss sums
  per_token_loss: Callable[..., tuple[jnp.ndarray, jnp.ndarray]]
  flops_per_token: float  # training FLOPs per target token at this run's seq_len
  seq_len: int  # tokens the model reads per sequence
  row_len: int  # tokens per stored row (see row_len())

  def dummy_tokens(self, batch: int = 1) -> jnp.ndarray:
    return jnp.zeros((batch, self.seq_len), jnp.int32)


def row_len(family: str, seq_len: int) -> int:
  """Tokens per stored row: a causal LM (gpt2) reads seq_len tokens and predicts each one's
  successor, so its rows hold seq_len + 1; a masked LM's (bert) rows are its seq_len inputs."""
  return seq_len + 1 if family == 'gpt2' else seq_len


def padded_vocab(vocab_size: int) -> int:
  return -(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def build_model(cfg: ml_collections.ConfigDict, *, vocab_size: int, seq_len: int,
                special_ids: dict[str, int] | None = None) -> ModelSpec:
  """Builds the model named by config.model for a tokenizer of `vocab_size` tokens."""
  lib = FAMILIES.get(cfg.family)
  if lib is None:
    raise ConfigError(f"config.model.family is '{cfg.family}'; use one of {sorted(FAMILIES)}.")
  if cfg.size not in lib.SIZES:
    raise ConfigError(f"config.model.size is '{cfg.size}'; {cfg.family} sizes are "
                      f'{sorted(lib.SIZES)}.')
  fields = dict(cfg.overrides.to_dict()) if cfg.get('overrides') else {}
  fixed_vocab = fields.get('vocab_size')
  if fixed_vocab is not None and vocab_size > int(fixed_vocab):
    raise ConfigError(f'the tokenizer has {vocab_size} tokens but '
                      f'config.model.overrides.vocab_size is {fixed_vocab}; raise vocab_size to '
                      f'at least {vocab_size}, remove the override, or use a smaller tokenizer '
                      '(config.data.tokenizer).')
  fields.update(vocab_size=padded_vocab(max(vocab_size, int(fixed_vocab or 0))),
                dropout=cfg.dropout, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                remat=cfg.remat, scan_layers=cfg.scan_layers,
                scan_unroll=cfg.scan_unroll, attention_impl=cfg.attention_impl)
  if cfg.family == 'bert':
    fields.update({f'{k}_id': v for k, v in (special_ids or {}).items()
                   if f'{k}_id' in {f.name for f in dataclasses.fields(lib.BertConfig)}})
  try:
    model_config = lib.config_for(cfg.size, **fields)
  except TypeError as e:
    raise ConfigError(f'config.model.overrides has a field the {cfg.family} config does not '
                      f'know ({e}); remove it.') from None
  except ValueError as e:  # the config's own checks (heads divide d_model, remat, ...)
    raise ConfigError(f'config.model: {e}') from None
  if seq_len > model_config.max_len:
    raise ConfigError(f'config.data.seq_len is {seq_len} but the model context (max_len) is '
                      f'{model_config.max_len}; lower seq_len or raise '
                      f'config.model.overrides.max_len.')
  module = (gpt2.GPT2 if cfg.family == 'gpt2' else bert.BERT)(model_config)
  return ModelSpec(
      family=cfg.family, config=model_config, module=module,
      per_example_loss=functools.partial(lib.per_example_loss, module),
      per_token_loss=functools.partial(lib.per_token_loss, module),
      flops_per_token=float(lib.flops_per_token(model_config, seq_len)), seq_len=seq_len,
      row_len=row_len(cfg.family, seq_len))
