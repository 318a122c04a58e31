"""Entry point: `autoscale-jax --config=demo --workdir=DIR` (or `python -m autoscale_jax.main`).

--config takes a shipped config's name (`demo`, `gpt2_large:gs://bucket/data`, ...) or the path
of a config file. Dispatches on config.mode. Mistakes a user can fix end in one sentence and
exit status 2, never a traceback; nothing already in the workdir is touched by a failed start.
"""

import logging as py_logging
import os
import sys
from typing import NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

from autoscale_jax import config_files
from autoscale_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    'config', config_files.resolve('demo'),
    f'A shipped config by name ({", ".join(config_files.names())}) or a config file; either may '
    'end in :ARG, passed to its get_config.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/autoscale_jax',
                               'Where data caches, runs and reports go (local path or gs://).')


def _fail(error: UserError) -> NoReturn:
  if flags.FLAGS.is_parsed():
    logging.error('%s', error)
  print(f'error: {error}', file=sys.stderr)
  sys.exit(2)


class _ByName(flags.ArgumentParser):
  """Puts the path of a shipped config in place of its name, then parses as ml_collections does."""

  def __init__(self, files: flags.ArgumentParser):
    self._files = files

  def parse(self, argument: str):
    try:
      path = config_files.resolve(argument)
    except UserError as e:  # absl would turn it into a usage error with exit status 1
      _fail(e)
    return self._files.parse(path)

  def flag_type(self) -> str:
    return self._files.flag_type()


# The default above is already a path; what the command line gives goes through _ByName.
flags.FLAGS['config'].parser = _ByName(flags.FLAGS['config'].parser)


class _QuietLibraries(py_logging.Filter):
  """Orbax narrates every checkpoint at INFO, gcsfs its settings; keep their warnings, drop the
  chatter. gcsfs logs each request it gives up on (and some warnings) with a whole traceback or
  stack; keep the first line of its message alone, since the error that follows, if any, says
  what failed."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.name.partition('.')[0] == 'gcsfs' and (record.exc_info or record.stack_info
                                                     or '\n' in record.getMessage()):
      record.msg, record.args = record.getMessage().partition('\n')[0][:300], None
      record.exc_info = record.exc_text = record.stack_info = None
    chatty = '/orbax/' in record.pathname or record.name.partition('.')[0] == 'gcsfs'
    return record.levelno >= py_logging.WARNING or not chatty


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from autoscale_jax import pipeline, progress
  from autoscale_jax.train.mesh import maybe_initialize_distributed
  logging.get_absl_handler().addFilter(_QuietLibraries())
  progress.route_logs_around_bars()
  config = _CONFIG.value
  if config.mode == 'preflight':  # compiles for a slice that is elsewhere: this host's CPU runs it
    import jax  # pylint: disable=g-import-not-at-top

    from autoscale_jax.train import aot  # pylint: disable=g-import-not-at-top
    aot.quiet_libtpu()
    if not os.environ.get('JAX_PLATFORMS'):
      jax.config.update('jax_platforms', 'cpu')
  try:
    if config.mode != 'preflight':
      maybe_initialize_distributed()
    pipeline.dispatch(config, _WORKDIR.value)
  except UserError as e:
    _fail(e)


def run() -> None:
  flags.FLAGS.set_default('alsologtostderr', True)
  app.run(main)


if __name__ == '__main__':
  run()
