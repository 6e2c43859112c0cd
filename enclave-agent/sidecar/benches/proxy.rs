//! The API proxy path (client → sidecar → enclave) against a direct connection, and against
//! socat (a C relay, the peer), over Unix sockets standing in for vsock: small
//! request/response round trips on a kept-alive connection, a fresh connection with one round
//! trip, and 1 MiB bulk transfers.
//!
//! The echo server (the enclave's API server, as far as bytes go), the sidecar's proxy and the
//! client each run on a runtime of their own, as three processes would: a proxy sharing the
//! client's runtime would be woken on the same worker and look cheaper than it is. socat runs
//! as a child process (`fork`, one process per connection) when it is on `PATH`; otherwise its
//! rows are skipped with a line saying so.
//!
//! `cargo bench -p nautilus-sidecar --bench proxy -- --quick`

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nautilus_protocol::bounded::{BoundedListener, Limits, Unobserved};
use nautilus_protocol::transport::{self, BoxedStream, Endpoint};
use nautilus_sidecar::metrics::Metrics;
use nautilus_sidecar::proxy;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::runtime::Runtime;

const SMALL: usize = 256;
const BULK: usize = 1024 * 1024;

fn runtime(workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
}

/// An echo server on a Unix socket, on `rt`.
fn echo(rt: &Runtime, path: &Path) -> Endpoint {
    rt.block_on(async {
        let listener = transport::bind(&Endpoint::Unix(path.to_owned()))
            .await
            .expect("bind echo");
        let endpoint = listener.endpoint().clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(stream);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        endpoint
    })
}

/// The sidecar's API proxy from `path` to `upstream`, on `rt`, with the sidecar's limits.
fn sidecar_proxy(rt: &Runtime, path: &Path, upstream: &Endpoint) -> Endpoint {
    rt.block_on(async {
        let listener = transport::bind(&Endpoint::Unix(path.to_owned()))
            .await
            .expect("bind proxy");
        let proxied = listener.endpoint().clone();
        let listener = BoundedListener::new(
            listener,
            "api",
            Limits {
                idle_timeout: Duration::from_secs(1800),
                ..Limits::api(1024)
            },
            Arc::new(Unobserved),
        );
        tokio::spawn(proxy::serve_api(
            listener,
            upstream.clone(),
            Arc::new(Metrics::new()),
            None,
            None,
        ));
        proxied
    })
}

/// socat relaying `path` to `upstream`, killed on drop.
struct Socat {
    child: Child,
    endpoint: Endpoint,
}

impl Socat {
    fn start(path: &Path, upstream: &Path) -> Option<Self> {
        let child = Command::new("socat")
            .arg(format!("UNIX-LISTEN:{},fork", path.display()))
            .arg(format!("UNIX-CONNECT:{}", upstream.display()))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => {
                println!("skipped: socat rows: socat could not be started ({e}); install socat");
                return None;
            }
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !path.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Self {
            child,
            endpoint: Endpoint::Unix(PathBuf::from(path)),
        })
    }
}

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn round_trip(stream: &mut BoxedStream, message: &[u8], buf: &mut [u8]) {
    stream.write_all(message).await.expect("write");
    stream.read_exact(buf).await.expect("read");
}

async fn bulk(stream: BoxedStream, data: Arc<Vec<u8>>) -> BoxedStream {
    let (mut r, mut w) = tokio::io::split(stream);
    let writer = async {
        w.write_all(&data).await.expect("write");
    };
    let reader = async {
        let mut back = vec![0u8; data.len()];
        r.read_exact(&mut back).await.expect("read");
    };
    tokio::join!(writer, reader);
    r.unsplit(w)
}

fn bench(c: &mut Criterion) {
    let rt = runtime(1);
    let upstream_rt = runtime(1);
    let proxy_rt = runtime(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let api = dir.path().join("api.sock");
    let direct = echo(&upstream_rt, &api);
    let via_proxy = sidecar_proxy(&proxy_rt, &dir.path().join("proxy.sock"), &direct);
    let socat = Socat::start(&dir.path().join("socat.sock"), &api);
    let mut paths = vec![("direct", &direct), ("proxy", &via_proxy)];
    if let Some(socat) = &socat {
        paths.push(("socat", &socat.endpoint));
    }

    let message = vec![0x17u8; SMALL];
    let mut group = c.benchmark_group("api_proxy_rtt");
    group.throughput(Throughput::Elements(1));
    for &(name, endpoint) in &paths {
        group.bench_function(format!("{name}/{SMALL}B"), |b| {
            let mut stream = rt.block_on(transport::connect(endpoint)).expect("connect");
            let mut buf = vec![0u8; SMALL];
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        round_trip(&mut stream, &message, &mut buf).await;
                    }
                    start.elapsed()
                })
            });
        });
        group.bench_function(format!("{name}/connect+{SMALL}B"), |b| {
            let mut buf = vec![0u8; SMALL];
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let mut stream = transport::connect(endpoint).await.expect("connect");
                        round_trip(&mut stream, &message, &mut buf).await;
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();

    let data = Arc::new((0..BULK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let mut group = c.benchmark_group("api_proxy_bulk");
    group.throughput(Throughput::Bytes(BULK as u64));
    group.sample_size(10);
    for &(name, endpoint) in &paths {
        group.bench_function(format!("{name}/1MiB"), |b| {
            let mut stream = Some(rt.block_on(transport::connect(endpoint)).expect("connect"));
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let s = stream.take().expect("stream");
                        stream = Some(bulk(s, Arc::clone(&data)).await);
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench
}

criterion_main!(benches);
