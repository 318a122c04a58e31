"""Accelerator chips and Cloud TPU slices: the one table of what a chip can do.

Per chip: dense bf16 peak FLOP/s, HBM capacity and bandwidth, the interconnect bandwidth one chip
gets in a collective inside a slice (ICI; NVLink for GPUs) and across slices (DCN). MFU
(train.metrics.PEAK_FLOPS is this table's peak column) and mode=preflight's roofline read it.

Sources (vendor pages, read 2026-12):
- TPU v4: cloud.google.com/tpu/docs/v4: 275 TFLOP/s, 32 GiB at 1200 GB/s; all-reduce bandwidth
  1.1 PB/s per 4096-chip pod, i.e. 269 GB/s a chip.
- TPU v5e: cloud.google.com/tpu/docs/v5e: 197 TFLOP/s, 16 GB at 819 GB/s; all-reduce 51.2 TB/s per
  256-chip pod (200 GB/s a chip); DCN 6.4 Tbps per pod (25 Gbps a chip).
- TPU v5p: cloud.google.com/tpu/docs/v5p: 459 TFLOP/s, 95 GiB at 2765 GB/s; ICI 1200 GB/s
  bidirectional (600 GB/s each way); DCN 50 Gbps a chip.
- TPU v6e: cloud.google.com/tpu/docs/v6e: 918 TFLOP/s, 32 GB at 1638 GB/s; all-reduce 102.4 TB/s
  per 256-chip pod (400 GB/s a chip). DCN: not stated there; v5e's 25 Gbps a chip is assumed.
- TPU v4 DCN: not stated; v5e's figure is assumed.
- NVIDIA H100/H200 SXM (nvidia.com datasheets): 989 TFLOP/s dense bf16; 80 GB at 3.35 TB/s and
  141 GB at 4.8 TB/s; NVLink 900 GB/s bidirectional. A100 SXM 80GB: 312 TFLOP/s, 2.04 TB/s,
  NVLink 600 GB/s bidirectional. Across nodes 400 Gbps InfiniBand a GPU is assumed.
Figures of 0 are unknown: the roofline leaves that term out and says so.
"""

import dataclasses
import re

from autoscale_jax.errors import ConfigError

GB = 1e9


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str  # the generation as Cloud names it (v5p) or the GPU (H100)
  device_kind: str  # prefix of jax's Device.device_kind
  peak_flops: float  # dense bf16 FLOP/s
  hbm_bytes: float = 0.0
  hbm_bandwidth: float = 0.0  # bytes/s
  ici_bandwidth: float = 0.0  # bytes/s a chip gets in a collective within a slice (one way)
  dcn_bandwidth: float = 0.0  # bytes/s a chip gets across slices
  topology_name: str = ''  # the prefix of jax.experimental.topologies' names (TPUs)
  dims: int = 0  # 2 (a 2D torus: v5e, v6e) or 3 (v4, v5p)
  cores_per_chip: int = 1  # Cloud's vN-<cores> names count TensorCores (v4, v5p)


GiB = 2**30
CHIPS = {chip.device_kind: chip for chip in (
    Chip('v3', 'TPU v3', 123e12),
    Chip('v4', 'TPU v4', 275e12, 32 * GiB, 1200 * GB, 269 * GB, 3.125 * GB, 'v4', 3, 2),
    Chip('v5e', 'TPU v5 lite', 197e12, 16e9, 819 * GB, 200 * GB, 3.125 * GB, 'v5e', 2),
    Chip('v5e', 'TPU v5e', 197e12, 16e9, 819 * GB, 200 * GB, 3.125 * GB, 'v5e', 2),
    Chip('v5p', 'TPU v5p', 459e12, 95 * GiB, 2765 * GB, 600 * GB, 6.25 * GB, 'v5p', 3, 2),
    Chip('v5p', 'TPU v5', 459e12, 95 * GiB, 2765 * GB, 600 * GB, 6.25 * GB, 'v5p', 3, 2),
    Chip('v6e', 'TPU v6 lite', 918e12, 32e9, 1638 * GB, 400 * GB, 3.125 * GB, 'v6e', 2),
    Chip('v6e', 'TPU v6e', 918e12, 32e9, 1638 * GB, 400 * GB, 3.125 * GB, 'v6e', 2),
    Chip('H100', 'NVIDIA H100', 989e12, 80e9, 3350 * GB, 450 * GB, 50 * GB),
    Chip('H200', 'NVIDIA H200', 989e12, 141e9, 4800 * GB, 450 * GB, 50 * GB),
    Chip('GH200', 'NVIDIA GH200', 989e12, 96e9, 4000 * GB, 450 * GB, 50 * GB),
    Chip('A100', 'NVIDIA A100', 312e12, 80e9, 2039 * GB, 300 * GB, 50 * GB),
    Chip('L4', 'NVIDIA L4', 121e12, 24e9, 300 * GB),
)}


def chip_of(device_kind: str) -> Chip | None:
  """The table's chip for a jax device_kind (longest matching prefix), or None."""
  for prefix in sorted(CHIPS, key=len, reverse=True):
    if device_kind.startswith(prefix):
      return CHIPS[prefix]
  return None


def devices_per_chip(devices) -> int:
  """2 where the devices are a chip's two TensorCores (a v4 topology without megacore), else 1."""
  return 1 + max((int(getattr(d, 'core_on_chip', 0) or 0) for d in devices), default=0)


def per_device(chip: Chip, k: int) -> Chip:
  """The chip's figures per device where each chip is `k` devices (devices_per_chip)."""
  return dataclasses.replace(chip, peak_flops=chip.peak_flops / k, hbm_bytes=chip.hbm_bytes / k,
                             hbm_bandwidth=chip.hbm_bandwidth / k,
                             ici_bandwidth=chip.ici_bandwidth / k,
                             dcn_bandwidth=chip.dcn_bandwidth / k)


@dataclasses.dataclass(frozen=True)
class Slice:
  """One TPU slice: its chip, chip count and the topology string jax compiles for."""
  name: str  # as given: v5p-128, v5litepod-16 or a raw topology such as v5p:4x4x4
  chip: Chip
  chips: int
  topology: str  # e.g. 'v5p:4x4x4'


FORMS = ("a Cloud slice name (v4-N, v5e-N or v5litepod-N, v5p-N, v6e-N: N TensorCores for v4 "
         "and v5p, N chips for v5e and v6e) or a topology such as 'v5p:4x4x4'")
_GENERATIONS = {'v4': 'v4', 'v5e': 'v5e', 'v5litepod': 'v5e', 'v5p': 'v5p', 'v6e': 'v6e'}


def _by_generation(name: str) -> Chip:
  return next(c for c in CHIPS.values() if c.name == name)


def _grid(chips: int, dims: int) -> tuple[int, ...] | None:
  """Cloud's default shape of a slice of `chips` chips: sides powers of two, as even as they go
  (the longest last, as Cloud writes them: 2x2x1 for 4 chips of a 3D torus, 4x8 for 32)."""
  if chips < 1 or chips & (chips - 1):
    return None
  sides = [1] * dims
  for k in range(chips.bit_length() - 1):
    sides[k % dims] *= 2
  return tuple(sorted(sides, key=lambda s: (s == 1, s)))


def parse_slice(name: str, field: str = 'config.preflight.topology') -> Slice:
  """A slice from its Cloud name (v5p-128) or a raw topology string (v5p:4x4x4)."""
  name = str(name).strip()
  raw = re.fullmatch(r'(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})', name)
  if raw:
    chip = _by_generation(raw.group(1))
    sides = [int(s) for s in raw.group(2).split('x')]
    if len(sides) != chip.dims or min(sides) < 1:
      raise ConfigError(f'{field}={name!r}: a {chip.name} topology has {chip.dims} sides; give '
                        f'{FORMS}.')
    chips = 1
    for s in sides:
      chips *= s
    return Slice(name, chip, chips, name)
  cloud = re.fullmatch(r'(v4|v5e|v5litepod|v5p|v6e)-(\d+)', name)
  if not cloud:
    raise ConfigError(f'{field}={name!r} is not a TPU slice; give {FORMS}.')
  chip = _by_generation(_GENERATIONS[cloud.group(1)])
  cores = int(cloud.group(2))
  chips = cores // chip.cores_per_chip
  grid = _grid(chips, chip.dims) if cores % chip.cores_per_chip == 0 else None
  if grid is None:
    unit = 'TensorCores, 2 a chip' if chip.cores_per_chip > 1 else 'chips'
    raise ConfigError(f'{field}={name!r}: {cores} is not a slice size of {chip.name} (a power '
                      f'of two of {unit}); give {FORMS}.')
  return Slice(name, chip, chips, f'{chip.topology_name}:{"x".join(map(str, grid))}')
