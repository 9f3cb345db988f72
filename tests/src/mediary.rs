//! The [`Mediary`] fixture: the real binary as a child process.
//!
//! [`Mediary::with_config`] writes the TOML into a temporary directory (with
//! a `[server]` table on 127.0.0.1 and ephemeral ports prepended unless the
//! test brings its own), [`Launch::start`] runs `mediary run` and waits for
//! the `Mediary is ready.` line on stderr. Stderr is drained into a buffer
//! for the whole life of the child, so the pipe never fills and tests can
//! look at the logs. The child is killed on drop, and its logs are printed
//! when the test is failing.
//!
//! The root API user's password comes from `MEDIARY_ROOT_PASSWORD`, which
//! the child gets set to [`ROOT_PASSWORD`] unless the test says otherwise, so
//! [`Mediary::api`] can call the management API as root.

use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::api::Api;
use crate::binary::mediary_bin;
use crate::linux::{self, ThreadInfo};

/// How long a child may take to become ready, or to finish a one-shot command. A start that compiles
/// a 12-18 MB JavaScript or Python plugin takes 10-21 s on two busy cores (the polyglot tests);
/// a healthy start of anything else takes well under a second, so the margin only costs time when
/// something is already wrong.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(90);

/// The root API user every test Mediary has (OpenHIM's default email).
pub const ROOT_EMAIL: &str = "root@openhim.org";

/// The root user's password: what `MEDIARY_ROOT_PASSWORD` is set to for the child.
pub const ROOT_PASSWORD: &str = "e2e-root-password";

/// The environment variable that sets the root user's first password.
const ROOT_PASSWORD_ENV: &str = "MEDIARY_ROOT_PASSWORD";

/// The `[server]` table prepended to test configs that have none.
const TEST_SERVER: &str = r#"[server]
bind = "127.0.0.1"
http_port = 0
api_port = 0
workers = 1
"#;

/// A Mediary about to be launched; see [`Mediary::with_config`].
#[derive(Debug)]
pub struct Launch {
    config: Config,
    args: Vec<OsString>,
    /// Environment variables to set (`Some`) or remove (`None`) for the child.
    env: Vec<(OsString, Option<OsString>)>,
}

#[derive(Debug)]
enum Config {
    Text(String),
    File(PathBuf),
}

/// A running `mediary run` child process.
pub struct Mediary {
    child: Child,
    addr: SocketAddr,
    /// The management API's address (`api=` of the readiness line), if it had one.
    api: Option<SocketAddr>,
    /// The HTTPS proxy's address (`https=` of the readiness line), if it had one.
    https: Option<SocketAddr>,
    workers: Option<usize>,
    log: Log,
    config_path: PathBuf,
    /// The command line and environment it was started with, for [`Mediary::restart`].
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    /// The logs of the earlier runs of this Mediary (see [`Mediary::restart`]).
    earlier_logs: String,
    _dir: Option<TempDir>,
}

/// A `mediary` command that ran to completion.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// Everything the command wrote to stderr (ANSI colours removed).
    pub stderr: String,
    /// The config file the command was given, as passed on its command line.
    pub config_path: PathBuf,
    _dir: Option<TempDir>,
}

impl Mediary {
    /// A Mediary with `toml` as its config file. Unless `toml` has its own
    /// `[server]` table, one is added that binds 127.0.0.1 on ephemeral
    /// ports with one worker.
    pub fn with_config(toml: impl Into<String>) -> Launch {
        Launch {
            config: Config::Text(toml.into()),
            args: Vec::new(),
            env: default_env(),
        }
    }

    /// A Mediary reading an existing config file, unchanged.
    pub fn with_config_file(path: impl Into<PathBuf>) -> Launch {
        Launch {
            config: Config::File(path.into()),
            args: Vec::new(),
            env: default_env(),
        }
    }

    /// The proxy's bound address, from the readiness line.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<proxy address><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The HTTPS proxy's bound address, from the readiness line (with `[tls] cert_file` set).
    pub fn https_addr(&self) -> SocketAddr {
        self.https.unwrap_or_else(|| {
            panic!(
                "the readiness line had no https=IP:PORT; the logs:\n{}",
                self.logs()
            )
        })
    }

    /// The management API's bound address, from the readiness line.
    pub fn api_addr(&self) -> SocketAddr {
        self.api.unwrap_or_else(|| {
            panic!(
                "the readiness line had no api=IP:PORT; the logs:\n{}",
                self.logs()
            )
        })
    }

    /// `http://<API address><path>`.
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api_addr())
    }

    /// The management API, called as the root user with [`ROOT_PASSWORD`].
    pub fn api(&self) -> Api {
        Api::new(self.api_url(""), ROOT_EMAIL, ROOT_PASSWORD)
    }

    /// The `workers=N` of the readiness line, if it had one.
    pub fn workers(&self) -> Option<usize> {
        self.workers
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Everything written to stderr so far (ANSI colours removed).
    pub fn logs(&self) -> String {
        self.log.text()
    }

    /// Waits (up to `timeout`) for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        self.log.wait_until(timeout, |text| text.contains(needle))
    }

    /// The child's threads, as `/proc` describes them now.
    pub fn threads(&self) -> Vec<ThreadInfo> {
        linux::threads_of(self.pid())
    }

    /// Asks the process to shut down gracefully.
    pub fn sigterm(&self) {
        linux::send_sigterm(self.pid());
    }

    /// Kills the process with SIGKILL (nothing is flushed, nothing cleaned up: a crash) and waits for
    /// it to be gone.
    pub fn kill(&mut self) -> ExitStatus {
        // `Child::kill` sends SIGKILL on Unix.
        self.child.kill().expect("kill -9 mediary");
        self.child.wait().expect("wait for the killed mediary")
    }

    /// Stops the process gracefully (SIGTERM) and expects it to exit 0 within 30 s.
    pub fn stop(&mut self) {
        self.sigterm();
        let status = self.wait_exit(Duration::from_secs(30));
        assert_eq!(
            status.code(),
            Some(0),
            "mediary did not stop cleanly ({status}); its logs:\n{}",
            self.logs()
        );
    }

    /// Starts this Mediary again, once it has exited (see [`Mediary::stop`], [`Mediary::kill`]):
    /// the same config file (so the same data directory), command line and environment. Ports are
    /// those of the config file: ephemeral ones change.
    pub fn restart(mut self) -> Mediary {
        assert!(
            matches!(self.child.try_wait(), Ok(Some(_))),
            "restart() needs the previous process to have exited; stop or kill it first"
        );
        let launch = Launch {
            config: Config::File(self.config_path.clone()),
            args: std::mem::take(&mut self.args),
            env: std::mem::take(&mut self.env),
        };
        let dir = self._dir.take();
        let earlier = format!(
            "{}--- (pid {}) ---\n{}",
            self.earlier_logs,
            self.child.id(),
            self.logs()
        );
        let mut next = launch.start();
        next._dir = dir;
        next.earlier_logs = earlier;
        next
    }

    /// Replaces the config file (before a [`Mediary::restart`]). As with [`Mediary::with_config`],
    /// a `[server]` table on 127.0.0.1 with ephemeral ports is added unless `toml` has one.
    pub fn rewrite_config(&self, toml: &str) {
        std::fs::write(&self.config_path, with_test_server(toml.to_owned()))
            .expect("rewrite the config file");
    }

    /// The data directory when the config file sets none: `data` beside the config file.
    pub fn default_data_dir(&self) -> PathBuf {
        self.config_path
            .parent()
            .expect("the config file is in a folder")
            .join("data")
    }

    /// The spool segment files (`*.spool`) in the default data directory's `spool` folder.
    pub fn spool_files(&self) -> Vec<PathBuf> {
        let dir = self.default_data_dir().join("spool");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.extension().is_some_and(|ext| ext == "spool"))
            .collect();
        files.sort();
        files
    }

    /// Waits (up to `timeout`) for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for mediary") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mediary did not exit within {timeout:?}; its logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl fmt::Debug for Mediary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mediary")
            .field("pid", &self.child.id())
            .field("addr", &self.addr)
            .field("config_path", &self.config_path)
            .finish_non_exhaustive()
    }
}

impl Drop for Mediary {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            if !self.earlier_logs.is_empty() {
                eprintln!(
                    "--- earlier runs of this mediary ---\n{}--- end of earlier runs ---",
                    self.earlier_logs
                );
            }
            eprintln!(
                "--- mediary (pid {}) stderr ---\n{}--- end of mediary stderr ---",
                self.child.id(),
                self.logs()
            );
        }
    }
}

impl Launch {
    /// Adds `--workers <n>` to the command line (`n` may be `"auto"`).
    pub fn workers(self, n: impl fmt::Display) -> Self {
        self.arg("--workers").arg(n.to_string())
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.into(), Some(value.into())));
        self
    }

    /// Removes an environment variable for the child (inherited or set by default).
    pub fn without_env(mut self, name: &str) -> Self {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.into(), None));
        self
    }

    /// Starts without `MEDIARY_ROOT_PASSWORD`, so the root user's password comes from the config
    /// file or is generated.
    pub fn without_root_password(self) -> Self {
        self.without_env(ROOT_PASSWORD_ENV)
    }

    /// Adds one argument after `--config <file>`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Runs `mediary run` and waits until it says it is ready.
    pub fn start(self) -> Mediary {
        let (config_path, dir) = self.config.materialize();
        let mut child = command("run", &config_path, &self.args, &self.env)
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {}: {error}", mediary_bin().display()));
        let log = Log::drain(child.stderr.take().expect("stderr is piped"));

        let ready = log.wait_until(STARTUP_TIMEOUT, |text| ready_line(text).is_some());
        let text = log.text();
        let Some(line) = ready.then(|| ready_line(&text)).flatten() else {
            let _ = child.kill();
            let status = child.wait().expect("wait for mediary");
            panic!(
                "mediary did not log `Mediary is ready.` within {STARTUP_TIMEOUT:?} ({status}); its stderr:\n{text}"
            );
        };
        let addr = field(line, "addr")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no addr=IP:PORT in the readiness line: {line}"));
        let api = field(line, "api").map(|api| {
            api.parse()
                .unwrap_or_else(|_| panic!("api= is not IP:PORT in the readiness line: {line}"))
        });
        let workers = field(line, "workers").and_then(|n| n.parse().ok());
        let https = field(line, "https").map(|https| {
            https
                .parse()
                .unwrap_or_else(|_| panic!("https= is not IP:PORT in the readiness line: {line}"))
        });
        Mediary {
            child,
            addr,
            api,
            https,
            workers,
            log,
            config_path,
            args: self.args,
            env: self.env,
            earlier_logs: String::new(),
            _dir: dir,
        }
    }

    /// Runs `mediary check-config` to completion.
    pub fn check_config(self) -> Finished {
        self.finish("check-config")
    }

    /// Runs `mediary run` and expects it to exit on its own (e.g. on a bad
    /// config) within [`STARTUP_TIMEOUT`].
    pub fn run_until_exit(self) -> Finished {
        self.finish("run")
    }

    fn finish(self, subcommand: &str) -> Finished {
        let (config_path, dir) = self.config.materialize();
        let mut child = command(subcommand, &config_path, &self.args, &self.env)
            .spawn()
            .unwrap_or_else(|error| panic!("spawn {}: {error}", mediary_bin().display()));
        let log = Log::drain(child.stderr.take().expect("stderr is piped"));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for mediary") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`mediary {subcommand}` still ran after {STARTUP_TIMEOUT:?}; its stderr:\n{}",
                    log.text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The pipe closes when the process exits; wait for the last lines.
        log.wait_until(Duration::from_secs(5), |_| false);
        Finished {
            status,
            stderr: log.text(),
            config_path,
            _dir: dir,
        }
    }
}

impl Config {
    /// The config file to pass on the command line, and the directory to
    /// keep alive while it is in use.
    fn materialize(self) -> (PathBuf, Option<TempDir>) {
        match self {
            Config::File(path) => (path, None),
            Config::Text(toml) => {
                let dir = tempfile::Builder::new()
                    .prefix("mediary-e2e-")
                    .tempdir()
                    .expect("a temporary directory");
                let path = dir.path().join("mediary.toml");
                std::fs::write(&path, with_test_server(toml)).expect("write the config file");
                (path, Some(dir))
            }
        }
    }
}

impl Finished {
    /// The exit code; panics if the process died of a signal.
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| {
            panic!(
                "mediary was killed: {}; stderr:\n{}",
                self.status, self.stderr
            )
        })
    }

    /// The stderr lines that start with `error:`.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|line| line.starts_with("error:"))
            .collect()
    }

    /// The error line about `field` (`error: <file>: <field>...`), if any.
    pub fn error_about(&self, field: &str) -> Option<&str> {
        let prefix = format!("error: {}: {field}", self.config_path.display());
        self.stderr.lines().find(|line| line.contains(&prefix))
    }
}

/// What every child gets unless the test says otherwise: the known root password.
fn default_env() -> Vec<(OsString, Option<OsString>)> {
    vec![(ROOT_PASSWORD_ENV.into(), Some(ROOT_PASSWORD.into()))]
}

fn command(
    subcommand: &str,
    config: &Path,
    extra: &[OsString],
    env: &[(OsString, Option<OsString>)],
) -> Command {
    let mut command = Command::new(mediary_bin());
    command
        .arg(subcommand)
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "info");
    }
    for (name, value) in env {
        match value {
            Some(value) => command.env(name, value),
            None => command.env_remove(name),
        };
    }
    command
}

/// `toml` with [`TEST_SERVER`] in front, unless it has a `[server]` table of its own.
fn with_test_server(toml: String) -> String {
    if has_table(&toml, "server") {
        toml
    } else {
        format!("{TEST_SERVER}\n{toml}")
    }
}

fn has_table(toml: &str, name: &str) -> bool {
    let header = format!("[{name}]");
    toml.lines().any(|line| line.trim() == header)
}

fn ready_line(text: &str) -> Option<&str> {
    text.lines().find(|line| line.contains("Mediary is ready."))
}

/// The value of `name=value` in a log line (quotes removed).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let needle = format!("{name}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(needle.as_str()))
        .map(|value| value.trim_matches(|c| c == '"' || c == ','))
}

/// A child's stderr, collected line by line on a thread of its own.
#[derive(Clone, Default)]
struct Log {
    shared: Arc<(Mutex<LogState>, Condvar)>,
}

#[derive(Default)]
struct LogState {
    text: String,
    closed: bool,
}

impl Log {
    fn drain(stderr: impl Read + Send + 'static) -> Log {
        let log = Log::default();
        let writer = log.clone();
        std::thread::Builder::new()
            .name("mediary-stderr".into())
            .spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut line = Vec::new();
                loop {
                    line.clear();
                    let read = reader.read_until(b'\n', &mut line).unwrap_or(0);
                    let (lock, changed) = &*writer.shared;
                    let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
                    if read == 0 {
                        state.closed = true;
                        changed.notify_all();
                        return;
                    }
                    state
                        .text
                        .push_str(&strip_ansi(&String::from_utf8_lossy(&line)));
                    if !state.text.ends_with('\n') {
                        state.text.push('\n');
                    }
                    changed.notify_all();
                }
            })
            .expect("spawn the stderr reader");
        log
    }

    fn text(&self) -> String {
        let (lock, _) = &*self.shared;
        lock.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .text
            .clone()
    }

    /// Waits until `done(text)` holds or stderr closes; returns `done(text)`.
    fn wait_until(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (lock, changed) = &*self.shared;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if done(&state.text) {
                return true;
            }
            let now = Instant::now();
            if state.closed || now >= deadline {
                return false;
            }
            state = changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Removes ANSI escape sequences (`ESC [ ... letter`), in case the binary
/// colours its logs despite `NO_COLOR`.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_the_readiness_line() {
        let line =
            "2025-01-01T00:00:00Z  INFO mediary: addr=127.0.0.1:4321 workers=2 Mediary is ready.";
        assert_eq!(field(line, "addr"), Some("127.0.0.1:4321"));
        assert_eq!(field(line, "workers"), Some("2"));
        let line = "2025-01-01T00:00:00Z  INFO mediary: Mediary is ready. addr=127.0.0.1:4321 \
                    api=127.0.0.1:8080 workers=1";
        assert_eq!(field(line, "api"), Some("127.0.0.1:8080"));
        assert_eq!(field(line, "workers"), Some("1"));
        assert_eq!(field("x addr=\"[::1]:80\"", "addr"), Some("[::1]:80"));
    }

    #[test]
    fn strips_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[3maddr\u{1b}[0m\u{1b}[2m=\u{1b}[0m1"),
            "addr=1"
        );
    }

    #[test]
    fn finds_tables() {
        assert!(has_table("a = 1\n  [server]\nx=1", "server"));
        assert!(!has_table("[servers]\n[[server]]", "server"));
    }
}
