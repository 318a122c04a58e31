"""Device mesh (data, fsdp, tensor) from the config, including multi-slice (ICI x DCN) layouts."""

from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from autoscale_jax.errors import ConfigError

AXES = ('data', 'fsdp', 'tensor')


def _fill(sizes: Sequence[int], total: int, what: str) -> list[int]:
  """Resolves at most one -1 so that the sizes multiply to `total`."""
  sizes = list(sizes)
  if sizes.count(-1) > 1:
    raise ConfigError(f'config.mesh: at most one of {what} may be -1; set the others explicitly.')
  if any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f'config.mesh: {what} sizes must be positive or -1, got {sizes}.')
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if total % known:
      raise ConfigError(
          f'config.mesh: {what} = {sizes} cannot fill {total} devices ({total} is not divisible '
          f'by {known}); choose sizes whose product divides the device count.')
    sizes[sizes.index(-1)] = total // known
  if int(np.prod(sizes)) != total:
    raise ConfigError(
        f'config.mesh: {what} = {sizes} multiplies to {int(np.prod(sizes))} but there are {total} '
        f'devices; make the product equal {total} or set one size to -1.')
  return sizes


def num_slices(cfg: ml_collections.ConfigDict) -> int:
  """How many slices config.mesh spans: the product of its dcn_* sizes."""
  dcn = [cfg[f'dcn_{a}'] for a in AXES]
  if any(d < 1 for d in dcn):
    raise ConfigError(f'config.mesh: dcn_* sizes must be >= 1, got {dcn}.')
  return int(np.prod(dcn))


def mesh_shape(cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[list[int], list[int]]:
  """Returns the per-slice (ICI) and across-slice (DCN) sizes of the (data, fsdp, tensor) axes."""
  dcn = [cfg[f'dcn_{a}'] for a in AXES]
  slices = num_slices(cfg)
  if num_devices % slices:
    raise ConfigError(
        f'config.mesh: dcn sizes {dcn} ask for {slices} slices but {num_devices} devices '
        f'cannot be split into them; fix config.mesh.dcn_*.')
  ici = _fill([cfg[a] for a in AXES], num_devices // slices, 'data/fsdp/tensor')
  return ici, dcn


def make_mesh(cfg: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """Builds the mesh; axes are Auto so that jit propagates shardings from in/out specs."""
  devices = list(jax.devices() if devices is None else devices)
  ici, dcn = mesh_shape(cfg, len(devices))
  try:
    if int(np.prod(dcn)) > 1:
      grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices)
    else:
      grid = mesh_utils.create_device_mesh(ici, devices)
  except (AssertionError, NotImplementedError, ValueError):
    # Devices without a known topology (CPU, one GPU, no slice_index): slices are consecutive
    # blocks of the device list, and each axis is (dcn, ici) with dcn outermost.
    n = len(AXES)
    grid = np.asarray(devices).reshape(dcn + ici)
    grid = grid.transpose([k for a in range(n) for k in (a, a + n)])
    grid = grid.reshape([d * i for d, i in zip(dcn, ici)])
  return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def batch_axes(rules: Sequence) -> tuple[str, ...]:
  """The mesh axes that the logical 'batch' axis is split over."""
  for name, target in rules:
    if name == 'batch':
      if target is None:
        return ()
      return (target,) if isinstance(target, str) else tuple(target)
  return ('data', 'fsdp')


def batch_sharding(mesh: Mesh, rules: Sequence, ndim: int = 1) -> NamedSharding:
  """Sharding of a global batch array: dim 0 over the batch axes, the rest replicated."""
  return NamedSharding(mesh, P(batch_axes(rules), *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh, rules: Sequence) -> int:
  return int(np.prod([mesh.shape[a] for a in batch_axes(rules)]))


def maybe_initialize_distributed() -> None:
  """Joins a multi-process job when the launcher asks for it (launch/*.sh set these variables).

  AUTOSCALE_DISTRIBUTED=1 alone lets jax find the cluster itself (TPU pods, SLURM);
  AUTOSCALE_COORDINATOR=host:port with AUTOSCALE_NUM_PROCESSES and AUTOSCALE_PROCESS_ID name it
  explicitly (any cluster, or several processes on one machine).
  """
  import os
  coordinator = os.environ.get('AUTOSCALE_COORDINATOR')
  if coordinator:
    try:
      num_processes = int(os.environ['AUTOSCALE_NUM_PROCESSES'])
      process_id = int(os.environ['AUTOSCALE_PROCESS_ID'])
    except (KeyError, ValueError) as e:
      raise ConfigError('AUTOSCALE_COORDINATOR is set, so AUTOSCALE_NUM_PROCESSES and '
                        'AUTOSCALE_PROCESS_ID must be set to integers too (launch/*.sh do it).'
                        ) from e
    jax.distributed.initialize(coordinator_address=coordinator,
                               num_processes=num_processes, process_id=process_id)
  elif os.environ.get('AUTOSCALE_DISTRIBUTED', '0') == '1':
    jax.distributed.initialize()
