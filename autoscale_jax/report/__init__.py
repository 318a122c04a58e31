"""The experiment report, built from the workdir's files alone (mode=report rebuilds it).

report/report.md holds the sections below in order; each section is a function of the loaded
Results that returns its markdown lines (and writes its plot, if it has one), so a new table or
figure is one function added to SECTIONS.
"""

from collections.abc import Callable

from etils import epath

from autoscale_jax.io import write_text_atomic
from autoscale_jax.lead import is_lead
from autoscale_jax.report import plots, recommendation, tables
from autoscale_jax.report.results import Results, load

SECTIONS: tuple[Callable[[Results], list[str]], ...] = (
    tables.header,
    recommendation.recommendation,
    tables.comparison,
    plots.methods,
    tables.verdicts,
    recommendation.calibration,
    plots.validation,
    plots.fits,
    tables.ddo,
    tables.prediction,
    recommendation.expectations,
    plots.weights,
    tables.checks,
    tables.validation,
    plots.curves,
)


def write_report(workdir: epath.PathLike) -> epath.Path:
  """Writes report/report.md (+ PNGs) from what the workdir holds; returns the report's path.

  Every process reads the workdir (so a missing result fails everywhere); process 0 writes.
  """
  results = load(epath.Path(workdir))
  path = results.folder / 'report.md'
  if is_lead():
    write_text_atomic(path, '\n'.join(line for section in SECTIONS for line in section(results)))
  return path
