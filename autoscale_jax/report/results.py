"""What a workdir holds, read once for every section of the report (json files only)."""

import dataclasses
import json

import numpy as np
from etils import epath

from autoscale_jax.errors import ConfigError
from autoscale_jax.report import verdicts


def _load(path: epath.Path):
  return json.loads(path.read_text())


@dataclasses.dataclass
class Results:
  """The workdir's results; `folder` is where the report and its plots go."""
  workdir: epath.Path
  budgets: list[dict]  # per DDO budget: 'plan', and 'fits' and 'optimum' once done
  predictions: dict | None
  model: dict | None
  validations: list[dict]  # per target, in order, in today's form (verdicts.upgrade)
  checks: list[dict]  # per check budget: 'plan', and 'check' once done
  comparisons: list[dict]  # mode=compare: per target, every method's runs and verdicts

  @property
  def folder(self) -> epath.Path:
    return self.workdir / 'report'

  @property
  def domains(self) -> list[str]:
    return (self.budgets[0]['plan'] if self.budgets else self.comparisons[0])['domains']

  def curve(self, fingerprint: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(tokens trained, training loss) at each logged step of one run; None before its first
    log line. Tokens are steps x the run's batch size x seq_len (its config.json)."""
    run = self.workdir / 'runs' / fingerprint
    metrics, config = run / 'metrics.jsonl', run / 'config.json'
    if not (metrics.exists() and config.exists()):
      return None
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    points = [(r['step'], r['loss']) for r in records if 'loss' in r and 'step' in r]
    if not points:
      return None
    c = _load(config)['config']
    per_step = int(c['train']['batch_size']) * int(c['data']['seq_len'])
    steps, losses = np.array(points, np.float64).T
    return steps * per_step, losses


def load(workdir: epath.Path) -> Results:
  """Reads every result file of `workdir`; at least one DDO budget must have started."""
  budgets = []
  for path in _started(workdir / 'budgets'):
    entry = {'plan': _load(path / 'plan.json')}
    for name in ('fits', 'optimum'):
      if (path / f'{name}.json').exists():
        entry[name] = _load(path / f'{name}.json')
    budgets.append(entry)
  compare_dir = workdir / 'compare'
  comparisons = sorted((_load(p) for p in compare_dir.glob('*.json') if p.stem.isdigit()),
                       key=lambda c: c['target']) if compare_dir.exists() else []
  if not budgets and not comparisons:
    raise ConfigError(f'{workdir} holds no DDO or compare results (budgets/*/plan.json, '
                      'compare/*.json); run --config.mode=ddo, autoscale or compare there first, '
                      'or fix --workdir.')
  predictions_path = workdir / 'autoscale' / 'predictions.json'
  predictions = model = None
  if predictions_path.exists():
    predictions = _load(predictions_path)
    model = _load(workdir / 'autoscale' / 'model.json')
  validation_dir = workdir / 'validation'
  validations = sorted((verdicts.upgrade(_load(p)) for p in validation_dir.glob('*.json')),
                       key=lambda v: v['target']) if validation_dir.exists() else []
  checks = []
  for path in _started(workdir / 'checks'):
    entry = {'plan': _load(path / 'plan.json')}
    if (path / 'check.json').exists():
      entry['check'] = _load(path / 'check.json')
    checks.append(entry)
  return Results(workdir, budgets, predictions, model, validations, checks, comparisons)


def _started(folder: epath.Path) -> list[epath.Path]:
  """The budget folders under `folder` whose plan is written, smallest budget first."""
  if not folder.exists():
    return []
  return sorted((p for p in folder.iterdir() if (p / 'plan.json').exists()),
                key=lambda p: int(p.name))
