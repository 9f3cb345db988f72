//! {{name}}: a Mediary channel plugin (world `{{world}}` of `wit/plugin.wit`).
//!
//! Refuses requests without the `requireHeader` header (default `x-request-id`) with 400, sends
//! requests whose path starts with a `routes` prefix to that route (the longest prefix wins), and
//! lets every other request follow the channel's own routes.

wit_bindgen::generate!({
    path: "wit",
    world: "{{world}}",
});

use mediary::plugin::types::{Action, Forward, Rejection, Request, Target};
use mediary::plugin::{config, log};

/// The plugin's settings (the channel's `plugin.config`).
struct Settings {
    /// The header every request must carry.
    require_header: String,
    /// Path prefix → route name.
    routes: Vec<(String, String)>,
}

impl Settings {
    fn load() -> Settings {
        let require_header = config::get("requireHeader")
            .and_then(|text| serde_json::from_str::<String>(&text).ok())
            .unwrap_or_else(|| "x-request-id".to_owned());
        let routes = config::get("routes")
            .and_then(|text| {
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text).ok()
            })
            .map(|map| {
                map.into_iter()
                    .filter_map(|(prefix, route)| Some((prefix, route.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        Settings {
            require_header: require_header.to_ascii_lowercase(),
            routes,
        }
    }
}

/// What to do with a request whose path and header names are given: the plugin's whole logic,
/// kept free of host calls so it can be unit-tested natively.
fn decide(settings: &Settings, path: &str, header_names: &[&str]) -> Action {
    if !header_names
        .iter()
        .any(|name| name.eq_ignore_ascii_case(&settings.require_header))
    {
        return Action::Reject(Rejection {
            status: 400,
            reason: format!("the request has no {} header", settings.require_header),
        });
    }
    let best = settings
        .routes
        .iter()
        .filter(|(prefix, _)| path.starts_with(prefix.as_str()))
        .max_by_key(|(prefix, _)| prefix.len());
    let target = match best {
        Some((_, route)) => Target::Route(route.clone()),
        None => Target::ChannelRoutes,
    };
    Action::Forward(Forward {
        target,
        rewrite: None,
    })
}

struct Plugin;

impl exports::mediary::plugin::router::Guest for Plugin {
    fn on_request(request: Request) -> Action {
        let names: Vec<&str> = request
            .headers
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        let action = decide(&Settings::load(), &request.path, &names);
        let decision = match &action {
            Action::Forward(Forward {
                target: Target::Route(route),
                ..
            }) => route.clone(),
            Action::Forward(_) => "channel-routes".to_owned(),
            Action::Reject(rejection) => format!("reject {}", rejection.status),
            Action::Respond(response) => format!("respond {}", response.status),
        };
        log::log(
            log::Level::Info,
            "Decided.",
            &[
                ("path".to_owned(), request.path.clone()),
                ("decision".to_owned(), decision),
            ],
        );
        action
    }
}
{{rust_transformer}}
export!(Plugin);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            require_header: "x-request-id".into(),
            routes: vec![
                ("/fhir/".into(), "fhir".into()),
                ("/fhir/Patient/".into(), "patients".into()),
            ],
        }
    }

    #[test]
    fn the_longest_prefix_wins() {
        let action = decide(&settings(), "/fhir/Patient/1", &["x-request-id"]);
        assert!(
            matches!(action, Action::Forward(Forward { target: Target::Route(r), .. }) if r == "patients")
        );
        let action = decide(&settings(), "/other", &["X-Request-Id"]);
        assert!(matches!(
            action,
            Action::Forward(Forward {
                target: Target::ChannelRoutes,
                ..
            })
        ));
    }

    #[test]
    fn requests_without_the_header_are_refused() {
        let action = decide(&settings(), "/fhir/Patient/1", &[]);
        assert!(matches!(
            action,
            Action::Reject(Rejection { status: 400, .. })
        ));
    }
}
