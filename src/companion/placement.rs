//! The decisions of an update that need no Engine: whether a container may
//! be updated, whether its successor can run beside it, what the clone needs
//! beyond the cloning rules, and whether the new container came up.
//!
//! The cloning rules themselves are [`crate::recreate::clone`]; what is here
//! only adds what recreating *another* container needs on top of them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointSettings, HealthStatusEnum, MountType, RestartPolicy,
    RestartPolicyNameEnum,
};
use serde::Serialize;

/// Only containers with this label set to `true` may be updated.
pub const ENABLE_LABEL: &str = "selfup.enable";
/// `true` forces stop-first even where the ports would allow running beside
/// (a database that locks its data directory, a singleton worker).
pub const STOP_FIRST_LABEL: &str = "selfup.stop-first";
/// Docker's stop timeout when a container names none.
const DOCKER_STOP_TIMEOUT: Duration = Duration::from_secs(10);

fn labels(container: &ContainerInspectResponse) -> HashMap<String, String> {
    container
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default()
}

fn network_mode(container: &ContainerInspectResponse) -> String {
    container
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default()
}

fn short_id(container: &ContainerInspectResponse) -> String {
    container.id.as_deref().unwrap_or_default().chars().take(12).collect()
}

/// Whether the container opted in with `selfup.enable=true`.
pub fn is_enabled(container: &ContainerInspectResponse) -> bool {
    labels(container).get(ENABLE_LABEL).is_some_and(|v| v.trim() == "true")
}

/// How the new container takes the old one's place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "placement", content = "reason", rename_all = "snake_case")]
pub enum Placement {
    /// The old one keeps running (renamed aside) until the new one is up.
    Beside,
    /// The old one stops first, because both cannot run at once; the reason says why.
    StopFirst(String),
}

/// Whether a string can name a container (as Docker allows names, or an id):
/// anything else never reaches the Engine API's URL paths.
pub fn is_container_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 255
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b))
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

/// What recreating another container needs beyond the cloning rules:
/// its anonymous volumes (the data must not stay behind in a volume nobody
/// mounts), and a hostname its operator chose (the rules drop the hostname,
/// which for selfup's own clones is only the old id).
pub fn complete_clone(body: &mut ContainerCreateBody, container: &ContainerInspectResponse) {
    keep_anonymous_volumes(body, container);
    let mode = network_mode(container);
    if mode != "host" && !mode.starts_with("container:") {
        let config = container.config.clone().unwrap_or_default();
        if let Some(hostname) = config.hostname.filter(|h| !h.is_empty() && *h != short_id(container)) {
            body.hostname = Some(hostname);
        }
        body.domainname = config.domainname.filter(|d| !d.is_empty());
    }
}

/// Mounts the old container's anonymous volumes (`-v /path`, an image's
/// `VOLUME`, `--mount type=volume` without a source) by name in the new one.
fn keep_anonymous_volumes(body: &mut ContainerCreateBody, container: &ContainerInspectResponse) {
    let Some(host_config) = body.host_config.as_mut() else {
        return;
    };
    let volumes = container
        .mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| {
            (m.typ.as_deref() == Some("volume")).then_some(())?;
            Some((m.name?, m.destination?, m.rw != Some(false)))
        });
    for (name, destination, writable) in volumes {
        let bound: HashSet<&str> = host_config
            .binds
            .iter()
            .flatten()
            .filter_map(|b| b.split(':').nth(1))
            .collect();
        if bound.contains(destination.as_str()) {
            continue;
        }
        if let Some(mount) = host_config
            .mounts
            .iter_mut()
            .flatten()
            .find(|m| m.target.as_deref() == Some(destination.as_str()))
        {
            if mount.typ == Some(MountType::VOLUME) && mount.source.as_deref().unwrap_or_default().is_empty() {
                mount.source = Some(name);
            }
            continue;
        }
        let bind = if writable {
            format!("{name}:{destination}")
        } else {
            format!("{name}:{destination}:ro")
        };
        host_config.binds.get_or_insert_with(Vec::new).push(bind);
    }
}

/// Holds back the restart policy until the new container is up: a crash
/// then shows as the exit it is (with its code), not as a restart loop, and a
/// rolled-back container is not brought back by Docker. Returns the policy
/// to set once the container is up, if it has one.
pub fn defer_restart_policy(body: &mut ContainerCreateBody) -> Option<RestartPolicy> {
    let host_config = body.host_config.as_mut()?;
    let policy = host_config.restart_policy.take()?;
    let none = matches!(
        policy.name,
        None | Some(RestartPolicyNameEnum::EMPTY | RestartPolicyNameEnum::NO)
    );
    if none {
        host_config.restart_policy = Some(policy);
        return None;
    }
    host_config.restart_policy = Some(RestartPolicy {
        name: Some(RestartPolicyNameEnum::NO),
        maximum_retry_count: None,
    });
    Some(policy)
}

/// Whether Docker removes the container when it stops (`--rm`): stopping it
/// first would leave nothing to roll back to.
pub fn auto_removes(container: &ContainerInspectResponse) -> bool {
    container.host_config.as_ref().and_then(|h| h.auto_remove) == Some(true)
}

/// Engines before API 1.44 take one network at create time: keeps the
/// network the container's network mode names (else the first by name) in
/// the body, and returns the others, to connect before the start.
pub fn split_networks(body: &mut ContainerCreateBody) -> Vec<(String, EndpointSettings)> {
    let mode = body
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();
    let Some(config) = body.networking_config.as_mut() else {
        return Vec::new();
    };
    let Some(mut endpoints) = config.endpoints_config.take() else {
        return Vec::new();
    };
    let mut names: Vec<String> = endpoints.keys().cloned().collect();
    names.sort();
    let primary = if endpoints.contains_key(&mode) {
        Some(mode)
    } else if mode == "default" && endpoints.contains_key("bridge") {
        Some("bridge".to_string())
    } else {
        names.first().cloned()
    };
    let mut later = Vec::new();
    for name in names {
        if Some(&name) != primary.as_ref() {
            let endpoint = endpoints.remove(&name).unwrap_or_default();
            later.push((name, endpoint));
        }
    }
    config.endpoints_config = Some(endpoints);
    later
}

/// Whether the container's configuration has a HEALTHCHECK (its own or its image's).
pub fn has_healthcheck(container: &ContainerInspectResponse) -> bool {
    let configured = container
        .config
        .as_ref()
        .and_then(|c| c.healthcheck.as_ref())
        .and_then(|h| h.test.as_ref())
        .is_some_and(|t| !t.is_empty() && t[0] != "NONE");
    let reported = container
        .state
        .as_ref()
        .and_then(|s| s.health.as_ref())
        .and_then(|h| h.status)
        .is_some_and(|s| !matches!(s, HealthStatusEnum::NONE | HealthStatusEnum::EMPTY));
    configured || reported
}

/// Where a new container stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Healthy (or, without a HEALTHCHECK, running for the whole settle time).
    Up,
    /// Not yet; what it is waiting for.
    Waiting(String),
    /// It exited, restarted, or failed its HEALTHCHECK: roll back.
    Failed(String),
}

/// Judges a new container from its inspect output, `elapsed` after its start.
pub fn verdict(container: &ContainerInspectResponse, elapsed: Duration, settle: Duration) -> Verdict {
    let state = container.state.clone().unwrap_or_default();
    // A restart policy brings a crashed container back: a restart is an exit.
    let restarts = container.restart_count.unwrap_or(0);
    if state.oom_killed == Some(true) {
        return Verdict::Failed("it was killed for running out of memory".into());
    }
    if state.running != Some(true) || state.restarting == Some(true) || restarts > 0 {
        let code = state.exit_code.map_or("an unknown code".to_string(), |c| c.to_string());
        let mut reason = format!("it exited with code {code}");
        if restarts > 0 {
            reason.push_str(&format!(" and was restarted {restarts} times"));
        }
        if let Some(error) = state.error.filter(|e| !e.is_empty()) {
            reason.push_str(&format!(" ({error})"));
        }
        return Verdict::Failed(reason);
    }
    if has_healthcheck(container) {
        let health = state.health.unwrap_or_default();
        let last_output = health
            .log
            .unwrap_or_default()
            .last()
            .and_then(|r| r.output.clone())
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty());
        return match health.status {
            Some(HealthStatusEnum::HEALTHY) => Verdict::Up,
            Some(HealthStatusEnum::UNHEALTHY) => Verdict::Failed(match last_output {
                Some(out) => format!("its HEALTHCHECK reports unhealthy (last output: {out})"),
                None => "its HEALTHCHECK reports unhealthy".into(),
            }),
            _ => Verdict::Waiting("its HEALTHCHECK to report healthy (it is starting)".into()),
        };
    }
    if elapsed >= settle {
        Verdict::Up
    } else {
        Verdict::Waiting(format!("it to keep running for {settle:?} (it has no HEALTHCHECK)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{
        ContainerConfig, ContainerState, EndpointIpamConfig, Health, HealthConfig, HealthcheckResult, HostConfig,
        Mount, MountPoint, NetworkSettings, NetworkingConfig, PortBinding,
    };

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn container(network_mode: &str) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some(ID.into()),
            name: Some("/app".into()),
            config: Some(ContainerConfig {
                hostname: Some("0123456789ab".into()),
                labels: Some(HashMap::from([(ENABLE_LABEL.into(), "true".into())])),
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
    fn only_the_true_label_enables_an_update() {
        assert!(is_enabled(&container("bridge")));
        for value in ["false", "yes", "1", ""] {
            let mut c = container("bridge");
            c.config.as_mut().unwrap().labels = Some(HashMap::from([(ENABLE_LABEL.into(), value.into())]));
            assert!(!is_enabled(&c), "{value:?}");
        }
        let mut c = container("bridge");
        c.config.as_mut().unwrap().labels = None;
        assert!(!is_enabled(&c));
    }

    #[test]
    fn container_names_are_what_docker_allows_and_nothing_that_escapes_a_url_path() {
        for good in ["app", "my_app-1.2", ID, "A1"] {
            assert!(is_container_name(good), "{good}");
        }
        for bad in ["", "/app", "../images/x", "a/b", "a?b", "-app", ".app", "a b", "a%2Fb"] {
            assert!(!is_container_name(bad), "{bad}");
        }
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
    fn anonymous_volumes_are_carried_over_by_name_and_explicit_ones_are_left_alone() {
        let mut c = container("bridge");
        c.mounts = Some(vec![
            MountPoint {
                typ: Some("volume".into()),
                name: Some("named".into()),
                destination: Some("/named".into()),
                rw: Some(true),
                ..Default::default()
            },
            MountPoint {
                typ: Some("volume".into()),
                name: Some("f00d".into()),
                destination: Some("/anon".into()),
                rw: Some(true),
                ..Default::default()
            },
            MountPoint {
                typ: Some("volume".into()),
                name: Some("beef".into()),
                destination: Some("/readonly".into()),
                rw: Some(false),
                ..Default::default()
            },
            MountPoint {
                typ: Some("volume".into()),
                name: Some("cafe".into()),
                destination: Some("/mounted".into()),
                rw: Some(true),
                ..Default::default()
            },
            MountPoint {
                typ: Some("bind".into()),
                source: Some("/srv".into()),
                destination: Some("/srv".into()),
                ..Default::default()
            },
        ]);
        let mut body = ContainerCreateBody {
            host_config: Some(HostConfig {
                binds: Some(vec!["named:/named".into(), "/srv:/srv:ro".into()]),
                mounts: Some(vec![Mount {
                    target: Some("/mounted".into()),
                    typ: Some(MountType::VOLUME),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        complete_clone(&mut body, &c);
        let hc = body.host_config.unwrap();
        assert_eq!(
            hc.binds.unwrap(),
            vec!["named:/named", "/srv:/srv:ro", "f00d:/anon", "beef:/readonly:ro"]
        );
        assert_eq!(hc.mounts.unwrap()[0].source.as_deref(), Some("cafe"));
    }

    #[test]
    fn an_operator_hostname_is_kept_and_the_engine_assigned_one_is_not() {
        let mut body = ContainerCreateBody::default();
        complete_clone(&mut body, &container("bridge"));
        assert_eq!(body.hostname, None);
        let mut c = container("bridge");
        c.config.as_mut().unwrap().hostname = Some("rabbit".into());
        c.config.as_mut().unwrap().domainname = Some("example".into());
        complete_clone(&mut body, &c);
        assert_eq!(body.hostname.as_deref(), Some("rabbit"));
        assert_eq!(body.domainname.as_deref(), Some("example"));
        let mut host = container("host");
        host.config.as_mut().unwrap().hostname = Some("the-host".into());
        let mut body = ContainerCreateBody::default();
        complete_clone(&mut body, &host);
        assert_eq!(body.hostname, None);
    }

    #[test]
    fn the_restart_policy_waits_until_the_new_container_is_up() {
        let with_policy = |name| ContainerCreateBody {
            host_config: Some(HostConfig {
                restart_policy: Some(RestartPolicy {
                    name: Some(name),
                    maximum_retry_count: Some(3),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut body = with_policy(RestartPolicyNameEnum::ON_FAILURE);
        let deferred = defer_restart_policy(&mut body).unwrap();
        assert_eq!(deferred.name, Some(RestartPolicyNameEnum::ON_FAILURE));
        assert_eq!(deferred.maximum_retry_count, Some(3));
        let now = body.host_config.unwrap().restart_policy.unwrap();
        assert_eq!(now.name, Some(RestartPolicyNameEnum::NO));
        let mut no = with_policy(RestartPolicyNameEnum::NO);
        assert_eq!(defer_restart_policy(&mut no), None);
        assert_eq!(defer_restart_policy(&mut ContainerCreateBody::default()), None);
    }

    #[test]
    fn a_container_that_removes_itself_is_recognised() {
        let mut c = container("bridge");
        assert!(!auto_removes(&c));
        c.host_config.as_mut().unwrap().auto_remove = Some(true);
        assert!(auto_removes(&c));
    }

    #[test]
    fn the_network_mode_network_is_created_with_and_the_others_are_connected_later() {
        let endpoint = |alias: &str| EndpointSettings {
            aliases: Some(vec![alias.to_string()]),
            ..Default::default()
        };
        let mut body = ContainerCreateBody {
            host_config: Some(HostConfig {
                network_mode: Some("front".into()),
                ..Default::default()
            }),
            networking_config: Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([
                    ("back".to_string(), endpoint("b")),
                    ("front".to_string(), endpoint("f")),
                    ("admin".to_string(), endpoint("a")),
                ])),
            }),
            ..Default::default()
        };
        let later = split_networks(&mut body);
        let kept = body.networking_config.unwrap().endpoints_config.unwrap();
        assert_eq!(kept.keys().collect::<Vec<_>>(), vec!["front"]);
        assert_eq!(
            later
                .iter()
                .map(|(n, e)| (n.as_str(), e.aliases.clone().unwrap()[0].clone()))
                .collect::<Vec<_>>(),
            vec![("admin", "a".to_string()), ("back", "b".to_string())]
        );
        let mut none = ContainerCreateBody::default();
        assert!(split_networks(&mut none).is_empty());
    }

    fn running_for(c: &ContainerInspectResponse, secs: u64) -> Verdict {
        verdict(c, Duration::from_secs(secs), Duration::from_secs(5))
    }

    #[test]
    fn without_a_healthcheck_a_container_is_up_once_it_has_run_for_the_settle_time() {
        let c = container("bridge");
        assert!(matches!(running_for(&c, 1), Verdict::Waiting(_)));
        assert_eq!(running_for(&c, 5), Verdict::Up);
    }

    #[test]
    fn an_exit_or_a_restart_fails_at_once() {
        let mut c = container("bridge");
        c.state = Some(ContainerState {
            running: Some(false),
            exit_code: Some(3),
            ..Default::default()
        });
        assert_eq!(running_for(&c, 0), Verdict::Failed("it exited with code 3".into()));
        let mut restarted = container("bridge");
        restarted.restart_count = Some(2);
        restarted.state.as_mut().unwrap().exit_code = Some(1);
        assert!(matches!(running_for(&restarted, 9), Verdict::Failed(r) if r.contains("restarted 2 times")));
    }

    #[test]
    fn with_a_healthcheck_its_status_decides() {
        let mut c = container("bridge");
        c.config.as_mut().unwrap().healthcheck = Some(HealthConfig {
            test: Some(vec!["CMD".into(), "/probe".into()]),
            ..Default::default()
        });
        let with = |status, output: &str| {
            let mut c = c.clone();
            c.state.as_mut().unwrap().health = Some(Health {
                status: Some(status),
                log: Some(vec![HealthcheckResult {
                    output: Some(output.into()),
                    exit_code: Some(1),
                    ..Default::default()
                }]),
                ..Default::default()
            });
            c
        };
        // Running long past the settle time is not enough while it is starting.
        assert!(matches!(
            running_for(&with(HealthStatusEnum::STARTING, ""), 60),
            Verdict::Waiting(_)
        ));
        assert!(matches!(running_for(&c, 60), Verdict::Waiting(_)));
        assert_eq!(running_for(&with(HealthStatusEnum::HEALTHY, ""), 0), Verdict::Up);
        assert_eq!(
            running_for(&with(HealthStatusEnum::UNHEALTHY, "db down\n"), 0),
            Verdict::Failed("its HEALTHCHECK reports unhealthy (last output: db down)".into())
        );
        let mut disabled = container("bridge");
        disabled.config.as_mut().unwrap().healthcheck = Some(HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        });
        assert!(!has_healthcheck(&disabled));
    }
}
