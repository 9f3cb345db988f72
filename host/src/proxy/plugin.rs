//! Phase 5½ of a request on a channel with a plugin: the plugin decides where the request goes (or
//! answers or refuses it), and later may transform the answer.

use std::sync::Arc;

use bytes::Bytes;
use http::Response;
use http::uri::PathAndQuery;
use uuid::Uuid;

use super::Proxy;
use super::error::ProxyError;
use super::record::TxRecording;
use crate::channel::{Channel, Route};
use crate::plugin::bindings::types;
use crate::plugin::imports::Call;
use crate::plugin::output::{self, Rewritten};
use crate::plugin::{BoundPlugin, CallEnv, Failure, OnPluginError, Session};

/// Where the plugin sends the request.
pub(super) enum Target {
    /// The channel's own routing (also what a bypassed plugin amounts to).
    ChannelRoutes,
    /// One route of the channel, alone.
    Route(Route),
    /// An allowed upstream URL; the path and query are the URL's.
    Url(Route, PathAndQuery),
}

/// What the plugin decided.
pub(super) enum Decision {
    Forward {
        target: Target,
        /// Boxed: a rewrite is rare and large.
        rewrite: Option<Box<Rewritten>>,
    },
    Respond(Response<Bytes>),
}

/// The plugin's part in one request, kept for the response: the instance and the request it saw.
pub(super) struct PluginTurn {
    pub session: Session,
    pub request: types::Request,
}

impl PluginTurn {
    /// Whether the answer must go through `on-response`.
    pub fn transforms(&self) -> bool {
        self.session.plugin().transforms()
    }
}

impl Proxy {
    /// Runs the channel's plugin on a request. `Ok(None)` means "no plugin here, route as usual".
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn consult_plugin(
        &self,
        channel: &Arc<Channel>,
        parts: &http::request::Parts,
        body: &Bytes,
        id: Uuid,
        recording: Option<&Arc<TxRecording>>,
    ) -> Result<Option<(Decision, Option<PluginTurn>)>, ProxyError> {
        let Some(binding) = &channel.bound_plugin else {
            return Ok(None);
        };
        let bound = match binding {
            Ok(bound) => bound,
            Err(reason) => {
                let failure = Failure::Unavailable {
                    reason: reason.clone(),
                };
                return self.plugin_failed(
                    channel,
                    channel_plugin_name(channel),
                    failure,
                    recording,
                );
            }
        };
        if let Some(recording) = recording {
            recording.set_plugin(bound.run.clone());
        }
        let request = types::Request {
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or("").to_owned(),
            headers: output::fields_of(&parts.headers),
            body: body.to_vec(),
            client: None,
            channel: channel.name.clone(),
            transaction_id: id.to_string(),
        };
        let call = Call::new(
            recording.cloned(),
            Arc::clone(&self.upstreams),
            self.timeout(channel),
        );
        let env = CallEnv {
            worker: self.worker,
            call,
        };
        let mut session = match bound.session(env).await {
            Ok(session) => session,
            Err(failure) => {
                return self.plugin_failed(channel, &bound.run.name, failure, recording);
            }
        };
        let action = session.on_request(&request).await;
        let decision = action.and_then(|action| self.decide(channel, bound, action));
        match decision {
            // A plugin that does not transform gives its instance back now rather than holding it
            // through the upstream's answer: fewer live instances, warmer caches.
            Ok(Ok(decision)) if !bound.transforms() => {
                drop(session);
                Ok(Some((decision, None)))
            }
            Ok(Ok(decision)) => Ok(Some((decision, Some(PluginTurn { session, request })))),
            Ok(Err(rejection)) => Err(rejection),
            Err(failure) => self.plugin_failed(channel, &bound.run.name, failure, recording),
        }
    }

    /// Turns the plugin's action into a decision, checking everything it returned. The inner `Err` is
    /// a rejection (the plugin's own answer, not its failure).
    fn decide(
        &self,
        channel: &Channel,
        bound: &BoundPlugin,
        action: types::Action,
    ) -> Result<Result<Decision, ProxyError>, Failure> {
        let max_body = self.body_limit(channel);
        let invalid = |reason: String| Failure::Invalid { reason };
        match action {
            types::Action::Respond(response) => {
                let response = output::checked_response(response, max_body).map_err(invalid)?;
                Ok(Ok(Decision::Respond(response)))
            }
            types::Action::Reject(rejection) => {
                let status = output::checked_rejection(&rejection).map_err(invalid)?;
                Ok(Err(ProxyError::PluginRejected {
                    channel: channel.name.clone(),
                    plugin: bound.run.name.clone(),
                    status,
                    reason: rejection.reason,
                }))
            }
            types::Action::Forward(forward) => {
                let rewrite = forward
                    .rewrite
                    .map(|r| output::checked_rewrite(r, max_body).map(Box::new))
                    .transpose()
                    .map_err(invalid)?;
                let target = match forward.target {
                    types::Target::ChannelRoutes => Target::ChannelRoutes,
                    types::Target::Route(name) => {
                        let route = channel
                            .routes
                            .iter()
                            .find(|r| r.enabled && r.name == name)
                            .ok_or_else(|| {
                                invalid(format!("`{name}` is not an enabled route of this channel"))
                            })?;
                        Target::Route(route.clone())
                    }
                    types::Target::Url(url) => {
                        let (route, uri) = bound.url_target(&url).map_err(invalid)?;
                        let path = uri
                            .path_and_query()
                            .cloned()
                            .unwrap_or_else(|| PathAndQuery::from_static("/"));
                        Target::Url(route, path)
                    }
                };
                Ok(Ok(Decision::Forward { target, rewrite }))
            }
        }
    }

    /// Calls `on-response` with the upstream's answer, read whole. A failure is handled as the
    /// channel's `onPluginError` says: the client gets 502, or the answer untransformed.
    pub(super) async fn transform(
        &self,
        channel: &Channel,
        turn: &mut PluginTurn,
        response: Response<Bytes>,
        recording: Option<&Arc<TxRecording>>,
    ) -> Result<Response<Bytes>, ProxyError> {
        let (parts, body) = response.into_parts();
        let given = types::Response {
            status: parts.status.as_u16(),
            headers: output::fields_of(&parts.headers),
            body: body.to_vec(),
        };
        let result = turn
            .session
            .on_response(&turn.request, &given)
            .await
            .and_then(|r| {
                output::checked_response(r, self.body_limit(channel))
                    .map_err(|reason| Failure::Invalid { reason })
            });
        let name = turn.session.plugin().run.name.clone();
        match result {
            Ok(transformed) => Ok(transformed),
            Err(failure) => match self.plugin_failed::<()>(channel, &name, failure, recording) {
                Ok(_) => Ok(Response::from_parts(parts, body)),
                Err(error) => Err(error),
            },
        }
    }

    /// A plugin failure: an error for the client (`fail`), or routing as if there were no plugin
    /// (`bypass`), recorded either way.
    fn plugin_failed<T>(
        &self,
        channel: &Channel,
        plugin: &str,
        failure: Failure,
        recording: Option<&Arc<TxRecording>>,
    ) -> Result<Option<(Decision, T)>, ProxyError> {
        channel.metrics.plugin_failure(failure.kind());
        match channel.on_plugin_error {
            OnPluginError::Fail => Err(ProxyError::Plugin {
                channel: channel.name.clone(),
                plugin: plugin.to_owned(),
                failure,
            }),
            OnPluginError::Bypass => {
                tracing::warn!(channel = %channel.name, plugin, %failure, "The plugin failed; bypassing it (onPluginError = \"bypass\").");
                if let Some(recording) = recording {
                    recording.set_property(
                        "pluginError",
                        serde_json::json!({"kind": failure.kind(), "message": failure.to_string(), "bypassed": true}),
                    );
                }
                Ok(None)
            }
        }
    }
}

/// The plugin's name as configured, for errors about a plugin that could not be loaded.
fn channel_plugin_name(channel: &Channel) -> &str {
    match channel.plugin.as_ref().map(|p| &p.source) {
        Some(crate::plugin::PluginSource::Stored { name, .. }) => name,
        Some(crate::plugin::PluginSource::File(path)) => path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin"),
        None => "plugin",
    }
}
