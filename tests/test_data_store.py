"""Token stores: exact packing for GPT-2 and BERT, validation first, dtypes, cache reuse/rebuild."""

import json
import os
import tempfile

import numpy as np
import pytest
import tokenizers
from etils import epath

from autoscale_jax.data import DataError
from data_helpers import config, domain, get_tokenizer, news, prepare

DOCS = news(12)


@pytest.fixture(name='jsonl')
def fixture_jsonl(tmp_path):
  path = tmp_path / 'docs.jsonl'
  path.write_text(''.join(json.dumps({'text': d}) + '\n' for d in DOCS))
  return domain('news', f'files:{path}')


def test_gpt2_rows_overlap_by_one_token_and_validation_comes_first(tmp_path, jsonl):
  c = config(jsonl, kind='gpt2', seq_len=16, val_sequences=3)
  s = prepare(c, tmp_path)['news']
  ids = [d + [50256] for d in get_tokenizer(c, tmp_path).encode_batch(DOCS)]
  stream = np.concatenate(ids)
  np.testing.assert_array_equal(s.val, [stream[r * 16:r * 16 + 17] for r in range(3)])
  used = np.searchsorted(np.cumsum([len(d) for d in ids]), 3 * 16 + 1) + 1  # docs validation needs
  train = np.concatenate(ids[used:])  # training starts at the next document
  n = (len(train) - 1) // 16
  np.testing.assert_array_equal(s.train, [train[r * 16:r * 16 + 17] for r in range(n)])
  assert s.train.dtype == np.uint16 and isinstance(s.train, np.memmap)
  assert {k: s.meta[k] for k in ('documents', 'val_documents', 'tokens', 'train_sequences',
                                 'val_sequences', 'seq_len', 'row_len', 'family')} == {
      'documents': 12, 'val_documents': used, 'tokens': n * 16, 'train_sequences': n,
      'val_sequences': 3, 'seq_len': 16, 'row_len': 17, 'family': 'gpt2'}


def test_bert_rows_are_cls_chunk_sep_padded(tmp_path, jsonl):
  c = config(jsonl, family='bert', kind='train_wordpiece', seq_len=16, val_sequences=2,
             vocab_size=400)
  s = prepare(c, tmp_path)['news']
  tok = get_tokenizer(c, tmp_path)
  sp = tok.special_ids
  rows = np.concatenate([s.val, s.train])
  assert (rows[:, 0] == sp['cls']).all() and rows.shape[1] == 16
  content = [r[1:list(r).index(sp['sep'])] for r in rows]
  assert all((r[len(x) + 2:] == sp['pad']).all() for r, x in zip(rows, content))
  ids = tok.encode_batch(DOCS)
  val_docs = s.meta['val_documents']
  train_chunks = [d[i:i + 14] for d in ids[val_docs:] for i in range(0, len(d), 14)]
  assert [list(x) for x in content[2:]] == train_chunks
  assert [list(x) for x in content[:2]] == [ids[0][:14], ids[0][14:28]]
  assert s.meta['tokens'] == sum(len(x) + 2 for x in train_chunks)


def test_uint32_rows_when_the_vocab_does_not_fit_uint16(tmp_path, jsonl):
  vocab = {'<|endoftext|>': 0, **{f'w{i}': i + 1 for i in range(70_000)}, '[UNK]': 70_001}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token='[UNK]'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.save(str(tmp_path / 'big.json'))
  for part in (0, 1):  # validation comes from the first file, training from the second
    words = range(69_000 + 100 * part, 69_100 + 100 * part)
    (tmp_path / f'big{part}.txt').write_text(' '.join(f'w{i}' for i in words))
  c = config(domain('big', f'files:{tmp_path}/big*.txt'), kind='file', seq_len=8)
  c.data.tokenizer.path = str(tmp_path / 'big.json')
  s = prepare(c, tmp_path)['big']
  assert s.train.dtype == np.uint32
  np.testing.assert_array_equal(s.val[0], np.arange(69_001, 69_010))
  np.testing.assert_array_equal(s.train[0], np.arange(69_101, 69_110))


def test_cache_is_reused_and_rebuilt_when_inputs_change(tmp_path, jsonl, capsys):
  c = config(jsonl, kind='train_bpe', seq_len=16, val_sequences=2, vocab_size=300)
  train_bin = tmp_path / 'data' / 'news' / 'train.bin'
  first = prepare(c, tmp_path)['news']
  mtime = train_bin.stat().st_mtime_ns
  capsys.readouterr()
  again = prepare(c, tmp_path)['news']
  assert 'documents in' not in capsys.readouterr().out and train_bin.stat().st_mtime_ns == mtime
  assert again.meta == first.meta
  np.testing.assert_array_equal(again.train, first.train)

  def rebuilt():
    before = train_bin.stat().st_mtime_ns
    s = prepare(c, tmp_path)['news']
    assert train_bin.stat().st_mtime_ns != before
    return s

  c.data.seq_len = 24
  assert rebuilt().train.shape[1] == 25
  c.data.tokenizer.vocab_size = 320
  assert rebuilt().meta['tokenizer_hash'] != first.meta['tokenizer_hash']
  path = jsonl.source[len('files:'):]
  with open(path, 'a') as f:
    f.write(json.dumps({'text': news(13)[-1]}) + '\n')
  assert rebuilt().meta['documents'] == 13


def test_validation_does_not_depend_on_how_much_training_data_follows(tmp_path, jsonl):
  small = prepare(config(jsonl, max_docs=6), tmp_path / 'a')['news']
  large = prepare(config(jsonl, max_docs=10), tmp_path / 'b')['news']
  np.testing.assert_array_equal(small.val, large.val)
  assert small.meta['documents'] == 6 and large.train.shape[0] > small.train.shape[0]


def test_user_errors(tmp_path, jsonl):
  with pytest.raises(DataError, match="Domain 'news' .* needs 500 validation sequences"):
    prepare(config(jsonl, val_sequences=500, max_docs=2), tmp_path)
  with pytest.raises(DataError, match="kind='train_bpe' has no .*use train_wordpiece for bert"):
    prepare(config(jsonl, family='bert', kind='train_bpe'), tmp_path)
  with pytest.raises(DataError, match='val_sequences=0'):
    prepare(config(jsonl, val_sequences=0), tmp_path)
  with pytest.raises(DataError, match=r'config\.data\.seq_len is 2; BERT rows hold \[CLS\]'):
    prepare(config(jsonl, family='bert', kind='train_wordpiece', seq_len=2), tmp_path)


def test_demo_corpus_prepares_and_prints_the_table(tmp_path, capsys):
  c = config(*(domain(n, f'demo:{n}') for n in ('code', 'speeches', 'plays', 'news')),
             kind='train_bpe', seq_len=32, max_docs=2, vocab_size=300, train_chars=20_000)
  stores = prepare(c, tmp_path)
  assert list(stores) == ['code', 'speeches', 'plays', 'news']
  out = capsys.readouterr().out
  assert 'documents/s' in out and 'tokens/s' in out
  header = next(l for l in out.splitlines() if l.startswith('domain'))
  assert header.split() == ['domain', 'documents', 'train', 'seqs', 'val', 'seqs', 'train',
                            'tokens']
  for name, s in stores.items():
    assert s.meta['documents'] == 2 and s.train.shape[0] > 0
    assert any(l.split()[:3] == [name, '2', f'{s.train.shape[0]:,}'] for l in out.splitlines())


def test_remote_workdir_cache_and_source(tmp_path, monkeypatch):
  """gs:// paths (mocked onto tmp_path/gcs) for the source, the workdir and the token cache."""
  bucket = tmp_path / 'gcs'

  def redirect(fn, *args, **kwargs):
    return fn(*(str(a).replace('gs://', f'{bucket}/') if isinstance(a, str | os.PathLike) else a
                for a in args), **kwargs)

  ops = ('copy', 'exists', 'glob', 'isdir', 'listdir', 'makedirs', 'mkdir', 'open', 'remove',
         'rename', 'replace', 'rmtree', 'stat', 'walk')
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path / 'local'))  # local copies for memmaps
  (bucket / 'src').mkdir(parents=True)
  (bucket / 'src' / 'docs.jsonl').write_text(''.join(json.dumps({'text': d}) + '\n' for d in DOCS))
  c = config(domain('news', 'files:gs://src/*.jsonl'), kind='train_bpe')
  c.data.cache_dir = 'gs://cache'
  with epath.testing.mock_epath(**{op: redirect for op in ops}):
    remote = prepare(c, 'gs://work')['news']
  local = prepare(config(domain('news', f'files:{bucket}/src/*.jsonl'), kind='train_bpe'),
                        tmp_path / 'w')['news']
  np.testing.assert_array_equal(remote.train, local.train)
  assert (bucket / 'cache' / 'news' / 'meta.json').exists()
  assert (bucket / 'work' / 'tokenizer' / 'tokenizer.json').exists()
  assert remote.train.filename.startswith(str(tmp_path / 'local'))
