//! The record of one transaction while it is being served: built as the request goes through the
//! phases, written to the worker's spool at each stage.
//!
//! The primary route's response path and the secondary routes' tasks share it. Whichever finishes
//! last writes the final stage: with no secondaries, the primary's completion is final; otherwise the
//! primary writes `Responded` (status still Processing, as OpenHIM's is until every route answered)
//! and the last secondary writes `Final` with the status computed over every route.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use uuid::Uuid;

use crate::channel::{Channel, Route};
use crate::recorder::spool::{Spool, SpoolError};
use crate::transaction::{
    Body, BodyBudget, ErrorDetails, Exchange, Headers, PluginLogLine, PluginRun, RequestRecord,
    ResponseRecord, Stage, Status, Timestamp, Transaction,
};

/// One transaction being recorded.
#[derive(Debug)]
pub struct TxRecording {
    spool: Arc<Spool>,
    channel: Arc<Channel>,
    started: Instant,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tx: Transaction,
    budget: BodyBudget,
    secondaries_left: usize,
    primary_done: bool,
    finished: bool,
    /// Method, path and query as sent to the answering route, when a plugin changed them.
    sent: Option<(String, String, String)>,
}

/// What the recording needs to know about the request.
#[derive(Debug)]
pub struct RequestFacts<'a> {
    pub id: Uuid,
    pub method: &'a http::Method,
    pub uri: &'a http::Uri,
    pub headers: &'a HeaderMap,
    pub body: &'a Bytes,
    pub client_ip: IpAddr,
    /// The authenticated client's clientID.
    pub client_id: Option<&'a str>,
    pub parent: Option<Uuid>,
    pub started: Instant,
}

impl TxRecording {
    /// Builds the record of a request that has been read, and appends its `Begun` stage. The caller
    /// waits for the returned sequence number before anything goes upstream.
    pub fn begin(
        spool: &Arc<Spool>,
        channel: &Arc<Channel>,
        facts: RequestFacts<'_>,
        worker: usize,
        instance: &str,
        max_bodies: u64,
        secondaries: usize,
    ) -> Result<(Arc<TxRecording>, u64), SpoolError> {
        let mut budget = BodyBudget::new(channel.max_stored_body_size.unwrap_or(max_bodies));
        let (body, body_truncated) = if channel.request_body {
            budget.take(facts.body)
        } else {
            (None, false)
        };
        let host = facts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok());
        let (host, port) = match host.map(|h| h.rsplit_once(':')) {
            Some(Some((h, p))) if p.chars().all(|c| c.is_ascii_digit()) => {
                (Some(h.to_owned()), Some(p.to_owned()))
            }
            _ => (host.map(str::to_owned), None),
        };
        let tx = Transaction {
            id: facts.id,
            channel_id: channel.id.to_string(),
            channel_name: channel.name.clone(),
            client_id: facts.client_id.map(str::to_owned),
            client_ip: facts.client_ip.to_string(),
            request: RequestRecord {
                host,
                port,
                path: facts.uri.path().to_owned(),
                querystring: facts.uri.query().unwrap_or("").to_owned(),
                method: facts.method.as_str().to_owned(),
                headers: Headers::redacted(facts.headers),
                body,
                body_truncated,
                // The id's own time (when the request had been read), so that time filters and the
                // id order, which the indexes use, always agree.
                timestamp: Timestamp::of_id(facts.id),
            },
            response: None,
            // One entry per secondary route from the start (filled in as each answers), so that a
            // record interrupted while routes were running says which ones never finished.
            routes: channel
                .secondaries()
                .map(|route| {
                    route_exchange(
                        route,
                        facts.method.as_str(),
                        facts.uri.path(),
                        facts.uri.query().unwrap_or(""),
                        Timestamp::of_id(facts.id),
                    )
                })
                .collect(),
            orchestrations: Vec::new(),
            properties: Default::default(),
            error: None,
            status: Status::Processing,
            // A body that was not stored whole cannot be sent again. A channel that stores no
            // request bodies can still rerun bodiless requests (OpenHIM: GET, DELETE, …).
            can_rerun: !body_truncated && (channel.request_body || facts.body.is_empty()),
            was_rerun: facts.parent.is_some(),
            parent_id: facts.parent,
            child_ids: Vec::new(),
            worker: u16::try_from(worker).unwrap_or(u16::MAX),
            instance: instance.to_owned(),
            duration_ms: None,
            plugin: None,
            plugin_log: Vec::new(),
        };
        let seq = spool.append(&tx, Stage::Begun)?;
        let recording = Arc::new(TxRecording {
            spool: Arc::clone(spool),
            channel: Arc::clone(channel),
            started: facts.started,
            state: Mutex::new(State {
                tx,
                budget,
                secondaries_left: secondaries,
                primary_done: false,
                finished: false,
                sent: None,
            }),
        });
        Ok((recording, seq))
    }

    pub fn spool(&self) -> &Arc<Spool> {
        &self.spool
    }

    /// How many response-body bytes are worth capturing: none if the channel stores no response
    /// bodies, else what is left of the per-transaction cap.
    pub fn response_capture_limit(&self) -> usize {
        if !self.channel.response_body {
            return 0;
        }
        let state = self.lock();
        usize::try_from(state.budget.remaining()).unwrap_or(usize::MAX)
    }

    /// The client's response head is known: its status and headers (the body follows). `route` is
    /// the route that answered (`None` when a plugin answered itself), recorded as an orchestration
    /// with `upstream_status`, which differs from `status` when a plugin transformed the answer.
    pub fn primary_head(
        &self,
        route: Option<&Route>,
        upstream_status: StatusCode,
        status: StatusCode,
        headers: &HeaderMap,
    ) {
        let now = Timestamp::now();
        let mut state = self.lock();
        state.tx.response = Some(ResponseRecord {
            status: status.as_u16(),
            headers: Headers::redacted(headers),
            body: None,
            body_truncated: false,
            timestamp: now,
        });
        if let Some(route) = route {
            let exchange = self.orchestration(
                &state.tx,
                state.sent.as_ref(),
                route,
                Some(upstream_status.as_u16()),
                None,
                now,
            );
            state.tx.orchestrations.push(exchange);
        }
    }

    /// A plugin rewrote the request: this is the method, path and query the route is sent (its
    /// orchestration shows them; the transaction's request stays the client's).
    pub fn sent_upstream(&self, method: &str, path: &str, query: &str) {
        self.lock().sent = Some((method.to_owned(), path.to_owned(), query.to_owned()));
    }

    /// The channel's secondary routes will not be called (a plugin chose one route).
    pub fn no_secondaries(&self) {
        let mut state = self.lock();
        state.tx.routes.clear();
        state.secondaries_left = 0;
    }

    /// Names the plugin that handles this transaction.
    pub fn set_plugin(&self, plugin: PluginRun) {
        self.lock().tx.plugin = Some(plugin);
    }

    /// Keeps a line the plugin logged.
    pub fn plugin_log(&self, line: PluginLogLine) {
        self.lock().tx.plugin_log.push(line);
    }

    /// Records a call the plugin made (`outbound-http`) as an orchestration.
    pub fn add_orchestration(&self, exchange: Exchange) {
        self.lock().tx.orchestrations.push(exchange);
    }

    /// Sets a property of the transaction (OpenHIM's `properties`).
    pub fn set_property(&self, key: &str, value: serde_json::Value) {
        self.lock().tx.properties.insert(key.to_owned(), value);
    }

    /// The primary's response body is complete (or failed with `error`); `body` is what was
    /// captured of it and `cut` whether it was longer. Returns the sequence number of the record to
    /// wait for before the client gets the last byte.
    pub fn primary_done(&self, body: Bytes, cut: bool, error: Option<String>) -> Option<u64> {
        let mut state = self.lock();
        if state.primary_done {
            return None;
        }
        let (stored, truncated) = if self.channel.response_body {
            state.budget.take(&body)
        } else {
            (None, false)
        };
        if let Some(response) = &mut state.tx.response {
            response.body = stored;
            response.body_truncated = truncated || cut;
            response.timestamp = Timestamp::now();
        }
        if let Some(message) = error {
            state.tx.error = Some(ErrorDetails::new(message));
        }
        self.finish_primary(&mut state)
    }

    /// The primary failed; the client gets `status` with `body` (Mediary's error JSON).
    pub fn primary_failed(
        &self,
        route: Option<&Route>,
        status: StatusCode,
        body: &Bytes,
        message: String,
    ) -> Option<u64> {
        let now = Timestamp::now();
        let mut state = self.lock();
        let (stored, truncated) = state.budget.take(body);
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        state.tx.response = Some(ResponseRecord {
            status: status.as_u16(),
            headers: Headers::redacted(&headers),
            body: stored,
            body_truncated: truncated,
            timestamp: now,
        });
        if let Some(route) = route {
            let exchange = self.orchestration(
                &state.tx,
                state.sent.as_ref(),
                route,
                None,
                Some(&message),
                now,
            );
            state.tx.orchestrations.push(exchange);
        }
        state.tx.error = Some(ErrorDetails::new(message));
        self.finish_primary(&mut state)
    }

    /// A secondary route finished.
    /// Secondary route number `index` (in the channel's order) finished.
    pub fn secondary_done(&self, index: usize, exchange: Exchange) {
        let mut state = self.lock();
        match state.tx.routes.get_mut(index) {
            Some(entry) => *entry = exchange,
            None => state.tx.routes.push(exchange),
        }
        state.secondaries_left = state.secondaries_left.saturating_sub(1);
        if state.primary_done && state.secondaries_left == 0 {
            self.write_final(&mut state);
        }
    }

    /// Records a secondary's response body within the budget (and the channel's body settings).
    pub fn store_route_body(&self, body: &Bytes) -> (Option<Body>, bool) {
        if !self.channel.response_body {
            return (None, false);
        }
        self.lock().budget.take(body)
    }

    /// Records a request body the host sent on the client's behalf (a plugin's call) within the
    /// budget, if the channel stores request bodies.
    pub fn store_request_body(&self, body: &Bytes) -> (Option<Body>, bool) {
        if !self.channel.request_body {
            return (None, false);
        }
        self.lock().budget.take(body)
    }

    /// The record as it stands.
    pub fn snapshot(&self) -> Transaction {
        self.lock().tx.clone()
    }

    pub fn id(&self) -> Uuid {
        self.lock().tx.id
    }

    fn finish_primary(&self, state: &mut State) -> Option<u64> {
        state.primary_done = true;
        state.tx.duration_ms = Some(self.started.elapsed().as_secs_f64() * 1000.0);
        if let Some(response) = &state.tx.response {
            self.channel
                .metrics
                .response(response.status, self.started.elapsed());
        }
        if state.secondaries_left == 0 {
            self.write_final(state)
        } else {
            state.tx.status = Status::Processing;
            self.append(state, Stage::Responded)
        }
    }

    fn write_final(&self, state: &mut State) -> Option<u64> {
        if state.finished {
            return None;
        }
        state.finished = true;
        state.tx.settle_status();
        self.channel.metrics.status(state.tx.status);
        self.append(state, Stage::Final)
    }

    fn append(&self, state: &State, stage: Stage) -> Option<u64> {
        match self.spool.append(&state.tx, stage) {
            Ok(seq) => Some(seq),
            Err(error) => {
                tracing::error!(transaction = %state.tx.id, %error, "Could not record a transaction.");
                None
            }
        }
    }

    fn orchestration(
        &self,
        tx: &Transaction,
        sent: Option<&(String, String, String)>,
        route: &Route,
        status: Option<u16>,
        error: Option<&str>,
        now: Timestamp,
    ) -> Exchange {
        // The primary's request and response are the transaction's own (headers and bodies are not
        // stored twice); the orchestration says where it went, when, and how it ended.
        let request = &tx.request;
        let (method, path, query) = match &sent {
            Some((method, path, query)) => (method.as_str(), path.as_str(), query.as_str()),
            None => (
                request.method.as_str(),
                request.path.as_str(),
                request.querystring.as_str(),
            ),
        };
        let mut exchange = route_exchange(route, method, path, query, request.timestamp);
        exchange.response = status.map(|status| ResponseRecord {
            status,
            headers: Headers::default(),
            body: None,
            body_truncated: false,
            timestamp: now,
        });
        exchange.error = error.map(ErrorDetails::new);
        exchange
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The record of an upstream's answer to a secondary route or a plugin's call: status, redacted
/// headers, and the body within the transaction's budget (none when not recording).
pub fn answer_record(
    recording: Option<&Arc<TxRecording>>,
    parts: &http::response::Parts,
    body: &Bytes,
) -> ResponseRecord {
    let (stored, truncated) = recording.map_or((None, false), |r| r.store_route_body(body));
    ResponseRecord {
        status: parts.status.as_u16(),
        headers: Headers::redacted(&parts.headers),
        body: stored,
        body_truncated: truncated,
        timestamp: Timestamp::now(),
    }
}

/// Builds the route entry of a secondary route's call.
pub fn route_exchange(
    route: &Route,
    method: &str,
    path: &str,
    query: &str,
    sent: Timestamp,
) -> Exchange {
    Exchange {
        name: route.name.clone(),
        request: RequestRecord {
            host: Some(route.host.clone()),
            port: Some(route.port.to_string()),
            path: route.rewrite.apply(path),
            querystring: query.to_owned(),
            method: method.to_owned(),
            headers: Headers::default(),
            body: None,
            body_truncated: false,
            timestamp: sent,
        },
        response: None,
        error: None,
    }
}
