//! The client endpoints (OpenHIM's): `GET|POST /clients`, `GET|PUT|DELETE /clients/:id`, where
//! `:id` is the `_id`, or the clientID with `?byNamedClientID=true`.
//!
//! A write is checked whole by [`Client::parse`] (the same reader the proxy's directory uses) and
//! for a unique clientID before anything is stored. Secrets arrive in plaintext (`password`,
//! `customTokenID`) or as an OpenHIM import (`passwordAlgorithm`, `passwordHash`, `passwordSalt`),
//! are stored hashed (see [`crate::client`]), and never leave: answers carry `passwordSet` and
//! `customTokenSet` instead. Writes are serialised with the channel writes' lock, so two requests
//! cannot both take a clientID.

use http::StatusCode;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::error::ApiError;
use super::{Api, Reply, json_reply};
use crate::client::{Client, ClientInput, token_hash};
use crate::config::fields::FieldErrors;
use crate::store::Collection;

/// How `:id` names a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// By `_id` (the default).
    Id,
    /// By clientID (`?byNamedClientID=true`).
    ClientId,
}

impl Key {
    /// From the query's `byNamedClientID`.
    pub fn from_params(params: &[(String, String)]) -> Result<Key, ApiError> {
        match params
            .iter()
            .find(|(k, _)| k == "byNamedClientID")
            .map(|(_, v)| v.as_str())
        {
            None | Some("false") => Ok(Key::Id),
            Some("true") => Ok(Key::ClientId),
            Some(other) => Err(ApiError::BadRequest(format!(
                "byNamedClientID is `{other}`; it is true or false."
            ))),
        }
    }
}

/// `GET /clients`: every client, in id order, without secrets.
pub async fn list(api: &Api) -> Result<Reply, ApiError> {
    let clients: Vec<Value> = api
        .shared
        .store
        .list(Collection::Clients)
        .await?
        .into_iter()
        .filter_map(|(id, doc)| read(&id, &doc).map(|c| c.public()))
        .collect();
    Ok(json_reply(StatusCode::OK, &clients))
}

/// `GET /clients/:id`.
pub async fn get(api: &Api, key: &str, by: Key) -> Result<Reply, ApiError> {
    let (_, client) = find(api, key, by).await?;
    Ok(json_reply(StatusCode::OK, &client.public()))
}

/// `POST /clients`: a new client with a fresh `_id`; 201 with the client.
pub async fn create(api: &Api, body: Value) -> Result<Reply, ApiError> {
    let mut errors = FieldErrors::default();
    let mut body = object(body)?;
    if body.remove("_id").is_some() {
        errors.push("_id", "is assigned by Mediary; leave it out");
    }
    let input = ClientInput::split(body, &mut errors);
    let id = Uuid::new_v4().to_string();
    let _writing = api.channel_writes.lock().await;
    let client = build(api, Map::new(), input, &id, &mut errors).await?;
    let store = &api.shared.store;
    check_unique(api, &client, &id).await?;
    store
        .put(Collection::Clients, &id, client.document())
        .await?;
    super::channels::apply(api).await;
    tracing::info!(client_id = %client.client_id, %id, "Client created through the API.");
    Ok(json_reply(StatusCode::CREATED, &client.public()))
}

/// `PUT /clients/:id`: OpenHIM's partial update. The body's fields replace the stored ones (`null`
/// removes one); secrets not given are kept.
pub async fn update(api: &Api, key: &str, by: Key, body: Value) -> Result<Reply, ApiError> {
    let mut errors = FieldErrors::default();
    let input = ClientInput::split(object(body)?, &mut errors);
    let _writing = api.channel_writes.lock().await;
    let (id, current) = find(api, key, by).await?;
    if let Some(given) = input.document.get("_id")
        && given.as_str() != Some(id.as_str())
    {
        errors.push("_id", format!("cannot change; this client's id is `{id}`"));
    }
    let stored = match current.document() {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let client = build(api, stored, input, &id, &mut errors).await?;
    check_unique(api, &client, &id).await?;
    api.shared
        .store
        .put(Collection::Clients, &id, client.document())
        .await?;
    super::channels::apply(api).await;
    tracing::info!(client_id = %client.client_id, %id, "Client updated through the API.");
    Ok(json_reply(StatusCode::OK, &client.public()))
}

/// `DELETE /clients/:id`.
pub async fn delete(api: &Api, key: &str, by: Key) -> Result<Reply, ApiError> {
    let _writing = api.channel_writes.lock().await;
    let (id, client) = find(api, key, by).await?;
    if !api.shared.store.delete(Collection::Clients, &id).await? {
        return Err(not_found(key));
    }
    super::channels::apply(api).await;
    tracing::info!(client_id = %client.client_id, %id, "Client deleted through the API.");
    Ok(json_reply(
        StatusCode::OK,
        &json!({"message": format!("The client `{}` was deleted.", client.client_id), "_id": id}),
    ))
}

/// The stored document `stored` with `input` applied, checked whole. Plaintext secrets are hashed
/// here (argon2 on the blocking pool).
async fn build(
    api: &Api,
    mut doc: Map<String, Value>,
    input: ClientInput,
    id: &str,
    errors: &mut FieldErrors,
) -> Result<Client, ApiError> {
    let ClientInput {
        document,
        password,
        custom_token,
    } = input;
    if matches!(password, Some(Some(_))) && document.contains_key("passwordHash") {
        errors.push(
            "password",
            "give a password or an imported passwordHash, not both",
        );
    }
    // A new password, imported or plaintext, replaces the whole stored one: an algorithm or salt
    // left from the old one must not be read with the new hash.
    if document.contains_key("passwordHash") || password.is_some() {
        for key in ["passwordAlgorithm", "passwordHash", "passwordSalt"] {
            doc.remove(key);
        }
    }
    for (field, value) in document {
        if field == "_id" {
            continue;
        }
        if value.is_null() {
            doc.remove(&field);
        } else {
            doc.insert(field, value);
        }
    }
    match custom_token {
        Some(Some(token)) => {
            doc.insert(
                "customTokenHash".into(),
                json!(hex::encode(token_hash(&token))),
            );
        }
        Some(None) => {
            doc.remove("customTokenHash");
        }
        None => {}
    }
    doc.insert("_id".into(), json!(id));
    let value = Value::Object(doc);
    let parsed = Client::parse(String::new(), &value, errors);
    let mut client = match parsed {
        Some(client) if errors.is_empty() => client,
        _ => return Err(invalid(std::mem::take(errors))),
    };
    if let Some(Some(password)) = password {
        let hash = api.auth.hash(password).await?;
        client.password = Some(crate::client::StoredPassword::Argon2(hash));
    }
    client.id = id.to_owned();
    Ok(client)
}

/// 409 when another client has this clientID, certificate fingerprint or custom token: the proxy
/// finds a client by each, and two clients sharing one would leave to chance which is identified.
async fn check_unique(api: &Api, client: &Client, id: &str) -> Result<(), ApiError> {
    let existing = api.shared.store.list(Collection::Clients).await?;
    for (other, doc) in existing.iter().filter(|(other, _)| other != id) {
        if doc.get("clientID").and_then(Value::as_str) == Some(&client.client_id) {
            return Err(ApiError::Conflict(format!(
                "A client with clientID `{}` already exists (`_id` {other}).",
                client.client_id
            )));
        }
        if client.cert_fingerprint.is_none() && client.custom_token_sha256.is_none() {
            continue;
        }
        // Stored documents that do not parse identify nobody (the directory skips them too).
        let Some(stored) = Client::parse(String::new(), doc, &mut FieldErrors::default()) else {
            continue;
        };
        if client.cert_fingerprint.is_some() && stored.cert_fingerprint == client.cert_fingerprint {
            return Err(ApiError::Conflict(format!(
                "The client `{}` (`_id` {other}) already has this certFingerprint.",
                stored.client_id
            )));
        }
        if client.custom_token_sha256.is_some()
            && stored.custom_token_sha256 == client.custom_token_sha256
        {
            return Err(ApiError::Conflict(format!(
                "The client `{}` (`_id` {other}) already has this customTokenID.",
                stored.client_id
            )));
        }
    }
    Ok(())
}

/// The stored client `key` names.
async fn find(api: &Api, key: &str, by: Key) -> Result<(String, Client), ApiError> {
    let store = &api.shared.store;
    let found = match by {
        Key::Id => store
            .get(Collection::Clients, key)
            .await?
            .map(|doc| (key.to_owned(), doc)),
        Key::ClientId => store
            .list(Collection::Clients)
            .await?
            .into_iter()
            .find(|(_, doc)| doc.get("clientID").and_then(Value::as_str) == Some(key)),
    };
    let (id, doc) = found.ok_or_else(|| not_found(key))?;
    let client = read(&id, &doc).ok_or_else(|| {
        ApiError::Internal(format!(
            "The stored client `{id}` is invalid (see the log); fix or delete it."
        ))
    })?;
    Ok((id, client))
}

/// A stored document as a client (logged and skipped when it does not parse).
fn read(id: &str, doc: &Value) -> Option<Client> {
    let mut errors = FieldErrors::default();
    match Client::parse(format!("clients/{id}"), doc, &mut errors) {
        Some(mut client) => {
            client.id = id.to_owned();
            Some(client)
        }
        None => {
            let problems: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            tracing::error!(client = %id, problems = %problems.join("; "), "A stored client is invalid.");
            None
        }
    }
}

fn object(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(doc) => Ok(doc),
        other => Err(ApiError::BadRequest(format!(
            "The body must be a JSON object describing a client, not {}.",
            crate::config::fields::kind(&other)
        ))),
    }
}

fn invalid(errors: FieldErrors) -> ApiError {
    ApiError::Invalid {
        what: "client",
        errors: errors.0,
    }
}

fn not_found(key: &str) -> ApiError {
    ApiError::NotFound(format!("No client `{key}`."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::testing::api;

    fn status(reply: &Result<Reply, ApiError>) -> StatusCode {
        match reply {
            Ok(r) => r.status(),
            Err(e) => e.status(),
        }
    }

    #[tokio::test]
    async fn clients_are_created_read_updated_and_deleted() {
        let f = api("");
        let a = &f.api;
        let created = create(
            a,
            json!({"clientID": "c1", "name": "One", "roles": ["r"], "password": "pw",
                "customTokenID": "tok", "certFingerprint": "ab".repeat(32)}),
        )
        .await
        .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
        let stored = a.shared.store.list(Collection::Clients).await.unwrap();
        let (id, doc) = &stored[0];
        assert_eq!(doc["passwordAlgorithm"], "argon2id");
        assert_eq!(doc["customTokenHash"], hex::encode(token_hash("tok")));
        assert!(doc.get("customTokenID").is_none() && doc.get("password").is_none());
        // The proxy's directory sees the client at once.
        assert!(a.shared.clients.load().by_client_id("c1").is_some());

        let dup = create(a, json!({"clientID": "c1", "name": "Again"})).await;
        assert_eq!(status(&dup), StatusCode::CONFLICT);
        let got = get(a, "c1", Key::ClientId).await.unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        let got = get(a, id, Key::Id).await.unwrap();
        assert_eq!(got.status(), StatusCode::OK);
        assert_eq!(status(&get(a, "c1", Key::Id).await), StatusCode::NOT_FOUND);

        let before = doc["passwordHash"].clone();
        update(
            a,
            id,
            Key::Id,
            json!({"name": "Renamed", "customTokenID": null, "passwordSet": true}),
        )
        .await
        .unwrap();
        let doc = a
            .shared
            .store
            .get(Collection::Clients, id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(doc["name"], "Renamed");
        assert_eq!(doc["passwordHash"], before, "a secret not given is kept");
        assert!(doc.get("customTokenHash").is_none());

        let bad = update(
            a,
            id,
            Key::Id,
            json!({"clientID": "admin", "certFingerprint": "zz"}),
        )
        .await;
        let Err(ApiError::Invalid { errors, .. }) = bad else {
            panic!("{bad:?}")
        };
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert!(
            paths.contains(&"clientID") && paths.contains(&"certFingerprint"),
            "{paths:?}"
        );

        assert_eq!(
            delete(a, "c1", Key::ClientId).await.unwrap().status(),
            StatusCode::OK
        );
        assert!(a.shared.clients.load().by_client_id("c1").is_none());
    }

    #[tokio::test]
    async fn openhim_imports_are_accepted() {
        let f = api("");
        let hash = bcrypt::hash("pw", 4).unwrap();
        let created = create(&f.api, json!({"clientID": "imp", "name": "Imp", "passwordAlgorithm": "bcrypt", "passwordHash": hash}))
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED);
        let both = create(
            &f.api,
            json!({"clientID": "x", "name": "X", "password": "a", "passwordHash": "$2b$xx"}),
        )
        .await;
        assert_eq!(status(&both), StatusCode::BAD_REQUEST);
    }
}
