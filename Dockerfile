# The curvedit server on the CPU (every shipped model; gRPC on 50051, OIP HTTP on 8000, /metrics on 8002):
#   docker build -t curvedit .
#   docker run --rm -p 50051:50051 -p 8000:8000 -p 8002:8002 curvedit
# Arguments after the image name replace the defaults below, e.g. `docker run ... curvedit --max-batch-size 32`
# (keep --host/--metrics-host 0.0.0.0 so the published ports reach the server).
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1

# PyPI's Linux torch wheels pull in the CUDA libraries (gigabytes); the CPU build comes from PyTorch's own index.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX" "torch>=2.4,<2.14"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY curvedit curvedit
COPY models models
COPY kernels kernels
COPY export export
COPY service service
COPY proto proto
RUN pip install . && rm -rf /src && useradd --create-home --uid 10001 curvedit

USER curvedit
WORKDIR /home/curvedit
EXPOSE 50051 8000 8002
# SERVING only after warm-up; NOT_SERVING while draining (SIGTERM, which `docker stop` sends, drains first).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s \
    CMD ["curvedit", "client", "health", "--server", "127.0.0.1:50051", "--timeout", "4"]
ENTRYPOINT ["curvedit", "serve"]
CMD ["--host", "0.0.0.0", "--metrics-host", "0.0.0.0"]
