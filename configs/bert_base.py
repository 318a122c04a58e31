"""BERT base (110M) masked-LM pre-training: five training domains, scored on two held-out domains
that no mixture trains on (the objective is their mean perplexity). WordPiece trained on the
training domains, seq 128 as in BERT's phase 1.

Point it at jsonl(.gz) folders under one directory: --config=configs/bert_base.py:/data/bert.
Fields not set here keep autoscale_jax/defaults.py's values and meaning.
"""

import ml_collections

from autoscale_jax import defaults

TRAIN = ('amazon_reviews', 'arxiv', 'books', 'wikipedia', 'openwebtext')  # the mixture's domains
HELD_OUT = ('pubmed', 'realnews')  # measured, never trained on


def get_config(data_dir: str = 'gs://YOUR_BUCKET/bert') -> ml_collections.ConfigDict:
  c = defaults.get_config()
  c.mode = 'autoscale'  # the whole pipeline

  c.model.family = 'bert'  # masked LM: 15% of tokens masked (80/10/10)
  c.model.size = 'base'  # 12 layers, d_model 768, 12 heads
  c.model.dtype = 'bfloat16'  # compute dtype on accelerators; parameters stay float32
  c.model.dropout = 0.1  # BERT's dropout

  c.data.domains = tuple(
      defaults.domain(n, f'files:{data_dir}/{n}/*.jsonl*', eval_only=n in HELD_OUT)
      for n in TRAIN + HELD_OUT)
  c.data.seq_len = 128  # [CLS] x [SEP] sequences
  c.data.val_sequences = 1024  # per domain
  c.data.tokenizer.kind = 'train_wordpiece'  # trained on the training domains, saved in the workdir
  c.data.tokenizer.vocab_size = 30522  # BERT's vocabulary size
  c.data.tokenizer.train_chars = 50_000_000  # characters per domain to train it on

  c.train.batch_size = 256  # sequences per step (32,768 tokens)
  c.train.lr = 1e-4  # BERT's peak learning rate
  # Then linear decay. Fixed steps (kept so finished runs keep their fingerprints); set 0 to
  # use the paper's train.warmup_ratio = 0.1 instead.
  c.train.warmup_steps = 500
  c.train.schedule = 'linear'  # BERT's schedule
  c.train.weight_decay = 0.01  # BERT's decay
  c.train.b2 = 0.999  # BERT's Adam beta2
  c.train.eps = 1e-6  # BERT's Adam epsilon
  c.train.log_every = 50  # steps between log lines
  c.train.checkpoint_every = 500  # steps between checkpoints
  c.train.tokens = 1_000_000_000  # mode=train: one run

  c.eval.objective = 'weighted_ppl'  # the held-out domains only:
  c.eval.objective_weights = ml_collections.ConfigDict({n: 0.5 for n in HELD_OUT})
  c.eval.batch_size = 256  # validation batch in sequences

  c.ddo.budgets = (100_000_000, 400_000_000)  # DDO over the five training domains: 11 runs each
  c.predict.targets = (1_600_000_000, 5_000_000_000)  # predicted optima
  # No seed noise was measured at this scale: the fallback is a bare assumption (the demo's 0.072
  # was measured on a tiny model at 200k-800k tokens). Run ddo.replicates > 1 to measure it.
  c.predict.noise, c.predict.noise_source = 0.005, ''
  c.validate.targets = (1_600_000_000,)  # validated at 4x the largest DDO budget
  c.validate.eval_every = 1000  # points on each validation curve
  c.validate.seeds = 3  # per mixture: verdicts with a 95% interval

  c.mesh.data = -1  # data parallel; BERT base fits on one accelerator
  return c
