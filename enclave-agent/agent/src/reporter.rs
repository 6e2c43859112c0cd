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
//! The ticker runs at the probe interval once every component was healthy since the latest
//! start; before that (a boot, a restart) it probes after 50 ms, then half as long again each
//! round up to 200 ms, so a report says "healthy" within a fraction of a second of the fact.
//!
//! The latest signed report sits in a `watch`: each control connection subscribes and streams
//! what follows; a report nobody reads is simply replaced by the next.

use std::sync::Arc;
use std::time::Duration;

use nautilus_protocol::wire::{ComponentReport, ProcessState, Report, SignedReport};
use tokio::sync::{Notify, watch};
use tracing::{Instrument as _, debug, error, info_span};

use crate::budget::Counters;
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
    /// The sealed state's part of each report, when the configuration keeps state.
    pub state: Option<watch::Receiver<nautilus_protocol::wire::StateReport>>,
    /// The budget counters, carried in every report once one is not zero.
    pub counters: Arc<Counters>,
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
///
/// A start is the control plane's (its earliest current process start changed) or one
/// component's restart (the restart count changed while the earliest start stayed, as it does
/// when kube-apiserver restarts beside a running etcd): either way the components are probed
/// finely again until all are healthy, and the timeout counts from when the restart was seen
/// (restarts before everything was healthy, a crash loop at boot, keep the window they are in).
/// Without the second, a restarted kube-apiserver was reported healthy again only a probe
/// interval later (5 s by default, up to 300 s).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StartupWatch {
    started_unix_ms: Option<u64>,
    restarts: u32,
    since_unix_ms: Option<u64>,
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
                restarts: process.restarts,
                since_unix_ms: process.started_unix_ms,
                ..Self::default()
            };
        } else if process.restarts != self.restarts {
            self.restarts = process.restarts;
            // A restart after all were healthy opens a new window; one while still starting (a
            // crash loop at boot) keeps the window it is in, so the timeout still comes.
            if self.healthy_since_start {
                self.since_unix_ms = Some(now_ms);
                self.healthy_since_start = false;
                self.timed_out = false;
            }
        }
        let healthy = !components.is_empty() && components.iter().all(|c| c.healthy);
        if healthy && process.running {
            self.healthy_since_start = true;
            self.timed_out = false;
        } else if !self.healthy_since_start
            && let Some(started) = self.since_unix_ms
            && now_ms.saturating_sub(started)
                > u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
        {
            self.timed_out = true;
        }
        self.timed_out
    }

    /// Whether every component was healthy since the latest start.
    pub fn settled(&self) -> bool {
        self.healthy_since_start
    }
}

/// The first pause between probe rounds while the control plane starts (before every component
/// was healthy since its latest start): a boot is seen healthy within this of the moment it is.
pub const STARTUP_PROBE_FIRST: Duration = Duration::from_millis(50);
/// The longest pause while starting; the probe interval takes over once all were healthy. The
/// controller manager is healthy 0.5–1 s after it starts, when the pauses have grown to this:
/// at 500 ms a boot was seen healthy 0.25 s later than it was on average, at 200 ms 0.1 s, for
/// one round (four TLS handshakes on loopback) every 200 ms while starting.
pub const STARTUP_PROBE_MAX: Duration = Duration::from_millis(200);

/// The pause after `previous` while starting: half as long again, at most
/// [`STARTUP_PROBE_MAX`] and the probe interval.
pub fn next_startup_pause(previous: Duration, interval: Duration) -> Duration {
    (previous * 3 / 2).min(STARTUP_PROBE_MAX).min(interval)
}

async fn report_loop(
    mut r: ReporterConfig,
    reports: watch::Sender<Option<SignedReport>>,
    report_now: Arc<Notify>,
) {
    let mut sequence: u64 = 0;
    // The first round at once; then every interval, or at the startup pauses while starting.
    let mut next = tokio::time::Instant::now();
    let mut pause = STARTUP_PROBE_FIRST;
    let mut components: Vec<ComponentReport> = Vec::new();
    let mut startup = StartupWatch::default();
    loop {
        let probed = tokio::select! {
            () = tokio::time::sleep_until(next) => {
                components = r.prober.round().await;
                true
            }
            changed = r.process.changed() => {
                if changed.is_err() {
                    return;
                }
                // The process started or ended: look again now rather than at the next tick.
                components = r.prober.round().await;
                pause = STARTUP_PROBE_FIRST;
                true
            }
            () = report_now.notified() => {
                if components.is_empty() {
                    components = r.prober.round().await;
                }
                false
            }
        };
        let mut process = r.process.borrow_and_update().clone();
        let now = unix_ms();
        process.startup_timed_out = startup.observe(&process, &components, r.startup_timeout, now);
        if probed {
            next = tokio::time::Instant::now()
                + if startup.settled() {
                    r.interval
                } else {
                    let this = pause;
                    pause = next_startup_pause(pause, r.interval);
                    this
                };
        }
        sequence += 1;
        let report = Report {
            sequence,
            time_unix_ms: now,
            boot_config_digest: r.digest_hex.clone(),
            components: components.clone(),
            control_plane: process,
            state: r.state.as_ref().map(|s| s.borrow().clone()),
            budget: r.counters.snapshot(),
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
        assert!(!watch.settled());
        assert!(!watch.observe(&process, &round(true), timeout, 51_000));
        assert!(watch.settled());
        // One component restarted (kube-apiserver beside a running etcd: the earliest start
        // stays): probed finely again, its window counted from when the restart was seen.
        process.restarts = 1;
        assert!(!watch.observe(&process, &round(false), timeout, 60_000));
        assert!(!watch.settled(), "a restarted component is probed finely");
        assert!(!watch.observe(&process, &round(false), timeout, 70_000));
        assert!(watch.observe(&process, &round(false), timeout, 70_001));
        assert!(!watch.observe(&process, &round(true), timeout, 71_000));
        assert!(watch.settled());

        // A crash loop at boot: each restart keeps the boot's window, so the timeout comes.
        let mut looping = ProcessState {
            running: true,
            started_unix_ms: Some(100_000),
            ..ProcessState::default()
        };
        let mut watch = StartupWatch::default();
        for (restarts, now) in [(0, 101_000), (1, 104_000), (2, 108_000)] {
            looping.restarts = restarts;
            assert!(!watch.observe(&looping, &round(false), timeout, now));
        }
        looping.restarts = 3;
        assert!(watch.observe(&looping, &round(false), timeout, 110_001));
    }

    #[test]
    fn startup_probes_back_off_from_fine_to_the_interval() {
        let interval = Duration::from_secs(10);
        let mut pause = STARTUP_PROBE_FIRST;
        let mut seen = vec![pause];
        while pause < STARTUP_PROBE_MAX {
            pause = next_startup_pause(pause, interval);
            seen.push(pause);
        }
        assert_eq!(seen[1], Duration::from_millis(75));
        assert_eq!(*seen.last().expect("some"), STARTUP_PROBE_MAX);
        assert!(seen.len() < 10, "{seen:?}");
        // Never longer than a short probe interval.
        assert_eq!(
            next_startup_pause(STARTUP_PROBE_MAX, Duration::from_millis(100)),
            Duration::from_millis(100)
        );
    }
}
