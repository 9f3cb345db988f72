//! Tags requests and responses with `b`: see `../tag.rs`. For the host's hot-reload tests.

/// What this build adds as `x-plugin-tag`.
const TAG: &str = "b";

#[path = "../../tag.rs"]
mod tag;
