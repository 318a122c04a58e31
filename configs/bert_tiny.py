"""BERT tiny: a 2-layer masked LM on three demo domains (CPython code, State of the Union speeches,
Shakespeare's plays; no BBC news), the whole AutoScale pipeline in a few minutes on a CPU, each
validation run scored by fine-tuning a topic classifier on BBC News articles (bbc_topic), text
no pre-training domain holds. For smoke runs and tests; the fields and their meaning are in
autoscale_jax/defaults.py.
"""

import ml_collections

from autoscale_jax import defaults


def get_config() -> ml_collections.ConfigDict:
  c = defaults.get_config()
  c.mode = 'autoscale'  # DDO at two budgets, prediction, validation (fine-tuned), report

  c.model.family = 'bert'  # masked LM: 15% of tokens masked (80/10/10)
  c.model.size = 'tiny'  # 2 layers, d_model 128, 2 heads, d_ff 512
  c.model.dropout = 0.1  # BERT's dropout, in pre-training and fine-tuning alike

  # The demo corpus without its 'news' domain: bbc_topic's articles stay unseen.
  c.data.domains = tuple(defaults.domain(n, f'demo:{n}') for n in ('code', 'speeches', 'plays'))
  c.data.seq_len = 64  # [CLS] text [SEP] rows; also the fine-tuning sequence length
  c.data.val_sequences = 16  # per domain
  c.data.max_docs = 400  # a slice of each demo domain keeps prepare to seconds
  c.data.tokenizer.kind = 'train_wordpiece'  # BERT's WordPiece, trained on the three domains
  c.data.tokenizer.vocab_size = 4096  # small embedding tables
  c.data.tokenizer.train_chars = 1_000_000  # characters per domain to train it on

  c.train.tokens = 64 * 16 * 20  # mode=train: 20 steps of 16 x 64 tokens
  c.train.lr = 1e-3  # peak learning rate: gentler than the GPT-2 default for post-LayerNorm BERT
  c.train.log_every = 5  # steps between log lines
  c.train.checkpoint_every = 10  # steps between checkpoints
  c.eval.batch_size = 16  # validation batch in sequences

  # A model this briefly pre-trained starts fine-tuning close to a random encoder, whose [CLS]
  # barely sees the text: it needs a higher rate and more steps than BERT's usual 2e-5..5e-5
  # (here 3 x 53 steps; from a random encoder, dev accuracy 0.69 and 0.78 at seeds 0 and 1,
  # against 0.2 by chance; lr 5e-3, or 1e-3 on 400 examples, stayed near chance).
  c.eval.finetune_tasks = ('bbc_topic',)  # offline: BBC articles, 5 topics
  c.eval.finetune.lr = 3e-3  # peak learning rate (10% warmup, then linear decay)
  c.eval.finetune.epochs = 3  # passes over the training split
  c.eval.finetune.batch_size = 32  # examples per step
  c.eval.finetune.seed = 0  # head init, example order and dropout
  c.eval.finetune.max_train_examples = 0  # all 1,670 of bbc_topic's training articles

  c.ddo.budgets = (8_192, 16_384)  # 8 and 16 steps for the base runs
  c.predict.targets = (32_768,)  # 2x the largest DDO budget
  c.predict.interval_samples = 20  # a rough interval is enough for a smoke run
  c.predict.noise, c.predict.noise_source = 0.005, ''  # smoke runs: no measured noise
  c.validate.eval_every = 8  # a few points on each validation curve
  return c
