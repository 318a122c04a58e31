"""Orbax checkpoints of the train state, with a fingerprint check and fallback past bad steps.

Every checkpoint carries, next to the state, a small JSON `meta` item: the run's fingerprint
(and optionally a description of what shaped the run, to say what differs when it is refused),
the step, and a checksum of every state leaf computed on device before the save. Restoring
takes the newest checkpoint that reads back whole AND matches its checksums, so a truncated,
half-deleted or bit-flipped checkpoint (which orbax/tensorstore may read without complaint) is
detected. An unreadable checkpoint is moved aside to `<directory>.unreadable/<step>-<time>`
(kept for inspection, out of the manager's sight) and the previous good one is used, with a
warning; with several processes, see Checkpointer.restore.
"""

import contextlib
import functools
import logging as py_logging
import signal
import time
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from autoscale_jax import lead
from autoscale_jax.errors import ConfigError

# Orbax saves a replicated array cooperatively, each replica writing one slice of it. Cutting a
# slice is an eager op per replica and array (0.4 ms each on CPU), which for small arrays costs
# more than the write it shares: on the tiny pipeline's 8 CPU devices it was a quarter of the
# whole run. Arrays whose slices would be smaller than this are written whole by one replica;
# the bytes on disk are the same.
REPLICA_SLICE_MIN_BYTES = 1 << 20


def _register_array_handler() -> None:
  default = ocp.type_handlers.get_type_handler(jax.Array)
  absl_logger = logging.get_absl_logger()
  level = absl_logger.level
  absl_logger.setLevel(py_logging.ERROR)  # orbax warns of every override; ours is deliberate
  try:
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(
        array_metadata_store=default._array_metadata_store,  # pylint: disable=protected-access
        min_slice_bytes_for_replica_parallel=REPLICA_SLICE_MIN_BYTES), override=True)
  finally:
    absl_logger.setLevel(level)


_register_array_handler()


def _leaf_checksum(x: jax.Array) -> jax.Array:
  """sum_i bits[i] * (2 i + 1) mod 2**32 over the leaf's 32-bit words, i the flat index.

  Integer wrap-around sums are exact and order-free, so the value does not depend on the mesh
  or the number of processes; any single flipped bit changes it (odd multipliers), and
  reordered values change it too. Built from per-dimension iotas, so no reshape re-shards a
  sharded leaf.
  """
  x = jnp.asarray(x)
  if x.dtype == jnp.bool_:
    x = x.astype(jnp.uint8)
  size = x.dtype.itemsize
  if size == 8:
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)  # trailing axis of 2 words
  else:
    bits = jax.lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[size])
    bits = bits.astype(jnp.uint32)
  index = jnp.zeros(bits.shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(bits.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * jnp.uint32(
        stride % 2**32)
    stride *= bits.shape[axis]
  return jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)


@functools.lru_cache(maxsize=None)
def _checksums_fn(mesh: Mesh | None):
  def checksums(leaves):
    return jnp.stack([_leaf_checksum(x) for x in leaves])
  if mesh is None:
    return jax.jit(checksums)
  return jax.jit(checksums, out_shardings=NamedSharding(mesh, PartitionSpec()))


def state_checksums(state: Any) -> list[int]:
  """One uint32 checksum per leaf of `state`, the same on every process."""
  leaves = jax.tree_util.tree_leaves(state)
  if not leaves:
    return []
  mesh = next((x.sharding.mesh for x in leaves
               if isinstance(getattr(x, 'sharding', None), NamedSharding)), None)
  return [int(c) for c in np.asarray(jax.device_get(_checksums_fn(mesh)(leaves)))]


def _flat(d: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(d, dict):
    out = {}
    for k, v in d.items():
      out.update(_flat(v, f'{prefix}{k}.'))
    return out
  return {prefix[:-1]: d}


def _differences(saved: dict | None, current: dict | None, limit: int = 3) -> str:
  """' (model.d_model: 64 in the checkpoint, 32 now; ...)' or '' when unknown."""
  if not saved or not current:
    return ''
  a, b = _flat(saved), _flat(current)
  keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
  if not keys:
    return ''
  parts = [f'{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now' for k in keys[:limit]]
  more = f' and {len(keys) - limit} more' if len(keys) > limit else ''
  return ' (' + '; '.join(parts) + more + ')'


class Checkpointer:
  """Saves every k steps, at the end and on preemption, keeps n, restores the newest readable one.

  `fingerprint` identifies what the state means (model config, optimizer, mixture); a checkpoint
  with another fingerprint is refused instead of being loaded into a different model.
  `description` (JSON-able dict of what the fingerprint hashes) lets that refusal name the
  fields that differ.

  Preemption (SIGTERM from the TPU/GPU scheduler): with several processes, jax.distributed
  catches the signal and orbax's preemption sync point makes every process stop at the same
  step; a single process has no such service, so `watch_preemption` installs a SIGTERM handler
  for the loop. Either way `reached_preemption(step)` says when to save and stop.
  """

  def __init__(self, directory: epath.PathLike, *, fingerprint: str, every: int, keep: int,
               use_async: bool = True, description: dict | None = None):
    self.fingerprint = fingerprint
    self.description = description
    self.directory = epath.Path(directory)
    policy = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=use_async,
        cleanup_tmp_directories=True,
        save_decision_policy=policy.AnySavePolicy([
            policy.FixedIntervalPolicy(max(int(every), 1)),
            policy.PreemptionCheckpointingPolicy()]))
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'meta'))
    self._sigterm = False

  @contextlib.contextmanager
  def watch_preemption(self) -> Iterator[None]:
    """While training: a single process turns SIGTERM into reached_preemption() == True."""
    previous = None
    if jax.process_count() == 1:
      def handle(signum, frame):
        del signum, frame
        self._sigterm = True
      try:
        previous = signal.signal(signal.SIGTERM, handle)
      except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
      yield
    finally:
      if previous is not None:
        signal.signal(signal.SIGTERM, previous)

  def reached_preemption(self, step: int) -> bool:
    """Whether to checkpoint at `step` and stop; call it at every step, on every process."""
    if jax.process_count() > 1:
      self._sigterm = self._sigterm or self.manager.reached_preemption(step)
    return self._sigterm

  def due(self, step: int, *, final: bool = False) -> bool:
    """Whether maybe_save(step) would write a checkpoint (the save interval, or `final`)."""
    if step in self.manager.all_steps():
      return False
    return final or self.manager.should_save(step)

  def maybe_save(self, step: int, state: Any, *, final: bool = False,
                 extra: dict | None = None) -> bool:
    if not self.due(step, final=final):
      return False
    meta = {'fingerprint': self.fingerprint, 'step': int(step),
            'checksums': state_checksums(state), **(extra or {})}
    if self.description is not None:
      meta['description'] = self.description
    self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                    meta=ocp.args.JsonSave(meta)), force=True)
    return True

  @property
  def unreadable_dir(self) -> epath.Path:
    """Where unreadable checkpoints are moved (and notes about them are left)."""
    return self.directory.parent / f'{self.directory.name}.unreadable'

  def restore(self, abstract_state: Any) -> tuple[Any, dict] | None:
    """The newest checkpoint that reads back whole, or None when there is none.

    Single process: an unreadable checkpoint is set aside and the previous one tried. Several
    processes: orbax's restore synchronises them, so a process that cannot read its shards
    cannot drop out alone; it leaves a note naming the step and stops the job, and the next
    start sets that checkpoint aside before restoring. A checksum mismatch is seen by every
    process alike and handled in place.
    """
    self._set_aside_noted()
    steps = sorted(self.manager.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      state, meta, error = None, None, None
      try:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = meta['meta']
      except Exception as e:  # unreadable metadata = corrupt checkpoint
        error = e
      if meta is not None and meta.get('fingerprint') != self.fingerprint:
        raise ConfigError(
            f'The checkpoint at step {step} in {self.directory} belongs to a run with a different '
            f'model, optimizer, mixture or data'
            f'{_differences(meta.get("description"), self.description)}; restore that config or '
            f'point the run at a fresh directory.')
      if error is None:
        try:
          restored = self.manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state)))
          state = restored['state']
          jax.block_until_ready(state)
        except Exception as e:
          error = e
      if error is not None and jax.process_count() > 1:
        self._note_and_stop(step, error)
      if error is None:  # the checksums: a computation over all shards, on every process
        expected = meta.get('checksums')
        if expected is None or state_checksums(state) == list(expected):
          return state, meta
        error = ValueError('the state does not match the checksums saved with it')
      self._set_aside(step, steps[i + 1:], _why(error))
    return None

  def _note_and_stop(self, step: int, error: Exception) -> None:
    note = self.unreadable_dir / f'{step}.process{jax.process_index()}.txt'
    note.parent.mkdir(parents=True, exist_ok=True)
    note.write_text(_why(error) + '\n')
    logging.error('Process %d cannot read the checkpoint at step %d in %s (%s).',
                  jax.process_index(), step, self.directory, _why(error))
    raise SystemExit(f'Process {jax.process_index()} cannot read its part of the checkpoint at '
                     f'step {step} in {self.directory} ({_why(error)}); noted in {note}, so '
                     'rerunning the same command sets it aside and resumes from the previous one.')

  def _set_aside_noted(self) -> None:
    """Sets aside the checkpoints that a process of an earlier start could not read."""
    noted: dict[int, list[tuple[epath.Path, str]]] = {}
    if self.unreadable_dir.exists():
      for note in self.unreadable_dir.glob('*.process*.txt'):
        noted.setdefault(int(note.name.split('.')[0]), []).append(
            (note, note.read_text().strip()))
    _barrier('checkpoint_notes_read')  # every process has read them before any is removed
    steps = sorted(self.manager.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      if step in noted:
        self._set_aside(step, steps[i + 1:], 'an earlier start noted: ' +
                        '; '.join(text for _, text in noted[step]))
    if lead.is_lead():
      for notes in noted.values():
        for note, _ in notes:
          note.unlink(missing_ok=True)

  def _set_aside(self, step: int, rest: list[int], why: str) -> None:
    """Moves an unreadable checkpoint out of the manager's sight (kept for inspection)."""
    where = f'falling back to step {rest[0]}' if rest else 'starting from scratch'
    source = self.directory / str(step)
    target = self.unreadable_dir / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
    if lead.is_lead():
      try:
        target.parent.mkdir(parents=True, exist_ok=True)
        source.rename(target)
        moved = f'moved to {target}'
      except Exception as e:  # a store without directory renames: delete it instead
        logging.warning('Could not move %s aside (%s); deleting it.', source, e)
        source.rmtree(missing_ok=True)
        moved = 'deleted'
    else:
      moved = 'moved aside by process 0'
    logging.warning('The checkpoint at step %d in %s is unreadable (%s); %s, %s.', step,
                    self.directory, why, moved, where)
    _barrier(f'checkpoint_set_aside_{step}')
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _why(error: Exception) -> str:
  return f'{type(error).__name__}: {str(error).splitlines()[0][:200]}' if str(error) else (
      type(error).__name__)


def _barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
