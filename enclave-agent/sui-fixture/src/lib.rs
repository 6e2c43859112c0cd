//! A local Sui full node for tests and development: a tonic server implementing the real
//! `sui-rpc` `StateService::list_owned_objects` and `LedgerService::get_service_info` over
//! fixture chain state, with paging, a type filter, call counters and failure switches.
//!
//! It serves plain HTTP/2 ([`serve`]) or TLS ([`serve_tls`], with a throwaway CA from
//! [`TestCa`]) so that a client that verifies the full node's certificate, as the enclave agent
//! does, can be tested against it. Only what stake lookups use is implemented; every other RPC
//! answers `UNIMPLEMENTED` as a real server without that method would.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde::Serialize;
use sui_rpc::proto::sui::rpc::v2::ledger_service_server::{LedgerService, LedgerServiceServer};
use sui_rpc::proto::sui::rpc::v2::state_service_server::{StateService, StateServiceServer};
use sui_rpc::proto::sui::rpc::v2::{
    Bcs, GetServiceInfoRequest, GetServiceInfoResponse, ListOwnedObjectsRequest,
    ListOwnedObjectsResponse, Object,
};
use sui_sdk_types::{Address, StructTag};
use tonic::{Request, Response, Status};

/// Chain id the fixture reports unless told otherwise (a base58 digest, as Sui's are).
pub const CHAIN_ID: &str = "4btiuiMPvEENsttpZC7CZ53DruC3MAgfznDbASZ7DR6S";
/// Epoch the fixture reports unless told otherwise.
pub const EPOCH: u64 = 700;
/// The native stake type, as full nodes print it (full-length address).
pub const STAKED_SUI_TYPE: &str =
    "0x0000000000000000000000000000000000000000000000000000000000000003::staking_pool::StakedSui";

#[derive(Serialize)]
struct StakedSuiBcs {
    id: [u8; 32],
    pool_id: [u8; 32],
    stake_activation_epoch: u64,
    principal: u64,
}

/// A `0x3::staking_pool::StakedSui` object with BCS contents (80 bytes), id `[n; 32]`.
pub fn staked_sui(n: u8, activation_epoch: u64, principal: u64) -> Object {
    let bytes = bcs::to_bytes(&StakedSuiBcs {
        id: [n; 32],
        pool_id: [0xaa; 32],
        stake_activation_epoch: activation_epoch,
        principal,
    })
    .expect("fixed-size struct encodes");
    let mut object = Object::default();
    object.object_id = Some(Address::new([n; 32]).to_string());
    object.object_type = Some(STAKED_SUI_TYPE.into());
    let mut contents = Bcs::default();
    contents.name = Some("StakedSui".into());
    contents.value = Some(bytes.into());
    object.contents = Some(contents);
    object
}

/// An object of a custom Move type whose JSON has `id` and a string `amount`, id `[n; 32]`.
pub fn custom(n: u8, object_type: &str, amount: &str) -> Object {
    use prost_types::value::Kind;
    let string = |s: &str| prost_types::Value {
        kind: Some(Kind::StringValue(s.into())),
    };
    let mut object = Object::default();
    object.object_id = Some(Address::new([n; 32]).to_string());
    object.object_type = Some(object_type.into());
    let fields = [
        ("id".to_string(), string("0x1")),
        ("amount".to_string(), string(amount)),
    ];
    object.json = Some(Box::new(prost_types::Value {
        kind: Some(Kind::StructValue(prost_types::Struct {
            fields: fields.into_iter().collect(),
        })),
    }));
    object
}

/// Fixture chain state, call counters and failure switches.
#[derive(Debug)]
pub struct Chain {
    /// Objects per owner, in listing order.
    pub owned: HashMap<Address, Vec<Object>>,
    /// Most objects per page, whatever the client asks for.
    pub page_limit: usize,
    /// Chain id reported by `GetServiceInfo`.
    pub chain_id: String,
    /// Epoch reported by `GetServiceInfo`.
    pub epoch: u64,
    /// `ListOwnedObjects` calls so far.
    pub list_calls: AtomicUsize,
    /// `GetServiceInfo` calls so far.
    pub info_calls: AtomicUsize,
    /// While set, every call fails with `UNAVAILABLE`.
    pub down: AtomicBool,
    /// Return objects of every type, ignoring the request's filter (a misbehaving node).
    pub ignore_type_filter: bool,
    /// Delay before answering `ListOwnedObjects`.
    pub delay: Duration,
    /// Owners who unstaked: their StakedSui objects are gone from the listing, as after
    /// `request_withdraw_stake` (see [`Chain::withdraw`]).
    pub withdrawn: std::sync::Mutex<std::collections::HashSet<Address>>,
}

impl Default for Chain {
    fn default() -> Self {
        Self {
            owned: HashMap::new(),
            page_limit: 50,
            chain_id: CHAIN_ID.into(),
            epoch: EPOCH,
            list_calls: AtomicUsize::new(0),
            info_calls: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            ignore_type_filter: false,
            delay: Duration::ZERO,
            withdrawn: std::sync::Mutex::default(),
        }
    }
}

impl Chain {
    /// Give `owner` a StakedSui of `principal` MIST, active since epoch 1.
    pub fn with_stake(mut self, owner: Address, principal: u64) -> Self {
        let objects = self.owned.entry(owner).or_default();
        let n = u8::try_from(objects.len() + 1).unwrap_or(u8::MAX);
        objects.push(staked_sui(n, 1, principal));
        self
    }

    /// Unstake everything `owner` staked, from now on (the StakedSui objects are consumed by
    /// the withdrawal, so a listing no longer returns them).
    pub fn withdraw(&self, owner: Address) {
        self.withdrawn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(owner);
    }

    fn has_withdrawn(&self, owner: &Address) -> bool {
        self.withdrawn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(owner)
    }

    fn check_up(&self) -> Result<(), Status> {
        if self.down.load(Ordering::SeqCst) {
            Err(Status::unavailable("fullnode is down"))
        } else {
            Ok(())
        }
    }
}

#[tonic::async_trait]
impl StateService for Chain {
    async fn list_owned_objects(
        &self,
        request: Request<ListOwnedObjectsRequest>,
    ) -> Result<Response<ListOwnedObjectsResponse>, Status> {
        self.list_calls.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        tokio::time::sleep(self.delay).await;
        let request = request.into_inner();
        let owner = Address::from_str(request.owner.as_deref().unwrap_or_default())
            .map_err(|_| Status::invalid_argument("owner is not an address"))?;
        let wanted = match request.object_type.as_deref() {
            Some(t) => Some(
                StructTag::from_str(t)
                    .map_err(|_| Status::invalid_argument("object_type is not a struct tag"))?,
            ),
            None => None,
        };
        let mask = request.read_mask.map(|m| m.paths).unwrap_or_default();
        if !mask.iter().any(|p| p == "contents" || p == "json") {
            return Err(Status::invalid_argument(
                "fixture: read mask must ask for contents or json",
            ));
        }
        let withdrawn = self.has_withdrawn(&owner);
        let objects: Vec<_> = self
            .owned
            .get(&owner)
            .into_iter()
            .flatten()
            .filter(|_| !withdrawn)
            .filter(|o| {
                self.ignore_type_filter
                    || wanted.as_ref().is_none_or(|w| {
                        StructTag::from_str(o.object_type.as_deref().unwrap_or_default())
                            .ok()
                            .as_ref()
                            == Some(w)
                    })
            })
            .cloned()
            .collect();
        let start = match request.page_token {
            Some(token) => {
                let bytes: [u8; 4] = token
                    .as_ref()
                    .try_into()
                    .map_err(|_| Status::invalid_argument("page token is not ours"))?;
                u32::from_be_bytes(bytes) as usize
            }
            None => 0,
        };
        let size = (request.page_size.unwrap_or(50) as usize).min(self.page_limit.max(1));
        let start = start.min(objects.len());
        let end = (start + size).min(objects.len());
        let mut response = ListOwnedObjectsResponse::default();
        response.objects = objects[start..end].to_vec();
        if end < objects.len() {
            let token = u32::try_from(end).unwrap_or(u32::MAX).to_be_bytes();
            response.next_page_token = Some(token.to_vec().into());
        }
        Ok(Response::new(response))
    }
}

#[tonic::async_trait]
impl LedgerService for Chain {
    async fn get_service_info(
        &self,
        _: Request<GetServiceInfoRequest>,
    ) -> Result<Response<GetServiceInfoResponse>, Status> {
        self.info_calls.fetch_add(1, Ordering::SeqCst);
        self.check_up()?;
        let mut info = GetServiceInfoResponse::default();
        info.chain_id = Some(self.chain_id.clone());
        info.chain = Some("mainnet".into());
        info.epoch = Some(self.epoch);
        Ok(Response::new(info))
    }
}

fn router(chain: Arc<Chain>) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        .add_service(StateServiceServer::from_arc(Arc::clone(&chain)))
        .add_service(LedgerServiceServer::from_arc(chain))
}

/// Serve `chain` over plain HTTP/2 on a free loopback port; the server runs until the runtime
/// ends. Returns its address (`http://{addr}`).
pub async fn serve(chain: Arc<Chain>) -> SocketAddr {
    use futures::StreamExt as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound address");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|tcp| {
        // As a real node's server does: without it, small responses wait on delayed ACKs.
        tcp.inspect(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    });
    tokio::spawn(router(chain).serve_with_incoming(incoming));
    addr
}

/// A throwaway CA and a server certificate it signed for `localhost` and `127.0.0.1`.
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA certificate (PEM): what a client trusts.
    pub ca_pem: String,
    /// The server certificate chain (PEM).
    pub server_cert_pem: String,
    /// The server key (PKCS#8 PEM).
    pub server_key_pem: String,
}

impl TestCa {
    /// Generate one.
    pub fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "nautilus sui fixture CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let server_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        let server = server_params
            .signed_by(&server_key, &issuer)
            .expect("server cert");
        Self {
            ca_pem: ca.pem(),
            server_cert_pem: server.pem(),
            server_key_pem: server_key.serialize_pem(),
        }
    }
}

/// Serve `chain` over TLS (HTTP/2 via ALPN) with `ca`'s server certificate on a free loopback
/// port. Returns its address (`https://127.0.0.1:{port}` or `https://localhost:{port}`).
pub async fn serve_tls(chain: Arc<Chain>, ca: &TestCa) -> SocketAddr {
    use futures::StreamExt as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_slice_iter(ca.server_cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("server certificate PEM");
    let key = PrivateKeyDer::from_pem_slice(ca.server_key_pem.as_bytes()).expect("server key");
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("tls versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("bound address");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener)
        .filter_map(move |tcp| {
            let acceptor = acceptor.clone();
            async move {
                let tcp = tcp.ok()?;
                let _ = tcp.set_nodelay(true);
                // A failed handshake drops that connection only.
                acceptor
                    .accept(tcp)
                    .await
                    .ok()
                    .map(|tls| Ok::<_, std::io::Error>(TlsConn(tls)))
            }
        })
        .boxed();
    tokio::spawn(router(chain).serve_with_incoming(incoming));
    addr
}

/// A server-side TLS connection that tonic can serve.
struct TlsConn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>);

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl tokio::io::AsyncRead for TlsConn {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConn {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
