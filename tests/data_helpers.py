"""Small configs and corpora shared by the data tests (real text from the demo corpus)."""

import os
import sys

import ml_collections

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'configs'))
import tiny  # noqa: E402  pylint: disable=g-import-not-at-top

from autoscale_jax.data import sources  # noqa: E402


def domain(name: str, source: str, text_key: str = 'text', **extra) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(name=name, source=source, text_key=text_key, **extra))


def config(*domains, family: str = 'gpt2', kind: str = 'gpt2', seq_len: int = 16,
           val_sequences: int = 2, max_docs: int = 0, vocab_size: int = 300,
           train_chars: int = 20_000) -> ml_collections.ConfigDict:
  """configs/tiny.py with the given domains and a small, fast data section."""
  c = tiny.get_config()
  c.model.family = family
  c.data.domains = tuple(domains)
  c.data.seq_len, c.data.val_sequences, c.data.max_docs = seq_len, val_sequences, max_docs
  c.data.tokenizer.kind, c.data.tokenizer.vocab_size = kind, vocab_size
  c.data.tokenizer.train_chars = train_chars
  return c


def news(n: int) -> list[str]:
  """The first n BBC news articles of the demo corpus (real text, a few kB each)."""
  return list(sources.iter_documents(domain('news', 'demo:news'), n))
