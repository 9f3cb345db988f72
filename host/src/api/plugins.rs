//! The plugin endpoints: versioned, content-addressed WebAssembly components.
//!
//! `POST /plugins/:name` takes the `.wasm` as the body: it is compiled (within
//! `plugins.compile_timeout`) and checked to implement the plugin world before anything is stored,
//! so a refused upload changes nothing and says why. The new version becomes current, and every
//! channel that names the plugin without a version switches to it at once (in-flight requests finish
//! on the version they started with). `POST /plugins/:name/rollback` makes the previous version
//! current again.

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{Api, Reply, json_reply};
use crate::plugin::spec::plugin_name;
use crate::plugin::{PluginDocument, PluginSource, RollbackError, UploadError};
use crate::store::Collection;

/// `GET /plugins`: every plugin with its versions.
pub async fn list(api: &Api) -> Result<Reply, ApiError> {
    let channels = channel_uses(api).await?;
    let mut plugins = Vec::new();
    for (_, value) in api.shared.store.list(Collection::Plugins).await? {
        let document = PluginDocument::from_value(value)?;
        plugins.push(described(&document, &channels));
    }
    Ok(json_reply(StatusCode::OK, &plugins))
}

/// `GET /plugins/:name`.
pub async fn get(api: &Api, name: &str) -> Result<Reply, ApiError> {
    let document = find(api, name).await?;
    let channels = channel_uses(api).await?;
    Ok(json_reply(StatusCode::OK, &described(&document, &channels)))
}

/// `POST /plugins/:name`: uploads a new version.
pub async fn upload(
    api: &Api,
    name: &str,
    headers: &HeaderMap,
    body: Incoming,
    user: &str,
) -> Result<Reply, ApiError> {
    // The body is read before the name is judged: a refusal sent while the client is still
    // sending would leave the connection unusable, and a client that pooled it would fail its
    // next request on a broken pipe.
    let limit = api.shared.config.plugins.max_upload;
    let wasm: Bytes = api.read_body(headers, body, limit).await?;
    let name = plugin_name(name).map_err(|reason| ApiError::BadRequest(format!("{reason}.")))?;
    if wasm.is_empty() {
        return Err(ApiError::BadRequest(
            "The request has no body; send the plugin's .wasm file.".into(),
        ));
    }
    let _writing = api.channel_writes.lock().await;
    let uploaded =
        api.shared
            .plugins
            .upload(&name, wasm, user)
            .await
            .map_err(|error| match error {
                UploadError::Invalid(reason) => {
                    ApiError::BadRequest(format!("The plugin was refused: {reason}."))
                }
                UploadError::Store(error) => ApiError::Store(error),
                UploadError::Host(reason) => ApiError::Internal(reason),
            })?;
    super::channels::apply(api).await;
    let version = &uploaded.version;
    tracing::info!(plugin = %name, version = version.version, sha256 = %version.sha256, language = version.language.as_deref().unwrap_or("other"), created = uploaded.created, %user, "Plugin uploaded.");
    let status = if uploaded.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut body = serde_json::to_value(version).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut body {
        map.insert("name".into(), Value::String(name));
        map.insert("current".into(), Value::Bool(true));
        map.insert("created".into(), Value::Bool(uploaded.created));
    }
    Ok(json_reply(status, &body))
}

/// `POST /plugins/:name/rollback`: the version before the current one becomes current.
pub async fn rollback(api: &Api, name: &str) -> Result<Reply, ApiError> {
    let _writing = api.channel_writes.lock().await;
    let document = match api.shared.plugins.rollback(name).await {
        Ok(Some(document)) => document,
        Ok(None) => return Err(not_found(name)),
        Err(RollbackError::Store(error)) => return Err(ApiError::Store(error)),
        Err(error @ RollbackError::NoEarlierVersion(_)) => {
            return Err(ApiError::Conflict(format!("{error}.")));
        }
    };
    super::channels::apply(api).await;
    tracing::info!(plugin = %name, version = document.current, "Plugin rolled back.");
    let channels = channel_uses(api).await?;
    Ok(json_reply(StatusCode::OK, &described(&document, &channels)))
}

/// `DELETE /plugins/:name`: refused while a channel uses the plugin.
pub async fn delete(api: &Api, name: &str) -> Result<Reply, ApiError> {
    let _writing = api.channel_writes.lock().await;
    let document = find(api, name).await?;
    let users: Vec<String> = channel_uses(api)
        .await?
        .into_iter()
        .filter(|(_, plugin)| plugin == name)
        .map(|(channel, _)| channel)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "The plugin `{name}` is used by these channels: {}. Change them first.",
            users.join(", ")
        )));
    }
    let store = &api.shared.store;
    store.delete(Collection::Plugins, name).await?;
    // A blob goes when no remaining plugin version refers to it.
    let mut kept = Vec::new();
    for (_, value) in store.list(Collection::Plugins).await? {
        if let Ok(other) = PluginDocument::from_value(value) {
            kept.extend(other.versions.into_iter().map(|v| v.sha256));
        }
    }
    for version in &document.versions {
        if !kept.contains(&version.sha256) {
            store.delete_blob(&version.sha256).await?;
        }
    }
    tracing::info!(plugin = %name, "Plugin deleted.");
    Ok(json_reply(
        StatusCode::OK,
        &json!({"message": format!("The plugin `{name}` was deleted.")}),
    ))
}

/// Checks that a channel's stored plugin exists (and its version, if it names one). `None` if fine,
/// else the reason, for the channel's `plugin.name` or `plugin.version` field.
pub async fn check_reference(
    api: &Api,
    source: &PluginSource,
) -> Result<Option<(&'static str, String)>, ApiError> {
    let PluginSource::Stored { name, version } = source else {
        return Ok(None);
    };
    let Some(value) = api.shared.store.get(Collection::Plugins, name).await? else {
        return Ok(Some((
            "plugin.name",
            format!("no plugin named `{name}` has been uploaded (POST /plugins/{name})"),
        )));
    };
    let document = PluginDocument::from_value(value)?;
    if let Some(version) = version
        && document.version(*version).is_none()
    {
        let known: Vec<String> = document
            .versions
            .iter()
            .map(|v| v.version.to_string())
            .collect();
        return Ok(Some((
            "plugin.version",
            format!(
                "plugin `{name}` has no version {version} (it has {})",
                known.join(", ")
            ),
        )));
    }
    Ok(None)
}

async fn find(api: &Api, name: &str) -> Result<PluginDocument, ApiError> {
    match api.shared.store.get(Collection::Plugins, name).await? {
        Some(value) => Ok(PluginDocument::from_value(value)?),
        None => Err(not_found(name)),
    }
}

/// (channel name, plugin name) of every stored channel that names an uploaded plugin.
async fn channel_uses(api: &Api) -> Result<Vec<(String, String)>, ApiError> {
    let channels = api.shared.store.list(Collection::Channels).await?;
    Ok(channels
        .into_iter()
        .filter_map(|(id, doc)| {
            let plugin = doc.get("plugin")?.get("name")?.as_str()?.to_owned();
            let channel = doc
                .get("name")
                .and_then(Value::as_str)
                .map_or(id, str::to_owned);
            Some((channel, plugin))
        })
        .collect())
}

fn described(document: &PluginDocument, channels: &[(String, String)]) -> Value {
    let mut value = serde_json::to_value(document).unwrap_or(Value::Null);
    let used_by: Vec<&str> = channels
        .iter()
        .filter(|(_, plugin)| *plugin == document.name)
        .map(|(channel, _)| channel.as_str())
        .collect();
    if let Value::Object(map) = &mut value {
        map.insert("usedBy".into(), json!(used_by));
    }
    value
}

fn not_found(name: &str) -> ApiError {
    ApiError::NotFound(format!("No plugin is named `{name}`."))
}
