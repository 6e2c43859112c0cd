//! Talking to the host cluster's API server, for the controller and the runtime alike: the watch
//! cache ([`Cache`]), and the error of one failed call ([`ApiError`], made by [`kube_err`]).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::runtime::reflector::{ObjectRef, Store};

/// One API call that failed: what was attempted on which object.
#[derive(Debug, thiserror::Error)]
#[error("{verb} {kind} {name}")]
pub struct ApiError {
    /// What was attempted.
    pub verb: &'static str,
    /// Kind of the object.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// The client's error.
    #[source]
    pub source: kube::Error,
}

/// The [`ApiError`] of `verb` on the `kind` `name`, for `map_err`.
pub fn kube_err(
    verb: &'static str,
    kind: &'static str,
    name: &str,
) -> impl FnOnce(kube::Error) -> ApiError {
    let name = name.to_owned();
    move |source| ApiError {
        verb,
        kind,
        name,
        source,
    }
}

/// The watch cache: the children and enclave pods as the controller's watches see them. Reconciles
/// read from it instead of the API server, and compare the desired children with it (through
/// [`crate::desired::APPLIED_HASH_KEY`]) so that nothing unchanged is applied again.
#[derive(Clone)]
pub struct Cache {
    /// Boot ConfigMaps.
    pub config_maps: Store<ConfigMap>,
    /// Enclave StatefulSets.
    pub stateful_sets: Store<StatefulSet>,
    /// Enclave Services.
    pub services: Store<Service>,
    /// Kubeconfig Secrets.
    pub secrets: Store<Secret>,
    /// Enclave pods.
    pub pods: Store<Pod>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("config_maps", &self.config_maps.len())
            .field("stateful_sets", &self.stateful_sets.len())
            .field("services", &self.services.len())
            .field("secrets", &self.secrets.len())
            .field("pods", &self.pods.len())
            .finish()
    }
}

/// How long a reconcile waits for the watch cache's first list before it reads and writes
/// through the API server instead.
const CACHE_WAIT: Duration = Duration::from_secs(30);

impl Cache {
    /// The cached object `name` in `namespace`.
    pub fn get<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
    where
        K: kube::Resource<DynamicType = ()> + Clone,
    {
        store.get(&ObjectRef::new(name).within(namespace))
    }

    /// Wait (at most [`CACHE_WAIT`]) until every store has its first list; `false` if one did not.
    pub(crate) async fn ready(&self) -> bool {
        let all = async {
            self.config_maps.wait_until_ready().await.is_ok()
                && self.stateful_sets.wait_until_ready().await.is_ok()
                && self.services.wait_until_ready().await.is_ok()
                && self.secrets.wait_until_ready().await.is_ok()
                && self.pods.wait_until_ready().await.is_ok()
        };
        tokio::time::timeout(CACHE_WAIT, all).await.unwrap_or(false)
    }
}
