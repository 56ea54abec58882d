#!/usr/bin/env bash
# The GPU check, for a lent H100/H200 (no internet; torch + triton + CPU-only onnxruntime preinstalled).
# Prints the card, runs the GPU-marked tests (Triton compiled for the card, not interpreted), then the engine
# benchmark with every baseline rerun in the same process. Whole run: under 6 minutes (each step has a timeout).
# Everything lands in $OUT (default: out/gpu_check): gpu_check.log, pytest_gpu.xml, bench_gpu.json.
#
#   bash benchmarks/gpu_check.sh                      # from the repository root
#   BENCH_ARGS="--quick" bash benchmarks/gpu_check.sh  # dry run of the script's plumbing (e.g. on a CPU)
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu_check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee -a "$LOG") 2>&1
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
start=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - start )) s) ==="; }

step "card"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv || nvidia-smi
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())"

if ! "$PY" -c "import curvedit" 2>/dev/null; then
  step "install curvedit (editable, no dependencies)"
  "$PY" -m pip install --quiet --no-deps --no-build-isolation -e . || exit 1
fi

# conftest.py sets TRITON_INTERPRET=1 only when it is unset: 0 makes Triton compile for the GPU.
export TRITON_INTERPRET=0
# Only the files that hold GPU tests: the service's test modules import grpcio-health-checking/-reflection,
# which the lent machines' image lacks, and one collection error would stop the whole run.
step "GPU tests: pytest -m gpu"
timeout 150 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml" \
  tests/test_kernels_edit.py tests/test_triton_engine.py tests/test_engine_selection.py
echo "pytest exit code $?"

step "engine benchmark (d=512 synthetic flow first, then the shipped flow)"
timeout 190 "$PY" benchmarks/bench_engine.py --flows d512,shipped --repeats 10 --warmup 3 \
  --time-limit-s 170 --json "$OUT/bench_gpu.json" ${BENCH_ARGS:-}
echo "bench exit code $?"
step "done"
