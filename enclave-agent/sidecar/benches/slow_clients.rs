//! Resident memory of the real `nautilus-sidecar` binary under 100 slow clients per listener,
//! and the latency of a legitimate request meanwhile. Figures, not assertions:
//!
//! ```text
//! cargo bench -p nautilus-sidecar --bench slow_clients
//! ```
//!
//! Scenarios, each against a fresh sidecar with its default limits:
//! 1. `drip`: 100 clients `POST /attest` with `Content-Length: 4000` and send one body byte
//!    every 20 ms; the sidecar must answer 408 at its 10 s body timeout.
//! 2. `idle`: 100 silent TCP connections each to the HTTP API, the API proxy and the egress
//!    proxy; cut at the 10 s client timeout.
//!
//! Clients give up after [`GIVE_UP`]. `SIDECAR_BIN=/path/to/nautilus-sidecar` measures another
//! build (an older one, for a before/after) with the same clients.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const CLIENTS: usize = 100;
/// A client still connected after this long stops and counts as not cut.
const GIVE_UP: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

struct Sidecar {
    child: tokio::process::Child,
    http: SocketAddr,
    api: SocketAddr,
    egress: SocketAddr,
}

impl Sidecar {
    async fn start(dir: &Path) -> Self {
        let boot = serde_json::json!({
            "config": {
                "cluster": "bench/slow-clients",
                "controlPlane": {
                    "bindAddress": "127.0.0.1", "httpsPort": 6443,
                    "clusterCIDR": "10.42.0.0/16", "serviceCIDR": "10.43.0.0/16",
                    "clusterDNS": "10.43.0.10", "dataDir": "/var/lib/k3s",
                    "encryptSecrets": true, "tlsMinVersion": "VersionTLS13",
                    "cipherSuites": [], "logLevel": "info", "logFormat": "json"
                },
                "auth": {
                    "suiRpcURL": "https://fullnode.testnet.sui.io:443", "chainID": null,
                    "stakeType": "0x3::staking_pool::StakedSui", "stakeAmountField": null,
                    "audience": "bench", "maxTokenLifetimeSeconds": 3600,
                    "stakeCacheTTLSeconds": 60, "tiers": []
                },
                "health": {"probeIntervalSeconds": 5, "startupTimeoutSeconds": 60}
            },
            "nonce": "AAAA"
        });
        let boot_path = dir.join("boot.json");
        std::fs::write(&boot_path, serde_json::to_vec(&boot).expect("json")).expect("write");
        let (http, api, egress) = (free_port(), free_port(), free_port());
        let binary = std::env::var_os("SIDECAR_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_nautilus-sidecar").into());
        let child = tokio::process::Command::new(binary)
            .args(["--boot-config", &boot_path.display().to_string()])
            .args(["--launcher", "process", "--agent-command", "sleep"])
            .args(["--agent-arg", "3600"])
            .args([
                "--agent",
                &format!("unix:{}", dir.join("nobody.sock").display()),
            ])
            .args(["--api-upstream", "tcp://127.0.0.1:9"])
            .args(["--link-timeout-seconds", "3600"])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(["--api-listen", &format!("127.0.0.1:{api}")])
            .args(["--egress-listen", &format!("tcp://127.0.0.1:{egress}")])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("sidecar binary");
        let sidecar = Self {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            api: SocketAddr::from(([127, 0, 0, 1], api)),
            egress: SocketAddr::from(([127, 0, 0, 1], egress)),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while get(sidecar.http).await.is_none() {
            assert!(Instant::now() < deadline, "sidecar did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sidecar
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    async fn stop(mut self) {
        // SIGTERM, then wait: the sidecar stops its agent process group itself.
        if let Ok(pid) = i32::try_from(self.pid()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await;
        let _ = self.child.kill().await;
    }
}

/// `GET /healthz`; the time it took.
async fn get(addr: SocketAddr) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    answer
        .starts_with(b"HTTP/1.1 200")
        .then(|| started.elapsed())
}

async fn drip(addr: SocketAddr) -> (bool, Duration) {
    let Ok(stream) = TcpStream::connect(addr).await else {
        return (false, Duration::ZERO);
    };
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let head = b"POST /attest HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n";
    if writer.write_all(head).await.is_err() {
        return (false, started.elapsed());
    }
    let dripping = tokio::spawn(async move {
        for _ in 0..4000 {
            if writer.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(GIVE_UP, reader.read_to_end(&mut answer)).await;
    dripping.abort();
    (answer.starts_with(b"HTTP/1.1 408"), started.elapsed())
}

/// Peak RSS (KiB) and slowest `GET /healthz` while `work` runs, sampled every 100 ms.
async fn observe<F: std::future::Future>(sidecar: &Sidecar, work: F) -> (F::Output, u64, Duration) {
    let pid = sidecar.pid();
    let http = sidecar.http;
    let seen = Arc::new(Mutex::new((rss_kib(pid), Duration::ZERO)));
    let sampler = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let rss = rss_kib(pid);
                let took = get(http).await.unwrap_or(Duration::MAX);
                {
                    let mut seen = seen.lock().expect("lock");
                    seen.0 = seen.0.max(rss);
                    seen.1 = seen.1.max(took);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let output = work.await;
    sampler.abort();
    let (peak, slowest) = *seen.lock().expect("lock");
    (output, peak.max(rss_kib(pid)), slowest)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Connect `CLIENTS` silent clients to `addr`; how long until the server closed each.
async fn idle_clients(addr: SocketAddr) -> Vec<Duration> {
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(async move {
                let started = Instant::now();
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    return Duration::ZERO;
                };
                let mut buf = [0u8; 256];
                let _ = tokio::time::timeout(GIVE_UP, async {
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
                started.elapsed()
            })
        })
        .collect();
    let mut closed = Vec::new();
    for client in clients {
        closed.push(client.await.expect("client"));
    }
    closed
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        // `cargo bench -- --list`: nothing to list.
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");

    let sidecar = Sidecar::start(dir.path()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(sidecar.pid());
    let http = sidecar.http;
    let (results, peak, slowest) = observe(&sidecar, async {
        let clients: Vec<_> = (0..CLIENTS).map(|_| tokio::spawn(drip(http))).collect();
        let mut results = Vec::new();
        for client in clients {
            results.push(client.await.expect("client"));
        }
        results
    })
    .await;
    let cut = results.iter().filter(|(answered, _)| *answered).count();
    let longest = results
        .iter()
        .map(|(_, took)| *took)
        .max()
        .unwrap_or_default();
    println!(
        "drip: {CLIENTS} clients dripping 1 B / 20 ms into POST /attest: {cut} answered 408, longest held {:.2} s",
        longest.as_secs_f64()
    );
    println!(
        "drip: rss idle {:.1} MiB, peak {:.1} MiB (+{:.1}), after {:.1} MiB; slowest GET /healthz meanwhile {:.1} ms",
        mib(idle),
        mib(peak),
        mib(peak.saturating_sub(idle)),
        mib(rss_kib(sidecar.pid())),
        slowest.as_secs_f64() * 1e3
    );

    let before = rss_kib(sidecar.pid());
    let (api, egress) = (sidecar.api, sidecar.egress);
    let (closed, peak, slowest) = observe(&sidecar, async {
        let (a, b, c) = tokio::join!(idle_clients(http), idle_clients(api), idle_clients(egress));
        [a, b, c]
    })
    .await;
    for (name, closed) in ["http", "api", "egress"].iter().zip(&closed) {
        let longest = closed.iter().max().copied().unwrap_or_default();
        let open = closed.iter().filter(|took| **took >= GIVE_UP).count();
        println!(
            "idle: {CLIENTS} silent connections to {name}: longest {:.2} s, {open} still open at {} s",
            longest.as_secs_f64(),
            GIVE_UP.as_secs()
        );
    }
    println!(
        "idle: rss before {:.1} MiB, peak {:.1} MiB (+{:.1}); slowest GET /healthz meanwhile {:.1} ms",
        mib(before),
        mib(peak),
        mib(peak.saturating_sub(before)),
        slowest.as_secs_f64() * 1e3
    );
    sidecar.stop().await;
}
