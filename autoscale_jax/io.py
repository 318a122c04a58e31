"""Workdir files through etils.epath (local or gs://).

Writes are atomic: readers see the old file or the new one, never a partial one, so a kill at
any moment leaves the workdir consistent. `check_workdir` turns a workdir that cannot be used
into one sentence before anything runs; `one_writer` says which process writes a folder that
several processes of a job prepare (see its docstring for the rule).
"""

import contextlib
import json
import uuid
from collections.abc import Iterator

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from autoscale_jax.errors import UserError

# The filesystem package epath needs for each remote scheme (and a core dependency of ours).
_PACKAGES = {'gs': 'gcsfs'}


def temp_name(path: epath.Path) -> epath.Path:
  """A unique sibling to write before `tmp.replace(path)` moves it into place."""
  return path.parent / f'.{path.name}.tmp-{uuid.uuid4().hex}'


def write_bytes_atomic(path: epath.PathLike, data: bytes) -> None:
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = temp_name(path)
  tmp.write_bytes(data)
  tmp.replace(path)


def write_text_atomic(path: epath.PathLike, text: str) -> None:
  write_bytes_atomic(path, text.encode())


def write_json_atomic(path: epath.PathLike, obj) -> None:
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


@contextlib.contextmanager
def filesystem_of(path: epath.PathLike, setting: str) -> Iterator[None]:
  """Turns a missing filesystem package for a remote path (gcsfs for gs://) into one sentence
  that starts with `setting`, the setting holding the path and its value."""
  try:
    yield
  except ImportError as e:
    scheme = str(path).partition('://')[0]
    if scheme not in _PACKAGES:
      raise
    package = _PACKAGES[scheme]
    raise UserError(f'{setting} needs the {package} package for {scheme}:// paths, which failed '
                    f'to import ({e}); pip install {package}.') from None


def check_workdir(path: str, *, create: bool = True) -> epath.Path:
  """The workdir, created if missing and checked writable (a probe file is written and removed,
  nothing else is touched): a workdir that cannot be used fails here, in one sentence. With
  create=False (a mode that only reads) it is only looked up, which still needs its filesystem.
  A gs:// workdir GCS does not answer (no network, a wrong endpoint) fails within seconds (see
  `probe_gcs`), before gcsfs's retries would spend minutes on it."""
  workdir = epath.Path(path)
  with filesystem_of(path, f'--workdir={path!r}'):
    try:
      if str(path).startswith('gs://'):
        probe_gcs(path)
      if not create:
        workdir.exists()
        return workdir
      workdir.mkdir(parents=True, exist_ok=True)
      probe = temp_name(workdir / 'probe')
      probe.write_bytes(b'')
      probe.unlink()
    except ImportError:
      raise  # filesystem_of names the missing package
    except Exception as e:  # pylint: disable=broad-except  # OS, permission and cloud errors alike
      detail = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else "no detail"}'
      if not create:
        raise UserError(f'--workdir={path!r} cannot be read ({detail}); check the path, the '
                        'network and its permissions.') from None
      raise UserError(f'--workdir={path!r} cannot be created or written ({detail}); choose a '
                      'writable location (a local folder or gs://bucket/path) or fix its '
                      'permissions.') from None
  return workdir


# The first request to a gs:// workdir: how long it may take in all, and to connect.
PROBE_S = 10.0
PROBE_CONNECT_S = 5.0


def probe_gcs(path: str) -> None:
  """Sends one anonymous request to GCS for gs:// `path` (list at most one object under it),
  once, and raises what it met when no answer came within PROBE_S seconds: no network, an
  endpoint that refuses or never answers. gcsfs retries every request 6 times over about half a
  minute and logs a traceback each time it gives up, so a workdir that cannot be reached would
  otherwise take minutes to fail. Anonymous, as only reachability is asked: finding credentials
  can take gcsfs a quarter of a minute of metadata-server retries off Google Cloud.

  Any answer, an error status (401 for anonymous) included, returns: the check that follows, and
  all the work, use epath's own filesystem, its credentials and gcsfs's normal retries, so only
  this one request to a slow or briefly failing bucket is hurried."""
  import aiohttp  # pylint: disable=g-import-not-at-top  # gcsfs's dependency
  import gcsfs.core  # pylint: disable=g-import-not-at-top

  plain = gcsfs.core.GCSFileSystem._request  # pylint: disable=protected-access

  class OneTry(gcsfs.core.GCSFileSystem):
    """The plain JSON-API filesystem (no gRPC) whose requests are sent once: gcsfs wraps
    _request in its retry loop when the class is made, and no setting changes that."""
    _request = getattr(plain, '__wrapped__', plain)  # else the retrying one, within PROBE_S

  try:
    fs = OneTry(token='anon', skip_instance_cache=True,
                requests_timeout=aiohttp.ClientTimeout(connect=PROBE_CONNECT_S))
    bucket, key, _ = fs.split_path(path)
    fs.call('GET', 'b/{}/o', bucket, prefix=key or None, maxResults=1, json_out=True,
            timeout=PROBE_S)  # fsspec's deadline for the whole call; it cancels the request
  except aiohttp.ClientConnectionError:
    raise  # refused, unresolvable, unreachable, or the connection timed out or dropped
  except TimeoutError as e:
    raise TimeoutError(f'no answer from GCS within {PROBE_S:g} s') from e
  except Exception:  # pylint: disable=broad-except  # an answer: the check that follows decides
    pass


@contextlib.contextmanager
def one_writer(folder: epath.Path, what: str) -> Iterator[bool]:
  """Yields whether this process writes `folder`'s files; every process must enter it, in the
  same order, and leaves it once the writers are done.

  The rule, for files a job's processes all need (the tokenizer, the token stores): a folder on
  storage every process sees (gs://, NFS) is written by process 0 alone while the others wait
  and then read what it wrote; a folder on node-local disks (each host its own copy, e.g.
  config.data.cache_dir on a local SSD) is written by every process that does not see process
  0's copy, each into its own disk (one process per host; processes sharing a disk with one
  another but not with process 0 write identical files atomically, which is wasted work, not a
  conflict). To tell the two apart, process 0 writes a marker named by a fresh random token
  into the folder and every process checks whether it sees it.
  """
  if jax.process_count() == 1:
    yield True
    return
  token = int(multihost_utils.broadcast_one_to_all(
      np.int32(np.random.default_rng().integers(2**31)) if jax.process_index() == 0
      else np.int32(0)))
  marker = folder / f'.shared-check-{token:08x}'
  if jax.process_index() == 0:
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_bytes(b'')
  multihost_utils.sync_global_devices(f'{what}: marker written')
  writes = jax.process_index() == 0 or not marker.exists()
  multihost_utils.sync_global_devices(f'{what}: marker checked')
  if jax.process_index() == 0:
    marker.unlink()
  yield writes
  multihost_utils.sync_global_devices(f'{what}: written')
