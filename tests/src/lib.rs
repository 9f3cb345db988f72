//! End-to-end fixtures for Mediary: the real `mediary` binary, started as a
//! child process, in front of real upstream HTTP servers, everything on
//! ephemeral ports of 127.0.0.1 and cleaned up on drop.
//!
//! A test reads like a sentence:
//!
//! ```no_run
//! use mediary_e2e::{Client, Mediary, Upstream, public_channel};
//!
//! let upstream = Upstream::echo();
//! let mediary = Mediary::with_config(public_channel("echo", "^/echo", &upstream)).start();
//! let reply = Client::new().post(mediary.url("/echo")).body("hello").send();
//! assert_eq!(reply.text(), "hello");
//! assert_eq!(upstream.single_request().body, "hello");
//! ```
//!
//! # Layout
//!
//! - [`binary`]: finds or builds the `mediary` executable, once per test binary.
//! - [`mediary`]: the [`Mediary`] process fixture (config file, readiness, logs, signals, exit).
//! - [`upstream`]: the [`Upstream`] fixture, a recording hyper server with a handler closure.
//! - [`client`]: a blocking HTTP [`Client`] for well-formed requests.
//! - [`api`]: the management [`Api`], called as one user (root by default).
//! - [`metrics`]: [`Metrics`], the samples of `GET /metrics`.
//! - [`load`]: [`Load`], client threads sending requests until told to stop.
//! - [`raw`]: [`RawConnection`], bytes over TCP for malformed or stalled requests.
//! - [`linux`]: what `/proc` says about the child's threads and this process's cores.
//! - [`plugins`]: the paths of the plugin components, built from `plugins/` by `build.rs`.
//! - [`guests`]: builds the JavaScript and Python example plugins (`plugins/js`, `plugins/python`).
//! - [`cases`]: the plugins' shared test cases (`plugins/cases/*.json`), run through a Mediary.
//! - [`redis`]: [`Redis`] and [`Sentinel`], real `redis-server` processes (kill -9, restart,
//!   SIGSTOP, replicas, failover).
//! - [`balancer`]: [`Balancer`], a real HAProxy round-robin in front of several servers.
//!
//! All test-side I/O runs on one background tokio runtime ([`runtime`]), so
//! tests are plain `#[test]` functions that never `.await`.

use std::net::TcpListener;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod api;
pub mod balancer;
pub mod binary;
pub mod cases;
pub mod client;
pub mod guests;
pub mod linux;
pub mod load;
pub mod mediary;
pub mod metrics;
pub mod plugins;
pub mod raw;
pub mod redis;
pub mod tls;
pub mod upstream;

pub use api::{Api, Listing, channel_json, filters, url_encode};
pub use balancer::{Backend, Balancer};
pub use client::{Client, Reply};
pub use hyper::Method;
pub use load::{Load, Outcome};
pub use mediary::{Finished, Launch, Mediary, ROOT_EMAIL, ROOT_PASSWORD};
pub use metrics::Metrics;
pub use raw::{RawConnection, RawResponse};
pub use redis::{Redis, Sentinel};
pub use tls::{
    HttpsReply, ServerCert, TestCa, Versions, https_client, https_get, https_get_using,
    https_get_with,
};
pub use upstream::{Answer, Seen, Upstream};

/// The runtime behind every upstream server and client call of the test
/// process. It lives on its own threads, so a blocking test thread never
/// starves it.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("e2e-io")
            .enable_all()
            .build()
            .expect("the test runtime starts")
    })
}

/// Polls `check` every 20 ms until it returns `Some`, and returns that; panics after `timeout`,
/// saying what was awaited.
pub fn eventually<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still not the case after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port on 127.0.0.1 that nothing listens on (it was bound, then released).
pub fn unused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("an ephemeral port is free");
    listener
        .local_addr()
        .expect("a bound listener has an address")
        .port()
}

/// TOML for a public channel that accepts every method on `url_pattern` and
/// sends it to `upstream` through one primary route named `"<name> route"`.
pub fn public_channel(name: &str, url_pattern: &str, upstream: &Upstream) -> String {
    channel_toml(name, url_pattern, upstream.port(), "", "")
}

/// Like [`public_channel`], to whatever listens on `port` of 127.0.0.1 (a hand-made server, or
/// nothing at all).
pub fn public_channel_to_port(name: &str, url_pattern: &str, port: u16) -> String {
    channel_toml(name, url_pattern, port, "", "")
}

/// Like [`public_channel`], with extra channel keys (e.g. `maxBodySize = 1024`).
pub fn public_channel_with_keys(
    name: &str,
    url_pattern: &str,
    upstream: &Upstream,
    channel_keys: &str,
) -> String {
    channel_toml(name, url_pattern, upstream.port(), channel_keys, "")
}

/// Like [`public_channel`], with extra route keys (e.g. `path = "/fixed"`).
pub fn public_channel_with_route(
    name: &str,
    url_pattern: &str,
    upstream: &Upstream,
    route_keys: &str,
) -> String {
    channel_toml(name, url_pattern, upstream.port(), "", route_keys)
}

/// TOML for one more route of the channel above it (a `[[channels.routes]]` table), to `upstream`,
/// named `name`, not primary unless `route_keys` says so (e.g. `status = "disabled"`).
pub fn extra_route(name: &str, upstream: &Upstream, route_keys: &str) -> String {
    format!(
        r#"
[[channels.routes]]
name = "{name}"
host = "127.0.0.1"
port = {port}
{route_keys}
"#,
        port = upstream.port()
    )
}

fn channel_toml(
    name: &str,
    url_pattern: &str,
    port: u16,
    channel_keys: &str,
    route_keys: &str,
) -> String {
    format!(
        r#"
[[channels]]
name = "{name}"
urlPattern = "{url_pattern}"
methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
authType = "public"
{channel_keys}

[[channels.routes]]
name = "{name} route"
host = "127.0.0.1"
port = {port}
primary = true
{route_keys}
"#
    )
}

/// Whether `text` is a hyphenated UUID of version 7 (RFC 9562 variant).
pub fn is_uuid_v7(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths_ok = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12]);
    let hex_ok = groups
        .iter()
        .all(|g| g.chars().all(|c| c.is_ascii_hexdigit()));
    lengths_ok
        && hex_ok
        && groups[2].starts_with('7')
        && groups[3].starts_with(['8', '9', 'a', 'b', 'A', 'B'])
}

#[cfg(test)]
mod unit {
    use super::is_uuid_v7;

    #[test]
    fn recognises_uuid_v7() {
        assert!(is_uuid_v7("01890a5d-ac96-774b-bcce-b302099a8057"));
        assert!(!is_uuid_v7("01890a5d-ac96-474b-bcce-b302099a8057"));
        assert!(!is_uuid_v7("01890a5d-ac96-774b-7cce-b302099a8057"));
        assert!(!is_uuid_v7("01890a5dac96774bbcceb302099a8057"));
        assert!(!is_uuid_v7(""));
    }
}
