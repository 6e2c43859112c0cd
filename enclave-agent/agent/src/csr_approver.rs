//! Approval of kubelet serving certificates inside the enclave.
//!
//! A kubelet with `serverTLSBootstrap: true` asks for its serving certificate with a
//! `certificates.k8s.io/v1` CertificateSigningRequest for `kubernetes.io/kubelet-serving`;
//! kube-controller-manager signs an approved one with the serving CA (`server-ca`), which is the
//! CA kube-apiserver verifies kubelets against (`--kubelet-certificate-authority`). Nothing in
//! Kubernetes approves these requests, and approving them blindly would let any node obtain a
//! certificate for another node's address, then answer the API server's `logs`/`exec` traffic
//! meant for that node. The agent approves a request only when ([`decide`]):
//!
//! - it was made by a node: `spec.username` is `system:node:<name>` and `spec.groups` holds
//!   `system:nodes` (both set by the API server from the authenticated identity);
//! - the request's subject is exactly `CN=system:node:<name>, O=system:nodes`;
//! - `spec.usages` are among `digital signature`, `key encipherment`, `server auth` and include
//!   `server auth`;
//! - it names at least one DNS or IP SAN, every DNS SAN is `<name>` or one of the Node's
//!   `Hostname`/`InternalDNS`/`ExternalDNS` addresses, every IP SAN one of its
//!   `InternalIP`/`ExternalIP` addresses, and there is no email, URI or other SAN.
//!
//! A node's request that can never pass (another subject, wrong usages, email or URI SANs, a
//! request that does not parse within [`MAX_REQUEST_BYTES`] and [`MAX_SANS`]) is denied with
//! the reason, so the kubelet's certificate manager sees the refusal and asks anew. A request
//! whose names are not (yet) the Node's — no Node object yet, or an address the Node does not
//! report — stays pending and is looked at again every round: the Node's status may catch up
//! (the kubelet registers and reports its addresses), and the controller manager's cleaner
//! removes requests pending for 24 hours. Requests of other signers, or made by anyone but a
//! node (an administrator's own), are not the agent's to judge and are left alone.
//!
//! [`Approver::run`] polls the API server every [`POLL`] with the agent's `system:masters`
//! client certificate, pages through the kubelet-serving requests ([`MAX_PAGES`] of
//! [`PAGE`]), reads each requesting node's Node (once a round), and approves or denies through the
//! `/approval` subresource with reason [`REASON_APPROVED`] / [`REASON_DENIED`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tracing::{info, warn};
use x509_cert::der::{DecodePem as _, Tag, Tagged as _};
use x509_cert::request::CertReq;

/// The signer of kubelet serving certificates.
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
/// The condition reason of an approval.
pub const REASON_APPROVED: &str = "NautilusNodeServing";
/// The condition reason of a denial.
pub const REASON_DENIED: &str = "NautilusNodeServingRefused";
/// Largest PEM request judged.
pub const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Most SANs in one request.
pub const MAX_SANS: usize = 64;
/// How often the approver looks.
pub const POLL: Duration = Duration::from_secs(2);
/// Requests per list page: an issued request with its certificate is about 4 KB of JSON, so a
/// page stays well under the agent client's 1 MiB answer limit.
pub const PAGE: usize = 100;
/// Pages read per round.
pub const MAX_PAGES: usize = 20;

const NODE_PREFIX: &str = "system:node:";
const NODES_GROUP: &str = "system:nodes";
const ALLOWED_USAGES: [&str; 3] = ["digital signature", "key encipherment", "server auth"];

/// A CertificateSigningRequest as the approver reads it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Csr {
    /// `metadata.name`.
    pub name: String,
    /// `spec.signerName`.
    pub signer_name: String,
    /// `spec.username`.
    pub username: String,
    /// `spec.groups`.
    pub groups: Vec<String>,
    /// `spec.usages`.
    pub usages: Vec<String>,
    /// `spec.request`, decoded from base64: a PEM `CERTIFICATE REQUEST`.
    pub request: Vec<u8>,
    /// Whether an `Approved` or `Denied` condition is already there.
    pub decided: bool,
}

impl Csr {
    /// Read the fields the approver needs from a CSR object; `None` when one is missing or
    /// malformed (such an object is left alone).
    pub fn from_json(object: &serde_json::Value) -> Option<Self> {
        use base64::Engine as _;
        let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
        let list = |v: &serde_json::Value| -> Option<Vec<String>> {
            match v {
                serde_json::Value::Null => Some(Vec::new()),
                v => v.as_array()?.iter().map(text).collect(),
            }
        };
        let spec = &object["spec"];
        let request = spec["request"].as_str()?;
        if request.len() > MAX_REQUEST_BYTES * 4 / 3 + 4 {
            // Judged (and denied) as oversized below, without decoding it.
            return Some(Self {
                request: vec![0; MAX_REQUEST_BYTES + 1],
                ..Self::fields(object, spec, &text, &list)?
            });
        }
        let request = base64::engine::general_purpose::STANDARD
            .decode(request)
            .ok()?;
        Some(Self {
            request,
            ..Self::fields(object, spec, &text, &list)?
        })
    }

    fn fields(
        object: &serde_json::Value,
        spec: &serde_json::Value,
        text: &dyn Fn(&serde_json::Value) -> Option<String>,
        list: &dyn Fn(&serde_json::Value) -> Option<Vec<String>>,
    ) -> Option<Self> {
        let decided = object["status"]["conditions"]
            .as_array()
            .is_some_and(|conditions| {
                conditions
                    .iter()
                    .any(|c| matches!(c["type"].as_str(), Some("Approved" | "Denied")))
            });
        Some(Self {
            name: text(&object["metadata"]["name"])?,
            signer_name: text(&spec["signerName"])?,
            username: text(&spec["username"]).unwrap_or_default(),
            groups: list(&spec["groups"])?,
            usages: list(&spec["usages"])?,
            request: Vec::new(),
            decided,
        })
    }

    /// The node that made this request, when a node did (`system:node:<name>` in
    /// `system:nodes`, the name a DNS subdomain).
    pub fn node(&self) -> Option<&str> {
        let name = self.username.strip_prefix(NODE_PREFIX)?;
        let in_group = self.groups.iter().any(|g| g == NODES_GROUP);
        (in_group && is_dns_subdomain(name)).then_some(name)
    }
}

/// A Kubernetes object name: a DNS subdomain (lower-case letters, digits, `-` and `.`,
/// alphanumeric at both ends, at most 253 characters). Also what keeps a node name safe in a
/// URL path.
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name
            .split('.')
            .all(|label| !label.is_empty() && !label.starts_with('-') && !label.ends_with('-'))
}

/// One entry of a Node's `status.addresses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    /// `type`: `Hostname`, `InternalIP`, `ExternalIP`, `InternalDNS`, `ExternalDNS`.
    pub kind: String,
    /// `address`.
    pub address: String,
}

/// A Node's addresses from its object.
pub fn node_addresses(node: &serde_json::Value) -> Vec<NodeAddress> {
    node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| {
            Some(NodeAddress {
                kind: a["type"].as_str()?.to_owned(),
                address: a["address"].as_str()?.to_owned(),
            })
        })
        .collect()
}

/// Why a node's request is refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// The PEM request is over [`MAX_REQUEST_BYTES`] or does not parse.
    Unparsable,
    /// The subject is not `CN=system:node:<name>, O=system:nodes`.
    Subject,
    /// A usage outside the allowed three, or no `server auth`.
    Usages,
    /// An email, URI or other SAN kind than DNS and IP.
    SanKind,
    /// No DNS or IP SAN at all, or more than [`MAX_SANS`].
    SanCount,
}

/// Why a node's request waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// The requesting node has no Node object (yet).
    NoNode,
    /// A DNS SAN that is neither the node's name nor one of its DNS addresses.
    DnsName(String),
    /// An IP SAN that is not one of the Node's IP addresses.
    Ip(IpAddr),
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Another signer, already decided, or not made by a node: not the agent's business.
    NotOurs,
    /// Approve it.
    Approve,
    /// Leave it pending; look again next round.
    Wait(WaitReason),
    /// Deny it.
    Deny(DenyReason),
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unparsable => "the request does not parse as a PEM CERTIFICATE REQUEST within 16 KiB",
            Self::Subject => "the subject is not CN=system:node:<requesting node>, O=system:nodes",
            Self::Usages => "usages must be among digital signature, key encipherment and server auth, and include server auth",
            Self::SanKind => "only DNS and IP subject alternative names may be requested",
            Self::SanCount => "between 1 and 64 DNS or IP subject alternative names are needed",
        })
    }
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoNode => f.write_str("the requesting node has no Node object"),
            Self::DnsName(name) => write!(f, "DNS name {name:?} is not one of the node's"),
            Self::Ip(ip) => write!(f, "IP address {ip} is not one of the node's"),
        }
    }
}

/// What a parsed request asks for.
#[derive(Debug, Default)]
struct Asked {
    common_names: Vec<String>,
    organizations: Vec<String>,
    other_subject_attributes: bool,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
    other_sans: bool,
}

fn attribute_text(value: &x509_cert::der::Any) -> Option<String> {
    match value.tag() {
        Tag::Utf8String | Tag::PrintableString => {
            std::str::from_utf8(value.value()).ok().map(str::to_owned)
        }
        _ => None,
    }
}

/// Parse a PEM request (at most [`MAX_REQUEST_BYTES`]) into what it asks for.
fn parse(pem: &[u8]) -> Result<Asked, DenyReason> {
    use x509_cert::der::Decode as _;
    use x509_cert::der::oid::AssociatedOid as _;
    use x509_cert::der::oid::db::rfc4519;
    use x509_cert::ext::pkix::SubjectAltName;
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::request::ExtensionReq;

    if pem.len() > MAX_REQUEST_BYTES {
        return Err(DenyReason::Unparsable);
    }
    let request = CertReq::from_pem(pem).map_err(|_| DenyReason::Unparsable)?;
    let mut asked = Asked::default();
    for rdn in &request.info.subject.0 {
        for atv in rdn.0.iter() {
            let text = attribute_text(&atv.value);
            match (atv.oid, text) {
                (oid, Some(text)) if oid == rfc4519::CN => asked.common_names.push(text),
                (oid, Some(text)) if oid == rfc4519::O => asked.organizations.push(text),
                _ => asked.other_subject_attributes = true,
            }
        }
    }
    for attribute in request.info.attributes.iter() {
        if attribute.oid != ExtensionReq::OID {
            continue;
        }
        for value in attribute.values.iter() {
            let extensions: ExtensionReq = value.decode_as().map_err(|_| DenyReason::Unparsable)?;
            for extension in extensions.0 {
                if extension.extn_id != SubjectAltName::OID {
                    continue;
                }
                let names = SubjectAltName::from_der(extension.extn_value.as_bytes())
                    .map_err(|_| DenyReason::Unparsable)?;
                for name in names.0 {
                    match name {
                        GeneralName::DnsName(dns) => asked.dns.push(dns.to_string()),
                        GeneralName::IpAddress(octets) => {
                            let bytes = octets.as_bytes();
                            let ip = if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
                                IpAddr::from(v4)
                            } else if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
                                IpAddr::from(v6)
                            } else {
                                return Err(DenyReason::Unparsable);
                            };
                            asked.ips.push(ip.to_canonical());
                        }
                        _ => asked.other_sans = true,
                    }
                    if asked.dns.len() + asked.ips.len() > MAX_SANS {
                        return Err(DenyReason::SanCount);
                    }
                }
            }
        }
    }
    Ok(asked)
}

/// Decide on `csr`, given the requesting node's addresses (`None`: it has no Node object). See
/// the module documentation for the rules.
pub fn decide(csr: &Csr, node: Option<&[NodeAddress]>) -> Verdict {
    if csr.decided || csr.signer_name != KUBELET_SERVING {
        return Verdict::NotOurs;
    }
    let Some(name) = csr.node() else {
        return Verdict::NotOurs;
    };
    let asked = match parse(&csr.request) {
        Ok(asked) => asked,
        Err(reason) => return Verdict::Deny(reason),
    };
    let expected_cn = format!("{NODE_PREFIX}{name}");
    if asked.other_subject_attributes
        || asked.common_names != [expected_cn]
        || asked.organizations != [NODES_GROUP]
    {
        return Verdict::Deny(DenyReason::Subject);
    }
    if !csr
        .usages
        .iter()
        .all(|u| ALLOWED_USAGES.contains(&u.as_str()))
        || !csr.usages.iter().any(|u| u == "server auth")
    {
        return Verdict::Deny(DenyReason::Usages);
    }
    if asked.other_sans {
        return Verdict::Deny(DenyReason::SanKind);
    }
    if asked.dns.is_empty() && asked.ips.is_empty() {
        return Verdict::Deny(DenyReason::SanCount);
    }
    let Some(addresses) = node else {
        return Verdict::Wait(WaitReason::NoNode);
    };
    let of_kind = |kinds: &[&str]| {
        addresses
            .iter()
            .filter(|a| kinds.contains(&a.kind.as_str()))
            .map(|a| a.address.as_str())
            .collect::<Vec<_>>()
    };
    let dns_names = of_kind(&["Hostname", "InternalDNS", "ExternalDNS"]);
    for dns in &asked.dns {
        let known =
            dns.eq_ignore_ascii_case(name) || dns_names.iter().any(|n| n.eq_ignore_ascii_case(dns));
        if !known {
            return Verdict::Wait(WaitReason::DnsName(dns.clone()));
        }
    }
    let ips: Vec<IpAddr> = of_kind(&["InternalIP", "ExternalIP"])
        .into_iter()
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    for ip in &asked.ips {
        if !ips.contains(ip) {
            return Verdict::Wait(WaitReason::Ip(*ip));
        }
    }
    Verdict::Approve
}

/// Why one round of the approver failed (the next round tries again).
#[derive(Debug, thiserror::Error)]
pub enum ApproverError {
    /// The API server could not be reached or answered something unexpected.
    #[error("{what}: {detail}")]
    Api {
        /// The request.
        what: String,
        /// The status and body, or the transport error.
        detail: String,
    },
}

/// The API the approver needs: one request at a time as the agent's admin.
pub trait AdminApi: Send + Sync {
    /// Send `method path` with a JSON `body` (empty: none); the status and the body.
    fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(http::StatusCode, String), String>> + Send;
}

impl AdminApi for crate::kubernetes::Readiness {
    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(http::StatusCode, String), String> {
        let content_type = (!body.is_empty()).then_some("application/json");
        self.api(method, path, content_type, body).await
    }
}

/// The approver loop; see the module documentation.
#[derive(Debug)]
pub struct Approver<A> {
    api: A,
    /// The last verdict logged per request, so a waiting request is logged once.
    logged: HashMap<String, String>,
}

impl<A: AdminApi> Approver<A> {
    /// An approver talking to the API server through `api`.
    pub fn new(api: A) -> Self {
        Self {
            api,
            logged: HashMap::new(),
        }
    }

    /// Run rounds every [`POLL`] until the task is dropped.
    pub async fn run(mut self) {
        let errors = nautilus_protocol::bounded::LogLimit::new(Duration::from_secs(60));
        loop {
            if let Err(e) = self.round().await
                && let Some(suppressed) = errors.check()
            {
                warn!(error = %e, suppressed, "kubelet serving certificate approval round failed");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn get(
        &self,
        what: &str,
        path: &str,
    ) -> Result<Option<serde_json::Value>, ApproverError> {
        let err = |detail: String| ApproverError::Api {
            what: what.to_owned(),
            detail,
        };
        match self.api.call(http::Method::GET, path, Vec::new()).await {
            Ok((status, body)) if status.is_success() => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| err(e.to_string())),
            Ok((http::StatusCode::NOT_FOUND, _)) => Ok(None),
            Ok((status, body)) => Err(err(format!("{status} {}", truncate(&body)))),
            Err(e) => Err(err(e)),
        }
    }

    /// One round: every pending kubelet-serving request judged and acted on. Returns how many
    /// were approved and denied.
    pub async fn round(&mut self) -> Result<(usize, usize), ApproverError> {
        let mut objects = Vec::new();
        let mut token = String::new();
        for _ in 0..MAX_PAGES {
            let mut path = format!(
                "/apis/certificates.k8s.io/v1/certificatesigningrequests?fieldSelector=spec.signerName%3Dkubernetes.io%2Fkubelet-serving&limit={PAGE}"
            );
            if !token.is_empty() {
                path.push_str("&continue=");
                path.push_str(&percent_encode(&token));
            }
            let Some(list) = self.get("listing kubelet-serving requests", &path).await? else {
                return Ok((0, 0));
            };
            if let Some(items) = list["items"].as_array() {
                objects.extend(items.iter().cloned());
            }
            token = list["metadata"]["continue"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if token.is_empty() {
                break;
            }
        }
        let mut seen = Vec::new();
        let mut nodes: HashMap<String, Option<Vec<NodeAddress>>> = HashMap::new();
        let (mut approved, mut denied) = (0, 0);
        for object in objects {
            let Some(csr) = Csr::from_json(&object) else {
                continue;
            };
            seen.push(csr.name.clone());
            if csr.decided {
                continue;
            }
            let Some(node) = csr.node() else {
                continue;
            };
            let addresses = match nodes.get(node) {
                Some(known) => known.clone(),
                None => {
                    let read = self
                        .get("reading a node", &format!("/api/v1/nodes/{node}"))
                        .await?
                        .map(|node| node_addresses(&node));
                    nodes.insert(node.to_owned(), read.clone());
                    read
                }
            };
            let verdict = decide(&csr, addresses.as_deref());
            match &verdict {
                Verdict::NotOurs => {}
                Verdict::Wait(reason) => {
                    let text = reason.to_string();
                    if self.logged.get(&csr.name) != Some(&text) {
                        info!(csr = %csr.name, %node, reason = %text, "kubelet serving certificate request left pending");
                        self.logged.insert(csr.name.clone(), text);
                    }
                }
                Verdict::Approve => {
                    if self
                        .set_condition(
                            object,
                            "Approved",
                            REASON_APPROVED,
                            &format!("{node}'s own names and addresses"),
                        )
                        .await?
                    {
                        info!(csr = %csr.name, %node, "kubelet serving certificate request approved");
                        approved += 1;
                    }
                }
                Verdict::Deny(reason) => {
                    if self
                        .set_condition(object, "Denied", REASON_DENIED, &reason.to_string())
                        .await?
                    {
                        info!(csr = %csr.name, %node, %reason, "kubelet serving certificate request denied");
                        denied += 1;
                    }
                }
            }
        }
        self.logged.retain(|name, _| seen.contains(name));
        Ok((approved, denied))
    }

    /// Add the condition through `/approval`; `false` when the object changed meanwhile (409:
    /// judged again next round) or is gone.
    async fn set_condition(
        &self,
        mut object: serde_json::Value,
        kind: &str,
        reason: &str,
        message: &str,
    ) -> Result<bool, ApproverError> {
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !is_dns_subdomain(&name) {
            return Ok(false);
        }
        let condition = serde_json::json!({
            "type": kind,
            "status": "True",
            "reason": reason,
            "message": message,
        });
        match object["status"]["conditions"].as_array_mut() {
            Some(conditions) => conditions.push(condition),
            None => object["status"]["conditions"] = serde_json::json!([condition]),
        }
        let body = serde_json::to_vec(&object).map_err(|e| ApproverError::Api {
            what: "rendering an approval".into(),
            detail: e.to_string(),
        })?;
        let path =
            format!("/apis/certificates.k8s.io/v1/certificatesigningrequests/{name}/approval");
        match self.api.call(http::Method::PUT, &path, body).await {
            Ok((status, _)) if status.is_success() => Ok(true),
            Ok((http::StatusCode::CONFLICT | http::StatusCode::NOT_FOUND, _)) => Ok(false),
            Ok((status, body)) => Err(ApproverError::Api {
                what: format!("{kind} {name}"),
                detail: format!("{status} {}", truncate(&body)),
            }),
            Err(detail) => Err(ApproverError::Api {
                what: format!("{kind} {name}"),
                detail,
            }),
        }
    }
}

fn truncate(text: &str) -> String {
    text.trim().chars().take(300).collect()
}

/// Percent-encode a continue token for a query string.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = "worker-1";

    fn addresses() -> Vec<NodeAddress> {
        [
            ("InternalIP", "10.213.0.2"),
            ("ExternalIP", "2001:db8::2"),
            ("Hostname", "worker-1.example"),
            ("InternalDNS", "worker-1.internal"),
        ]
        .into_iter()
        .map(|(kind, address)| NodeAddress {
            kind: kind.into(),
            address: address.into(),
        })
        .collect()
    }

    /// A PEM request with the given subject and SANs, as a kubelet (or an attacker) makes it.
    fn pem(cn: Option<&str>, orgs: &[&str], sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for org in orgs {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *org);
        }
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        params.subject_alt_names = sans;
        params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem")
            .into_bytes()
    }

    fn dns(name: &str) -> rcgen::SanType {
        rcgen::SanType::DnsName(name.try_into().expect("dns"))
    }

    fn ip(text: &str) -> rcgen::SanType {
        rcgen::SanType::IpAddress(text.parse().expect("ip"))
    }

    fn kubelet_pem(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        pem(Some("system:node:worker-1"), &["system:nodes"], sans)
    }

    fn csr(request: Vec<u8>) -> Csr {
        Csr {
            name: "csr-abc".into(),
            signer_name: KUBELET_SERVING.into(),
            username: format!("system:node:{NODE}"),
            groups: vec!["system:nodes".into(), "system:authenticated".into()],
            usages: vec!["digital signature".into(), "server auth".into()],
            request,
            decided: false,
        }
    }

    #[test]
    fn a_nodes_request_for_its_own_names_and_addresses_is_approved() {
        let addresses = addresses();
        for sans in [
            vec![ip("10.213.0.2")],
            vec![dns("worker-1"), ip("10.213.0.2")],
            vec![
                dns("worker-1.example"),
                dns("worker-1.internal"),
                ip("2001:db8::2"),
            ],
        ] {
            let c = csr(kubelet_pem(sans));
            assert_eq!(decide(&c, Some(&addresses)), Verdict::Approve);
        }
        // RSA kubelets also ask for key encipherment.
        let mut c = csr(kubelet_pem(vec![ip("10.213.0.2")]));
        c.usages = vec![
            "key encipherment".into(),
            "digital signature".into(),
            "server auth".into(),
        ];
        assert_eq!(decide(&c, Some(&addresses)), Verdict::Approve);
        // Only server auth.
        c.usages = vec!["server auth".into()];
        assert_eq!(decide(&c, Some(&addresses)), Verdict::Approve);
    }

    /// Made by another implementation: `openssl req -new -newkey ec -pkeyopt
    /// ec_paramgen_curve:P-256 -subj "/O=system:nodes/CN=system:node:worker-1" -addext
    /// "subjectAltName=IP:10.213.0.2,DNS:worker-1"` (OpenSSL 3).
    const OPENSSL_CSR: &str = "-----BEGIN CERTIFICATE REQUEST-----\nMIIBHTCBxAIBADA2MRUwEwYDVQQKDAxzeXN0ZW06bm9kZXMxHTAbBgNVBAMMFHN5\nc3RlbTpub2RlOndvcmtlci0xMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE0hTP\nORFzCs76JH/ouBhDg8+dxgm5pYkxgCWKUMR2ziCYgvduHzpI+1ZZ6ajzaIBWagKa\nh6XDxwFBoeO2KSy7mKAsMCoGCSqGSIb3DQEJDjEdMBswGQYDVR0RBBIwEIcECtUA\nAoIId29ya2VyLTEwCgYIKoZIzj0EAwIDSAAwRQIgOpQV9gxvYNCsegceNpGW80Lp\nhPrk64o8rFDyb5HXbfUCIQCkq3UQ77DxfMw7ChNQiaLWj3hd1XztyxscXBjVinGx\ntg==\n-----END CERTIFICATE REQUEST-----\n";

    #[test]
    fn a_request_made_by_openssl_is_read_the_same_way() {
        let c = csr(OPENSSL_CSR.as_bytes().to_vec());
        assert_eq!(decide(&c, Some(&addresses())), Verdict::Approve);
        let mut other = c.clone();
        other.username = "system:node:worker-2".into();
        assert_eq!(
            decide(&other, Some(&addresses())),
            Verdict::Deny(DenyReason::Subject)
        );
    }

    #[test]
    fn requests_that_are_not_a_nodes_are_left_alone() {
        let addresses = addresses();
        let good = csr(kubelet_pem(vec![ip("10.213.0.2")]));
        type Change = Box<dyn Fn(&mut Csr)>;
        let cases: Vec<(&str, Change)> = vec![
            (
                "another signer",
                Box::new(|c| c.signer_name = "kubernetes.io/kube-apiserver-client-kubelet".into()),
            ),
            ("already approved", Box::new(|c| c.decided = true)),
            (
                "an administrator's",
                Box::new(|c| c.username = "sui:0xabc".into()),
            ),
            (
                "not in system:nodes",
                Box::new(|c| c.groups = vec!["system:authenticated".into()]),
            ),
            (
                "a node name that is no object name",
                Box::new(|c| c.username = "system:node:Worker_1".into()),
            ),
            (
                "an empty node name",
                Box::new(|c| c.username = "system:node:".into()),
            ),
            (
                "a path in the name",
                Box::new(|c| c.username = "system:node:../secrets".into()),
            ),
        ];
        for (what, change) in cases {
            let mut c = good.clone();
            change(&mut c);
            assert_eq!(decide(&c, Some(&addresses)), Verdict::NotOurs, "{what}");
        }
    }

    #[test]
    fn requests_that_can_never_pass_are_denied() {
        let addresses = addresses();
        let ip_san = || vec![ip("10.213.0.2")];
        let cases: Vec<(&str, Csr, DenyReason)> = vec![
            ("another node's CN", csr(pem(Some("system:node:worker-2"), &["system:nodes"], ip_san())), DenyReason::Subject),
            ("no CN", csr(pem(None, &["system:nodes"], ip_san())), DenyReason::Subject),
            ("another O", csr(pem(Some("system:node:worker-1"), &["system:masters"], ip_san())), DenyReason::Subject),
            ("an extra O", csr(pem(Some("system:node:worker-1"), &["system:nodes", "system:masters"], ip_san())), DenyReason::Subject),
            ("no O", csr(pem(Some("system:node:worker-1"), &[], ip_san())), DenyReason::Subject),
            ("an email SAN", csr(kubelet_pem(vec![ip("10.213.0.2"), rcgen::SanType::Rfc822Name("a@b.c".try_into().expect("email"))])), DenyReason::SanKind),
            ("a URI SAN", csr(kubelet_pem(vec![ip("10.213.0.2"), rcgen::SanType::URI("spiffe://x/y".try_into().expect("uri"))])), DenyReason::SanKind),
            ("no SAN", csr(kubelet_pem(vec![])), DenyReason::SanCount),
            ("too many SANs", csr(kubelet_pem((0..65).map(|_| ip("10.213.0.2")).collect())), DenyReason::SanCount),
            ("garbage", csr(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".to_vec()), DenyReason::Unparsable),
            ("a certificate, not a request", csr(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec()), DenyReason::Unparsable),
            ("oversized", csr(vec![b'A'; MAX_REQUEST_BYTES + 1]), DenyReason::Unparsable),
            ("empty", csr(Vec::new()), DenyReason::Unparsable),
        ];
        for (what, c, reason) in cases {
            assert_eq!(
                decide(&c, Some(&addresses)),
                Verdict::Deny(reason),
                "{what}"
            );
        }
        for usages in [
            vec!["server auth", "client auth"],
            vec!["digital signature", "key encipherment"],
            vec!["server auth", "cert sign"],
            vec![],
        ] {
            let mut c = csr(kubelet_pem(ip_san()));
            c.usages = usages.iter().map(|u| (*u).to_owned()).collect();
            assert_eq!(
                decide(&c, Some(&addresses)),
                Verdict::Deny(DenyReason::Usages),
                "{usages:?}"
            );
        }
    }

    #[test]
    fn names_the_node_does_not_report_wait() {
        let addresses = addresses();
        let cases = [
            (
                vec![ip("10.213.0.3")],
                WaitReason::Ip("10.213.0.3".parse().expect("ip")),
            ),
            (
                vec![ip("10.213.0.2"), ip("127.0.0.1")],
                WaitReason::Ip("127.0.0.1".parse().expect("ip")),
            ),
            (
                vec![dns("worker-2")],
                WaitReason::DnsName("worker-2".into()),
            ),
            (
                vec![dns("kubernetes.default.svc")],
                WaitReason::DnsName("kubernetes.default.svc".into()),
            ),
            // An IP address is not a DNS name, nor the other way round.
            (
                vec![dns("10.213.0.2")],
                WaitReason::DnsName("10.213.0.2".into()),
            ),
        ];
        for (sans, reason) in cases {
            let c = csr(kubelet_pem(sans));
            assert_eq!(
                decide(&c, Some(&addresses)),
                Verdict::Wait(reason.clone()),
                "{reason}"
            );
        }
        // No Node object yet.
        let c = csr(kubelet_pem(vec![ip("10.213.0.2")]));
        assert_eq!(decide(&c, None), Verdict::Wait(WaitReason::NoNode));
        // The Hostname address is a DNS name, not an IP one, and IP types are not DNS names.
        let only_hostname = vec![NodeAddress {
            kind: "Hostname".into(),
            address: "10.213.0.2".into(),
        }];
        assert_eq!(
            decide(&c, Some(&only_hostname)),
            Verdict::Wait(WaitReason::Ip("10.213.0.2".parse().expect("ip")))
        );
    }

    #[test]
    fn csr_objects_are_read_from_json() {
        use base64::Engine as _;
        let request = kubelet_pem(vec![ip("10.213.0.2")]);
        let object = serde_json::json!({
            "metadata": {"name": "csr-1"},
            "spec": {
                "signerName": KUBELET_SERVING,
                "username": "system:node:worker-1",
                "groups": ["system:nodes", "system:authenticated"],
                "usages": ["digital signature", "server auth"],
                "request": base64::engine::general_purpose::STANDARD.encode(&request),
            },
        });
        let c = Csr::from_json(&object).expect("csr");
        assert_eq!(c.request, request);
        assert_eq!(c.node(), Some("worker-1"));
        assert!(!c.decided);
        let mut approved = object.clone();
        approved["status"] =
            serde_json::json!({"conditions": [{"type": "Approved", "status": "True"}]});
        assert!(Csr::from_json(&approved).expect("csr").decided);
        let mut bad = object.clone();
        bad["spec"]["request"] = serde_json::json!("not base64!");
        assert!(Csr::from_json(&bad).is_none());
        let mut huge = object;
        huge["spec"]["request"] = serde_json::json!("A".repeat(64 * 1024));
        let c = Csr::from_json(&huge).expect("csr");
        assert_eq!(decide(&c, None), Verdict::Deny(DenyReason::Unparsable));
    }

    /// An API server that lists `csrs`, knows worker-1's Node, and records every call; a PUT
    /// answers `put_status`.
    struct FakeApi {
        csrs: Vec<serde_json::Value>,
        put_status: http::StatusCode,
        calls: std::sync::Mutex<Vec<(http::Method, String, serde_json::Value)>>,
    }

    impl AdminApi for FakeApi {
        async fn call(
            &self,
            method: http::Method,
            path: &str,
            body: Vec<u8>,
        ) -> Result<(http::StatusCode, String), String> {
            let body_json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
            self.calls
                .lock()
                .expect("lock")
                .push((method.clone(), path.to_owned(), body_json));
            Ok(match (method, path) {
                (http::Method::GET, p) if p.starts_with("/apis/certificates.k8s.io/") => (
                    http::StatusCode::OK,
                    serde_json::json!({"metadata": {}, "items": self.csrs}).to_string(),
                ),
                (http::Method::GET, "/api/v1/nodes/worker-1") => (
                    http::StatusCode::OK,
                    serde_json::json!({"status": {"addresses": [
                        {"type": "InternalIP", "address": "10.213.0.2"},
                    ]}})
                    .to_string(),
                ),
                (http::Method::GET, _) => (http::StatusCode::NOT_FOUND, "{}".into()),
                (http::Method::PUT, _) => (self.put_status, "{}".into()),
                _ => (http::StatusCode::METHOD_NOT_ALLOWED, String::new()),
            })
        }
    }

    fn object(name: &str, node: &str, usages: &[&str], request: &[u8]) -> serde_json::Value {
        use base64::Engine as _;
        serde_json::json!({
            "metadata": {"name": name, "resourceVersion": "7"},
            "spec": {
                "signerName": KUBELET_SERVING,
                "username": format!("system:node:{node}"),
                "groups": ["system:nodes"],
                "usages": usages,
                "request": base64::engine::general_purpose::STANDARD.encode(request),
            },
            "status": {},
        })
    }

    #[tokio::test]
    async fn a_round_approves_denies_and_leaves_pending_through_the_approval_subresource() {
        let own = kubelet_pem(vec![ip("10.213.0.2")]);
        let api = FakeApi {
            csrs: vec![
                object(
                    "good",
                    "worker-1",
                    &["digital signature", "server auth"],
                    &own,
                ),
                object("bad-usages", "worker-1", &["client auth"], &own),
                object(
                    "other-ip",
                    "worker-1",
                    &["server auth"],
                    &kubelet_pem(vec![ip("10.213.0.3")]),
                ),
                object(
                    "no-node",
                    "worker-9",
                    &["server auth"],
                    &pem(
                        Some("system:node:worker-9"),
                        &["system:nodes"],
                        vec![ip("10.213.0.9")],
                    ),
                ),
            ],
            put_status: http::StatusCode::OK,
            calls: std::sync::Mutex::new(Vec::new()),
        };
        let mut approver = Approver::new(api);
        assert_eq!(approver.round().await.expect("round"), (1, 1));
        let calls = approver.api.calls.lock().expect("lock").clone();
        let node_reads = calls
            .iter()
            .filter(|(_, path, _)| path == "/api/v1/nodes/worker-1")
            .count();
        assert_eq!(node_reads, 1, "one read per node and round");
        let puts: Vec<_> = calls
            .iter()
            .filter(|(m, _, _)| m == http::Method::PUT)
            .collect();
        assert_eq!(puts.len(), 2, "{calls:?}");
        let (_, path, body) = puts[0];
        assert_eq!(
            path,
            "/apis/certificates.k8s.io/v1/certificatesigningrequests/good/approval"
        );
        assert_eq!(
            body["metadata"]["resourceVersion"], "7",
            "optimistic concurrency kept"
        );
        assert_eq!(body["status"]["conditions"][0]["type"], "Approved");
        assert_eq!(body["status"]["conditions"][0]["reason"], REASON_APPROVED);
        let (_, path, body) = puts[1];
        assert!(path.ends_with("/bad-usages/approval"), "{path}");
        assert_eq!(body["status"]["conditions"][0]["type"], "Denied");
        assert_eq!(body["status"]["conditions"][0]["reason"], REASON_DENIED);
        // The two waiting ones are remembered (logged once), not acted on.
        assert_eq!(approver.logged.len(), 2);

        // A conflict (the object changed meanwhile) is no error: judged again next round.
        approver.api.put_status = http::StatusCode::CONFLICT;
        assert_eq!(approver.round().await.expect("round"), (0, 0));
        approver.api.put_status = http::StatusCode::FORBIDDEN;
        assert!(approver.round().await.is_err());
    }

    #[test]
    fn node_names_are_object_names() {
        for ok in ["worker-1", "a", "ip-10-0-0-1.ec2.internal"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in [
            "",
            "Worker",
            "a_b",
            "-a",
            "a-",
            "a..b",
            "a/b",
            "..",
            &"a".repeat(254),
        ] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
    }
}
