//! The production [`KeySource`]: AWS KMS through `nautilus-kms`, dialled through the sidecar's
//! egress proxy (a CONNECT tunnel, TLS ending in the enclave, as for Sui), each call with a
//! fresh Recipient attestation from the agent's NSM (`public_key` = the RSA key `nautilus-kms`
//! made for that call, `user_data` = [`super::recipient_binding`]).

use std::sync::Arc;

use futures::future::BoxFuture;
use nautilus_kms::{
    Credentials, Dialer, KmsClient, KmsError, KmsTarget, RecipientAttester, Stream,
};
use nautilus_protocol::nsm::Nsm;
use nautilus_protocol::transport::{self, Endpoint};

use super::{DataKey, KeyError, KeyRequest, KeySource, KeySources};

/// Makes a [`KmsClient`]-backed key source per boot.
#[derive(Debug, Clone)]
pub struct KmsKeySources {
    /// The sidecar's egress proxy (`None`: direct, development only).
    pub egress_proxy: Option<Endpoint>,
    /// An extra trust root for the KMS endpoint (PEM; the local KMS's CA in development).
    pub extra_ca_pem: Option<String>,
}

struct TunnelDialer {
    proxy: Option<Endpoint>,
}

impl Dialer for TunnelDialer {
    fn dial(
        &self,
        host: String,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn Stream>>> {
        let proxy = self.proxy.clone();
        Box::pin(async move {
            let authority = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            let stream = match proxy {
                Some(proxy) => {
                    let mut stream = transport::connect(&proxy)
                        .await
                        .map_err(std::io::Error::other)?;
                    crate::egress::tunnel(&mut stream, &authority)
                        .await
                        .map_err(std::io::Error::other)?;
                    stream
                }
                None => transport::connect(&Endpoint::Tcp(authority))
                    .await
                    .map_err(std::io::Error::other)?,
            };
            Ok(Box::new(stream) as Box<dyn Stream>)
        })
    }
}

struct NsmAttester {
    nsm: Arc<dyn Nsm>,
    user_data: Vec<u8>,
}

impl RecipientAttester for NsmAttester {
    fn attest(&self, public_key_der: &[u8]) -> Result<Vec<u8>, String> {
        self.nsm
            .attest(Some(&self.user_data), None, Some(public_key_der))
            .map_err(|e| crate::errors::error_chain(&e))
    }
}

struct KmsKeySource {
    client: KmsClient,
    attester: NsmAttester,
}

impl std::fmt::Debug for KmsKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KmsKeySource").finish_non_exhaustive()
    }
}

fn key_error(error: KmsError) -> KeyError {
    let text = crate::errors::error_chain(&error);
    match error {
        // The key policy (or the key) says no: the same request would be refused again.
        KmsError::Refused { .. } | KmsError::Config { .. } => KeyError::Refused(text),
        _ => KeyError::Unavailable(text),
    }
}

impl KeySource for KmsKeySource {
    fn generate(&self) -> BoxFuture<'_, Result<(Vec<u8>, DataKey), KeyError>> {
        Box::pin(async move {
            let (blob, key) = self
                .client
                .generate_data_key(&self.attester)
                .await
                .map_err(key_error)?;
            Ok((blob, DataKey::new(*key.expose())))
        })
    }

    fn unwrap<'a>(&'a self, wrapped: &'a [u8]) -> BoxFuture<'a, Result<DataKey, KeyError>> {
        Box::pin(async move {
            let key = self
                .client
                .decrypt(wrapped, &self.attester)
                .await
                .map_err(key_error)?;
            Ok(DataKey::new(*key.expose()))
        })
    }
}

impl KeySources for KmsKeySources {
    fn key_source(&self, request: KeyRequest) -> Result<Arc<dyn KeySource>, KeyError> {
        let Some(credentials) = request.credentials else {
            // The sidecar may have them at its next connection.
            return Err(KeyError::Unavailable(
                "the sidecar relayed no AWS credentials".into(),
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = &self.extra_ca_pem {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject as _;
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| KeyError::Refused(format!("--kms-ca-file: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| KeyError::Refused(format!("--kms-ca-file: {e}")))?;
            }
        }
        let client = KmsClient::new(
            KmsTarget {
                key_id: request.kms.key_id,
                region: request.kms.region,
                endpoint: request.kms.endpoint,
            },
            Credentials {
                access_key_id: credentials.access_key_id.clone(),
                secret_access_key: credentials.secret_access_key.clone(),
                session_token: credentials.session_token.clone(),
            },
            Arc::new(TunnelDialer {
                proxy: self.egress_proxy.clone(),
            }),
            roots,
        )
        .map_err(key_error)?;
        Ok(Arc::new(KmsKeySource {
            client,
            attester: NsmAttester {
                nsm: request.nsm,
                user_data: request.user_data,
            },
        }))
    }
}
