"""The gs:// workdir TPU users take, against a local GCS emulator (PyPI gcp-storage-emulator,
in this process, on a loopback port): the tiny run through the command line is SIGKILLed after
its first checkpoint, resumes from it and ends bitwise equal to an uninterrupted local run; then
a one-budget DDO stage and mode=report write their results to the bucket as well.

The emulator speaks the JSON API that gcsfs (etils.epath's gs:// files) uses; tensorstore, which
writes orbax's checkpoints, reaches it through TENSORSTORE_GCS_HTTP_URL. Two things real GCS
does that the emulator does not are added here: the objects.moveTo call (gcsfs renames with it;
on a 501 it retries for half a minute before copying) and the x-goog-generation header on media
downloads (tensorstore refuses a read without it); and HTTP/1.1, see the fixture.

A gs:// workdir GCS does not answer (here: a closed port, or one that takes the connection and
never answers) fails within seconds, in one sentence and no traceback (io.probe_gcs).
"""

import http
import io as io_lib
import logging
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings

import gcsfs.core
import pytest
from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects

import kill_harness as kh
from autoscale_jax import io
from test_loader import free_port

BUCKET = 'bkt'
WORKDIR = f'gs://{BUCKET}/wd'
BUDGET = 1024  # tokens of the DDO stage's base run: 4 steps of kill_harness's batch


def _move(request, response, storage, *args, **kwargs):
  """POST .../o/SRC/moveTo/o/DST: a copy within the bucket, then the source is deleted."""
  del args, kwargs
  request.params['dest_bucket_name'] = request.params['bucket_name']
  objects.copy(request, response, storage)
  if response.status == http.HTTPStatus.OK:
    storage.delete_file(request.params['bucket_name'], request.params['object_id'])


def _with_generation(download):
  def handler(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    if response.status in (http.HTTPStatus.OK, http.HTTPStatus.PARTIAL_CONTENT):
      obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
      response['x-goog-generation'] = obj['generation']
  return handler


@pytest.fixture(name='emulator')
def fixture_emulator(monkeypatch, tmp_path):
  """The emulator's URL; this process and the commands it starts talk to it, to nothing else."""
  download = _with_generation(objects.download)
  routes = tuple((regex, {m: download if f is objects.download else f for m, f in h.items()})
                 for regex, h in server.HANDLERS)
  move = (rf'^{server.settings.API_ENDPOINT}/b/(?P<bucket_name>[-.\w]+)/o/'
          r'(?P<object_id>.*[^/]+)/moveTo/o/(?P<dest_object_id>.*[^/]+)$', {server.POST: _move})
  monkeypatch.setattr(server, 'HANDLERS', (move, *routes))
  monkeypatch.setattr(objects, 'download', download)  # objects.get calls it for ?alt=media
  # HTTP/1.1 answers curl's `Expect: 100-continue` at once (under HTTP/1.0 every upload of
  # tensorstore waits a second for it); `Connection: close` keeps one request per connection.
  monkeypatch.setattr(server.RequestHandler, 'protocol_version', 'HTTP/1.1')
  close = server.Response.close

  def close_connection(response):
    response['Connection'] = 'close'
    close(response)
  monkeypatch.setattr(server.Response, 'close', close_connection)
  url = f'http://127.0.0.1:{free_port()}'
  emulator = server.create_server('127.0.0.1', int(url.rsplit(':', 1)[1]), in_memory=True,
                                  default_bucket=BUCKET)
  emulator.start()
  for key, value in {
      'STORAGE_EMULATOR_HOST': url,  # gcsfs
      'TENSORSTORE_GCS_HTTP_URL': url,  # tensorstore (orbax checkpoints)
      'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'emulator',  # tensorstore: no metadata-server lookup
      'FSSPEC_GCS_TOKEN': 'anon', 'FSSPEC_GCS_PROJECT': 'emulator',  # gcsfs: no credentials
      # gcsfs: no gRPC probe of the bucket's layout (the emulator has no gRPC; a minute lost).
      'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
      'TMPDIR': str(tmp_path / 'local'),  # the local copies of the token stores, for memmaps
  }.items():
    monkeypatch.setenv(key, value)
  (tmp_path / 'local').mkdir()
  try:
    yield url
  finally:
    emulator.stop()


def test_train_kill_resume_report_on_a_gs_workdir(emulator, tmp_path):
  # The plain filesystem: gcsfs.GCSFileSystem may be the variant that probes over gRPC.
  fs = gcsfs.core.GCSFileSystem(token='anon', endpoint_url=emulator)
  prepared, reference = tmp_path / 'prepared', tmp_path / 'reference'
  kh.prepare(prepared)  # one tokenizer for both runs (trainers break ties per process)
  shutil.copytree(prepared, reference)
  fs.put(f'{prepared}/', f'{BUCKET}/wd', recursive=True)
  straight = []  # the uninterrupted local run trains alongside the gs:// one
  thread = threading.Thread(target=lambda: straight.append(kh.launch(reference)))
  thread.start()
  launches = kh.kill_and_resume(WORKDIR, [kh.Kill('step', 2 * kh.EVERY + 1)])
  thread.join()
  assert straight[0].returncode == 0, straight[0].log[-5000:]
  assert [l.killed for l in launches] == [True, False]
  assert launches[-1].resumed_from in (kh.EVERY, 2 * kh.EVERY), launches[-1].log[-3000:]

  runs = fs.ls(f'{BUCKET}/wd/runs')
  assert len(runs) == 1, runs
  local = tmp_path / 'from_gcs'
  fs.get(f'{runs[0]}/', str(local), recursive=True)
  assert kh.differences(kh.run_dir(reference), local) == []

  # Two domains held out: a 5-run DDO stage (each domain at factors 0.5 and 3 and the base).
  ddo = kh.launch(WORKDIR, extra=('--config.mode=ddo', f'--config.ddo.budgets=({BUDGET},)',
                                  '--config.ddo.factors=(0.5, 3.0)',
                                  '--config.data.domains[2].eval_only=True',
                                  '--config.data.domains[3].eval_only=True'))
  assert ddo.returncode == 0, ddo.log[-5000:]
  report = kh.launch(WORKDIR, extra=('--config.mode=report',))
  assert report.returncode == 0, report.log[-5000:]
  assert fs.exists(f'{BUCKET}/wd/budgets/{BUDGET}/optimum.json')
  assert '# AutoScale report' in fs.cat(f'{BUCKET}/wd/report/report.md').decode()


@pytest.mark.parametrize('endpoint', ['closed', 'silent'])
def test_an_unreachable_gs_workdir_fails_fast_in_one_sentence(endpoint):
  with socket.socket() as sock:
    sock.bind(('127.0.0.1', 0))
    if endpoint == 'silent':
      sock.listen()  # the kernel takes connections; nothing reads or answers them
    url = f'http://127.0.0.1:{sock.getsockname()[1]}'
    env = {**kh.env(), 'STORAGE_EMULATOR_HOST': url, 'TENSORSTORE_GCS_HTTP_URL': url,
           'FSSPEC_GCS_TOKEN': 'anon', 'FSSPEC_GCS_PROJECT': 'emulator'}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, '-m', 'autoscale_jax.main', '--config=tiny', '--config.mode=train',
         '--workdir=gs://no-such-bucket/w'],
        env=env, cwd=kh.ROOT, capture_output=True, text=True, timeout=120)
    wall = time.monotonic() - start
  output = proc.stdout + proc.stderr
  assert proc.returncode == 2, output[-3000:]
  assert 'Traceback' not in output, output[-3000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert len(errors) == 1, output[-3000:]
  detail = (r'ClientConnectorError: Cannot connect to host 127\.0\.0\.1' if endpoint == 'closed'
            else rf'TimeoutError: no answer from GCS within {io.PROBE_S:g} s')
  assert re.fullmatch(rf"error: --workdir='gs://no-such-bucket/w' cannot be created or written "
                      rf'\({detail}.*\); choose a writable location .*', errors[0]), errors[0]
  # gcsfs alone: 6 tries per request and a logged traceback per request, minutes in all.
  assert wall < (15 if endpoint == 'closed' else io.PROBE_S + 10), wall


def test_gcsfs_errors_are_logged_in_one_line_without_traceback():
  # As gcsfs.retry logs a request it gives up on (logger.exception); main filters absl's handler.
  with warnings.catch_warnings():  # ml_collections loads main's default config with load_module
    warnings.simplefilter('ignore', DeprecationWarning)
    from autoscale_jax import main  # pylint: disable=g-import-not-at-top  # defines absl flags
  stream = io_lib.StringIO()
  handler = logging.StreamHandler(stream)
  handler.addFilter(main._QuietLibraries())  # pylint: disable=protected-access
  logger = logging.getLogger('gcsfs')
  logger.addHandler(handler)
  try:
    try:
      raise OSError('Cannot connect to host storage.googleapis.com:443\nsecond line')
    except OSError as e:
      logger.exception('_request out of retries on exception: %s', e)
    logger.warning('Could not determine bucket type', stack_info=True)
  finally:
    logger.removeHandler(handler)
  assert stream.getvalue() == ('_request out of retries on exception: Cannot connect to host '
                               'storage.googleapis.com:443\nCould not determine bucket type\n')
