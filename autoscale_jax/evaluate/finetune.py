"""Fine-tuning a classifier on BERT's [CLS] representation: the downstream score of a BERT run.

evaluate() takes a pre-trained run's params (the `params` of its TrainState), keeps the encoder
(embeddings and blocks; the MLM head is ignored) and puts a freshly initialised head on the final
hidden state at position 0 ([CLS]): optionally BERT's pooler (tanh dense), then dropout and a
dense layer to the labels. Everything (encoder included) is trained on the task's training split
and scored on its dev split.

Beside it: finetune_data.py, the tasks (the forms of config.eval.finetune_tasks, their examples
and main scores) and their encoding; classifier.py, the head and the check of the pre-trained
params; scores.py, the metrics. This module holds the training and scoring loop.

Training: AdamW (b1 0.9, b2 0.999, eps 1e-6, weight decay 0.01 on dense kernels only), global
gradient norm clipped at 1, learning rate rising linearly from 0 to config.eval.finetune.lr over
the first 10% of the steps (rounded up) and falling linearly to 0 at the last, `epochs` passes
over the training split in a fresh order each epoch, `batch_size` examples per step (the last
step of an epoch padded with zero-weight examples), dropout at the model config's rate.
config.eval.finetune.seed fixes the head's init, the order and the dropout; max_train_examples
keeps that many training examples, the same ones whatever the seed (a fixed shuffle), so
pre-trained runs are compared on the same data. The train and eval steps are jitted at fixed
shapes (batch_size x seq_len) with the learning rate and the task's label count as inputs, and
the classifier has LABEL_BUCKET (8) outputs, those past the task's labels masked out: one
compiled program per model serves every task of up to 8 labels, every seed and every later run.

Multi-controller: every JAX process calls evaluate alike, holds every example and gets the same
result (process 0 should write it). With a mesh, batches are split over its batch axes
(data-parallel, as training) and the encoder's params keep their logical sharding; without one,
it runs on the default device.
"""

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from autoscale_jax.errors import ConfigError, check_number
from autoscale_jax.evaluate.classifier import INIT_STD, ClassifierHead, _encoder_params
from autoscale_jax.evaluate.finetune_data import (
  FIELD,
  FORMS,
  GLUE,
  GLUE_REFUSED,
  Split,
  TaskData,
  TaskSpec,
  _batch,
  encode,
  load_task,
  main_metric,
  parse_task,
)
from autoscale_jax.evaluate.scores import (
  METRICS,
  SECOND_METRIC,
  accuracy,
  binary_f1,
  macro_f1,
  matthews_corrcoef,
)
from autoscale_jax.models import ModelSpec, bert

# Every public name of the fine-tuning modules stays reachable as finetune.<name>.
__all__ = [
    'ADAM', 'CLIP_NORM', 'FIELD', 'FORMS', 'GLUE', 'GLUE_REFUSED', 'INIT_STD', 'LABEL_BUCKET',
    'METRICS', 'SECOND_METRIC', 'SUBSET_SEED', 'WARMUP_FRACTION', 'WEIGHT_DECAY',
    'ClassifierHead', 'Split', 'TaskData', 'TaskSpec', 'accuracy', 'binary_f1', 'encode',
    'evaluate', 'learning_rate', 'load_task', 'macro_f1', 'main_metric', 'matthews_corrcoef',
    'parse_task',
]

WARMUP_FRACTION = 0.1
ADAM = dict(b1=0.9, b2=0.999, eps=1e-6)  # BERT's fine-tuning optimizer
WEIGHT_DECAY = 0.01
CLIP_NORM = 1.0
SUBSET_SEED = 0  # the fixed shuffle that picks max_train_examples examples
# The classifier has a multiple of this many outputs, those past the task's labels masked out:
# tasks of up to 8 labels share one compiled program per model.
LABEL_BUCKET = 8


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
  [CLS] [SEP] [PAD]). tasks: config.eval.finetune_tasks (forms: finetune_data's docstring). cfg:
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
