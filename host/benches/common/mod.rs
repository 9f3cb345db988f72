//! What the store benchmarks share: settings from the environment and realistic records.
//!
//! A record is ~3.3 KB encoded: ~1 KiB request and response bodies, ten request headers, one
//! orchestration, a channel id shaped like an OpenHIM ObjectId (see [`channel_id`]). Record `i` is
//! the same on every run.

// Each benchmark uses its own part of this module.
#![allow(dead_code)]

use bytes::Bytes;

use mediary::transaction::{
    Body, Exchange, Headers, RequestRecord, ResponseRecord, Status, Timestamp, Transaction,
};

/// How many channels the records are spread over (uniformly).
pub const CHANNELS: u64 = 20;

/// A number from the environment (`_` allowed as a digit separator), or `default`.
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| v.replace('_', "").parse().expect("a number"))
        .unwrap_or(default)
}

/// A stateless mix of `i` (splitmix64), so record `i` is the same on every run.
pub fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Channel `c`'s id, shaped like OpenHIM's ObjectIds: `65f0a1b2c3d4e5f6a7b8c9` and `c` as two hex
/// digits (`bench/listing.sh` builds the same ids).
pub fn channel_id(c: u64) -> String {
    format!("65f0a1b2c3d4e5f6a7b8c9{c:02x}")
}

/// A JSON-looking body of about `len` bytes.
pub fn text(len: usize, seed: u64) -> Bytes {
    let mut out = format!(r#"{{"resourceType":"Bundle","id":"{seed:016x}","entry":["#);
    let mut n = 0u64;
    while out.len() < len - 40 {
        out.push_str(&format!(
            r#"{{"fullUrl":"urn:uuid:{:016x}"}},"#,
            mix(seed ^ n)
        ));
        n += 1;
    }
    out.push_str(r#"{}]}"#);
    Bytes::from(out)
}

fn headers(n: usize) -> Headers {
    Headers(
        [
            ("host", "hie.example.org:5001"),
            ("content-type", "application/fhir+json"),
            ("accept", "application/fhir+json"),
            ("user-agent", "EMR/4.2 (openmrs)"),
            ("authorization", "Basic [redacted]"),
            ("x-request-id", "0f6c1a52-4b1e-4d2f-9b43-2f0b1f6a7e11"),
            ("x-forwarded-for", "10.20.30.40"),
            ("accept-encoding", "gzip, deflate"),
            ("connection", "keep-alive"),
            ("content-length", "1024"),
        ]
        .iter()
        .take(n)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect(),
    )
}

/// Record `i`, made at `ms` (its id's time): 90% Successful, 5% Failed, 5% Completed, over
/// [`CHANNELS`] channels.
pub fn record(i: u64, ms: u64) -> Transaction {
    let r = mix(i);
    let mut random = [0u8; 10];
    random[..8].copy_from_slice(&r.to_le_bytes());
    random[8..].copy_from_slice(&(i as u16).to_le_bytes());
    let id = uuid::Builder::from_unix_timestamp_millis(ms, &random).into_uuid();
    let channel = r % CHANNELS;
    let (status, code) = match (r >> 8) % 100 {
        0..90 => (Status::Successful, 200),
        90..95 => (Status::Failed, 500),
        _ => (Status::Completed, 404),
    };
    let resource = ["Patient", "Observation", "Encounter"][((r >> 16) % 3) as usize];
    let at = Timestamp(ms);
    let response = ResponseRecord {
        status: code,
        headers: headers(4),
        body: Some(Body(text(1024, r ^ 1))),
        body_truncated: false,
        timestamp: Timestamp(ms + 12),
    };
    Transaction {
        id,
        channel_id: channel_id(channel),
        channel_name: format!("FHIR channel {channel}"),
        client_id: Some(format!("emr-{}", r % 50)),
        client_ip: "10.20.30.40".into(),
        request: RequestRecord {
            host: Some("hie.example.org".into()),
            port: Some("5001".into()),
            path: format!("/fhir/{resource}/{}", r % 100_000),
            querystring: "_format=json".into(),
            method: "POST".into(),
            headers: headers(10),
            body: Some(Body(text(1024, r))),
            body_truncated: false,
            timestamp: at,
        },
        response: Some(response.clone()),
        routes: Vec::new(),
        orchestrations: vec![Exchange {
            name: "primary".into(),
            request: RequestRecord {
                host: Some("fhir.internal".into()),
                port: Some("8080".into()),
                path: format!("/fhir/{resource}"),
                method: "POST".into(),
                headers: headers(3),
                timestamp: Timestamp(ms + 1),
                ..Default::default()
            },
            response: Some(ResponseRecord {
                body: None,
                ..response
            }),
            error: None,
        }],
        properties: Default::default(),
        error: None,
        status,
        can_rerun: true,
        was_rerun: false,
        parent_id: None,
        child_ids: Vec::new(),
        worker: (r % 4) as u16,
        instance: "mediary-1".into(),
        duration_ms: Some(12.5),
        plugin: None,
        plugin_log: Vec::new(),
    }
}

/// Record `i` as its first stage leaves it: `Processing`, the request only.
pub fn begun(i: u64, ms: u64) -> Transaction {
    let mut tx = record(i, ms);
    tx.status = Status::Processing;
    tx.response = None;
    tx.orchestrations.clear();
    tx.duration_ms = None;
    tx
}

/// CPU time used so far, `(user, system)`: by the whole process (every thread, also those that
/// have ended) with `"self"`, by the calling thread with `"thread-self"`. From `/proc/<which>/stat`
/// (clock ticks, 100 per second on Linux); `None` where there is no such file.
pub fn cpu_time(which: &str) -> Option<(std::time::Duration, std::time::Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{which}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its `)` are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // Fields 14 and 15 of the file (utime, stime) are 11 and 12 after the name and state.
    let ticks = |n: usize| -> Option<std::time::Duration> {
        Some(std::time::Duration::from_millis(
            fields.get(n)?.parse::<u64>().ok()? * 10,
        ))
    };
    Some((ticks(11)?, ticks(12)?))
}

/// The embedded store's files in `dir` (`mediary.redb` and the record log, if any): their length
/// and the space they take on disk (the database file grows in large steps that stay sparse until
/// used).
pub fn disk_use(dir: &std::path::Path) -> (u64, u64) {
    let mut files = vec![dir.join(mediary::store::embedded::FILE_NAME)];
    // Spelled out (`embedded::LOG_DIR`) so that this also builds against versions without a log.
    if let Ok(entries) = std::fs::read_dir(dir.join("records")) {
        files.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()));
    }
    files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .fold((0, 0), |(len, used), m| {
            use std::os::unix::fs::MetadataExt as _;
            (len + m.len(), used + m.blocks() * 512)
        })
}
