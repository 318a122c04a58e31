"""Trains the tiny GPT-2 on synthetic batches up to --until, checkpointing; run as a fresh process.

Used by test_trainer.py: 10 steps straight must equal 5 steps + checkpoint + a new process that
restores and trains 5 more, bit for bit.
"""

import argparse
import os

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'

import jax  # noqa: E402
import numpy as np  # noqa: E402

from autoscale_jax.configs import tiny  # noqa: E402
from autoscale_jax.models import build_model  # noqa: E402
from autoscale_jax.train import mesh as mesh_lib  # noqa: E402
from autoscale_jax.train.checkpoint import Checkpointer  # noqa: E402
from autoscale_jax.train.trainer import Trainer, run_key  # noqa: E402

KEY = run_key(0)  # the key of every run here (seed 0)

VOCAB, SEQ, TOTAL = 512, 32, 10


def synthetic_batch(step: int, batch: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(1000 + step)
  return {'tokens': rng.integers(0, VOCAB, (batch, SEQ + 1)).astype(np.int32),
          'domain': rng.integers(0, 4, batch).astype(np.int32)}


def make_trainer() -> Trainer:
  c = tiny.get_config()
  c.mesh.fsdp = 2
  model = build_model(c.model, vocab_size=VOCAB, seq_len=SEQ)
  return Trainer(model=model, train_cfg=c.train, mesh=mesh_lib.make_mesh(c.mesh),
                 rules=c.mesh.rules, num_domains=4)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument('--ckpt', required=True)
  p.add_argument('--until', type=int, required=True)
  p.add_argument('--out', required=True)
  args = p.parse_args()
  trainer = make_trainer()
  ckpt = Checkpointer(args.ckpt, fingerprint='resume-test', every=5, keep=3, use_async=True)
  restored = ckpt.restore(trainer.abstract_state)
  state = trainer.init_state(KEY) if restored is None else restored[0]
  start = int(state.step)
  losses = []
  for step in range(start, args.until):
    state, m = trainer.step(state, trainer.put_batch(synthetic_batch(step, 16)), KEY, TOTAL)
    losses.append(float(m['loss']))
    ckpt.maybe_save(step + 1, state)
  ckpt.close()
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(state.params))
  np.savez(args.out, start=start, losses=np.array(losses),
           **{jax.tree_util.keystr(k): v for k, v in leaves})


if __name__ == '__main__':
  main()
