"""A DoReMi proxy run in its own process (test_doremi's SIGKILL test): the reference run under
ROOT if not finished, then a 12-step proxy run checkpointed every 4 steps and logged every step,
sleeping after each proxy step so that the test can kill it between checkpoints (the sleep
changes no number). Usage: doremi_worker.py ROOT."""

import sys
import time

import numpy as np
from etils import epath

from autoscale_jax.train import doremi, runs
from test_stacked import CONFIG, STORES, TOKENIZER, TRAINERS

PROXY = np.array([64, 64, 64])  # 12 steps of 16 sequences


def main(root: epath.Path, pause: float = 0.3) -> dict:
  """Trains the reference and the proxy under `root`, pausing `pause` s after each proxy step."""
  config = CONFIG.copy_and_resolve_references()
  config.train.checkpoint_every, config.train.log_every = 4, 1
  reference = runs.Run('reference', root / 'reference', np.array([40, 40, 40]), 0)
  runs.run(config, reference, stores=STORES, tokenizer=TOKENIZER, trainers=TRAINERS)
  real_step = doremi.DoReMiTrainer.step

  def slow_step(self, *args):
    out = real_step(self, *args)
    time.sleep(pause)
    return out
  doremi.DoReMiTrainer.step = slow_step
  try:
    return doremi.run(config, runs.Run('proxy', root / 'proxy', PROXY, 0), reference,
                      mixture=[0, 1, 2], step_size=1.0, smoothing=1e-3, stores=STORES,
                      tokenizer=TOKENIZER, trainers=TRAINERS)
  finally:
    doremi.DoReMiTrainer.step = real_step


if __name__ == '__main__':
  main(epath.Path(sys.argv[1]))
