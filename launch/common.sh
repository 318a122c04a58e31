# Helpers that launch/gpu.sh, slurm.sh and tpu_pod.sh source; they set REPO_DIR first, and DRY_RUN
# (0 or 1) before calling run.
# shellcheck shell=bash

# GPU runs: overlap collectives with compute (latency-hiding scheduler) and run them on a
# high-priority stream; both matter once there are >= 2 GPUs. The user's XLA_FLAGS come after.
# shellcheck disable=SC2034  # read by the scripts that source this file
DEFAULT_GPU_XLA_FLAGS='--xla_gpu_enable_latency_hiding_scheduler=true'
DEFAULT_GPU_XLA_FLAGS+=' --xla_gpu_enable_highest_priority_async_stream=true'

die() { printf 'error: %s\n' "$*" >&2; exit 2; }

# Prints its arguments as one line a shell can paste back (single quotes only where needed).
quote() {
  local out=() a sq="'" esc="'\\''" safe='^[-A-Za-z0-9_./:=,@%+]+$'
  for a in "$@"; do
    if [[ $a =~ $safe ]]; then out+=("$a"); else out+=("'${a//$sq/$esc}'"); fi
  done
  printf '%s' "${out[*]}"
}

# Runs a command, or only prints it under --dry-run.
run() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote "$@")"
  else
    printf '+ %s\n' "$(quote "$@")" >&2
    "$@"
  fi
}

# Prints the comment block at the top of script $1 (its --help), without #! and #SBATCH lines.
usage() {
  local line
  while IFS= read -r line; do
    [[ $line == '#!'* || $line == '#SBATCH'* ]] && continue
    [[ $line == '#'* ]] || break
    line=${line#\#}; printf '%s\n' "${line# }"
  done <"$1"
}

# The name of config $1 for default paths: configs/gpt2_large.py:gs://b/x -> gpt2_large.
config_name() {
  local name=${1%%:*}
  name=${name##*/}
  printf '%s' "${name%.py}"
}

# Dies unless CONFIG names a config in REPO_DIR: a shipped config's name (gpt2_large, the file
# configs/gpt2_large.py) or a file, relative to REPO_DIR or absolute; either may end in :ARG.
check_config() {
  local file=${CONFIG%%:*}
  if [[ $file != */* && $file != *.py ]]; then
    file=configs/$file.py
  fi
  [[ $file == /* ]] || file=$REPO_DIR/$file
  [[ -f $file ]] ||
    die "CONFIG=$CONFIG does not exist (looked for $file); set CONFIG to a shipped config's name (e.g. gpt2_large) or a config file."
}

# Splits EXTRA_ARGS and EXTRA_ENV on spaces into the arrays extra_args and extra_env.
# shellcheck disable=SC2153  # the sourcing script sets both
split_extras() {
  read -r -a extra_args <<<"$EXTRA_ARGS"
  read -r -a extra_env <<<"$EXTRA_ENV"
  local kv
  for kv in "${extra_env[@]}"; do
    [[ $kv == [A-Za-z_]*=* ]] || die "EXTRA_ENV word '$kv' is not VAR=value."
  done
}
