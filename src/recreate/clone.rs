//! The cloning rules: how a container is recreated from a new image with the
//! settings its operator gave it, and none of the settings its old image gave it.
//!
//! Everything here is pure, so the rules are unit-tested without an Engine.

use std::collections::HashMap;

use bollard::models::{
    ContainerConfig, ContainerCreateBody, ContainerInspectResponse, EndpointSettings, ImageConfig, NetworkingConfig,
};

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
    let network_mode = host_config
        .as_ref()
        .and_then(|h| h.network_mode.clone())
        .unwrap_or_default();

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
    use bollard::models::{HostConfig, NetworkSettings};

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
}
