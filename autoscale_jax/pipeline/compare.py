"""mode=compare: the mixture methods side by side at equal proxy compute, each answer validated
at the targets with the same seeds, trainer, sampler and validation sets.

Every learned method may spend compare.proxy_tokens training tokens on proxy runs (default: what
AutoScale's DDO budgets cost), and no single proxy run trains more than compare.proxy_run_tokens
(default: the largest DDO budget), so every method's proxies are as far below the target as
AutoScale's. AutoScale and reuse spend them on the DDO stages; RegMix and the Data Mixing Law
share one swarm of runs at random mixtures (swarm/plan.json, the runs in runs/), as many as the
budget buys at that size; DoReMi a reference run and a proxy run of 3/7 of them each (capped),
its reference forwards counted a third of a token each (doremi/plan.json); the heuristics and
fixed mixtures spend nothing. Identical mixtures are the same runs and train once.

Writes compare/methods.json (every method's weights at every target, its proxy tokens) and
compare/<tokens>.json per target (every method's seeds, verdicts against uniform).
"""

import ml_collections
import numpy as np
from absl import logging
from etils import epath

from autoscale_jax.data.mixture import counts_from_weights, resolve_weights
from autoscale_jax.errors import ConfigError, check_number
from autoscale_jax.lead import write_json
from autoscale_jax.mixing import (
  MixingLaw,
  RegMixRegressor,
  regmix_search,
  temperature_weights,
  unimax_weights,
)
from autoscale_jax.pipeline import ddo, predict, validate
from autoscale_jax.pipeline.registry import Experiment, RunSpec, format_weights, tokens_key
from autoscale_jax.report import verdicts

METHODS = ('autoscale', 'reuse', 'regmix', 'mixing_law', 'doremi', 'temperature', 'unimax',
           'uniform', 'natural')
LEARNED = ('autoscale', 'reuse', 'regmix', 'mixing_law', 'doremi')  # spend proxy compute
FORWARD = 1 / 3  # a forward pass's share of a training step's FLOPs (DoReMi's reference)
SWARM = ('regmix', 'mixing_law')  # share the swarm
REFERENCE = 'uniform'  # every method's verdict is against it


def methods(config: ml_collections.ConfigDict) -> list[str]:
  """compare.methods, checked, then every validate.baselines name not among them."""
  chosen = list(config.compare.methods)
  unknown = [m for m in chosen if m not in METHODS]
  if unknown:
    raise ConfigError(f"config.compare.methods names unknown method(s) {unknown}; use any of "
                      f"{', '.join(METHODS)}.")
  if REFERENCE not in chosen:
    chosen.append(REFERENCE)  # the verdicts need it
  return chosen + [b for b in config.validate.baselines if b not in chosen]


def check(config: ml_collections.ConfigDict) -> None:
  """compare's numbers and choices, before anything trains."""
  c = config.compare
  check_number(c.proxy_tokens, 'config.compare.proxy_tokens', least=0)
  check_number(c.proxy_run_tokens, 'config.compare.proxy_run_tokens', least=0, whole=True)
  check_number(c.swarm_runs, 'config.compare.swarm_runs', least=0, whole=True)
  if c.swarm_runs == 1:
    raise ConfigError('config.compare.swarm_runs is 1; it must be a whole number >= 2 (a '
                      'regression needs several mixtures), or 0 for as many as the budget buys.')
  check_number(c.swarm_concentration, 'config.compare.swarm_concentration', more_than=0)
  check_number(c.regmix_samples, 'config.compare.regmix_samples', least=1, whole=True)
  check_number(c.regmix_top_k, 'config.compare.regmix_top_k', least=1, whole=True)
  check_number(c.temperature, 'config.compare.temperature', more_than=0)
  check_number(c.unimax_epochs, 'config.compare.unimax_epochs', more_than=0)
  check_number(c.doremi_step_size, 'config.compare.doremi_step_size', least=0)
  check_number(c.doremi_smoothing, 'config.compare.doremi_smoothing', least=0, most=1)
  mix_names = [d.name for d in config.data.domains if not d.get('eval_only', False)]
  resolve_weights(c.doremi_reference, mix_names, np.ones(len(mix_names)),
                  'config.compare.doremi_reference')
  if c.swarm_prior not in ('uniform', 'natural'):
    raise ConfigError(f"config.compare.swarm_prior is '{c.swarm_prior}'; use 'uniform' or "
                      "'natural'.")
  if c.regmix_regressor not in ('linear', 'lightgbm'):
    raise ConfigError(f"config.compare.regmix_regressor is '{c.regmix_regressor}'; use 'linear' "
                      "or 'lightgbm'.")


def run_tokens(config: ml_collections.ConfigDict) -> int:
  """The most tokens one swarm or DoReMi run trains (compare.proxy_run_tokens)."""
  return int(config.compare.proxy_run_tokens) or ddo.budgets(config)[-1]


def swarm_size(config: ml_collections.ConfigDict, proxy_tokens: int) -> tuple[int, int]:
  """(runs, tokens per run) of the swarm: compare.swarm_runs runs, or (0) as many as the budget
  buys at run_tokens each; each gets its share of the budget, at most run_tokens."""
  cap = run_tokens(config)
  n = int(config.compare.swarm_runs) or max(2, proxy_tokens // cap)
  return n, min(proxy_tokens // n, cap)


def doremi_tokens(config: ml_collections.ConfigDict, proxy_tokens: int) -> int:
  """Tokens of DoReMi's reference run and of its proxy run: 3/7 of the budget each
  (reference + proxy + a third of the proxy's tokens for the reference's forwards = the
  budget), at most run_tokens."""
  return min(3 * proxy_tokens // 7, run_tokens(config))


def swarm_plan(exp: Experiment, proxy_tokens: int) -> tuple[np.ndarray, list[RunSpec]]:
  """Mixtures drawn from a Dirichlet around the prior (seeded by config.seed), as many and as
  long as swarm_size says, each trained with the config's seed."""
  c = exp.config.compare
  m = len(exp.mix_names)
  natural = exp.natural[exp.trainable]
  prior = natural / natural.sum() if c.swarm_prior == 'natural' else np.full(m, 1.0 / m)
  n, tokens = swarm_size(exp.config, proxy_tokens)
  rng = np.random.default_rng(int(exp.config.seed))
  mixtures = rng.dirichlet(float(c.swarm_concentration) * m * prior, n)
  specs = [RunSpec(f'swarm {i}', exp.full(counts_from_weights(w, tokens, exp.seq_len)),
                   int(exp.config.seed)) for i, w in enumerate(mixtures)]
  return mixtures, specs


def doremi_plan(exp: Experiment, proxy_tokens: int) -> tuple[RunSpec, RunSpec, int, np.ndarray]:
  """DoReMi's reference run (compare.doremi_reference) and proxy run (uniform) of
  doremi_tokens each, what they spend (the reference's forwards a third of a token each), and
  the reference weights."""
  c = exp.config.compare
  m = len(exp.mix_names)
  natural = exp.natural[exp.trainable]
  reference = resolve_weights(c.doremi_reference, exp.mix_names, natural,
                              'config.compare.doremi_reference')
  tokens = doremi_tokens(exp.config, proxy_tokens)
  ref = RunSpec('reference', exp.full(counts_from_weights(reference, tokens, exp.seq_len)),
                int(exp.config.seed))
  proxy = exp.doremi_spec('proxy',
                          exp.full(counts_from_weights(np.full(m, 1 / m), tokens, exp.seq_len)),
                          ref, step_size=float(c.doremi_step_size),
                          smoothing=float(c.doremi_smoothing))
  spent = (int(ref.counts.sum()) + (1 + FORWARD) * int(proxy.counts.sum())) * exp.seq_len
  return ref, proxy, int(round(spent)), reference


def _doremi(exp: Experiment, budget: int) -> tuple[np.ndarray, int, int]:
  """DoReMi's answer over the mixture's domains (the proxy's mean weights), its spend and the
  tokens of each of its two runs."""
  ref, proxy, spent, reference = doremi_plan(exp, budget)
  for spec in (ref, proxy):
    exp.check_run(spec, 'config.compare.proxy_tokens / proxy_run_tokens (DoReMi)')
  write_json(exp.workdir / 'doremi' / 'plan.json', {
      'domains': exp.mix_names, 'proxy_tokens': spent,
      'run_tokens': int(proxy.counts.sum()) * exp.seq_len,
      'reference_weights': reference.tolist(),
      'runs': {'reference': exp.run_dir(ref).name, 'proxy': exp.run_dir(proxy).name}})
  exp.train([ref], 'doremi')
  (result,) = exp.train([proxy], 'doremi')
  weights = np.asarray(result['doremi']['weights_mean'])[exp.trainable]
  return weights / weights.sum(), spent, int(proxy.counts.sum()) * exp.seq_len


def _upper(exp: Experiment, target: int) -> np.ndarray:
  """Each domain's largest weight at `target` that the data allows (data.max_epochs)."""
  return np.minimum(exp.available_tokens / target, 1.0)


def _swarm_answers(exp: Experiment, mixtures: np.ndarray, results: list[dict], target: int,
                   wanted: list[str]) -> dict[str, np.ndarray]:
  """RegMix's and the mixing law's mixtures at `target`, from the swarm's results."""
  config, out = exp.config, {}
  upper = _upper(exp, target)
  if 'mixing_law' in wanted:
    losses = np.array([[r['val_loss'][n] for n in exp.names] for r in results])
    kind = config.eval.objective
    weights = None
    if kind.startswith('weighted'):
      weights = np.array([float(config.eval.objective_weights.get(n, 0.0)) for n in exp.names])
    law = MixingLaw.fit(mixtures, losses)
    out['mixing_law'] = law.optimize(objective_weights=weights, upper=upper,
                                     perplexity=kind.endswith('ppl'))
  if 'regmix' in wanted:
    regressor = RegMixRegressor(kind=config.compare.regmix_regressor).fit(
        mixtures, np.array([r['objective'] for r in results]))
    out['regmix'] = regmix_search(regressor, len(exp.mix_names),
                                  int(config.compare.regmix_samples),
                                  int(config.compare.regmix_top_k),
                                  np.random.default_rng(int(config.seed)), upper=upper)
  return out


def mixtures(config: ml_collections.ConfigDict, workdir: epath.Path) -> tuple[Experiment, dict]:
  """Every method's proxy runs (trained, or found finished) and its mixture at every target:
  the experiment and {'answers': {target: {method: weights}}, 'proxy_tokens': tokens each method
  spent, 'proxy_runs': how long its runs were}. Trains no validation run."""
  check(config)
  chosen = methods(config)
  targets = validate.targets(config)
  if {'autoscale', 'reuse'} & set(chosen):
    predict.check(config)
  exp = Experiment(config, workdir)
  baselines = {n: w for n, w in validate.check(exp).items() if w is not None}
  ddo_tokens = ddo.total_tokens(config, exp.names, exp.natural, exp.trainable, exp.seq_len)
  budget = int(config.compare.proxy_tokens) or ddo_tokens
  # What each method trained on proxies, as counted (its runs' tokens): AutoScale's DDO follows
  # ddo.budgets, not compare.proxy_tokens.
  spent = {m: ddo_tokens if m in ('autoscale', 'reuse') else 0 for m in chosen}
  run_sizes: dict = {'ddo_budgets': ddo.budgets(config)}  # how long the proxy runs are
  if set(SWARM) & set(chosen):  # its plan checked before anything trains
    swarm, specs = swarm_plan(exp, budget)
    m = len(exp.mix_names)
    if 'mixing_law' in chosen and len(specs) < m + 1:
      raise ConfigError(
          f'config.compare.swarm_runs: the swarm has {len(specs)} runs, but the mixing law needs '
          f'at least m + 1 = {m + 1} mixtures for {m} domains; set compare.swarm_runs >= {m + 1} '
          '(or raise compare.proxy_tokens).')
    for spec in specs:
      exp.check_run(spec, 'config.compare.swarm_runs / proxy_run_tokens')
  predictions = None
  if {'autoscale', 'reuse'} & set(chosen):
    predictions = predict.run(config, workdir, ddo.run(exp))
  doremi_weights = None
  if 'doremi' in chosen:
    doremi_weights, spent['doremi'], run_sizes['doremi'] = _doremi(exp, budget)
  swarm_results = None
  if set(SWARM) & set(chosen):
    swarm_tokens = sum(int(s.counts.sum()) for s in specs) * exp.seq_len
    spent.update({m: swarm_tokens for m in SWARM if m in chosen})
    run_sizes['swarm'] = {'runs': len(specs),
                          'tokens': max(int(s.counts.sum()) for s in specs) * exp.seq_len}
    write_json(workdir / 'swarm' / 'plan.json', {
        'domains': exp.mix_names, 'proxy_tokens': swarm_tokens, 'mixtures': swarm.tolist(),
        'run_tokens': [int(s.counts.sum()) * exp.seq_len for s in specs],
        'runs': [{'name': s.name, 'fingerprint': exp.run_dir(s).name} for s in specs]})
    swarm_results = exp.train(specs, f'swarm ({len(specs)} runs)')
  natural = exp.natural[exp.trainable]
  table: dict[int, dict[str, np.ndarray]] = {}
  for target in targets:
    answers: dict[str, np.ndarray] = {}
    for m in chosen:
      if m == 'autoscale':
        answers[m] = np.asarray(predictions['targets'][tokens_key(target)]['weights'])
      elif m == 'reuse':
        answers[m] = validate.reused_weights(exp, predictions, target)
      elif m == 'doremi':
        answers[m] = validate.capped_weights(exp, doremi_weights, target, "DoReMi's mixture")
      elif m == 'temperature':
        answers[m] = temperature_weights(natural, float(config.compare.temperature))
      elif m == 'unimax':
        answers[m] = unimax_weights(natural, target, float(config.compare.unimax_epochs))
      elif m in ('uniform', 'natural'):
        answers[m] = resolve_weights(m, exp.mix_names, natural, 'config.compare.methods')
      elif m in baselines:
        answers[m] = baselines[m]
    if swarm_results is not None:
      answers.update(_swarm_answers(exp, swarm, swarm_results, target, chosen))
    table[target] = {m: answers[m] for m in chosen}
  return exp, {'answers': table, 'proxy_tokens': spent, 'proxy_runs': run_sizes}


def run(config: ml_collections.ConfigDict, workdir: epath.Path) -> list[dict]:
  """Every method's mixture at every target, validated with validate.seeds seeds."""
  exp, found = mixtures(config, workdir)
  spent, table, summaries = found['proxy_tokens'], {}, []
  for k, (target, answers) in enumerate(found['answers'].items()):
    for m, w in answers.items():
      logging.info('[compare @ %s] %s: %s', f'{target:,}', m, format_weights(exp.mix_names, w))
    runs = validate.train_mixtures(exp, answers, target,
                                   f'compare {k + 1}/{len(found["answers"])} @ {target:,} tokens')
    # Identical mixtures are one run; name each after the reference or natural when it is one.
    order = sorted(answers, key=lambda o: (o != REFERENCE, o != 'natural'))
    same = {m: next(o for o in order if np.allclose(answers[o], answers[m], atol=1e-9))
            for m in answers}
    summary = {'target': target, 'domains': exp.names, 'mixture_domains': exp.mix_names,
               'seeds': validate.seeds(exp.config), 'reference': REFERENCE, 'proxy_tokens': spent,
               'proxy_runs': found['proxy_runs'],
               'same_as': {m: o for m, o in same.items() if o != m}, 'runs': runs,
               'verdicts': {m: verdicts.pair(r, runs[REFERENCE], exp.names)
                            for m, r in runs.items() if m != REFERENCE},
               'downstream': verdicts.downstream(runs, REFERENCE)}
    write_json(workdir / 'compare' / f'{tokens_key(target)}.json', summary)
    table[tokens_key(target)] = {m: w.tolist() for m, w in answers.items()}
    summaries.append(summary)
  write_json(workdir / 'compare' / 'methods.json', {'domains': exp.mix_names,
                                                    'proxy_tokens': spent, 'weights': table})
  return summaries
