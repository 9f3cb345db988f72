//! The paths of Mediary's plugin components, built from `plugins/` by this crate's `build.rs`
//! (release profile, `wasm32-wasip2`) whenever their sources, `plugins/Cargo.*` or `wit/` change.
//! Each is an absolute path to a `.wasm` component under `plugins/target/wasm32-wasip2/release/`.

/// `mediary-router`: the content-based FHIR router (world `router-plugin`: no `transformer`).
pub const ROUTER: &str = env!("MEDIARY_PLUGIN_ROUTER");

/// `mediary-lab-csv`: lab results CSV to a FHIR transaction Bundle, and the answer back to CSV
/// (world `channel-plugin`).
pub const LAB_CSV: &str = env!("MEDIARY_PLUGIN_LAB_CSV");

/// `mediary-guard`: requires a patient identifier and rate-limits clients through the key-value
/// store (world `router-plugin`).
pub const GUARD: &str = env!("MEDIARY_PLUGIN_GUARD");

/// `test-misbehave`: loops, exhausts memory, traps or returns invalid responses, by mode (setting
/// `mode`, else the path's last segment); see `plugins/rust/test-plugins/misbehave/src/lib.rs`
/// (world `channel-plugin`).
pub const TEST_MISBEHAVE: &str = env!("MEDIARY_PLUGIN_TEST_MISBEHAVE");

/// `test-probe`: exercises config, key-value, outbound HTTP, log and clock, and echoes requests, by
/// the path's last segment; see `plugins/rust/test-plugins/probe/src/lib.rs` (world
/// `channel-plugin`).
pub const TEST_PROBE: &str = env!("MEDIARY_PLUGIN_TEST_PROBE");

/// `test-tag-a`: forwards with request header `x-plugin-tag: a` and adds the same response header
/// (world `channel-plugin`). Differs from [`TEST_TAG_B`] only in the tag, for hot-reload tests.
pub const TEST_TAG_A: &str = env!("MEDIARY_PLUGIN_TEST_TAG_A");

/// `test-tag-b`: as [`TEST_TAG_A`], with the tag `b`.
pub const TEST_TAG_B: &str = env!("MEDIARY_PLUGIN_TEST_TAG_B");
