"""What to do, first in the report: one recommendation per target, what the proxies predicted
before any target run (the policy's move and each mixture's predicted objective), and, once
validated, the measured gain beside the predicted one."""

from collections.abc import Sequence

from autoscale_jax.report.results import Results
from autoscale_jax.report.tables import table, tokens
from autoscale_jax.report.verdicts import recommend


def _pct(d: dict, scale: float = 1.0) -> str:
  return (f"{100 * d['point'] / scale:+.2f}% [{100 * d['low'] / scale:+.2f}%, "
          f"{100 * d['high'] / scale:+.2f}%]")


def _weights_text(names: Sequence[str], weights: Sequence[float]) -> str:
  return ', '.join(f'{n} {w:.3f}' for n, w in zip(names, weights))


def predicted_gain(predictions: dict) -> dict | None:
  """The recommended mixture's predicted gain over uniform at the largest DDO budget, as a share
  of uniform's predicted objective (point and interval); None for results of older versions."""
  g = predictions.get('gains')
  if not g or 'uniform' not in next(iter(g['budgets'].values()))['gain_over']:
    return None
  last = g['budgets'][max(g['budgets'], key=int)]
  scale = last['ratios']['uniform']['point']
  return {'budget': max(int(b) for b in g['budgets']), 'level': g['level'],
          **{k: v / scale for k, v in last['gain_over']['uniform'].items()}}


def recommendation(results: Results) -> list[str]:
  """One line per target, first in the report: the mixture to use, the evidence, its interval."""
  p = results.predictions
  if p is None:
    return []
  names, policy = p['domains'], p.get('policy', {'name': 'plain'})
  validated = {int(v['target']): v for v in results.validations}
  gain = predicted_gain(p)
  out = []
  for t, entry in sorted(p['targets'].items(), key=lambda kv: int(kv[0])):
    head = f'**At {tokens(int(t))} tokens ({int(t):,})**: use '
    if int(t) in validated:
      r = recommend(validated[int(t)])
      w = _weights_text(names, r['weights'])
      line = head + f"**{r['mixture']}** ({w}), the best of the validated mixtures not " \
          f"measurably worse than any baseline ({r['seeds']} seed{'s' * (r['seeds'] > 1)})"
      if r['versus']:
        v = r['versus']
        span = ('' if v['low'] is None else f", 95% [{100 * v['relative_low']:+.2f}%, "
                f"{100 * v['relative_high']:+.2f}%]")
        line += f"; against {v['name']}: {100 * v['relative']:+.2f}%{span}, {v['verdict']}"
      for worse in r['predicted_worse_than']:
        line += (f"; the predicted mixture is measurably **worse** than {worse['name']} "
                 f"({worse['mean']:+.4g}, 95% [{worse['low']:+.4g}, {worse['high']:+.4g}]) and "
                 'is not recommended')
      if gain is not None and int(t) == int(p['gains']['target']):
        line += (f"; the proxies had predicted the prediction's gain over uniform at "
                 f"{tokens(gain['budget'])} tokens as {_pct(gain)} "
                 f"({int(round(100 * gain['level']))}%)")
      out.append(line + '.')
      continue
    if policy['name'] == 'conservative' and not policy['evidence']:
      out.append(head + f"**{policy['prior']}** ({_weights_text(names, policy['prior_weights'])})"
                 f": the proxies show no mixture measurably better than {policy['prior']} (not "
                 'validated).')
      continue
    line = head + f"the {'conservative' if policy['name'] == 'conservative' else 'AutoScale'} " \
        f"prediction ({_weights_text(names, entry['weights'])}), not validated"
    if policy['name'] == 'conservative':
      line += (f"; {100 * policy['fraction']:.0f}% of the way from {policy['prior']} to the DDO "
               f"answer at {tokens(policy['budget'])}, where the fits' lower bound on the gain is "
               f"{policy['lower']:+.4f} (objective ratio)")
    if gain is not None:
      line += (f"; predicted gain over uniform at {tokens(gain['budget'])} tokens "
               f"{_pct(gain)} ({int(round(100 * gain['level']))}% interval)")
    out.append(line + '.')
  return ['## Recommendation', '', *(f'- {line}' for line in out), '']


def _gains(predictions: dict) -> list[str]:
  """What the proxies expect before any target run: each mixture's predicted objective ratio at
  every DDO budget, and the recommended mixture's gain over each other."""
  g = predictions.get('gains')
  if not g:
    return []
  level = int(round(100 * g['level']))
  rows, outside = [], {}
  for b, block in sorted(g['budgets'].items(), key=lambda kv: int(kv[0])):
    order = ['recommended', 'uniform', 'natural']
    for name, r in sorted(block['ratios'].items(), key=lambda kv: order.index(kv[0])):
      gain = block['gain_over'].get(name)
      far = block.get('extrapolated', {}).get(name)  # absent from results of older versions
      if far:
        outside.setdefault(name, set()).update(far)
      rows.append([tokens(int(b)), name + ' *' * bool(far),
                   f"{r['point']:.4f} [{r['low']:.4f}, {r['high']:.4f}]",
                   '' if gain is None else _pct(gain, block['ratios'][name]['point'])])
  note = (['', '\\* Outside the factors the DDO tested, so the fitted laws are extrapolated there '
           'and the ratio is a guess beyond the data: ' + '; '.join(
               f"{name} ({', '.join(sorted(domains))})" for name, domains in outside.items())
           + '.'] if outside else [])
  return [f"Predicted before any target run: the fitted DDO model's objective ratio (to each "
          f"budget's base run; lower is better, {level}% bootstrap intervals) of the mixture "
          f"recommended for {tokens(g['target'])} and of the baselines, and the recommended "
          "mixture's gain over each (a share of that baseline's ratio):", '',
          *table(['DDO budget', 'mixture', 'objective ratio', 'recommended gains'], rows), *note]


def _policy(predictions: dict) -> list[str]:
  p = predictions.get('policy')
  if not p or p['name'] != 'conservative':
    return []
  moved = (f"moved {100 * p['fraction']:.0f}% of the way from {p['prior']} to the DDO answer at "
           f"{tokens(p['budget'])}: the fraction whose {int(round(100 * p['level']))}% lower "
           f"bound on the predicted gain over {p['prior']} is highest ({p['lower']:+.4f}, point "
           f"{p['gain']:+.4f}, objective ratio); the targets' predictions are shrunk by the same "
           'fraction' if p['evidence'] else
           f"kept at {p['prior']}: no point from it to the DDO answer has a lower bound on its "
           'predicted gain above 0 (the proxies show no mixture measurably better than '
           f"{p['prior']})")
  out = [f'Policy **conservative** (config.predict.policy): {moved}.']
  if p['prior_extrapolated'] or p['extrapolated']:
    out.append('Outside the factors the DDO tested (the fitted laws extrapolated): '
               + '; '.join(f'{what}: {", ".join(names_)}' for what, names_ in (
                   (p['prior'], p['prior_extrapolated']), ('the chosen mixture',
                                                           p['extrapolated'])) if names_) + '.')
  return out + ['']


def _calibration(predictions: dict | None, validation: dict) -> list[str]:
  """The measured gain over uniform beside the one the proxies predicted (a calibration check)."""
  gain = predicted_gain(predictions) if predictions else None
  c = validation['verdicts'].get('uniform')
  if gain is None or c is None or predictions['gains']['target'] != validation['target']:
    return []
  o, scale = c['objective'], validation['runs']['uniform']['objective']
  measured = (f"{-100 * c['relative']:+.2f}%" + (' (1 seed)' if o['low'] is None else
              f" [{-100 * o['high'] / scale:+.2f}%, {-100 * o['low'] / scale:+.2f}%] (95%)"))
  return [f"Calibration: the predicted mixture's gain over uniform, measured here {measured}, "
          f"predicted by the proxies at {tokens(gain['budget'])} tokens {_pct(gain)} "
          f"({int(round(100 * gain['level']))}%).", '']


def expectations(results: Results) -> list[str]:
  """The conservative policy's move and the predicted gains (section after the prediction)."""
  p = results.predictions
  return [] if p is None else _policy(p) + _gains(p)


def calibration(results: Results) -> list[str]:
  """Per validated target, the measured gain over uniform beside the predicted one."""
  return [line for v in results.validations for line in _calibration(results.predictions, v)]
