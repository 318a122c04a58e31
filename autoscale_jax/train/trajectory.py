"""Trajectories: one warmup-stable-decay trunk per run, with cooldown branches off it (their
plan and fingerprint kinds: pipeline/trajectories.py).

A trunk is an ordinary 'wsd' run (optim.horizon) at the largest budget. A branch of S steps is
the run of the first S batches of the trunk's stream (the sampler's counts are the trunk's, so
its own counts are mixture.prefix_counts of them at S whole batches), with the trunk's warmup
and a cooldown from k = optim.cooldown_start(S). Up to step k a branch and its trunk take the
same steps with the same key, batches and learning rate, so the branch starts from the trunk's
state at k: the trunk writes it into the branch's own checkpoints/ as the branch's first
checkpoint, and the branch is then a run resuming from it (runs.run). Without that checkpoint
(deleted, or the trunk trained elsewhere) the branch trains from step 0 to the same result.

Disk: a trunk leaves one state per branch not yet trained (a DDO plan entry: one per budget
below the largest); a finished branch keeps only its final checkpoint, as any run does.
"""

from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from absl import logging

from autoscale_jax.train import runs


def _started(run: runs.Run, step: int, ckpt) -> bool:
  """Whether the branch is finished or already has a checkpoint at or past its branch step."""
  return ((run.run_dir / 'result.json').exists()
          or any(s >= step for s in ckpt.manager.all_steps()))


def branch_saver(config: ml_collections.ConfigDict, branches: Sequence[runs.Run],
                 tokenizer_hash: str) -> Callable[[int, Callable[[], Any]], None]:
  """A trunk's Run.on_step: at each branch's step the trunk's state there becomes that branch's
  first checkpoint (kept while the branch has none at or past it and no result)."""
  by_step: dict[int, list[runs.Run]] = {}
  for branch in branches:
    by_step.setdefault(int(branch.kind['branch_step']), []).append(branch)

  def on_step(step: int, state_fn: Callable[[], Any]) -> None:
    for branch in by_step.get(step, ()):
      description = runs.run_description(config, branch.counts, branch.seed, tokenizer_hash,
                                         branch.kind)
      fingerprint = runs.run_fingerprint(config, branch.counts, branch.seed, tokenizer_hash,
                                         branch.kind)
      ckpt = runs.checkpointer(config, branch.run_dir / 'checkpoints', fingerprint, description)
      if not _started(branch, step, ckpt):
        ckpt.maybe_save(step, state_fn(), final=True)
        logging.info('[%s] branch point: the state at step %d saved for %s.', branch.name, step,
                     branch.run_dir)
      ckpt.close()
  return on_step


def run_branch(config: ml_collections.ConfigDict, branch: runs.Run, **kwargs) -> dict:
  """runs.run of a branch (from its branch point when the trunk left it); once finished, its
  branch-point state is deleted unless it is the final one."""
  result = runs.run(config, branch, **kwargs)
  ckpt = runs.checkpointer(config, branch.run_dir / 'checkpoints', result['fingerprint'], None)
  step, steps = int(branch.kind['branch_step']), ckpt.manager.all_steps()
  if step in steps and step != max(steps):
    ckpt.manager.delete(step)
  ckpt.close()
  return result
