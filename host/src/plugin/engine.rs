//! The one wasmtime [`Engine`] of the process: its settings, the epoch ticker that enforces CPU
//! deadlines, and compiling components (with a time budget, cached on disk).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::ChannelPlugin;
use super::imports::HostState;
use crate::config::Plugins as Settings;

/// Bytes of linear memory (and table) kept mapped when a pooled slot is reused, and reset in place
/// instead of being given back to the kernel: a fresh instance then does not page-fault its first
/// pages back in. Measured with the plugin-hook benchmark: 0 or 64 KiB cost 20 µs per fresh
/// instance, 4 MiB with PAGEMAP_SCAN 8 µs.
const KEEP_RESIDENT: usize = 4 << 20;
const TABLE_KEEP_RESIDENT: usize = 64 << 10;

/// Why a component could not be loaded. Told to whoever uploaded or configured it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a WebAssembly component, or one that does not implement the plugin world.
    #[error("{0}")]
    Invalid(String),
    /// Compiling took longer than `plugins.compile_timeout`.
    #[error("compiling took longer than {} s", .0.as_secs_f64())]
    CompileTimeout(Duration),
    /// The host could not do its part (a thread, the cache folder).
    #[error("the host could not load the plugin: {0}")]
    Host(String),
}

/// The engine, the linker with every import the host offers, and the compile cache.
pub struct PluginEngine {
    pub(super) engine: Engine,
    pub(super) linker: Linker<HostState>,
    pub(super) settings: Settings,
    /// Which compiled artifacts this engine can load: part of every cache file's name.
    compatibility: String,
    /// The epoch ticker: runs while any channel has a plugin bound.
    ticker: Arc<Ticker>,
}

/// The thread that advances the epoch clock, and whether it has anything to do. With no plugin
/// bound it sleeps (parked) instead of waking every tick: a mediator without plugins should not
/// pay a thousand context switches a second on its workers' cores.
struct Ticker {
    /// Cleared when the engine goes away: the thread then ends.
    running: AtomicBool,
    /// Plugins bound to channels now ([`TickerUse`] guards alive).
    users: AtomicUsize,
    thread: std::thread::Thread,
}

/// Keeps the epoch clock ticking while alive: held by every bound plugin.
pub struct TickerUse(Arc<Ticker>);

impl std::fmt::Debug for TickerUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TickerUse")
    }
}

impl Drop for TickerUse {
    fn drop(&mut self) {
        self.0.users.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("cache_dir", &self.settings.cache_dir)
            .finish_non_exhaustive()
    }
}

impl Drop for PluginEngine {
    fn drop(&mut self) {
        self.ticker.running.store(false, Ordering::Release);
        self.ticker.thread.unpark();
    }
}

impl PluginEngine {
    pub fn new(settings: Settings) -> anyhow::Result<PluginEngine> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        // Plugins are called with `call_async` but never use the component model's own async: with
        // this off a call costs about what a synchronous one does (see the wasm notes).
        config.concurrency_support(false);
        config.max_wasm_stack(512 << 10);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let instances = settings.max_instances;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(instances)
            // Core instances per plugin instance, counted in the example plugins' components: Rust
            // 3 (the module and wit-component's shims), JavaScript (componentize-js 0.23.0) 4,
            // Python (componentize-py 0.25.1: libc, libpython and its other shared libraries,
            // adapters, shims) 14. At 4 per instance a Python plugin could not instantiate at all
            // with `max_instances` up to 3, and at most 285 were alive of 1000. This is a counter,
            // not a reservation: instance metadata is allocated per live instance.
            .total_core_instances(instances.saturating_mul(16))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(4))
            .total_stacks(instances)
            .max_memories_per_component(2)
            .max_memory_size(usize::try_from(settings.max_memory).unwrap_or(usize::MAX))
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(TABLE_KEEP_RESIDENT)
            // Linux 6.7+: reset only the pages an instance touched (found with PAGEMAP_SCAN) rather
            // than memset the whole resident part. Halves a fresh instance's cost (18 → 8 µs).
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        ChannelPlugin::add_to_linker::<_, wasmtime::component::HasSelf<_>>(&mut linker, |s| s)?;

        let compatibility = {
            use std::hash::{Hash as _, Hasher as _};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut hasher);
            format!("{:016x}", hasher.finish())
        };
        let ticker = spawn_ticker(&engine, settings.epoch_tick)?;
        Ok(PluginEngine {
            engine,
            linker,
            settings,
            compatibility,
            ticker,
        })
    }

    /// Starts the epoch clock (if it was idle) and keeps it ticking until the guard is dropped.
    pub fn ticker_use(&self) -> TickerUse {
        self.ticker.users.fetch_add(1, Ordering::AcqRel);
        self.ticker.thread.unpark();
        TickerUse(Arc::clone(&self.ticker))
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Deadlines are counted in ticks of the epoch clock.
    pub fn ticks(&self, duration: Duration) -> u64 {
        let tick = self.settings.epoch_tick.as_nanos().max(1);
        u64::try_from(duration.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX)
    }

    /// Compiles `wasm` (whose SHA-256 is `digest`), or loads it from the compile cache. Runs the
    /// compiler on its own thread, off every runtime, and gives up after `compile_timeout` (the
    /// thread then finishes in the background: Cranelift cannot be interrupted).
    pub async fn compile(&self, wasm: Bytes, digest: &str) -> Result<Component, LoadError> {
        let cached = self.cache_path(digest);
        if let Some(component) = self.load_cached(&cached).await {
            return Ok(component);
        }
        let engine = self.engine.clone();
        let (done, result) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("mediary-compile".into())
            .spawn(move || {
                let _ = done.send(engine.precompile_component(&wasm));
            })
            .map_err(|e| LoadError::Host(format!("cannot start a compiler thread: {e}")))?;
        let budget = self.settings.compile_timeout;
        let artifact = match tokio::time::timeout(budget, result).await {
            Err(_) => return Err(LoadError::CompileTimeout(budget)),
            Ok(Err(_)) => return Err(LoadError::Host("the compiler thread died".into())),
            Ok(Ok(Err(error))) => return Err(LoadError::Invalid(describe(&error))),
            Ok(Ok(Ok(artifact))) => artifact,
        };
        if let Err(error) = write_cache(&cached, &artifact).await {
            tracing::warn!(path = %cached.display(), %error, "Could not cache a compiled plugin; it will be compiled again at the next start.");
        }
        self.deserialize(&artifact)
            .map_err(|e| LoadError::Host(describe(&e)))
    }

    fn cache_path(&self, digest: &str) -> PathBuf {
        self.settings
            .cache_dir
            .join(format!("{digest}-{}.cwasm", self.compatibility))
    }

    /// A cached artifact, if there is one and its checksum holds (a torn or tampered file is
    /// removed and compiled again).
    async fn load_cached(&self, path: &Path) -> Option<Component> {
        let bytes = tokio::fs::read(path).await.ok()?;
        let checked = bytes
            .len()
            .checked_sub(32)
            .map(|n| bytes.split_at(n))
            .filter(|(artifact, sum)| Sha256::digest(artifact).as_slice() == *sum);
        let loaded = checked.and_then(|(artifact, _)| self.deserialize(artifact).ok());
        if loaded.is_none() {
            tracing::warn!(path = %path.display(), "A cached compiled plugin is damaged; compiling again.");
            let _ = tokio::fs::remove_file(path).await;
        }
        loaded
    }

    #[allow(unsafe_code)]
    fn deserialize(&self, artifact: &[u8]) -> wasmtime::Result<Component> {
        // SAFETY: `deserialize` trusts its input to be wasmtime's own output for this engine
        // configuration. It is: the bytes come from `precompile_component` just now, or from our
        // cache file, whose name carries this engine's compatibility hash and whose checksum has
        // been verified. Wasmtime also checks the header's version and settings before using it.
        unsafe { Component::deserialize(&self.engine, artifact) }
    }
}

/// Writes `artifact` and its SHA-256 to `path` atomically (a temporary file renamed into place).
async fn write_cache(path: &Path, artifact: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let mut contents = Vec::with_capacity(artifact.len() + 32);
    contents.extend_from_slice(artifact);
    contents.extend_from_slice(&Sha256::digest(artifact));
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    tokio::fs::write(&temporary, &contents).await?;
    tokio::fs::rename(&temporary, path).await
}

/// Advances the epoch clock every `tick` while any plugin is bound, until the engine goes away.
fn spawn_ticker(engine: &Engine, tick: Duration) -> anyhow::Result<Arc<Ticker>> {
    let engine = engine.weak();
    let (sent, ticker) = std::sync::mpsc::sync_channel::<Arc<Ticker>>(1);
    let thread = std::thread::Builder::new()
        .name("mediary-epoch".into())
        .spawn(move || {
            let Ok(ticker) = ticker.recv() else {
                return;
            };
            while ticker.running.load(Ordering::Acquire) {
                if ticker.users.load(Ordering::Acquire) == 0 {
                    // `ticker_use` unparks: a plugin bound between the check and here makes this
                    // return at once (the token is kept).
                    std::thread::park();
                    continue;
                }
                std::thread::sleep(tick);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })?;
    let ticker = Arc::new(Ticker {
        running: AtomicBool::new(true),
        users: AtomicUsize::new(0),
        thread: thread.thread().clone(),
    });
    sent.send(Arc::clone(&ticker))
        .map_err(|_| anyhow::anyhow!("the epoch ticker thread ended at start"))?;
    Ok(ticker)
}

/// An error and its causes on one line.
pub fn describe(error: &wasmtime::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
