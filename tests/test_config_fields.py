"""Every config field the code reads is defined in defaults.py, so every shipped config has it and
`--config.section.field=...` can set it. A read of an undefined field through ConfigDict.get
would silently fall back to a default that no reference documents; `missing_reads` records
those, and the tests run real code paths under it (every shipped config's plan here, the whole
tiny pipeline in test_pipeline.py)."""

import contextlib
import importlib
from collections.abc import Iterator
from unittest import mock

import ml_collections
import pytest

from autoscale_jax import config_files, defaults, pipeline


@contextlib.contextmanager
def missing_reads() -> Iterator[list[str]]:
  """Records the keys of every ConfigDict.get that finds no such field."""
  missing: list[str] = []
  real_get = ml_collections.ConfigDict.get

  def get(self, key, default=None):
    if key not in self:
      missing.append(key)
    return real_get(self, key, default)

  with mock.patch.object(ml_collections.ConfigDict, 'get', get):
    yield missing


def _leaves(config: ml_collections.ConfigDict, prefix: str = '') -> set[str]:
  out = set()
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict) and key not in ('overrides',
                                                                     'objective_weights',
                                                                     'baselines'):
      out |= _leaves(value, f'{prefix}{key}.')
    else:
      out.add(prefix + key)
  return out


@pytest.mark.parametrize('name', config_files.names())
def test_shipped_configs_define_exactly_the_default_fields(name):
  config = importlib.import_module(f'autoscale_jax.configs.{name}').get_config()
  assert _leaves(config) == _leaves(defaults.get_config())


@pytest.mark.parametrize('mode', [m for m in pipeline.MODES if m != 'report'])
@pytest.mark.parametrize('name', config_files.names())
def test_plans_read_only_defined_fields(name, mode, capsys):
  config = importlib.import_module(f'autoscale_jax.configs.{name}').get_config()
  config.mode, config.dry_run = mode, True
  with missing_reads() as missing:
    pipeline.dispatch(config, '/nonexistent/workdir')  # a plan touches no workdir
  assert not missing, f'{name} mode={mode} read undefined config fields {missing}'
  assert 'Plan for mode=' in capsys.readouterr().out


def test_the_recorder_sees_an_undefined_field():
  config = defaults.get_config()
  with missing_reads() as missing:
    assert config.train.get('no_such_field', 3) == 3
    assert config.train.get('lr') == config.train.lr
  assert missing == ['no_such_field']
