"""Host loader: sampler output -> this process's rows from the memmaps -> global jax.Arrays.

Every process runs the (cheap, deterministic) sampler for the whole global batch, then reads from
disk only the rows of the batch slots its own devices hold (from the sharding), and assembles
the global arrays with jax.make_array_from_process_local_data. Batches are dicts
  tokens int32 [B, row_len]  sharded like the given sharding on dim 0 (trailing dim replicated)
  domain int32 [B]           domain index in the stores' order; -1 on padding slots
  mask   float32 [B]         1 for real sequences, 0 for padding slots (the run's last batch)
BERT masking is not done here: the trainer draws it inside the jitted train step from a
per-step rng, so the loader stays identical for both model families.
"""

import queue
import threading
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from autoscale_jax.data import DataError, mixture
from autoscale_jax.data.store import DomainStore

Batch = dict[str, jax.Array]


class _Assembler:
  """Knows which global batch slots this process holds and builds global arrays from them."""

  def __init__(self, sharding: NamedSharding, batch_size: int):
    self.batch_size, self.sharding = batch_size, sharding
    self.token_sharding = NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec, None))
    index = sharding.addressable_devices_indices_map((batch_size,))
    self.slots = np.unique(np.concatenate([np.arange(batch_size)[i[0]] for i in index.values()]))

  def __call__(self, tokens: np.ndarray, domain: np.ndarray) -> Batch:
    """tokens [len(slots), row_len] and domain [len(slots)] of this process's slots, in order."""
    def put(sharding, local):
      return jax.make_array_from_process_local_data(
          sharding, local, (self.batch_size,) + local.shape[1:])
    return {'tokens': put(self.token_sharding, tokens.astype(np.int32)),
            'domain': put(self.sharding, domain.astype(np.int32)),
            'mask': put(self.sharding, (domain >= 0).astype(np.float32))}


def gather_rows(stores: list[DomainStore], split: str, domain: np.ndarray,
            row: np.ndarray) -> np.ndarray:
  """Rows (domain[k], row[k]) of the split; zeros where domain is -1 (padding)."""
  out = np.zeros((len(domain), stores[0].meta['row_len']), np.int32)
  for d, store in enumerate(stores):
    sel = np.flatnonzero(domain == d)
    if len(sel):
      out[sel] = getattr(store, split)[row[sel]]
  return out


class Loader:
  """Iterates the run's global batches from start_step on, prefetching on a background thread."""

  def __init__(self, stores: Mapping[str, DomainStore], counts: np.ndarray, *, seed: int,
               batch_size: int, sharding: NamedSharding, start_step: int = 0,
               prefetch: int = 2, max_epochs: int = 1, end_step: int | None = None):
    """Checks the run against the stores (counts, epochs); finds this process's batch slots.

    Args:
      stores: the token stores, in domain-index order.
      counts: sequences of each domain for the whole run (exact totals are guaranteed).
      seed: picks the row permutations of every domain and epoch.
      batch_size: global batch size B.
      sharding: the batch sharding; its PartitionSpec shards dim 0 over the batch mesh axes.
      start_step: first step to yield (resume needs no replay).
      prefetch: batches prepared ahead on a background thread (0 = none).
      max_epochs: most passes over a domain's rows; more raises DataError, >1 warns.
      end_step: stop before this step (a run that trains a prefix of the stream of `counts`).
    """
    self.names, self._stores = list(stores), list(stores.values())
    self.counts = np.asarray(counts, np.int64)
    if self.counts.shape != (len(self.names),) or np.any(self.counts < 0):
      raise DataError(f'The run asks for sequence counts {self.counts.tolist()}; give one count '
                      f'>= 0 for each of the {len(self.names)} domains {self.names}.')
    if self.counts.sum() >= mixture.MAX_TOTAL:
      raise DataError(f'The run asks for {self.counts.sum()} sequences, more than the sampler '
                      f'supports ({mixture.MAX_TOTAL - 1}); raise config.data.seq_len or split '
                      'the budget.')
    self.rows = np.array([s.train.shape[0] for s in self._stores], np.int64)
    self.epochs = mixture.check_epochs(self.names, self.counts, self.rows, max_epochs)
    self.seed, self.batch_size, self.start_step = seed, batch_size, start_step
    self.prefetch = prefetch
    self.num_steps = mixture.num_steps(self.counts, batch_size)
    if end_step is not None:
      self.num_steps = min(self.num_steps, int(end_step))
    self._assemble = _Assembler(sharding, batch_size)

  def domain_counts_through(self, step: int) -> np.ndarray:
    """Sequences of each domain in batches 0..step-1 (what a run stopped at `step` consumed)."""
    return np.asarray(mixture.prefix_counts(self.counts, step * self.batch_size), np.int64)

  def batch(self, step: int) -> Batch:
    """Global batch `step`, built from this process's slots only."""
    domain, row = mixture.sample(self.seed, self.counts, self.rows, step, self.batch_size)
    slots = self._assemble.slots
    domain, row = np.asarray(domain)[slots], np.asarray(row)[slots]
    return self._assemble(gather_rows(self._stores, 'train', domain, row), domain)

  def __iter__(self) -> Iterator[Batch]:
    steps = range(self.start_step, self.num_steps)
    if self.prefetch <= 0:
      yield from map(self.batch, steps)
      return
    ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
    stop = threading.Event()

    def put(item) -> bool:
      while not stop.is_set():
        try:
          ready.put(item, timeout=0.1)
          return True
        except queue.Full:
          pass
      return False

    def work() -> None:
      try:
        for step in steps:
          if not put(self.batch(step)):
            return
        put(None)
      except Exception as e:  # pylint: disable=broad-except  # re-raised in the consumer
        put(e)

    threading.Thread(target=work, daemon=True, name='loader-prefetch').start()
    try:
      while (item := ready.get()) is not None:
        if isinstance(item, Exception):
          raise item
        yield item
    finally:
      stop.set()


class StackedLoader(Loader):
  """Batches of N runs at once: [N, B] slots, run r's the single-run Loader's batch s.

  One Loader per member checks its counts against the stores (totals, epochs, max_epochs) as a
  single run would; this class only replaces `batch` (the sampler for every run, then this
  process's block of (run, slot) rows read from the memmaps) and inherits the prefetching
  iterator.
  """

  def __init__(self, stores: Mapping, counts: Sequence[np.ndarray], *, seeds: Sequence[int],
               batch_size: int, shardings: Mapping[str, NamedSharding],
               run_sharding: NamedSharding, start_step: int = 0, prefetch: int = 2,
               max_epochs: int = 1):
    # pylint: disable=super-init-not-called  # the members are the Loaders; see the docstring
    self.members = [Loader(stores, c, seed=seed, batch_size=batch_size, sharding=run_sharding,
                           start_step=start_step, prefetch=0, max_epochs=max_epochs)
                    for c, seed in zip(counts, seeds)]
    self.names, self._stores = list(stores), list(stores.values())
    self.counts = np.stack([m.counts for m in self.members])
    self.rows = self.members[0].rows
    self.seeds, self.batch_size, self.start_step = [int(s) for s in seeds], batch_size, start_step
    self.prefetch = prefetch
    self.num_steps = max(m.num_steps for m in self.members)
    self.epochs = [m.epochs for m in self.members]
    self._shardings = shardings
    n = len(self.members)
    index = shardings['domain'].addressable_devices_indices_map((n, batch_size))
    self.local_runs = np.unique(np.concatenate([np.arange(n)[i[0]] for i in index.values()]))
    self.local_slots = np.unique(np.concatenate([np.arange(batch_size)[i[1]]
                                                 for i in index.values()]))

  def batch(self, step: int) -> dict:
    n, b = len(self.members), self.batch_size
    # One sampler call per run (not vmapped): the program single runs compiled, for any N.
    drawn = [mixture.sample(self.seeds[r], self.counts[r], self.rows, step, b)
             for r in self.local_runs]
    domain = np.stack([np.asarray(d) for d, _ in drawn])[:, self.local_slots]
    row = np.stack([np.asarray(r) for _, r in drawn])[:, self.local_slots]
    # pylint: disable=protected-access  # the loader's row gather, shared rather than copied
    tokens = np.stack([gather_rows(self._stores, 'train', d, r)
                       for d, r in zip(domain, row)])

    def put(key, local):
      return jax.make_array_from_process_local_data(self._shardings[key], local,
                                                    (n, b) + local.shape[2:])
    return {'tokens': put('tokens', tokens), 'domain': put('domain', domain.astype(np.int32)),
            'mask': put('domain', (domain >= 0).astype(np.float32))}


def val_batches(stores: Mapping[str, DomainStore], batch_size: int,
                sharding: NamedSharding) -> list[Batch]:
  """Every domain's validation rows in batches of the loader's format, the last one padded."""
  store_list = list(stores.values())
  domain = np.concatenate([np.full(s.val.shape[0], d) for d, s in enumerate(store_list)])
  row = np.concatenate([np.arange(s.val.shape[0]) for s in store_list])
  pad = -len(domain) % batch_size
  domain, row = np.pad(domain, (0, pad), constant_values=-1), np.pad(row, (0, pad))
  assemble = _Assembler(sharding, batch_size)
  batches = []
  for start in range(0, len(domain), batch_size):
    d, r = (a[start:start + batch_size][assemble.slots] for a in (domain, row))
    batches.append(assemble(gather_rows(store_list, 'val', d, r), d))
  return batches
