//! Worker threads: N OS threads, each pinned to one core and running its own current-thread tokio
//! runtime, each accepting on its own SO_REUSEPORT socket bound to the same port, so the kernel spreads
//! connections and a request never moves between threads.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio_util::task::TaskTracker;

use std::sync::atomic::Ordering;

use crate::config::Config;
use crate::proxy::Proxy;
use crate::proxy::conn::{self, ConnSettings};
use crate::recorder::{self, spool::Spool};
use crate::store::Store;
use crate::tls::TlsServer;
use crate::{Shared, api, cluster, reload, retention};

/// The sockets Mediary serves on, bound before it starts: one proxy socket per worker, all on the
/// same address, and the management API's; with TLS, one HTTPS proxy socket per worker too.
#[derive(Debug)]
pub struct Listeners {
    pub proxy: Vec<std::net::TcpListener>,
    pub api: std::net::TcpListener,
    /// The HTTPS proxy sockets (one per worker), or none: see [`Listeners::with_https`].
    pub https: Vec<std::net::TcpListener>,
}

impl Listeners {
    /// Binds one SO_REUSEPORT socket per worker on `addr`, and the API on `api`. With port 0 the first
    /// proxy socket picks a free port and the others join it.
    ///
    /// SO_REUSEPORT would also let this process join a port that another process (of the same user)
    /// already serves with it, silently splitting the traffic between the two; so a named port is
    /// first bound once without it, which fails if anyone already listens there.
    pub fn bind(addr: SocketAddr, api: SocketAddr, workers: usize) -> io::Result<Listeners> {
        if addr.port() != 0 {
            drop(std::net::TcpListener::bind(addr)?);
        }
        let first = reuseport_listener(addr)?;
        let addr = first.local_addr()?;
        let mut proxy = vec![first];
        for _ in 1..workers {
            proxy.push(reuseport_listener(addr)?);
        }
        let api = std::net::TcpListener::bind(api)
            .map_err(|e| io::Error::new(e.kind(), format!("the API address {api}: {e}")))?;
        api.set_nonblocking(true)?;
        Ok(Listeners {
            proxy,
            api,
            https: Vec::new(),
        })
    }

    /// Adds one SO_REUSEPORT HTTPS socket per worker on `addr` (served when `[tls]` has a
    /// certificate), with the same care as [`Listeners::bind`].
    pub fn with_https(mut self, addr: SocketAddr) -> io::Result<Listeners> {
        if addr.port() != 0 {
            drop(std::net::TcpListener::bind(addr)?);
        }
        let first = reuseport_listener(addr)?;
        let addr = first.local_addr()?;
        let mut https = vec![first];
        for _ in 1..self.proxy.len() {
            https.push(reuseport_listener(addr)?);
        }
        self.https = https;
        Ok(self)
    }

    /// The address the HTTPS proxy listens on, if it does.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.first().and_then(|l| l.local_addr().ok())
    }

    /// The address the proxy listens on.
    pub fn proxy_addr(&self) -> io::Result<SocketAddr> {
        self.proxy
            .first()
            .ok_or_else(|| io::Error::other("no proxy listener"))?
            .local_addr()
    }
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Runs Mediary on `listeners` until `shutdown` completes, then stops accepting, lets in-flight
/// requests finish for up to the drain timeout, writes every spooled record to the store, and returns.
///
/// Start-up order matters: the store opens, the spool left by a previous run is replayed and its
/// unfinished transactions marked interrupted, the config file's channels are saved to the store and
/// the channel table built from it; only then do the workers accept.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let addr = listeners.proxy_addr()?;
    let api_addr = listeners.api.local_addr()?;
    let workers = listeners.proxy.len();
    let https_addr = listeners.https_addr();
    let data_dir = config.store.data_dir.clone();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let store: Arc<dyn Store> = crate::store::open(&config.store).await?;
    let spool_dir = recorder::prepare(&data_dir)
        .with_context(|| format!("creating the spool folder in {}", data_dir.display()))?;
    let recording = config.recording.clone();
    let shared = Arc::new(Shared::new(config, Arc::clone(&store), workers)?);
    match (&shared.tls, https_addr) {
        (None, Some(_)) => anyhow::bail!("HTTPS listeners were given but [tls] has no cert_file"),
        (Some(_), None) => {
            tracing::warn!(
                "[tls] is set but no HTTPS listener was bound; the proxy serves HTTP only."
            );
        }
        _ => {}
    }
    if listeners.https.len() > 1 && listeners.https.len() != workers {
        anyhow::bail!("one HTTPS listener per worker is needed");
    }
    let me = cluster::Identity::new(&shared, workers, addr, api_addr);
    cluster::claim_name(&*store, &shared.config, &me)
        .await
        .context("claiming this instance's name in the cluster")?;
    let recovery = recorder::recover(&spool_dir, &*store, &shared.config.server.instance)
        .await
        .context("replaying the transaction spool")?;
    if recovery.files > 0 || recovery.interrupted > 0 {
        tracing::info!(
            files = recovery.files,
            records = recovery.records,
            interrupted = recovery.interrupted,
            "Replayed the spool of the previous run."
        );
    }
    reload::upsert_config_channels(&*store, &shared.config.channel_documents)
        .await
        .context("saving the config file's channels to the store")?;
    reload::load_generation(&shared)
        .await
        .context("loading channels")?;
    api::ensure_root_user(&shared)
        .await
        .context("creating the root user")?;

    // One spool per worker, and one for the API's reruns.
    let spools: Vec<Arc<Spool>> = if recording.enabled {
        (0..=workers)
            .map(|worker| {
                Spool::create(
                    &spool_dir,
                    worker,
                    0,
                    recording.segment_size,
                    recording.fsync_before_respond,
                )
            })
            .collect::<io::Result<_>>()
            .context("creating the spool files")?
    } else {
        Vec::new()
    };

    let (stop, stopped) = watch::channel(false);
    let (stop_recorder, recorder_stopped) = watch::channel(false);
    let drainer = if recording.enabled {
        Some(recorder::start_drainer(
            spools.clone(),
            Arc::clone(&shared),
            recorder_stopped,
        )?)
    } else {
        None
    };
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut threads: Vec<(JoinHandle<()>, oneshot::Receiver<()>)> = Vec::with_capacity(workers);
    let mut https = listeners.https.into_iter();
    for (index, listener) in listeners.proxy.into_iter().enumerate() {
        let https = https.next();
        let core = (!cores.is_empty()).then(|| cores[index % cores.len()]);
        let (ready, is_ready) = oneshot::channel();
        let worker = Worker {
            index,
            core,
            shared: Arc::clone(&shared),
            spool: spools.get(index).cloned(),
            stop: stopped.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("mediary-w{index}"))
            .spawn(move || worker.run(listener, https, ready))
            .context("starting a worker thread")?;
        threads.push((thread, is_ready));
    }
    let mut done = Vec::with_capacity(workers);
    for (thread, ready) in threads {
        if ready.await.is_err() {
            let _ = stop.send(true);
            anyhow::bail!("a worker failed to start; see the log above");
        }
        done.push(thread);
    }

    // The API, the channel follower and the retention job run on this thread's runtime.
    let api_spool = spools.get(workers).cloned();
    if let Some(spool) = &api_spool {
        tokio::spawn(Arc::clone(spool).run_flusher(stopped.clone()));
    }
    let api_proxy = Arc::new(Proxy::new(Arc::clone(&shared), workers, api_spool.clone()));
    let api_task = tokio::spawn(api::serve(
        listeners.api,
        Arc::clone(&shared),
        api_proxy,
        stopped.clone(),
    ));
    let follower = tokio::spawn(reload::follow(Arc::clone(&shared), stopped.clone()));
    let retention = tokio::spawn(retention::run(Arc::clone(&shared), stopped.clone()));
    let heartbeats = tokio::spawn(cluster::heartbeats(
        Arc::clone(&shared),
        me,
        stopped.clone(),
    ));
    let plugin_files = tokio::spawn(reload::watch_plugin_files(
        Arc::clone(&shared),
        stopped.clone(),
    ));
    let tls_files = shared
        .tls
        .clone()
        .map(|tls| tokio::spawn(tls.watch(stopped.clone())));

    shared.ready.store(true, Ordering::Release);
    match https_addr {
        Some(https) => tracing::info!(%addr, %https, api = %api_addr, workers, "Mediary is ready."),
        None => tracing::info!(%addr, api = %api_addr, workers, "Mediary is ready."),
    }

    shutdown.await;
    shared.ready.store(false, Ordering::Release);
    tracing::info!(
        drain = ?shared.config.timeouts.shutdown_drain,
        "Shutting down: no new connections; finishing in-flight requests."
    );
    let _ = stop.send(true);
    tokio::task::spawn_blocking(move || {
        for thread in done {
            let _ = thread.join();
        }
    })
    .await?;
    let _ = api_task.await;
    let _ = heartbeats.await;
    follower.abort();
    retention.abort();
    plugin_files.abort();
    if let Some(tls_files) = tls_files {
        tls_files.abort();
    }
    if let Some(spool) = &api_spool {
        spool.flush_now();
    }
    if let Some(drainer) = drainer {
        let _ = stop_recorder.send(true);
        tokio::task::spawn_blocking(move || drainer.join())
            .await?
            .ok();
    }
    tracing::info!("Mediary stopped.");
    Ok(())
}

/// One worker thread's share of the work.
struct Worker {
    index: usize,
    core: Option<core_affinity::CoreId>,
    shared: Arc<Shared>,
    /// This worker's spool; `None` when recording is off.
    spool: Option<Arc<Spool>>,
    stop: watch::Receiver<bool>,
}

impl Worker {
    fn run(
        self,
        listener: std::net::TcpListener,
        https: Option<std::net::TcpListener>,
        ready: oneshot::Sender<()>,
    ) {
        let index = self.index;
        match self.core {
            Some(core) if core_affinity::set_for_current(core) => {
                tracing::info!(worker = index, core = core.id, "Worker pinned to core.");
            }
            Some(core) => {
                tracing::warn!(
                    worker = index,
                    core = core.id,
                    "Could not pin worker to core; running unpinned."
                );
            }
            None => tracing::warn!(worker = index, "Cores unknown; worker runs unpinned."),
        }
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(worker = index, %error, "Could not start the worker's runtime.");
                return;
            }
        };
        runtime.block_on(self.serve(listener, https, ready));
    }

    async fn serve(
        self,
        listener: std::net::TcpListener,
        https: Option<std::net::TcpListener>,
        ready: oneshot::Sender<()>,
    ) {
        let Worker {
            index,
            shared,
            spool,
            mut stop,
            ..
        } = self;
        let listener = match TcpListener::from_std(listener) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(worker = index, %error, "Could not register the listener.");
                return;
            }
        };
        let https = match (https.map(TcpListener::from_std).transpose(), &shared.tls) {
            (Ok(Some(https)), Some(tls)) => Some((https, Arc::clone(tls))),
            (Ok(_), _) => None,
            (Err(error), _) => {
                tracing::error!(worker = index, %error, "Could not register the HTTPS listener.");
                return;
            }
        };
        let config = &shared.config;
        let settings = Arc::new(ConnSettings {
            header_read: config.timeouts.client_header_read,
            idle: config.timeouts.idle_keep_alive,
            max_head: config.limits.max_request_head,
            max_headers: config.limits.max_request_headers,
        });
        let drain = config.timeouts.shutdown_drain;
        if let Some(spool) = &spool {
            tokio::spawn(Arc::clone(spool).run_flusher(stop.clone()));
        }
        let proxy = Arc::new(Proxy::new(Arc::clone(&shared), index, spool.clone()));
        let connections = TaskTracker::new();
        let sweeper = {
            let upstreams = Arc::clone(proxy.upstreams());
            let every =
                (config.upstream.pool_idle_timeout / 2).max(std::time::Duration::from_secs(1));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    upstreams.sweep();
                }
            })
        };
        let _ = ready.send(());
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, remote)) => {
                        let _ = stream.set_nodelay(true);
                        connections.spawn(conn::serve(
                            stream,
                            remote,
                            Arc::clone(&proxy),
                            Arc::clone(&settings),
                            stop.clone(),
                        ));
                    }
                    Err(error) => {
                        // Out of file descriptors or similar: back off instead of spinning.
                        tracing::warn!(worker = index, %error, "Accept failed.");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                accepted = accept_https(&https) => match accepted {
                    Ok((stream, remote, tls)) => {
                        let _ = stream.set_nodelay(true);
                        connections.spawn(conn::serve_tls(
                            stream,
                            remote,
                            tls,
                            Arc::clone(&proxy),
                            Arc::clone(&settings),
                            stop.clone(),
                        ));
                    }
                    Err(error) => {
                        tracing::warn!(worker = index, %error, "HTTPS accept failed.");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        drop(https);
        sweeper.abort();
        connections.close();
        let open = connections.len();
        let deadline = tokio::time::Instant::now() + drain;
        if tokio::time::timeout_at(deadline, connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                worker = index,
                open = connections.len(),
                "Drain timeout reached; closing the remaining connections."
            );
        } else {
            tracing::debug!(worker = index, drained = open, "Worker drained.");
        }
        // Secondary routes still running get the rest of the drain time, so their results are
        // recorded; past it, the next start marks them interrupted.
        let background = proxy.background();
        background.close();
        if tokio::time::timeout_at(deadline, background.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                worker = index,
                running = background.len(),
                "Drain timeout reached with secondary routes still running."
            );
        }
        // The flusher task stops with this runtime; whatever late responses appended goes out now.
        if let Some(spool) = &spool {
            spool.flush_now();
        }
    }
}

/// The next connection on the HTTPS listener, with the TLS server to handshake with; never
/// resolves when there is no HTTPS listener.
async fn accept_https(
    https: &Option<(TcpListener, Arc<TlsServer>)>,
) -> io::Result<(tokio::net::TcpStream, SocketAddr, Arc<TlsServer>)> {
    match https {
        Some((listener, tls)) => {
            let (stream, remote) = listener.accept().await?;
            Ok((stream, remote, Arc::clone(tls)))
        }
        None => std::future::pending().await,
    }
}
