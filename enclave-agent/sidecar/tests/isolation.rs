//! `--isolate-network`: the process launcher runs the agent in a network namespace of its own,
//! loopback only, through the tether's helper (here the real `nautilus-sidecar` binary), so the
//! agent still dies with its parent and the namespace ends with it.
//!
//! Needs root (a network namespace); elsewhere each test prints one skip line, and fails under
//! `NAUTILUS_E2E_REQUIRE=1`.

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use nautilus_lifetime::Tether;
use nautilus_protocol::transport::Endpoint;
use nautilus_sidecar::launcher::{LaunchError, Launcher as _, ProcessLauncher};
use nautilus_test_support::{in_net_namespace_of, net_namespace, processes_in_net_namespace};

const HELPER: &str = env!("CARGO_BIN_EXE_nautilus-sidecar");

/// Whether network namespaces can be made here; prints the one skip line when not.
async fn can_isolate() -> bool {
    match nautilus_lifetime::netns::probe(Path::new(HELPER)).await {
        Ok(()) => true,
        Err(err) => {
            assert!(
                std::env::var_os("NAUTILUS_E2E_REQUIRE").is_none_or(|v| v != "1"),
                "NAUTILUS_E2E_REQUIRE=1 but no network namespace can be made: {err}"
            );
            println!("skipped: no network namespace can be made here ({err})");
            false
        }
    }
}

/// The pid's program once the helper exec'd it (`comm` is the helper's name until then).
async fn wait_for_exec(pid: u32, comm: &str) {
    let deadline = tokio::time::Instant::now() + common::STEP;
    loop {
        let now = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if now.trim() == comm {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pid} is still {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_agent_sees_only_its_own_loopback_and_leaves_no_namespace() {
    if !can_isolate().await {
        return;
    }
    // A service on the host's loopback, which the agent must not reach.
    let host = TcpListener::bind("127.0.0.1:0").expect("bind");
    let host_addr = host.local_addr().expect("addr");
    let launcher = ProcessLauncher::new("sleep", vec!["300".to_owned()])
        .with_tether(Tether::through(HELPER))
        .with_isolated_network();
    let info = launcher.start().await.expect("starts");
    let pid: u32 = info
        .enclave_id
        .expect("pid")
        .parse()
        .expect("a pid is a number");
    wait_for_exec(pid, "sleep").await;

    let ours = net_namespace(std::process::id()).expect("our namespace");
    let theirs = net_namespace(pid).expect("its namespace");
    assert_ne!(ours, theirs, "the agent shares the host's network");

    let seen = in_net_namespace_of(pid, move || {
        // /proc/thread-self/net is this thread's namespace.
        let interfaces: Vec<String> = std::fs::read_to_string("/proc/thread-self/net/dev")
            .expect("net/dev")
            .lines()
            .skip(2)
            .filter_map(|line| line.split(':').next().map(|i| i.trim().to_owned()))
            .collect();
        let host = TcpStream::connect_timeout(&host_addr, Duration::from_secs(2)).map(|_| ());
        // Its own loopback is up: a listener on 127.0.0.1 answers.
        let own = TcpListener::bind("127.0.0.1:0").and_then(|listener| {
            let addr: SocketAddr = listener.local_addr()?;
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            Ok(())
        });
        (interfaces, host, own)
    })
    .expect("join the namespace");
    let (interfaces, host_dial, own_dial) = seen;
    assert_eq!(interfaces, ["lo"], "only a loopback");
    assert!(
        host_dial.is_err(),
        "the host's 127.0.0.1:{} is reachable from the agent's namespace",
        host_addr.port()
    );
    assert!(own_dial.is_ok(), "its loopback is not up: {own_dial:?}");

    launcher.stop().await.expect("stops");
    assert!(
        processes_in_net_namespace(theirs).is_empty(),
        "a process is left in the agent's namespace"
    );
    assert_eq!(net_namespace(pid), None, "the agent is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_agent_dies_with_the_thread_that_started_it() {
    // The tether's parent-death signal is armed before the namespace is made: a sidecar that
    // dies (here: the thread that forked, as the kernel counts it) takes its isolated agent.
    if !can_isolate().await {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let launcher = ProcessLauncher::new("sleep", vec!["300".to_owned()])
                .with_tether(Tether::through(HELPER))
                .with_isolated_network();
            let info = launcher.start().await.expect("starts");
            let pid: u32 = info.enclave_id.expect("pid").parse().expect("number");
            wait_for_exec(pid, "sleep").await;
            tx.send((pid, net_namespace(pid).expect("namespace")))
                .expect("send");
            // Not stopped: the launcher is forgotten, so only the kernel can end the agent.
            std::mem::forget(launcher);
        });
    })
    .join()
    .expect("the starting thread");
    let (pid, namespace) = rx.recv().expect("pid");
    let deadline = std::time::Instant::now() + common::STEP;
    while !processes_in_net_namespace(namespace).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the isolated agent {pid} outlived the thread that started it"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn an_untethered_launcher_refuses_to_isolate_rather_than_share_the_network() {
    let launcher =
        ProcessLauncher::new("sleep", vec!["300".to_owned()]).with_tether(Tether::untethered());
    assert!(
        launcher
            .with_isolated_network()
            .start()
            .await
            .is_err_and(|e| matches!(e, LaunchError::Isolation(_))),
        "started without a namespace"
    );
}

#[tokio::test]
async fn isolation_needs_unix_endpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    let boot = common::write_boot_config(dir.path(), &common::boot_config(1));
    let agent = Endpoint::Unix(dir.path().join("agent.sock"));
    // The egress proxy on TCP: an isolated agent could not reach it.
    let err = nautilus_sidecar::start(common::args(
        &boot,
        &agent,
        &format!("unix:{}", dir.path().join("api.sock").display()),
        &["--isolate-network"],
    ))
    .await
    .expect_err("refused");
    assert!(
        err.to_string()
            .contains("--egress-listen must be a unix: endpoint"),
        "{err}"
    );
}
