# syntax=docker/dockerfile:1
#
# deskgate container image: build with cargo, run as a non-root user on a
# small runtime image (distroless: libc, CA certificates, no shell).
#
#   docker build -t deskgate .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/deskgate.toml:/etc/deskgate/deskgate.toml:ro" deskgate
#
# The config is read from /etc/deskgate/deskgate.toml ($DESKGATE_CONFIG);
# tenants from /etc/deskgate/tenants.d/. See docs/operations.md.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the dependency builds between image builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin deskgate \
 && cp target/release/deskgate /usr/local/bin/deskgate

# The baked-in config and an example tenant: readable by all, writable by root
# only (the gateway never writes its config).
RUN mkdir -p /rootfs/etc/deskgate/tenants.d \
 && cp docker/deskgate.toml /rootfs/etc/deskgate/deskgate.toml \
 && cp docker/tenants.d/*.toml /rootfs/etc/deskgate/tenants.d/ \
 && chmod -R a+rX,go-w /rootfs/etc/deskgate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/deskgate /usr/local/bin/deskgate
COPY --from=build /rootfs/etc/deskgate /etc/deskgate
ENV DESKGATE_CONFIG=/etc/deskgate/deskgate.toml
# Logs are JSON on stderr (not a TTY); level by RUST_LOG.
ENV RUST_LOG=info
# distroless' "nonroot" user.
USER 65532:65532
# API, admin (/metrics /healthz /readyz /tenants/{name} /config).
EXPOSE 8080 9090
# SIGTERM drains in-flight calls within shutdown_grace_ms, then exits 0.
STOPSIGNAL SIGTERM
# No HEALTHCHECK: the image has no shell or curl to run one, and Kubernetes
# ignores it anyway. Probe GET /healthz (liveness) and GET /readyz (readiness)
# on port 9090 instead: docs/operations.md has the probe configuration.
ENTRYPOINT ["/usr/local/bin/deskgate"]
CMD ["run"]
