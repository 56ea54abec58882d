#!/usr/bin/env bash
# The GPU check, for a lent H100/H200 (no internet; torch + triton + CPU-only onnxruntime preinstalled).
# Prints the card, runs the GPU-marked tests (Triton compiled for the card, not interpreted), then the engine
# benchmark with every baseline rerun in the same process: first every backend that does not compile (torch
# eager, triton), then torch.compile in its own bounded pass.
# Everything lands in $OUT (default: out/gpu_check): gpu_check.log, summary.txt, pip_list.txt, pytest_gpu.xml,
# bench_gpu.json.
#
# Made for a machine lent for minutes: the whole script ends within GPU_CHECK_BUDGET_S (default 460 s; each
# step gets at most what is left, stopped by SIGINT so that pytest still writes its junit XML and the benchmark
# its JSON and table, then SIGKILL 15 s later); a failing step is reported and the next one runs anyway.
#
#   bash benchmarks/gpu_check.sh                      # from the repository root
#   BENCH_ARGS="--quick" bash benchmarks/gpu_check.sh  # dry run of the plumbing (tests/test_gpu_check.py runs it)
#   CURVEDIT_GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh  # every section on the CPU, tiny sizes, < 5 minutes
#
# After the kernels, a serve section starts the real `curvedit serve --workers N` (the triton engine on the
# device; N = 1, 2, 4, 8) beside a no-op gRPC server of N processes, drives them from this machine's cores and
# writes the scale-out table (`curvedit bench serve --workers`) to $OUT/serve.json and serve.txt. The GPU image
# lacks the service's gRPC packages: `bash benchmarks/gpu_wheels.sh` here downloads them into .whl; carry .whl
# and they are installed with --target before the section.
#
# Exit status 0 when every step passed, 1 otherwise (summary.txt says which).
# Knobs (environment): PYTHON (default: the first of .venv/bin/python, python3, python that imports torch and
# triton),
# OUT, GPU_CHECK_BUDGET_S, GPU_CHECK_TESTS_S (pytest's cap, default 200), GPU_CHECK_BENCH_S (kept for the
# benchmark out of the budget, default 200: with a smaller budget, lower it too), GPU_CHECK_TEST_FILES,
# BENCH_ARGS (appended to the benchmark's arguments).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu_check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
export PYTHONUNBUFFERED=1 TRITON_PRINT_AUTOTUNING=1
start=$(date +%s)
DRY="${CURVEDIT_GPU_CHECK_DRY:-0}"
if [ "$DRY" = 1 ]; then
  BENCH_ARGS="${BENCH_ARGS:---quick}"
  export TRITON_INTERPRET=1
fi
BUDGET_S="${GPU_CHECK_BUDGET_S:-460}"
GRACE_S=15  # SIGINT first; SIGKILL this much later if the step has not ended

elapsed() { echo $(( $(date +%s) - start )); }
step() { echo; echo "=== $* ($(elapsed) s) ==="; }
note() { echo "$*" | tee -a "$SUMMARY"; }

# bounded CAP_S RESERVE_S CMD...: run CMD for at most CAP_S seconds, and never into the last RESERVE_S seconds
# of the budget (kept for the steps after it); 124 = timed out, 125 = no time left to start it.
bounded() {
  local cap=$1 reserve=$2 left
  shift 2
  left=$(( BUDGET_S - $(elapsed) - reserve - GRACE_S ))
  (( left < cap )) && cap=$left
  if (( cap < 5 )); then echo "not started: the ${BUDGET_S} s budget is spent"; return 125; fi
  timeout -s INT -k "$GRACE_S" "$cap" "$@"
}

# status NAME CODE: one line per step in summary.txt, whatever happened.
FAILED=0
status() {
  [ "$2" -ne 0 ] && FAILED=1
  case $2 in
    0) note "$1: ok" ;;
    124|130|137) note "$1: cut at its time limit (exit $2); what it finished is in \$OUT" ;;
    125) note "$1: not started (time budget spent)" ;;
    *) note "$1: exit $2" ;;
  esac
}

step "card"
timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv \
  || timeout 20 nvidia-smi || echo "nvidia-smi: not available"
# The first interpreter that imports torch and triton is the one (it prints what it has).
VERSIONS="import sys, torch, triton; print(sys.executable, sys.version.split()[0], 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() \
else 'no GPU')"
PY=""
for candidate in ${PYTHON:-} .venv/bin/python python3 python; do
  if command -v "$candidate" >/dev/null 2>&1 && timeout 60 "$candidate" -c "$VERSIONS"; then
    PY=$candidate
    break
  fi
done
if [ -z "$PY" ]; then note "no python imports torch and triton (tried: ${PYTHON:-} .venv/bin/python python3 python)"; exit 1; fi
note "python: $PY; budget ${BUDGET_S} s"
timeout 30 "$PY" -m pip list >"$OUT/pip_list.txt" 2>/dev/null || echo "pip list: failed"

if ! "$PY" -c "import curvedit.kernels.edit" 2>/dev/null; then
  step "install curvedit (editable, no dependencies)"
  # Keep back what the tests' floor and the benchmark need (a fixed 300 s kept a 330 s budget from installing).
  bounded 90 $(( ${GPU_CHECK_BENCH_S:-200} + 60 )) "$PY" -m pip install --quiet --no-deps --no-build-isolation -e .
  code=$?
  status install $code
  [ "$code" -ne 0 ] && note "WARNING: install failed; the steps below run anyway and will say what is missing"
fi

# conftest.py sets TRITON_INTERPRET=1 only when it is unset: 0 makes Triton compile for the GPU (the dry mode
# keeps the interpreter).
[ "$DRY" = 1 ] || export TRITON_INTERPRET=0
# Only the files that hold GPU tests: the service's test modules import grpcio-health-checking/-reflection,
# which the lent machines' image lacks, and one collection error would stop the whole run.
step "GPU tests: pytest -m gpu"
PYTEST_ARGS=(-m gpu -q -p no:cacheprovider --durations 10 --junitxml="$OUT/pytest_gpu.xml")
if "$PY" -c "import pytest_timeout" 2>/dev/null; then PYTEST_ARGS+=(--timeout 60); fi
TEST_FILES="${GPU_CHECK_TEST_FILES:-tests/test_kernels_edit.py tests/test_kernels_columns.py \
tests/test_triton_engine.py tests/test_engine_selection.py}"
# shellcheck disable=SC2086  # a list of paths, split on purpose
bounded "${GPU_CHECK_TESTS_S:-200}" "${GPU_CHECK_BENCH_S:-200}" "$PY" -m pytest "${PYTEST_ARGS[@]}" $TEST_FILES
status "GPU tests" $?
[ -f "$OUT/pytest_gpu.xml" ] && "$PY" - "$OUT/pytest_gpu.xml" <<'EOF' | tee -a "$SUMMARY"
import sys
import xml.etree.ElementTree as ET

suites = ET.parse(sys.argv[1]).getroot()
suite = suites if suites.tag == "testsuite" else suites[0]
counts = {k: suite.get(k, "0") for k in ("tests", "failures", "errors", "skipped")}
print("GPU tests (junit): " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f", {suite.get('time')} s")
for case in suite.iter("testcase"):
    for bad in ("failure", "error"):
        if case.find(bad) is not None:
            print(f"  {bad}: {case.get('classname')}::{case.get('name')}")
EOF

step "engine benchmark: d=512 synthetic flow and the shipped flow; main pass, then torch.compile"
# The benchmark stops starting rows 20 s before its own hard limit, and the compile pass gets at most 120 s; the
# serve section keeps GPU_CHECK_SERVE_S of the budget.
SERVE_S="${GPU_CHECK_SERVE_S:-150}"
left=$(( BUDGET_S - $(elapsed) - GRACE_S - 10 - SERVE_S ))
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options, split on purpose
bounded "$left" 10 "$PY" benchmarks/bench_engine.py --flows d512,shipped --repeats 10 --warmup 3 \
  --time-limit-s $(( left > 40 ? left - 20 : 20 )) --compile-time-limit-s 120 --json "$OUT/bench_gpu.json" \
  ${BENCH_ARGS:-}
status benchmark $?
[ -f "$OUT/bench_gpu.json" ] && "$PY" - "$OUT/bench_gpu.json" <<'EOF' | tee -a "$SUMMARY"
import json
import sys

result = json.load(open(sys.argv[1]))
rows = result["rows"]
timed = [r for r in rows if r["ms"] is not None]
print(f"benchmark: {result.get('status', '?')}, {len(timed)} of {len(rows)} rows timed, {result['seconds']:.0f} s")
EOF

step "serve: curvedit serve --workers N beside a no-op server of N processes"
SITE=""
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && SITE=/tmp/site
fi
if [ "$DRY" = 1 ]; then
  SERVE_ARGS=(--workers 1,2 --concurrency 1,8 --duration 0.5 --rounds 1 --engine onnxruntime --client-processes 1
              --big-items 64 --big-concurrency 2)
else
  SERVE_ARGS=(--workers 1,2,4,8 --concurrency 1,64,256,1024 --duration 3 --rounds 2 --engine triton
              --client-processes 8 --big-items 1024 --big-concurrency 16)
fi
PYTHONPATH="${SITE}${SITE:+:}${PYTHONPATH:-}" bounded "$SERVE_S" 0 "$PY" -m curvedit.cli bench serve \
  "${SERVE_ARGS[@]}" --json-file "$OUT/serve.json" > >(tee "$OUT/serve.txt")
status serve $?
[ -f "$OUT/serve.json" ] && "$PY" - "$OUT/serve.json" <<'EOF' | tee -a "$SUMMARY"
import json
import sys

result = json.load(open(sys.argv[1]))
print(f"serve: {len(result['cells'])} cells")
for line in result["checks"]:
    print(f"  {line}")
EOF

step "results: this run as the card's in \$OUT/results and \$OUT/RESULTS.md"
# benchmarks/results with this run in place of the card's last: copy $OUT/results/*.json to benchmarks/results
# and run `curvedit bench results render` there (docs/benchmarks.md).
MACHINE=$("$PY" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')")
[ "$DRY" = 1 ] && MACHINE="dry run, $(nproc) CPU cores"
mkdir -p "$OUT/results" && cp benchmarks/results/*.json "$OUT/results/" 2>/dev/null
record() {  # record BENCHMARK FILE: the run's FILE as $MACHINE's run of BENCHMARK
  [ -f "$OUT/$2" ] || return 0
  PYTHONPATH="${SITE}${SITE:+:}${PYTHONPATH:-}" "$PY" -m curvedit.cli bench results record "$1" "$OUT/$2" \
    --machine "${MACHINE:-unknown GPU}" --run-command "bash benchmarks/gpu_check.sh" --results-dir "$OUT/results"
}
record engine bench_gpu.json && record scale serve.json \
  && PYTHONPATH="${SITE}${SITE:+:}${PYTHONPATH:-}" "$PY" -m curvedit.cli bench results render \
    --results-dir "$OUT/results" --out "$OUT/RESULTS.md"
status results $?

step "done"
note "total: $(elapsed) s of a ${BUDGET_S} s budget"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null
exit "$FAILED"
