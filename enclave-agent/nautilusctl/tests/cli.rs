//! Runs the built `nautilusctl` binary: exit codes, JSON output, simulate → verify.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nautilus_test_support::nitro_dir;
use serde_json::Value;

fn nautilusctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nautilusctl"))
        .args(args)
        .output()
        .expect("binary runs")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).expect("json on stdout")
}

/// A production (non-debug) real document and its manifest entry.
fn prod_document(dir: &Path) -> (PathBuf, Value) {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let entry = manifest["documents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["verified_at_timestamp"] == true && d["debug_mode"] == false)
        .expect("a production document")
        .clone();
    (dir.join(entry["file"].as_str().unwrap()), entry)
}

fn manifest_hex(entry: &Value, key: &str) -> Value {
    match entry[key].as_str().unwrap() {
        "null" => Value::Null,
        hex => Value::String(hex.to_owned()),
    }
}

#[test]
fn real_document_verifies_at_its_timestamp_with_json_fields() {
    let Some(dir) = nitro_dir() else { return };
    let (file, entry) = prod_document(&dir);
    let file = file.to_str().unwrap();
    let pcr0 = entry["pcr0"].as_str().unwrap();
    let out = nautilusctl(&[
        "attestation",
        "verify",
        file,
        "--at",
        "doc",
        "--pcr0",
        pcr0,
        "--output",
        "json",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["valid"], true);
    assert_eq!(report["error"], Value::Null);
    assert_eq!(report["module_id"], entry["module_id"]);
    assert_eq!(report["timestamp_ms"], entry["timestamp_ms"]);
    assert_eq!(report["digest"], "SHA384");
    assert_eq!(report["debug_mode"], false);
    for index in ["0", "1", "2", "8"] {
        assert_eq!(
            report["pcrs"][index],
            entry[format!("pcr{index}")],
            "pcr{index}"
        );
    }
    assert_eq!(report["public_key"], manifest_hex(&entry, "public_key_hex"));
    assert_eq!(report["user_data"], manifest_hex(&entry, "user_data_hex"));
    assert_eq!(report["nonce"], manifest_hex(&entry, "nonce_hex"));
}

#[test]
fn real_document_is_invalid_now() {
    let Some(dir) = nitro_dir() else { return };
    let (file, _) = prod_document(&dir);
    let out = nautilusctl(&[
        "attestation",
        "verify",
        file.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert_eq!(code(&out), 1);
    let report = json(&out);
    assert_eq!(report["valid"], false);
    assert!(
        report["error"].as_str().unwrap().contains("expired"),
        "{report}"
    );
    assert!(stderr(&out).contains("expired"));
}

#[test]
fn policy_failures_exit_1_with_the_reason() {
    let Some(dir) = nitro_dir() else { return };
    let (file, _) = prod_document(&dir);
    let file = file.to_str().unwrap();
    let out = nautilusctl(&[
        "attestation",
        "verify",
        file,
        "--at",
        "doc",
        "--pcr0",
        &"00".repeat(48),
    ]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("pcr0 mismatch"), "{}", stderr(&out));

    let out = nautilusctl(&[
        "attestation",
        "verify",
        file,
        "--at",
        "doc",
        "--nonce",
        "abcd",
    ]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("nonce"), "{}", stderr(&out));
}

#[test]
fn debug_documents_need_allow_debug() {
    let Some(dir) = nitro_dir() else { return };
    let file = dir.join("uid2-debug-minimal-2021-04-26.cbor");
    let file = file.to_str().unwrap();
    let out = nautilusctl(&["attestation", "verify", file, "--at", "doc"]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("debug mode"), "{}", stderr(&out));
    let out = nautilusctl(&[
        "attestation",
        "verify",
        file,
        "--at",
        "doc",
        "--allow-debug",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn hex_and_base64_copies_are_accepted() {
    use base64::Engine;
    let Some(dir) = nitro_dir() else { return };
    let (file, _) = prod_document(&dir);
    let raw = std::fs::read(&file).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
    let wrapped: Vec<String> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    for (name, text) in [
        ("doc.hex", hex::encode(&raw)),
        ("doc.b64", wrapped.join("\n")),
    ] {
        let path = tmp.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = nautilusctl(&[
            "attestation",
            "verify",
            path.to_str().unwrap(),
            "--at",
            "doc",
        ]);
        assert_eq!(code(&out), 0, "{name}: {}", stderr(&out));
    }
}

#[test]
fn usage_errors_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let doc = tmp.path().join("doc");
    std::fs::write(&doc, b"x").unwrap();
    let doc = doc.to_str().unwrap();
    for args in [
        vec!["attestation", "verify", doc, "--pcr0", "not-hex"],
        vec!["attestation", "verify", doc, "--nonce", "abc"],
        vec!["attestation", "verify", doc, "--at", "yesterday"],
        vec!["attestation", "verify", "/nonexistent/doc.cbor"],
        vec![
            "attestation",
            "verify",
            doc,
            "--root",
            "/nonexistent/root.pem",
        ],
        vec!["attestation", "verify", doc, "--root", doc],
        vec!["attestation", "frobnicate"],
    ] {
        let out = nautilusctl(&args);
        assert_eq!(code(&out), 2, "{args:?}: {}", stderr(&out));
    }
    // Readable but not a document: invalid, not a usage error.
    let out = nautilusctl(&["attestation", "verify", doc]);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
}

#[test]
fn simulate_then_verify_with_the_written_root() {
    let tmp = tempfile::tempdir().unwrap();
    let doc = tmp.path().join("sim.cbor");
    let root = tmp.path().join("root.pem");
    let (doc, root) = (doc.to_str().unwrap(), root.to_str().unwrap());
    let pcr0 = "ab".repeat(48);
    let out = nautilusctl(&[
        "attestation",
        "simulate",
        "--out",
        doc,
        "--root-out",
        root,
        "--pcr0",
        &pcr0,
        "--nonce",
        "c0ffee",
        "--user-data",
        "",
        "--public-key",
        "0102",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));

    let out = nautilusctl(&[
        "attestation",
        "verify",
        doc,
        "--root",
        root,
        "--pcr0",
        &pcr0,
        "--nonce",
        "c0ffee",
        "--max-age",
        "300",
        "--output",
        "json",
    ]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report = json(&out);
    assert_eq!(report["pcrs"]["0"], pcr0.as_str());
    assert_eq!(report["nonce"], "c0ffee");
    assert_eq!(report["user_data"], "", "empty, not null");
    assert_eq!(report["public_key"], "0102");

    // The default (AWS) root refuses it.
    let out = nautilusctl(&["attestation", "verify", doc, "--pcr0", &pcr0]);
    assert_eq!(code(&out), 1);
    assert!(stderr(&out).contains("untrusted root"), "{}", stderr(&out));

    // A PCR of the wrong length is a usage error.
    let out = nautilusctl(&[
        "attestation",
        "simulate",
        "--out",
        doc,
        "--root-out",
        root,
        "--pcr1",
        "00",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}

/// Run nautilusctl with `args` and its output pipe closed before it writes (`… | head -1`, the
/// reader gone early); returns its exit status and standard error.
fn with_closed_output(args: &[&std::ffi::OsStr]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nautilusctl"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nautilusctl starts");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("nautilusctl ends");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (output.status, stderr)
}

#[test]
fn a_closed_output_pipe_ends_the_command_quietly() {
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    with_closed_output(&[os("attestation"), os("simulate"), os("--help")]);
    let Some(dir) = nitro_dir() else { return };
    let doc = dir.join("evervault-debug-userdata-2023-09-18.cbor");
    let (status, stderr) = with_closed_output(&[
        os("attestation"),
        os("verify"),
        os("--at"),
        os("doc"),
        os("--allow-debug"),
        doc.as_os_str(),
    ]);
    assert!(status.success(), "{status:?}: {stderr}");
}
