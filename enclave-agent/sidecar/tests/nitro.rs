//! The nitro launcher against a fake `nitro-cli` that prints output in nitro-cli's format.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use clap::Parser as _;
use common::*;
use nautilus_protocol::transport::Endpoint;
use nautilus_protocol::wire::{EvidenceBundle, Message};
use nautilus_sidecar::Args;
use nautilus_sidecar::launcher::{Launcher as _, NitroConfig, NitroLauncher};

const ENCLAVE_ID: &str = "i-0123456789abcdef0-enc0123456789abcdef";

/// One test at a time: a fork by one test while another still has its new script open for
/// writing would make exec fail with ETXTBSY.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A nitro-cli that logs its arguments and answers like nitro-cli 1.4 does. The enclave it
/// runs carries the `--enclave-name` it was given; `describe-enclaves` lists it (until it is
/// terminated), except that a `describe.json` in `dir` is printed instead, once: what a
/// previous sidecar left running, or garbage. Terminating an id containing `stuck` fails.
fn fake_nitro_cli(dir: &Path) -> PathBuf {
    let script = format!(
        r#"#!/bin/sh
state="{dir}"
echo "$*" >> "$state/calls.log"
case "$1" in
run-enclave)
  [ "$2" = "--enclave-name" ] && printf '%s' "$3" > "$state/name"
  echo "Start allocating memory..."
  echo "Started enclave with enclave-cid: 16, memory: 512 MiB, cpu-ids: [1, 3]"
  cat <<JSON
{{
  "EnclaveName": "$(cat "$state/name")",
  "EnclaveID": "{ENCLAVE_ID}",
  "ProcessID": 4242,
  "EnclaveCID": 16,
  "NumberOfCPUs": 2,
  "CPUIDs": [
    1,
    3
  ],
  "MemoryMiB": 512
}}
JSON
  ;;
describe-enclaves)
  if [ -e "$state/describe.json" ]; then cat "$state/describe.json"; rm "$state/describe.json"; exit 0; fi
  if [ -e "$state/terminated" ] || [ ! -e "$state/name" ]; then echo "[]"; exit 0; fi
  cat <<JSON
[
  {{
    "EnclaveName": "$(cat "$state/name")",
    "EnclaveID": "{ENCLAVE_ID}",
    "ProcessID": 4242,
    "EnclaveCID": 16,
    "NumberOfCPUs": 2,
    "CPUIDs": [1, 3],
    "MemoryMiB": 512,
    "State": "RUNNING",
    "Flags": "NONE"
  }}
]
JSON
  ;;
terminate-enclave)
  case "$3" in *stuck*) echo "[ E36 ] Enclave termination failure." >&2; exit 1;; esac
  [ "$3" = "{ENCLAVE_ID}" ] && touch "$state/terminated"
  printf '{{\n  "EnclaveID": "%s",\n  "Terminated": true\n}}\n' "$3"
  ;;
*)
  echo "unknown command $1" >&2
  exit 1
  ;;
esac
"#,
        dir = dir.display()
    );
    let path = dir.join("nitro-cli");
    std::fs::write(&path, script).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn calls(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_nitro_launcher_runs_watches_and_terminates_the_enclave() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nitro_cli = fake_nitro_cli(dir.path());
    let boot_path = write_boot_config(dir.path(), &boot_config(5));
    let agent = FakeAgent::bind(dir.path(), 5).await;

    let args = Args::try_parse_from([
        "nautilus-sidecar",
        "--boot-config",
        &boot_path.display().to_string(),
        "--launcher",
        "nitro",
        "--nitro-cli",
        &nitro_cli.display().to_string(),
        "--eif-path",
        "/opt/nautilus/enclave.eif",
        "--cpu-count",
        "2",
        "--memory-mib",
        "512",
        "--enclave-cid",
        "16",
        // vsock is not available here: the agent is the fake on a Unix socket.
        "--agent",
        &agent.endpoint().to_string(),
        "--http-listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--egress-listen",
        "tcp://127.0.0.1:0",
    ])
    .expect("arguments parse");
    let running = nautilus_sidecar::start(args).await.expect("starts");
    assert_eq!(
        calls(dir.path()),
        [
            "describe-enclaves",
            "run-enclave --enclave-name tenants.alpha --eif-path /opt/nautilus/enclave.eif --cpu-count 2 --memory 512 --enclave-cid 16"
        ]
    );
    assert_eq!(running.agent_endpoint(), agent.endpoint());
    let mut conn = agent.accept().await;

    let (_, body) = get(running.http_addr(), "/report").await;
    let bundle: EvidenceBundle = serde_json::from_str(&body).expect("bundle json");
    assert_eq!(bundle.enclave.launcher, "nitro");
    assert_eq!(bundle.enclave.enclave_id.as_deref(), Some(ENCLAVE_ID));
    assert_eq!(bundle.enclave.enclave_cid, Some(16));
    assert!(bundle.enclave.running);

    // Signals do not reach into an enclave: the agent is asked on the link, and the enclave is
    // terminated once it closed the link.
    let stopping = tokio::spawn(running.shutdown());
    assert!(matches!(conn.recv().await, Message::Stop(_)));
    assert!(
        !calls(dir.path())
            .iter()
            .any(|c| c.starts_with("terminate-enclave")),
        "terminated before the agent stopped"
    );
    drop(conn);
    stopping.await.expect("join").expect("shutdown");
    let calls = calls(dir.path());
    assert_eq!(
        calls.last().map(String::as_str),
        Some(format!("terminate-enclave --enclave-id {ENCLAVE_ID}").as_str()),
        "{calls:?}"
    );
}

#[tokio::test]
async fn the_nitro_launcher_sees_the_enclave_go_and_defaults_to_its_cid() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nitro_cli = fake_nitro_cli(dir.path());
    let launcher = NitroLauncher::new(NitroConfig {
        nitro_cli: nitro_cli.clone(),
        eif_path: "/x.eif".into(),
        cpu_count: 2,
        memory_mib: 512,
        enclave_cid: None,
        enclave_name: "nautilus".into(),
    });
    assert!(launcher.status().await.is_err(), "not started yet");
    let info = launcher.start().await.expect("starts");
    assert_eq!(info.enclave_cid, Some(16));
    assert!(launcher.status().await.expect("status").running);
    std::fs::write(dir.path().join("terminated"), b"").expect("end the enclave");
    let info = launcher.status().await.expect("status");
    assert!(!info.running);
    assert_eq!(
        info.last_exit.as_deref(),
        Some("no longer listed by describe-enclaves")
    );
    // Terminating a gone enclave is fine.
    launcher.stop().await.expect("stop");

    // Through the library: without --agent the link dials vsock://<CID>:5000.
    let dir = tempfile::tempdir().expect("tempdir");
    let nitro_cli = fake_nitro_cli(dir.path());
    let boot_path = write_boot_config(dir.path(), &boot_config(5));
    let args = Args::try_parse_from([
        "nautilus-sidecar",
        "--boot-config",
        &boot_path.display().to_string(),
        "--launcher",
        "nitro",
        "--nitro-cli",
        &nitro_cli.display().to_string(),
        "--eif-path",
        "/x.eif",
        "--cpu-count",
        "2",
        "--memory-mib",
        "512",
        "--http-listen",
        "127.0.0.1:0",
        "--api-listen",
        "127.0.0.1:0",
        "--egress-listen",
        "tcp://127.0.0.1:0",
    ])
    .expect("arguments parse");
    let running = nautilus_sidecar::start(args).await.expect("starts");
    assert_eq!(
        running.agent_endpoint(),
        &Endpoint::Vsock {
            cid: 16,
            port: 5000
        }
    );
    running.shutdown().await.expect("shutdown");

    // Missing nitro flags are a configuration error before anything runs.
    let args = Args::try_parse_from([
        "nautilus-sidecar",
        "--boot-config",
        &boot_path.display().to_string(),
        "--launcher",
        "nitro",
    ])
    .expect("arguments parse");
    let err = nautilus_sidecar::start(args).await.expect_err("refused");
    assert_eq!(
        err.to_string(),
        "--eif-path is required with --launcher nitro"
    );
}

fn config(nitro_cli: PathBuf, enclave_name: &str) -> NitroConfig {
    NitroConfig {
        nitro_cli,
        eif_path: "/x.eif".into(),
        cpu_count: 2,
        memory_mib: 512,
        enclave_cid: None,
        enclave_name: enclave_name.into(),
    }
}

/// One listed enclave as describe-enclaves prints it.
fn listed(name: &str, id: &str) -> String {
    format!(
        r#"{{"EnclaveName": "{name}", "EnclaveID": "{id}", "ProcessID": 7, "EnclaveCID": 17,
  "NumberOfCPUs": 2, "CPUIDs": [1, 3], "MemoryMiB": 512, "State": "RUNNING", "Flags": "NONE",
  "Measurements": {{"HashAlgorithm": "Sha384 {{ ... }}", "PCR0": "00", "PCR1": "00", "PCR2": "00"}}}}"#
    )
}

#[tokio::test]
async fn a_previous_sidecars_enclave_is_terminated_before_the_new_one_runs() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let nitro_cli = fake_nitro_cli(dir.path());
    std::fs::write(
        dir.path().join("describe.json"),
        format!(
            "[{}, {}, {}, {}]",
            listed("tenants.alpha", "i-1-enc-left"),
            listed("tenants.alpha_1", "i-1-enc-left-renamed"),
            listed("tenants.alpha2", "i-1-enc-foreign"),
            listed("tenants.beta", "i-1-enc-other"),
        ),
    )
    .expect("listing");
    let launcher = NitroLauncher::new(config(nitro_cli, "tenants.alpha"));
    launcher.start().await.expect("starts");
    assert_eq!(
        calls(dir.path()),
        [
            "describe-enclaves",
            "terminate-enclave --enclave-id i-1-enc-left",
            "terminate-enclave --enclave-id i-1-enc-left-renamed",
            "run-enclave --enclave-name tenants.alpha --eif-path /x.eif --cpu-count 2 --memory 512",
        ],
        "our name (and nitro-cli's _N variant of it) is terminated, foreign enclaves are left"
    );
    launcher.stop().await.expect("stop");
}

#[tokio::test]
async fn a_listing_that_cannot_be_read_or_cleaned_stops_the_start() {
    let _serial = SERIAL.lock().await;
    for (listing, expected) in [
        (
            "garbage, not JSON\n".to_owned(),
            "cannot parse the output of nitro-cli describe-enclaves: no JSON array in the output",
        ),
        (
            r#"[{"EnclaveName": "tenants.alpha"}]"#.to_owned(),
            "cannot parse the output of nitro-cli describe-enclaves: missing field `EnclaveID`",
        ),
        (
            format!("[{}]", listed("tenants.alpha", "i-1-enc-stuck")),
            "failed (exit status: 1): [ E36 ] Enclave termination failure.",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let nitro_cli = fake_nitro_cli(dir.path());
        std::fs::write(dir.path().join("describe.json"), &listing).expect("listing");
        let launcher = NitroLauncher::new(config(nitro_cli, "tenants.alpha"));
        let err = launcher.start().await.expect_err("refused");
        assert!(err.to_string().contains(expected), "{listing}: {err}");
        assert!(
            !calls(dir.path())
                .iter()
                .any(|c| c.starts_with("run-enclave")),
            "{listing}: no enclave may start beside one that may still run"
        );
    }
    // A name nitro-cli would accept but that could collide with another's `_N` suffix.
    let dir = tempfile::tempdir().expect("tempdir");
    let launcher = NitroLauncher::new(config(fake_nitro_cli(dir.path()), "tenants_alpha"));
    let err = launcher.start().await.expect_err("refused");
    assert!(err.to_string().contains("may hold only"), "{err}");
    assert_eq!(calls(dir.path()), Vec::<String>::new());
}
