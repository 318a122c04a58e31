"""The mixture sampler: exact totals, even spread, row permutations per epoch, resume, jit, cost."""

import time
import warnings
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autoscale_jax.data import DataError, mixture

B = 8  # one batch size and four domains throughout, so the sampler compiles once


def stream(counts, rows, seed=0, batch_size=B):
  """The whole run's (domain, row) slots, batch after batch."""
  steps = [mixture.sample(seed, counts, rows, s, batch_size)
           for s in range(mixture.num_steps(counts, batch_size))]
  return (np.concatenate([np.asarray(d) for d, _ in steps]),
          np.concatenate([np.asarray(r) for _, r in steps]))


def reference_order(counts):
  """Sequences sorted by ideal time (2k+1)/(2c_i), ties to the lower domain."""
  items = [(Fraction(2 * k + 1, 2 * c), i) for i, c in enumerate(counts) for k in range(c)]
  return np.array([i for _, i in sorted(items)])


def prefix_bound(counts):
  """The documented PREFIX_BOUND per domain."""
  counts = np.asarray(counts, np.float64)
  w, m = counts / counts.sum(), np.count_nonzero(counts)
  return (1 - w) / 2 + w * (m - 1) / 2


@pytest.mark.parametrize('counts', [[5, 9, 0, 3], [1, 1, 1, 1], [40, 2, 7, 11], [0, 0, 13, 0]])
def test_exact_totals_reference_order_and_padding(counts):
  rows = [7, 3, 5, 4]
  domain, row = stream(counts, rows)
  total = sum(counts)
  assert mixture.num_steps(counts, B) == -(-total // B) == len(domain) // B
  np.testing.assert_array_equal(domain[:total], reference_order(counts))
  np.testing.assert_array_equal(np.bincount(domain[:total], minlength=4), counts)
  assert (domain[total:] == -1).all() and (row[total:] == 0).all()  # padding of the last batch


def test_prefix_counts_obey_the_bound_on_large_runs():
  counts = np.array([300_000_007, 123_456_789, 500_000_000, 7], np.int64)
  total = int(counts.sum())
  rng = np.random.default_rng(0)
  positions = np.concatenate([[0, 1, total - 1, total], rng.integers(0, total, 300)])
  got = np.asarray(jax.vmap(mixture.prefix_counts, (None, 0))(counts, positions), np.int64)
  np.testing.assert_array_equal(got.sum(1), positions)
  np.testing.assert_array_equal(got[3], counts)
  deviation = np.abs(got - positions[:, None] * counts / total)
  assert (deviation <= prefix_bound(counts) + 1e-6).all()
  order = np.argsort(positions)
  assert (np.diff(got[order], axis=0) >= 0).all()


@pytest.mark.parametrize('counts', [[700, 250, 49, 1], [333, 333, 333, 1], [10, 990, 0, 0]])
def test_every_window_is_within_twice_the_prefix_bound(counts):
  domain, _ = stream(counts, [1000] * 4)
  total = sum(counts)
  w = np.asarray(counts) / total
  one_hot = domain[:total, None] == np.arange(4)
  cum = np.concatenate([np.zeros((1, 4)), np.cumsum(one_hot, 0)])
  bound = 2 * prefix_bound(counts) + 1e-9
  for window in (1, 2, 5, 13):  # batches
    size = window * B
    got = cum[size:] - cum[:-size]  # every window of `size` consecutive slots
    assert (np.abs(got - size * w) <= bound).all(), (window, np.abs(got - size * w).max(0))


def test_rows_are_a_fresh_permutation_every_epoch():
  counts, rows = [50, 7, 0, 23], [7, 3, 5, 23]
  domain, row = stream(counts, rows, seed=3)
  for d in (0, 1, 3):
    seq = row[domain == d]
    epochs = [seq[i:i + rows[d]] for i in range(0, len(seq), rows[d])]
    for e in epochs[:-1]:
      np.testing.assert_array_equal(np.sort(e), np.arange(rows[d]))
    assert len(set(epochs[-1])) == len(epochs[-1]) and epochs[-1].max() < rows[d]
  epochs0 = row[domain == 0][:49].reshape(7, 7)
  assert len({tuple(e) for e in epochs0}) > 1  # a new permutation per epoch
  _, other = stream(counts, rows, seed=4)
  assert not np.array_equal(row, other)  # the seed picks the permutations
  np.testing.assert_array_equal(mixture.epochs(counts, rows), [8, 3, 0, 1])


@pytest.mark.parametrize('n', [1, 2, 3, 5, 16, 17, 1000, 65_537])
def test_permutation_is_a_bijection(n):
  x = jnp.arange(65_537, dtype=jnp.int32) % n  # one shape for all n: one compilation
  permute = mixture._permute  # pylint: disable=protected-access
  y = permute(x, jnp.full(x.shape, n), jnp.full(x.shape, 12345, jnp.uint32))
  np.testing.assert_array_equal(np.sort(np.asarray(y)[:n]), np.arange(n))


def test_resume_needs_no_replay_and_runs_inside_jit():
  counts, rows = np.array([30, 11, 4, 19]), np.array([9, 5, 4, 19])
  domain, row = stream(counts, rows, seed=7)
  jitted = jax.jit(lambda step: mixture.sample(7, counts, rows, step, B))
  for step in (5, 0, 7, 3):  # any order, no earlier step computed first
    d, r = jitted(jnp.int32(step))
    np.testing.assert_array_equal(d, domain[step * B:(step + 1) * B])
    np.testing.assert_array_equal(r, row[step * B:(step + 1) * B])
  d, _ = jitted(jnp.int32(8))  # past the end of the run: all padding
  assert (np.asarray(d) == -1).all()


def test_epoch_warning_and_limit():
  names = ['a', 'b', 'c', 'd']
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    mixture.check_epochs(names, [5, 5, 0, 1], [5, 9, 0, 1], max_epochs=1)
  with pytest.warns(UserWarning, match="'b' is repeated"):
    mixture.check_epochs(names, [5, 10, 0, 1], [5, 4, 1, 1], max_epochs=3)
  with pytest.raises(DataError, match='max_epochs to 3'):
    mixture.check_epochs(names, [5, 10, 0, 1], [5, 4, 1, 1], max_epochs=2)
  with pytest.raises(DataError, match='no training rows'):
    mixture.epochs([1, 0, 0, 0], [0, 1, 1, 1])


def test_cost_per_batch_is_small():
  counts = np.array([30_000_000, 1_234_567, 500_000_000, 99_999_999])
  rows = counts // 3 + 1
  batch = 1024
  jax.block_until_ready(mixture.sample(0, counts, rows, 0, batch))
  start = time.perf_counter()
  for step in range(1, 11):
    jax.block_until_ready(mixture.sample(0, counts, rows, 1000 * step, batch))
  per_batch = (time.perf_counter() - start) / 10
  assert per_batch < 0.05, per_batch  # a few ms on 2 CPU cores; a train step is far slower
