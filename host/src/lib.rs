//! Mediary: a health information mediator.
//!
//! # Layout
//! - [`cli`]: the `mediary` command line (`run`, `check-config`); `main` only calls it.
//! - [`config`]: the configuration file, parsed into checked types with every error reported at once.
//! - [`channel`]: OpenHIM's channel model: matching by pattern, method and priority; routes.
//! - [`client`]: OpenHIM's client model (who calls channels), its stored secrets, and the in-memory
//!   directory the proxy finds clients in.
//! - [`workers`]: N pinned worker threads, each with its own runtime and SO_REUSEPORT listener.
//! - [`proxy`]: the data path from client to upstream and back, and the one error → response mapping.
//! - [`transaction`]: the transaction record (OpenHIM's model), its status rules and encodings.
//! - [`recorder`]: each worker's write-ahead spool, and the writer that drains it into the store.
//! - [`store`]: the `Store` trait (documents, transactions, state) and its embedded redb backend.
//! - [`api`]: the management API (channels, transactions, rerun, health, metrics, users).
//! - [`password`]: argon2id hashing and checking off the runtime, shared by API users and clients.
//! - [`plugin`]: channel logic as WebAssembly components: the engine, sandbox, imports, registry.
//! - [`metrics`]: per-channel and per-worker counters, rendered for Prometheus.
//! - [`reload`]: the live channel table and client directory, rebuilt from the store whenever
//!   they change.
//! - [`cluster`]: heartbeats, so that instances sharing a store see each other (`GET /cluster`).
//! - [`retention`]: the job that removes old bodies and records.
//! - [`tls`]: the HTTPS listener's certificates (reloaded from files) and client certificates.
//! - [`jwt`]: JSON Web Token verification for proxy authentication (`[auth.jwt]`).
//!
//! The server is [`run`]: it takes bound listeners and a shutdown future, so tests bind port 0.

pub mod api;
pub mod channel;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod jwt;
pub mod metrics;
pub mod password;
pub mod plugin;
pub mod proxy;
pub mod recorder;
pub mod reload;
pub mod retention;
pub mod store;
pub mod tls;
pub mod transaction;
pub mod workers;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use uuid::Uuid;

use channel::ChannelTable;
use config::Config;
use metrics::Metrics;
use plugin::{PluginEngine, Plugins};
use store::Store;
use transaction::Timestamp;

pub use workers::{Listeners, run};

/// What every worker (and the API) shares: the configuration, the live channel table (swapped
/// atomically when channels change, so a request always sees one consistent table), the store and
/// the counters.
#[derive(Debug)]
pub struct Shared {
    pub config: Arc<Config>,
    pub channels: ArcSwap<ChannelTable>,
    /// The clients, by clientID, token hash and certificate fingerprint: rebuilt with the channel
    /// table, so the proxy never reads the store to authenticate.
    pub clients: ArcSwap<client::ClientDirectory>,
    /// Client authentication on the proxy: password checks, remembered successes, backoff.
    pub client_auth: proxy::auth::ClientAuth,
    /// TLS settings for `secured` routes: the system's root certificates plus `upstream.ca_files`.
    pub upstream_tls: Arc<rustls::ClientConfig>,
    /// The HTTPS listener's and the API's TLS, when `[tls] cert_file` is set.
    pub tls: Option<Arc<tls::TlsServer>>,
    pub store: Arc<dyn Store>,
    /// The plugin engine, uploaded plugins, and each channel's loaded plugin.
    pub plugins: Arc<Plugins>,
    pub metrics: Arc<Metrics>,
    /// When this process started (for `/heartbeat`).
    pub started: Instant,
    /// Milliseconds since the epoch before which every transaction is in the store: set by the
    /// recorder after each drain. Listings stop there so that their pages stay put (see
    /// [`Shared::snapshot_bound`]).
    pub recorded_until: AtomicU64,
    /// Set once every worker serves; cleared when shutting down (for `/health/ready`).
    pub ready: AtomicBool,
    /// The store's configuration generation the live channel table was built from (reported in
    /// this instance's heartbeat, so `GET /cluster` shows who has applied a change).
    pub applied_generation: AtomicU64,
    /// A random id of this run of the process (heartbeats tell runs of one instance name apart).
    pub run_id: String,
}

impl Shared {
    /// `workers`: how many proxy workers will serve (plugins keep warm instances per worker).
    pub fn new(config: Config, store: Arc<dyn Store>, workers: usize) -> anyhow::Result<Self> {
        let engine = Arc::new(PluginEngine::new(config.plugins.clone())?);
        // One more than the workers: the API serves reruns with its own proxy.
        let plugins = Arc::new(Plugins::new(
            engine,
            Arc::clone(&store),
            config.base_dir.clone(),
            workers + 1,
        ));
        let metrics: Arc<Metrics> = Arc::default();
        let client_auth = proxy::auth::ClientAuth::new(
            config.auth.clone(),
            Arc::clone(&store),
            Arc::clone(&metrics),
        );
        if let Some(jwt) = &config.jwt {
            client_auth.set_bearer_verifier(Arc::new(jwt::JwtVerifier::new(jwt)));
        }
        Ok(Shared {
            plugins,
            channels: ArcSwap::from_pointee(ChannelTable::default()),
            clients: ArcSwap::from_pointee(client::ClientDirectory::default()),
            client_auth,
            upstream_tls: Arc::new(upstream_tls_config(
                config.upstream.ca_roots.clone(),
                config.upstream.client_cert.clone(),
            )?),
            tls: config
                .tls
                .as_ref()
                .map(tls::TlsServer::new)
                .transpose()?
                .map(Arc::new),
            config: Arc::new(config),
            store,
            metrics,
            started: Instant::now(),
            recorded_until: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            applied_generation: AtomicU64::new(0),
            run_id: Uuid::new_v4().simple().to_string(),
        })
    }

    /// The highest transaction id a listing made now may show: every transaction up to it is already
    /// in the store, so a later page of the same listing (passing this back as its snapshot) sees
    /// exactly the records the first page saw below it, however many arrive meanwhile.
    pub fn snapshot_bound(&self) -> Uuid {
        if !self.config.recording.enabled {
            // Nothing is being recorded, so nothing can arrive late: everything stored is final.
            return Timestamp::now().first_id();
        }
        let until = self.recorded_until.load(Ordering::Acquire);
        Timestamp(until).first_id()
    }
}

/// A TLS client configuration trusting `roots` (from `upstream.ca_files`) and the system's root
/// certificates (TLS 1.2 and 1.3), presenting `client_cert` to upstreams that ask for one.
fn upstream_tls_config(
    mut roots: rustls::RootCertStore,
    client_cert: Option<tls::CertAndKey>,
) -> anyhow::Result<rustls::ClientConfig> {
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::warn!(%error, "Could not load a system root certificate.");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(
        added,
        ignored,
        "Loaded system root certificates for secured routes."
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(match client_cert {
        Some(cert) => builder.with_client_auth_cert(cert.chain, cert.key)?,
        None => builder.with_no_client_auth(),
    })
}
