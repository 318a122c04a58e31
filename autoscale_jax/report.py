"""The experiment report, built from the workdir's json files alone (mode=report rebuilds it).

report/report.md holds the tables; report/fits.png, weights.png and validation.png the plots.
"""

import io
import json
import math
import warnings
from collections.abc import Sequence

import numpy as np
from etils import epath

from autoscale_jax.errors import ConfigError
from autoscale_jax.io import write_bytes_atomic, write_text_atomic
from autoscale_jax.mixing import AutoScaleModel, PowerLaw


def _load(path: epath.Path):
  return json.loads(path.read_text())


def _budget_folders(workdir: epath.Path) -> list[epath.Path]:
  folder = workdir / 'budgets'
  if not folder.exists():
    return []
  return sorted((p for p in folder.iterdir() if (p / 'plan.json').exists()),
                key=lambda p: int(p.name))


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
  def cell(v):
    if isinstance(v, float):
      return f'{v:.4g}' if abs(v) < 1e4 else f'{v:,.0f}'
    if isinstance(v, int):
      return f'{v:,}'
    return str(v)
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(cell(v) for v in row) + ' |' for row in rows]
  return lines + ['']


def _tokens(t: float) -> str:
  for unit, scale in (('B', 1e9), ('M', 1e6), ('k', 1e3)):
    if t >= scale:
      return f'{t / scale:.3g}{unit}'
  return f'{t:.0f}'


def _savefig(fig, path: epath.Path) -> None:
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=110, bbox_inches='tight')
  write_bytes_atomic(path, buf.getvalue())


def _plt():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


# ------------------------------------------------------------------------------ sections
def _ddo_section(budgets: list[dict]) -> list[str]:
  out = ['## DDO budgets', '']
  for b in budgets:
    plan, fits, optimum = b['plan'], b.get('fits'), b.get('optimum')
    names = plan['domains']
    out += [f"### {_tokens(plan['budget'])} tokens ({plan['budget']:,})", '']
    objectives = {r['name']: r['objective'] for r in fits['runs']} if fits else {}
    rows = [[r['name'], *[int(round(q)) for q in r['quantities']],
             objectives.get(r['name'], 'not finished')] for r in plan['runs']]
    out += ['Runs (tokens per domain, objective):', '']
    out += _table(['run', *names, 'objective'], rows)
    if fits:
      out += ['Per-domain fits of objective ratio = (x + a)^-b + c on x = N_i / N_i base:', '']
      out += _table(['domain', 'a', 'b', 'c', 'rmse', 'points', 'note'],
                    [[n, f['a'], f['b'], f['c'], PowerLaw.from_dict(f).rmse, len(f['x']),
                      f.get('message') or '']
                     for n, f in zip(names, fits['fits'])])
    if optimum:
      out += ['Optimal mixture at this budget:', '']
      out += _table(['domain', 'base weight', 'optimal weight', 'multiplier', 'on a bound'],
                    [[n, bw, w, m, 'yes' if n in optimum['pinned'] else '']
                     for n, bw, w, m in zip(names, optimum['base_weights'], optimum['weights'],
                                            optimum['multipliers'])])
  return out


def _prediction_section(predictions: dict, model: dict) -> list[str]:
  names = predictions['domains']
  level = int(round(100 * predictions['level']))
  out = ['## AutoScale prediction', '',
         f"Fitted ln N_i*(t) = alpha_i + s_i t to the optima at "
         f"{', '.join(_tokens(b) for b in predictions['budgets'])} tokens; scale t = "
         f"{', '.join(f'{t:.3f}' for t in model['t'])}, residual {model['residual']:.3g}"
         + (f"; held at their last weight: {', '.join(model['held'])}" if model['held'] else '')
         + '.', '']
  header = ['domain', *[f'optimal @ {_tokens(int(b))}' for b in predictions['optima']]]
  cols = [predictions['optima'][b] for b in predictions['optima']]
  for t, p in predictions['targets'].items():
    header.append(f'predicted @ {_tokens(int(t))} ({level}% interval)')
    cols.append([f'{w:.3f} [{lo:.3f}, {hi:.3f}]'
                 for w, lo, hi in zip(p['weights'], p['low'], p['high'])])
  out += _table(header, [[n, *[c[i] for c in cols]] for i, n in enumerate(names)])
  for note in predictions.get('notes', []):
    out += [f'- note: {note}']
  return out + ([''] if predictions.get('notes') else [])


def _validation_section(validations: list[dict]) -> list[str]:
  out = ['## Validation at the target budgets', '']
  for v in validations:
    names = v['domains']
    out += [f"### {_tokens(v['target'])} tokens ({v['target']:,})", '']
    rows = []
    for mixture, r in v['runs'].items():
      saved = ('-' if mixture == 'predicted' else 'not reached' if r['tokens_saved'] is None
               else f"{100 * r['tokens_saved']:.1f}%")
      rows.append([mixture, r['objective'], *[r['val_ppl'][n] for n in names], saved])
    out += _table(['mixture', 'objective', *[f'ppl {n}' for n in names],
                   'tokens saved by predicted'], rows)
    out += _table(['mixture', *v['mixture_domains']],
                  [[m, *[f'{w:.3f}' for w in r['weights']]] for m, r in v['runs'].items()])
  out += ['"Tokens saved": 1 - (tokens the predicted mixture needs to reach the baseline\'s final '
          'objective) / (the baseline\'s tokens), read off the evaluation curve with linear '
          'interpolation.', '']
  return out


# ------------------------------------------------------------------------------ plots
def _plot_fits(budgets: list[dict], path: epath.Path) -> None:
  plt = _plt()
  done = [b for b in budgets if b.get('fits')]
  names = done[0]['plan']['domains']
  cols = min(3, len(names))
  rows = math.ceil(len(names) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False)
  # Tick at the tested factors (2 digits: counts are whole sequences, so x is 0.2003, 0.2013...).
  factors = sorted({float(f'{v:.2g}') for b in done for f in b['fits']['fits'] for v in f['x']})
  for i, name in enumerate(names):
    ax = axes[i // cols][i % cols]
    for k, b in enumerate(done):
      fit = PowerLaw.from_dict(b['fits']['fits'][i])
      x = np.asarray(fit.x)
      grid = np.geomspace(x.min() * 0.8, x.max() * 1.25, 100)
      color = f'C{k}'
      ax.plot(x, fit(x) + np.asarray(fit.residuals), 'o', color=color)
      ax.plot(grid, fit(grid), '-', color=color, label=_tokens(b['plan']['budget']))
    ax.set_xscale('log')
    ax.set_xticks(factors, [f'{v:g}' for v in factors])  # the tested factors, not log decades
    ax.minorticks_off()
    ax.set_title(name)
    ax.set_xlabel('N_i / N_i base')
    ax.set_ylabel('objective / base')
    ax.legend(fontsize=7, title='budget', title_fontsize=7)
  for j in range(len(names), rows * cols):
    axes[j // cols][j % cols].axis('off')
  fig.suptitle('Per-domain power-law fits (points: runs; lines: fits)')
  fig.tight_layout()
  _savefig(fig, path)
  plt.close(fig)


def _plot_weights(predictions: dict, model_dict: dict, path: epath.Path) -> None:
  plt = _plt()
  names = predictions['domains']
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # fit notes are in predictions.json and the report already
    model = AutoScaleModel.from_dict(model_dict)
  budgets = [int(b) for b in predictions['optima']]
  targets = [int(t) for t in predictions['targets']]
  grid = np.geomspace(min(budgets), max(targets + budgets) * 1.5, 60)
  curve = np.array([model.predict_weights(t) for t in grid])
  fig, ax = plt.subplots(figsize=(7.5, 4.5))
  for i, name in enumerate(names):
    color = f'C{i}'
    style = ('-', '--', ':', '-.')[i % 4]  # domains held at one weight would hide each other
    ax.plot(grid, curve[:, i], style, color=color, label=name)
    ax.plot(budgets, [predictions['optima'][str(b)][i] for b in budgets], 'o', color=color)
    for t in targets:
      p = predictions['targets'][str(t)]
      ax.errorbar([t], [p['weights'][i]], yerr=[[p['weights'][i] - p['low'][i]],
                                                [p['high'][i] - p['weights'][i]]],
                  fmt='s', color=color, capsize=3)
  for b in budgets:
    ax.axvline(b, color='0.85', lw=0.8, zorder=0)
  ax.set_xscale('log')
  ax.set_xlabel('training budget (tokens)')
  ax.set_ylabel('optimal weight')
  ax.set_title('Optimal weights: DDO (circles), AutoScale law (lines), predictions (squares)')
  ax.legend(fontsize=8, ncol=2)
  fig.tight_layout()
  _savefig(fig, path)
  plt.close(fig)


def _plot_validation(validations: list[dict], path: epath.Path) -> None:
  plt = _plt()
  fig, axes = plt.subplots(1, len(validations), figsize=(6 * len(validations), 4), squeeze=False)
  for ax, v in zip(axes[0], validations):
    for k, (mixture, r) in enumerate(v['runs'].items()):
      tokens = [p['tokens'] for p in r['curve']]
      ax.plot(tokens, [p['objective'] for p in r['curve']], 'o-' if k == 0 else '.-',
              lw=2 if k == 0 else 1, label=mixture)
    ax.set_xlabel('tokens trained')
    ax.set_ylabel('validation objective')
    ax.set_title(f"Target {_tokens(v['target'])} tokens")
    ax.legend()
  fig.tight_layout()
  _savefig(fig, path)
  plt.close(fig)


# ------------------------------------------------------------------------------ entry point
def write_report(workdir: epath.PathLike) -> epath.Path:
  """Writes report/report.md (+ PNGs) from what the workdir holds; returns the report's path."""
  workdir = epath.Path(workdir)
  budgets = []
  for folder in _budget_folders(workdir):
    entry = {'plan': _load(folder / 'plan.json')}
    for name in ('fits', 'optimum'):
      if (folder / f'{name}.json').exists():
        entry[name] = _load(folder / f'{name}.json')
    budgets.append(entry)
  if not budgets:
    raise ConfigError(f'{workdir} holds no DDO results (budgets/*/plan.json); run '
                      '--config.mode=ddo or autoscale there first, or fix --workdir.')
  out_dir = workdir / 'report'
  lines = ['# AutoScale report', '', f'Workdir: `{workdir}`. Domains: '
           f"{', '.join(budgets[0]['plan']['domains'])}.", '']
  if any(b.get('fits') for b in budgets):
    _plot_fits(budgets, out_dir / 'fits.png')
    lines += ['![fits](fits.png)', '']
  lines += _ddo_section(budgets)
  predictions_path = workdir / 'autoscale' / 'predictions.json'
  if predictions_path.exists():
    predictions = _load(predictions_path)
    model = _load(workdir / 'autoscale' / 'model.json')
    lines += _prediction_section(predictions, model)
    _plot_weights(predictions, model, out_dir / 'weights.png')
    lines += ['![weights vs budget](weights.png)', '']
  validation_dir = workdir / 'validation'
  validations = sorted((_load(p) for p in validation_dir.glob('*.json')),
                       key=lambda v: v['target']) if validation_dir.exists() else []
  if validations:
    lines += _validation_section(validations)
    _plot_validation(validations, out_dir / 'validation.png')
    lines += ['![validation curves](validation.png)', '']
  path = out_dir / 'report.md'
  write_text_atomic(path, '\n'.join(lines))
  return path
