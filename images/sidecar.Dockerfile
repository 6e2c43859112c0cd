# syntax=docker/dockerfile:1
# nautilus-sidecar: runs beside the enclave on a Nitro node, starts it with nitro-cli, relays
# vsock <-> TCP. Build from the repository root:
#   docker build -f images/sidecar.Dockerfile -t ghcr.io/nautilus-operator/nautilus-sidecar:0.1.0 .
# Not distroless: the sidecar calls nitro-cli, which AWS ships as an Amazon Linux package (with
# its configuration and log directories). The sidecar itself is a static binary.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=public.ecr.aws/amazonlinux/amazonlinux:2023

FROM ${RUST_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p nautilus-sidecar --target x86_64-unknown-linux-musl \
 && install -D target/x86_64-unknown-linux-musl/release/nautilus-sidecar /out/nautilus-sidecar

FROM ${RUNTIME_IMAGE}
RUN dnf install -y aws-nitro-enclaves-cli \
 && dnf clean all && rm -rf /var/cache/dnf \
 && mkdir -p /var/log/nitro_enclaves /run/nitro_enclaves \
 && chown 65532:65532 /var/log/nitro_enclaves /run/nitro_enclaves
COPY --from=build /out/nautilus-sidecar /usr/local/bin/nautilus-sidecar
# Non-root. The pod gives it /dev/nitro_enclaves through the Nitro Enclaves device plugin and the
# hugepages the enclave needs; nothing else is privileged.
USER 65532:65532
EXPOSE 8080 6443
ENTRYPOINT ["/usr/local/bin/nautilus-sidecar"]
