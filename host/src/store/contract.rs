//! The store contract: what every [`Store`] backend must do, as test cases any backend runs.
//!
//! Each case is a `case_*` function taking a fresh, empty store; [`store_contract_tests!`] turns
//! them into one `#[tokio::test]` each for a backend:
//!
//! ```ignore
//! // A future of `(Arc<dyn Store>, guard)`; the guard (a temporary directory, a flushed Redis
//! // database, …) is dropped when the test ends.
//! crate::store::contract::store_contract_tests!(fresh_store());
//! ```
//!
//! Records are built with [`record`]: ids are UUIDv7-shaped with a chosen millisecond, so tests
//! control the order and the time of every record.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use regex::Regex;
use serde_json::json;
use uuid::Uuid;

use super::{Collection, InstanceBeat, ResponseStatus, Store, StoreError, StoredTx, TxQuery};
use crate::transaction::{
    Body, Exchange, Headers, RequestRecord, ResponseRecord, Stage, Status, Timestamp, Transaction,
};

/// Generates one `#[tokio::test]` per contract case. `$make` is an expression evaluating to a
/// future of `(Arc<dyn Store>, G)`: a fresh, empty store and whatever must live as long as it.
macro_rules! store_contract_tests {
    ($make:expr) => {
        $crate::store::contract::store_contract_tests!(@cases $make;
            documents => case_documents,
            generation_and_subscribe => case_generation_and_subscribe,
            stage_ordering => case_stage_ordering,
            replay_is_idempotent => case_replay_is_idempotent,
            index_follows_status => case_index_follows_status,
            list_filters => case_list_filters,
            list_paging => case_list_paging,
            list_snapshot => case_list_snapshot,
            modify => case_modify,
            processing => case_processing,
            cull_bodies => case_cull_bodies,
            delete_transactions => case_delete_transactions,
            big_batches => case_big_batches,
            rewrites_then_deletes => case_rewrites_then_deletes,
            listings_after_churn => case_listings_after_churn,
            state => case_state,
            empty_store => case_empty_store,
            blobs => case_blobs,
            kv_basics => case_kv_basics,
            kv_namespaces => case_kv_namespaces,
            kv_expiry => case_kv_expiry,
            kv_increment => case_kv_increment,
            kv_compare_and_set => case_kv_compare_and_set,
            instances => case_instances,
        );
    };
    (@cases $make:expr; $($test:ident => $case:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $test() {
                let (store, guard) = $make.await;
                // The case consumes the store, so it is gone before its guard.
                $crate::store::contract::$case(store).await;
                drop(guard);
            }
        )*
    };
}
pub(crate) use store_contract_tests;

// ----- record helpers -----

/// An arbitrary fixed time (2025-06-15), so ids and timestamps are the same on every run.
pub const BASE_MS: u64 = 1_750_000_000_000;

/// A UUIDv7-shaped id made at `BASE_MS + ms`; `n` tells apart ids of the same millisecond.
pub fn id_at(ms: u64, n: u16) -> Uuid {
    let v7 = 0x7u128 << 76 | 0x8u128 << 60;
    Uuid::from_u128(u128::from(BASE_MS + ms) << 80 | v7 | u128::from(n))
}

fn body(text: &str) -> Option<Body> {
    Some(Body(Bytes::copy_from_slice(text.as_bytes())))
}

/// A complete record made at `BASE_MS + ms`: request and response bodies, a response status fitting
/// `status` (none while `Processing`), a path of `/fhir/Patient/<ms>`.
pub fn record(ms: u64, channel: &str, status: Status) -> Transaction {
    let id = id_at(ms, 0);
    let at = Timestamp::of_id(id);
    let response_status = match status {
        Status::Processing => None,
        Status::Failed => Some(500),
        Status::Completed => Some(404),
        Status::CompletedWithErrors | Status::Successful | Status::PendingAsync => Some(200),
    };
    Transaction {
        id,
        channel_id: channel.to_owned(),
        channel_name: format!("channel {channel}"),
        client_id: Some("client".into()),
        client_ip: "127.0.0.1".into(),
        request: RequestRecord {
            host: Some("localhost".into()),
            port: Some("5001".into()),
            path: format!("/fhir/Patient/{ms}"),
            querystring: "a=1".into(),
            method: "POST".into(),
            headers: Headers(vec![("content-type".into(), "application/json".into())]),
            body: body(r#"{"resourceType":"Patient"}"#),
            body_truncated: false,
            timestamp: at,
        },
        response: response_status.map(|status| ResponseRecord {
            status,
            headers: Headers(vec![("content-type".into(), "application/json".into())]),
            body: body(r#"{"ok":true}"#),
            body_truncated: false,
            timestamp: Timestamp(at.0 + 5),
        }),
        routes: Vec::new(),
        orchestrations: Vec::new(),
        properties: Default::default(),
        error: None,
        status,
        can_rerun: true,
        was_rerun: false,
        parent_id: None,
        child_ids: Vec::new(),
        worker: 0,
        instance: "test".into(),
        duration_ms: response_status.map(|_| 5.0),
        plugin: None,
        plugin_log: Vec::new(),
    }
}

/// Stores `records` at `stage` in one batch.
pub async fn put(store: &dyn Store, stage: Stage, records: &[Transaction]) {
    let batch = records.iter().map(|tx| StoredTx::new(tx, stage)).collect();
    store.put_transactions(batch).await.unwrap();
}

pub async fn list_ids(store: &dyn Store, query: &TxQuery) -> Vec<Uuid> {
    let page = store.list_transactions(query).await.unwrap();
    page.iter().map(|tx| tx.id).collect()
}

/// What `query` must return from `records`, by brute force.
fn expected(records: &[Transaction], query: &TxQuery) -> Vec<Uuid> {
    let (lo, hi) = (query.min_id(), query.max_id());
    let mut matching: Vec<&Transaction> = records
        .iter()
        .filter(|tx| tx.id >= lo && tx.id <= hi && query.matches(tx))
        .collect();
    matching.sort_by_key(|tx| std::cmp::Reverse(tx.id));
    matching
        .into_iter()
        .skip(query.offset)
        .take(query.limit)
        .map(|tx| tx.id)
        .collect()
}

fn query() -> TxQuery {
    TxQuery {
        limit: 1000,
        ..TxQuery::default()
    }
}

// ----- documents -----

pub async fn case_documents(store: Arc<dyn Store>) {
    assert_eq!(store.get(Collection::Channels, "a").await.unwrap(), None);
    assert!(store.list(Collection::Channels).await.unwrap().is_empty());

    store
        .put(Collection::Channels, "b", json!({"name": "B"}))
        .await
        .unwrap();
    store
        .put(Collection::Channels, "a", json!({"name": "A", "n": [1, 2]}))
        .await
        .unwrap();
    store
        .put(Collection::Users, "a", json!({"email": "a@example.org"}))
        .await
        .unwrap();
    assert_eq!(
        store.get(Collection::Channels, "a").await.unwrap(),
        Some(json!({"name": "A", "n": [1, 2]}))
    );
    assert_eq!(
        store.list(Collection::Channels).await.unwrap(),
        vec![
            ("a".to_owned(), json!({"name": "A", "n": [1, 2]})),
            ("b".to_owned(), json!({"name": "B"})),
        ],
        "in id order, and only this collection's"
    );

    store
        .put(Collection::Channels, "a", json!({"name": "A2"}))
        .await
        .unwrap();
    assert_eq!(
        store.get(Collection::Channels, "a").await.unwrap(),
        Some(json!({"name": "A2"}))
    );

    assert!(store.delete(Collection::Channels, "a").await.unwrap());
    assert!(!store.delete(Collection::Channels, "a").await.unwrap());
    assert_eq!(store.get(Collection::Channels, "a").await.unwrap(), None);
    assert_eq!(
        store.get(Collection::Users, "a").await.unwrap(),
        Some(json!({"email": "a@example.org"})),
        "collections are separate"
    );
    assert!(store.list(Collection::Clients).await.unwrap().is_empty());
    assert!(store.list(Collection::Plugins).await.unwrap().is_empty());
    // Create only makes what is not there.
    let before = store.generation().await.unwrap();
    assert!(
        !store
            .create(Collection::Users, "a", json!({"email": "other"}))
            .await
            .unwrap()
    );
    assert_eq!(store.generation().await.unwrap(), before);
    assert!(
        store
            .create(Collection::Users, "c", json!({"email": "c@example.org"}))
            .await
            .unwrap()
    );
    assert!(store.generation().await.unwrap() > before);
    assert_eq!(
        store.get(Collection::Users, "c").await.unwrap(),
        Some(json!({"email": "c@example.org"}))
    );
}

pub async fn case_generation_and_subscribe(store: Arc<dyn Store>) {
    let start = store.generation().await.unwrap();
    let mut rx = store.subscribe();
    rx.borrow_and_update();

    store
        .put(Collection::Channels, "a", json!({}))
        .await
        .unwrap();
    assert_eq!(store.generation().await.unwrap(), start + 1);
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("a put wakes subscribers")
        .unwrap();
    assert_eq!(*rx.borrow_and_update(), start + 1);

    // A subscriber made later still sees the latest value.
    assert_eq!(*store.subscribe().borrow(), start + 1);

    assert!(!store.delete(Collection::Channels, "nope").await.unwrap());
    assert_eq!(
        store.generation().await.unwrap(),
        start + 1,
        "deleting nothing changes nothing"
    );
    assert!(!rx.has_changed().unwrap());

    store
        .put(Collection::Clients, "c", json!({}))
        .await
        .unwrap();
    assert!(store.delete(Collection::Channels, "a").await.unwrap());
    assert_eq!(store.generation().await.unwrap(), start + 3);
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("a delete wakes subscribers")
        .unwrap();
    assert_eq!(*rx.borrow_and_update(), start + 3);

    // Transactions and state are not configuration.
    put(&*store, Stage::Final, &[record(1, "a", Status::Successful)]).await;
    store.set_state("k", json!(1)).await.unwrap();
    assert_eq!(store.generation().await.unwrap(), start + 3);
}

// ----- transactions -----

pub async fn case_stage_ordering(store: Arc<dyn Store>) {
    let begun = record(1, "a", Status::Processing);
    let mut responded = begun.clone();
    responded.status = Status::Successful;
    responded.response = record(1, "a", Status::Successful).response;
    let mut last = responded.clone();
    last.properties.insert("done".into(), json!(true));

    put(&*store, Stage::Begun, std::slice::from_ref(&begun)).await;
    assert_eq!(
        store.transaction(begun.id).await.unwrap(),
        Some(begun.clone())
    );

    put(&*store, Stage::Responded, std::slice::from_ref(&responded)).await;
    assert_eq!(
        store.transaction(begun.id).await.unwrap(),
        Some(responded.clone()),
        "a later stage wins"
    );

    put(&*store, Stage::Begun, std::slice::from_ref(&begun)).await;
    assert_eq!(
        store.transaction(begun.id).await.unwrap(),
        Some(responded.clone()),
        "an earlier stage is ignored"
    );

    let mut same_stage = responded.clone();
    same_stage.duration_ms = Some(9.0);
    put(&*store, Stage::Responded, std::slice::from_ref(&same_stage)).await;
    assert_eq!(
        store.transaction(begun.id).await.unwrap(),
        Some(same_stage.clone()),
        "the same stage replaces"
    );

    put(&*store, Stage::Final, std::slice::from_ref(&last)).await;
    put(&*store, Stage::Responded, std::slice::from_ref(&responded)).await;
    assert_eq!(
        store.transaction(begun.id).await.unwrap(),
        Some(last.clone())
    );

    // Several stages of one record in one batch apply in order, whatever that order is.
    let other = record(2, "a", Status::Processing);
    let mut other_final = other.clone();
    other_final.status = Status::Failed;
    store
        .put_transactions(vec![
            StoredTx::new(&other_final, Stage::Final),
            StoredTx::new(&other, Stage::Begun),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.transaction(other.id).await.unwrap(),
        Some(other_final)
    );
    assert_eq!(store.count_transactions().await.unwrap(), 2);
    assert!(store.processing(Uuid::nil(), 10).await.unwrap().is_empty());
    assert_eq!(store.transaction(id_at(3, 0)).await.unwrap(), None);
    store.put_transactions(Vec::new()).await.unwrap();
}

pub async fn case_replay_is_idempotent(store: Arc<dyn Store>) {
    let records: Vec<Transaction> = (0..50)
        .map(|i| record(i, ["a", "b"][i as usize % 2], Status::Successful))
        .collect();
    put(&*store, Stage::Responded, &records).await;
    let first = store.list_transactions(&query()).await.unwrap();
    put(&*store, Stage::Responded, &records).await;
    put(&*store, Stage::Begun, &records).await;
    assert_eq!(store.count_transactions().await.unwrap(), 50);
    assert_eq!(store.list_transactions(&query()).await.unwrap(), first);
    let a = TxQuery {
        channel_id: Some("a".into()),
        ..query()
    };
    assert_eq!(
        list_ids(&*store, &a).await.len(),
        25,
        "no duplicate index entries"
    );
    assert_eq!(
        store.newest_transaction().await.unwrap(),
        Some(records[49].id)
    );
}

pub async fn case_index_follows_status(store: Arc<dyn Store>) {
    let begun = record(1, "a", Status::Processing);
    put(&*store, Stage::Begun, std::slice::from_ref(&begun)).await;
    let processing = TxQuery {
        statuses: vec![Status::Processing],
        ..query()
    };
    let processing_in_a = TxQuery {
        channel_id: Some("a".into()),
        ..processing.clone()
    };
    let successful = TxQuery {
        statuses: vec![Status::Successful],
        ..query()
    };
    assert_eq!(list_ids(&*store, &processing).await, vec![begun.id]);
    assert_eq!(list_ids(&*store, &processing_in_a).await, vec![begun.id]);
    assert_eq!(
        store.processing(Uuid::nil(), 10).await.unwrap(),
        vec![begun.id]
    );

    let mut done = begun.clone();
    done.status = Status::Successful;
    put(&*store, Stage::Final, std::slice::from_ref(&done)).await;
    assert!(list_ids(&*store, &processing).await.is_empty());
    assert!(list_ids(&*store, &processing_in_a).await.is_empty());
    assert!(store.processing(Uuid::nil(), 10).await.unwrap().is_empty());
    assert_eq!(list_ids(&*store, &successful).await, vec![begun.id]);
    let a_successful = TxQuery {
        channel_id: Some("a".into()),
        ..successful
    };
    assert_eq!(list_ids(&*store, &a_successful).await, vec![begun.id]);
}

/// Sixty records over three channels, five statuses, two resources, two responses per status.
fn mixed_records() -> Vec<Transaction> {
    (0..60u64)
        .map(|i| {
            let status = [
                Status::Successful,
                Status::Failed,
                Status::Completed,
                Status::Successful,
                Status::Processing,
            ][i as usize % 5];
            let mut tx = record(i * 1000, ["a", "b", "c"][i as usize % 3], status);
            tx.request.path = format!("/fhir/{}/{i}", ["Patient", "Observation"][i as usize % 2]);
            if let Some(response) = &mut tx.response
                && i % 4 == 0
            {
                response.status += 3;
            }
            tx
        })
        .collect()
}

pub async fn case_list_filters(store: Arc<dyn Store>) {
    let records = mixed_records();
    // Two batches, so the records do not all arrive in one commit.
    put(&*store, Stage::Final, &records[..25]).await;
    put(&*store, Stage::Final, &records[25..]).await;
    let ms = |i: u64| Timestamp(BASE_MS + i * 1000);

    let channel = |c: &str| TxQuery {
        channel_id: Some(c.into()),
        ..query()
    };
    let statuses = |s: &[Status]| TxQuery {
        statuses: s.to_vec(),
        ..query()
    };
    let cases: Vec<(&str, TxQuery, Option<usize>)> = vec![
        ("everything", query(), Some(60)),
        ("channel", channel("a"), Some(20)),
        ("unknown channel", channel("zz"), Some(0)),
        ("one status", statuses(&[Status::Failed]), Some(12)),
        (
            "several statuses",
            statuses(&[Status::Failed, Status::Completed]),
            Some(24),
        ),
        (
            "a status twice",
            statuses(&[Status::Failed, Status::Failed]),
            Some(12),
        ),
        (
            "channel and status",
            TxQuery {
                statuses: vec![Status::Successful],
                ..channel("b")
            },
            Some(8),
        ),
        (
            "channel and several statuses",
            TxQuery {
                statuses: vec![Status::Successful, Status::Processing, Status::Failed],
                ..channel("c")
            },
            None,
        ),
        (
            "from",
            TxQuery {
                from: Some(ms(50)),
                ..query()
            },
            Some(10),
        ),
        (
            "to",
            TxQuery {
                to: Some(ms(9)),
                ..query()
            },
            Some(10),
        ),
        (
            "from and to, channel",
            TxQuery {
                from: Some(ms(10)),
                to: Some(ms(39)),
                ..channel("a")
            },
            Some(10),
        ),
        (
            "to between two records",
            TxQuery {
                to: Some(Timestamp(ms(9).0 + 500)),
                ..query()
            },
            Some(10),
        ),
        (
            "exact response status",
            TxQuery {
                response_status: Some(ResponseStatus::Exact(200)),
                ..query()
            },
            None,
        ),
        (
            "response status class",
            TxQuery {
                response_status: Some(ResponseStatus::Class(5)),
                ..query()
            },
            Some(12),
        ),
        (
            "response status class, no response",
            TxQuery {
                response_status: Some(ResponseStatus::Class(2)),
                statuses: vec![Status::Processing],
                ..query()
            },
            Some(0),
        ),
        (
            "path",
            TxQuery {
                path: Some(Regex::new("Observation").unwrap()),
                ..query()
            },
            Some(30),
        ),
        (
            "everything at once",
            TxQuery {
                channel_id: Some("a".into()),
                statuses: vec![Status::Successful, Status::Failed],
                from: Some(ms(5)),
                to: Some(ms(55)),
                response_status: Some(ResponseStatus::Class(2)),
                path: Some(Regex::new("^/fhir/Patient/").unwrap()),
                ..query()
            },
            None,
        ),
        (
            "from after to",
            TxQuery {
                from: Some(ms(30)),
                to: Some(ms(20)),
                ..query()
            },
            Some(0),
        ),
    ];
    for (name, q, count) in cases {
        let got = list_ids(&*store, &q).await;
        let want = expected(&records, &q);
        assert_eq!(got, want, "{name}");
        if let Some(count) = count {
            assert_eq!(got.len(), count, "{name}: count");
        }
        assert!(got.windows(2).all(|w| w[0] > w[1]), "{name}: newest first");
    }

    // Spot checks that do not lean on `TxQuery::matches`.
    let failed_in_a = list_ids(
        &*store,
        &TxQuery {
            statuses: vec![Status::Failed],
            ..channel("a")
        },
    )
    .await;
    let want: Vec<Uuid> = [51u64, 36, 21, 6]
        .iter()
        .map(|&i| id_at(i * 1000, 0))
        .collect();
    assert_eq!(failed_in_a, want);
    let fives = store
        .list_transactions(&TxQuery {
            response_status: Some(ResponseStatus::Class(5)),
            ..query()
        })
        .await
        .unwrap();
    assert!(fives.iter().all(|tx| tx.status == Status::Failed));
    let exact = store
        .list_transactions(&TxQuery {
            response_status: Some(ResponseStatus::Exact(503)),
            ..query()
        })
        .await
        .unwrap();
    assert!(!exact.is_empty());
    assert!(
        exact
            .iter()
            .all(|tx| tx.response.as_ref().unwrap().status == 503)
    );
}

pub async fn case_list_paging(store: Arc<dyn Store>) {
    let records = mixed_records();
    put(&*store, Stage::Final, &records).await;
    for base in [
        query(),
        TxQuery {
            channel_id: Some("b".into()),
            ..query()
        },
        TxQuery {
            statuses: vec![Status::Successful, Status::Completed],
            ..query()
        },
        TxQuery {
            path: Some(Regex::new("Patient").unwrap()),
            ..query()
        },
    ] {
        let all = list_ids(&*store, &base).await;
        assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first");
        let mut paged = Vec::new();
        for page in 0.. {
            let q = TxQuery {
                offset: page * 7,
                limit: 7,
                ..base.clone()
            };
            let ids = list_ids(&*store, &q).await;
            assert_eq!(ids, expected(&records, &q));
            if ids.is_empty() {
                break;
            }
            assert!(ids.len() <= 7);
            paged.extend(ids);
        }
        assert_eq!(paged, all, "pages add up to the whole listing");
    }
    let none = TxQuery {
        limit: 0,
        ..query()
    };
    assert!(list_ids(&*store, &none).await.is_empty());
    let past_the_end = TxQuery {
        offset: 60,
        ..query()
    };
    assert!(list_ids(&*store, &past_the_end).await.is_empty());
}

pub async fn case_list_snapshot(store: Arc<dyn Store>) {
    let records: Vec<Transaction> = (0..30)
        .map(|i| record(i, ["a", "b"][i as usize % 2], Status::Successful))
        .collect();
    put(&*store, Stage::Final, &records).await;
    let snapshot = records[24].id;
    let page = |n: usize| TxQuery {
        snapshot: Some(snapshot),
        offset: n * 5,
        limit: 5,
        ..query()
    };
    let first = list_ids(&*store, &page(0)).await;
    assert_eq!(first[0], snapshot, "the snapshot itself is included");
    assert!(first.iter().all(|id| *id <= snapshot));
    let second = list_ids(&*store, &page(1)).await;

    let newer: Vec<Transaction> = (30..40)
        .map(|i| record(i, "a", Status::Successful))
        .collect();
    put(&*store, Stage::Final, &newer).await;
    assert_eq!(list_ids(&*store, &page(0)).await, first);
    assert_eq!(
        list_ids(&*store, &page(1)).await,
        second,
        "later pages stay put"
    );
    let in_a = TxQuery {
        channel_id: Some("a".into()),
        statuses: vec![Status::Successful],
        snapshot: Some(snapshot),
        ..query()
    };
    let ids = list_ids(&*store, &in_a).await;
    assert_eq!(ids.len(), 13);
    assert!(ids.iter().all(|id| *id <= snapshot));

    // The snapshot and `to` combine: the lower bound wins.
    let both = TxQuery {
        snapshot: Some(snapshot),
        to: Some(Timestamp(BASE_MS + 9)),
        ..query()
    };
    assert_eq!(list_ids(&*store, &both).await.len(), 10);
}

pub async fn case_modify(store: Arc<dyn Store>) {
    let tx = record(1, "a", Status::Processing);
    put(&*store, Stage::Responded, std::slice::from_ref(&tx)).await;
    let child = id_at(2, 0);
    assert!(
        store
            .modify_transaction(
                tx.id,
                Box::new(move |tx| {
                    tx.child_ids.push(child);
                    tx.status = Status::Successful;
                }),
            )
            .await
            .unwrap()
    );
    let changed = store.transaction(tx.id).await.unwrap().unwrap();
    assert_eq!(changed.child_ids, vec![child]);
    assert_eq!(changed.status, Status::Successful);
    assert_eq!(
        Transaction {
            child_ids: Vec::new(),
            status: Status::Processing,
            ..changed.clone()
        },
        tx,
        "the rest is intact"
    );
    let processing = TxQuery {
        statuses: vec![Status::Processing],
        ..query()
    };
    assert!(
        list_ids(&*store, &processing).await.is_empty(),
        "re-indexed"
    );
    assert!(store.processing(Uuid::nil(), 10).await.unwrap().is_empty());
    let successful_in_a = TxQuery {
        channel_id: Some("a".into()),
        statuses: vec![Status::Successful],
        ..query()
    };
    assert_eq!(list_ids(&*store, &successful_in_a).await, vec![tx.id]);

    // The stage is kept: an earlier stage still loses, the same or a later one still wins.
    put(&*store, Stage::Begun, std::slice::from_ref(&tx)).await;
    assert_eq!(store.transaction(tx.id).await.unwrap(), Some(changed));
    let mut last = tx.clone();
    last.status = Status::Failed;
    put(&*store, Stage::Final, std::slice::from_ref(&last)).await;
    assert_eq!(store.transaction(tx.id).await.unwrap(), Some(last));
    assert!(list_ids(&*store, &successful_in_a).await.is_empty());

    // The channel moves with the record.
    store
        .modify_transaction(tx.id, Box::new(|tx| tx.channel_id = "z".into()))
        .await
        .unwrap();
    let in_a = TxQuery {
        channel_id: Some("a".into()),
        ..query()
    };
    let in_z = TxQuery {
        channel_id: Some("z".into()),
        statuses: vec![Status::Failed],
        ..query()
    };
    assert!(list_ids(&*store, &in_a).await.is_empty());
    assert_eq!(list_ids(&*store, &in_z).await, vec![tx.id]);

    assert!(
        !store
            .modify_transaction(id_at(99, 0), Box::new(|tx| tx.worker = 7))
            .await
            .unwrap()
    );
    assert_eq!(store.count_transactions().await.unwrap(), 1);
}

pub async fn case_processing(store: Arc<dyn Store>) {
    let records: Vec<Transaction> = (0..10)
        .map(|i| {
            let status = if i % 3 == 0 {
                Status::Successful
            } else {
                Status::Processing
            };
            record(i, ["a", "b"][i as usize % 2], status)
        })
        .collect();
    // Newest first, to show the order comes from the ids, not the arrival.
    let mut reversed = records.clone();
    reversed.reverse();
    put(&*store, Stage::Begun, &reversed).await;
    let want: Vec<Uuid> = records
        .iter()
        .filter(|tx| tx.status == Status::Processing)
        .map(|tx| tx.id)
        .collect();
    assert_eq!(
        store.processing(Uuid::nil(), 100).await.unwrap(),
        want,
        "oldest first"
    );
    assert_eq!(store.processing(Uuid::nil(), 2).await.unwrap(), want[..2]);
    assert!(store.processing(Uuid::nil(), 0).await.unwrap().is_empty());
    // Paging: after the last id of one page comes the next.
    assert_eq!(store.processing(want[1], 100).await.unwrap(), want[2..]);
    assert!(
        store
            .processing(want[want.len() - 1], 100)
            .await
            .unwrap()
            .is_empty()
    );
}

/// `tx` with every body gone, as culling leaves it.
fn without_bodies(tx: &Transaction) -> Transaction {
    let mut tx = tx.clone();
    let request = |r: &mut RequestRecord| {
        r.body = None;
        r.body_truncated = false;
    };
    let response = |r: Option<&mut ResponseRecord>| {
        if let Some(r) = r {
            r.body = None;
            r.body_truncated = false;
        }
    };
    request(&mut tx.request);
    response(tx.response.as_mut());
    for exchange in tx.routes.iter_mut().chain(tx.orchestrations.iter_mut()) {
        request(&mut exchange.request);
        response(exchange.response.as_mut());
    }
    tx
}

pub async fn case_cull_bodies(store: Arc<dyn Store>) {
    let exchange = |name: &str| Exchange {
        name: name.into(),
        request: RequestRecord {
            path: "/up".into(),
            method: "POST".into(),
            body: body("route request"),
            body_truncated: true,
            timestamp: Timestamp(BASE_MS),
            ..Default::default()
        },
        response: Some(ResponseRecord {
            status: 201,
            body: body("route response"),
            timestamp: Timestamp(BASE_MS + 1),
            ..Default::default()
        }),
        error: None,
    };
    let mut records: Vec<Transaction> = (0..20)
        .map(|i| record(i, ["a", "b"][i as usize % 2], Status::Successful))
        .collect();
    records[0].routes.push(exchange("audit"));
    records[0].orchestrations.push(exchange("primary"));
    records[0].request.body_truncated = true;
    // A record whose only body is a route's.
    records[2].request.body = None;
    records[2].response.as_mut().unwrap().body = None;
    records[2].routes.push(exchange("audit"));
    // A record without bodies: visited, not changed.
    records[4].request.body = None;
    records[4].response.as_mut().unwrap().body = None;
    put(&*store, Stage::Final, &records).await;

    // Channel a holds records 0, 2, …, 18; cull those below record 12, three at a time.
    let before = records[12].id;
    let first = store
        .cull_bodies("a", Uuid::nil(), before, 3)
        .await
        .unwrap();
    assert_eq!(first.visited, 3);
    assert_eq!(first.changed, 2, "record 4 had no bodies");
    assert_eq!(first.last, Some(records[4].id));
    let second = store
        .cull_bodies("a", first.last.unwrap(), before, 3)
        .await
        .unwrap();
    assert_eq!(second.visited, 3);
    assert_eq!(second.changed, 3);
    assert_eq!(second.last, Some(records[10].id));
    let third = store
        .cull_bodies("a", second.last.unwrap(), before, 3)
        .await
        .unwrap();
    assert_eq!(third, Default::default(), "nothing left below `before`");

    for (i, tx) in records.iter().enumerate() {
        let stored = store.transaction(tx.id).await.unwrap().unwrap();
        if i % 2 == 0 && i < 12 {
            assert_eq!(
                stored,
                without_bodies(tx),
                "record {i} lost its bodies only"
            );
        } else {
            assert_eq!(&stored, tx, "record {i} is untouched");
        }
    }
    assert_eq!(store.count_transactions().await.unwrap(), 20);
    let a = TxQuery {
        channel_id: Some("a".into()),
        statuses: vec![Status::Successful],
        ..query()
    };
    assert_eq!(list_ids(&*store, &a).await.len(), 10, "indexes intact");

    // Culling again finds records but nothing to remove; the bounds are exclusive.
    let again = store
        .cull_bodies("a", records[0].id, records[6].id, 100)
        .await
        .unwrap();
    assert_eq!(
        again,
        super::Culled {
            visited: 2,
            changed: 0,
            last: Some(records[4].id)
        }
    );
    assert_eq!(
        store
            .cull_bodies("nope", Uuid::nil(), Uuid::max(), 10)
            .await
            .unwrap(),
        Default::default()
    );
}

pub async fn case_delete_transactions(store: Arc<dyn Store>) {
    let records: Vec<Transaction> = (0..20)
        .map(|i| {
            let status = [Status::Successful, Status::Failed, Status::Processing][i as usize % 3];
            record(i, ["a", "b"][i as usize % 2], status)
        })
        .collect();
    put(&*store, Stage::Final, &records).await;
    let before = records[10].id;
    assert_eq!(store.delete_transactions(before, 4).await.unwrap(), 4);
    assert_eq!(store.count_transactions().await.unwrap(), 16);
    assert_eq!(
        store.transaction(records[3].id).await.unwrap(),
        None,
        "oldest first"
    );
    assert!(store.transaction(records[4].id).await.unwrap().is_some());
    assert_eq!(store.delete_transactions(before, 100).await.unwrap(), 6);
    assert_eq!(store.delete_transactions(before, 100).await.unwrap(), 0);
    assert_eq!(store.delete_transactions(Uuid::max(), 0).await.unwrap(), 0);
    assert_eq!(store.count_transactions().await.unwrap(), 10);

    // No index still points at a deleted record.
    let remaining: HashSet<Uuid> = records[10..].iter().map(|tx| tx.id).collect();
    for q in [
        query(),
        TxQuery {
            channel_id: Some("a".into()),
            ..query()
        },
        TxQuery {
            statuses: vec![Status::Failed],
            ..query()
        },
        TxQuery {
            channel_id: Some("b".into()),
            statuses: vec![Status::Successful, Status::Processing],
            ..query()
        },
    ] {
        let ids = list_ids(&*store, &q).await;
        assert!(ids.iter().all(|id| remaining.contains(id)));
        assert_eq!(ids, expected(&records[10..], &q));
    }
    let processing = store.processing(Uuid::nil(), 100).await.unwrap();
    assert!(processing.iter().all(|id| remaining.contains(id)));
    assert_eq!(processing.len(), 3);
    assert_eq!(
        store.newest_transaction().await.unwrap(),
        Some(records[19].id)
    );

    assert_eq!(
        store.delete_transactions(Uuid::max(), 100).await.unwrap(),
        10
    );
    assert_eq!(store.newest_transaction().await.unwrap(), None);
    assert!(list_ids(&*store, &query()).await.is_empty());
}

/// A batch larger than backends may like to write at once, records of many sizes (one of them
/// large), in no particular order: every record reads back as it was written.
pub async fn case_big_batches(store: Arc<dyn Store>) {
    let mut records: Vec<Transaction> = (0..300u64)
        .map(|i| {
            let status = [Status::Successful, Status::Failed, Status::Completed][i as usize % 3];
            let mut tx = record(i, ["a", "b", "c", "d"][i as usize % 4], status);
            tx.request.body = body(&"x".repeat(1000 + (i as usize * 37) % 5000));
            tx
        })
        .collect();
    records[150].request.body = body(&"y".repeat(300_000));
    records[151].request.body = None;
    let mut shuffled: Vec<Transaction> = records.clone();
    shuffled.sort_by_key(|tx| Timestamp::of_id(tx.id).0 * 7919 % 1009);
    put(&*store, Stage::Final, &shuffled).await;
    for tx in &records {
        assert_eq!(store.transaction(tx.id).await.unwrap().as_ref(), Some(tx));
    }
    assert_eq!(store.count_transactions().await.unwrap(), 300);
    for q in [
        query(),
        TxQuery {
            channel_id: Some("c".into()),
            ..query()
        },
        TxQuery {
            channel_id: Some("b".into()),
            statuses: vec![Status::Failed],
            ..query()
        },
        TxQuery {
            statuses: vec![Status::Completed],
            offset: 10,
            limit: 30,
            ..query()
        },
    ] {
        let page = store.list_transactions(&q).await.unwrap();
        let want = expected(&records, &q);
        assert_eq!(page.iter().map(|tx| tx.id).collect::<Vec<_>>(), want);
        for tx in page {
            assert!(records.contains(&tx));
        }
    }
    // The large record moves through a change and a cull like any other.
    store
        .modify_transaction(records[150].id, Box::new(|tx| tx.worker = 9))
        .await
        .unwrap();
    records[150].worker = 9;
    assert_eq!(
        store.transaction(records[150].id).await.unwrap().as_ref(),
        Some(&records[150])
    );
    let culled = store
        .cull_bodies("c", Uuid::nil(), Uuid::max(), 1000)
        .await
        .unwrap();
    assert_eq!((culled.visited, culled.changed), (75, 75));
    for tx in &records {
        let want = if tx.channel_id == "c" {
            without_bodies(tx)
        } else {
            tx.clone()
        };
        assert_eq!(store.transaction(tx.id).await.unwrap(), Some(want));
    }
}

/// Records replaced in later batches (a later stage), changed, culled and then deleted: each step
/// leaves every remaining record exactly as expected, and a store emptied this way works as new.
pub async fn case_rewrites_then_deletes(store: Arc<dyn Store>) {
    let finals: Vec<Transaction> = (0..60u64)
        .map(|i| {
            let status = if i % 5 == 0 {
                Status::Failed
            } else {
                Status::Successful
            };
            record(i, ["a", "b"][i as usize % 2], status)
        })
        .collect();
    let begun = |tx: &Transaction| {
        let mut tx = tx.clone();
        tx.status = Status::Processing;
        tx.response = None;
        tx
    };
    // Batch 1: records 0..40, the even ones only begun. Batch 2: the even ones' final stage and
    // records 40..60. Batch 3: the final stage of 0..10 again, changed (same stage replaces).
    let mut first: Vec<StoredTx> = Vec::new();
    for (i, tx) in finals[..40].iter().enumerate() {
        if i % 2 == 0 {
            first.push(StoredTx::new(&begun(tx), Stage::Begun));
        } else {
            first.push(StoredTx::new(tx, Stage::Final));
        }
    }
    store.put_transactions(first).await.unwrap();
    assert_eq!(store.processing(Uuid::nil(), 100).await.unwrap().len(), 20);
    let second: Vec<StoredTx> = finals
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0 || *i >= 40)
        .map(|(_, tx)| StoredTx::new(tx, Stage::Final))
        .collect();
    store.put_transactions(second).await.unwrap();
    assert!(store.processing(Uuid::nil(), 100).await.unwrap().is_empty());
    let mut want = finals.clone();
    for tx in &mut want[..10] {
        tx.duration_ms = Some(7.0);
    }
    put(&*store, Stage::Final, &want[..10]).await;
    // A change, then a cull of channel a's bodies below record 30.
    store
        .modify_transaction(want[3].id, Box::new(|tx| tx.worker = 3))
        .await
        .unwrap();
    want[3].worker = 3;
    let culled = store
        .cull_bodies("a", Uuid::nil(), want[30].id, 100)
        .await
        .unwrap();
    assert_eq!(culled.changed, 15);
    for tx in want.iter_mut().take(30).step_by(2) {
        *tx = without_bodies(tx);
    }
    let check = |want: Vec<Transaction>| {
        let store = Arc::clone(&store);
        async move {
            assert_eq!(store.count_transactions().await.unwrap(), want.len() as u64);
            for tx in &want {
                assert_eq!(store.transaction(tx.id).await.unwrap().as_ref(), Some(tx));
            }
            let failed_in_a = TxQuery {
                channel_id: Some("a".into()),
                statuses: vec![Status::Failed],
                ..query()
            };
            assert_eq!(
                list_ids(&*store, &failed_in_a).await,
                expected(&want, &failed_in_a)
            );
            assert_eq!(list_ids(&*store, &query()).await, expected(&want, &query()));
        }
    };
    check(want.clone()).await;

    // Deleting oldest first, in steps, then everything.
    assert_eq!(
        store.delete_transactions(want[25].id, 10).await.unwrap(),
        10
    );
    check(want[10..].to_vec()).await;
    assert_eq!(
        store.delete_transactions(want[25].id, 100).await.unwrap(),
        15
    );
    check(want[25..].to_vec()).await;
    assert_eq!(
        store.delete_transactions(Uuid::max(), 100).await.unwrap(),
        35
    );
    check(Vec::new()).await;
    assert_eq!(store.newest_transaction().await.unwrap(), None);

    // The emptied store takes records as a new one does.
    put(&*store, Stage::Final, &finals[..5]).await;
    check(finals[..5].to_vec()).await;
}

/// Many small batches whose ids overlap, records moving between statuses and channels (and back),
/// deletions: every listing still matches what brute force finds.
pub async fn case_listings_after_churn(store: Arc<dyn Store>) {
    let mut seed = 7u64;
    let mut random = move |n: u64| {
        seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    };
    let statuses = [
        Status::Processing,
        Status::Successful,
        Status::Failed,
        Status::Completed,
        Status::CompletedWithErrors,
    ];
    // What the store must hold: id → (stage, record).
    let mut model: std::collections::BTreeMap<Uuid, (Stage, Transaction)> = Default::default();
    for _ in 0..40 {
        let mut batch = Vec::new();
        for _ in 0..(5 + random(10)) {
            // Ids from a window that moves forward, so batches overlap.
            let ms = random(3000);
            let channel = ["a", "b", "c"][random(3) as usize];
            let status = statuses[random(statuses.len() as u64) as usize];
            let stage = if status == Status::Processing {
                Stage::Begun
            } else {
                [Stage::Responded, Stage::Final][random(2) as usize]
            };
            let mut tx = record(ms, channel, status);
            tx.worker = random(100) as u16;
            match model.get(&tx.id) {
                Some((held, _)) if *held > stage => {}
                _ => {
                    model.insert(tx.id, (stage, tx.clone()));
                }
            }
            batch.push(StoredTx::new(&tx, stage));
        }
        store.put_transactions(batch).await.unwrap();
        // Now and then a record flips status and channel through `modify_transaction`.
        if random(3) == 0 {
            let ids: Vec<Uuid> = model.keys().copied().collect();
            let id = ids[random(ids.len() as u64) as usize];
            let status = [Status::Failed, Status::Successful][random(2) as usize];
            let channel = ["a", "b"][random(2) as usize];
            store
                .modify_transaction(
                    id,
                    Box::new(move |tx| {
                        tx.status = status;
                        tx.channel_id = channel.into();
                    }),
                )
                .await
                .unwrap();
            if let Some((_, tx)) = model.get_mut(&id) {
                tx.status = status;
                tx.channel_id = channel.into();
            }
        }
    }
    let check = |model: Vec<Transaction>| {
        let store = Arc::clone(&store);
        async move {
            let mut queries = vec![query()];
            for channel in [None, Some("a"), Some("b"), Some("c"), Some("zz")] {
                for statuses in [
                    vec![],
                    vec![Status::Processing],
                    vec![Status::Failed],
                    vec![Status::Successful, Status::Completed],
                    vec![
                        Status::Processing,
                        Status::Failed,
                        Status::CompletedWithErrors,
                    ],
                ] {
                    for (offset, limit) in [(0, 1000), (0, 3), (4, 5)] {
                        queries.push(TxQuery {
                            channel_id: channel.map(Into::into),
                            statuses: statuses.clone(),
                            offset,
                            limit,
                            ..query()
                        });
                    }
                    queries.push(TxQuery {
                        channel_id: channel.map(Into::into),
                        statuses: statuses.clone(),
                        from: Some(Timestamp(BASE_MS + 1000)),
                        to: Some(Timestamp(BASE_MS + 2000)),
                        ..query()
                    });
                    queries.push(TxQuery {
                        channel_id: channel.map(Into::into),
                        statuses,
                        snapshot: Some(id_at(1500, 0)),
                        limit: 7,
                        ..query()
                    });
                }
            }
            for q in queries {
                let got = store.list_transactions(&q).await.unwrap();
                let ids: Vec<Uuid> = got.iter().map(|tx| tx.id).collect();
                assert_eq!(ids, expected(&model, &q), "{q:?}");
                for tx in &got {
                    assert!(model.contains(tx), "{tx:?}");
                }
            }
            let mut processing: Vec<Uuid> = model
                .iter()
                .filter(|tx| tx.status == Status::Processing)
                .map(|tx| tx.id)
                .collect();
            processing.sort();
            assert_eq!(
                store.processing(Uuid::nil(), 10_000).await.unwrap(),
                processing
            );
            assert_eq!(
                store.count_transactions().await.unwrap(),
                model.len() as u64
            );
        }
    };
    let records: Vec<Transaction> = model.values().map(|(_, tx)| tx.clone()).collect();
    check(records.clone()).await;

    // Deleting the oldest third.
    let cut = records.len() / 3;
    let before = records[cut].id;
    assert_eq!(
        store.delete_transactions(before, 10_000).await.unwrap(),
        cut as u64
    );
    check(records[cut..].to_vec()).await;
}

pub async fn case_state(store: Arc<dyn Store>) {
    assert_eq!(store.state("retention").await.unwrap(), None);
    store
        .set_state("retention", json!({"culled": "x"}))
        .await
        .unwrap();
    assert_eq!(
        store.state("retention").await.unwrap(),
        Some(json!({"culled": "x"}))
    );
    store.set_state("retention", json!(2)).await.unwrap();
    store.set_state("other", json!(null)).await.unwrap();
    assert_eq!(store.state("retention").await.unwrap(), Some(json!(2)));
    assert_eq!(store.state("other").await.unwrap(), Some(json!(null)));
}

pub async fn case_empty_store(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
    assert!(!store.kind().is_empty());
    assert_eq!(store.count_transactions().await.unwrap(), 0);
    assert_eq!(store.newest_transaction().await.unwrap(), None);
    assert!(store.processing(Uuid::nil(), 10).await.unwrap().is_empty());
    assert!(list_ids(&*store, &query()).await.is_empty());
    assert_eq!(store.delete_transactions(Uuid::max(), 10).await.unwrap(), 0);
    assert!(
        !store
            .modify_transaction(id_at(1, 0), Box::new(|_| {}))
            .await
            .unwrap()
    );
}

// ----- blobs -----

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub async fn case_blobs(store: Arc<dyn Store>) {
    let generation = store.generation().await.unwrap();
    let changes = store.subscribe();
    // Every byte value, and big enough to span pages.
    let big = Bytes::from((0..=255u8).cycle().take(300_000).collect::<Vec<u8>>());
    let small = Bytes::from_static(b"\0asm\x01\0\0\0");
    let empty = Bytes::new();
    let (big_digest, small_digest, empty_digest) =
        (sha256_hex(&big), sha256_hex(&small), sha256_hex(&empty));

    assert_eq!(store.blob(&big_digest).await.unwrap(), None);
    assert!(!store.delete_blob(&big_digest).await.unwrap());

    store.put_blob(&big_digest, big.clone()).await.unwrap();
    store.put_blob(&small_digest, small.clone()).await.unwrap();
    store.put_blob(&empty_digest, empty.clone()).await.unwrap();
    assert_eq!(store.blob(&big_digest).await.unwrap(), Some(big.clone()));
    assert_eq!(
        store.blob(&small_digest).await.unwrap(),
        Some(small.clone())
    );
    assert_eq!(store.blob(&empty_digest).await.unwrap(), Some(empty));

    // The same blob again changes nothing.
    store.put_blob(&big_digest, big.clone()).await.unwrap();
    assert_eq!(store.blob(&big_digest).await.unwrap(), Some(big));

    assert_eq!(
        store.generation().await.unwrap(),
        generation,
        "blobs are not configuration"
    );
    assert!(!changes.has_changed().unwrap());

    assert!(store.delete_blob(&big_digest).await.unwrap());
    assert_eq!(store.blob(&big_digest).await.unwrap(), None);
    assert!(!store.delete_blob(&big_digest).await.unwrap());
    assert_eq!(store.blob(&small_digest).await.unwrap(), Some(small));
    assert_eq!(store.generation().await.unwrap(), generation);
}

// ----- plugin key-value -----

/// A TTL that runs out within a test, yet outlasts the few calls made right after setting it.
const SHORT_TTL: Duration = Duration::from_millis(100);
/// Longer than [`SHORT_TTL`], with room for a slow wake-up.
const PAST_SHORT_TTL: Duration = Duration::from_millis(160);
const LONG_TTL: Duration = Duration::from_secs(600);

fn b(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

pub async fn case_kv_basics(store: Arc<dyn Store>) {
    let generation = store.generation().await.unwrap();
    let ns = "channel-1";
    assert_eq!(store.kv_get(ns, "k").await.unwrap(), None);
    assert!(!store.kv_delete(ns, "k").await.unwrap());

    store.kv_set(ns, "k", b("one"), None).await.unwrap();
    assert_eq!(store.kv_get(ns, "k").await.unwrap(), Some(b("one")));
    store.kv_set(ns, "k", b("two"), None).await.unwrap();
    assert_eq!(store.kv_get(ns, "k").await.unwrap(), Some(b("two")));
    assert!(store.kv_delete(ns, "k").await.unwrap());
    assert_eq!(store.kv_get(ns, "k").await.unwrap(), None);
    assert!(!store.kv_delete(ns, "k").await.unwrap());

    // Values are bytes, any of them; an empty value is a value.
    let every_byte = Bytes::from((0..=255u8).rev().collect::<Vec<u8>>());
    let values = [
        ("nul", Bytes::from_static(b"\0")),
        ("ff", Bytes::from_static(b"\xff\xfe\0\x00a")),
        ("every byte", every_byte),
        ("empty", Bytes::new()),
        ("big", Bytes::from(vec![0xa5; 64 * 1024])),
    ];
    for (key, value) in &values {
        store.kv_set(ns, key, value.clone(), None).await.unwrap();
    }
    for (key, value) in &values {
        assert_eq!(
            store.kv_get(ns, key).await.unwrap().as_ref(),
            Some(value),
            "{key}"
        );
    }
    // Keys are any string.
    for key in ["", "with\0nul", "ключ", "a:b:c"] {
        store.kv_set(ns, key, b(key), None).await.unwrap();
    }
    for key in ["", "with\0nul", "ключ", "a:b:c"] {
        assert_eq!(
            store.kv_get(ns, key).await.unwrap(),
            Some(b(key)),
            "{key:?}"
        );
    }
    assert!(store.kv_delete(ns, "").await.unwrap());
    assert_eq!(
        store.kv_get(ns, "with\0nul").await.unwrap(),
        Some(b("with\0nul"))
    );

    assert_eq!(
        store.generation().await.unwrap(),
        generation,
        "key-value entries are not configuration"
    );
}

pub async fn case_kv_namespaces(store: Arc<dyn Store>) {
    // Pairs that a plain `namespace:key` would run together.
    let pairs = [
        ("a", "b:c"),
        ("a:b", "c"),
        ("a", "bc"),
        ("ab", "c"),
        ("", "abc"),
        ("abc", ""),
        ("a\0", "b"),
        ("a", "\0b"),
    ];
    for (i, (ns, key)) in pairs.iter().enumerate() {
        store
            .kv_set(ns, key, Bytes::from(vec![i as u8]), None)
            .await
            .unwrap();
    }
    for (i, (ns, key)) in pairs.iter().enumerate() {
        assert_eq!(
            store.kv_get(ns, key).await.unwrap(),
            Some(Bytes::from(vec![i as u8])),
            "{ns:?} {key:?}"
        );
    }
    // Each operation stays in its namespace.
    assert!(store.kv_delete("a", "b:c").await.unwrap());
    assert_eq!(store.kv_get("a", "b:c").await.unwrap(), None);
    assert_eq!(
        store.kv_get("a:b", "c").await.unwrap(),
        Some(Bytes::from(vec![1]))
    );
    assert_eq!(store.kv_increment("x", "n", 5, None).await.unwrap(), 5);
    assert_eq!(store.kv_increment("y", "n", 1, None).await.unwrap(), 1);
    assert_eq!(store.kv_get("x", "n").await.unwrap(), Some(b("5")));
    assert!(
        store
            .kv_compare_and_set("x", "m", None, b("x"), None)
            .await
            .unwrap()
    );
    assert!(
        store
            .kv_compare_and_set("y", "m", None, b("y"), None)
            .await
            .unwrap(),
        "another namespace's key is not there"
    );
    assert_eq!(store.kv_get("x", "m").await.unwrap(), Some(b("x")));
    assert_eq!(store.kv_get("y", "m").await.unwrap(), Some(b("y")));
}

pub async fn case_kv_expiry(store: Arc<dyn Store>) {
    let ns = "ttl";
    store
        .kv_set(ns, "short", b("1"), Some(SHORT_TTL))
        .await
        .unwrap();
    store
        .kv_set(ns, "long", b("2"), Some(LONG_TTL))
        .await
        .unwrap();
    // `None` removes an expiry; a TTL adds one.
    store
        .kv_set(ns, "cleared", b("3"), Some(SHORT_TTL))
        .await
        .unwrap();
    store.kv_set(ns, "cleared", b("4"), None).await.unwrap();
    store.kv_set(ns, "gains", b("5"), None).await.unwrap();
    store
        .kv_set(ns, "gains", b("6"), Some(SHORT_TTL))
        .await
        .unwrap();
    // An existing counter keeps its expiry, or its lack of one.
    assert_eq!(
        store
            .kv_increment(ns, "counter", 1, Some(SHORT_TTL))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .kv_increment(ns, "counter", 1, Some(LONG_TTL))
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.kv_increment(ns, "kept", 5, None).await.unwrap(), 5);
    assert_eq!(
        store
            .kv_increment(ns, "kept", 1, Some(SHORT_TTL))
            .await
            .unwrap(),
        6
    );
    // A compare-and-set sets the TTL given, like a set.
    store.kv_set(ns, "swapped", b("a"), None).await.unwrap();
    assert!(
        store
            .kv_compare_and_set(ns, "swapped", Some(b("a")), b("b"), Some(SHORT_TTL))
            .await
            .unwrap()
    );
    store
        .kv_set(ns, "old", b("old"), Some(SHORT_TTL))
        .await
        .unwrap();
    store
        .kv_set(ns, "doomed", b("x"), Some(SHORT_TTL))
        .await
        .unwrap();
    assert_eq!(store.kv_get(ns, "short").await.unwrap(), Some(b("1")));
    assert_eq!(store.kv_get(ns, "swapped").await.unwrap(), Some(b("b")));

    tokio::time::sleep(PAST_SHORT_TTL).await;

    assert_eq!(store.kv_get(ns, "short").await.unwrap(), None);
    assert_eq!(store.kv_get(ns, "long").await.unwrap(), Some(b("2")));
    assert_eq!(store.kv_get(ns, "cleared").await.unwrap(), Some(b("4")));
    assert_eq!(store.kv_get(ns, "gains").await.unwrap(), None);
    assert_eq!(store.kv_get(ns, "counter").await.unwrap(), None);
    assert_eq!(store.kv_get(ns, "kept").await.unwrap(), Some(b("6")));
    assert_eq!(store.kv_get(ns, "swapped").await.unwrap(), None);
    // Expired is absent to every operation.
    assert!(!store.kv_delete(ns, "doomed").await.unwrap());
    assert_eq!(store.kv_get(ns, "doomed").await.unwrap(), None);
    assert_eq!(
        store
            .kv_increment(ns, "counter", 1, Some(LONG_TTL))
            .await
            .unwrap(),
        1,
        "an expired counter starts again from 0"
    );
    assert!(
        !store
            .kv_compare_and_set(ns, "old", Some(b("old")), b("new"), None)
            .await
            .unwrap(),
        "an expired value does not match"
    );
    assert!(
        store
            .kv_compare_and_set(ns, "old", None, b("new"), None)
            .await
            .unwrap(),
        "an expired key counts as absent"
    );
    assert_eq!(store.kv_get(ns, "old").await.unwrap(), Some(b("new")));
    store.kv_set(ns, "short", b("again"), None).await.unwrap();
    assert_eq!(store.kv_get(ns, "short").await.unwrap(), Some(b("again")));

    // Whatever was rewritten keeps its new expiry (none, or a long one).
    tokio::time::sleep(PAST_SHORT_TTL).await;
    assert_eq!(store.kv_get(ns, "short").await.unwrap(), Some(b("again")));
    assert_eq!(store.kv_get(ns, "old").await.unwrap(), Some(b("new")));
    assert_eq!(store.kv_get(ns, "counter").await.unwrap(), Some(b("1")));
}

pub async fn case_kv_increment(store: Arc<dyn Store>) {
    let ns = "n";
    assert_eq!(store.kv_increment(ns, "c", 5, None).await.unwrap(), 5);
    assert_eq!(store.kv_get(ns, "c").await.unwrap(), Some(b("5")));
    assert_eq!(store.kv_increment(ns, "c", 3, None).await.unwrap(), 8);
    assert_eq!(store.kv_increment(ns, "c", -10, None).await.unwrap(), -2);
    assert_eq!(store.kv_increment(ns, "c", 0, None).await.unwrap(), -2);
    assert_eq!(store.kv_get(ns, "c").await.unwrap(), Some(b("-2")));
    assert_eq!(
        store.kv_increment(ns, "negative", -3, None).await.unwrap(),
        -3
    );

    // Values set by hand count when they are canonical decimal integers.
    for (text, delta, sum) in [
        ("0", 1, 1),
        ("-7", 1, -6),
        ("41", 1, 42),
        ("9223372036854775806", 1, i64::MAX),
        ("-9223372036854775807", -1, i64::MIN),
    ] {
        store.kv_set(ns, "set", b(text), None).await.unwrap();
        assert_eq!(
            store.kv_increment(ns, "set", delta, None).await.unwrap(),
            sum,
            "{text}"
        );
        assert_eq!(
            store.kv_get(ns, "set").await.unwrap(),
            Some(b(&sum.to_string()))
        );
    }

    // Anything else is not an integer, and stays as it was.
    let not_integers: [&[u8]; 14] = [
        b"abc",
        b"",
        b"1.5",
        b" 1",
        b"1 ",
        b"+1",
        b"01",
        b"-0",
        b"-",
        b"0x10",
        b"1e3",
        b"\xff",
        b"1\0",
        b"9223372036854775808",
    ];
    for value in not_integers {
        let value = Bytes::copy_from_slice(value);
        store.kv_set(ns, "bad", value.clone(), None).await.unwrap();
        let error = store.kv_increment(ns, "bad", 1, None).await.unwrap_err();
        assert!(
            matches!(error, StoreError::NotAnInteger),
            "{value:?}: {error}"
        );
        assert_eq!(store.kv_get(ns, "bad").await.unwrap(), Some(value));
    }

    // Overflow either way is refused the same way, and changes nothing.
    for (start, delta) in [(i64::MAX, 1), (i64::MIN, -1), (1, i64::MAX), (-2, i64::MIN)] {
        store
            .kv_set(ns, "edge", b(&start.to_string()), None)
            .await
            .unwrap();
        let error = store
            .kv_increment(ns, "edge", delta, None)
            .await
            .unwrap_err();
        assert!(
            matches!(error, StoreError::NotAnInteger),
            "{start} + {delta}: {error}"
        );
        assert_eq!(
            store.kv_get(ns, "edge").await.unwrap(),
            Some(b(&start.to_string()))
        );
    }
    assert_eq!(
        store
            .kv_increment(ns, "fresh", i64::MIN, None)
            .await
            .unwrap(),
        i64::MIN
    );
}

pub async fn case_kv_compare_and_set(store: Arc<dyn Store>) {
    let ns = "cas";
    let cas = |expected: Option<&str>, value: &str| {
        let store = Arc::clone(&store);
        let (expected, value) = (expected.map(b), b(value));
        async move {
            store
                .kv_compare_and_set(ns, "k", expected, value, None)
                .await
                .unwrap()
        }
    };
    assert!(cas(None, "a").await, "absent: set");
    assert!(!cas(None, "b").await, "present: not absent");
    assert_eq!(store.kv_get(ns, "k").await.unwrap(), Some(b("a")));
    assert!(cas(Some("a"), "b").await, "match: set");
    assert_eq!(store.kv_get(ns, "k").await.unwrap(), Some(b("b")));
    assert!(!cas(Some("a"), "c").await, "mismatch");
    assert!(!cas(Some("b\0"), "c").await, "mismatch by a byte");
    assert_eq!(store.kv_get(ns, "k").await.unwrap(), Some(b("b")));

    // An empty value is present, not absent.
    assert!(cas(Some("b"), "").await);
    assert!(!cas(None, "x").await);
    assert!(cas(Some(""), "x").await);

    // A deleted key is absent again.
    assert!(store.kv_delete(ns, "k").await.unwrap());
    assert!(!cas(Some("x"), "y").await);
    assert_eq!(store.kv_get(ns, "k").await.unwrap(), None);
    assert!(cas(None, "z").await);
    assert_eq!(store.kv_get(ns, "k").await.unwrap(), Some(b("z")));

    // Arbitrary bytes compare as bytes.
    let odd = Bytes::from_static(b"\0\xff\x80");
    store.kv_set(ns, "bytes", odd.clone(), None).await.unwrap();
    assert!(
        store
            .kv_compare_and_set(ns, "bytes", Some(odd), Bytes::from_static(b"\xff"), None)
            .await
            .unwrap()
    );
    assert_eq!(
        store.kv_get(ns, "bytes").await.unwrap(),
        Some(Bytes::from_static(b"\xff"))
    );
}

// ----- instances -----

fn beat(instance: &str, run_id: &str, generation: u64) -> InstanceBeat {
    InstanceBeat {
        instance: instance.into(),
        run_id: run_id.into(),
        started: BASE_MS,
        heartbeat: BASE_MS + generation,
        generation,
        workers: 2,
        version: "0.1.0".into(),
        proxy: "127.0.0.1:5001".into(),
        api: "127.0.0.1:8080".into(),
    }
}

pub async fn case_instances(store: Arc<dyn Store>) {
    assert!(store.instances().await.unwrap().is_empty());
    let long = Duration::from_secs(60);
    store.heartbeat(&beat("b", "run-b", 1), long).await.unwrap();
    store.heartbeat(&beat("a", "run-a", 1), long).await.unwrap();
    // A later heartbeat of the same instance replaces the earlier.
    store.heartbeat(&beat("a", "run-a", 7), long).await.unwrap();
    assert_eq!(
        store.instances().await.unwrap(),
        vec![beat("a", "run-a", 7), beat("b", "run-b", 1)]
    );
    // Leaving needs the run that is there: an old run's shutdown does not remove its successor.
    store.leave("a", "an-older-run").await.unwrap();
    assert_eq!(store.instances().await.unwrap().len(), 2);
    store.leave("a", "run-a").await.unwrap();
    assert_eq!(
        store.instances().await.unwrap(),
        vec![beat("b", "run-b", 1)]
    );
    // A heartbeat not renewed within its TTL is gone.
    store
        .heartbeat(&beat("c", "run-c", 2), Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(store.instances().await.unwrap().len(), 2);
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(
        store.instances().await.unwrap(),
        vec![beat("b", "run-b", 1)]
    );
}
