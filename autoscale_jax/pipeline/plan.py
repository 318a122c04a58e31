"""The dry run: the table of what the configured mode would train, before any data exists."""

from collections.abc import Callable

import ml_collections
import numpy as np

from autoscale_jax.data import mixture as mixture_lib
from autoscale_jax.data.mixture import counts_from_weights, num_steps, resolve_weights
from autoscale_jax.lead import say
from autoscale_jax.pipeline import compare, ddo, predict, validate
from autoscale_jax.pipeline.registry import devices_line, trainable_mask
from autoscale_jax.report.verdicts import run_label


def dry_run(config: ml_collections.ConfigDict, out: Callable[[str], None] = say) -> None:
  """Prints what the configured mode would train (runs, tokens, steps, devices); trains nothing.

  Needs no data: natural-proportion mixtures and data-size bounds are marked as such.
  """
  _table(rows(config, out), [d.name for d in config.data.domains], out)


def rows(config: ml_collections.ConfigDict,
         out: Callable[[str], None] = lambda line: None) -> list[tuple[str, str, int, int, str]]:
  """Every run the configured mode would train: (stage, run, tokens, steps, per-domain tokens),
  in the order the pipeline trains them; the plan's header and notes go to `out`."""
  names = [d.name for d in config.data.domains]
  trainable = trainable_mask(config)
  mix_names = [n for n, t in zip(names, trainable) if t]
  seq_len, batch = int(config.data.seq_len), int(config.train.batch_size)
  out(f'Plan for mode={config.mode}: {config.model.family}-{config.model.size}, '
      f'{len(names)} domains, seq_len {seq_len}, batch {batch} sequences '
      f'({batch * seq_len:,} tokens/step); {devices_line(config)}.')
  planned = []

  def add(stage: str, name: str, counts: np.ndarray) -> None:
    planned.append((stage, name, int(counts.sum()) * seq_len, num_steps(counts, batch),
                 ' '.join(f'{int(c) * seq_len:,}' for c in counts)))

  def mixture(weights, field: str) -> tuple[np.ndarray, str]:
    """Weights over all domains; 'natural' needs the data, so it is shown as uniform."""
    if isinstance(weights, str) and weights == 'natural':
      weights, note = 'uniform', ' (natural: shares known after prepare)'
    else:
      note = ''
    full = np.zeros(len(names))
    full[trainable] = resolve_weights(weights, mix_names, np.ones(len(mix_names)), field)
    return full, note

  if config.mode == 'train':
    w, note = mixture(config.train.weights, 'config.train.weights')
    add('train', str(config.train.weights) + note,
        counts_from_weights(w, config.train.tokens, seq_len))
  chosen = compare.methods(config) if config.mode == 'compare' else []
  if config.mode in ('ddo', 'autoscale') or {'autoscale', 'reuse'} & set(chosen):
    natural = config.ddo.base_weights == 'natural'
    checks = ddo.check_budgets(config) if config.mode == 'autoscale' else []
    if config.ddo.trajectories:
      planned += _trajectories(config, trainable, out)
    for stage, sizes in ((('ddo', ddo.budgets(config)),) * (not config.ddo.trajectories)
                         + (('check', checks),)):
      for b in sizes:
        _, specs, _ = ddo.ddo_plan(config, names, np.ones(len(names)), trainable, b, seq_len)
        for spec in specs:
          add(f'{stage} {b:,}',
              spec.name + (' (natural base: sizes after prepare)' if natural else ''),
              spec.counts)
  if config.mode == 'autoscale' and config.validate.enabled:
    seeds = validate.seeds(config)
    even, _ = mixture('uniform', 'config.validate')
    after_ddo = (even, ' (weights after DDO)')
    for t in validate.targets(config):
      mixtures = {'predicted': after_ddo}
      for name, weights in config.validate.baselines.items():
        mixtures[name] = (after_ddo if isinstance(weights, str) and weights == validate.REUSE
                          else mixture(weights, f'config.validate.baselines.{name}'))
      for name, (w, note) in mixtures.items():
        for s in range(len(seeds)):
          add(f'validate {t:,}', run_label(name, s, len(seeds)) + note,
              counts_from_weights(w, t, seq_len))
  if config.mode == 'compare':
    compare.check(config)
    seeds = validate.seeds(config)
    proxy = int(config.compare.proxy_tokens) or ddo.total_tokens(
        config, names, np.ones(len(names)), trainable, seq_len)
    if set(compare.SWARM) & set(chosen):
      even, _ = mixture('uniform', 'config.compare')
      n, tokens = compare.swarm_size(config, proxy)
      for i in range(n):
        add('swarm', f'swarm {i} (Dirichlet mixture)', counts_from_weights(even, tokens, seq_len))
    if 'doremi' in chosen:
      ref, note = mixture(config.compare.doremi_reference, 'config.compare.doremi_reference')
      even, _ = mixture('uniform', 'config.compare')
      tokens = compare.doremi_tokens(config, proxy)
      add('doremi', f'doremi reference{note}', counts_from_weights(ref, tokens, seq_len))
      add('doremi', 'doremi proxy (uniform batches, reweighted loss; + reference forwards)',
          counts_from_weights(even, tokens, seq_len))
    for t in validate.targets(config):
      even, _ = mixture('uniform', 'config.compare')
      for name in chosen:
        learned = name in compare.LEARNED
        for s in range(len(seeds)):
          note = (' (weights after the proxies)' if learned else
                  ' (from the data: shares known after prepare)'
                  if name in ('natural', 'temperature', 'unimax') else '')
          add(f'compare {t:,}', run_label(name, s, len(seeds)) + note,
              counts_from_weights(even, t, seq_len))
    out(f'compare: every learned method may spend {proxy:,} proxy tokens, at most '
        f'{compare.run_tokens(config):,} per run; identical mixtures train once.')
  if config.mode in ('predict', 'autoscale'):
    out('predict: targets ' + ', '.join(f'{t:,}' for t in predict.targets(config)) + ' tokens')
  return planned


def _trajectories(config: ml_collections.ConfigDict, trainable: np.ndarray,
                  out: Callable[[str], None]) -> list[tuple[str, str, int, int, str]]:
  """ddo.trajectories' rows: each trunk, then each branch's cooldown (what it trains itself)."""
  names, seq_len = [d.name for d in config.data.domains], int(config.data.seq_len)
  batch, sizes = int(config.train.batch_size), ddo.budgets(config)
  _, tops, warmup, points = ddo.trajectory_layout(config, names, np.ones(len(names)), trainable,
                                                  seq_len)
  rows = []
  for b in sizes[::-1]:
    for spec, entry in zip(tops, points):
      p = entry[b]
      if p.branch_step is None:
        stage, name, counts = f'ddo trunk {b:,}', spec.name + ' (wsd)', p.counts
      else:
        cooled = np.asarray(mixture_lib.prefix_counts(spec.counts, p.branch_step * batch))
        stage, counts = f'ddo branch {b:,}', p.counts - cooled
        name = f'{spec.name} (cooldown, steps {p.branch_step}-{p.steps} of the trunk)'
      rows.append((stage, name, int(counts.sum()) * seq_len, p.trained_steps(),
                   ' '.join(f'{int(c) * seq_len:,}' for c in counts)))
  trained, separate = ddo.cost(config, names, np.ones(len(names)), trainable, seq_len)
  target = predict.targets(config)[0]
  out(f'ddo: trajectories, {len(tops)} trunks to {sizes[-1]:,} tokens with '
      f'{len(tops) * (len(sizes) - 1)} cooldown branches (warmup {warmup} steps, cooldown '
      f'{config.train.cooldown_fraction:g} of each run, {config.train.cooldown_shape}): '
      f'{trained:,} proxy tokens, {trained / target:.2f}x the {target:,}-token target; separate '
      f'runs of the same budgets: {separate:,} ({separate / target:.2f}x).')
  return rows


def _table(rows: list[tuple], names: list[str], out: Callable[[str], None]) -> None:
  if not rows:
    return
  header = ('stage', 'run', 'tokens', 'steps', 'per-domain tokens (' + ' '.join(names) + ')')
  w0 = max(len(header[0]), *(len(r[0]) for r in rows))
  w1 = max(len(header[1]), *(len(r[1]) for r in rows))
  out(f'{header[0]:<{w0}}  {header[1]:<{w1}}  {header[2]:>15}  {header[3]:>9}  {header[4]}')
  for r in rows:
    out(f'{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]:>15,}  {r[3]:>9,}  {r[4]}')
  out(f'{len(rows)} runs, {sum(r[2] for r in rows):,} tokens, {sum(r[3] for r in rows):,} '
      'steps in all (runs already finished in the workdir are skipped when it trains).')
