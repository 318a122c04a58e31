"""The classifier fine-tuning trains: the pre-trained BERT encoder, its params checked against
the model (a checkpoint of another model stops with a fix, not a shape error inside jit), and a
fresh head on the [CLS] hidden state.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from autoscale_jax.errors import ConfigError

INIT_STD = 0.02


class ClassifierHead(nn.Module):
  """[CLS] hidden state -> logits float32[B, outputs]: (tanh pooler,) dropout, dense."""
  outputs: int
  d_model: int
  dropout: float
  pooler: bool

  @nn.compact
  def __call__(self, cls: jax.Array, deterministic: bool) -> jax.Array:
    x = cls.astype(jnp.float32)
    init = nn.initializers.normal(INIT_STD)
    if self.pooler:
      x = nn.tanh(nn.Dense(self.d_model, kernel_init=init, name='pooler')(x))
    x = nn.Dropout(self.dropout, deterministic=deterministic)(x)
    return nn.Dense(self.outputs, kernel_init=init, name='classifier')(x)


def _encoder_params(shapes, params) -> Any:
  """The pre-trained params the encoder reads (the MLM head and pooler dropped), checked."""
  fix = ("pass the params of the run's TrainState, with the config.model (and tokenizer) it was "
         'trained with')
  if not isinstance(params, Mapping) or any(k not in params for k in shapes):
    have = sorted(params) if isinstance(params, Mapping) else type(params).__name__
    raise ConfigError(f'The params to fine-tune are not a BERT encoder of this model (they hold '
                      f'{have}, need {sorted(shapes)}); {fix}.')
  picked = {k: params[k] for k in shapes}
  try:
    jax.tree.map(lambda *_: None, shapes, picked)
  except ValueError:
    raise ConfigError('The params to fine-tune are laid out unlike this model\'s encoder (e.g. '
                      f'scanned vs unrolled layers); {fix}.') from None

  def check(path, want, got):
    if tuple(want.shape) != tuple(np.shape(got)):
      raise ConfigError(f'The pre-trained parameter {jax.tree_util.keystr(path)} has shape '
                        f'{tuple(np.shape(got))}, the model needs {tuple(want.shape)}; {fix}.')
  jax.tree_util.tree_map_with_path(check, shapes, picked)
  return picked
