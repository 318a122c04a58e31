"""User-facing errors: raised for anything a user can fix, reported by main as one sentence."""


class UserError(ValueError):
  """A mistake in the config, the data or the workdir; the message names the field and the fix."""


class ConfigError(UserError):
  """A config value that cannot work (checked before any expensive step)."""


def check_number(value, field: str, *, least: float | None = None,
                 more_than: float | None = None, below: float | None = None,
                 whole: bool = False, error: type[UserError] = ConfigError) -> None:
  """Raises `error` naming `field` unless value is a (whole) number in the stated range:
  >= least, > more_than, < below (each bound optional)."""
  kinds = (int,) if whole else (int, float)
  bounds = [f'{op} {b:g}' for op, b in (('>=', least), ('>', more_than), ('<', below))
            if b is not None]
  fits = (not isinstance(value, bool) and isinstance(value, kinds) and value == value
          and (least is None or value >= least) and (more_than is None or value > more_than)
          and (below is None or value < below))
  if not fits:
    wanted = ' '.join(['a whole number' if whole else 'a number', ' and '.join(bounds)]).strip()
    raise error(f'{field} is {value!r}; it must be {wanted}.')
