"""Data: sources, tokenizers, token stores, the mixture sampler and the host loader."""


class DataError(ValueError):
  """A data problem the user can fix (bad source, missing file or field, too little data)."""
