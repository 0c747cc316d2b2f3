# epochgate container image.
#
#   docker build -t epochgate .
#   docker run --rm -p 8080:8080 --stop-timeout 20 \
#     -v "$PWD/epochgate.yaml:/etc/epochgate/epochgate.yaml:ro" epochgate
#
# The configuration is read from /etc/epochgate/epochgate.yaml (mount it; the image has
# none). In the container, proxy.listen must be 0.0.0.0:8080 (or [::]:8080) to be reachable
# through a published port. The health check runs inside the container and connects to
# 127.0.0.1:9090, so admin.listen may stay 127.0.0.1:9090 (the default); set 0.0.0.0:9090
# only if /metrics must be scraped from outside the container.

FROM rust:1-bookworm AS builder
# cmake is used by the build scripts of aws-lc-sys and libz-ng-sys (make, for jemalloc, is in
# the image already). Debian package versions are not pinned: bookworm point releases remove
# superseded versions, which breaks pins.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
# ca-certificates: for an https auth_origin.url or TLS upstream peers. Unpinned, as above.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 epochgate \
    && useradd --system --no-log-init --uid 10001 --gid epochgate \
        --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin epochgate \
    && mkdir -p /etc/epochgate
COPY --from=builder /src/target/release/epochgate /usr/local/bin/epochgate
# Non-root. Pingora's pid_file and upgrade_sock default to /tmp, which this user can write.
USER 10001:10001
EXPOSE 8080 9090
# /healthz of the admin listener, without curl: bash (part of the base image) opens the TCP
# connection itself. Adjust the port if admin.listen uses another one.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q '^HTTP/1\\.[01] 200' <&3"]
# SIGTERM (docker stop) starts Pingora's graceful shutdown: server.grace_period_seconds (10)
# plus graceful_shutdown_timeout_seconds (5) can exceed docker's default 10 s stop timeout,
# hence --stop-timeout 20 above.
ENTRYPOINT ["epochgate"]
CMD ["-c", "/etc/epochgate/epochgate.yaml"]
