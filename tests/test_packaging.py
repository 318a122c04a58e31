"""The package as users install it: configs by name, the wheel's contents, ranges vs the lock."""

import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement

from autoscale_jax import config_files
from autoscale_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (REPO / 'configs').glob('*.py') if p.stem != '__init__')


def test_bare_names_resolve_to_the_shipped_files_and_paths_stay_as_given():
  assert list(config_files.names()) == SHIPPED
  path, _, arg = config_files.resolve('gpt2_large:gs://bucket/x').partition('.py:')
  assert pathlib.Path(f'{path}.py').samefile(REPO / 'configs' / 'gpt2_large.py')
  assert arg == 'gs://bucket/x'
  given = str(REPO / 'configs' / 'tiny.py')
  assert config_files.resolve(given) == given
  assert config_files.resolve(f'{given}:x') == f'{given}:x'


@pytest.mark.parametrize('spec', ['gpt3', 'configs/gpt3.py', 'gpt3:gs://bucket/x'])
def test_unknown_config_is_one_sentence_listing_the_shipped_names(spec):
  with pytest.raises(UserError,
                     match=r'gpt3.*bert_base, bert_tiny, demo, gpt2_large, gpt2_small, tiny'):
    config_files.resolve(spec)


def test_main_takes_a_bare_name_from_any_directory(tmp_path):
  run = lambda *args: subprocess.run([sys.executable, '-m', 'autoscale_jax.main', *args],
                                     cwd=tmp_path, capture_output=True, text=True, timeout=120)
  out = run('--config=tiny', '--config.dry_run=True', f'--workdir={tmp_path}/w')
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'gpt2-tiny' in out.stdout  # the plan's header names the model
  out = run('--config=gpt3', '--config.dry_run=True')
  assert out.returncode == 2
  assert out.stderr.strip().splitlines() == [
      'error: --config=gpt3: \'gpt3\' is not a shipped config (bert_base, bert_tiny, demo, '
      'gpt2_large, gpt2_small, tiny); give one of those names or the path of a config file.']


def test_wheel_ships_every_module_and_the_configs_inside_the_package(tmp_path):
  pytest.importorskip('setuptools.command.bdist_wheel',
                      reason='building a wheel needs setuptools >= 70.1 (the test extra has it)')
  src = tmp_path / 'src'  # a copy, so the build leaves nothing in the checkout
  for name in ('autoscale_jax', 'configs'):
    shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns('__pycache__'))
  for name in ('pyproject.toml', 'setup.py', 'README.md'):
    shutil.copy(REPO / name, src)
  subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
                  '-w', str(tmp_path / 'dist'), str(src)], check=True, capture_output=True,
                 timeout=300)
  wheel, = (tmp_path / 'dist').glob('autoscale_jax-*.whl')
  names = set(zipfile.ZipFile(wheel).namelist())
  for module in sorted((REPO / 'autoscale_jax').rglob('*.py')):
    path = module.relative_to(REPO).as_posix()
    assert path in names, (f'{path} is not in the wheel: add its package to [tool.setuptools] '
                           'packages in pyproject.toml')
  for name in SHIPPED:
    assert f'autoscale_jax/configs/{name}.py' in names
  assert not any(n.startswith('configs/') for n in names)  # no top-level package `configs`
  meta = next(n for n in names if n.endswith('.dist-info/entry_points.txt'))
  assert 'autoscale-jax = autoscale_jax.main:run' in zipfile.ZipFile(wheel).read(meta).decode()


def test_setup_py_is_a_shim_that_reads_pyproject():
  """`python setup.py --version` answers from pyproject.toml: setup.py writes no metadata."""
  version = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']['version']
  out = subprocess.run([sys.executable, 'setup.py', '--version'], cwd=REPO, capture_output=True,
                       text=True, timeout=120, check=True)
  assert out.stdout.strip().splitlines()[-1] == version
  assert 'setuptools.setup()' in (REPO / 'setup.py').read_text()  # no arguments: no metadata


def _lock() -> dict[str, str]:
  lines = (REPO / 'requirements.txt').read_text().splitlines()
  pins = [l.split('==') for l in lines if l and not l.startswith('#')]
  return {name.lower().replace('_', '-'): version for name, version in pins}


def test_dependency_ranges_hold_the_locked_versions():
  """pyproject.toml gives users ranges; requirements.txt, the lock CI tests, must lie inside."""
  project = tomllib.loads((REPO / 'pyproject.toml').read_text())['project']
  lock = _lock()
  extras = project['optional-dependencies']
  ci = project['dependencies'] + extras['test'] + extras['demo'] + extras['tfds'] + extras['tpu']
  for line in ci:
    req = Requirement(line)
    if req.name == 'autoscale_jax':
      continue
    assert req.specifier and '==' not in str(req.specifier), f'{line}: give a range, not a pin'
    name = req.name.lower().replace('_', '-')
    assert name in lock, f'{req.name} is not in requirements.txt; pin the tested version there'
    assert req.specifier.contains(lock[name]), f'the lock\'s {name}=={lock[name]} is outside {line}'
