//! Log lines, kept with the transaction (`pluginLog`) and written to Mediary's log at `debug`.
//!
//! ```ignore
//! mediary_plugin::log::info("Routed.", &[("resource", "Patient"), ("route", "patients")]);
//! ```
//!
//! The host keeps a per-request budget of lines and bytes; lines past it are dropped and counted.

use std::sync::Once;

use crate::__private::mediary::plugin::log::{Level, log as host_log};

/// Logs `message` at `trace` with structured `fields` (key, value).
pub fn trace(message: &str, fields: &[(&str, &str)]) {
    write(Level::Trace, message, fields);
}

/// Logs `message` at `debug` with structured `fields` (key, value).
pub fn debug(message: &str, fields: &[(&str, &str)]) {
    write(Level::Debug, message, fields);
}

/// Logs `message` at `info` with structured `fields` (key, value).
pub fn info(message: &str, fields: &[(&str, &str)]) {
    write(Level::Info, message, fields);
}

/// Logs `message` at `warn` with structured `fields` (key, value).
pub fn warn(message: &str, fields: &[(&str, &str)]) {
    write(Level::Warn, message, fields);
}

/// Logs `message` at `error` with structured `fields` (key, value).
pub fn error(message: &str, fields: &[(&str, &str)]) {
    write(Level::Error, message, fields);
}

fn write(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    host_log(level, message, &fields);
}

/// Makes a panic's message an `error` line of the plugin log (then the standard hook writes it to
/// stderr as before), so the transaction record says why the plugin trapped. Once per instance.
pub(crate) fn install_panic_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let standard = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|at| format!("{}:{}", at.file(), at.line()))
                .unwrap_or_default();
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(not a string)");
            error(
                "The plugin panicked.",
                &[("panic", message), ("location", &location)],
            );
            standard(info);
        }));
    });
}
