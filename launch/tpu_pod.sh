#!/usr/bin/env bash
# Runs autoscale_jax on a Cloud TPU VM (a single host or a whole pod slice): creates the TPU or
# reuses it, installs the project on every worker, and starts the same command on every worker.
#
# Usage:  TPU_NAME=... ZONE=... WORKDIR=gs://... [VAR=value ...] launch/tpu_pod.sh [--dry-run]
#           [--skip-preflight] [-- ARGS...]
#
#   --dry-run         print every command (the preflight, gcloud, git/tar, the scripts run over
#                     ssh, pip, python) instead of running it; exits 0, also where gcloud or
#                     libtpu is not installed
#   --skip-preflight  do not run the local preflight (below) before touching the TPU
#   -- ARGS...        appended to the python command line after EXTRA_ARGS
#
# Preflight: before any gcloud command, the script compiles every program of the run's plan for
# the slice it will create, on this machine and from this checkout:
#   cd <repo> && <python> -m autoscale_jax.main --config=CONFIG EXTRA_ARGS ARGS
#     --config.mode=preflight --config.preflight.topology=ACCELERATOR_TYPE
#     [--config.preflight.mode=<the run's --config.mode>] --workdir=LOG_DIR/preflight-TPU_NAME
# so the same config and mesh flags are checked (EXTRA_ENV is set for it too, e.g.
# LIBTPU_INIT_ARGS). It prints memory per chip, fit, step time and chip-hours, and writes
# preflight.json there. When a program does not fit (exit 2) or the preflight fails otherwise,
# the script stops with that status and nothing is created. It needs libtpu here:
# pip install -e ".[tpu]" into VENV. A run whose --config.mode trains nothing (prepare,
# predict, report) gets no preflight.
#
# Rerunning is safe and resumes: an existing READY TPU is reused, the code is synced again, pip
# only installs what changed, and the program skips finished runs and restarts half-finished ones
# from their latest checkpoint in WORKDIR. This script never deletes anything (a preempted TPU
# must be deleted by you; the script prints the command).
#
# Required:
#   TPU_NAME          name of the TPU VM (created when it does not exist)
#   ZONE              e.g. us-east5-a (v5p), us-central2-b (v4), us-east1-d (v6e)
#   WORKDIR           gs://bucket/path that every worker reads and writes (data cache, runs,
#                     checkpoints, reports). The TPU's service account needs write access.
# Optional:
#   PROJECT           GCP project (default: gcloud's configured project)
#   ACCELERATOR_TYPE  slice to create (default v5p-128 = 64 chips on 16 hosts)
#   RUNTIME_VERSION   TPU software version (default from ACCELERATOR_TYPE: v6e -> v2-alpha-tpuv6e,
#                     v5p -> v2-alpha-tpuv5, v5litepod/v5e -> v2-alpha-tpuv5-lite,
#                     older -> tpu-ubuntu2204-base)
#   SPOT              1 = Spot TPU (cheaper, can be preempted; rerun after recreating) (default 0)
#   PREEMPTIBLE       1 = legacy preemptible TPU (direct create only) (default 0)
#   QUEUED            1 = ask through a queued resource and wait until it is ACTIVE (default 0)
#   QUEUED_RESOURCE_ID  queued resource name (default <TPU_NAME>-qr)
#   VALID_UNTIL       queued resource: give up after this long, e.g. 6h (default: no limit)
#   RESERVED          1 = queued resource from your reservation (default 0)
#   WAIT_POLL_S       seconds between state checks while waiting (default 60)
#   REPO_URL          git URL the workers clone (e.g. https://github.com/you/autoscale_jax.git);
#                     unset = copy this checkout (tracked and untracked, not ignored, files) with
#                     `gcloud compute tpus tpu-vm scp`
#   BRANCH            branch to check out when REPO_URL is set (default main)
#   REMOTE_DIR        checkout on each worker, relative to its home (default autoscale_jax)
#   CONFIG            a shipped config's name (gpt2_large) or a config file relative to the repo
#                     root; either may end in :ARG (default configs/gpt2_large.py)
#   EXTRA_ARGS        more flags for autoscale_jax.main, split on spaces
#   EXTRA_ENV         more VAR=value words exported on every worker (e.g. LIBTPU_INIT_ARGS=...)
#   SKIP_INSTALL      1 = skip the code sync and pip install (default 0)
#   DETACH            1 = start the run in the background on each worker (nohup) and return;
#                     use it for runs that must outlive this terminal (default 0: stream
#                     worker 0's output here; closing the terminal stops the run)
#   LOG_DIR           local copy of what this script shows (default $HOME/autoscale_jax_logs/tpu);
#                     the preflight's workdir is LOG_DIR/preflight-<TPU_NAME>
#   VENV              local virtual environment whose python runs the preflight (default
#                     <repo>/.venv; install with <VENV>/bin/pip install -e ".[tpu]")
#   PYTHON            the preflight's python where VENV has none (default python3)
#
# Logs: each worker appends its output to <REMOTE_DIR>/logs/worker-<N>.log, and (foreground
# runs) copies it to WORKDIR/launch_logs/tpu-worker-<N>.log when the program ends.
# Multi-host: every worker runs with AUTOSCALE_DISTRIBUTED=1, on which the entry point calls
# jax.distributed.initialize() with no arguments (on a TPU pod jax finds the other workers).
set -euo pipefail

_self=${BASH_SOURCE[0]}
[[ $_self == */* ]] || _self=./$_self
REPO_DIR=$(cd "${_self%/*}/.." && pwd)
# shellcheck source=launch/common.sh
. "$REPO_DIR/launch/common.sh"

DRY_RUN=0
SKIP_PREFLIGHT=0
CLI_ARGS=()
while (($#)); do
  case $1 in
    --dry-run) DRY_RUN=1 ;;
    --skip-preflight) SKIP_PREFLIGHT=1 ;;
    -h | --help)
      usage "$_self"
      exit 0 ;;
    --) shift; CLI_ARGS=("$@"); break ;;
    *) printf 'error: unknown argument %s; see launch/tpu_pod.sh --help.\n' "$1" >&2; exit 2 ;;
  esac
  shift
done

TPU_NAME=${TPU_NAME:-}
ZONE=${ZONE:-}
WORKDIR=${WORKDIR:-}
PROJECT=${PROJECT:-}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v5p-128}
case $ACCELERATOR_TYPE in
  v6e*) _runtime=v2-alpha-tpuv6e ;;
  v5p*) _runtime=v2-alpha-tpuv5 ;;
  v5litepod* | v5e*) _runtime=v2-alpha-tpuv5-lite ;;
  *) _runtime='tpu-ubuntu2204-base' ;;
esac
RUNTIME_VERSION=${RUNTIME_VERSION:-$_runtime}
SPOT=${SPOT:-0}
PREEMPTIBLE=${PREEMPTIBLE:-0}
QUEUED=${QUEUED:-0}
QUEUED_RESOURCE_ID=${QUEUED_RESOURCE_ID:-$TPU_NAME-qr}
VALID_UNTIL=${VALID_UNTIL:-}
RESERVED=${RESERVED:-0}
WAIT_POLL_S=${WAIT_POLL_S:-60}
REPO_URL=${REPO_URL:-}
BRANCH=${BRANCH:-main}
REMOTE_DIR=${REMOTE_DIR:-autoscale_jax}
CONFIG=${CONFIG:-configs/gpt2_large.py}
EXTRA_ARGS=${EXTRA_ARGS:-}
EXTRA_ENV=${EXTRA_ENV:-}
SKIP_INSTALL=${SKIP_INSTALL:-0}
DETACH=${DETACH:-0}
LOG_DIR=${LOG_DIR:-$HOME/autoscale_jax_logs/tpu}
VENV=${VENV:-$REPO_DIR/.venv}
PYTHON=${PYTHON:-python3}

[[ -n $TPU_NAME ]] || die "TPU_NAME is not set; set it to the TPU VM's name (it is created if missing)."
[[ -n $ZONE ]] || die "ZONE is not set; set it to the TPU's zone, e.g. ZONE=us-east5-a."
[[ -n $WORKDIR ]] || die "WORKDIR is not set; set it to a gs:// path every worker can write, e.g. WORKDIR=gs://my-bucket/autoscale."
[[ $WORKDIR == gs://* ]] || die "WORKDIR=$WORKDIR is not a gs:// path; every worker must see the same workdir, so use gs://bucket/path."
[[ $ACCELERATOR_TYPE =~ ^v[0-9a-z]+-[0-9]+$ ]] || die "ACCELERATOR_TYPE=$ACCELERATOR_TYPE does not look like v5p-128 or v6e-256; set a Cloud TPU accelerator type."
[[ $WAIT_POLL_S =~ ^[0-9]+$ ]] || die "WAIT_POLL_S=$WAIT_POLL_S is not a whole number of seconds."
[[ $REMOTE_DIR != /* && $REMOTE_DIR != *..* ]] || die "REMOTE_DIR=$REMOTE_DIR must be a path inside the worker's home, e.g. autoscale_jax."
((QUEUED && PREEMPTIBLE)) && die "PREEMPTIBLE=1 does not apply to queued resources; use SPOT=1 with QUEUED=1."
((SPOT && PREEMPTIBLE)) && die "SPOT=1 and PREEMPTIBLE=1 exclude each other; keep SPOT=1."
[[ -n $REPO_URL || $CONFIG == /* ]] || check_config  # else the file is on the workers only
split_extras
if ((!DRY_RUN)); then
  command -v gcloud >/dev/null || die "gcloud is not on PATH; install the Google Cloud CLI (or use --dry-run)."
fi

where=("--zone=$ZONE")
[[ -n $PROJECT ]] && where+=("--project=$PROJECT")
tpu=(gcloud compute tpus tpu-vm)
qr=(gcloud compute tpus queued-resources)

# Sets STATE to the state of the TPU ($1 = tpu) or queued resource ($1 = qr); '' when it does
# not exist. Under --dry-run: prints the query and assumes that nothing exists yet.
query_state() {
  local cmd
  if [[ $1 == qr ]]; then
    cmd=("${qr[@]}" describe "$QUEUED_RESOURCE_ID" "${where[@]}" '--format=value(state.state)')
  else
    cmd=("${tpu[@]}" describe "$TPU_NAME" "${where[@]}" '--format=value(state)')
  fi
  STATE=
  if ((DRY_RUN)); then
    printf '%s\n# (dry run: assuming the %s does not exist yet; a real run reuses an existing one)\n' \
      "$(quote "${cmd[@]}")" "$1"
  else
    STATE=$("${cmd[@]}" 2>/dev/null) || STATE=
  fi
}

wait_for() {  # $1: tpu|qr, $2: the state to wait for
  local state
  if ((DRY_RUN)); then
    printf '# wait: poll the %s state every %ss until it is %s\n' "$1" "$WAIT_POLL_S" "$2"
    return 0
  fi
  while :; do
    query_state "$1"
    state=$STATE
    [[ $state == "$2" ]] && return 0
    case $state in
      FAILED | SUSPENDED | SUSPENDING | PREEMPTED | TERMINATED | DELETING)
        gone "$1" "$state" ;;
    esac
    printf '%s is %s; waiting for %s (next check in %ss)\n' "$1" "${state:-not there yet}" "$2" "$WAIT_POLL_S" >&2
    sleep "$WAIT_POLL_S"
  done
}

gone() {  # a TPU or queued resource that cannot come back: say how to replace it, delete nothing
  local del
  if [[ $1 == qr ]]; then
    del=$(quote "${qr[@]}" delete "$QUEUED_RESOURCE_ID" "${where[@]}" --force)
  else
    del=$(quote "${tpu[@]}" delete "$TPU_NAME" "${where[@]}")
  fi
  die "$1 is $2 and cannot be reused; delete it with \`$del\` (WORKDIR and its checkpoints are not touched) and rerun this script to resume."
}

ensure_tpu() {
  local state create
  if ((QUEUED)); then
    query_state qr
    state=$STATE
    case $state in
      ACTIVE) ;;
      '')
        create=("${qr[@]}" create "$QUEUED_RESOURCE_ID" "--node-id=$TPU_NAME" "${where[@]}"
                "--accelerator-type=$ACCELERATOR_TYPE" "--runtime-version=$RUNTIME_VERSION")
        ((SPOT)) && create+=(--spot)
        ((RESERVED)) && create+=(--reserved)
        [[ -n $VALID_UNTIL ]] && create+=("--valid-until-duration=$VALID_UNTIL")
        run "${create[@]}"
        wait_for qr ACTIVE ;;
      FAILED | SUSPENDED | SUSPENDING) gone qr "$state" ;;
      *) wait_for qr ACTIVE ;;
    esac
  fi
  query_state tpu
  state=$STATE
  case $state in
    READY) printf 'reusing TPU %s (READY)\n' "$TPU_NAME" >&2 ;;
    '')
      ((QUEUED && !DRY_RUN)) && die "queued resource $QUEUED_RESOURCE_ID is ACTIVE but TPU $TPU_NAME does not exist; set TPU_NAME to its node id."
      if ((!QUEUED)); then
        create=("${tpu[@]}" create "$TPU_NAME" "${where[@]}" "--accelerator-type=$ACCELERATOR_TYPE"
                "--version=$RUNTIME_VERSION")
        ((SPOT)) && create+=(--spot)
        ((PREEMPTIBLE)) && create+=(--preemptible)
        run "${create[@]}"
      fi ;;
    STOPPED) run "${tpu[@]}" start "$TPU_NAME" "${where[@]}"; wait_for tpu READY ;;
    CREATING | STARTING | RESTARTING | REPAIRING | STOPPING) wait_for tpu READY ;;
    *) gone tpu "$state" ;;
  esac
}

# Fills @@NAME@@ placeholders of a remote script template with shell-quoted values.
fill() {
  local s=$1
  shift
  while (($#)); do s=${s//"@@$1@@"/"$2"}; shift 2; done
  printf '%s' "$s"
}

on_workers() {  # $1: script run on every worker; more args: extra gcloud flags
  local script=$1
  shift
  run "${tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all "$@" "--command=$script"
}

# Compiles the run's plan for ACCELERATOR_TYPE on this machine (see the header); stops the
# script with the preflight's exit status when it fails. Under --dry-run: prints the command.
preflight() {
  local a prev='' mode='' mode_set=0 py=$PYTHON dir=$LOG_DIR/preflight-$TPU_NAME cmd rc=0
  for a in "${extra_args[@]}" "${CLI_ARGS[@]}"; do  # the last --config.mode wins, as in absl
    [[ $prev == --config.mode ]] && mode=$a
    case $a in
      --config.mode=*) mode=${a#--config.mode=} ;;
      --config.preflight.mode | --config.preflight.mode=*) mode_set=1 ;;
    esac
    prev=$a
  done
  case $mode in
    '' | train | ddo | autoscale | compare) ;;
    *) printf '# no preflight: --config.mode=%s trains nothing\n' "$mode" >&2; return 0 ;;
  esac
  [[ -x $VENV/bin/python ]] && py=$VENV/bin/python
  # Flags parse left to right and the last one wins: the preflight's own come after the user's.
  cmd=("$py" -m autoscale_jax.main "--config=$CONFIG" "${extra_args[@]}" "${CLI_ARGS[@]}"
       --config.mode=preflight "--config.preflight.topology=$ACCELERATOR_TYPE")
  [[ -n $mode ]] && ((!mode_set)) && cmd+=("--config.preflight.mode=$mode")
  cmd+=("--workdir=$dir")
  ((${#extra_env[@]})) && cmd=(env "${extra_env[@]}" "${cmd[@]}")
  ((DRY_RUN)) || command -v "$py" >/dev/null ||
    die "no python for the preflight: $VENV/bin/python does not exist and PYTHON=$PYTHON is not on PATH; set VENV to a venv with pip install -e \".[tpu]\" (or pass --skip-preflight)."
  run mkdir -p "$dir"
  if ((DRY_RUN)); then
    printf 'cd %s && %s\n' "$(quote "$REPO_DIR")" "$(quote "${cmd[@]}")"
    return 0
  fi
  printf '+ cd %s && %s\n' "$(quote "$REPO_DIR")" "$(quote "${cmd[@]}")" >&2
  (cd "$REPO_DIR" && exec "${cmd[@]}") || rc=$?
  if ((rc)); then
    printf 'error: the preflight of %s on %s failed (exit %s; its reason is above), so no TPU was created or touched; fix the config or mesh flags, or pass --skip-preflight to launch anyway.\n' \
      "$CONFIG" "$ACCELERATOR_TYPE" "$rc" >&2
    exit "$rc"
  fi
  printf 'preflight: %s fits %s (report: %s/preflight.json)\n' "$CONFIG" "$ACCELERATOR_TYPE" "$dir" >&2
}

# ---- 0. the preflight, here, before any gcloud command -------------------------------------
if ((!SKIP_PREFLIGHT)); then
  preflight  # not in a || list: set -e must hold inside it
fi

# ---- 1. the TPU ----------------------------------------------------------------------------
ensure_tpu

# ---- 2. code and environment on every worker -------------------------------------------------
if ((!SKIP_INSTALL)); then
  if [[ -n $REPO_URL ]]; then
    IFS= read -r -d '' sync <<'EOF' || true
if [ -d @@DIR@@/.git ]; then
  git -C @@DIR@@ fetch --quiet origin @@BRANCH@@
  git -C @@DIR@@ checkout --quiet @@BRANCH@@
  git -C @@DIR@@ merge --quiet --ff-only FETCH_HEAD
else
  git clone --quiet --branch @@BRANCH@@ @@URL@@ @@DIR@@
fi
EOF
    sync=$(fill "$sync" DIR "$(quote "$REMOTE_DIR")" BRANCH "$(quote "$BRANCH")" URL "$(quote "$REPO_URL")")
  else
    tarball=${TMPDIR:-/tmp}/autoscale_jax_src_$TPU_NAME.tar.gz
    list=(git -C "$REPO_DIR" ls-files -z --cached --others --exclude-standard)
    pack=(tar -czf "$tarball" -C "$REPO_DIR" --null -T -)
    if ((DRY_RUN)); then
      printf '%s | %s\n' "$(quote "${list[@]}")" "$(quote "${pack[@]}")"
    else
      [[ -d $REPO_DIR/.git ]] || die "$REPO_DIR is not a git checkout; set REPO_URL so the workers clone the code."
      printf '+ %s | %s\n' "$(quote "${list[@]}")" "$(quote "${pack[@]}")" >&2
      "${list[@]}" | "${pack[@]}"
    fi
    run "${tpu[@]}" scp "$tarball" "$TPU_NAME:autoscale_jax_src.tar.gz" "${where[@]}" --worker=all
    # Unpacking overwrites the project's files and removes nothing (the venv and logs stay).
    sync="mkdir -p $(quote "$REMOTE_DIR") && tar -xzf autoscale_jax_src.tar.gz -C $(quote "$REMOTE_DIR")"
  fi
  IFS= read -r -d '' install <<'EOF' || true
set -euo pipefail
@@SYNC@@
cd @@DIR@@
if [ ! -x .venv/bin/python ]; then
  if python3 -c "import sys; sys.exit(sys.version_info < (3, 11))"; then
    python3 -m venv .venv
  else  # the TPU images ship Python 3.10: get a 3.11 through uv
    python3 -m pip install --quiet --user uv
    "$HOME/.local/bin/uv" venv --seed --python 3.11 .venv
  fi
fi
jax_version=$(sed -n "s/^jax==//p" requirements.txt)
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e . "jax[tpu]==$jax_version"
EOF
  on_workers "$(fill "$install" SYNC "$sync" DIR "$(quote "$REMOTE_DIR")")"
fi

# ---- 3. the run, on every worker at once -------------------------------------------------------
py=(.venv/bin/python -m autoscale_jax.main "--config=$CONFIG" "--workdir=$WORKDIR"
    "${extra_args[@]}" "${CLI_ARGS[@]}")
exports=(AUTOSCALE_DISTRIBUTED=1 "${extra_env[@]}")
IFS= read -r -d '' start <<'EOF' || true
set -euo pipefail
cd @@DIR@@
mkdir -p logs
w=$(curl -sf -m 5 -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)
log=logs/worker-$w.log
if pgrep -f "^[^ ]*python[0-9.]* -m autoscale_jax[.]main" >/dev/null; then
  echo "worker $w: autoscale_jax.main is still running here; not starting another (log: @@DIR@@/$log)" >&2
  exit 1
fi
export @@EXPORTS@@
echo "=== $(date -u +%FT%TZ) worker $w starts: @@PY@@" >>"$log"
EOF
if ((DETACH)); then
  IFS= read -r -d '' launch <<'EOF' || true
nohup setsid @@PY@@ >>"$log" 2>&1 </dev/null &
echo "worker $w: started in the background; log @@DIR@@/$log"
EOF
else
  IFS= read -r -d '' launch <<'EOF' || true
rc=0
if [ "$w" = 0 ]; then
  @@PY@@ 2>&1 | tee -a "$log" || rc=$?
else
  @@PY@@ >>"$log" 2>&1 || rc=$?
fi
gcloud storage cp --quiet "$log" @@WORKDIR@@/launch_logs/tpu-worker-$w.log || true
exit "$rc"
EOF
fi
start=$(fill "$start$launch" DIR "$(quote "$REMOTE_DIR")" PY "$(quote "${py[@]}")" \
  EXPORTS "$(quote "${exports[@]}")" WORKDIR "$(quote "${WORKDIR%/}")")

printf -v stamp '%(%Y%m%d-%H%M%S)T' -1
local_log=$LOG_DIR/$TPU_NAME-$stamp.log
run mkdir -p "$LOG_DIR"
if ((DRY_RUN)); then
  on_workers "$start"
  printf '# (the ssh output above is also appended to %s)\n' "$local_log"
  exit 0
fi
on_workers "$start" 2>&1 | tee -a "$local_log"
if ((DETACH)); then
  printf 'follow worker 0 with: %s\n' "$(quote "${tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=0 \
    "--command=tail -f $REMOTE_DIR/logs/worker-0.log")"
fi
