"""The report's markdown sections: each takes the workdir's Results and returns its lines (none
when the workdir has nothing for it yet)."""

from collections.abc import Sequence

from autoscale_jax.mixing import PowerLaw
from autoscale_jax.report.results import Results


def table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
  def cell(v):
    if isinstance(v, float):
      return f'{v:.4g}' if abs(v) < 1e4 else f'{v:,.0f}'
    if isinstance(v, int):
      return f'{v:,}'
    return str(v)
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
  return lines + ['']


def tokens(t: float) -> str:
  """A token count for a heading or a label: 1.2M, 300k."""
  for unit, scale in (('B', 1e9), ('M', 1e6), ('k', 1e3)):
    if t >= scale:
      return f'{t / scale:.3g}{unit}'
  return f'{t:.0f}'


def header(results: Results) -> list[str]:
  return ['# AutoScale report', '', f'Workdir: `{results.workdir}`. Domains: '
          f"{', '.join(results.domains)}.", '']


def ddo(results: Results) -> list[str]:
  out = ['## DDO budgets', '']
  for b in results.budgets:
    plan, fits, optimum = b['plan'], b.get('fits'), b.get('optimum')
    names = plan['domains']
    out += [f"### {tokens(plan['budget'])} tokens ({plan['budget']:,})", '']
    objectives = {r['name']: r['objective'] for r in fits['runs']} if fits else {}
    rows = [[r['name'], *[int(round(q)) for q in r['quantities']],
             objectives.get(r['name'], 'not finished')] for r in plan['runs']]
    out += ['Runs (tokens per domain, objective):', '']
    out += table(['run', *names, 'objective'], rows)
    if fits:
      out += ['Per-domain fits of objective ratio = (x + a)^-b + c on x = N_i / N_i base:', '']
      out += table(['domain', 'a', 'b', 'c', 'rmse', 'points', 'note'],
                   [[n, f['a'], f['b'], f['c'], PowerLaw.from_dict(f).rmse, len(f['x']),
                     f.get('message') or '']
                    for n, f in zip(names, fits['fits'])])
    if optimum:
      out += ['Optimal mixture at this budget:', '']
      out += table(['domain', 'base weight', 'optimal weight', 'multiplier', 'on a bound'],
                   [[n, bw, w, m, 'yes' if n in optimum['pinned'] else '']
                    for n, bw, w, m in zip(names, optimum['base_weights'], optimum['weights'],
                                           optimum['multipliers'])])
  return out


def prediction(results: Results) -> list[str]:
  predictions, model = results.predictions, results.model
  if predictions is None:
    return []
  names = predictions['domains']
  level = int(round(100 * predictions['level']))
  out = ['## AutoScale prediction', '',
         f"Fitted ln N_i*(t) = alpha_i + s_i t to the optima at "
         f"{', '.join(tokens(b) for b in predictions['budgets'])} tokens; scale t = "
         f"{', '.join(f'{t:.3f}' for t in model['t'])}, residual {model['residual']:.3g}"
         + (f"; held at their last weight: {', '.join(model['held'])}" if model['held'] else '')
         + '.', '']
  head = ['domain', *[f'optimal @ {tokens(int(b))}' for b in predictions['optima']]]
  cols = [predictions['optima'][b] for b in predictions['optima']]
  for t, p in predictions['targets'].items():
    head.append(f'predicted @ {tokens(int(t))} ({level}% interval)')
    cols.append([f'{w:.3f} [{lo:.3f}, {hi:.3f}]'
                 for w, lo, hi in zip(p['weights'], p['low'], p['high'])])
  out += table(head, [[n, *[c[i] for c in cols]] for i, n in enumerate(names)])
  for note in predictions.get('notes', []):
    out += [f'- note: {note}']
  return out + ([''] if predictions.get('notes') else [])


def validation(results: Results) -> list[str]:
  if not results.validations:
    return []
  out = ['## Validation at the target budgets', '']
  for v in results.validations:
    names = v['domains']
    out += [f"### {tokens(v['target'])} tokens ({v['target']:,})", '']
    rows = []
    for mixture, r in v['runs'].items():
      saved = ('-' if mixture == 'predicted' else 'not reached' if r['tokens_saved'] is None
               else f"{100 * r['tokens_saved']:.1f}%")
      rows.append([mixture, r['objective'], *[r['val_ppl'][n] for n in names], saved])
    out += table(['mixture', 'objective', *[f'ppl {n}' for n in names],
                  'tokens saved by predicted'], rows)
    out += table(['mixture', *v['mixture_domains']],
                 [[m, *[f'{w:.3f}' for w in r['weights']]] for m, r in v['runs'].items()])
  out += ['"Tokens saved": 1 - (tokens the predicted mixture needs to reach the baseline\'s final '
          'objective) / (the baseline\'s tokens), read off the evaluation curve with linear '
          'interpolation.', '']
  return out
