//! What the sidecar's API proxy costs a real client of a real kube-apiserver, on a kept
//! connection: the same authenticated requests straight to kube-apiserver, through the
//! sidecar's proxy ([`nautilus_sidecar::proxy::serve_api`], bytes only: TLS stays end to end),
//! and through socat (a C relay, the peer; skipped with a line when socat is not on `PATH`).
//!
//! The loopback echo of `nautilus-sidecar`'s own `proxy` bench shows the relay's fixed cost per
//! round trip; this one shows what that cost is worth against the work of an API server.
//!
//! ```text
//! cargo bench -p nautilus-e2e --bench api_proxy
//! ```
//!
//! Needs etcd and kube-apiserver from `$KUBEBUILDER_ASSETS` (the e2e suite's throwaway control
//! plane); without them it prints one skip line.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use kube::Client;
use nautilus_e2e::envtest::{Assets, ControlPlane, free_port};
use nautilus_protocol::bounded::{BoundedListener, Limits, Unobserved};
use nautilus_protocol::transport::{self, Endpoint};
use nautilus_sidecar::metrics::Metrics;
use nautilus_sidecar::proxy;
use tokio::runtime::Runtime;

/// The requests: the cheapest authenticated answer, and a small namespaced list.
const REQUESTS: [(&str, &str); 2] = [
    ("version", "/version"),
    ("list", "/api/v1/namespaces/kube-system/configmaps?limit=10"),
];

fn runtime(workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime")
}

/// socat relaying a free loopback port to `upstream`, killed on drop.
struct Socat(Child);

impl Drop for Socat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn socat(upstream: SocketAddr) -> Option<(Socat, SocketAddr)> {
    let port = free_port().expect("free port");
    let child = Command::new("socat")
        .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
        .arg(format!("TCP:{upstream}"))
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(child) => {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = Instant::now() + Duration::from_secs(5);
            while std::net::TcpStream::connect(addr).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            Some((Socat(child), addr))
        }
        Err(e) => {
            println!("skipped: socat rows: socat could not be started ({e}); install socat");
            None
        }
    }
}

/// The sidecar's API proxy on a free loopback port, on `rt`, with the sidecar's limits.
fn sidecar_proxy(rt: &Runtime, upstream: SocketAddr) -> SocketAddr {
    rt.block_on(async {
        let listener = transport::bind(&Endpoint::Tcp("127.0.0.1:0".into()))
            .await
            .expect("bind proxy");
        let Endpoint::Tcp(bound) = listener.endpoint().clone() else {
            panic!("a TCP listener has a TCP endpoint");
        };
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
            Endpoint::Tcp(upstream.to_string()),
            Arc::new(Metrics::new()),
            None,
            None,
        ));
        bound.parse().expect("bound address")
    })
}

/// An admin client of `plane` that dials `addr` instead of the API server itself (the serving
/// certificate names 127.0.0.1, so TLS verifies through either relay).
async fn client_via(plane: &ControlPlane, addr: SocketAddr) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&plane.kubeconfig).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    config.cluster_url = format!("https://{addr}").parse().expect("url");
    Client::try_from(config).expect("client")
}

async fn get(client: &Client, path: &str) {
    let request = http::Request::get(path).body(Vec::new()).expect("request");
    client.request_text(request).await.expect("answer");
}

fn bench(c: &mut Criterion) {
    let assets = match Assets::find() {
        Ok(assets) => assets,
        Err(missing) => {
            println!("skipped: api_proxy: {missing}");
            return;
        }
    };
    let rt = runtime(1);
    let proxy_rt = runtime(2);
    let plane = rt
        .block_on(ControlPlane::start(&assets))
        .expect("control plane");
    let api: SocketAddr = plane
        .server
        .trim_start_matches("https://")
        .parse()
        .expect("server address");
    let via_proxy = sidecar_proxy(&proxy_rt, api);
    let relay = socat(api);
    let mut paths = vec![("direct", api), ("proxy", via_proxy)];
    if let Some((_, addr)) = &relay {
        paths.push(("socat", *addr));
    }
    let clients: Vec<(&str, Client)> = paths
        .iter()
        .map(|&(name, addr)| (name, rt.block_on(client_via(&plane, addr))))
        .collect();

    for (request, path) in REQUESTS {
        let mut group = c.benchmark_group(format!("api_server_{request}"));
        for (name, client) in &clients {
            // One request first, so the kept connection (and its TLS session) exists.
            rt.block_on(get(client, path));
            group.bench_function(*name, |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            get(client, path).await;
                        }
                        start.elapsed()
                    })
                });
            });
        }
        group.finish();
    }
    drop(relay);
    drop(plane);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = bench
}

criterion_main!(benches);
