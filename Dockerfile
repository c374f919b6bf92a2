# evsync in a container. Build: docker build -t evsync .
#
# Run it beside PowerDNS with the LMDB directory mounted and the PID namespace shared:
# LMDB keeps reader slots keyed by PID, so two processes in separate PID namespaces can
# clash on the same LMDB (Lightning Stream issue #75, PowerDNS #15091).
#
#   docker run -d --name evsync --pid=container:pdns \
#     -v /var/lib/powerdns:/var/lib/powerdns \
#     -v /etc/evsync:/etc/evsync:ro --env-file /etc/default/evsync evsync
#
# The uid below must be able to write the LMDB: build with --build-arg EVSYNC_UID=<pdns uid>.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY evsync ./evsync
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ARG EVSYNC_UID=953
ARG EVSYNC_GID=953
LABEL org.opencontainers.image.title="evsync" \
      org.opencontainers.image.description="Event-driven LMDB <-> S3 sync, compatible with PowerDNS Lightning Stream" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /install /usr/local
RUN groupadd --system --gid "${EVSYNC_GID}" evsync \
 && useradd --system --uid "${EVSYNC_UID}" --gid evsync --no-create-home --shell /usr/sbin/nologin evsync
USER evsync
# /metrics, /healthz, /status: inside a container set http.address to 0.0.0.0:8500
# (the example configs bind 127.0.0.1, which is unreachable from outside the container).
EXPOSE 8500
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8500/healthz', timeout=4).status == 200 else 1)"]
# SIGTERM finishes the current upload or aborts the merge txn, then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["evsync"]
CMD ["-c", "/etc/evsync/evsync.yaml", "sync"]
