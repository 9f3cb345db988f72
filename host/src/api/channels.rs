//! The channel endpoints: channels as JSON documents in [`Collection::Channels`], keyed by `_id`,
//! each the channel as the client gave it plus its `_id`.
//!
//! Every write is checked by [`Channel::parse`], exactly as a channel in the config file is, and for
//! a unique name, before anything is stored: a rejected write changes nothing. Writes from this API
//! are serialised (one lock) so that two concurrent requests cannot both claim a name. Workers pick
//! the change up through the store's notifications.

use http::StatusCode;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::error::ApiError;
use super::{Api, Reply, json_reply};
use crate::channel::Channel;
use crate::config::fields::FieldErrors;
use crate::store::Collection;

/// `GET /channels`: every channel, in id order.
pub async fn list(api: &Api) -> Result<Reply, ApiError> {
    let channels: Vec<Value> = api
        .shared
        .store
        .list(Collection::Channels)
        .await?
        .into_iter()
        .map(|(id, doc)| with_id(doc, &id))
        .collect();
    Ok(json_reply(StatusCode::OK, &channels))
}

/// `GET /channels/:key`.
pub async fn get(api: &Api, key: &str) -> Result<Reply, ApiError> {
    let (id, doc) = find(api, key).await?;
    Ok(json_reply(StatusCode::OK, &with_id(doc, &id)))
}

/// `POST /channels`: a new channel with a fresh `_id`.
pub async fn create(api: &Api, body: Value) -> Result<Reply, ApiError> {
    let mut doc = object(body)?;
    let mut errors = FieldErrors::default();
    if doc.remove("_id").is_some() {
        errors.push("_id", "is assigned by Mediary; leave it out");
    }
    let doc = Value::Object(doc);
    let channel = Channel::parse(String::new(), &doc, &mut errors);
    let channel = match channel {
        Some(channel) if errors.is_empty() => channel,
        _ => return Err(invalid(errors)),
    };
    let _writing = api.channel_writes.lock().await;
    check_plugin(api, &channel).await?;
    let store = &api.shared.store;
    let existing = store.list(Collection::Channels).await?;
    if let Some((other, _)) = existing
        .iter()
        .find(|(_, d)| name_of(d) == Some(&channel.name))
    {
        return Err(duplicate(&channel.name, other));
    }
    let id = Uuid::now_v7().to_string();
    let doc = with_id(doc, &id);
    store.put(Collection::Channels, &id, doc.clone()).await?;
    apply(api).await;
    tracing::info!(channel = %channel.name, %id, "Channel created through the API.");
    Ok(json_reply(StatusCode::CREATED, &doc))
}

/// `PUT /channels/:key`: OpenHIM's partial update. The body's top-level fields replace the stored
/// ones (`null` removes one), and the result must pass as a whole.
pub async fn update(api: &Api, key: &str, body: Value) -> Result<Reply, ApiError> {
    let patch = object(body)?;
    let _writing = api.channel_writes.lock().await;
    let (id, stored) = find(api, key).await?;
    let mut doc = match stored {
        Value::Object(doc) => doc,
        // A stored channel that is not an object cannot be patched, only replaced whole.
        _ => Map::new(),
    };
    let mut errors = FieldErrors::default();
    for (field, value) in patch {
        if field == "_id" {
            if value.as_str() != Some(id.as_str()) {
                errors.push("_id", format!("cannot change; this channel's id is `{id}`"));
            }
        } else if value.is_null() {
            doc.remove(&field);
        } else {
            doc.insert(field, value);
        }
    }
    let doc = with_id(Value::Object(doc), &id);
    let channel = Channel::parse(String::new(), &doc, &mut errors);
    let channel = match channel {
        Some(channel) if errors.is_empty() => channel,
        _ => return Err(invalid(errors)),
    };
    check_plugin(api, &channel).await?;
    let store = &api.shared.store;
    let existing = store.list(Collection::Channels).await?;
    if let Some((other, _)) = existing
        .iter()
        .find(|(other, d)| *other != id && name_of(d) == Some(&channel.name))
    {
        return Err(duplicate(&channel.name, other));
    }
    store.put(Collection::Channels, &id, doc.clone()).await?;
    apply(api).await;
    tracing::info!(channel = %channel.name, %id, "Channel updated through the API.");
    Ok(json_reply(StatusCode::OK, &doc))
}

/// `DELETE /channels/:key`: removes the channel for good. Its transactions stay.
pub async fn delete(api: &Api, key: &str) -> Result<Reply, ApiError> {
    let _writing = api.channel_writes.lock().await;
    let (id, doc) = find(api, key).await?;
    if !api.shared.store.delete(Collection::Channels, &id).await? {
        return Err(not_found(key));
    }
    apply(api).await;
    let name = name_of(&doc).unwrap_or(&id);
    tracing::info!(channel = %name, %id, "Channel deleted through the API.");
    Ok(json_reply(
        StatusCode::OK,
        &json!({"message": format!("The channel `{name}` was deleted."), "_id": id}),
    ))
}

/// Rebuilds this instance's channel table before the API answers, so that a client that has its
/// answer can count on the change being live here (the follower task would apply it moments later
/// anyway, and does so for changes made elsewhere). A failure leaves that to the follower.
pub(super) async fn apply(api: &Api) {
    if let Err(error) = crate::reload::load_generation(&api.shared).await {
        tracing::warn!(%error, "Could not rebuild the channel table at once; the follower will.");
    }
}

/// The stored channel `key` names: by `_id`, else by name (OpenHIM's console uses ids, people use
/// names).
async fn find(api: &Api, key: &str) -> Result<(String, Value), ApiError> {
    let store = &api.shared.store;
    if let Some(doc) = store.get(Collection::Channels, key).await? {
        return Ok((key.to_owned(), doc));
    }
    store
        .list(Collection::Channels)
        .await?
        .into_iter()
        .find(|(_, doc)| name_of(doc) == Some(key))
        .ok_or_else(|| not_found(key))
}

/// A channel may only name a plugin (and version) that has been uploaded.
async fn check_plugin(api: &Api, channel: &Channel) -> Result<(), ApiError> {
    let Some(spec) = &channel.plugin else {
        return Ok(());
    };
    match super::plugins::check_reference(api, &spec.source).await? {
        None => Ok(()),
        Some((field, reason)) => {
            let mut errors = FieldErrors::default();
            errors.push(field, reason);
            Err(invalid(errors))
        }
    }
}

fn object(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(doc) => Ok(doc),
        other => Err(ApiError::BadRequest(format!(
            "The body must be a JSON object describing a channel, not {}.",
            crate::config::fields::kind(&other)
        ))),
    }
}

/// `doc` with `_id` set to the key it is stored under (the key is the truth).
fn with_id(doc: Value, id: &str) -> Value {
    match doc {
        Value::Object(mut map) => {
            map.insert("_id".to_owned(), Value::String(id.to_owned()));
            Value::Object(map)
        }
        other => other,
    }
}

fn name_of(doc: &Value) -> Option<&str> {
    doc.get("name").and_then(Value::as_str)
}

fn invalid(errors: FieldErrors) -> ApiError {
    ApiError::Invalid {
        what: "channel",
        errors: errors.0,
    }
}

fn duplicate(name: &str, other: &str) -> ApiError {
    ApiError::Conflict(format!(
        "A channel named `{name}` already exists (id `{other}`); channel names are unique."
    ))
}

fn not_found(key: &str) -> ApiError {
    ApiError::NotFound(format!("No channel has the id or name `{key}`."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::{self, Fixture};

    async fn outcome(result: Result<Reply, ApiError>) -> (u16, Value) {
        testing::read(result.unwrap_or_else(ApiError::into_response)).await
    }

    fn channel(name: &str, pattern: &str) -> Value {
        json!({
            "name": name,
            "urlPattern": pattern,
            "methods": ["GET"],
            "authType": "public",
            "routes": [{"name": "r", "host": "127.0.0.1", "port": 9000, "primary": true}],
        })
    }

    fn fixture() -> Fixture {
        testing::api("")
    }

    #[tokio::test]
    async fn create_read_update_delete() {
        let f = fixture();
        let (status, created) =
            outcome(create(&f.api, channel("patients", "^/patients")).await).await;
        assert_eq!(status, 201, "{created}");
        let id = created["_id"].as_str().expect("an id").to_owned();
        assert!(Uuid::parse_str(&id).is_ok(), "{id}");
        assert_eq!(created["urlPattern"], "^/patients");

        assert_eq!(
            outcome(get(&f.api, &id).await).await,
            (200, created.clone())
        );
        assert_eq!(
            outcome(get(&f.api, "patients").await).await,
            (200, created.clone())
        );
        assert_eq!(outcome(list(&f.api).await).await, (200, json!([created])));

        let (status, updated) =
            outcome(update(&f.api, &id, json!({"urlPattern": "^/people", "_id": id})).await).await;
        assert_eq!(status, 200, "{updated}");
        assert_eq!(updated["urlPattern"], "^/people");
        assert_eq!(updated["name"], "patients");
        assert_eq!(updated["routes"], created["routes"]);
        let (_, removed) =
            outcome(update(&f.api, "patients", json!({"authType": null})).await).await;
        assert!(removed.get("authType").is_none(), "{removed}");

        let (status, deleted) = outcome(delete(&f.api, &id).await).await;
        assert_eq!(status, 200, "{deleted}");
        assert!(deleted["message"].as_str().unwrap().contains("patients"));
        assert_eq!(outcome(get(&f.api, &id).await).await.0, 404);
        assert_eq!(outcome(delete(&f.api, &id).await).await.0, 404);
        assert_eq!(outcome(update(&f.api, &id, json!({})).await).await.0, 404);
    }

    #[tokio::test]
    async fn invalid_channels_list_every_problem_and_store_nothing() {
        let f = fixture();
        let mut bad = channel("c", "^/c");
        bad.as_object_mut().unwrap().remove("urlPattern");
        bad["routes"][0]["port"] = json!(70000);
        bad["_id"] = json!("mine");
        let (status, error) = outcome(create(&f.api, bad).await).await;
        assert_eq!(status, 400, "{error}");
        let fields: Vec<&str> = error["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["_id", "urlPattern", "routes[0].port"]);
        assert_eq!(outcome(list(&f.api).await).await, (200, json!([])));

        let (status, error) = outcome(create(&f.api, json!([1])).await).await;
        assert_eq!(status, 400);
        assert!(
            error["error"].as_str().unwrap().contains("not an array"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn names_are_unique_and_ids_fixed() {
        let f = fixture();
        let (_, a) = outcome(create(&f.api, channel("a", "^/a")).await).await;
        let (_, b) = outcome(create(&f.api, channel("b", "^/b")).await).await;
        let (status, error) = outcome(create(&f.api, channel("a", "^/other")).await).await;
        assert_eq!(status, 409, "{error}");

        let b_id = b["_id"].as_str().unwrap();
        let (status, _) = outcome(update(&f.api, b_id, json!({"name": "a"})).await).await;
        assert_eq!(status, 409);
        let (status, error) =
            outcome(update(&f.api, b_id, json!({"_id": "x", "urlPattern": "("})).await).await;
        assert_eq!(status, 400);
        assert_eq!(error["errors"][0]["field"], "_id");
        assert_eq!(error["errors"][1]["field"], "urlPattern");
        // A rejected update changes nothing; keeping one's own name is no conflict.
        assert_eq!(outcome(get(&f.api, b_id).await).await.1, b);
        let (status, _) =
            outcome(update(&f.api, b_id, json!({"name": "b", "priority": 2})).await).await;
        assert_eq!(status, 200);
        assert_eq!(outcome(get(&f.api, "a").await).await.1, a);
    }
}
