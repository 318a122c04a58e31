"""launch/*.sh: syntax, dry runs that execute nothing, and the real code paths against fake tools.

The fakes (gcloud, sbatch, srun, scontrol, scancel, curl, pgrep, git, python) write what they were
asked into a marker file, so a dry run can prove that it started nothing, and a real run can be
checked for the commands, environment variables and per-worker/per-node behaviour it produces.
"""

import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / 'launch'
SCRIPTS = ('tpu_pod.sh', 'gpu.sh', 'slurm.sh')
BASH = shutil.which('bash')
CONFIG = 'configs/tiny.py'

# Everything a launch script might start; in a dry run none of these may run.
_ALL_TOOLS = ('gcloud', 'sbatch', 'srun', 'scontrol', 'scancel', 'ssh', 'scp', 'python', 'python3',
              'pip', 'pip3', 'uv', 'git', 'tar', 'mkdir', 'tee', 'env', 'curl', 'sleep', 'date',
              'nvidia-smi', 'cat', 'dirname', 'basename')


def _write_tool(path: pathlib.Path, body: str = '') -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(f'#!{BASH}\nprintf "%s\\n" "${{0##*/}} $*" >>"$MARKER"\n{body}\n')
  path.chmod(0o755)


def _run(script, env, *args, **kwargs):
  return subprocess.run([BASH, str(LAUNCH / script), *args], env=env, capture_output=True,
                        text=True, timeout=30, **kwargs)


@pytest.mark.parametrize('script', SCRIPTS)
def test_syntax_and_help(script):
  assert (LAUNCH / script).stat().st_mode & 0o111, f'{script} is not executable'
  subprocess.run([BASH, '-n', str(LAUNCH / script)], check=True)
  out = _run(script, {'PATH': os.environ['PATH'], 'HOME': '/nonexistent'}, '--help')
  assert out.returncode == 0 and ('Variables' in out.stdout or 'Required' in out.stdout)


@pytest.mark.skipif(shutil.which('shellcheck') is None, reason='shellcheck is not installed')
def test_shellcheck_clean():
  scripts = [f'launch/{s}' for s in (*SCRIPTS, 'common.sh')]
  out = subprocess.run(['shellcheck', '--external-sources', *scripts], cwd=REPO,
                       capture_output=True, text=True)
  assert out.returncode == 0, out.stdout


@pytest.fixture
def sandbox(tmp_path):
  """PATH holding only fake tools (so nothing real can run), and an env for the scripts."""
  fakebin = tmp_path / 'fakebin'
  for tool in _ALL_TOOLS:
    _write_tool(fakebin / tool)
  marker = tmp_path / 'marker'
  env = {'PATH': str(fakebin), 'HOME': str(tmp_path / 'home'), 'MARKER': str(marker),
         'TMPDIR': str(tmp_path), 'LOG_DIR': str(tmp_path / 'logs'),
         'VENV': str(tmp_path / 'venv'), 'CONFIG': CONFIG}
  _write_tool(tmp_path / 'venv' / 'bin' / 'python')
  return env, marker, tmp_path


def _assert_nothing_ran(marker, tmp_path):
  assert not marker.exists(), f'a dry run executed: {marker.read_text()}'
  assert not (tmp_path / 'logs').exists(), 'a dry run created LOG_DIR'
  assert not (tmp_path / 'home').exists(), 'a dry run wrote into HOME'


def test_tpu_dry_run(sandbox):
  env, marker, tmp = sandbox
  env.update(TPU_NAME='my-pod', ZONE='us-east5-a', WORKDIR='gs://bucket/exp', SPOT='1',
             EXTRA_ARGS='--config.mode=ddo')
  out = _run('tpu_pod.sh', env, '--dry-run', '--', '--config.train.batch_size=64')
  assert out.returncode == 0, out.stderr
  text = out.stdout
  assert ('.venv/bin/python -m autoscale_jax.main --config=configs/tiny.py '
          '--workdir=gs://bucket/exp --config.mode=ddo --config.train.batch_size=64') in text
  assert 'gcloud compute tpus tpu-vm describe my-pod --zone=us-east5-a' in text
  assert 'gcloud compute tpus tpu-vm create my-pod --zone=us-east5-a --accelerator-type=v5p-128 ' \
         '--version=v2-alpha-tpuv5 --spot' in text
  ssh = [l for l in text.splitlines() if 'tpu-vm ssh' in l]
  assert len(ssh) == 2 and all('--worker=all' in l for l in ssh), ssh  # install, then run
  assert 'export AUTOSCALE_DISTRIBUTED=1' in text
  assert 'jax[tpu]==$jax_version' in text and 'delete' not in text
  _assert_nothing_ran(marker, tmp)

  env.update(QUEUED='1', VALID_UNTIL='6h', REPO_URL='https://example.com/r.git', BRANCH='dev')
  out = _run('tpu_pod.sh', env, '--dry-run')
  assert out.returncode == 0, out.stderr
  assert ('gcloud compute tpus queued-resources create my-pod-qr --node-id=my-pod '
          '--zone=us-east5-a --accelerator-type=v5p-128 --runtime-version=v2-alpha-tpuv5 --spot '
          '--valid-until-duration=6h') in out.stdout
  assert 'git clone --quiet --branch dev https://example.com/r.git autoscale_jax' in out.stdout
  _assert_nothing_ran(marker, tmp)


def test_tpu_dry_run_prints_the_preflight_before_any_gcloud_command(sandbox):
  env, marker, tmp = sandbox
  env.update(TPU_NAME='my-pod', ZONE='us-east5-a', WORKDIR='gs://bucket/exp',
             ACCELERATOR_TYPE='v5p-256', EXTRA_ARGS='--config.mesh.tensor=4')
  out = _run('tpu_pod.sh', env, '--dry-run', '--', '--config.mode=ddo')
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  preflight = [i for i, l in enumerate(lines) if '--config.mode=preflight' in l]
  gcloud = [i for i, l in enumerate(lines) if l.startswith('gcloud compute tpus ')]
  assert len(preflight) == 1 and gcloud and preflight[0] < gcloud[0], lines
  # Run from the checkout by the local venv's python; the user's flags (mesh and mode) first,
  # then the preflight's own, which must win; the run's mode is the plan compiled.
  assert lines[preflight[0]].startswith('cd ') and lines[preflight[0]].endswith(
      f' && {tmp}/venv/bin/python -m autoscale_jax.main --config=configs/tiny.py '
      '--config.mesh.tensor=4 --config.mode=ddo --config.mode=preflight '
      '--config.preflight.topology=v5p-256 --config.preflight.mode=ddo '
      f'--workdir={tmp}/logs/preflight-my-pod'), lines[preflight[0]]
  assert any(l.startswith('gcloud compute tpus tpu-vm create my-pod --zone=us-east5-a '
                          '--accelerator-type=v5p-256 ') for l in lines[preflight[0]:])
  _assert_nothing_ran(marker, tmp)

  out = _run('tpu_pod.sh', env, '--dry-run', '--skip-preflight')
  assert out.returncode == 0 and 'mode=preflight' not in out.stdout, out.stdout
  out = _run('tpu_pod.sh', env, '--dry-run', '--', '--config.mode', 'report')  # trains nothing
  assert out.returncode == 0 and 'mode=preflight' not in out.stdout, out.stdout
  _assert_nothing_ran(marker, tmp)


def test_gpu_dry_run(sandbox):
  env, marker, tmp = sandbox
  env.update(WORKDIR=str(tmp / 'work'), JAX_CUDA='cuda12')
  out = _run('gpu.sh', env, '--dry-run')
  assert out.returncode == 0, out.stderr
  text = out.stdout
  assert f'{tmp}/venv/bin/python -m pip install -e {REPO} \'jax[cuda12]==' in text
  assert (f'{tmp}/venv/bin/python -m autoscale_jax.main --config=configs/tiny.py '
          f'--workdir={tmp}/work') in text
  assert '--xla_gpu_enable_latency_hiding_scheduler=true' in text
  assert 'AUTOSCALE_' not in text  # one process: no jax.distributed
  _assert_nothing_ran(marker, tmp)


def test_slurm_dry_run(sandbox):
  env, marker, tmp = sandbox
  env.update(WORKDIR='/shared/exp', NODES='4', GPUS_PER_NODE='8', PARTITION='gpu', TIME='2:00:00')
  out = _run('slurm.sh', env, '--dry-run')
  assert out.returncode == 0, out.stderr
  text = out.stdout
  sbatch = next(l for l in text.splitlines() if l.startswith('sbatch '))
  for opt in ('--nodes=4', '--ntasks-per-node=1', '--gpus-per-node=8', '--time=2:00:00',
              '--partition=gpu', '--requeue', '--signal=B:USR1@300'):
    assert opt in sbatch, (opt, sbatch)
  srun = next(l for l in text.splitlines() if l.startswith('srun '))
  assert '--ntasks-per-node=1' in srun and 'AUTOSCALE_NUM_PROCESSES=4' in srun
  assert 'AUTOSCALE_COORDINATOR=' in srun and 'AUTOSCALE_PROCESS_ID="$SLURM_NODEID"' in srun
  assert (f'{tmp}/venv/bin/python -m autoscale_jax.main --config=configs/tiny.py '
          '--workdir=/shared/exp') in srun
  assert '-m pip install -e' in text  # the install runs on the login node before sbatch
  _assert_nothing_ran(marker, tmp)

  # Inside an allocation the dry run shows the srun line with the real coordinator port.
  env.update(SLURM_JOB_ID='1234', SLURM_JOB_NODELIST='node[1-4]', SLURM_NNODES='4')
  out = _run('slurm.sh', env, '--dry-run')
  assert out.returncode == 0, out.stderr
  assert 'scontrol show hostnames' in out.stdout and ':21234' in out.stdout
  _assert_nothing_ran(marker, tmp)


def test_default_gpu_xla_flags_are_known_to_the_pinned_jaxlib(sandbox):
  """XLA aborts on an unknown flag; the defaults of gpu.sh and slurm.sh must parse."""
  env, _, tmp = sandbox
  out = _run('gpu.sh', {**env, 'WORKDIR': str(tmp / 'w')}, '--dry-run')
  flags = re.search(r"'XLA_FLAGS=([^']*)'", out.stdout).group(1)
  slurm = _run('slurm.sh', {**env, 'WORKDIR': str(tmp / 'w')}, '--dry-run')
  assert f"'XLA_FLAGS={flags}'" in slurm.stdout  # the same defaults (launch/common.sh)
  check = subprocess.run(
      [sys.executable, '-c', 'import jax; jax.numpy.zeros(1).block_until_ready()'],
      env={**os.environ, 'XLA_FLAGS': flags, 'JAX_PLATFORMS': 'cpu'}, capture_output=True,
      text=True, timeout=60)
  assert check.returncode == 0, check.stderr[-2000:]


def _real_env(tmp, **extra):
  fakebin = tmp / 'fakebin'
  env = {'PATH': f'{fakebin}:{os.environ["PATH"]}', 'HOME': str(tmp / 'home'),
         'MARKER': str(tmp / 'marker'), 'TMPDIR': str(tmp), 'LOG_DIR': str(tmp / 'logs'),
         'CONFIG': CONFIG}
  env.update(extra)
  return env, fakebin


_RECORDING_PYTHON = ('{ printf "%s\\n" "$*"; env | grep -E "^(AUTOSCALE_|XLA_)" | sort; '
                     'echo ---; } >>"$RECORD"\necho "trainer output"')


def test_gpu_real_run_with_fake_python(tmp_path):
  env, _ = _real_env(tmp_path, VENV=str(tmp_path / 'venv'), SKIP_INSTALL='1',
                     WORKDIR=str(tmp_path / 'work'), XLA_FLAGS='--xla_dump_to=/tmp/x',
                     RECORD=str(tmp_path / 'record'))
  _write_tool(tmp_path / 'venv' / 'bin' / 'python', _RECORDING_PYTHON)
  out = _run('gpu.sh', env, '--', '--config.mode=ddo', cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  record = (tmp_path / 'record').read_text()
  assert (f'-m autoscale_jax.main --config=configs/tiny.py --workdir={tmp_path}/work '
          '--config.mode=ddo') in record
  assert re.search(r'XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true .*'
                   r'--xla_dump_to=/tmp/x$', record, re.M), record  # the user's flags come last
  logs = list((tmp_path / 'logs').glob('gpu-*.log'))
  for _ in range(50):  # tee (a process substitution) may still be flushing
    if logs and 'trainer output' in logs[0].read_text():
      break
    time.sleep(0.05)
  assert len(logs) == 1 and 'trainer output' in logs[0].read_text()


def test_slurm_job_runs_one_process_per_node(tmp_path):
  env, fakebin = _real_env(tmp_path, VENV=str(tmp_path / 'venv'), WORKDIR='/shared/exp',
                           RECORD=str(tmp_path / 'record'), SLURM_JOB_ID='1234',
                           SLURM_JOB_NODELIST='node-[a-b]', SLURM_NNODES='2')
  _write_tool(tmp_path / 'venv' / 'bin' / 'python', _RECORDING_PYTHON)
  _write_tool(fakebin / 'scontrol', '[ "$1" = show ] && printf "node-a\\nnode-b\\n"; exit 0')
  # srun: skip its own options, then start the task once per node like SLURM would.
  _write_tool(fakebin / 'srun', 'while [ "${1#--}" != "$1" ]; do shift; done\n'
              'for n in 0 1; do SLURM_NODEID=$n "$@" || exit $?; done')
  out = _run('slurm.sh', env)
  assert out.returncode == 0, out.stderr
  calls = [c for c in (tmp_path / 'record').read_text().split('---\n') if c.strip()]
  assert len(calls) == 2
  for node, call in enumerate(calls):
    assert '-m autoscale_jax.main --config=configs/tiny.py --workdir=/shared/exp' in call
    assert 'AUTOSCALE_COORDINATOR=node-a:21234' in call
    assert 'AUTOSCALE_NUM_PROCESSES=2' in call
    assert f'AUTOSCALE_PROCESS_ID={node}' in call
  assert 'requeue' not in (tmp_path / 'marker').read_text()


def test_slurm_time_limit_signal_checkpoints_then_requeues(tmp_path):
  env, fakebin = _real_env(tmp_path, VENV=str(tmp_path / 'venv'), WORKDIR='/shared/exp',
                           SLURM_JOB_ID='77', SLURM_JOB_NODELIST='n1', SLURM_NNODES='1')
  _write_tool(tmp_path / 'venv' / 'bin' / 'python')
  _write_tool(fakebin / 'scontrol', '[ "$1" = show ] && echo n1; exit 0')
  started = tmp_path / 'srun.pid'
  _write_tool(fakebin / 'srun', f'trap "kill \\$s; exit 143" TERM\nsleep 20 & s=$!\n'
              f'echo $$ >{started}\nwait $s')
  # scancel --signal=TERM reaches the tasks; here the fake srun stands for them.
  _write_tool(fakebin / 'scancel', f'kill -TERM "$(cat {started})"')
  proc = subprocess.Popen([BASH, str(LAUNCH / 'slurm.sh')], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  for _ in range(200):
    if started.exists() and started.read_text().strip():
      break
    time.sleep(0.025)
  proc.send_signal(signal.SIGUSR1)
  output, _ = proc.communicate(timeout=20)
  assert proc.returncode == 0, output
  calls = (tmp_path / 'marker').read_text().splitlines()
  assert 'scancel --signal=TERM 77' in calls and 'scontrol requeue 77' in calls, calls
  assert calls.index('scancel --signal=TERM 77') < calls.index('scontrol requeue 77')


# sbatch as SLURM runs it: the job is a copy of the script in a spool directory, started in the
# --chdir directory, with SLURM_SUBMIT_DIR set to where sbatch was called.
_SPOOLING_SBATCH = '''dir=$PWD
while [ "${1#--}" != "$1" ]; do case $1 in --chdir=*) dir=${1#--chdir=} ;; esac; shift; done
mkdir -p "$SPOOL" && cp "$1" "$SPOOL/slurm_script" && shift
export SLURM_SUBMIT_DIR=$PWD SLURM_JOB_ID=1234 SLURM_JOB_NODELIST=node-a SLURM_NNODES=1
cd "$dir" && exec bash "$SPOOL/slurm_script" "$@"'''


def _spool_env(tmp_path, **extra):
  env, fakebin = _real_env(tmp_path, VENV=str(tmp_path / 'venv'), WORKDIR='/shared/exp',
                           RECORD=str(tmp_path / 'record'), SPOOL=str(tmp_path / 'spool'), **extra)
  _write_tool(tmp_path / 'venv' / 'bin' / 'python', _RECORDING_PYTHON)
  _write_tool(fakebin / 'sbatch', _SPOOLING_SBATCH)
  _write_tool(fakebin / 'scontrol', '[ "$1" = show ] && echo node-a; exit 0')
  _write_tool(fakebin / 'srun', 'while [ "${1#--}" != "$1" ]; do shift; done\n'
              'SLURM_NODEID=0 exec "$@"')
  return env


def test_slurm_job_submitted_from_elsewhere_runs_its_spooled_copy(tmp_path):
  """The spooled copy has no launch/ beside it; it finds the helpers through REPO_DIR."""
  env = _spool_env(tmp_path, SKIP_INSTALL='1')
  out = subprocess.run([BASH, str(LAUNCH / 'slurm.sh'), '--', '--config.mode=ddo'], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=30)
  assert out.returncode == 0, out.stderr
  assert (tmp_path / 'spool' / 'slurm_script').exists()
  record = (tmp_path / 'record').read_text()
  assert ('-m autoscale_jax.main --config=configs/tiny.py --workdir=/shared/exp '
          '--config.mode=ddo') in record
  assert 'AUTOSCALE_COORDINATOR=node-a:21234' in record


def test_slurm_sbatch_by_hand_from_the_repo_root_runs_its_spooled_copy(tmp_path):
  """`sbatch launch/slurm.sh`: the copy finds the helpers through SLURM_SUBMIT_DIR."""
  env = _spool_env(tmp_path)
  sbatch = str(tmp_path / 'fakebin' / 'sbatch')
  out = subprocess.run([sbatch, 'launch/slurm.sh'], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=30)
  assert out.returncode == 0, out.stderr
  assert '-m autoscale_jax.main --config=configs/tiny.py' in (tmp_path / 'record').read_text()

  out = subprocess.run([sbatch, str(LAUNCH / 'slurm.sh')], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=30)
  assert out.returncode == 2
  assert out.stderr.strip() == (
      f'error: REPO_DIR={tmp_path} holds no launch/common.sh; run sbatch from the repository '
      'root or set REPO_DIR to the checkout.')


def test_config_by_shipped_name_or_file(sandbox):
  env, marker, tmp = sandbox
  env.update(WORKDIR=str(tmp / 'work'), CONFIG='gpt2_large:gs://bucket/data')
  out = _run('gpu.sh', env, '--dry-run')
  assert out.returncode == 0, out.stderr
  assert '-m autoscale_jax.main --config=gpt2_large:gs://bucket/data ' in out.stdout
  env.pop('WORKDIR')
  out = _run('gpu.sh', env, '--dry-run')  # the default workdir is named after the config
  assert f'--workdir={tmp}/home/autoscale_jax_work/gpt2_large' in out.stdout
  for config in ('gpt3', 'configs/gpt3.py'):
    out = _run('gpu.sh', {**env, 'CONFIG': config}, '--dry-run')
    assert out.returncode == 2 and f'CONFIG={config} does not exist' in out.stderr
  _assert_nothing_ran(marker, tmp)


def _tpu_env(tmp_path, **extra):
  """Fake gcloud whose `ssh --worker=all` runs the remote script in two local 'worker' homes."""
  homes = tmp_path / 'workers'
  env, fakebin = _real_env(tmp_path, TPU_NAME='my-pod', ZONE='us-east5-a',
                           WORKDIR='gs://bucket/exp', FAKE_HOMES=str(homes), **extra)
  _write_tool(fakebin / 'gcloud', '''
case " $* " in
  *" describe "*) echo "${FAKE_STATE:-READY}" ;;
  *" ssh "*)
    for a in "$@"; do case $a in --command=*) cmd=${a#--command=} ;; esac; done
    for w in 0 1; do
      (cd "$FAKE_HOMES/$w" && HOME="$FAKE_HOMES/$w" FAKE_WORKER=$w bash -c "$cmd") || exit $?
    done ;;
esac''')
  _write_tool(fakebin / 'curl', 'echo "$FAKE_WORKER"')
  _write_tool(fakebin / 'pgrep', 'exit 1')
  _write_tool(fakebin / 'git')
  for w in (0, 1):
    checkout = homes / str(w) / 'autoscale_jax'
    (checkout / '.git').mkdir(parents=True)
    (checkout / 'requirements.txt').write_text('jax==0.10.2\nflax==0.12.8\n')
    _write_tool(checkout / '.venv' / 'bin' / 'python',
                'export RECORD="$HOME/python_calls"\n' + _RECORDING_PYTHON)
  return env, homes


def test_tpu_reuses_ready_tpu_and_runs_on_every_worker(tmp_path):
  env, homes = _tpu_env(tmp_path, REPO_URL='https://example.com/r.git', BRANCH='dev',
                        EXTRA_ENV='LIBTPU_INIT_ARGS=--foo')
  out = _run('tpu_pod.sh', env, '--skip-preflight', '--', '--config.mode=ddo')
  assert out.returncode == 0, out.stderr
  calls = (tmp_path / 'marker').read_text()
  assert 'gcloud compute tpus tpu-vm describe my-pod' in calls
  assert ' create ' not in calls and 'delete' not in calls
  assert calls.count('--worker=all') == 2
  for w in (0, 1):
    home = homes / str(w)
    record = (home / 'python_calls').read_text()
    assert "-m pip install --quiet -e . jax[tpu]==0.10.2" in record
    assert ('-m autoscale_jax.main --config=configs/tiny.py --workdir=gs://bucket/exp '
            '--config.mode=ddo') in record
    assert 'AUTOSCALE_DISTRIBUTED=1' in record
    assert 'trainer output' in (home / 'autoscale_jax' / 'logs' / f'worker-{w}.log').read_text()
    assert f'gs://bucket/exp/launch_logs/tpu-worker-{w}.log' in calls
  assert 'git fetch --quiet origin dev' in calls.replace('-C autoscale_jax ', '')
  assert 'trainer output' in out.stdout  # worker 0 streams to this terminal
  assert len(list((tmp_path / 'logs').glob('my-pod-*.log'))) == 1


def test_tpu_preempted_tpu_is_not_deleted(tmp_path):
  env, homes = _tpu_env(tmp_path, FAKE_STATE='PREEMPTED')
  out = _run('tpu_pod.sh', env, '--skip-preflight')
  assert out.returncode == 2
  assert 'gcloud compute tpus tpu-vm delete my-pod --zone=us-east5-a' in out.stderr
  calls = (tmp_path / 'marker').read_text()
  assert 'delete' not in calls and ' ssh ' not in calls and ' create ' not in calls


def test_tpu_preflight_that_does_not_fit_stops_before_any_gcloud_command(tmp_path):
  env, _ = _tpu_env(tmp_path, VENV=str(tmp_path / 'venv'), FAKE_STATE='PREEMPTED',
                    EXTRA_ARGS='--config.mesh.fsdp=8')
  python = tmp_path / 'venv' / 'bin' / 'python'
  _write_tool(python, 'echo "error: does not fit: train_step needs 120.0 GiB per device." >&2\n'
              'exit 2')
  out = _run('tpu_pod.sh', env)
  assert out.returncode == 2, out.stderr
  calls = (tmp_path / 'marker').read_text().splitlines()
  assert len(calls) == 1 and calls[0].startswith('python -m autoscale_jax.main '), calls
  assert ('--config=configs/tiny.py --config.mesh.fsdp=8 --config.mode=preflight '
          '--config.preflight.topology=v5p-128 ') in calls[0]
  assert not any(c.startswith('gcloud') for c in calls), calls  # nothing created or described
  assert 'error: does not fit: train_step' in out.stderr
  assert out.stderr.splitlines()[-1].startswith(
      'error: the preflight of configs/tiny.py on v5p-128 failed (exit 2;'), out.stderr

  # A preflight that fits lets the script go on to the TPU (here preempted: it stops there).
  (tmp_path / 'marker').unlink()
  _write_tool(python, 'exit 0')
  out = _run('tpu_pod.sh', env)
  assert out.returncode == 2 and 'tpu is PREEMPTED' in out.stderr, out.stderr
  calls = (tmp_path / 'marker').read_text().splitlines()
  assert calls[0].startswith('python ') and calls[1].startswith('gcloud compute tpus tpu-vm '
                                                                 'describe my-pod'), calls
