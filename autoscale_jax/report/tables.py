"""The report's markdown sections: each takes the workdir's Results and returns its lines (none
when the workdir has nothing for it yet)."""

from collections.abc import Sequence

import numpy as np

from autoscale_jax.mixing import PowerLaw, confidence
from autoscale_jax.report.results import Results
from autoscale_jax.report.verdicts import interval_text


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
    if fits and plan.get('replicates', 1) > 1:
      out += ['Replicate spread (seeds of each plan point): objective mean, sd, and the sd of '
              'the objective ratio the fits see:', '']
      out += table(['point', 'seeds', 'mean', 'sd', 'ratio sd'], _spread(fits['runs']))
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


def _spread(runs: list[dict]) -> list[list]:
  base = np.mean([r['objective'] for r in runs if r['domain'] is None])
  groups: dict[tuple, list[float]] = {}
  for r in runs:
    groups.setdefault((r['domain'], r['factor']), []).append(r['objective'])
  names = {(r['domain'], r['factor']): r['name'].rsplit(' seed', 1)[0] for r in runs}
  return [[names[g], len(v), float(np.mean(v)), float(np.std(v, ddof=1)),
           float(np.std(np.asarray(v) / base, ddof=1))] for g, v in groups.items() if len(v) > 1]


def _noise_line(predictions: dict) -> str:
  noise = predictions.get('noise')
  if noise is None:
    return ('Interval noise: **assumed** (config.predict.noise; written before the noise was '
            'recorded or measured).')
  if noise['source'] == 'replicates':
    return (f"Interval noise: sigma = {noise['sigma']:.3g} of the objective ratio, measured from "
            f"the DDO replicates ({noise['dof']} degrees of freedom).")
  where = (f"; the figure comes from {noise['measured_by']}" if noise.get('measured_by') else
           '; set ddo.replicates > 1')
  return (f"Interval noise: sigma = {noise['sigma']:.3g} **assumed** (config.predict.noise): no "
          f'DDO point has replicates to measure it{where}.')


def _path_line(path: dict | None) -> list[str]:
  """The 3+ budget test of whether the optima follow one path (absent with two budgets)."""
  if not path:
    return []
  return [f"Do the optima follow one path? **{path['verdict']}**: residual {path['residual']:.3g} "
          f"against {path['null_median']:.3g} (median; 95th percentile {path['null_95']:.3g}) "
          f"when the measured noise alone moves optima that lie on one path, p = "
          f"{path['p_value']:.2f} ({path['samples']} resamples)."]


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
         + '.', *_path_line(predictions.get('path')), '']
  head = ['domain', *[f'optimal @ {tokens(int(b))}' for b in predictions['optima']]]
  cols = [predictions['optima'][b] for b in predictions['optima']]
  for t, p in predictions['targets'].items():
    head.append(f'predicted @ {tokens(int(t))} ({level}% interval)')
    cols.append([f"{w:.3f} [{lo:.3f}, {hi:.3f}]{'' if lo <= w <= hi else ' *'}"
                 for w, lo, hi in zip(p['weights'], p['low'], p['high'])])
  out += table(head, [[n, *[c[i] for c in cols]] for i, n in enumerate(names)])
  if any(not lo <= w <= hi for p in predictions['targets'].values()
         for w, lo, hi in zip(p['weights'], p['low'], p['high'])):
    out += ['\\* the point lies outside its bootstrap interval: the resampled fits move the '
            'optimum one way (a biased, unstable fit), or the point was capped at the data.', '']
  out += [_noise_line(predictions),
          f"Domains on a DDO bound: {predictions.get('pinned', 'hold')} "
          "('extrapolate': every domain follows the law, as in the paper; 'hold': they keep "
          'their weight at the largest DDO budget).', '']
  for t, p in predictions['targets'].items():
    if p.get('capped'):
      out += [f"- {tokens(int(t))}: {', '.join(p['capped'])} capped at the data on disk "
              '(config.data.max_epochs); the others share the excess.']
  for note in predictions.get('notes', []):
    out += [f'- note: {note}']
  if not results.validations:  # else the verdicts carry it
    out += ['', *cost(results, max(int(t) for t in predictions['targets']))]
  return out + ['']


def _domain_cell(d: dict) -> str:
  if d['low'] is None:
    return f"{d['mean']:+.4f} (1 seed)"
  return f"{d['mean']:+.4f} {interval_text(d)} {d['verdict']}"


def _share(v: float | None) -> str:
  return 'not reached' if v is None else f'{100 * v:.1f}%'


def saved_text(s: dict) -> str:
  """A tokens-saved record (confidence.saved_interval) as 'value [low, high]'."""
  return f"{_share(s['value'])} [{_share(s['low'])}, {_share(s['high'])}]"


def _saved(s: dict) -> str:
  if s['n'] == 1:
    return _share(s['value'])
  return f"{saved_text(s)}; not reached in {100 * s['not_reached']:.0f}% of resamples"


def downstream(block: dict | None) -> list[str]:
  """The downstream table of one target (verdicts.downstream), or nothing when not evaluated."""
  if not block:
    return []
  ref = block['reference']
  out = [f'Downstream: each task\'s score (seed mean, 95% interval) and its paired difference to '
         f'{ref} with the verdict (higher is better).', '']
  names = list(next(iter(block['tasks'].values())))

  def cell(e: dict) -> str:
    mean = f"{e['mean']:.4f}" + ('' if e['low'] is None else f" [{e['low']:.4f}, {e['high']:.4f}]")
    d = e['vs_reference']
    return mean if d is None else f"{mean}; {d['mean']:+.4f} {interval_text(d)} **{d['verdict']}**"
  out += table(['mixture', *block['tasks']],
               [[name, *[cell(block['tasks'][t][name]) for t in block['tasks']]]
                for name in names])
  cut = {t: n for t, n in block['truncated'].items() if n is not None}  # harness tasks only
  if cut:
    out += ['Requests longer than the trained context (data.seq_len), left-truncated, most in '
            'one run: ' + ', '.join(f'{t} {n:,}' for t, n in cut.items()) + '.', '']
  return out


def _tokens_trained(plans: list[dict]) -> tuple[float, float, int]:
  """(tokens the plans' runs trained themselves, what they would as separate runs, runs): a
  trajectory branch trains only its cooldown (plan.json 'trained_tokens')."""
  runs = [r for p in plans for r in p['runs']]
  return (float(sum(r.get('trained_tokens', sum(r['quantities'])) for r in runs)),
          float(sum(sum(r['quantities']) for r in runs)), len(runs))


def cost(results: Results, target: float) -> list[str]:
  """The report's cost line: what the DDO proxies trained, and how, against one target run."""
  if not results.budgets:
    return []
  trained, separate, runs = _tokens_trained([b['plan'] for b in results.budgets])
  line = (f'What the answer cost: the DDO proxy runs trained {trained:,.0f} tokens, '
          f'{trained / target:.2f}x one run at the {tokens(target)} target')
  trunks = [r for b in results.budgets for r in b['plan']['runs']
            if r.get('trajectory') and 'trunk' not in r['trajectory']]
  if trunks:
    line += (f', as {len(trunks)} warmup-stable-decay trunks with {runs - len(trunks)} cooldown '
             f'branches (ddo.trajectories); the same {runs} runs trained separately would cost '
             f'{separate:,.0f} ({separate / target:.2f}x).')
  else:
    line += f', in {runs} separate runs.'
  if results.checks:
    check_tokens, _, check_runs = _tokens_trained([c['plan'] for c in results.checks])
    line += (f' The check budgets (not needed for the answer) trained {check_tokens:,.0f} '
             f'more in {check_runs} runs.')
  return [line]


def verdicts(results: Results) -> list[str]:
  """The answer and how far to trust it: predicted vs every baseline at every target."""
  if not results.validations:
    return []
  out = ['## Verdicts', '',
         "Final validation objective of the predicted mixture minus each baseline's (lower is "
         'better), paired by seed (seed s of every mixture shares its initialization), with a 95% '
         't-interval over seeds; **better** / **worse** when the interval excludes 0, '
         '**inconclusive** when it contains 0 or there is one seed. Tokens saved: 1 - (tokens the '
         "predicted mixture's seed-mean curve needs to reach the baseline's final objective) / "
         'the target, with a 95% bootstrap interval over seeds ("not reached" ranks lowest; '
         'with fewer than 5 seeds it has few distinct resamples and is rough).', '']
  for v in results.validations:
    n = len(v['seeds'])
    pred = v['runs']['predicted']
    out += [f"### {tokens(v['target'])} tokens ({v['target']:,}), {n} seed"
            f"{'s' if n > 1 else ''} per mixture", '']
    rows = [[name, pred['objective'], v['runs'][name]['objective'], c['objective']['mean'],
             f"{100 * c['relative']:+.2f}%", interval_text(c['objective']),
             f"**{c['objective']['verdict']}**", _saved(c['tokens_saved'])]
            for name, c in v['verdicts'].items()]
    out += table(['baseline', 'predicted', 'baseline', 'difference', 'relative', '95% interval',
                  'verdict', 'tokens saved'], rows)
    out += ['Per domain: final validation loss, predicted minus baseline (95% interval, '
            'verdict):', '']
    out += table(['domain', *v['verdicts']],
                 [[d, *[_domain_cell(c['domains'][d]) for c in v['verdicts'].values()]]
                  for d in v['domains']])
    out += downstream(v.get('downstream'))
  return out + cost(results, results.validations[0]['target']) + ['']


def _proxy_runs(sizes: dict | None) -> list[str]:
  """How long each method's proxy runs were (absent from results of older versions)."""
  if not sizes:
    return []
  parts = ['DDO at ' + ', '.join(f'{b:,}' for b in sizes['ddo_budgets']) + ' tokens']
  if 'swarm' in sizes:
    parts.append(f"the swarm {sizes['swarm']['runs']} runs of {sizes['swarm']['tokens']:,}")
  if 'doremi' in sizes:
    parts.append(f"DoReMi a reference and a proxy run of {sizes['doremi']:,}")
  return ['Proxy runs: ' + '; '.join(parts) + '.', '']


def comparison(results: Results) -> list[str]:
  """mode=compare: every method's answer against uniform, at equal proxy compute."""
  if not results.comparisons:
    return []
  out = ['## Methods compared', '',
         'Every method\'s mixture trained at the target with the same seeds; final objective '
         '(seed mean, 95% t-interval over seeds), its paired difference to uniform with the '
         'verdict, and the tokens it saves against uniform. Proxy tokens: what the method trained '
         'on proxy runs to find its mixture (RegMix and the mixing law share one swarm; DoReMi\'s '
         'reference model\'s forward passes count a third of a token each).', '']
  for c in results.comparisons:
    n, target = len(c['seeds']), c['target']
    out += [f"### {tokens(target)} tokens ({target:,}), {n} seed{'s' if n > 1 else ''}", '']
    out += _proxy_runs(c.get('proxy_runs'))
    rows = []
    for m, r in c['runs'].items():
      mean = confidence.mean_interval([s['objective'] for s in r['seeds']])
      spent = c['proxy_tokens'].get(m, 0)
      v = c['verdicts'].get(m)
      span = ('1 seed' if mean['low'] is None
              else f"[{mean['low']:.4g}, {mean['high']:.4g}]")
      versus = ['-', '-', '-'] if v is None else [
          f"{v['objective']['mean']:+.4g} {interval_text(v['objective'])}",
          f"**{v['objective']['verdict']}**", _saved(v['tokens_saved'])]
      rows.append([m + (f" (= {c['same_as'][m]})" if m in c['same_as'] else ''),
                   f'{spent:,} ({spent / target:.2f}x)', f"{mean['mean']:.4g} {span}", *versus])
    out += table(['method', 'proxy tokens', 'objective [95%]', f"vs {c['reference']} [95%]",
                  'verdict', 'tokens saved vs uniform'], rows)
    out += table(['method', *c['mixture_domains']],
                 [[m, *[f'{w:.3f}' for w in r['weights']]] for m, r in c['runs'].items()])
    out += downstream(c.get('downstream'))
  return out


def checks(results: Results) -> list[str]:
  """The paper's own test: a full DDO at a budget the fit never saw, against the prediction."""
  done = [c['check'] for c in results.checks if 'check' in c]
  if not done:
    return []
  out = ['## Check budgets', '',
         'A full DDO at a budget the AutoScale fit never saw. L1 distance of the weights to that '
         'DDO\'s optimum: the AutoScale prediction vs the optimum of the nearest DDO budget below, '
         'reused as is.', '']
  out += table(['budget', 'kind', 'L1 AutoScale', 'L1 reused (budget)'],
               [[c['budget'], c['kind'], c['l1_predicted'],
                 '-' if c['nearest_below'] is None else
                 f"{c['l1_reused']:.4g} ({tokens(c['nearest_below']['budget'])})"] for c in done])
  for c in done:
    reused = c['nearest_below']
    out += [f"Weights at {tokens(c['budget'])} tokens:", '']
    out += table(['domain', 'DDO optimum', 'AutoScale', *(['reused'] if reused else [])],
                 [[d, c['ddo'][i], c['predicted'][i], *([reused['weights'][i]] if reused else [])]
                  for i, d in enumerate(c['domains'])])
  return out


def validation(results: Results) -> list[str]:
  if not results.validations:
    return []
  out = ['## Validation at the target budgets', '']
  for v in results.validations:
    names = v['domains']
    n = len(v['seeds'])
    out += [f"### {tokens(v['target'])} tokens ({v['target']:,})", '']
    rows = []
    for mixture, r in v['runs'].items():
      spread = np.std([s['objective'] for s in r['seeds']], ddof=1) if n > 1 else None
      rows.append([mixture, r['objective'] if spread is None else
                   f"{r['objective']:.4g} ± {spread:.2g}", *[r['val_ppl'][d] for d in names]])
    out += [f'Seed means ({n} seed{"s" if n > 1 else ""}; ± the sd over seeds):', '']
    out += table(['mixture', 'objective', *[f'ppl {d}' for d in names]], rows)
    out += ['Final validation loss per domain ± its standard error over the validation '
            'sequences (the noise of the evaluation itself):', '']
    out += table(['mixture', *names],
                 [[m, *[f"{r['val_loss'][d]:.4f}" + ('' if r['val_loss_se'] is None else
                                                     f" ± {r['val_loss_se'][d]:.4f}")
                        for d in names]] for m, r in v['runs'].items()])
    out += table(['mixture', *v['mixture_domains']],
                 [[m, *[f'{w:.3f}' for w in r['weights']]] for m, r in v['runs'].items()])
  return out
