"""GPU train-step throughput: tokens/s and MFU of GPT-2 small/large and BERT base.

bf16 compute with float32 parameters and optimizer state, our Trainer (forward, backward,
AdamW) on one device, at the largest batch of a descending list whose compiled step fits in the
device's memory (read from the compiled program's memory analysis, so no OOM run is needed).
MFU = model FLOPs per token (6 x matmul weights + attention, layers.matmul_flops_per_token; the
causal mask is not discounted) x tokens/s / the device's dense bf16 peak
(autoscale_jax.train.metrics.PEAK_FLOPS, or --peak-tflops).

Run it through bench/gpu.sh (which checks the environment and bounds the time). --smoke runs
tiny dims on any backend (CPU here) to check the script end to end.
"""

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from autoscale_jax.configs import tiny
from autoscale_jax.models import build_model  # noqa: E402
from autoscale_jax.train import (
  mesh as mesh_lib,  # noqa: E402
  metrics,  # noqa: E402
)
from autoscale_jax.train.trainer import Trainer, run_key  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Case:
  label: str
  family: str
  size: str  # a named size of the family
  vocab: int
  seq: int
  batches: tuple[int, ...]  # tried largest first
  overrides: tuple = ()  # extra model-config fields (smoke dims)


CASES = [
    Case('GPT-2 small (124M)', 'gpt2', 'small', 50257, 1024, (128, 96, 64, 48, 32, 16, 8)),
    Case('GPT-2 large (774M)', 'gpt2', 'large', 50257, 1024, (64, 48, 32, 24, 16, 8, 4)),
    Case('BERT base (110M)', 'bert', 'base', 30522, 512, (256, 192, 128, 96, 64, 32)),
]
SMOKE = [  # with bench/gpu.sh --smoke's memory limit the first batch does not fit
    Case('GPT-2 tiny (smoke)', 'gpt2', 'tiny', 1000, 64, (16, 8, 4),
         (('d_model', 64), ('num_heads', 2))),
    Case('BERT tiny (smoke)', 'bert', 'tiny', 1000, 64, (16, 4), (('d_model', 64),)),
]


def build(case: Case, batch: int, attention: str, scan_unroll: int):
  c = tiny.get_config()
  c.model.family, c.model.size = case.family, case.size
  c.model.dropout = 0.0
  c.model.dtype, c.model.param_dtype = 'bfloat16', 'float32'
  c.model.attention_impl = attention
  c.model.overrides = ml_collections.ConfigDict(
      dict(case.overrides, max_len=max(case.seq, 512), scan_unroll=scan_unroll))
  c.train.batch_size = batch
  c.mesh.data = 1
  model = build_model(c.model, vocab_size=case.vocab, seq_len=case.seq)
  trainer = Trainer(model=model, train_cfg=c.train,
                    mesh=mesh_lib.make_mesh(c.mesh, jax.devices()[:1]), rules=c.mesh.rules,
                    num_domains=1)
  return model, trainer


def compile_step(trainer: Trainer, model, batch: int):
  """AOT-compiles the train step from abstract shapes (nothing allocated)."""
  shapes = {'tokens': ((batch, model.row_len), jnp.int32), 'domain': ((batch,), jnp.int32),
            'mask': ((batch,), jnp.float32)}
  abstract_batch = {k: jax.ShapeDtypeStruct(s, d, sharding=trainer.batch_shardings[k])
                    for k, (s, d) in shapes.items()}
  with trainer.mesh_context():
    return trainer._train_step.lower(  # pylint: disable=protected-access
        trainer.abstract_state, abstract_batch, trainer.rng, np.int32(1000)).compile()


def memory_bytes(compiled) -> tuple[int, int] | None:
  """(bytes the step needs, bytes of its arguments) from the compiled program, if reported."""
  try:
    m = compiled.memory_analysis()
    need = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)
    return int(need), int(m.argument_size_in_bytes)
  except Exception:  # pylint: disable=broad-except  # not every backend reports it
    return None


def next_batch(batches: list[int], batch: int, need: int, args_bytes: int, limit: int) -> int:
  """The largest smaller candidate that a linear model of memory in the batch says fits.

  Memory ~ state (the arguments) + batch x per-sequence activations, fitted from the one
  compile that did not fit; this skips compiling candidates that cannot fit.
  """
  per_seq = max(need - args_bytes, 1) / batch
  smaller = [b for b in batches if b < batch]
  fitting = [b for b in smaller if args_bytes + b * per_seq <= limit]
  return max(fitting) if fitting else (max(smaller) if smaller else 0)


def run_case(case: Case, args, limit: int | None, deadline: float) -> dict:
  attentions = ['cudnn', 'xla'] if jax.default_backend() == 'gpu' else ['xla']
  tried = []
  batches = sorted(case.batches, reverse=True)
  batch = batches[0]
  while batch:
    if time.time() > deadline:
      return dict(label=case.label, error='out of time', tried=tried)
    compiled = None
    for attention in list(attentions):
      try:
        model, trainer = build(case, batch, attention, args.scan_unroll)
        t0 = time.time()
        compiled = compile_step(trainer, model, batch)
        compile_s = time.time() - t0
        break
      except Exception as e:  # pylint: disable=broad-except  # e.g. cuDNN attention unsupported
        print(f'  {case.label}: batch {batch}, attention {attention}: compile failed: '
              f'{str(e).splitlines()[0][:200]}', flush=True)
        attentions.remove(attention)
    if compiled is None:
      return dict(label=case.label, error='no attention implementation compiles', tried=tried)
    tried.append(batch)
    memory = memory_bytes(compiled)
    need = memory[0] if memory else None
    if limit is not None and memory is not None and need > limit:
      print(f'  {case.label}: batch {batch} needs {need / 2**30:.2f} GiB > '
            f'{limit / 2**30:.2f} GiB; trying a smaller batch', flush=True)
      batch = next_batch(batches, batch, need, memory[1], limit)
      continue
    rng = np.random.default_rng(0)
    tokens = rng.integers(200, case.vocab, (batch, model.row_len)).astype(np.int32)
    if case.family == 'bert':
      tokens[:, 0], tokens[:, -1] = 101, 102
    data = trainer.put_batch({'tokens': tokens, 'domain': np.zeros(batch, np.int32)})
    try:
      state = trainer.init_state(run_key(0))
      for _ in range(args.warmup):
        state, m = compiled(state, data, trainer.rng, np.int32(1000))
      jax.block_until_ready(m['loss'])
      t0 = time.perf_counter()
      for _ in range(args.steps):
        state, m = compiled(state, data, trainer.rng, np.int32(1000))
      loss = float(jax.block_until_ready(m['loss']))
      step_s = (time.perf_counter() - t0) / args.steps
    except Exception as e:  # pylint: disable=broad-except  # OOM at run time
      print(f'  {case.label}: batch {batch} failed to run: {str(e).splitlines()[0][:200]}',
            flush=True)
      del compiled
      batch = max([b for b in batches if b < batch], default=0)
      continue
    tokens_per_s = batch * case.seq / step_s
    peak = args.peak_tflops * 1e12 or metrics.device_peak_flops()
    return dict(label=case.label, batch=batch, seq=case.seq, attention=attention,
                step_ms=step_s * 1e3, tokens_per_s=tokens_per_s,
                mfu=model.flops_per_token * tokens_per_s / peak if peak else None,
                need_gib=need / 2**30 if need else None, compile_s=compile_s, loss=loss,
                params_m=sum(x.size for x in jax.tree.leaves(state.params)) / 1e6,
                tried=tried)
  return dict(label=case.label, error='no batch fits', tried=tried)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--smoke', action='store_true', help='tiny dims, any backend')
  parser.add_argument('--only', default='', help='comma-separated labels prefixes to run')
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--scan-unroll', type=int, default=1,
                      help='config.model.scan_unroll (1 = rolled loop over layers, 0 = unrolled)')
  parser.add_argument('--memory-gib', type=float, default=0,
                      help='memory limit for the batch choice (default: the device limit x 0.92)')
  parser.add_argument('--peak-tflops', type=float, default=0.0,
                      help='device peak for MFU (default: metrics.PEAK_FLOPS by device kind)')
  parser.add_argument('--deadline-s', type=float, default=450, help='stop starting new work')
  parser.add_argument('--out', default='', help='also write the rows as JSON here')
  args = parser.parse_args()
  start = time.time()
  device = jax.devices()[0]
  stats = device.memory_stats() or {}
  limit = (int(args.memory_gib * 2**30) if args.memory_gib else
           int(stats['bytes_limit'] * 0.92) if 'bytes_limit' in stats else None)
  print(f'# device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}, '
        f'memory limit for batch choice: '
        f'{"none" if limit is None else f"{limit / 2**30:.3g} GiB"}', flush=True)
  cases = SMOKE if args.smoke else CASES
  if args.only:
    cases = [c for c in cases if any(c.label.startswith(p) for p in args.only.split(','))]
  rows = []
  for case in cases:
    row = run_case(case, args, limit, start + args.deadline_s)
    rows.append(row)
    print(f'{json.dumps(row)}', flush=True)
  header = ('| model | seq | batch | attention | step ms | tokens/s | MFU | compile s | batches '
            'tried |')
  print()
  print(f'{device.device_kind}, jax {jax.__version__}, bf16 compute / fp32 params, '
        f'scan_unroll={args.scan_unroll}, {time.time() - start:.0f} s in all')
  print(header)
  print('|' + '---|' * (header.count('|') - 1))
  for r in rows:
    if 'error' in r:
      print(f'| {r["label"]} | | | | | {r["error"]} | | | {r["tried"]} |')
      continue
    mfu = f'{r["mfu"]:.1%}' if r['mfu'] is not None else 'n/a'
    print(f'| {r["label"]} | {r["seq"]} | {r["batch"]} | {r["attention"]} | {r["step_ms"]:.1f} '
          f'| {r["tokens_per_s"]:.0f} | {mfu} | {r["compile_s"]:.0f} | {r["tried"]} |')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(dict(device=device.device_kind, jax=jax.__version__, rows=rows), f, indent=1)


if __name__ == '__main__':
  main()
