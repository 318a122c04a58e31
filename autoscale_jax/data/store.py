"""Token stores: every domain tokenized once into fixed-length rows on disk (the `prepare` step).

Layout of <cache_dir>/<domain>/ (cache_dir = config.data.cache_dir or <workdir>/data):
  val.bin, train.bin  rows of row_len tokens, uint16 when the vocab fits, else uint32
  meta.json           counts, tokenizer hash, source fingerprint, seq_len...; written last
Rows, by config.model.family:
  gpt2  documents joined by EOS into one stream, cut into rows of seq_len + 1 tokens that
        OVERLAP BY ONE TOKEN (row r = stream[r*seq_len : (r+1)*seq_len + 1]), so every token
        after the first is a target exactly once; row_len = seq_len + 1.
  bert  each document cut into chunks of seq_len - 2 tokens, each row [CLS] chunk [SEP] padded
        with [PAD] to row_len = seq_len.
Validation comes first and never depends on the mixture: the first documents of the domain fill
val_sequences rows (the rest of the document that completes them is dropped) and training rows
start at the next document, so no document is in both. The store is rebuilt exactly when the
source, the tokenizer, the model family, seq_len, val_sequences or max_docs change.
"""

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from etils import epath

from autoscale_jax.data import DataError, sources
from autoscale_jax.io import temp_name, write_bytes_atomic
from autoscale_jax.data.tokenizer import Tokenizer, check_special_tokens, get_tokenizer

FORMAT = 1  # bump when the layout or the packing changes
_BATCH_DOCS = 256  # documents per encode_batch call (tokenizers runs them in parallel)
_PROGRESS_SECONDS = 5.0


@dataclasses.dataclass
class DomainStore:
  """One domain's rows: train [n_train, row_len] and val [n_val, row_len] memmaps, meta dict."""
  name: str
  train: np.ndarray
  val: np.ndarray
  meta: dict[str, Any]


def row_len(config: Any) -> int:
  """Tokens per stored row: seq_len + 1 for GPT-2 (inputs and shifted targets), seq_len for BERT."""
  return config.data.seq_len + (config.model.family == 'gpt2')


class _Packer:
  """Turns documents' token ids into rows (see the module docstring for the two layouts)."""

  def __init__(self, config: Any, tok: Tokenizer):
    self.seq_len, self.bert = config.data.seq_len, config.model.family == 'bert'
    self.ids = tok.special_ids
    self.buffer = np.zeros(0, np.int64)

  def add(self, ids: list[int]) -> np.ndarray:
    """Rows completed by one more document, int64 [n, row_len]."""
    s = self.seq_len
    if self.bert:
      chunks = [ids[i:i + s - 2] for i in range(0, len(ids), s - 2)]
      rows = np.full((len(chunks), s), self.ids['pad'], np.int64)
      for row, chunk in zip(rows, chunks):
        row[:len(chunk) + 2] = [self.ids['cls'], *chunk, self.ids['sep']]
      return rows
    self.buffer = np.concatenate([self.buffer, ids, [self.ids['eos']]])
    n = (len(self.buffer) - 1) // s
    rows = self.buffer[np.arange(n)[:, None] * s + np.arange(s + 1)]
    self.buffer = self.buffer[n * s:]
    return rows

  def targets(self, rows: np.ndarray) -> int:
    """Tokens the rows train on: seq_len per GPT-2 row, the non-[PAD] tokens of BERT rows."""
    return int(np.sum(rows != self.ids['pad'])) if self.bert else rows.shape[0] * self.seq_len


def _check_tokenizer(config: Any, tok: Tokenizer) -> None:
  check_special_tokens(config, tok.special_ids)


def _local(path: epath.Path, key: str) -> str:
  """A local file name for memmapping: the file itself, or a cached copy of a remote one."""
  if '://' not in str(path):
    return os.fspath(path)
  local = os.path.join(tempfile.gettempdir(), 'autoscale_jax', key, path.name)
  if not os.path.exists(local):
    os.makedirs(os.path.dirname(local), exist_ok=True)
    with path.open('rb') as src, open(local + '.tmp', 'wb') as dst:
      shutil.copyfileobj(src, dst)
    os.replace(local + '.tmp', local)
  return local


def _open(folder: epath.Path, meta: dict[str, Any]) -> DomainStore:
  arrays = {}
  for split in ('train', 'val'):
    shape = (meta[f'{split}_sequences'], meta['row_len'])
    arrays[split] = np.memmap(_local(folder / f'{split}.bin', meta['key']), meta['dtype'], 'r',
                              shape=shape)
  return DomainStore(meta['name'], arrays['train'], arrays['val'], meta)


def _batched(docs: Iterator[str]) -> Iterator[list[str]]:
  while batch := list(itertools.islice(docs, _BATCH_DOCS)):
    yield batch


def _build(config: Any, domain_cfg: Mapping[str, Any], tok: Tokenizer, folder: epath.Path,
           meta: dict[str, Any]) -> None:
  """Tokenize one domain into folder: val rows first, then train rows streamed to disk."""
  name, want_val = meta['name'], meta['val_sequences']
  packer, val = _Packer(config, tok), []
  docs = val_docs = seen_tokens = n_train = train_tokens = 0
  tmp = temp_name(folder / 'train.bin')
  start = last = time.time()
  with tmp.open('wb') as out:
    for batch in _batched(sources.iter_documents(domain_cfg, config.data.max_docs)):
      for ids in tok.encode_batch(batch):
        if not ids:
          continue
        docs, seen_tokens = docs + 1, seen_tokens + len(ids)
        rows = packer.add(ids)
        if len(val) < want_val:
          val.extend(rows[:want_val - len(val)])
          val_docs = docs
          if len(val) == want_val:
            packer = _Packer(config, tok)  # training starts at the next document
          continue
        out.write(rows.astype(meta['dtype']).tobytes())
        n_train, train_tokens = n_train + len(rows), train_tokens + packer.targets(rows)
      if time.time() - last > _PROGRESS_SECONDS:
        last, elapsed = time.time(), time.time() - start
        print(f'  {name}: {docs} documents, {docs / elapsed:.0f} documents/s, '
              f'{seen_tokens / elapsed:.0f} tokens/s', flush=True)
  if len(val) < want_val or not n_train:
    tmp.unlink()
    raise DataError(f'Domain {name!r} has {docs} non-empty documents, {len(val)} validation and '
                    f'{n_train} training sequences; it needs {want_val} validation sequences and '
                    'some training data: add documents, raise config.data.max_docs or lower '
                    'val_sequences.')
  tmp.replace(folder / 'train.bin')
  write_bytes_atomic(folder / 'val.bin', np.asarray(val).astype(meta['dtype']).tobytes())
  meta.update(documents=docs, val_documents=val_docs, tokens=train_tokens,
              train_sequences=n_train)
  elapsed = time.time() - start
  print(f'  {name}: {docs} documents in {elapsed:.1f}s ({docs / elapsed:.0f} documents/s, '
        f'{seen_tokens / elapsed:.0f} tokens/s)', flush=True)


def prepare(config: Any, workdir: str | os.PathLike[str]) -> dict[str, DomainStore]:
  """Token stores of config.data.domains, in order, built once and reused while inputs match."""
  if not config.data.domains:
    raise DataError('config.data.domains is empty; configure at least one domain.')
  tok = get_tokenizer(config, workdir)
  _check_tokenizer(config, tok)
  cache = epath.Path(config.data.cache_dir or epath.Path(workdir) / 'data')
  stores = {}
  for domain_cfg in config.data.domains:
    val = sources.val_sequences(config.data, domain_cfg)
    if val < 1:
      raise DataError(f'Domain {domain_cfg.name!r} has val_sequences={val}; set '
                      'config.data.val_sequences (or the domain\'s) to at least 1.')
    meta = {
        'format': FORMAT, 'name': domain_cfg.name, 'fingerprint': sources.fingerprint(domain_cfg),
        'tokenizer_hash': tok.hash, 'family': config.model.family, 'seq_len': config.data.seq_len,
        'row_len': row_len(config), 'val_sequences': val, 'max_docs': config.data.max_docs,
        'dtype': 'uint16' if tok.vocab_size <= 2**16 else 'uint32'}
    meta['key'] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache / domain_cfg.name
    meta_path = folder / 'meta.json'
    if meta_path.exists() and json.loads(meta_path.read_text()).get('key') == meta['key']:
      stores[domain_cfg.name] = _open(folder, json.loads(meta_path.read_text()))
      continue
    folder.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # a crash mid-build must not leave a valid-looking store
    _build(config, domain_cfg, tok, folder, meta)
    write_bytes_atomic(meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())
    stores[domain_cfg.name] = _open(folder, meta)
  _print_table(stores)
  return stores


def _print_table(stores: Mapping[str, DomainStore]) -> None:
  header = ('domain', 'documents', 'train seqs', 'val seqs', 'train tokens')
  rows = [(s.name, s.meta['documents'], s.meta['train_sequences'], s.meta['val_sequences'],
           s.meta['tokens']) for s in stores.values()]
  width = max([len(header[0])] + [len(r[0]) for r in rows])
  print(f'{header[0]:<{width}}' + ''.join(f'{h:>14}' for h in header[1:]))
  for r in rows:
    print(f'{r[0]:<{width}}' + ''.join(f'{v:>14,}' for v in r[1:]))
