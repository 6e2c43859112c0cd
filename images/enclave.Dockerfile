# syntax=docker/dockerfile:1
# The enclave's root file system: nautilus-agent as the entrypoint, plus a pinned k3s server.
# This image is never run as a container; nitro-cli turns it into the enclave image file (EIF)
# and prints PCR0/1/2 for the NautilusMaster spec:
#
#   export SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
#   docker buildx build -f images/enclave.Dockerfile \
#     --build-arg SOURCE_DATE_EPOCH --build-arg K3S_SHA256=<sha256 of the k3s binary> \
#     --output type=docker,name=nautilus-enclave:0.1.0,rewrite-timestamp=true .
#   nitro-cli build-enclave --docker-uri nautilus-enclave:0.1.0 --output-file nautilus.eif
#
# Reproducibility: the same sources, base digests, k3s binary and SOURCE_DATE_EPOCH give the same
# image layers and so the same PCRs. Pin RUST_IMAGE and BASE_IMAGE by digest (tag@sha256:...)
# for a release: tags move, and a moved base changes PCR0. Build twice and compare the PCRs
# nitro-cli prints before publishing them.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG BASE_IMAGE=gcr.io/distroless/static-debian12

FROM ${RUST_IMAGE} AS build
ARG SOURCE_DATE_EPOCH=0
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# Fixed paths inside the build container and one codegen unit keep the binary byte-identical.
ENV CARGO_INCREMENTAL=0 \
    RUSTFLAGS="-C codegen-units=1 --remap-path-prefix=/src=/build --remap-path-prefix=/usr/local/cargo=/cargo"
RUN cargo build --release --locked -p nautilus-agent --target x86_64-unknown-linux-musl \
 && install -D target/x86_64-unknown-linux-musl/release/nautilus-agent /out/nautilus-agent \
 && touch -d "@${SOURCE_DATE_EPOCH}" /out/nautilus-agent

# k3s is a static binary; it must match spec.controlPlane.k3sVersion. No checksum, no build:
# pass the sha256 published beside the release (sha256sum-amd64.txt).
FROM ${RUST_IMAGE} AS k3s
ARG K3S_VERSION=v1.33.4+k3s1
ARG K3S_SHA256
ARG SOURCE_DATE_EPOCH=0
RUN test -n "${K3S_SHA256}" || { echo "pass --build-arg K3S_SHA256=<sha256 of k3s ${K3S_VERSION}>" >&2; exit 1; } \
 && curl -fsSL -o /k3s "https://github.com/k3s-io/k3s/releases/download/$(echo "${K3S_VERSION}" | sed 's/+/%2B/')/k3s" \
 && echo "${K3S_SHA256}  /k3s" | sha256sum -c - \
 && chmod 0755 /k3s && touch -d "@${SOURCE_DATE_EPOCH}" /k3s

FROM ${BASE_IMAGE}
COPY --from=build /out/nautilus-agent /usr/local/bin/nautilus-agent
COPY --from=k3s /k3s /usr/local/bin/k3s
# Root inside the enclave: k3s writes /var/lib/rancher/k3s and binds its ports; the host cannot
# see into the enclave, so this grants the host nothing.
USER 0:0
ENTRYPOINT ["/usr/local/bin/nautilus-agent"]
