"""Every config field with its default and meaning; configs/*.py start from here.

The defaults are the demo (configs/demo.py): a tiny GPT-2 on the built-in demo corpus, the whole
AutoScale pipeline on a laptop CPU. Configs for real runs override what differs.
"""

import ml_collections

# The paper's seven RedPajama-1T domains (our name -> the dataset's folder) and LLaMA's mixture of
# them, the usual baseline.
REDPAJAMA = {'cc': 'common_crawl', 'c4': 'c4', 'github': 'github', 'books': 'book',
             'wiki': 'wikipedia', 'arxiv': 'arxiv', 'stackexchange': 'stackexchange'}
LLAMA_WEIGHTS = {'cc': 0.67, 'c4': 0.15, 'github': 0.045, 'books': 0.045, 'wiki': 0.045,
                 'arxiv': 0.025, 'stackexchange': 0.02}

# The presets of config.world: each a config.synthetic (a field left at None takes the preset's
# value). How each was calibrated is in docs/design.md ("Synthetic worlds").
# cpu: the scale study's pilot (bench/RESULTS.md): the demo model's seed noise and per-domain
# effects of tripling a domain at 50k-800k tokens.
# paper: the AutoScale paper's GPT-2 Large DDO at 1.2B tokens (cutting a domain to 1/5 costs
# its own perplexity 20-30%, the mean 1-8%), with little noise; noiseless: the same, none.
WORLD_PRESETS = {
    'cpu': dict(scale=90_000.0, reference=200_000.0, irreducible=2.3, reducible=3.7,
                exponent=0.42, spread=0.3, transfer=0.15, concentration=5.0, noise=0.055,
                noise_exponent=-0.3, noise_spread=0.5, shared=0.5),
    'paper': dict(scale=1e7, reference=1.2e9, irreducible=2.0, reducible=1.0, exponent=0.3,
                  spread=0.15, transfer=0.1, concentration=0.5, noise=0.005, noise_exponent=0.0,
                  noise_spread=0.0, shared=0.5),
}
WORLD_PRESETS['noiseless'] = {**WORLD_PRESETS['paper'], 'noise': 0.0}
# The largest DDO budget each preset was calibrated at (the study's 800k; the paper's 1.2B).
PRESET_BUDGETS = {'cpu': 800_000.0, 'paper': 1.2e9, 'noiseless': 1.2e9}


def domain(name: str, source: str, text_key: str = 'text', eval_only: bool = False,
           val_sequences: int = 0, data_dir: str = '') -> ml_collections.ConfigDict:
  """A data.domains entry. eval_only domains are measured by the objective but never trained on
  (held-out evaluation); mixtures, DDO and weights cover the other domains. val_sequences
  overrides config.data.val_sequences for this domain (0 = that value); data_dir is where a
  tfds: source's prepared dataset lives ('' = TFDS's default)."""
  return ml_collections.ConfigDict(dict(name=name, source=source, text_key=text_key,
                                        eval_only=eval_only, val_sequences=val_sequences,
                                        data_dir=data_dir))


def redpajama_domains(data_dir: str) -> tuple[ml_collections.ConfigDict, ...]:
  """The RedPajama domains from jsonl(.gz) files under data_dir/<folder>/ (local or gs://)."""
  return tuple(domain(name, f'files:{data_dir}/{folder}/*.jsonl*')
               for name, folder in REDPAJAMA.items())


def mesh(**sizes) -> ml_collections.ConfigDict:
  """config.mesh with the given axis sizes, every other mesh field at its default."""
  cfg = get_config().mesh
  cfg.update(sizes)
  return cfg


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # prepare | train | ddo | predict | autoscale (all of them, then report) | compare (the mixture
  # methods at equal proxy compute, then report) | report | preflight (compile every program of
  # preflight.mode's plan for preflight.topology, on any machine: memory, fit, time, cost)
  c.mode = 'autoscale'
  c.seed = 0  # seeds parameter init, dropout, the mixture sampler and BERT masking
  c.dry_run = False  # print the run plan (runs, tokens, steps, devices) and exit without training
  # '' trains every run; otherwise each run's losses are read off a known law instead
  # (autoscale_jax/pipeline/world.py): whole pipelines in seconds. 'synthetic' is the tests' one
  # fixed world; 'cpu', 'paper' and 'noiseless' are presets of a family of worlds drawn by
  # config.synthetic (calibrated as docs/design.md says).
  c.world = ''

  # --- model ---------------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.family = 'gpt2'  # gpt2 (causal LM) | bert (masked LM)
  c.model.size = 'tiny'  # gpt2: tiny|small|medium|large|xl; bert: tiny|base|large
  # Per-field overrides of the named size, e.g. num_layers=1.
  c.model.overrides = ml_collections.ConfigDict()
  c.model.dropout = 0.0  # dropout on embeddings, attention probabilities and residual branches
  c.model.dtype = 'float32'  # compute dtype (bfloat16 on accelerators)
  c.model.param_dtype = 'float32'  # parameter / optimizer-state dtype (keep float32)
  c.model.remat = 'none'  # none | full | dots: rematerialization policy of each block
  c.model.scan_layers = True  # nn.scan over blocks: one compiled block, fast deep compiles
  c.model.scan_unroll = 1  # scanned blocks per loop iteration (0 = all: every layer compiled)
  c.model.attention_impl = 'xla'  # xla | cudnn: the jax.nn.dot_product_attention implementation

  # --- data ----------------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  # Each domain (see domain()): name (used in weights and reports), source (files:GLOB |
  # tfds:NAME[/CONFIG][:SPLIT] | demo:NAME), text_key (the text field of jsonl/parquet/tfds
  # records), eval_only (held out: measured, never trained on).
  c.data.domains = tuple(domain(n, f'demo:{n}') for n in ('code', 'speeches', 'plays', 'news'))
  # Tokens per training sequence (targets); stored rows hold seq_len + 1 for GPT-2.
  c.data.seq_len = 128
  c.data.val_sequences = 64  # validation sequences per domain, carved out before any training data
  c.data.max_docs = 0  # read at most this many documents per domain (0 = all)
  c.data.tokenizer = ml_collections.ConfigDict()
  c.data.tokenizer.kind = 'train_bpe'  # train_bpe | train_wordpiece | gpt2 (real GPT-2 BPE) | file
  c.data.tokenizer.path = ''  # tokenizer.json when kind == 'file'
  c.data.tokenizer.vocab_size = 4096  # size of a trained tokenizer
  c.data.tokenizer.train_chars = 2_000_000  # characters of each domain's text that train it
  c.data.cache_dir = ''  # token store location; '' = <workdir>/data
  c.data.prefetch = 2  # batches prepared ahead on a background thread
  c.data.max_epochs = 1  # >1 allows a run to repeat a domain's rows (warned); 1 = never repeat

  # --- training ------------------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.tokens = 1_000_000  # training budget in target tokens for mode=train
  # Mixture for mode=train: 'uniform', 'natural' (proportional to each domain's tokens) or a dict
  # {domain: weight} summing to 1 (object-typed so that either kind can be assigned).
  c.train.weights = ml_collections.FieldReference('uniform', field_type=object)
  c.train.batch_size = 16  # global batch in sequences (split over data x fsdp)
  c.train.grad_accum = 1  # micro-batches per step; batch_size must divide by it
  c.train.lr = 3e-3  # peak learning rate
  c.train.warmup_steps = 0  # linear warmup from 0 over this many steps (0 = use warmup_ratio)
  # Warmup as a fraction of each run's steps, rounded up, when warmup_steps is 0 (the paper's
  # scripts: 0.1), so short proxy runs and long ones warm up alike.
  c.train.warmup_ratio = 0.1
  # cosine | linear | constant | wsd: after warmup, decay to min_lr_ratio * lr by the last step;
  # wsd (warmup-stable-decay) holds lr, then cools down over the last cooldown_fraction.
  c.train.schedule = 'cosine'
  c.train.cooldown_fraction = 0.2  # wsd: share of a run's steps its cooldown takes
  c.train.cooldown_shape = '1-sqrt'  # wsd: how lr falls in the cooldown: 1-sqrt | linear
  c.train.min_lr_ratio = 0.1  # final learning rate as a fraction of the peak
  c.train.weight_decay = 0.1  # AdamW decay on matrices only (not biases, LayerNorm, embeddings)
  c.train.b1 = 0.9  # Adam beta1
  c.train.b2 = 0.95  # Adam beta2
  c.train.eps = 1e-8  # Adam epsilon
  c.train.clip_norm = 1.0  # global gradient-norm clip (0 disables)
  c.train.log_every = 50  # steps between log lines and metric records
  c.train.eval_every = 0  # steps between evaluations (0 = only at the end)
  c.train.checkpoint_every = 200  # steps between checkpoints (and one at the end)
  c.train.keep_checkpoints = 2  # checkpoints kept on disk
  c.train.async_checkpoint = True  # write checkpoints in the background where orbax allows
  # 'auto' | True | False: train a DDO budget's runs as one vmapped program (train/stacked.py);
  # 'auto' stacks when the memory estimate fits the device and logs which it chose and why.
  c.train.stack_runs = ml_collections.FieldReference('auto', field_type=object)
  c.train.peak_flops = 0.0  # per-device peak FLOP/s for MFU; 0 = look the device up in the table

  # --- evaluation ----------------------------------------------------------------------------
  c.eval = ml_collections.ConfigDict()
  c.eval.objective = 'mean_ppl'  # mean_ppl | mean_loss | weighted_ppl | weighted_loss
  # {domain: weight} for weighted_*; held-out domains only = zero weight on the others.
  c.eval.objective_weights = ml_collections.ConfigDict()
  c.eval.batch_size = 64  # validation batch in sequences
  # Perplexity in the *_ppl objectives: 'token' = exp of the token-mean loss of a domain;
  # 'sequence' = the mean of per-sequence perplexities (what the AutoScale authors' evaluation
  # script computes).
  c.eval.perplexity = 'token'
  # Downstream evaluation of every validation run (validate and compare) at its end; never part
  # of a run's fingerprint, so turning it on evaluates finished runs without retraining them.
  # GPT-2, few-shot through lm-evaluation-harness (pip install -e ".[eval]"): task names
  # (autoscale_bbc_topic and autoscale_plays_next_line build offline; standard ones such as
  # hellaswag need the internet) or paths of task YAMLs.
  c.eval.harness_tasks = ()
  c.eval.num_fewshot = 0  # in-context examples per request
  c.eval.harness_limit = 0  # examples per task; 0 = all
  # BERT, fine-tuning a classifier on [CLS]: 'bbc_topic' (offline) | 'tfds:glue/sst2' (and the
  # other GLUE tasks; internet) | 'files:TRAIN.jsonl,DEV.jsonl' (text, label per line).
  c.eval.finetune_tasks = ()
  c.eval.finetune = ml_collections.ConfigDict()
  c.eval.finetune.lr = 5e-5  # peak learning rate (Adam, linear decay after 10% warmup)
  c.eval.finetune.epochs = 3  # passes over the training split
  c.eval.finetune.batch_size = 32  # examples per step
  c.eval.finetune.seed = 0  # one fixed seed per pre-trained run (head init, order, dropout)
  c.eval.finetune.max_train_examples = 0  # 0 = the whole training split

  # --- DDO: the 2m+1 proxy runs at each small budget -------------------------------------------
  c.ddo = ml_collections.ConfigDict()
  c.ddo.budgets = (100_000, 300_000)  # token budgets of the DDO proxy runs (>= 2 for AutoScale)
  # Base mixture: 'uniform', 'natural' or {domain: weight} (all > 0); object-typed like weights.
  c.ddo.base_weights = ml_collections.FieldReference('uniform', field_type=object)
  c.ddo.factors = (0.2, 3.0)  # each domain's quantity is scaled by each factor, the others fixed
  c.ddo.replicates = 1  # seeds per plan entry (> 1 gives the fits seed noise for the interval)
  c.ddo.upper = 'factor'  # multiplier cap: 'factor' (largest factor tested, and the data) | 'data'
  # Budgets where a full DDO checks the prediction, never fed to the fit: between the DDO
  # budgets it checks interpolation, above them extrapolation (the paper checks 0.6B).
  c.ddo.check_budgets = ()
  # Train every plan entry once, as one warmup-stable-decay trunk to the largest budget, and
  # each smaller budget as a cooldown branch off it (pipeline/trajectories.py): every budget
  # for about the price of the largest. False: a separate run per entry and budget.
  c.ddo.trajectories = False

  # --- AutoScale prediction --------------------------------------------------------------------
  c.predict = ml_collections.ConfigDict()
  c.predict.targets = (1_200_000,)  # token budgets to predict the optimal mixture for
  c.predict.interval_level = 0.9  # coverage of the reported bootstrap interval on each weight
  c.predict.interval_samples = 100  # bootstrap samples behind the interval
  # Seed-to-seed spread of objective ratios (std) used to resample the fits. Only a fallback: with
  # ddo.replicates > 1 it is measured from the replicates; used, the report names it an
  # assumption. 0 = resample the fit residuals only (zero width with 3-point fits). The demo's:
  # the scale study's measured sd on the same corpus and model at 200k-800k tokens.
  c.predict.noise = 0.072
  # Where that fallback figure was measured (a config at another scale sets its own, or '' for
  # nowhere: the report then calls it a bare assumption).
  c.predict.noise_source = ('the scale study (bench/RESULTS.md): sd of the DDO objective ratio '
                            'over seeds, demo corpus and model, 200k-800k tokens')
  # Domains on a DDO bound: 'hold' (keep their weight at the largest DDO budget) or
  # 'extrapolate' (the paper: every domain follows the law). 'hold' is the default because the
  # scale study (bench/RESULTS.md) measured it closer to a DDO run directly at the target: L1
  # 0.218 against 0.456 for 'extrapolate' (demo corpus, DDO at 200k/800k, target 3.2M).
  c.predict.pinned = 'hold'
  # 'plain': the AutoScale prediction as is. 'conservative': move from predict.prior towards the
  # largest DDO budget's optimum only as far as the fits' bootstrap (at predict.interval_level)
  # keeps a lower bound on the predicted gain above 0, and shrink every target's prediction by
  # that fraction; with no such point, the prior (mixing/conservative.py).
  c.predict.policy = 'plain'
  # The conservative policy's starting point: 'uniform', 'natural' or {domain: weight}.
  c.predict.prior = ml_collections.FieldReference('uniform', field_type=object)

  # --- validation: target runs of the predicted mixture against baselines -----------------------
  c.validate = ml_collections.ConfigDict()
  c.validate.enabled = True  # train the predicted mixture and the baselines at the targets
  c.validate.targets = ()  # target budgets to validate at; () = every predict.targets entry
  # Baseline mixtures by name: 'uniform', 'natural', 'reuse' (the DDO optimum of the largest DDO
  # budget used as is, the practice AutoScale claims to beat) or {domain: weight} summing to 1.
  c.validate.baselines = ml_collections.ConfigDict(
      {'uniform': 'uniform', 'natural': 'natural', 'reuse': 'reuse'})
  # Seeds per validation mixture (seed s of every mixture shares its initialization, so the
  # verdicts pair them); 1 gives no interval. Real configs: 3.
  c.validate.seeds = 1
  c.validate.eval_every = 40  # steps between evaluations of validation runs (objective curves)

  # --- compare: the mixture methods side by side at equal proxy compute (mode=compare) --------
  c.compare = ml_collections.ConfigDict()
  # Methods (each validate.baselines entry joins them; uniform always does, as the reference):
  # autoscale | reuse | regmix | mixing_law | doremi | temperature | unimax | uniform | natural.
  c.compare.methods = ('autoscale', 'reuse', 'regmix', 'mixing_law', 'doremi', 'temperature',
                       'unimax', 'uniform', 'natural')
  # Proxy training tokens each learned method may spend; 0 = what the DDO budgets cost.
  c.compare.proxy_tokens = 0
  # The most tokens one swarm or DoReMi run trains; 0 = the largest DDO budget, the scale at
  # which AutoScale's proxies measure, so every method's proxies stand as far below the target.
  c.compare.proxy_run_tokens = 0
  # Random-mixture runs RegMix and the mixing law share; 0 = as many as compare.proxy_tokens
  # buys at proxy_run_tokens each (at least 2); given, the budget is split among them (capped).
  c.compare.swarm_runs = 0
  c.compare.swarm_prior = 'uniform'  # Dirichlet centre of the swarm: uniform | natural
  c.compare.swarm_concentration = 1.0  # Dirichlet concentration per domain (1 = flat, uniform)
  c.compare.regmix_regressor = 'linear'  # linear | lightgbm (pip install -e ".[regmix]")
  c.compare.regmix_samples = 100_000  # RegMix: Dirichlet candidates scored
  c.compare.regmix_top_k = 100  # RegMix: best-scored candidates averaged
  # DoReMi: a reference run on doremi_reference, then a proxy run of as many tokens on uniform
  # batches (its reference forwards count a third of a token each: the budget P buys 3P/7
  # tokens per run, capped at proxy_run_tokens, so DoReMi may spend less than P). The paper's
  # step size 1 and smoothing 1e-3; its reference mixture is the Pile's own (natural here),
  # GLaM's uniform.
  c.compare.doremi_reference = 'uniform'  # uniform | natural | a dict of weights per domain
  c.compare.doremi_step_size = 1.0  # eta of the exponentiated-gradient step on the weights
  c.compare.doremi_smoothing = 1e-3  # s: weights <- (1 - s) weights + s / m every step
  c.compare.temperature = 3.0  # temperature sampling tau: weights ~ tokens^(1/tau)
  c.compare.unimax_epochs = 1.0  # UniMax: most epochs of any domain at the target

  # --- preflight (mode=preflight: the plan's programs compiled for a TPU slice, here) ---------
  c.preflight = ml_collections.ConfigDict()
  # The slice to compile for: a Cloud name (v4-N and v5p-N count TensorCores, v5e-N, v5litepod-N
  # and v6e-N chips) or a topology such as 'v5p:4x4x4'; mesh.dcn_* give the number of slices.
  c.preflight.topology = ''
  c.preflight.mode = 'autoscale'  # whose plan is compiled and costed: train|ddo|autoscale|compare
  c.preflight.vocab_size = 0  # vocabulary of a tokenizer yet to be trained (0 = its target size)
  c.preflight.mfu = 0.5  # assumed MFU for the plan's hours, beside the roofline's

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

  # --- synthetic worlds (config.world = cpu | paper | noiseless; pipeline/worlds.py). ---------
  # Read only when config.world is a preset; a field left at None takes the preset's value
  # (defaults.WORLD_PRESETS, calibrated as docs/design.md says)
  c.synthetic = ml_collections.ConfigDict()
  c.synthetic.seed = 0  # which world of the family: its laws, transfer, natural shares, noise
  # Domains of the world; 0 = as many as config.data.domains (what a pipeline needs). A study
  # calling the world directly picks any number >= 2.
  c.synthetic.num_domains = 0
  # True: a pipeline's world sits where it measures: scale and reference (unless given) are
  # multiplied by the config's largest DDO budget over the preset's (PRESET_BUDGETS), which
  # gives the preset's world at the config's budgets (the tiny config's 16k tokens behave as
  # the cpu preset's 800k). False: the preset's own token scale.
  c.synthetic.at_ddo_budgets = True
  # Tokens: the effective-token scale of every domain's law (its power law bends there; the
  # budgets well above it are the informative ones).
  c.synthetic.scale = _preset()
  c.synthetic.reference = _preset()  # tokens: the budget at which reducible and noise are given
  c.synthetic.irreducible = _preset()  # nats: the centre of the domains' irreducible losses E
  # Nats: the centre of the domains' reducible losses at the uniform mixture of reference tokens.
  c.synthetic.reducible = _preset()
  c.synthetic.exponent = _preset()  # the centre of the domains' power-law exponents alpha
  # How different the domains' laws are: E, the reducible loss and alpha are each their centre
  # times exp(spread u), u uniform in [-1, 1] per domain (0 = every domain the same law).
  c.synthetic.spread = _preset()
  # Mean off-diagonal cross-domain transfer T (tokens of domain j count T_ij for domain i;
  # each drawn uniform in [0, 2 transfer]; 0 = no transfer).
  c.synthetic.transfer = _preset()
  c.synthetic.concentration = _preset()  # Dirichlet concentration of the natural shares
  # Nats: seed-to-seed sd of a domain's validation loss at reference tokens (0 = noiseless).
  c.synthetic.noise = _preset()
  # How the noise sd changes with a run's budget N: noise * (N / reference)^noise_exponent.
  c.synthetic.noise_exponent = _preset()
  # Per-domain noise: noise * exp(noise_spread v), v uniform in [-1, 1] per domain.
  c.synthetic.noise_spread = _preset()
  # Fraction of the noise variance shared by all runs with the same seed (every mixture and
  # budget), so that seed-paired comparisons are less noisy than unpaired ones, as in training.
  c.synthetic.shared = _preset()
  return c


def _preset() -> ml_collections.FieldReference:
  """A config.synthetic field whose default is the preset's value (None), or a number."""
  return ml_collections.FieldReference(None, field_type=float)


def synthetic_spec(config: ml_collections.ConfigDict) -> dict:
  """config.synthetic for the preset config.world, each None replaced by the preset's value:
  what draws the world (pipeline/worlds.make), and what a run's fingerprint hashes."""
  preset = WORLD_PRESETS[config.world]
  spec = {k: preset[k] if v is None else v for k, v in config.synthetic.to_dict().items()}
  if spec.pop('at_ddo_budgets'):
    budgets = config.ddo.budgets
    largest = max(budgets) if isinstance(budgets, (tuple, list)) else budgets
    for k in ('scale', 'reference'):
      if config.synthetic[k] is None:
        spec[k] = float(preset[k] * largest / PRESET_BUDGETS[config.world])
  return spec
