//! Why a reconcile fails, and the short category that names it in Events and metrics.

use crate::api::ApiError;
use crate::desired;
use crate::runtime::RuntimeError;

/// Why a reconcile failed. [`Error::category`] is the Event reason and the metric label.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The spec or metadata could not be turned into children.
    #[error("computing the desired state")]
    Desired(#[from] desired::DesiredError),
    /// An API call failed.
    #[error(transparent)]
    Kube(#[from] ApiError),
    /// The enclave runtime failed.
    #[error("enclave runtime")]
    Runtime(#[from] RuntimeError),
    /// Deletion waits for the enclave pod to terminate (not a failure; retried soon).
    #[error("waiting for the enclave of {0} to stop")]
    Stopping(String),
    /// Adding or removing the finalizer failed, or the apply/cleanup step did.
    #[error(transparent)]
    Finalizer(Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Whether this is deletion waiting for the enclave to stop: not a failure (no Event, no
    /// failure metric), retried soon. Seen through the finalizer's wrapping.
    pub fn is_stopping(&self) -> bool {
        match self {
            Error::Stopping(_) => true,
            Error::Finalizer(inner) => matches!(
                inner.as_ref(),
                kube::runtime::finalizer::Error::ApplyFailed(e)
                    | kube::runtime::finalizer::Error::CleanupFailed(e) if e.is_stopping()
            ),
            _ => false,
        }
    }

    /// A short PascalCase category: the Event reason and the failure metric's label.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Desired(_) => "InvalidSpec",
            Error::Kube(_) => "KubernetesAPI",
            Error::Runtime(RuntimeError::Local { .. }) => "LocalRuntime",
            Error::Runtime(RuntimeError::Desired(_)) => "InvalidSpec",
            Error::Runtime(_) => "KubernetesAPI",
            Error::Stopping(_) => "EnclaveStopping",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "Finalizer",
            },
        }
    }

    /// The whole chain of causes, for Events and logs. A cause whose message the text already
    /// holds is not repeated: kube's errors (the finalizer's, the API's) print their cause in
    /// their own message and also return it as their source.
    pub fn chain(&self) -> String {
        nautilus_protocol::error_chain(self)
    }
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::kube_err;

    #[test]
    fn an_error_chain_names_each_cause_once() {
        let api = kube::Error::Api(Box::new(
            kube::core::Status::failure("boom", "Conflict").with_code(409),
        ));
        let err = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(
            kube_err("apply", "ConfigMap", "demo-boot")(api).into(),
        )));
        let chain = err.chain();
        assert_eq!(
            chain.matches("apply ConfigMap demo-boot").count(),
            1,
            "{chain}"
        );
        assert_eq!(
            chain.matches("failed to apply object").count(),
            1,
            "{chain}"
        );
        assert_eq!(chain.matches("boom: Conflict").count(), 1, "{chain}");
        assert_eq!(err.category(), "KubernetesAPI");
        assert!(!err.is_stopping());
    }

    #[test]
    fn stopping_is_seen_through_the_finalizer() {
        let stopping = || Error::Stopping("ns/demo".into());
        assert!(stopping().is_stopping());
        let wrapped = Error::Finalizer(Box::new(kube::runtime::finalizer::Error::CleanupFailed(
            stopping(),
        )));
        assert!(wrapped.is_stopping());
        assert!(
            !Error::Finalizer(Box::new(kube::runtime::finalizer::Error::UnnamedObject))
                .is_stopping()
        );
    }
}
