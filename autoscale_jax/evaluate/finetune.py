"""Fine-tuning a classifier on BERT's [CLS] representation: the downstream score of a BERT run.

evaluate() takes a pre-trained run's params (the `params` of its TrainState), keeps the encoder
(embeddings and blocks; the MLM head is ignored) and puts a freshly initialised head on the final
hidden state at position 0 ([CLS]): optionally BERT's pooler (tanh dense), then dropout and a
dense layer to the labels. Everything (encoder included) is trained on the task's training split
and scored on its dev split.

Tasks (config.eval.finetune_tasks) and their main score (also each task's 'score'):
  bbc_topic                  topic of a BBC News article (5 labels), from
                             evaluate.tasks.bbc_articles(): the headline and body, its train
                             split to train, its dev split to score (the split few-shot GPT-2
                             uses too). Offline. Metrics accuracy, macro_f1; score accuracy.
  tfds:glue/NAME[:DEV_SPLIT] a GLUE classification task through TensorFlow Datasets' random-access
                             data source (array_record; downloaded and prepared on first use,
                             which needs the internet), trained on 'train', scored on DEV_SPLIT
                             (default 'validation'; mnli: 'validation_matched'). Sentence pairs
                             (mrpc, qqp, mnli, qnli, rte, wnli) are encoded [CLS] a [SEP] b [SEP]
                             with token types 0 then 1. Metrics and score: cola accuracy, mcc
                             (score mcc); mrpc and qqp accuracy, f1 of label 1 (score f1); sst2,
                             mnli, qnli, rte, wnli accuracy (score accuracy). stsb (regression)
                             and ax (no training split) are refused.
  files:TRAIN.jsonl,DEV.jsonl  local (or gs://) jsonl, one {"text": ..., "label": ...} per line,
                             an optional "text_b" making the line a sentence pair. Labels are
                             strings or whole numbers, mapped to ids in the sorted order of the
                             training file's labels (numbers before strings); a dev label the
                             training file lacks is an error. Metrics accuracy, macro_f1; score
                             accuracy.

Metrics (numpy, see the functions below): accuracy; macro_f1, the mean of the per-label F1 over
the labels that occur in the dev labels or the predictions (scikit-learn's default); f1, binary
F1 of label 1; mcc, Matthews correlation (multi-class form; 0 when undefined).

Training: AdamW (b1 0.9, b2 0.999, eps 1e-6, weight decay 0.01 on dense kernels only), global
gradient norm clipped at 1, learning rate rising linearly from 0 to config.eval.finetune.lr over
the first 10% of the steps (rounded up) and falling linearly to 0 at the last, `epochs` passes
over the training split in a fresh order each epoch, `batch_size` examples per step (the last
step of an epoch padded with zero-weight examples), dropout at the model config's rate.
config.eval.finetune.seed fixes the head's init, the order and the dropout; max_train_examples
keeps that many training examples, the same ones whatever the seed (a fixed shuffle), so
pre-trained runs are compared on the same data. Sequences are data.seq_len tokens: [CLS] text
[SEP] (pairs: [CLS] a [SEP] b [SEP], the longer text cut first), truncated, padded with [PAD],
which the encoder's attention masks out. The train and eval steps are jitted at fixed shapes
(batch_size x seq_len) with the learning rate and the task's label count as inputs, and the
classifier has LABEL_BUCKET (8) outputs, those past the task's labels masked out: one compiled
program per model serves every task of up to 8 labels, every seed and every later run.

Multi-controller: every JAX process calls evaluate alike, holds every example and gets the same
result (process 0 should write it). With a mesh, batches are split over its batch axes
(data-parallel, as training) and the encoder's params keep their logical sharding; without one,
it runs on the default device.
"""

import dataclasses
import functools
import json
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from autoscale_jax.errors import ConfigError, UserError, check_number
from autoscale_jax.evaluate import tasks as tasks_lib
from autoscale_jax.models import ModelSpec, bert

FIELD = 'config.eval.finetune_tasks'
FORMS = ("'bbc_topic', 'tfds:glue/NAME[:DEV_SPLIT]' or 'files:TRAIN.jsonl,DEV.jsonl'")
WARMUP_FRACTION = 0.1
ADAM = dict(b1=0.9, b2=0.999, eps=1e-6)  # BERT's fine-tuning optimizer
WEIGHT_DECAY = 0.01
CLIP_NORM = 1.0
INIT_STD = 0.02
SUBSET_SEED = 0  # the fixed shuffle that picks max_train_examples examples
# The classifier has a multiple of this many outputs, those past the task's labels masked out:
# tasks of up to 8 labels share one compiled program per model.
LABEL_BUCKET = 8

# GLUE classification tasks in TFDS: the text fields, labels, the main metric, the dev split.
GLUE = {
    'cola': (('sentence',), 2, 'mcc', 'validation'),
    'sst2': (('sentence',), 2, 'accuracy', 'validation'),
    'mrpc': (('sentence1', 'sentence2'), 2, 'f1', 'validation'),
    'qqp': (('question1', 'question2'), 2, 'f1', 'validation'),
    'mnli': (('premise', 'hypothesis'), 3, 'accuracy', 'validation_matched'),
    'qnli': (('question', 'sentence'), 2, 'accuracy', 'validation'),
    'rte': (('sentence1', 'sentence2'), 2, 'accuracy', 'validation'),
    'wnli': (('sentence1', 'sentence2'), 2, 'accuracy', 'validation'),
}
GLUE_REFUSED = {
    'stsb': 'a regression task (similarity scores from 0 to 5), not a classification',
    'ax': 'a diagnostic set without a training split (score it with an mnli-trained model)',
    'mnli_matched': "only mnli's dev and test splits; use 'tfds:glue/mnli'",
    'mnli_mismatched': "only mnli's dev and test splits; use "
                       "'tfds:glue/mnli:validation_mismatched'",
}
# The metrics reported beside accuracy, by main metric.
SECOND_METRIC = {'accuracy': 'macro_f1', 'mcc': 'mcc', 'f1': 'f1'}


# ------------------------------------------------------------------------------ metrics
def _labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
  y_true, y_pred = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
  if y_true.shape != y_pred.shape or not y_true.size:
    raise ValueError(f'Need as many predictions as labels, at least one; got {y_true.size} '
                     f'labels and {y_pred.size} predictions.')
  return y_true, y_pred


def accuracy(y_true, y_pred) -> float:
  """The fraction of predictions equal to the label."""
  y_true, y_pred = _labels(y_true, y_pred)
  return float(np.mean(y_true == y_pred))


def _f1(tp: float, fp: float, fn: float) -> float:
  """2 tp / (2 tp + fp + fn): the harmonic mean of precision and recall; 0 when undefined."""
  return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def binary_f1(y_true, y_pred, positive: int = 1) -> float:
  """F1 of the class `positive` (GLUE's F1 for mrpc and qqp: label 1, 'equivalent')."""
  y_true, y_pred = _labels(y_true, y_pred)
  t, p = y_true == positive, y_pred == positive
  return _f1(float(np.sum(t & p)), float(np.sum(~t & p)), float(np.sum(t & ~p)))


def macro_f1(y_true, y_pred) -> float:
  """The unweighted mean of the per-label F1 over the labels in y_true or y_pred."""
  y_true, y_pred = _labels(y_true, y_pred)
  return float(np.mean([binary_f1(y_true, y_pred, c) for c in np.union1d(y_true, y_pred)]))


def matthews_corrcoef(y_true, y_pred) -> float:
  """Matthews correlation (GLUE's metric for cola), in its multi-class form over the confusion
  matrix C: (c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2) (s^2 - sum_k t_k^2)), with s the
  examples, c the correct ones, t_k and p_k the true and predicted counts of label k; for two
  labels (tp tn - fp fn) / sqrt((tp + fp)(tp + fn)(tn + fp)(tn + fn)). 0 when undefined (all
  labels or all predictions one class)."""
  y_true, y_pred = _labels(y_true, y_pred)
  classes = np.union1d(y_true, y_pred)
  t = np.array([np.sum(y_true == c) for c in classes], np.float64)
  p = np.array([np.sum(y_pred == c) for c in classes], np.float64)
  s, c = float(y_true.size), float(np.sum(y_true == y_pred))
  denominator = math.sqrt((s * s - p @ p) * (s * s - t @ t))
  return float((c * s - p @ t) / denominator) if denominator else 0.0


METRICS = {'accuracy': accuracy, 'macro_f1': macro_f1, 'f1': binary_f1,
           'mcc': matthews_corrcoef}


# ------------------------------------------------------------------------------ tasks
@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A parsed config.eval.finetune_tasks entry."""
  name: str  # as given
  kind: str  # bbc | glue | files
  metric: str  # the main score: accuracy | f1 | mcc
  glue: str = ''  # the GLUE config (kind glue)
  dev_split: str = ''  # the TFDS split scored (kind glue)
  train_path: str = ''  # kind files
  dev_path: str = ''  # kind files


def _bad_task(task: Any, why: str = '') -> ConfigError:
  glue = ', '.join(GLUE)
  return ConfigError(f'{FIELD} has {task!r}{why}; use {FORMS} (NAME one of {glue}).')


def parse_task(task: Any) -> TaskSpec:
  """The TaskSpec of one task string; ConfigError naming the field and the accepted forms."""
  if not isinstance(task, str):
    raise _bad_task(task, ', which is not a string')
  if task == 'bbc_topic':
    return TaskSpec(task, 'bbc', 'accuracy')
  kind, _, rest = task.partition(':')
  if kind == 'tfds':
    dataset, _, split = rest.partition(':')
    family, _, name = dataset.partition('/')
    if family != 'glue':
      raise _bad_task(task, ', which is not a GLUE dataset of TFDS')
    if name in GLUE_REFUSED:
      raise _bad_task(task, f', which is {GLUE_REFUSED[name]}')
    if name not in GLUE:
      raise _bad_task(task, f", whose GLUE task {name!r} is unknown")
    if ':' in split:
      raise _bad_task(task, ' (more than one split)')
    return TaskSpec(task, 'glue', GLUE[name][2], glue=name, dev_split=split or GLUE[name][3])
  if kind == 'files':
    paths = rest.split(',')
    if len(paths) != 2 or not all(p.strip() for p in paths):
      raise _bad_task(task, ', which does not name two files separated by a comma')
    return TaskSpec(task, 'files', 'accuracy', train_path=paths[0].strip(),
                    dev_path=paths[1].strip())
  raise _bad_task(task)


def main_metric(task: str) -> str:
  """The name of the metric a task's 'score' is: accuracy, f1 or mcc."""
  return parse_task(task).metric


@dataclasses.dataclass
class Split:
  """Labelled examples: one text, or two for a sentence pair, per example."""
  texts: list[tuple[str, ...]]
  labels: np.ndarray  # int32 label ids


@dataclasses.dataclass
class TaskData:
  train: Split
  dev: Split
  label_names: tuple  # label_names[id]: the label as the task names it


def _bbc() -> TaskData:
  articles = tasks_lib.bbc_articles()
  split = {
      s: Split([(f'{a.title}\n{a.text}',) for a in articles if a.split == s],
               np.array([tasks_lib.BBC_LABELS.index(a.label) for a in articles if a.split == s],
                        np.int32))
      for s in ('train', 'dev')}
  return TaskData(split['train'], split['dev'], tasks_lib.BBC_LABELS)


def _text(value: Any) -> str:
  return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else str(value)


def _tfds_source(dataset: str, split: str) -> Sequence:
  """TFDS's random-access data source of a GLUE split (array_record; TFDS downloads and prepares
  it on first use). Tests replace this function."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError(f'The fine-tuning task tfds:{dataset} needs TensorFlow Datasets, an optional '
                    'extra; pip install "autoscale_jax[tfds]" (pip install -e ".[tfds]" in a '
                    'checkout).') from None
  try:
    return tfds.data_source(dataset, split=split)
  except Exception as e:  # pylint: disable=broad-except  # TFDS's many download/prepare errors
    first = (str(e).splitlines() or [type(e).__name__])[0][:200]
    raise UserError(f'The fine-tuning task tfds:{dataset} could not load split {split!r} from '
                    f'TFDS ({first}); check the split name and that the dataset is prepared as '
                    f'array_record (`tfds build {dataset} --file_format=array_record`, which '
                    'needs the internet once).') from e


def _records(source: Sequence) -> list:
  many = getattr(source, '__getitems__', None)
  if many is None:
    return [source[i] for i in range(len(source))]
  return [r for start in range(0, len(source), 256)
          for r in many(range(start, min(start + 256, len(source))))]


def _glue(spec: TaskSpec) -> TaskData:
  keys, num_labels, _, _ = GLUE[spec.glue]
  dataset = f'glue/{spec.glue}'
  splits = []
  for split in ('train', spec.dev_split):
    records = _records(_tfds_source(dataset, split))
    if not records:
      raise UserError(f'{FIELD}: {spec.name!r} has an empty {split!r} split; use a split with '
                      'examples.')
    try:
      texts = [tuple(_text(r[k]) for k in keys) for r in records]
      labels = np.array([int(r['label']) for r in records], np.int64)
    except KeyError as e:
      raise UserError(f'{FIELD}: the records of {spec.name!r} ({split!r}) have no field {e}; '
                      f'the TFDS dataset is not the GLUE task this code expects.') from None
    if labels.min() < 0 or labels.max() >= num_labels:
      raise UserError(f'{FIELD}: {spec.name!r} has labels outside 0..{num_labels - 1} in split '
                      f'{split!r} (test splits are unlabelled, -1); score a labelled split such '
                      f"as {GLUE[spec.glue][3]!r}.")
    splits.append(Split(texts, labels.astype(np.int32)))
  return TaskData(splits[0], splits[1], tuple(range(num_labels)))


def _read_jsonl(spec: TaskSpec, path: str) -> list[tuple[tuple[str, ...], Any, int]]:
  """(texts, raw label, line number) of each line of a files: task's jsonl."""
  file = epath.Path(path)
  if not file.exists():
    raise UserError(f'{FIELD}: {spec.name!r} names {path}, which does not exist; fix the path.')
  out = []
  with file.open('r') as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f'{FIELD}: {spec.name!r}: {path} line {line_no}'
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f'{where} is not valid JSON ({e.msg}); fix or remove it.') from None
      if not isinstance(record, dict) or 'text' not in record or 'label' not in record:
        raise UserError(f'{where} is not a JSON object with "text" and "label"; write each line '
                        'as {"text": ..., "label": ...}.')
      label = record['label']
      if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise UserError(f'{where} has label {label!r}; a label must be a string or a whole '
                        'number.')
      texts = (str(record['text']),)
      if record.get('text_b') is not None:
        texts += (str(record['text_b']),)
      out.append((texts, label, line_no))
  if not out:
    raise UserError(f'{FIELD}: {spec.name!r} names {path}, which has no examples; give it '
                    'jsonl lines {"text": ..., "label": ...}.')
  return out


def _files(spec: TaskSpec) -> TaskData:
  train = _read_jsonl(spec, spec.train_path)
  dev = _read_jsonl(spec, spec.dev_path)
  names = tuple(sorted({label for _, label, _ in train},
                       key=lambda v: (isinstance(v, str), v)))
  if len(names) < 2:
    raise UserError(f'{FIELD}: {spec.name!r}: {spec.train_path} has only the label {names[0]!r}; '
                    'a classifier needs examples of at least two labels.')
  ids = {name: i for i, name in enumerate(names)}
  for _, label, line_no in dev:
    if label not in ids:
      raise UserError(f'{FIELD}: {spec.name!r}: {spec.dev_path} line {line_no} has label '
                      f'{label!r}, which no line of {spec.train_path} has (its labels: '
                      f'{list(names)}); fix that label or add training examples of it.')
  split = lambda rows: Split([t for t, _, _ in rows],
                             np.array([ids[label] for _, label, _ in rows], np.int32))
  return TaskData(split(train), split(dev), names)


def load_task(task: str | TaskSpec) -> TaskData:
  """The train and dev examples of one task, labels as ids into label_names."""
  spec = task if isinstance(task, TaskSpec) else parse_task(task)
  if spec.kind == 'bbc':
    return _bbc()
  return _glue(spec) if spec.kind == 'glue' else _files(spec)


# ------------------------------------------------------------------------------ encoding
def encode(tokenizer: Any, texts: Sequence[tuple[str, ...]], seq_len: int, *,
           type_vocab_size: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """tokens and token types int32[n, seq_len]: [CLS] a [SEP] or [CLS] a [SEP] b [SEP],
  truncated to seq_len (of a pair, the longer text loses tokens first), padded with [PAD].
  Types are 0 up to the first [SEP], 1 over b and its [SEP] (0 everywhere when the model has a
  single token type). tokenizer: data.tokenizer.Tokenizer (encode_batch, special_ids)."""
  ids = tokenizer.special_ids
  missing = [k for k in ('cls', 'sep', 'pad') if k not in ids]
  if missing:
    raise ConfigError(f'The tokenizer has no {missing} token(s), which BERT fine-tuning needs; '
                      'use config.data.tokenizer.kind=train_wordpiece or a BERT tokenizer.json.')
  n = len(texts)
  first = tokenizer.encode_batch([t[0] for t in texts])
  pairs = [i for i, t in enumerate(texts) if len(t) > 1]
  second = dict(zip(pairs, tokenizer.encode_batch([texts[i][1] for i in pairs])))
  tokens = np.full((n, seq_len), ids['pad'], np.int32)
  types = np.zeros((n, seq_len), np.int32)
  for i in range(n):
    a, b = list(first[i]), second.get(i)
    if b is None:
      a = a[:seq_len - 2]
      row = [ids['cls'], *a, ids['sep']]
    else:
      b = list(b)
      while len(a) + len(b) > seq_len - 3:  # longest first, as BERT's own preprocessing
        (a if len(a) > len(b) else b).pop()
      row = [ids['cls'], *a, ids['sep'], *b, ids['sep']]
      if type_vocab_size > 1:
        types[i, len(a) + 2:len(row)] = 1
    tokens[i, :len(row)] = row
  return tokens, types


# ------------------------------------------------------------------------------ the model
class ClassifierHead(nn.Module):
  """[CLS] hidden state -> logits float32[B, outputs]: (tanh pooler,) dropout, dense."""
  outputs: int
  d_model: int
  dropout: float
  pooler: bool

  @nn.compact
  def __call__(self, cls: jax.Array, deterministic: bool) -> jax.Array:
    x = cls.astype(jnp.float32)
    init = nn.initializers.normal(INIT_STD)
    if self.pooler:
      x = nn.tanh(nn.Dense(self.d_model, kernel_init=init, name='pooler')(x))
    x = nn.Dropout(self.dropout, deterministic=deterministic)(x)
    return nn.Dense(self.outputs, kernel_init=init, name='classifier')(x)


def _decay_mask(params):
  """Weight decay on dense kernels only (not biases, LayerNorm or embeddings)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(getattr(k, 'key', None) == 'kernel' for k in path), params)


def learning_rate(lr: float, step: int, total_steps: int) -> float:
  """0 -> lr linearly over the first ceil(10%) of the steps, then linearly to 0 at the end."""
  warmup = min(max(1, math.ceil(WARMUP_FRACTION * total_steps)), total_steps)
  if step < warmup:
    return lr * step / warmup
  return lr * max(0.0, 1.0 - (step - warmup) / max(total_steps - warmup, 1))


def _optimizer() -> optax.GradientTransformation:
  """AdamW without the learning-rate scaling (the train step takes the rate as an input, so one
  compiled step serves every task length, learning rate and seed)."""
  return optax.chain(optax.clip_by_global_norm(CLIP_NORM), optax.scale_by_adam(**ADAM),
                     optax.add_decayed_weights(WEIGHT_DECAY, mask=_decay_mask))


def _check_cfg(cfg: Any) -> None:
  check_number(cfg.lr, 'config.eval.finetune.lr', more_than=0)
  for field, least in (('epochs', 1), ('batch_size', 1), ('seed', 0),
                       ('max_train_examples', 0)):
    check_number(cfg[field], f'config.eval.finetune.{field}', least=least, whole=True)


@dataclasses.dataclass(eq=False)
class _Finetuner:
  """Jitted init, train and eval steps at fixed shapes (batch_size x seq_len)."""
  encoder: bert.BERT
  head: ClassifierHead
  mesh: Mesh | None
  rules: tuple
  batch_size: int
  seq_len: int

  def __post_init__(self):
    self.tx = _optimizer()
    dummy = jnp.zeros((1, self.seq_len), jnp.int32)
    boxed = jax.eval_shape(lambda r: self.encoder.init(r, dummy, deterministic=True),
                           jax.random.key(0))
    self.encoder_shapes = nn.unbox(boxed)['params']
    jit = jax.jit  # pylint: disable=invalid-name
    if self.mesh is None:
      self._init = jit(self._init_fn)
      self._train = jit(self._train_fn, donate_argnums=(0, 1))
      self._eval = jit(self._eval_fn)
      return
    from autoscale_jax.train import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
    from autoscale_jax.train.trainer import mesh_context  # pylint: disable=g-import-not-at-top
    dp = mesh_lib.data_parallel_size(self.mesh, self.rules)
    if self.batch_size % dp:
      raise ConfigError(f'config.eval.finetune.batch_size is {self.batch_size}; with this mesh it '
                        f'must be a multiple of the data-parallel size {dp}.')
    replicated = NamedSharding(self.mesh, P())
    with mesh_context(self.mesh, self.rules):
      encoder_sh = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed)['params'],
                                               self.mesh, self.rules)
    abstract = jax.eval_shape(self._init_fn, self.encoder_shapes, jax.random.key(0))
    head_sh = jax.tree.map(lambda _: replicated, abstract[0]['head'])
    params_sh = {'encoder': encoder_sh, 'head': head_sh}
    opt_sh = optax.tree_map_params(self.tx, lambda _, s: s, abstract[1], params_sh,
                                   transform_non_params=lambda _: replicated)
    self._batch_sh = {k: mesh_lib.batch_sharding(self.mesh, self.rules, 2 if k in (
        'tokens', 'types') else 1) for k in ('tokens', 'types', 'labels', 'weights')}
    self._context = functools.partial(mesh_context, self.mesh, self.rules)
    self._init = jit(self._init_fn, out_shardings=(params_sh, opt_sh))
    self._train = jit(self._train_fn, in_shardings=(params_sh, opt_sh, self._batch_sh,
                                                    replicated, replicated, replicated,
                                                    replicated),
                      out_shardings=(params_sh, opt_sh, replicated), donate_argnums=(0, 1))
    self._eval = jit(self._eval_fn, in_shardings=(params_sh, self._batch_sh, replicated),
                     out_shardings=replicated)

  # -- pure functions
  def _init_fn(self, encoder_params, key, trained_pooler=None):
    head = self.head.init(key, jnp.zeros((1, self.encoder.config.d_model)), deterministic=True)
    head = dict(head['params'])
    if trained_pooler is not None:
      head['pooler'] = jax.tree.map(lambda new, old: jnp.copy(old.astype(new.dtype)),
                                    head['pooler'], trained_pooler)
    # Copies: the train step donates its params, which must never be the caller's buffers.
    params = {'encoder': jax.tree.map(jnp.copy, encoder_params), 'head': head}
    return params, self.tx.init(params)

  def _logits(self, params, batch, num_labels, key, train: bool):
    """Logits of the task's num_labels labels; the bucket's other outputs at -1e9."""
    encoder_key, head_key = jax.random.split(key)
    hidden = self.encoder.apply({'params': params['encoder']}, batch['tokens'], batch['types'],
                                deterministic=not train,
                                rngs={'dropout': encoder_key} if train else None)
    logits = self.head.apply({'params': params['head']}, hidden[:, 0], deterministic=not train,
                             rngs={'dropout': head_key} if train else None)
    return jnp.where(jnp.arange(self.head.outputs) < num_labels, logits, -1e9)

  def _train_fn(self, params, opt_state, batch, num_labels, key, step, lr):
    def loss_fn(p):
      logits = self._logits(p, batch, num_labels, jax.random.fold_in(key, step), train=True)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch['labels'])
      return jnp.sum(losses * batch['weights']) / jnp.maximum(jnp.sum(batch['weights']), 1.0)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = self.tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: -lr * u, updates)
    return optax.apply_updates(params, updates), opt_state, loss

  def _eval_fn(self, params, batch, num_labels):
    logits = self._logits(params, batch, num_labels, jax.random.key(0), train=False)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)

  # -- host side
  def _put(self, batch: dict[str, np.ndarray]) -> dict:
    if self.mesh is None:
      return batch
    # Every process holds the whole batch; each places the shards its devices own.
    return {k: jax.make_array_from_callback(v.shape, self._batch_sh[k], lambda i, v=v: v[i])
            for k, v in batch.items()}

  def _call(self, fn, *args):
    if self.mesh is None:
      return fn(*args)
    with self._context():
      return fn(*args)

  def init(self, encoder_params, key, trained_pooler=None):
    return self._call(self._init, encoder_params, key, trained_pooler)

  def train_step(self, params, opt_state, batch, num_labels: int, key, step: int, lr: float):
    return self._call(self._train, params, opt_state, self._put(batch), np.int32(num_labels),
                      key, np.int32(step), np.float32(lr))

  def predict(self, params, batch, num_labels: int) -> np.ndarray:
    return np.asarray(jax.device_get(self._call(self._eval, params, self._put(batch),
                                                np.int32(num_labels))))


@functools.lru_cache(maxsize=8)
def _finetuner(config: bert.BertConfig, outputs: int, pooler: bool, mesh: Mesh | None,
               rules: tuple, batch_size: int, seq_len: int) -> _Finetuner:
  """One _Finetuner per model, label bucket and shape: its tasks, seeds and the later runs of
  the same model share its compilations."""
  head = ClassifierHead(outputs, config.d_model, config.dropout, pooler)
  return _Finetuner(bert.BERT(config), head, mesh, rules, batch_size, seq_len)


def _batch(tokens, types, labels, index: np.ndarray, size: int) -> dict[str, np.ndarray]:
  """Rows `index` padded to `size` rows of weight 0 (copies of row 0)."""
  pad = size - len(index)
  full = np.concatenate([index, np.zeros(pad, index.dtype)])
  return {'tokens': tokens[full], 'types': types[full], 'labels': labels[full],
          'weights': np.concatenate([np.ones(len(index)), np.zeros(pad)]).astype(np.float32)}


def _encoder_params(shapes, params) -> Any:
  """The pre-trained params the encoder reads (the MLM head and pooler dropped), checked."""
  fix = ("pass the params of the run's TrainState, with the config.model (and tokenizer) it was "
         'trained with')
  if not isinstance(params, Mapping) or any(k not in params for k in shapes):
    have = sorted(params) if isinstance(params, Mapping) else type(params).__name__
    raise ConfigError(f'The params to fine-tune are not a BERT encoder of this model (they hold '
                      f'{have}, need {sorted(shapes)}); {fix}.')
  picked = {k: params[k] for k in shapes}
  try:
    jax.tree.map(lambda *_: None, shapes, picked)
  except ValueError:
    raise ConfigError('The params to fine-tune are laid out unlike this model\'s encoder (e.g. '
                      f'scanned vs unrolled layers); {fix}.') from None

  def check(path, want, got):
    if tuple(want.shape) != tuple(np.shape(got)):
      raise ConfigError(f'The pre-trained parameter {jax.tree_util.keystr(path)} has shape '
                        f'{tuple(np.shape(got))}, the model needs {tuple(want.shape)}; {fix}.')
  jax.tree_util.tree_map_with_path(check, shapes, picked)
  return picked


def _run_task(spec: TaskSpec, data: TaskData, model: ModelSpec, params: Any, tokenizer: Any,
              cfg: Any, seq_len: int, mesh: Mesh | None, rules: tuple, pooler: bool) -> dict:
  began = time.perf_counter()
  seed, batch_size = int(cfg.seed), int(cfg.batch_size)
  train = data.train
  n = len(train.texts)
  if cfg.max_train_examples and n > cfg.max_train_examples:
    keep = np.sort(np.random.default_rng(SUBSET_SEED).permutation(n)[:cfg.max_train_examples])
    train = Split([train.texts[i] for i in keep], train.labels[keep])
    n = len(keep)
  config = dataclasses.replace(model.config, mlm_head=False, pooler=False)
  num_labels = len(data.label_names)
  steps_per_epoch = -(-n // batch_size)
  total_steps = int(cfg.epochs) * steps_per_epoch
  outputs = -(-num_labels // LABEL_BUCKET) * LABEL_BUCKET
  tuner = _finetuner(config, outputs, pooler, mesh, rules, batch_size, seq_len)
  encoder_params = _encoder_params(tuner.encoder_shapes, params)
  key = jax.random.PRNGKey(seed)
  init_key, dropout_key = jax.random.split(key)
  # A pooler the checkpoint has (model config pooler=True) starts the head's pooler.
  trained_pooler = (dict(params['pooler']) if pooler and model.config.pooler
                    and 'pooler' in params else None)
  ft_params, opt_state = tuner.init(encoder_params, init_key, trained_pooler)
  types = config.type_vocab_size
  tokens, token_types = encode(tokenizer, train.texts, seq_len, type_vocab_size=types)
  order_rng = np.random.default_rng(seed)
  step = 0
  for _ in range(int(cfg.epochs)):
    order = order_rng.permutation(n)
    for first in range(0, n, batch_size):
      batch = _batch(tokens, token_types, train.labels, order[first:first + batch_size],
                     batch_size)
      ft_params, opt_state, _ = tuner.train_step(
          ft_params, opt_state, batch, num_labels, dropout_key, step,
          learning_rate(float(cfg.lr), step, total_steps))
      step += 1
  dev = data.dev
  tokens, token_types = encode(tokenizer, dev.texts, seq_len, type_vocab_size=types)
  predictions = []
  for i in range(0, len(dev.texts), batch_size):
    index = np.arange(i, min(i + batch_size, len(dev.texts)))
    batch = _batch(tokens, token_types, dev.labels, index, batch_size)
    predictions.append(tuner.predict(ft_params, batch, num_labels)[:len(index)])
  predictions = np.concatenate(predictions)
  second = SECOND_METRIC[spec.metric]
  row = {'accuracy': accuracy(dev.labels, predictions),
         second: METRICS[second](dev.labels, predictions)}
  row['score'] = row[spec.metric]
  row.update(examples=len(dev.texts), train_examples=n, labels=num_labels,
             seconds=time.perf_counter() - began)
  return row


def _frozen(value):
  """Lists (of a config's rules) as tuples, so the rules can key a cache."""
  return tuple(_frozen(v) for v in value) if isinstance(value, (list, tuple)) else value


def evaluate(model_spec: ModelSpec, params: Any, tokenizer: Any, *, tasks: Sequence[str],
             cfg: Any, seq_len: int, mesh: Mesh | None = None, rules: Sequence = (),
             pooler: bool = True) -> dict:
  """Fine-tunes a classifier per task on a pre-trained BERT and scores it on the dev split.

  model_spec: the run's bert ModelSpec (models.build_model); params: the 'params' of its
  TrainState (encoder weights reused, the MLM head ignored; a pooler the checkpoint trained is
  reused when the model config has one); tokenizer: the run's (data.tokenizer.Tokenizer with
  [CLS] [SEP] [PAD]). tasks: config.eval.finetune_tasks (see the module docstring). cfg:
  config.eval.finetune (lr, epochs, batch_size, seed, max_train_examples). seq_len: tokens per
  example, the data.seq_len the model was trained at. mesh, rules: data-parallel over the mesh's
  batch axes (batch_size a multiple of their size); None: the default device. pooler: put BERT's
  tanh pooler (d_model x d_model) between [CLS] and the classifier.

  Returns {'tasks': {task: {'accuracy': float, SECOND: float, 'score': float, 'examples': dev
  examples scored, 'train_examples': training examples used, 'labels': label count, 'seconds':
  wall time of the task}}, 'seed': cfg.seed}, SECOND being 'macro_f1' (bbc_topic, files:, sst2,
  mnli, qnli, rte, wnli), 'f1' (mrpc, qqp: F1 of label 1) or 'mcc' (cola). 'score' is the task's
  main score (main_metric): mcc for cola, f1 for mrpc and qqp, accuracy for the others. The same
  seed gives the same result. Every task string and every task's data are checked before any
training.
  """
  if model_spec.family != 'bert':
    raise ConfigError(f"Fine-tuning reads BERT's [CLS] representation; config.model.family is "
                      f"'{model_spec.family}', use 'bert' (GPT-2 runs are scored few-shot).")
  if isinstance(tasks, str):
    raise ConfigError(f'{FIELD} is the string {tasks!r}; make it a tuple of task strings, e.g. '
                      f'({tasks!r},).')
  specs = [parse_task(t) for t in tasks]
  if len({s.name for s in specs}) < len(specs):
    raise ConfigError(f'{FIELD} names a task twice ({list(tasks)}); list each task once.')
  _check_cfg(cfg)
  if not 3 <= seq_len <= model_spec.config.max_len:
    raise ConfigError(f'The fine-tuning seq_len is {seq_len}; it must be the data.seq_len the '
                      f'model was trained at, between 3 and max_len={model_spec.config.max_len}.')
  missing = [k for k in ('cls', 'sep', 'pad') if k not in tokenizer.special_ids]
  if missing:
    raise ConfigError(f'The tokenizer has no {missing} token(s), which BERT fine-tuning needs; '
                      'use config.data.tokenizer.kind=train_wordpiece or a BERT tokenizer.json.')
  pad = tokenizer.special_ids['pad']
  if pad != model_spec.config.pad_id:
    raise ConfigError(f"The tokenizer's [PAD] id is {pad} but the model masks id "
                      f'{model_spec.config.pad_id}; build the model with the tokenizer\'s '
                      'special ids (models.build_model(..., special_ids=tokenizer.special_ids)).')
  data = [load_task(spec) for spec in specs]  # every task's data checked before any training
  out = {}
  for spec, task_data in zip(specs, data):
    out[spec.name] = _run_task(spec, task_data, model_spec, params, tokenizer, cfg,
                               int(seq_len), mesh, _frozen(rules), pooler)
  return {'tasks': out, 'seed': int(cfg.seed)}
