#!/bin/sh
# The image's install, step for step: the Dockerfile's install stages run this script, and
# .ci/check_base_install.py runs the same script into a fresh venv on the CI machine, then uses what it installed.
#
#   deploy/image/install.sh VENV WHEEL [cpu|cuda]
#
# A venv at VENV; the curvedit wheel WHEEL into it without extras; every version from requirements/lock.txt
# (LOCK overrides the path). cpu: the lock as it is (torch's CPU build: pip finds it on TORCH_INDEX, PyTorch's CPU
# wheel index, in the image, or in the machine's own wheel folder here). cuda: the lock but torch's own version
# from PyPI, which is the CUDA build (its nvidia-* runtime wheels and the triton it needs come pinned by torch
# itself), for the GPU engine; onnxruntime-gpu is in the lock already.
set -eu
venv=$1
wheel=$2
variant=${3:-cpu}
lock=${LOCK:-$(dirname "$0")/../../requirements/lock.txt}
[ -f "$lock" ] || { echo "install.sh: no lock at $lock; set LOCK" >&2; exit 2; }
case $variant in
  cpu|cuda) ;;
  *) echo "install.sh: variant must be cpu or cuda, not $variant" >&2; exit 2 ;;
esac
python3 -m venv "$venv"
pip="$venv/bin/python -m pip"
case $variant in
  cpu)
    constraints=$lock
    index=${TORCH_INDEX:+--extra-index-url $TORCH_INDEX} ;;
  cuda)
    constraints=$venv/lock-cuda.txt
    torch=$(sed -n 's/^torch==\([0-9.]*\)+cpu$/\1/p' "$lock")
    [ -n "$torch" ] || { echo "install.sh: the lock pins no torch==X+cpu" >&2; exit 2; }
    grep -v -E '^(torch|triton)==' "$lock" > "$constraints"
    echo "torch==$torch" >> "$constraints"
    index="" ;;
esac
# shellcheck disable=SC2086  # $pip and $index are word lists on purpose
$pip install --quiet --no-cache-dir -c "$constraints" --upgrade pip
# shellcheck disable=SC2086
$pip install --quiet --no-cache-dir -c "$constraints" $index "$wheel"
"$venv/bin/curvedit" --version >/dev/null
echo "install.sh: curvedit ($variant) in $venv"
