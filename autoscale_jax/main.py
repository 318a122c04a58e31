"""Entry point: `python -m autoscale_jax.main --config=configs/demo.py --workdir=DIR`.

Dispatches on config.mode. Mistakes a user can fix end in one sentence and exit status 2,
never a traceback; nothing already in the workdir is touched by a failed start.
"""

import logging as py_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               'configs', 'demo.py')
_CONFIG = config_flags.DEFINE_config_file('config', _DEFAULT_CONFIG, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/autoscale_jax',
                               'Where data caches, runs and reports go (local path or gs://).')


class _QuietLibraries(py_logging.Filter):
  """Orbax narrates every checkpoint at INFO; keep its warnings, drop the chatter."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from autoscale_jax import pipeline
  from autoscale_jax.errors import UserError
  from autoscale_jax.train.mesh import maybe_initialize_distributed
  logging.get_absl_handler().addFilter(_QuietLibraries())
  config = _CONFIG.value
  try:
    maybe_initialize_distributed()
    pipeline.dispatch(config, _WORKDIR.value)
  except UserError as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def run() -> None:
  flags.FLAGS.set_default('alsologtostderr', True)
  app.run(main)


if __name__ == '__main__':
  run()
