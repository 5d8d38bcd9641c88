# syntax=docker/dockerfile:1.7
# oss-serve images, one Dockerfile with two final targets (both non-root; the replica has only
# the C compiler and Python headers that Triton's launcher needs, the router no build tools):
#   docker build --target router  -t oss-serve-router  .   slim Python: router (and its tools), autoscaler
#   docker build --target replica -t oss-serve-replica .   CUDA runtime: model replicas, Ray
# The Helm chart (helm/oss-serve) runs them; `oss-serve` is the entrypoint of both.

# Base images are pinned by tag here (not ARGs) so that scanners see the versions.

# --- wheel: the oss-serve wheel (setup.py compiles the protos while building) -------------
FROM python:3.11-slim-bookworm AS wheel
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY oss_serve/ oss_serve/
COPY common/ common/
COPY harmony/ harmony/
COPY streams/ streams/
COPY workers/ workers/
COPY kernels/ kernels/
COPY cluster/ cluster/
COPY router/ router/
COPY tools/ tools/
COPY protos/ protos/
COPY benchmarks/ benchmarks/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- vocab: o200k_base for tiktoken / openai-harmony, so pods never download it ------------
FROM python:3.11-slim-bookworm AS vocab
# checkov:skip=CKV_DOCKER_4: ADD fetches one remote file and verifies its sha256 (COPY cannot)
ADD --checksum=sha256:446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d \
    https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken /vocab/o200k_base.tiktoken

# --- router-venv: the router's environment (TORCH_SPEC / PIP_EXTRA_INDEX_URL can pick a CPU
# build of torch, which the router never imports but the distribution depends on) ----------
FROM python:3.11-slim-bookworm AS router-venv
ARG TORCH_SPEC=torch
ARG PIP_EXTRA_INDEX_URL=""
RUN python -m venv /opt/venv
COPY --from=wheel /wheels /wheels
RUN /opt/venv/bin/pip install --no-cache-dir "${TORCH_SPEC}" \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/*.whl

# --- router: slim Python, the router and the autoscaler -----------------------------------
# bubblewrap: the python tool runs model-written code in its sandbox (user namespaces, so
# the pod's seccomp/AppArmor policy must allow unshare; the router says why at start-up if not)
FROM python:3.11-slim-bookworm AS router
RUN apt-get update \
    && apt-get install --yes --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/* \
    && python -m pip uninstall --yes pip setuptools wheel \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin oss-serve
COPY --from=router-venv /opt/venv /opt/venv
COPY --from=vocab /vocab /opt/oss-serve/vocab
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    OSS_SERVE_VOCAB_DIR=/opt/oss-serve/vocab \
    OSS_SERVE_HOST=0.0.0.0
USER 10001:10001
EXPOSE 8000 50051
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/health' % os.environ.get('OSS_SERVE_HTTP_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["oss-serve"]
CMD ["router"]

# --- replica-venv: CUDA torch + oss-serve (with Ray) on the CUDA runtime's Python ----------
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS replica-venv
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
COPY --from=wheel /wheels /wheels
RUN /opt/venv/bin/pip install --no-cache-dir torch \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/*.whl

# --- replica: CUDA runtime, Python, the venv; KubeRay runs `ray start` in it as well -------
# Triton builds a small C launcher for each kernel at its first call (then caches it under
# $HOME/.triton): that needs a C compiler (gcc + libc6-dev) and the Python headers
# (python3-dev) at run time, nothing else of a toolchain. Without them, set
# OSS_SERVE_KERNEL_BACKEND=torch to run the torch kernels (slower, no compiling).
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS replica
RUN apt-get update \
    && apt-get install --yes --no-install-recommends python3 python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin oss-serve
COPY --from=replica-venv /opt/venv /opt/venv
COPY --from=vocab /vocab /opt/oss-serve/vocab
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    OSS_SERVE_VOCAB_DIR=/opt/oss-serve/vocab \
    OSS_SERVE_DEVICE=cuda
USER 10001:10001
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-m", "oss_serve.cluster.replica.probe", "--max-age-s", "60"]
ENTRYPOINT ["oss-serve"]
CMD ["replica"]
