"""Process 0 leads a multi-process job: it alone prints and writes the shared results and the
report. The other processes compute the same values and keep quiet, so no shared file is written
twice at once and no line is printed once per host."""

import sys

import jax
from etils import epath

from autoscale_jax.io import write_json_atomic


def is_lead() -> bool:
  return jax.process_index() == 0


def say(text: str, *, stderr: bool = False) -> None:
  """print(), on process 0 only."""
  if is_lead():
    print(text, file=sys.stderr if stderr else sys.stdout, flush=True)


def write_json(path: epath.PathLike, obj) -> None:
  """write_json_atomic, on process 0 only."""
  if is_lead():
    write_json_atomic(path, obj)
