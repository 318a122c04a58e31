"""One process of the 2-process loader test: loads its own slots, gathers the global batches.

Usage: loader_worker.py PROCESS_ID PORT WORKDIR OUT.npz (4 CPU devices per process, set by the
parent through XLA_FLAGS). Writes the global batches, this process's slots, the rows it read and
the hash of a tokenizer trained in a workdir of its own.
"""

import sys

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from autoscale_jax.data import loader, store, tokenizer
from data_helpers import BATCH, COUNTS, SEED, RecordingRows, loader_config


def main(process_id: int, port: int, workdir: str, out: str) -> None:
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2,
                             process_id=process_id)
  assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
  # Alternate the processes' devices along the batch: each process holds non-contiguous slots.
  mine = [[d for d in jax.devices() if d.process_index == p] for p in (0, 1)]
  devices = np.array([d for pair in zip(*mine) for d in pair]).reshape(4, 2)
  sharding = NamedSharding(jax.sharding.Mesh(devices, ('data', 'fsdp')),
                           PartitionSpec(('data', 'fsdp')))
  stores = store.prepare(loader_config(workdir), workdir)
  recorders = {n: RecordingRows(s.train) for n, s in stores.items()}
  stores = {n: store.DomainStore(n, recorders[n], s.val, s.meta) for n, s in stores.items()}
  data = loader.Loader(stores, COUNTS, seed=SEED, batch_size=BATCH, sharding=sharding)
  batches = [multihost_utils.process_allgather(b, tiled=True) for b in data]
  val = [multihost_utils.process_allgather(b, tiled=True)
         for b in loader.val_batches(stores, BATCH, sharding)]
  reads = [(d, r) for d, rec in enumerate(recorders.values()) for r in rec.read]
  # A tokenizer trained in a workdir of this process only: process 0 trains, both must agree.
  wordpiece = loader_config(workdir)
  wordpiece.model.family, wordpiece.data.tokenizer.kind = 'bert', 'train_wordpiece'
  tok = tokenizer.get_tokenizer(wordpiece, f'{workdir}/own{process_id}')
  np.savez(out, **{f'{k}': np.stack([b[k] for b in batches]) for k in batches[0]},
           **{f'val_{k}': np.stack([b[k] for b in val]) for k in val[0]},
           slots=data._assemble.slots,  # pylint: disable=protected-access
           reads=np.array(reads).reshape(-1, 2), tokenizer_hash=tok.hash)
  multihost_utils.sync_global_devices('done')


if __name__ == '__main__':
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
