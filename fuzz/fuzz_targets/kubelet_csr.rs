//! The kubelet-serving CSR approver's parser and decision (`nautilus_agent::csr_approver`): a
//! node's PKCS#10 request (PEM, at most 16 KiB, SANs at most 64) and the CSR object around it.
//!
//! Input: the bytes of `spec.request` as a node sends them (after base64), and, read as JSON,
//! a whole CSR object. Invariants beyond "no panic":
//! - a request is approved only for the node that made it: the same bytes from another node
//!   (`worker-2`, whose subject the request would have to name) are never approved;
//! - an approval needs the Node's addresses: without a Node object the verdict is never
//!   `Approve`;
//! - a request that is not a node's (an administrator's) is never judged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nautilus_agent::csr_approver::{self, Csr, KUBELET_SERVING, NodeAddress, Verdict};

fn csr(node: &str, request: &[u8]) -> Csr {
    Csr {
        name: "fuzz".into(),
        signer_name: KUBELET_SERVING.into(),
        username: format!("system:node:{node}"),
        groups: vec!["system:nodes".into()],
        usages: vec!["digital signature".into(), "server auth".into()],
        request: request.to_vec(),
        decided: false,
    }
}

fn addresses() -> Vec<NodeAddress> {
    [
        ("InternalIP", "10.213.0.2"),
        ("ExternalIP", "2001:db8::2"),
        ("Hostname", "worker-1"),
        ("InternalDNS", "worker-1.internal"),
    ]
    .into_iter()
    .map(|(kind, address)| NodeAddress {
        kind: kind.into(),
        address: address.into(),
    })
    .collect()
}

fuzz_target!(|data: &[u8]| {
    let addresses = addresses();
    let own = csr_approver::decide(&csr("worker-1", data), Some(&addresses));
    if own == Verdict::Approve {
        assert_ne!(
            csr_approver::decide(&csr("worker-2", data), Some(&addresses)),
            Verdict::Approve,
            "approved for a node it does not name"
        );
        assert_ne!(
            csr_approver::decide(&csr("worker-1", data), None),
            Verdict::Approve,
            "approved without the Node's addresses"
        );
    }
    let mut admin = csr("worker-1", data);
    admin.username = "sui:0xadmin".into();
    assert_eq!(
        csr_approver::decide(&admin, Some(&addresses)),
        Verdict::NotOurs
    );

    // The whole object, as the API server lists it.
    if let Ok(object) = serde_json::from_slice::<serde_json::Value>(data)
        && let Some(parsed) = Csr::from_json(&object)
    {
        let _ = csr_approver::decide(&parsed, Some(&addresses));
    }
});
