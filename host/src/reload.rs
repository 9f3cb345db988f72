//! Keeping the live channel table (and the client directory) in step with the store.
//!
//! At start, the channels of the config file are upserted into the store by name (a new one under
//! an id derived from its name, so instances starting together save it once), so a file-based
//! deployment and an API-managed one end in the same place. From then on the store is the truth: a
//! task rebuilds the table whenever the store's configuration generation changes (the store wakes it)
//! and, as a safety net for missed notifications, checks the generation every few seconds. A rebuilt
//! table replaces the old one atomically; requests already matched keep the channel they matched.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::Shared;
use crate::channel::{Channel, ChannelTable};
use crate::config::fields::FieldErrors;
use crate::store::{Collection, Store};

/// How often the generation is checked even without a notification.
const SAFETY_NET: Duration = Duration::from_secs(5);

/// Upserts the config file's channels into the store, by name. A stored channel whose document is
/// already the same is left alone (its generation does not move).
pub async fn upsert_config_channels(store: &dyn Store, documents: &[Value]) -> anyhow::Result<()> {
    let stored = store.list(Collection::Channels).await?;
    for document in documents {
        let Some(name) = document.get("name").and_then(Value::as_str) else {
            continue;
        };
        let existing = stored
            .iter()
            .find(|(_, d)| d.get("name").and_then(Value::as_str) == Some(name));
        let id = match existing {
            Some((id, current)) => {
                if without_id(current) == without_id(document) {
                    continue;
                }
                id.clone()
            }
            None => config_channel_id(name).to_string(),
        };
        let mut document = document.clone();
        if let Value::Object(map) = &mut document {
            map.insert("_id".into(), Value::String(id.clone()));
        }
        store.put(Collection::Channels, &id, document).await?;
        tracing::info!(channel = name, id = %id, "Channel from the config file saved to the store.");
    }
    Ok(())
}

/// The id a config file's channel gets when it is first saved: derived from its name, so that
/// several instances starting at once with the same file (sharing a store) save one channel, not
/// one each.
fn config_channel_id(name: &str) -> uuid::Uuid {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(format!("mediary config channel\0{name}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::new_v8(bytes)
}

fn without_id(document: &Value) -> Value {
    let mut document = document.clone();
    if let Value::Object(map) = &mut document {
        map.remove("_id");
    }
    document
}

/// Builds the channel table from the store's documents and installs it. A stored document that no
/// longer validates (written by a newer version, or by hand) is skipped with an error in the log.
pub async fn load(shared: &Shared) -> anyhow::Result<usize> {
    let documents = shared.store.list(Collection::Channels).await?;
    let mut channels = Vec::with_capacity(documents.len());
    for (id, document) in documents {
        let mut errors = FieldErrors::default();
        match Channel::parse(format!("channels/{id}"), &document, &mut errors) {
            Some(mut channel) => {
                channel.id = Arc::from(id.as_str());
                channel.metrics = shared.metrics.channel(&channel.id, &channel.name);
                channels.push(channel);
            }
            None => {
                let problems: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
                tracing::error!(channel = %id, problems = %problems.join("; "), "A stored channel is invalid; it is not served.");
            }
        }
    }
    for channel in &mut channels {
        let Some(spec) = channel.plugin.clone() else {
            continue;
        };
        let bound = match shared.plugins.bind(channel, &spec).await {
            Ok(bound) => Ok(bound),
            Err(reason) => match shared.plugins.previous(&channel.id) {
                // Keep what worked (a file half-written, the store briefly away) rather than fail.
                Some(previous) if previous.spec.source == spec.source => {
                    tracing::warn!(channel = %channel.name, %reason, plugin = %previous.run.name, sha256 = %previous.run.sha256, "Could not load the channel's plugin; keeping the one it had.");
                    Ok(previous)
                }
                _ => {
                    tracing::error!(channel = %channel.name, %reason, "Could not load the channel's plugin; its requests fail (or bypass it) until it loads.");
                    Err(reason)
                }
            },
        };
        if let Ok(bound) = &bound {
            tracing::debug!(channel = %channel.name, plugin = %bound.run.name, version = ?bound.run.version, sha256 = %bound.run.sha256, "Channel plugin bound.");
        }
        channel.bound_plugin = Some(bound);
    }
    // Clients change more rarely than they are read on every request: rebuilding them with the
    // channels, on any configuration change, keeps one rule for when the proxy's view is current.
    let clients = crate::client::ClientDirectory::load(&*shared.store).await?;
    shared.clients.store(Arc::new(clients));
    let ids: Vec<&str> = channels.iter().map(|c| &*c.id).collect();
    shared.plugins.retain_channels(&ids);
    let count = channels.len();
    shared.channels.store(Arc::new(ChannelTable::new(channels)));
    Ok(count)
}

/// Reads the configuration generation, then builds the table (so the generation it reports as
/// applied is never newer than what the table holds), and records it as applied.
pub async fn load_generation(shared: &Shared) -> anyhow::Result<(u64, usize)> {
    let generation = shared.store.generation().await?;
    let count = load(shared).await?;
    // Stored, not maxed: after a Redis failover the generation can go back.
    shared
        .applied_generation
        .store(generation, std::sync::atomic::Ordering::Release);
    Ok((generation, count))
}

/// Reloads the table whenever a watched plugin file (`plugin.file`) changes, until `stop`.
pub async fn watch_plugin_files(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let interval = shared.config.plugins.watch_interval;
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(interval) => {}
        }
        if !shared.plugins.files_changed() {
            continue;
        }
        match load(&shared).await {
            Ok(_) => tracing::info!("A plugin file changed; channels reloaded."),
            Err(error) => {
                tracing::warn!(%error, "Reloading channels after a plugin file changed failed.");
            }
        }
    }
}

/// Reloads the table whenever the store's generation moves, until `stop`.
pub async fn follow(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut changes = shared.store.subscribe();
    // Look once at once: a write between the first load and this subscription (the root user
    // created at start, another instance's change) would otherwise wait for the safety net.
    changes.mark_changed();
    let mut applied = shared
        .applied_generation
        .load(std::sync::atomic::Ordering::Acquire);
    loop {
        let lost = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            changed = changes.changed() => changed.is_err(),
            _ = tokio::time::sleep(SAFETY_NET) => false,
        };
        if lost {
            // The store dropped its sender: fall back to polling.
            tokio::time::sleep(SAFETY_NET).await;
        }
        match shared.store.generation().await {
            Ok(generation) if generation == applied => continue,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, "Cannot read the configuration generation; keeping the current channels.");
                continue;
            }
        }
        match load_generation(&shared).await {
            Ok((generation, count)) => {
                applied = generation;
                tracing::info!(generation, channels = count, "Channels reloaded.");
            }
            Err(error) => {
                tracing::warn!(%error, "Reloading channels failed; keeping the current ones.");
            }
        }
    }
}
