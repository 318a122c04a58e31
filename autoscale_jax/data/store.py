"""Token stores: every domain tokenized once into fixed-length rows on disk (the `prepare` step).

Layout of <cache_dir>/<domain>/ (cache_dir = config.data.cache_dir or <workdir>/data):
  val.bin, train.bin  rows of row_len tokens, uint16 when the vocab fits, else uint32
  meta.json           counts, tokenizer hash, source fingerprint, seq_len...; written last
Rows, by config.model.family (row_len comes from the caller: models.row_len):
  gpt2  documents joined by EOS into one stream, cut into rows of row_len = seq_len + 1 tokens
        that start seq_len apart, so they OVERLAP BY ONE TOKEN (row r = stream[r*seq_len :
        (r+1)*seq_len + 1]) and every token after the first is a target exactly once.
  bert  each document cut into chunks of row_len - 2 tokens, each row [CLS] chunk [SEP] padded
        with [PAD] to row_len = seq_len.
Validation comes first and never depends on the mixture: the first documents of the domain fill
val_sequences rows (the rest of the document that completes them is dropped) and training rows
start at the next document, so no document is in both. The store is rebuilt exactly when the
source, the tokenizer, the model family, seq_len, val_sequences or max_docs change.

Several processes (multi-host jobs) follow one rule, io.one_writer's: on a cache every process
sees (gs://, NFS) process 0 builds the stores and the others wait for it, then open what it
wrote; on node-local caches (config.data.cache_dir on each host's own disk) every host builds
its own copy. Only process 0 prints (progress, the table). Stores on gs:// are copied to a local
temporary folder once per host to be memory-mapped.
"""

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
from etils import epath

from autoscale_jax.data import DataError, sources
from autoscale_jax.data.tokenizer import Tokenizer, check_special_tokens, get_tokenizer
from autoscale_jax.io import filesystem_of, one_writer, temp_name, write_bytes_atomic
from autoscale_jax.lead import say
from autoscale_jax.progress import Progress

FORMAT = 1  # bump when the layout or the packing changes
_BATCH_DOCS = 256  # documents per encode_batch call (tokenizers runs them in parallel)


@dataclasses.dataclass
class DomainStore:
  """One domain's rows: train [n_train, row_len] and val [n_val, row_len] memmaps, meta dict."""
  name: str
  train: np.ndarray
  val: np.ndarray
  meta: dict[str, Any]


class _Packer:
  """Turns documents' token ids into rows (see the module docstring for the two layouts)."""

  def __init__(self, meta: Mapping[str, Any], tok: Tokenizer):
    self.seq_len, self.row_len = meta['seq_len'], meta['row_len']
    self.bert = meta['family'] == 'bert'
    self.ids = tok.special_ids
    self.buffer = np.zeros(0, np.int64)

  def add(self, ids: list[int]) -> np.ndarray:
    """Rows completed by one more document, int64 [n, row_len]."""
    s, width = self.seq_len, self.row_len
    if self.bert:
      chunks = [ids[i:i + width - 2] for i in range(0, len(ids), width - 2)]
      rows = np.full((len(chunks), width), self.ids['pad'], np.int64)
      for row, chunk in zip(rows, chunks):
        row[:len(chunk) + 2] = [self.ids['cls'], *chunk, self.ids['sep']]
      return rows
    self.buffer = np.concatenate([self.buffer, ids, [self.ids['eos']]])
    n = max((len(self.buffer) - width) // s + 1, 0)  # rows of `width` tokens, `s` apart
    rows = self.buffer[np.arange(n)[:, None] * s + np.arange(width)]
    self.buffer = self.buffer[n * s:]
    return rows

  def targets(self, rows: np.ndarray) -> int:
    """Tokens the rows train on: seq_len per GPT-2 row, the non-[PAD] tokens of BERT rows."""
    return int(np.sum(rows != self.ids['pad'])) if self.bert else rows.shape[0] * self.seq_len


def _local(path: epath.Path, key: str) -> str:
  """A local file name for memmapping: the file itself, or a cached copy of a remote one (the
  processes of one host share it; each copies to a name of its own, then moves it in place)."""
  if '://' not in str(path):
    return os.fspath(path)
  local = os.path.join(tempfile.gettempdir(), 'autoscale_jax', key, path.name)
  if not os.path.exists(local):
    os.makedirs(os.path.dirname(local), exist_ok=True)
    tmp = os.fspath(temp_name(epath.Path(local)))
    with path.open('rb') as src, open(tmp, 'wb') as dst:
      shutil.copyfileobj(src, dst)
    os.replace(tmp, local)
  return local


def _open(folder: epath.Path, meta: dict[str, Any]) -> DomainStore:
  arrays = {}
  for split in ('train', 'val'):
    shape = (meta[f'{split}_sequences'], meta['row_len'])
    arrays[split] = np.memmap(_local(folder / f'{split}.bin', meta['key']), meta['dtype'], 'r',
                              shape=shape)
  return DomainStore(meta['name'], arrays['train'], arrays['val'], meta)


def _batched(items: Iterable[tuple[str, int]]) -> Iterator[tuple[list[str], int]]:
  """Documents in batches for the tokenizer, each batch with how far through the read it ends."""
  items = iter(items)
  while batch := list(itertools.islice(items, _BATCH_DOCS)):
    yield [doc for doc, _ in batch], batch[-1][1]


def _build(data_cfg: Any, domain_cfg: Mapping[str, Any], tok: Tokenizer, folder: epath.Path,
           meta: dict[str, Any]) -> None:
  """Tokenize one domain into folder: val rows first, then train rows streamed to disk."""
  name, want_val = meta['name'], meta['val_sequences']
  packer, val = _Packer(meta, tok), []
  docs = val_docs = seen_tokens = n_train = train_tokens = 0
  tmp = temp_name(folder / 'train.bin')
  start = time.time()
  documents, total, unit = sources.read(domain_cfg, data_cfg.max_docs)
  with tmp.open('wb') as out, Progress(total, f'tokenize {name}', unit) as bar:
    for batch, done in _batched(documents):
      for ids in tok.encode_batch(batch):
        if not ids:
          continue
        docs, seen_tokens = docs + 1, seen_tokens + len(ids)
        rows = packer.add(ids)
        if len(val) < want_val:
          val.extend(rows[:want_val - len(val)])
          val_docs = docs
          if len(val) == want_val:
            packer = _Packer(meta, tok)  # training starts at the next document
          continue
        out.write(rows.astype(meta['dtype']).tobytes())
        n_train, train_tokens = n_train + len(rows), train_tokens + packer.targets(rows)
      elapsed = max(time.time() - start, 1e-9)
      bar.update(done - bar.n, docs=docs, **{'docs/s': docs / elapsed,
                                             'tokens/s': seen_tokens / elapsed})
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
  say(f'  {name}: {docs} documents in {elapsed:.1f}s ({docs / elapsed:.0f} documents/s, '
       f'{seen_tokens / elapsed:.0f} tokens/s)')


def _stored_meta(folder: epath.Path, key: str) -> dict[str, Any] | None:
  """The folder's meta.json if it describes a complete store of these inputs (`key`)."""
  path = folder / 'meta.json'
  meta = json.loads(path.read_text()) if path.exists() else {}
  return meta if meta.get('key') == key else None


def _build_unless_stored(data_cfg: Any, domain_cfg: Mapping[str, Any], tok: Tokenizer,
                         folder: epath.Path, meta: dict[str, Any]) -> None:
  if _stored_meta(folder, meta['key']):
    say(f'  {meta["name"]}: reusing the token store in {folder} (same inputs)')
    return
  folder.mkdir(parents=True, exist_ok=True)
  # A crash mid-build must not leave a valid-looking store: meta.json goes first, comes last.
  (folder / 'meta.json').unlink(missing_ok=True)
  _build(data_cfg, domain_cfg, tok, folder, meta)
  write_bytes_atomic(folder / 'meta.json', json.dumps(meta, indent=1, sort_keys=True).encode())


def prepare(data_cfg: Any, workdir: str | os.PathLike[str], *, family: str,
            row_len: int) -> dict[str, DomainStore]:
  """Token stores of data_cfg.domains (config.data), in order, built once and reused while the
  inputs match; `family` is config.model.family, `row_len` models.row_len(family, seq_len)."""
  if not data_cfg.domains:
    raise DataError('config.data.domains is empty; configure at least one domain.')
  tok = get_tokenizer(data_cfg, workdir, family=family)
  check_special_tokens(data_cfg.tokenizer.kind, family, tok.special_ids)
  cache = epath.Path(data_cfg.cache_dir or epath.Path(workdir) / 'data')
  metas = {}
  for domain_cfg in data_cfg.domains:
    val = sources.val_sequences(data_cfg, domain_cfg)
    if val < 1:
      raise DataError(f'Domain {domain_cfg.name!r} has val_sequences={val}; set '
                      'config.data.val_sequences (or the domain\'s) to at least 1.')
    meta = {
        'format': FORMAT, 'name': domain_cfg.name, 'fingerprint': sources.fingerprint(domain_cfg),
        'tokenizer_hash': tok.hash, 'family': family, 'seq_len': data_cfg.seq_len,
        'row_len': row_len, 'val_sequences': val, 'max_docs': data_cfg.max_docs,
        'dtype': 'uint16' if tok.vocab_size <= 2**16 else 'uint32'}
    meta['key'] = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    metas[domain_cfg.name] = meta
  with (filesystem_of(cache, f'config.data.cache_dir={str(cache)!r}'),
        one_writer(cache, 'token stores') as writes):
    if writes:
      for domain_cfg in data_cfg.domains:
        _build_unless_stored(data_cfg, domain_cfg, tok, cache / domain_cfg.name,
                             metas[domain_cfg.name])
  stores = {}
  for name, meta in metas.items():
    stored = _stored_meta(cache / name, meta['key'])
    if stored is None:
      raise DataError(f'The token store of domain {name!r} that process 0 built in {cache} is '
                      f'not visible from process {jax.process_index()}; put '
                      'config.data.cache_dir on storage every process sees, or on every host\'s '
                      'local disk.')
    stores[name] = _open(cache / name, stored)
  _print_table(stores)
  return stores


def _print_table(stores: Mapping[str, DomainStore]) -> None:
  header = ('domain', 'documents', 'train seqs', 'val seqs', 'train tokens')
  rows = [(s.name, s.meta['documents'], s.meta['train_sequences'], s.meta['val_sequences'],
           s.meta['tokens']) for s in stores.values()]
  width = max([len(header[0])] + [len(r[0]) for r in rows])
  say('\n'.join([f'{header[0]:<{width}}' + ''.join(f'{h:>14}' for h in header[1:])] +
                 [f'{r[0]:<{width}}' + ''.join(f'{v:>14,}' for v in r[1:]) for r in rows]))
