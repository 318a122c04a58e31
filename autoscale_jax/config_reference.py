"""docs/config.md, the reference of every config field, generated from autoscale_jax/defaults.py.

  python -m autoscale_jax.config_reference docs/config.md

Fields and defaults come from walking defaults.get_config(), so none is missed; their meaning
from the comments beside (and just above) their assignments in get_config, in source order.
"""

import ast
import inspect
import io
import pathlib
import sys
import tokenize
from typing import Any

import ml_collections

from autoscale_jax import defaults

COMMAND = 'python -m autoscale_jax.config_reference docs/config.md'


def _path(target: ast.expr) -> str | None:
  """`c.model.dropout` -> 'model.dropout'; None for anything else."""
  parts = []
  while isinstance(target, ast.Attribute):
    parts.append(target.attr)
    target = target.value
  return '.'.join(reversed(parts)) if isinstance(target, ast.Name) and parts else None


def _meanings(source: str) -> dict[str, str]:
  """Dotted field path -> its comments, for every assignment in get_config (in source order)."""
  comments = {tok.start[0]: tok.string.lstrip('#').strip()
              for tok in tokenize.generate_tokens(io.StringIO(source).readline)
              if tok.type == tokenize.COMMENT}
  lines = source.splitlines()
  body = next(node for node in ast.parse(source).body
              if isinstance(node, ast.FunctionDef) and node.name == 'get_config').body
  meanings = {}
  for stmt in body:
    path = _path(stmt.targets[0]) if isinstance(stmt, ast.Assign) else None
    if path is None:
      continue
    above = stmt.lineno - 1
    while above > 0 and lines[above - 1].lstrip().startswith('#'):
      above -= 1
    text = [comments[n] for n in range(above + 1, stmt.end_lineno + 1) if n in comments]
    meanings[path] = ' '.join(t.strip('- ') for t in text)
  return meanings


def _leaves(config: ml_collections.ConfigDict, sections: set[str], prefix: str = ''):
  """(path, value) of every field, descending into the ConfigDicts that are sections."""
  for key, value in config.items():
    path = prefix + key
    if path in sections:
      yield from _leaves(value, sections, path + '.')
    else:
      yield path, value


def _format(value: Any) -> str:
  if isinstance(value, bool) or not isinstance(value, (int, tuple, ml_collections.ConfigDict)):
    return repr(value)
  if isinstance(value, int):
    return f'{value:_}' if abs(value) >= 10_000 else str(value)
  if isinstance(value, tuple):
    inner = ', '.join(_format(v) for v in value)
    return f'({inner},)' if len(value) == 1 else f'({inner})'
  return '{' + ', '.join(f'{k!r}: {_format(v)}' for k, v in value.items()) + '}'


def _cell(text: str) -> str:
  return text.replace('|', '\\|')


def render() -> str:
  """The whole of docs/config.md."""
  source = inspect.getsource(defaults)
  meanings = _meanings(source)
  # A ConfigDict is a section when get_config assigns fields inside it; otherwise it is one field
  # whose default is a dict (e.g. model.overrides, validate.baselines).
  sections = {path.rpartition('.')[0] for path in meanings} - {''}
  fields = dict(_leaves(defaults.get_config(), sections))
  missing = [path for path in fields if not meanings.get(path)]
  if missing:
    raise SystemExit(f'defaults.py: {", ".join(missing)} has no comment in get_config; say what '
                     'it means beside its assignment, then run: ' + COMMAND)
  order = {path: i for i, path in enumerate(meanings)}
  paragraphs = ast.get_docstring(ast.parse(source)).split('\n\n')[1:]  # after the summary line
  out = ['# Config reference', '',
         f'Generated from `autoscale_jax/defaults.py` by `{COMMAND}`; do not edit by hand.', '']
  out += [paragraph.replace('\n', ' ') + '\n' for paragraph in paragraphs]
  out += ['A config is a Python file whose `get_config()` starts from `defaults.get_config()`; the',
          'shipped ones are in `configs/`. Any field can be overridden on the command line, e.g.',
          '`--config.train.batch_size=64` or `--config.ddo.budgets=\'(1e6,4e6)\'`.']
  for section in [''] + sorted(sections, key=order.get):
    rows = sorted(((path, value) for path, value in fields.items()
                   if path.rpartition('.')[0] == section), key=lambda row: order[row[0]])
    title = section.rpartition('.')[2]
    blurb = meanings.get(section, '')
    out += ['', f'{"#" * (2 + section.count("."))} {f"`{section}`" if section else "Top level"}',
            '']
    if blurb and blurb.lower() != title.lower():
      out += [blurb[0].upper() + blurb[1:] + '.', '']
    if rows:
      out += ['| field | default | meaning |', '| --- | --- | --- |']
      out += [f'| `{path}` | `{_cell(_format(value))}` | {_cell(meanings[path])} |'
              for path, value in rows]
  return '\n'.join(out) + '\n'


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    raise SystemExit(f'usage: {COMMAND}')
  pathlib.Path(argv[1]).write_text(render())


if __name__ == '__main__':
  main(sys.argv)
