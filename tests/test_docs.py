"""docs/: the config reference is what defaults.py generates; links stay inside the repository."""

import importlib.util
import pathlib
import re

import pytest

from autoscale_jax import config_reference

REPO = pathlib.Path(__file__).resolve().parents[1]

DEFAULTS = '''"""Fields.

The defaults.
"""

import ml_collections


def get_config():
  c = ml_collections.ConfigDict()
  # --- training ---
  c.train = ml_collections.ConfigDict()
  # Peak learning rate,
  c.train.lr = 3e-3  # after warmup.
  c.train.b1 = 0.9{b1_comment}
  return c
'''


def _module(path: pathlib.Path, source: str):
  path.write_text(source)
  spec = importlib.util.spec_from_file_location(path.stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_config_reference_is_up_to_date():
  if (REPO / 'docs' / 'config.md').read_text() != config_reference.render():
    pytest.fail(f'docs/config.md is out of date; run: {config_reference.COMMAND}', pytrace=False)


def test_every_field_needs_a_comment_which_becomes_its_meaning(tmp_path, monkeypatch):
  bare = _module(tmp_path / 'bare.py', DEFAULTS.format(b1_comment=''))
  monkeypatch.setattr(config_reference, 'defaults', bare)
  with pytest.raises(SystemExit, match=r'^defaults.py: train.b1 has no comment'):
    config_reference.render()
  documented = _module(tmp_path / 'documented.py', DEFAULTS.format(b1_comment='  # Adam beta1'))
  monkeypatch.setattr(config_reference, 'defaults', documented)
  text = config_reference.render()
  assert '## `train`\n\nTraining.\n' in text
  assert '| `train.lr` | `0.003` | Peak learning rate, after warmup. |' in text
  assert '| `train.b1` | `0.9` | Adam beta1 |' in text


def test_relative_links_of_the_readmes_and_docs_exist():
  pages = [REPO / 'README.md', REPO / 'launch' / 'README.md', *(REPO / 'docs').glob('*.md')]
  for page in pages:
    text = page.read_text()
    assert '../shared' not in text, f'{page.name} points outside the repository'
    for target in re.findall(r'\]\(([^)#:]+)(?:#[^)]*)?\)', text):
      assert (page.parent / target).exists(), f'{page.relative_to(REPO)} links to missing {target}'
