# syntax=docker/dockerfile:1
# Images of the operator (default target) and the mock control plane (--target
# mock-control-plane). Static musl binaries on distroless/static: no shell, no package
# manager, user 65532 (nonroot); the chart runs them with a read-only root filesystem.
# Not built in this repository's CI (no container engine there); see docs/install.md.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
ARG TARGETARCH=amd64
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The Rust target for the platform being built (buildx sets TARGETARCH).
RUN case "${TARGETARCH}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --locked --release --target "$(cat /rust-target)" \
      -p vworkspace-operator -p mock-control-plane \
 && mkdir /out \
 && cp "target/$(cat /rust-target)/release/vworkspace-operator" /out/manager \
 && cp "target/$(cat /rust-target)/release/mock-control-plane" /out/mock-control-plane

FROM gcr.io/distroless/static-debian12:nonroot AS mock-control-plane
COPY --from=build /out/mock-control-plane /mock-control-plane
USER 65532:65532
ENTRYPOINT ["/mock-control-plane"]

FROM gcr.io/distroless/static-debian12:nonroot AS operator
COPY --from=build /out/manager /manager
USER 65532:65532
ENTRYPOINT ["/manager"]
CMD ["run"]
