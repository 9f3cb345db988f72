//! The [`Balancer`] fixture: a real HAProxy in front of several servers, round-robin, on a free
//! port of 127.0.0.1, killed on drop.
//!
//! ```no_run
//! use mediary_e2e::balancer::{Backend, Balancer};
//! use mediary_e2e::{Client, Upstream};
//!
//! let (a, b) = (Upstream::fixed(200, "a"), Upstream::fixed(200, "b"));
//! let balancer = Balancer::round_robin(&[Backend::new("a", a.addr()), Backend::new("b", b.addr())]);
//! let first = Client::new().get(balancer.url("/")).send().text();
//! let second = Client::new().get(balancer.url("/")).send().text();
//! assert_ne!(first, second);
//! ```
//!
//! The configuration ([`haproxy_config`]) is the one the README shows for running Mediary
//! instances behind HAProxy: `balance roundrobin`, `retries 3` with `option redispatch 1` (a
//! request whose connection is refused is sent to another server), and health checks every
//! 500 ms (`fall 2 rise 1`) so a dead instance leaves rotation within about a second. With
//! [`Backend::health`] the checks are `GET /health/ready` on the instance's API port (an instance
//! that is starting or stopping answers 503 there); without, they are TCP connects.
//!
//! HAProxy runs in the foreground (`haproxy -db -f haproxy.cfg`) with its log on stderr, written
//! to a file beside the config and printed when a test fails. Its runtime socket tells
//! [`Balancer::servers`] which servers are in rotation. `HAPROXY` names another binary (the
//! default is the one on `PATH`).

use std::fmt;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{eventually, unused_port};

/// How long HAProxy may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// One server behind the balancer.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The server's name in HAProxy's config, log and stats.
    pub name: String,
    /// Where requests go.
    pub addr: SocketAddr,
    /// Where the health check goes, and the path it asks for; `None` for a TCP check on `addr`.
    pub health: Option<(SocketAddr, String)>,
}

impl Backend {
    /// A server checked by connecting to `addr`.
    pub fn new(name: &str, addr: SocketAddr) -> Backend {
        Backend {
            name: name.to_owned(),
            addr,
            health: None,
        }
    }

    /// Checks the server with `GET <path>` on `addr` (e.g. a Mediary's API address and
    /// `/health/ready`) instead: anything but 200 takes it out of rotation.
    pub fn health(mut self, addr: SocketAddr, path: &str) -> Backend {
        self.health = Some((addr, path.to_owned()));
        self
    }
}

/// A running HAProxy; see the module documentation.
pub struct Balancer {
    port: u16,
    dir: TempDir,
    child: Child,
    config: String,
}

impl Balancer {
    /// HAProxy on a free port, sending each request to the next of `backends` in turn; returned
    /// once it accepts connections.
    pub fn round_robin(backends: &[Backend]) -> Balancer {
        assert!(!backends.is_empty(), "a balancer needs backends");
        let dir = tempfile::Builder::new()
            .prefix("mediary-e2e-haproxy-")
            .tempdir()
            .expect("a temporary directory for haproxy");
        let port = unused_port();
        let config = haproxy_config(port, &dir.path().join("haproxy.sock"), backends);
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, &config).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.path().join("haproxy.log")).expect("a log file");
        let child = Command::new(haproxy())
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a second handle on the log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run {} ({error}); install the haproxy package",
                    haproxy().display()
                )
            });
        let mut balancer = Balancer {
            port,
            dir,
            child,
            config,
        };
        let addr = balancer.addr();
        eventually(START_TIMEOUT, "haproxy accepts connections", || {
            if let Ok(Some(status)) = balancer.child.try_wait() {
                panic!(
                    "haproxy exited ({status}); its log:\n{}\nits config:\n{}",
                    balancer.log(),
                    balancer.config
                );
            }
            TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .ok()
                .map(drop)
        });
        balancer
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://<balancer address><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// The config file HAProxy was started with.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Each server's name and status as HAProxy sees it now (`UP`, `DOWN`, `UP 1/2`, …; from
    /// `show stat` on the runtime socket).
    pub fn servers(&self) -> Vec<(String, String)> {
        let stats = self.runtime_command("show stat");
        let mut lines = stats.lines();
        let header: Vec<&str> = lines
            .next()
            .unwrap_or_default()
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let column = |name: &str| header.iter().position(|c| *c == name);
        let (Some(proxy), Some(server), Some(status)) =
            (column("pxname"), column("svname"), column("status"))
        else {
            panic!("unexpected `show stat` output:\n{stats}");
        };
        lines
            .map(|line| line.split(',').collect::<Vec<&str>>())
            .filter(|row| {
                row.len() > status
                    && row[proxy] == "mediary"
                    && !["FRONTEND", "BACKEND"].contains(&row[server])
            })
            .map(|row| (row[server].to_owned(), row[status].to_owned()))
            .collect()
    }

    /// Waits until HAProxy has every server in `names` in rotation (`UP`), and no other.
    pub fn wait_for_up(&self, names: &[&str], timeout: Duration) {
        let mut expected: Vec<&str> = names.to_vec();
        expected.sort_unstable();
        eventually(timeout, &format!("haproxy has {names:?} up"), || {
            let servers = self.servers();
            let mut up: Vec<&str> = servers
                .iter()
                .filter(|(_, status)| status == "UP")
                .map(|(name, _)| name.as_str())
                .collect();
            up.sort_unstable();
            (up == expected).then_some(())
        });
    }

    /// One command on HAProxy's runtime API (its stats socket); the whole answer.
    pub fn runtime_command(&self, command: &str) -> String {
        let mut socket = UnixStream::connect(self.dir.path().join("haproxy.sock"))
            .unwrap_or_else(|error| panic!("connect to haproxy's runtime socket: {error}"));
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        socket
            .write_all(format!("{command}\n").as_bytes())
            .expect("send to haproxy's runtime socket");
        let mut answer = String::new();
        socket
            .read_to_string(&mut answer)
            .expect("read haproxy's runtime socket");
        answer
    }

    /// What HAProxy logged so far (server state changes, alerts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("port", &self.port)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- haproxy (port {}) log ---\n{}--- end of haproxy log ---",
                self.port,
                self.log()
            );
        }
    }
}

/// HAProxy's configuration: a frontend on 127.0.0.1:`port`, round-robin over `backends` (backend
/// `mediary`), the runtime API on the Unix socket `socket`.
pub fn haproxy_config(port: u16, socket: &Path, backends: &[Backend]) -> String {
    let http_checks = backends.iter().all(|b| b.health.is_some());
    assert!(
        http_checks || backends.iter().all(|b| b.health.is_none()),
        "either every backend has a health URL or none has"
    );
    let mut config = format!(
        "\
global
    log stderr format raw local0 notice
    maxconn 4096
    stats socket {socket} mode 600 level admin

defaults
    mode http
    log global
    option httplog
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout check 1s
    # A request whose connection fails is tried again, on another server (every retry).
    retries 3
    option redispatch 1

frontend mediary
    bind 127.0.0.1:{port}
    default_backend mediary

backend mediary
    balance roundrobin
",
        socket = socket.display()
    );
    if let Some((_, path)) = backends.first().and_then(|b| b.health.as_ref()) {
        let _ = write!(
            config,
            "    # Starting, stopping or gone: out of rotation within about a second.
    option httpchk
    http-check send meth GET uri {path} ver HTTP/1.1 hdr Host mediary
    http-check expect status 200
"
        );
    }
    config.push_str("    default-server check inter 500ms fall 2 rise 1\n");
    for backend in backends {
        let _ = write!(config, "    server {} {}", backend.name, backend.addr);
        if let Some((health, _)) = &backend.health {
            let _ = write!(config, " addr {} port {}", health.ip(), health.port());
        }
        config.push('\n');
    }
    config
}

/// The `haproxy` binary: `HAPROXY`, or the one on `PATH`.
fn haproxy() -> PathBuf {
    std::env::var_os("HAPROXY").map_or_else(|| PathBuf::from("haproxy"), PathBuf::from)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn checks_mediary_instances_on_their_api_port() {
        let m1 = Backend::new("m1", "127.0.0.1:5001".parse().unwrap())
            .health("127.0.0.1:8080".parse().unwrap(), "/health/ready");
        let config = haproxy_config(80, Path::new("/tmp/s.sock"), &[m1]);
        assert!(config.contains("balance roundrobin"), "{config}");
        assert!(
            config.contains("http-check send meth GET uri /health/ready ver HTTP/1.1"),
            "{config}"
        );
        assert!(
            config.contains("server m1 127.0.0.1:5001 addr 127.0.0.1 port 8080\n"),
            "{config}"
        );
    }
}
