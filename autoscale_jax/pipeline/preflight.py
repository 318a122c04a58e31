"""mode=preflight: every program of the plan compiled for the target TPU slice, on this machine.

Before a pod is booked: whether each program compiles under the config's mesh and rules, its
memory per chip against the chip's HBM, a roofline step time with the MFU bound it implies, and
the plan's hours and chip-hours per stage. Needs no data and trains nothing: the programs are
lowered from abstract inputs (train/aot.py) for the devices libtpu describes.

Costs: XLA counts a loop body once, so FLOPs, HBM bytes and collective bytes come from the model
compiled unrolled at 2 and 3 layers (and grad_accum 1 at the full batch: the same FLOPs),
extrapolated to the real depth; memory comes from the real program. Step time at the roofline
= max(FLOPs / peak, HBM bytes / HBM bandwidth) + ICI bytes / ICI bandwidth + DCN bytes / DCN
bandwidth, an optimistic bound (no overlap is assumed for collectives, perfect for the rest);
the plan's hours are also given at an assumed MFU (config.preflight.mfu).
"""

import collections
import json
from collections.abc import Callable

import jax
import ml_collections
from etils import epath

from autoscale_jax.errors import ConfigError, UserError, check_number
from autoscale_jax.io import write_text_atomic
from autoscale_jax.lead import say
from autoscale_jax.models import build_model
from autoscale_jax.pipeline import compare, plan
from autoscale_jax.train import aot, chips, memory, mesh as mesh_lib
from autoscale_jax.train.doremi import DoReMiTrainer
from autoscale_jax.train.stacked import StackedTrainer
from autoscale_jax.train.trainer import Trainer

GiB = 2**30
PLAN_MODES = ('train', 'ddo', 'autoscale', 'compare')
STAGES = {'ddo': 'DDO budgets', 'check': 'check budgets', 'validate': 'validation',
          'swarm': 'compare: swarm', 'doremi': 'compare: DoReMi', 'compare': 'compare: targets',
          'train': 'train'}


def vocab_size(config: ml_collections.ConfigDict) -> int:
  """The model's vocabulary: the config's tokenizer where it exists without training, else
  preflight.vocab_size (or the size the trained tokenizer aims at)."""
  kind = config.data.tokenizer.kind
  if kind in ('gpt2', 'file'):
    from autoscale_jax.data import tokenizer  # pylint: disable=g-import-not-at-top
    return tokenizer.get_tokenizer(config.data, '/nonexistent', family=config.model.family
                                   ).vocab_size
  size = int(config.preflight.vocab_size) or int(config.data.tokenizer.vocab_size)
  return int(check_number(size, 'config.preflight.vocab_size', least=1, whole=True))


def plan_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of the mode whose plan preflight compiles (config.preflight.mode)."""
  if config.preflight.mode not in PLAN_MODES:
    raise ConfigError(f'config.preflight.mode is {config.preflight.mode!r}; use one of '
                      f'{" | ".join(PLAN_MODES)}.')
  target = config.copy_and_resolve_references()
  target.mode = config.preflight.mode
  return target


class Programs:
  """The trainers of one config on one set of devices, and the programs the plan runs."""

  def __init__(self, config: ml_collections.ConfigDict, devices, *, layers: int | None = None):
    self.config = config
    model_cfg = config.model.copy_and_resolve_references()
    if layers is not None:  # the cost models: unrolled, so every layer counts
      overrides = dict(model_cfg.overrides.to_dict()) if model_cfg.get('overrides') else {}
      model_cfg.overrides = ml_collections.ConfigDict({**overrides, 'num_layers': layers})
      model_cfg.scan_layers = False
    train_cfg = config.train.copy_and_resolve_references()
    if layers is not None:
      train_cfg.grad_accum = 1
    self.mesh = mesh_lib.make_mesh(config.mesh, devices)
    self.model = build_model(model_cfg, vocab_size=vocab_size(config),
                             seq_len=int(config.data.seq_len))
    self.single = Trainer(model=self.model, train_cfg=train_cfg, mesh=self.mesh,
                          rules=config.mesh.rules, num_domains=len(config.data.domains))
    self.eval_batch = int(config.eval.batch_size)
    self._stacks: dict[int, StackedTrainer] = {}

  def lowered(self, name: str) -> jax.stages.Lowered:
    """'init', 'train_step', 'eval_step', 'stack<N> init|train_step|eval_step', 'doremi step',
    'harness score'."""
    what, _, program = name.rpartition(' ')
    if what.startswith('stack'):
      size = int(what[5:])
      if size not in self._stacks:
        self._stacks[size] = StackedTrainer(self.single, size)
      return self._stacks[size].lower(program, self.eval_batch)
    if what == 'doremi':
      names = [d.name for d in self.config.data.domains]
      trainer = DoReMiTrainer(self.single, None, range(len(names)),
                              step_size=float(self.config.compare.doremi_step_size),
                              smoothing=float(self.config.compare.doremi_smoothing),
                              reference=str(self.config.compare.doremi_reference))
      return trainer.lower(program, self.eval_batch)
    if what == 'harness':
      from autoscale_jax.evaluate import harness  # pylint: disable=g-import-not-at-top
      return harness.lower_scoring(self.model, self.single.abstract_state.params, self.mesh,
                                   self.config.mesh.rules, self.eval_batch)
    return self.single.lower(name, self.eval_batch)


def program_names(config: ml_collections.ConfigDict, planned: list[tuple],
                  programs: Programs) -> list[str]:
  """The programs the plan runs: init, the step and eval; the stacked ones where train.stack_runs
  stacks a stage's runs on this slice (memory.choose_stacking, with the chip's HBM); DoReMi's
  step; the harness's scoring at its largest bucket."""
  names = ['init', 'train_step', 'eval_step']
  for size in sorted(set(collections.Counter(stage for stage, *_ in planned).values())):
    stack, _ = memory.choose_stacking(config, size, programs.single)
    if stack:
      names += [f'stack{size} init', f'stack{size} train_step', f'stack{size} eval_step']
  if config.mode == 'compare' and 'doremi' in compare.methods(config):
    names.append('doremi step')
  if config.eval.harness_tasks and config.model.family == 'gpt2':
    names.append('harness score')
  return names


def _seconds(cost: dict, chip: chips.Chip) -> dict[str, float]:
  compute = cost['flops'] / chip.peak_flops
  hbm = cost['hbm_bytes'] / chip.hbm_bandwidth if chip.hbm_bandwidth else 0.0
  ici = cost['ici_bytes'] / chip.ici_bandwidth if chip.ici_bandwidth else 0.0
  dcn = cost['dcn_bytes'] / chip.dcn_bandwidth if chip.dcn_bandwidth else 0.0
  return {'compute_s': compute, 'hbm_s': hbm, 'ici_s': ici, 'dcn_s': dcn,
          'step_s': max(compute, hbm) + ici + dcn}


def analyse_programs(real: Programs, devices, names: list[str], hbm: float,
                     say_line: Callable[[str], None]) -> dict[str, dict]:
  """Memory of every program at the real depth; the costs of the step programs extrapolated
  from unrolled 2- and 3-layer compiles (aot.extrapolate)."""
  mesh_devices = list(real.mesh.devices.flat)
  out = {}
  for name in names:
    analysis = aot.analyse(real.lowered(name), mesh_devices)
    out[name] = {'analysis': analysis}
    say_line(f'  compiled {name}: {analysis.compile_s:.1f} s, {analysis.total / GiB:.2f} GiB '
             'per device')
  if not all(r['analysis'].fits(hbm) for r in out.values()):
    return out  # does not fit: no step time to estimate
  layers = real.model.config.num_layers
  depths = aot.cost_depths(layers)
  small = {n: Programs(real.config, devices, layers=n) for n in depths}
  for name in ('train_step', 'eval_step'):
    analyses = [aot.analyse(small[n].lowered(name), mesh_devices) for n in depths]
    out[name]['cost'] = (aot.extrapolate(*analyses, layers) if len(analyses) == 2 else
                         analyses[0].cost)
    out[name]['cost_compile_s'] = sum(a.compile_s for a in analyses)
  return out


def plan_cost(planned: list[tuple], step_s: float, tokens_per_step: int, flops_per_token: float,
              chip: chips.Chip, num_chips: int, mfu: float) -> dict[str, dict]:
  """Hours and chip-hours per stage: at the roofline's step time and at the assumed MFU (of
  `num_chips` chips; chip-hours count chips, whatever a device is)."""
  stages: dict[str, dict] = {}
  for stage, _, tokens, steps, _ in planned:
    key = STAGES.get(stage.split()[0], stage)
    row = stages.setdefault(key, {'runs': 0, 'tokens': 0, 'steps': 0})
    row['runs'] += 1
    row['tokens'] += int(tokens)
    row['steps'] += int(steps)
  total = {'runs': 0, 'tokens': 0, 'steps': 0}
  for row in stages.values():
    for k in total:
      total[k] += row[k]
  stages['all'] = total
  for row in stages.values():
    row['hours_roofline'] = row['steps'] * step_s / 3600
    row['hours_at_mfu'] = (row['steps'] * tokens_per_step * flops_per_token
                           / (mfu * chip.peak_flops * num_chips) / 3600)
    row['chip_hours_roofline'] = row['hours_roofline'] * num_chips
    row['chip_hours_at_mfu'] = row['hours_at_mfu'] * num_chips
  return stages


def _slice_and_devices(config: ml_collections.ConfigDict, topology: str):
  the_slice = chips.parse_slice(topology)
  num_slices = mesh_lib.num_slices(config.mesh)
  devices = aot.topology_devices(the_slice.topology, num_slices)
  return the_slice, num_slices, devices


def _train_step(config: ml_collections.ConfigDict, devices) -> aot.Analysis | None:
  """The train step compiled under config's mesh, or None where the mesh is invalid."""
  from autoscale_jax.train import runs  # pylint: disable=g-import-not-at-top
  try:
    runs.check_config(config, mesh_lib.make_mesh(config.mesh, devices))
    programs = Programs(config, devices)
  except ConfigError:
    return None
  return aot.analyse(programs.lowered('train_step'), list(programs.mesh.devices.flat))


def alternatives(config: ml_collections.ConfigDict, the_slice: chips.Slice, devices, hbm: float,
                 needed: float, say_line: Callable[[str], None]) -> dict:
  """What fits instead, found by compiling the train step: the mesh of this slice with the least
  tensor parallelism that fits (the mesh is the only free choice: batch, grad_accum, remat and
  scan are in the run fingerprint), and the smallest larger slice of the same chip under the
  config's mesh (the search stops where doubling the slice saves under 10%: a replicated state
  never shrinks).
  `hbm`: bytes a device holds; `needed`: the train step's bytes per device here."""
  per_slice = len(devices) // mesh_lib.num_slices(config.mesh)

  def tried(what: str, analysis: aot.Analysis | None) -> bool:
    say_line(f'  {what}: ' + ('invalid for the batch sizes' if analysis is None else
                              f'{analysis.total / GiB:.2f} GiB'))
    return analysis is not None and analysis.fits(hbm)

  meshes = []
  tensor = 1
  while tensor <= min(per_slice, 16) and not meshes:  # the least tensor parallelism that fits
    candidate = config.copy_and_resolve_references()
    candidate.mesh.data, candidate.mesh.fsdp, candidate.mesh.tensor = 1, -1, tensor
    analysis = _train_step(candidate, devices)
    if tried(f'mesh fsdp {per_slice // tensor} x tensor {tensor}', analysis):
      meshes.append({'data': 1, 'fsdp': per_slice // tensor, 'tensor': tensor,
                     'gib_per_device': analysis.total / GiB})
    tensor *= 2
  larger = None
  cores = the_slice.chips * the_slice.chip.cores_per_chip
  for k in range(1, 4):
    name = f'{the_slice.chip.name}-{cores * 2**k}'
    bigger, _, bigger_devices = _slice_and_devices(config, name)
    analysis = _train_step(config, bigger_devices)
    if tried(f'slice {name}', analysis):
      larger = {'slice': name, 'topology': bigger.topology,
                'gib_per_device': analysis.total / GiB}
      break
    if analysis is not None:
      if analysis.total > 0.9 * needed:
        break
      needed = analysis.total
  return {'meshes': meshes, 'slice': larger}


def _gib(x: float) -> str:
  return f'{x / GiB:.2f}'


def run(config: ml_collections.ConfigDict, workdir: epath.Path,
        say_line: Callable[[str], None] = say) -> dict:
  """mode=preflight; writes <workdir>/preflight.json and raises UserError where it does not fit."""
  if not config.preflight.topology:
    raise ConfigError('config.preflight.topology is empty; set it to the slice to compile for, '
                      f'{chips.FORMS}.')
  mfu = check_number(config.preflight.mfu, 'config.preflight.mfu', least=1e-6, most=1.0)
  target = plan_config(config)
  the_slice, num_slices, devices = _slice_and_devices(target, config.preflight.topology)
  device = chips.per_device(the_slice.chip, chips.devices_per_chip(devices))
  from autoscale_jax.train import runs  # pylint: disable=g-import-not-at-top
  runs.check_config(target, mesh_lib.make_mesh(target.mesh, devices))
  planned = plan.rows(target)
  programs = Programs(target, devices)
  names = program_names(target, planned, programs)
  n_chips = the_slice.chips * num_slices
  say_line(f'Preflight of mode={target.mode} for {num_slices} x {the_slice.name} '
           f'({the_slice.topology}: {n_chips} {the_slice.chip.name} chips, {len(devices)} '
           f'devices, {_gib(device.hbm_bytes)} GiB HBM each), mesh '
           f'{dict(zip(mesh_lib.AXES, programs.mesh.devices.shape))}; compiling '
           f'{len(names)} programs:')
  results = analyse_programs(programs, devices, names, device.hbm_bytes, say_line)
  tokens_per_step = int(target.train.batch_size) * int(target.data.seq_len)
  flops_per_token = float(programs.model.flops_per_token)
  rows = {}
  for name, r in results.items():
    a = r['analysis']
    row = {'compile_s': a.compile_s, 'arguments_gib': a.arguments / GiB,
           'outputs_gib': a.outputs / GiB, 'aliased_gib': a.aliased / GiB,
           'temporaries_gib': a.temporaries / GiB, 'code_gib': a.code / GiB,
           'total_gib': a.total / GiB, 'hbm_gib': device.hbm_bytes / GiB,
           'fits': a.fits(device.hbm_bytes), 'compiler_error': a.error}
    if 'cost' in r:
      row.update({f'{k}_per_device': v for k, v in r['cost'].items()})
      row.update(_seconds(r['cost'], device))
      row['cost_compile_s'] = r['cost_compile_s']
    rows[name] = row
  fits = all(r['fits'] for r in rows.values())
  step, cost = rows['train_step'], {}
  step['analytic_flops_per_device'] = flops_per_token * tokens_per_step / len(devices)
  if fits:
    step['mfu_bound'] = step['analytic_flops_per_device'] / (step['step_s'] * device.peak_flops)
    cost = plan_cost(planned, step['step_s'], tokens_per_step, flops_per_token, the_slice.chip,
                     n_chips, mfu)
  summary = {'topology': config.preflight.topology, 'slice_topology': the_slice.topology,
             'num_slices': num_slices, 'chips': n_chips, 'devices': len(devices),
             'chip': the_slice.chip.name, 'mode': target.mode,
             'mesh': dict(zip(mesh_lib.AXES, map(int, programs.mesh.devices.shape))),
             'model': f'{target.model.family}-{target.model.size}',
             'layers': programs.model.config.num_layers, 'tokens_per_step': tokens_per_step,
             'flops_per_token': flops_per_token, 'mfu_assumed': mfu, 'programs': rows,
             'plan': cost, 'fits': fits}
  for line in report_lines(summary):
    say_line(line)
  if not summary['fits']:
    say_line('Does not fit; trying what would:')
    summary['alternatives'] = alternatives(target, the_slice, devices, device.hbm_bytes,
                                           results['train_step']['analysis'].total, say_line)
  write_text_atomic(epath.Path(workdir) / 'preflight.json', json.dumps(summary, indent=1))
  if not summary['fits']:
    raise UserError(does_not_fit(summary))
  return summary


def does_not_fit(summary: dict) -> str:
  over = [f'{n} ({r["total_gib"]:.1f} GiB)' for n, r in summary['programs'].items()
          if not r['fits']]
  alt = summary.get('alternatives', {})
  meshes = ', '.join(f'mesh.fsdp={m["fsdp"]} mesh.tensor={m["tensor"]}'
                     for m in alt.get('meshes', []))
  bigger = alt.get('slice')
  fixes = [f'a mesh that fits this slice ({meshes})' if meshes else '',
           f'the smallest larger slice that fits, {bigger["slice"]}' if bigger else '']
  fix = ' or '.join(f for f in fixes if f) or 'a larger slice or more tensor parallelism'
  hbm = next(iter(summary['programs'].values()))['hbm_gib']
  return (f'does not fit: {", ".join(over)} over the {hbm:.1f} GiB of HBM per device of '
          f'{summary["topology"]}; use {fix}.')


def how_costed(layers: int) -> str:
  depths = aot.cost_depths(layers)
  if len(depths) == 1:
    return f'an unrolled compile at its {layers} layers'
  return f'{depths[0]}- and {depths[1]}-layer compiles extrapolated to {layers} layers'


def report_lines(summary: dict) -> list[str]:
  """The per-program table and the plan's cost, as printed (RESULTS.md quotes them)."""
  lines = ['', '| program | compile s | args GiB | outputs GiB | temps GiB | total GiB '
           '| HBM GiB | fits |', '|---|---:|---:|---:|---:|---:|---:|---|']
  for name, r in summary['programs'].items():
    lines.append(f'| {name} | {r["compile_s"]:.1f} | {r["arguments_gib"]:.2f} | '
                 f'{r["outputs_gib"]:.2f} | {r["temporaries_gib"]:.2f} | {r["total_gib"]:.2f} | '
                 f'{r["hbm_gib"]:.1f} | {"fits" if r["fits"] else "DOES NOT FIT"} |')
  s = summary['programs']['train_step']
  if not summary['fits']:
    return lines
  lines += ['', f'train step per device: {s["flops_per_device"]:.3g} FLOPs (analytic '
                f'{s["analytic_flops_per_device"]:.3g}), {s["hbm_bytes_per_device"]:.3g} HBM '
                f'bytes, {s["ici_bytes_per_device"]:.3g} ICI and {s["dcn_bytes_per_device"]:.3g} '
                f'DCN bytes ({how_costed(summary["layers"])})',
            f'roofline step time {s["step_s"] * 1e3:.1f} ms = max(compute '
            f'{s["compute_s"] * 1e3:.1f}, HBM {s["hbm_s"] * 1e3:.1f}) + ICI '
            f'{s["ici_s"] * 1e3:.1f} + DCN {s["dcn_s"] * 1e3:.1f} ms; MFU at most '
            f'{s["mfu_bound"]:.0%}',
            '', f'| stage | runs | tokens | steps | hours (roofline) | chip-hours (roofline) | '
                f'hours at MFU {summary["mfu_assumed"]:.0%} | chip-hours at MFU |',
            '|---|---:|---:|---:|---:|---:|---:|---:|']
  for stage, r in summary['plan'].items():
    lines.append(f'| {stage} | {r["runs"]} | {r["tokens"]:,} | {r["steps"]:,} | '
                 f'{r["hours_roofline"]:,.1f} | {r["chip_hours_roofline"]:,.0f} | '
                 f'{r["hours_at_mfu"]:,.1f} | {r["chip_hours_at_mfu"]:,.0f} |')
  return lines


def dry_run(config: ml_collections.ConfigDict, say_line: Callable[[str], None] = say) -> None:
  """The plan preflight would compile and cost, and for which slice; compiles nothing."""
  target = plan_config(config)
  plan.dry_run(target, say_line)
  where = config.preflight.topology or '(set config.preflight.topology)'
  if config.preflight.topology:
    the_slice = chips.parse_slice(config.preflight.topology)
    where = (f'{the_slice.name} ({the_slice.topology}, {the_slice.chips} {the_slice.chip.name} '
             'chips)')
  say_line(f'preflight: would compile init, train_step and eval_step (and the stacked, DoReMi '
           f'and harness programs the plan runs) for {where}; nothing compiled in a dry run.')
