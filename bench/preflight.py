"""The shipped configs' preflights (issue 26): each compiled for the slice its comments name, on
this CPU with libtpu (pip install -e ".[tpu]"); every summary under bench/results/preflight/.

  python bench/preflight.py [--only NAME ...]   (then --table: the RESULTS.md table)

Each case runs the real command line (`python -m autoscale_jax.main --config.mode=preflight`) in
a fresh workdir and copies its preflight.json here; a case already summarised is not run again
unless named with --only.
"""

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT = ROOT / 'bench' / 'results' / 'preflight'
# (name, config, slice, extra flags): gpt2_large's eval batch of 128 cannot be split over 256
# data-parallel chips, so on v5e-256 it runs fsdp 128 x tensor 2 (its config comment says so).
CASES = (
    ('gpt2_large_v5p-128', 'gpt2_large', 'v5p-128', ()),
    ('gpt2_large_v5e-256', 'gpt2_large', 'v5e-256', ('--config.mesh.fsdp=128',
                                                      '--config.mesh.tensor=2')),
    ('gpt2_small_v5e-16', 'gpt2_small', 'v5e-16', ()),
    ('bert_base_v4-32', 'bert_base', 'v4-32', ()),
)


def run(name: str, config: str, topology: str, extra: tuple[str, ...]) -> dict:
  with tempfile.TemporaryDirectory() as workdir:
    command = [sys.executable, '-m', 'autoscale_jax.main', f'--config={config}',
               '--config.mode=preflight', f'--config.preflight.topology={topology}', *extra,
               f'--workdir={workdir}']
    start = time.time()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.time() - start
    print(proc.stdout + '\n'.join(l for l in proc.stderr.splitlines() if 'error' in l))
    path = pathlib.Path(workdir) / 'preflight.json'
    if not path.exists():
      raise SystemExit(f'{name}: no preflight.json (exit {proc.returncode}):\n'
                       f'{proc.stderr[-3000:]}')
    summary = json.loads(path.read_text())
    summary.update(command=' '.join(['python -m autoscale_jax.main', *command[3:-1],
                                     '--workdir=/tmp/pf']),
                   wall_s=wall, exit_status=proc.returncode, printed=proc.stdout)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / f'{name}.json.tmp'
    tmp.write_text(json.dumps(summary, indent=1))
    shutil.move(tmp, OUT / f'{name}.json')
    return summary


def table() -> str:
  """The RESULTS.md table of every committed summary."""
  lines = ['| config | slice (mesh) | compile s (all programs) | train step GiB per chip '
           '(of HBM) | fits | roofline step ms | MFU bound | plan hours | plan chip-hours '
           '(roofline / at 50% MFU) |', '|---|---|---:|---:|---|---:|---:|---:|---:|']
  for name, *_ in CASES:
    path = OUT / f'{name}.json'
    if not path.exists():
      continue
    s = json.loads(path.read_text())
    step, plan = s['programs']['train_step'], s['plan'].get('all', {})
    mesh = ' x '.join(f'{k} {v}' for k, v in s['mesh'].items() if v > 1)
    compile_s = sum(r['compile_s'] + r.get('cost_compile_s', 0) for r in s['programs'].values())
    timing = (f'{step["step_s"] * 1e3:.0f} | {step["mfu_bound"]:.0%} | '
              f'{plan["hours_roofline"]:,.1f} | {plan["chip_hours_roofline"]:,.0f} / '
              f'{plan["chip_hours_at_mfu"]:,.0f}') if s['fits'] else 'n/a | n/a | n/a | n/a'
    lines.append(f'| {name.split("_v")[0]} | {s["topology"]} ({mesh}) | {compile_s:.0f} | '
                 f'{step["total_gib"]:.2f} ({step["hbm_gib"]:.1f}) | '
                 f'{"fits" if s["fits"] else "does not fit"} | {timing} |')
  return '\n'.join(lines)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--only', nargs='*', default=None)
  parser.add_argument('--table', action='store_true', help='print the RESULTS.md table only')
  args = parser.parse_args()
  if args.table:
    print(table())
    return
  for name, config, topology, extra in CASES:
    if args.only is not None and name not in args.only:
      continue
    if args.only is None and (OUT / f'{name}.json').exists():
      print(f'{name}: summarised already')
      continue
    summary = run(name, config, topology, extra)
    print(f'{name}: exit {summary["exit_status"]}, {summary["wall_s"]:.0f} s')


if __name__ == '__main__':
  main()
