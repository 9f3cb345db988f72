//! The plugin-hook benchmark: what running a channel's plugin adds to one request.
//!
//! One hook is what the proxy does for a request on a channel with a plugin: build the plugin's view
//! of the request (method, path, query, headers, a 1 KiB body), take an instance, call `on-request`,
//! and give the instance back. The plugin is the content-based router of `plugins/rust/router`
//! (built from source: `cargo build --release` in `plugins/`, which this benchmark runs when the
//! component is missing), on a request it routes by its path.
//!
//! - `reuse`: the channel keeps warm instances (the default isolation); target ≤ 2 µs.
//! - `per-request`: a fresh instance from the pooling allocator for every request; target ≤ 10 µs.
//!
//! Run: `cargo bench -p mediary --bench plugin_hook`. `MEDIARY_ROUTER_WASM` may point at a
//! prebuilt component instead.

// As the `mediary` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use mediary::Shared;
use mediary::channel::Channel;
use mediary::config::Config;
use mediary::plugin::bindings::types;
use mediary::plugin::imports::Call;
use mediary::plugin::output::fields_of;
use mediary::plugin::{BoundPlugin, CallEnv};
use mediary::proxy::upstream::{PoolSettings, Upstreams};
use mediary::store::embedded::EmbeddedStore;

/// The router component, built from source if need be.
fn router_wasm() -> PathBuf {
    if let Some(path) = std::env::var_os("MEDIARY_ROUTER_WASM") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let plugins = root.join("plugins");
    let built = plugins.join("target/wasm32-wasip2/release/mediary_router.wasm");
    let status = std::process::Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "mediary-router",
            "--target",
            "wasm32-wasip2",
        ])
        .current_dir(&plugins)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building plugins/rust/router failed");
    built
}

/// A channel with the router, bound as the channel table would bind it.
fn bound(isolation: &str, dir: &Path) -> (Arc<Shared>, Arc<Channel>, Arc<BoundPlugin>) {
    let wasm = router_wasm();
    let toml = format!(
        r#"
        [store]
        data_dir = "{data}"
        [[channels]]
        name = "fhir"
        urlPattern = "^/fhir"
        methods = ["POST"]
        authType = "public"
        plugin = {{ file = "{wasm}", isolation = "{isolation}", config = {{ routes = {{ Patient = "patients" }} }} }}
        routes = [{{ name = "patients", host = "127.0.0.1", port = 9, primary = true }}]
        "#,
        data = dir.display(),
        wasm = wasm.display(),
    );
    let config = Config::parse(&toml).expect("a valid config");
    let store = Arc::new(EmbeddedStore::open(dir).expect("the store opens"));
    let shared = Arc::new(Shared::new(config, store, 1).expect("shared state"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        mediary::reload::upsert_config_channels(&*shared.store, &shared.config.channel_documents)
            .await
            .expect("channels saved");
        mediary::reload::load(&shared).await.expect("channels load");
    });
    let channel = Arc::clone(shared.channels.load().iter().next().expect("a channel"));
    let plugin = match &channel.bound_plugin {
        Some(Ok(plugin)) => Arc::clone(plugin),
        other => panic!("the router did not load: {other:?}"),
    };
    (shared, channel, plugin)
}

fn hook(c: &mut Criterion) {
    let mut group = c.benchmark_group("plugin_hook");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    for isolation in ["reuse", "per-request"] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (shared, channel, plugin) = bound(isolation, dir.path());
        let upstreams = Upstreams::new(
            PoolSettings {
                connect_timeout: Duration::from_secs(1),
                max_idle_per_host: 1,
                idle_timeout: Duration::from_secs(1),
            },
            Arc::clone(&shared.upstream_tls),
        );
        let request = http::Request::builder()
            .method("POST")
            .uri("/fhir/Patient?identifier=123")
            .header("host", "mediary.example.org")
            .header("content-type", "application/fhir+json")
            .header("accept", "application/fhir+json")
            .header("user-agent", "bench")
            .body(Bytes::from(vec![b'x'; 1024]))
            .expect("a request");
        let (parts, body) = request.into_parts();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        group.bench_function(isolation, |b| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iterations {
                        let view = types::Request {
                            method: parts.method.as_str().to_owned(),
                            path: parts.uri.path().to_owned(),
                            query: parts.uri.query().unwrap_or("").to_owned(),
                            headers: fields_of(&parts.headers),
                            body: body.to_vec(),
                            client: None,
                            channel: channel.name.clone(),
                            transaction_id: "01a21575-cd75-768d-990d-f4556e1e1fc4".to_owned(),
                        };
                        let call = Call::new(None, Arc::clone(&upstreams), Duration::from_secs(1));
                        let mut session = plugin
                            .session(CallEnv { worker: 0, call })
                            .await
                            .expect("an instance");
                        let action = session.on_request(&view).await.expect("the router answers");
                        assert!(matches!(action, types::Action::Forward(_)));
                        drop(session);
                    }
                    started.elapsed()
                })
            });
        });
    }
    group.finish();
}

criterion_group!(benches, hook);
criterion_main!(benches);
