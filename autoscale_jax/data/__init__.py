"""Data: sources, tokenizers, token stores, the mixture sampler and the host loader."""

from autoscale_jax.errors import UserError


class DataError(UserError):
  """A data problem the user can fix (bad source, missing file or field, too little data)."""
