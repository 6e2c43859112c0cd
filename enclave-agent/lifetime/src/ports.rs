//! Ports for the processes of a development enclave on a shared host: picked free, below the
//! kernel's ephemeral range.
//!
//! A port the kernel picks (`bind(0)`) comes from the ephemeral range, where every outgoing
//! connection on the host also takes its source port. Between being picked and being bound by
//! the component it is for, such a port can become the source port of another connection, or a
//! dial to it can connect to itself (TCP simultaneous open). Both were seen here: a controller
//! manager failing "address already in use" for minutes, an etcd probe answered by its own
//! connection. Below the range no source port can take it. The operator's local runtime picks
//! its sidecars' and components' ports here, and the tests that start real components do too.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::net::{IpAddr, Ipv4Addr, TcpListener};

/// Where [`free_port_on`] picks: from here up to [`PICK_BELOW`] or the ephemeral range,
/// whichever is lower.
pub const PICK_FROM: u16 = 20_000;
/// Kubernetes' NodePort range starts here: a kube-proxy on this host would intercept a port of
/// it whether or not anything bound it.
pub const PICK_BELOW: u16 = 30_000;
/// Ports tried before falling back to one the kernel picks.
const PICK_TRIES: u16 = 64;

/// A free TCP port on 127.0.0.1 (see [`free_port_on`]).
pub fn free_port() -> std::io::Result<u16> {
    free_port_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// A free TCP port on `ip` (bound and released: whoever it is for binds it next), from
/// [`PICK_FROM`] up to the lower of [`PICK_BELOW`] and the start of the ephemeral range, tried
/// from a random start; the kernel's pick when that span is too small or every try is taken.
pub fn free_port_on(ip: IpAddr) -> std::io::Result<u16> {
    let below = ephemeral_low().unwrap_or(32_768).min(PICK_BELOW);
    if let Some(span) = below
        .checked_sub(PICK_FROM)
        .filter(|span| *span > PICK_TRIES)
    {
        // Random enough to keep concurrent pickers apart; nothing here is a secret.
        let start = RandomState::new().build_hasher().finish() % u64::from(span);
        for i in 0..PICK_TRIES {
            // A prime stride: the tries spread over the span instead of a run of neighbours.
            let offset = (start + u64::from(i) * 7_919) % u64::from(span);
            let port = PICK_FROM + u16::try_from(offset).unwrap_or(0);
            if TcpListener::bind((ip, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// The first port of the kernel's ephemeral range (`net.ipv4.ip_local_port_range`).
pub fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Picked ports are free and, where the ephemeral range starts above the NodePort range
    /// (Linux's default 32768), below both.
    #[test]
    fn free_ports_are_picked_below_the_ephemeral_range() {
        let below = ephemeral_low()
            .expect("ip_local_port_range")
            .min(PICK_BELOW);
        for _ in 0..20 {
            let port = free_port().expect("a free port");
            if below > PICK_FROM + PICK_TRIES {
                assert!((PICK_FROM..below).contains(&port), "{port}");
            }
            TcpListener::bind(("127.0.0.1", port)).expect("still free");
        }
    }
}
