//! `GET /cluster`: the instances sharing this store, and whether each has applied the current
//! configuration.

use std::sync::atomic::Ordering;

use http::StatusCode;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{Api, Reply, json_reply};

/// `GET /cluster`: `{store, generation, converged, instances: [{…heartbeat, current, self}]}`.
/// `current` says the instance's channel table is built from the store's current generation;
/// `converged` that every live instance's is (and that this one's heartbeat is there).
pub async fn list(api: &Api) -> Result<Reply, ApiError> {
    let store = &api.shared.store;
    let generation = store.generation().await?;
    let beats = store.instances().await?;
    let mut converged = true;
    let mut listed_self = false;
    let mut instances: Vec<Value> = Vec::with_capacity(beats.len());
    for beat in beats {
        let is_self = beat.run_id == api.shared.run_id;
        // This instance's own figure is fresher than its last heartbeat.
        let applied = if is_self {
            api.shared.applied_generation.load(Ordering::Acquire)
        } else {
            beat.generation
        };
        listed_self |= is_self;
        let current = applied >= generation;
        converged &= current;
        let mut entry =
            serde_json::to_value(&beat).map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Value::Object(map) = &mut entry {
            map.insert("generation".into(), applied.into());
            map.insert("current".into(), current.into());
            map.insert("self".into(), is_self.into());
        }
        instances.push(entry);
    }
    if !listed_self {
        converged = false;
    }
    Ok(json_reply(
        StatusCode::OK,
        &json!({
            "store": store.kind(),
            "generation": generation,
            "converged": converged,
            "instances": instances,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::api::testing;
    use crate::cluster::Identity;
    use crate::store::Collection;

    #[tokio::test]
    async fn lists_instances_and_who_has_applied_the_current_generation() {
        let f = testing::api("[server]\ninstance = \"m1\"");
        let shared = &f.api.shared;
        let addr = "127.0.0.1:1".parse().unwrap();
        let me = Identity::new(shared, 2, addr, addr);
        let ttl = Duration::from_secs(60);
        shared.store.heartbeat(&me.beat(0), ttl).await.unwrap();
        let (status, body) = testing::read(list(&f.api).await.unwrap()).await;
        assert_eq!(status, 200);
        assert_eq!(body["store"], "embedded");
        assert_eq!(body["converged"], true);
        assert_eq!(body["instances"][0]["instance"], "m1");
        assert_eq!(body["instances"][0]["self"], true);
        assert_eq!(body["instances"][0]["workers"], 2);

        // A change this instance has not applied yet, and a second instance still behind.
        shared
            .store
            .put(Collection::Channels, "c", json!({"name": "c"}))
            .await
            .unwrap();
        let mut other = me.beat(0);
        other.instance = "m2".into();
        other.run_id = "another".into();
        shared.store.heartbeat(&other, ttl).await.unwrap();
        let (_, body) = testing::read(list(&f.api).await.unwrap()).await;
        assert_eq!(body["generation"], 1);
        assert_eq!(body["converged"], false);
        assert_eq!(body["instances"][1]["current"], false);
        assert_eq!(body["instances"][1]["self"], false);

        crate::reload::load_generation(shared).await.unwrap();
        other.generation = 1;
        shared.store.heartbeat(&other, ttl).await.unwrap();
        let (_, body) = testing::read(list(&f.api).await.unwrap()).await;
        assert_eq!(body["converged"], true, "{body}");
        assert_eq!(body["instances"][0]["generation"], 1);
    }
}
