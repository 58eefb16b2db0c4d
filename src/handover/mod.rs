//! The self-upgrade: the handover protocol, in the order it runs.
//!
//! 1. [`elder`]: the live instance (the elder) takes the single-flight lock
//!    and records the outcome ([`Orchestrator::upgrade`]); [`backend`]
//!    picks where the upgrade lands and runs the shared path, `land`:
//!    `fetch` (registry, pull), `pin` (the version label, the refusal of a
//!    rolled-back image, the decision), then the backend's `deploy` and
//!    `follow`. On this host ([`backend::HostHandover`], in [`elder`]):
//!    `deploy` clones this container onto the other port, starts the
//!    successor and polls its health; `follow` gives it the go-ahead,
//!    waits for its takeover and, with `bake_secs`, runs the [`bake`].
//!    The elder's steps, each one call from there, are in [`steps`].
//! 2. [`takeover`]: the successor publishes its live socket (nginx's
//!    upstream), confirms through it, stops and removes its elder and the
//!    old images [`retention`] allows; at start-up every instance reconciles.
//!
//! As a task of a Docker Swarm service, the other backend lands the upgrade:
//! [`crate::swarm`] updates the service and Swarm replaces the tasks. Both
//! implement one interface, [`crate::recreate::upgrade::UpgradeBackend`]
//! (`deploy`, `follow`, `roll_back`, `status`), with one [`UpgradeOutcome`]
//! and one [`UpgradeError`]; `/upgrade/plan` asks the same backend
//! ([`plan`]). What the self-upgrade shares with companion mode is in
//! [`crate::recreate`].

pub mod backend;
pub mod bake;
pub mod elder;
mod hold;
pub mod plan;
pub mod retention;
pub mod steps;
pub mod takeover;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use semver::Version;
use serde::Serialize;

use crate::docker::DockerError;
use crate::proxy::Nginx;

pub use crate::metrics::Timings;
pub use crate::recreate::upgrade::{
    Deps, PREVIOUS_IMAGE_LABEL, PREVIOUS_VERSION_LABEL, Target, UpgradeError, UpgradeOutcome,
};
use crate::swarm::{SERVICE_ID_LABEL, SERVICE_NAME_LABEL, SwarmService, TASK_ID_LABEL};

/// The compose labels that identify a service's containers.
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";
/// Groups instances that are not started by compose.
pub const GROUP_LABEL: &str = "selfup.group";
/// The environment variables an elder sets on its successor only.
pub const ENV_PORT: &str = "SELFUP_PORT";
pub const ENV_HANDOVER_TOKEN: &str = "SELFUP_HANDOVER_TOKEN";
pub const ENV_HANDOVER_ELDER: &str = "SELFUP_HANDOVER_ELDER";

/// The version that ran before this one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Previous {
    pub version: Version,
    /// The local image id.
    pub image: String,
    /// A tag of that image in this service's repository, else the id.
    pub image_ref: String,
}

/// Where the instance `container` listening on `port` is reached by its
/// siblings (the elder's health poll and go-ahead), and whether that address
/// is the instance's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    pub addr: SocketAddr,
    /// The address belongs to that container's own network namespace: no
    /// other process on the host can listen there, so the handover secret
    /// may travel with the health poll. A loopback port on the host network
    /// is not one: a handover frees it and anyone can bind it.
    pub own: bool,
}

/// Where the instance in `container` is reached on `port`: the one place the
/// network shows through the protocol. With host networking (or none known)
/// it is loopback. On a bridge or user-defined network it is the container's
/// own address there, from the network whose name sorts first among those
/// that gave it one: the elder's clone joins the same networks, so the elder
/// is on that network too.
pub fn instance_addr(container: &ContainerInspectResponse, port: u16) -> Reach {
    let loopback = Reach {
        addr: loopback_addr(port),
        own: false,
    };
    let mode = crate::recreate::clone::network_mode(container);
    if mode == "host" || mode == "none" || mode.starts_with("container:") {
        return loopback;
    }
    let networks = container
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .map(|n| n.iter().collect::<std::collections::BTreeMap<_, _>>())
        .unwrap_or_default();
    networks
        .values()
        .find_map(|ep| ep.ip_address.as_deref()?.parse::<IpAddr>().ok())
        .map(|ip| Reach {
            addr: SocketAddr::new(ip, port),
            own: true,
        })
        .unwrap_or(loopback)
}

/// An instance's port on this container's own loopback: where the image's
/// HEALTHCHECK, which runs inside the container, asks.
pub fn loopback_addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)
}

/// The addresses a request from the host itself arrives from on the
/// networks of `container`: each network's gateway, the bridge's address
/// on the host. Docker's proxy for a port published on 127.0.0.1 connects
/// from there, and so does any process on the host that connects to the
/// container's address; with host networking there are none (loopback is
/// the host).
pub fn host_addresses(container: &ContainerInspectResponse) -> Vec<IpAddr> {
    let mode = crate::recreate::clone::network_mode(container);
    if mode == "host" || mode == "none" || mode.starts_with("container:") {
        return Vec::new();
    }
    let mut gateways: Vec<IpAddr> = container
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|(_, ep)| [ep.gateway.as_deref(), ep.ipv6_gateway.as_deref()])
        .flatten()
        .filter_map(|g| g.parse().ok())
        .collect();
    gateways.sort();
    gateways.dedup();
    gateways
}

/// The labels every instance of this service shares, used to find siblings:
/// compose's project and service, else `selfup.group`, else none.
pub fn group_labels(labels: &HashMap<String, String>) -> Vec<(String, String)> {
    let pick = |keys: &[&str]| -> Option<Vec<(String, String)>> {
        keys.iter()
            .map(|k| labels.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect()
    };
    pick(&[COMPOSE_PROJECT, COMPOSE_SERVICE])
        .or_else(|| pick(&[GROUP_LABEL]))
        .unwrap_or_default()
}

/// The container name without the `-<port>` a successor carries until it has
/// taken over: the name the one live instance ends up with.
pub fn base_name(name: &str, ports: [u16; 2]) -> String {
    let name = name.trim_start_matches('/');
    for port in ports {
        if let Some(base) = name.strip_suffix(&format!("-{port}"))
            && !base.is_empty()
        {
            return base.to_string();
        }
    }
    name.to_string()
}

/// The orchestrator: everything an upgrade needs, passed in.
#[derive(Debug)]
pub struct Orchestrator {
    /// What every backend works with (`o.engine`, `o.settings`, ... reach
    /// it through `Deref`).
    pub deps: Deps,
    pub proxy: Option<Nginx>,
    /// For asking through the live socket's public path (`live_socket`), if
    /// there is one; built once, before any takeover needs it.
    pub live_http: Option<reqwest::Client>,
    /// This instance's control socket and, in companion mode, its update
    /// socket, once bound; published when this instance becomes the live one.
    pub control: std::sync::OnceLock<Vec<crate::control::ControlSocket>>,
    /// The companion's swaps in the data directory, shared with every
    /// instance: an upgrade waits for running ones.
    pub swaps: Option<Arc<crate::recreate::journal::Swaps>>,
    /// Where finished upgrades are reported (`notify_urls`), if anywhere.
    pub notifier: Option<Arc<crate::notify::Notifier>>,
    /// The blue-green apps' sockets (companion mode), published with the
    /// live socket.
    pub apps: Option<Arc<dyn crate::control::Publish>>,
    /// The addresses the host itself reaches this container from on its
    /// networks ([`host_addresses`]), learnt once at start-up; until then,
    /// and with host networking, there are none and loopback alone is local.
    pub host_addrs: std::sync::OnceLock<Vec<IpAddr>>,
    /// Where upgrades land (this host, or the Swarm service this instance
    /// is a task of), detected once from this container's labels.
    pub backend: std::sync::OnceLock<Backend>,
}

impl std::ops::Deref for Orchestrator {
    type Target = Deps;
    fn deref(&self) -> &Deps {
        &self.deps
    }
}

/// Where an upgrade lands once its target is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// This host: the blue-green handover of [`elder`] and [`takeover`], a
    /// successor container beside this one.
    Host,
    /// A Swarm service this instance is a task of: Swarm replaces the tasks.
    Swarm(SwarmService),
}

impl Backend {
    /// The backend of the container `container`: Swarm when Swarm's labels
    /// name a service, else the host.
    pub fn of(container: &ContainerInspectResponse) -> Backend {
        let labels = container
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .cloned()
            .unwrap_or_default();
        match labels.get(SERVICE_ID_LABEL).filter(|id| !id.is_empty()) {
            Some(id) => Backend::Swarm(SwarmService {
                id: id.clone(),
                name: labels.get(SERVICE_NAME_LABEL).cloned().unwrap_or_else(|| id.clone()),
                task: labels.get(TASK_ID_LABEL).cloned(),
            }),
            None => Backend::Host,
        }
    }

    /// The Swarm service, if this is the Swarm backend.
    pub fn swarm(&self) -> Option<&SwarmService> {
        match self {
            Backend::Swarm(service) => Some(service),
            Backend::Host => None,
        }
    }
}

impl Orchestrator {
    /// The orchestrator of `deps`, with what only the self-upgrade needs:
    /// the swaps it waits for, where it reports, and the apps' sockets it
    /// publishes with its own.
    pub fn new(
        deps: Deps,
        swaps: Option<Arc<crate::recreate::journal::Swaps>>,
        notifier: Option<Arc<crate::notify::Notifier>>,
        apps: Option<Arc<dyn crate::control::Publish>>,
    ) -> Self {
        let settings = &deps.settings;
        let proxy = settings
            .proxy_enabled()
            .then(|| Nginx::new(deps.engine.clone(), settings.nginx_container.clone()));
        let live_http = (!settings.live_socket.as_os_str().is_empty()).then(|| {
            reqwest::Client::builder()
                .unix_socket(settings.live_socket.as_path())
                .timeout(Duration::from_secs(1))
                .pool_max_idle_per_host(0)
                .build()
                .expect("a reqwest client with static settings builds")
        });
        Orchestrator {
            deps,
            proxy,
            live_http,
            control: std::sync::OnceLock::new(),
            swaps,
            notifier,
            apps,
            host_addrs: std::sync::OnceLock::new(),
            backend: std::sync::OnceLock::new(),
        }
    }

    /// Whether `peer` is the host itself: loopback, or the gateway of one of
    /// this container's networks. Every other address on those networks
    /// (nginx, the apps, the companion's callers) is the public side.
    pub fn is_host(&self, peer: IpAddr) -> bool {
        peer.is_loopback() || self.host_addrs.get().is_some_and(|hosts| hosts.contains(&peer))
    }

    /// Learns this container's networks' gateways ([`host_addresses`]), once.
    pub async fn learn_host_addresses(&self) {
        let Some(me) = &self.self_id else { return };
        match self.engine.inspect_container(me).await {
            Ok(container) => {
                let hosts = host_addresses(&container);
                if !hosts.is_empty() {
                    tracing::info!(
                        ?hosts,
                        "on a private network: requests from these addresses come from the host"
                    );
                }
                let _ = self.host_addrs.set(hosts);
            }
            Err(e) => tracing::warn!(error = %e, "cannot inspect this container: only loopback is local"),
        }
    }

    /// Leaves every network this container is on, before its listeners
    /// close: an elder that has lingered out stops being found by the name
    /// it shares with its successor (a service name, a network alias), so
    /// that a client looking the name up from then on gets the successor's
    /// address only, never one that refuses connections. Nothing happens
    /// with host networking.
    pub async fn leave_networks(&self) {
        let Some(me) = &self.self_id else { return };
        let Ok(container) = self.engine.inspect_container(me).await else {
            return;
        };
        let mode = crate::recreate::clone::network_mode(&container);
        if mode == "host" || mode == "none" || mode.starts_with("container:") {
            return;
        }
        let networks: Vec<String> = container
            .network_settings
            .and_then(|n| n.networks)
            .map(|n| n.into_keys().collect())
            .unwrap_or_default();
        for network in networks {
            match self.engine.disconnect_network(&network, me).await {
                Ok(()) => tracing::info!(%network, "left the network before draining"),
                Err(e) => tracing::warn!(%network, error = %e, "could not leave the network"),
            }
        }
    }

    /// This instance's live socket, once bound.
    pub fn live_socket(&self) -> Option<&crate::control::ControlSocket> {
        self.control
            .get()?
            .iter()
            .find(|s| s.public() == self.settings.live_socket)
    }

    /// Whether another instance has published its live socket over this
    /// one's: this instance has been taken over from.
    pub fn taken_over_from(&self) -> bool {
        self.live_socket().is_some_and(|live| live.held_by_another())
    }

    /// Makes this instance's sockets (live, control, update) the ones
    /// clients and nginx reach: called whenever this instance becomes (or
    /// again becomes) the live one.
    pub fn publish_sockets(&self) {
        for control in self.control.get().into_iter().flatten() {
            match control.publish() {
                Ok(()) => tracing::info!(path = %control.public().display(), "socket published"),
                Err(e) => tracing::warn!(path = %control.public().display(), error = %e, "could not publish a socket"),
            }
        }
        if let Some(apps) = &self.apps {
            apps.publish();
        }
    }

    /// The running sibling containers of `labels`' group, and the stopped ones.
    pub async fn siblings(
        &self,
        labels: &HashMap<String, String>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, DockerError> {
        let group = group_labels(labels);
        if group.is_empty() {
            return Ok(Vec::new());
        }
        self.engine.list_by_labels(&group).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_labels_define_the_group_before_the_selfup_label() {
        let labels = HashMap::from([
            (COMPOSE_PROJECT.to_string(), "demo".to_string()),
            (COMPOSE_SERVICE.to_string(), "selfup".to_string()),
            (GROUP_LABEL.to_string(), "g".to_string()),
        ]);
        assert_eq!(group_labels(&labels).len(), 2);
        let only_group = HashMap::from([(GROUP_LABEL.to_string(), "g".to_string())]);
        assert_eq!(
            group_labels(&only_group),
            vec![(GROUP_LABEL.to_string(), "g".to_string())]
        );
        assert!(group_labels(&HashMap::new()).is_empty());
    }

    fn on_networks(mode: &str, networks: &[(&str, &str, &str)]) -> ContainerInspectResponse {
        use bollard::models::{EndpointSettings, HostConfig, NetworkSettings};
        ContainerInspectResponse {
            host_config: Some(HostConfig {
                network_mode: Some(mode.into()),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(
                    networks
                        .iter()
                        .map(|(name, ip, gateway)| {
                            let ep = EndpointSettings {
                                ip_address: Some(ip.to_string()),
                                gateway: Some(gateway.to_string()),
                                ..Default::default()
                            };
                            (name.to_string(), ep)
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn an_instance_on_a_network_is_reached_at_its_own_address_and_on_the_host_network_on_loopback() {
        let bridged = on_networks(
            "proj_default",
            &[
                ("proj_default", "172.20.0.3", "172.20.0.1"),
                ("app", "172.21.0.4", "172.21.0.1"),
            ],
        );
        let reach = instance_addr(&bridged, 5801);
        assert_eq!(
            reach.addr,
            "172.21.0.4:5801".parse().unwrap(),
            "the first network by name"
        );
        assert!(reach.own);
        // Started, not yet given an address (or no networks): loopback, not its own.
        for container in [
            on_networks("host", &[("host", "", "")]),
            on_networks("bridge", &[("bridge", "", "")]),
            on_networks("container:abc", &[]),
            ContainerInspectResponse::default(),
        ] {
            let reach = instance_addr(&container, 5800);
            assert_eq!(reach.addr, "127.0.0.1:5800".parse().unwrap());
            assert!(!reach.own);
        }
    }

    #[test]
    fn the_host_is_each_network_gateway_and_nothing_with_host_networking() {
        let bridged = on_networks(
            "proj_default",
            &[
                ("proj_default", "172.20.0.3", "172.20.0.1"),
                ("app", "172.21.0.4", "172.21.0.1"),
            ],
        );
        assert_eq!(
            host_addresses(&bridged),
            vec!["172.20.0.1".parse::<IpAddr>().unwrap(), "172.21.0.1".parse().unwrap()]
        );
        assert!(host_addresses(&on_networks("host", &[("host", "", "")])).is_empty());
    }

    #[test]
    fn the_base_name_drops_a_successor_port_suffix_only() {
        assert_eq!(base_name("/docker_selfup_1-5801", [5800, 5801]), "docker_selfup_1");
        assert_eq!(base_name("/docker_selfup_1", [5800, 5801]), "docker_selfup_1");
        assert_eq!(base_name("app-9000", [5800, 5801]), "app-9000");
        assert_eq!(base_name("-5800", [5800, 5801]), "-5800");
    }
}
