# flint image: `flint serve`, front-end workers, and Ray nodes (head and GPU workers) of cluster/.
#
#   docker build -t flint:0.1.0 .                                            # CPU (default)
#   docker build --build-arg FLAVOR=cuda -t flint:0.1.0-cuda .               # CUDA 12.8 torch
#   docker run --rm -p 50051:50051 -p 8000:8000 flint:0.1.0                  # the demo model, gRPC + HTTP
#
# FLAVOR picks the base image and torch's wheel index; TORCH_VERSION pins torch (the version CI uses).
ARG FLAVOR=cpu
ARG CPU_BASE=python:3.11-slim-bookworm
ARG CUDA_BASE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

FROM ${CPU_BASE} AS base-cpu
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget ca-certificates \
 && rm -rf /var/lib/apt/lists/*

FROM ${CUDA_BASE} AS base-cuda
ENV TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# Ubuntu 24.04's Python is 3.12 (flint needs >= 3.11); a venv keeps pip off the system packages.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv wget ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s /usr/bin/python3 /usr/local/bin/python

# wget: KubeRay's default probes of Ray pods call the raylet's health endpoint with it.
FROM base-${FLAVOR} AS runtime
ARG TORCH_VERSION=2.13.0
ENV VIRTUAL_ENV=/opt/flint PATH=/opt/flint/bin:$PATH PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    FLINT_CACHE_DIR=/var/cache/flint
RUN python -m venv /opt/flint \
 && pip install --upgrade pip \
 && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY services ./services
RUN pip install . && rm -rf /src
# The same uid as Ray's images, so volumes (models, /dev/shm) work for either.
RUN useradd --uid 1000 --create-home flint && mkdir -p /var/cache/flint && chown flint /var/cache/flint
USER 1000
WORKDIR /home/flint
# gRPC API; HTTP API (OpenAI-compatible), /health and /metrics; engine replica port in cluster/
EXPOSE 50051 8000 50060 50061
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
    CMD wget -q -O /dev/null http://127.0.0.1:8000/health || exit 1
ENTRYPOINT ["flint"]
CMD ["serve", "--host", "0.0.0.0"]
