"""ddo.trajectories: every DDO budget from one warmup-stable-decay trunk per plan entry.

The largest budget's plan (ddo.ddo_plan) gives each entry (a mixture and a replicate seed) its
counts C; that run, with the 'wsd' schedule, is the entry's trunk and, through its own cooldown,
its run at the largest budget. A smaller budget b is a cooldown branch of every trunk
(train/trajectory.py): S_b = round(sum(C) b / (b_max B)) whole batches of the trunk's stream,
so the entry keeps its mixture and its size relative to the base entry; its counts are the
trunk's prefix there (mixture.prefix_counts, exact, recorded in plan.json, and the quantities
the fits use); it branches off at k_b = optim.cooldown_start(S_b). All runs of the DDO warm up
over the same W steps: train.warmup_steps, or else warmup_ratio of the base entry's steps at the
smallest budget, rounded up, so the smallest budget's runs warm up as separate runs would and a
trunk and its branches share one warmup, as their common steps require.
"""

import dataclasses
import fractions
import math

import ml_collections
import numpy as np

from autoscale_jax.data import mixture
from autoscale_jax.errors import ConfigError
from autoscale_jax.mixing import Perturbation
from autoscale_jax.train import optim

KIND = 'trajectory'


def kind(warmup: int, trunk: str | None = None, branch_step: int | None = None) -> dict:
  """What makes a run a trajectory's, for its fingerprint: the shared warmup and, for a branch,
  its trunk's fingerprint (which names the stream and seed) and the step it branches at."""
  out = {'kind': KIND, 'warmup_steps': int(warmup)}
  if trunk is not None:
    out.update(trunk=trunk, branch_step=int(branch_step))
  return out


@dataclasses.dataclass(frozen=True)
class Point:
  """One entry's run at one budget: its counts (all domains), steps, and where it branches off
  its trunk (None for the trunk itself)."""
  counts: np.ndarray
  steps: int
  branch_step: int | None

  def trained_steps(self) -> int:
    """Steps this run trains itself: a branch only its cooldown."""
    return self.steps - (self.branch_step or 0)


def _round(x: fractions.Fraction) -> int:
  return math.floor(x + fractions.Fraction(1, 2))


def layout(config: ml_collections.ConfigDict, budgets: list[int],
           trunks: list[np.ndarray]) -> tuple[int, list[dict[int, Point]]]:
  """The shared warmup and, per plan entry (trunk counts C over all domains, base entry first),
  its Point at every budget. Needs no data: only counts and config."""
  batch = int(config.train.batch_size)
  top = budgets[-1]
  wsd = ml_collections.ConfigDict(config.train.to_dict())
  wsd.schedule = 'wsd'
  optim.check_optimizer(wsd)
  steps = [{b: (mixture.num_steps(c, batch) if b == top else
                _round(fractions.Fraction(int(c.sum()) * b, top * batch))) for b in budgets}
           for c in trunks]
  warmup = (int(config.train.warmup_steps)
            or math.ceil(float(config.train.warmup_ratio) * steps[0][budgets[0]]))
  out = []
  for c, entry in zip(trunks, steps):
    points = {}
    for b in budgets:
      s = entry[b]
      if b != top and not 1 <= s < entry[top]:
        raise ConfigError(f'config.ddo.budgets: a branch at {b:,} tokens has {s} steps, outside '
                          f'its {entry[top]}-step trunk; space the budgets further apart or '
                          'lower config.train.batch_size.')
      optim.horizon(wsd, s, warmup)  # refuses a cooldown that starts inside the warmup
      counts = (c if b == top else
                np.asarray(mixture.prefix_counts(c, s * batch), np.int64))
      start = None if b == top else optim.cooldown_start(s, wsd.cooldown_fraction)
      points[b] = Point(counts, s, start)
    out.append(points)
  return warmup, out


def perturbations(nominal: list[Perturbation], points: list[Point], trainable: np.ndarray,
                  seq_len: int) -> list[Perturbation]:
  """The plan's perturbations with the quantities each branch (or trunk) realises."""
  return [Perturbation(p.domain, p.factor, p.replicate,
                       pt.counts[trainable].astype(np.float64) * seq_len)
          for p, pt in zip(nominal, points)]


def tokens(points: list[Point], budget: int, batch: int, seq_len: int,
           top: int) -> tuple[int, int]:
  """(tokens trained, tokens of the same runs trained separately) of one budget's runs."""
  full = sum(int(p[budget].counts.sum()) for p in points) * seq_len
  if budget == top:
    return full, full
  return sum(p[budget].trained_steps() for p in points) * batch * seq_len, full
