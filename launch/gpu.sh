#!/usr/bin/env bash
# Runs autoscale_jax on one GPU workstation: one process that drives every visible GPU.
#
# Usage:  [VAR=value ...] launch/gpu.sh [--dry-run] [--install-only] [-- EXTRA_MAIN_ARGS...]
#
#   --dry-run        print every command (venv, pip, python) instead of running it; exits 0
#   --install-only   create the venv and install, then stop (launch/slurm.sh uses this)
#   -- ARGS...       appended to the python command line after EXTRA_ARGS
#
# Variables (all optional):
#   CONFIG        a shipped config's name (gpt2_small) or a config file, relative to the repo
#                 root or absolute; either may end in :ARG (default configs/gpt2_small.py)
#   WORKDIR       where caches, runs, checkpoints and reports go; local path or gs://
#                 (default $HOME/autoscale_jax_work/<config name>). Rerunning with the same
#                 WORKDIR resumes: finished runs are skipped, half-finished ones restart from
#                 their latest checkpoint. This script never deletes anything.
#   EXTRA_ARGS    more flags for autoscale_jax.main, split on spaces
#                 (e.g. "--config.train.batch_size=64 --config.mode=ddo")
#   VENV          virtual environment to create/use (default <repo>/.venv)
#   PYTHON        interpreter (>= 3.11) that creates the venv (default python3)
#   JAX_CUDA      jax extra for the CUDA wheels: cuda13 (default; NVIDIA driver >= 580) or
#                 cuda12 (older drivers). The jax version comes from requirements.txt.
#   SKIP_INSTALL  1 = use VENV as it is, no pip (default 0; pip is a no-op when up to date)
#   GPU_XLA_FLAGS XLA flags put in front of any XLA_FLAGS you export (yours win on conflict).
#                 Default: overlap collectives with compute (latency-hiding scheduler) and run
#                 them on a high-priority stream; both matter once there are >= 2 GPUs.
#                 Set GPU_XLA_FLAGS= (empty) to add none.
#   XLA_PYTHON_CLIENT_MEM_FRACTION  share of GPU memory jax preallocates (default 0.90)
#   CUDA_VISIBLE_DEVICES            restrict the GPUs used (default: all)
#   EXTRA_ENV     more VAR=value words exported before the run (split on spaces)
#   LOG_DIR       the run's output is appended to LOG_DIR/gpu-<time>.log
#                 (default $HOME/autoscale_jax_logs/gpu)
#
# One process sees all local GPUs, so no jax.distributed setup is needed (none is done).
set -euo pipefail

_self=${BASH_SOURCE[0]}
[[ $_self == */* ]] || _self=./$_self
REPO_DIR=$(cd "${_self%/*}/.." && pwd)
# shellcheck source=launch/common.sh
. "$REPO_DIR/launch/common.sh"

DRY_RUN=0
INSTALL_ONLY=0
CLI_ARGS=()
while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --install-only) INSTALL_ONLY=1 ;;
    -h | --help)
      usage "$_self"
      exit 0 ;;
    --) shift; CLI_ARGS=("$@"); break ;;
    *) printf 'error: unknown argument %s; see %s --help.\n' "$1" "$_self" >&2; exit 2 ;;
  esac
  shift
done

CONFIG=${CONFIG:-configs/gpt2_small.py}
WORKDIR=${WORKDIR:-$HOME/autoscale_jax_work/$(config_name "$CONFIG")}
EXTRA_ARGS=${EXTRA_ARGS:-}
VENV=${VENV:-$REPO_DIR/.venv}
PYTHON=${PYTHON:-python3}
JAX_CUDA=${JAX_CUDA:-cuda13}
SKIP_INSTALL=${SKIP_INSTALL:-0}
GPU_XLA_FLAGS=${GPU_XLA_FLAGS-$DEFAULT_GPU_XLA_FLAGS}
XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.90}
EXTRA_ENV=${EXTRA_ENV:-}
LOG_DIR=${LOG_DIR:-$HOME/autoscale_jax_logs/gpu}

case $JAX_CUDA in cuda12 | cuda13) ;; *) die "JAX_CUDA=$JAX_CUDA is not a jax CUDA extra; use cuda13 (driver >= 580) or cuda12." ;; esac
check_config

JAX_VERSION=
while IFS= read -r line; do
  [[ $line == jax==* ]] && JAX_VERSION=${line#jax==}
done <"$REPO_DIR/requirements.txt"
[[ -n $JAX_VERSION ]] || die "requirements.txt pins no jax==VERSION line; add one so the CUDA wheel matches."

split_extras

# --- install -----------------------------------------------------------------------------
if ((SKIP_INSTALL)); then
  ((DRY_RUN)) || [[ -x $VENV/bin/python ]] || die "SKIP_INSTALL=1 but $VENV/bin/python does not exist; unset SKIP_INSTALL or set VENV."
else
  if [[ ! -x $VENV/bin/python ]]; then
    if ((!DRY_RUN)); then
      command -v "$PYTHON" >/dev/null || die "PYTHON=$PYTHON is not on PATH; set PYTHON to a python3.11 or newer."
      "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "PYTHON=$PYTHON is older than 3.11; set PYTHON=python3.11 (or newer)."
    fi
    run "$PYTHON" -m venv "$VENV"
  fi
  run "$VENV/bin/python" -m pip install --upgrade pip
  run "$VENV/bin/python" -m pip install -e "$REPO_DIR" "jax[$JAX_CUDA]==$JAX_VERSION"
fi
((INSTALL_ONLY)) && exit 0

# --- run ---------------------------------------------------------------------------------
env_assign=(
  "XLA_FLAGS=${GPU_XLA_FLAGS}${XLA_FLAGS:+ $XLA_FLAGS}"
  "XLA_PYTHON_CLIENT_MEM_FRACTION=$XLA_PYTHON_CLIENT_MEM_FRACTION"
  "${extra_env[@]}"
)
cmd=("$VENV/bin/python" -m autoscale_jax.main "--config=$CONFIG" "--workdir=$WORKDIR"
     "${extra_args[@]}" "${CLI_ARGS[@]}")
printf -v stamp '%(%Y%m%d-%H%M%S)T' -1
log=$LOG_DIR/gpu-$stamp.log

if ((DRY_RUN)); then
  run mkdir -p "$LOG_DIR"
  printf 'cd %s && %s 2>&1 | tee -a %s\n' "$(quote "$REPO_DIR")" "$(quote env "${env_assign[@]}" "${cmd[@]}")" "$(quote "$log")"
  exit 0
fi
run mkdir -p "$LOG_DIR"
cd "$REPO_DIR"
printf '+ cd %s && %s\n  (output also appended to %s)\n' "$(quote "$REPO_DIR")" \
  "$(quote env "${env_assign[@]}" "${cmd[@]}")" "$log" >&2
# exec: python replaces this shell, so a SIGTERM sent to the script's pid reaches the trainer
# (which checkpoints and exits); the log copy is made by tee in a process substitution.
exec > >(tee -a "$log") 2>&1
exec env "${env_assign[@]}" "${cmd[@]}"
