"""The benchmarks' committed run files: a workdir restored from them trains nothing again."""

import json
import pathlib
import sys

import pytest
from etils import epath

from autoscale_jax import pipeline
from autoscale_jax.configs import tiny
from autoscale_jax.pipeline import world

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / 'bench'))
import scale_study  # noqa: E402  pylint: disable=g-import-not-at-top


def _config():
  c = tiny.get_config()
  c.mode = 'compare'
  c.world = 'synthetic'
  c.compare.swarm_runs = 5
  c.compare.regmix_samples = 2000
  c.compare.regmix_top_k = 10
  return c


def test_a_workdir_restored_from_run_files_trains_nothing_and_answers_the_same(
    tmp_path, monkeypatch):
  first, second = epath.Path(tmp_path / 'first'), epath.Path(tmp_path / 'second')
  pipeline.dispatch(_config(), str(first))
  done = scale_study.finished_runs(first)
  assert len(done) > 20  # DDO, swarm, DoReMi and validation runs
  # As committed: through JSON.
  summary = json.loads(json.dumps({'run_files': scale_study.run_files(first, done)}))

  # A run already in the workdir is kept as it is, not overwritten.
  kept = sorted(done)[0]
  (second / 'runs' / kept).mkdir(parents=True)
  (second / 'runs' / kept / 'result.json').write_text('{"mine": 1}')
  scale_study.restore_runs(second, [summary])
  assert scale_study.finished_runs(second) == done
  assert json.loads((second / 'runs' / kept / 'result.json').read_text()) == {'mine': 1}
  (second / 'runs' / kept / 'result.json').write_text(
      (first / 'runs' / kept / 'result.json').read_text())

  def no_training(*args, **kwargs):
    raise AssertionError('a restored run was trained again')

  monkeypatch.setattr(world, 'result', no_training)
  pipeline.dispatch(_config(), str(second))  # every run is found; nothing trains
  a, b = (json.loads((w / 'compare' / '32768.json').read_text()) for w in (first, second))
  assert a['verdicts'] == b['verdicts']
  assert {m: r['weights'] for m, r in a['runs'].items()} == pytest.approx(
      {m: r['weights'] for m, r in b['runs'].items()})
