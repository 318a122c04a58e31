"""The AutoScale pipeline end to end on the tiny config: artifacts, seeds and verdicts, the check
budget, kill and resume, report rebuild, the dry-run plan and the workdir lock."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from autoscale_jax import pipeline
from autoscale_jax.configs import gpt2_large, tiny
from autoscale_jax.errors import ConfigError
from autoscale_jax.mixing import PowerLaw
from autoscale_jax.pipeline import plan
from kill_harness import kill_when, start_pipeline
from test_config_fields import missing_reads

# Three demo domains: 7 DDO runs per budget and at the check budget between them, then 8
# validation runs (predicted + 3 baselines, 2 seeds each).
CONFIG_FILE = '''
import ml_collections

from autoscale_jax.configs import tiny

def get_config():
  c = tiny.get_config()
  c.mode = 'autoscale'
  c.data.domains = tuple(d for d in c.data.domains if d.name != 'news')
  c.data.max_docs = 150
  c.data.cache_dir = {cache!r}  # token stores shared by the test's workdirs
  # A narrower GPT-2 than tiny's: the test is about the pipeline's bookkeeping, not the model.
  c.model.overrides = ml_collections.ConfigDict({{'d_model': 32, 'num_heads': 2}})
  c.ddo.budgets = (6_144, 12_288)
  c.ddo.check_budgets = (9_216,)
  c.predict.targets = (24_576,)
  c.validate.baselines = ml_collections.ConfigDict(
      {{'uniform': 'uniform', 'code_heavy': {{'code': 0.6, 'speeches': 0.2, 'plays': 0.2}},
        'reuse': 'reuse'}})
  c.validate.seeds = 2
  return c
'''


def _config_file(tmp_path: pathlib.Path) -> pathlib.Path:
  path = tmp_path / 'config.py'
  path.write_text(CONFIG_FILE.format(cache=str(tmp_path / 'cache')))
  return path


def _config(path: pathlib.Path):
  namespace = {}
  exec(path.read_text(), namespace)  # pylint: disable=exec-used
  return namespace['get_config']()


def _results(workdir: pathlib.Path) -> dict[str, tuple[bytes, int]]:
  return {p.parent.name: (p.read_bytes(), p.stat().st_mtime_ns)
          for p in (workdir / 'runs').glob('*/result.json')}


def _outputs(workdir: pathlib.Path) -> dict[str, object]:
  """Every result file of a workdir, minus what legitimately differs between sessions."""
  out = {}
  for path in sorted(workdir.glob('**/*.json')):
    rel = str(path.relative_to(workdir))
    if rel.startswith(('data/', 'tokenizer/')) or rel.endswith(('config.json', 'meta.json')):
      continue
    obj = json.loads(path.read_text())
    if rel.endswith('result.json'):
      obj.pop('wall_s_last_session')
    out[rel] = obj
  for path in sorted((workdir / 'runs').glob('*/metrics.jsonl')):
    out[str(path.relative_to(workdir))] = [
        {k: v for k, v in json.loads(l).items() if k in ('step', 'loss', 'objective', 'lr')}
        for l in path.read_text().splitlines()]
  return out


def _checkpointed(run: pathlib.Path) -> bool:
  return any(p.name.isdigit() for p in (run / 'checkpoints').glob('*'))


def _inside_first_budget(workdir: pathlib.Path) -> bool:
  """Budget 1 is under way: three of its runs finished (sequential), or its stack checkpointed."""
  if len(_results(workdir)) >= 3:
    return True
  return any(_checkpointed(stack) for stack in (workdir / 'runs').glob('stack-*'))


def _validation_checkpointed(workdir: pathlib.Path) -> bool:
  """Predictions are out and an unfinished run (a validation run, then) has a checkpoint."""
  if not (workdir / 'autoscale' / 'predictions.json').exists():
    return False
  return any(not (run / 'result.json').exists() and _checkpointed(run)
             for run in (workdir / 'runs').iterdir())


def test_autoscale_end_to_end_survives_kills_and_rebuilds_its_report(tmp_path):
  config_path = _config_file(tmp_path)
  config = _config(config_path)

  # The reference: one uninterrupted pipeline.
  reference = tmp_path / 'reference'
  with missing_reads() as missing:  # and every config field it reads is defined
    pipeline.dispatch(config, str(reference))
  assert not missing, f'the pipeline read undefined config fields {missing}'

  # The same pipeline, SIGKILLed in the middle of the first DDO budget (three runs done when
  # they run one after another, a checkpoint written when they are stacked) and again during a
  # validation run (between checkpoints), then finished.
  workdir, log = tmp_path / 'work', tmp_path / 'pipeline.log'
  proc = start_pipeline(config_path, workdir, log)
  kill_when(proc, lambda: _inside_first_budget(workdir), 'budget 1 under way', log)
  before = _results(workdir)
  assert len(before) < 7, f'the kill should land inside budget 1: {len(before)} runs done'
  assert not (workdir / 'budgets' / '6144' / 'optimum.json').exists()
  assert (workdir / 'LOCK').exists()  # left by the killed process: the rerun must take it over

  proc = start_pipeline(config_path, workdir, log)
  kill_when(proc, lambda: _validation_checkpointed(workdir), 'a validation run checkpointed',
             log)
  middle = _results(workdir)
  assert {k: middle[k] for k in before} == before  # nothing finished was trained again
  assert 14 <= len(middle) < 29 and not (workdir / 'validation').exists()

  pipeline.dispatch(config, str(workdir))
  after = _results(workdir)
  assert {k: after[k] for k in middle} == middle
  assert len(after) == 7 + 7 + 7 + 4 * 2
  assert not (workdir / 'LOCK').exists()
  # Bitwise the same results, curves and report as without the kills.
  assert _outputs(workdir) == _outputs(reference)
  strip = lambda text: text.split('\n', 3)[3]  # noqa: E731  (line 3 names the workdir)
  assert (strip((workdir / 'report' / 'report.md').read_text())
          == strip((reference / 'report' / 'report.md').read_text()))

  # Every artifact, consistent with the runs on disk.
  names = ['code', 'speeches', 'plays']
  seq_len = config.data.seq_len
  for budget in (6144, 12288):
    folder = workdir / 'budgets' / str(budget)
    plan = json.loads((folder / 'plan.json').read_text())
    fits = json.loads((folder / 'fits.json').read_text())
    optimum = json.loads((folder / 'optimum.json').read_text())
    assert plan['domains'] == names and len(plan['runs']) == 7
    objectives = {}
    for run in plan['runs']:
      result = json.loads((workdir / 'runs' / run['fingerprint'] / 'result.json').read_text())
      # Each run trained exactly the requested tokens of each domain.
      assert result['trained_tokens'] == [c * seq_len for c in run['counts']]
      assert result['requested_sequences'] == run['counts']
      objectives[run['name']] = result['objective']
    base = objectives['base']
    for i, name in enumerate(names):
      law = PowerLaw.from_dict(fits['fits'][i])
      x = np.array(law.x)
      # The fitted points are the measured objective ratios of the domain's runs.
      measured = {1.0: base / base, 0.2: objectives[f'{name} x0.2'] / base,
                  3.0: objectives[f'{name} x3'] / base}
      np.testing.assert_allclose(law(x) + np.array(law.residuals),
                                 [measured[min(measured, key=lambda f: abs(f - v))] for v in x],
                                 rtol=1e-9)
    weights = np.array(optimum['weights'])
    np.testing.assert_allclose(weights.sum(), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.array(optimum['quantities']).sum(), budget, rtol=1e-9)
    multipliers = np.array(optimum['multipliers'])
    assert np.all(multipliers >= 0.2 - 1e-9) and np.all(multipliers <= 3.0 + 1e-9)

  predictions = json.loads((workdir / 'autoscale' / 'predictions.json').read_text())
  target = predictions['targets']['24576']
  np.testing.assert_allclose(np.sum(target['quantities']), 24576, rtol=1e-9)
  assert all(lo <= hi for lo, hi in zip(target['low'], target['high']))
  assert json.loads((workdir / 'autoscale' / 'model.json').read_text())['domains'] == names

  validation = json.loads((workdir / 'validation' / '24576.json').read_text())
  assert set(validation['runs']) == {'predicted', 'uniform', 'code_heavy', 'reuse'}
  assert validation['seeds'] == [0, 1]
  np.testing.assert_allclose(validation['runs']['predicted']['weights'], target['weights'])
  largest = json.loads((workdir / 'budgets' / '12288' / 'optimum.json').read_text())
  np.testing.assert_allclose(validation['runs']['reuse']['weights'], largest['weights'])
  finals = {}
  for name, run in validation['runs'].items():
    assert [s['seed'] for s in run['seeds']] == [0, 1]
    finals[name] = []
    for s in run['seeds']:
      result = json.loads((workdir / 'runs' / s['fingerprint'] / 'result.json').read_text())
      assert s['objective'] == result['objective']
      assert s['curve'][-1]['tokens'] == 24576 and len(s['curve']) >= 3
      finals[name].append(result['objective'])
  for name, verdict in validation['verdicts'].items():
    d = np.array(finals['predicted']) - np.array(finals[name])  # paired by seed
    half = stats.t.ppf(0.975, 1) * d.std(ddof=1) / np.sqrt(2)
    got = verdict['objective']
    np.testing.assert_allclose([got['mean'], got['low'], got['high']],
                               [d.mean(), d.mean() - half, d.mean() + half], rtol=1e-9)
    assert got['verdict'] == ('better' if d.mean() + half < 0 else
                              'worse' if d.mean() - half > 0 else 'inconclusive')
    assert set(verdict['domains']) == set(names)

  # The check budget: its own DDO, never fed to the fit, compared with the prediction there.
  check = json.loads((workdir / 'checks' / '9216' / 'check.json').read_text())
  ddo_there = json.loads((workdir / 'checks' / '9216' / 'optimum.json').read_text())
  assert check['kind'] == 'interpolation' and check['nearest_below']['budget'] == 6144
  np.testing.assert_allclose(check['l1_predicted'], np.abs(
      np.array(predictions['checks']['9216']) - ddo_there['weights']).sum(), rtol=1e-12)
  assert predictions['budgets'] == [6144, 12288]  # the check budget is not among the fitted

  report = workdir / 'report' / 'report.md'
  text = report.read_text()
  for heading in ('## Verdicts', '## DDO budgets', '## AutoScale prediction', '## Check budgets',
                  '## Validation', '## Training curves'):
    assert heading in text
  assert text.index('## Verdicts') < text.index('## DDO budgets')  # the answer comes first
  assert 'What the answer cost: the DDO proxy runs trained' in text
  for png in ('fits.png', 'weights.png', 'validation.png', 'curves.png'):
    data = (workdir / 'report' / png).read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 10_000
    assert f']({png})' in text

  # Downstream evaluation turned on for the finished workdir: every validation run is scored
  # from its checkpoint, nothing is retrained, and a rerun evaluates nothing again.
  config.eval.harness_tasks, config.eval.harness_limit = ('autoscale_bbc_topic',), 4
  pipeline.dispatch(config, str(workdir))
  assert _results(workdir) == after
  validation = json.loads((workdir / 'validation' / '24576.json').read_text())
  scores = {}
  for name, run in validation['runs'].items():
    scores[name] = []
    for s in run['seeds']:
      (path,) = (workdir / 'runs' / s['fingerprint']).glob('downstream-*.json')
      record = json.loads(path.read_text())
      assert record['tasks']['autoscale_bbc_topic']['examples'] == 4
      assert s['downstream'] == record['scores'] == {
          'autoscale_bbc_topic': record['tasks']['autoscale_bbc_topic']['acc']}
      scores[name].append(record['scores']['autoscale_bbc_topic'])
  block = validation['downstream']['tasks']['autoscale_bbc_topic']
  for name, values in scores.items():
    assert block[name]['mean'] == pytest.approx(np.mean(values))
    if name != 'uniform':
      d = np.array(values) - np.array(scores['uniform'])
      assert block[name]['vs_reference']['mean'] == pytest.approx(d.mean())
  evaluated = {p: p.stat().st_mtime_ns for p in (workdir / 'runs').glob('*/downstream-*.json')}
  assert len(evaluated) == 8
  pipeline.dispatch(config, str(workdir))
  assert {p: p.stat().st_mtime_ns for p in evaluated} == evaluated
  text = report.read_text()
  assert '| mixture | autoscale_bbc_topic |' in text and 'left-truncated' in text
  config.eval.harness_tasks = ()

  # mode=report rebuilds the same report from the workdir alone.
  for p in (workdir / 'report').iterdir():
    p.unlink()
  config.mode = 'report'
  pipeline.dispatch(config, str(workdir))
  assert report.read_text() == text
  assert (workdir / 'report' / 'weights.png').exists()
  assert _results(workdir) == after


def test_dry_run_prints_the_full_plan_of_the_paper_config():
  lines = []
  plan.dry_run(gpt2_large.get_config(), lines.append)  # no data needed, nothing trained
  runs = [l.split() for l in lines if l.startswith(('ddo ', 'check ', 'validate '))]
  # 7 domains: 2 x 15 DDO runs, 15 at the 0.6B check budget, then predicted + uniform + LLaMA +
  # reuse at the 3B validation target, 3 seeds each.
  assert sum(r[:2] == ['ddo', '300,000,000'] for r in runs) == 15
  assert sum(r[:2] == ['ddo', '1,200,000,000'] for r in runs) == 15
  assert sum(r[:2] == ['check', '600,000,000'] for r in runs) == 15
  assert sum(r[0] == 'validate' for r in runs) == 12
  assert sum(r[2] == 'reuse' for r in runs) == 3
  base = next(r for r in runs if r[:3] == ['ddo', '300,000,000', 'base'])
  per_domain = [int(v.replace(',', '')) for v in base[-7:]]
  assert per_domain == [per_domain[0]] * 7 and abs(sum(per_domain) - 300_000_000) < 7 * 1024
  assert int(base[4].replace(',', '')) == -(-sum(per_domain) // (256 * 1024))  # steps
  llama = next(r for r in runs if r[2] == 'llama')
  cc = int(llama[-7].replace(',', ''))
  assert abs(cc - 0.67 * 3_000_000_000) <= 1024
  assert lines[0].startswith('Plan for mode=autoscale: gpt2-large, 7 domains, seq_len 1024')
  assert lines[-1].startswith('57 runs')


def test_a_second_pipeline_on_the_same_workdir_is_refused(tmp_path):
  holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
  try:
    (tmp_path / 'LOCK').write_text(json.dumps(
        {'host': os.uname().nodename, 'pid': holder.pid, 'since': 'now'}))
    config = tiny.get_config()
    config.mode = 'prepare'
    with pytest.raises(ConfigError, match=rf'in use by another pipeline .*pid {holder.pid}'):
      pipeline.dispatch(config, str(tmp_path))
    assert (tmp_path / 'LOCK').exists()  # the holder's lock is left alone
  finally:
    holder.kill()
    holder.wait()
