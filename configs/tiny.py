"""Tiny config: a 2-layer GPT-2 on the demo corpus, trained in seconds on a CPU (tests, smoke runs)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.mode = 'train'  # prepare | train | ddo | predict | autoscale | report
  c.seed = 0  # seeds parameter init, dropout, the mixture sampler and BERT masking
  c.dry_run = False  # print the run plan (runs, tokens, steps, devices) and exit without training

  # --- model ---------------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.family = 'gpt2'  # gpt2 (causal LM) | bert (masked LM)
  c.model.size = 'tiny'  # gpt2: tiny|small|medium|large|xl; bert: tiny|base|large
  c.model.overrides = ml_collections.ConfigDict()  # per-field overrides of the named size, e.g. num_layers=1
  c.model.dropout = 0.0  # dropout on embeddings, attention probabilities and residual branches
  c.model.dtype = 'float32'  # compute dtype (bfloat16 on accelerators)
  c.model.param_dtype = 'float32'  # parameter / optimizer-state dtype (keep float32)
  c.model.remat = 'none'  # none | full | dots: rematerialization policy of each block
  c.model.scan_layers = True  # nn.scan over blocks: one compiled block, fast compiles for deep models

  # --- data ----------------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  # Each domain: name (used in weights and reports), source (files:GLOB | tfds:NAME[/CONFIG][:SPLIT]
  # | demo:NAME), text_key (field holding the text in jsonl/parquet/tfds records).
  c.data.domains = tuple(
      ml_collections.ConfigDict(dict(name=n, source=f'demo:{n}', text_key='text'))
      for n in ('code', 'speeches', 'plays', 'news'))
  c.data.seq_len = 64  # tokens per training sequence (targets); stored rows hold seq_len + 1 for GPT-2
  c.data.val_sequences = 16  # validation sequences per domain, carved out before any training data
  c.data.max_docs = 400  # read at most this many documents per domain (0 = all); keeps tests fast
  c.data.tokenizer = ml_collections.ConfigDict()
  c.data.tokenizer.kind = 'train_bpe'  # train_bpe | train_wordpiece | gpt2 (real GPT-2 BPE) | file
  c.data.tokenizer.path = ''  # tokenizer.json when kind == 'file'
  c.data.tokenizer.vocab_size = 1024  # size of a trained tokenizer
  c.data.tokenizer.train_chars = 2_000_000  # characters of training text per domain used to train it
  c.data.cache_dir = ''  # token store location; '' = <workdir>/data
  c.data.prefetch = 2  # batches prepared ahead on a background thread
  c.data.max_epochs = 1  # >1 allows a run to repeat a domain's rows (warned); 1 = never repeat

  # --- training ------------------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.tokens = 64 * 16 * 20  # training budget in target tokens for mode=train
  # Mixture for mode=train: 'uniform', 'natural' (proportional to each domain's tokens) or a dict
  # {domain: weight} summing to 1.
  c.train.weights = 'uniform'
  c.train.batch_size = 16  # global batch in sequences (split over data x fsdp)
  c.train.grad_accum = 1  # micro-batches per step; batch_size must divide by it
  c.train.lr = 3e-3  # peak learning rate
  c.train.warmup_steps = 4  # linear warmup from 0
  c.train.schedule = 'cosine'  # cosine | linear | constant: decay after warmup to min_lr_ratio * lr
  c.train.min_lr_ratio = 0.1  # final learning rate as a fraction of the peak
  c.train.weight_decay = 0.1  # AdamW decay on matrices only (not biases, LayerNorm, embeddings)
  c.train.b1 = 0.9  # Adam beta1
  c.train.b2 = 0.95  # Adam beta2
  c.train.eps = 1e-8  # Adam epsilon
  c.train.clip_norm = 1.0  # global gradient-norm clip (0 disables)
  c.train.log_every = 5  # steps between log lines and metric records
  c.train.eval_every = 0  # steps between evaluations (0 = only at the end)
  c.train.checkpoint_every = 10  # steps between checkpoints (and one at the end)
  c.train.keep_checkpoints = 2  # checkpoints kept on disk
  c.train.async_checkpoint = True  # write checkpoints in the background where orbax allows
  c.train.stack_runs = False  # train all runs of a DDO budget as one vmapped program (issue 8)
  c.train.peak_flops = 0.0  # per-device peak FLOP/s for MFU; 0 = look the device up in the table

  # --- evaluation ----------------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.objective = 'mean_ppl'  # mean_ppl | mean_loss | weighted_ppl | weighted_loss
  c.eval.objective_weights = ml_collections.ConfigDict()  # {domain: weight} for weighted_*; held-out domains only = zero weight elsewhere
  c.eval.batch_size = 16  # validation batch in sequences

  # --- mesh ----------------------------------------------------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # data-parallel size; -1 = all devices left over
  c.mesh.fsdp = 1  # parameter-sharded data parallelism
  c.mesh.tensor = 1  # tensor (model) parallelism
  c.mesh.dcn_data = 1  # multi-slice: data-parallel size across slices (over DCN)
  c.mesh.dcn_fsdp = 1  # multi-slice: fsdp size across slices
  c.mesh.dcn_tensor = 1  # multi-slice: tensor size across slices (keep 1)
  # Logical parameter/activation axis -> mesh axis (None = replicated). Batch spans data and fsdp.
  c.mesh.rules = (
      ('batch', ('data', 'fsdp')),
      ('embed', 'fsdp'),
      ('vocab', 'tensor'),
      ('mlp', 'tensor'),
      ('heads', 'tensor'),
      ('kv', None),
      ('length', None),
      ('layers', None),
      ('norm', None),
      ('position', None),
  )
  return c
