"""Validation runs, one per mixture and seed, turned into what a user decides on: for every
baseline the paired difference of the final objective (predicted minus baseline, seed s of both
sharing its initialization) with its interval and a verdict word, the tokens the predicted
mixture saves with a bootstrap interval over seeds, and the same paired comparison per domain.

The validation stage writes this into validation/<tokens>.json; the report upgrades files
written before seeds existed (one run per mixture) to the same form.
"""

import math
from collections.abc import Sequence

import numpy as np

from autoscale_jax.mixing import confidence

PREDICTED = 'predicted'  # the mixture under test; every other entry of 'runs' is a baseline


def run_label(name: str, seed_index: int, seeds: int) -> str:
  """A run's label in logs, plans and plots: its name, and its seed when there are several."""
  return name if seeds == 1 else f'{name} seed{seed_index}'


def interval_text(d: dict) -> str:
  """A difference's interval as the report and the log show it."""
  return ('1 seed: no interval' if d['low'] is None
          else f"[{d['low']:+.4g}, {d['high']:+.4g}]")


def seed_entry(result: dict, seed: int | None, downstream: dict | None = None) -> dict:
  """What the validation file keeps of one run's result.json (and of its downstream
  evaluation, registry.Experiment.downstream: each task's score and truncated requests)."""
  entry = {'seed': seed, 'fingerprint': result['fingerprint'], 'objective': result['objective'],
           'val_loss': result['val_loss'], 'val_loss_se': result.get('val_loss_se'),
           'val_ppl': result['val_ppl'],
           'curve': [{'tokens': e['tokens'], 'objective': e['objective']}
                     for e in result['evals']]}
  if downstream is not None:
    entry['downstream'] = downstream['scores']
    entry['downstream_truncated'] = {t: r.get('truncated') for t, r in
                                     downstream['tasks'].items()}
  return entry


def downstream(runs: dict[str, dict], reference: str) -> dict | None:
  """Per downstream task and mixture: the score's seed mean with its 95% interval and, against
  `reference` (seeds paired), the difference with its interval and verdict (higher is
  better); None when the runs were not evaluated downstream."""
  seeds = {name: r['seeds'] for name, r in runs.items()}
  if not all('downstream' in s for ss in seeds.values() for s in ss):
    return None
  tasks = list(next(iter(seeds.values()))[0]['downstream'])
  out = {}
  for task in tasks:
    scores = {name: [s['downstream'][task] for s in ss] for name, ss in seeds.items()}
    ref = scores.get(reference)
    out[task] = {name: {**confidence.mean_interval(v), 'vs_reference': None if ref is None or
                        name == reference else confidence.paired_difference(
                            v[:len(ref)], ref[:len(v)], higher_is_better=True).to_dict()}
                 for name, v in scores.items()}
  counts = {t: [(s.get('downstream_truncated') or {}).get(t) for ss in seeds.values()
                 for s in ss] for t in tasks}
  truncated = {t: None if any(n is None for n in c) else max(c) for t, c in counts.items()}
  return {'reference': reference, 'tasks': out, 'truncated': truncated}


def mixture_entry(weights: Sequence[float], seeds: list[dict]) -> dict:
  """One mixture's seeds and their means (objective, per-domain numbers, curve)."""
  domains = list(seeds[0]['val_loss'])
  points = min(len(s['curve']) for s in seeds)

  def mean_over_seeds(key: str) -> dict:
    return {d: float(np.mean([s[key][d] for s in seeds])) for d in domains}

  ses = [s.get('val_loss_se') for s in seeds]
  return {
      'weights': [float(w) for w in weights],
      'objective': float(np.mean([s['objective'] for s in seeds])),
      'val_loss': mean_over_seeds('val_loss'),
      'val_ppl': mean_over_seeds('val_ppl'),
      # The SE of one evaluation of each domain (averaged over seeds); None for old results.
      'val_loss_se': None if any(not s or s.get(domains[0]) is None for s in ses) else
                     {d: float(np.mean([s[d] for s in ses])) for d in domains},
      'curve': [{'tokens': seeds[0]['curve'][k]['tokens'],
                 'objective': float(np.mean([s['curve'][k]['objective'] for s in seeds]))}
                for k in range(points)],
      'seeds': seeds,
  }


def pair(candidate: dict, baseline: dict, domains: Sequence[str]) -> dict:
  """One mixture (a 'runs' entry) against another, seeds paired in order: the objective
  difference with its interval and verdict, its size relative to the baseline, tokens saved
  and the per-domain loss differences."""
  n = min(len(candidate['seeds']), len(baseline['seeds']))
  cand, base = candidate['seeds'][:n], baseline['seeds'][:n]
  points = min(len(s['curve']) for s in cand)
  tokens = [p['tokens'] for p in cand[0]['curve'][:points]]
  objective = confidence.paired_difference([s['objective'] for s in cand],
                                           [s['objective'] for s in base])
  saved = confidence.saved_interval(
      tokens, [[p['objective'] for p in s['curve'][:points]] for s in cand],
      [s['objective'] for s in base])
  return {
      'objective': objective.to_dict(),
      'relative': objective.mean / float(np.mean([s['objective'] for s in base])),
      'tokens_saved': saved.to_dict(),
      'domains': {d: confidence.paired_difference([s['val_loss'][d] for s in cand],
                                                  [s['val_loss'][d] for s in base]).to_dict()
                  for d in domains},
  }


def compare(runs: dict[str, dict], domains: Sequence[str]) -> dict[str, dict]:
  """The predicted mixture against every baseline."""
  return {name: pair(runs[PREDICTED], run, domains)
          for name, run in runs.items() if name != PREDICTED}


def recommend(validation: dict) -> dict:
  """The mixture to use at a validated target: among the mixtures not measurably worse than any
  baseline (seed-paired 95% intervals), the one with the lowest mean objective; with what it
  was measured against and, when the predicted mixture is measurably worse than a baseline,
  that baseline (a prediction that does harm is never recommended)."""
  runs = validation['runs']
  baselines = [n for n in runs if n != PREDICTED]

  def paired(a: str, b: str) -> confidence.Paired:
    n = min(len(runs[a]['seeds']), len(runs[b]['seeds']))
    return confidence.paired_difference(*([s['objective'] for s in runs[k]['seeds'][:n]]
                                          for k in (a, b)))

  def worse_than(name: str) -> list[tuple[str, dict]]:
    return [(other, d.to_dict()) for other in baselines if other != name
            for d in [paired(name, other)] if d.verdict == 'worse']

  losers = {name: worse_than(name) for name in runs}
  allowed = [n for n in runs if not losers[n]] or list(runs)
  best = min(allowed, key=lambda n: runs[n]['objective'])
  against = 'uniform' if 'uniform' in runs and best != 'uniform' else (
      PREDICTED if best != PREDICTED else next(iter(baselines), None))
  versus = None
  if against is not None:
    d = paired(best, against)
    scale = runs[against]['objective']
    versus = {'name': against, **d.to_dict(), 'relative': d.mean / scale,
              'relative_low': None if d.low is None else d.low / scale,
              'relative_high': None if d.high is None else d.high / scale}
  return {'target': validation['target'], 'mixture': best, 'weights': runs[best]['weights'],
          'objective': runs[best]['objective'], 'seeds': len(runs[best]['seeds']),
          'versus': versus, 'predicted_worse_than': [
              {'name': n, **d} for n, d in losers[PREDICTED]]}


def upgrade(validation: dict) -> dict:
  """A validation file in today's form; one written before seeds existed (one run per mixture,
  token perplexities) becomes one seed per mixture, compared like any other."""
  if 'verdicts' in validation:
    return validation
  runs = {}
  for name, r in validation['runs'].items():
    seed = {'seed': None, 'fingerprint': r['fingerprint'], 'objective': r['objective'],
            'val_ppl': r['val_ppl'], 'val_loss': {d: math.log(p) for d, p in r['val_ppl'].items()},
            'val_loss_se': None, 'curve': r['curve']}
    runs[name] = mixture_entry(r['weights'], [seed])
  return {**validation, 'runs': runs, 'seeds': [None],
          'verdicts': compare(runs, validation['domains'])}
