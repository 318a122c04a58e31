"""Offline tokenizers: GPT-2's real ids, trained BPE/WordPiece cached in the workdir, files."""

import json

import pytest

from autoscale_jax.data import DataError, tokenizer
from data_helpers import config, domain, get_tokenizer, news


@pytest.fixture(name='corpus')
def fixture_corpus(tmp_path):
  """Two jsonl domains; each domain's first document holds a marker word repeated many times."""
  docs = news(40)
  for name, part in (('a', docs[:20]), ('b', docs[20:])):
    part = [f'{name}zqxvalidation ' * 300] + part
    (tmp_path / f'{name}.jsonl').write_text(''.join(json.dumps({'text': d}) + '\n' for d in part))
  return [domain(n, f'files:{tmp_path}/{n}.jsonl') for n in 'ab']


def test_gpt2_real_ids_offline(tmp_path):
  tok = get_tokenizer(config(kind='gpt2'), tmp_path)
  assert tok.encode_batch(['Hello world', '']) == [[15496, 995], []]
  assert (tok.vocab_size, tok.eos_id) == (50257, 50256)
  assert 50256 not in tok.encode_batch(['a literal <|endoftext|> is text'])[0]
  assert tok.hash == get_tokenizer(config(kind='gpt2'), tmp_path).hash


def test_trained_bpe_is_saved_reused_and_never_sees_validation(tmp_path, corpus):
  c = config(*corpus, kind='train_bpe', vocab_size=400, seq_len=16, val_sequences=2)
  tok = get_tokenizer(c, tmp_path / 'w')
  saved = tmp_path / 'w' / 'tokenizer' / 'tokenizer.json'
  assert saved.exists() and tok.vocab_size == 400 and tok.special_ids == {'eos': 0}
  mtime = saved.stat().st_mtime_ns
  assert get_tokenizer(c, tmp_path / 'w').hash == tok.hash
  assert saved.stat().st_mtime_ns == mtime  # reused, not retrained
  # The marker only occurs in each domain's first (validation) document: had the tokenizer seen
  # it 300 times, BPE would have merged it into a few tokens.
  assert len(tok.encode_batch(['azqxvalidation'])[0]) > 6
  first = [next(iter(tokenizer.training_documents(c.data, d, family='gpt2'))) for d in corpus]
  assert not any('zqx' in f for f in first)
  c.data.tokenizer.vocab_size = 420
  assert get_tokenizer(c, tmp_path / 'w').vocab_size == 420  # new spec: retrained


def test_trained_wordpiece_has_bert_specials(tmp_path, corpus):
  c = config(*corpus, family='bert', kind='train_wordpiece', vocab_size=500)
  tok = get_tokenizer(c, tmp_path)
  assert set(tok.special_ids) == {'pad', 'unk', 'cls', 'sep', 'mask'}
  assert tok.eos_id is None
  assert all(tok.encode_batch(['The government said on Monday.'])[0])


def test_file_tokenizer_and_errors(tmp_path, corpus):
  trained = get_tokenizer(config(*corpus, kind='train_bpe'), tmp_path)
  c = config(kind='file')
  c.data.tokenizer.path = str(tmp_path / 'tokenizer' / 'tokenizer.json')
  assert get_tokenizer(c, tmp_path / 'other').hash == trained.hash
  c.data.tokenizer.path = str(tmp_path / 'missing.json')
  with pytest.raises(DataError, match='config.data.tokenizer.path'):
    get_tokenizer(c, tmp_path)
  c.data.tokenizer.kind = 'sentencepiece'
  with pytest.raises(DataError, match='config.data.tokenizer.kind'):
    get_tokenizer(c, tmp_path)
