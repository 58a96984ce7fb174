# syntax=docker/dockerfile:1
#
# deskgate container image: build with cargo, run as a non-root user on a
# small runtime image (distroless: libc, CA certificates, no shell).
#
#   docker build -t deskgate .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9090:9090 \
#     -v "$PWD/deskgate.toml:/etc/deskgate/deskgate.toml:ro" \
#     -v "$PWD/tenants.d:/etc/deskgate/tenants.d:ro" deskgate
#   docker run --rm -p 8080:8080 -p 9090:9090 deskgate demo   # try it: no config needed
#
# The config is read from /etc/deskgate/deskgate.toml ($DESKGATE_CONFIG);
# tenants from /etc/deskgate/tenants.d/, which is EMPTY in the image: a
# tenant exists only where you configure it (in your deskgate.toml or in a
# mounted tenants.d). compose.yaml runs it with Redis and a sample helpdesk.
#
# Base images are pinned by digest, so a rebuild starts from the same bytes.
# These digests were copied from other projects' published pins of the same
# tags, not resolved from the registries by us (the machines this is
# developed on have no image registry access): run scripts/pin-images
# (crane, docker buildx or skopeo) to resolve the tags afresh before relying
# on them. The Rust builder is Debian bookworm, as is the runtime: the
# binary links the same glibc it runs on.

FROM rust:1.95-slim-bookworm@sha256:d7482085ff5b415f84dba5647ae71606650bdef00db7aeb69f4b3d170c3e4082 AS build
WORKDIR /src
# The build context is filtered by .dockerignore (no target/, .git/, tests,
# fuzzing, docs): what is left is what the release build reads.
COPY . .
# Cache mounts keep the registry and the dependency builds between image builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin deskgate \
 && cp target/release/deskgate /usr/local/bin/deskgate

# The baked-in config and an empty tenants.d: readable by all, writable by
# root only (the gateway never writes its config).
RUN mkdir -p /rootfs/etc/deskgate/tenants.d \
 && cp docker/deskgate.toml /rootfs/etc/deskgate/deskgate.toml \
 && chmod -R a+rX,go-w /rootfs/etc/deskgate

FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
COPY --from=build /usr/local/bin/deskgate /usr/local/bin/deskgate
COPY --from=build /rootfs/etc/deskgate /etc/deskgate
ENV DESKGATE_CONFIG=/etc/deskgate/deskgate.toml
# `deskgate demo` in a container listens on all interfaces, so `-p` reaches it.
ENV DESKGATE_DEMO_LISTEN=0.0.0.0:8080 DESKGATE_DEMO_ADMIN=0.0.0.0:9090
# Logs are JSON on stderr (not a TTY); level by RUST_LOG.
ENV RUST_LOG=info
# distroless' "nonroot" user.
USER 65532:65532
# API, admin (/metrics /healthz /readyz /tenants /config).
EXPOSE 8080 9090
# SIGTERM drains in-flight calls within shutdown_grace_ms, then exits 0.
STOPSIGNAL SIGTERM
# The binary probes itself (no shell or curl in the image): it reads the
# admin listener from $DESKGATE_CONFIG, asks /readyz, exits 0 when ready.
# Kubernetes ignores HEALTHCHECK: deploy/kubernetes/ has the probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/local/bin/deskgate", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/deskgate"]
CMD ["run"]
