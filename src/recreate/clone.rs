//! The cloning rules: how a container is recreated from a new image with the
//! settings its operator gave it, and none of the settings its old image gave
//! it; what recreating a container other than selfup adds to them
//! ([`complete_clone`]); and how the create body meets the Engine
//! ([`split_networks`], [`defer_restart_policy`]).
//!
//! Everything here is pure, so the rules are unit-tested without an Engine.

use std::collections::HashMap;

use std::collections::HashSet;

use bollard::models::{
    ContainerConfig, ContainerCreateBody, ContainerInspectResponse, EndpointSettings, ImageConfig, MountType,
    NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};

/// Compose compares this label with the image id behind the tag: a clone
/// that carries it gets the new image's id.
pub const COMPOSE_IMAGE: &str = "com.docker.compose.image";

/// What the new container gets beyond a faithful copy.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// The new image: the id of the image that was checked (a tag can move
    /// between the check and the create), or a tag; never the old image.
    pub image: String,
    /// Environment variables to set, replacing any of the same name.
    pub env: Vec<(String, String)>,
    /// Environment variables to drop (set only for one generation).
    pub env_remove: Vec<String>,
    /// Labels to set, replacing any of the same key.
    pub labels: Vec<(String, String)>,
}

/// Builds the create body of a clone of `container`, whose old image had
/// `old_image` as its config (when that image still exists).
pub fn clone_body(
    container: &ContainerInspectResponse,
    old_image: Option<&ImageConfig>,
    overrides: &Overrides,
) -> ContainerCreateBody {
    let config = container.config.clone().unwrap_or_default();
    let defaults = old_image.cloned().unwrap_or_default();
    let ContainerConfig {
        user,
        attach_stdin,
        attach_stdout,
        attach_stderr,
        exposed_ports,
        tty,
        open_stdin,
        stdin_once,
        env,
        cmd,
        healthcheck,
        args_escaped,
        volumes,
        working_dir,
        entrypoint,
        network_disabled,
        on_build,
        labels,
        stop_signal,
        stop_timeout,
        shell,
        ..
    } = config;

    let mut env = without_defaults(env.unwrap_or_default(), defaults.env.as_deref().unwrap_or_default());
    env.retain(|kv| {
        let key = kv.split_once('=').map_or(kv.as_str(), |(k, _)| k);
        !overrides.env_remove.iter().any(|r| r == key) && !overrides.env.iter().any(|(k, _)| k == key)
    });
    env.extend(overrides.env.iter().map(|(k, v)| format!("{k}={v}")));

    let mut labels: HashMap<String, String> = labels
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, v)| defaults.labels.as_ref().and_then(|d| d.get(k)) != Some(v))
        .collect();
    labels.extend(overrides.labels.iter().cloned());

    // Entrypoint and Cmd go together: if the operator kept the image's
    // entrypoint, the new image's entrypoint and cmd both apply.
    let entrypoint = unless_default(entrypoint, defaults.entrypoint);
    let cmd = if entrypoint.is_none() {
        unless_default(cmd, defaults.cmd)
    } else {
        cmd
    };

    let host_config = container.host_config.clone();
    let network_mode = network_mode(container);

    ContainerCreateBody {
        // The Engine assigns these; a copied hostname would be the old id.
        hostname: None,
        domainname: None,
        user: unless_default(user, defaults.user).filter(|u| !u.is_empty()),
        attach_stdin,
        attach_stdout,
        attach_stderr,
        exposed_ports: non_empty(without_defaults(
            exposed_ports.unwrap_or_default(),
            defaults.exposed_ports.as_deref().unwrap_or_default(),
        )),
        tty,
        open_stdin,
        stdin_once,
        env: non_empty(env),
        cmd,
        healthcheck: unless_default(healthcheck, defaults.healthcheck),
        args_escaped,
        image: Some(overrides.image.clone()),
        volumes: non_empty(without_defaults(
            volumes.unwrap_or_default(),
            defaults.volumes.as_deref().unwrap_or_default(),
        )),
        working_dir: unless_default(working_dir, defaults.working_dir).filter(|w| !w.is_empty()),
        entrypoint,
        network_disabled,
        on_build,
        labels: Some(labels),
        stop_signal: unless_default(stop_signal, defaults.stop_signal),
        stop_timeout,
        shell,
        host_config,
        networking_config: networking(container, &network_mode),
    }
}

/// The networks to join, with what the Engine assigned stripped: endpoint
/// ids, addresses, and the alias equal to the old short id.
fn networking(container: &ContainerInspectResponse, network_mode: &str) -> Option<NetworkingConfig> {
    // These modes take no endpoint settings (and "host" would be rejected with some).
    if network_mode == "host" || network_mode == "none" || network_mode.starts_with("container:") {
        return None;
    }
    let short_id: String = container.id.as_deref().unwrap_or_default().chars().take(12).collect();
    let networks = container.network_settings.as_ref()?.networks.clone()?;
    let endpoints = networks
        .into_iter()
        .map(|(name, ep)| {
            let aliases: Vec<String> = ep
                .aliases
                .unwrap_or_default()
                .into_iter()
                .filter(|a| *a != short_id)
                .collect();
            let clean = EndpointSettings {
                ipam_config: ep.ipam_config,
                links: ep.links,
                aliases: non_empty(aliases),
                driver_opts: ep.driver_opts,
                gw_priority: ep.gw_priority,
                ..Default::default()
            };
            (name, clean)
        })
        .collect();
    Some(NetworkingConfig {
        endpoints_config: Some(endpoints),
    })
}

/// Moves what `body` publishes of container port `from` to port `to`, for
/// a successor that listens on `to` while its elder, still running, holds
/// `from` and every host port it publishes. A binding of `from` at host port
/// `from` (`127.0.0.1:5800:5800`) becomes one of `to` at host port `to`, on
/// the same host address; an ephemeral one stays ephemeral; one at any other
/// host port is dropped, and with a range (`5800-5801:5800-5801`) the elder
/// holds both: the successor publishes neither. It is reached at its own
/// address on the network either way. With
/// host networking nothing is published, and nothing changes.
pub fn retarget_port(body: &mut ContainerCreateBody, from: u16, to: u16) {
    let (old_key, new_key) = (format!("{from}/tcp"), format!("{to}/tcp"));
    if let Some(exposed) = body.exposed_ports.as_mut()
        && exposed.contains(&old_key)
    {
        exposed.retain(|p| *p != old_key && *p != new_key);
        exposed.push(new_key.clone());
    }
    let Some(bindings) = body.host_config.as_mut().and_then(|h| h.port_bindings.as_mut()) else {
        return;
    };
    let held: HashSet<String> = bindings
        .values()
        .flatten()
        .flatten()
        .filter_map(|b| b.host_port.clone())
        .collect();
    bindings.remove(&new_key);
    let Some(old) = bindings.remove(&old_key) else {
        return;
    };
    let moved: Vec<PortBinding> = old
        .unwrap_or_default()
        .into_iter()
        .filter_map(|b| {
            let host_port = match b.host_port.as_deref().unwrap_or_default() {
                "" | "0" => String::new(),
                p if p == from.to_string() && !held.contains(&to.to_string()) => to.to_string(),
                _ => return None,
            };
            Some(PortBinding {
                host_ip: b.host_ip,
                host_port: Some(host_port),
            })
        })
        .collect();
    if !moved.is_empty() {
        bindings.insert(new_key, Some(moved));
    }
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

/// The container's network mode (`bridge`, `host`, `container:<id>`, a network's name).
pub fn network_mode(container: &ContainerInspectResponse) -> String {
    container
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default()
}

fn short_id(container: &ContainerInspectResponse) -> String {
    container.id.as_deref().unwrap_or_default().chars().take(12).collect()
}

fn without_defaults(values: Vec<String>, defaults: &[String]) -> Vec<String> {
    values.into_iter().filter(|v| !defaults.contains(v)).collect()
}

fn unless_default<T: PartialEq>(value: Option<T>, default: Option<T>) -> Option<T> {
    if value == default { None } else { value }
}

fn non_empty(values: Vec<String>) -> Option<Vec<String>> {
    (!values.is_empty()).then_some(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{HostConfig, Mount, MountPoint, NetworkSettings};

    fn image_defaults() -> ImageConfig {
        ImageConfig {
            env: Some(vec!["PATH=/bin".into(), "MODE=old".into()]),
            labels: Some(HashMap::from([(
                "org.opencontainers.image.version".into(),
                "1.0.0".into(),
            )])),
            entrypoint: Some(vec!["/selfup".into()]),
            cmd: Some(vec!["serve".into()]),
            exposed_ports: Some(vec!["5800/tcp".into()]),
            working_dir: Some("/".into()),
            ..Default::default()
        }
    }

    fn container(network_mode: &str) -> ContainerInspectResponse {
        ContainerInspectResponse {
            id: Some("0123456789abcdef0123".into()),
            config: Some(ContainerConfig {
                hostname: Some("0123456789ab".into()),
                domainname: Some("example".into()),
                env: Some(vec![
                    "PATH=/bin".into(),
                    "MODE=old".into(),
                    "SELFUP_PORT=5800".into(),
                    "KEEP=1".into(),
                ]),
                labels: Some(HashMap::from([
                    ("org.opencontainers.image.version".into(), "1.0.0".into()),
                    ("com.docker.compose.service".into(), "selfup".into()),
                ])),
                entrypoint: Some(vec!["/selfup".into()]),
                cmd: Some(vec!["serve".into()]),
                exposed_ports: Some(vec!["5800/tcp".into(), "9000/tcp".into()]),
                working_dir: Some("/".into()),
                image: Some("sha256:old".into()),
                ..Default::default()
            }),
            host_config: Some(HostConfig {
                network_mode: Some(network_mode.into()),
                binds: Some(vec!["/var/run/docker.sock:/var/run/docker.sock".into()]),
                ..Default::default()
            }),
            network_settings: Some(NetworkSettings {
                networks: Some(HashMap::from([(
                    "backend".into(),
                    EndpointSettings {
                        aliases: Some(vec!["0123456789ab".into(), "api".into()]),
                        endpoint_id: Some("ep".into()),
                        ip_address: Some("172.18.0.5".into()),
                        network_id: Some("net".into()),
                        mac_address: Some("02:42:ac:12:00:05".into()),
                        ..Default::default()
                    },
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn overrides() -> Overrides {
        Overrides {
            image: "localhost:5000/selfup:1.1.0".into(),
            env: vec![("SELFUP_PORT".into(), "5801".into())],
            env_remove: vec!["KEEP_NOT".into()],
            labels: vec![("com.docker.compose.image".into(), "sha256:new".into())],
        }
    }

    #[test]
    fn the_clone_names_the_new_tag_and_forgets_the_hostname() {
        let body = clone_body(&container("bridge"), Some(&image_defaults()), &overrides());
        assert_eq!(body.image.as_deref(), Some("localhost:5000/selfup:1.1.0"));
        assert_eq!(body.hostname, None);
        assert_eq!(body.domainname, None);
    }

    #[test]
    fn values_that_repeat_the_old_image_defaults_are_dropped() {
        let body = clone_body(&container("bridge"), Some(&image_defaults()), &overrides());
        assert_eq!(body.env, Some(vec!["KEEP=1".into(), "SELFUP_PORT=5801".into()]));
        assert_eq!(body.entrypoint, None);
        assert_eq!(body.cmd, None);
        assert_eq!(body.working_dir, None);
        assert_eq!(body.exposed_ports, Some(vec!["9000/tcp".into()]));
        let labels = body.labels.unwrap();
        assert!(!labels.contains_key("org.opencontainers.image.version"));
        assert_eq!(labels["com.docker.compose.service"], "selfup");
        assert_eq!(labels["com.docker.compose.image"], "sha256:new");
    }

    #[test]
    fn an_operator_entrypoint_is_kept_with_its_cmd() {
        let mut c = container("bridge");
        c.config.as_mut().unwrap().entrypoint = Some(vec!["/custom".into()]);
        let body = clone_body(&c, Some(&image_defaults()), &overrides());
        assert_eq!(body.entrypoint, Some(vec!["/custom".into()]));
        assert_eq!(body.cmd, Some(vec!["serve".into()]));
    }

    #[test]
    fn without_the_old_image_everything_is_kept() {
        let body = clone_body(&container("bridge"), None, &overrides());
        assert!(body.env.unwrap().contains(&"MODE=old".to_string()));
        assert_eq!(body.entrypoint, Some(vec!["/selfup".into()]));
    }

    #[test]
    fn network_aliases_keep_the_operators_and_drop_what_the_engine_assigned() {
        let body = clone_body(&container("bridge"), Some(&image_defaults()), &overrides());
        let endpoints = body.networking_config.unwrap().endpoints_config.unwrap();
        let ep = &endpoints["backend"];
        assert_eq!(ep.aliases, Some(vec!["api".to_string()]));
        assert_eq!(ep.ip_address, None);
        assert_eq!(ep.endpoint_id, None);
        assert_eq!(ep.mac_address, None);
        assert_eq!(ep.network_id, None);
    }

    #[test]
    fn host_networking_takes_no_endpoint_settings_and_keeps_the_host_config() {
        let body = clone_body(&container("host"), Some(&image_defaults()), &overrides());
        assert!(body.networking_config.is_none());
        let hc = body.host_config.unwrap();
        assert_eq!(hc.network_mode.as_deref(), Some("host"));
        assert_eq!(
            hc.binds,
            Some(vec!["/var/run/docker.sock:/var/run/docker.sock".to_string()])
        );
    }

    #[test]
    fn removed_and_overridden_variables_do_not_survive() {
        let mut c = container("host");
        c.config.as_mut().unwrap().env = Some(vec![
            "SELFUP_HANDOVER_TOKEN=abc".into(),
            "SELFUP_PORT=5800".into(),
            "A=1".into(),
        ]);
        let o = Overrides {
            env_remove: vec!["SELFUP_HANDOVER_TOKEN".into()],
            ..overrides()
        };
        let body = clone_body(&c, Some(&image_defaults()), &o);
        assert_eq!(body.env, Some(vec!["A=1".into(), "SELFUP_PORT=5801".into()]));
    }

    #[test]
    fn anonymous_volumes_are_carried_over_by_name_and_explicit_ones_are_left_alone() {
        let mut c = container("bridge");
        let volume = |name: &str, destination: &str, rw: bool| MountPoint {
            typ: Some("volume".into()),
            name: Some(name.into()),
            destination: Some(destination.into()),
            rw: Some(rw),
            ..Default::default()
        };
        c.mounts = Some(vec![
            volume("named", "/named", true),
            volume("f00d", "/anon", true),
            volume("beef", "/readonly", false),
            volume("cafe", "/mounted", true),
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

    fn published(bindings: &[(&str, &[(&str, &str)])]) -> ContainerCreateBody {
        let map = bindings
            .iter()
            .map(|(port, hosts)| {
                let list = hosts
                    .iter()
                    .map(|(ip, hp)| PortBinding {
                        host_ip: Some(ip.to_string()),
                        host_port: Some(hp.to_string()),
                    })
                    .collect();
                (port.to_string(), Some(list))
            })
            .collect();
        ContainerCreateBody {
            exposed_ports: Some(bindings.iter().map(|(p, _)| p.to_string()).collect()),
            host_config: Some(HostConfig {
                port_bindings: Some(map),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn bindings_of(body: &ContainerCreateBody) -> Vec<(String, String, String)> {
        let mut out: Vec<_> = body
            .host_config
            .as_ref()
            .and_then(|h| h.port_bindings.clone())
            .unwrap_or_default()
            .into_iter()
            .flat_map(|(port, list)| {
                list.unwrap_or_default().into_iter().map(move |b| {
                    (
                        port.clone(),
                        b.host_ip.unwrap_or_default(),
                        b.host_port.unwrap_or_default(),
                    )
                })
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_successor_publishes_the_other_port_where_the_elder_published_its_own() {
        let mut body = published(&[("5800/tcp", &[("127.0.0.1", "5800")]), ("9000/tcp", &[("", "9000")])]);
        retarget_port(&mut body, 5800, 5801);
        assert_eq!(
            bindings_of(&body),
            vec![
                ("5801/tcp".into(), "127.0.0.1".into(), "5801".into()),
                ("9000/tcp".into(), "".into(), "9000".into()),
            ]
        );
        let mut exposed = body.exposed_ports.unwrap();
        exposed.sort();
        assert_eq!(exposed, vec!["5801/tcp", "9000/tcp"]);
    }

    #[test]
    fn host_ports_the_elder_holds_are_not_published_again_and_ephemeral_ones_stay_ephemeral() {
        // A range: the elder holds both host ports.
        let mut range = published(&[("5800/tcp", &[("", "5800")]), ("5801/tcp", &[("", "5801")])]);
        retarget_port(&mut range, 5800, 5801);
        assert!(bindings_of(&range).is_empty());
        // Another host port than the container's: the elder holds it.
        let mut other = published(&[("5801/tcp", &[("127.0.0.1", "8800")])]);
        retarget_port(&mut other, 5801, 5800);
        assert!(bindings_of(&other).is_empty());
        let mut ephemeral = published(&[("5800/tcp", &[("127.0.0.1", "")])]);
        retarget_port(&mut ephemeral, 5800, 5801);
        assert_eq!(
            bindings_of(&ephemeral),
            vec![("5801/tcp".into(), "127.0.0.1".into(), "".into())]
        );
        // Host networking publishes nothing: nothing changes.
        let mut nothing = ContainerCreateBody::default();
        retarget_port(&mut nothing, 5800, 5801);
        assert_eq!(nothing.host_config, None);
        assert_eq!(nothing.exposed_ports, None);
    }
}
