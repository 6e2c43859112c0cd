//! Writes the `NautilusMaster` CRD as YAML: to the file given as the only argument, or to stdout.
//!
//! `cargo run -p nautilus-operator --bin crdgen -- crds/nautilusmaster.yaml`

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let yaml = nautilus_crds::crd_yaml().context("rendering the CRD")?;
    match std::env::args_os().nth(1) {
        Some(path) => std::fs::write(&path, yaml)
            .with_context(|| format!("writing {}", path.to_string_lossy()))?,
        None => print!("{yaml}"),
    }
    Ok(())
}
