#!/usr/bin/env bash
#SBATCH --job-name=autoscale
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
# Runs autoscale_jax on a SLURM GPU cluster: one process per node, each driving all of its
# node's GPUs, joined into one jax.distributed job.
#
# Usage:  [VAR=value ...] launch/slurm.sh [--dry-run] [-- EXTRA_MAIN_ARGS...]
#
#   Outside an allocation (login node) it installs the venv (via launch/gpu.sh --install-only)
#   and submits itself with sbatch, turning the variables below into sbatch options.
#   Inside an allocation (the sbatch job, or by hand under salloc) it starts the run with srun.
#   `sbatch launch/slurm.sh` from the repo root also works; the #SBATCH lines at the top of
#   this file are then the defaults.
#
#   --dry-run   print every command (pip, sbatch, scontrol, srun, python) instead of running it;
#               exits 0, also where SLURM is not installed
#   -- ARGS...  appended to the python command line after EXTRA_ARGS
#
# Variables (all optional):
#   CONFIG          a shipped config's name (gpt2_large) or a config file, relative to the repo
#                   root or absolute; either may end in :ARG (default configs/gpt2_large.py)
#   WORKDIR         shared by all nodes: gs://... or a shared filesystem path
#                   (default $HOME/autoscale_jax_work/<config name>). Rerunning (or a requeue)
#                   with the same WORKDIR resumes from the latest checkpoints; nothing is deleted.
#   EXTRA_ARGS      more flags for autoscale_jax.main, split on spaces
#   NODES           number of nodes (default 2)            -> sbatch --nodes
#   GPUS_PER_NODE   GPUs on each node (default 8)          -> sbatch --gpus-per-node
#   TIME            wall-clock limit per allocation (default 24:00:00) -> sbatch --time
#   PARTITION, ACCOUNT, QOS   -> sbatch --partition/--account/--qos when set
#   JOB_NAME        (default autoscale)                    -> sbatch --job-name
#   SBATCH_EXTRA    more sbatch options, split on spaces (e.g. "--exclusive --mem=0")
#   SIGNAL_GRACE_S  seconds before the time limit at which the job asks the trainers to
#                   checkpoint and then requeues itself (default 300)
#   MAX_RESTARTS    stop requeueing after this many restarts (default 100)
#   PORT            coordinator port (default 20000 + job id mod 20000)
#   JAX_AUTODETECT  1 = let jax.distributed.initialize() read the SLURM environment itself
#                   (AUTOSCALE_DISTRIBUTED=1) instead of the explicit coordinator (default 0)
#   VENV            virtual environment on a filesystem every node sees (default <repo>/.venv)
#   SKIP_INSTALL    1 = do not run launch/gpu.sh --install-only before submitting (default 0)
#   JAX_CUDA, PYTHON  passed to launch/gpu.sh for the install (cuda13 | cuda12; python3)
#   GPU_XLA_FLAGS, XLA_PYTHON_CLIENT_MEM_FRACTION, EXTRA_ENV   as in launch/gpu.sh
#   LOG_DIR         on a shared filesystem: the batch log LOG_DIR/<job name>-<job id>.out and one
#                   log per node LOG_DIR/<job name>-<job id>-node<N>.log, appended across
#                   requeues (default $HOME/autoscale_jax_logs/slurm)
#
# Multi-host: every task gets AUTOSCALE_COORDINATOR=<first node of the allocation>:PORT,
# AUTOSCALE_NUM_PROCESSES=$SLURM_NNODES and AUTOSCALE_PROCESS_ID=$SLURM_NODEID; the entry point
# passes them to jax.distributed.initialize(). (jax can also detect SLURM by itself: JAX_AUTODETECT=1.)
# Preemption: SLURM sends SIGTERM to the tasks; the trainer saves a checkpoint at the next step
# and exits, and with --requeue SLURM puts the job back in the queue. Near the time limit SLURM
# sends SIGUSR1 to this script, which forwards SIGTERM to the tasks, waits for the checkpoint,
# and requeues the job with `scontrol requeue`.
set -euo pipefail

_self=${BASH_SOURCE[0]}
[[ $_self == */* ]] || _self=./$_self
_self_dir=$(cd "${_self%/*}" && pwd)
if [[ -d $_self_dir/../autoscale_jax ]]; then
  _default_repo=$(cd "$_self_dir/.." && pwd)
else  # sbatch runs a copy of this file from its spool directory
  _default_repo=${SLURM_SUBMIT_DIR:-$PWD}
fi
# A job this script submitted gets REPO_DIR from its environment (exported below).
REPO_DIR=${REPO_DIR:-$_default_repo}
if [[ ! -f $REPO_DIR/launch/common.sh ]]; then
  printf 'error: %s\n' "REPO_DIR=$REPO_DIR holds no launch/common.sh; run sbatch from the repository root or set REPO_DIR to the checkout." >&2
  exit 2
fi
# shellcheck source=launch/common.sh
. "$REPO_DIR/launch/common.sh"

DRY_RUN=0
CLI_ARGS=()
while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    -h | --help)
      usage "$_self"
      exit 0 ;;
    --) shift; CLI_ARGS=("$@"); break ;;
    *) printf 'error: unknown argument %s; see launch/slurm.sh --help.\n' "$1" >&2; exit 2 ;;
  esac
  shift
done

CONFIG=${CONFIG:-configs/gpt2_large.py}
WORKDIR=${WORKDIR:-$HOME/autoscale_jax_work/$(config_name "$CONFIG")}
EXTRA_ARGS=${EXTRA_ARGS:-}
NODES=${NODES:-2}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
TIME=${TIME:-24:00:00}
PARTITION=${PARTITION:-}
ACCOUNT=${ACCOUNT:-}
QOS=${QOS:-}
JOB_NAME=${JOB_NAME:-autoscale}
SBATCH_EXTRA=${SBATCH_EXTRA:-}
SIGNAL_GRACE_S=${SIGNAL_GRACE_S:-300}
MAX_RESTARTS=${MAX_RESTARTS:-100}
PORT=${PORT:-}
JAX_AUTODETECT=${JAX_AUTODETECT:-0}
VENV=${VENV:-$REPO_DIR/.venv}
SKIP_INSTALL=${SKIP_INSTALL:-0}
GPU_XLA_FLAGS=${GPU_XLA_FLAGS-$DEFAULT_GPU_XLA_FLAGS}
XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}
EXTRA_ENV=${EXTRA_ENV:-}
LOG_DIR=${LOG_DIR:-$HOME/autoscale_jax_logs/slurm}

for n in NODES GPUS_PER_NODE SIGNAL_GRACE_S MAX_RESTARTS; do
  [[ ${!n} =~ ^[0-9]+$ ]] || die "$n=${!n} is not a whole number; set it to one."
done
[[ -z $PORT || $PORT =~ ^[0-9]+$ ]] || die "PORT=$PORT is not a port number; unset it or set a number."
check_config
split_extras
read -r -a sbatch_extra <<<"$SBATCH_EXTRA"

# The command every task runs. $1: coordinator host, $2: port, $3: number of processes.
task_command() {
  local env_assign=("XLA_FLAGS=${GPU_XLA_FLAGS}${XLA_FLAGS:+ $XLA_FLAGS}"
                    "XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION" "${extra_env[@]}")
  local py=("$VENV/bin/python" -m autoscale_jax.main "--config=$CONFIG" "--workdir=$WORKDIR"
            "${extra_args[@]}" "${CLI_ARGS[@]}")
  if ((JAX_AUTODETECT)); then
    task=(env "${env_assign[@]}" AUTOSCALE_DISTRIBUTED=1 "${py[@]}")
  else
    # SLURM_NODEID is only known inside each task, hence the small bash wrapper.
    # shellcheck disable=SC2016
    task=(env "${env_assign[@]}" "AUTOSCALE_COORDINATOR=$1:$2" "AUTOSCALE_NUM_PROCESSES=$3"
          bash -c 'export AUTOSCALE_PROCESS_ID="$SLURM_NODEID"; exec "$@"' autoscale-task "${py[@]}")
  fi
}

srun_command() {  # $1 number of nodes; uses $task
  srun=(srun "--nodes=$1" "--ntasks=$1" --ntasks-per-node=1 --kill-on-bad-exit=1
        --open-mode=append "--output=$LOG_DIR/%x-%j-node%n.log" "--chdir=$REPO_DIR" "${task[@]}")
}

# =========================== outside an allocation: install and submit ===========================
if [[ -z ${SLURM_JOB_ID:-} ]]; then
  if ((!DRY_RUN)); then
    command -v sbatch >/dev/null || die "sbatch is not on PATH; run this on a SLURM login node (or use --dry-run)."
  fi
  if ((!SKIP_INSTALL)); then
    install=("$BASH" "$REPO_DIR/launch/gpu.sh" --install-only)
    ((DRY_RUN)) && install+=(--dry-run)
    VENV=$VENV PYTHON=${PYTHON:-python3} JAX_CUDA=${JAX_CUDA:-cuda13} CONFIG=$CONFIG "${install[@]}"
  elif ((!DRY_RUN)) && [[ ! -x $VENV/bin/python ]]; then
    die "SKIP_INSTALL=1 but $VENV/bin/python does not exist; unset SKIP_INSTALL or set VENV."
  fi
  run mkdir -p "$LOG_DIR"
  sbatch=(sbatch "--job-name=$JOB_NAME" "--nodes=$NODES" --ntasks-per-node=1
          "--gpus-per-node=$GPUS_PER_NODE" "--time=$TIME" --requeue
          "--signal=B:USR1@$SIGNAL_GRACE_S" --open-mode=append "--output=$LOG_DIR/%x-%j.out"
          "--chdir=$REPO_DIR" --export=ALL)
  [[ -n $PARTITION ]] && sbatch+=("--partition=$PARTITION")
  [[ -n $ACCOUNT ]] && sbatch+=("--account=$ACCOUNT")
  [[ -n $QOS ]] && sbatch+=("--qos=$QOS")
  sbatch+=("${sbatch_extra[@]}" "$REPO_DIR/launch/slurm.sh")
  ((${#CLI_ARGS[@]})) && sbatch+=(-- "${CLI_ARGS[@]}")
  # The job reads the resolved settings from its environment (--export=ALL).
  export REPO_DIR CONFIG WORKDIR EXTRA_ARGS PORT JAX_AUTODETECT VENV GPU_XLA_FLAGS \
    XLA_PYTHON_CLIENT_MEM_FRACTION EXTRA_ENV LOG_DIR MAX_RESTARTS
  run "${sbatch[@]}"
  if ((DRY_RUN)); then
    task_command '<first node>' "${PORT:-<20000 + job id % 20000>}" "$NODES"
    srun_command "$NODES"
    printf '# then, inside the job:\n'
    # shellcheck disable=SC2016  # printed for the reader, expanded only inside the job
    printf 'scontrol show hostnames "$SLURM_JOB_NODELIST"   # first name = coordinator\n'
    printf '%s\n' "$(quote "${srun[@]}")"
    printf '# on SIGUSR1 (%ss before the time limit): scancel --signal=TERM <job id>; wait; scontrol requeue <job id>\n' \
      "$SIGNAL_GRACE_S"
  fi
  exit 0
fi

# =========================== inside an allocation: run ===========================
if ((DRY_RUN)); then
  printf '%s\n' "$(quote scontrol show hostnames "$SLURM_JOB_NODELIST")"
  nodes=('<first node>')
else
  [[ -x $VENV/bin/python ]] || die "$VENV/bin/python does not exist; run launch/gpu.sh --install-only (or set VENV)."
  mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
  ((${#nodes[@]})) || die "scontrol listed no hosts for SLURM_JOB_NODELIST=$SLURM_JOB_NODELIST."
fi
nnodes=${SLURM_NNODES:-${#nodes[@]}}
port=${PORT:-$((20000 + SLURM_JOB_ID % 20000))}
task_command "${nodes[0]}" "$port" "$nnodes"
srun_command "$nnodes"
printf 'job %s (restart %s): %s node(s), coordinator %s:%s, config %s, workdir %s\n' \
  "$SLURM_JOB_ID" "${SLURM_RESTART_COUNT:-0}" "$nnodes" "${nodes[0]}" "$port" "$CONFIG" "$WORKDIR"
if ((DRY_RUN)); then
  run "${srun[@]}"
  exit 0
fi
run mkdir -p "$LOG_DIR"

requeue=0
# shellcheck disable=SC2317  # trap handlers
on_usr1() {
  requeue=1
  printf 'time limit in %ss: asking the trainers to checkpoint (SIGTERM), then requeueing.\n' "$SIGNAL_GRACE_S"
  scancel --signal=TERM "$SLURM_JOB_ID" || true
}
# shellcheck disable=SC2317
on_term() {
  # Preemption or scancel: SLURM signals the tasks itself (the trainer checkpoints); SLURM
  # requeues a preempted --requeue job on its own, so only wait here.
  printf 'SIGTERM: waiting for the trainers to checkpoint and exit.\n'
}
trap on_usr1 USR1
trap on_term TERM

printf '+ %s\n' "$(quote "${srun[@]}")"
"${srun[@]}" &
srun_pid=$!
rc=0
while :; do
  wait "$srun_pid" && rc=0 || rc=$?
  kill -0 "$srun_pid" 2>/dev/null || break  # wait was only interrupted by a signal
done

if ((requeue)); then
  if ((${SLURM_RESTART_COUNT:-0} >= MAX_RESTARTS)); then
    printf 'not requeueing: the job already restarted %s times (MAX_RESTARTS=%s).\n' \
      "${SLURM_RESTART_COUNT:-0}" "$MAX_RESTARTS"
    exit "$rc"
  fi
  run scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$rc"
