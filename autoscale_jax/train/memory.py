"""Whether N runs fit on a device stacked: a per-device memory estimate and the choice it drives.

config.train.stack_runs: 'auto' stacks when the estimate fits; True and False force the choice.
The choice is logged with its figures, so a user sees why a budget trained stacked or not.
"""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from autoscale_jax.errors import ConfigError
from autoscale_jax.train.chips import chip_of, devices_per_chip
from autoscale_jax.train.stacked import default_vectorize, stack_layout
from autoscale_jax.train.trainer import Trainer

GiB = 2**30
# 'auto' stacks when the estimate is at most this fraction of the free device memory: the
# estimate ignores XLA's scratch buffers and fragmentation.
MEMORY_FRACTION = 0.8
# Without memory_stats (CPU), a device is assumed to get this share of the host's RAM, divided
# among the process's devices (fake CPU devices share one host).
CPU_MEMORY_FRACTION = 0.25
CPU_FALLBACK_BYTES = 2 * GiB  # when even the host RAM is unknown

def device_memory(device: jax.Device, devices_per_chip: int = 1) -> tuple[int, str]:
  """Free bytes of one device and where the figure comes from: the runtime's memory_stats, else
  the chip table's HBM (a TPU slice's devices compiled for on another machine: mode=preflight;
  `devices_per_chip` 2 where each TensorCore is a device), else a share of this host's RAM."""
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except  # backends without the call
    stats = None
  if stats and stats.get('bytes_limit'):
    free = int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))
    return free, 'memory_stats'
  chip = chip_of(device.device_kind)
  if device.platform != 'cpu' and chip and chip.hbm_bytes:
    return int(chip.hbm_bytes // devices_per_chip), f'{chip.name} HBM (chip table)'
  try:
    host = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (AttributeError, ValueError, OSError):
    return CPU_FALLBACK_BYTES, 'default'
  share = int(host * CPU_MEMORY_FRACTION / max(len(jax.local_devices()), 1))
  return share, f'{CPU_MEMORY_FRACTION:.0%} of host RAM per {len(jax.local_devices())} devices'


def _shard_bytes(abstract) -> int:
  return sum(int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize
             for a in jax.tree.leaves(abstract))


def estimate_memory(trainer: Trainer, num_runs: int,
                    vectorize: bool | None = None) -> dict[str, int]:
  """Per-device bytes of N stacked runs: state (params + Adam moments), gradients, activations.

  State and gradients are exact from the shapes and the stacked layout; activations are a
  transformer rule of thumb per token and layer (residual stream, attention and MLP inputs,
  attention scores, logits) for the micro-batch each device holds per run. Vmapped runs
  (`vectorize`, as StackedTrainer decides it) hold every run's gradients and activations at
  once; a loop over the runs one run's. With remat, one residual per layer plus one layer's
  activations are kept.
  """
  layout = stack_layout(trainer, num_runs)
  if vectorize is None:
    vectorize = default_vectorize(trainer.mesh)
  at_once = layout.runs_per_device if vectorize or layout.run_axes else 1
  state = _shard_bytes(layout.abstract_state)
  grads = _shard_bytes(layout.abstract_state.params) // layout.runs_per_device * at_once
  cfg = trainer.model.config
  d, layers, heads = cfg.d_model, cfg.num_layers, cfg.num_heads
  d_ff = getattr(cfg, 'd_ff', 4 * d)
  length = trainer.model.seq_len
  micro = int(trainer.train_cfg.batch_size) // trainer.grad_accum
  tokens = micro // layout.inner_dp * length
  itemsize = jnp.dtype(cfg.dtype).itemsize
  per_layer = 10 * d + 2 * d_ff + 2 * heads * length  # values per token
  if cfg.remat == 'none':
    body = tokens * itemsize * layers * per_layer
  else:
    body = tokens * itemsize * (layers * 2 * d + per_layer)
  logits = tokens * cfg.vocab_size * 4 * 2  # float32 logits and their gradient
  activations = (body + logits) * at_once
  return {'state': state, 'grads': grads, 'activations': activations,
          'total': state + grads + activations}


def _parse_stack_runs(value) -> str:
  """config.train.stack_runs -> 'auto' | 'yes' | 'no' (bools, or strings from the command line)."""
  if isinstance(value, (bool, np.bool_)):
    return 'yes' if value else 'no'
  text = str(value).strip().lower()
  if text in ('auto', ''):
    return 'auto'
  if text in ('true', '1', 'yes'):
    return 'yes'
  if text in ('false', '0', 'no'):
    return 'no'
  raise ConfigError(f"config.train.stack_runs is {value!r}; use 'auto', True or False.")


def choose_stacking(config: ml_collections.ConfigDict, num_runs: int, trainer: Trainer,
                    mesh: jax.sharding.Mesh | None = None) -> tuple[bool, str]:
  """Whether to train `num_runs` runs stacked, and why (one line for the log).

  config.train.stack_runs: 'auto' (default) stacks when the per-device estimate of N stacked
  runs (estimate_memory) is at most MEMORY_FRACTION of the device's free memory (memory_stats;
  on CPU a conservative share of the host RAM); True always stacks (warning in the reason when
  it does not fit the estimate); False never does.
  """
  mode = _parse_stack_runs(config.train.stack_runs)
  if num_runs < 2:
    plural = '' if num_runs == 1 else 's'
    return False, f'sequential: {num_runs} run{plural} to train, nothing to stack'
  if mode == 'no':
    return False, (f'sequential: {num_runs} runs one after another '
                   '(config.train.stack_runs=False)')
  mesh = mesh or trainer.mesh
  device = next((d for d in mesh.devices.flat if d.process_index == jax.process_index()),
                mesh.devices.flat[0])
  est = estimate_memory(trainer, num_runs)['total']
  free, source = device_memory(device, devices_per_chip(mesh.devices.flat))
  fits = est <= MEMORY_FRACTION * free
  figures = f'est. {est / GiB:.2f} GiB of {free / GiB:.2f} GiB per device ({source})'
  if mode == 'yes':
    note = '' if fits else f'; over {MEMORY_FRACTION:.0%} of it, may run out of memory'
    return True, f'stacking {num_runs} runs (config.train.stack_runs=True): {figures}{note}'
  if fits:
    return True, f'stacking {num_runs} runs: {figures}'
  return False, (f'sequential: {num_runs} stacked runs need {figures}, more than '
                 f'{MEMORY_FRACTION:.0%}; set config.train.stack_runs=True to force')
