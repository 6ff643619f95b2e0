# syntax=docker/dockerfile:1
#
# mcdrop service image.
#
#   docker build -t mcdrop:0.1.0 .                                   # CPU (default)
#   docker build --build-arg VARIANT=cuda -t mcdrop:0.1.0-cuda .     # CUDA torch wheels
#
# The builder stage installs torch from PyTorch's wheel index first (an unpinned torch from PyPI pulls a
# multi-GB CUDA build), then the project and its runtime dependencies only (no dev/train extras) into a
# virtual environment. The runtime stage copies that environment and the shipped checkpoints, nothing else.
# The CUDA variant uses the same slim base: torch's CUDA wheels bring their own CUDA libraries, and the host
# (or the Kubernetes node) supplies the NVIDIA driver through the NVIDIA container toolkit/device plugin.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder

ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX_URL=https://download.pytorch.org/whl/cu130

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN case "${VARIANT}" in \
        cpu) torch_index="${TORCH_CPU_INDEX_URL}" ;; \
        cuda) torch_index="${TORCH_CUDA_INDEX_URL}" ;; \
        *) echo "VARIANT must be cpu or cuda, got '${VARIANT}'" >&2; exit 1 ;; \
    esac \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --index-url "${torch_index}" "torch==${TORCH_VERSION}"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY mcdrop ./mcdrop
# torch is already satisfied, so this adds only the package's own runtime dependencies.
RUN /opt/venv/bin/pip install --no-cache-dir /src \
    && /opt/venv/bin/python -c "import mcdrop, torch; print('torch', torch.__version__)"


FROM ${PYTHON_IMAGE} AS runtime

ARG VARIANT=cpu
LABEL org.opencontainers.image.title="mcdrop" \
      org.opencontainers.image.description="Monte Carlo dropout uncertainty service for text classifiers" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.mcdrop.variant="${VARIANT}"

# NVIDIA_DRIVER_CAPABILITIES tells the NVIDIA container runtime which driver libraries to mount (CUDA variant);
# it is inert on a CPU-only host.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
COPY models /app/models

# Numeric user so Kubernetes' runAsNonRoot can verify it; the image needs no writable path but /tmp.
USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["mcdrop"]
CMD ["serve", "--model-dir", "/app/models", "--host", "0.0.0.0", "--port", "8000"]
