//! `nautilus-state-bench`: what sealed state costs a NautilusMaster's boot. Boot to `Ready=True`
//! of a resource with `spec.state`, empty (the first boot: a data key from KMS, nothing to
//! restore) against restored (after a roll, whose graceful stop seals a last snapshot, and after
//! a SIGKILLed sidecar), with `--objects` ConfigMaps in the enclave's etcd.
//!
//! It runs what the e2e suite runs: a throwaway host API server, the operator in this process
//! (local runtime), the real sidecar and agent, the development KMS (the AWS JSON protocol,
//! Recipient attestation, the key policy), Debian's etcd and kube-apiserver,
//! kube-scheduler and kube-controller-manager from `$KUBEBUILDER_ASSETS`. Times are taken by
//! polling the resource every 250 ms, from the action (create, the spec patch, the SIGKILL) to
//! the status the operator wrote; a crash's time includes the operator noticing the sidecar is
//! gone (its probe interval).
//!
//! Usage: `NAUTILUS_BIN_DIR=target/debug cargo run -p nautilus-e2e --bin nautilus-state-bench --
//! [--objects 1000] [--rounds 3]` (`NAUTILUS_BIN_DIR` names where the development binaries
//! are: `cargo build --workspace --bins` first, with `--release` and `target/release` for
//! release figures).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use nautilus_crds::NautilusMaster;
use nautilus_e2e::{Harness, WAIT, condition, is};
use nautilus_seal::unix_now;

struct Args {
    objects: usize,
    rounds: usize,
}

fn args() -> Result<Args> {
    let mut parsed = Args {
        objects: 1000,
        rounds: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> Result<usize> {
            it.next()
                .with_context(|| format!("{flag} needs a value"))?
                .parse()
                .with_context(|| format!("{flag} takes a number"))
        };
        match flag.as_str() {
            "--objects" => parsed.objects = value()?,
            "--rounds" => parsed.rounds = value()?.max(1),
            other => bail!("unknown flag {other}; usage: [--objects N] [--rounds N]"),
        }
    }
    Ok(parsed)
}

fn restored_state(nm: &NautilusMaster) -> Option<(u64, u64)> {
    let state = nm.status.as_ref()?.state.as_ref()?;
    Some((
        state.restored_sequence?,
        state.last_snapshot_bytes.unwrap_or(0),
    ))
}

/// The attested report key: a new one with every enclave.
fn report_key(nm: &NautilusMaster) -> Option<String> {
    Some(
        nm.status
            .as_ref()?
            .attestation
            .as_ref()?
            .public_key_fingerprint
            .clone(),
    )
}

fn digest(nm: &NautilusMaster) -> Option<String> {
    nm.status.as_ref()?.boot_config_digest.clone()
}

fn restored_ready(nm: &NautilusMaster) -> bool {
    is(nm, "Ready", "True")
        && condition(nm, "StateRestored").is_some_and(|(_, reason)| reason == "Restored")
}

fn seconds(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn summary(times: &mut [Duration]) -> String {
    times.sort();
    let median = times[times.len() / 2];
    format!(
        "{} (min {}, max {}, n={})",
        seconds(median),
        seconds(times[0]),
        seconds(times[times.len() - 1]),
        times.len()
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = args()?;
    let Some(cluster) = nautilus_e2e::cluster("state-bench").await else {
        bail!("no host API server: set $KUBEBUILDER_ASSETS (see the README)");
    };
    let h = Harness::start_with_kms(cluster, "state-bench").await;
    if h.distribution != "kubernetes" {
        bail!("sealed state needs the kubernetes distribution's binaries in $KUBEBUILDER_ASSETS");
    }
    let result = run(&h, &args).await;
    h.finish().await;
    result
}

async fn run(h: &Harness, args: &Args) -> Result<()> {
    // A long interval: every snapshot restored here is a graceful stop's last one.
    let started = Instant::now();
    h.create("bench", h.state_spec(300, "Delete")).await;
    let nm = h
        .wait_for("bench", "Ready, started empty", WAIT, |nm| {
            is(nm, "Ready", "True")
                && condition(nm, "StateRestored").is_some_and(|(_, r)| r == "NoSnapshot")
        })
        .await;
    let empty = started.elapsed();

    let token = h
        .staker
        .mint_for(&nm.token_audience(), unix_now(), 3600)
        .context("mint")?;
    let enclave = h.client_with_token("bench", &token).await;
    let config_maps: Api<ConfigMap> = Api::namespaced(enclave, "default");
    let wrote = Instant::now();
    let created = futures::stream::iter(0..args.objects)
        .map(|i| {
            let config_maps = config_maps.clone();
            async move {
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("object-{i}")},
                    "data": {"payload": "x".repeat(1024)}
                }))?;
                let post = PostParams::default();
                nautilus_e2e::eventually(Duration::from_secs(60), "create", || {
                    config_maps.create(&post, &cm)
                })
                .await;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(8)
        .collect::<Vec<_>>()
        .await;
    for result in created {
        result?;
    }
    let write_time = wrote.elapsed();

    let mut rolls = Vec::new();
    let mut crashes = Vec::new();
    let mut sealed_bytes = 0;
    for round in 0..args.rounds {
        // A roll: the graceful stop seals a last snapshot, the new enclave restores it.
        let before = digest(&h.masters().get("bench").await?);
        let interval = 10 + u32::try_from(round % 2).unwrap_or(0);
        let started = Instant::now();
        h.masters()
            .patch(
                "bench",
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({
                    "spec": {"health": {"probeIntervalSeconds": interval}}
                })),
            )
            .await?;
        let nm = h
            .wait_for("bench", "rolled and restored", WAIT, |nm| {
                restored_ready(nm) && digest(nm) != before
            })
            .await;
        rolls.push(started.elapsed());
        let restored = restored_state(&nm).map_or(0, |(sequence, _)| sequence);
        let rolled_key = report_key(&nm);

        // A crash: no last snapshot; the newest stored one (the roll's) is restored.
        let sidecars = h.processes("nautilus-sidecar");
        let [sidecar] = sidecars.as_slice() else {
            bail!("expected one sidecar, found {sidecars:?}");
        };
        let started = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(*sidecar)?),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        let nm = h
            .wait_for("bench", "restored after the crash", WAIT, |nm| {
                restored_ready(nm)
                    && restored_state(nm).is_some_and(|(sequence, _)| sequence >= restored)
                    && report_key(nm) != rolled_key
            })
            .await;
        crashes.push(started.elapsed());
        sealed_bytes = restored_state(&nm).map_or(sealed_bytes, |(_, bytes)| bytes);
    }
    let list = kube::api::ListParams::default();
    let back = nautilus_e2e::eventually(Duration::from_secs(60), "list the objects", || {
        config_maps.list(&list)
    })
    .await;
    let kept = back
        .items
        .iter()
        .filter(|cm| {
            cm.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("object-"))
        })
        .count();
    if kept != args.objects {
        bail!("{kept} of {} objects came back", args.objects);
    }

    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!();
    println!(
        "sealed state, {} ConfigMaps of 1 KiB in the enclave's etcd ({} to write them); load {}",
        args.objects,
        seconds(write_time),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("| boot | creation or action → Ready |");
    println!("|---|---|");
    println!(
        "| empty (first boot: GenerateDataKey, nothing to restore) | {} |",
        seconds(empty)
    );
    println!(
        "| roll (graceful stop with a last snapshot, then Decrypt + restore) | {} |",
        summary(&mut rolls)
    );
    println!(
        "| crash (SIGKILLed sidecar, noticed, then Decrypt + restore) | {} |",
        summary(&mut crashes)
    );
    println!("all {kept} objects came back; last sealed snapshot {sealed_bytes} bytes");
    Ok(())
}
