"""One pipeline per workdir: a second one would train the same runs into the same folders."""

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator

from absl import logging
from etils import epath

from autoscale_jax.errors import ConfigError
from autoscale_jax.lead import is_lead


@contextlib.contextmanager
def workdir_lock(workdir: epath.Path) -> Iterator[None]:
  """Holds <workdir>/LOCK, which names its holder (host, pid, start time), while the body runs.

  A lock left by a dead process on this host is taken over with a warning; on another host the
  user decides (the message says how). Process 0 holds it for the whole job.
  """
  if not is_lead():
    yield
    return
  workdir.mkdir(parents=True, exist_ok=True)
  lock = workdir / 'LOCK'
  me = {'host': socket.gethostname(), 'pid': os.getpid(),
        'since': time.strftime('%Y-%m-%d %H:%M:%S')}
  for _ in range(2):
    try:
      _create(lock, json.dumps(me))
      break
    except FileExistsError:
      try:
        holder = json.loads(lock.read_text())
      except (OSError, ValueError):
        holder = {}
      if holder.get('host') == me['host'] and not _alive(holder.get('pid')):
        logging.warning('Taking over %s left by pid %s, which is no longer running.', lock,
                        holder.get('pid'))
        lock.unlink(missing_ok=True)
        continue
      raise ConfigError(
          f'{workdir} is in use by another pipeline (host {holder.get("host", "?")}, pid '
          f'{holder.get("pid", "?")}, since {holder.get("since", "?")}); wait for it to finish, '
          f'or delete {lock} if that process is gone.') from None
  try:
    yield
  finally:
    lock.unlink(missing_ok=True)


def _create(lock: epath.Path, text: str) -> None:
  """Creates `lock` holding `text`; FileExistsError if it exists."""
  if '://' not in str(lock):  # atomic create: exactly one of two racing pipelines gets it
    fd = os.open(os.fspath(lock), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with os.fdopen(fd, 'w') as f:
      f.write(text)
  elif lock.exists():
    raise FileExistsError(lock)
  else:
    lock.write_text(text)


def _alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except (TypeError, ValueError, ProcessLookupError):
    return False
  except PermissionError:
    return True
  return True
