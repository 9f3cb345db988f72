//! Re-running a recorded transaction through its channel as a child transaction.

use std::net::IpAddr;
use std::time::Instant;

use http::{HeaderName, HeaderValue};
use http_body_util::BodyExt as _;
use uuid::Uuid;

use crate::store::StoreError;
use crate::transaction::{REDACTED, Status, Transaction};

use super::{Admitted, Proxy, headers};

/// Why a transaction could not be rerun.
#[derive(Debug, thiserror::Error)]
pub enum RerunError {
    /// The record says it cannot be rerun (`canRerun` false: its request body was not stored whole),
    /// or it is still in flight. The API answers 409.
    #[error("transaction {id} cannot be rerun: {reason}")]
    NotRerunnable { id: Uuid, reason: String },
    /// Its channel no longer exists or is disabled. The API answers 409.
    #[error("transaction {id} cannot be rerun: {reason}")]
    ChannelUnavailable { id: Uuid, reason: String },
    /// Reading or linking the records failed. The API answers 503.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Proxy {
    /// Sends `parent`'s stored request through its channel again (no matching, no admission) and
    /// records the result as a child transaction linked both ways (`parentID` on the child, the
    /// child's id in the parent's `childIDs`). Returns the child's record once its response is
    /// complete. An upstream failure is not an error here: it is recorded in the child, as for any
    /// transaction.
    pub async fn rerun(&self, parent: &Transaction) -> Result<Transaction, RerunError> {
        let refuse = |reason: &str| RerunError::NotRerunnable {
            id: parent.id,
            reason: reason.to_owned(),
        };
        if self.spool.is_none() {
            return Err(refuse("recording is off, so a rerun could not be recorded"));
        }
        if parent.status == Status::Processing {
            return Err(refuse("it is still in flight"));
        }
        if !parent.can_rerun {
            return Err(refuse(
                "its request body was not stored whole (canRerun is false)",
            ));
        }
        let channel = self
            .shared
            .channels
            .load()
            .by_id(&parent.channel_id)
            .filter(|c| c.enabled)
            .cloned()
            .ok_or_else(|| RerunError::ChannelUnavailable {
                id: parent.id,
                reason: format!(
                    "its channel `{}` no longer exists or is disabled",
                    parent.channel_name
                ),
            })?;
        let parts = stored_request(parent).map_err(|reason| refuse(&reason))?;
        let body = parent
            .request
            .body
            .as_ref()
            .map(|b| b.0.clone())
            .unwrap_or_default();
        let mut parts = parts;
        // The rerun speaks for the original client, whatever header the stored request carried.
        headers::set_client_id(&mut parts.headers, parent.client_id.as_deref());
        let admitted = Admitted {
            channel,
            parts,
            body,
            client_id: parent.client_id.clone(),
            client_ip: parent
                .client_ip
                .parse()
                .unwrap_or(IpAddr::from([127, 0, 0, 1])),
            parent: Some(parent.id),
            started: Some(Instant::now()),
        };
        let routed = self.route(admitted).await;
        let recording = routed.recording.clone();
        let response = self.respond(routed, None).await;
        // Reading the response to its end completes the child's record.
        if let Err(error) = response.into_body().collect().await {
            tracing::debug!(parent = %parent.id, %error, "The rerun's response body failed.");
        }
        let child = recording
            .map(|r| r.snapshot())
            .ok_or_else(|| refuse("the rerun could not be recorded"))?;
        let child_id = child.id;
        self.shared
            .store
            .modify_transaction(
                parent.id,
                Box::new(move |tx| {
                    if !tx.child_ids.contains(&child_id) {
                        tx.child_ids.push(child_id);
                    }
                }),
            )
            .await?;
        Ok(child)
    }
}

/// The request head of a stored transaction, ready to route again: its method, path and query, and
/// its headers minus those that were redacted, describe one connection, or name the old transaction.
fn stored_request(tx: &Transaction) -> Result<http::request::Parts, String> {
    let request = &tx.request;
    let target = if request.querystring.is_empty() {
        request.path.clone()
    } else {
        format!("{}?{}", request.path, request.querystring)
    };
    let mut builder = http::Request::builder()
        .method(request.method.as_str())
        .uri(target);
    for (name, value) in &request.headers.0 {
        let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
            continue;
        };
        if value.contains(REDACTED) || NOT_REPLAYED.contains(&name.as_str()) {
            continue;
        }
        if let Ok(value) = HeaderValue::from_str(value) {
            builder = builder.header(name, value);
        }
    }
    builder
        .body(())
        .map(|r| r.into_parts().0)
        .map_err(|e| format!("its stored request is not a valid request: {e}"))
}

/// Headers of the original request that a rerun does not send again.
const NOT_REPLAYED: [&str; 9] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "x-mediary-transaction-id",
    "x-openhim-transactionid",
    "x-forwarded-for",
    "x-forwarded-host",
];
