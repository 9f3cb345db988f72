//! `mediary plugin push`: uploads a component to a running Mediary (`POST /plugins/:name`, HTTP
//! Basic as an API user), over HTTP or HTTPS.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::Value;

/// Where and how to push.
#[derive(Debug)]
pub struct Push<'a> {
    pub name: &'a str,
    pub wasm: &'a Path,
    /// The API's base URL (`https://mediary.example.org:8080`).
    pub api: &'a str,
    pub user: &'a str,
    pub password: &'a str,
    /// Accept any server certificate (a self-signed test instance).
    pub insecure: bool,
    /// Trust this CA (PEM) besides the system's roots.
    pub ca: Option<&'a Path>,
}

/// How long connecting, sending the component and waiting for its compilation may take.
const TIMEOUT: Duration = Duration::from_secs(300);

/// Uploads; returns the line to print (version, digest, size).
pub async fn push(push: &Push<'_>) -> Result<String, String> {
    crate::plugin::spec::plugin_name(push.name)?;
    let wasm = std::fs::read(push.wasm).map_err(|e| format!("{}: {e}", push.wasm.display()))?;
    let base: Uri = push
        .api
        .parse()
        .map_err(|e| format!("--api `{}` is not a URL: {e}", push.api))?;
    let https = match base.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => {
            return Err(format!(
                "--api `{}` must start with http:// or https://",
                push.api
            ));
        }
    };
    let host = base
        .host()
        .ok_or_else(|| format!("--api `{}` has no host", push.api))?
        .to_owned();
    let port = base.port_u16().unwrap_or(if https { 443 } else { 80 });
    let prefix = base.path().trim_end_matches('/');
    let path = format!("{prefix}/plugins/{}", push.name);
    let credentials = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", push.user, push.password));
    let request = Request::builder()
        .method(Method::POST)
        .uri(path.as_str())
        .header(
            header::HOST,
            base.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header(header::AUTHORIZATION, format!("Basic {credentials}"))
        .header(header::CONTENT_TYPE, "application/wasm")
        .body(Full::new(Bytes::from(wasm)))
        .map_err(|e| e.to_string())?;
    let tls = if https { Some(client_tls(push)?) } else { None };
    let exchange = send(&host, port, tls, request);
    let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{} did not answer within {} s", push.api, TIMEOUT.as_secs()))?
        .map_err(|e| format!("cannot reach {}: {e}", push.api))?;
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let said = json["error"].as_str().map_or_else(
        || String::from_utf8_lossy(&body).trim().to_owned(),
        str::to_owned,
    );
    match status {
        StatusCode::OK | StatusCode::CREATED => {
            let version = json["version"].as_u64().unwrap_or(0);
            let sha256 = json["sha256"].as_str().unwrap_or("?");
            let size = json["size"].as_u64().unwrap_or(0);
            let what = if status == StatusCode::CREATED {
                "pushed"
            } else {
                "unchanged (the same bytes as an earlier version, current again)"
            };
            Ok(format!(
                "{} version {version}: {what}; sha256 {sha256}, {size} bytes",
                push.name
            ))
        }
        StatusCode::UNAUTHORIZED => Err(format!(
            "the API refused the credentials of `{}` (401): check --user and --password (or MEDIARY_API_USER and MEDIARY_API_PASSWORD)",
            push.user
        )),
        StatusCode::FORBIDDEN => Err(format!(
            "`{}` may not upload plugins (403): {said}",
            push.user
        )),
        StatusCode::BAD_REQUEST => Err(format!("the API refused the plugin (400): {said}")),
        StatusCode::CONFLICT => Err(format!("conflict (409): {said}")),
        StatusCode::PAYLOAD_TOO_LARGE => Err(format!(
            "the component is larger than the API accepts (413, plugins.max_upload): {said}"
        )),
        other => Err(format!("the API answered {other}: {said}")),
    }
}

/// TLS for the API: the system's roots plus `--ca`, or no checks at all with `--insecure`.
fn client_tls(push: &Push<'_>) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    if push.insecure {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(ca) = push.ca {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("--ca {}: {e}", ca.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!("--ca {}: no PEM certificate in it", ca.display()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("--ca {}: {e}", ca.display()))?;
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

async fn send(
    host: &str,
    port: u16,
    tls: Option<rustls::ClientConfig>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String> {
    let tcp =
        tokio::net::TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port))
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    format!(
                        "connection refused by {host}:{port}: is Mediary's API listening there?"
                    )
                }
                _ => e.to_string(),
            })?;
    match tls {
        None => exchange(TokioIo::new(tcp), request).await,
        Some(config) => {
            let name = ServerName::try_from(
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
            )
            .map_err(|e| format!("`{host}` is not a server name: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    format!(
                        "TLS handshake failed: {e} (a self-signed API: --ca FILE, or --insecure)"
                    )
                })?;
            exchange(TokioIo::new(stream), request).await
        }
    }
}

async fn exchange<T>(io: T, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| crate::proxy::error::root_cause(&e))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

/// Accepts every server certificate (`--insecure`); signatures are still checked, so the
/// handshake is sound, only the identity is not.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
