//! Running a channel's plugin: instances (fresh or warm), deadlines, and what went wrong.
//!
//! A request takes a [`Session`]: one instance for the whole request, so `on-request` and
//! `on-response` see the same plugin memory. In `per-request` isolation the instance is new (from the
//! pooling allocator) and dropped with the session. In `reuse` isolation the worker keeps warm
//! instances of the channel's plugin; a session takes one and gives it back unless it trapped or has
//! served `maxReuse` requests.
//!
//! The CPU deadline is enforced with epochs: the ticker advances the epoch every `epoch_tick`; when
//! a call has run its slice (2 ticks), the store's callback compares the guest's own time (wall
//! time minus time spent waiting on host calls or yielded) with the deadline, and either traps or
//! yields to the worker's other requests and grants another slice, so a spinning plugin never
//! holds its worker for more than a slice at a time.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::InstancePre;
use wasmtime::{Store, UpdateDeadline};

use super::bindings::{router, transformer, types};
use super::engine::{PluginEngine, TickerUse, describe};
use super::guest::Language;
use super::imports::{Call, Grants, HostState};
use super::spec::{Isolation, PluginSpec};
use crate::transaction::PluginRun;

/// Epoch ticks a call runs before the host checks its time and lets other tasks of the worker run: a
/// spinning plugin delays each I/O step of the requests sharing its worker by about this much.
const SLICE_TICKS: u64 = 2;

/// Why a plugin call failed. The plugin is to blame, except for [`Failure::Busy`].
#[derive(Debug, Clone)]
pub enum Failure {
    /// It trapped: a panic, `unreachable`, a bad memory access. `message` includes the guest's
    /// panic text when it printed one.
    Trap { message: String },
    /// It used more CPU time than its deadline.
    Deadline { limit: Duration },
    /// It tried to use more memory than its cap.
    Memory { limit: usize },
    /// It returned something the host refuses (see [`super::output`]).
    Invalid { reason: String },
    /// The channel's plugin could not be loaded.
    Unavailable { reason: String },
    /// Every instance slot of the process is in use.
    Busy,
}

impl Failure {
    /// A short machine-readable kind, for records and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Trap { .. } => "trap",
            Failure::Deadline { .. } => "deadline",
            Failure::Memory { .. } => "memory",
            Failure::Invalid { .. } => "invalid-output",
            Failure::Unavailable { .. } => "unavailable",
            Failure::Busy => "busy",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Trap { message } => write!(f, "the plugin trapped: {message}"),
            Failure::Deadline { limit } => write!(
                f,
                "the plugin ran past its CPU deadline of {} ms",
                limit.as_millis()
            ),
            Failure::Memory { limit } => write!(
                f,
                "the plugin tried to use more than its memory limit of {} MiB",
                limit >> 20
            ),
            Failure::Invalid { reason } => {
                write!(f, "the plugin returned invalid output: {reason}")
            }
            Failure::Unavailable { reason } => write!(f, "the plugin is unavailable: {reason}"),
            Failure::Busy => f.write_str("every plugin instance slot is in use"),
        }
    }
}

/// The CPU deadline passed (raised from the epoch callback, recognised in [`classify`]).
#[derive(Debug)]
struct DeadlineExceeded;

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CPU deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// A compiled plugin, ready to instantiate: shared by every channel and version with its digest.
pub struct Code {
    pub sha256: String,
    pub size: u64,
    /// The language it was written in (from the marks its toolchain left in it).
    pub language: Language,
    pub(super) pre: InstancePre<HostState>,
    pub(super) router: router::GuestIndices,
    pub(super) transformer: Option<transformer::GuestIndices>,
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Code")
            .field("sha256", &self.sha256)
            .field("language", &self.language)
            .field("transforms", &self.transformer.is_some())
            .finish_non_exhaustive()
    }
}

/// A warm instance.
struct Instance {
    store: Store<HostState>,
    router: router::Guest,
    transformer: Option<transformer::Guest>,
    /// Requests served.
    uses: u32,
}

/// A channel's plugin: its code, what the channel grants it, and its limits.
pub struct BoundPlugin {
    pub code: Arc<Code>,
    pub grants: Arc<Grants>,
    /// Name, version, digest and isolation, as recorded on transactions.
    pub run: PluginRun,
    /// The channel's `plugin` field it was bound from.
    pub spec: PluginSpec,
    pub isolation: Isolation,
    pub deadline: Duration,
    pub memory_limit: usize,
    pub max_reuse: u32,
    engine: Arc<PluginEngine>,
    /// Warm instances, one list per worker (each worker only touches its own).
    warm: Vec<Mutex<Vec<Instance>>>,
    /// Keeps the deadline clock ticking while this plugin is bound.
    _ticking: TickerUse,
}

impl fmt::Debug for BoundPlugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundPlugin")
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

/// Everything a session needs from the request besides the plugin.
#[derive(Debug)]
pub struct CallEnv {
    pub worker: usize,
    pub call: Call,
}

impl BoundPlugin {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        engine: Arc<PluginEngine>,
        code: Arc<Code>,
        grants: Arc<Grants>,
        run: PluginRun,
        spec: PluginSpec,
        isolation: Isolation,
        deadline: Duration,
        memory_limit: usize,
        max_reuse: u32,
        workers: usize,
    ) -> BoundPlugin {
        BoundPlugin {
            code,
            grants,
            run,
            spec,
            isolation,
            deadline,
            memory_limit,
            max_reuse,
            _ticking: engine.ticker_use(),
            engine,
            warm: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
        }
    }

    /// Whether the plugin transforms responses (exports `transformer`).
    pub fn transforms(&self) -> bool {
        self.code.transformer.is_some()
    }

    /// The upstream of a `url` target the plugin returned: a URL, to a host and port on the
    /// channel's `allowedHosts`. The error says what is wrong, for the plugin's failure record.
    pub fn url_target(&self, url: &str) -> Result<(crate::channel::Route, http::Uri), String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        let route = crate::channel::Route::for_url(&self.run.name, &uri)?;
        if !self
            .grants
            .allowed_hosts
            .iter()
            .any(|a| a.allows(&route.host, route.port))
        {
            return Err(format!(
                "forwarding to {} is not allowed: it is not on the channel's allowedHosts",
                route.authority
            ));
        }
        Ok((route, uri))
    }

    /// An instance for one request: warm if the channel reuses instances and one is idle, else new.
    pub async fn session(self: &Arc<Self>, env: CallEnv) -> Result<Session, Failure> {
        let CallEnv { worker, mut call } = env;
        call.deadline = self.deadline;
        if self.isolation == Isolation::Reuse
            && let Some(mut instance) = self.take_warm(worker)
        {
            instance.store.data_mut().call = Some(call);
            return Ok(Session {
                plugin: Arc::clone(self),
                worker,
                instance: Some(instance),
                poisoned: false,
            });
        }
        let instance = self.instantiate(call).await?;
        Ok(Session {
            plugin: Arc::clone(self),
            worker,
            instance: Some(instance),
            poisoned: false,
        })
    }

    fn take_warm(&self, worker: usize) -> Option<Instance> {
        let slot = self.warm.get(worker)?;
        slot.lock().ok()?.pop()
    }

    fn give_back(&self, worker: usize, instance: Instance) {
        if let Some(slot) = self.warm.get(worker)
            && let Ok(mut list) = slot.lock()
        {
            list.push(instance);
        }
    }

    async fn instantiate(&self, call: Call) -> Result<Instance, Failure> {
        let engine = &self.engine;
        let mut state = HostState::new(Arc::clone(&self.grants), self.memory_limit);
        state.call = Some(call);
        let mut store = Store::new(&engine.engine, state);
        store.limiter(|state| state as &mut dyn wasmtime::ResourceLimiter);
        let tick = engine.settings.epoch_tick;
        store.epoch_deadline_callback(move |mut context| {
            let Some(call) = &mut context.data_mut().call else {
                return Ok(UpdateDeadline::YieldCustom(
                    SLICE_TICKS,
                    Box::pin(tokio::task::yield_now()),
                ));
            };
            let used = call.guest_time();
            if used >= call.deadline {
                call.deadline_hit = true;
                return Err(DeadlineExceeded.into());
            }
            let left = (call.deadline - used).as_nanos() / tick.as_nanos().max(1);
            let left = u64::try_from(left)
                .unwrap_or(u64::MAX)
                .clamp(1, SLICE_TICKS);
            // tokio's `yield_now` lets the worker poll its sockets before coming back (a plain
            // wake-up would run the guest again at once, and the worker would look for new I/O only
            // every 61 turns); the time away is not the guest's.
            let yielded = Arc::clone(&call.yielded);
            Ok(UpdateDeadline::YieldCustom(
                left,
                Box::pin(async move {
                    let away = Instant::now();
                    tokio::task::yield_now().await;
                    let nanos = u64::try_from(away.elapsed().as_nanos()).unwrap_or(u64::MAX);
                    yielded.fetch_add(nanos, std::sync::atomic::Ordering::Relaxed);
                }),
            ))
        });
        store.set_epoch_deadline(self.first_slice());
        let instance = match self.code.pre.instantiate_async(&mut store).await {
            Ok(instance) => instance,
            Err(error) => {
                if error.is::<wasmtime::PoolConcurrencyLimitError>() {
                    return Err(Failure::Busy);
                }
                return Err(classify(&error, store.data()));
            }
        };
        let router =
            self.code
                .router
                .load(&mut store, &instance)
                .map_err(|e| Failure::Unavailable {
                    reason: describe(&e),
                })?;
        let transformer = match &self.code.transformer {
            Some(indices) => {
                Some(
                    indices
                        .load(&mut store, &instance)
                        .map_err(|e| Failure::Unavailable {
                            reason: describe(&e),
                        })?,
                )
            }
            None => None,
        };
        Ok(Instance {
            store,
            router,
            transformer,
            uses: 0,
        })
    }

    fn first_slice(&self) -> u64 {
        self.engine.ticks(self.deadline).clamp(1, SLICE_TICKS)
    }
}

/// One request's use of a plugin instance.
pub struct Session {
    plugin: Arc<BoundPlugin>,
    worker: usize,
    instance: Option<Instance>,
    /// A call trapped, or was abandoned mid-way: the instance must not be used again.
    poisoned: bool,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("plugin", &self.plugin.run.name)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn plugin(&self) -> &Arc<BoundPlugin> {
        &self.plugin
    }

    /// Calls `on-request`.
    pub async fn on_request(&mut self, request: &types::Request) -> Result<types::Action, Failure> {
        let instance = self.begin()?;
        let router = instance.router.clone();
        let result = router.call_on_request(&mut instance.store, request).await;
        self.end(result)
    }

    /// Calls `on-response` (the plugin must transform: see [`BoundPlugin::transforms`]).
    pub async fn on_response(
        &mut self,
        request: &types::Request,
        response: &types::Response,
    ) -> Result<types::Response, Failure> {
        let instance = self.begin()?;
        let Some(transformer) = instance.transformer.clone() else {
            return Err(Failure::Unavailable {
                reason: "the plugin does not transform responses".into(),
            });
        };
        let result = transformer
            .call_on_response(&mut instance.store, request, response)
            .await;
        self.end(result)
    }

    fn begin(&mut self) -> Result<&mut Instance, Failure> {
        if self.poisoned {
            return Err(Failure::Unavailable {
                reason: "the instance trapped earlier in this request".into(),
            });
        }
        let first_slice = self.plugin.first_slice();
        // Until the call returns, the instance is suspect: if the request is dropped mid-call (the
        // client went away), the instance may be stopped half-way and must not serve again.
        self.poisoned = true;
        let instance = self.instance.as_mut().ok_or(Failure::Busy)?;
        if let Some(call) = &mut instance.store.data_mut().call {
            call.started = Instant::now();
            call.waited = Duration::ZERO;
            call.yielded.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        instance.store.set_epoch_deadline(first_slice);
        Ok(instance)
    }

    fn end<T>(&mut self, result: wasmtime::Result<T>) -> Result<T, Failure> {
        // Log lines past the budget are not kept, but the record says how many there were.
        if let Some(call) = self
            .instance
            .as_ref()
            .and_then(|i| i.store.data().call.as_ref())
            && call.log_dropped > 0
            && let Some(recording) = &call.recording
        {
            recording.set_property("pluginLogDropped", call.log_dropped.into());
        }
        match result {
            Ok(value) => {
                self.poisoned = false;
                Ok(value)
            }
            Err(error) => {
                let failure = match &self.instance {
                    Some(instance) => classify(&error, instance.store.data()),
                    None => Failure::Trap {
                        message: describe(&error),
                    },
                };
                Err(failure)
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(mut instance) = self.instance.take() else {
            return;
        };
        let plugin = &self.plugin;
        instance.uses += 1;
        let reusable = plugin.isolation == Isolation::Reuse
            && !self.poisoned
            && instance.uses < plugin.max_reuse;
        if reusable {
            // The next request must not see this one's recording, counters or deadline.
            instance.store.data_mut().call = None;
            plugin.give_back(self.worker, instance);
        }
    }
}

/// What a failed call amounts to.
fn classify(error: &wasmtime::Error, state: &HostState) -> Failure {
    if state.memory_hit {
        return Failure::Memory {
            limit: state.memory_limit,
        };
    }
    let deadline_hit = state.call.as_ref().is_some_and(|c| c.deadline_hit);
    if deadline_hit || error.is::<DeadlineExceeded>() {
        return Failure::Deadline {
            limit: state.call.as_ref().map_or(Duration::ZERO, |c| c.deadline),
        };
    }
    let mut message = match error.downcast_ref::<wasmtime::Trap>() {
        Some(trap) => trap.to_string(),
        None => describe(error),
    };
    // What the guest printed last (a panic message): an instance that traps is never used again,
    // so earlier output, if any, is from requests that went well and comes first.
    let stderr: Bytes = state.stderr();
    let said = String::from_utf8_lossy(&stderr);
    let said = said.trim();
    if !said.is_empty() {
        let skip = said.chars().count().saturating_sub(1024);
        let said: String = said.chars().skip(skip).collect();
        message = format!("{message} ({said})");
    }
    Failure::Trap { message }
}
