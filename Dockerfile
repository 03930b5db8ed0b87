# syntax=docker/dockerfile:1
#
# logferry images, one multi-stage build:
#
#   docker build --target backend    -t logferry-backend .
#   docker build --target fluent-bit -t logferry-fluent-bit .
#
# `backend` runs `logferry serve` (embedded mode) as a non-root user with its data
# directory on the /data volume. `fluent-bit` is the official Fluent Bit image of the
# version the plugin is tested against, with libout_logferry.so and a config that loads
# it. Base images are pinned by version tag; pin them by digest too
# (`image:tag@sha256:...`) where your registry policy asks for it.
#
# Static checks (no Docker engine needed): `python deploy/check.py`.

# ---------------------------------------------------------------------------------------
# builder: the backend binary and the plugin, with cargo's release profile
# ---------------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS builder

# bindgen (crates/fluent-bit-sys) loads libclang; protoc comes vendored with the build;
# cmake builds the bundled librdkafka (Kafka mode), whose CMake build includes curl.h,
# against the system OpenSSL (libssl-dev) for TLS to the brokers.
# Build-only packages from the pinned Debian release, so not pinned individually.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        clang libclang-dev cmake libcurl4-openssl-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .

# The cache mounts keep the registry and target directory between builds; the results
# are copied out of the cached target directory into /out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p logferry-backend -p plugin-out-grpc \
    && mkdir -p /out \
    && cp target/release/logferry target/release/libout_logferry.so /out/

# ---------------------------------------------------------------------------------------
# backend: `logferry serve` on /data
# ---------------------------------------------------------------------------------------
# Debian 12 (bookworm) like the builder, so the binary finds the glibc it was linked
# with. Bump the point release (12.x) to pick up security fixes.
FROM debian:12.12-slim AS backend

# libssl3: librdkafka links the system OpenSSL (TLS to Kafka brokers); the slim image
# does not have it. From the pinned Debian release, so not pinned individually.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libssl3 \
    && rm -rf /var/lib/apt/lists/*

ARG LOGFERRY_UID=10001
RUN groupadd --system --gid "${LOGFERRY_UID}" logferry \
    && useradd --system --uid "${LOGFERRY_UID}" --gid logferry \
        --home-dir /data --no-create-home --shell /usr/sbin/nologin logferry \
    && mkdir -p /data \
    && chown logferry:logferry /data \
    && chmod 0750 /data

COPY --from=builder /out/logferry /usr/local/bin/logferry

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
# gRPC ingest; Prometheus /metrics with /healthz and /readyz.
EXPOSE 7777 9464

ENV LOGFERRY_LOG_FORMAT=json

# Checks that the gRPC port accepts TCP connections, with bash's /dev/tcp (bash is part
# of every Debian image, so nothing extra is installed); orchestrators that speak HTTP
# should probe /readyz on 9464 instead. Change the port here if you change --listen.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/7777"]

ENTRYPOINT ["logferry"]
CMD ["serve", "--data-dir", "/data", "--listen", "0.0.0.0:7777", "--metrics-listen", "0.0.0.0:9464"]

# ---------------------------------------------------------------------------------------
# fluent-bit: the official image plus the plugin
# ---------------------------------------------------------------------------------------
# The official image is distroless (no shell, no package manager): only COPY, ENV and
# metadata instructions work here. Its libc is at least as new as the builder's
# (bookworm), which is what the plugin needs.
FROM fluent/fluent-bit:5.1.1 AS fluent-bit

COPY --from=builder /out/libout_logferry.so /fluent-bit/plugins/libout_logferry.so
COPY deploy/docker/plugins.conf /fluent-bit/etc/logferry-plugins.conf
COPY deploy/docker/fluent-bit.conf /fluent-bit/etc/logferry.conf

# The plugin's spool (buffer.path) and Fluent Bit's own storage live here: keep it on
# a volume, it carries the agent's identity and everything not yet acknowledged.
VOLUME ["/var/lib/logferry"]

ENTRYPOINT ["/fluent-bit/bin/fluent-bit"]
CMD ["-c", "/fluent-bit/etc/logferry.conf"]
