"""User-facing errors: raised for anything a user can fix, reported by main as one sentence."""


class UserError(ValueError):
  """A mistake in the config, the data or the workdir; the message names the field and the fix."""


class ConfigError(UserError):
  """A config value that cannot work (checked before any expensive step)."""
