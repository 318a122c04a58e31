"""Document sources: files (txt, jsonl, jsonl.gz, parquet), TFDS array_record without TF, demo."""

import gzip
import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds

from autoscale_jax.data import DataError, sources
from data_helpers import domain, news

DOCS = news(6)


def write_jsonl(path, docs, key='text'):
  path.write_text(''.join(json.dumps({key: d, 'id': i}) + '\n' for i, d in enumerate(docs)))


def test_txt_files_one_document_each_in_sorted_order(tmp_path):
  for i, d in enumerate(DOCS[:3]):
    (tmp_path / f'{2 - i}.txt').write_text(d)
  got = list(sources.iter_documents(domain('t', f'files:{tmp_path}/*.txt')))
  assert got == DOCS[:3][::-1]
  assert list(sources.iter_documents(domain('t', f'files:{tmp_path}/*.txt'), max_docs=2)) == got[:2]


def test_jsonl_gz_and_parquet_domains(tmp_path):
  write_jsonl(tmp_path / 'a.jsonl', DOCS[:2])
  with gzip.open(tmp_path / 'b.jsonl.gz', 'wt') as f:
    f.write('\n'.join(json.dumps({'body': d}) for d in DOCS[2:4]) + '\n\n')
  pq.write_table(pa.table({'body': DOCS[4:], 'n': [1, 2]}), tmp_path / 'c.parquet')
  assert list(sources.iter_documents(domain('j', f'files:{tmp_path}/a.jsonl'))) == DOCS[:2]
  got = list(sources.iter_documents(domain('m', f'files:{tmp_path}/[bc].*', text_key='body')))
  assert got == DOCS[2:]


def test_read_says_how_far_through_the_source_each_document_ends(tmp_path):
  """Bytes of the files for files: sources (the tokenizing bar's unit), else documents."""
  write_jsonl(tmp_path / 'a.jsonl', DOCS[:2])
  with gzip.open(tmp_path / 'b.jsonl.gz', 'wt') as f:
    f.write(''.join(json.dumps({'text': d}) + '\n' for d in DOCS[2:4]))
  pq.write_table(pa.table({'text': DOCS[4:]}), tmp_path / 'c.parquet')
  sizes = [(tmp_path / n).stat().st_size for n in ('a.jsonl', 'b.jsonl.gz', 'c.parquet')]
  docs, total, unit = sources.read(domain('m', f'files:{tmp_path}/[abc].*'))
  docs = list(docs)
  assert [d for d, _ in docs] == DOCS and (total, unit) == (sum(sizes), 'B')
  done = [n for _, n in docs]
  assert done == sorted(done) and done[1] == sizes[0] and done[-1] == total
  docs, total, unit = sources.read(domain('m', f'files:{tmp_path}/[abc].*'), max_docs=3)
  assert [n for _, n in docs] == [1, 2, 3] and (total, unit) == (3, 'docs')
  docs, total, unit = sources.read(domain('n', 'demo:plays'))
  assert (total, unit) == (len(list(docs)), 'docs')


def test_fingerprint_changes_with_the_files(tmp_path):
  write_jsonl(tmp_path / 'a.jsonl', DOCS[:2])
  d = domain('j', f'files:{tmp_path}/*.jsonl')
  before = sources.fingerprint(d)
  assert sources.fingerprint(d) == before
  write_jsonl(tmp_path / 'a.jsonl', DOCS[:3])
  assert sources.fingerprint(d) != before
  write_jsonl(tmp_path / 'b.jsonl', DOCS[:1])
  other_key = domain('j', d.source, text_key='x')
  assert len({before, sources.fingerprint(d), sources.fingerprint(other_key)}) == 3


@pytest.mark.parametrize('setup,source,match', [
    (None, 'files:{}/nothing*.txt', 'matches no files'),
    ('empty.txt', 'files:{}/*.txt', 'is empty'),
    ('bad.jsonl', 'files:{}/*.jsonl', r"line 2 has no field text_key='text'"),
    ('bad.parquet', 'files:{}/*.parquet', r"no column text_key='text'"),
    ('notes.csv', 'files:{}/*.csv', 'not .txt, .jsonl'),
    (None, 'demo:poems', 'use one of demo:code'),
    (None, 'web:http://x', 'is not files:GLOB'),
])
def test_user_errors_name_the_domain_and_the_fix(tmp_path, setup, source, match):
  if setup == 'empty.txt':
    (tmp_path / setup).write_text('')
  elif setup == 'bad.jsonl':
    (tmp_path / setup).write_text('{"text": "ok"}\n{"body": "no text key"}\n')
  elif setup == 'bad.parquet':
    pq.write_table(pa.table({'body': ['x']}), tmp_path / setup)
  elif setup:
    (tmp_path / setup).write_text('a,b\n')
  with pytest.raises(DataError, match=match) as e:
    list(sources.iter_documents(domain('mine', source.format(tmp_path))))
  assert "Domain 'mine'" in str(e.value)


class DataTestText(tfds.core.GeneratorBasedBuilder):
  """A small TFDS text dataset (array_record needs no TensorFlow to build or read)."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self, features=tfds.features.FeaturesDict({'text': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(DOCS),
            'validation': self._generate_examples(DOCS[:1])}

  def _generate_examples(self, items):
    for i, d in enumerate(items):
      yield i, {'text': d}


def test_tfds_array_record_domain_without_tensorflow(tmp_path):
  DataTestText(data_dir=str(tmp_path), file_format='array_record').download_and_prepare()
  assert 'tensorflow' not in sys.modules
  d = domain('tf', 'tfds:data_test_text', data_dir=str(tmp_path))
  assert sorted(sources.iter_documents(d)) == sorted(DOCS)  # TFDS orders records by key hash
  assert list(sources.iter_documents(d)) == list(sources.iter_documents(d))  # but stably
  val = domain('tf', 'tfds:data_test_text:validation', data_dir=str(tmp_path))
  assert list(sources.iter_documents(val)) == DOCS[:1]
  assert sources.fingerprint(val) != sources.fingerprint(d)
  with pytest.raises(DataError, match='has no split'):
    list(sources.iter_documents(domain('tf', 'tfds:data_test_text:test', data_dir=str(tmp_path))))
  with pytest.raises(DataError, match="'no_such_dataset_xyz' is unknown"):
    list(sources.iter_documents(domain('tf', 'tfds:no_such_dataset_xyz', data_dir=str(tmp_path))))


def test_tfds_tfrecord_domain_when_tensorflow_is_installed(tmp_path):
  pytest.importorskip('tensorflow')
  DataTestText(data_dir=str(tmp_path), file_format='tfrecord').download_and_prepare()
  got = list(sources.iter_documents(domain('tf', 'tfds:data_test_text', data_dir=str(tmp_path))))
  assert sorted(got) == sorted(DOCS)


@pytest.mark.parametrize('name', list(sources.DEMO))
def test_demo_domains_are_real_text_of_at_least_2mb(name):
  d = domain(name, f'demo:{name}')
  docs = list(sources.iter_documents(d))
  assert sum(len(x.encode()) for x in docs) >= 2_000_000
  assert len(set(docs[:20])) == 20  # distinct documents, in a fixed order
  assert list(sources.iter_documents(d, max_docs=3)) == docs[:3]
  assert sources.fingerprint(d) == sources.fingerprint(d)
