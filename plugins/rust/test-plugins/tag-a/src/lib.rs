//! Tags requests and responses with `a`: see `../tag.rs`. For the host's hot-reload tests.

/// What this build adds as `x-plugin-tag`.
const TAG: &str = "a";

#[path = "../../tag.rs"]
mod tag;
