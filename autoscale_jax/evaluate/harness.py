"""Few-shot evaluation of our GPT-2 through lm-evaluation-harness, offline.

HarnessLM puts a jitted Flax GPT-2 (a ModelSpec and its params) and our tokenizer behind the
harness's LM interface: `loglikelihood` (what multiple-choice tasks ask for) and
`loglikelihood_rolling` (perplexity tasks); `generate_until` is not supported. evaluate() runs
lm_eval.simple_evaluate on it with the offline tasks of tasks.py and returns a small plain dict.

Scoring:
- The context is the seq_len the model was trained at, not the position table's max_len. A
  request whose context + continuation exceeds seq_len + 1 tokens keeps its last seq_len + 1
  (left truncation, as the harness does for HF models; a continuation longer than seq_len keeps
  its last seq_len tokens scored), and is counted per task in `counts`.
- Requests are packed into batches of a fixed size whose length is the smallest bucket (powers
  of two from 16 up to seq_len, and seq_len) that holds them, right-padded; so XLA compiles once
  per bucket, never per request. One jitted function gives, per row, the sum of the target
  tokens' log-probabilities (log-softmax over the whole padded vocabulary, as training's loss)
  and whether every target is the argmax.
- loglikelihood_rolling cuts a text into the harness's rolling windows
  (lm_eval.utils.get_rolling_token_windows with make_disjoint_window) over seq_len, the first
  conditioned on EOS; the result is the sum of the log-probabilities of all the text's tokens.

Multi-controller: under several JAX processes every process must call evaluate (or the LM's
methods) with the same arguments; every process runs every batch (the harness sees rank 0 of a
world of size 1, so it neither splits requests nor gathers results), and every process gets the
same results. Process 0 is the one that should write them (the caller's job: evaluate writes
nothing but the task files, see tasks.task_dir). With a mesh, batches are split over its batch
axes like training batches; params may be sharded any way the mesh allows.
"""

import dataclasses
import functools
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from autoscale_jax.errors import ConfigError, UserError
from autoscale_jax.evaluate import tasks as tasks_lib
from autoscale_jax.models import ModelSpec

MIN_BUCKET = 16  # the shortest padded length; longer ones double up to seq_len
EXTRA = 'pip install -e ".[eval]"'


class GenerationNotSupported(UserError, NotImplementedError):
  """The harness asked for text generation, which this adapter does not do."""


def import_lm_eval():
  """lm_eval, imported now (it is an optional extra), with HF datasets kept offline."""
  os.environ.setdefault('HF_DATASETS_OFFLINE', '1')  # local jsonl tasks: no hub look-ups
  try:
    import lm_eval  # pylint: disable=g-import-not-at-top
    import lm_eval.api.model  # pylint: disable=g-import-not-at-top
    import lm_eval.tasks  # pylint: disable=g-import-not-at-top
    import lm_eval.utils  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(f'Few-shot evaluation needs lm-evaluation-harness, an optional extra that '
                    f'failed to import ({e}); {EXTRA} (or pip install "autoscale_jax[eval]").'
                    ) from None
  datasets = sys.modules.get('datasets')
  if datasets is not None and os.environ['HF_DATASETS_OFFLINE'] == '1':
    datasets.config.HF_DATASETS_OFFLINE = True  # imported before the variable was set
  return lm_eval


def buckets(seq_len: int) -> list[int]:
  """The padded lengths: MIN_BUCKET, 2 * MIN_BUCKET, ... below seq_len, then seq_len."""
  out, b = [], MIN_BUCKET
  while b < seq_len:
    out.append(b)
    b *= 2
  return out + [seq_len]


def score_rows(module, params, inputs: jax.Array, targets: jax.Array,
               weights: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per row: the sum of log p(target) over positions with weight 1, and whether each of those
  targets is the argmax. inputs, targets int32[B, L]; weights float32[B, L] (0 or 1)."""
  logits = module.apply({'params': params}, inputs, deterministic=True).astype(jnp.float32)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  logp = jnp.where(weights > 0, picked - jax.nn.logsumexp(logits, axis=-1), 0.0)
  greedy = jnp.all((jnp.argmax(logits, axis=-1) == targets) | (weights == 0), axis=-1)
  return logp.sum(axis=-1), greedy


@functools.lru_cache(maxsize=8)
def _jitted(module, out_sharding: NamedSharding | None):
  """score_rows for one module, jitted once: adapters of the same model share compilations."""
  fn = functools.partial(score_rows, module)
  return jax.jit(fn) if out_sharding is None else jax.jit(fn, out_shardings=out_sharding)


def lower_scoring(model: ModelSpec, params: Any, mesh: Mesh, rules: Sequence,
                  batch_size: int) -> jax.stages.Lowered:
  """The scoring function at its largest bucket (seq_len), lowered for abstract `params` and
  batches sharded as HarnessLM shards them on `mesh` (mode=preflight); needs no lm_eval."""
  from autoscale_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from autoscale_jax.train.trainer import mesh_context  # pylint: disable=g-import-not-at-top
  rows = mesh_lib.batch_sharding(mesh, rules, 2)
  shape = (batch_size, model.seq_len)
  batch = (jax.ShapeDtypeStruct(shape, jnp.int32, sharding=rows),
           jax.ShapeDtypeStruct(shape, jnp.int32, sharding=rows),
           jax.ShapeDtypeStruct(shape, jnp.float32, sharding=rows))
  with mesh_context(mesh, rules):
    return _jitted(model.module, NamedSharding(mesh, P())).lower(params, *batch)


@dataclasses.dataclass
class _Row:
  index: int
  tokens: list[int]  # inputs followed by the last target: len(tokens) - 1 positions scored
  scored: int  # how many of the last positions are continuation (weight 1)


class _GPT2Scoring:
  """HarnessLM: our GPT-2 as an lm_eval LM (this class on top of lm_eval's TemplateLM, put
  together when lm_eval is first imported: see _lm_class).

  `counts[task]` = {'requests': harness requests scored, 'truncated': those left-truncated}
  accumulates over calls (reset_counts() clears it); num_requests / num_truncated sum them.
  """

  def __init__(self, model: ModelSpec, params: Any, tokenizer: Any, *, seq_len: int,
               batch_size: int = 16, mesh: Mesh | None = None, rules: Sequence = ()):
    """model: a gpt2 ModelSpec (models.build_model); params: its 'params' collection (arrays of
    any placement; with `mesh`, sharded over it). tokenizer: the run's (data.tokenizer.Tokenizer:
    encode_batch(texts) -> ids, eos_id). seq_len: the data.seq_len the model was trained at.
    batch_size: rows per compiled batch (with a mesh, a multiple of its batch axes' size)."""
    super().__init__()
    if model.family != 'gpt2':
      raise ConfigError(f'Few-shot evaluation scores a causal LM; config.model.family is '
                        f"'{model.family}', use 'gpt2' (BERT runs are fine-tuned instead).")
    if not 1 <= seq_len <= model.config.max_len:
      raise ConfigError(f'The evaluation seq_len is {seq_len}; it must be the data.seq_len the '
                        f'model was trained at, between 1 and max_len={model.config.max_len}.')
    if getattr(tokenizer, 'eos_id', None) is None:
      raise ConfigError('The tokenizer has no <|endoftext|> token, which conditions the first '
                        'token of a text; use a GPT-2 tokenizer (train_bpe, gpt2 or file).')
    if batch_size < 1:
      raise ConfigError(f'The evaluation batch_size is {batch_size}; it must be at least 1.')
    self.model, self.params, self.tok = model, params, tokenizer
    self.seq_len, self.batch_size = int(seq_len), int(batch_size)
    self.mesh, self.rules = mesh, tuple(rules)
    self.counts: dict[str, dict[str, int]] = {}
    self._last_truncated: list[bool] = []
    if mesh is None:
      self._fn, self._batch_sharding = _jitted(model.module, None), None
    else:
      from autoscale_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
      dp = mesh_lib.data_parallel_size(mesh, self.rules)
      if self.batch_size % dp:
        raise ConfigError(f'The evaluation batch_size is {batch_size}; with this mesh it must '
                          f'be a multiple of the data-parallel size {dp}.')
      self._batch_sharding = mesh_lib.batch_sharding(mesh, self.rules, 2)
      self._fn = _jitted(model.module, NamedSharding(mesh, P()))

  # --------------------------------------------------------------- what the harness reads
  @property
  def rank(self) -> int:
    return 0  # every JAX process runs every request (see the module docstring)

  @property
  def world_size(self) -> int:
    return 1

  @property
  def eot_token_id(self) -> int:
    return self.tok.eos_id

  @property
  def max_length(self) -> int:
    return self.seq_len

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
    del add_special_tokens, kwargs  # our GPT-2 tokenizers add no special tokens
    return list(self.tok.encode_batch([string])[0])

  def get_model_info(self) -> dict:
    return {'family': self.model.family, 'seq_len': self.seq_len,
            'num_layers': self.model.config.num_layers, 'd_model': self.model.config.d_model}

  # --------------------------------------------------------------- scoring
  def reset_counts(self) -> None:
    self.counts = {}

  @property
  def num_requests(self) -> int:
    return sum(c['requests'] for c in self.counts.values())

  @property
  def num_truncated(self) -> int:
    return sum(c['truncated'] for c in self.counts.values())

  def _count(self, requests, truncated: Sequence[bool]) -> None:
    for req, cut in zip(requests, truncated):
      c = self.counts.setdefault(getattr(req, 'task_name', None) or '', {'requests': 0,
                                                                         'truncated': 0})
      c['requests'] += 1
      c['truncated'] += int(cut)

  def score(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]
            ) -> tuple[list[tuple[float, bool]], list[bool]]:
    """(log p(continuation | context), greedy) for each (context ids, continuation ids), and
    whether each was left-truncated to fit seq_len. An empty context is EOS."""
    rows, truncated = [], []
    for i, (context, continuation) in enumerate(pairs):
      tokens = (list(context) or [self.tok.eos_id]) + list(continuation)
      truncated.append(len(tokens) > self.seq_len + 1)
      tokens = tokens[-(self.seq_len + 1):]
      rows.append(_Row(i, tokens, min(len(continuation), len(tokens) - 1)))
    results: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
    lengths = buckets(self.seq_len)
    by_bucket: dict[int, list[_Row]] = {}
    for row in rows:
      length = next(b for b in lengths if b >= len(row.tokens) - 1)
      by_bucket.setdefault(length, []).append(row)
    for length in sorted(by_bucket):
      group = sorted(by_bucket[length], key=lambda r: (-len(r.tokens), r.index))
      for start in range(0, len(group), self.batch_size):
        batch = group[start:start + self.batch_size]
        sums, greedy = self._run(batch, length)
        for row, s, g in zip(batch, sums, greedy):
          results[row.index] = (float(s), bool(g))
    return results, truncated

  def _run(self, batch: list[_Row], length: int) -> tuple[np.ndarray, np.ndarray]:
    shape = (self.batch_size, length)
    inputs = np.full(shape, self.tok.eos_id, np.int32)
    targets = np.zeros(shape, np.int32)
    weights = np.zeros(shape, np.float32)
    for r, row in enumerate(batch):
      n = len(row.tokens) - 1
      inputs[r, :n] = row.tokens[:-1]
      targets[r, :n] = row.tokens[1:]
      weights[r, n - row.scored:n] = 1.0
    arrays = (inputs, targets, weights)
    if self.mesh is None:
      sums, greedy = self._fn(self.params, *arrays)
    else:
      from autoscale_jax.train.trainer import mesh_context  # pylint: disable=g-import-not-at-top
      # Every process holds the whole batch; each places the shards its devices own.
      arrays = tuple(jax.make_array_from_callback(a.shape, self._batch_sharding,
                                                  lambda idx, a=a: a[idx]) for a in arrays)
      with mesh_context(self.mesh, self.rules):
        sums, greedy = self._fn(self.params, *arrays)
    return np.asarray(jax.device_get(sums)), np.asarray(jax.device_get(greedy))

  # --------------------------------------------------------------- the LM interface
  def loglikelihood(self, requests, disable_tqdm: bool = True) -> list[tuple[float, bool]]:
    """(log p(continuation | context), is greedy) per request; args = (context, continuation).
    Tokenized as the harness does for causal models (TemplateLM): an empty context becomes EOS,
    a context's trailing spaces move to the continuation."""
    results = super().loglikelihood(requests, disable_tqdm=True)  # -> _loglikelihood_tokens
    self._count(requests, self._last_truncated)
    return results

  def _loglikelihood_tokens(self, requests, disable_tqdm: bool = True, **kwargs
                            ) -> list[tuple[float, bool]]:
    results, self._last_truncated = self.score([(ctx, cont) for _, ctx, cont in requests])
    return results

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = True) -> list[float]:
    """log p(text) per request (args = (text,)), over the harness's rolling windows."""
    utils = import_lm_eval().utils
    windows, owner = [], []
    for i, req in enumerate(requests):
      (text,) = req.args
      for pair in utils.get_rolling_token_windows(
          token_list=self.tok_encode(text), prefix_token=self.eot_token_id,
          max_seq_len=self.seq_len, context_len=1):
        windows.append(utils.make_disjoint_window(pair))
        owner.append(i)
    scores, _ = self.score(windows)
    totals = [0.0] * len(requests)
    for i, (logp, _) in zip(owner, scores):
      totals[i] += logp
    self._count(requests, [False] * len(requests))  # windows always fit
    return totals

  def generate_until(self, requests, disable_tqdm: bool = True) -> list[str]:
    raise GenerationNotSupported(
        'Generation tasks (output_type generate_until) are not supported by the autoscale_jax '
        'GPT-2 evaluator; choose loglikelihood or multiple_choice tasks.')


@functools.cache
def _lm_class() -> type:
  lm_eval = import_lm_eval()
  return type('HarnessLM', (_GPT2Scoring, lm_eval.api.model.TemplateLM),
              {'__module__': __name__, '__doc__': _GPT2Scoring.__doc__,
               '__qualname__': 'HarnessLM'})


def __getattr__(name: str):
  """HarnessLM is built on first use: importing this module does not need lm_eval."""
  if name == 'HarnessLM':
    return _lm_class()
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def make_lm(model: ModelSpec, params: Any, tokenizer: Any, *, seq_len: int, batch_size: int = 16,
            mesh: Mesh | None = None, rules: Sequence = ()):
  """A HarnessLM (an lm_eval.api.model.LM); UserError naming the extra if lm_eval is missing."""
  return _lm_class()(model, params, tokenizer, seq_len=seq_len, batch_size=batch_size,
                     mesh=mesh, rules=rules)


def default_task_root() -> epath.Path:
  return epath.Path(tempfile.gettempdir()) / 'autoscale_jax_harness'


def _number(value) -> float | None:
  return float(value) if isinstance(value, (int, float, np.number)) else None


def evaluate(model: ModelSpec, params: Any, tokenizer: Any, *, tasks: Sequence[str],
             seq_len: int, num_fewshot: int | None = None, limit: int | float | None = None,
             task_root: epath.PathLike | None = None, batch_size: int = 16,
             mesh: Mesh | None = None, rules: Sequence = (), seed: int = 1234,
             bootstrap_iters: int = 1000, include_default_tasks: bool | None = None) -> dict:
  """Few-shot scores of one model on lm-evaluation-harness tasks, offline.

  tasks: names (tasks.TASKS values such as 'autoscale_bbc_topic', or the harness's own when
  include_default_tasks and their data are cached locally) or task YAML paths;
  include_default_tasks=None loads the harness's own task index only when some task is neither
  ours nor a file (indexing it takes seconds). num_fewshot:
  examples per prompt (None: each task's default, 0 for ours). limit: test examples per task
  (None: all). seq_len: the data.seq_len the model was trained at. task_root: a local folder
  for the offline tasks (built once, see tasks.task_dir; default: under the temp dir). seed:
  python/numpy/few-shot sampling seed of the harness. Every JAX process must call this alike;
  all get the same dict, and process 0 should write it.

  Returns {'tasks': {task: {metric: value, metric + '_stderr': value or None, ...,
  'examples': test examples scored, 'requests': harness requests, 'truncated': requests
  left-truncated to seq_len}}, 'num_fewshot': ..., 'limit': ..., 'seq_len': ...}; the metrics
  are those the harness reports with its default filter (acc and acc_norm for our tasks).
  """
  lm_eval = import_lm_eval()
  folder = tasks_lib.task_dir(task_root if task_root is not None else default_task_root())
  if include_default_tasks is None:
    ours = set(tasks_lib.TASKS.values())
    include_default_tasks = any(t not in ours and not os.path.isfile(t) for t in tasks)
  manager = lm_eval.tasks.TaskManager(include_path=os.fspath(folder),
                                      include_defaults=include_default_tasks)
  for name in tasks:
    if name not in manager.all_tasks and not os.path.isfile(name):
      raise UserError(f'Harness task {name!r} is neither a known task nor a task YAML file; use '
                      f'one of {sorted(tasks_lib.TASKS.values())}, a YAML path, or (with '
                      'include_default_tasks) a task of lm-evaluation-harness.')
  lm = make_lm(model, params, tokenizer, seq_len=seq_len, batch_size=batch_size, mesh=mesh,
               rules=rules)
  # The harness returns results only where LOCAL_RANK (a torchrun variable) is unset or 0; every
  # JAX process here is a whole evaluator, so it is hidden for the call.
  local_rank = os.environ.pop('LOCAL_RANK', None)
  try:
    results = lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit, task_manager=manager,
        batch_size=batch_size, bootstrap_iters=bootstrap_iters, log_samples=False,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=None,
        fewshot_random_seed=seed)
  finally:
    if local_rank is not None:
      os.environ['LOCAL_RANK'] = local_rank
  out = {}
  for task, metrics in results['results'].items():
    row = {}
    for key, value in metrics.items():
      metric, _, filter_name = key.partition(',')
      if filter_name != 'none' or metric.endswith('_stderr'):
        continue
      row[metric] = _number(value)
      row[metric + '_stderr'] = _number(metrics.get(f'{metric}_stderr,{filter_name}'))
    counts = lm.counts.get(task, {'requests': 0, 'truncated': 0})
    out[task] = {**row, 'examples': int(results.get('n-samples', {}).get(task, {}).get(
        'effective', 0)), **counts}
  return {'tasks': out, 'num_fewshot': num_fewshot, 'limit': limit, 'seq_len': seq_len}
