//! Counters for `GET /metrics` (Prometheus text), kept in atomics so the data path pays a few
//! relaxed increments per request.
//!
//! Per channel: requests, responses by status class, transaction statuses, a latency histogram,
//! plugin failures by kind.
//! Per worker: requests and open connections. Figures are per instance, except the
//! `mediary_cluster_*` ones [`render_store`] adds, which are read from the shared store; every
//! family's help line says which.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::transaction::Status;

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// One channel's counters. Shared by every worker; kept across channel updates (keyed by id).
#[derive(Debug, Default)]
pub struct ChannelMetrics {
    pub requests: AtomicU64,
    /// Responses by class: index 0 = 1xx … 4 = 5xx.
    pub responses: [AtomicU64; 5],
    /// Final transaction statuses, by [`Status::code`].
    pub statuses: [AtomicU64; 6],
    /// Cumulative-style buckets are computed at render time; these are per-bucket counts, the last
    /// one being +Inf.
    pub latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of latencies in microseconds.
    pub latency_sum_us: AtomicU64,
    /// Plugin failures by kind, in the order of [`PLUGIN_FAILURES`].
    pub plugin_failures: [AtomicU64; PLUGIN_FAILURES.len()],
}

/// The kinds of plugin failure counted (`crate::plugin::Failure::kind`).
pub const PLUGIN_FAILURES: [&str; 6] = [
    "trap",
    "deadline",
    "memory",
    "invalid-output",
    "unavailable",
    "busy",
];

impl ChannelMetrics {
    pub fn response(&self, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Relaxed);
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[bucket].fetch_add(1, Relaxed);
        self.latency_sum_us
            .fetch_add(latency.as_micros() as u64, Relaxed);
    }

    pub fn status(&self, status: Status) {
        self.statuses[usize::from(status.code())].fetch_add(1, Relaxed);
    }

    /// Counts a plugin failure of `kind` (one of [`PLUGIN_FAILURES`]).
    pub fn plugin_failure(&self, kind: &str) {
        if let Some(i) = PLUGIN_FAILURES.iter().position(|k| *k == kind) {
            self.plugin_failures[i].fetch_add(1, Relaxed);
        }
    }
}

/// A channel's id, its name as last seen, and its counters.
type ChannelEntry = (Arc<str>, String, Arc<ChannelMetrics>);

/// One worker's counters.
#[derive(Debug, Default)]
pub struct WorkerMetrics {
    pub requests: AtomicU64,
    pub open_connections: AtomicU64,
    /// HTTPS connections whose TLS handshake failed or timed out (incl. refused client certificates).
    pub tls_handshake_failures: AtomicU64,
}

/// Every counter of this instance.
#[derive(Debug, Default)]
pub struct Metrics {
    /// By channel id, with the channel's name as last seen.
    channels: Mutex<Vec<ChannelEntry>>,
    workers: Mutex<Vec<Arc<WorkerMetrics>>>,
    /// Records written to the store, and failed store writes (retried).
    pub records_stored: AtomicU64,
    pub store_errors: AtomicU64,
    /// Client authentication on the proxy (see [`AuthMetrics`]).
    pub auth: AuthMetrics,
}

/// Client authentication failures and refusals. Failures are rare next to requests (except under
/// attack, when a lock costs less than the argon2 they come with), so a locked map is enough.
#[derive(Debug, Default)]
pub struct AuthMetrics {
    /// Failures by (mechanism, reason).
    failures: Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>,
    /// Attempts refused unchecked because their clientID or address was backing off.
    pub backoff: AtomicU64,
}

impl AuthMetrics {
    /// Counts a failure of `mechanism` (`basic`, `custom-token`, `jwt`, `mutual-tls`, or `none` for
    /// a refusal by the channel) for `reason`.
    pub fn failure(&self, mechanism: &'static str, reason: &'static str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        *failures.entry((mechanism, reason)).or_default() += 1;
    }

    /// The count for (`mechanism`, `reason`).
    pub fn failures(&self, mechanism: &str, reason: &str) -> u64 {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures
            .iter()
            .filter(|((m, r), _)| *m == mechanism && *r == reason)
            .map(|(_, n)| *n)
            .sum()
    }

    fn render(&self, out: &mut String) {
        family(
            out,
            "mediary_auth_failures_total",
            "counter",
            "Proxy requests whose client authentication failed or that a channel refused, by mechanism and reason.",
        );
        let failures = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for ((mechanism, reason), n) in failures {
            sample(
                out,
                "mediary_auth_failures_total",
                &format!("mechanism=\"{mechanism}\",reason=\"{reason}\""),
                n,
            );
        }
        family(
            out,
            "mediary_auth_backoff_total",
            "counter",
            "Authentication attempts refused (429) without being checked, their clientID or address backing off after repeated failures.",
        );
        let _ = writeln!(
            out,
            "mediary_auth_backoff_total {}",
            self.backoff.load(Relaxed)
        );
    }
}

impl Metrics {
    /// The counters of channel `id` (created on first use); `name` is what they are labelled with.
    pub fn channel(&self, id: &Arc<str>, name: &str) -> Arc<ChannelMetrics> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = channels.iter_mut().find(|(i, _, _)| i == id) {
            if entry.1 != name {
                entry.1 = name.to_owned();
            }
            return Arc::clone(&entry.2);
        }
        let metrics = Arc::new(ChannelMetrics::default());
        channels.push((Arc::clone(id), name.to_owned(), Arc::clone(&metrics)));
        metrics
    }

    /// The counters of worker `index` (created on first use).
    pub fn worker(&self, index: usize) -> Arc<WorkerMetrics> {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        while workers.len() <= index {
            workers.push(Arc::default());
        }
        Arc::clone(&workers[index])
    }

    /// Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str(SCOPE_NOTE);
        let channels = self
            .channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let workers = self
            .workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let labels: Vec<String> = channels
            .iter()
            .map(|(id, name, _)| {
                format!("channel=\"{}\",channel_id=\"{}\"", escape(name), escape(id))
            })
            .collect();

        family(
            &mut out,
            "mediary_channel_requests_total",
            "counter",
            "Requests matched to the channel.",
        );
        for (labels, (_, _, m)) in labels.iter().zip(&channels) {
            sample(
                &mut out,
                "mediary_channel_requests_total",
                labels,
                m.requests.load(Relaxed),
            );
        }
        family(
            &mut out,
            "mediary_channel_responses_total",
            "counter",
            "Responses sent to clients, by status class.",
        );
        for (labels, (_, _, m)) in labels.iter().zip(&channels) {
            for (i, c) in m.responses.iter().enumerate() {
                let labels = format!("{labels},class=\"{}xx\"", i + 1);
                sample(
                    &mut out,
                    "mediary_channel_responses_total",
                    &labels,
                    c.load(Relaxed),
                );
            }
        }
        family(
            &mut out,
            "mediary_channel_plugin_failures_total",
            "counter",
            "Plugin calls that failed, by kind (trap, deadline, memory, invalid-output, unavailable, busy).",
        );
        for (labels, (_, _, m)) in labels.iter().zip(&channels) {
            for (kind, c) in PLUGIN_FAILURES.iter().zip(&m.plugin_failures) {
                let labels = format!("{labels},kind=\"{kind}\"");
                sample(
                    &mut out,
                    "mediary_channel_plugin_failures_total",
                    &labels,
                    c.load(Relaxed),
                );
            }
        }
        family(
            &mut out,
            "mediary_channel_transactions_total",
            "counter",
            "Transactions by final status.",
        );
        for (labels, (_, _, m)) in labels.iter().zip(&channels) {
            for status in Status::ALL {
                let labels = format!("{labels},status=\"{}\"", status.as_str());
                let value = m.statuses[usize::from(status.code())].load(Relaxed);
                sample(
                    &mut out,
                    "mediary_channel_transactions_total",
                    &labels,
                    value,
                );
            }
        }
        let histogram = "mediary_channel_request_duration_seconds";
        family(
            &mut out,
            histogram,
            "histogram",
            "Time from request to complete response.",
        );
        for (labels, (_, _, m)) in labels.iter().zip(&channels) {
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                cumulative += m.latency_buckets[i].load(Relaxed);
                let _ = writeln!(
                    out,
                    "{histogram}_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += m.latency_buckets[LATENCY_BUCKETS.len()].load(Relaxed);
            let _ = writeln!(
                out,
                "{histogram}_bucket{{{labels},le=\"+Inf\"}} {cumulative}"
            );
            let sum = m.latency_sum_us.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{histogram}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{histogram}_count{{{labels}}} {cumulative}");
        }
        family(
            &mut out,
            "mediary_worker_requests_total",
            "counter",
            "Requests served by the worker.",
        );
        for (i, w) in workers.iter().enumerate() {
            let labels = format!("worker=\"{i}\"");
            sample(
                &mut out,
                "mediary_worker_requests_total",
                &labels,
                w.requests.load(Relaxed),
            );
        }
        family(
            &mut out,
            "mediary_worker_open_connections",
            "gauge",
            "Client connections open on the worker.",
        );
        for (i, w) in workers.iter().enumerate() {
            let labels = format!("worker=\"{i}\"");
            sample(
                &mut out,
                "mediary_worker_open_connections",
                &labels,
                w.open_connections.load(Relaxed),
            );
        }
        family(
            &mut out,
            "mediary_worker_tls_handshake_failures_total",
            "counter",
            "HTTPS connections whose TLS handshake failed or timed out on the worker.",
        );
        for (i, w) in workers.iter().enumerate() {
            let labels = format!("worker=\"{i}\"");
            sample(
                &mut out,
                "mediary_worker_tls_handshake_failures_total",
                &labels,
                w.tls_handshake_failures.load(Relaxed),
            );
        }
        family(
            &mut out,
            "mediary_records_stored_total",
            "counter",
            "Transaction records written to the store.",
        );
        let _ = writeln!(
            out,
            "mediary_records_stored_total {}",
            self.records_stored.load(Relaxed)
        );
        family(
            &mut out,
            "mediary_store_errors_total",
            "counter",
            "Failed store writes (the records stay spooled and are retried).",
        );
        let _ = writeln!(
            out,
            "mediary_store_errors_total {}",
            self.store_errors.load(Relaxed)
        );
        self.auth.render(&mut out);
        out
    }
}

/// What `/metrics` says first: which figures are whose.
pub const SCOPE_NOTE: &str = "# Figures named mediary_cluster_* are cluster-wide: read from the \
store every instance shares. Every other figure is this instance's own, counted in memory since it \
started: add them up across instances for the cluster's.\n";

/// Figures read from the store every instance shares.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClusterFigures {
    /// The store's configuration generation.
    pub generation: u64,
    /// Instances with a live heartbeat.
    pub instances: u64,
    /// Of those, how many have applied `generation`.
    pub current: u64,
    /// Transaction records in the store.
    pub transactions: u64,
}

/// This instance's view of the store, and (when the store answered) the cluster-wide figures.
pub fn render_store(out: &mut String, applied: u64, cluster: Option<ClusterFigures>) {
    family(
        out,
        "mediary_store_up",
        "gauge",
        "1 when the store answered this scrape, 0 when it did not (then no mediary_cluster_* figures follow).",
    );
    let _ = writeln!(out, "mediary_store_up {}", u8::from(cluster.is_some()));
    family(
        out,
        "mediary_config_generation_applied",
        "gauge",
        "The configuration generation this instance's channel table is built from.",
    );
    let _ = writeln!(out, "mediary_config_generation_applied {applied}");
    let Some(cluster) = cluster else {
        return;
    };
    for (name, help, value) in [
        (
            "mediary_cluster_config_generation",
            "The store's configuration generation (grows with every configuration change).",
            cluster.generation,
        ),
        (
            "mediary_cluster_instances",
            "Instances with a live heartbeat.",
            cluster.instances,
        ),
        (
            "mediary_cluster_instances_current",
            "Instances with a live heartbeat that have applied the current configuration generation.",
            cluster.current,
        ),
        (
            "mediary_cluster_transactions",
            "Transaction records in the store.",
            cluster.transactions,
        ),
    ] {
        family(out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
}

/// The `# HELP` and `# TYPE` lines of a metric family; the help says whose figure it is.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let scope = if name.starts_with("mediary_cluster_") {
        "Cluster-wide."
    } else {
        "This instance."
    };
    let _ = writeln!(out, "# HELP {name} {help} {scope}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: u64) {
    let _ = writeln!(out, "{name}{{{labels}}} {value}");
}

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
