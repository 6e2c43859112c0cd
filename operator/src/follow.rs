//! Following each sidecar's evidence, so that a change reconciles its resource at once.
//!
//! Without this a resource is reconciled when something in the host cluster changes (its spec,
//! its children, its pod) and otherwise every probe interval: a control plane that became
//! healthy, or an enclave that answered a challenge, was seen up to a probe interval later
//! (5 s by default). Each sidecar whose `/report` a reconcile read is followed by one task that
//! long-polls `GET /report?after=<revision>&waitSeconds=…` ([`sidecar::wait_report`]); when
//! what the resource's status could show changes (`Visible`), the task asks the controller
//! to reconcile the resource ([`Followers::triggers`], given to
//! [`Controller::reconcile_on`](kube::runtime::Controller::reconcile_on)).
//!
//! Nothing here is trusted: a trigger only makes the reconcile read and verify the evidence
//! itself, as it does on a requeue. A sidecar that changes its answer on every request costs at
//! most one reconcile per [`MIN_SPACING`]; a sidecar without the long poll (no revision header,
//! an older version) is not followed, and its resource is reconciled every probe interval as
//! before. The requeue stays either way: staleness is a matter of time, not of change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::Stream;
use kube::runtime::reflector::ObjectRef;
use nautilus_crds::NautilusMaster;
use nautilus_protocol::wire::{
    AttestationEvidence, ComponentReport, EnclaveInfo, EvidenceBundle, ProcessState, RefusalKind,
    StateReport,
};
use tokio::sync::mpsc;

use crate::sidecar;

/// How long one long poll asks the sidecar to wait (under the sidecar's cap, 30 s, and its
/// HTTP listener's idle timeout, 60 s).
pub const WAIT: Duration = Duration::from_secs(25);
/// Least time between two polls of one sidecar, whatever it answers.
pub const MIN_SPACING: Duration = Duration::from_millis(100);
/// First wait after a failed poll; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Longest wait after failed polls (the reconcile sees the sidecar's failure itself).
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Triggers queued for the controller; more are dropped (the requeue still comes).
const QUEUE: usize = 1024;

/// The followed sidecars, one task each, and the triggers they send.
#[derive(Debug)]
pub struct Followers {
    followed: Mutex<HashMap<ObjectRef<NautilusMaster>, Follower>>,
    sender: mpsc::Sender<ObjectRef<NautilusMaster>>,
    receiver: Mutex<Option<mpsc::Receiver<ObjectRef<NautilusMaster>>>>,
}

#[derive(Debug)]
struct Follower {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Default for Followers {
    fn default() -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        Self {
            followed: Mutex::new(HashMap::new()),
            sender,
            receiver: Mutex::new(Some(receiver)),
        }
    }
}

impl Followers {
    /// Follow `object`'s sidecar at `addr`, or stop following it (`None`). A sidecar already
    /// followed at the same address keeps its task (also one that ended because the sidecar
    /// has no long poll); another address replaces it. Must be called within a Tokio runtime.
    pub fn follow(&self, object: &ObjectRef<NautilusMaster>, addr: Option<SocketAddr>) {
        let mut followed = self.followed.lock().unwrap_or_else(PoisonError::into_inner);
        match addr {
            None => {
                followed.remove(object);
            }
            Some(addr) if followed.get(object).is_some_and(|f| f.addr == addr) => {}
            Some(addr) => {
                let task = tokio::spawn(follow(object.clone(), addr, self.sender.clone()));
                followed.insert(object.clone(), Follower { addr, task });
            }
        }
    }

    /// How many sidecars are followed (their tasks running or not).
    pub fn len(&self) -> usize {
        self.followed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no sidecar is followed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The resources to reconcile because their evidence changed; `None` once taken (there is
    /// one controller per process).
    pub fn triggers(&self) -> Option<impl Stream<Item = ObjectRef<NautilusMaster>> + use<>> {
        let receiver = self
            .receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()?;
        Some(futures::stream::unfold(
            receiver,
            |mut receiver| async move { receiver.recv().await.map(|object| (object, receiver)) },
        ))
    }
}

/// What of an evidence bundle the resource's status can show: the report without its sequence,
/// times and counters (which change every probe round), the rest as served. Read without
/// verification: it only decides whether to look, and the reconcile verifies what it shows.
#[derive(Debug, PartialEq)]
struct Visible {
    digest: Option<String>,
    attestation: Option<AttestationEvidence>,
    enclave: EnclaveInfo,
    refused: Option<(String, Option<RefusalKind>)>,
    report: Option<Result<ReportView, Vec<u8>>>,
}

#[derive(Debug, PartialEq)]
struct ReportView {
    components: Vec<(String, bool, Option<String>)>,
    control_plane: ProcessState,
    state: Option<StateReport>,
}

impl Visible {
    fn of(bundle: EvidenceBundle) -> Self {
        let report = bundle
            .report
            .map(|signed| match signed.unverified_report() {
                Ok(report) => Ok(ReportView {
                    components: report
                        .components
                        .into_iter()
                        .map(
                            |ComponentReport {
                                 component,
                                 healthy,
                                 message,
                                 ..
                             }| {
                                (component.name().to_owned(), healthy, message)
                            },
                        )
                        .collect(),
                    control_plane: report.control_plane,
                    state: report.state,
                }),
                // Not a report: any change of its bytes is one.
                Err(_) => Err(signed.report),
            });
        Self {
            digest: bundle.boot_config_digest,
            attestation: bundle.attestation,
            enclave: bundle.enclave,
            refused: bundle.boot_refused.map(|r| (r, bundle.boot_refused_kind)),
            report,
        }
    }
}

/// One sidecar's follower: long-poll, and send `object` whenever what is visible changed
/// (the first answer included: it may hold a change the reconcile that started this missed).
async fn follow(
    object: ObjectRef<NautilusMaster>,
    addr: SocketAddr,
    triggers: mpsc::Sender<ObjectRef<NautilusMaster>>,
) {
    let mut revision = None;
    let mut seen: Option<Visible> = None;
    let mut retry = FIRST_RETRY;
    loop {
        let started = tokio::time::Instant::now();
        match sidecar::wait_report(addr, revision, WAIT).await {
            Ok((None, _)) => {
                tracing::debug!(%object, %addr, "the sidecar has no long poll; not followed");
                return;
            }
            Ok((Some(now), bundle)) => {
                retry = FIRST_RETRY;
                revision = Some(now);
                let visible = Visible::of(bundle);
                if seen.as_ref() != Some(&visible) {
                    seen = Some(visible);
                    if triggers.try_send(object.clone()).is_err() {
                        tracing::debug!(%object, "trigger queue full; the requeue will come");
                    }
                }
            }
            Err(err) => {
                tracing::debug!(%object, error = %err, "following the sidecar failed; retrying");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
        tokio::time::sleep_until(started + MIN_SPACING).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{FakeEnclave, FakeSidecar};
    use futures::StreamExt as _;

    const DIGEST: [u8; 32] = [7; 32];

    /// `base` with a report saying the scheduler is `healthy` or not.
    fn bundle_with_report(
        (enclave, base): &(FakeEnclave, EvidenceBundle),
        sequence: u64,
        healthy: bool,
    ) -> EvidenceBundle {
        let mut bundle = base.clone();
        let mut report = enclave.report(sequence, &hex::encode(DIGEST), 1_000 + sequence);
        report.components[1].healthy = healthy;
        bundle.report = Some(enclave.signer.sign(&report));
        bundle
    }

    fn object() -> ObjectRef<NautilusMaster> {
        ObjectRef::new("dev").within("default")
    }

    async fn next(
        triggers: &mut (impl Stream<Item = ObjectRef<NautilusMaster>> + Unpin),
    ) -> Option<ObjectRef<NautilusMaster>> {
        tokio::time::timeout(Duration::from_secs(2), triggers.next())
            .await
            .ok()
            .flatten()
    }

    /// A change a status could show triggers a reconcile; a new report saying the same (a new
    /// sequence and time) does not; a sidecar no longer followed triggers nothing.
    #[tokio::test]
    async fn a_visible_change_triggers_and_a_new_sequence_does_not() {
        let enclave = FakeEnclave::new();
        let base = enclave.bundle(DIGEST, b"nonce", 1, 1_000);
        let e = (enclave, base);
        let sidecar = FakeSidecar::start_with_revisions(&bundle_with_report(&e, 1, false)).await;
        let followers = Followers::default();
        let mut triggers = Box::pin(followers.triggers().expect("first"));
        assert!(followers.triggers().is_none(), "taken once");
        followers.follow(&object(), Some(sidecar.addr));
        assert_eq!(
            next(&mut triggers).await,
            Some(object()),
            "the first answer"
        );

        sidecar.set_bundle(&bundle_with_report(&e, 2, false));
        assert_eq!(
            next(&mut triggers).await,
            None,
            "the same health, a new sequence"
        );

        sidecar.set_bundle(&bundle_with_report(&e, 3, true));
        assert_eq!(next(&mut triggers).await, Some(object()), "healthy now");

        followers.follow(&object(), Some(sidecar.addr));
        assert_eq!(followers.len(), 1, "the same sidecar keeps its follower");
        followers.follow(&object(), None);
        assert!(followers.is_empty());
        sidecar.set_bundle(&bundle_with_report(&e, 4, false));
        assert_eq!(next(&mut triggers).await, None, "no longer followed");
    }

    /// A sidecar that answers without a revision (no long poll) is polled once, not hammered.
    #[tokio::test]
    async fn a_sidecar_without_the_long_poll_is_left_to_the_requeue() {
        let enclave = FakeEnclave::new();
        let base = enclave.bundle(DIGEST, b"nonce", 1, 1_000);
        let sidecar = FakeSidecar::start(&bundle_with_report(&(enclave, base), 1, false)).await;
        let followers = Followers::default();
        let mut triggers = Box::pin(followers.triggers().expect("first"));
        followers.follow(&object(), Some(sidecar.addr));
        assert_eq!(next(&mut triggers).await, None);
        assert_eq!(sidecar.report_requests(), 1);
    }
}
