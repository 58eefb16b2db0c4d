//! The Swarm backend: when this instance runs as a task of a Docker Swarm
//! service, an upgrade is a service update that Swarm rolls out, one task
//! at a time, start-first, and rolls back on its own when a new task fails.
//!
//! Where an upgrade lands is the [`Backend`], detected from this container's
//! own labels (`com.docker.swarm.service.id`). Everything before the landing
//! is shared with the host handover: the single-flight lock, the version
//! resolution and the decision, the history, the events, `/status`. What
//! the Swarm backend adds are its four operations, in the order an upgrade
//! takes them:
//!
//! 1. [`Orchestrator::swarm_deploy`]: the service's spec with the image
//!    pinned by digest (`repo@sha256:…`), an update policy that rolls back
//!    on failure ([`rollout_spec`]), sent with the registry's credentials.
//! 2. [`Orchestrator::swarm_follow`]: the service's `UpdateStatus`, polled
//!    until Swarm says `completed`, `rollback_completed` or paused.
//! 3. [`Orchestrator::swarm_rollback`]: Swarm's own rollback to the spec
//!    before the last update (`POST /rollback`); after a rolled-back update,
//!    whose spec Swarm's rollback would go to, a deploy of the image the
//!    labels record instead ([`rollback_plan`]).
//! 4. [`Orchestrator::swarm_tasks`]: every running task with its version,
//!    for the answer and `/status`.
//!
//! The answer comes from the task that received the request, although
//! Swarm replaces that task during the update: a task whose stop signal
//! arrives while it follows an update keeps running until the update has
//! ended and its answer is sent (see `app`, and the stop grace period
//! [`MIN_STOP_GRACE`] the rollout sets). Swarm has already taken it out of
//! the service's DNS, so nothing but that answer is served meanwhile.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{
    ContainerInspectResponse, HealthConfig, ServiceSpec, ServiceSpecRollbackConfig,
    ServiceSpecRollbackConfigFailureActionEnum, ServiceSpecRollbackConfigOrderEnum, ServiceSpecUpdateConfig,
    ServiceSpecUpdateConfigFailureActionEnum, ServiceSpecUpdateConfigOrderEnum, ServiceUpdateStatusStateEnum,
};
use serde::Serialize;
use tokio::time::Instant;

use super::elder::Flight;
use super::{Orchestrator, PREVIOUS_IMAGE_LABEL, PREVIOUS_VERSION_LABEL, Target, UpgradeError, UpgradeOutcome};
use crate::docker::DockerError;
use crate::events::Event;
use crate::recreate::resolve::{self, Go};
use crate::registry::credentials::RegistryAuth;
use crate::state::{Rejected, UpgradeStep, now_secs};

/// The labels Swarm puts on a task's container.
pub const SERVICE_ID_LABEL: &str = "com.docker.swarm.service.id";
pub const SERVICE_NAME_LABEL: &str = "com.docker.swarm.service.name";
pub const TASK_ID_LABEL: &str = "com.docker.swarm.task.id";

/// How long Swarm watches each new task for a failure before it counts it
/// as updated, at the least (a spec that asks for more keeps its own).
pub const MIN_MONITOR: Duration = Duration::from_secs(10);
/// The health check's interval during start-up and after: Swarm waits for a
/// new task's first healthy check before it stops the old one, and the
/// image's own interval (10 s) would make every task wait that long.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// The least stop grace period the rollout gives the service's tasks: the
/// task that received an upgrade request is stopped during the update it
/// follows and keeps running until the update has ended (the later tasks,
/// then [`MIN_MONITOR`]).
pub const MIN_STOP_GRACE: Duration = Duration::from_secs(120);
/// How often the update's state is read.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// The longest an update is followed before the answer gives up on it
/// (Swarm goes on).
pub const FOLLOW_DEADLINE: Duration = Duration::from_secs(600);

/// Where an upgrade lands once its target is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// This host: the blue-green handover of [`super::elder`] and
    /// [`super::takeover`], a successor container beside this one.
    Host,
    /// A Swarm service this instance is a task of: Swarm replaces the tasks.
    Swarm(SwarmService),
}

/// The Swarm service this instance is a task of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwarmService {
    pub id: String,
    pub name: String,
    /// This task's id.
    pub task: Option<String>,
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

/// How a followed update ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Swarm's last state: `completed`, `rollback_completed`, `paused`, `rollback_paused`.
    pub state: ServiceUpdateStatusStateEnum,
    /// Swarm's reason: the message of a rollback's or pause's start, else
    /// the last message.
    pub reason: String,
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// `spec` with `image` as its tasks' image and the policy every selfup
/// rollout uses: one task at a time, the new one started (and healthy)
/// before the old one stops, a failure rolls the whole update back, and
/// each new task is watched for at least [`MIN_MONITOR`]. The image's own
/// health check runs (its test is inherited) every [`HEALTH_INTERVAL`].
/// `previous` (image, version) is recorded in the service's labels: what ran
/// before.
pub fn rollout_spec(mut spec: ServiceSpec, image: &str, previous: Option<(&str, &str)>) -> ServiceSpec {
    let template = spec.task_template.get_or_insert_with(Default::default);
    let container = template.container_spec.get_or_insert_with(Default::default);
    container.image = Some(image.to_string());
    let health = container.health_check.get_or_insert_with(HealthConfig::default);
    let interval = nanos(HEALTH_INTERVAL);
    health.interval = Some(health.interval.filter(|&i| i > 0 && i <= interval).unwrap_or(interval));
    health.retries = Some(health.retries.filter(|&r| r > 0).unwrap_or(3));
    health.timeout = Some(
        health
            .timeout
            .filter(|&t| t > 0)
            .unwrap_or(nanos(Duration::from_secs(3))),
    );
    let grace = container.stop_grace_period.unwrap_or(0).max(nanos(MIN_STOP_GRACE));
    container.stop_grace_period = Some(grace);
    let monitor = spec
        .update_config
        .as_ref()
        .and_then(|u| u.monitor)
        .unwrap_or(0)
        .max(nanos(MIN_MONITOR));
    spec.update_config = Some(ServiceSpecUpdateConfig {
        parallelism: Some(1),
        delay: Some(0),
        failure_action: Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK),
        monitor: Some(monitor),
        max_failure_ratio: Some(0.0),
        order: Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST),
    });
    spec.rollback_config = Some(ServiceSpecRollbackConfig {
        parallelism: Some(1),
        delay: Some(0),
        failure_action: Some(ServiceSpecRollbackConfigFailureActionEnum::PAUSE),
        monitor: Some(monitor),
        max_failure_ratio: Some(0.0),
        order: Some(ServiceSpecRollbackConfigOrderEnum::START_FIRST),
    });
    if let Some((image, version)) = previous {
        let labels = spec.labels.get_or_insert_with(HashMap::new);
        labels.insert(PREVIOUS_IMAGE_LABEL.into(), image.to_string());
        labels.insert(PREVIOUS_VERSION_LABEL.into(), version.to_string());
    }
    spec
}

/// How `/rollback` goes back on a Swarm service.
#[derive(Debug, Clone, PartialEq)]
pub enum RollbackPlan {
    /// Swarm's own rollback: its previous spec is what ran before.
    Swarm,
    /// A service update to the (image, version) selfup recorded as running
    /// before: Swarm's previous spec is another one, an update Swarm rolled
    /// back.
    Deploy { image: String, version: String },
}

/// The (image, version) a spec's labels record as running before it.
pub fn recorded_previous(spec: Option<&ServiceSpec>) -> Option<(String, String)> {
    let labels = spec?.labels.as_ref()?;
    labels
        .get(PREVIOUS_IMAGE_LABEL)
        .cloned()
        .zip(labels.get(PREVIOUS_VERSION_LABEL).cloned())
}

/// Where `/rollback` goes. `recorded`: the (image, version) the current
/// spec's labels say ran before it (set by the deploy that made it);
/// `last`: the state of the service's last update.
///
/// Swarm's own rollback goes to its previous spec: after an update that
/// completed, the spec that update replaced, which is what the labels
/// record when selfup made the update. After a rollback (Swarm's own after
/// a failing task, or a `/rollback`) Swarm's previous spec is the update it
/// rolled back, so its rollback would go forward to that update again: the
/// recorded image is deployed instead, and without a record the rollback
/// is refused (409), never a return to the rolled-back update.
pub fn rollback_plan(
    recorded: Option<(&str, &str)>,
    last: Option<ServiceUpdateStatusStateEnum>,
) -> Result<RollbackPlan, UpgradeError> {
    use ServiceUpdateStatusStateEnum::*;
    let rolled_back = matches!(last, Some(ROLLBACK_COMPLETED | ROLLBACK_PAUSED));
    match recorded {
        _ if !rolled_back => Ok(RollbackPlan::Swarm),
        Some((image, version)) => Ok(RollbackPlan::Deploy {
            image: image.to_string(),
            version: version.to_string(),
        }),
        None => Err(UpgradeError::SwarmNothingToRollBackTo),
    }
}

/// The image a spec's tasks run.
pub fn spec_image(spec: &ServiceSpec) -> Option<&str> {
    spec.task_template.as_ref()?.container_spec.as_ref()?.image.as_deref()
}

/// Whether an update in this state is over.
pub fn is_final(state: ServiceUpdateStatusStateEnum) -> bool {
    use ServiceUpdateStatusStateEnum::*;
    matches!(state, COMPLETED | ROLLBACK_COMPLETED | PAUSED | ROLLBACK_PAUSED)
}

/// The references under which a local image may be found for a spec's
/// image: as written, and without the tag when it carries both a tag and a
/// digest (`repo:1.0.0@sha256:…`, as `docker stack deploy` pins it).
fn lookups(image: &str) -> Vec<String> {
    let mut refs = vec![image.to_string()];
    if let Some((name, digest)) = image.split_once('@') {
        let last = name.rsplit('/').next().unwrap_or(name);
        if let Some((_, tag)) = last.rsplit_once(':') {
            let repo = &name[..name.len() - tag.len() - 1];
            refs.push(format!("{repo}@{digest}"));
        }
    }
    refs
}

/// `repository@sha256:…` for a pulled image: its digest in that
/// repository, which every node pulls the very same image by.
pub fn pinned_ref(repository: &str, image: &bollard::models::ImageInspect) -> Option<String> {
    let prefix = format!("{repository}@");
    image
        .repo_digests
        .as_ref()?
        .iter()
        .find(|d| d.starts_with(&prefix))
        .cloned()
}

impl Orchestrator {
    /// An upgrade as a Swarm service update: resolved, pulled (for its
    /// label and digest) and decided as on the host, then the service's
    /// spec names the image by digest and Swarm rolls it out; the answer
    /// is Swarm's outcome and every task's version.
    pub(super) async fn swarm_upgrade(
        &self,
        flight: &Flight<'_>,
        target: &Target,
        started: Instant,
        service: &SwarmService,
    ) -> Result<UpgradeOutcome, UpgradeError> {
        let requirement = match target {
            Target::Previous => return self.swarm_roll_back(flight, started, service).await,
            Target::Registry(requirement) => requirement,
        };
        let mut timings = SwarmTimings::default();
        let fetched = self.fetch(flight, requirement, started).await?;
        timings.resolve_ms = fetched.resolve_ms;
        timings.pull_ms = fetched.pull_ms;
        let image = fetched.image.to_string();
        let version = resolve::labelled_version(&image, &fetched.inspect, requirement)?;
        self.refuse_rejected(&version, requirement)?;
        let to = version.to_string();
        let rollback = match resolve::decide(&self.version, &version, requirement)? {
            Go::AlreadyThere => {
                return Ok(UpgradeOutcome::AlreadyThere {
                    message: format!("already at {to}: nothing to do"),
                    version: to,
                });
            }
            Go::Upgrade => false,
            Go::Rollback => true,
        };
        let repository = fetched.image.repository();
        let pinned = pinned_ref(&repository, &fetched.inspect).ok_or_else(|| {
            UpgradeError::Internal(format!(
                "the image {image} has no digest in {repository}, so the service cannot be pinned to it"
            ))
        })?;
        flight.step(UpgradeStep::UpdatingTheService);
        let t = Instant::now();
        let Some(before) = self.swarm_deploy(service, &pinned, fetched.auth.as_ref()).await? else {
            return Ok(UpgradeOutcome::AlreadyThere {
                message: format!("the service {} already runs {pinned}: nothing to do", service.name),
                version: to,
            });
        };
        let rollout = self.swarm_follow(service, before).await?;
        timings.update_ms = t.elapsed().as_millis();
        timings.total_ms = started.elapsed().as_millis();
        let tasks = self.swarm_tasks(service, &[(&pinned, &to)]).await;
        match rollout.state {
            ServiceUpdateStatusStateEnum::COMPLETED => Ok(UpgradeOutcome::Completed {
                from: self.version.to_string(),
                to,
                rollback,
                image: pinned,
                service: service.name.clone(),
                message: rollout.reason,
                tasks,
                timings,
            }),
            ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED => {
                let reason = match self.swarm_failure(service, &pinned).await {
                    Some(failure) => format!("{} ({failure})", rollout.reason),
                    None => rollout.reason,
                };
                // As after a bake's rollback: `:latest` (and the watch
                // policy) leave this version alone until it is named exactly.
                self.shared.reject(Rejected {
                    version: to,
                    reason: reason.clone(),
                    at: now_secs(),
                });
                Err(UpgradeError::SwarmRolledBack { reason, tasks })
            }
            state => Err(UpgradeError::SwarmPaused {
                state: state.to_string(),
                reason: rollout.reason,
                tasks,
            }),
        }
    }

    /// `/rollback` as a Swarm task: Swarm's own rollback to the spec before
    /// the service's last update when that update completed; after a
    /// rolled-back update (whose spec is Swarm's previous one), an update to
    /// the image the labels record ([`rollback_plan`]).
    async fn swarm_roll_back(
        &self,
        flight: &Flight<'_>,
        started: Instant,
        service: &SwarmService,
    ) -> Result<UpgradeOutcome, UpgradeError> {
        let current = self
            .engine
            .inspect_service(&service.id)
            .await
            .map_err(UpgradeError::docker(format!("inspecting the service {}", service.name)))?;
        let recorded = recorded_previous(current.spec.as_ref());
        let last = current.update_status.as_ref().and_then(|s| s.state);
        let plan = rollback_plan(recorded.as_ref().map(|(i, v)| (i.as_str(), v.as_str())), last)?;
        flight.step(UpgradeStep::UpdatingTheService);
        let t = Instant::now();
        let (rollout, previous, message) = match plan {
            RollbackPlan::Swarm => {
                let (before, previous) = self.swarm_rollback(service).await?;
                (self.swarm_follow(service, before).await?, previous, None)
            }
            RollbackPlan::Deploy { image, version } => {
                let auth = self.registry_auth().await?;
                let Some(before) = self.swarm_deploy(service, &image, auth.as_ref()).await? else {
                    return Ok(UpgradeOutcome::AlreadyThere {
                        message: format!("the service {} already runs {image}: nothing to do", service.name),
                        version,
                    });
                };
                let rollout = self.swarm_follow(service, before).await?;
                let message = format!(
                    "the service's last update was rolled back, so Swarm's previous spec is that update: updated to {image}, recorded as running before, instead"
                );
                (rollout, Some((image, version)), Some(message))
            }
        };
        let known: Vec<(&str, &str)> = previous.iter().map(|(i, v)| (i.as_str(), v.as_str())).collect();
        let tasks = self.swarm_tasks(service, &known).await;
        let timings = SwarmTimings {
            update_ms: t.elapsed().as_millis(),
            total_ms: started.elapsed().as_millis(),
            ..Default::default()
        };
        let done = match message {
            Some(_) => ServiceUpdateStatusStateEnum::COMPLETED,
            None => ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED,
        };
        match rollout.state {
            state if state == done => Ok(UpgradeOutcome::RollbackCompleted {
                from: self.version.to_string(),
                to: previous.map(|(_, version)| version),
                service: service.name.clone(),
                message: match message {
                    Some(message) => format!("{message}; {}", rollout.reason),
                    None => rollout.reason,
                },
                tasks,
                timings,
            }),
            ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED => Err(UpgradeError::SwarmRolledBack {
                reason: rollout.reason,
                tasks,
            }),
            state => Err(UpgradeError::SwarmPaused {
                state: state.to_string(),
                reason: rollout.reason,
                tasks,
            }),
        }
    }

    /// The backend, from this container's labels; detected once. Outside
    /// a container (or when the Engine cannot say), the host.
    pub async fn backend(&self) -> Backend {
        if let Some(backend) = self.backend.get() {
            return backend.clone();
        }
        let Some(me) = &self.self_id else {
            return Backend::Host;
        };
        match self.engine.inspect_container(me).await {
            Ok(container) => {
                let backend = Backend::of(&container);
                if let Backend::Swarm(service) = &backend {
                    tracing::info!(service = %service.name, "a Swarm task: upgrades are service updates");
                }
                self.backend.get_or_init(|| backend).clone()
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot inspect this container: upgrades are host handovers");
                Backend::Host
            }
        }
    }

    /// The backend if it is known already, without asking the Engine.
    pub fn known_backend(&self) -> Option<&Backend> {
        self.backend.get()
    }

    /// Sends the service's spec with `image` (pinned by digest) and the
    /// rollout policy ([`rollout_spec`]); `from_version` is what runs now.
    /// Returns the start time of the update before this one, to tell the
    /// new update's status from the old one's. `None` for the image: the
    /// spec already names it, and no update starts.
    pub async fn swarm_deploy(
        &self,
        service: &SwarmService,
        image: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<Option<Option<String>>, UpgradeError> {
        let current = self
            .engine
            .inspect_service(&service.id)
            .await
            .map_err(UpgradeError::docker(format!("inspecting the service {}", service.name)))?;
        // Another task's upgrade (or an operator's `docker service update`)
        // is rolling: one at a time, as on the host.
        if let Some(status) = &current.update_status
            && let Some(
                state @ (ServiceUpdateStatusStateEnum::UPDATING | ServiceUpdateStatusStateEnum::ROLLBACK_STARTED),
            ) = status.state
        {
            return Err(UpgradeError::SwarmBusy {
                state: state.to_string(),
                message: status.message.clone().unwrap_or_default(),
            });
        }
        let spec = current.spec.unwrap_or_default();
        let running = spec_image(&spec).unwrap_or_default().to_string();
        if running == image {
            return Ok(None);
        }
        let version = current.version.and_then(|v| v.index).unwrap_or(0);
        let before = current.update_status.and_then(|s| s.started_at);
        let spec = rollout_spec(spec, image, Some((&running, &self.version.to_string())));
        let warnings = self
            .engine
            .update_service(
                &service.id,
                spec,
                i32::try_from(version).unwrap_or(i32::MAX),
                None,
                auth.map(RegistryAuth::docker),
            )
            .await
            .map_err(UpgradeError::docker(format!(
                "updating the service {} to {image}",
                service.name
            )))?;
        for warning in warnings {
            tracing::warn!(%warning, "the service update");
        }
        Ok(Some(before))
    }

    /// Asks Swarm to go back to the service's spec before its last update.
    /// Returns what [`Orchestrator::swarm_deploy`] does: the last update's
    /// start, and the previous (image, version) the labels name, if any.
    pub async fn swarm_rollback(
        &self,
        service: &SwarmService,
    ) -> Result<(Option<String>, Option<(String, String)>), UpgradeError> {
        let current = self
            .engine
            .inspect_service(&service.id)
            .await
            .map_err(UpgradeError::docker(format!("inspecting the service {}", service.name)))?;
        let spec = current.spec.unwrap_or_default();
        let labels = spec.labels.clone().unwrap_or_default();
        let previous = labels
            .get(PREVIOUS_IMAGE_LABEL)
            .cloned()
            .zip(labels.get(PREVIOUS_VERSION_LABEL).cloned());
        let version = current.version.and_then(|v| v.index).unwrap_or(0);
        let before = current.update_status.and_then(|s| s.started_at);
        self.engine
            .update_service(
                &service.id,
                spec,
                i32::try_from(version).unwrap_or(i32::MAX),
                Some("previous"),
                None,
            )
            .await
            .map_err(|e| match e {
                DockerError::Call { message, .. } if message.contains("previous") => UpgradeError::NoPrevious,
                other => UpgradeError::docker(format!("rolling the service {} back", service.name))(other),
            })?;
        Ok((before, previous))
    }

    /// The (image, version) the service's labels say ran before its last
    /// update: where Swarm's rollback goes.
    pub async fn swarm_previous(&self, service: &SwarmService) -> Result<Option<(String, String)>, UpgradeError> {
        let current = self
            .engine
            .inspect_service(&service.id)
            .await
            .map_err(UpgradeError::docker(format!("inspecting the service {}", service.name)))?;
        Ok(recorded_previous(current.spec.as_ref()))
    }

    /// Follows the update that started after `before` until Swarm says it
    /// is over, emitting each new message of Swarm's as a step.
    pub async fn swarm_follow(&self, service: &SwarmService, before: Option<String>) -> Result<Rollout, UpgradeError> {
        let started = Instant::now();
        let mut seen = String::new();
        let mut reason = None;
        let mut failures = 0;
        loop {
            match self.engine.inspect_service(&service.id).await {
                Ok(current) => {
                    failures = 0;
                    let status = current.update_status.filter(|s| s.started_at != before);
                    if let Some(status) = status {
                        let state = status.state.unwrap_or(ServiceUpdateStatusStateEnum::EMPTY);
                        let message = status.message.unwrap_or_default();
                        let said = format!("{state}: {message}");
                        if said != seen {
                            tracing::info!(%state, %message, "the service update");
                            self.shared.events.emit(Event::UpgradeStep {
                                step: format!("swarm {said}"),
                            });
                            seen = said;
                        }
                        use ServiceUpdateStatusStateEnum::*;
                        if matches!(state, ROLLBACK_STARTED | PAUSED | ROLLBACK_PAUSED) && reason.is_none() {
                            reason = Some(message.clone());
                        }
                        if is_final(state) {
                            return Ok(Rollout {
                                state,
                                reason: reason.unwrap_or(message),
                            });
                        }
                    }
                }
                // The managers may be busy for a moment (a leader change):
                // a few failed reads in a row are tolerated.
                Err(e) if failures < 20 && !matches!(e, DockerError::NoSuchContainer(_)) => {
                    failures += 1;
                    tracing::warn!(error = %e, "reading the service update");
                }
                Err(e) => {
                    return Err(UpgradeError::docker(format!(
                        "following the update of {}",
                        service.name
                    ))(e));
                }
            }
            if started.elapsed() >= FOLLOW_DEADLINE {
                return Err(UpgradeError::SwarmNotDone {
                    waited_secs: FOLLOW_DEADLINE.as_secs(),
                    last: seen,
                });
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }

    /// Every task Swarm wants running, with its image's version where this
    /// node has the image; `known` adds versions the caller already knows
    /// (image, version).
    pub async fn swarm_tasks(&self, service: &SwarmService, known: &[(&str, &str)]) -> Vec<TaskVersion> {
        let tasks = match self.engine.service_tasks(&service.id).await {
            Ok(tasks) => tasks,
            Err(e) => {
                tracing::warn!(error = %e, "listing the service's tasks");
                return Vec::new();
            }
        };
        let mut versions: HashMap<String, Option<String>> = known
            .iter()
            .map(|(image, version)| (image.to_string(), Some(version.to_string())))
            .collect();
        let mut listed = Vec::new();
        for task in tasks {
            let wanted = task.desired_state.map(|s| s.to_string()).unwrap_or_default();
            if wanted != "running" {
                continue;
            }
            let image = task
                .spec
                .as_ref()
                .and_then(|s| s.container_spec.as_ref())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            if !versions.contains_key(&image) {
                let mut version = None;
                for reference in lookups(&image) {
                    if let Ok(inspect) = self.engine.inspect_image(&reference).await {
                        version = crate::recreate::version::version_label(&inspect).map(str::to_string);
                        break;
                    }
                }
                versions.insert(image.clone(), version);
            }
            listed.push(TaskVersion {
                task: short(task.id.as_deref().unwrap_or_default()),
                slot: task.slot,
                node: short(task.node_id.as_deref().unwrap_or_default()),
                state: task
                    .status
                    .as_ref()
                    .and_then(|s| s.state)
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
                version: versions.get(&image).cloned().flatten(),
                image,
            });
        }
        listed.sort_by_key(|t| (t.slot, t.task.clone()));
        listed
    }

    /// Why the tasks of `image` failed, as Swarm recorded it: the first
    /// failed task's error, if one is recorded.
    pub async fn swarm_failure(&self, service: &SwarmService, image: &str) -> Option<String> {
        let tasks = self.engine.service_tasks(&service.id).await.ok()?;
        tasks.into_iter().find_map(|task| {
            let runs = task.spec.as_ref()?.container_spec.as_ref()?.image.as_deref() == Some(image);
            let status = task.status?;
            let err = status.err.filter(|e| !e.is_empty())?;
            runs.then(|| format!("task {}: {err}", short(task.id.as_deref().unwrap_or_default())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerConfig, TaskSpec, TaskSpecContainerSpec};

    fn container(labels: &[(&str, &str)]) -> ContainerInspectResponse {
        ContainerInspectResponse {
            config: Some(ContainerConfig {
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_container_with_a_swarm_service_label_is_a_task_and_any_other_is_the_host() {
        let task = container(&[
            (SERVICE_ID_LABEL, "svc123"),
            (SERVICE_NAME_LABEL, "demo_selfup"),
            (TASK_ID_LABEL, "task9"),
            ("com.docker.compose.project", "x"),
        ]);
        assert_eq!(
            Backend::of(&task),
            Backend::Swarm(SwarmService {
                id: "svc123".into(),
                name: "demo_selfup".into(),
                task: Some("task9".into()),
            })
        );
        assert_eq!(
            Backend::of(&container(&[("com.docker.compose.project", "x")])),
            Backend::Host
        );
        assert_eq!(Backend::of(&container(&[(SERVICE_ID_LABEL, "")])), Backend::Host);
        assert_eq!(Backend::of(&ContainerInspectResponse::default()), Backend::Host);
    }

    fn spec(image: &str) -> ServiceSpec {
        ServiceSpec {
            name: Some("demo_selfup".into()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(image.into()),
                    env: Some(vec!["SELFUP_BIND=0.0.0.0".into()]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_rollout_pins_the_image_rolls_back_on_failure_and_starts_first_one_task_at_a_time() {
        let pinned = "localhost:5000/selfup@sha256:abc";
        let out = rollout_spec(
            spec("localhost:5000/selfup:1.0.0@sha256:old"),
            pinned,
            Some(("old", "1.0.0")),
        );
        assert_eq!(spec_image(&out), Some(pinned));
        let update = out.update_config.clone().unwrap();
        assert_eq!(update.parallelism, Some(1));
        assert_eq!(update.order, Some(ServiceSpecUpdateConfigOrderEnum::START_FIRST));
        assert_eq!(
            update.failure_action,
            Some(ServiceSpecUpdateConfigFailureActionEnum::ROLLBACK)
        );
        assert_eq!(update.monitor, Some(10_000_000_000));
        let rollback = out.rollback_config.clone().unwrap();
        assert_eq!(rollback.order, Some(ServiceSpecRollbackConfigOrderEnum::START_FIRST));
        let container = out.task_template.as_ref().unwrap().container_spec.as_ref().unwrap();
        // The image's own test, at a short interval.
        let health = container.health_check.clone().unwrap();
        assert_eq!(health.test, None);
        assert_eq!(health.interval, Some(1_000_000_000));
        assert_eq!(container.stop_grace_period, Some(120_000_000_000));
        // What the spec said beyond that stays.
        assert_eq!(container.env, Some(vec!["SELFUP_BIND=0.0.0.0".into()]));
        let labels = out.labels.unwrap();
        assert_eq!(labels[PREVIOUS_VERSION_LABEL], "1.0.0");
        assert_eq!(labels[PREVIOUS_IMAGE_LABEL], "old");
    }

    #[test]
    fn rollback_never_goes_forward_to_an_update_swarm_rolled_back() {
        use ServiceUpdateStatusStateEnum::*;
        let recorded = Some(("repo:1.0.0@sha256:a", "1.0.0"));
        // After a completed update (or none yet): Swarm's own rollback, to
        // the spec that update replaced.
        for last in [Some(COMPLETED), Some(PAUSED), None] {
            assert_eq!(rollback_plan(recorded, last).unwrap(), RollbackPlan::Swarm, "{last:?}");
            assert_eq!(rollback_plan(None, last).unwrap(), RollbackPlan::Swarm, "{last:?}");
        }
        // After a rollback, Swarm's previous spec is the rolled-back update:
        // the recorded image instead, or a refusal without one.
        for last in [ROLLBACK_COMPLETED, ROLLBACK_PAUSED] {
            assert_eq!(
                rollback_plan(recorded, Some(last)).unwrap(),
                RollbackPlan::Deploy {
                    image: "repo:1.0.0@sha256:a".into(),
                    version: "1.0.0".into(),
                },
                "{last}"
            );
            assert!(matches!(
                rollback_plan(None, Some(last)),
                Err(UpgradeError::SwarmNothingToRollBackTo)
            ));
        }
    }

    #[test]
    fn the_recorded_previous_needs_both_labels() {
        let mut labelled = spec("a");
        assert_eq!(recorded_previous(Some(&labelled)), None);
        labelled.labels = Some(HashMap::from([(PREVIOUS_IMAGE_LABEL.to_string(), "old".to_string())]));
        assert_eq!(recorded_previous(Some(&labelled)), None);
        labelled
            .labels
            .as_mut()
            .unwrap()
            .insert(PREVIOUS_VERSION_LABEL.into(), "1.0.0".into());
        assert_eq!(
            recorded_previous(Some(&labelled)),
            Some(("old".to_string(), "1.0.0".to_string()))
        );
        assert_eq!(recorded_previous(None), None);
    }

    #[test]
    fn a_longer_monitor_or_grace_period_in_the_spec_is_kept() {
        let mut long = spec("a");
        long.update_config = Some(ServiceSpecUpdateConfig {
            monitor: Some(30_000_000_000),
            ..Default::default()
        });
        long.task_template
            .as_mut()
            .unwrap()
            .container_spec
            .as_mut()
            .unwrap()
            .stop_grace_period = Some(300_000_000_000);
        let out = rollout_spec(long, "b", None);
        assert_eq!(out.update_config.unwrap().monitor, Some(30_000_000_000));
        let container = out.task_template.unwrap().container_spec.unwrap();
        assert_eq!(container.stop_grace_period, Some(300_000_000_000));
        assert!(out.labels.is_none());
    }

    #[test]
    fn the_pinned_reference_is_the_digest_in_the_service_repository() {
        let image = bollard::models::ImageInspect {
            repo_digests: Some(vec![
                "other:5000/selfup@sha256:aaa".into(),
                "127.0.0.1:5000/selfup@sha256:bbb".into(),
            ]),
            ..Default::default()
        };
        assert_eq!(
            pinned_ref("127.0.0.1:5000/selfup", &image).as_deref(),
            Some("127.0.0.1:5000/selfup@sha256:bbb")
        );
        assert_eq!(pinned_ref("127.0.0.1:5000/self", &image), None);
        assert_eq!(pinned_ref("x", &bollard::models::ImageInspect::default()), None);
    }

    #[test]
    fn only_completed_paused_and_rolled_back_updates_are_over() {
        use ServiceUpdateStatusStateEnum::*;
        for state in [COMPLETED, ROLLBACK_COMPLETED, PAUSED, ROLLBACK_PAUSED] {
            assert!(is_final(state), "{state}");
        }
        for state in [EMPTY, UPDATING, ROLLBACK_STARTED] {
            assert!(!is_final(state), "{state}");
        }
    }

    #[test]
    fn an_image_pinned_with_tag_and_digest_is_also_looked_up_by_digest_alone() {
        assert_eq!(
            lookups("127.0.0.1:5000/selfup:1.0.0@sha256:ab"),
            vec![
                "127.0.0.1:5000/selfup:1.0.0@sha256:ab",
                "127.0.0.1:5000/selfup@sha256:ab"
            ]
        );
        assert_eq!(
            lookups("127.0.0.1:5000/selfup@sha256:ab"),
            vec!["127.0.0.1:5000/selfup@sha256:ab"]
        );
        assert_eq!(lookups("selfup:1.0.0"), vec!["selfup:1.0.0"]);
    }
}
