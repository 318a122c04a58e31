"""The report's figures: each takes the workdir's Results, writes its PNG beside report.md and
returns the markdown that shows it (none when the workdir has nothing to plot yet)."""

import io
import math
import warnings

import numpy as np
from etils import epath

from autoscale_jax.io import write_bytes_atomic
from autoscale_jax.mixing import AutoScaleModel, PowerLaw
from autoscale_jax.report import verdicts
from autoscale_jax.report.results import Results
from autoscale_jax.report.tables import tokens


def _plt():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def _save(fig, path: epath.Path, caption: str) -> list[str]:
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=110, bbox_inches='tight')
  _plt().close(fig)
  write_bytes_atomic(path, buf.getvalue())
  return [f'![{caption}]({path.name})', '']


def _grid(panels: int, width: float, height: float):
  """A figure of `panels` axes in rows of at most 3, the unused ones hidden."""
  cols = min(3, panels)
  rows = math.ceil(panels / cols)
  fig, axes = _plt().subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
  for j in range(panels, rows * cols):
    axes[j // cols][j % cols].axis('off')
  return fig, [axes[j // cols][j % cols] for j in range(panels)]


def fits(results: Results) -> list[str]:
  done = [b for b in results.budgets if b.get('fits')]
  if not done:
    return []
  names = done[0]['plan']['domains']
  fig, axes = _grid(len(names), 4.4, 3.4)
  # Tick at the tested factors (2 digits: counts are whole sequences, so x is 0.2003, 0.2013...).
  factors = sorted({float(f'{v:.2g}') for b in done for f in b['fits']['fits'] for v in f['x']})
  for i, (name, ax) in enumerate(zip(names, axes)):
    for k, b in enumerate(done):
      fit = PowerLaw.from_dict(b['fits']['fits'][i])
      x = np.asarray(fit.x)
      grid = np.geomspace(x.min() * 0.8, x.max() * 1.25, 100)
      color = f'C{k}'
      ax.plot(x, fit(x) + np.asarray(fit.residuals), 'o', color=color)
      ax.plot(grid, fit(grid), '-', color=color, label=tokens(b['plan']['budget']))
    ax.set_xscale('log')
    ax.set_xticks(factors, [f'{v:g}' for v in factors])  # the tested factors, not log decades
    ax.minorticks_off()
    ax.set_title(name)
    ax.set_xlabel('N_i / N_i base')
    ax.set_ylabel('objective / base')
    ax.legend(fontsize=7, title='budget', title_fontsize=7)
  fig.suptitle('Per-domain power-law fits (points: runs; lines: fits)')
  fig.tight_layout()
  return _save(fig, results.folder / 'fits.png', 'fits')


def weights(results: Results) -> list[str]:
  predictions = results.predictions
  if predictions is None:
    return []
  names = predictions['domains']
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # fit notes are in predictions.json and the report already
    model = AutoScaleModel.from_dict(results.model)
  budgets = [int(b) for b in predictions['optima']]
  targets = [int(t) for t in predictions['targets']]
  grid = np.geomspace(min(budgets), max(targets + budgets) * 1.5, 60)
  curve = np.array([model.predict_weights(t) for t in grid])
  fig, ax = _plt().subplots(figsize=(7.5, 4.5))
  for i, name in enumerate(names):
    color = f'C{i}'
    style = ('-', '--', ':', '-.')[i % 4]  # domains held at one weight would hide each other
    ax.plot(grid, curve[:, i], style, color=color, label=name)
    ax.plot(budgets, [predictions['optima'][str(b)][i] for b in budgets], 'o', color=color)
    for t in targets:
      p = predictions['targets'][str(t)]
      # A bootstrap percentile interval need not contain the point (nor a capped one).
      ax.errorbar([t], [p['weights'][i]], yerr=[[max(p['weights'][i] - p['low'][i], 0.0)],
                                                [max(p['high'][i] - p['weights'][i], 0.0)]],
                  fmt='s', color=color, capsize=3)
  for b in budgets:
    ax.axvline(b, color='0.85', lw=0.8, zorder=0)
  ax.set_xscale('log')
  ax.set_xlabel('training budget (tokens)')
  ax.set_ylabel('optimal weight')
  ax.set_title('Optimal weights: DDO (circles), AutoScale law (lines), predictions (squares)')
  ax.legend(fontsize=8, ncol=2)
  fig.tight_layout()
  return _save(fig, results.folder / 'weights.png', 'weights vs budget')


def methods(results: Results) -> list[str]:
  """mode=compare: every method's weights side by side, one panel per target."""
  if not results.comparisons:
    return []
  fig, axes = _grid(len(results.comparisons), 7.5, 4.0)
  for ax, c in zip(axes, results.comparisons):
    names, domains = list(c['runs']), c['mixture_domains']
    width = 0.8 / len(domains)
    for i, d in enumerate(domains):
      ax.bar(np.arange(len(names)) + (i - (len(domains) - 1) / 2) * width,
             [c['runs'][m]['weights'][i] for m in names], width, label=d, color=f'C{i}')
    ax.set_xticks(np.arange(len(names)), names, rotation=30, ha='right')
    ax.set_ylabel('weight')
    ax.set_title(f"Each method's mixture at {tokens(c['target'])} tokens")
    ax.legend(fontsize=7, ncol=min(4, len(domains)))
  fig.tight_layout()
  return _save(fig, results.folder / 'methods.png', 'weights of every method')


def _seed_curves(run: dict) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [points], objective [seeds, points]) of one validation mixture."""
  points = min(len(s['curve']) for s in run['seeds'])
  tokens_ = np.array([p['tokens'] for p in run['seeds'][0]['curve'][:points]], np.float64)
  return tokens_, np.array([[p['objective'] for p in s['curve'][:points]] for s in run['seeds']])


def validation(results: Results) -> list[str]:
  """Per target: the seed-mean objective curves, and each mixture relative to uniform (or the
  first baseline) along the run, seed by seed, with the band of seeds: a 2% gap shows."""
  if not results.validations:
    return []
  count = len(results.validations)
  fig, axes = _plt().subplots(2, count, figsize=(6.5 * count, 7.5), squeeze=False)
  for k, v in enumerate(results.validations):
    top, bottom = axes[0][k], axes[1][k]
    runs = v['runs']
    reference = 'uniform' if 'uniform' in runs else next(n for n in runs if n != 'predicted')
    x_ref, y_ref = _seed_curves(runs[reference])
    for j, (mixture, r) in enumerate(runs.items()):
      x, y = _seed_curves(r)
      style = dict(color=f'C{j}', lw=2 if mixture == 'predicted' else 1)
      top.plot(x, y.mean(0), 'o-' if mixture == 'predicted' else '.-', label=mixture, **style)
      n = min(len(x), len(x_ref))
      seeds = min(len(y), len(y_ref))
      ratio = y[:seeds, :n] / y_ref[:seeds, :n] - 1  # seed s against seed s of the reference
      bottom.plot(x[:n], 100 * ratio.mean(0), '.-', label=mixture, **style)
      if seeds > 1:
        bottom.fill_between(x[:n], 100 * ratio.min(0), 100 * ratio.max(0), color=f'C{j}',
                            alpha=0.15, lw=0)
    top.set_yscale('log')
    top.set_ylabel('validation objective (seed mean)')
    top.set_title(f"Target {tokens(v['target'])} tokens, {len(v['seeds'])} seed(s)")
    top.legend(fontsize=8)
    bottom.axhline(0, color='0.5', lw=0.8)
    bottom.set_xlabel('tokens trained')
    bottom.set_ylabel(f'objective vs {reference} (%)')
    bottom.set_title(f'Relative to {reference}, seed by seed (band: min-max over seeds)')
    bottom.legend(fontsize=8)
  fig.tight_layout()
  return _save(fig, results.folder / 'validation.png', 'validation curves')


def curves(results: Results) -> list[str]:
  """Training loss against tokens of every DDO and validation run, a panel per budget/target."""
  panels = [(f"DDO {tokens(b['plan']['budget'])} tokens",
             [(r['name'], r['fingerprint']) for r in b['plan']['runs']])
            for b in results.budgets]
  panels += [(f"Validation {tokens(v['target'])} tokens",
              [(verdicts.run_label(name, k, len(r['seeds'])), s['fingerprint'])
               for name, r in v['runs'].items() for k, s in enumerate(r['seeds'])])
             for v in results.validations]
  drawn = [(title, [(name, c) for name, fp in runs if (c := results.curve(fp)) is not None])
           for title, runs in panels]
  drawn = [(title, runs) for title, runs in drawn if runs]
  if not drawn:
    return []
  fig, axes = _grid(len(drawn), 5.0, 3.6)
  for ax, (title, runs) in zip(axes, drawn):
    for k, (name, (x, loss)) in enumerate(runs):
      ax.plot(x, loss, ('-', '--', ':', '-.')[k // 10 % 4], color=f'C{k % 10}', lw=1,
              marker='.', markersize=4, label=name)
    ax.set_title(title)
    ax.set_xlabel('tokens trained')
    ax.set_ylabel('training loss')
    ax.legend(fontsize=6, ncol=2 if len(runs) > 8 else 1)
  fig.tight_layout()
  return ['## Training curves', '',
          'Training loss against tokens trained of every run (runs/<fingerprint>/metrics.jsonl).',
          '', *_save(fig, results.folder / 'curves.png', 'training curves')]
