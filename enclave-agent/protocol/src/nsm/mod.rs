//! The Nitro Secure Module as a trait, so the agent can attest on real hardware and anywhere
//! else alike.
//!
//! - [`NitroNsm`] talks to `/dev/nsm` through `aws-nitro-enclaves-nsm-api`. It compiles on
//!   every platform and opens the device only when called; off-enclave it fails with
//!   [`NsmError::Unavailable`].
//! - [`SimulatedNsm`] issues documents in exactly the AWS format, signed by a test CA chain
//!   it generates. A verifier accepts them only when given [`SimulatedNsm::root_pem`] as the
//!   trust anchor, never with the default AWS root.

mod simulated;

use aws_nitro_enclaves_nsm_api::api::{ErrorCode, Request, Response};
use aws_nitro_enclaves_nsm_api::driver::{nsm_exit, nsm_init, nsm_process_request};
use serde_bytes::ByteBuf;

pub use simulated::{SimulatedNsm, generate_root_key, root_pem_for_key};

/// Largest `user_data` and `nonce` the NSM accepts.
pub const MAX_USER_DATA_BYTES: usize = 512;
/// Largest `public_key` the NSM accepts.
pub const MAX_PUBLIC_KEY_BYTES: usize = 1024;

/// Why the NSM could not produce a document or a PCR value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NsmError {
    /// `/dev/nsm` could not be opened.
    #[error(
        "cannot open /dev/nsm: not running inside a nitro enclave (use the simulated nsm for development)"
    )]
    Unavailable,
    /// The NSM answered with an error code.
    #[error("nsm refused the request: {code}")]
    Refused {
        /// The NSM's error code.
        code: String,
    },
    /// The NSM answered with a response of another kind.
    #[error("nsm sent an unexpected response to {request}")]
    UnexpectedResponse {
        /// The request sent.
        request: &'static str,
    },
    /// An input exceeds the NSM's limit.
    #[error("{field} is {len} bytes, the nsm accepts at most {max}")]
    InputTooLarge {
        /// Which input.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A PCR index outside what the module reports.
    #[error("pcr index {index} is out of range")]
    PcrIndex {
        /// The index asked for.
        index: u16,
    },
    /// The simulated NSM could not generate its certificates.
    #[error("simulated nsm could not issue a certificate: {reason}")]
    Certificate {
        /// What rcgen reported.
        reason: String,
    },
    /// The simulated NSM could not encode or sign the document.
    #[error("simulated nsm could not build the document: {reason}")]
    Encode {
        /// What failed.
        reason: String,
    },
}

/// A Nitro Secure Module.
pub trait Nsm: Send + Sync + std::fmt::Debug {
    /// Ask for a signed attestation document (COSE_Sign1 bytes) carrying the given optional
    /// fields. `None` yields CBOR null in the document, `Some(&[])` an empty byte string.
    fn attest(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError>;

    /// The current value of PCR `index`.
    fn describe_pcr(&self, index: u16) -> Result<Vec<u8>, NsmError>;
}

pub(crate) fn check_inputs(
    user_data: Option<&[u8]>,
    nonce: Option<&[u8]>,
    public_key: Option<&[u8]>,
) -> Result<(), NsmError> {
    for (field, value, max) in [
        ("user_data", user_data, MAX_USER_DATA_BYTES),
        ("nonce", nonce, MAX_USER_DATA_BYTES),
        ("public_key", public_key, MAX_PUBLIC_KEY_BYTES),
    ] {
        if let Some(value) = value
            && value.len() > max
        {
            return Err(NsmError::InputTooLarge {
                field,
                len: value.len(),
                max,
            });
        }
    }
    Ok(())
}

/// The real NSM at `/dev/nsm`, opened for each request and closed after it.
#[derive(Debug, Clone, Copy, Default)]
pub struct NitroNsm;

impl NitroNsm {
    fn request(request: Request) -> Result<Response, NsmError> {
        let fd = nsm_init();
        if fd < 0 {
            return Err(NsmError::Unavailable);
        }
        let response = nsm_process_request(fd, request);
        nsm_exit(fd);
        match response {
            Response::Error(code) => Err(NsmError::Refused {
                code: error_code_name(code),
            }),
            other => Ok(other),
        }
    }
}

fn error_code_name(code: ErrorCode) -> String {
    format!("{code:?}").to_lowercase()
}

impl Nsm for NitroNsm {
    fn attest(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        check_inputs(user_data, nonce, public_key)?;
        let to_buf = |v: Option<&[u8]>| v.map(|b| ByteBuf::from(b.to_vec()));
        match Self::request(Request::Attestation {
            user_data: to_buf(user_data),
            nonce: to_buf(nonce),
            public_key: to_buf(public_key),
        })? {
            Response::Attestation { document } => Ok(document),
            _ => Err(NsmError::UnexpectedResponse {
                request: "attestation",
            }),
        }
    }

    fn describe_pcr(&self, index: u16) -> Result<Vec<u8>, NsmError> {
        match Self::request(Request::DescribePCR { index })? {
            Response::DescribePCR { data, .. } => Ok(data),
            _ => Err(NsmError::UnexpectedResponse {
                request: "describe pcr",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_nsm_fails_clearly_off_enclave() {
        if std::path::Path::new("/dev/nsm").exists() {
            println!("skipped: /dev/nsm exists, this is an enclave");
            return;
        }
        let err = NitroNsm.attest(None, None, None).expect_err("no device");
        assert!(matches!(err, NsmError::Unavailable), "{err}");
        assert!(err.to_string().contains("/dev/nsm"));
    }

    #[test]
    fn oversized_inputs_are_refused_before_the_device() {
        let err = NitroNsm
            .attest(Some(&[0; 513]), None, None)
            .expect_err("too large");
        assert!(
            matches!(
                err,
                NsmError::InputTooLarge {
                    field: "user_data",
                    ..
                }
            ),
            "{err}"
        );
    }
}
