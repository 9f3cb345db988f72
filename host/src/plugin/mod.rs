//! Channel logic as WebAssembly components (`wit/plugin.wit`).
//!
//! - [`spec`]: a channel's `plugin` field, parsed.
//! - [`engine`]: the one wasmtime engine, the epoch ticker, compiling with a budget and a disk cache.
//! - [`guest`]: which language built a component (interpreters get a longer default deadline).
//! - [`bindings`]: the generated bindings (nothing else touches `bindgen!` output directly).
//! - [`imports`]: the host side of the imports (log, config, kv, outbound-http, clock).
//! - [`call`]: instances, isolation, deadlines, failures.
//! - [`output`]: what a plugin is shown and the checks on everything it returns.
//! - [`offline`]: running a plugin without the server (`mediary plugin run` and `test`).
//! - [`registry`]: uploaded plugins (versions in the store), binding channels to compiled code, and
//!   watching plugin files.
//!
//! A channel's plugin is bound when the channel table is built, so a new table (a channel edited, a
//! plugin version uploaded or rolled back, a watched file changed) switches every new request to the
//! new code at once while requests in flight finish on the code they started with.

pub mod bindings;
pub mod call;
pub mod engine;
pub mod guest;
pub mod imports;
pub mod offline;
pub mod output;
pub mod registry;
pub mod spec;

pub use call::{BoundPlugin, CallEnv, Failure, Session};
pub use engine::{LoadError, PluginEngine};
pub use guest::Language;
pub use registry::{PluginDocument, PluginVersion, Plugins, RollbackError, UploadError, Uploaded};
pub use spec::{Isolation, LogLevel, OnPluginError, PluginSource, PluginSpec};
