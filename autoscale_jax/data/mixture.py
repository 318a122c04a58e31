"""The mixture sampler: which domain and which row fills every slot of every global batch.

A run asks for `counts[i]` sequences of domain i, T = sum(counts) in all. Think of the run as one
stream of T slots; slot p sits in batch p // B at position p % B. The stream is fixed by three
rules, each chosen so a run can be resumed at any step without replaying anything:

Domains (exact totals, even spread). The k-th sequence of domain i (k = 0..counts[i]-1) has the
ideal time (2k + 1) / (2 counts[i]) in [0, 1); the stream is all T sequences ordered by ideal
time (ties: lower domain index first). This is Sainte-Lague/Webster sequencing: domain i appears
exactly counts[i] times, and with w_i = counts[i] / T and m domains with nonzero counts, the
number N_i(p) of domain-i slots among the first p slots satisfies

    |N_i(p) - p w_i| <= (1 - w_i) / 2 + w_i (m - 1) / 2                  (PREFIX_BOUND)

for every p, so ANY window of consecutive slots (W batches or not) holds domain i within
(1 - w_i) + w_i (m - 1) <= max(1, m - 1) of its expected count. The position of one sequence in
the stream (its rank) and the inverse (N_i(p), by bisection on ranks) are computed in closed form
with exact 32-bit integer arithmetic, so a batch costs O(B m log T) work and no state.

Rows (no repeat within an epoch). The k-th sequence of domain i reads row
perm_{i,e}(k mod rows[i]) with epoch e = k // rows[i], where perm_{i,e} is a seeded bijection of
[0, rows[i]): a 4-round Feistel network on the smallest power of 4 >= rows[i], cycle-walked into
range. Every row is used once before any repeats, each epoch has a fresh permutation, and a
lookup is O(1).

Padding. When T is not a multiple of B the last batch has T mod B real slots followed by
padding slots with domain -1 and row 0; num_steps counts that batch. Runs need T < 2**30.
"""

import functools
import math
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from autoscale_jax.data import DataError
from autoscale_jax.errors import ConfigError

WEIGHT_TOLERANCE = 1e-6  # how far from 1 a user's weights may sum
MAX_TOTAL = 2**30  # sum(counts) must stay below this: exact ranks use 32-bit integers


def num_steps(counts: np.ndarray, batch_size: int) -> int:
  """Batches in the run; the last one is padded when sum(counts) is not a multiple of B."""
  return -(-int(np.sum(counts)) // batch_size)


def epochs(counts: np.ndarray, rows: np.ndarray) -> np.ndarray:
  """Passes over its training rows each domain needs: ceil(counts / rows), 0 for unused ones."""
  counts, rows = np.asarray(counts, np.int64), np.asarray(rows, np.int64)
  if np.any((counts > 0) & (rows <= 0)):
    raise DataError('A domain with a nonzero sequence count has no training rows; prepare more '
                    'data for it or give it zero weight.')
  return np.where(counts > 0, -(-counts // np.maximum(rows, 1)), 0)


def check_epochs(names: Sequence[str], counts: np.ndarray, rows: np.ndarray,
                 max_epochs: int) -> np.ndarray:
  """Epochs per domain; warns when a domain repeats and raises when it exceeds max_epochs."""
  passes = epochs(counts, rows)
  for name, c, r, e in zip(names, counts, rows, passes):
    if e > max_epochs:
      raise DataError(f'Domain {name!r} needs {int(c)} sequences but has {int(r)} training rows '
                      f'({int(e)} epochs); lower the budget or its weight, add data, or raise '
                      f'config.data.max_epochs to {int(e)}.')
    if e > 1:
      warnings.warn(f'Domain {name!r} is repeated: {int(c)} sequences from {int(r)} rows '
                    f'({int(e)} epochs).', stacklevel=2)
  return passes


def _mul_divmod(a: jax.Array, b: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Exact (a * b) // c and (a * b) % c in uint32 for a, b, c < 2**31 and a quotient < 2**32.

  Shift-and-add long multiplication keeps every intermediate below 2c, so no 64-bit types
  (disabled by default in JAX) are needed.
  """
  qa, a = a // c, a % c

  def step(i, qr):
    q, r = 2 * qr[0], 2 * qr[1]
    q, r = jnp.where(r >= c, q + 1, q), jnp.where(r >= c, r - c, r)
    r = jnp.where(((b >> (30 - i).astype(jnp.uint32)) & 1) == 1, r + a, r)
    return jnp.where(r >= c, q + 1, q), jnp.where(r >= c, r - c, r)

  zero = jnp.zeros_like(a * b)
  q, r = jax.lax.fori_loop(0, 31, step, (zero, zero))
  return q + qa * b, r


def _rank(counts: jax.Array, i: jax.Array, k: jax.Array) -> jax.Array:
  """Stream position of the k-th sequence of domain i (broadcasting over i and k).

  Domain j places before it #{k' : (2k'+1) c_i < (2k+1) c_j} sequences (<= for j < i, the tie
  rule), i.e. (floor(((2k+1) c_j - [j > i]) / c_i) + 1) // 2 clipped to c_j.
  """
  c = counts.astype(jnp.uint32)
  ci = jnp.maximum(c[i], 1)[..., None]
  j = jnp.arange(c.shape[0])
  q, r = _mul_divmod((2 * k.astype(jnp.uint32) + 1)[..., None], c, ci)
  strict = (j > i[..., None]) & (r == 0)
  before = jnp.minimum((q - strict.astype(jnp.uint32) + 1) // 2, c)
  before = jnp.where((j == i[..., None]) | (c == 0), 0, before)
  return (k.astype(jnp.uint32) + before.sum(-1)).astype(jnp.int32)


@jax.jit
def prefix_counts(counts: jax.Array, position: jax.Array) -> jax.Array:
  """int32[m]: sequences of each domain among the first `position` slots of the stream."""
  counts = jnp.asarray(counts, jnp.int32)
  m = counts.shape[0]
  position = jnp.minimum(jnp.asarray(position, jnp.int32), counts.sum())

  def bisect(_, bounds):  # invariant: rank(i, lo - 1) < position <= rank(i, hi)
    lo, hi = bounds
    mid = (lo + hi) // 2
    below = _rank(counts, jnp.arange(m), mid) < position
    active = lo < hi
    return (jnp.where(active & below, mid + 1, lo), jnp.where(active & ~below, mid, hi))

  lo, _ = jax.lax.fori_loop(0, 31, bisect, (jnp.zeros(m, jnp.int32), counts))
  return lo


def _hash(x: jax.Array) -> jax.Array:
  """A 32-bit integer mixer (lowbias32): cheap, well-avalanched, jit-friendly."""
  x = x.astype(jnp.uint32)
  x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
  x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def _permute(x: jax.Array, n: jax.Array, key: jax.Array) -> jax.Array:
  """Image of x under a keyed bijection of [0, n) (elementwise n and key); x < n required."""
  x, n = x.astype(jnp.uint32), jnp.maximum(n, 1).astype(jnp.uint32)
  half = (33 - jax.lax.clz(n - 1 | 1).astype(jnp.uint32)) // 2  # 4**half >= n
  mask = (jnp.uint32(1) << half) - 1

  def feistel(v):
    left, right = v >> half, v & mask
    for round_key in range(4):
      left, right = right, left ^ (_hash(right ^ _hash(key + round_key)) & mask)
    return (left << half) | right

  return jax.lax.while_loop(lambda v: jnp.any(v >= n),
                            lambda v: jnp.where(v >= n, feistel(v), v), feistel(x))


@functools.partial(jax.jit, static_argnames='batch_size')
def sample(seed: jax.Array, counts: jax.Array, rows: jax.Array, step: jax.Array,
           batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Domain and training row of every slot of global batch `step` (pure: no state, no replay).

  Args:
    seed: run seed; it picks the row permutations (the domain order depends on counts only).
    counts: int32[m] sequences of each domain in the whole run (sum < 2**30).
    rows: int32[m] training rows available per domain (> 0 wherever counts > 0).
    step: global batch index; slots step*B .. step*B+B-1 of the run's stream.
    batch_size: B, static.
  Returns:
    (domain int32[B], row int32[B]); padding slots past the end of the run get (-1, 0).
  """
  counts, rows = jnp.asarray(counts, jnp.int32), jnp.asarray(rows, jnp.int32)
  total = counts.sum()
  start = jnp.minimum(jnp.asarray(step, jnp.int32) * batch_size, total)
  first, last = jax.vmap(prefix_counts, (None, 0))(counts, jnp.stack([start, start + batch_size]))
  per_domain = last - first
  # Gather this batch's sequences grouped by domain, then scatter each to its stream position.
  ends = jnp.cumsum(per_domain)
  slot = jnp.arange(batch_size, dtype=jnp.int32)
  domain = jnp.minimum(jnp.searchsorted(ends, slot, side='right'), counts.shape[0] - 1)
  k = first[domain] + slot - (ends - per_domain)[domain]
  real = slot < ends[-1]
  position = jnp.where(real, _rank(counts, domain, k) - start, batch_size)
  epoch, index = jnp.divmod(k, jnp.maximum(rows[domain], 1))
  key = _hash(_hash(_hash(jnp.asarray(seed, jnp.uint32)) + domain.astype(jnp.uint32)) +
              epoch.astype(jnp.uint32))
  row = _permute(jnp.where(real, index, 0), rows[domain], key).astype(jnp.int32)
  out_domain = jnp.full(batch_size, -1, jnp.int32).at[position].set(domain, mode='drop')
  out_row = jnp.zeros(batch_size, jnp.int32).at[position].set(row, mode='drop')
  return out_domain, out_row


# ------------------------------------------------------------------------------ mixtures
def resolve_weights(weights, names: list[str], natural: np.ndarray, field: str) -> np.ndarray:
  """'uniform' | 'natural' | {domain: weight} -> weights aligned with `names`, checked."""
  if isinstance(weights, str):
    if weights == 'uniform':
      return np.full(len(names), 1.0 / len(names))
    if weights == 'natural':
      return np.asarray(natural, np.float64) / np.sum(natural)
    raise ConfigError(f"{field} is '{weights}'; use 'uniform', 'natural' or a dict "
                      f'{{domain: weight}} over {names}.')
  weights = weights.to_dict() if isinstance(weights, ml_collections.ConfigDict) else dict(weights)
  unknown = sorted(set(weights) - set(names))
  if unknown:
    raise ConfigError(f'{field} names unknown domain(s) {unknown}; the configured domains are '
                      f'{names}.')
  try:
    w = np.array([float(weights.get(n, 0.0)) for n in names])
  except (TypeError, ValueError) as e:
    raise ConfigError(f'{field} must map domains to numbers; got {weights}.') from e
  bad = [n for n, v in zip(names, w) if not math.isfinite(v) or v < 0]
  if bad:
    raise ConfigError(f'{field} has negative or non-finite weights for {bad}; every weight must '
                      f'be a finite number >= 0.')
  if abs(w.sum() - 1.0) > WEIGHT_TOLERANCE:
    raise ConfigError(f'{field} sums to {w.sum():.6g}, not 1; rescale the weights so they sum '
                      f'to 1.')
  return w


def counts_from_weights(weights: np.ndarray, tokens: int, seq_len: int) -> np.ndarray:
  """Per-domain sequence counts summing to round(tokens / seq_len), by largest remainder."""
  total = int(round(tokens / seq_len))
  ideal = np.asarray(weights, np.float64) * total
  counts = np.floor(ideal).astype(np.int64)
  order = np.argsort(-(ideal - counts), kind='stable')
  counts[order[:total - counts.sum()]] += 1
  return counts
