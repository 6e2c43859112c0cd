//! The agent binary's command line: JSON logs, and errors before anything runs.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nautilus-agent"))
        .args([
            "--log-format",
            "json",
            "--nsm",
            "simulated",
            "--egress-proxy",
            "none",
        ])
        .arg("--listen")
        .arg(format!("unix:{}", dir.path().join("a.sock").display()))
        .arg("--api-listen")
        .arg(format!("unix:{}", dir.path().join("b.sock").display()))
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut listening = None;
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("utf-8 line");
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if value["fields"]["message"] == "agent listening" {
            listening = Some(value);
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let listening = listening.expect("the agent says where it listens");
    assert_eq!(listening["level"], "INFO");
    assert!(
        listening["fields"]["listen"]
            .as_str()
            .is_some_and(|s| s.ends_with("a.sock")),
        "{listening}"
    );
}

#[test]
fn bad_flags_fail_before_anything_runs() {
    for (args, needle) in [
        (
            vec!["--simulated-pcr", "0=00"],
            "--simulated-pcr and --simulated-root-key need --nsm simulated",
        ),
        (
            vec!["--nsm", "simulated", "--simulated-pcr", "0=00"],
            "invalid --simulated-pcr",
        ),
        (
            vec!["--egress-proxy", "http://proxy:8080"],
            "invalid endpoint",
        ),
        (vec!["--listen", "vsock://x"], "invalid endpoint"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_nautilus-agent"))
            .args(&args)
            .args(["--work-dir", "/nonexistent/never-created"])
            .output()
            .expect("runs");
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
