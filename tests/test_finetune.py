"""BERT fine-tuning (evaluate/finetune.py): a tiny BERT learns bbc_topic, the metrics against hand
computation (and scikit-learn), jsonl and GLUE tasks (a fake TFDS source), pair encoding, bad task
strings, determinism, data parallelism over a mesh, and that configs/bert_tiny.py never
pre-trains on bbc_topic's articles."""

import dataclasses
import json
import re

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest
import tokenizers
from tokenizers import models, normalizers, pre_tokenizers, trainers

from autoscale_jax import defaults
from autoscale_jax.configs import bert_tiny
from autoscale_jax.data import sources, tokenizer as tokenizer_lib
from autoscale_jax.errors import ConfigError, UserError
from autoscale_jax.evaluate import finetune, finetune_data, tasks
from autoscale_jax.models import build_model
from autoscale_jax.train import mesh as mesh_lib, trainer as trainer_lib

SEQ_LEN = 64
BATCH = 32


@pytest.fixture(name='tok', scope='module')
def fixture_tok() -> tokenizer_lib.Tokenizer:
  """A WordPiece of 1000 tokens (the run's tokenizer kind) trained on 300 BBC train articles."""
  tok = tokenizers.Tokenizer(models.WordPiece(unk_token='[UNK]'))
  tok.normalizer = normalizers.BertNormalizer(lowercase=False)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  texts = [f'{a.title}\n{a.text}' for a in tasks.bbc_articles() if a.split == 'train'][:300]
  tok.train_from_iterator(texts, trainers.WordPieceTrainer(
      vocab_size=1000, special_tokens=list(tokenizer_lib.BERT_SPECIALS.values()),
      show_progress=False))
  return tokenizer_lib.Tokenizer(tok)


def model_config() -> ml_collections.ConfigDict:
  c = defaults.get_config().model
  c.family, c.size, c.dropout = 'bert', 'tiny', 0.1
  c.overrides = ml_collections.ConfigDict(dict(d_model=64, d_ff=128, num_heads=2, max_len=64))
  return c


@pytest.fixture(name='bert_parts', scope='module')
def fixture_bert_parts(tok):
  """A tiny BERT (2 layers, d_model 64) and random pre-training params (MLM head included),
  drawn in numpy from the abstract shapes (no init to compile): BERT's init (kernels and
  embeddings normal with std 0.02, LayerNorm scales 1, biases 0), except that the attention
  value and output kernels have std 0.2. At 0.02, [CLS] carries the text only through the
  product of those two tiny matrices, and a random encoder spends its first hundred or so
  fine-tuning steps on a plateau (a pre-trained encoder has no such plateau); at 0.2 the text
  reaches [CLS] from the start and two epochs suffice."""
  spec = build_model(model_config(), vocab_size=tok.vocab_size, seq_len=SEQ_LEN,
                     special_ids=tok.special_ids)
  shapes, _ = trainer_lib.logical_param_specs(spec, jax.random.key(0))
  rng = np.random.default_rng(0)

  def draw(path, x):
    keys = [getattr(k, 'key', '') for k in path]
    if keys[-1] == 'scale':
      return np.ones(x.shape, x.dtype)
    if keys[-1] not in ('kernel', 'embedding'):
      return np.zeros(x.shape, x.dtype)
    std = 0.2 if 'attn' in keys and keys[-2] in ('value', 'out') else 0.02
    return (std * rng.standard_normal(x.shape)).astype(x.dtype)
  params = jax.tree_util.tree_map_with_path(draw, shapes)
  assert {'mlm_transform', 'mlm_bias', 'word_embed', 'layers'} <= set(params)
  return spec, params


def finetune_cfg(**values) -> ml_collections.ConfigDict:
  cfg = defaults.get_config().eval.finetune
  cfg.update(dict(lr=3e-3, epochs=2, batch_size=BATCH, seed=0, max_train_examples=0), **values)
  return cfg


def run(bert_parts, tok, task_list, **cfg_values) -> dict:
  spec, params = bert_parts
  return finetune.evaluate(spec, params, tok, tasks=task_list, cfg=finetune_cfg(**cfg_values),
                           seq_len=SEQ_LEN)


# ------------------------------------------------------------------------------ metrics
def test_metrics_against_hand_computed_values():
  y, p = [0, 1, 1, 0, 1], [0, 1, 0, 0, 1]  # tp 2, tn 2, fp 0, fn 1
  assert finetune.accuracy(y, p) == pytest.approx(0.8)
  assert finetune.binary_f1(y, p) == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))  # 0.8
  assert finetune.binary_f1(y, p, positive=0) == pytest.approx(2 * 2 / (2 * 2 + 1 + 0))
  assert finetune.matthews_corrcoef(y, p) == pytest.approx(
      (2 * 2 - 0 * 1) / np.sqrt((2 + 0) * (2 + 1) * (2 + 0) * (2 + 1)))  # 2/3
  assert finetune.macro_f1(y, p) == pytest.approx((0.8 + 0.8) / 2)
  # Three labels: per-label (tp, fp, fn) = (1, 1, 1), (2, 1, 0), (1, 0, 1).
  y, p = [0, 0, 1, 1, 2, 2], [0, 1, 1, 1, 2, 0]
  assert finetune.accuracy(y, p) == pytest.approx(4 / 6)
  assert finetune.macro_f1(y, p) == pytest.approx((2 / 4 + 4 / 5 + 2 / 3) / 3)
  # Multi-class MCC: s = 6, c = 4, true counts (2, 2, 2), predicted counts (2, 3, 1).
  assert finetune.matthews_corrcoef(y, p) == pytest.approx(
      (4 * 6 - (2 * 2 + 3 * 2 + 1 * 2)) / np.sqrt((36 - (4 + 9 + 1)) * (36 - (4 + 4 + 4))))
  # Perfect, inverted and undefined cases.
  assert finetune.matthews_corrcoef([0, 1, 1], [0, 1, 1]) == pytest.approx(1.0)
  assert finetune.matthews_corrcoef([0, 1, 1, 0], [1, 0, 0, 1]) == pytest.approx(-1.0)
  assert finetune.matthews_corrcoef([0, 1, 1], [1, 1, 1]) == 0.0  # one predicted class
  assert finetune.binary_f1([0, 0], [0, 0]) == 0.0  # no positives at all
  # A label never true nor predicted does not count; one predicted but never true scores 0.
  assert finetune.macro_f1([0, 0, 1], [0, 0, 1]) == pytest.approx(1.0)
  assert finetune.macro_f1([0, 0, 1], [0, 2, 1]) == pytest.approx((2 / 3 + 1 + 0) / 3)
  with pytest.raises(ValueError, match='as many predictions'):
    finetune.accuracy([0, 1], [0])


def test_metrics_match_scikit_learn():
  metrics = pytest.importorskip('sklearn.metrics')
  rng = np.random.default_rng(3)
  for k in (2, 3, 5):
    for _ in range(20):
      y = rng.integers(0, k, 40)
      p = np.where(rng.random(40) < 0.6, y, rng.integers(0, k, 40))
      assert finetune.accuracy(y, p) == pytest.approx(metrics.accuracy_score(y, p))
      assert finetune.macro_f1(y, p) == pytest.approx(
          metrics.f1_score(y, p, average='macro', zero_division=0))
      assert finetune.matthews_corrcoef(y, p) == pytest.approx(metrics.matthews_corrcoef(y, p))
      if k == 2:
        assert finetune.binary_f1(y, p) == pytest.approx(metrics.f1_score(y, p, zero_division=0))


# ------------------------------------------------------------------------------ learning
def test_bbc_topic_learns_well_above_chance(bert_parts, tok):
  out = run(bert_parts, tok, ('bbc_topic',))
  articles = tasks.bbc_articles()
  row = out['tasks']['bbc_topic']
  print(f"bbc_topic: accuracy {row['accuracy']:.3f} macro-F1 {row['macro_f1']:.3f} in "
        f"{row['seconds']:.1f} s")
  assert out['seed'] == 0 and set(out) == {'tasks', 'seed'}
  assert set(row) == {'accuracy', 'macro_f1', 'score', 'examples', 'train_examples', 'labels',
                      'seconds'}
  assert row['examples'] == sum(a.split == 'dev' for a in articles)
  assert row['train_examples'] == sum(a.split == 'train' for a in articles)
  assert row['labels'] == 5 and row['score'] == row['accuracy']
  assert 0 < row['seconds'] < 600
  # Chance is about 0.2 (five topics of 17-23% each).
  counts = np.bincount([tasks.BBC_LABELS.index(a.label) for a in articles if a.split == 'dev'])
  assert counts.max() / counts.sum() < 0.26
  assert row['accuracy'] > 0.6 and row['macro_f1'] > 0.55


def test_same_seed_same_result(bert_parts, tok, monkeypatch):
  """The result and every step's training loss, bitwise; another seed changes the losses (head
  init, order and dropout)."""
  losses = []
  real = finetune._Finetuner.train_step

  def spy(self, *args):
    out = real(self, *args)
    losses[-1].append(float(out[-1]))
    return out

  monkeypatch.setattr(finetune._Finetuner, 'train_step', spy)

  def once(seed):
    losses.append([])
    out = run(bert_parts, tok, ('bbc_topic',), seed=seed, max_train_examples=160, epochs=1)
    assert out['seed'] == seed
    return {k: v for k, v in out['tasks']['bbc_topic'].items() if k != 'seconds'}, losses[-1]

  first, again, other = once(0), once(0), once(1)
  assert first == again
  assert len(first[1]) == 5 and first[0]['train_examples'] == 160
  assert other[1] != first[1]


# ------------------------------------------------------------------------------ tasks
def write_jsonl(path, rows) -> str:
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
  return str(path)


def test_files_task_maps_labels_and_refuses_unknown_dev_labels(tmp_path, bert_parts, tok):
  train = write_jsonl(tmp_path / 'train.jsonl', [
      {'text': 'Shares fell sharply', 'label': 'finance'},
      {'text': 'The striker scored twice', 'label': 'sport'},
      {'text': 'Profits rose', 'label': 'finance', 'text_b': 'Markets cheered'},
      {'text': 'A film festival opened', 'label': 'arts'}])
  dev = write_jsonl(tmp_path / 'dev.jsonl', [{'text': 'Goal in the final', 'label': 'sport'},
                                             {'text': 'Banks lent more', 'label': 'finance'}])
  data = finetune.load_task(f'files:{train},{dev}')
  assert data.label_names == ('arts', 'finance', 'sport')  # sorted training labels
  assert data.train.labels.tolist() == [1, 2, 1, 0] and data.dev.labels.tolist() == [2, 1]
  assert data.train.texts[2] == ('Profits rose', 'Markets cheered')
  # Whole-number labels sort as numbers (2 before 10); numbers come before strings.
  ints = write_jsonl(tmp_path / 'ints.jsonl', [
      {'text': 'a', 'label': 10}, {'text': 'b', 'label': 2}, {'text': 'c', 'label': 'x'}])
  assert finetune.load_task(f'files:{ints},{ints}').label_names == (2, 10, 'x')

  out = run(bert_parts, tok, (f'files:{train},{dev}',), epochs=1)
  row = out['tasks'][f'files:{train},{dev}']
  assert (row['examples'], row['train_examples'], row['labels']) == (2, 4, 3)
  assert row['score'] == row['accuracy'] and 'macro_f1' in row

  unknown = write_jsonl(tmp_path / 'unknown.jsonl', [{'text': 'Rain', 'label': 'sport'},
                                                     {'text': 'Sun', 'label': 'weather'}])
  with pytest.raises(UserError, match=r"unknown.jsonl line 2 has label 'weather', which no line "
                                      r".*train.jsonl has"):
    finetune.load_task(f'files:{train},{unknown}')
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"text": "no label"}\n')
  with pytest.raises(UserError, match='bad.jsonl line 1 is not a JSON object with "text" and '
                                      '"label"'):
    finetune.load_task(f'files:{bad},{dev}')
  with pytest.raises(UserError, match='does not exist'):
    finetune.load_task(f'files:{tmp_path}/nope.jsonl,{dev}')


class FakeSource:
  """A stand-in for TFDS's random-access data source: len, [i] and __getitems__."""

  def __init__(self, records):
    self.records = records

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]

  def __getitems__(self, indices):
    return [self.records[i] for i in indices]


def test_glue_through_a_fake_tfds_source(monkeypatch, bert_parts, tok):
  asked = []

  def fake(dataset, split):
    asked.append((dataset, split))
    rng = np.random.default_rng(len(asked))
    records = [{'sentence1': f'Shares of firm {i} fell'.encode(),
                'sentence2': f'Firm {i} shares dropped'.encode(),
                'label': np.int64(rng.integers(0, 2)), 'idx': np.int32(i)} for i in range(40)]
    return FakeSource(records)

  monkeypatch.setattr(finetune_data, '_tfds_source', fake)
  data = finetune.load_task('tfds:glue/mrpc')
  assert asked == [('glue/mrpc', 'train'), ('glue/mrpc', 'validation')]
  assert data.train.texts[3] == ('Shares of firm 3 fell', 'Firm 3 shares dropped')
  assert data.label_names == (0, 1)
  out = run(bert_parts, tok, ('tfds:glue/mrpc',), epochs=1)
  row = out['tasks']['tfds:glue/mrpc']
  assert set(row) == {'accuracy', 'f1', 'score', 'examples', 'train_examples', 'labels',
                      'seconds'}
  assert row['score'] == row['f1'] and (row['examples'], row['labels']) == (40, 2)

  asked.clear()
  with pytest.raises(UserError, match="no field 'premise'"):  # mnli reads premise/hypothesis
    finetune.load_task('tfds:glue/mnli')
  assert asked == [('glue/mnli', 'train')]
  assert finetune.parse_task('tfds:glue/mnli').dev_split == 'validation_matched'
  assert finetune.parse_task('tfds:glue/mnli:validation_mismatched').dev_split == (
      'validation_mismatched')
  assert [finetune.main_metric(t) for t in ('tfds:glue/cola', 'tfds:glue/qqp', 'tfds:glue/sst2',
                                            'bbc_topic')] == ['mcc', 'f1', 'accuracy', 'accuracy']
  monkeypatch.setattr(finetune_data, '_tfds_source', lambda d, s: FakeSource(
      [{'sentence': b'x', 'label': np.int64(-1)}]))
  with pytest.raises(UserError, match='labels outside 0..1'):  # an unlabelled test split
    finetune.load_task('tfds:glue/cola:test')


def test_encode_single_texts_and_pairs(tok):
  ids = tok.special_ids
  a, b = tok.encode_batch(['Shares fell sharply', 'The striker scored twice'])
  n = len(a) + len(b) + 5  # room for the pair and two [PAD]
  tokens, types = finetune.encode(tok, [('Shares fell sharply',),
                                        ('Shares fell sharply', 'The striker scored twice')], n)
  single = [ids['cls'], *a, ids['sep']]
  assert tokens[0].tolist() == single + [ids['pad']] * (n - len(single))
  pair = [ids['cls'], *a, ids['sep'], *b, ids['sep']]
  assert tokens[1].tolist() == pair + [ids['pad']] * 2
  assert types[0].tolist() == [0] * n
  assert types[1].tolist() == [0] * (len(a) + 2) + [1] * (len(b) + 1) + [0] * 2
  # Truncation: the longer text of a pair loses its last tokens first (BERT's
  # _truncate_seq_pair: on a tie the second text), to seq_len exactly.
  long_a = ' '.join(['one two three four five six seven eight nine ten eleven twelve'] * 3)
  ta = tok.encode_batch([long_a])[0]
  n = 3 + 2 * len(a) + 2  # the long text keeps len(a) + 2 tokens, the short one all
  tokens, _ = finetune.encode(tok, [(long_a, 'Shares fell sharply'), (long_a,)], n)
  assert tokens[0].tolist() == [ids['cls'], *ta[:len(a) + 2], ids['sep'], *a, ids['sep']]
  assert tokens[1].tolist() == [ids['cls'], *ta[:n - 2], ids['sep']]
  tokens, _ = finetune.encode(tok, [(long_a, long_a)], 9)  # a tie: 3 and 3 tokens
  assert tokens[0].tolist() == [ids['cls'], *ta[:3], ids['sep'], *ta[:3], ids['sep']]
  # A model with one token type gets zeros.
  _, types = finetune.encode(tok, [('x', 'y')], 8, type_vocab_size=1)
  assert not types.any()


@pytest.mark.parametrize('task, why', [
    ('bbc', ''), ('glue/sst2', ''), ('tfds:glue/stsb', 'regression'),
    ('tfds:glue/ax', 'without a training split'), ('tfds:squad', 'not a GLUE dataset'),
    ('tfds:glue/nope', "GLUE task 'nope' is unknown"), ('files:train.jsonl', 'two files'),
    ('files:a.jsonl,', 'two files'), (3, 'not a string')])
def test_bad_task_strings_name_the_field_and_the_forms(task, why, bert_parts, tok):
  with pytest.raises(ConfigError) as e:
    run(bert_parts, tok, ('bbc_topic', task))  # checked before bbc_topic trains
  message = str(e.value)
  assert message.startswith(f'config.eval.finetune_tasks has {task!r}')
  assert why in message
  assert "'bbc_topic', 'tfds:glue/NAME[:DEV_SPLIT]' or 'files:TRAIN.jsonl,DEV.jsonl'" in message
  assert message.count('. ') == 0 and message.endswith('.')  # one sentence


def test_other_bad_inputs(bert_parts, tok):
  with pytest.raises(ConfigError, match=r"tuple of task strings, e.g. \('bbc_topic',\)"):
    run(bert_parts, tok, 'bbc_topic')
  with pytest.raises(ConfigError, match='names a task twice'):
    run(bert_parts, tok, ('bbc_topic', 'bbc_topic'))
  with pytest.raises(ConfigError, match='config.eval.finetune.epochs is 0'):
    run(bert_parts, tok, ('bbc_topic',), epochs=0)
  with pytest.raises(ConfigError, match='config.eval.finetune.lr is -1'):
    run(bert_parts, tok, ('bbc_topic',), lr=-1.0)
  spec, params = bert_parts
  gpt2 = dataclasses.replace(spec, family='gpt2')
  with pytest.raises(ConfigError, match="config.model.family is 'gpt2'"):
    finetune.evaluate(gpt2, params, tok, tasks=('bbc_topic',), cfg=finetune_cfg(),
                      seq_len=SEQ_LEN)
  with pytest.raises(ConfigError, match='not a BERT encoder of this model'):
    finetune.evaluate(spec, {'word_embed': params['word_embed']}, tok, tasks=('bbc_topic',),
                      cfg=finetune_cfg(max_train_examples=8), seq_len=SEQ_LEN)


def test_a_checkpoint_pooler_starts_the_head_and_the_mlm_head_is_ignored(bert_parts, tok,
                                                                         monkeypatch):
  """A model built with pooler=True has a (pre-trained) pooler: the head starts from it. The
  MLM head's params never reach the fine-tuned model."""
  spec, params = bert_parts
  c = model_config()
  c.overrides.pooler = True
  pooled = build_model(c, vocab_size=tok.vocab_size, seq_len=SEQ_LEN,
                       special_ids=tok.special_ids)
  d = spec.config.d_model
  with_pooler = {**params, 'pooler': {'kernel': np.full((d, d), 0.5, np.float32),
                                      'bias': np.full((d,), 0.25, np.float32)}}
  started = []
  real = finetune._Finetuner.init

  def spy(self, *args):
    out = real(self, *args)
    started.append(jax.device_get(out[0]))
    return out

  monkeypatch.setattr(finetune._Finetuner, 'init', spy)
  cfg = finetune_cfg(max_train_examples=32, epochs=1)
  finetune.evaluate(pooled, with_pooler, tok, tasks=('bbc_topic',), cfg=cfg, seq_len=SEQ_LEN)
  finetune.evaluate(spec, params, tok, tasks=('bbc_topic',), cfg=cfg, seq_len=SEQ_LEN)
  reused, fresh = (p['head']['pooler'] for p in started)
  np.testing.assert_array_equal(reused['kernel'], 0.5)
  np.testing.assert_array_equal(reused['bias'], 0.25)
  assert 0 < np.std(fresh['kernel']) < 0.05 and not np.any(fresh['bias'])  # drawn, std 0.02
  assert set(started[0]) == {'encoder', 'head'}
  assert set(started[0]['encoder']) == set(params) - {'mlm_transform', 'mlm_ln', 'mlm_bias'}
  assert set(started[0]['head']) == {'pooler', 'classifier'}
  assert started[0]['head']['classifier']['kernel'].shape == (d, finetune.LABEL_BUCKET)
  np.testing.assert_array_equal(started[0]['encoder']['word_embed']['embedding'],
                                params['word_embed']['embedding'])


# ------------------------------------------------------------------------------ mesh
def test_data_parallel_over_a_mesh_matches_one_device(bert_parts, tok, tmp_path):
  """Batches split over (data, fsdp) and the encoder sharded as in training: the same updates as
  on one device, and evaluate gives the same scores."""
  spec, params = bert_parts
  # 4 of the 8 fake devices: with all 8 on this 2-core CI machine, XLA:CPU's collectives of
  # these programs sometimes deadlocked (rendezvous termination timeout, an abort) when this
  # test ran first in its process.
  mesh = mesh_lib.make_mesh(defaults.mesh(data=2, fsdp=2, tensor=1), jax.devices()[:4])
  rules = defaults.get_config().mesh.rules
  _, specs = trainer_lib.logical_param_specs(spec, jax.random.key(0))
  with trainer_lib.mesh_context(mesh, rules):
    shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  sharded = jax.device_put(params, shardings)

  config = dataclasses.replace(spec.config, mlm_head=False, pooler=False)
  one = finetune._finetuner(config, 8, True, None, (), BATCH, SEQ_LEN)
  many = finetune._finetuner(config, 8, True, mesh, finetune._frozen(rules), BATCH, SEQ_LEN)
  data = finetune.load_task('bbc_topic')
  tokens, types = finetune.encode(tok, data.train.texts[:BATCH], SEQ_LEN)
  batch = finetune._batch(tokens, types, data.train.labels, np.arange(BATCH - 5), BATCH)
  states = []
  for tuner, p in ((one, params), (many, sharded)):
    state = tuner.init(finetune._encoder_params(tuner.encoder_shapes, p), jax.random.key(1))
    for step in range(3):
      *state, loss = tuner.train_step(*state, batch, 5, jax.random.key(2), step, 3e-3)
    states.append((jax.device_get(state[0]), float(loss)))
  (a, loss_a), (b, loss_b) = states
  assert loss_a == pytest.approx(loss_b, rel=1e-5)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a, b)

  # evaluate: a small files: task (its dev set of 8 examples is one batch) alike on both.
  rows = [{'text': t.replace('\n', ' ')[:200], 'label': int(y)}
          for t, y in zip((x[0] for x in data.train.texts[:72]), data.train.labels[:72])]
  train, dev = tmp_path / 'train.jsonl', tmp_path / 'dev.jsonl'
  train.write_text(''.join(json.dumps(r) + '\n' for r in rows[:64]))
  dev.write_text(''.join(json.dumps(r) + '\n' for r in rows[64:]))
  task = f'files:{train},{dev}'
  cfg = finetune_cfg(epochs=1)
  want = finetune.evaluate(spec, params, tok, tasks=(task,), cfg=cfg, seq_len=SEQ_LEN)
  got = finetune.evaluate(spec, sharded, tok, tasks=(task,), cfg=cfg, seq_len=SEQ_LEN,
                          mesh=mesh, rules=rules)
  for key in ('accuracy', 'macro_f1', 'examples', 'train_examples', 'labels'):
    assert got['tasks'][task][key] == pytest.approx(want['tasks'][task][key])
  with pytest.raises(ConfigError, match='multiple of the data-parallel size 4'):
    finetune.evaluate(spec, sharded, tok, tasks=('bbc_topic',), cfg=finetune_cfg(batch_size=6),
                      seq_len=SEQ_LEN, mesh=mesh, rules=rules)


# ------------------------------------------------------------------------------ contamination
WORD = re.compile(r'[a-z0-9]+')
PROBE_WORDS = 12  # long enough that common phrases ('for the first time in ...') never match


def _probes(texts, stride: int = 30) -> set[str]:
  """12-word windows of each text (lowercased words), one every `stride` words."""
  out = set()
  for text in texts:
    words = WORD.findall(text.lower())
    for start in range(0, max(len(words) - PROBE_WORDS, 0) + 1, stride):
      out.add(' '.join(words[start:start + PROBE_WORDS]))
  return out


def _hits(documents, probes: set[str]) -> set[str]:
  """The probes found in any 12-word window of the documents."""
  found = set()
  for doc in documents:
    words = WORD.findall(doc.lower())
    found.update(w for w in (' '.join(words[i:i + PROBE_WORDS])
                             for i in range(len(words) - PROBE_WORDS + 1)) if w in probes)
  return found


def test_bert_tiny_never_pretrains_on_bbc_topic_text():
  c = bert_tiny.get_config()
  assert c.eval.finetune_tasks == ('bbc_topic',) and c.model.family == 'bert'
  assert 'demo:news' not in [d.source for d in c.data.domains]
  articles = tasks.bbc_articles()
  probes = _probes(a.text for a in articles)
  assert len(probes) > 20_000  # every article contributes several
  # The check finds the articles where they are: the GPT-2 demo's news domain.
  news = sources.iter_documents(defaults.domain('news', 'demo:news'), 20)
  assert len(_hits(news, probes)) > 100
  # Every document bert_tiny's domains read (tokenizer, validation and training alike).
  for d in c.data.domains:
    found = _hits(sources.iter_documents(d, c.data.max_docs), probes)
    assert not found, f'{d.name} holds BBC article text: {sorted(found)[:3]}'
