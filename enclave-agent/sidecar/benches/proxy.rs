//! Proxy benchmark (work in progress).

fn main() {}
