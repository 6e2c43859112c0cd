# syntax=docker/dockerfile:1
# nautilus-operator: the reconcile loop. Build from the repository root:
#   docker build -f images/operator.Dockerfile -t ghcr.io/nautilus-operator/nautilus-operator:0.1.0 .
# Pin both base images by digest for releases (tag@sha256:...); see images/README.md.
ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot

FROM ${RUST_IMAGE} AS build
# A static musl binary: the runtime image has no libc. ring builds its C parts with musl-gcc.
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p nautilus-operator --target x86_64-unknown-linux-musl \
 && install -D target/x86_64-unknown-linux-musl/release/nautilus-operator /out/nautilus-operator

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/nautilus-operator /usr/local/bin/nautilus-operator
# distroless "nonroot": uid/gid 65532, matching config/manager/deployment.yaml.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/nautilus-operator"]
