//! Host-side sidecar of a Nautilus enclave (work in progress).
