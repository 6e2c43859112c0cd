//! `nautilus-tamper-sidecar`: tests only. The real `nautilus-sidecar` behind a relay that alters
//! every report on its control link (see `nautilus_e2e::tamper`). The e2e suite's local runtime
//! starts it in place of the sidecar, with the sidecar's arguments; the real sidecar is taken
//! from `$NAUTILUS_BIN_DIR`, else from beside this program.

use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;

use anyhow::Context as _;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let dir = match std::env::var_os("NAUTILUS_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::current_exe()
            .context("locating this program")?
            .parent()
            .context("this program's directory")?
            .to_owned(),
    };
    let status = nautilus_e2e::tamper::run_sidecar(
        &dir.join("nautilus-sidecar"),
        std::env::args_os().skip(1),
    )
    .await
    .map_err(anyhow::Error::from)?;
    // The sidecar's status as this program's, so the runtime sees the exit it would have seen.
    std::process::exit(
        status
            .code()
            .or_else(|| status.signal().map(|signal| 128 + signal))
            .unwrap_or(1),
    )
}
