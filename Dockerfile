# syntax=docker/dockerfile:1
# lethe: one image for every role. The command picks the role (see deploy/docker-compose.yml and the Helm
# chart in deploy/helm/lethe): `lethe api` (the default), `lethe worker -Q purge.s3`, `lethe intake`,
# `lethe reconcile --loop 60`, `lethe migrate`.
#
#   docker build -t lethe:0.1.0 .          # the build context is the repository root
#
# Stage 1 builds lethe's wheel and a wheel of every dependency; stage 2 installs them into a virtualenv
# without a compiler or build tool in sight, and runs as an unprivileged user.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# The stores' client libraries come as extras (pyproject.toml): `--build-arg LETHE_EXTRAS=s3,sql` builds a
# smaller image for an estate that has only those kinds. The default has every store.
ARG LETHE_EXTRAS=all

FROM ${PYTHON_IMAGE} AS build
ARG LETHE_EXTRAS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
# Only what the wheel is built from (.dockerignore keeps everything else out of the context).
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY workers ./workers
# Every dependency ships wheels for CPython 3.11 on amd64 and arm64. Should one ever need compiling, install
# build-essential in this stage only, never in the runtime stage. Pin versions with PIP_CONSTRAINT
# (a constraints file) for reproducible builds.
RUN pip wheel --wheel-dir /wheels ".[${LETHE_EXTRAS}]"


FROM ${PYTHON_IMAGE} AS runtime
ARG LETHE_EXTRAS
# tini is PID 1: it forwards SIGTERM to lethe (Celery's warm shutdown, uvicorn's graceful stop) and reaps
# zombies. (`docker run --init` would do the same, but Kubernetes has no such flag: hence tini in the image.)
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 lethe \
 && useradd --system --uid 10001 --gid lethe --home-dir /home/lethe --create-home --shell /usr/sbin/nologin lethe
ENV VIRTUAL_ENV=/opt/lethe \
    PATH=/opt/lethe/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m venv /opt/lethe \
 && /opt/lethe/bin/pip install --no-index --find-links /wheels "lethe[${LETHE_EXTRAS}]" \
 && /opt/lethe/bin/lethe --help > /dev/null

LABEL org.opencontainers.image.title="lethe" \
      org.opencontainers.image.description="GDPR/CCPA erasure orchestrator: API, intake, reconciler and Celery workers" \
      org.opencontainers.image.licenses="Apache-2.0"

WORKDIR /home/lethe
# Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000

# For the API (the default command). Every other role overrides or disables it: docker-compose.yml gives
# workers a Celery ping and turns it off for intake, reconciler and migrate; Kubernetes ignores HEALTHCHECK.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status != 200)"]

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["lethe", "api", "--host", "0.0.0.0", "--port", "8000"]
