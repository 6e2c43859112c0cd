//! Publishing `events.k8s.io/v1` Events about NautilusMasters, as a series when one repeats.
//!
//! kube's `Recorder` does the same, but keeps a clone of every Event it published (with its
//! object reference twice) for six minutes to build series: with a thousand resources that is
//! megabytes the operator holds for nothing, and its map never gives the memory back. This
//! publisher remembers only what a series needs: the Event's name and count per (resource,
//! type, reason), forgets a resource once it is deleted, and expires entries as Kubernetes' own
//! event recorder does (after [`SERIES_WINDOW`] without a repeat, a new Event starts).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

/// A repeat within this window joins the previous Event's series (as kube's and client-go's
/// recorders do); a later one starts a new Event.
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// Longest note an Event carries (the API server refuses more than 1 KiB).
pub const MAX_NOTE: usize = 1000;

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something the user should look at.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// What identifies a series: one resource (by UID, so a re-created one starts afresh), one
/// type, one reason.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    namespace: String,
    name: String,
    uid: String,
    type_: EventType,
    reason: String,
}

/// What is remembered of the last Event of a series.
#[derive(Debug)]
struct Seen {
    event_name: String,
    count: i32,
    last: Instant,
}

/// Publishes Events as `controller` / `instance`.
pub struct Publisher {
    client: Client,
    controller: String,
    instance: String,
    series: Mutex<HashMap<SeriesKey, Seen>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("controller", &self.controller)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// `note` cut to at most [`MAX_NOTE`] bytes, at a character boundary.
fn cut(mut note: String) -> String {
    if note.len() > MAX_NOTE {
        let mut end = MAX_NOTE;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
    note
}

impl Publisher {
    /// A publisher reporting as `controller` (`reportingController`) from `instance`
    /// (`reportingInstance`).
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Self {
            client,
            controller: controller.to_owned(),
            instance: instance.to_owned(),
            series: Mutex::new(HashMap::new()),
        }
    }

    fn series(&self) -> std::sync::MutexGuard<'_, HashMap<SeriesKey, Seen>> {
        self.series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many series are remembered (for tests and the memory budget).
    pub fn remembered(&self) -> usize {
        self.series().len()
    }

    /// Publish an Event about `object`: the first of its (type, reason) within
    /// [`SERIES_WINDOW`] is created, a repeat patches that Event's `series` (its note stays the
    /// first one's, as in Kubernetes).
    pub async fn publish<K>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = ()>,
    {
        let namespace = object.namespace().unwrap_or_else(|| "default".into());
        let key = SeriesKey {
            namespace: namespace.clone(),
            name: object.name_any(),
            uid: object.uid().unwrap_or_default(),
            type_,
            reason: reason.to_owned(),
        };
        let now = Instant::now();
        let repeat = {
            let mut series = self.series();
            series.retain(|_, seen| now.duration_since(seen.last) < SERIES_WINDOW);
            series.get_mut(&key).map(|seen| {
                seen.count = seen.count.saturating_add(1);
                seen.last = now;
                (seen.event_name.clone(), seen.count)
            })
        };
        let events = Api::<Event>::namespaced(self.client.clone(), &namespace);
        if let Some((event_name, count)) = repeat {
            let patch = json!({
                "series": {"count": count, "lastObservedTime": MicroTime(Timestamp::now())},
            });
            match events
                .patch(&event_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => return Ok(()),
                // The API server expired the Event (its TTL is an hour by default): start anew.
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => return Err(err),
            }
        }
        let event = self.event(object, &namespace, type_, reason, action, cut(note));
        let event_name = event.metadata.name.clone().unwrap_or_default();
        events.create(&PostParams::default(), &event).await?;
        self.series().insert(
            key,
            Seen {
                event_name,
                count: 1,
                last: now,
            },
        );
        Ok(())
    }

    /// Forget the series of the resource `namespace/name` (it was deleted).
    pub fn forget(&self, namespace: &str, name: &str) {
        self.series()
            .retain(|key, _| key.namespace != namespace || key.name != name);
    }

    fn event<K>(
        &self,
        object: &K,
        namespace: &str,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) -> Event
    where
        K: Resource<DynamicType = ()>,
    {
        let now = Timestamp::now();
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", object.name_any(), now.as_nanosecond())),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(action.to_owned()),
            reason: Some(reason.to_owned()),
            note: Some(note),
            type_: Some(type_.as_str().to_owned()),
            regarding: Some(ObjectReference {
                namespace: Some(namespace.to_owned()),
                ..object.object_ref(&())
            }),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{Call, Reply, api_server, mk_nm, not_found};

    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events?";
    const ONE: &str = "/apis/events.k8s.io/v1/namespaces/team-a/events/demo.";
    const MERGE: &str = "application/merge-patch+json";

    fn created(reason: &str, note: &str) -> Call {
        Call::post(EVENTS)
            .body(serde_json::json!({
                "type": "Warning", "reason": reason, "note": note, "action": "Reconcile",
                "reportingController": "nautilus-operator", "reportingInstance": "test-0",
                "regarding": {"apiVersion": "nautilus.k3s-daas.io/v1alpha1",
                              "kind": "NautilusMaster", "name": "demo", "namespace": "team-a"},
            }))
            .reply(Reply::Echo(201))
    }

    #[test]
    fn notes_are_cut_at_a_character_boundary() {
        assert_eq!(cut("short".into()), "short");
        let long = "é".repeat(MAX_NOTE);
        let cut = cut(long);
        assert!(
            cut.len() <= MAX_NOTE && cut.len() >= MAX_NOTE - 1,
            "{}",
            cut.len()
        );
        assert!(cut.chars().all(|c| c == 'é'));
    }

    /// A repeat patches only the series of the first Event; another reason is its own Event;
    /// a repeat of an Event the API server expired starts anew; a forgotten resource too. Only
    /// one entry per series is kept, and none once the resource is forgotten.
    #[tokio::test]
    async fn repeats_become_a_series_and_deleted_resources_are_forgotten() {
        let (client, server) = api_server();
        let scenario = server.expect(vec![
            created("Failing", "first"),
            Call::patch(format!("{ONE}*"))
                .content_type(MERGE)
                .body(serde_json::json!({"series": {"count": 2}}))
                .reply(Reply::Echo(200)),
            Call::patch(format!("{ONE}*"))
                .content_type(MERGE)
                .body(serde_json::json!({"series": {"count": 3}}))
                .reply(Reply::Echo(200)),
            created("Other", "other"),
            Call::patch(format!("{ONE}*"))
                .content_type(MERGE)
                .body(serde_json::json!({"series": {"count": 4}}))
                .reply(not_found()),
            created("Failing", "expired"),
            created("Failing", "after forget"),
        ]);
        let publisher = Publisher::new(client, "nautilus-operator", "test-0");
        let nm = mk_nm("demo");
        let send = |reason: &'static str, note: &'static str| {
            publisher.publish(&nm, EventType::Warning, reason, "Reconcile", note.into())
        };
        send("Failing", "first").await.expect("create");
        send("Failing", "second").await.expect("patch");
        send("Failing", "third").await.expect("patch");
        send("Other", "other").await.expect("create");
        assert_eq!(publisher.remembered(), 2);
        send("Failing", "expired").await.expect("create after 404");
        assert_eq!(publisher.remembered(), 2);
        publisher.forget("team-a", "demo");
        assert_eq!(publisher.remembered(), 0);
        send("Failing", "after forget").await.expect("create");
        scenario.verified().await;
    }
}
