"""User-facing errors: raised for anything a user can fix, reported by main as one sentence."""

import math

import numpy as np


class UserError(ValueError):
  """A mistake in the config, the data or the workdir; the message names the field and the fix."""


class ConfigError(UserError):
  """A config value that cannot work (checked before any expensive step)."""


def check_number(value, field: str, *, least: float | None = None,
                 more_than: float | None = None, most: float | None = None,
                 below: float | None = None, whole: bool = False,
                 error: type[UserError] = ConfigError) -> float:
  """`value` as a float; raises `error` naming `field` unless it is a finite (whole) number in
  the stated range: >= least, > more_than, <= most, < below (each bound optional)."""
  kinds = (int, np.integer) if whole else (int, float, np.integer, np.floating)
  bounds = [f'{op} {b:g}' for op, b in (('>=', least), ('>', more_than), ('<=', most),
                                        ('<', below)) if b is not None]
  fits = (not isinstance(value, bool) and isinstance(value, kinds) and math.isfinite(value)
          and (least is None or value >= least) and (more_than is None or value > more_than)
          and (most is None or value <= most) and (below is None or value < below))
  if not fits:
    wanted = ' '.join(['a whole number' if whole else 'a number', ' and '.join(bounds)]).strip()
    raise error(f'{field} is {value!r}; it must be {wanted}.')
  return float(value)
