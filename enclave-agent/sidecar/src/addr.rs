//! Addresses the sidecar is told about on its command line and checks traffic against: an
//! egress allowlist entry or CONNECT target ([`HostPort`]) and a network ([`Cidr`]), with the
//! error of a value that does not parse ([`ArgError`]). Apart from the command line itself so
//! that the proxies, which match against them, do not depend on it.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use nautilus_protocol::transport::TransportError;

/// Why a command-line value could not be parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArgError {
    /// A listen address is neither `HOST:PORT` nor an endpoint.
    #[error("invalid listen address {text:?}: expected HOST:PORT, tcp://HOST:PORT or unix:/path")]
    Listen {
        /// The text given.
        text: String,
        /// The endpoint parser's complaint, when the text had a scheme.
        #[source]
        source: Option<TransportError>,
    },
    /// An allowlist entry is not `host:port`.
    #[error("invalid --egress-allow {text:?}: {reason} (expected HOST:PORT)")]
    HostPort {
        /// The text given.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A network is not `address/prefix`.
    #[error("invalid --egress-kubelet-cidr {text:?}: {reason} (expected ADDRESS/PREFIX)")]
    Cidr {
        /// The text given.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// One `--egress-allow` entry or CONNECT target: a host (compared in canonical form, so
/// case-insensitively) and an exact port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Lower-case host name or address (IPv6 without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = ArgError;

    /// Strict: `host:port` or `[ipv6]:port`. The host is a DNS name (letters, digits and
    /// hyphens in dot-separated labels of 1 to 63, lower-cased), a dotted IPv4 address in its
    /// canonical form, or a bracketed IPv6 address (printed canonically); the port is 1 to
    /// 65535 in plain decimal. No sign, no leading zero, no user info, no trailing dot: a
    /// target that only matches an entry after lenient parsing is refused, not normalised.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| ArgError::HostPort {
            text: text.to_owned(),
            reason,
        };
        let (host, port) = match text.strip_prefix('[') {
            Some(rest) => {
                let (ip, port) = rest
                    .split_once("]:")
                    .ok_or_else(|| err("expected [IPV6]:PORT"))?;
                let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| err("not an IPv6 address"))?;
                (ip.to_string(), port)
            }
            None => {
                let (host, port) = text.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
                (canonical_host(host).map_err(err)?, port)
            }
        };
        Ok(Self {
            host,
            port: parse_port(port).map_err(err)?,
        })
    }
}

/// A host name or IPv4 address, lower-cased, or why it is not one.
fn canonical_host(host: &str) -> Result<String, &'static str> {
    if host.is_empty() {
        return Err("empty host");
    }
    if host.len() > 253 {
        return Err("host name longer than 253 characters");
    }
    let labels: Vec<&str> = host.split('.').collect();
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return Err("host name labels must be 1 to 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err("host contains a character not allowed in a host name");
        }
    }
    // A numeric last label makes it an address: it must be a canonical dotted IPv4
    // (the standard parser refuses leading zeros, octal, hex and short forms).
    if labels
        .last()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        let ip: std::net::Ipv4Addr = host
            .parse()
            .map_err(|_| "numeric host is not a canonical IPv4 address")?;
        return Ok(ip.to_string());
    }
    Ok(host.to_ascii_lowercase())
}

/// A port in plain decimal, 1 to 65535.
fn parse_port(port: &str) -> Result<u16, &'static str> {
    const BAD: &str = "port is not a number from 1 to 65535 in plain decimal";
    if port.is_empty()
        || port.len() > 5
        || port.starts_with('0')
        || !port.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(BAD);
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(BAD),
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// One `--egress-kubelet-cidr` network: an address and a prefix length, compared on the
/// address's first `prefix` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network's address (host bits may be set; they are ignored).
    pub addr: IpAddr,
    /// Prefix length: 0 to 32 for IPv4, 0 to 128 for IPv6.
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies in this network (an IPv4 address never lies in an IPv6 network, nor
    /// the other way round; map IPv4-mapped IPv6 addresses first with [`IpAddr::to_canonical`]).
    pub fn contains(&self, ip: IpAddr) -> bool {
        fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
            let full = usize::from(bits / 8);
            let rest = bits % 8;
            if a[..full] != b[..full] {
                return false;
            }
            rest == 0 || {
                let mask = 0xffu8 << (8 - rest);
                a[full] & mask == b[full] & mask
            }
        }
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = ArgError;

    /// Strict: a canonical IPv4 or IPv6 address, `/`, a prefix length in plain decimal.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = |reason| ArgError::Cidr {
            text: text.to_owned(),
            reason,
        };
        let (addr, prefix) = text.split_once('/').ok_or_else(|| err("missing /PREFIX"))?;
        let addr: IpAddr = addr.parse().map_err(|_| err("not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix.is_empty()
            || prefix.len() > 3
            || (prefix.len() > 1 && prefix.starts_with('0'))
            || !prefix.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(err("prefix is not a number in plain decimal"));
        }
        let prefix: u8 = prefix.parse().map_err(|_| err("prefix out of range"))?;
        if prefix > max {
            return Err(err("prefix longer than the address"));
        }
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}
