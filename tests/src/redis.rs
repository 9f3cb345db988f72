//! The [`Redis`] and [`Sentinel`] fixtures: real `redis-server` processes on free ports of
//! 127.0.0.1, each with its own temporary directory (config, data, log), killed on drop.
//!
//! ```no_run
//! use mediary_e2e::redis::{Redis, Sentinel};
//!
//! let mut redis = Redis::durable(); // appendonly yes, appendfsync always
//! redis.command(&["SET", "k", "v"]);
//! redis.kill9();
//! redis.restart(); // same port, same directory: the AOF is replayed
//! assert_eq!(redis.command(&["GET", "k"]).text(), Some("v"));
//!
//! let primary = Redis::start();
//! let replica = Redis::replica_of(&primary);
//! let sentinel = Sentinel::monitoring(&primary);
//! sentinel.failover();
//! sentinel.wait_for_primary(replica.port(), std::time::Duration::from_secs(20));
//! ```
//!
//! The tests talk to Redis through [`Resp`], a few lines of RESP2 over a `TcpStream` with a
//! timeout, so they need neither `redis-cli` nor a client crate, and a stalled server never hangs
//! a test. `REDIS_SERVER` names another `redis-server` binary (the default is the one on `PATH`).

use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::linux::send_signal;
use crate::{eventually, unused_port};

/// How long a server may take to answer PING after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one command from a test may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The name under which the [`Sentinel`] monitors its primary.
pub const SERVICE: &str = "mymaster";

/// One `redis-server` process (a primary, or a replica).
pub struct Redis {
    port: u16,
    dir: TempDir,
    child: Option<Child>,
    /// Whether the process was stopped with SIGSTOP.
    paused: bool,
}

/// How a [`Redis`] is configured.
#[derive(Debug, Clone, Default)]
struct Options {
    /// `appendonly yes` with `appendfsync always`: every acknowledged write is on disk.
    durable: bool,
    /// `replicaof 127.0.0.1 <port>`.
    replica_of: Option<u16>,
}

impl Redis {
    /// A Redis that persists nothing (no AOF, no RDB snapshots).
    pub fn start() -> Redis {
        Redis::launch(Options::default())
    }

    /// A Redis that acknowledges a write only once it is in the append-only file, fsynced
    /// (`appendonly yes`, `appendfsync always`): a kill -9 loses nothing it acknowledged.
    pub fn durable() -> Redis {
        Redis::launch(Options {
            durable: true,
            ..Options::default()
        })
    }

    /// A replica of `primary` (`replicaof`), returned once the primary's writes reach it.
    pub fn replica_of(primary: &Redis) -> Redis {
        let replica = Redis::launch(Options {
            replica_of: Some(primary.port()),
            ..Options::default()
        });
        // After the initial sync, Redis 7.0 streams writes only once the replica's first
        // `REPLCONF ACK` arrives (up to a second later), and `WAIT` already counts the replica
        // meanwhile: wait for a write to arrive instead.
        let probe = format!("mediary-e2e-replica-probe-{}", replica.port());
        primary.command(&["SET", &probe, "1"]);
        eventually(
            START_TIMEOUT,
            "the replica receives its primary's writes",
            || (replica.command(&["GET", &probe]).text() == Some("1")).then_some(()),
        );
        primary.command(&["DEL", &probe]);
        replica
    }

    fn launch(options: Options) -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("mediary-e2e-redis-")
            .tempdir()
            .expect("a temporary directory for redis");
        let port = unused_port();
        std::fs::write(
            dir.path().join("redis.conf"),
            config(port, dir.path(), &options),
        )
        .expect("write redis.conf");
        let mut redis = Redis {
            port,
            dir,
            child: None,
            paused: false,
        };
        redis.spawn();
        redis
    }

    /// Runs `redis-server redis.conf` and waits until it answers PING.
    fn spawn(&mut self) {
        let child = Command::new(redis_server())
            .arg(self.dir.path().join("redis.conf"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot run {} ({error}); install the redis-server package",
                    redis_server().display()
                )
            });
        self.child = Some(child);
        self.paused = false;
        self.wait_for_pong();
    }

    fn wait_for_pong(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.try_command(&["PING"]) {
                Ok(Resp::Simple(pong)) if pong == "PONG" => return,
                // Refused while it binds, `LOADING` while it replays its AOF.
                _ if Instant::now() < deadline => {
                    if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                        panic!(
                            "redis-server on port {} exited ({status}); its log:\n{}",
                            self.port,
                            self.log()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => panic!(
                    "redis-server on port {} did not answer PING within {START_TIMEOUT:?} \
                     (last: {other:?}); its log:\n{}",
                    self.port,
                    self.log()
                ),
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis is running").id()
    }

    /// The server's working directory (its config, AOF and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills the server with SIGKILL (a crash: nothing flushed beyond what fsync already did) and
    /// waits for it to be gone.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("redis is running");
        let _ = child.kill();
        child.wait().expect("wait for the killed redis-server");
        self.paused = false;
    }

    /// Starts the server again, on the same port and in the same directory (so it replays its
    /// AOF), once it is gone ([`Redis::kill9`]); returns when it answers PING.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "restart() needs the server to be killed first"
        );
        self.spawn();
    }

    /// Stops the process with SIGSTOP: connections stay open, nothing is answered.
    pub fn pause(&mut self) {
        send_signal(self.pid(), libc::SIGSTOP);
        self.paused = true;
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&mut self) {
        send_signal(self.pid(), libc::SIGCONT);
        self.paused = false;
    }

    /// Sends one command and returns the reply; panics on a transport error or an error reply.
    pub fn command(&self, args: &[&str]) -> Resp {
        match self.try_command(args) {
            Ok(Resp::Error(error)) => panic!("redis {args:?}: {error}"),
            Ok(reply) => reply,
            Err(error) => panic!("redis {args:?} on port {}: {error}", self.port),
        }
    }

    /// Sends one command on a new connection (an error reply is an `Ok(Resp::Error)`).
    pub fn try_command(&self, args: &[&str]) -> Result<Resp, String> {
        command(self.port, args, COMMAND_TIMEOUT)
    }

    /// Like [`Redis::try_command`], giving up after `timeout` (e.g. on a paused server).
    pub fn try_command_within(&self, args: &[&str], timeout: Duration) -> Result<Resp, String> {
        command(self.port, args, timeout)
    }

    /// `INFO <section>` as text.
    pub fn info(&self, section: &str) -> String {
        match self.try_command(&["INFO", section]) {
            Ok(Resp::Bulk(Some(text))) => text,
            _ => String::new(),
        }
    }

    /// `master` or `slave`, from `ROLE`; `None` when the server does not answer (a Sentinel
    /// reconfiguring it closes every client connection, this one's too).
    pub fn role(&self) -> Option<String> {
        match self.try_command(&["ROLE"]) {
            Ok(Resp::Array(Some(items))) => items.first().and_then(Resp::text).map(str::to_owned),
            Ok(other) => panic!("ROLE answered {other:?}"),
            Err(_) => None,
        }
    }

    /// The keys matching `pattern` (SCAN, so a big database is not blocked).
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut cursor = "0".to_owned();
        loop {
            let reply = self.command(&["SCAN", &cursor, "MATCH", pattern, "COUNT", "1000"]);
            let Resp::Array(Some(parts)) = reply else {
                panic!("SCAN answered {reply:?}");
            };
            cursor = parts[0].text().expect("a SCAN cursor").to_owned();
            if let Resp::Array(Some(batch)) = &parts[1] {
                keys.extend(batch.iter().filter_map(Resp::text).map(str::to_owned));
            }
            if cursor == "0" {
                return keys;
            }
        }
    }

    /// The server's log file.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("port", &self.port)
            .field("pid", &self.child.as_ref().map(Child::id))
            .finish_non_exhaustive()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL ends a stopped process too.
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- redis-server (port {}) log ---\n{}--- end of redis log ---",
                self.port,
                self.log()
            );
        }
    }
}

/// A Sentinel (`redis-server sentinel.conf --sentinel`) monitoring one primary as [`SERVICE`],
/// with a quorum of 1, `down-after-milliseconds 1000` and `failover-timeout 5000`.
pub struct Sentinel {
    port: u16,
    dir: TempDir,
    child: Child,
}

impl Sentinel {
    /// A Sentinel watching `primary`, returned once it knows the primary and all its replicas
    /// (which must be started first), so that a failover can find a replica to promote.
    pub fn monitoring(primary: &Redis) -> Sentinel {
        let dir = tempfile::Builder::new()
            .prefix("mediary-e2e-sentinel-")
            .tempdir()
            .expect("a temporary directory for the sentinel");
        let port = unused_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(&conf, sentinel_config(port, dir.path(), primary.port()))
            .expect("write sentinel.conf");
        let child = Command::new(redis_server())
            .arg(&conf)
            .arg("--sentinel")
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run redis-server --sentinel: {error}"));
        let sentinel = Sentinel { port, dir, child };
        let replicas = match primary.command(&["ROLE"]) {
            Resp::Array(Some(items)) => match items.get(2) {
                Some(Resp::Array(Some(replicas))) => replicas.len(),
                _ => 0,
            },
            other => panic!("ROLE answered {other:?}"),
        };
        // A replica can be promoted once the Sentinel has its INFO (a run id) and sees its link to
        // the primary up; until then `SENTINEL FAILOVER` says NOGOODSLAVE.
        eventually(
            START_TIMEOUT,
            "the sentinel knows the primary and can promote each replica",
            || {
                let known = sentinel.try_command(&["SENTINEL", "REPLICAS", SERVICE]);
                let Ok(Resp::Array(Some(list))) = known else {
                    return None;
                };
                let promotable = list
                    .iter()
                    .filter(|replica| {
                        let field = |name: &str| pairs(replica).get(name).cloned();
                        field("flags").as_deref() == Some("slave")
                            && field("master-link-status").as_deref() == Some("ok")
                            && field("runid").is_some_and(|id| !id.is_empty())
                    })
                    .count();
                (promotable >= replicas).then_some(())
            },
        );
        sentinel
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis+sentinel://127.0.0.1:<port>/mymaster/0`.
    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/{SERVICE}/0", self.port)
    }

    /// The port of the primary the Sentinel names now (`SENTINEL get-master-addr-by-name`).
    pub fn primary_port(&self) -> Option<u16> {
        match self.try_command(&["SENTINEL", "get-master-addr-by-name", SERVICE]) {
            Ok(Resp::Array(Some(addr))) => addr.get(1)?.text()?.parse().ok(),
            _ => None,
        }
    }

    /// `SENTINEL FAILOVER mymaster`: promotes a replica now, without waiting for the primary to
    /// fail; panics if the Sentinel refuses (e.g. no replica it can promote).
    pub fn failover(&self) {
        let reply = self
            .try_command(&["SENTINEL", "FAILOVER", SERVICE])
            .unwrap_or_else(|error| panic!("SENTINEL FAILOVER: {error}"));
        assert_eq!(
            reply,
            Resp::Simple("OK".into()),
            "SENTINEL FAILOVER; the sentinel's log:\n{}",
            self.log()
        );
    }

    /// Waits until the Sentinel names the server on `port` as the primary.
    pub fn wait_for_primary(&self, port: u16, timeout: Duration) {
        eventually(timeout, "the sentinel names the new primary", || {
            (self.primary_port() == Some(port)).then_some(())
        });
    }

    /// Sends one command to the Sentinel.
    pub fn try_command(&self, args: &[&str]) -> Result<Resp, String> {
        command(self.port, args, COMMAND_TIMEOUT)
    }

    /// The Sentinel's log file.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }
}

impl fmt::Debug for Sentinel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sentinel")
            .field("port", &self.port)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- sentinel (port {}) log ---\n{}--- end of sentinel log ---",
                self.port,
                self.log()
            );
        }
    }
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    /// `None` is the null bulk string.
    Bulk(Option<String>),
    /// `None` is the null array.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text, for simple and bulk strings.
    pub fn text(&self) -> Option<&str> {
        match self {
            Resp::Simple(text) | Resp::Bulk(Some(text)) => Some(text),
            _ => None,
        }
    }

    pub fn integer(&self) -> Option<i64> {
        match self {
            Resp::Integer(n) => Some(*n),
            _ => None,
        }
    }
}

/// A flat array of names and values (as `SENTINEL REPLICAS` gives for each replica) as a map.
fn pairs(reply: &Resp) -> std::collections::HashMap<String, String> {
    let Resp::Array(Some(items)) = reply else {
        return Default::default();
    };
    items
        .chunks(2)
        .filter_map(|pair| {
            Some((
                pair.first()?.text()?.to_owned(),
                pair.get(1)?.text()?.to_owned(),
            ))
        })
        .collect()
}

/// Sends `args` as one command to 127.0.0.1:`port` on a new connection and reads one reply; each
/// step (connect, send, each read) gives up after `timeout`.
fn command(port: u16, args: &[&str], timeout: Duration) -> Result<Resp, String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|error| format!("connect: {error}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|error| format!("set timeouts: {error}"))?;
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg.as_bytes());
        request.extend_from_slice(b"\r\n");
    }
    (&stream)
        .write_all(&request)
        .map_err(|error| format!("send: {error}"))?;
    read_reply(&mut BufReader::new(&stream)).map_err(|error| format!("read: {error}"))
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<Resp> {
    let bad = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| bad(format!("not a number: {line:?}")))
    };
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Integer(number()?),
        "$" => match usize::try_from(number()?) {
            Err(_) => Resp::Bulk(None),
            Ok(len) => {
                let mut bytes = vec![0; len + 2];
                reader.read_exact(&mut bytes)?;
                bytes.truncate(len);
                Resp::Bulk(Some(String::from_utf8_lossy(&bytes).into_owned()))
            }
        },
        "*" => match usize::try_from(number()?) {
            Err(_) => Resp::Array(None),
            Ok(len) => Resp::Array(Some(
                (0..len)
                    .map(|_| read_reply(reader))
                    .collect::<std::io::Result<_>>()?,
            )),
        },
        _ => return Err(bad(format!("not a RESP reply: {line:?}"))),
    })
}

fn config(port: u16, dir: &Path, options: &Options) -> String {
    let mut conf = format!(
        "port {port}\n\
         bind 127.0.0.1\n\
         dir {dir}\n\
         logfile {log}\n\
         daemonize no\n\
         save \"\"\n\
         enable-debug-command local\n\
         repl-diskless-sync-delay 0\n",
        dir = dir.display(),
        log = dir.join("redis.log").display(),
    );
    if options.durable {
        conf.push_str("appendonly yes\nappendfsync always\n");
    } else {
        conf.push_str("appendonly no\n");
    }
    if let Some(primary) = options.replica_of {
        conf.push_str(&format!("replicaof 127.0.0.1 {primary}\n"));
    }
    conf
}

fn sentinel_config(port: u16, dir: &Path, primary: u16) -> String {
    format!(
        "port {port}\n\
         bind 127.0.0.1\n\
         dir {dir}\n\
         logfile {log}\n\
         daemonize no\n\
         sentinel monitor {SERVICE} 127.0.0.1 {primary} 1\n\
         sentinel down-after-milliseconds {SERVICE} 1000\n\
         sentinel failover-timeout {SERVICE} 5000\n\
         sentinel parallel-syncs {SERVICE} 1\n",
        dir = dir.display(),
        log = dir.join("sentinel.log").display(),
    )
}

/// The `redis-server` binary: `REDIS_SERVER`, or the one on `PATH`.
fn redis_server() -> PathBuf {
    std::env::var_os("REDIS_SERVER").map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn reads_resp_replies() {
        let mut input: &[u8] =
            b"*3\r\n+OK\r\n$5\r\nhello\r\n*2\r\n:42\r\n$-1\r\n-ERR nope\r\n*-1\r\n";
        assert_eq!(
            read_reply(&mut input).unwrap(),
            Resp::Array(Some(vec![
                Resp::Simple("OK".into()),
                Resp::Bulk(Some("hello".into())),
                Resp::Array(Some(vec![Resp::Integer(42), Resp::Bulk(None)])),
            ]))
        );
        assert_eq!(
            read_reply(&mut input).unwrap(),
            Resp::Error("ERR nope".into())
        );
        assert_eq!(read_reply(&mut input).unwrap(), Resp::Array(None));
        assert!(read_reply(&mut input).is_err());
    }
}
