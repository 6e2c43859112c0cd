# syntax=docker/dockerfile:1
# The enclave's root file system: nautilus-agent as the entrypoint, plus the control plane of
# one distribution (spec.controlPlane.distribution), chosen with --target:
#
#   --target kubernetes  /usr/local/bin/{etcd,kube-apiserver,kube-scheduler,kube-controller-manager}
#                        (the default; the agent's --kubernetes-bin-dir, default /usr/local/bin)
#   --target k3s         /usr/local/bin/k3s                       (the agent's --control-plane-command)
#
# An image carries one distribution: the PCRs then say which one runs, and a spec naming the
# other fails to start (the agent reports the missing program) rather than running unmeasured
# code. This image is never run as a container; nitro-cli turns it into the enclave image file
# (EIF) and prints PCR0/1/2 for the NautilusMaster spec:
#
#   export SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)
#   docker buildx build -f images/enclave.Dockerfile --target kubernetes \
#     --build-arg SOURCE_DATE_EPOCH --build-arg KUBERNETES_SHA256=<sha256sum lines> \
#     --build-arg ETCD_SHA256=<sha256 of the etcd tarball> \
#     --output type=docker,name=nautilus-enclave:0.1.0,rewrite-timestamp=true .
#   docker buildx build -f images/enclave.Dockerfile --target k3s \
#     --build-arg SOURCE_DATE_EPOCH --build-arg K3S_SHA256=<sha256 of the k3s binary> \
#     --output type=docker,name=nautilus-enclave-k3s:0.1.0,rewrite-timestamp=true .
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
FROM ${RUST_IMAGE} AS k3s-bin
ARG K3S_VERSION=v1.33.4+k3s1
ARG K3S_SHA256
ARG SOURCE_DATE_EPOCH=0
RUN test -n "${K3S_SHA256}" || { echo "pass --build-arg K3S_SHA256=<sha256 of k3s ${K3S_VERSION}>" >&2; exit 1; } \
 && curl -fsSL -o /k3s "https://github.com/k3s-io/k3s/releases/download/$(echo "${K3S_VERSION}" | sed 's/+/%2B/')/k3s" \
 && echo "${K3S_SHA256}  /k3s" | sha256sum -c - \
 && chmod 0755 /k3s && touch -d "@${SOURCE_DATE_EPOCH}" /k3s

# The kubernetes distribution's four programs (and etcdctl/etcdutl: sealed state snapshots with
# the maintenance API and restores with --bump-revision --mark-compacted), static release binaries fetched by version and
# verified by SHA-256 (the build refuses to run without them). KUBERNETES_SHA256 holds three
# `sha256sum` lines (kube-apiserver, kube-scheduler, kube-controller-manager, as published in
# the release's .sha256 files); ETCD_SHA256 the etcd tarball's. etcd must be a version the
# Kubernetes release supports (3.5 or later for Kubernetes 1.36).
FROM ${RUST_IMAGE} AS kubernetes-bin
ARG KUBERNETES_VERSION=v1.36.2
ARG KUBERNETES_SHA256
ARG ETCD_VERSION=v3.6.5
ARG ETCD_SHA256
ARG SOURCE_DATE_EPOCH=0
RUN test -n "${KUBERNETES_SHA256}" || { echo "pass --build-arg KUBERNETES_SHA256=<sha256sum lines of the three binaries>" >&2; exit 1; } \
 && test -n "${ETCD_SHA256}" || { echo "pass --build-arg ETCD_SHA256=<sha256 of etcd-${ETCD_VERSION}-linux-amd64.tar.gz>" >&2; exit 1; } \
 && mkdir -p /out && cd /out \
 && for b in kube-apiserver kube-scheduler kube-controller-manager; do \
      curl -fsSL -o "$b" "https://dl.k8s.io/release/${KUBERNETES_VERSION}/bin/linux/amd64/$b" || exit 1; \
    done \
 && printf '%s\n' "${KUBERNETES_SHA256}" | sha256sum -c - \
 && curl -fsSL -o /etcd.tar.gz "https://github.com/etcd-io/etcd/releases/download/${ETCD_VERSION}/etcd-${ETCD_VERSION}-linux-amd64.tar.gz" \
 && echo "${ETCD_SHA256}  /etcd.tar.gz" | sha256sum -c - \
 && tar -xzf /etcd.tar.gz --strip-components=1 -C /out "etcd-${ETCD_VERSION}-linux-amd64/etcd" \
      "etcd-${ETCD_VERSION}-linux-amd64/etcdctl" "etcd-${ETCD_VERSION}-linux-amd64/etcdutl" \
 && chmod 0755 /out/* && touch -d "@${SOURCE_DATE_EPOCH}" /out/*

# The k3s distribution (spec.controlPlane.distribution: k3s).
FROM ${BASE_IMAGE} AS k3s
COPY --from=build /out/nautilus-agent /usr/local/bin/nautilus-agent
COPY --from=k3s-bin /k3s /usr/local/bin/k3s
USER 0:0
ENTRYPOINT ["/usr/local/bin/nautilus-agent"]

# The default target (last): the kubernetes distribution, the CRD's default. Root inside the
# enclave: the control plane writes its data directory and binds its ports; the host cannot see
# into the enclave, so this grants the host nothing.
FROM ${BASE_IMAGE} AS kubernetes
COPY --from=build /out/nautilus-agent /usr/local/bin/nautilus-agent
COPY --from=kubernetes-bin /out/ /usr/local/bin/
USER 0:0
ENTRYPOINT ["/usr/local/bin/nautilus-agent"]
