//! The reporter: probes the control plane every probe interval (and at once when its process
//! starts or ends, or when a new sidecar connection asks), and turns each round into a signed
//! [`Report`] with the next sequence number.
//!
//! ```text
//! ticker ─┐
//! process state changed ─┼─► Prober::round ─► Report { sequence + 1, components, process,
//! report_now (new link) ─┘                            startup_timed_out } ─► sign ─► watch
//! ```
//!
//! The latest signed report sits in a `watch`: each control connection subscribes and streams
//! what follows; a report nobody reads is simply replaced by the next.

use std::sync::Arc;
use std::time::Duration;

use nautilus_protocol::wire::{ComponentReport, ProcessState, Report, SignedReport};
use tokio::sync::{Notify, watch};
use tracing::{Instrument as _, debug, error, info_span};

use crate::material::BootMaterial;
use crate::prober::Prober;
use crate::supervisor::unix_ms;

/// What the reporter reports on.
#[derive(Debug)]
pub struct ReporterConfig {
    /// The boot's material; its report key signs every report.
    pub material: Arc<BootMaterial>,
    /// Hex digest of the boot configuration, carried in every report.
    pub digest_hex: String,
    /// The health probes.
    pub prober: Prober,
    /// The control plane's process state.
    pub process: watch::Receiver<ProcessState>,
    /// The probe interval.
    pub interval: Duration,
    /// How long the components have to become healthy after each start.
    pub startup_timeout: Duration,
}

/// The running reporter task.
#[derive(Debug)]
pub struct Reporter {
    reports: watch::Sender<Option<SignedReport>>,
    report_now: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Reporter {
    /// Start reporting: the first round runs at once.
    pub fn start(config: ReporterConfig) -> Self {
        let (reports, _) = watch::channel(None);
        let report_now = Arc::new(Notify::new());
        let task = tokio::spawn(
            report_loop(config, reports.clone(), Arc::clone(&report_now))
                .instrument(info_span!("reporter")),
        );
        Self {
            reports,
            report_now,
            task,
        }
    }

    /// The latest signed report and the ones that follow.
    pub fn subscribe(&self) -> watch::Receiver<Option<SignedReport>> {
        self.reports.subscribe()
    }

    /// Report now rather than at the next tick (probing first if nothing was probed yet).
    pub fn report_now(&self) {
        self.report_now.notify_one();
    }

    /// Stop reporting (the task ends; the latest report stays readable).
    pub fn stop(&self) {
        self.task.abort();
    }
}

/// Tracks whether the components became healthy within the startup timeout of each start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StartupWatch {
    started_unix_ms: Option<u64>,
    healthy_since_start: bool,
    timed_out: bool,
}

impl StartupWatch {
    /// Update with the process state and a probe round at `now_ms`; returns `startup_timed_out`.
    pub fn observe(
        &mut self,
        process: &ProcessState,
        components: &[ComponentReport],
        timeout: Duration,
        now_ms: u64,
    ) -> bool {
        if process.started_unix_ms != self.started_unix_ms {
            *self = Self {
                started_unix_ms: process.started_unix_ms,
                ..Self::default()
            };
        }
        let healthy = !components.is_empty() && components.iter().all(|c| c.healthy);
        if healthy && process.running {
            self.healthy_since_start = true;
            self.timed_out = false;
        } else if !self.healthy_since_start
            && let Some(started) = self.started_unix_ms
            && now_ms.saturating_sub(started)
                > u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
        {
            self.timed_out = true;
        }
        self.timed_out
    }
}

async fn report_loop(
    mut r: ReporterConfig,
    reports: watch::Sender<Option<SignedReport>>,
    report_now: Arc<Notify>,
) {
    let mut sequence: u64 = 0;
    let mut ticker = tokio::time::interval(r.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut components: Vec<ComponentReport> = Vec::new();
    let mut startup = StartupWatch::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => components = r.prober.round().await,
            changed = r.process.changed() => {
                if changed.is_err() {
                    return;
                }
                // The process started or ended: look again now rather than at the next tick.
                components = r.prober.round().await;
            }
            () = report_now.notified() => {
                if components.is_empty() {
                    components = r.prober.round().await;
                }
            }
        }
        let mut process = r.process.borrow_and_update().clone();
        let now = unix_ms();
        process.startup_timed_out = startup.observe(&process, &components, r.startup_timeout, now);
        sequence += 1;
        let report = Report {
            sequence,
            time_unix_ms: now,
            boot_config_digest: r.digest_hex.clone(),
            components: components.clone(),
            control_plane: process,
            state: None,
        };
        debug!(sequence, healthy = report.all_healthy(), "report");
        if report.control_plane.startup_timed_out && !report.all_healthy() {
            error!(
                sequence,
                "control plane not healthy within the startup timeout"
            );
        }
        reports.send_replace(Some(r.material.signer.sign(&report)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nautilus_protocol::wire::Component;

    fn round(healthy: bool) -> Vec<ComponentReport> {
        Component::ALL
            .iter()
            .map(|&component| ComponentReport {
                component,
                healthy,
                checked_unix_ms: 0,
                latency_ms: None,
                message: None,
            })
            .collect()
    }

    #[test]
    fn startup_timeout_is_per_start() {
        let timeout = Duration::from_secs(10);
        let mut watch = StartupWatch::default();
        let mut process = ProcessState {
            running: true,
            started_unix_ms: Some(1_000),
            ..ProcessState::default()
        };
        assert!(!watch.observe(&process, &round(false), timeout, 5_000));
        assert!(watch.observe(&process, &round(false), timeout, 11_001));
        // Healthy clears it, and a later failure of the same run is not a startup timeout.
        assert!(!watch.observe(&process, &round(true), timeout, 12_000));
        assert!(!watch.observe(&process, &round(false), timeout, 30_000));
        // A new start begins a new window.
        process.started_unix_ms = Some(40_000);
        assert!(!watch.observe(&process, &round(false), timeout, 45_000));
        assert!(watch.observe(&process, &round(false), timeout, 50_001));
    }
}
