"""Host loader: global batches with the right rows, resume, prefetch, val batches, 2 processes."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from autoscale_jax.data import DataError, loader, mixture, store
from data_helpers import (
  BATCH,
  COUNTS,
  SEED,
  RecordingRows,
  loader_config,
  prepare,
  write_loader_corpus,
)


@pytest.fixture(scope='module', name='workdir')
def fixture_workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp('loader')
  write_loader_corpus(root)
  prepare(loader_config(root), root)
  return root


@pytest.fixture(name='stores')
def fixture_stores(workdir):
  return prepare(loader_config(workdir), workdir)


def sharding(shape=(4, 2), axes=('data', 'fsdp'), batch_axes=('data', 'fsdp')):
  return NamedSharding(jax.make_mesh(shape, axes), PartitionSpec(batch_axes))


def expected(stores, step):
  """What batch `step` must hold: the sampler's rows read straight from the memmaps."""
  domain, row = (np.asarray(a) for a in mixture.sample(SEED, COUNTS, [
      s.train.shape[0] for s in stores.values()], step, BATCH))
  tokens = np.zeros((BATCH, 17), np.int32)
  for k, (d, r) in enumerate(zip(domain, row)):
    if d >= 0:
      tokens[k] = list(stores.values())[d].train[r]
  return tokens, domain


@pytest.mark.parametrize('mesh', [((4, 2), ('data', 'fsdp'), ('data', 'fsdp')),
                                  ((2, 2, 2), ('data', 'fsdp', 'tensor'), ('data', 'fsdp'))])
def test_batches_hold_the_sampled_rows_with_the_given_sharding(stores, mesh):
  spec = sharding(*mesh)
  data = loader.Loader(stores, np.array(COUNTS), seed=SEED, batch_size=BATCH, sharding=spec)
  batches = list(data)
  assert len(batches) == data.num_steps == 10
  for step, b in enumerate(batches):
    tokens, domain = expected(stores, step)
    np.testing.assert_array_equal(b['tokens'], tokens)
    np.testing.assert_array_equal(b['domain'], domain)
    np.testing.assert_array_equal(b['mask'], (domain >= 0).astype(np.float32))
    assert b['tokens'].dtype == np.int32 and b['mask'].dtype == np.float32
    assert b['domain'].sharding == spec
    assert b['tokens'].sharding.spec == PartitionSpec(mesh[2], None)
  domains = np.concatenate([np.asarray(b['domain']) for b in batches])
  np.testing.assert_array_equal(np.bincount(domains[domains >= 0], minlength=4), COUNTS)
  assert (domains[73:] == -1).all()
  np.testing.assert_array_equal(data.domain_counts_through(10), COUNTS)
  np.testing.assert_array_equal(data.domain_counts_through(3),
                                np.bincount(domains[:24], minlength=4))


def test_resume_and_prefetch_give_the_same_batches(stores):
  spec = sharding()
  full = list(loader.Loader(stores, COUNTS, seed=SEED, batch_size=BATCH, sharding=spec))
  tail = list(loader.Loader(stores, COUNTS, seed=SEED, batch_size=BATCH, sharding=spec,
                            start_step=6, prefetch=0))
  assert len(tail) == 4
  for a, b in zip(full[6:], tail):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


def test_validation_batches_cover_every_row_once_whatever_the_mixture(stores):
  spec = sharding()
  before = loader.val_batches(stores, BATCH, spec)
  seen = []
  for counts in ([40, 13, 0, 20], [1, 1, 60, 1]):
    seen += [np.asarray(b['tokens']) for b in
             loader.Loader(stores, counts, seed=1, batch_size=BATCH, sharding=spec)]
  after = loader.val_batches(stores, BATCH, spec)
  assert len(before) == 2  # 12 rows in batches of 8, the last one padded
  for a, b in zip(before, after):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  tokens = np.concatenate([b['tokens'] for b in before])
  domain = np.concatenate([b['domain'] for b in before])
  np.testing.assert_array_equal(domain, [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3 + [-1] * 4)
  np.testing.assert_array_equal(tokens[:12], np.concatenate([s.val for s in stores.values()]))
  np.testing.assert_array_equal(np.concatenate([b['mask'] for b in before]), [1] * 12 + [0] * 4)
  train_rows = {tuple(r) for r in np.concatenate(seen)}
  assert not any(tuple(r) in train_rows for r in tokens[:12])


def test_epochs_limits_and_bad_counts(stores):
  spec = sharding()
  big = [2 * stores['w'].train.shape[0] + 1, 0, 0, 0]
  with pytest.raises(DataError, match="Domain 'w' needs 513 .*max_epochs to 3"):
    loader.Loader(stores, big, seed=0, batch_size=BATCH, sharding=spec)
  with pytest.warns(UserWarning, match="'w' is repeated"):
    data = loader.Loader(stores, big, seed=0, batch_size=BATCH, sharding=spec, max_epochs=3)
  np.testing.assert_array_equal(data.epochs, [3, 0, 0, 0])
  with pytest.raises(DataError, match='one count >= 0 for each of the 4 domains'):
    loader.Loader(stores, [1, 2], seed=0, batch_size=BATCH, sharding=spec)


def test_errors_in_the_prefetch_thread_reach_the_consumer(stores):
  class Broken(RecordingRows):
    def __getitem__(self, index):
      raise OSError('disk gone')

  broken = {n: store.DomainStore(n, Broken(s.train), s.val, s.meta) for n, s in stores.items()}
  with pytest.raises(OSError, match='disk gone'):
    list(loader.Loader(broken, COUNTS, seed=0, batch_size=BATCH, sharding=sharding()))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_each_load_only_their_slice_and_share_a_tokenizer(workdir, stores, tmp_path):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'JAX_PLATFORMS': 'cpu'}
  worker = os.path.join(os.path.dirname(__file__), 'loader_worker.py')
  port = free_port()
  procs = [subprocess.Popen([sys.executable, worker, str(i), str(port), str(workdir),
                             str(tmp_path / f'{i}.npz')], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in (0, 1)]
  logs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], '\n'.join(l[-3000:] for l in logs)
  out = [np.load(tmp_path / f'{i}.npz') for i in (0, 1)]
  single = list(loader.Loader(stores, COUNTS, seed=SEED, batch_size=BATCH, sharding=sharding()))
  single_val = loader.val_batches(stores, BATCH, sharding())
  for o in out:  # the assembled global batches equal the single-process ones
    for k in ('tokens', 'domain', 'mask'):
      np.testing.assert_array_equal(o[k], np.stack([b[k] for b in single]))
      np.testing.assert_array_equal(o[f'val_{k}'], np.stack([b[k] for b in single_val]))
  assert out[0]['tokenizer_hash'] == out[1]['tokenizer_hash']  # trained once, on process 0
  for k in ('rows_own', 'rows_shared'):
    np.testing.assert_array_equal(out[0][k], out[1][k])
  # One writer where both processes see the files, one per process where each has its own; only
  # process 0 prints.
  assert [bool(o['writes_shared']) for o in out] == [True, False]
  assert [bool(o['writes_own']) for o in out] == [True, True]
  assert (workdir / 'own1' / 'data' / 'w' / 'meta.json').exists()
  assert 'documents in' in logs[0] and 'documents in' not in logs[1]
  slots = [set(o['slots'].tolist()) for o in out]
  assert slots[0].isdisjoint(slots[1]) and slots[0] | slots[1] == set(range(BATCH))
  assert slots[0] != set(range(BATCH // 2))  # non-contiguous slices, by construction
  rows = {n: s.train.shape[0] for n, s in stores.items()}
  for o in out:  # each process read exactly the rows of its own slots, nothing else
    sampled = [np.asarray(a)[o['slots']] for step in range(10)
               for a in mixture.sample(SEED, COUNTS, list(rows.values()), step, BATCH)]
    domain, row = np.concatenate(sampled[::2]), np.concatenate(sampled[1::2])
    for d in range(4):
      np.testing.assert_array_equal(np.sort(o['reads'][o['reads'][:, 0] == d, 1]),
                                    np.sort(row[domain == d]))
