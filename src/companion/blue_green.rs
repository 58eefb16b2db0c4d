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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use serde::Serialize;
use tokio::net::{TcpStream, UnixListener};
use tokio::time::{Instant, sleep};

use super::placement::labels;
use crate::control::{Access, ControlSocket};

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
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Where one app's connections go now, and how many are open to it.
#[derive(Debug, Clone)]
struct Target {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
}

/// One app's public socket and the address it joins connections to.
#[derive(Debug)]
pub struct AppFront {
    socket: ControlSocket,
    target: Mutex<Target>,
}

/// Counts a connection as open to its target until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AppFront {
    fn target(&self) -> Target {
        self.target.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The address connections are joined to now.
    pub fn addr(&self) -> SocketAddr {
        self.target().addr
    }

    /// Sends every new connection to `addr`; returns the count of those
    /// still open to the address before, to drain.
    pub fn switch(&self, addr: SocketAddr) -> Arc<AtomicUsize> {
        let mut target = self.target.lock().unwrap_or_else(|p| p.into_inner());
        if target.addr == addr {
            return Arc::new(AtomicUsize::new(0));
        }
        let next = Target {
            addr,
            open: Arc::new(AtomicUsize::new(0)),
        };
        std::mem::replace(&mut *target, next).open
    }

    /// The public path of this app's socket.
    pub fn path(&self) -> String {
        self.socket.public().display().to_string()
    }

    async fn serve(self: Arc<Self>, listener: UnixListener) {
        loop {
            let (mut downstream, _) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(socket = %self.path(), error = %e, "accepting an app connection");
                    sleep(POLL).await;
                    continue;
                }
            };
            // Counted before the connect, so that a drain never misses a
            // connection on its way to the elder.
            let target = self.target();
            target.open.fetch_add(1, Ordering::SeqCst);
            let open = Open(target.open.clone());
            tokio::spawn(async move {
                let _open = open;
                match TcpStream::connect(target.addr).await {
                    Ok(mut upstream) => {
                        let _ = upstream.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
                    }
                    Err(e) => tracing::warn!(app = %target.addr, error = %e, "the app refused a connection"),
                }
            });
        }
    }
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
}

impl AppFronts {
    pub fn new(dir: PathBuf, port: u16) -> AppFronts {
        AppFronts {
            dir,
            port,
            live: AtomicBool::new(false),
            fronts: Mutex::default(),
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
        let listener = UnixListener::from_std(listener)?;
        let front = Arc::new(AppFront {
            socket,
            target: Mutex::new(Target {
                addr,
                open: Arc::new(AtomicUsize::new(0)),
            }),
        });
        let front = self.fronts().entry(name.to_string()).or_insert(front).clone();
        tokio::spawn(front.clone().serve(listener));
        if self.live.load(Ordering::SeqCst) {
            front.socket.publish()?;
        }
        tracing::info!(app = name, socket = %front.path(), %addr, "fronting a blue-green app");
        Ok(front)
    }

    /// Publishes every app socket: this instance is the live one now.
    pub fn publish(&self) {
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
mod tests {
    use super::*;
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
    fn the_address_is_the_first_network_that_gave_one() {
        let c = container(&[], &[("zeta", "10.0.0.9"), ("alpha", ""), ("beta", "172.18.0.4")]);
        assert_eq!(address(&c, 8080), Some("172.18.0.4:8080".parse().unwrap()));
        assert_eq!(address(&container(&[], &[("host", "")]), 80), None);
    }

    #[tokio::test]
    async fn a_switch_sends_new_connections_to_the_successor_while_the_elder_drains() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn app(text: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<()>) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let task = tokio::spawn(async move {
                loop {
                    let (mut c, _) = listener.accept().await.unwrap();
                    tokio::spawn(async move {
                        let mut byte = [0u8; 1];
                        let _ = c.read_exact(&mut byte).await;
                        let _ = c.write_all(text).await;
                    });
                }
            });
            (addr, task)
        }
        let (elder, elder_task) = app(b"elder").await;
        let (successor, successor_task) = app(b"successor").await;
        let dir = std::env::temp_dir().join(format!("selfup-apps-{}", std::process::id()));
        let fronts = AppFronts::new(dir.join("apps"), 5800);
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
        let open = front.switch(successor);
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
