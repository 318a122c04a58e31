"""One process of the 2-process loader test: loads its own slots, gathers the global batches.

Usage: loader_worker.py PROCESS_ID PORT WORKDIR OUT.npz (4 CPU devices per process, set by the
parent through XLA_FLAGS). Writes the global batches, this process's slots, the rows it read,
the hash of a tokenizer trained in a workdir of its own, and token stores of that tokenizer in a
cache both processes see and in a cache of its own, with whether it was their writer.
"""

import sys

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from autoscale_jax import io
from autoscale_jax.data import loader, store
from data_helpers import BATCH, COUNTS, SEED, RecordingRows, get_tokenizer, loader_config, prepare


def main(process_id: int, port: int, workdir: str, out: str) -> None:
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=2,
                             process_id=process_id)
  assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
  # Alternate the processes' devices along the batch: each process holds non-contiguous slots.
  mine = [[d for d in jax.devices() if d.process_index == p] for p in (0, 1)]
  devices = np.array([d for pair in zip(*mine) for d in pair]).reshape(4, 2)
  sharding = NamedSharding(jax.sharding.Mesh(devices, ('data', 'fsdp')),
                           PartitionSpec(('data', 'fsdp')))
  stores = prepare(loader_config(workdir), workdir)
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
  own = f'{workdir}/own{process_id}'
  tok = get_tokenizer(wordpiece, own)
  # Its token stores under the process's own workdir (each process builds its own, as on a
  # node-local disk), then in a fresh cache both see (process 0 builds, the other waits).
  rows = {'own': prepare(wordpiece, own)}
  wordpiece.data.cache_dir = f'{workdir}/shared'
  rows['shared'] = prepare(wordpiece, own)
  writes = {}
  for name, folder in (('own', f'{own}/data'), ('shared', f'{workdir}/shared')):
    with io.one_writer(epath.Path(folder), name) as writes[name]:
      pass
  np.savez(out, **{f'{k}': np.stack([b[k] for b in batches]) for k in batches[0]},
           **{f'val_{k}': np.stack([b[k] for b in val]) for k in val[0]},
           slots=data._assemble.slots,  # pylint: disable=protected-access
           reads=np.array(reads).reshape(-1, 2), tokenizer_hash=tok.hash,
           **{f'rows_{k}': np.concatenate([s.train for s in v.values()]) for k, v in rows.items()},
           **{f'writes_{k}': v for k, v in writes.items()})
  multihost_utils.sync_global_devices('done')


if __name__ == '__main__':
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
