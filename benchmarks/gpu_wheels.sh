#!/usr/bin/env bash
# The wheels a lent GPU machine lacks for the serve section of gpu_check.sh, downloaded here into .whl (ignored
# by git; name it in the run's carry list): the service's gRPC and Prometheus packages at the lock's versions,
# for the GPU image's CPython 3.12 on x86_64. gpu_check.sh installs them with --target when .whl exists.
#
#   bash benchmarks/gpu_wheels.sh && git check-ignore -q .whl
set -euo pipefail
cd "$(dirname "$0")/.."
git check-ignore -q .whl || { echo 'gpu_wheels.sh: .whl is not ignored by .gitignore' >&2; exit 1; }
mkdir -p .whl
for name in grpcio grpcio-health-checking grpcio-reflection protobuf prometheus_client; do
  pin=$(grep -i "^${name}==" requirements/lock.txt | head -1)
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$pin"
done
ls -la .whl
