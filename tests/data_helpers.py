"""Small configs and corpora shared by the data tests (real text from the demo corpus)."""

import json
import pathlib

import ml_collections
import numpy as np

from autoscale_jax.configs import tiny
from autoscale_jax.data import sources, store, tokenizer
from autoscale_jax.pipeline.registry import prepare_data


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


def prepare(c: ml_collections.ConfigDict, workdir) -> dict[str, store.DomainStore]:
  """The token stores of config c, built exactly as the pipeline builds them."""
  return prepare_data(c, workdir)[1]


def get_tokenizer(c: ml_collections.ConfigDict, workdir) -> tokenizer.Tokenizer:
  """tokenizer.get_tokenizer as the pipeline calls it for the whole config c."""
  return tokenizer.get_tokenizer(c.data, workdir, family=c.model.family)


def news(n: int) -> list[str]:
  """The first n BBC news articles of the demo corpus (real text, a few kB each)."""
  return list(sources.iter_documents(domain('news', 'demo:news'), n))


# The loader tests' run: four news domains, 73 sequences in batches of 8 (the last one padded).
COUNTS, BATCH, SEED = [40, 13, 0, 20], 8, 5
LOADER_DOMAINS = ('w', 'x', 'y', 'z')


def write_loader_corpus(root) -> None:
  docs = news(40)
  for i, name in enumerate(LOADER_DOMAINS):
    lines = (json.dumps({'text': d}) + '\n' for d in docs[10 * i:10 * i + 10])
    (pathlib.Path(root) / f'{name}.jsonl').write_text(''.join(lines))


def loader_config(root) -> ml_collections.ConfigDict:
  """GPT-2 BPE stores of the corpus write_loader_corpus wrote under root."""
  return config(*(domain(n, f'files:{root}/{n}.jsonl') for n in LOADER_DOMAINS), seq_len=16,
                val_sequences=3)


class RecordingRows:
  """A store's train array that records which rows were read (to check process-local reads)."""

  def __init__(self, rows):
    self.rows, self.shape, self.read = rows, rows.shape, []

  def __getitem__(self, index):
    self.read.extend(np.asarray(index).tolist())
    return self.rows[index]
