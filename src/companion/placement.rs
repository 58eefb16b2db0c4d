//! Placement: whether the new container can run beside the old one, or the
//! old one must stop first; the name the old one waits under meanwhile; how
//! long it gets to stop. Pure, so unit-tested without an Engine.

use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use serde::Serialize;

use super::container::labels;
use crate::recreate::clone::network_mode;

/// `true` forces stop-first even where the ports would allow running beside
/// (a database that locks its data directory, a singleton worker).
pub const STOP_FIRST_LABEL: &str = "selfup.stop-first";
/// Docker's stop timeout when a container names none.
const DOCKER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How the new container takes the old one's place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "placement", content = "reason", rename_all = "snake_case")]
pub enum Placement {
    /// The old one keeps running (renamed aside) until the new one is up.
    Beside,
    /// The old one stops first, because both cannot run at once; the reason says why.
    StopFirst(String),
}

/// Can the new container run beside the old one? Not when the old one
/// holds something only one of them can have: a published host port, the
/// host's network (every port it listens on is a host port, and Docker cannot
/// tell which), another container's network namespace, or a fixed address.
pub fn placement(container: &ContainerInspectResponse) -> Placement {
    if labels(container)
        .get(STOP_FIRST_LABEL)
        .is_some_and(|v| v.trim() == "true")
    {
        return Placement::StopFirst(format!("it is labelled {STOP_FIRST_LABEL}=true"));
    }
    let mode = network_mode(container);
    if mode == "host" {
        return Placement::StopFirst("it uses the host's network, where its ports are the host's".into());
    }
    if let Some(other) = mode.strip_prefix("container:") {
        return Placement::StopFirst(format!("it shares the network of container {other}"));
    }
    let host_config = container.host_config.clone().unwrap_or_default();
    let mut published: Vec<String> = host_config
        .port_bindings
        .unwrap_or_default()
        .into_values()
        .flatten()
        .flatten()
        .filter_map(|b| {
            let port = b.host_port.unwrap_or_default();
            // Empty or 0: Docker picks a free port for each container.
            (!port.is_empty() && port != "0").then(|| match b.host_ip.as_deref() {
                Some(ip) if !ip.is_empty() => format!("{ip}:{port}"),
                _ => port,
            })
        })
        .collect();
    if !published.is_empty() {
        published.sort();
        published.dedup();
        return Placement::StopFirst(format!("it publishes host port {}", published.join(", ")));
    }
    let networks = container
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default();
    let mut fixed: Vec<String> = networks
        .into_iter()
        .filter_map(|(name, ep)| {
            let ipam = ep.ipam_config?;
            let address = [ipam.ipv4_address, ipam.ipv6_address]
                .into_iter()
                .flatten()
                .find(|a| !a.is_empty())?;
            Some(format!("{address} on {name}"))
        })
        .collect();
    if !fixed.is_empty() {
        fixed.sort();
        return Placement::StopFirst(format!("it has the fixed address {}", fixed.join(", ")));
    }
    Placement::Beside
}

/// The name the old container carries while the new one has its name.
pub fn aside_name(name: &str, id: &str) -> String {
    let short: String = id.chars().take(12).collect();
    format!("{}-selfup-old-{short}", name.trim_start_matches('/'))
}

/// How long the old container gets to stop gracefully: its own stop timeout, else Docker's.
pub fn stop_timeout(container: &ContainerInspectResponse) -> Duration {
    container
        .config
        .as_ref()
        .and_then(|c| c.stop_timeout)
        .filter(|t| *t >= 0)
        .map_or(DOCKER_STOP_TIMEOUT, |t| Duration::from_secs(t as u64))
}

/// Whether Docker removes the container when it stops (`--rm`): stopping it
/// first would leave nothing to roll back to.
pub fn auto_removes(container: &ContainerInspectResponse) -> bool {
    container.host_config.as_ref().and_then(|h| h.auto_remove) == Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ContainerConfig, ContainerState, EndpointIpamConfig, EndpointSettings, HostConfig, NetworkSettings, PortBinding,
    };
    use std::collections::HashMap;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn container(network_mode: &str) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some(ID.into()),
            name: Some("/app".into()),
            config: Some(ContainerConfig {
                hostname: Some("0123456789ab".into()),
                labels: Some(HashMap::new()),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                network_mode: Some(network_mode.into()),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([(network_mode.to_string(), EndpointSettings::default())])),
                ..Default::default()
            }),
            state: Some(ContainerState {
                running: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn publish(c: &mut ContainerInspectResponse, host_port: &str) {
        let binding = PortBinding {
            host_ip: Some(String::new()),
            host_port: Some(host_port.into()),
        };
        c.host_config.as_mut().unwrap().port_bindings =
            Some(HashMap::from([("80/tcp".to_string(), Some(vec![binding]))]));
    }

    #[test]
    fn a_container_on_a_network_without_published_ports_is_replaced_beside() {
        assert_eq!(placement(&container("backend")), Placement::Beside);
        let mut c = container("bridge");
        publish(&mut c, "");
        assert_eq!(
            placement(&c),
            Placement::Beside,
            "an ephemeral host port does not conflict"
        );
        publish(&mut c, "0");
        assert_eq!(placement(&c), Placement::Beside);
    }

    #[test]
    fn a_published_host_port_means_stop_first() {
        let mut c = container("bridge");
        publish(&mut c, "8080");
        assert_eq!(
            placement(&c),
            Placement::StopFirst("it publishes host port 8080".into())
        );
    }

    #[test]
    fn host_networking_a_shared_namespace_a_fixed_address_or_the_label_mean_stop_first() {
        assert!(matches!(placement(&container("host")), Placement::StopFirst(r) if r.contains("host's network")));
        assert!(matches!(placement(&container("container:db")), Placement::StopFirst(r) if r.contains("db")));
        let mut fixed = container("backend");
        fixed.network_settings.as_mut().unwrap().networks = Some(HashMap::from([(
            "backend".to_string(),
            EndpointSettings {
                ipam_config: Some(EndpointIpamConfig {
                    ipv4_address: Some("172.30.0.10".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )]));
        assert!(matches!(placement(&fixed), Placement::StopFirst(r) if r.contains("172.30.0.10 on backend")));
        let mut labelled = container("backend");
        labelled
            .config
            .as_mut()
            .unwrap()
            .labels
            .as_mut()
            .unwrap()
            .insert(STOP_FIRST_LABEL.into(), "true".into());
        assert!(matches!(placement(&labelled), Placement::StopFirst(r) if r.contains(STOP_FIRST_LABEL)));
    }

    #[test]
    fn the_old_container_is_renamed_aside_with_its_short_id() {
        assert_eq!(aside_name("/app", ID), "app-selfup-old-0123456789ab");
    }

    #[test]
    fn the_stop_timeout_is_the_containers_own_or_dockers_default() {
        let mut c = container("bridge");
        assert_eq!(stop_timeout(&c), Duration::from_secs(10));
        c.config.as_mut().unwrap().stop_timeout = Some(3);
        assert_eq!(stop_timeout(&c), Duration::from_secs(3));
    }

    #[test]
    fn a_container_that_removes_itself_is_recognised() {
        let mut c = container("bridge");
        assert!(!auto_removes(&c));
        c.host_config.as_mut().unwrap().auto_remove = Some(true);
        assert!(auto_removes(&c));
    }
}
