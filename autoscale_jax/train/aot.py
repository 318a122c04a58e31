"""Ahead-of-time compilation for devices that are not here: a TPU slice's devices from libtpu's
topology description, a lowered program compiled for them, and what the compiled program says
about itself (memory per device, FLOPs, HBM traffic, the bytes of its collectives).

XLA's cost analysis counts a while loop's body once: a scanned stack of layers counts as one
layer. `extrapolate` turns unrolled analyses at 2 and 3 layers into the real depth's, which is
cheaper than unrolling every layer. FLOPs extrapolate exactly; HBM bytes within 1% to a few
layers more, but a deep unrolled compile fuses differently (tiny GPT-2 at 6 layers: 23% fewer
bytes than extrapolated), so the bytes, and a memory-bound step time, lean high.
"""

import dataclasses
import importlib.util
import math
import os
import re
import time
from collections.abc import Sequence

import jax
import numpy as np

from autoscale_jax.errors import ConfigError, UserError

# libtpu looks for the TPU it runs on at start-up and warns at length when there is none; these
# tell it there is nothing to look for (it then only compiles). It also takes a lockfile so that
# one process owns the local TPU; compiling owns nothing, so several processes may do it at once.
QUIET_TPU_ENV = {'TPU_SKIP_MDS_QUERY': '1', 'TPU_WORKER_HOSTNAMES': 'localhost',
                 'TPU_ACCELERATOR_TYPE': 'v5litepod-4', 'TF_CPP_MIN_LOG_LEVEL': '3',
                 'GRPC_VERBOSITY': 'ERROR', 'ALLOW_MULTIPLE_LIBTPU_LOAD': '1'}
COLLECTIVES = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all', 'collective-permute')
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'f8e4m3fn': 1, 'f8e5m2': 1, 's16': 2, 'u16': 2,
                'bf16': 2, 'f16': 2, 's32': 4, 'u32': 4, 'f32': 4, 's64': 8, 'u64': 8,
                'f64': 8, 'c64': 8, 'c128': 16}
_SHAPE = re.compile(r'\b(' + '|'.join(_DTYPE_BYTES) + r')\[([\d,]*)\]')
_OP = re.compile(r'=\s*(.+?)\s+(' + '|'.join(COLLECTIVES) + r')(-start)?\((.*)$')
_GROUPS_IOTA = re.compile(r'replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?')
_OOM = re.compile(r'required for [^(]*\(([\d.]+)([KMGT])\)')
_UNITS = {'K': 2**10, 'M': 2**20, 'G': 2**30, 'T': 2**40}
_GROUPS_LIST = re.compile(r'replica_groups=\{(\{[\d,]*\}(?:,\{[\d,]*\})*)\}')


def quiet_libtpu() -> None:
  """Sets QUIET_TPU_ENV where the user has not; call before jax initialises the TPU plugin."""
  for key, value in QUIET_TPU_ENV.items():
    os.environ.setdefault(key, value)


def topology_devices(topology: str, num_slices: int = 1,
                     field: str = 'config.preflight.topology') -> list[jax.Device]:
  """The devices of `num_slices` slices of `topology` (e.g. 'v5p:4x4x4'), from libtpu."""
  if importlib.util.find_spec('libtpu') is None:
    raise UserError('mode=preflight compiles with the TPU compiler in libtpu, which is not '
                    'installed; install it with pip install "autoscale_jax[tpu]" (jax[tpu] at '
                    'our jax version).')
  quiet_libtpu()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  kwargs = {'num_slices': num_slices} if num_slices > 1 else {}
  try:
    return list(topologies.get_topology_desc(topology, 'tpu', **kwargs).devices)
  except Exception as e:  # pylint: disable=broad-except  # libtpu's own errors
    raise ConfigError(f'{field}: libtpu cannot build the topology {topology!r} '
                      f'({str(e).splitlines()[0][:200]}); give another slice.') from None


def _bytes(text: str) -> list[int]:
  return [_DTYPE_BYTES[d] * math.prod(int(s) for s in dims.split(',') if s)
          for d, dims in _SHAPE.findall(text)]


def _groups(line: str, num_devices: int) -> list[list[int]]:
  """The replica groups of a collective's HLO line (every device in one group if unstated)."""
  iota = _GROUPS_IOTA.search(line)
  if iota:
    shape = [int(x) for x in iota.group(1).split(',')]
    dims = [int(x) for x in iota.group(2).split(',')]
    ids = np.arange(math.prod(dims)).reshape(dims)
    if iota.group(3):
      ids = ids.transpose([int(x) for x in iota.group(3).split(',')])
    return ids.reshape(shape).tolist()
  listed = _GROUPS_LIST.search(line)
  if listed:
    return [[int(x) for x in g.strip('{}').split(',') if x]
            for g in re.findall(r'\{[\d,]*\}', listed.group(1))]
  return [list(range(num_devices))]


def collective_bytes(hlo: str, slices: Sequence[int]) -> dict[str, float]:
  """Bytes each device sends in the program's collectives, over ICI and over DCN.

  Per collective, with n devices in a group and B the bytes of the full array: all-gather and
  reduce-scatter move B (n-1)/n, all-reduce twice that (reduce-scatter then all-gather),
  all-to-all B (n-1)/n, a permute B. A group whose devices lie on several slices (`slices[i]`:
  the slice of logical device i) is counted as DCN traffic. Loops count once (see module doc).
  """
  out = {'ici': 0.0, 'dcn': 0.0}
  for line in hlo.splitlines():
    op = _OP.search(line)
    if not op:
      continue
    result, kind, start, operands = op.groups()
    out_bytes = _bytes(result)
    if not out_bytes:
      continue
    groups = _groups(line, len(slices))
    n = max(len(groups[0]), 1)
    if start and kind in ('all-gather', 'collective-permute'):  # (operands, results, ...)
      out_bytes = out_bytes[len(out_bytes) // 2:] if kind == 'all-gather' else out_bytes[1:2]
    if kind == 'reduce-scatter':  # the full array is the operand: n times each result
      full = sum(out_bytes) * n
    else:  # a combined collective has a tuple of results: all of them move
      full = sum(out_bytes)
    share = full * (n - 1) / n if n > 1 else 0.0
    moved = {'all-reduce': 2 * share, 'collective-permute': float(full)}.get(kind, share)
    spans = any(len({slices[i] for i in g if i < len(slices)}) > 1 for g in groups)
    out['dcn' if spans else 'ici'] += moved
  return out


COST_FIELDS = ('flops', 'hbm_bytes', 'ici_bytes', 'dcn_bytes')  # per call, per device


@dataclasses.dataclass
class Analysis:
  """One compiled program on one device: memory (bytes), cost per call, compile seconds."""
  compile_s: float
  arguments: int
  outputs: int
  temporaries: int
  code: int
  aliased: int
  flops: float
  hbm_bytes: float
  ici_bytes: float
  dcn_bytes: float

  error: str = ''  # the compiler's own out-of-memory message, where it refused the program

  def fits(self, hbm: float) -> bool:
    """Whether the program fits `hbm` bytes a device (a program the compiler refused does not)."""
    return not self.error and self.total <= hbm

  @property
  def cost(self) -> dict[str, float]:
    return {f: getattr(self, f) for f in COST_FIELDS}

  @property
  def total(self) -> int:
    """Peak bytes a device holds while the program runs: inputs, outputs not written in place
    of a donated input, temporaries and the program itself."""
    return self.arguments + self.outputs - self.aliased + self.temporaries + self.code


def analyse(lowered: jax.stages.Lowered, devices: Sequence[jax.Device]) -> Analysis:
  """Compiles `lowered` for `devices` (its mesh's, in order) and reads its memory and cost
  analyses and its collectives."""
  cache = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', False)  # a TPU executable is not for here
  start = time.perf_counter()
  try:
    compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as e:
    # The TPU compiler refuses a program whose temporaries exceed HBM: that is "does not fit".
    needed = _OOM.search(str(e))
    if 'RESOURCE_EXHAUSTED' not in str(e) or not needed:
      raise
    size = float(needed.group(1)) * _UNITS[needed.group(2)]
    return Analysis(compile_s=time.perf_counter() - start, arguments=0, outputs=0,
                    temporaries=int(size), code=0, aliased=0, flops=0.0, hbm_bytes=0.0,
                    ici_bytes=0.0, dcn_bytes=0.0, error=str(e).splitlines()[0][:300])
  finally:
    jax.config.update('jax_enable_compilation_cache', cache)
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  cost = cost or {}
  slices = [int(getattr(d, 'slice_index', 0) or 0) for d in devices]
  comm = collective_bytes(compiled.as_text(), slices)
  return Analysis(compile_s=seconds, arguments=int(mem.argument_size_in_bytes),
                  outputs=int(mem.output_size_in_bytes), temporaries=int(mem.temp_size_in_bytes),
                  code=int(mem.generated_code_size_in_bytes),
                  aliased=int(mem.alias_size_in_bytes), flops=float(cost.get('flops', 0.0)),
                  hbm_bytes=float(cost.get('bytes accessed', 0.0)), ici_bytes=comm['ici'],
                  dcn_bytes=comm['dcn'])



BASE_LAYERS = 2  # the cost models' depths: BASE_LAYERS and one more (see extrapolate)


def cost_depths(layers: int) -> tuple[int, ...]:
  """The depths to compile unrolled for a `layers`-deep model's cost: its own where it is no
  deeper than the cost models (once), else BASE_LAYERS and one more, extrapolated."""
  return (layers,) if layers <= BASE_LAYERS + 1 else (BASE_LAYERS, BASE_LAYERS + 1)


def extrapolate(base: Analysis, more: Analysis, layers: int) -> dict[str, float]:
  """Per-call cost of a `layers`-deep model from its analyses at BASE_LAYERS and one more layer:
  that layer's increment is every further layer's (linear in depth). Not from 1 layer: the
  first layer fuses with the embedding, so 1 -> 2 layers adds 9% fewer HBM bytes than 2 -> 3
  (tiny GPT-2); FLOPs are linear from any depth."""
  low, high = base.cost, more.cost
  return {f: low[f] + (layers - BASE_LAYERS) * (high[f] - low[f]) for f in COST_FIELDS}
