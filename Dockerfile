# evsync in a container.
#
#   docker build -t evsync .
#   docker build -t evsync --build-arg EVSYNC_UID=$(id -u pdns) --build-arg EVSYNC_GID=$(id -g pdns) .
#
# Run it beside PowerDNS (see packaging/README.md):
#
#   docker run -d --name evsync --pid=container:pdns --stop-timeout 60 \
#     -v /var/lib/powerdns:/var/lib/powerdns \
#     -v /etc/evsync:/etc/evsync:ro --env-file /etc/default/evsync evsync
#
# - The uid must be able to write the LMDB. PowerDNS creates its LMDB files mode 0600 as
#   its own user, so evsync must run as that same uid: the default 953 is the pdns uid
#   of the official powerdns/pdns-auth images; for a Debian pdns, build with the
#   --build-arg line above or run with --user "$(id -u pdns):$(id -g pdns)".
# - Share the PID namespace with PowerDNS (--pid=container:pdns; Kubernetes:
#   shareProcessNamespace: true, both containers in one pod). LMDB keys its reader
#   slots by PID: in separate PID namespaces two processes can have the same PID, and
#   one's stale-reader check can clear the other's live slot (Lightning Stream #75,
#   PowerDNS #15091).
# - Keep a glibc base (python:3.11-slim is Debian): LMDB's locks live in the shared
#   -lock file, and glibc and musl (Alpine) lay them out differently (Lightning Stream
#   #79), so evsync and PowerDNS must use the same C library.
# - Mount the LMDB directory as a volume (the directory, not the file: LMDB keeps its
#   -lock file beside the data file and evsync watches the directory with inotify).
# - --stop-timeout 60: on SIGTERM evsync finishes the current upload or aborts the merge
#   txn and exits 0; Docker's default 10 s may cut a large upload short.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the wheel is built from (pyproject's readme is README.md); .dockerignore
# keeps the rest of the checkout out of the context.
COPY pyproject.toml README.md ./
COPY evsync ./evsync
# No dev extras. Every dependency ships a manylinux wheel for CPython 3.11 (checked on
# x86_64), so no compiler is needed; --prefix keeps the result in one directory for the next stage.
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ARG EVSYNC_UID=953
ARG EVSYNC_GID=953
LABEL org.opencontainers.image.title="evsync" \
      org.opencontainers.image.description="Event-driven LMDB <-> S3 sync, compatible with PowerDNS Lightning Stream" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim"
# Same prefix as the build stage's interpreter, so the console script's shebang
# (/usr/local/bin/python) and site-packages line up.
COPY --from=build /install /usr/local
# A fixed uid/gid (see the top of this file) rather than whatever useradd picks.
RUN groupadd --system --gid "${EVSYNC_GID}" evsync \
 && useradd --system --uid "${EVSYNC_UID}" --gid evsync --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin evsync
# Bytecode was compiled at install time; the non-root user cannot write site-packages.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# The example configs read http.address from ${EVSYNC_HTTP:-127.0.0.1:8500}: inside a
# container 127.0.0.1 is the container itself, so default it to all interfaces here.
ENV EVSYNC_HTTP=0.0.0.0:8500
USER evsync:evsync
# /metrics, /healthz and /status. To scrape them, http.address must be 0.0.0.0:8500
# inside the container (the ENV above does it for configs that use ${EVSYNC_HTTP}; a
# config of your own must set it) and the port must be published or on a private
# network. There is no authentication: keep it off the internet.
EXPOSE 8500
# Needs the HTTP server: http.address set and on port 8500 (see above). Without it the
# container is reported unhealthy. /healthz answers 503 only on errors (warnings stay
# 200); urlopen raises on 503 or no answer, which exits 1. The empty ProxyHandler keeps
# an HTTP_PROXY from the env file (meant for S3) away from this loopback request.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:8500/healthz', timeout=4)"]
# The default, stated: SIGTERM finishes the current upload or aborts the merge txn, then
# evsync exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["evsync"]
CMD ["-c", "/etc/evsync/evsync.yaml", "sync"]
