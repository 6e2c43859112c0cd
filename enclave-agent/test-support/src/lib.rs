//! Tests only: where the shared test data lives (real attestation documents, Sui signature
//! vectors and their manifests).
//!
//! The data is not part of this repository: it lives in `shared/testdata` beside the clone.
//! Every crate's tests and benchmarks find it through [`testdata_dir`], so there is one rule for
//! where it is, and each caller skips (rather than fails) when it is absent. This crate is a
//! dev-dependency only, so no production binary or library API carries it.

use std::path::PathBuf;

/// Environment variable that overrides the test-data location.
pub const ENV_VAR: &str = "NAUTILUS_TESTDATA";

/// The test-data directory: `$NAUTILUS_TESTDATA` if set, else `shared/testdata` beside the
/// repository (the path is relative to this crate, `enclave-agent/test-support`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_location_is_beside_the_clone() {
        // Whether or not the data is there, the path tried ends in shared/testdata (unless the
        // environment overrides it, which then is what is tried).
        let tried = match locate() {
            Ok(dir) | Err(dir) => dir,
        };
        match std::env::var_os(ENV_VAR) {
            Some(dir) => assert_eq!(tried, PathBuf::from(dir)),
            None => assert!(tried.ends_with("../../../shared/testdata"), "{tried:?}"),
        }
    }
}
