//! `metav1.Condition` maths: merging new observations into status, deriving `Ready` and the
//! phase. Pure functions of their inputs (time is a parameter), so the rules are unit-tested
//! without an API server.
//!
//! The rules come from the Kubernetes API conventions: one condition per `type`;
//! `lastTransitionTime` moves only when `status` changes; `reason` is CamelCase; the
//! condition's `observedGeneration` is the generation it was computed from.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use nautilus_crds::Phase;
use nautilus_crds::conditions::{Reason, types};

/// The three values `status` may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

impl Status {
    /// The string `metav1.Condition.status` carries.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }

    /// The status `condition` carries (anything but `True`/`False` is `Unknown`).
    pub fn of(condition: &Condition) -> Self {
        match condition.status.as_str() {
            "True" => Status::True,
            "False" => Status::False,
            _ => Status::Unknown,
        }
    }
}

/// One observation of a condition, before it is merged into status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Condition type, one of [`types::ALL`].
    pub type_: &'static str,
    /// Observed status.
    pub status: Status,
    /// Why; rendered only by [`Reason::as_str`].
    pub reason: Reason,
    /// Human-readable detail.
    pub message: String,
}

impl Observation {
    /// A new observation.
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: Reason,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Merges `observation` into `conditions`, keeping `lastTransitionTime` unless the status changed.
pub fn merge(
    conditions: &mut Vec<Condition>,
    observation: Observation,
    generation: i64,
    now: &Time,
) {
    let status = observation.status.as_str();
    match conditions.iter_mut().find(|c| c.type_ == observation.type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = now.clone();
                existing.status = status.to_string();
            }
            existing.reason = observation.reason.as_str().to_owned();
            existing.message = observation.message;
            existing.observed_generation = Some(generation);
        }
        None => conditions.push(Condition {
            type_: observation.type_.to_string(),
            status: status.to_string(),
            reason: observation.reason.as_str().to_owned(),
            message: observation.message,
            observed_generation: Some(generation),
            last_transition_time: now.clone(),
        }),
    }
}

/// Whether `conditions` hold `type_` with status `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && Status::of(c) == Status::True)
}

/// Derives `Ready` from the other five conditions.
///
/// `True` only when every other condition is `True`. Otherwise `False` when any is `False`
/// (carrying a terminal reason such as `AttestationFailed` through, so tools can tell "broken"
/// from "still starting"), else `Unknown`. The message names the conditions that are not `True`.
pub fn ready(conditions: &[Condition]) -> Observation {
    let others = types::ALL.iter().filter(|t| **t != types::READY);
    let mut not_true = Vec::new();
    let mut any_false = false;
    let mut terminal = None;
    for type_ in others {
        match conditions.iter().find(|c| c.type_ == *type_) {
            Some(c) if Status::of(c) == Status::True => {}
            Some(c) => {
                let status = Status::of(c);
                any_false |= status == Status::False;
                if status == Status::False && terminal.is_none() {
                    terminal = Reason::parse(&c.reason).filter(|r| r.is_terminal());
                }
                not_true.push(format!("{type_}={} ({})", c.status, c.reason));
            }
            None => not_true.push(format!("{type_} not yet observed")),
        }
    }
    if not_true.is_empty() {
        return Observation::new(
            types::READY,
            Status::True,
            Reason::AllReady,
            "control plane is attested and every component is healthy",
        );
    }
    let status = if any_false {
        Status::False
    } else {
        Status::Unknown
    };
    Observation::new(
        types::READY,
        status,
        terminal.unwrap_or(Reason::NotReady),
        format!("not ready: {}", not_true.join(", ")),
    )
}

/// The phase `kubectl get` shows, from the conditions and whether the resource was ever ready.
pub fn phase(conditions: &[Condition], deleting: bool, was_ready: bool) -> Phase {
    let status = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map_or(Status::Unknown, Status::of)
    };
    let terminal = conditions.iter().any(|c| {
        Status::of(c) == Status::False && Reason::parse(&c.reason).is_some_and(Reason::is_terminal)
    });
    if deleting {
        Phase::Terminating
    } else if status(types::READY) == Status::True {
        Phase::Ready
    } else if terminal {
        Phase::Failed
    } else if was_ready {
        Phase::Degraded
    } else if status(types::ENCLAVE_RUNNING) != Status::True {
        if conditions.is_empty() {
            Phase::Pending
        } else {
            Phase::Launching
        }
    } else if status(types::ATTESTED) != Status::True {
        Phase::Attesting
    } else {
        Phase::Starting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid timestamp"))
    }

    fn all_true(conditions: &mut Vec<Condition>, now: &Time) {
        for type_ in types::ALL.iter().filter(|t| **t != types::READY) {
            merge(
                conditions,
                Observation::new(type_, Status::True, Reason::Healthy, "ok"),
                1,
                now,
            );
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut conditions = Vec::new();
        let obs = |status, reason| Observation::new(types::ATTESTED, status, reason, "m");
        merge(
            &mut conditions,
            obs(Status::Unknown, Reason::Pending),
            1,
            &at(100),
        );
        merge(
            &mut conditions,
            obs(Status::True, Reason::Verified),
            1,
            &at(200),
        );
        assert_eq!(conditions[0].last_transition_time, at(200));
        merge(
            &mut conditions,
            obs(Status::True, Reason::SimulatedAttestation),
            2,
            &at(300),
        );
        assert_eq!(conditions.len(), 1);
        assert_eq!(
            conditions[0].last_transition_time,
            at(200),
            "same status keeps the time"
        );
        assert_eq!(conditions[0].reason, Reason::SimulatedAttestation.as_str());
        assert_eq!(conditions[0].observed_generation, Some(2));
        merge(
            &mut conditions,
            obs(Status::False, Reason::AttestationFailed),
            2,
            &at(400),
        );
        assert_eq!(conditions[0].last_transition_time, at(400));
        assert_eq!(conditions[0].status, "False");
    }

    #[test]
    fn ready_needs_every_other_condition_true() {
        let now = at(1);
        let mut conditions = Vec::new();
        assert_eq!(ready(&conditions).status, Status::Unknown);
        all_true(&mut conditions, &now);
        let r = ready(&conditions);
        assert_eq!((r.status, r.reason), (Status::True, Reason::AllReady));

        let down = Observation::new(
            types::SCHEDULER_READY,
            Status::False,
            Reason::Unhealthy,
            "x",
        );
        merge(&mut conditions, down, 1, &now);
        let r = ready(&conditions);
        assert_eq!((r.status, r.reason), (Status::False, Reason::NotReady));
        assert!(
            r.message.contains("SchedulerReady=False (Unhealthy)"),
            "{}",
            r.message
        );
    }

    #[test]
    fn ready_carries_a_terminal_reason() {
        let now = at(1);
        let mut conditions = Vec::new();
        all_true(&mut conditions, &now);
        let bad = Observation::new(
            types::ATTESTED,
            Status::False,
            Reason::AttestationFailed,
            "pcr0",
        );
        merge(&mut conditions, bad, 1, &now);
        let r = ready(&conditions);
        assert_eq!(
            (r.status, r.reason),
            (Status::False, Reason::AttestationFailed)
        );
        merge(&mut conditions, r, 1, &now);
        assert_eq!(phase(&conditions, false, true), Phase::Failed);
    }

    #[test]
    fn phases_follow_the_lifecycle() {
        let now = at(1);
        let mut conditions = Vec::new();
        assert_eq!(phase(&conditions, false, false), Phase::Pending);
        let launching = Observation::new(
            types::ENCLAVE_RUNNING,
            Status::False,
            Reason::Launching,
            "pod pending",
        );
        merge(&mut conditions, launching, 1, &now);
        assert_eq!(phase(&conditions, false, false), Phase::Launching);
        let running = Observation::new(types::ENCLAVE_RUNNING, Status::True, Reason::Running, "");
        merge(&mut conditions, running, 1, &now);
        assert_eq!(phase(&conditions, false, false), Phase::Attesting);
        let attested = Observation::new(types::ATTESTED, Status::True, Reason::Verified, "");
        merge(&mut conditions, attested, 1, &now);
        assert_eq!(phase(&conditions, false, false), Phase::Starting);
        all_true(&mut conditions, &now);
        let r = ready(&conditions);
        merge(&mut conditions, r, 1, &now);
        assert_eq!(phase(&conditions, false, false), Phase::Ready);
        assert_eq!(phase(&conditions, true, true), Phase::Terminating);
        let down = Observation::new(
            types::API_SERVER_READY,
            Status::False,
            Reason::Unhealthy,
            "",
        );
        merge(&mut conditions, down, 1, &now);
        let r = ready(&conditions);
        merge(&mut conditions, r, 1, &now);
        assert_eq!(phase(&conditions, false, true), Phase::Degraded);
    }
}
