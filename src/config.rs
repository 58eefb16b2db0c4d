//! Settings: one typed struct, layered as defaults, then an optional TOML
//! file, then `SELFUP_*` environment variables.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Where the optional TOML file is looked for unless `SELFUP_CONFIG` names one.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/selfup/selfup.toml";

/// Everything an instance can be told. Each field can be set in the TOML file
/// under its own name or as `SELFUP_<NAME>` in the environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The port this instance listens on; one of `ports`.
    pub port: u16,
    /// The two ports the live instance toggles between on every upgrade.
    pub ports: [u16; 2],
    /// The address both ports bind to. Loopback by default: nginx is the public door.
    /// On a private (bridge) network, `0.0.0.0`: the elder reaches its
    /// successor at the successor's own address there.
    pub bind: IpAddr,
    /// A port every instance also listens on, the same across upgrades (0:
    /// none): on a private network, where each instance has its own address,
    /// `http://<service name>:<service_port>` reaches the live instance
    /// whatever port of `ports` it has. Never with host networking, where
    /// two instances would share it.
    pub service_port: u16,
    /// The registry the images come from, `host:port` (plain HTTP for loopback hosts).
    pub registry: String,
    /// The repository of this service's image in that registry.
    pub image: String,
    /// Where this instance calls the registry's API when `registry`, the
    /// name images carry, does not reach it from inside the container: a
    /// Swarm task on an overlay network has a loopback of its own, so a
    /// registry on the node's `localhost:5000` (which the Engine pulls
    /// from) is reached at the node's gateway address instead
    /// (`http://172.18.0.1:5000`). Unset: `registry` itself.
    pub registry_api: Option<String>,
    /// The registry's API over a unix socket, in a directory only root can
    /// write (`registry/start.sh` serves it there): for the registry named
    /// `registry`, every API call goes through it and never over TCP, so
    /// no listener on the registry's port can stand in for it or read the
    /// credentials. Unset (or empty): over TCP, where credentials go only in
    /// answer to the registry's challenge, or over HTTPS.
    pub registry_socket: Option<PathBuf>,
    /// The Docker Engine socket.
    pub docker_socket: PathBuf,
    /// How long a successor has to answer `/health` with the target version.
    pub health_deadline_secs: u64,
    /// How long the successor's takeover (nginx switch, drain) may take.
    pub takeover_deadline_secs: u64,
    /// How long Docker waits after SIGTERM before it kills an elder.
    pub stop_timeout_secs: u64,
    /// How long this instance's own graceful shutdown lets in-flight requests
    /// run; must be shorter than `stop_timeout_secs`.
    pub shutdown_timeout_secs: u64,
    /// HTTP keep-alive of the app; nginx's upstream keep-alive must be shorter.
    pub keep_alive_secs: u64,
    /// As a Swarm task: how long this instance keeps serving after its stop
    /// signal before it stops accepting connections. Swarm takes the task
    /// out of the service's DNS before it signals it; a proxy that looked
    /// the name up just before may still send it requests this long.
    pub drain_ms: u64,
    /// The nginx container in front of this instance, whose state `/health`
    /// reports; empty: no proxy.
    pub nginx_container: String,
    /// The public traffic's address: a unix socket nginx's upstream names,
    /// in a directory only root can write, that the live instance holds
    /// (see `control`). A successor takes it over in one rename; nginx
    /// never reloads. An empty path turns it off.
    pub live_socket: PathBuf,
    /// How long an elder keeps serving after its successor took the live
    /// socket, answering with `Connection: close`, before its graceful stop:
    /// longer than nginx's upstream `keepalive_timeout` (4 s), so nginx
    /// never sends on a pooled connection the elder is closing.
    pub linger_ms: u64,
    /// How long a pause of the public traffic (`POST /pause`) lasts at most:
    /// it ends by itself then, and every waiting request goes on.
    pub hold_secs: u64,
    /// How long an elder stays running after the switch, out of rotation,
    /// watching its successor (exits, hangs, 5xx answers) and ready to take
    /// the traffic back; 0: the elder goes as soon as the successor is live.
    pub bake_secs: u64,
    /// The share of the successor's public answers that may be 5xx during a
    /// bake (judged from 20 answers on); above it, the elder takes over again.
    pub bake_max_5xx_ratio: f64,
    /// When set, the control endpoints require `Authorization: Bearer <token>`,
    /// from any caller; unset, a caller on a port must be root or one of
    /// `control_uids`.
    pub upgrade_token: Option<String>,
    /// Besides root, the uids whose loopback TCP connections may use the
    /// control endpoints without `upgrade_token` (the owner of the caller's
    /// socket, from the kernel's socket table).
    pub control_uids: Vec<u32>,
    /// A read-only bearer token for `/metrics`, for a scraper: it opens no
    /// other endpoint.
    pub metrics_token: Option<String>,
    /// Set by an elder on the successor it creates: the secret the elder's
    /// go-ahead carries. Not for operators.
    pub handover_token: Option<String>,
    /// Set by an elder on the successor it creates: the elder's container id.
    /// Not for operators.
    pub handover_elder: Option<String>,
    /// How many images of this service a clean handover leaves on the
    /// machine, the running and the previous version's included; at least 2.
    pub image_retention: usize,
    /// Where state that must outlive a container is kept (the companion's API key).
    pub data_dir: PathBuf,
    /// Companion mode: serve `/update`, which recreates *other* containers
    /// (those labelled `selfup.enable=true`) from a new image. Off unless
    /// asked for: it hands the Docker socket's power to every key holder.
    pub companion: bool,
    /// The companion's API key. Unset: one is generated at first start,
    /// logged once and kept in `<data_dir>/api_key` (mode 0600).
    pub api_key: Option<String>,
    /// The registries the companion accepts images from, `host[:port]` as an
    /// image reference names them (`docker.io` for references without one).
    pub allowed_registries: Vec<String>,
    /// A Docker client `config.json` with credentials for private registries
    /// (`auths`, `credHelpers`, `credsStore`); a missing file means none.
    pub docker_config: PathBuf,
    /// The stable control address: a unix socket, in a directory made
    /// root-only, that the live instance holds across handovers (see
    /// `control`). Clients that send a secret use it, never a port. An empty
    /// path turns it off.
    pub control_socket: PathBuf,
    /// Companion mode's update socket: the stable address nginx passes a CI
    /// runner's `/update` to. A unix socket anyone may connect to, in a
    /// directory only root can write, held by the live instance across
    /// handovers like `control_socket`; it serves the companion's endpoints
    /// (the key guards them) and never the control endpoints. An empty path
    /// turns it off.
    pub update_socket: PathBuf,
    /// Where companion mode puts the public socket of each blue-green app
    /// (a container labelled `selfup.port`), `<dir>/<container>.sock`, for
    /// nginx's upstream of that app: like the live socket, held by the live
    /// instance, in a directory only root can write. An empty path turns
    /// blue-green off (such apps are recreated in place).
    pub app_socket_dir: PathBuf,
    /// How long a recreated container has to pass its HEALTHCHECK, when its
    /// image has one, before the old container is restored.
    pub update_deadline_secs: u64,
    /// How long a recreated container without a HEALTHCHECK must keep
    /// running to count as up; at most `update_deadline_secs`.
    pub update_settle_secs: u64,
    /// Companion mode, the "beside" placement: how long the old container,
    /// renamed aside, keeps running after the new one is up, ready to come
    /// back at once if the new one exits or turns unhealthy; 0: removed at once.
    pub update_bake_secs: u64,
    /// The watch policy: a requirement in the `/upgrade/<req>` syntax, or
    /// `latest`. Unset: nothing is watched, upgrades wait for a request.
    pub watch: Option<String>,
    /// How often the watch policy is checked against the registry.
    pub watch_interval_secs: u64,
    /// What a newer version found by the watch policy leads to.
    pub watch_mode: WatchMode,
    /// A tag whose image is younger than this (by its creation time) waits:
    /// a bad push can be withdrawn before it spreads.
    pub min_image_age_secs: u64,
    /// Where every finished upgrade, rollback or companion update (and a
    /// version the watch policy found in `notify` mode) is posted as JSON.
    pub notify_urls: Vec<String>,
    /// The bearer token `POST /hooks/registry` requires; unset, the hook is off.
    pub hook_token: Option<String>,
    /// Where `hook_token` is read from when it is not set: the file
    /// `registry/start.sh` generates, mounted by compose. A missing or empty
    /// file (or a directory in its place) leaves the hook off.
    pub hook_token_file: PathBuf,
    /// Which images run: `signed` (only those signed with the key at
    /// `verify_key`, in cosign's format) or `off` (any image the registry
    /// serves, which makes whoever can push, or stand in for the registry,
    /// root on the host).
    pub verify: Verify,
    /// The operator's public key (PEM), which `registry/sign.sh` generates
    /// beside the registry's credentials and compose mounts here.
    pub verify_key: PathBuf,
    /// Companion mode: where the keys a container names by its
    /// `selfup.signing-key` label are, `<dir>/<name>.pub`.
    pub verify_keys_dir: PathBuf,
}

/// Which images may run (`verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    /// Only images signed with the operator's key.
    Signed,
    /// Any image: no signature is looked at.
    Off,
}

/// What the watch policy does with a newer version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatchMode {
    /// Upgrade to it, as `/upgrade/<req>` would.
    Apply,
    /// Only say so: a log line and a notification; nothing changes.
    Notify,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            port: 5800,
            ports: [5800, 5801],
            bind: IpAddr::from([127, 0, 0, 1]),
            service_port: 0,
            registry: "localhost:5000".into(),
            image: "selfup".into(),
            registry_api: None,
            registry_socket: None,
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            health_deadline_secs: 30,
            takeover_deadline_secs: 60,
            stop_timeout_secs: 30,
            shutdown_timeout_secs: 25,
            keep_alive_secs: 5,
            drain_ms: 2000,
            nginx_container: "selfup-nginx".into(),
            live_socket: PathBuf::from("/run/selfup-public/live.sock"),
            linger_ms: 4500,
            hold_secs: 30,
            bake_secs: 30,
            bake_max_5xx_ratio: 0.01,
            upgrade_token: None,
            control_uids: Vec::new(),
            metrics_token: None,
            handover_token: None,
            handover_elder: None,
            image_retention: 3,
            data_dir: PathBuf::from("/data"),
            companion: false,
            api_key: None,
            allowed_registries: vec!["localhost:5000".into()],
            docker_config: PathBuf::from("/etc/selfup/docker/config.json"),
            control_socket: PathBuf::from("/run/selfup/control.sock"),
            update_socket: PathBuf::from("/run/selfup-public/update.sock"),
            app_socket_dir: PathBuf::from("/run/selfup-public/apps"),
            update_deadline_secs: 60,
            update_settle_secs: 10,
            update_bake_secs: 0,
            watch: None,
            watch_interval_secs: 300,
            watch_mode: WatchMode::Apply,
            min_image_age_secs: 0,
            notify_urls: Vec::new(),
            hook_token: None,
            hook_token_file: PathBuf::from("/etc/selfup/registry/hook_token"),
            verify: Verify::Signed,
            verify_key: PathBuf::from("/etc/selfup/cosign.pub"),
            verify_keys_dir: PathBuf::from("/etc/selfup/keys"),
        }
    }
}

/// Why the settings could not be loaded; the message names the offending value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value has the wrong type or a key is unknown.
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value parsed but makes no sense.
    #[error("configuration: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// `SELFUP_` variables that are no setting: those read apart, and those the
/// scripts, the compose files and the test runner read, never selfup (an
/// operator's shell may hold them when the CLI loads its settings).
const NOT_SETTINGS: &[&str] = &[
    // Read apart: the file's path, the log's filter and format, and the
    // watch policy taken as written (below).
    "CONFIG",
    "LOG",
    "WATCH",
    "PROFILE",
    "FEATURES",
    "IMAGE_LABELS",
    "SIGNING_KEY",
    "REGISTRY_AUTH",
    "REGISTRY_USER",
    "REGISTRY_CONFIG",
    "REGISTRY_DIR",
    "VERIFY_KEY_FILE",
    "NGINX_IMAGE",
    "CONTROL_DIR",
    "PUBLIC_DIR",
    "PUBLIC_PORT",
    "REPLICAS",
    "E2E_TIME_LIMIT_SECS",
];

/// The longest pause: a held request must be answered within nginx's
/// upstream read timeout (60 s).
const MAX_HOLD_SECS: u64 = 55;

impl Settings {
    /// The signature policy images are checked against before they run.
    pub fn signature_policy(&self) -> crate::registry::signature::Policy {
        use crate::registry::signature::Policy;
        match self.verify {
            Verify::Signed => Policy::Signed(self.verify_key.clone()),
            Verify::Off => Policy::Off,
        }
    }

    /// The key file a container's `selfup.signing-key` label names, or why
    /// the name is refused (a name, not a path).
    pub fn named_key(&self, name: &str) -> Result<PathBuf, String> {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !valid {
            return Err(format!(
                "the label selfup.signing-key={name:?} is not a key name (letters, digits, '.', '_', '-'; not starting with '.')"
            ));
        }
        Ok(self.verify_keys_dir.join(format!("{name}.pub")))
    }

    /// Loads defaults, then the TOML file (`SELFUP_CONFIG` or the default path,
    /// if it exists), then the environment, and validates the result.
    pub fn load() -> Result<Settings, ConfigError> {
        let file = std::env::var("SELFUP_CONFIG").unwrap_or_else(|_| DEFAULT_CONFIG_FILE.into());
        Self::from_figment(Self::figment(&file))
    }

    /// The layered sources, for `load` and for tests.
    pub fn figment(file: &str) -> Figment {
        let figment = Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::file(file))
            .merge(Env::prefixed("SELFUP_").ignore(NOT_SETTINGS));
        // Taken as written: figment would read `SELFUP_WATCH=1` as a number
        // and `1.10` as the float 1.1.
        match std::env::var("SELFUP_WATCH") {
            Ok(watch) => figment.merge(Serialized::default("watch", watch)),
            Err(_) => figment,
        }
    }

    /// Extracts and validates.
    pub fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let mut settings: Settings = figment.extract().map_err(Box::new)?;
        // Compose passes `SELFUP_WATCH=` when the shell has none: unset.
        if settings.watch.as_deref().is_some_and(|w| w.trim().is_empty()) {
            settings.watch = None;
        }
        // A stack file passes `SELFUP_REGISTRY_API=` when the shell has none: unset.
        if settings.registry_api.as_deref().is_some_and(|a| a.trim().is_empty()) {
            settings.registry_api = None;
        }
        if settings
            .registry_socket
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            settings.registry_socket = None;
        }
        if settings.hook_token.is_none() && settings.hook_token_file.is_file() {
            let token = std::fs::read_to_string(&settings.hook_token_file).map_err(|e| ConfigError::Invalid {
                field: "hook_token_file",
                reason: format!("{}: {e}", settings.hook_token_file.display()),
            })?;
            let token = token.trim();
            settings.hook_token = (!token.is_empty()).then(|| token.to_string());
        }
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        if self.ports[0] == self.ports[1] {
            return invalid("ports", format!("the two ports must differ, got {:?}", self.ports));
        }
        if self.ports.contains(&0) {
            return invalid("ports", "port 0 cannot be toggled to".into());
        }
        if self.service_port != 0 && self.ports.contains(&self.service_port) {
            return invalid(
                "service_port",
                format!(
                    "{} is one of ports {:?}: it must be a third port",
                    self.service_port, self.ports
                ),
            );
        }
        if !self.ports.contains(&self.port) {
            return invalid("port", format!("{} is not one of ports {:?}", self.port, self.ports));
        }
        if self.registry.trim().is_empty() || self.registry.contains('/') && !self.registry.contains("://") {
            return invalid("registry", format!("expected host:port, got {:?}", self.registry));
        }
        if self.image.is_empty() || self.image.contains(':') || self.image.contains('@') {
            return invalid(
                "image",
                format!("expected a repository name without tag, got {:?}", self.image),
            );
        }
        for (field, secs) in [
            ("health_deadline_secs", self.health_deadline_secs),
            ("takeover_deadline_secs", self.takeover_deadline_secs),
            ("stop_timeout_secs", self.stop_timeout_secs),
            ("keep_alive_secs", self.keep_alive_secs),
        ] {
            if secs == 0 {
                return invalid(field, "must be at least 1".into());
            }
        }
        if !(1..=MAX_HOLD_SECS).contains(&self.hold_secs) {
            return invalid(
                "hold_secs",
                format!(
                    "must be between 1 and {MAX_HOLD_SECS} (nginx's upstream read timeout, 60 s, must outlast a held request), got {}",
                    self.hold_secs
                ),
            );
        }
        if self.linger_ms + self.shutdown_timeout_secs * 1000 >= self.stop_timeout_secs * 1000 {
            return invalid(
                "linger_ms",
                format!(
                    "{} ms and shutdown_timeout_secs ({}) must end before stop_timeout_secs ({}), or Docker kills the elder mid-drain",
                    self.linger_ms, self.shutdown_timeout_secs, self.stop_timeout_secs
                ),
            );
        }
        if !(0.0..=1.0).contains(&self.bake_max_5xx_ratio) {
            return invalid(
                "bake_max_5xx_ratio",
                format!("must be between 0 and 1, got {}", self.bake_max_5xx_ratio),
            );
        }
        if self.shutdown_timeout_secs >= self.stop_timeout_secs {
            return invalid(
                "shutdown_timeout_secs",
                format!(
                    "{} must be shorter than stop_timeout_secs ({}), or Docker kills the elder mid-drain",
                    self.shutdown_timeout_secs, self.stop_timeout_secs
                ),
            );
        }
        if !self.live_socket.as_os_str().is_empty()
            && !self.control_socket.as_os_str().is_empty()
            && self.live_socket.parent() == self.control_socket.parent()
        {
            return invalid(
                "live_socket",
                format!(
                    "{:?} must be in another directory than control_socket ({:?}): nginx's workers enter the live socket's, only root the control socket's",
                    self.live_socket, self.control_socket
                ),
            );
        }
        if !self.live_socket.as_os_str().is_empty() && self.live_socket == self.update_socket {
            return invalid(
                "live_socket",
                format!("{:?} is also update_socket: they need two names", self.live_socket),
            );
        }
        if self.image_retention < 2 {
            return invalid(
                "image_retention",
                format!(
                    "must be at least 2 (the running and the previous version), got {}",
                    self.image_retention
                ),
            );
        }
        if matches!(&self.upgrade_token, Some(t) if t.is_empty()) {
            return invalid("upgrade_token", "is set but empty".into());
        }
        if let Some(token) = &self.metrics_token {
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return invalid(
                    "metrics_token",
                    "must be at least 16 printable characters without spaces".into(),
                );
            }
            if self.upgrade_token.as_deref() == Some(token.as_str()) {
                return invalid(
                    "metrics_token",
                    "is the upgrade token: a scraper's token must open nothing but /metrics".into(),
                );
            }
        }
        self.validate_watch()?;
        self.validate_companion()
    }

    fn validate_companion(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        if let Some(key) = &self.api_key
            && (key.len() < 16 || !key.bytes().all(|b| b.is_ascii_graphic()))
        {
            return invalid(
                "api_key",
                "must be at least 16 printable characters without spaces (or unset: one is generated)".into(),
            );
        }
        for registry in &self.allowed_registries {
            let parsed = crate::image_ref::ImageRef::parse(&format!("{registry}/image:tag"));
            if !parsed.is_ok_and(|r| r.registry.as_deref() == Some(registry.as_str())) {
                return invalid(
                    "allowed_registries",
                    format!(
                        "expected host[:port] as an image reference names it (localhost:5000, ghcr.io, docker.io), got {registry:?}"
                    ),
                );
            }
        }
        if !self.update_socket.as_os_str().is_empty()
            && !self.control_socket.as_os_str().is_empty()
            && self.update_socket.parent() == self.control_socket.parent()
        {
            return invalid(
                "update_socket",
                format!(
                    "{:?} must be in another directory than control_socket ({:?}): anyone may enter the update socket's, only root the control socket's",
                    self.update_socket, self.control_socket
                ),
            );
        }
        if !self.app_socket_dir.as_os_str().is_empty()
            && !self.control_socket.as_os_str().is_empty()
            && Some(self.app_socket_dir.as_path()) == self.control_socket.parent()
        {
            return invalid(
                "app_socket_dir",
                format!(
                    "{:?} is control_socket's directory: anyone may enter the apps' sockets' directory, only root the control socket's",
                    self.app_socket_dir
                ),
            );
        }
        if self.update_deadline_secs == 0 {
            return invalid("update_deadline_secs", "must be at least 1".into());
        }
        if self.update_settle_secs == 0 || self.update_settle_secs > self.update_deadline_secs {
            return invalid(
                "update_settle_secs",
                format!(
                    "must be from 1 to update_deadline_secs ({}), got {}",
                    self.update_deadline_secs, self.update_settle_secs
                ),
            );
        }
        Ok(())
    }

    fn validate_watch(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: String| Err(ConfigError::Invalid { field, reason });
        if let Some(watch) = &self.watch
            && let Err(e) = crate::version::policy(watch)
        {
            return invalid("watch", format!("{e}, or latest"));
        }
        if self.watch_interval_secs == 0 {
            return invalid("watch_interval_secs", "must be at least 1".into());
        }
        for url in &self.notify_urls {
            let parsed = reqwest::Url::parse(url);
            if !parsed.is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host()) {
                return invalid("notify_urls", format!("expected http(s) URLs, got {url:?}"));
            }
        }
        if let Some(token) = &self.hook_token
            && (token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()))
        {
            return invalid(
                "hook_token",
                "must be at least 16 printable characters without spaces".into(),
            );
        }
        Ok(())
    }

    /// The watch interval.
    pub fn watch_interval(&self) -> Duration {
        Duration::from_secs(self.watch_interval_secs)
    }

    /// The other port of the pair: where a successor of this instance listens.
    pub fn other_port(&self, port: u16) -> u16 {
        if port == self.ports[0] {
            self.ports[1]
        } else {
            self.ports[0]
        }
    }

    /// The reference of this service's image with a tag.
    pub fn image_ref(&self, tag: &str) -> String {
        format!("{}/{}:{}", self.registry, self.image, tag)
    }

    /// Whether a proxy is in front of this instance.
    pub fn proxy_enabled(&self) -> bool {
        !self.nginx_container.is_empty()
    }

    /// How long an elder keeps serving after its successor took the live socket.
    pub fn bake(&self) -> Duration {
        Duration::from_secs(self.bake_secs)
    }

    /// Where a baking elder publishes its own socket beside the live one,
    /// for nginx's `backup` server: a connect that fails on the successor
    /// is retried on the elder. In the live socket's directory, which only
    /// root can write.
    pub fn standby_socket(&self) -> Option<PathBuf> {
        (!self.live_socket.as_os_str().is_empty()).then(|| self.live_socket.with_file_name("standby.sock"))
    }

    pub fn drain(&self) -> Duration {
        Duration::from_millis(self.drain_ms)
    }

    pub fn hold(&self) -> Duration {
        Duration::from_secs(self.hold_secs)
    }

    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }

    pub fn health_deadline(&self) -> Duration {
        Duration::from_secs(self.health_deadline_secs)
    }

    pub fn takeover_deadline(&self) -> Duration {
        Duration::from_secs(self.takeover_deadline_secs)
    }

    pub fn update_deadline(&self) -> Duration {
        Duration::from_secs(self.update_deadline_secs)
    }

    pub fn update_settle(&self) -> Duration {
        Duration::from_secs(self.update_settle_secs)
    }
}

#[cfg(test)]
// figment's error is large, and so is every `Result` the jail hands back.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    /// A figment jail without the caller's environment: a `SELFUP_*`
    /// variable set where the tests run must not change what they see.
    fn jailed(test: impl FnOnce(&mut Jail) -> figment::error::Result<()>) {
        Jail::expect_with(|jail| {
            jail.clear_env();
            test(jail)
        })
    }

    fn load_in(jail: &Jail) -> Result<Settings, ConfigError> {
        let file = jail.directory().join("selfup.toml");
        Settings::from_figment(Settings::figment(file.to_str().unwrap()))
    }

    #[test]
    fn defaults_apply_without_file_or_environment() {
        jailed(|jail| {
            let s = load_in(jail).unwrap();
            assert_eq!(s, Settings::default());
            assert_eq!(s.other_port(5800), 5801);
            assert_eq!(s.other_port(5801), 5800);
            Ok(())
        });
    }

    #[test]
    fn the_stack_file_settings_load_and_an_empty_registry_api_is_unset() {
        jailed(|jail| {
            // As docker/stack.yml passes them when the shell sets none.
            jail.set_env("SELFUP_REGISTRY_API", "");
            jail.set_env("SELFUP_LIVE_SOCKET", "");
            jail.set_env("SELFUP_CONTROL_SOCKET", "");
            jail.set_env("SELFUP_BIND", "0.0.0.0");
            let s = load_in(jail).unwrap();
            assert_eq!(s.registry_api, None);
            assert!(s.live_socket.as_os_str().is_empty());
            assert!(s.control_socket.as_os_str().is_empty());
            assert_eq!(s.drain(), Duration::from_secs(2));
            jail.set_env("SELFUP_REGISTRY_API", "http://172.18.0.1:5000");
            jail.set_env("SELFUP_DRAIN_MS", "500");
            let s = load_in(jail).unwrap();
            assert_eq!(s.registry_api.as_deref(), Some("http://172.18.0.1:5000"));
            assert_eq!(s.drain(), Duration::from_millis(500));
            Ok(())
        });
    }

    #[test]
    fn environment_overrides_the_file_which_overrides_defaults() {
        jailed(|jail| {
            jail.create_file(
                "selfup.toml",
                "port = 6001\nports = [6000, 6001]\nimage = \"fromfile\"\n",
            )?;
            jail.set_env("SELFUP_IMAGE", "fromenv");
            jail.set_env("SELFUP_HEALTH_DEADLINE_SECS", "7");
            let s = load_in(jail).unwrap();
            assert_eq!(s.port, 6001);
            assert_eq!(s.ports, [6000, 6001]);
            assert_eq!(s.image, "fromenv");
            assert_eq!(s.health_deadline_secs, 7);
            Ok(())
        });
    }

    #[test]
    fn a_value_of_the_wrong_type_names_the_key() {
        jailed(|jail| {
            jail.set_env("SELFUP_PORT", "eighty");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("\"PORT\"") && err.contains("SELFUP_"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_in_the_file_is_refused() {
        jailed(|jail| {
            jail.create_file("selfup.toml", "prot = 1\n")?;
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("prot"), "{err}");
            Ok(())
        });
    }

    /// The names in the first column of README.md's settings table.
    fn readme_table_names() -> std::collections::BTreeSet<String> {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Configuration\n")
            .nth(1)
            .expect("README.md has a Configuration section");
        let rows = section
            .lines()
            .skip_while(|l| !l.starts_with("| name |"))
            .skip(2)
            .take_while(|l| l.starts_with('|'));
        let mut names = std::collections::BTreeSet::new();
        for row in rows {
            let first = row.split('|').nth(1).unwrap_or_default();
            for name in first.split('`').skip(1).step_by(2) {
                assert!(names.insert(name.to_string()), "{name} is listed twice");
            }
        }
        names
    }

    #[test]
    fn control_uids_and_the_metrics_token_are_read_and_checked() {
        jailed(|jail| {
            let settings = load_in(jail).unwrap();
            assert_eq!((settings.control_uids, settings.metrics_token), (vec![], None));
            jail.set_env("SELFUP_CONTROL_UIDS", "[1000, 65534]");
            jail.set_env("SELFUP_METRICS_TOKEN", "metrics-token-0123456789");
            let settings = load_in(jail).unwrap();
            assert_eq!(settings.control_uids, vec![1000, 65534]);
            assert_eq!(settings.metrics_token.as_deref(), Some("metrics-token-0123456789"));
            jail.set_env("SELFUP_CONTROL_UIDS", "[-1]");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("CONTROL_UIDS"), "{err}");
            jail.set_env("SELFUP_CONTROL_UIDS", "[]");
            jail.set_env("SELFUP_METRICS_TOKEN", "short");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("metrics_token: must be at least 16"), "{err}");
            // The scraper's token is never the operator's.
            jail.set_env("SELFUP_METRICS_TOKEN", "one-token-for-both-0123");
            jail.set_env("SELFUP_UPGRADE_TOKEN", "one-token-for-both-0123");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("metrics_token: is the upgrade token"), "{err}");
            Ok(())
        })
    }

    #[test]
    fn the_readme_table_names_every_setting() {
        let value = serde_json::to_value(Settings::default()).unwrap();
        let fields: std::collections::BTreeSet<String> = value.as_object().unwrap().keys().cloned().collect();
        assert!(fields.len() > 20, "{fields:?}");
        assert_eq!(readme_table_names(), fields);
    }

    #[test]
    fn watch_settings_are_checked_at_start() {
        jailed(|jail| {
            let settings = load_in(jail).unwrap();
            assert_eq!((settings.watch, settings.watch_interval_secs), (None, 300));
            assert_eq!(settings.watch_mode, WatchMode::Apply);
            jail.set_env("SELFUP_WATCH", "");
            assert_eq!(load_in(jail).unwrap().watch, None);
            // A number is the requirement as written, never 1.1 for 1.10.
            for written in ["1", "1.10"] {
                jail.set_env("SELFUP_WATCH", written);
                assert_eq!(load_in(jail).unwrap().watch.as_deref(), Some(written));
            }
            jail.set_env("SELFUP_WATCH", "^2");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("watch: invalid version requirement"), "{err}");
            jail.set_env("SELFUP_WATCH", "latest");
            jail.set_env("SELFUP_WATCH_MODE", "notify");
            jail.set_env("SELFUP_NOTIFY_URLS", r#"["http://127.0.0.1:9/x"]"#);
            let settings = load_in(jail).unwrap();
            assert_eq!(settings.watch.as_deref(), Some("latest"));
            assert_eq!(settings.watch_mode, WatchMode::Notify);
            jail.set_env("SELFUP_WATCH_MODE", "sometimes");
            assert!(load_in(jail).is_err());
            jail.set_env("SELFUP_WATCH_MODE", "apply");
            jail.set_env("SELFUP_NOTIFY_URLS", r#"["file:///etc/passwd"]"#);
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("notify_urls: expected http(s) URLs"), "{err}");
            jail.set_env("SELFUP_NOTIFY_URLS", "[]");
            jail.set_env("SELFUP_WATCH_INTERVAL_SECS", "0");
            assert!(load_in(jail).unwrap_err().to_string().contains("watch_interval_secs"));
            jail.set_env("SELFUP_WATCH_INTERVAL_SECS", "1");
            // Unset, the token comes from its file, if there is one.
            jail.set_env("SELFUP_HOOK_TOKEN_FILE", "absent");
            assert_eq!(load_in(jail).unwrap().hook_token, None);
            jail.set_env("SELFUP_HOOK_TOKEN_FILE", "empty");
            jail.create_file("empty", "\n")?;
            assert_eq!(load_in(jail).unwrap().hook_token, None);
            jail.set_env("SELFUP_HOOK_TOKEN_FILE", "hook_token");
            jail.create_file("hook_token", "0123456789abcdef0123\n")?;
            assert_eq!(
                load_in(jail).unwrap().hook_token.as_deref(),
                Some("0123456789abcdef0123")
            );
            jail.set_env("SELFUP_HOOK_TOKEN", "0123456789abcdef-env");
            assert_eq!(
                load_in(jail).unwrap().hook_token.as_deref(),
                Some("0123456789abcdef-env")
            );
            jail.set_env("SELFUP_HOOK_TOKEN", "short");
            assert!(load_in(jail).unwrap_err().to_string().contains("hook_token"));
            Ok(())
        });
    }

    #[test]
    fn an_image_retention_below_two_is_refused() {
        jailed(|jail| {
            jail.set_env("SELFUP_IMAGE_RETENTION", "1");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("image_retention: must be at least 2"), "{err}");
            jail.set_env("SELFUP_IMAGE_RETENTION", "5");
            assert_eq!(load_in(jail).unwrap().image_retention, 5);
            Ok(())
        });
    }

    #[test]
    fn bake_settings_load_and_a_ratio_outside_zero_to_one_is_refused() {
        let with = |key: &str, value: serde_json::Value| {
            Settings::from_figment(
                Figment::from(Serialized::defaults(Settings::default())).merge(Serialized::default(key, value)),
            )
        };
        let s = Settings::default();
        assert_eq!((s.bake_secs, s.bake_max_5xx_ratio), (30, 0.01));
        assert_eq!(with("bake_secs", 0.into()).unwrap().bake_secs, 0);
        assert_eq!(
            with("bake_max_5xx_ratio", 0.05.into()).unwrap().bake_max_5xx_ratio,
            0.05
        );
        assert_eq!(
            s.standby_socket().unwrap(),
            PathBuf::from("/run/selfup-public/standby.sock")
        );
        let err = with("bake_max_5xx_ratio", 1.5.into()).unwrap_err().to_string();
        assert!(err.contains("bake_max_5xx_ratio: must be between 0 and 1"), "{err}");
    }

    #[test]
    fn a_port_outside_the_pair_is_refused() {
        jailed(|jail| {
            jail.set_env("SELFUP_PORT", "9000");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("port: 9000 is not one of ports"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_service_port_must_be_a_third_port() {
        jailed(|jail| {
            jail.set_env("SELFUP_SERVICE_PORT", "5801");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("service_port: 5801 is one of ports"), "{err}");
            jail.set_env("SELFUP_SERVICE_PORT", "80");
            assert_eq!(load_in(jail).unwrap().service_port, 80);
            Ok(())
        });
    }

    #[test]
    fn a_shutdown_longer_than_the_stop_timeout_is_refused() {
        jailed(|jail| {
            jail.set_env("SELFUP_SHUTDOWN_TIMEOUT_SECS", "40");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("shutdown_timeout_secs"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn an_image_with_a_tag_or_a_digest_is_refused() {
        for image in ["selfup:1.0.0", "selfup@sha256:abc", ""] {
            jailed(|jail| {
                jail.set_env("SELFUP_IMAGE", image);
                let err = load_in(jail).unwrap_err().to_string();
                assert_eq!(
                    err,
                    format!("configuration: image: expected a repository name without tag, got {image:?}"),
                );
                Ok(())
            });
        }
    }

    #[test]
    fn companion_settings_load_from_the_environment() {
        jailed(|jail| {
            let s = load_in(jail).unwrap();
            assert!(!s.companion);
            assert_eq!(s.allowed_registries, vec!["localhost:5000".to_string()]);
            jail.set_env("SELFUP_COMPANION", "true");
            jail.set_env("SELFUP_API_KEY", "0123456789abcdef0123");
            jail.set_env(
                "SELFUP_ALLOWED_REGISTRIES",
                r#"["127.0.0.1:5001", "ghcr.io", "docker.io"]"#,
            );
            jail.set_env("SELFUP_DOCKER_CONFIG", "/run/secrets/config.json");
            jail.set_env("SELFUP_UPDATE_DEADLINE_SECS", "20");
            jail.set_env("SELFUP_UPDATE_SETTLE_SECS", "3");
            let s = load_in(jail).unwrap();
            assert!(s.companion);
            assert_eq!(s.api_key.as_deref(), Some("0123456789abcdef0123"));
            assert_eq!(s.allowed_registries, vec!["127.0.0.1:5001", "ghcr.io", "docker.io"]);
            assert_eq!(s.docker_config, PathBuf::from("/run/secrets/config.json"));
            assert_eq!(s.update_deadline(), Duration::from_secs(20));
            assert_eq!(s.update_settle(), Duration::from_secs(3));
            Ok(())
        });
    }

    #[test]
    fn companion_settings_that_make_no_sense_are_refused() {
        for (key, value, field) in [
            ("SELFUP_API_KEY", "short", "api_key"),
            ("SELFUP_API_KEY", "with a space inside it", "api_key"),
            (
                "SELFUP_ALLOWED_REGISTRIES",
                r#"["http://localhost:5000"]"#,
                "allowed_registries",
            ),
            (
                "SELFUP_ALLOWED_REGISTRIES",
                r#"["localhost:5000/path"]"#,
                "allowed_registries",
            ),
            ("SELFUP_ALLOWED_REGISTRIES", r#"["nodot"]"#, "allowed_registries"),
            ("SELFUP_UPDATE_DEADLINE_SECS", "0", "update_deadline_secs"),
            ("SELFUP_UPDATE_SETTLE_SECS", "61", "update_settle_secs"),
            ("SELFUP_UPDATE_SOCKET", "/run/selfup/update.sock", "update_socket"),
            ("SELFUP_APP_SOCKET_DIR", "/run/selfup", "app_socket_dir"),
            ("SELFUP_LIVE_SOCKET", "/run/selfup/live.sock", "live_socket"),
            ("SELFUP_LIVE_SOCKET", "/run/selfup-public/update.sock", "live_socket"),
        ] {
            jailed(|jail| {
                jail.set_env(key, value);
                let err = load_in(jail).unwrap_err().to_string();
                assert!(err.contains(field), "{key}={value}: {err}");
                Ok(())
            });
        }
    }

    #[test]
    fn images_must_be_signed_unless_verify_is_off_and_a_label_names_a_key_not_a_path() {
        use crate::registry::signature::Policy;
        jailed(|jail| {
            let s = load_in(jail).unwrap();
            assert_eq!(s.signature_policy(), Policy::Signed("/etc/selfup/cosign.pub".into()));
            jail.set_env("SELFUP_VERIFY_KEY", "/keys/ops.pub");
            assert_eq!(
                load_in(jail).unwrap().signature_policy(),
                Policy::Signed("/keys/ops.pub".into())
            );
            jail.set_env("SELFUP_VERIFY", "off");
            assert_eq!(load_in(jail).unwrap().signature_policy(), Policy::Off);
            jail.set_env("SELFUP_VERIFY", "maybe");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("VERIFY") && err.contains("`signed` or `off`"), "{err}");
            Ok(())
        });
        let s = Settings::default();
        assert_eq!(
            s.named_key("team-a").unwrap(),
            PathBuf::from("/etc/selfup/keys/team-a.pub")
        );
        for bad in ["", "../root", "a/b", ".hidden", "x y", &"k".repeat(65)] {
            let err = s.named_key(bad).unwrap_err();
            assert!(err.contains("is not a key name"), "{bad}: {err}");
        }
    }

    #[test]
    fn the_scripts_variables_in_an_operators_shell_are_no_settings() {
        jailed(|jail| {
            // Those read apart have tests of their own.
            for name in super::NOT_SETTINGS
                .iter()
                .filter(|n| !["CONFIG", "LOG", "WATCH"].contains(n))
            {
                jail.set_env(format!("SELFUP_{name}"), "x");
            }
            jail.set_env("SELFUP_PORT", "5801");
            assert_eq!(load_in(jail).unwrap().port, 5801);
            jail.set_env("SELFUP_NO_SUCH_SETTING", "x");
            let err = load_in(jail).unwrap_err().to_string();
            assert!(err.contains("no_such_setting"), "{err}");
            Ok(())
        });
    }
}
