"""Which mixture method wins at equal proxy compute, on real text? mode=compare, resumable.

The scale study's setting (bench/scale_study.py: the demo corpus, the demo model, 256
validation sequences, DDO at the budgets its pilot chose with 2 replicates, the target 4x the
larger one, 3 seeds) with every method of mode=compare: AutoScale, reuse, RegMix and the Data
Mixing Law on one swarm of the same proxy compute as the DDO stages (runs of the larger DDO
budget, so the target is 4x every method's proxy runs), DoReMi (a reference and a proxy run of
that size: it spends less), temperature sampling, UniMax, uniform and natural. It shares
the scale study's workdir, so the runs both need (the DDO budgets, uniform / natural / reuse /
AutoScale at the target) are trained once; on a new machine the DDO budgets come back from the
scale study's committed ddo summary.

Stages: `compare` (everything; pauses at --max-minutes like a preempted job and the same command
resumes it; its summary bench/results/compare/compare.json is written when it completes), then
`report` (the bench/RESULTS.md section from the summary).

Needs the regmix extra (LightGBM): pip install -e ".[regmix]".

  python bench/compare.py --workdir=/tmp/scale_study [--stage=next|compare|report]
      [--max-minutes=75]
"""

import argparse
import json
import pathlib
import sys
import time

from absl import logging
from etils import epath

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _common  # noqa: E402  pylint: disable=g-import-not-at-top
import scale_study  # noqa: E402  pylint: disable=g-import-not-at-top
from autoscale_jax import pipeline  # noqa: E402
from autoscale_jax.mixing import confidence  # noqa: E402

SUMMARY = _common.ROOT / 'bench' / 'results' / 'compare' / 'compare.json'


def compare_config(world: str = ''):
  """The scale study's validation setting in mode=compare."""
  c = scale_study.pipeline_config('validate')
  c.mode = 'compare'
  c.world = world
  # RegMix's own regressor (the paper's choice; pip install -e ".[regmix]"). A linear fit of the
  # mean perplexity, which blows up where a domain is starved, has its optimum at a vertex.
  c.compare.regmix_regressor = 'lightgbm'
  return c


def run(workdir: epath.Path, world: str = '') -> dict:
  start = time.time()
  config = compare_config(world)
  if not world:  # real runs only: the synthetic world has its own DDO results
    scale_study.restore_budgets(workdir, config.ddo.budgets)
  pipeline.dispatch(config, str(workdir))
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
  plans = {name: json.loads((workdir / name / 'plan.json').read_text())
           for name in ('swarm', 'doremi') if (workdir / name / 'plan.json').exists()}
  sizes = {'swarm_runs': len(plans['swarm']['runs']) if 'swarm' in plans else 0,
           'swarm_run_tokens': max(plans['swarm']['run_tokens']) if 'swarm' in plans else 0,
           'doremi_run_tokens': plans['doremi']['run_tokens'] if 'doremi' in plans else 0,
           'regmix_regressor': config.compare.regmix_regressor}
  return {'command': _common.command(), 'machine': _common.machine(), 'load': _common.load(),
          'wall_min': round((time.time() - start) / 60, 1), 'world': world,
          'finished': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), 'target': target,
          'seeds': c['seeds'], 'domains': c['mixture_domains'], 'methods': methods, **sizes}


def _span(d: dict, fmt: str) -> str:
  if d['low'] is None:
    return '1 seed'
  return f"[{format(d['low'], fmt)}, {format(d['high'], fmt)}]"


def report_section(s: dict) -> list[str]:
  lines = [f"Summary: bench/results/compare/compare.json (`{s['command']}`, {s['finished']}, "
           f"{s['wall_min']} min of this invocation; load {s['load']}). Target "
           f"{s['target']:,} tokens, {len(s['seeds'])} seeds per method; the scale study's "
           f"corpus, model and DDO budgets. The swarm RegMix and the mixing law share: "
           f"{s['swarm_runs']} runs of {s['swarm_run_tokens']:,} tokens; DoReMi: a reference and "
           f"a proxy run of {s['doremi_run_tokens']:,} tokens. No proxy run trains more than the "
           f"larger DDO budget, so the target is at least 4x every proxy run. RegMix's regressor: "
           f"{s['regmix_regressor']}.", '',
           '| method | proxy tokens | objective [95%] | vs uniform [95%] | verdict | '
           'tokens saved vs uniform |', '|---|---|---|---|---|---|']
  ranked = sorted(s['methods'].items(), key=lambda kv: kv[1]['objective']['mean'])
  for m, r in ranked:
    o, v, t = r['objective'], r['vs_uniform'], r['tokens_saved']
    saved = '-' if t is None else ('not reached' if t['value'] is None
                                   else f"{100 * t['value']:.1f}%")
    name = f"{m} (= {r['same_as']})" if r['same_as'] else m
    lines.append(f"| {name} | "
                 f"{r['proxy_tokens']:,} | {o['mean']:.2f} {_span(o, '.2f')} | "
                 f"{'-' if v is None else format(v['mean'], '+.2f') + ' ' + _span(v, '+.2f')} | "
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
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default='/tmp/scale_study')
  parser.add_argument('--stage', default='next', choices=('next', 'compare', 'report'))
  parser.add_argument('--max-minutes', type=float, default=75.0)
  parser.add_argument('--world', default='', choices=('', 'synthetic'),
                      help="'synthetic': a seconds-long smoke run (writes no summary)")
  args = parser.parse_args()
  logging.set_verbosity(logging.INFO)
  scale_study.pause_after(args.max_minutes)
  stage = args.stage
  if stage == 'next':
    stage = 'report' if SUMMARY.exists() else 'compare'
  if stage == 'compare':
    summary = run(epath.Path(args.workdir), args.world)
    if args.world:
      print(json.dumps(summary['methods'], indent=1)[:3000])
      return
    scale_study.write_json(SUMMARY, summary)
    return
  _common.write_section('## Mixture methods at equal proxy compute (issue 15)',
                        report_section(json.loads(SUMMARY.read_text())))


if __name__ == '__main__':
  main()
