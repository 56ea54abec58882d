# syntax=docker/dockerfile:1
# `curvedit serve` in a container, as two images from this one file (docs/deploy.md walks through both):
#
#   docker build --target cpu  -t curvedit:cpu  .   # the default target
#   docker build --target cuda -t curvedit:cuda .   # the GPU engine: torch's CUDA build, onnxruntime-gpu, triton
#   docker run --rm -p 50051:50051 -p 8000:8000 -p 8002:8002 curvedit:cpu
#   docker run --rm --gpus all -p 50051:50051 -p 8000:8000 -p 8002:8002 curvedit:cuda
#
# Base image of both: python:3.11-slim-bookworm (Debian 12, CPython 3.11, the lock's platform). The CUDA image
# needs no CUDA base image: torch's CUDA wheel brings the CUDA 12 runtime libraries as nvidia-* wheels, and the
# host's driver comes in through the NVIDIA container toolkit (`--gpus all`, or `nvidia.com/gpu` on Kubernetes).
# Arguments after the image name replace CMD, e.g. `docker run ... curvedit:cpu --host 0.0.0.0 --workers 4`.
#
# Not built on the development machines (no container daemon there): tests/test_container.py lints this file, and
# .ci/check_base_install.py installs with the same script (deploy/image/install.sh) into a fresh venv and runs
# this file's ENTRYPOINT + CMD and HEALTHCHECK from it.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- the wheel (the same one `pip wheel .` builds) ---------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY curvedit curvedit
COPY models models
COPY kernels kernels
COPY export export
COPY service service
COPY proto proto
RUN pip wheel --quiet --no-deps -w /wheels .

# -- the installs: a venv in /opt/curvedit, every version from the lock -------------------------------------------
FROM ${PYTHON_IMAGE} AS install-cpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/lock.txt deploy/image/install.sh /build/
COPY --from=wheel /wheels /wheels
RUN LOCK=/build/lock.txt TORCH_INDEX="$TORCH_INDEX" sh /build/install.sh /opt/curvedit /wheels/curvedit-*.whl cpu

FROM ${PYTHON_IMAGE} AS install-cuda
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements/lock.txt deploy/image/install.sh /build/
COPY --from=wheel /wheels /wheels
RUN LOCK=/build/lock.txt sh /build/install.sh /opt/curvedit /wheels/curvedit-*.whl cuda

# -- what runs: no compiler, no sources, no pip cache; a user that is not root ------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --create-home --uid 10001 --user-group curvedit
ENV PATH=/opt/curvedit/bin:$PATH PYTHONUNBUFFERED=1 XDG_CACHE_HOME=/home/curvedit/.cache
USER 10001:10001
WORKDIR /home/curvedit
# gRPC (native API + OIP), OIP HTTP/REST, Prometheus /metrics: the server's defaults.
EXPOSE 50051 8000 8002
# SIGTERM (`docker stop`, Kubernetes) drains: NOT_SERVING, accepted work finishes, then exit 0.
STOPSIGNAL SIGTERM
# SERVING once the default model is warm; NOT_SERVING while draining. The start period covers a cold warm-up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["curvedit", "client", "health", "--server", "127.0.0.1:50051", "--timeout", "4"]
ENTRYPOINT ["curvedit", "serve"]
CMD ["--host", "0.0.0.0", "--metrics-host", "0.0.0.0"]

FROM runtime AS cuda
COPY --from=install-cuda /opt/curvedit /opt/curvedit

FROM runtime AS cpu
COPY --from=install-cpu /opt/curvedit /opt/curvedit
