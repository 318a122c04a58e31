"""Which mixture method wins at equal proxy compute, on real text? mode=compare, in stages.

The scale study's setting (bench/scale_study.py: the demo corpus, the demo model, 256
validation sequences, DDO at the budgets its pilot chose with 2 replicates, the target 4x the
larger one, 3 seeds) with every method of mode=compare: AutoScale, reuse, RegMix and the Data
Mixing Law on one swarm of the same proxy compute as the DDO stages (runs of the larger DDO
budget, so the target is 4x every method's proxy runs), DoReMi (a reference and a proxy run of
that size: it spends less), temperature sampling, UniMax, uniform and natural. On a new machine
the DDO budgets come back from the scale study's committed ddo summary.

Stages, in order (--stage=next, the default, runs the first one without a summary); each
commits bench/results/compare/<stage>.json holding the result.json of every run it trained, so
a later stage (or a later session on a new machine) trains none of them again:
  proxies       the swarm and DoReMi's two runs; every method's mixture at the target
  validate_a    uniform, natural, AutoScale and reuse at the target, 3 seeds
  validate_b    RegMix, the mixing law, DoReMi, temperature and UniMax at the target, 3 seeds
  compare       mode=compare with every method (trains nothing left): compare.json
  report        the bench/RESULTS.md section from compare.json

A stage pauses at --max-minutes like a preempted job; the same command resumes it.
Needs the regmix extra (LightGBM): pip install -e ".[regmix]".

  python bench/compare.py --workdir=/tmp/compare [--stage=next|NAME] [--max-minutes=75]
"""

import json
import pathlib
import sys
import time

import ml_collections
from absl import logging
from etils import epath

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _common  # noqa: E402  pylint: disable=g-import-not-at-top
import scale_study  # noqa: E402  pylint: disable=g-import-not-at-top
from autoscale_jax import pipeline  # noqa: E402
from autoscale_jax.mixing import confidence  # noqa: E402
from autoscale_jax.pipeline import compare, lock  # noqa: E402
from autoscale_jax.report import tables  # noqa: E402

SUMMARIES = _common.ROOT / 'bench' / 'results' / 'compare'
SUMMARY = SUMMARIES / 'compare.json'
STAGES = ('proxies', 'validate_a', 'validate_b', 'compare', 'report')
GROUPS = {'validate_a': ('uniform', 'natural', 'autoscale', 'reuse'),
          'validate_b': ('regmix', 'mixing_law', 'doremi', 'temperature', 'unimax')}


def compare_config(world: str = '', methods=None):
  """The scale study's validation setting in mode=compare, with `methods` only when given (then
  no extra baselines: a stage validates its group)."""
  c = scale_study.pipeline_config('validate')
  c.mode = 'compare'
  c.world = world
  if methods is not None:
    c.compare.methods = tuple(methods)
    c.validate.baselines = ml_collections.ConfigDict()
  # RegMix's own regressor (the paper's choice; pip install -e ".[regmix]"). A linear fit of the
  # mean perplexity, which blows up where a domain is starved, has its optimum at a vertex.
  c.compare.regmix_regressor = 'lightgbm'
  return c


def summary_path(stage: str) -> pathlib.Path:
  return SUMMARIES / f'{stage}.json'


def _restore(workdir: epath.Path, config) -> set[str]:
  """The DDO budgets and every earlier stage's runs back into `workdir`; the finished runs."""
  scale_study.restore_budgets(workdir, config.ddo.budgets)
  scale_study.restore_runs(workdir, [json.loads(summary_path(s).read_text()) for s in STAGES[:-1]
                                     if summary_path(s).exists()])
  return scale_study.finished_runs(workdir)


def proxies(workdir: epath.Path) -> dict:
  """The swarm's and DoReMi's runs (DDO's come from the scale study); every method's mixture."""
  start, config = time.time(), compare_config()
  before = _restore(workdir, config)
  with lock.workdir_lock(workdir):
    _, found = compare.mixtures(config, workdir)
  (target, answers), = found['answers'].items()
  return {**scale_study.header('proxies', start), 'target': target,
          'weights': {m: w.tolist() for m, w in answers.items()},
          'proxy_tokens': found['proxy_tokens'], 'proxy_runs': found['proxy_runs'],
          'run_files': scale_study.run_files(workdir, scale_study.finished_runs(workdir) - before)}


def validate_group(stage: str, workdir: epath.Path) -> dict:
  """The stage's methods (and uniform, the reference) validated at the target."""
  start, config = time.time(), compare_config(methods=GROUPS[stage])
  before = _restore(workdir, config)
  pipeline.dispatch(config, str(workdir))
  return {**scale_study.header(stage, start), **_methods(workdir, config),
          'run_files': scale_study.run_files(workdir, scale_study.finished_runs(workdir) - before)}


def _methods(workdir: epath.Path, config) -> dict:
  """Per method of compare/<target>.json: weights, proxy tokens, objective, verdict vs uniform."""
  target = int(config.validate.targets[0])
  c = json.loads((workdir / 'compare' / f'{target}.json').read_text())
  methods = {}
  for m, r in c['runs'].items():
    v = c['verdicts'].get(m)
    methods[m] = {'weights': r['weights'], 'proxy_tokens': c['proxy_tokens'].get(m, 0),
                  'same_as': c['same_as'].get(m),
                  'objective': confidence.mean_interval([s['objective'] for s in r['seeds']]),
                  'vs_uniform': None if v is None else v['objective'],
                  'tokens_saved': None if v is None else v['tokens_saved']}
  return {'target': target, 'seeds': c['seeds'], 'domains': c['mixture_domains'],
          'methods': methods}


def run(workdir: epath.Path, world: str = '') -> dict:
  """mode=compare with every method; after the stages above it trains nothing."""
  start, config = time.time(), compare_config(world)
  before = set() if world else _restore(workdir, config)  # the synthetic world trains nothing
  pipeline.dispatch(config, str(workdir))
  plans = {name: json.loads((workdir / name / 'plan.json').read_text())
           for name in ('swarm', 'doremi') if (workdir / name / 'plan.json').exists()}
  sizes = {'swarm_runs': len(plans['swarm']['runs']) if 'swarm' in plans else 0,
           'swarm_run_tokens': max(plans['swarm']['run_tokens']) if 'swarm' in plans else 0,
           'doremi_run_tokens': plans['doremi']['run_tokens'] if 'doremi' in plans else 0,
           'regmix_regressor': config.compare.regmix_regressor}
  trained = scale_study.finished_runs(workdir) - before
  return {**scale_study.header('compare', start), 'world': world, **_methods(workdir, config),
          **sizes, 'trained_here': len(trained),
          'run_files': scale_study.run_files(workdir, trained)}


def report_section(s: dict) -> list[str]:
  stages = [json.loads(summary_path(st).read_text()) for st in STAGES[:-1]
            if summary_path(st).exists()]
  lines = ['Corpus, model and DDO budgets: the scale study\'s (above). Each stage wrote '
           'bench/results/compare/<stage>.json (with the result.json of every run it trained):', '']
  lines += [f"- {st['stage']}: `{st['command']}` ({st['finished']}, {st['wall_min']} min; load "
            f"{st['load']})" for st in stages]
  lines += ['', f"Target {s['target']:,} tokens, {len(s['seeds'])} seeds per method. The swarm "
           f"RegMix and the mixing law share: {s['swarm_runs']} runs of "
           f"{s['swarm_run_tokens']:,} tokens; DoReMi: a reference and a proxy run of "
           f"{s['doremi_run_tokens']:,} tokens. No proxy run trains more than the larger DDO "
           f"budget, so the target is at least 4x every proxy run. RegMix's regressor: "
           f"{s['regmix_regressor']}.", '',
           '| method | proxy tokens | objective [95%] | vs uniform [95%] | verdict | '
           'tokens saved vs uniform [95%] |', '|---|---|---|---|---|---|']
  ranked = sorted(s['methods'].items(), key=lambda kv: kv[1]['objective']['mean'])
  for m, r in ranked:
    o, v, t = r['objective'], r['vs_uniform'], r['tokens_saved']
    saved = '-' if t is None else tables.saved_text(t)
    diff = '-' if v is None else f"{v['mean']:+.2f} {scale_study.interval(v)}"
    name = f"{m} (= {r['same_as']})" if r['same_as'] else m
    lines.append(f"| {name} | "
                 f"{r['proxy_tokens']:,} ({r['proxy_tokens'] / s['target']:.2f}x target) | "
                 f"{o['mean']:.2f} {scale_study.interval(o, '.2f')} | "
                 f"{diff} | "
                 f"{'-' if v is None else v['verdict']} | {saved} |")
  lines += ['', '| method | ' + ' | '.join(s['domains']) + ' |',
            '|---|' + '---|' * len(s['domains'])]
  for m, r in ranked:
    lines.append(f'| {m} | ' + ' | '.join(f'{w:.3f}' for w in r['weights']) + ' |')
  reading = SUMMARY.with_name('reading.md')
  if reading.exists():
    lines += ['', '### Reading', '', reading.read_text().strip()]
  return lines


def main() -> None:
  parser = _common.stage_parser(__doc__, '/tmp/compare', STAGES)
  parser.add_argument('--world', default='', choices=('', 'synthetic'),
                      help="'synthetic': every method in seconds (stage compare; no summary)")
  args = parser.parse_args()
  logging.set_verbosity(logging.INFO)
  scale_study.pause_after(args.max_minutes)
  workdir = epath.Path(args.workdir)
  if args.world:
    print(json.dumps(run(workdir, args.world)['methods'], indent=1)[:3000])
    return
  stage = args.stage
  if stage == 'next':
    stage = next((s for s in STAGES[:-1] if not summary_path(s).exists()), 'report')
  print(f'compare: stage {stage} in {workdir}')
  if stage == 'report':
    _common.write_section('## Mixture methods at equal proxy compute (issue 15)',
                          report_section(json.loads(SUMMARY.read_text())))
    return
  summary = (proxies(workdir) if stage == 'proxies' else run(workdir) if stage == 'compare'
             else validate_group(stage, workdir))
  scale_study.write_json(summary_path(stage), summary)


if __name__ == '__main__':
  main()
