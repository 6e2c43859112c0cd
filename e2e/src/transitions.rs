//! Every change of a NautilusMaster's conditions, as a watch sees it, for tests that must show a
//! condition never took a value (for example that `Attested` never went `False` while the
//! operator, kube-apiserver or etcd restarted).
//!
//! The watch resumes by itself after the API server went away (the watcher's backoff), from the
//! resource version it last saw, so it misses no write, only the writes that were never made.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt as _;
use kube::Api;
use kube::runtime::{WatchStreamExt as _, watcher};
use nautilus_crds::NautilusMaster;

/// One condition changing status or reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// When the watch saw it.
    pub at: Instant,
    /// The condition type.
    pub type_: String,
    /// Its status before (`None`: it had none).
    pub from: Option<String>,
    /// Its status now.
    pub to: String,
    /// Its reason now.
    pub reason: String,
    /// Its message now.
    pub message: String,
}

impl std::fmt::Display for Transition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} → {} ({}: {})",
            self.type_,
            self.from.as_deref().unwrap_or("(none)"),
            self.to,
            self.reason,
            self.message
        )
    }
}

/// The recorder: a background watch of one resource that keeps every [`Transition`]. It stops
/// when dropped.
#[derive(Debug)]
pub struct Transitions {
    seen: Arc<Mutex<Vec<Transition>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Transitions {
    /// Start recording the conditions of `name` in `api`.
    pub fn record(api: Api<NautilusMaster>, name: &str) -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let into = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            // Type → (status, reason), as last seen.
            let mut last: BTreeMap<String, (String, String)> = BTreeMap::new();
            let mut events = std::pin::pin!(watcher(api, config).default_backoff());
            while let Some(event) = events.next().await {
                let objects = match event {
                    Ok(watcher::Event::Apply(nm) | watcher::Event::InitApply(nm)) => vec![nm],
                    Ok(_) => continue,
                    Err(err) => {
                        tracing::debug!(error = %err, "transition recorder: the watch failed");
                        continue;
                    }
                };
                for nm in objects {
                    let Some(status) = nm.status else { continue };
                    for c in status.conditions {
                        let now = (c.status.clone(), c.reason.clone());
                        let before = last.insert(c.type_.clone(), now.clone());
                        if before.as_ref() == Some(&now) {
                            continue;
                        }
                        let transition = Transition {
                            at: Instant::now(),
                            type_: c.type_,
                            from: before.map(|(s, _)| s),
                            to: c.status,
                            reason: c.reason,
                            message: c.message,
                        };
                        tracing::info!(%transition, "condition");
                        into.lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .push(transition);
                    }
                }
            }
        });
        Self { seen, task }
    }

    /// Everything recorded so far, in order.
    pub fn all(&self) -> Vec<Transition> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The recorded transitions of `type_` to `status`.
    pub fn to(&self, type_: &str, status: &str) -> Vec<Transition> {
        self.all()
            .into_iter()
            .filter(|t| t.type_ == type_ && t.to == status)
            .collect()
    }

    /// Everything recorded, one line each, for a failure message.
    pub fn describe(&self) -> String {
        self.all()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Transitions {
    fn drop(&mut self) {
        self.task.abort();
    }
}
