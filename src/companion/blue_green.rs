//! Blue-green for any app: a container labelled `selfup.port` is handed over
//! the way selfup hands itself over, not recreated in place.
//!
//! The successor starts beside the elder on the app's private network, is
//! health-checked at its own address, public traffic is switched to it, and
//! only then is the elder drained and stopped. The app needs nothing from
//! selfup: it listens on the port its label names and stops on SIGTERM.
//!
//! The switch is the self-upgrade's (see `docs/switch.md`): nginx's upstream
//! for the app is a unix socket, `<app_socket_dir>/<container>.sock`, in a
//! directory only root can write, and the live selfup instance holds it. Each
//! connection nginx opens there is joined to the live app container's address
//! on its network (an address inside that container's own network namespace,
//! which no local user can bind, unlike a host port a handover frees). The
//! switch is one store of the new address: the next connection reaches the
//! successor, and connections already open finish on the elder, which is
//! stopped once none is left.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::time::{Instant, sleep};

use super::container::labels;
use crate::control::{Access, ControlSocket, Open};
use crate::hold::unavailable;
use crate::pause::Pause;

/// The container port the app listens on; its presence asks for blue-green.
pub const PORT_LABEL: &str = "selfup.port";
/// An HTTP path that answers 200 once the app is ready (optional; without it,
/// the image's HEALTHCHECK, else a connect to the port after the settle time).
pub const HEALTH_LABEL: &str = "selfup.health";

/// How often a successor is asked while it comes up, and an elder's
/// connections are counted while they drain.
const POLL: Duration = Duration::from_millis(10);

/// What the labels of a blue-green app say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSpec {
    /// The port the app listens on inside its container.
    pub port: u16,
    /// The path of its readiness check, if it has one.
    pub health: Option<String>,
}

/// The blue-green settings of a container: none without `selfup.port`, an
/// error saying which label is wrong.
pub fn spec(container: &ContainerInspectResponse) -> Result<Option<AppSpec>, String> {
    let labels = labels(container);
    let Some(port) = labels.get(PORT_LABEL) else {
        return Ok(None);
    };
    let port = match port.trim().parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("label {PORT_LABEL}={port:?} is not a port number (1-65535)")),
    };
    let health = match labels.get(HEALTH_LABEL).map(|h| h.trim()) {
        None | Some("") => None,
        Some(h) if h.starts_with('/') && !h.contains(char::is_whitespace) => Some(h.to_string()),
        Some(h) => {
            return Err(format!(
                "label {HEALTH_LABEL}={h:?} is not an absolute path such as /healthz"
            ));
        }
    };
    Ok(Some(AppSpec { port, health }))
}

/// The container's address on its network: the first network by name that
/// gave it an IPv4 address. None on the host's network or with none.
pub fn address(container: &ContainerInspectResponse, port: u16) -> Option<SocketAddr> {
    let networks = container.network_settings.as_ref()?.networks.clone()?;
    let mut named: Vec<_> = networks.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named.into_iter().find_map(|(_, ep)| {
        let ip: IpAddr = ep.ip_address.filter(|ip| !ip.is_empty())?.parse().ok()?;
        Some(SocketAddr::new(ip, port))
    })
}

/// What an app handover reports beside the swap's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct AppHandover {
    /// The socket nginx's upstream names for this app.
    pub socket: String,
    /// The elder's address and the successor's.
    pub from: String,
    pub to: String,
    /// From the successor's start to its passed check.
    pub health_ms: u128,
    /// From the switch to the elder's last connection closing.
    pub drain_ms: u128,
    /// Connections still open to the elder when the drain's deadline passed.
    #[serde(skip_serializing_if = "is_zero")]
    pub left_open: usize,
    /// With `update_bake_secs`: how the bake after the switch ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bake: Option<AppBakeReport>,
}

/// How an app's bake passed: why it ended, how long it ran, and the
/// successor's answers the proxy counted meanwhile.
#[derive(Debug, Clone, Serialize)]
pub struct AppBakeReport {
    pub outcome: crate::state::BakeOutcome,
    pub reason: String,
    pub baked_ms: u128,
    pub answers: u64,
    pub server_errors: u64,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// What the proxy saw of the answers of one target: each connection's
/// first status line (nginx sends one request per upstream connection), and
/// the connections the target refused. The bake judges a successor by it.
#[derive(Debug, Default)]
pub struct Answers {
    total: AtomicU64,
    server_errors: AtomicU64,
    refused: AtomicU64,
    last_refusal: Mutex<Option<String>>,
    /// Connections the target ended before the first byte of its answer
    /// while the client still waited.
    dropped: AtomicU64,
}

impl Answers {
    /// The answers counted and the 5xx among them.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.total.load(Ordering::SeqCst),
            self.server_errors.load(Ordering::SeqCst),
        )
    }

    /// How many connections the target refused, and why the last one.
    pub fn refused(&self) -> (u64, Option<String>) {
        let last = self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()).clone();
        (self.refused.load(Ordering::SeqCst), last)
    }

    pub(super) fn answered(&self, status: Option<u16>) {
        let Some(status) = status else { return };
        self.total.fetch_add(1, Ordering::SeqCst);
        if (500..600).contains(&status) {
            self.server_errors.fetch_add(1, Ordering::SeqCst);
        }
    }

    pub(super) fn refusal(&self, e: &io::Error) {
        *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
        self.refused.fetch_add(1, Ordering::SeqCst);
    }

    /// How many connections the target ended without answering while the
    /// client still waited (a process that died with requests in hand).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }

    pub(super) fn drop_noted(&self) {
        self.dropped.fetch_add(1, Ordering::SeqCst);
    }

    /// Whether the target refused or dropped any connection: during a bake,
    /// no new connection is sent to it after that.
    pub fn faulted(&self) -> bool {
        self.refused.load(Ordering::SeqCst) > 0 || self.dropped() > 0
    }
}

/// The status code of an HTTP answer that begins with `head`, if it is one.
pub fn status_of(head: &[u8]) -> Option<u16> {
    let rest = head.strip_prefix(b"HTTP/")?;
    let space = rest.iter().position(|b| *b == b' ')?;
    let code = rest.get(space + 1..space + 4)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// Where one app's connections go now, and how many are open to it.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    answers: Arc<Answers>,
    /// During a bake, the elder kept warm: a connection the successor
    /// refuses is joined to it instead of failing.
    standby: Option<SocketAddr>,
}

impl Target {
    fn new(addr: SocketAddr, standby: Option<SocketAddr>) -> Target {
        Target {
            addr,
            open: Arc::new(AtomicUsize::new(0)),
            answers: Arc::default(),
            standby,
        }
    }
}

/// One app's public socket and the address it joins connections to.
#[derive(Debug)]
pub struct AppFront {
    socket: ControlSocket,
    target: Mutex<Target>,
    /// Every connection this instance is relaying, to any app: an elder
    /// on its way out waits for them.
    relaying: Arc<AtomicUsize>,
    /// `POST /update/<app>/pause`: new connections wait, they are not
    /// joined to the app, until the resume or `hold` has passed.
    pause: Pause,
    hold: Duration,
}

impl AppFront {
    fn target(&self) -> Target {
        self.target.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The address connections are joined to now.
    pub fn addr(&self) -> SocketAddr {
        self.target().addr
    }

    /// Sends every new connection to `addr` (and to `standby` when `addr`
    /// refuses it); returns the count of those still open to the address
    /// before, to drain.
    pub fn switch(&self, addr: SocketAddr, standby: Option<SocketAddr>) -> Arc<AtomicUsize> {
        let mut target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        if target.addr == addr {
            target.standby = standby;
            return Arc::new(AtomicUsize::new(0));
        }
        std::mem::replace(&mut *target, Target::new(addr, standby)).open
    }

    /// What the proxy saw of the current target's answers since the switch to it.
    pub fn answers(&self) -> Arc<Answers> {
        self.target().answers
    }

    /// The public path of this app's socket.
    pub fn path(&self) -> String {
        self.socket.public().display().to_string()
    }

    /// This app's pause: new connections are held while it lasts.
    pub fn pause(&self) -> &Pause {
        &self.pause
    }

    /// The longest pause, after which it ends by itself.
    pub fn hold(&self) -> Duration {
        self.hold
    }

    async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            let (downstream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(socket = %self.path(), error = %e, "accepting an app connection");
                    sleep(POLL).await;
                    continue;
                }
            };
            if self.pause.current().is_some() {
                // Held, not refused: joined to whichever container is the
                // app's once the pause ends (no update runs meanwhile).
                let front = self.clone();
                let relaying = Open::of(&self.relaying);
                tokio::spawn(async move {
                    front.pause.wait(front.hold + POLL).await;
                    front.join(downstream);
                    drop(relaying);
                });
                continue;
            }
            self.join(downstream);
        }
    }

    /// Joins a client's connection to the app's container now.
    fn join(&self, downstream: UnixStream) {
        {
            // Counted before the connect, so that a drain never misses a
            // connection on its way to the elder.
            let target = self.target();
            let open = (Open::of(&target.open), Open::of(&self.relaying));
            let hold = self.hold;
            tokio::spawn(async move {
                let _open = open;
                // The standby's answers are not the target's.
                let standby_answers = Answers::default();
                // A successor that refused or dropped a connection loses its
                // bake at the next look: until then, nothing more goes to it.
                if let Some(standby) = target.standby.filter(|_| target.answers.faulted()) {
                    match TcpStream::connect(standby).await {
                        Ok(upstream) => relay(downstream, upstream, &standby_answers, None).await,
                        Err(e) => tracing::warn!(app = %standby, error = %e, "the standby refused a connection"),
                    }
                    return;
                }
                let connect = async {
                    match target.standby {
                        // A successor that died may leave no one to refuse:
                        // its address is gone and a connect would hang.
                        Some(_) => match tokio::time::timeout(STANDBY_AFTER, TcpStream::connect(target.addr)).await {
                            Ok(result) => result,
                            Err(_) => Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                format!("no answer to the connect in {} ms", STANDBY_AFTER.as_millis()),
                            )),
                        },
                        // No standby: the app may be restarting (a crash,
                        // its restart policy): the connection waits for it.
                        None => connect_within(target.addr, hold).await,
                    }
                };
                let (upstream, answers, replay_to) = match connect.await {
                    Ok(upstream) => (Ok(upstream), &*target.answers, target.standby),
                    Err(e) => {
                        target.answers.refusal(&e);
                        match target.standby {
                            Some(standby) => (TcpStream::connect(standby).await, &standby_answers, None),
                            None => (Err(e), &standby_answers, None),
                        }
                    }
                };
                match upstream {
                    Ok(upstream) => relay(downstream, upstream, answers, replay_to).await,
                    Err(e) => {
                        tracing::warn!(app = %target.addr, error = %e, "the app refused a connection");
                        unavailable(
                            downstream,
                            &format!("the app at {} does not accept connections: {e}", target.addr),
                        )
                        .await;
                    }
                }
            });
        }
    }
}

/// A connection to `addr`, tried again every [`RETRY_EVERY`] while it is
/// refused or unanswered, for at most `hold`: an app whose container
/// crashed is back once its restart policy has started it.
async fn connect_within(addr: SocketAddr, hold: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + hold;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let error = match tokio::time::timeout(STANDBY_AFTER.min(left), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                if tries > 1 {
                    tracing::info!(app = %addr, tries, "the app accepts connections again");
                }
                return Ok(stream);
            }
            Ok(Err(e)) => e,
            Err(_) => io::Error::new(io::ErrorKind::TimedOut, "no answer to the connect"),
        };
        if Instant::now() + RETRY_EVERY >= deadline {
            return Err(io::Error::new(
                error.kind(),
                format!("{error}, for {} s ({tries} tries)", hold.as_secs()),
            ));
        }
        sleep(RETRY_EVERY).await;
    }
}

/// How often a held connection tries the app again.
const RETRY_EVERY: Duration = Duration::from_millis(20);

/// During a bake, how long a connect to the successor may take before the
/// connection goes to the standby instead (a connect on the Engine's
/// network takes well under a millisecond).
const STANDBY_AFTER: Duration = Duration::from_millis(500);

/// How many bytes of an answer its status is read from: "HTTP/1.1 200".
const HEAD: usize = 12;

/// How many bytes each direction of a relay reads at a time; also the most
/// of a request kept for a replay.
const CHUNK: usize = 16 * 1024;

/// Whether a request the app ended without answering may be sent again to
/// another server, given `sent`, all the client sent on that connection so
/// far: nothing, or one request of a method RFC 9110 calls idempotent (GET,
/// HEAD, OPTIONS, TRACE) with nothing after its head, so that no request
/// that changes state is ever run twice. Stricter than nginx's
/// `proxy_next_upstream`, which passes on any method but POST, LOCK and
/// PATCH.
pub fn replayable(sent: &[u8]) -> bool {
    const IDEMPOTENT: [&[u8]; 4] = [b"GET ", b"HEAD ", b"OPTIONS ", b"TRACE "];
    if sent.is_empty() {
        return true;
    }
    if !IDEMPOTENT.iter().any(|method| sent.starts_with(method)) {
        return false;
    }
    match sent.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => end + 4 == sent.len(),
        // The head is still coming: the rest goes to the new server.
        None => true,
    }
}

/// Bytes read from one side and not yet all written to the other.
struct Pending {
    buf: Vec<u8>,
    at: usize,
}

impl Pending {
    fn new() -> Pending {
        Pending {
            buf: Vec::with_capacity(CHUNK),
            at: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.at >= self.buf.len()
    }

    fn rest(&self) -> &[u8] {
        &self.buf[self.at..]
    }

    fn set(&mut self, bytes: &[u8]) {
        self.buf.clear();
        self.buf.extend_from_slice(bytes);
        self.at = 0;
    }

    fn clear(&mut self) {
        self.set(&[]);
    }

    /// Takes what a write of [`Pending::rest`] did; false when the other
    /// side is gone, and what was pending with it.
    fn wrote(&mut self, wrote: io::Result<usize>) -> bool {
        match wrote {
            Ok(n) if n > 0 => {
                self.at += n;
                true
            }
            _ => {
                self.clear();
                false
            }
        }
    }
}

/// Joins a connection from nginx to one to the app, byte for byte, noting
/// the status of the app's answer; the client's end is passed on to the app,
/// the app's end closes both.
///
/// With `replay_to` (a bake's standby), a connection the app ends before the
/// first byte of its answer while the client still waits is counted as
/// dropped, and when what the client sent is [`replayable`], it is sent
/// again to `replay_to`, whose answer the client gets instead of an error.
async fn relay(downstream: UnixStream, upstream: TcpStream, answers: &Answers, mut replay_to: Option<SocketAddr>) {
    let _ = upstream.set_nodelay(true);
    let (mut down_read, mut down_write) = downstream.into_split();
    let (mut up_read, mut up_write) = upstream.into_split();
    // Whose answer is counted: no one's after a replay on the standby.
    let mut counting = Some(answers);
    // What the client sent, while a replay of it is still possible.
    let mut sent: Option<Vec<u8>> = replay_to.map(|_| Vec::new());
    let (mut request, mut answer) = (Pending::new(), Pending::new());
    let (mut from_client, mut from_app) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    // The client sent its end; nothing more goes to the app; the answer ended.
    let (mut client_ended, mut request_done, mut answer_done) = (false, false, false);
    let mut head = Vec::with_capacity(HEAD);
    let mut answered = false;
    // Done once the app's answer has ended and is passed on: nothing the
    // client sends after it could reach the app, and waiting for nginx to
    // close first would cost the relay one more wake-up per request.
    while !answer_done {
        tokio::select! {
            read = down_read.read(&mut from_client), if !request_done && request.is_empty() => match read {
                Ok(n) if n > 0 => {
                    request.set(&from_client[..n]);
                    if let Some(kept) = &mut sent {
                        if kept.len() + n <= CHUNK {
                            kept.extend_from_slice(&from_client[..n]);
                        } else {
                            sent = None;
                        }
                    }
                }
                _ => {
                    client_ended = true;
                    request_done = true;
                    let _ = up_write.shutdown().await;
                }
            },
            // The app is gone: its end shows on the answer's side.
            wrote = up_write.write(request.rest()), if !request.is_empty() => request_done |= !request.wrote(wrote),
            read = up_read.read(&mut from_app), if !answer_done && answer.is_empty() => match read {
                Ok(n) if n > 0 => {
                    answered = true;
                    sent = None;
                    if head.len() < HEAD {
                        let take = n.min(HEAD - head.len());
                        head.extend_from_slice(&from_app[..take]);
                        if head.len() == HEAD && let Some(answers) = counting {
                            answers.answered(status_of(&head));
                        }
                    }
                    answer.set(&from_app[..n]);
                }
                _ => {
                    if !answered && !client_ended && let Some(standby) = replay_to.take() {
                        answers.drop_noted();
                        if let Some(again) = sent.take().filter(|s| replayable(s))
                            && let Ok(stream) = TcpStream::connect(standby).await
                        {
                            let _ = stream.set_nodelay(true);
                            (up_read, up_write) = stream.into_split();
                            request.set(&again);
                            request_done = false;
                            counting = None;
                            continue;
                        }
                    }
                    answer_done = true;
                }
            },
            wrote = down_write.write(answer.rest()), if !answer.is_empty() => answer_done |= !answer.wrote(wrote),
        }
    }
    // Both sockets close as the read halves drop: the client reads all of
    // the answer, then its end. No shutdown(2) of each write half first, as
    // dropping a write half would do: two system calls a request saved.
    up_write.forget();
    down_write.forget();
}

/// The sockets of every blue-green app this instance fronts.
#[derive(Debug)]
pub struct AppFronts {
    dir: PathBuf,
    /// selfup's own port: it names this instance's sockets until published.
    port: u16,
    /// Whether this instance is the live one: it publishes its sockets.
    live: AtomicBool,
    fronts: Mutex<HashMap<String, Arc<AppFront>>>,
    /// Every connection relayed to an app now, by any front.
    relaying: Arc<AtomicUsize>,
    /// The longest pause of an app (`hold_secs`).
    hold: Duration,
    /// Where the fronts accept and relay; `None` (the thread could not
    /// start): on the runtime that binds them.
    relay: Option<RelayThread>,
}

/// One thread with a runtime of its own accepts and relays every app
/// connection, so that a connection's steps (the accept, the connect, the
/// bytes each way) never wake another thread: on a small machine the
/// threads' wake-ups, not the copying, were most of what the relay cost
/// ([docs/apps.md](../../docs/apps.md#what-the-relay-costs)).
struct RelayThread {
    runtime: tokio::runtime::Handle,
    /// Dropped with the fronts: the thread and its connections end.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl RelayThread {
    fn start() -> io::Result<RelayThread> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new().name("selfup-relay".into()).spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            })
        })?;
        Ok(RelayThread {
            runtime: handle,
            _stop: stop,
        })
    }
}

impl std::fmt::Debug for RelayThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RelayThread")
    }
}

impl AppFronts {
    pub fn new(dir: PathBuf, port: u16, hold: Duration) -> AppFronts {
        let relay = RelayThread::start()
            .inspect_err(
                |e| tracing::warn!(error = %e, "no relay thread: the apps' connections share the main runtime"),
            )
            .ok();
        AppFronts {
            relay,
            dir,
            port,
            live: AtomicBool::new(false),
            fronts: Mutex::default(),
            relaying: Arc::default(),
            hold,
        }
    }

    fn fronts(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AppFront>>> {
        self.fronts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The front of app `name`, bound now (joined to `addr`) if it is not
    /// yet, and published if this instance is live. Must run on a runtime.
    pub fn ensure(&self, name: &str, addr: SocketAddr) -> io::Result<Arc<AppFront>> {
        if let Some(front) = self.fronts().get(name) {
            return Ok(front.clone());
        }
        let public = self.dir.join(format!("{name}.sock"));
        let (socket, listener) = ControlSocket::bind(&public, self.port, Access::Anyone)?;
        listener.set_nonblocking(true)?;
        let runtime = match &self.relay {
            Some(relay) => relay.runtime.clone(),
            None => tokio::runtime::Handle::current(),
        };
        let listener = {
            let _on = runtime.enter();
            UnixListener::from_std(listener)?
        };
        let front = Arc::new(AppFront {
            socket,
            target: Mutex::new(Target::new(addr, None)),
            relaying: self.relaying.clone(),
            pause: Pause::default(),
            hold: self.hold,
        });
        let front = self.fronts().entry(name.to_string()).or_insert(front).clone();
        runtime.spawn(front.clone().serve(listener));
        if self.live.load(Ordering::SeqCst) {
            front.socket.publish()?;
        }
        tracing::info!(app = name, socket = %front.path(), %addr, "fronting a blue-green app");
        Ok(front)
    }

    /// The front of app `name`, if this instance has bound one.
    pub fn get(&self, name: &str) -> Option<Arc<AppFront>> {
        self.fronts().get(name).cloned()
    }

    /// The apps whose traffic is paused: name, the pause, how many wait.
    pub fn paused(&self) -> Vec<(String, crate::pause::Paused, usize)> {
        let mut paused: Vec<_> = self
            .fronts()
            .iter()
            .filter_map(|(name, f)| f.pause.current().map(|p| (name.clone(), p, f.pause.held())))
            .collect();
        paused.sort_by(|a, b| a.0.cmp(&b.0));
        paused
    }

    /// How many connections this instance relays to apps now.
    pub fn relaying(&self) -> usize {
        self.relaying.load(Ordering::SeqCst)
    }

    /// Waits until this instance relays no connection to any app, at most
    /// `bound`: an elder whose sockets a successor took finishes the
    /// requests it was still relaying before it exits. Returns how many
    /// were left.
    pub async fn until_idle(&self, bound: Duration) -> usize {
        drain(&self.relaying, bound).await
    }
}

impl crate::control::Publish for AppFronts {
    /// Publishes every app socket: this instance is the live one now.
    fn publish(&self) {
        self.live.store(true, Ordering::SeqCst);
        for front in self.fronts().values() {
            if let Err(e) = front.socket.publish() {
                tracing::warn!(socket = %front.path(), error = %e, "could not publish an app socket");
            }
        }
    }
}

/// Waits until `addr` accepts a connection and, with a `health` path,
/// answers it with 200; the error says what it answered last.
pub async fn until_ready(
    http: &reqwest::Client,
    addr: SocketAddr,
    health: Option<&str>,
    deadline: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    let mut last;
    loop {
        last = match health {
            Some(path) => match http.get(format!("http://{addr}{path}")).send().await {
                Ok(r) if r.status() == 200 => return Ok(()),
                Ok(r) => format!("GET {path} answered {}", r.status()),
                Err(e) => format!("GET {path}: {e}"),
            },
            None => match TcpStream::connect(addr).await {
                Ok(_) => return Ok(()),
                Err(e) => format!("connecting to port {}: {e}", addr.port()),
            },
        };
        if started.elapsed() >= deadline {
            return Err(format!(
                "it was not ready at {addr} within {} s ({last})",
                deadline.as_secs()
            ));
        }
        sleep(POLL).await;
    }
}

/// Waits until no connection is open to the elder, at most `deadline`;
/// returns how many are left.
pub async fn drain(open: &AtomicUsize, deadline: Duration) -> usize {
    let started = Instant::now();
    loop {
        let left = open.load(Ordering::SeqCst);
        if left == 0 || started.elapsed() >= deadline {
            return left;
        }
        sleep(POLL).await;
    }
}

#[cfg(test)]
/// A server on loopback that answers what each connection sends first
/// with `answer`.
pub(crate) async fn answering(answer: impl Into<Vec<u8>>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let answer: Arc<[u8]> = answer.into().into();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let (mut c, _) = listener.accept().await.unwrap();
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = c.read(&mut request).await;
                let _ = c.write_all(&answer).await;
            });
        }
    });
    (addr, task)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Publish;
    use bollard::models::{ContainerConfig, EndpointSettings, NetworkSettings};

    fn container(labels: &[(&str, &str)], networks: &[(&str, &str)]) -> ContainerInspectResponse {
        ContainerInspectResponse {
            config: Some(ContainerConfig {
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(
                    networks
                        .iter()
                        .map(|(n, ip)| {
                            (
                                n.to_string(),
                                EndpointSettings {
                                    ip_address: Some(ip.to_string()),
                                    ..Default::default()
                                },
                            )
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_port_label_asks_for_blue_green_and_a_bad_one_is_named() {
        assert_eq!(spec(&container(&[("selfup.enable", "true")], &[])), Ok(None));
        assert_eq!(
            spec(&container(&[(PORT_LABEL, "8080"), (HEALTH_LABEL, "/healthz")], &[])),
            Ok(Some(AppSpec {
                port: 8080,
                health: Some("/healthz".into())
            }))
        );
        assert_eq!(
            spec(&container(&[(PORT_LABEL, " 80 "), (HEALTH_LABEL, "")], &[])),
            Ok(Some(AppSpec { port: 80, health: None }))
        );
        for bad in ["0", "http", "70000", ""] {
            let e = spec(&container(&[(PORT_LABEL, bad)], &[])).unwrap_err();
            assert!(e.contains(PORT_LABEL), "{e}");
        }
        let e = spec(&container(&[(PORT_LABEL, "80"), (HEALTH_LABEL, "healthz")], &[])).unwrap_err();
        assert!(e.contains("absolute path"), "{e}");
    }

    #[test]
    fn the_status_of_an_answer_is_read_from_its_first_line() {
        assert_eq!(status_of(b"HTTP/1.0 200 OK\r\n"), Some(200));
        assert_eq!(status_of(b"HTTP/1.1 503"), Some(503));
        assert_eq!(status_of(b"HTTP/2 404 "), Some(404));
        assert_eq!(status_of(b"HTTP/1.1 5"), None, "cut short");
        assert_eq!(status_of(b"elder"), None);
        assert_eq!(status_of(b"HTTP/1.1 abc"), None);
        let answers = Answers::default();
        for status in [Some(200), Some(502), None, Some(500), Some(404)] {
            answers.answered(status);
        }
        assert_eq!(
            answers.counts(),
            (4, 2),
            "5xx counted among the answers; no status, no answer"
        );
    }

    #[tokio::test]
    async fn a_connection_the_successor_refuses_goes_to_the_standby_and_is_counted() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (elder_addr, serving) = answering(b"HTTP/1.0 503 Busy\r\n\r\nelder".as_slice()).await;
        // A port nobody listens on any more: the dead successor.
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = gone.local_addr().unwrap();
        drop(gone);
        let dir = std::env::temp_dir().join(format!("selfup-apps-standby-{}", std::process::id()));
        let fronts = AppFronts::new(dir.join("apps"), 5800, Duration::from_secs(1));
        let front = fronts.ensure("web", elder_addr).unwrap();
        fronts.publish();
        front.switch(dead, Some(elder_addr));
        let mut conn = tokio::net::UnixStream::connect(dir.join("apps/web.sock"))
            .await
            .unwrap();
        conn.write_all(b"?").await.unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).await.unwrap();
        assert!(text.ends_with("elder"), "{text}");
        let answers = front.answers();
        let (refused, last) = answers.refused();
        assert_eq!(refused, 1);
        assert!(last.unwrap().to_lowercase().contains("refused"));
        assert_eq!(answers.counts(), (0, 0), "the standby's 503 is not the successor's");
        // The app's end ended the relay: the client read the answer, then EOF.
        assert_eq!(fronts.until_idle(Duration::from_secs(2)).await, 0);
        drop(conn);
        // Without a standby, a refused connection waits for the app (a
        // restart), at most `hold_secs`, then gets a 503 that says so.
        front.switch(elder_addr, None);
        front.switch(dead, None);
        let asked = Instant::now();
        let mut conn = tokio::net::UnixStream::connect(dir.join("apps/web.sock"))
            .await
            .unwrap();
        let _ = conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
        let mut text = String::new();
        let _ = conn.read_to_string(&mut text).await;
        assert!(asked.elapsed() >= Duration::from_millis(900), "{:?}", asked.elapsed());
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.contains("retry-after: 1\r\n"), "{text}");
        assert!(text.contains("does not accept connections"), "{text}");
        serving.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_connection_waits_for_an_app_that_comes_back_within_the_hold() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = gone.local_addr().unwrap();
        drop(gone);
        let dir = std::env::temp_dir().join(format!("selfup-apps-back-{}", std::process::id()));
        let fronts = AppFronts::new(dir.join("apps"), 5800, Duration::from_secs(10));
        let front = fronts.ensure("web", addr).unwrap();
        fronts.publish();
        let asked = Instant::now();
        let mut conn = tokio::net::UnixStream::connect(dir.join("apps/web.sock"))
            .await
            .unwrap();
        conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
        // The app's restart: it listens again 300 ms later.
        sleep(Duration::from_millis(300)).await;
        let back = tokio::net::TcpListener::bind(addr).await.unwrap();
        let (mut app, _) = back.accept().await.unwrap();
        app.write_all(b"HTTP/1.0 200 OK\r\n\r\nback").await.unwrap();
        drop(app);
        let mut text = String::new();
        conn.read_to_string(&mut text).await.unwrap();
        assert!(text.ends_with("back"), "{text}");
        assert!(asked.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            front.answers().refused().0,
            0,
            "a connection that waited was not refused"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn only_an_idempotent_request_alone_or_nothing_is_sent_again() {
        assert!(replayable(b""), "nothing sent: a new connection is no replay");
        assert!(replayable(b"GET / HTTP/1.0\r\nHost: app\r\n\r\n"));
        assert!(replayable(b"HEAD /x HTTP/1.1\r\n\r\n"));
        assert!(replayable(b"OPTIONS * HTTP/1.1\r\n\r\n"));
        assert!(replayable(b"GET / HTTP/1.0\r\nHost:"), "its head is still coming");
        assert!(!replayable(b"POST /echo HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi"));
        assert!(!replayable(b"POST /echo HTTP/1.0\r\n"), "not even its head");
        assert!(!replayable(b"PATCH / HTTP/1.1\r\n\r\n"));
        assert!(!replayable(b"DELETE / HTTP/1.1\r\n\r\n"), "a body may follow");
        assert!(
            !replayable(b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\n\r\n"),
            "a request after it"
        );
        assert!(!replayable(b"GETS / HTTP/1.1\r\n\r\n"));
    }

    #[tokio::test]
    async fn an_unanswered_get_goes_to_the_standby_a_post_does_not_and_nothing_more_goes_to_the_successor() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // The elder answers every request with its name.
        let (elder_addr, serving) = answering(b"HTTP/1.0 200 OK\r\n\r\nelder".as_slice()).await;
        // The successor reads each request and closes without a word; it
        // counts the connections it took.
        let successor = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let successor_addr = successor.local_addr().unwrap();
        let taken = Arc::new(AtomicUsize::new(0));
        let counting = taken.clone();
        let dropping = tokio::spawn(async move {
            loop {
                let (mut c, _) = successor.accept().await.unwrap();
                counting.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 256];
                let _ = c.read(&mut buf).await;
            }
        });
        let dir = std::env::temp_dir().join(format!("selfup-apps-replay-{}", std::process::id()));
        let fronts = AppFronts::new(dir.join("apps"), 5800, Duration::from_secs(30));
        let front = fronts.ensure("web", elder_addr).unwrap();
        fronts.publish();
        front.switch(successor_addr, Some(elder_addr));
        let socket = dir.join("apps/web.sock");
        let ask = |request: &'static [u8]| {
            let socket = socket.clone();
            async move {
                let mut conn = tokio::net::UnixStream::connect(socket).await.unwrap();
                conn.write_all(request).await.unwrap();
                let mut text = String::new();
                let _ = conn.read_to_string(&mut text).await;
                text
            }
        };
        // A POST the successor dropped is not run twice: the client sees the end.
        let text = ask(b"POST /echo HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi").await;
        assert_eq!(text, "");
        let answers = front.answers();
        assert_eq!(answers.dropped(), 1);
        assert!(answers.faulted());
        assert_eq!(taken.load(Ordering::SeqCst), 1);
        // From then on, every connection goes to the elder at once.
        let text = ask(b"POST /echo HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi").await;
        assert!(text.ends_with("elder"), "{text}");
        assert_eq!(taken.load(Ordering::SeqCst), 1, "the successor got no more");
        assert_eq!(answers.counts(), (0, 0), "the elder's answers are not the successor's");

        // A fresh bake: the GET the successor dropped is answered by the elder.
        front.switch(elder_addr, None);
        front.switch(successor_addr, Some(elder_addr));
        let text = ask(b"GET / HTTP/1.0\r\n\r\n").await;
        assert!(text.ends_with("elder"), "{text}");
        assert_eq!(taken.load(Ordering::SeqCst), 2);
        let answers = front.answers();
        assert_eq!(answers.dropped(), 1);
        assert_eq!(answers.counts(), (0, 0));
        assert_eq!(fronts.until_idle(Duration::from_secs(2)).await, 0);

        // Outside a bake, nothing is replayed or counted as dropped.
        front.switch(elder_addr, None);
        front.switch(successor_addr, None);
        let text = ask(b"GET / HTTP/1.0\r\n\r\n").await;
        assert_eq!(text, "");
        assert_eq!(front.answers().dropped(), 0);
        assert_eq!(taken.load(Ordering::SeqCst), 3);
        serving.abort();
        dropping.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_address_is_the_first_network_that_gave_one() {
        let c = container(&[], &[("zeta", "10.0.0.9"), ("alpha", ""), ("beta", "172.18.0.4")]);
        assert_eq!(address(&c, 8080), Some("172.18.0.4:8080".parse().unwrap()));
        assert_eq!(address(&container(&[], &[("host", "")]), 80), None);
    }

    #[tokio::test]
    async fn a_switch_sends_new_connections_to_the_successor_while_the_elder_drains() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (elder, elder_task) = answering(b"elder".as_slice()).await;
        let (successor, successor_task) = answering(b"successor".as_slice()).await;
        let dir = std::env::temp_dir().join(format!("selfup-apps-{}", std::process::id()));
        let fronts = AppFronts::new(dir.join("apps"), 5800, Duration::from_secs(30));
        let front = fronts.ensure("web", elder).unwrap();
        assert!(
            !dir.join("apps/web.sock").exists(),
            "not published before the instance is live"
        );
        fronts.publish();
        let path = dir.join("apps/web.sock");
        async fn ask(conn: &mut tokio::net::UnixStream) -> String {
            conn.write_all(b"?").await.unwrap();
            let mut text = String::new();
            conn.read_to_string(&mut text).await.unwrap();
            text
        }
        let mut held = tokio::net::UnixStream::connect(&path).await.unwrap();
        let mut probe = tokio::net::UnixStream::connect(&path).await.unwrap();
        assert_eq!(ask(&mut probe).await, "elder");
        drop(probe);
        let open = front.switch(successor, None);
        let mut fresh = tokio::net::UnixStream::connect(&path).await.unwrap();
        assert_eq!(ask(&mut fresh).await, "successor");
        drop(fresh);
        // The probe's connection ends; the held one stays with the elder.
        let started = Instant::now();
        while open.load(Ordering::SeqCst) != 1 && started.elapsed() < Duration::from_secs(2) {
            sleep(POLL).await;
        }
        assert_eq!(
            drain(&open, Duration::from_millis(50)).await,
            1,
            "one connection still on the elder"
        );
        assert_eq!(
            ask(&mut held).await,
            "elder",
            "a connection opened before the switch stays"
        );
        drop(held);
        assert_eq!(drain(&open, Duration::from_secs(2)).await, 0);
        elder_task.abort();
        successor_task.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
