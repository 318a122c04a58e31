"""Tiny: a 2-layer GPT-2 on a slice of the demo corpus; the whole pipeline in about a minute on a
CPU. For tests and smoke runs; the fields and their meaning are in autoscale_jax/defaults.py."""

import ml_collections

from autoscale_jax import defaults


def get_config() -> ml_collections.ConfigDict:
  c = defaults.get_config()
  c.mode = 'train'  # a single run unless told otherwise (--config.mode=autoscale for all)
  c.data.seq_len = 64  # short sequences
  c.data.val_sequences = 16  # per domain
  c.data.max_docs = 400  # a slice of each demo domain keeps prepare to seconds
  c.data.tokenizer.vocab_size = 1024  # small embedding tables
  c.train.tokens = 64 * 16 * 20  # mode=train: 20 steps of 16 x 64 tokens
  c.train.log_every = 5  # steps between log lines
  c.train.checkpoint_every = 10  # steps between checkpoints
  c.eval.batch_size = 16  # validation batch in sequences
  c.ddo.budgets = (8_192, 16_384)  # 8 and 16 steps for the base runs
  c.predict.targets = (32_768,)  # 2x the largest DDO budget
  c.predict.interval_samples = 20  # a rough interval is enough for a smoke run
  c.predict.noise, c.predict.noise_source = 0.005, ''  # smoke runs: no measured noise
  c.validate.eval_every = 8  # a few points on each validation curve
  return c
