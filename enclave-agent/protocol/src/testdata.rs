//! Location of the shared test data (real attestation documents and their manifest).
//!
//! The documents are not part of this repository: they live in `shared/testdata` beside the
//! clone. Tests, benchmarks and the CLI's integration tests all find them through
//! [`testdata_dir`], so there is one rule for where they are, and each caller skips (rather
//! than fails) when they are absent.

use std::path::PathBuf;

/// Environment variable that overrides the test-data location.
pub const ENV_VAR: &str = "NAUTILUS_TESTDATA";

/// The test-data directory: `$NAUTILUS_TESTDATA` if set, else `shared/testdata` beside the
/// repository (the path is relative to this crate, `enclave-agent/protocol`).
///
/// Returns `Err` with the path that was tried when the directory does not exist.
pub fn locate() -> Result<PathBuf, PathBuf> {
    let dir = match std::env::var_os(ENV_VAR) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"),
    };
    if dir.is_dir() { Ok(dir) } else { Err(dir) }
}

/// The test-data directory, or `None` after printing `skipped: testdata not found at …`.
///
/// Meant for tests and benchmarks: `let Some(dir) = testdata_dir() else { return };`.
pub fn testdata_dir() -> Option<PathBuf> {
    match locate() {
        Ok(dir) => Some(dir),
        Err(tried) => {
            println!("skipped: testdata not found at {}", tried.display());
            None
        }
    }
}

/// The `nitro/` subdirectory of [`testdata_dir`] (real attestation documents).
pub fn nitro_dir() -> Option<PathBuf> {
    testdata_dir().map(|dir| dir.join("nitro"))
}
