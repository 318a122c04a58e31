"""GPT-2 small (124M) on the seven RedPajama domains: the paper's method at workstation scale
(one or a few GPUs, or a small TPU slice). DDO at 30M and 120M tokens, predictions up to 1.2B,
validated at 480M against uniform and LLaMA's mixture.

Data as in gpt2_large.py: --config=configs/gpt2_small.py:/data/redpajama (local or gs://).
Fields not set here keep autoscale_jax/defaults.py's values and meaning.
"""

import ml_collections

from autoscale_jax import defaults


def get_config(data_dir: str = 'gs://YOUR_BUCKET/redpajama') -> ml_collections.ConfigDict:
  c = defaults.get_config()
  c.mode = 'autoscale'  # the whole pipeline

  c.model.size = 'small'  # 12 layers, d_model 768, 12 heads: 124,439,808 parameters
  c.model.dtype = 'bfloat16'  # compute dtype on accelerators; parameters stay float32
  c.model.dropout = 0.0  # single-epoch pre-training

  # cc, c4, github, books, wiki, arxiv, stackexchange
  c.data.domains = defaults.redpajama_domains(data_dir)
  c.data.seq_len = 1024  # GPT-2's context
  c.data.val_sequences = 256  # 262k validation tokens per domain: loss SE small next to effects
  c.data.tokenizer.kind = 'gpt2'  # GPT-2's own BPE

  c.train.batch_size = 64  # 65,536 tokens per step: 458 steps at 30M tokens
  c.train.lr = 6e-4  # peak learning rate (GPT-2 small)
  # Then cosine to 10%. Fixed steps (kept so finished runs keep their fingerprints); set 0 to
  # use the paper's train.warmup_ratio = 0.1 instead.
  c.train.warmup_steps = 100
  c.train.log_every = 20  # steps between log lines
  c.train.checkpoint_every = 200  # steps between checkpoints
  c.train.tokens = 480_000_000  # mode=train: one run at the validation target

  c.ddo.budgets = (30_000_000, 120_000_000)  # two DDO budgets, 4x apart as in the paper

  c.predict.targets = (480_000_000, 1_200_000_000)  # predicted optima
  # No seed noise was measured at this scale: the fallback is a bare assumption (the demo's 0.072
  # was measured on a tiny model at 200k-800k tokens). Run ddo.replicates > 1 to measure it.
  c.predict.noise, c.predict.noise_source = 0.005, ''

  c.validate.targets = (480_000_000,)  # validated at 4x the largest DDO budget
  c.validate.baselines = ml_collections.ConfigDict(
      {'uniform': 'uniform', 'llama': dict(defaults.LLAMA_WEIGHTS),
       'reuse': 'reuse'})  # the mixtures to beat
  c.validate.eval_every = 250  # points on each validation curve
  c.validate.seeds = 3  # per mixture: verdicts with a 95% interval
  # Every validation run scored few-shot by lm-evaluation-harness (pip install -e ".[eval]";
  # these standard tasks download their data, so the machine needs the internet or an HF cache).
  c.eval.harness_tasks = ('hellaswag', 'piqa', 'arc_easy', 'lambada_openai')
  c.eval.num_fewshot = 0  # zero-shot, as GPT-2's own evaluations

  c.mesh.data = -1  # data parallel over the workstation's GPUs
  return c
