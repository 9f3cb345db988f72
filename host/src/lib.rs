//! Mediary: a health information mediator.
//!
//! # Layout
//! - [`cli`]: the `mediary` command line (`run`, `check-config`); `main` only calls it.
//! - [`config`]: the configuration file, parsed into checked types with every error reported at once.
//! - [`channel`]: OpenHIM's channel model: matching by pattern, method and priority; routes.
//! - [`workers`]: N pinned worker threads, each with its own runtime and SO_REUSEPORT listener.
//! - [`proxy`]: the data path from client to upstream and back, and the one error → response mapping.
//!
//! The server is [`run`]: it takes bound listeners and a shutdown future, so tests bind port 0.

pub mod channel;
pub mod cli;
pub mod config;
pub mod proxy;
pub mod workers;

use std::sync::Arc;

use arc_swap::ArcSwap;

use channel::ChannelTable;
use config::Config;

pub use workers::{Listeners, run};

/// What every worker shares: the configuration and the live channel table (swapped atomically when
/// channels change, so a request always sees one consistent table).
#[derive(Debug)]
pub struct Shared {
    pub config: Arc<Config>,
    pub channels: ArcSwap<ChannelTable>,
    /// TLS settings for `secured` routes: the system's root certificates plus `upstream.ca_files`.
    pub upstream_tls: Arc<rustls::ClientConfig>,
}

impl Shared {
    pub fn new(config: Config) -> anyhow::Result<Self> {
        let channels = ChannelTable::new(config.channels.iter().cloned());
        Ok(Shared {
            channels: ArcSwap::from_pointee(channels),
            upstream_tls: Arc::new(upstream_tls_config(config.upstream.ca_roots.clone())?),
            config: Arc::new(config),
        })
    }
}

/// A TLS client configuration trusting `roots` (from `upstream.ca_files`) and the system's root
/// certificates (TLS 1.2 and 1.3).
fn upstream_tls_config(mut roots: rustls::RootCertStore) -> anyhow::Result<rustls::ClientConfig> {
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
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
