#!/usr/bin/env bash
# Check onnxviz on a machine with an NVIDIA GPU: the CUDA provider loads, the fast tests pass
# with --device cuda, every node of the gradient graphs runs on the GPU (nodes onnxruntime
# placed on the CPU are listed), and the benchmark prints the gradient/forward ratios on CUDA.
#
#   bash scripts/gpu_check.sh                  # from anywhere; about 8 minutes at most
#   GPU_CHECK_BUDGET=300 NO_VENV=1 bash scripts/gpu_check.sh
#
# Environment: PYTHON (default python3), NO_VENV=1 (use that python as is, no .venv-gpu),
# GPU_CHECK_BUDGET (seconds for the whole script, default 480), PYTEST_ARGS (default: the
# whole-model and torch-parity files without the slow marks), BENCH_ARGS (extra bench.py options).
#
# The venv sees the system's packages (numpy, onnx, torch) and gets onnxruntime-gpu from
# onnxviz's [gpu] extra, which does not pull the CPU onnxruntime: both install the same
# `onnxruntime` module, and whichever lands last wins.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
BUDGET=${GPU_CHECK_BUDGET:-480}
START=$SECONDS

left() { echo $((BUDGET - (SECONDS - START))); }

# step LIMIT CMD...: run CMD with at most LIMIT seconds, capped by what is left of the budget.
step() {
  local limit=$1 remaining
  shift
  remaining=$(left)
  if ((remaining < 10)); then
    echo "gpu_check: time budget spent before: $*" >&2
    exit 124
  fi
  ((limit <= remaining)) || limit=$remaining
  echo "+ [$((SECONDS - START))s, limit ${limit}s] $*" >&2
  timeout --kill-after=10 "$limit" "$@"
}

PY=${PYTHON:-python3}
if [[ -z ${NO_VENV:-} ]]; then
  if [[ ! -x .venv-gpu/bin/python ]]; then
    step 60 "$PY" -m venv --system-site-packages .venv-gpu
  fi
  PY=.venv-gpu/bin/python
fi

has_cuda() {
  "$PY" -c 'import onnxruntime as o, sys; sys.exit("CUDAExecutionProvider" not in o.get_available_providers())' \
    2>/dev/null
}

# Install; offline machines keep whatever onnxruntime-gpu is already there.
if ! step 180 "$PY" -m pip install --quiet --disable-pip-version-check -e ".[gpu,test]"; then
  echo "gpu_check: pip install failed (offline?); going on with what is installed" >&2
  step 60 "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . ||
    echo "gpu_check: could not install onnxviz itself either; tests import it from the checkout" >&2
fi
if ! has_cuda && "$PY" -m pip show --quiet onnxruntime >/dev/null 2>&1; then
  # the CPU package shadows the GPU one: remove it and restore onnxruntime-gpu's files
  echo "gpu_check: the CPU onnxruntime shadows onnxruntime-gpu; removing it" >&2
  step 60 "$PY" -m pip uninstall --quiet -y onnxruntime
  step 120 "$PY" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps onnxruntime-gpu
fi

step 60 "$PY" -c "import onnxruntime as o; print(o.__version__, o.get_device(), o.get_available_providers())"
if ! has_cuda; then
  echo "gpu_check: onnxruntime has no CUDAExecutionProvider here; stopping" >&2
  exit 1
fi
command -v nvidia-smi >/dev/null && step 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

PYTEST_ARGS=${PYTEST_ARGS:-"tests/test_models_grad.py tests/test_torch_parity.py -m 'not slow'"}
step 240 bash -c "$(printf '%q' "$PY") -m pytest -q --device cuda -x -p no:cacheprovider $PYTEST_ARGS"

# Placement: profile each case's graph once on CUDA; lists the nodes that fell back to the CPU
# (onnxruntime-gpu >= 1.17 has the CUDA ScatterElements the MaxPool fallback needs).
step 60 "$PY" scripts/bench_nets.py
if ! step 120 "$PY" scripts/profile_grad.py --device cuda --runs 1 --top 5 --json profile_cuda.json; then
  echo "gpu_check: some gradient-graph nodes ran on the CPU (listed above)" >&2
fi

read -r -a bench_args <<<"${BENCH_ARGS:-}"
step "$(left)" "$PY" scripts/bench.py --device cuda --threads 0 --repeat 20 --no-peers --json bench_cuda.json \
  "${bench_args[@]}"
echo "gpu_check: done in $((SECONDS - START)) s" >&2
