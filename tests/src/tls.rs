//! Certificates made for a test: a CA of its own and the server and client certificates it signs;
//! and [`https_get`], a one-shot HTTPS client that reports which certificate it was served.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::runtime;

/// A certificate authority that exists only for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A server's certificate chain and private key, signed by a [`TestCa`].
#[derive(Debug)]
pub struct ServerCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// The same certificate and key in PEM, as an operator would put them in files.
    pub cert_pem: String,
    pub key_pem: String,
}

impl ServerCert {
    /// SHA-256 of the (end-entity) certificate, as Mediary fingerprints it.
    pub fn sha256(&self) -> [u8; 32] {
        sha2::Sha256::digest(&self.chain[0]).into()
    }

    /// SHA-1 of the (end-entity) certificate, as OpenHIM fingerprinted client certificates.
    pub fn sha1(&self) -> [u8; 20] {
        sha1::Sha1::digest(&self.chain[0]).into()
    }

    /// Writes `<name>.pem` and `<name>.key` into `dir` (replacing them by rename, as certificate
    /// tooling does) and returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        for (path, text) in [(&cert, &self.cert_pem), (&key, &self.key_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write a PEM file");
            std::fs::rename(&tmp, path).expect("move a PEM file in place");
        }
        (cert, key)
    }
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("a CA certificate"),
        }
    }

    /// An intermediate CA that this one signs. What it issues chains to this CA only through its
    /// certificate ([`TestCa::der`]), which a client must present along with its own.
    pub fn intermediate(&self, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a CA key");
        TestCa {
            issuer: CertifiedIssuer::signed_by(params, key, &self.issuer)
                .expect("an intermediate CA certificate"),
        }
    }

    /// The CA certificate in PEM, as an operator would put it in a file.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> &CertificateDer<'static> {
        self.issuer.der()
    }

    /// SHA-256 of the CA certificate.
    pub fn sha256(&self) -> [u8; 32] {
        sha2::Sha256::digest(self.issuer.der()).into()
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn issue(&self, names: &[&str]) -> ServerCert {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        self.sign(CertificateParams::new(names).expect("server params"))
    }

    /// A client certificate for `name` (its common name).
    pub fn issue_client(&self, name: &str) -> ServerCert {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, name);
        self.sign(params)
    }

    /// A client certificate for `name` that expired long ago.
    pub fn issue_expired_client(&self, name: &str) -> ServerCert {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = date_time_ymd(2001, 1, 1);
        params.not_after = date_time_ymd(2002, 1, 1);
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> ServerCert {
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        ServerCert {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// What [`https_get`] got: the status, the headers, the body, and the certificate the server
/// presented.
#[derive(Debug)]
pub struct HttpsReply {
    pub status: u16,
    /// The response headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// SHA-256 of the server's certificate.
    pub served_sha256: [u8; 32],
    /// The TLS version negotiated.
    pub version: rustls::ProtocolVersion,
    /// Whether the handshake resumed an earlier session.
    pub resumed: bool,
}

impl HttpsReply {
    /// The first value of header `name` (any case), if there is one.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The TLS versions [`https_get`] may offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    Both,
    Tls12,
    Tls13,
}

/// One `GET path` over a new HTTPS connection to `addr` (as `localhost`), trusting `ca`, offering
/// `versions` and presenting `client` if given. `Err` says what failed (the handshake, usually).
pub fn https_get(
    addr: SocketAddr,
    path: &str,
    ca: &TestCa,
    client: Option<&ServerCert>,
    versions: Versions,
) -> Result<HttpsReply, String> {
    https_get_with(addr, path, &[], ca, client, versions)
}

/// [`https_get`] with extra request `headers` (`Authorization`, say).
pub fn https_get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    ca: &TestCa,
    client: Option<&ServerCert>,
    versions: Versions,
) -> Result<HttpsReply, String> {
    https_get_using(addr, path, headers, &https_client(ca, client, versions))
}

/// A TLS client configuration trusting `ca`, offering `versions` and presenting `client` if given.
/// Connections made with one configuration ([`https_get_using`]) resume its sessions.
pub fn https_client(
    ca: &TestCa,
    client: Option<&ServerCert>,
    versions: Versions,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("a root");
    let versions: &[&'static rustls::SupportedProtocolVersion] = match versions {
        Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Tls12 => &[&rustls::version::TLS12],
        Versions::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("TLS versions")
    .with_root_certificates(roots);
    let config = match client {
        Some(cert) => builder
            .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())
            .expect("a usable client certificate"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// One `GET path` with `headers` over a new HTTPS connection to `addr` (as `localhost`), made
/// with `config` (see [`https_client`]).
pub fn https_get_using(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    config: &Arc<rustls::ClientConfig>,
) -> Result<HttpsReply, String> {
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n");
    runtime().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = ServerName::try_from("localhost").expect("a server name");
        let mut stream = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            connector.connect(name, tcp),
        )
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|e| format!("handshake: {e}"))?;
        let (_, connection) = stream.get_ref();
        let served_sha256: [u8; 32] = connection
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| sha2::Sha256::digest(c).into())
            .ok_or("no server certificate")?;
        let version = connection.protocol_version().ok_or("no TLS version")?;
        let resumed = connection.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        // A refused TLS 1.3 client certificate shows here, as an alert instead of a response.
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {text:?}"))?;
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let headers = head
            .lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let body = body.to_owned();
        Ok(HttpsReply {
            status,
            headers,
            body,
            served_sha256,
            version,
            resumed,
        })
    })
}
