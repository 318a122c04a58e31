"""Benchmark of the mixing math: fit, DDO solve, AutoScale predict and bootstrap (CPU or any jax
backend). Times are medians over repeats after a compiling warm-up call. Prints a table last and
rewrites the "## Mixing math" section of bench/RESULTS.md with the command and the figures.

  python bench/mixing.py
"""

import datetime
import os
import pathlib
import platform
import re
import statistics
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from autoscale_jax.mixing import (
  AutoScaleModel,
  DDOProblem,
  PowerLaw,
  fit_domains,
  fit_power_law,
  perturbation_plan,
  solve_ddo,
)
from autoscale_jax.mixing.ddo import _solve_kernel

RESULTS = pathlib.Path(__file__).with_name('RESULTS.md')
HEADING = '## Mixing math'


def median_seconds(fn, repeats: int) -> float:
  fn()  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def random_fits(m: int, rng: np.random.Generator) -> list[PowerLaw]:
  return [PowerLaw(a, b, 0.0) for a, b in zip(np.exp(rng.uniform(np.log(0.05), np.log(5), m)),
                                              np.exp(rng.uniform(np.log(0.1), np.log(3), m)))]


def kernel_seconds(fits: list[PowerLaw], repeats: int) -> float:
  """The compiled solve alone (m is a power of two here, so no padding): the floor of a call."""
  with jax.enable_x64(True):
    a, b = (jnp.asarray([getattr(f, k) for f in fits]) for k in 'ab')
    m = len(fits)
    args = (a, b, jnp.ones(m), jnp.full(m, 0.2), jnp.full(m, jnp.inf), jnp.float64(m))
    return median_seconds(lambda: _solve_kernel(*args).block_until_ready(), repeats)


def world(m: int, budget: float, rng: np.random.Generator):
  """A DDO problem measured in a separable power-law world: plan, objectives, fits."""
  beta, gamma = rng.uniform(1, 5, m), rng.uniform(0.1, 0.6, m)
  plan = perturbation_plan(np.full(m, budget / m), replicates=2)
  objectives = [np.sum(beta * p.quantities**-gamma) * (1 + 1e-4 * rng.standard_normal())
                for p in plan]
  return plan, objectives


def main() -> None:
  rng = np.random.default_rng(0)
  rows = []  # (what, median, repeats)

  for m, repeats in ((7, 200), (1000, 50)):
    fits = random_fits(m, rng)
    rows.append((f'solve_ddo, m={m} (public call)',
                 median_seconds(lambda: solve_ddo(fits, total=m, lower=0.2), repeats), repeats))
  kernel = {m: kernel_seconds(random_fits(m, rng), 200) for m in (8, 1024)}
  rows.append(('  compiled kernel alone, m=8', kernel[8], 200))
  rows.append(('  compiled kernel alone, m=1024', kernel[1024], 200))

  x = np.array([0.2, 1.0, 3.0])
  y = PowerLaw(1.0, 0.8, 0.1)(x)
  rows.append(('fit_power_law, 3 points', median_seconds(lambda: fit_power_law(x, y), 50), 50))
  plan, objectives = world(7, 7e8, rng)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    rows.append(('fit_domains, m=7, 2 replicates (7 fits x 6 points)',
                 median_seconds(lambda: fit_domains(plan, objectives), 20), 20))
    problems = []
    for budget in (7e7, 7e8):
      plan, objectives = world(7, budget, np.random.default_rng(1))
      problems.append(DDOProblem(plan[0].quantities, fit_domains(plan, objectives), 0.2, 3.0))
    model = AutoScaleModel.from_ddo(problems)
    optima = {float(b): q for b, q in zip(model.budgets, model.quantities)}
    rows.append(('AutoScaleModel.fit + predict, m=7, 2 budgets',
                 median_seconds(lambda: AutoScaleModel.fit(optima).predict(7e10), 50), 50))
    rows.append(('predict_weights_interval, m=7, 2 budgets, 100 samples',
                 median_seconds(lambda: model.predict_weights_interval(7e10, samples=100), 3), 3))

  report(rows, kernel)


def machine() -> str:
  cpu = platform.processor() or platform.machine()
  info = pathlib.Path('/proc/cpuinfo')
  if info.exists():
    names = re.findall(r'model name\s*:\s*(.+)', info.read_text())
    cpu = names[0] if names else cpu
  return (f'{cpu}, {os.cpu_count()} cores, jax {jax.__version__} on '
          f'{jax.devices()[0].platform} ({jax.devices()[0].device_kind}), Python '
          f'{platform.python_version()}; load average {os.getloadavg()[0]:.2f} at the end')


def report(rows, kernel) -> None:
  width = max(len(r[0]) for r in rows)
  table = [f'| {"what":<{width}} | median ms | repeats |',
           f'|{"-" * (width + 2)}|----------:|--------:|']
  table += [f'| {what:<{width}} | {seconds * 1e3:9.3f} | {repeats:7d} |'
            for what, seconds, repeats in rows]
  solve7, solve1000 = rows[0][1], rows[1][1]
  limits = (f'What limits it: for m=7 the compiled solve takes {kernel[8] * 1e3:.3f} ms of the '
            f'{solve7 * 1e3:.3f} ms call, the rest is Python-side checking, array building and '
            f'dispatch; for m=1000 the kernel (128 bisection steps over 1024 domains) takes '
            f'{kernel[1024] * 1e3:.3f} ms of {solve1000 * 1e3:.3f} ms. Goals: < 10 ms (m=7), '
            '< 1000 ms (m=1000). Fits are bound by their start search (a profiled grid) and LM '
            'iterations; the bootstrap by its 2 x 7 batched refits and 100 x 2 DDO re-solves.')
  now = datetime.datetime.now().astimezone()
  section = '\n'.join([
      HEADING, '',
      f'Command: `python bench/mixing.py` (run {now:%Y-%m-%d %H:%M %Z}).',
      f'Machine: {machine()}.', '', *table, '', limits, ''])
  text = RESULTS.read_text() if RESULTS.exists() else '# Benchmark results\n'
  pattern = re.compile(rf'^{re.escape(HEADING)}\n.*?(?=^## |\Z)', re.S | re.M)
  text = pattern.sub(section + '\n', text) if pattern.search(text) else (
      text.rstrip('\n') + '\n\n' + section)
  RESULTS.write_text(text)
  print('\n'.join(table))


if __name__ == '__main__':
  sys.exit(main())
