"""Data path vs the trainer's appetite: mixture sampler and host loader against the train step.

For each config, in one process with interleaved repetitions (medians):
  sampler  autoscale_jax.data.mixture.sample under jit, one global batch's (domain, row) per call
           (a new step every call, results fetched to the host as the loader does): batches/s;
  loader   autoscale_jax.data.loader.Loader.batch(step) on one CPU device, reading rows from
           uint16 memmapped token stores (random tokens on local disk, in the page cache as a
           warm run's stores would be), building the global jax.Arrays: target tokens/s; also
           the prefetching iterator (what the train loop uses);
  train    our jitted train step for the same model, batch and sequence length: tokens/s.
The ratio loader / train is how many times faster the data path is than the trainer consumes.

  python bench/sampler.py
  python bench/sampler.py --configs tiny --reps 3 --no-write
"""

import argparse
import dataclasses
import os
import sys
import tempfile

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import train_throughput  # noqa: E402
from autoscale_jax import models  # noqa: E402
from autoscale_jax.data import mixture  # noqa: E402
from autoscale_jax.data.loader import Loader  # noqa: E402
from autoscale_jax.data.store import DomainStore  # noqa: E402

HEADING = '## Sampler and loader vs the train step'
LIMITS = ('What limits it: per-batch fixed costs, not bytes. A tiny batch (1024 tokens) takes a '
          'few ms in Loader.batch (cProfile, tiny config): ~1 ms the jitted sampler call and its '
          'fetch, ~1.8 ms three jax.make_array_from_process_local_data calls (tokens, domain, '
          'mask), ~0.3 ms the memmap gathers, the rest Python around them; so the loader\'s '
          'tokens/s grows with tokens per batch (seq 1024 rows) while the sampler\'s batches/s '
          'stays ~1000/s. On the tiny config the margin over the trainer is ~100x, and a '
          'faster trainer config (scan_layers=False, see the train-step section) narrows it; '
          'the prefetch thread hides the loader behind the step in the train loop.')


@dataclasses.dataclass(frozen=True)
class Config:
  name: str
  model: train_throughput.Size
  domains: int
  rows: int  # training rows per domain on disk


CONFIGS = {
    # configs/tiny.py: GPT-2 tiny, its trained 1024-token vocab, seq 64, batch 16, 4 domains.
    'tiny': Config('tiny (configs/tiny.py)', train_throughput.Size('tiny', 2, 128, 4, 1024, 64, 16),
                   domains=4, rows=50_000),
    # GPT-2 small at its full context on 7 domains (the paper's count); one sequence per batch
    # keeps the CPU train step (~2 TFLOP) within the benchmark's time.
    'small': Config('small (GPT-2 124M, seq 1024)',
                    train_throughput.Size('small', 12, 768, 12, 50304, 1024, 1),
                    domains=7, rows=4_000),
}


def make_stores(cfg: Config, folder: str) -> dict[str, DomainStore]:
  """uint16 token stores of random rows on local disk, memmapped like prepared ones."""
  rng = np.random.default_rng(0)
  row_len = models.row_len('gpt2', cfg.model.seq)
  stores = {}
  for d in range(cfg.domains):
    path = os.path.join(folder, f'd{d}.bin')
    rng.integers(0, cfg.model.vocab, (cfg.rows, row_len), dtype=np.uint16).tofile(path)
    train = np.memmap(path, np.uint16, 'r', shape=(cfg.rows, row_len))
    train[:].sum()  # into the page cache, as a store that was just read
    stores[f'd{d}'] = DomainStore(f'd{d}', train, train[:0], {'row_len': row_len})
  return stores


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default='tiny,small')
  parser.add_argument('--reps', type=int, default=5)
  parser.add_argument('--seconds', type=float, default=1.0, help='target seconds per repetition')
  parser.add_argument('--no-write', action='store_true')
  args = parser.parse_args()
  print(f'# {_common.machine()}; load {_common.load()}', flush=True)

  device = jax.devices()[0]
  sharding = NamedSharding(jax.sharding.Mesh(np.array([device]), ('data',)),
                           PartitionSpec('data'))
  rows = []
  with tempfile.TemporaryDirectory() as folder:
    for key in args.configs.split(','):
      cfg = CONFIGS[key]
      b, seq = cfg.model.batch, cfg.model.seq
      stores = make_stores(cfg, folder)
      # A run long enough never to end or repeat while timing: ~all rows, unequal weights.
      weights = np.arange(1, cfg.domains + 1, dtype=np.float64)
      counts = np.floor(weights / weights.max() * cfg.rows * 0.99).astype(np.int64)
      rows_arr = np.full(cfg.domains, cfg.rows, np.int64)
      total_steps = mixture.num_steps(counts, b)
      loader = Loader(stores, counts, seed=0, batch_size=b, sharding=sharding, prefetch=0)
      prefetching = Loader(stores, counts, seed=0, batch_size=b, sharding=sharding, prefetch=2)
      step_no = {'sample': 0, 'load': 0}

      def sample():
        s = step_no['sample'] = (step_no['sample'] + 7919) % total_steps
        domain, row = mixture.sample(0, counts, rows_arr, s, b)
        np.asarray(domain), np.asarray(row)

      def load():
        s = step_no['load'] = (step_no['load'] + 7919) % total_steps
        jax.block_until_ready(loader.batch(s))

      stream = {'it': iter(prefetching)}

      def load_prefetched():
        try:
          jax.block_until_ready(next(stream['it']))
        except StopIteration:
          stream['it'] = iter(prefetching)
          jax.block_until_ready(next(stream['it']))

      train, _ = train_throughput.ours('gpt2', cfg.model)
      fns = {'sample': sample, 'load': load, 'prefetch': load_prefetched, 'train': train}
      for f in fns.values():
        f()
      times = _common.interleaved(fns, args.reps, args.seconds)
      med = {k: _common.median(v) for k, v in times.items()}
      tokens = b * seq
      row = dict(name=cfg.name, batch=b, seq=seq, m=cfg.domains,
                 sample_bps=1 / med['sample'], load_tps=tokens / med['load'],
                 prefetch_tps=tokens / med['prefetch'], train_tps=tokens / med['train'],
                 ratio=_common.median([t / l for t, l in zip(times['train'], times['load'])]),
                 sample_ratio=_common.median([t / s for t, s in zip(times['train'],
                                                                     times['sample'])]))
      rows.append(row)
      print(f'{cfg.name}: sampler {row["sample_bps"]:.0f} batches/s, loader '
            f'{row["load_tps"]:.0f} tok/s ({row["prefetch_tps"]:.0f} prefetching), train '
            f'{row["train_tps"]:.0f} tok/s, loader/train {row["ratio"]:.0f}x; load '
            f'{_common.load()}', flush=True)

  header = ['config (batch x seq, domains)', 'sampler batches/s', 'sampler ms', 'loader tok/s',
            'prefetch iter tok/s', 'train tok/s', 'loader / train', 'sampler / train']
  lines = [[f'{r["name"]} ({r["batch"]} x {r["seq"]}, m={r["m"]})', f'{r["sample_bps"]:.0f}',
            f'{1e3 / r["sample_bps"]:.2f}', f'{r["load_tps"]:.3g}', f'{r["prefetch_tps"]:.3g}',
            f'{r["train_tps"]:.0f}', f'{r["ratio"]:.0f}x', f'{r["sample_ratio"]:.0f}x']
           for r in rows]
  out = _common.table(header, lines)
  print()
  print('\n'.join(out))
  if not args.no_write:
    _common.write_section(HEADING, [
        f'Machine: {_common.machine()}; load (1/5/15 min) at the end {_common.load()}.', '',
        *out, '',
        'Columns: medians of interleaved repetitions; loader tok/s counts target tokens '
        '(batch x seq) of Loader.batch(step) (sampler + memmap gather + global-array build, no '
        'prefetch thread); prefetch iter is next() on the background-thread iterator the train '
        'loop uses, whose thread keeps filling its queue while the other rows are timed, so it '
        'is the wait a consumer sees rather than the loader\'s own rate; loader / train and '
        'sampler / train are medians of per-repetition ratios of step times (the sampler ratio '
        'is per global batch).', '', LIMITS])


if __name__ == '__main__':
  main()
