"""Orbax checkpoints of the train state, with a fingerprint check and fallback past bad steps."""

from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from autoscale_jax.errors import ConfigError


class Checkpointer:
  """Saves every k steps and at the end, keeps n, restores the newest readable checkpoint.

  `fingerprint` identifies what the state means (model config, optimizer, mixture); a checkpoint
  with another fingerprint is refused instead of being loaded into a different model.
  """

  def __init__(self, directory: epath.PathLike, *, fingerprint: str, every: int, keep: int,
               use_async: bool = True):
    self.fingerprint = fingerprint
    self.every = max(int(every), 1)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=use_async,
        cleanup_tmp_directories=True)
    self.manager = ocp.CheckpointManager(epath.Path(directory), options=options,
                                         item_names=('state', 'meta'))

  def maybe_save(self, step: int, state: Any, *, final: bool = False,
                 extra: dict | None = None) -> bool:
    if not final and step % self.every:
      return False
    if step in self.manager.all_steps():
      return False
    meta = {'fingerprint': self.fingerprint, 'step': int(step), **(extra or {})}
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=True)
    return True

  def restore(self, abstract_state: Any) -> tuple[Any, dict] | None:
    """The newest checkpoint that reads back whole, or None when there is none."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = meta['meta']
      except Exception as e:  # unreadable metadata = corrupt checkpoint
        self._skip(step, steps[i + 1:], e)
        continue
      if meta.get('fingerprint') != self.fingerprint:
        raise ConfigError(
            f'the checkpoint at step {step} in {self.manager.directory} was written by a run with '
            f'a different model/optimizer/mixture (fingerprint {meta.get("fingerprint")} != '
            f'{self.fingerprint}); use a fresh workdir or restore the original config.')
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
        state = restored['state']
        jax.block_until_ready(state)
      except Exception as e:
        self._skip(step, steps[i + 1:], e)
        continue
      return state, meta
    return None

  @staticmethod
  def _skip(step: int, rest: list[int], error: Exception) -> None:
    where = f'falling back to step {rest[0]}' if rest else 'starting from scratch'
    logging.warning('checkpoint at step %d is unreadable (%s: %s); %s.', step,
                    type(error).__name__, str(error).splitlines()[0][:200], where)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
