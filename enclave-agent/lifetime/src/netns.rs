//! A network namespace of a child's own: empty but for a loopback interface that is up, as a
//! Nitro enclave has no network but its vsock.
//!
//! The development runtime runs the agent (and so every control-plane process it starts, which
//! inherit the namespace) in such a namespace, so that a hidden network dependency fails in
//! development as it would in an enclave. The namespace is made by the tether's exec mode
//! ([`crate::Tether::with_new_network`]) between fork and exec, in the child's single thread:
//! [`isolate`] calls `unshare(CLONE_NEWNET)` and then sends the kernel the netlink request
//! `ip link set lo up` sends (`RTM_NEWLINK` with `IFF_UP` for interface index 1, which the
//! kernel gives the loopback of every namespace). No bind mount names the namespace, so it
//! ends with the last process in it: nothing is left behind when the agent and its control
//! plane are gone.
//!
//! Making a namespace needs `CAP_SYS_ADMIN` (root). [`probe`] tells, in one line, whether this
//! machine can, by running a helper binary in [`PROBE_MODE`] (a fresh process: a threaded one
//! must not unshare its own namespace).

use std::ffi::OsStr;
use std::os::fd::AsRawFd as _;
use std::path::Path;

use nix::libc;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto, socket,
};

use crate::{LifetimeError, Result};

/// The hidden first argument that makes a helper binary (one whose `main` calls
/// [`crate::exec_if_requested`]) create a network namespace, bring its loopback up, and exit:
/// status 0 when it could, else 1 after one line on standard error.
pub const PROBE_MODE: &str = "__probe-new-network";

/// The loopback's interface index in every network namespace (`LOOPBACK_IFINDEX`).
const LOOPBACK_INDEX: i32 = 1;
/// Sequence number of the one request.
const SEQUENCE: u32 = 1;

/// Move the calling thread (in the helper: the whole single-threaded process) into a new,
/// empty network namespace and bring its loopback up. Only for a process that is about to
/// exec: a threaded process would split its threads across namespaces.
pub fn isolate() -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| {
        format!(
            "cannot create a network namespace (unshare: {errno}); it needs root (CAP_SYS_ADMIN)"
        )
    })?;
    loopback_up().map_err(|reason| {
        format!("cannot bring the loopback up in the new network namespace: {reason}")
    })
}

/// `ip link set lo up`, as one netlink request with an acknowledgement.
fn loopback_up() -> Result<(), String> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )
    .map_err(|errno| format!("netlink socket: {errno}"))?;
    let request = link_up_request(LOOPBACK_INDEX);
    sendto(
        fd.as_raw_fd(),
        &request,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(|errno| format!("netlink send: {errno}"))?;
    let mut answer = [0u8; 512];
    let n = recv(fd.as_raw_fd(), &mut answer, MsgFlags::empty())
        .map_err(|errno| format!("netlink receive: {errno}"))?;
    parse_ack(answer.get(..n).unwrap_or_default())
}

/// `RTM_NEWLINK` setting `IFF_UP` on interface `index`, asking for an acknowledgement:
/// `nlmsghdr` (16 bytes) then `ifinfomsg` (16 bytes), in host byte order.
fn link_up_request(index: i32) -> Vec<u8> {
    const LEN: u32 = 32;
    let mut msg = Vec::with_capacity(LEN as usize);
    // nlmsghdr: length, type, flags, sequence, port id (0: the kernel fills it in).
    msg.extend(LEN.to_ne_bytes());
    msg.extend(libc::RTM_NEWLINK.to_ne_bytes());
    msg.extend(((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    msg.extend(SEQUENCE.to_ne_bytes());
    msg.extend(0u32.to_ne_bytes());
    // ifinfomsg: family, padding, device type, index, flags, change mask.
    msg.push(libc::AF_UNSPEC as u8);
    msg.push(0);
    msg.extend(0u16.to_ne_bytes());
    msg.extend(index.to_ne_bytes());
    msg.extend((libc::IFF_UP as u32).to_ne_bytes());
    msg.extend((libc::IFF_UP as u32).to_ne_bytes());
    msg
}

/// The kernel's answer to [`link_up_request`]: an `NLMSG_ERROR` message whose error is 0 (an
/// acknowledgement) for our sequence number. Anything else is refused, with the errno when the
/// kernel sent one.
fn parse_ack(answer: &[u8]) -> Result<(), String> {
    let u32_at = |at: usize| {
        answer
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_ne_bytes)
    };
    let u16_at = |at: usize| {
        answer
            .get(at..at + 2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_ne_bytes)
    };
    let (Some(len), Some(kind), Some(seq), Some(error)) =
        (u32_at(0), u16_at(4), u32_at(8), u32_at(16))
    else {
        return Err(format!("short netlink answer ({} bytes)", answer.len()));
    };
    if usize::try_from(len).map_or(true, |len| len > answer.len() || len < 20) {
        return Err(format!(
            "netlink answer of {} bytes claims {len}",
            answer.len()
        ));
    }
    if i32::from(kind) != libc::NLMSG_ERROR {
        return Err(format!(
            "netlink answer of type {kind}, not an acknowledgement"
        ));
    }
    if seq != SEQUENCE {
        return Err(format!("netlink answer to request {seq}, not {SEQUENCE}"));
    }
    match i32::from_ne_bytes(error.to_ne_bytes()) {
        0 => Ok(()),
        negative => Err(format!(
            "the kernel refused: {}",
            nix::errno::Errno::from_raw(negative.saturating_neg())
        )),
    }
}

/// Called by [`crate::exec_if_requested`] in [`PROBE_MODE`]: never returns.
pub(crate) fn probe_mode() -> ! {
    match isolate() {
        Ok(()) => std::process::exit(0),
        Err(reason) => {
            eprintln!("{reason}");
            std::process::exit(1)
        }
    }
}

/// Whether this machine lets `helper` (a binary whose `main` calls
/// [`crate::exec_if_requested`], such as `nautilus-sidecar` or `nautilus-agent`) make a network
/// namespace with its loopback up: runs `helper` [`PROBE_MODE`] and waits for it. The error
/// says why not in one line.
pub async fn probe(helper: &Path) -> Result<()> {
    let output = tokio::process::Command::new(helper)
        .arg(OsStr::new(PROBE_MODE))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| LifetimeError::NotFound {
            program: helper.display().to_string(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let reason = stderr
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .map_or_else(
            || {
                format!(
                    "{} {PROBE_MODE} exited with {}",
                    helper.display(),
                    output.status
                )
            },
            |line| line.trim().chars().take(300).collect(),
        );
    Err(LifetimeError::Isolation { reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_the_one_ip_link_sends() {
        let request = link_up_request(1);
        assert_eq!(request.len(), 32);
        assert_eq!(&request[0..4], &32u32.to_ne_bytes());
        assert_eq!(&request[4..6], &16u16.to_ne_bytes(), "RTM_NEWLINK");
        assert_eq!(
            &request[6..8],
            &5u16.to_ne_bytes(),
            "NLM_F_REQUEST | NLM_F_ACK"
        );
        assert_eq!(&request[20..24], &1i32.to_ne_bytes(), "lo");
        assert_eq!(&request[24..28], &1u32.to_ne_bytes(), "IFF_UP");
        assert_eq!(&request[28..32], &1u32.to_ne_bytes(), "change IFF_UP");
    }

    fn answer(kind: u16, seq: u32, error: i32) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend(36u32.to_ne_bytes());
        a.extend(kind.to_ne_bytes());
        a.extend(0u16.to_ne_bytes());
        a.extend(seq.to_ne_bytes());
        a.extend(0u32.to_ne_bytes());
        a.extend(error.to_ne_bytes());
        a.extend([0u8; 16]);
        a
    }

    #[test]
    fn only_an_acknowledgement_of_our_request_is_success() {
        assert_eq!(parse_ack(&answer(2, 1, 0)), Ok(()));
        let refused = parse_ack(&answer(2, 1, -1)).expect_err("EPERM");
        assert!(refused.contains("EPERM"), "{refused}");
        assert!(parse_ack(&answer(16, 1, 0)).is_err(), "not NLMSG_ERROR");
        assert!(parse_ack(&answer(2, 7, 0)).is_err(), "another request");
        assert!(parse_ack(&answer(2, 1, 0)[..12]).is_err(), "short");
        assert!(parse_ack(&[]).is_err());
        let mut lying = answer(2, 1, 0);
        lying[0..4].copy_from_slice(&4096u32.to_ne_bytes());
        assert!(parse_ack(&lying).is_err(), "length beyond the answer");
    }
}
