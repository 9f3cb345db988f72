//! The contract suite against a real Redis (`MEDIARY_TEST_REDIS`, default
//! `redis://127.0.0.1:6379/0`), each test under a prefix of its own that is deleted afterwards.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::*;
use crate::store::Store;
use crate::store::contract;

fn redis_url() -> String {
    std::env::var("MEDIARY_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn settings(url: &str, prefix: &str) -> RedisSettings {
    RedisSettings {
        target: RedisTarget::parse(url).unwrap(),
        prefix: prefix.into(),
        timeout: Duration::from_secs(2),
        poll_interval: Duration::from_millis(200),
    }
}

fn unique_prefix() -> String {
    format!("mediary-test:{}:", Uuid::new_v4().simple())
}

/// Deletes every key of its prefix when dropped.
struct Cleanup {
    url: String,
    prefix: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut con) = client.get_connection() else {
            return;
        };
        let pattern = format!("{}*", self.prefix);
        let mut cursor = 0u64;
        loop {
            let Ok((next, keys)) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query::<(u64, Vec<Vec<u8>>)>(&mut con)
            else {
                return;
            };
            if !keys.is_empty() {
                let _ = redis::cmd("UNLINK").arg(keys).query::<i64>(&mut con);
            }
            if next == 0 {
                return;
            }
            cursor = next;
        }
    }
}

async fn fresh_redis() -> (Arc<dyn Store>, Cleanup) {
    let (url, prefix) = (redis_url(), unique_prefix());
    let cleanup = Cleanup {
        url: url.clone(),
        prefix: prefix.clone(),
    };
    let store = connect(settings(&url, &prefix)).await.unwrap();
    (store, cleanup)
}

contract::store_contract_tests!(fresh_redis());
