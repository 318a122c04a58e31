"""The examples of the fine-tuning tasks: config.eval.finetune_tasks parsed, each task's train
and dev split loaded and checked, then encoded and batched for BERT.

Tasks and their main score (also each task's 'score'):
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

Sequences are data.seq_len tokens: [CLS] text [SEP] (pairs: [CLS] a [SEP] b [SEP], the longer
text cut first), truncated, padded with [PAD], which the encoder's attention masks out.
"""

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from autoscale_jax.errors import ConfigError, UserError
from autoscale_jax.evaluate import tasks as tasks_lib

FIELD = 'config.eval.finetune_tasks'
FORMS = ("'bbc_topic', 'tfds:glue/NAME[:DEV_SPLIT]' or 'files:TRAIN.jsonl,DEV.jsonl'")

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


def _batch(tokens, types, labels, index: np.ndarray, size: int) -> dict[str, np.ndarray]:
  """Rows `index` padded to `size` rows of weight 0 (copies of row 0)."""
  pad = size - len(index)
  full = np.concatenate([index, np.zeros(pad, index.dtype)])
  return {'tokens': tokens[full], 'types': types[full], 'labels': labels[full],
          'weights': np.concatenate([np.ones(len(index)), np.zeros(pad)]).astype(np.float32)}
