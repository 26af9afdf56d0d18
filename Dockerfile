# syntax=docker/dockerfile:1
# Lighthouse serve for a B200 host (sm_100 needs CUDA 12.8 or newer; an H200, sm_90, runs the same image).
#   docker build -t lighthouse-serve .
#   docker run --gpus all -p 8000:8000 -v /data/ckpt:/checkpoints:ro \
#       -e LIGHTHOUSE_CHECKPOINT=/checkpoints/my-model -e LIGHTHOUSE_API_KEY=... lighthouse-serve
# Settings are environment variables (LIGHTHOUSE_*), or flags appended to `docker run ... lighthouse-serve`.
ARG CUDA_VERSION=12.8.1
ARG UBUNTU_VERSION=24.04

# ---------------------------------------------------------------------------------------------------------
# build: a virtualenv with torch (CUDA 12.8 wheels), the project with its GPU extras, and flash-attn when it
# compiles (else the server's inner attention is torch SDPA with the cuDNN backend).
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-ubuntu${UBUNTU_VERSION} AS build

ARG TORCH_VERSION=2.9.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG INSTALL_FLASH_ATTN=1
ARG FLASH_ATTN_VERSION=2.8.3
# B200 (10.0) and H200 (9.0); compiling flash-attn takes long, MAX_JOBS bounds its memory use.
ARG FLASH_ATTN_CUDA_ARCHS="90;100"
ARG MAX_JOBS=8

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev python3-venv git \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && pip install "pip==25.1.1" "setuptools==80.9.0" "wheel==0.45.1" "packaging==25.0" "ninja==1.11.1.4" \
        "psutil==7.0.0" \
    && pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}" \
    && echo "torch==${TORCH_VERSION}" > /opt/constraints.txt

# flash-attn is optional: a failed build is reported and the image falls back to torch SDPA.
RUN if [ "${INSTALL_FLASH_ATTN}" = "1" ]; then \
        MAX_JOBS="${MAX_JOBS}" FLASH_ATTN_CUDA_ARCHS="${FLASH_ATTN_CUDA_ARCHS}" \
        pip install --no-build-isolation -c /opt/constraints.txt "flash-attn==${FLASH_ATTN_VERSION}" \
        || echo "flash-attn ${FLASH_ATTN_VERSION} could not be installed: torch SDPA will be used"; \
    fi

WORKDIR /src
COPY pyproject.toml README.md ./
COPY lighthouse ./lighthouse
COPY server ./server
RUN pip install -c /opt/constraints.txt ".[gpu]" \
    && python -c "import lighthouse, lighthouse_server, torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# ---------------------------------------------------------------------------------------------------------
# runtime: the CUDA runtime, the virtualenv, a non-root user (lighthouse, uid 10001). gcc stays: Triton compiles its launcher at
# first use.
FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-ubuntu${UBUNTU_VERSION} AS runtime

ENV DEBIAN_FRONTEND=noninteractive

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-dev gcc libc6-dev tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 lighthouse \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin lighthouse \
    && mkdir -p /checkpoints /home/lighthouse/.cache \
    && chown -R lighthouse:lighthouse /checkpoints /home/lighthouse

COPY --from=build /opt/venv /opt/venv

# Every server setting is a LIGHTHOUSE_* variable (see docs/serving.md); these are the container's defaults.
# LIGHTHOUSE_CHECKPOINT unset = the bundled default checkpoint; point it at a directory under /checkpoints.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/home/lighthouse \
    HF_HOME=/home/lighthouse/.cache/huggingface \
    TRITON_CACHE_DIR=/home/lighthouse/.cache/triton \
    LIGHTHOUSE_HOST=0.0.0.0 \
    LIGHTHOUSE_PORT=8000 \
    LIGHTHOUSE_DRAIN_TIMEOUT_S=30

VOLUME ["/checkpoints"]
EXPOSE 8000

USER 10001:10001
WORKDIR /home/lighthouse

# Liveness only (/ready says whether it admits requests). Loading a large checkpoint takes a while.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('LIGHTHOUSE_PORT', '8000'), timeout=4)"]

# tini (PID 1) forwards SIGTERM to the server, which stops admitting requests, lets in-flight ones finish for
# up to LIGHTHOUSE_DRAIN_TIMEOUT_S, and exits 0. Docker kills after 10 s unless told otherwise: run with
# `--stop-timeout 40` (or `docker stop -t 40`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "lighthouse", "serve"]
CMD []
