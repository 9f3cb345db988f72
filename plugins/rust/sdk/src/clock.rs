//! Time, from the host.

use crate::__private::mediary::plugin::clock;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    clock::now_ms()
}

/// Nanoseconds on a clock that never goes backwards, for measuring intervals.
pub fn monotonic_ns() -> u64 {
    clock::monotonic_ns()
}
