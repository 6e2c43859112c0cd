//! The fixture answers the real sui-rpc client, in plain and TLS form.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use nautilus_sui_fixture::{CHAIN_ID, Chain, EPOCH, TestCa, serve, serve_tls};
use sui_rpc::proto::sui::rpc::v2::{GetServiceInfoRequest, ListOwnedObjectsRequest};
use sui_sdk_types::Address;

#[tokio::test]
async fn the_real_client_reads_service_info_and_pages_owned_objects() {
    let owner = Address::new([0x42; 32]);
    let chain = Arc::new(Chain {
        page_limit: 1,
        ..Chain::default().with_stake(owner, 5).with_stake(owner, 7)
    });
    let addr = serve(Arc::clone(&chain)).await;
    let mut client = sui_rpc::Client::new(format!("http://{addr}")).expect("client");

    let info = client
        .ledger_client()
        .get_service_info(GetServiceInfoRequest::default())
        .await
        .expect("service info")
        .into_inner();
    assert_eq!(info.chain_id.as_deref(), Some(CHAIN_ID));
    assert_eq!(info.epoch, Some(EPOCH));

    let mut request = ListOwnedObjectsRequest::default();
    request.owner = Some(owner.to_string());
    request.read_mask = Some(prost_types::FieldMask {
        paths: vec!["contents".into()],
    });
    let first = client
        .state_client()
        .list_owned_objects(request.clone())
        .await
        .expect("first page")
        .into_inner();
    assert_eq!(first.objects.len(), 1);
    request.page_token = first.next_page_token.clone();
    let second = client
        .state_client()
        .list_owned_objects(request)
        .await
        .expect("second page")
        .into_inner();
    assert_eq!(second.objects.len(), 1);
    assert!(second.next_page_token.is_none());
    assert_ne!(first.objects[0].object_id, second.objects[0].object_id);
    assert_eq!(chain.list_calls.load(Ordering::SeqCst), 2);

    chain.down.store(true, Ordering::SeqCst);
    let err = client
        .ledger_client()
        .get_service_info(GetServiceInfoRequest::default())
        .await
        .expect_err("down");
    assert_eq!(err.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn tls_presents_a_certificate_from_the_test_ca_and_offers_h2() {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};

    let ca = TestCa::generate();
    let addr = serve_tls(Arc::new(Chain::default()), &ca).await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.ca_pem.as_bytes()).expect("ca pem"))
        .expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("handshake verifies against the test CA");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    // Another CA's client refuses the server.
    let other = TestCa::generate();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(other.ca_pem.as_bytes()).expect("ca pem"))
        .expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let refused = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await;
    assert!(refused.is_err(), "a client trusting another CA must refuse");
}
