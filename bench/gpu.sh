#!/usr/bin/env bash
# GPU train-step throughput: tokens/s and MFU of GPT-2 small and large (seq 1024) and BERT base
# (seq 512), bf16 compute with fp32 params, at the largest batch that fits; prints a table.
# Bounded to 8 minutes in all. Installs nothing except jax[cuda12] when jax has no GPU backend.
#
#   bash bench/gpu.sh                 # on a machine with an NVIDIA GPU (see bench/RESULTS.md)
#   bash bench/gpu.sh --smoke         # tiny dims on CPU: checks this script end to end
#   bash bench/gpu.sh --only 'GPT-2 large'   # any other flags go to bench/gpu_throughput.py
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
BUDGET_S=480  # the whole script, install included
OUT_JSON=${OUT:+$OUT/gpu_throughput.json}

smoke=0
if [[ "${1:-}" == "--smoke" ]]; then
  smoke=1
  shift
fi

if ! "$PY" -c 'import flax, optax, ml_collections, etils, absl' 2>/dev/null; then
  echo "gpu.sh: flax/optax/ml_collections/etils/absl are missing; run 'pip install -e .' first." >&2
  exit 1
fi

if [[ $smoke == 1 ]]; then
  # 0.015 GiB: the first batch of each smoke case does not fit, so the batch search runs too.
  exec timeout $((BUDGET_S - SECONDS)) "$PY" bench/gpu_throughput.py --smoke --steps 2 \
    --warmup 1 --memory-gib 0.015 --deadline-s $((BUDGET_S - SECONDS - 60)) \
    ${OUT_JSON:+--out "$OUT_JSON"} "$@"
fi

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
if ! "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  version=$("$PY" -c 'import jax; print(jax.__version__)' 2>/dev/null || true)
  echo "gpu.sh: jax has no GPU backend; installing jax[cuda12]${version:+==$version}" >&2
  if ! timeout 180 "$PY" -m pip install -q "jax[cuda12]${version:+==$version}"; then
    echo "gpu.sh: could not install jax[cuda12]; install it and run again." >&2
    exit 1
  fi
  if ! "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")'; then
    echo "gpu.sh: jax still sees no GPU (driver or CUDA libraries missing)." >&2
    exit 1
  fi
fi

# Leaves ~60 s after the deadline for the case in flight to finish and the table to print.
exec timeout $((BUDGET_S - SECONDS)) "$PY" bench/gpu_throughput.py \
  --deadline-s $((BUDGET_S - SECONDS - 90)) ${OUT_JSON:+--out "$OUT_JSON"} "$@"
