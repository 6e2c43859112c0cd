//! `nautilus-flood`: what anonymous floods cost an enclave control plane, and what an
//! authenticated user sees meanwhile (issue 27's figures). Figures, not assertions.
//!
//! ```text
//! cargo build --release -p nautilus-sidecar -p nautilus-agent --bins
//! cargo run --release -p nautilus-e2e --bin nautilus-flood [-- SECONDS [CLIENTS [RATE]]]
//! ```
//!
//! The flooding clients run in a process of their own (this binary again, with the hidden
//! first argument `--flood-worker`) under `nice -n 19`, on two threads: on a 2-core machine an
//! attacker's CPU is this machine's too, and unniced in the bench's own runtime it would compete
//! with the user it measures, the operator and the Sui fixture, which on a real host it does
//! not. `RATE` (new requests a second, all clients together; default: as fast as they go) caps
//! the flood at a fixed send rate instead.
//!
//! One resource on the operator's local runtime (the real sidecar and agent, the `kubernetes`
//! distribution's real etcd and kube-apiserver from `$KUBEBUILDER_ASSETS`, the Sui fixture
//! node), re-attesting every 30 s (the CRD's minimum). Then four phases of `SECONDS` (default 15) each, with
//! `CLIENTS` (default 32) flooding clients on loopback, each from a loopback address of its
//! own (127.0.1.x; Linux routes all of 127/8 to lo), in bounded loops:
//! 1. **quiet**: nothing but the user;
//! 2. **challenge**: `POST /challenge` with a fresh nonce on the API port, back to back;
//! 3. **token**: `GET /api` with a seal token of a key never seen before, kept connections
//!    (so the stake lookup budget, not the connection budget, is what is measured);
//! 4. **handshake**: a full TLS handshake to the API server, then close.
//!
//! Per phase: what the floods got (answers a second, refusals), what reached the enclave
//! (challenges the sidecar counted as answered; `ListOwnedObjects` calls at the fixture node),
//! the agent's, the enclave API server's, the sidecar's and the flooders' CPU (from
//! `/proc/<pid>/stat`, as a share of one core), and p50/p99 of the user's `kubectl get namespaces`-equivalent (an admin seal token)
//! on a kept connection and on a new connection each time. At the end: whether the resource
//! stayed Ready and the intervals between the attestation documents the operator verified.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ListParams};
use nautilus_e2e::{Harness, WAIT, is};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Clock ticks a second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const TICKS: f64 = 100.0;

fn quantile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// utime + stime of `pid`, in ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command may hold spaces; the fields after its closing parenthesis do not.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based over the line).
    let field = |n: usize| {
        fields
            .get(n - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn flooder_ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1,
        u8::try_from(n % 250 + 2).unwrap_or(2),
    ))
}

async fn connect_from(source: IpAddr, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr).await
}

/// What one phase's flood got.
#[derive(Debug, Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Flood {
    Quiet,
    Challenge,
    Token,
    Handshake,
}

impl Flood {
    fn name(self) -> &'static str {
        match self {
            Self::Quiet => "quiet",
            Self::Challenge => "challenge flood",
            Self::Token => "fresh-address token flood",
            Self::Handshake => "handshake flood",
        }
    }
}

/// Everything a flooding client needs.
#[derive(Clone)]
struct Target {
    api: SocketAddr,
    server_name: String,
    tls: Arc<tokio_rustls::rustls::ClientConfig>,
    /// A kubeconfig without credentials: each request carries its own token.
    anonymous: String,
    audience: String,
    /// Time between one client's requests (none: back to back).
    every: Option<Duration>,
}

/// What the flood worker is told, as JSON in a file.
#[derive(serde::Serialize, serde::Deserialize)]
struct Orders {
    flood: Flood,
    clients: usize,
    seconds: f64,
    /// Requests a second, all clients together (none: as fast as they go).
    rate: Option<f64>,
    api: SocketAddr,
    server_name: String,
    ca_pem: String,
    anonymous: String,
    audience: String,
}

/// Pace one client: wait out the rest of its interval since `started`.
async fn pace(target: &Target, started: Instant) {
    if let Some(every) = target.every {
        tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
    }
}

async fn challenge_loop(target: Target, n: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        i += 1;
        let nonce = base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("flood {n} {i} {:?}", Instant::now()),
        );
        let body = format!("{{\"nonce\":\"{nonce}\"}}");
        let request = format!(
            "POST /challenge HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tally.sent.fetch_add(1, Ordering::Relaxed);
        let exchange = async {
            let mut stream = connect_from(flooder_ip(n), target.api).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut response = Vec::new();
            stream.read_to_end(&mut response).await?;
            Ok::<_, std::io::Error>(response)
        };
        match tokio::time::timeout(Duration::from_secs(15), exchange).await {
            Ok(Ok(response)) if response.starts_with(b"HTTP/1.1 200") => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Ok(response)) if response.starts_with(b"HTTP/1.1 429") => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        pace(&target, started).await;
    }
}

async fn token_loop(target: Target, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let Ok(client) = try_client(&target.anonymous).await else {
        tally.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let Some(key) =
            nautilus_seal::signer::generate_key(nautilus_seal::SignatureScheme::Ed25519)
        else {
            return;
        };
        let Ok(token) = key.mint_for(&target.audience, nautilus_seal::unix_now(), 900) else {
            return;
        };
        let Ok(request) = http::Request::get("/api")
            .header("Authorization", format!("Bearer {token}"))
            .body(Vec::new())
        else {
            return;
        };
        tally.sent.fetch_add(1, Ordering::Relaxed);
        match client.send(request.map(Into::into)).await {
            Ok(response) if response.status() == 401 => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        pace(&target, started).await;
    }
}

async fn handshake_loop(target: Target, n: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(&target.tls));
    let Ok(name) =
        tokio_rustls::rustls::pki_types::ServerName::try_from(target.server_name.clone())
    else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        tally.sent.fetch_add(1, Ordering::Relaxed);
        let handshake = async {
            let stream = connect_from(flooder_ip(n), target.api).await?;
            connector.connect(name.clone(), stream).await
        };
        match tokio::time::timeout(Duration::from_secs(15), handshake).await {
            Ok(Ok(_)) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
            }
            // Closed by the sidecar's connection budget before the enclave saw it.
            Ok(Err(_)) => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        pace(&target, started).await;
    }
}

/// The user's requests for `duration`: on one kept client, and on a new client each time.
async fn user(
    kept: &Client,
    kubeconfig: &str,
    duration: Duration,
) -> (Vec<Duration>, Vec<Duration>, u64) {
    let started = Instant::now();
    let (mut on_kept, mut on_new, mut errors) = (Vec::new(), Vec::new(), 0);
    while started.elapsed() < duration {
        let at = Instant::now();
        match Api::<Namespace>::all(kept.clone())
            .list(&ListParams::default())
            .await
        {
            Ok(_) => on_kept.push(at.elapsed()),
            Err(_) => errors += 1,
        }
        let at = Instant::now();
        match try_client(kubeconfig).await {
            Ok(fresh) => match Api::<Namespace>::all(fresh)
                .list(&ListParams::default())
                .await
            {
                Ok(_) => on_new.push(at.elapsed()),
                Err(_) => errors += 1,
            },
            Err(_) => errors += 1,
        }
        // About 8 new connections a second: a busy person's kubectl, well inside the per-address
        // connection budget (20/s), which a user looping faster would meet like a flooder.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (on_kept, on_new, errors)
}

fn sidecar_metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

async fn sidecar_metrics(http: SocketAddr) -> String {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(http).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

/// The value of `flag` (`--flag VALUE` or `--flag=VALUE`) on `pid`'s command line.
fn flag_of(pid: u32, flag: &str) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let joined = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&joined).map(str::to_owned)
        }
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1).filter(|a| a != "--").peekable();
    if args.peek().map(String::as_str) == Some(WORKER) {
        let orders = args.nth(1).context("the worker's orders file")?;
        return worker(&orders).await;
    }
    let seconds: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(15);
    let clients: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(32);
    let rate: Option<f64> = args.next().map(|a| a.parse()).transpose()?;
    let phase = Duration::from_secs(seconds);

    let Some(cluster) = nautilus_e2e::cluster("flood-bench").await else {
        bail!("no API server for the operator");
    };
    let bin = match std::env::var_os("NAUTILUS_BIN_DIR") {
        Some(dir) => std::path::PathBuf::from(dir),
        None => std::env::current_exe()?
            .parent()
            .context("the binary's directory")?
            .to_path_buf(),
    };
    let h = Harness::start_in(
        cluster,
        format!("nautilus-flood-{}", std::process::id()),
        None,
        &bin,
    )
    .await;
    if h.distribution != "kubernetes" {
        bail!("the flood bench needs the kubernetes distribution's real components");
    }
    let mut spec = h.development_spec();
    spec.attestation.refresh_interval_seconds = 30;
    h.create("flood", spec).await;
    let nm = h
        .wait_for("flood", "Ready=True", WAIT, |nm| is(nm, "Ready", "True"))
        .await;
    let audience = nm.token_audience();
    let admin = h
        .staker
        .mint_for(&audience, nautilus_seal::unix_now(), 3600)?;
    let kubeconfig = h.kubeconfig_with_token("flood", &admin).await;
    let kept = h.client_with_token("flood", &admin).await;
    // The same kubeconfig without credentials: each flood request carries its own token.
    let mut anonymous: serde_yaml::Value = serde_yaml::from_str(&kubeconfig)?;
    for user in anonymous["users"]
        .as_sequence_mut()
        .context("kubeconfig users")?
    {
        user["user"] = serde_yaml::Value::Mapping(serde_yaml::Mapping::new());
    }
    let anonymous = serde_yaml::to_string(&anonymous)?;

    // Where the flood goes, and whose CPU it costs.
    let parsed: serde_yaml::Value = serde_yaml::from_str(&kubeconfig)?;
    let cluster0 = &parsed["clusters"][0]["cluster"];
    let server = cluster0["server"].as_str().context("server")?;
    let url: http::Uri = server.parse()?;
    let host = url.host().context("host")?.to_owned();
    let port = url.port_u16().unwrap_or(443);
    let api: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .context("api address")?;
    let ca_pem = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        cluster0["certificate-authority-data"]
            .as_str()
            .context("certificate-authority-data")?,
    )?;
    let server_name = cluster0["tls-server-name"]
        .as_str()
        .map_or_else(|| host.clone(), str::to_owned);
    let orders_dir = tempfile::tempdir()?;
    let orders = |flood| Orders {
        flood,
        clients,
        seconds: phase.as_secs_f64(),
        rate,
        api,
        server_name: server_name.clone(),
        ca_pem: String::from_utf8_lossy(&ca_pem).into_owned(),
        anonymous: anonymous.clone(),
        audience: audience.clone(),
    };
    let agent = *h
        .processes("nautilus-agent")
        .first()
        .context("the agent's pid")?;
    let api_server = *h
        .processes(h.api_server_exe())
        .first()
        .context("the enclave API server's pid")?;
    let sidecar = *h
        .processes("nautilus-sidecar")
        .first()
        .context("the sidecar's pid")?;
    let sidecar_http: SocketAddr = flag_of(sidecar, "--http-listen")
        .context("the sidecar's --http-listen")?
        .replace("0.0.0.0", "127.0.0.1")
        .parse()?;

    // The resource's readiness and attestation documents throughout.
    let watching = Arc::new(AtomicBool::new(true));
    let watcher = tokio::spawn({
        let masters = h.masters();
        let watching = Arc::clone(&watching);
        async move {
            let (mut not_ready, mut documents) = (0u32, Vec::new());
            while watching.load(Ordering::Relaxed) {
                if let Ok(nm) = masters.get("flood").await {
                    if !is(&nm, "Ready", "True") {
                        not_ready += 1;
                    }
                    if let Some(at) = nm
                        .status
                        .and_then(|s| s.attestation)
                        .map(|a| a.document_timestamp.0.as_millisecond())
                        && documents.last() != Some(&at)
                    {
                        documents.push(at);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            (not_ready, documents)
        }
    });

    println!(
        "{clients} clients, {seconds} s a phase, flood rate {}; agent pid {agent}, enclave kube-apiserver pid {api_server}, sidecar pid {sidecar}",
        rate.map_or_else(
            || "as fast as they go (nice 19)".to_owned(),
            |r| format!("{r}/s (nice 19)")
        )
    );
    println!(
        "| phase | load (1/5/15) | flood sent/s | flood answered/s | flood refused/s | challenges reaching the agent /s | stake lookups at the node /s | agent CPU | API server CPU | sidecar CPU | flooders' CPU (nice 19) | user p50 / p99, kept connection | user p50 / p99, new connection | user errors |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for flood in [
        Flood::Quiet,
        Flood::Challenge,
        Flood::Token,
        Flood::Handshake,
    ] {
        let metrics_before = sidecar_metrics(sidecar_http).await;
        let lookups_before = h.chain.list_calls.load(Ordering::SeqCst);
        let (agent_before, api_before, sidecar_before) =
            (cpu_ticks(agent), cpu_ticks(api_server), cpu_ticks(sidecar));
        let started = Instant::now();
        let worker = if flood == Flood::Quiet {
            None
        } else {
            let path = orders_dir.path().join(format!("{flood:?}.json"));
            std::fs::write(&path, serde_json::to_vec(&orders(flood))?)?;
            let child = tokio::process::Command::new("nice")
                .args(["-n", "19"])
                .arg(std::env::current_exe()?)
                .arg(WORKER)
                .arg(&path)
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("starting the flood worker")?;
            Some(child)
        };
        let (on_kept, on_new, errors) = user(&kept, &kubeconfig, phase).await;
        let load = loadavg();
        let elapsed = started.elapsed().as_secs_f64();
        let (agent_after, api_after, sidecar_after) =
            (cpu_ticks(agent), cpu_ticks(api_server), cpu_ticks(sidecar));
        let tally = match worker {
            Some(child) => {
                let output =
                    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
                        .await
                        .context("the flood worker did not stop")??;
                let text = String::from_utf8_lossy(&output.stdout);
                text.lines()
                    .find_map(WorkerTally::parse)
                    .with_context(|| format!("the flood worker's tally: {text:?}"))?
            }
            None => WorkerTally::default(),
        };
        let metrics_after = sidecar_metrics(sidecar_http).await;
        let answered = "nautilus_sidecar_challenges_total{outcome=\"answered\"}";
        let reached = sidecar_metric(&metrics_after, answered)
            .saturating_sub(sidecar_metric(&metrics_before, answered));
        let lookups = h
            .chain
            .list_calls
            .load(Ordering::SeqCst)
            .saturating_sub(lookups_before);
        let per_second = |n: u64| n as f64 / elapsed;
        let cpu =
            |before: u64, after: u64| after.saturating_sub(before) as f64 / TICKS / elapsed * 100.0;
        println!(
            "| {} | {load} | {:.0} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} % | {:.1} % | {:.1} % | {:.1} % | {:.1} / {:.1} ms | {:.1} / {:.1} ms | {errors} |",
            flood.name(),
            per_second(tally.sent),
            per_second(tally.ok),
            per_second(tally.refused),
            per_second(reached),
            per_second(lookups as u64),
            cpu(agent_before, agent_after),
            cpu(api_before, api_after),
            cpu(sidecar_before, sidecar_after),
            tally.ticks as f64 / TICKS / elapsed * 100.0,
            ms(quantile(&on_kept, 0.5)),
            ms(quantile(&on_kept, 0.99)),
            ms(quantile(&on_new, 0.5)),
            ms(quantile(&on_new, 0.99)),
        );
        if tally.failed > 0 {
            println!(
                "  ({} flood requests failed otherwise: timeouts, resets)",
                tally.failed
            );
        }
    }
    let metrics = sidecar_metrics(sidecar_http).await;
    for line in metrics.lines().filter(|l| {
        l.starts_with("nautilus_sidecar_challenges_total")
            || l.starts_with("nautilus_sidecar_connections_rate_limited_total")
    }) {
        println!("  {line}");
    }
    watching.store(false, Ordering::Relaxed);
    let (not_ready, documents) = watcher.await?;
    let intervals: Vec<String> = documents
        .windows(2)
        .map(|w| format!("{:.1}", (w[1] - w[0]) as f64 / 1000.0))
        .collect();
    println!(
        "Ready throughout: {} (not Ready in {not_ready} polls); attestation documents verified: {}, intervals (s): {}",
        not_ready == 0,
        documents.len(),
        intervals.join(" ")
    );
    h.finish().await;
    Ok(())
}

/// The hidden first argument that makes this binary the flood worker.
const WORKER: &str = "--flood-worker";

/// What the worker reports on its last line: `tally SENT OK REFUSED FAILED TICKS`.
#[derive(Debug, Default)]
struct WorkerTally {
    sent: u64,
    ok: u64,
    refused: u64,
    failed: u64,
    /// The worker's own CPU time, in ticks.
    ticks: u64,
}

impl WorkerTally {
    fn parse(line: &str) -> Option<Self> {
        let mut fields = line
            .strip_prefix("tally ")?
            .split(' ')
            .map(str::parse::<u64>);
        let mut next = || fields.next()?.ok();
        Some(Self {
            sent: next()?,
            ok: next()?,
            refused: next()?,
            failed: next()?,
            ticks: next()?,
        })
    }
}

/// The flood worker: run the orders' flood for their seconds, then print the tally.
async fn worker(orders: &str) -> anyhow::Result<()> {
    let orders: Orders = serde_json::from_slice(&std::fs::read(orders)?)?;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in rustls_pemfile_certs(orders.ca_pem.as_bytes()) {
        roots.add(cert)?;
    }
    let tls = Arc::new(
        tokio_rustls::rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let every = orders
        .rate
        .filter(|r| *r > 0.0)
        .map(|r| Duration::from_secs_f64(orders.clients as f64 / r));
    let target = Target {
        api: orders.api,
        server_name: orders.server_name,
        tls,
        anonymous: orders.anonymous,
        audience: orders.audience,
        every,
    };
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let flood = orders.flood;
    let mut tasks = Vec::new();
    for n in 0..orders.clients {
        let (target, stop, tally) = (target.clone(), Arc::clone(&stop), Arc::clone(&tally));
        tasks.push(tokio::spawn(async move {
            match flood {
                Flood::Challenge => challenge_loop(target, n, stop, tally).await,
                Flood::Token => token_loop(target, stop, tally).await,
                Flood::Handshake => handshake_loop(target, n, stop, tally).await,
                Flood::Quiet => {}
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(orders.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    }
    println!(
        "tally {} {} {} {} {}",
        tally.sent.load(Ordering::Relaxed),
        tally.ok.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        cpu_ticks(std::process::id()),
    );
    Ok(())
}

/// A client from a kubeconfig's text, or why not.
async fn try_client(text: &str) -> anyhow::Result<Client> {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(text)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(Client::try_from(config)?)
}

/// The certificates of a PEM bundle.
fn rustls_pemfile_certs(
    pem: &[u8],
) -> Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}
