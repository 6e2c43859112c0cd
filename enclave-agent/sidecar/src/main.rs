//! `nautilus-sidecar` binary.

fn main() {}
