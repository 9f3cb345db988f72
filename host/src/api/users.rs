//! The user endpoints: API users as JSON documents in [`Collection::Users`], keyed by their email
//! lowercased, with OpenHIM's fields (`email`, `firstname`, `surname`, `groups`, `msisdn`,
//! `settings`, …).
//!
//! A password is sent as `password` and stored only as an argon2id hash (`passwordHash`); no secret
//! field is ever returned, and none is accepted as such. `groups` must name built-in roles
//! ([`super::roles`]). Who may call what (the caller checks): `user-view` to read any user,
//! `user-manage` to create, change or delete any user; every user may read itself and change its own
//! document, but not its own `groups`. The root user (`api.root_email`) cannot be deleted, as in
//! OpenHIM.

use http::StatusCode;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::roles::{self, Permission, Principal};
use super::{Api, Reply, json_reply};
use crate::config::fields::FieldErrors;
use crate::store::Collection;

/// Fields that hold secrets: never returned, never accepted.
const SECRETS: [&str; 4] = ["passwordHash", "passwordSalt", "passwordAlgorithm", "token"];

/// Fields a client may send but that are not kept (Mongo's, echoed back by OpenHIM's console).
const IGNORED: [&str; 2] = ["_id", "__v"];

/// Shortest password accepted (as `api.root_password`).
const MIN_PASSWORD: usize = 8;

/// `user` as the API shows it: without its secrets.
pub fn shown(mut user: Value) -> Value {
    if let Value::Object(fields) = &mut user {
        for secret in SECRETS {
            fields.remove(secret);
        }
    }
    user
}

/// `GET /users`: every user, by email.
pub async fn list(api: &Api) -> Result<Reply, ApiError> {
    let users: Vec<Value> = api
        .shared
        .store
        .list(Collection::Users)
        .await?
        .into_iter()
        .map(|(_, user)| shown(user))
        .collect();
    Ok(json_reply(StatusCode::OK, &users))
}

/// `GET /users/:email`.
pub async fn get(api: &Api, email: &str) -> Result<Reply, ApiError> {
    let (_, user) = find(api, email).await?;
    Ok(json_reply(StatusCode::OK, &shown(user)))
}

/// `POST /users`: a new user; `email`, `firstname` and `surname` are required.
pub async fn create(api: &Api, body: Value) -> Result<Reply, ApiError> {
    let fields = object(body)?;
    let mut errors = FieldErrors::default();
    let email = match fields.get("email") {
        None | Some(Value::Null) => {
            errors.push("email", "is required");
            None
        }
        Some(value) => parse_email(value, &mut errors),
    };
    for required in ["firstname", "surname"] {
        if fields.get(required).is_none_or(Value::is_null) {
            errors.push(required, "is required");
        }
    }
    let mut doc = Map::new();
    let password = apply(&mut doc, fields, &mut errors);
    let Some(email) = email.filter(|_| errors.is_empty()) else {
        return Err(invalid(errors));
    };
    doc.insert("email".into(), Value::String(email.clone()));
    if let Some(password) = password {
        doc.insert(
            "passwordHash".into(),
            Value::String(api.auth.hash(password).await?),
        );
    }
    let doc = Value::Object(doc);
    if !api
        .shared
        .store
        .create(Collection::Users, &email, doc.clone())
        .await?
    {
        return Err(ApiError::Conflict(format!(
            "A user with the email `{email}` already exists."
        )));
    }
    tracing::info!(user = %email, "User created through the API.");
    Ok(json_reply(StatusCode::CREATED, &shown(doc)))
}

/// `PUT /users/:email`: OpenHIM's partial update: the body's fields replace the stored ones (`null`
/// removes one). A user changing itself without `user-manage` may not change its `groups`.
pub async fn update(
    api: &Api,
    principal: &Principal,
    email: &str,
    body: Value,
) -> Result<Reply, ApiError> {
    let patch = object(body)?;
    let (id, stored) = find(api, email).await?;
    let mut doc = match stored {
        Value::Object(doc) => doc,
        _ => Map::new(),
    };
    if !principal.can(Permission::UserManage)
        && let Some(groups) = patch.get("groups")
        && doc.get("groups") != Some(groups)
    {
        return Err(ApiError::Forbidden {
            reason: format!(
                "The user `{}` may not change its own groups: that needs the permission \
                 `user-manage`.",
                principal.email
            ),
            permission: Some(Permission::UserManage),
        });
    }
    let mut errors = FieldErrors::default();
    if let Some(value) = patch.get("email")
        && let Some(new) = parse_email(value, &mut errors)
        && new != id
    {
        errors.push(
            "email",
            format!("cannot change; this user's email is `{id}`"),
        );
    }
    let password = apply(&mut doc, patch, &mut errors);
    if !errors.is_empty() {
        return Err(invalid(errors));
    }
    doc.insert("email".into(), Value::String(id.clone()));
    if let Some(password) = password {
        doc.insert(
            "passwordHash".into(),
            Value::String(api.auth.hash(password).await?),
        );
    }
    let doc = Value::Object(doc);
    api.shared
        .store
        .put(Collection::Users, &id, doc.clone())
        .await?;
    tracing::info!(user = %id, by = %principal.email, "User updated through the API.");
    Ok(json_reply(StatusCode::OK, &shown(doc)))
}

/// `DELETE /users/:email`.
pub async fn delete(api: &Api, email: &str) -> Result<Reply, ApiError> {
    let (id, _) = find(api, email).await?;
    if id == api.shared.config.api.root_email.to_lowercase() {
        return Err(ApiError::Conflict(format!(
            "`{id}` is the root user (api.root_email), which cannot be deleted."
        )));
    }
    if !api.shared.store.delete(Collection::Users, &id).await? {
        return Err(not_found(&id));
    }
    tracing::info!(user = %id, "User deleted through the API.");
    Ok(json_reply(
        StatusCode::OK,
        &serde_json::json!({"message": format!("Deleted the user `{id}`.")}),
    ))
}

/// Copies `fields` into `doc` (`null` removes a field), checking those Mediary reads; returns the
/// new password, if one was sent. `email` is left to the caller.
fn apply(
    doc: &mut Map<String, Value>,
    fields: Map<String, Value>,
    errors: &mut FieldErrors,
) -> Option<String> {
    let mut password = None;
    for (field, value) in fields {
        let name = field.as_str();
        if SECRETS.contains(&name) {
            errors.push(
                name,
                "is never accepted: send the new password as `password`",
            );
            continue;
        }
        if IGNORED.contains(&name) || name == "email" {
            continue;
        }
        if value.is_null() {
            doc.remove(name);
            continue;
        }
        match name {
            "password" => match value.as_str() {
                Some(p) if p.chars().count() >= MIN_PASSWORD => password = Some(p.to_owned()),
                Some(_) => errors.push(
                    "password",
                    format!("must be at least {MIN_PASSWORD} characters"),
                ),
                None => errors.push("password", "must be a string"),
            },
            "groups" => {
                let before = errors.0.len();
                roles::check_groups(&value, errors);
                if errors.0.len() == before {
                    doc.insert(field, value);
                }
            }
            "firstname" | "surname" | "msisdn" if !value.is_string() => {
                errors.push(name, "must be a string");
            }
            _ => {
                doc.insert(field, value);
            }
        }
    }
    password
}

fn parse_email(value: &Value, errors: &mut FieldErrors) -> Option<String> {
    match value.as_str() {
        Some(email) if email.contains('@') && !email.contains(char::is_whitespace) => {
            Some(email.to_lowercase())
        }
        Some(email) => {
            errors.push("email", format!("`{email}` is not an email address"));
            None
        }
        None => {
            errors.push("email", "must be a string");
            None
        }
    }
}

async fn find(api: &Api, email: &str) -> Result<(String, Value), ApiError> {
    let id = email.to_lowercase();
    let user = api.shared.store.get(Collection::Users, &id).await?;
    user.map(|user| (id.clone(), user))
        .ok_or_else(|| not_found(&id))
}

fn object(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::BadRequest("A user must be a JSON object.".into())),
    }
}

fn invalid(errors: FieldErrors) -> ApiError {
    ApiError::Invalid {
        what: "user",
        errors: errors.0,
    }
}

fn not_found(email: &str) -> ApiError {
    ApiError::NotFound(format!("No user has the email `{email}`."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::roles::{Roles, Via};
    use crate::api::testing;
    use serde_json::json;

    fn principal(email: &str, groups: &[&str]) -> Principal {
        Principal {
            email: email.into(),
            roles: Roles::from_names(groups.iter().copied()),
            via: Via::Basic,
        }
    }

    #[tokio::test]
    async fn users_are_created_without_secrets_shown() {
        let f = testing::api("");
        let body = json!({"email": "Ann@Example.org", "firstname": "Ann", "surname": "A",
            "groups": ["operator"], "password": "long-enough", "_id": "x", "msisdn": "27"});
        let (status, user) = testing::read(create(&f.api, body.clone()).await.unwrap()).await;
        assert_eq!(status, 201);
        assert_eq!(user["email"], "ann@example.org");
        assert!(user.get("passwordHash").is_none() && user.get("password").is_none());
        assert!(user.get("_id").is_none());
        let stored = f
            .api
            .shared
            .store
            .get(Collection::Users, "ann@example.org")
            .await
            .unwrap()
            .unwrap();
        assert!(
            stored["passwordHash"]
                .as_str()
                .unwrap()
                .starts_with("$argon2id$")
        );
        let again = create(&f.api, body).await.unwrap_err();
        assert_eq!(again.status(), StatusCode::CONFLICT);
    }

    #[tokio::test]
    async fn every_bad_field_is_named() {
        let f = testing::api("");
        let error = create(
            &f.api,
            json!({"email": "nope", "groups": ["admin", "boss"], "password": "short",
                "passwordHash": "$argon2id$…"}),
        )
        .await
        .unwrap_err();
        let ApiError::Invalid { errors, .. } = error else {
            panic!("{error:?}");
        };
        let mut fields: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "email",
                "firstname",
                "groups[1]",
                "password",
                "passwordHash",
                "surname"
            ]
        );
    }

    #[tokio::test]
    async fn users_change_themselves_but_not_their_groups() {
        let f = testing::api("");
        create(
            &f.api,
            json!({"email": "op@example.org", "firstname": "O", "surname": "P",
                "groups": ["operator"]}),
        )
        .await
        .unwrap();
        let me = principal("op@example.org", &["operator"]);
        let (status, user) = testing::read(
            update(
                &f.api,
                &me,
                "op@example.org",
                json!({"firstname": "Otto", "groups": ["operator"], "msisdn": null}),
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!((status, &user["firstname"]), (200, &json!("Otto")));
        let error = update(&f.api, &me, "op@example.org", json!({"groups": ["admin"]}))
            .await
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::FORBIDDEN);
        assert!(error.to_string().contains("user-manage"), "{error}");
        let admin = principal("root@openhim.org", &["admin"]);
        let (_, user) = testing::read(
            update(
                &f.api,
                &admin,
                "OP@example.org",
                json!({"groups": ["manager"]}),
            )
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(user["groups"], json!(["manager"]));
        let error = update(&f.api, &admin, "op@example.org", json!({"email": "x@y"}))
            .await
            .unwrap_err();
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn the_root_user_cannot_be_deleted() {
        let f = testing::api("[api]\nroot_password = \"root-password\"\n");
        crate::api::ensure_root_user(&f.api.shared).await.unwrap();
        let error = delete(&f.api, "Root@OpenHIM.org").await.unwrap_err();
        assert_eq!(error.status(), StatusCode::CONFLICT);
        let error = delete(&f.api, "nobody@example.org").await.unwrap_err();
        assert_eq!(error.status(), StatusCode::NOT_FOUND);
    }
}
