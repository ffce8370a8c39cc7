# syntax=docker/dockerfile:1
# The opamp-operator image. Two stages: the builder turns the project and every
# dependency into wheels; the final stage installs them with pip from those wheels only
# (no compilers, no network) and compiles the bytecode, so the container runs as a
# non-root user on a read-only root filesystem (it writes only to /tmp: mount an emptyDir
# there). What can be checked without Docker is checked by tests/unit/test_dockerfile.py;
# docs/gitops.md says what only a machine with Docker can check.
#
#   docker build -t opamp-operator:dev .
#
# Pin the base by digest in release builds: --build-arg PYTHON_IMAGE=python:3.11-slim@sha256:…
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The project's wheel, then the wheels of everything it depends on (all published as
# binary wheels for CPython 3.11 on Linux; --only-binary makes a missing one an error
# rather than a compile the final stage could not repeat).
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip wheel --only-binary=:all: --wheel-dir /wheels /wheels/opamp_operator-*.whl

FROM ${PYTHON_IMAGE}
# HOME=/tmp: anything that wants a home directory writes where the filesystem is writable.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/tmp
# Install from the builder's wheels only; compile all bytecode now (nothing can be written
# at run time); fail the build unless protobuf runs on its upb backend (compiled; the
# pure-Python fallback is far slower at parsing agents' messages) and the entry point
# starts.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels opamp-operator \
 && python -m compileall -q -j 0 -x '/(test|tests|idle_test)/' /usr/local/lib/python3.11 \
 && python -c "from google.protobuf.internal import api_implementation; t = api_implementation.Type(); print('protobuf backend:', t); raise SystemExit(0 if t == 'upb' else 1)" \
 && opamp-operator --help > /dev/null
USER 65532:65532
WORKDIR /tmp
# 4320: OpAMP (WebSocket and HTTP), read API, /healthz, /readyz, /metrics. 9443: webhook.
EXPOSE 4320 9443
ENTRYPOINT ["opamp-operator"]
CMD ["run"]
