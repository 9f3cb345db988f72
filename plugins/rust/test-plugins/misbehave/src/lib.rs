//! A plugin that misbehaves on demand, for the host's sandbox tests. Not for production.
//!
//! The mode is the setting `mode` if set, else the request path's last segment (so one channel
//! `^/misbehave/` serves them all: `GET /misbehave/loop`). In `on-request`:
//!
//! | mode | what the plugin does |
//! |---|---|
//! | `loop` | spins forever (the CPU deadline must stop it) |
//! | `memory` | allocates 1 MiB blocks, touching every page, and never frees them (the memory cap must stop it) |
//! | `trap` | panics: `deliberate trap` |
//! | `header-injection` | answers 200 with a header value holding `ok\r\nx-injected: 1` |
//! | `bad-header-name` | answers 200 with a header named `bad name` |
//! | `framing` | answers 200 with `transfer-encoding: chunked` |
//! | `hop-by-hop` | answers 200 with `connection: close` |
//! | `bad-status` | answers with status 700 |
//! | `ok` | answers 200 `fine` |
//! | `slow-ok` | spins for the setting `busyMs` milliseconds (default 20), then answers 200 `fine` |
//! | anything else (`forward`) | forwards to the channel's routes |
//!
//! In `on-response` the mode is the setting `responseMode` if set, else the path's last segment:
//! `trap-response` panics, `inject-response` adds a header whose value holds CR LF; anything else
//! passes the response through.
//!
//! ```json
//! { "mode": "slow-ok", "busyMs": 20, "responseMode": "trap-response" }
//! ```

use std::hint::black_box;

use mediary_plugin::prelude::*;

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

/// The setting `key` if it is a string, else the path's last segment.
fn mode(request: &Request, key: &str) -> String {
    match config::get::<String>(key) {
        Ok(Some(mode)) => mode,
        _ => request.path.rsplit('/').next().unwrap_or("").to_owned(),
    }
}

fn with_raw_header(name: &str, value: &str) -> Action {
    let mut response = Response::new(200).with_body("fine");
    response.headers.push((name.to_owned(), value.to_owned()));
    Action::respond(response)
}

struct Misbehave;

impl Router for Misbehave {
    fn on_request(request: Request) -> Action {
        match mode(&request, "mode").as_str() {
            "loop" => {
                let mut spins = 0u64;
                loop {
                    spins = black_box(spins.wrapping_add(1));
                }
            }
            "memory" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    let mut block = vec![0u8; MIB];
                    for offset in (0..MIB).step_by(PAGE) {
                        block[offset] = 1;
                    }
                    hoard.push(black_box(block));
                    black_box(&hoard);
                }
            }
            "trap" => panic!("deliberate trap"),
            "header-injection" => with_raw_header("x-test", "ok\r\nx-injected: 1"),
            "bad-header-name" => with_raw_header("bad name", "x"),
            "framing" => with_raw_header("transfer-encoding", "chunked"),
            "hop-by-hop" => with_raw_header("connection", "close"),
            "bad-status" => Action::respond(Response::new(700).with_body("fine")),
            "ok" => Action::respond(Response::new(200).with_body("fine")),
            "slow-ok" => {
                let busy_ms = config::get::<u64>("busyMs").ok().flatten().unwrap_or(20);
                let until = clock::monotonic_ns().saturating_add(busy_ms.saturating_mul(1_000_000));
                while clock::monotonic_ns() < until {
                    black_box(());
                }
                Action::respond(Response::new(200).with_body("fine"))
            }
            _ => Action::forward(),
        }
    }
}

impl Transformer for Misbehave {
    fn on_response(request: Request, response: Response) -> Response {
        match mode(&request, "responseMode").as_str() {
            "trap-response" => panic!("deliberate trap in on-response"),
            "inject-response" => {
                let mut response = response;
                response
                    .headers
                    .push(("x-test".to_owned(), "ok\r\nx-injected: 1".to_owned()));
                response
            }
            _ => response,
        }
    }
}

mediary_plugin::export_plugin!(Misbehave);
