//! The upgrade interface both backends of the self-upgrade share: what an
//! upgrade goes to ([`Target`]), how it ends ([`UpgradeOutcome`],
//! [`UpgradeError`]), the single-flight lock ([`Flight`]), the dependencies
//! every backend works with ([`Deps`]) and the four things a backend does
//! ([`UpgradeBackend`]). The host's blue-green handover (`handover/`) and a
//! Swarm service update (`swarm/`) implement it; neither knows the other.

use std::sync::Arc;
use std::time::Duration;

use bollard::models::ImageInspect;
use semver::Version;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::Settings;
use crate::docker::{DockerError, Engine};
use crate::events::Event;
use crate::metrics::Timings;
use crate::recreate::resolve::ResolveError;
use crate::recreate::watch::WaitError;
use crate::registry::Registry;
use crate::registry::credentials::{self, Helpers, RegistryAuth};
use crate::state::{InProgress, Requested, Shared, TakeoverPhase, UpgradeStep};
use crate::version::{Requirement, RequirementError};

/// The version, and the local image id, that ran before the last upgrade:
/// what `POST /rollback` goes back to.
pub const PREVIOUS_VERSION_LABEL: &str = "selfup.previous.version";
pub const PREVIOUS_IMAGE_LABEL: &str = "selfup.previous.image";

/// What an upgrade goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A registry tag: `:latest` or the highest match of a requirement.
    Registry(Requirement),
    /// The version that ran before the last upgrade, from its local image.
    Previous,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Registry(r) => r.fmt(f),
            Target::Previous => f.write_str("rollback"),
        }
    }
}

/// Why an upgrade did not happen. Every variant says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    BadRequirement(#[from] RequirementError),
    #[error("an upgrade is already running")]
    InProgress(InProgress),
    /// The last upgrade's successor is live and this instance still bakes it.
    #[error(
        "a bake of {to} is running ({left_secs} s left): POST /promote to keep {to} now, POST /rollback to go back, or wait"
    )]
    Baking { to: String, left_secs: u64 },
    #[error(
        "companion updates of {} still ran after {waited_secs}s; the upgrade did not start: try again when they are done",
        containers.join(", ")
    )]
    CompanionBusy { containers: Vec<String>, waited_secs: u64 },
    #[error("this instance is still taking over from its elder ({0}); try again when it is done")]
    TakeoverUnderway(crate::state::TakeoverPhase),
    /// This instance gave the live socket to its successor and is about to
    /// stop: a request that reached it late is no upgrade of the live one.
    #[error(
        "this instance has handed over to its successor and is about to stop; ask the live instance (the control socket, or the other port)"
    )]
    HandedOver,
    #[error("no previous version is known: this instance was not started by an upgrade")]
    NoPrevious,
    #[error("the image of the previous version {version} ({image}) is no longer on this machine")]
    PreviousImageGone { version: String, image: String },
    #[error("this instance does not run in a Docker container, so it cannot start a successor")]
    NotInContainer,
    /// The way to the target: the registry, the pull, the label, the decision.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The `docker_config` file names no usable credentials for the registry.
    #[error("credentials for {registry}: {source}")]
    Credentials {
        registry: String,
        source: crate::registry::credentials::CredentialsError,
    },
    #[error("{context}: {source}")]
    Docker { context: String, source: DockerError },
    /// Something other than a successor holds the port the successor would
    /// listen on (any local user can bind the idle port): not the image's
    /// fault. No successor was created; the watch tries again later.
    #[error(
        "port {port} on {bind}, where the successor would listen, is held by another process ({reason}); nothing was started: free the port and try again"
    )]
    PortTaken {
        port: u16,
        bind: std::net::IpAddr,
        reason: String,
    },
    #[error("the successor on port {port} did not become healthy: {reason}")]
    SuccessorUnhealthy { port: u16, reason: WaitError, log: String },
    #[error("the successor on port {port} failed to take over: {reason}")]
    TakeoverFailed { port: u16, reason: WaitError, log: String },
    #[error(
        "this instance was asked to stop before its successor on port {port} confirmed the takeover (it was at {phase}); the successor finishes it, or removes itself"
    )]
    StoppedBeforeConfirmation { port: u16, phase: String },
    /// The successor went bad during the bake (or an operator said so):
    /// the elder serves again and the successor is removed.
    #[error("rolled back during bake: {}", report.reason)]
    RolledBackDuringBake {
        report: Box<crate::state::BakeReport>,
        log: String,
        by_operator: bool,
    },
    /// The target is the version last rolled back during a bake.
    #[error(
        "{version} was rolled back during a bake ({reason}); ask for it exactly (/upgrade/={version}) to upgrade to it anyway, or publish a newer version"
    )]
    RolledBackBefore { version: String, reason: String },
    /// Swarm rolled the update back on its own: a new task failed.
    #[error("the service update was rolled back by Swarm: {reason}")]
    SwarmRolledBack { reason: String, tasks: Vec<TaskVersion> },
    /// Swarm paused the update (or the rollback) and waits for an operator.
    #[error(
        "the service update stopped at {state}: {reason}; `docker service update` or POST /rollback goes on from there"
    )]
    SwarmPaused {
        state: String,
        reason: String,
        tasks: Vec<TaskVersion>,
    },
    /// The service is being updated (or rolled back) already: by another
    /// task's upgrade, or by an operator.
    #[error("the service is already {state} ({message}); try again when it is over")]
    SwarmBusy { state: String, message: String },
    /// Swarm did not end the update within the time the answer waits.
    #[error(
        "the service update was not over after {waited_secs}s (last: {last}); Swarm goes on with it, /status shows the tasks"
    )]
    SwarmNotDone { waited_secs: u64, last: String },
    /// `/rollback` on a Swarm service whose last update was rolled back
    /// (Swarm's previous spec is that update) and whose spec records no
    /// image that ran before it.
    #[error(
        "the service's last update was rolled back, so Swarm's rollback would go to that update again, and the service's spec records no image that ran before it: name a version with /upgrade/=VERSION"
    )]
    SwarmNothingToRollBackTo,
    #[error("{0}")]
    Internal(String),
}

impl UpgradeError {
    /// A Docker failure with the step it happened in.
    pub fn docker(context: impl Into<String>) -> impl FnOnce(DockerError) -> UpgradeError {
        let context = context.into();
        move |source| UpgradeError::Docker { context, source }
    }
}

/// What a finished upgrade request reports.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum UpgradeOutcome {
    /// The target is what runs; nothing was done.
    AlreadyThere { version: String, message: String },
    /// The successor is live and this instance is on its way out.
    Upgraded {
        from: String,
        to: String,
        rollback: bool,
        image: String,
        old_port: u16,
        new_port: u16,
        successor: String,
        timings: Timings,
        /// How the bake ended (the answer comes after it); none without one.
        #[serde(skip_serializing_if = "Option::is_none")]
        bake: Option<Box<crate::state::BakeReport>>,
    },
    /// Swarm rolled the target out to every task of the service.
    Completed {
        from: String,
        to: String,
        /// The target is lower than what ran (named exactly).
        rollback: bool,
        /// The image the service runs, pinned by digest.
        image: String,
        service: String,
        /// Swarm's last word on the update.
        message: String,
        /// Every task Swarm runs now, with its version.
        tasks: Vec<TaskVersion>,
        timings: SwarmTimings,
    },
    /// Swarm went back to the service's spec before its last update, as
    /// asked (`POST /rollback`).
    RollbackCompleted {
        from: String,
        /// The version the service's labels say ran before, if they say.
        to: Option<String>,
        service: String,
        message: String,
        tasks: Vec<TaskVersion>,
        timings: SwarmTimings,
    },
}

/// One running task of the service, as the answer and `/status` list it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskVersion {
    /// The task id, 12 characters.
    pub task: String,
    pub slot: Option<i64>,
    /// The node id, 12 characters.
    pub node: String,
    /// Swarm's state of the task: `running`, `starting`, ...
    pub state: String,
    /// The image the task's spec names.
    pub image: String,
    /// That image's version label, where this node has the image.
    pub version: Option<String>,
}

/// Milliseconds spent in each step of a Swarm upgrade.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SwarmTimings {
    pub resolve_ms: u128,
    pub pull_ms: u128,
    /// From the service update to the end Swarm reports.
    pub update_ms: u128,
    pub total_ms: u128,
}

/// A registry target, fetched (the host's `fetch`).
pub(crate) struct Fetched {
    /// The tag the requirement picked (or, for a rollback on the host, the
    /// previous version's local image).
    pub image: String,
    /// That image's repository, which a pin by digest names.
    pub repository: String,
    /// The pulled image.
    pub inspect: ImageInspect,
    /// The registry's credentials, for whoever pulls next.
    pub auth: Option<RegistryAuth>,
    pub resolve_ms: u128,
    pub pull_ms: u128,
}

/// Holds the single-flight lock; releasing it is dropping it, on every path.
pub(crate) struct Flight<'a> {
    deps: &'a Deps,
    /// When the lock was taken: where an upgrade's timings start.
    pub(crate) started: Instant,
}

impl<'a> Flight<'a> {
    pub fn take(deps: &'a Deps, target: &Target) -> Result<Self, UpgradeError> {
        let mut status = deps.shared.status();
        if let Some(bake) = &status.bake {
            return Err(UpgradeError::Baking {
                to: bake.to.clone(),
                left_secs: bake.ends.saturating_duration_since(std::time::Instant::now()).as_secs(),
            });
        }
        if let Some(running) = &status.upgrade {
            return Err(UpgradeError::InProgress(running.clone()));
        }
        if matches!(
            status.takeover,
            TakeoverPhase::WaitingForGo | TakeoverPhase::Running { .. }
        ) {
            return Err(UpgradeError::TakeoverUnderway(status.takeover.clone()));
        }
        if deps.shared.lingering.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(UpgradeError::HandedOver);
        }
        status.upgrade = Some(InProgress {
            requirement: target.to_string(),
            step: UpgradeStep::Resolving,
            started: std::time::Instant::now(),
        });
        drop(status);
        let events = &deps.shared.events;
        events.emit(Event::UpgradeStarted {
            requested: requested(target),
            from: deps.version.to_string(),
        });
        events.emit(Event::UpgradeStep {
            step: UpgradeStep::Resolving.into(),
        });
        Ok(Flight {
            deps,
            started: Instant::now(),
        })
    }

    pub fn step(&self, step: UpgradeStep) {
        if let Some(u) = self.deps.shared.status().upgrade.as_mut() {
            u.step = step;
        }
        tracing::info!(%step, "upgrade");
        self.deps.shared.events.emit(Event::UpgradeStep { step: step.into() });
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.deps.shared.status().upgrade = None;
    }
}

/// What `target` is, as the history and the events name it.
pub fn requested(target: &Target) -> Requested {
    match target {
        Target::Previous => Requested::Rollback,
        Target::Registry(requirement) => Requested::Registry(requirement.to_string()),
    }
}

/// A target resolved, pulled (or found) and decided: what
/// [`UpgradeBackend::deploy`] lands.
pub(crate) struct Pinned {
    /// The image as resolved, and its inspection: the one that was checked.
    pub fetched: Fetched,
    /// The image's version label.
    pub version: Version,
    /// The version is lower than what runs (named exactly).
    pub rollback: bool,
}

/// What a step before the follow-up gives: something to carry on with, or
/// nothing to do (the target is what runs), with the answer's words.
pub(crate) enum Next<T> {
    Go(T),
    AlreadyThere { version: String, message: String },
}

/// The backend's own part of `/status`: the same keys on every backend, so
/// that a client reads one shape (`swarm` is null on the host).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackendStatus {
    pub swarm: Option<SwarmStatus>,
}

/// A Swarm task's part of `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwarmStatus {
    /// The service's name.
    pub service: String,
    /// This task's id.
    pub task: Option<String>,
    /// Every task Swarm wants running, with its version.
    pub tasks: Vec<TaskVersion>,
}

/// What a backend does with a resolved upgrade: deploy it, follow it to its
/// end, roll back, and show itself in `/status`. The lock, the resolution,
/// the decision, the history and the events stay with the caller,
/// the host's `land`.
pub(crate) trait UpgradeBackend {
    /// An update under way, from [`deploy`](Self::deploy) or
    /// [`roll_back`](Self::roll_back) to [`follow`](Self::follow).
    type Progress;

    /// Starts landing `target`. `AlreadyThere` when the backend already
    /// runs that very image (Swarm's spec names it).
    async fn deploy(
        &self,
        deps: &Deps,
        flight: &Flight<'_>,
        target: Pinned,
    ) -> Result<Next<Self::Progress>, UpgradeError>;

    /// Follows an update to its end and answers with its outcome.
    async fn follow(
        &self,
        deps: &Deps,
        flight: &Flight<'_>,
        progress: Self::Progress,
    ) -> Result<UpgradeOutcome, UpgradeError>;

    /// Starts going back to what ran before the last upgrade.
    async fn roll_back(&self, deps: &Deps, flight: &Flight<'_>) -> Result<Next<Self::Progress>, UpgradeError>;

    /// This backend's part of `/status`.
    async fn status(&self, deps: &Deps) -> BackendStatus;
}

/// What every backend works with, built once at start-up, complete.
#[derive(Debug)]
pub struct Deps {
    pub settings: Arc<Settings>,
    pub engine: Arc<Engine>,
    pub registry: Registry,
    pub shared: Arc<Shared>,
    /// This instance's container id, if it runs in one.
    pub self_id: Option<String>,
    /// This binary's version.
    pub version: Version,
    /// For talking to instances on loopback: no proxy, no pooling across runtimes.
    pub http: reqwest::Client,
}

impl Deps {
    pub fn new(settings: Arc<Settings>, engine: Arc<Engine>, shared: Arc<Shared>, self_id: Option<String>) -> Deps {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .expect("a reqwest client with static settings builds");
        let registry = registry_client(&settings);
        Deps {
            settings,
            engine,
            registry,
            shared,
            self_id,
            version: crate::build_version().clone(),
            http,
        }
    }

    /// The registry's credentials from the `docker_config` file, the same
    /// lookup companion mode makes; none when the file or its entry is absent.
    pub async fn registry_auth(&self) -> Result<Option<RegistryAuth>, UpgradeError> {
        let registry = &self.settings.registry;
        credentials::for_registry(&self.settings.docker_config, registry, &Helpers::from_env())
            .await
            .map_err(|source| UpgradeError::Credentials {
                registry: registry.clone(),
                source,
            })
    }
}

/// The registry client both roles read the registry with: its API called at
/// `registry_api` when that is set (a task's or a bridge network's loopback
/// is its own), at the registry's name otherwise.
pub fn registry_client(settings: &Settings) -> Registry {
    let registry = match &settings.registry_api {
        Some(address) => Registry::new().with_api_address(&settings.registry, address),
        None => Registry::new(),
    };
    match &settings.registry_socket {
        Some(path) => registry.with_socket(&settings.registry, path),
        None => registry,
    }
}
