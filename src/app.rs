//! The application: binds the listener, registers every route, and runs the
//! server beside the start-up reconcile until a stop signal drains it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::dev::{Server, Service, ServiceRequest};
use actix_web::http::ConnectionType;
use actix_web::middleware::{ErrorHandlers, Logger, Next, from_fn};
use actix_web::{App, HttpServer, web};

use crate::companion::auth::{ApiKey, KeySource};
use crate::companion::{Companion, Reporting};
use crate::config::Settings;
use crate::control::{Access, ControlSocket, Open};
use crate::docker::Engine;
use crate::handover::{Deps, Orchestrator};
use crate::recreate::journal::Swaps;
use crate::recreate::upgrade::registry_client;
use crate::routes::{self, AppState, companion, events, handover, hooks, info, pause, status, upgrade};
use crate::state::{Shared, TakeoverPhase};
use crate::watch::containers::ContainerWatch;

/// The largest body `/echo` accepts.
pub const ECHO_LIMIT: usize = 64 * 1024;

/// How long a stopping instance waits for its notifications still under way.
const NOTIFY_FLUSH: Duration = Duration::from_secs(5);

/// How long an elder that lingered out may take to leave its networks
/// before it drains anyway.
const LEAVE_NETWORKS: Duration = Duration::from_secs(3);

/// How long a live instance that stops still accepts what was queued on
/// its live socket before the name went.
const ACCEPT_QUEUED: Duration = Duration::from_millis(100);

/// A bound, not yet running, selfup server.
pub struct Application {
    port: u16,
    server: Server,
    orchestrator: Arc<Orchestrator>,
    companion: Option<Arc<Companion>>,
    /// Connections open on the live socket now (nginx's, pooled or busy).
    live_open: Arc<AtomicUsize>,
}

impl Application {
    /// Binds `bind:port` and builds the server and the orchestrator.
    /// Must be called on the main (multi-threaded) Tokio runtime.
    pub fn build(settings: Settings) -> std::io::Result<Application> {
        let settings = Arc::new(settings);
        let engine = Arc::new(Engine::new(settings.docker_socket.clone()));
        // The data directory is a volume every generation mounts: the history
        // and the record of finished takeovers live there.
        let shared = Arc::new(match settings.data_dir.is_dir() {
            true => Shared::with_data_dir(&settings.data_dir),
            false => Shared::default(),
        });
        let self_id = crate::identity::own_container_id();
        if settings.handover_token.is_some()
            && settings.handover_elder.is_some()
            && !self_id.as_deref().is_some_and(|me| shared.takeover_done(me))
        {
            // Before the first request: the elder's go-ahead may come at once.
            shared.set_takeover(TakeoverPhase::WaitingForGo);
        }
        let swaps = open_swaps(&settings);
        let notifier = crate::notify::Notifier::new(&settings.notify_urls).map(Arc::new);
        let reporting = Reporting {
            shared: shared.clone(),
            notifier: notifier.clone(),
        };
        let companion = build_companion(&settings, &engine, &self_id, &swaps, reporting)?;
        let apps = companion
            .as_ref()
            .and_then(|c| c.fronts())
            .map(|f| f as Arc<dyn crate::control::Publish>);
        let deps = Deps::new(settings.clone(), engine, shared, self_id);
        let orchestrator = Arc::new(Orchestrator::new(deps, swaps, notifier, apps));

        let listener = TcpListener::bind((settings.bind, settings.port))
            .map_err(|e| std::io::Error::new(e.kind(), format!("binding {}:{}: {e}", settings.bind, settings.port)))?;
        let port = listener.local_addr()?.port();
        // On a private network every instance also answers on the service
        // port at its own address, so a name and that port reach whichever
        // instance is live.
        let service = match settings.service_port {
            0 => None,
            service_port => Some(TcpListener::bind((settings.bind, service_port)).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "binding the service port {}:{service_port}: {e} (service_port is for private networks, where each instance has its own address; leave it unset with host networking)",
                        settings.bind
                    ),
                )
            })?),
        };
        // After the port: an instance that cannot have the port never
        // touches the socket of the one that has it.
        let control = bind_socket(&settings.control_socket, port, Access::Root);
        // nginx's deploy server passes the companion's /update and the
        // registry hook to the update socket.
        let update = match settings.companion || settings.hook_token.is_some() {
            true => bind_socket(&settings.update_socket, port, Access::Anyone),
            false => None,
        };
        let live = bind_socket(&settings.live_socket, port, Access::Anyone);
        // Where each socket's connections arrive (their local address), to
        // mark them: nothing on the update or the live socket is an operator's.
        let staged = |bound: &Option<(ControlSocket, _)>| bound.as_ref().map(|(s, _)| s.staged().to_path_buf());
        let arrivals = Arrivals {
            control: staged(&control),
            update: staged(&update),
        };
        let lingering = orchestrator.shared.clone();
        let state = AppState::new(
            orchestrator.clone(),
            companion.clone(),
            tokio::runtime::Handle::current(),
        );
        let metrics = orchestrator.shared.clone();
        // A held request waits at most a little longer than a pause lasts.
        let hold = settings.hold() + Duration::from_secs(1);
        let live_open = Arc::new(AtomicUsize::new(0));
        let counted = live_open.clone();
        let mut server = HttpServer::new(move || {
            let lingering = lingering.clone();
            let metrics = metrics.clone();
            let paused = metrics.clone();
            App::new()
                .wrap_fn(move |req, srv| {
                    let answer = srv.call(req);
                    let lingering = lingering.clone();
                    async move {
                        let mut res = answer.await?;
                        // Taken over from: nginx's pooled connections to this
                        // instance close with their next answer.
                        if lingering.lingering.load(Ordering::Relaxed) {
                            res.response_mut().head_mut().set_connection_type(ConnectionType::Close);
                        }
                        Ok(res)
                    }
                })
                .wrap(ErrorHandlers::new().default_handler_client(routes::json_error_body))
                .wrap(Logger::new("%a \"%r\" %s %b %Dms").exclude("/health"))
                .wrap_fn(move |req, srv| {
                    let public = routes::Listener::of(req.request()) == routes::Listener::Live;
                    let answered = srv.call(req);
                    let metrics = metrics.clone();
                    async move {
                        let res = answered.await;
                        // What an elder baking this instance judges it by:
                        // public answers, `/health` left out.
                        match &res {
                            Ok(res) => metrics.metrics.answered_on(public, res.response()),
                            Err(e) => {
                                let status = e.as_response_error().status_code();
                                metrics.metrics.answered(status);
                                if public {
                                    metrics.metrics.public_answered(status);
                                }
                            }
                        }
                        res
                    }
                })
                // Outermost: a public request waits out a pause before
                // anything else sees it.
                .wrap(from_fn(move |req: ServiceRequest, next: Next<_>| {
                    let paused = paused.clone();
                    async move {
                        if routes::Listener::of(req.request()) == routes::Listener::Live {
                            paused.pause.wait(hold).await;
                        }
                        next.call(req).await
                    }
                }))
                .app_data(web::Data::new(state.clone()))
                .app_data(web::PayloadConfig::new(ECHO_LIMIT))
                .route("/", web::get().to(info::index))
                .route("/health", web::get().to(info::health))
                .route("/echo", web::post().to(info::echo))
                .service(
                    web::resource("/upgrade")
                        .route(web::get().to(upgrade::latest))
                        .route(web::post().to(upgrade::latest))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/upgrade/{requirement}")
                        .route(web::get().to(upgrade::matching))
                        .route(web::post().to(upgrade::matching))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/rollback")
                        .route(web::post().to(upgrade::rollback))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/promote")
                        .route(web::post().to(upgrade::promote))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/pause")
                        .route(web::post().to(pause::pause))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/resume")
                        .route(web::post().to(pause::resume))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/events")
                        .route(web::get().to(events::events))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/metrics")
                        .route(web::get().to(events::metrics))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/status")
                        .route(web::get().to(status::status))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/update")
                        .route(web::post().to(companion::update))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/update/{container}/promote")
                        .route(web::post().to(companion::promote))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/update/{container}/pause")
                        .route(web::post().to(companion::pause))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/update/{container}/resume")
                        .route(web::post().to(companion::resume))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/update/{container}/rollback")
                        .route(web::post().to(companion::rollback))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/update/{container}/{requirement}")
                        .route(web::post().to(companion::update_to))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/hooks/registry")
                        .app_data(web::PayloadConfig::new(hooks::HOOK_LIMIT))
                        .route(web::post().to(hooks::registry))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .service(
                    web::resource("/handover")
                        .route(web::post().to(handover::go))
                        .route(web::get().to(handover::phase))
                        .default_service(web::to(routes::method_not_allowed)),
                )
                .default_service(web::to(routes::not_found))
        })
        .on_connect(move |connection, extensions| {
            if let Some(listener) = arrivals.listener(connection) {
                if listener == routes::Listener::Live {
                    // Uncounted as actix drops the connection's extensions with it.
                    extensions.insert(Open::of(&counted));
                }
                extensions.insert(listener);
            }
            if let Some(ends) = Arrivals::ends(connection) {
                extensions.insert(ends);
            }
        })
        .workers(2)
        .keep_alive(Duration::from_secs(settings.keep_alive_secs))
        .shutdown_timeout(settings.shutdown_timeout_secs)
        .disable_signals()
        .listen(listener)?;
        if let Some(service) = service {
            server = server.listen(service)?;
        }
        let mut sockets = Vec::new();
        for (socket, uds) in [control, update, live].into_iter().flatten() {
            server = server.listen_uds(uds)?;
            sockets.push(socket);
        }
        let _ = orchestrator.control.set(sockets);
        let server = server.run();
        Ok(Application {
            port,
            server,
            orchestrator,
            companion,
            live_open,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or SIGINT, then drains: no new connections,
    /// in-flight requests (an elder's `/upgrade` among them) finish.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let handle = self.server.handle();
        let stopping = self.orchestrator.clone();
        let fronts = self.companion.as_ref().and_then(|c| c.fronts());
        let live_open = self.live_open.clone();
        let stopper = tokio::spawn(async move {
            wait_for_stop_signal().await;
            let shared = &stopping.shared;
            shared.shutdown.send_replace(true);
            let taken_over = stopping.taken_over_from();
            if stopping.known_backend().and_then(|b| b.swarm()).is_some() {
                swarm_stop(&stopping).await;
            } else if taken_over {
                // actix closes idle keep-alive connections at once on a
                // graceful stop, and nginx may be sending on one of them
                // that instant: serve until nginx's upstream keep-alive
                // has closed every idle one, closing each busy one with
                // its answer.
                let linger = stopping.settings.linger();
                tracing::info!(?linger, "stop signal after a takeover: lingering, then draining");
                shared.lingering.store(true, Ordering::Relaxed);
                tokio::time::sleep(linger).await;
                // On a private network: no longer found by the name it
                // shares with its successor before it stops accepting.
                let _ = tokio::time::timeout(LEAVE_NETWORKS, stopping.leave_networks()).await;
            } else if let Some(live) = stopping.live_socket().filter(|live| live.is_published()) {
                // The live instance stops with nobody to take over (`docker
                // restart`, `compose stop`): nginx's pooled connections
                // close first, as after a takeover; then the name goes, so
                // that nginx's next connections wait in the hold rather
                // than queue where nobody will accept them, and what is
                // queued already is accepted and answered.
                if live_open.load(Ordering::Relaxed) > 0 {
                    let linger = stopping.settings.linger();
                    tracing::info!(?linger, "stop signal on the live instance: lingering, then draining");
                    shared.lingering.store(true, Ordering::Relaxed);
                    tokio::time::sleep(linger).await;
                }
                match live.withdraw(live.public()) {
                    Ok(()) => tracing::info!(path = %live.public().display(), "live socket withdrawn"),
                    Err(e) => tracing::warn!(error = %e, "could not withdraw the live socket"),
                }
                tokio::time::sleep(ACCEPT_QUEUED).await;
            }
            tracing::info!("stop signal: draining");
            // The requests this instance still relays to blue-green apps
            // (its successor holds their sockets now) finish too, within
            // the same drain time as its own.
            let apps = async {
                if let (true, Some(apps)) = (taken_over, &fronts) {
                    let bound = Duration::from_secs(stopping.settings.shutdown_timeout_secs);
                    let relaying = apps.relaying();
                    let left = apps.until_idle(bound).await;
                    tracing::info!(
                        relaying,
                        left,
                        "the apps' connections relayed by this instance are done"
                    );
                }
            };
            tokio::join!(handle.stop(true), apps);
        });
        let orchestrator = self.orchestrator.clone();
        let companion = self.companion.clone();
        let watching = self.orchestrator.settings.watch.is_some() || companion.is_some();
        let learning = orchestrator.clone();
        tokio::spawn(async move { learning.learn_host_addresses().await });
        let background = tokio::spawn(async move {
            // The blue-green apps' sockets are bound before this instance
            // takes the traffic, so that they move with the live socket.
            if let Some(companion) = &companion {
                companion.front_apps().await;
                // And those that start later, when they start.
                let following = companion.clone();
                tokio::spawn(async move { following.follow_apps().await });
            }
            match orchestrator.backend().await {
                // Swarm keeps the service's replicas: there are no
                // siblings of a handover to converge.
                crate::handover::Backend::Swarm(_) => orchestrator.publish_sockets(),
                crate::handover::Backend::Host => orchestrator.reconcile().await,
            }
            // Once this instance is the live one (or a plain start): an elder
            // it took over from is gone, and holds no swap any more.
            let containers = match companion {
                Some(companion) => {
                    companion.recover().await;
                    Some(ContainerWatch::new(companion, orchestrator.shared.clone()))
                }
                None => None,
            };
            let own = crate::watch::Watch::new(orchestrator);
            // Both loops end when this instance is asked to stop.
            tokio::join!(
                async {
                    if let Some(watch) = own {
                        watch.run().await;
                    }
                },
                async {
                    if let Some(watch) = containers {
                        watch.run().await;
                    }
                },
            );
        });
        tracing::info!(port = self.port, version = %self.orchestrator.version, container = ?self.orchestrator.self_id, "serving");
        let served = self.server.await;
        // Stopped by a signal: the drain of the apps' connections ends too.
        if *self.orchestrator.shared.shutdown.borrow() {
            let bound = Duration::from_secs(self.orchestrator.settings.shutdown_timeout_secs);
            let _ = tokio::time::timeout(bound, stopper).await;
        }
        // An elder whose watch started the upgrade: no request holds the
        // drain open, so the watch finishes the upgrade (its successor's stop
        // signal is its end) and records it before the process ends; a
        // container watch gets the same short while for an update under way.
        if watching {
            let _ = tokio::time::timeout(NOTIFY_FLUSH, background).await;
        }
        // An elder on its way out: the report of its handover is still being sent.
        if let Some(notifier) = &self.orchestrator.notifier {
            notifier.flush(NOTIFY_FLUSH).await;
        }
        served
    }
}

/// This instance's socket at `path` (the control or the update socket),
/// unless `path` is empty. One that cannot be bound is logged, not fatal: the
/// ports still serve.
fn bind_socket(path: &Path, port: u16, access: Access) -> Option<(ControlSocket, std::os::unix::net::UnixListener)> {
    if path.as_os_str().is_empty() {
        return None;
    }
    match ControlSocket::bind(path, port, access) {
        Ok(bound) => Some(bound),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no socket");
            None
        }
    }
}

/// The companion's swaps in the data directory, in companion mode with a
/// data directory; without one, each instance locks only its own swaps.
fn open_swaps(settings: &Settings) -> Option<Arc<Swaps>> {
    if !settings.companion || !settings.data_dir.is_dir() {
        return None;
    }
    match Swaps::open(&settings.data_dir) {
        Ok(swaps) => Some(Arc::new(swaps)),
        Err(e) => {
            tracing::warn!(path = %settings.data_dir.display(), error = %e, "companion swaps are locked in this instance only");
            None
        }
    }
}

/// Where each unix socket's connections arrive: the paths
/// they are bound at, their connections' local address.
#[derive(Clone)]
struct Arrivals {
    control: Option<PathBuf>,
    update: Option<PathBuf>,
}

impl Arrivals {
    /// The listener `connection` was accepted on: a unix connection on
    /// neither the control nor the update socket is on the live socket (one
    /// whose own address cannot be told included: the public endpoints
    /// only); a connection of another kind is left unmarked, which every
    /// check of the listener refuses.
    fn listener(&self, connection: &dyn std::any::Any) -> Option<routes::Listener> {
        if connection.is::<tokio::net::TcpStream>() {
            return Some(routes::Listener::Port);
        }
        let stream = connection.downcast_ref::<tokio::net::UnixStream>()?;
        let local = stream.local_addr().ok();
        let path = local.as_ref().and_then(|l| l.as_pathname());
        Some(match path {
            Some(p) if self.control.as_deref() == Some(p) => routes::Listener::Control,
            Some(p) if self.update.as_deref() == Some(p) => routes::Listener::Update,
            _ => routes::Listener::Live,
        })
    }

    /// Both ends of a TCP connection, for the control guard's look at who
    /// owns the caller's socket; none when either cannot be told.
    fn ends(connection: &dyn std::any::Any) -> Option<routes::Ends> {
        let stream = connection.downcast_ref::<tokio::net::TcpStream>()?;
        Some(routes::Ends {
            local: stream.local_addr().ok()?,
            peer: stream.peer_addr().ok()?,
        })
    }
}

/// Companion mode's updater, when it is on.
fn build_companion(
    settings: &Arc<Settings>,
    engine: &Arc<Engine>,
    self_id: &Option<String>,
    swaps: &Option<Arc<Swaps>>,
    reporting: Reporting,
) -> std::io::Result<Option<Arc<Companion>>> {
    if !settings.companion {
        return Ok(None);
    }
    let key = companion_key(settings)?;
    let companion = Companion::new(
        settings.clone(),
        engine.clone(),
        registry_client(settings),
        key,
        self_id.clone(),
        swaps.clone(),
        reporting,
    );
    Ok(Some(Arc::new(companion)))
}

/// The companion's API key: configured, stored, or generated now and logged
/// this once (it is in `<data_dir>/api_key` afterwards).
fn companion_key(settings: &Settings) -> std::io::Result<ApiKey> {
    let (key, source) = ApiKey::load_or_create(settings.api_key.as_deref(), &settings.data_dir)
        .map_err(|e| std::io::Error::other(format!("companion mode: {e}")))?;
    match &source {
        KeySource::Generated(path) => tracing::warn!(
            api_key = key.reveal(),
            path = %path.display(),
            "companion mode: generated an API key; it is logged only this once"
        ),
        KeySource::Stored(path) => tracing::info!(path = %path.display(), "companion mode: API key loaded"),
        KeySource::Configured => tracing::info!("companion mode: API key from the settings"),
    }
    Ok(key)
}

/// How often a stopping Swarm task looks whether the update it follows is over.
const HOLD_POLL: Duration = Duration::from_millis(100);

/// A Swarm task's stop. Swarm took the task out of the service's DNS
/// before it sent the signal: the task keeps serving for `drain_ms`,
/// closing each connection with its answer, for a proxy that looked the
/// name up just before; then, while it follows a service update (an
/// upgrade request it received, which Swarm answers by replacing this very
/// task), it holds its exit until the update is over, so that the answer
/// comes from here. The stop grace period the rollout sets covers it.
async fn swarm_stop(o: &Orchestrator) {
    o.shared.lingering.store(true, Ordering::Relaxed);
    tracing::info!(drain = ?o.settings.drain(), "stop signal as a Swarm task: draining");
    tokio::time::sleep(o.settings.drain()).await;
    let held = tokio::time::Instant::now();
    let mut said = false;
    while o.shared.status().upgrade.is_some() && held.elapsed() < crate::swarm::FOLLOW_DEADLINE {
        if !said {
            tracing::info!("following a service update: its answer goes out before this task stops");
            said = true;
        }
        tokio::time::sleep(HOLD_POLL).await;
    }
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for stop signals");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
