//! The endpoints that say how Mediary is: OpenHIM's public `/heartbeat`, the liveness and readiness
//! probes for orchestrators, and the Prometheus counters.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::json;

use super::error::ApiError;
use super::{Api, Reply, json_reply};
use crate::metrics::ClusterFigures;
use crate::store::Store;
use crate::transaction::Timestamp;

/// `GET /heartbeat` (public): OpenHIM's shape. No mediators register with Mediary yet, so
/// `mediators` is empty.
pub fn heartbeat(api: &Api) -> Reply {
    json_reply(
        StatusCode::OK,
        &json!({
            "master": api.shared.started.elapsed().as_secs_f64(),
            "mediators": {},
            "now": Timestamp::now().0,
        }),
    )
}

/// `GET /health/live` (public): the process answers.
pub fn live() -> Reply {
    json_reply(StatusCode::OK, &json!({"status": "live"}))
}

/// `GET /health/ready` (public): 503 until every worker serves and while shutting down; otherwise
/// 200, with `status` `ready` when the store answers and `degraded` when it does not. A degraded
/// instance still serves every channel with the configuration it last loaded, and spools the
/// transaction records until the store is back, so a load balancer should keep sending it traffic:
/// taking every instance out when the shared store fails would stop the whole exchange.
pub async fn ready(api: &Api) -> Result<Reply, ApiError> {
    if !api.shared.ready.load(Ordering::Acquire) {
        return Err(ApiError::NotReady(
            "the workers are starting or shutting down".into(),
        ));
    }
    let store = &api.shared.store;
    let body = match store.ping().await {
        Ok(()) => json!({"status": "ready", "store": store.kind()}),
        Err(error) => json!({
            "status": "degraded",
            "store": store.kind(),
            "reason": format!("the store does not answer ({error}); serving with the last loaded configuration, spooling transaction records"),
        }),
    };
    Ok(json_reply(StatusCode::OK, &body))
}

/// `GET /metrics`: Prometheus text: this instance's counters, then the cluster-wide figures read
/// from the store (left out, with `mediary_store_up 0`, when it does not answer).
pub async fn metrics(api: &Api) -> Reply {
    let shared = &api.shared;
    let mut text = shared.metrics.render();
    let cluster = cluster_figures(&*shared.store).await;
    let applied = shared.applied_generation.load(Ordering::Acquire);
    crate::metrics::render_store(&mut text, applied, cluster);
    api.sessions.render_metrics(&mut text);
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

async fn cluster_figures(store: &dyn Store) -> Option<ClusterFigures> {
    let generation = store.generation().await.ok()?;
    let instances = store.instances().await.ok()?;
    let transactions = store.count_transactions().await.ok()?;
    Some(ClusterFigures {
        generation,
        instances: instances.len() as u64,
        current: instances
            .iter()
            .filter(|beat| beat.generation >= generation)
            .count() as u64,
        transactions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing;

    #[tokio::test]
    async fn ready_only_once_the_workers_serve() {
        let f = testing::api("");
        let (status, error) = testing::read(ready(&f.api).await.unwrap_err().into_response()).await;
        assert_eq!(status, 503);
        assert!(
            error["error"].as_str().unwrap().contains("not ready"),
            "{error}"
        );
        f.api.shared.ready.store(true, Ordering::Release);
        let (status, body) = testing::read(ready(&f.api).await.unwrap()).await;
        assert_eq!(
            (status, body),
            (200, json!({"status": "ready", "store": "embedded"}))
        );
    }

    #[tokio::test]
    async fn heartbeat_has_openhims_shape() {
        let f = testing::api("");
        let (status, beat) = testing::read(heartbeat(&f.api)).await;
        assert_eq!(status, 200);
        assert!(beat["master"].as_f64().is_some());
        assert_eq!(beat["mediators"], json!({}));
        assert!(beat["now"].as_u64().unwrap() > 1_700_000_000_000);
        let metrics = super::metrics(&f.api).await;
        assert_eq!(
            metrics.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4"
        );
    }
}
