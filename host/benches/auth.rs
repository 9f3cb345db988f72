//! The cost of checking a client's Basic credentials on the proxy (`ClientAuth::authenticate`):
//! (a) an unknown clientID, (b) a known client with a wrong password, (c) the right password, not
//! remembered (argon2 every time) and remembered (a keep-alive client's case).
//!
//! (a) and (b) must cost the same (within 10%): an unknown clientID is checked against a dummy
//! argon2 hash precisely so that timing does not tell which clientIDs exist. Backoff is switched off
//! here (it would refuse the repeated failures unchecked, which is cheap for both alike).
//!
//! Run: `cargo bench -p mediary --bench auth`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, header};
use serde_json::json;

use mediary::client::{Client, ClientDirectory};
use mediary::config::auth::Auth;
use mediary::config::fields::FieldErrors;
use mediary::proxy::auth::{ClientAuth, Identity};
use mediary::store::Store;
use mediary::store::embedded::EmbeddedStore;

fn headers(user: &str, password: &str) -> HeaderMap {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Basic {token}")).expect("header"),
    );
    h
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
    let hash = mediary::password::hash_password("right-password").expect("hash");
    let doc = json!({"_id": "1", "clientID": "emr", "name": "EMR", "roles": ["fhir"],
        "passwordAlgorithm": "argon2id", "passwordHash": hash});
    let client = Client::parse(String::new(), &doc, &mut FieldErrors::default()).expect("client");
    let clients = ClientDirectory::new([client]);
    let no_backoff = Auth {
        backoff_after: u32::MAX,
        ..Auth::default()
    };
    let make = |config: Auth| {
        let auth = ClientAuth::new(config, Arc::clone(&store), Arc::default());
        runtime.block_on(auth.prepare());
        auth
    };
    let remembering = make(no_backoff.clone());
    let forgetting = make(Auth {
        cache_ttl: Duration::ZERO,
        ..no_backoff
    });
    let ip: IpAddr = [10, 0, 0, 1].into();
    let check = |auth: &ClientAuth, headers: &HeaderMap, expect_client: bool| {
        let identity = runtime
            .block_on(auth.authenticate(&clients, "bench", headers, None, ip))
            .expect("not backing off");
        assert_eq!(matches!(identity, Identity::Client(..)), expect_client);
    };

    let mut group = c.benchmark_group("basic_auth");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    let unknown = headers("nobody", "right-password");
    let wrong = headers("emr", "wrong-password");
    let right = headers("emr", "right-password");
    group.bench_function("unknown_client", |b| {
        b.iter(|| check(&forgetting, &unknown, false))
    });
    group.bench_function("wrong_password", |b| {
        b.iter(|| check(&forgetting, &wrong, false))
    });
    group.bench_function("right_password_uncached", |b| {
        b.iter(|| check(&forgetting, &right, true))
    });
    check(&remembering, &right, true);
    group.bench_function("right_password_cached", |b| {
        b.iter(|| check(&remembering, &right, true))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
