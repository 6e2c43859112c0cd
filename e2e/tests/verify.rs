//! `nautilusctl verify` as a user runs it, against the whole system on a real API server: a
//! resource verified and its written kubeconfig used with a seal token; then each way the host
//! could try to fool the user, refused with its own reason: a relay that tampers with the
//! answer, a wrong PCR, a replayed document, and an endpoint serving a foreign CA's certificate.
//!
//! The relays are test code in front of the resource's endpoint: the host controls everything
//! between the user and the enclave, so a relay is exactly what it can do.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nautilus_e2e::{
    Harness, WAIT, client_from_kubeconfig, cluster, is, nautilusctl, self_subject_review,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// One run of `nautilusctl verify demo … --output json`: exit code and the JSON summary.
async fn verify(h: &Harness, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut cmd = tokio::process::Command::new(nautilusctl());
    cmd.arg("verify")
        .arg("demo")
        .arg("-n")
        .arg(&h.namespace)
        .arg("--kubeconfig")
        .arg(&h.cluster.kubeconfig)
        .arg("--allow-simulated")
        .args(["--output", "json"])
        .args(extra)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("nautilusctl verify ends within 60 s")
        .expect("nautilusctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("verify printed no JSON ({e}): {stdout}\nstderr: {stderr}"));
    (output.status.code().unwrap_or(-1), summary)
}

/// Assert a refusal with `reason`, and that nothing was written to `kubeconfig`.
async fn refused(h: &Harness, extra: &[&str], reason: &str, kubeconfig: &Path) {
    let (code, summary) = verify(h, extra).await;
    assert_eq!(code, 1, "{extra:?}: {summary:#}");
    assert_eq!(summary["verified"], false, "{summary:#}");
    assert_eq!(summary["reason"], reason, "{extra:?}: {summary:#}");
    assert!(
        !kubeconfig.exists(),
        "a refused check wrote {}",
        kubeconfig.display()
    );
}

/// What a relay does with what passes through it.
#[derive(Clone)]
enum Mode {
    /// Replace the serving CA in challenge answers (to be able to intercept TLS).
    SwapCa(String),
    /// Answer every challenge after the first with the first answer.
    Replay(Arc<Mutex<Option<Vec<u8>>>>),
    /// Pass challenges through, send TLS to another server (with another CA).
    ForeignTls(SocketAddr),
}

/// A relay on a local port in front of `upstream`, the resource's endpoint.
async fn relay(upstream: SocketAddr, mode: Mode) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let addr = listener.local_addr().expect("relay addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(relay_one(client, upstream, mode.clone()));
        }
    });
    (addr, task)
}

async fn relay_one(mut client: TcpStream, upstream: SocketAddr, mode: Mode) {
    let mut first = vec![0u8; 16 * 1024];
    let Ok(n) = client.read(&mut first).await else {
        return;
    };
    first.truncate(n);
    let challenge = first.starts_with(b"POST /challenge ");
    let target = match (&mode, challenge) {
        (Mode::ForeignTls(foreign), false) => *foreign,
        _ => upstream,
    };
    if let (Mode::Replay(stored), true) = (&mode, challenge) {
        let replay = stored.lock().expect("lock").clone();
        if let Some(answer) = replay {
            let _ = client.write_all(&answer).await;
            let _ = client.shutdown().await;
            return;
        }
    }
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    if server.write_all(&first).await.is_err() {
        return;
    }
    if !challenge || matches!(mode, Mode::ForeignTls(_)) {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        return;
    }
    // A challenge: the whole answer (the sidecar closes after it), then the relay's edit.
    let mut answer = Vec::new();
    if server.read_to_end(&mut answer).await.is_err() {
        return;
    }
    let answer = match &mode {
        Mode::SwapCa(pem) => swap_ca(&answer, pem),
        Mode::Replay(stored) => {
            *stored.lock().expect("lock") = Some(answer.clone());
            answer
        }
        Mode::ForeignTls(_) => answer,
    };
    let _ = client.write_all(&answer).await;
    let _ = client.shutdown().await;
}

/// The HTTP answer with `attestation.servingCaPem` replaced by `pem`.
fn swap_ca(answer: &[u8], pem: &str) -> Vec<u8> {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete answer");
    let head = String::from_utf8_lossy(&answer[..end]);
    let mut body: serde_json::Value =
        serde_json::from_slice(&answer[end + 4..]).expect("a JSON challenge response");
    body["attestation"]["servingCaPem"] = serde_json::Value::String(pem.to_owned());
    let body = serde_json::to_vec(&body).expect("json");
    let head: Vec<String> = head
        .split("\r\n")
        .map(|line| {
            if line.to_ascii_lowercase().starts_with("content-length:") {
                format!("content-length: {}", body.len())
            } else {
                line.to_owned()
            }
        })
        .collect();
    let mut out = format!("{}\r\n\r\n", head.join("\r\n")).into_bytes();
    out.extend_from_slice(&body);
    out
}

/// `host:port` of an `https://` URL.
fn socket_addr(url: &str) -> SocketAddr {
    let authority = url
        .strip_prefix("https://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("{url} is not https"));
    std::net::ToSocketAddrs::to_socket_addrs(authority)
        .expect("resolve")
        .next()
        .expect("an address")
}

/// The host cluster's API server: a TLS server whose CA is not the enclave's.
fn host_api_server(kubeconfig: &Path) -> SocketAddr {
    let text = std::fs::read_to_string(kubeconfig).expect("host kubeconfig");
    let config: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig yaml");
    let server = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("a server URL");
    socket_addr(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_checks_the_enclave_and_refuses_what_the_host_can_forge() {
    let Some(cluster) =
        cluster("verify_checks_the_enclave_and_refuses_what_the_host_can_forge").await
    else {
        return;
    };
    let ctl = nautilusctl();
    let h = Harness::start(cluster, "verify", None).await;
    h.create("demo", h.development_spec()).await;
    let nm = h
        .wait_for("demo", "Ready=True", WAIT, |nm| is(nm, "Ready", "True"))
        .await;
    let endpoint = nm
        .status
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .expect("endpoint");
    let upstream = socket_addr(&endpoint);
    let kubeconfig = h.dir.path().join("demo.kubeconfig");
    let write = [
        "--write-kubeconfig",
        kubeconfig.to_str().expect("utf-8 path"),
    ];

    // Verified, with the operator's status ignored except for the endpoint.
    let started = std::time::Instant::now();
    let (code, summary) = verify(&h, &write).await;
    let took = started.elapsed();
    assert_eq!(code, 0, "{summary:#}");
    assert_eq!(summary["verified"], true);
    assert_eq!(summary["resource"], format!("{}/demo", h.namespace));
    assert_eq!(summary["configDigest"], h.measured_digest(&nm).await);
    assert_eq!(summary["simulated"], true);
    let placed: Vec<&str> = summary["placed"]
        .as_array()
        .expect("placed")
        .iter()
        .filter_map(|p| p["field"].as_str())
        .collect();
    assert!(placed.contains(&"controlPlane.httpsPort"), "{summary:#}");
    println!("nautilusctl verify: verified in {took:?}");

    // The kubeconfig it wrote, used as kubectl would: the exec plugin mints a seal token from
    // the user's keystore (here: the staked key), TLS trusts the attested CA only.
    let keystore = h.dir.path().join("sui.keystore");
    std::fs::write(
        &keystore,
        serde_json::to_vec(&[h.staker.to_keystore_entry()]).expect("json"),
    )
    .expect("write keystore");
    let text = std::fs::read_to_string(&kubeconfig).expect("written kubeconfig");
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text).expect("kubeconfig yaml");
    let exec = &mut config["users"][0]["user"]["exec"];
    assert_eq!(exec["command"], "nautilusctl");
    // As with nautilusctl on PATH and NAUTILUS_SUI_KEYSTORE set in the user's shell.
    exec["command"] = serde_yaml::Value::String(ctl.display().to_string());
    exec["env"] = serde_yaml::to_value(serde_json::json!([
        { "name": "NAUTILUS_SUI_KEYSTORE", "value": keystore.display().to_string() }
    ]))
    .expect("env");
    let kubeconfig_text = serde_yaml::to_string(&config).expect("yaml");
    let enclave = client_from_kubeconfig(&kubeconfig_text).await;
    let review = self_subject_review(&enclave)
        .await
        .expect("the enclave admits the seal token minted through the written kubeconfig");
    assert_eq!(
        review["status"]["userInfo"]["username"],
        format!("sui:{}", h.staker.address())
    );
    std::fs::remove_file(&kubeconfig).expect("remove the kubeconfig");

    // Without --allow-simulated a development enclave is refused.
    let (code, summary) = {
        let mut cmd = tokio::process::Command::new(&ctl);
        cmd.args(["verify", "demo", "-n", &h.namespace, "--output", "json"])
            .arg("--kubeconfig")
            .arg(&h.cluster.kubeconfig);
        let output = cmd.output().await.expect("nautilusctl runs");
        (
            output.status.code().unwrap_or(-1),
            serde_json::from_slice::<serde_json::Value>(&output.stdout).expect("json"),
        )
    };
    assert_eq!(
        (code, summary["reason"].as_str()),
        (1, Some("SimulatedAttestation"))
    );

    // A wrong PCR: the user expects another image.
    let other = "aa".repeat(48);
    refused(
        &h,
        &[&write[..], &["--pcr0", &other]].concat(),
        "PCRMismatch",
        &kubeconfig,
    )
    .await;

    // A tampering relay swaps the serving CA for its own, to intercept TLS.
    let foreign_ca = rcgen::generate_simple_self_signed(vec!["relay.invalid".to_owned()])
        .expect("foreign CA")
        .cert
        .pem();
    let (tamper, tamper_task) = relay(upstream, Mode::SwapCa(foreign_ca)).await;
    let through = format!("https://127.0.0.1:{}", tamper.port());
    refused(
        &h,
        &[&write[..], &["--endpoint", &through]].concat(),
        "BindingMismatch",
        &kubeconfig,
    )
    .await;
    tamper_task.abort();

    // A replaying relay: a genuine answer once, then the same document for the next nonce.
    let (replay, replay_task) = relay(upstream, Mode::Replay(Arc::default())).await;
    let through = format!("https://127.0.0.1:{}", replay.port());
    let (code, summary) = verify(&h, &["--endpoint", &through]).await;
    assert_eq!(code, 0, "the first answer is genuine: {summary:#}");
    refused(
        &h,
        &[&write[..], &["--endpoint", &through]].concat(),
        "NonceMismatch",
        &kubeconfig,
    )
    .await;
    replay_task.abort();

    // The challenge reaches the enclave, but TLS goes to a server of another CA (here the host
    // cluster's own API server).
    let (foreign, foreign_task) = relay(
        upstream,
        Mode::ForeignTls(host_api_server(&h.cluster.kubeconfig)),
    )
    .await;
    let through = format!("https://127.0.0.1:{}", foreign.port());
    refused(
        &h,
        &[&write[..], &["--endpoint", &through]].concat(),
        "CertificateMismatch",
        &kubeconfig,
    )
    .await;
    foreign_task.abort();

    // The operator's view did not flap while users challenged the enclave.
    let nm = h.masters().get("demo").await.expect("get");
    assert!(is(&nm, "Attested", "True"), "{:?}", nm.status);
    h.finish().await;
}
