//! Instances that share a store see each other: every instance writes a heartbeat (its name, and
//! the configuration generation its channel table was built from) every `cluster.heartbeat_interval`,
//! and `GET /cluster` lists the live ones, so an operator can see a change reach every instance.
//!
//! An instance's name (`server.instance`) is what marks its transactions, and at start it marks
//! its own unfinished ones as interrupted, so two live instances must never share one. At start,
//! [`claim_name`] waits for a heartbeat under the same name to lapse (the same instance, killed
//! and restarted at once) and refuses to start if it keeps being renewed (another instance).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::watch;

use crate::Shared;
use crate::config::Config;
use crate::store::{InstanceBeat, Store};
use crate::transaction::Timestamp;

/// What this process tells the others about itself.
#[derive(Debug, Clone)]
pub struct Identity {
    pub instance: String,
    /// Random per process run.
    pub run_id: String,
    pub started: u64,
    pub workers: usize,
    pub proxy: SocketAddr,
    pub api: SocketAddr,
}

impl Identity {
    pub fn new(shared: &Shared, workers: usize, proxy: SocketAddr, api: SocketAddr) -> Identity {
        Identity {
            instance: shared.config.server.instance.clone(),
            run_id: shared.run_id.clone(),
            started: Timestamp::now().0,
            workers,
            proxy,
            api,
        }
    }

    /// A heartbeat saying that this instance runs `generation`.
    pub fn beat(&self, generation: u64) -> InstanceBeat {
        InstanceBeat {
            instance: self.instance.clone(),
            run_id: self.run_id.clone(),
            started: self.started,
            heartbeat: Timestamp::now().0,
            generation,
            workers: self.workers,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            proxy: self.proxy.to_string(),
            api: self.api.to_string(),
        }
    }
}

/// Makes sure no other live instance uses this one's name, then writes its first heartbeat.
///
/// A heartbeat under the same name from another run is waited out for up to `instance_ttl` (plus
/// one heartbeat interval): if it lapses, that instance is gone (this is it, restarted); if it is
/// renewed meanwhile, another live instance has the name, and starting would mark its in-flight
/// transactions as interrupted, so this fails.
pub async fn claim_name(store: &dyn Store, config: &Config, me: &Identity) -> anyhow::Result<()> {
    let cluster = &config.cluster;
    let deadline = Instant::now() + cluster.instance_ttl + cluster.heartbeat_interval;
    let mut seen: Option<u64> = None;
    loop {
        let other = store
            .instances()
            .await?
            .into_iter()
            .find(|beat| beat.instance == me.instance && beat.run_id != me.run_id);
        let Some(other) = other else {
            break;
        };
        match seen {
            Some(at) if other.heartbeat > at => bail!(
                "another live instance is named {:?} (its API is at {}, its last heartbeat {} ms \
                 ago): give each instance its own server.instance",
                me.instance,
                other.api,
                Timestamp::now().0.saturating_sub(other.heartbeat)
            ),
            Some(_) => {}
            None => {
                tracing::info!(
                    instance = %me.instance,
                    previous_api = %other.api,
                    "A heartbeat under this instance's name is still live; waiting for it to lapse \
                     (a previous run that did not stop cleanly)."
                );
                seen = Some(other.heartbeat);
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "the heartbeat of another run named {:?} did not lapse within {:?}",
                me.instance,
                cluster.instance_ttl
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    store.heartbeat(&me.beat(0), cluster.instance_ttl).await?;
    Ok(())
}

/// Writes this instance's heartbeat every `cluster.heartbeat_interval` until `stop`, then removes
/// it (a clean shutdown leaves the cluster at once rather than after `instance_ttl`).
pub async fn heartbeats(shared: Arc<Shared>, me: Identity, mut stop: watch::Receiver<bool>) {
    let cluster = shared.config.cluster.clone();
    let mut failing = false;
    loop {
        let generation = shared.applied_generation.load(Ordering::Acquire);
        match shared
            .store
            .heartbeat(&me.beat(generation), cluster.instance_ttl)
            .await
        {
            Ok(()) if failing => {
                failing = false;
                tracing::info!("Heartbeats reach the store again.");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "Cannot write this instance's heartbeat; other instances will not list it until the store answers.");
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(cluster.heartbeat_interval) => {}
        }
    }
    if let Err(error) = shared.store.leave(&me.instance, &me.run_id).await {
        tracing::debug!(%error, "Could not remove this instance's heartbeat at shutdown.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    #[tokio::test]
    async fn a_lapsed_heartbeat_is_waited_out_and_a_renewed_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::parse(
            "[server]\ninstance = \"m1\"\n[cluster]\nheartbeat_interval = \"100ms\"\ninstance_ttl = \"300ms\"",
        )
        .unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let shared = &Shared::new(config, store, 1).unwrap();
        let store = &*shared.store;
        let addr = "127.0.0.1:1".parse().unwrap();
        let me = Identity::new(shared, 1, addr, addr);
        let mut previous = me.beat(0);
        previous.run_id = "killed-run".into();
        let ttl = shared.config.cluster.instance_ttl;

        // A previous run that stopped beating: waited out.
        store.heartbeat(&previous, ttl).await.unwrap();
        let began = Instant::now();
        claim_name(store, &shared.config, &me).await.unwrap();
        assert!(began.elapsed() >= Duration::from_millis(200));
        assert_eq!(store.instances().await.unwrap()[0].run_id, me.run_id);

        // Another live instance under the same name: refused.
        let other = Identity {
            run_id: "second".into(),
            ..me.clone()
        };
        let beating = {
            let store = Arc::clone(&shared.store);
            let me = me.clone();
            tokio::spawn(async move {
                loop {
                    store.heartbeat(&me.beat(0), ttl).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let error = claim_name(store, &shared.config, &other).await.unwrap_err();
        beating.abort();
        assert!(
            error
                .to_string()
                .contains("another live instance is named \"m1\""),
            "{error}"
        );
    }
}
