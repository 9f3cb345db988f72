//! TLS for the proxy's HTTPS listener and the management API: certificates from files, reloaded
//! when they change, and what a client's certificate says about who it is.
//!
//! [`TlsSettings`] is `[tls]` checked: the files are read when the configuration is parsed, so a
//! bad file at start is a configuration error naming its field. [`TlsServer`] serves from them: the
//! certificate sits behind a resolver that [`TlsServer::reload`] swaps when the files' contents
//! change (new connections get the new certificate; open ones keep theirs), and a bad new file is
//! logged and ignored. TLS 1.2 and 1.3 only, with rustls and its ring provider.
//!
//! Mutual TLS follows OpenHIM (`requestCert: true, rejectUnauthorized: false`): with
//! `client_ca_files` the server asks for a certificate but a client may present none and use
//! another authentication. A certificate that *is* presented must verify against those CAs, or the
//! handshake fails: rustls's verifier decides during the handshake, and refusing a bad certificate
//! outright is safer than serving the client as anonymous (it would then reach public channels
//! while believing itself identified). A verified certificate becomes a [`PeerIdentity`], attached
//! to every request of its connection, if it still verifies when the connection is served: a
//! resumed session brings its certificate along unchecked, and its CA may have been withdrawn.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use serde_json::Value;
use sha1::Digest as _;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::fields::{FieldErrors, Fields};

/// What the TLS layer learned about a client from the certificate it presented, once that
/// certificate was verified against the configured certificate authorities. Absent on plain HTTP,
/// and when the client presented no certificate (or one that did not verify).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// SHA-256 of the client's own (end-entity) certificate, DER.
    pub fingerprint_sha256: [u8; 32],
    /// SHA-1 of the same certificate: only to match clients imported from OpenHIM, which records
    /// SHA-1 fingerprints.
    pub fingerprint_sha1: [u8; 20],
    /// SHA-256 of each certificate authority the client's certificate was verified through,
    /// nearest first (the intermediates of the verified path, then the configured CA that anchors
    /// it): OpenHIM's "in-chain" lookup identifies a client by the authority that issued its
    /// certificate.
    pub issuers_sha256: Vec<[u8; 32]>,
    /// SHA-1 of the same authorities, in the same order: only to match clients imported from
    /// OpenHIM.
    pub issuers_sha1: Vec<[u8; 20]>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of some bytes.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(bytes).into()
}

/// A certificate chain and its private key, read from PEM files: the server's certificate, or the
/// client certificate `secured` routes present (`[upstream] client_cert_file`).
#[derive(Debug)]
pub struct CertAndKey {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for CertAndKey {
    fn clone(&self) -> Self {
        CertAndKey {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl CertAndKey {
    /// Reads a chain (`cert_file`, PEM, end-entity first) and its key (`key_file`: PKCS#8, PKCS#1
    /// or SEC1 PEM), and checks that they belong together. The error names which file is wrong.
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<CertAndKey, (Which, String)> {
        let chain = read_certificates(cert_file).map_err(|e| (Which::Cert, e))?;
        let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
            (
                Which::Key,
                format!("{}: no PEM private key: {e}", key_file.display()),
            )
        })?;
        let loaded = CertAndKey { chain, key };
        loaded.certified().map_err(|e| {
            (
                Which::Key,
                format!(
                    "{}: does not fit the certificate in {}: {e}",
                    key_file.display(),
                    cert_file.display()
                ),
            )
        })?;
        Ok(loaded)
    }

    /// The chain with a signing key, checked to match.
    fn certified(&self) -> Result<CertifiedKey, rustls::Error> {
        CertifiedKey::from_der(self.chain.clone(), self.key.clone_key(), &provider())
    }
}

/// Which of a certificate's two files a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Cert,
    Key,
}

/// Every certificate in a PEM file; none is an error.
fn read_certificates(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("{}: cannot read: {e}", file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", file.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: contains no PEM certificate", file.display()));
    }
    Ok(certs)
}

/// The certificate authorities client certificates are verified against, and what is needed to
/// name the one that anchors a chain.
#[derive(Debug)]
struct ClientCas {
    roots: Arc<RootCertStore>,
    /// Each CA, to recognise it as a verified chain's trust anchor.
    anchors: Vec<Anchor>,
}

/// A configured CA as a trust anchor (subject and public key, as webpki names an anchor), and the
/// SHA-256 and SHA-1 of its certificate.
#[derive(Debug, PartialEq, Eq)]
struct Anchor {
    subject: Vec<u8>,
    /// The issuer's name (as webpki encodes names): the same as `subject` when self-issued.
    issuer: Vec<u8>,
    spki: Vec<u8>,
    sha256: [u8; 32],
    sha1: [u8; 20],
}

impl ClientCas {
    fn load(files: &[PathBuf]) -> Result<ClientCas, String> {
        let mut roots = RootCertStore::empty();
        let mut anchors = Vec::new();
        for file in files {
            for cert in read_certificates(file)? {
                let unusable = |e: &dyn std::fmt::Display| {
                    format!("{}: not a usable CA certificate: {e}", file.display())
                };
                let anchor = webpki::anchor_from_trusted_cert(&cert).map_err(|e| unusable(&e))?;
                let subject = anchor.subject.as_ref().to_vec();
                let issuer = webpki::EndEntityCert::try_from(&cert)
                    .map(|c| c.issuer().to_vec())
                    .unwrap_or_else(|_| subject.clone());
                anchors.push(Anchor {
                    subject,
                    issuer,
                    spki: anchor.subject_public_key_info.as_ref().to_vec(),
                    sha256: sha256(&cert),
                    sha1: sha1::Sha1::digest(&cert).into(),
                });
                roots.add(cert).map_err(|e| unusable(&e))?;
            }
        }
        Ok(ClientCas {
            roots: Arc::new(roots),
            anchors,
        })
    }
}

/// What the files said at one moment: the certificate and the client CAs.
#[derive(Debug, Clone)]
struct Material {
    key: Arc<CertifiedKey>,
    cas: Option<Arc<ClientCas>>,
}

/// `[tls]`, checked. Set when `cert_file` is: then the proxy also listens for HTTPS on
/// `server.https_port`, and the management API speaks HTTPS.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// `cert_file`: the server's certificate chain, PEM, its own certificate first. Relative paths
    /// are relative to the config file's folder.
    pub cert_file: PathBuf,
    /// `key_file`: its private key, PEM (PKCS#8, PKCS#1 or SEC1). Required with `cert_file`.
    pub key_file: PathBuf,
    /// `client_ca_files`: certificate authorities (PEM files) for mutual TLS. When set, HTTPS
    /// clients are asked for a certificate, which must chain to one of these if presented; a client
    /// may present none and authenticate otherwise. Default none: no client certificates.
    pub client_ca_files: Vec<PathBuf>,
    /// `reload_interval`: how often the files are checked for changes. Default 5 s.
    pub reload_interval: Duration,
    /// `api`: the management API speaks HTTPS with the same certificate. Default true.
    pub api: bool,
    /// The files as read when the configuration was parsed.
    material: Material,
}

impl TlsSettings {
    fn read(&self) -> Result<Material, (&'static str, String)> {
        read_material(&self.cert_file, &self.key_file, &self.client_ca_files)
    }
}

fn read_material(
    cert_file: &Path,
    key_file: &Path,
    client_ca_files: &[PathBuf],
) -> Result<Material, (&'static str, String)> {
    // The certificate is judged before the key, so the first error names the first file to fix.
    let loaded = CertAndKey::load(cert_file, key_file).map_err(|(which, e)| match which {
        Which::Cert => ("cert_file", e),
        Which::Key => ("key_file", e),
    })?;
    let key = loaded
        .certified()
        .map_err(|e| ("key_file", format!("{}: {e}", key_file.display())))?;
    let cas = if client_ca_files.is_empty() {
        None
    } else {
        Some(Arc::new(
            ClientCas::load(client_ca_files).map_err(|e| ("client_ca_files", e))?,
        ))
    };
    Ok(Material {
        key: Arc::new(key),
        cas,
    })
}

/// A digest of the files' bytes (an unreadable file counts by its error), to notice a change.
fn files_digest(settings: &TlsSettings) -> [u8; 32] {
    let mut digest = sha2::Sha256::new();
    for file in [&settings.cert_file, &settings.key_file]
        .into_iter()
        .chain(&settings.client_ca_files)
    {
        match std::fs::read(file) {
            Ok(bytes) => {
                digest.update((bytes.len() as u64).to_le_bytes());
                digest.update(&bytes);
            }
            Err(error) => digest.update(format!("unreadable: {error}").as_bytes()),
        }
    }
    digest.finalize().into()
}

/// Parses `[tls]`. `None` when it is absent or has no `cert_file` (or has errors, which go to
/// `errors`). Relative paths are relative to `base`.
pub fn parse_settings(
    value: Option<&Value>,
    base: &Path,
    errors: &mut FieldErrors,
) -> Option<TlsSettings> {
    let value = value?;
    let mut f = Fields::new("tls", value, errors);
    let cert_file = f.optional::<PathBuf>("cert_file").map(|p| base.join(p));
    let key_file = f.optional::<PathBuf>("key_file").map(|p| base.join(p));
    let client_ca_files: Vec<PathBuf> = f
        .optional::<Vec<PathBuf>>("client_ca_files")
        .unwrap_or_default()
        .into_iter()
        .map(|p| base.join(p))
        .collect();
    let reload_interval = f.duration("reload_interval", Duration::from_secs(5));
    let api = f.optional::<bool>("api").unwrap_or(true);
    let (cert_file, key_file) = match (cert_file, key_file) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            if !client_ca_files.is_empty() {
                f.error("client_ca_files", "needs cert_file and key_file");
            }
            f.finish();
            return None;
        }
        (Some(_), None) => {
            f.error("key_file", "is required with cert_file");
            f.finish();
            return None;
        }
        (None, Some(_)) => {
            f.error("cert_file", "is required with key_file");
            f.finish();
            return None;
        }
    };
    let material = f.finish_with(read_material(&cert_file, &key_file, &client_ca_files))?;
    Some(TlsSettings {
        cert_file,
        key_file,
        client_ca_files,
        reload_interval,
        api,
        material,
    })
}

/// Hands rustls whatever certificate is current.
#[derive(Debug)]
struct Resolver(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The proxy's TLS configuration with the client CAs it was built with (to name a client's
/// anchor with the same CAs that verified it).
#[derive(Debug)]
struct ProxyTls {
    config: Arc<ServerConfig>,
    cas: Option<Arc<ClientCas>>,
}

/// The HTTPS side of Mediary: the proxy's and the API's TLS configurations, kept current with the
/// files. Built once per process and shared by every worker.
#[derive(Debug)]
pub struct TlsServer {
    settings: TlsSettings,
    resolver: Arc<Resolver>,
    proxy: ArcSwap<ProxyTls>,
    api: Arc<ServerConfig>,
    /// The digest of the files last loaded, or last found bad (so a bad file is logged once).
    seen: Mutex<[u8; 32]>,
}

/// What one accepted connection was served with.
pub struct Acceptor {
    pub acceptor: TlsAcceptor,
    proxy: Arc<ProxyTls>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("proxy", &self.proxy)
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// The identity a verified client certificate gives, once the handshake is done.
    pub fn identity(&self, connection: &rustls::ServerConnection) -> Option<PeerIdentity> {
        let certs = connection.peer_certificates()?;
        let cas = self.proxy.cas.as_deref()?;
        peer_identity(certs, cas)
    }
}

/// The identity of a client certificate that verifies now against `cas`: `None` when it does not.
/// A full handshake has just verified it, but a resumed one has not (rustls carries the certificate
/// over from the original session), and since then it may have expired or its CA been withdrawn.
fn peer_identity(certs: &[CertificateDer<'_>], cas: &ClientCas) -> Option<PeerIdentity> {
    let leaf = certs.first()?;
    let Some(issuers) = verified_issuers(leaf, &certs[1..], cas) else {
        tracing::info!(
            "A resumed TLS session's client certificate no longer verifies; it identifies nobody."
        );
        return None;
    };
    let (issuers_sha256, issuers_sha1) = issuers.into_iter().unzip();
    Some(PeerIdentity {
        fingerprint_sha256: sha256(leaf),
        fingerprint_sha1: sha1::Sha1::digest(leaf.as_ref()).into(),
        issuers_sha256,
        issuers_sha1,
    })
}

/// SHA-256 and SHA-1 of the authorities `leaf` is verified through now, nearest first: the
/// intermediates of its path, its trust anchor, then the configured CAs above that anchor; `None`
/// if it does not verify. The path is
/// built here (rustls does not tell which one it found) because the client may send any
/// certificates along, CA certificates being public: only those its certificate really chains
/// through may identify it.
fn verified_issuers(
    leaf: &CertificateDer<'_>,
    presented: &[CertificateDer<'_>],
    cas: &ClientCas,
) -> Option<Vec<([u8; 32], [u8; 20])>> {
    let end_entity = webpki::EndEntityCert::try_from(leaf).ok()?;
    let path = end_entity
        .verify_for_usage(
            provider().signature_verification_algorithms.all,
            &cas.roots.roots,
            presented,
            rustls::pki_types::UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .ok()?;
    let mut issuers: Vec<([u8; 32], [u8; 20])> = path
        .intermediate_certificates()
        .map(|c| {
            let der = c.der();
            (sha256(&der), sha1::Sha1::digest(&der).into())
        })
        .collect();
    let anchor = path.anchor();
    let mut next = cas.anchors.iter().find(|a| {
        a.subject == anchor.subject.as_ref() && a.spki == anchor.subject_public_key_info.as_ref()
    });
    // Then up through the configured CAs (an intermediate configured beside its root anchors the
    // chain itself), by issuer name as OpenHIM walks its keystore: all of them are trusted alike.
    while let Some(configured) = next {
        if issuers.contains(&(configured.sha256, configured.sha1)) {
            break;
        }
        issuers.push((configured.sha256, configured.sha1));
        next = (configured.issuer != configured.subject)
            .then(|| cas.anchors.iter().find(|a| a.subject == configured.issuer))
            .flatten();
    }
    Some(issuers)
}

fn server_config(
    resolver: &Arc<Resolver>,
    cas: Option<&ClientCas>,
    sessions: Option<Arc<dyn rustls::server::StoresServerSessions>>,
) -> anyhow::Result<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match cas {
        Some(cas) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&cas.roots), provider())
                .allow_unauthenticated()
                .build()?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config =
        builder.with_cert_resolver(Arc::clone(resolver) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if let Some(sessions) = sessions {
        config.session_storage = sessions;
    }
    Ok(config)
}

impl TlsServer {
    pub fn new(settings: &TlsSettings) -> anyhow::Result<TlsServer> {
        let material = &settings.material;
        let resolver = Arc::new(Resolver(ArcSwap::new(Arc::clone(&material.key))));
        let proxy = server_config(&resolver, material.cas.as_deref(), None)?;
        let api = server_config(&resolver, None, None)?;
        Ok(TlsServer {
            settings: settings.clone(),
            resolver,
            proxy: ArcSwap::from_pointee(ProxyTls {
                config: Arc::new(proxy),
                cas: material.cas.clone(),
            }),
            api: Arc::new(api),
            seen: Mutex::new(files_digest(settings)),
        })
    }

    /// Whether the management API should speak HTTPS (`tls.api`).
    pub fn serves_api(&self) -> bool {
        self.settings.api
    }

    /// An acceptor for one new proxy connection, with the configuration current now.
    pub fn proxy_acceptor(&self) -> Acceptor {
        let proxy = self.proxy.load_full();
        Acceptor {
            acceptor: TlsAcceptor::from(Arc::clone(&proxy.config)),
            proxy,
        }
    }

    /// An acceptor for one new API connection (no client certificates).
    pub fn api_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.api))
    }

    /// The SHA-256 of the certificate being served now.
    pub fn current_fingerprint(&self) -> [u8; 32] {
        let key = self.resolver.0.load();
        key.cert.first().map_or([0; 32], |c| sha256(c))
    }

    /// Reads the files again; when their contents changed and they are good, serves them to new
    /// connections. A bad file is logged (once per change) and the current certificate kept.
    /// Returns whether a new certificate (or CA set) was taken.
    pub fn reload(&self) -> bool {
        let Ok(mut seen) = self.seen.lock() else {
            return false;
        };
        // Only the bytes are read while nothing changes; a change is judged, and a bad one
        // reported, once.
        let digest = files_digest(&self.settings);
        if *seen == digest {
            return false;
        }
        *seen = digest;
        let material = match self.settings.read() {
            Ok(material) => material,
            Err((field, reason)) => {
                tracing::warn!(
                    field = %format!("tls.{field}"),
                    %reason,
                    "The new TLS files are not usable; keeping the current certificate."
                );
                return false;
            }
        };
        let current = self.proxy.load();
        let cas_changed = match (&material.cas, &current.cas) {
            (None, None) => false,
            (Some(new), Some(old)) => new.anchors != old.anchors,
            _ => true,
        };
        if cas_changed {
            let sessions = Arc::clone(&current.config.session_storage);
            match server_config(&self.resolver, material.cas.as_deref(), Some(sessions)) {
                Ok(config) => self.proxy.store(Arc::new(ProxyTls {
                    config: Arc::new(config),
                    cas: material.cas.clone(),
                })),
                Err(error) => {
                    tracing::warn!(%error, "The new client CAs are not usable; keeping the current ones.");
                }
            }
        }
        self.resolver.0.store(Arc::clone(&material.key));
        tracing::info!(
            cert_file = %self.settings.cert_file.display(),
            fingerprint = %hex::encode(self.current_fingerprint()),
            "Loaded a new TLS certificate; new connections use it."
        );
        true
    }

    /// Checks the files every `reload_interval` until `stop`.
    pub async fn watch(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.settings.reload_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tick.tick() => {
                    let server = Arc::clone(&self);
                    // File reads and key parsing stay off the API's event loop.
                    let _ = tokio::task::spawn_blocking(move || server.reload()).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, date_time_ymd,
    };
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    struct Ca(CertifiedIssuer<'static, KeyPair>);

    impl Ca {
        fn new(name: &str) -> Ca {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            Ca(
                CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
                    .expect("CA"),
            )
        }

        /// (certificate PEM, key PEM, certificate DER).
        fn issue(&self, name: &str, expired: bool) -> (String, String, Vec<u8>) {
            let mut params = CertificateParams::new(vec![name.to_owned()]).expect("params");
            params.distinguished_name.push(DnType::CommonName, name);
            if expired {
                params.not_before = date_time_ymd(2001, 1, 1);
                params.not_after = date_time_ymd(2002, 1, 1);
            }
            let key = KeyPair::generate().expect("key");
            let cert = params.signed_by(&key, &self.0).expect("cert");
            (cert.pem(), key.serialize_pem(), cert.der().to_vec())
        }
    }

    struct Files {
        dir: tempfile::TempDir,
    }

    impl Files {
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }

        fn write(&self, name: &str, text: &str) {
            // Written beside and renamed, as an operator's tooling (or certbot) would.
            let tmp = self.path(&format!("{name}.tmp"));
            std::fs::write(&tmp, text).expect("write");
            std::fs::rename(&tmp, self.path(name)).expect("rename");
        }
    }

    fn settings(files: &Files, with_cas: bool) -> Result<TlsSettings, Vec<String>> {
        let mut toml = "cert_file = \"server.pem\"\nkey_file = \"server.key\"\n".to_owned();
        if with_cas {
            toml.push_str("client_ca_files = [\"clients.pem\"]\n");
        }
        let table: toml::Table = toml::from_str(&toml).expect("TOML");
        let value = serde_json::to_value(table).expect("JSON");
        let mut errors = FieldErrors::default();
        let parsed = parse_settings(Some(&value), files.dir.path(), &mut errors);
        if errors.is_empty() {
            Ok(parsed.expect("settings"))
        } else {
            Err(errors
                .0
                .iter()
                .map(|e| format!("{}: {}", e.path, e.reason))
                .collect())
        }
    }

    /// A server CA with a `localhost` certificate in the files, and a client CA.
    fn setup() -> (Files, Ca, Ca) {
        let files = Files {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        let server_ca = Ca::new("server CA");
        let (cert, key, _) = server_ca.issue("localhost", false);
        files.write("server.pem", &cert);
        files.write("server.key", &key);
        let client_ca = Ca::new("client CA");
        files.write("clients.pem", &client_ca.0.pem());
        (files, server_ca, client_ca)
    }

    /// The outcome of one handshake: the served certificate's SHA-256 (as the client saw it) and
    /// the identity the server derived, or the error.
    async fn handshake(
        server: &TlsServer,
        server_ca: &Ca,
        client: Option<(&str, &str)>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<([u8; 32], Option<PeerIdentity>), String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = server.proxy_acceptor();
        let served = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut stream = acceptor
                .acceptor
                .accept(tcp)
                .await
                .map_err(|e| e.to_string())?;
            let identity = acceptor.identity(stream.get_ref().1);
            let mut byte = [0u8; 1];
            stream
                .read_exact(&mut byte)
                .await
                .map_err(|e| e.to_string())?;
            stream.write_all(b"!").await.map_err(|e| e.to_string())?;
            Ok::<_, String>(identity)
        });
        let mut roots = RootCertStore::empty();
        roots.add(server_ca.0.der().clone()).expect("root");
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots);
        let config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .collect::<Result<_, _>>()
                        .expect("chain"),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
                )
                .expect("client cert"),
            None => builder.with_no_client_auth(),
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let client_side = async {
            let mut stream = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            let fingerprint = sha256(&stream.get_ref().1.peer_certificates().expect("certs")[0]);
            // TLS 1.3 client certificates are judged after the client's handshake ends: a refusal
            // shows on the first exchange.
            stream.write_all(b"?").await.map_err(|e| e.to_string())?;
            let mut byte = [0u8; 1];
            stream
                .read_exact(&mut byte)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(fingerprint)
        };
        let client_result = client_side.await;
        let server_result = served.await.expect("server task");
        match (client_result, server_result) {
            (Ok(fingerprint), Ok(identity)) => Ok((fingerprint, identity)),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }

    const BOTH: &[&rustls::SupportedProtocolVersion] =
        &[&rustls::version::TLS13, &rustls::version::TLS12];

    #[tokio::test]
    async fn serves_tls_1_2_and_1_3_without_client_certificates() {
        let (files, server_ca, _) = setup();
        let server = TlsServer::new(&settings(&files, false).expect("settings")).expect("server");
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let (fingerprint, identity) = handshake(&server, &server_ca, None, &[version])
                .await
                .expect("handshake");
            assert_eq!(fingerprint, server.current_fingerprint());
            assert_eq!(identity, None);
        }
    }

    #[tokio::test]
    async fn a_verified_client_certificate_gives_an_identity() {
        let (files, server_ca, client_ca) = setup();
        let server = TlsServer::new(&settings(&files, true).expect("settings")).expect("server");
        let (cert, key, der) = client_ca.issue("client-a", false);
        for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
            let (_, identity) = handshake(&server, &server_ca, Some((&cert, &key)), &[version])
                .await
                .expect("handshake");
            let identity = identity.expect("an identity");
            assert_eq!(identity.fingerprint_sha256, sha256(&der));
            assert_eq!(
                identity.fingerprint_sha1,
                <[u8; 20]>::from(sha1::Sha1::digest(&der))
            );
            assert_eq!(identity.issuers_sha256, vec![sha256(client_ca.0.der())]);
            assert_eq!(
                identity.issuers_sha1,
                vec![<[u8; 20]>::from(sha1::Sha1::digest(client_ca.0.der()))]
            );
        }
        // No certificate: still served, without an identity.
        let (_, identity) = handshake(&server, &server_ca, None, BOTH)
            .await
            .expect("handshake");
        assert_eq!(identity, None);
    }

    #[tokio::test]
    async fn unknown_and_expired_client_certificates_are_refused() {
        let (files, server_ca, client_ca) = setup();
        let server = TlsServer::new(&settings(&files, true).expect("settings")).expect("server");
        let (cert, key, _) = Ca::new("another CA").issue("client-b", false);
        let error = handshake(&server, &server_ca, Some((&cert, &key)), BOTH)
            .await
            .expect_err("an unknown CA");
        assert!(!error.is_empty());
        let (cert, key, _) = client_ca.issue("client-c", true);
        handshake(&server, &server_ca, Some((&cert, &key)), BOTH)
            .await
            .expect_err("an expired certificate");
    }

    #[tokio::test]
    async fn replaced_files_are_served_to_new_connections_and_bad_ones_ignored() {
        let (files, server_ca, client_ca) = setup();
        let server = TlsServer::new(&settings(&files, true).expect("settings")).expect("server");
        let first = server.current_fingerprint();
        assert!(!server.reload(), "nothing changed");

        let (cert, key, der) = server_ca.issue("localhost", false);
        files.write("server.pem", &cert);
        files.write("server.key", &key);
        assert!(server.reload());
        assert_eq!(server.current_fingerprint(), sha256(&der));
        let (served, _) = handshake(&server, &server_ca, None, BOTH)
            .await
            .expect("handshake");
        assert_eq!(served, sha256(&der));
        assert_ne!(served, first);

        // A key that does not fit the certificate, then garbage: the current certificate stays.
        let (_, other_key, _) = server_ca.issue("localhost", false);
        files.write("server.key", &other_key);
        assert!(!server.reload());
        files.write("server.pem", "not a certificate");
        assert!(!server.reload());
        let (served, _) = handshake(&server, &server_ca, None, BOTH)
            .await
            .expect("still served");
        assert_eq!(served, sha256(&der));

        // A new client CA replaces the old one.
        files.write("server.pem", &cert);
        files.write("server.key", &key);
        let new_ca = Ca::new("client CA 2");
        files.write("clients.pem", &new_ca.0.pem());
        assert!(server.reload());
        let (cert, key, _) = client_ca.issue("client-a", false);
        handshake(&server, &server_ca, Some((&cert, &key)), BOTH)
            .await
            .expect_err("the old CA is gone");
        let (cert, key, _) = new_ca.issue("client-a", false);
        let (_, identity) = handshake(&server, &server_ca, Some((&cert, &key)), BOTH)
            .await
            .expect("the new CA");
        assert_eq!(
            identity.expect("identity").issuers_sha256,
            vec![sha256(new_ca.0.der())]
        );
    }

    #[test]
    fn bad_files_at_start_name_the_field() {
        let (files, _, _) = setup();
        files.write("server.key", "nothing");
        let errors = settings(&files, false).expect_err("a bad key");
        assert!(errors[0].starts_with("tls.key_file"), "{errors:?}");
        let (files, _, _) = setup();
        files.write("server.pem", "nothing");
        let errors = settings(&files, false).expect_err("a bad certificate");
        assert!(errors[0].starts_with("tls.cert_file"), "{errors:?}");
        let (files, _, _) = setup();
        files.write("clients.pem", "nothing");
        let errors = settings(&files, true).expect_err("a bad CA file");
        assert!(errors[0].starts_with("tls.client_ca_files"), "{errors:?}");
    }
}
