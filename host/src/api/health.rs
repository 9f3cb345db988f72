//! The endpoints that say how Mediary is: OpenHIM's public `/heartbeat`, the liveness and readiness
//! probes for orchestrators, and the Prometheus counters.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use serde_json::json;

use super::error::ApiError;
use super::{Api, Reply, json_reply};
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

/// `GET /health/ready` (public): every worker serves and the store answers.
pub async fn ready(api: &Api) -> Result<Reply, ApiError> {
    if !api.shared.ready.load(Ordering::Acquire) {
        return Err(ApiError::NotReady(
            "the workers are starting or shutting down".into(),
        ));
    }
    let store = &api.shared.store;
    store
        .ping()
        .await
        .map_err(|error| ApiError::NotReady(format!("the store does not answer ({error})")))?;
    Ok(json_reply(
        StatusCode::OK,
        &json!({"status": "ready", "store": store.kind()}),
    ))
}

/// `GET /metrics`: Prometheus text.
pub fn metrics(api: &Api) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(api.shared.metrics.render())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
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
        let metrics = super::metrics(&f.api);
        assert_eq!(
            metrics.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4"
        );
    }
}
