//! TLS and mutual TLS on the gRPC port, with certificates made at test time
//! (rcgen): a TLS server answers TLS clients that trust its CA and no one
//! else (not plaintext, not a client trusting another CA); under mutual TLS
//! a client needs a certificate signed by the configured client CA.
//! Transport only, so SQLite alone.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use keygate::{Client, v1 as pb};
use keygate_persistence::testing::TestDatabase;
use keygate_server::{Config, tls::TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A certificate and its key, PEM.
struct Pem {
    cert: String,
    key: String,
}

/// A CA that signs server and client certificates.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        Ca {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn sign(&self, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> Pem {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.extended_key_usages = vec![purpose];
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// A server on SQLite serving TLS with a certificate for `localhost` signed
/// by `ca`, asking client certificates of `client_ca` when given.
async fn tls_server(db: &TestDatabase, dir: &Path, ca: &Ca, client_ca: Option<&Ca>) -> TestServer {
    let server = ca.sign(
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let config = Config {
        tls: Some(TlsFiles {
            cert: write(dir, "server.pem", &server.cert),
            key: write(dir, "server.key", &server.key),
            client_ca: client_ca.map(|ca| write(dir, "client-ca.pem", &ca.pem())),
        }),
        ..test_config(db)
    };
    TestServer::start(config).await
}

/// Connects over TLS trusting `ca`, presenting `identity` if given, and
/// makes one management call; the error, if the connection or call fails.
async fn call_over_tls(
    server: &TestServer,
    ca: &Ca,
    identity: Option<&Pem>,
) -> Result<pb::ListKeysResponse, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(Identity::from_pem(&identity.cert, &identity.key));
    }
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{}", server.addr.port()))
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(5))
        .tls_config(tls)
        .expect("tls config");
    call(Client::connect_with(endpoint).await, &server.admin_key).await
}

async fn call(
    client: Result<Client, tonic::transport::Error>,
    admin_key: &str,
) -> Result<pb::ListKeysResponse, String> {
    let client = client.map_err(|e| format!("connect: {e:?}"))?;
    let mut admin = client.with_management_key(admin_key).expect("key");
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        admin.keys.list_keys(pb::ListKeysRequest::default()),
    )
    .await
    .map_err(|_| "no answer in 10 s".to_owned())?;
    result
        .map(tonic::Response::into_inner)
        .map_err(|status| format!("call: {status:?}"))
}

#[tokio::test]
async fn tls_answers_only_clients_that_trust_it() {
    let db = TestDatabase::sqlite();
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("Keygate test CA");
    let server = tls_server(&db, dir.path(), &ca, None).await;

    // A client trusting the CA: management and Authorize both work.
    let keys = call_over_tls(&server, &ca, None).await.expect("TLS call");
    assert_eq!(keys.keys.len(), 1, "the bootstrap key: {keys:?}");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost");
    let endpoint = Endpoint::from_shared(format!("https://127.0.0.1:{}", server.addr.port()))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls config");
    let mut client = Client::connect_with(endpoint).await.expect("connect");
    let resp = client
        .authorize(&server.admin_key, &[], "live", "")
        .await
        .expect("Authorize over TLS");
    assert_allowed(&resp);

    // Plaintext to the TLS port: refused.
    let plaintext = call(
        Client::connect(format!("http://127.0.0.1:{}", server.addr.port())).await,
        &server.admin_key,
    )
    .await;
    assert!(plaintext.is_err(), "plaintext answered: {plaintext:?}");

    // A client trusting another CA: refused (it cannot verify the server).
    let stranger = Ca::new("Another CA");
    let untrusted = call_over_tls(&server, &stranger, None).await;
    assert!(
        untrusted.as_ref().is_err_and(|e| e.contains("connect")),
        "a client trusting another CA connected: {untrusted:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn mutual_tls_needs_a_certificate_of_the_client_ca() {
    let db = TestDatabase::sqlite();
    let dir = tempfile::tempdir().expect("dir");
    let ca = Ca::new("Keygate test CA");
    let client_ca = Ca::new("Keygate clients CA");
    let server = tls_server(&db, dir.path(), &ca, Some(&client_ca)).await;

    let client = client_ca.sign(&["billing-service"], ExtendedKeyUsagePurpose::ClientAuth);
    call_over_tls(&server, &ca, Some(&client))
        .await
        .expect("a client with a certificate of the client CA");

    let anonymous = call_over_tls(&server, &ca, None).await;
    assert!(
        anonymous.is_err(),
        "no client certificate answered: {anonymous:?}"
    );

    // Signed by the server's CA, not the client CA: refused too.
    let rogue = ca.sign(&["rogue"], ExtendedKeyUsagePurpose::ClientAuth);
    let refused = call_over_tls(&server, &ca, Some(&rogue)).await;
    assert!(
        refused.is_err(),
        "a certificate of another CA answered: {refused:?}"
    );

    // The server still answers good clients after refusing those.
    call_over_tls(&server, &ca, Some(&client))
        .await
        .expect("still serving");
    server.stop().await;
}
