//! The Swarm backend: when this instance runs as a task of a Docker Swarm
//! service, an upgrade is a service update that Swarm rolls out, one task
//! at a time, start-first, and rolls back on its own when a new task fails.
//!
//! Where an upgrade lands is the backend (`handover::Backend`), detected from
//! this container's own labels (`com.docker.swarm.service.id`). Everything
//! around the landing is shared with the host handover: the single-flight
//! lock, the version resolution and the decision, the history, the events,
//! `/status`. The [`SwarmService`] is the Swarm implementation of
//! [`UpgradeBackend`], in the order an upgrade takes its operations:
//!
//! 1. `deploy`: [`SwarmService::update_to`] sends the service's spec
//!    with the image pinned by digest (`repo@sha256:…`) and an update
//!    policy that rolls back on failure ([`rollout_spec`]), with the
//!    registry's credentials.
//! 2. `follow`: [`SwarmService::follow_update`] polls the service's
//!    `UpdateStatus` until Swarm says `completed`, `rollback_completed` or
//!    paused, and [`answer`] makes that the outcome.
//! 3. `roll_back`: [`SwarmService::roll_back_spec`], Swarm's own rollback
//!    to the spec before the last update (`POST /rollback`); after a
//!    rolled-back update, whose spec Swarm's rollback would go to, a deploy
//!    of the image the labels record instead ([`rollback_plan`]).
//! 4. `status`: [`SwarmService::tasks`], every running task with its
//!    version, for `/status` (and each answer).
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
    HealthConfig, ServiceSpec, ServiceSpecRollbackConfig, ServiceSpecRollbackConfigFailureActionEnum,
    ServiceSpecRollbackConfigOrderEnum, ServiceSpecUpdateConfig, ServiceSpecUpdateConfigFailureActionEnum,
    ServiceSpecUpdateConfigOrderEnum, ServiceUpdateStatusStateEnum,
};
use serde::Serialize;
use tokio::time::Instant;

use crate::docker::DockerError;
use crate::events::{Event, Logged};
use crate::recreate::upgrade::{
    BackendStatus, Deps, Flight, Next, PREVIOUS_IMAGE_LABEL, PREVIOUS_VERSION_LABEL, Pinned, SwarmStatus, SwarmTimings,
    TaskVersion, UpgradeBackend, UpgradeError, UpgradeOutcome,
};
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

/// The Swarm service this instance is a task of: the Swarm backend
/// ([`UpgradeBackend`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwarmService {
    pub id: String,
    pub name: String,
    /// This task's id.
    pub task: Option<String>,
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
    crate::recreate::resolve::digest_in(repository, image).map(|digest| format!("{repository}@{digest}"))
}

/// A service update sent (or Swarm's rollback asked for): the Swarm
/// backend's update under way.
pub(crate) struct Update {
    /// The start of the update before this one, to tell the new update's
    /// status from the old one's.
    before: Option<String>,
    /// When the update was sent.
    sent: Instant,
    /// The resolution's share, for an upgrade; none for a rollback.
    timings: SwarmTimings,
    kind: UpdateKind,
}

/// What a service update is for, which decides how its end answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateKind {
    /// An upgrade to version `to`, the image pinned by digest as `image`.
    Upgrade { to: String, image: String, rollback: bool },
    /// `/rollback`: Swarm's own (no `note`), or an update to the (image,
    /// version) recorded as running before (`note` says why).
    RollBack {
        previous: Option<(String, String)>,
        note: Option<String>,
    },
}

impl UpdateKind {
    /// The (image, version) pairs this update already knows, for the tasks' versions.
    fn known(&self) -> Vec<(&str, &str)> {
        match self {
            UpdateKind::Upgrade { to, image, .. } => vec![(image.as_str(), to.as_str())],
            UpdateKind::RollBack { previous, .. } => previous.iter().map(|(i, v)| (i.as_str(), v.as_str())).collect(),
        }
    }
}

/// The answer to a followed update, from what it was for and how Swarm
/// ended it: an upgrade is done when Swarm completed it; a `/rollback` when
/// Swarm completed its rollback (or, for an update to the recorded image,
/// that update); Swarm's own rollback of a failing task and a pause are
/// errors that list the tasks.
pub fn answer(
    kind: UpdateKind,
    rollout: Rollout,
    from: String,
    service: String,
    tasks: Vec<TaskVersion>,
    timings: SwarmTimings,
) -> Result<UpgradeOutcome, UpgradeError> {
    use ServiceUpdateStatusStateEnum::*;
    let done = match &kind {
        UpdateKind::Upgrade { .. } | UpdateKind::RollBack { note: Some(_), .. } => COMPLETED,
        UpdateKind::RollBack { note: None, .. } => ROLLBACK_COMPLETED,
    };
    match (rollout.state, kind) {
        (state, UpdateKind::Upgrade { to, image, rollback }) if state == done => Ok(UpgradeOutcome::Completed {
            from,
            to,
            rollback,
            image,
            service,
            message: rollout.reason,
            tasks,
            timings,
        }),
        (state, UpdateKind::RollBack { previous, note }) if state == done => Ok(UpgradeOutcome::RollbackCompleted {
            from,
            to: previous.map(|(_, version)| version),
            service,
            message: match note {
                Some(note) => format!("{note}; {}", rollout.reason),
                None => rollout.reason,
            },
            tasks,
            timings,
        }),
        (ROLLBACK_COMPLETED, _) => Err(UpgradeError::SwarmRolledBack {
            reason: rollout.reason,
            tasks,
        }),
        (state, _) => Err(UpgradeError::SwarmPaused {
            state: state.to_string(),
            reason: rollout.reason,
            tasks,
        }),
    }
}

impl UpgradeBackend for SwarmService {
    type Progress = Update;

    /// The service's spec names the image by digest, which every node
    /// pulls the very image that was checked by, and Swarm rolls it out.
    async fn deploy(&self, o: &Deps, flight: &Flight<'_>, target: Pinned) -> Result<Next<Update>, UpgradeError> {
        let Pinned {
            fetched,
            version,
            rollback,
        } = target;
        let to = version.to_string();
        let pinned = pinned_ref(&fetched.repository, &fetched.inspect).ok_or_else(|| {
            UpgradeError::Internal(format!(
                "the image {} has no digest in {}, so the service cannot be pinned to it",
                fetched.image, fetched.repository
            ))
        })?;
        flight.step(UpgradeStep::UpdatingTheService);
        let sent = Instant::now();
        let Some(before) = self.update_to(o, &pinned, fetched.auth.as_ref()).await? else {
            return Ok(Next::AlreadyThere {
                message: format!("the service {} already runs {pinned}: nothing to do", self.name),
                version: to,
            });
        };
        Ok(Next::Go(Update {
            before,
            sent,
            timings: SwarmTimings {
                resolve_ms: fetched.resolve_ms,
                pull_ms: fetched.pull_ms,
                ..Default::default()
            },
            kind: UpdateKind::Upgrade {
                to,
                image: pinned,
                rollback,
            },
        }))
    }

    /// Follows the update to Swarm's end and answers with every task's
    /// version. A version Swarm rolled back is refused to `:latest` (and
    /// the watch policy) until it is named exactly, as after a bake's
    /// rollback.
    async fn follow(&self, o: &Deps, flight: &Flight<'_>, progress: Update) -> Result<UpgradeOutcome, UpgradeError> {
        let Update {
            before,
            sent,
            mut timings,
            kind,
        } = progress;
        let mut rollout = self.follow_update(o, before).await?;
        timings.update_ms = sent.elapsed().as_millis();
        timings.total_ms = flight.started.elapsed().as_millis();
        let tasks = self.tasks(o, &kind.known()).await;
        if let UpdateKind::Upgrade { to, image, .. } = &kind
            && rollout.state == ServiceUpdateStatusStateEnum::ROLLBACK_COMPLETED
        {
            if let Some(failure) = self.failure(o, image).await {
                rollout.reason = format!("{} ({failure})", rollout.reason);
            }
            o.shared.reject(Rejected {
                version: to.clone(),
                // `image` is pinned by digest: `repository@sha256:…`.
                digest: image.rsplit_once('@').map(|(_, digest)| digest.to_string()),
                reason: rollout.reason.clone(),
                at: now_secs(),
            });
        }
        answer(kind, rollout, o.version.to_string(), self.name.clone(), tasks, timings)
    }

    /// Swarm's own rollback to the spec before the service's last update
    /// when that update completed; after a rolled-back update (whose spec
    /// is Swarm's previous one), an update to the image the labels record
    /// ([`rollback_plan`]).
    async fn roll_back(&self, o: &Deps, flight: &Flight<'_>) -> Result<Next<Update>, UpgradeError> {
        let current = o
            .engine
            .inspect_service(&self.id)
            .await
            .map_err(UpgradeError::docker(format!("inspecting the service {}", self.name)))?;
        let recorded = recorded_previous(current.spec.as_ref());
        let last = current.update_status.as_ref().and_then(|s| s.state);
        let plan = rollback_plan(recorded.as_ref().map(|(i, v)| (i.as_str(), v.as_str())), last)?;
        flight.step(UpgradeStep::UpdatingTheService);
        let sent = Instant::now();
        let (before, previous, note) = match plan {
            RollbackPlan::Swarm => {
                let (before, previous) = self.roll_back_spec(o).await?;
                (before, previous, None)
            }
            RollbackPlan::Deploy { image, version } => {
                let auth = o.registry_auth().await?;
                let Some(before) = self.update_to(o, &image, auth.as_ref()).await? else {
                    return Ok(Next::AlreadyThere {
                        message: format!("the service {} already runs {image}: nothing to do", self.name),
                        version,
                    });
                };
                let note = format!(
                    "the service's last update was rolled back, so Swarm's previous spec is that update: updated to {image}, recorded as running before, instead"
                );
                (before, Some((image, version)), Some(note))
            }
        };
        Ok(Next::Go(Update {
            before,
            sent,
            timings: SwarmTimings::default(),
            kind: UpdateKind::RollBack { previous, note },
        }))
    }

    /// The service, this task, and every task Swarm wants running.
    async fn status(&self, o: &Deps) -> BackendStatus {
        let tasks = self.tasks(o, &[]).await;
        BackendStatus {
            swarm: Some(SwarmStatus {
                service: self.name.clone(),
                task: self.task.clone(),
                tasks,
            }),
        }
    }
}

impl SwarmService {
    /// Sends the service's spec with `image` (pinned by digest) and the
    /// rollout policy ([`rollout_spec`]); `from_version` is what runs now.
    /// Returns the start time of the update before this one, to tell the
    /// new update's status from the old one's. `None` for the image: the
    /// spec already names it, and no update starts.
    pub async fn update_to(
        &self,
        deps: &Deps,
        image: &str,
        auth: Option<&RegistryAuth>,
    ) -> Result<Option<Option<String>>, UpgradeError> {
        let current = deps
            .engine
            .inspect_service(&self.id)
            .await
            .map_err(UpgradeError::docker(format!("inspecting the service {}", self.name)))?;
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
        let spec = rollout_spec(spec, image, Some((&running, &deps.version.to_string())));
        let warnings = deps
            .engine
            .update_service(
                &self.id,
                spec,
                i32::try_from(version).unwrap_or(i32::MAX),
                None,
                auth.map(RegistryAuth::docker),
            )
            .await
            .map_err(UpgradeError::docker(format!(
                "updating the service {} to {image}",
                self.name
            )))?;
        for warning in warnings {
            tracing::warn!(%warning, "the service update");
        }
        Ok(Some(before))
    }

    /// Asks Swarm to go back to the service's spec before its last update.
    /// Returns what [`SwarmService::update_to`] does: the last update's
    /// start, and the previous (image, version) the labels name, if any.
    pub async fn roll_back_spec(
        &self,
        deps: &Deps,
    ) -> Result<(Option<String>, Option<(String, String)>), UpgradeError> {
        let current = deps
            .engine
            .inspect_service(&self.id)
            .await
            .map_err(UpgradeError::docker(format!("inspecting the service {}", self.name)))?;
        let spec = current.spec.unwrap_or_default();
        let labels = spec.labels.clone().unwrap_or_default();
        let previous = labels
            .get(PREVIOUS_IMAGE_LABEL)
            .cloned()
            .zip(labels.get(PREVIOUS_VERSION_LABEL).cloned());
        let version = current.version.and_then(|v| v.index).unwrap_or(0);
        let before = current.update_status.and_then(|s| s.started_at);
        deps.engine
            .update_service(
                &self.id,
                spec,
                i32::try_from(version).unwrap_or(i32::MAX),
                Some("previous"),
                None,
            )
            .await
            .map_err(|e| match e {
                DockerError::Call { message, .. } if message.contains("previous") => UpgradeError::NoPrevious,
                other => UpgradeError::docker(format!("rolling the service {} back", self.name))(other),
            })?;
        Ok((before, previous))
    }

    /// The (image, version) the service's labels say ran before its last
    /// update: where Swarm's rollback goes.
    pub async fn previous(&self, deps: &Deps) -> Result<Option<(String, String)>, UpgradeError> {
        let current = deps
            .engine
            .inspect_service(&self.id)
            .await
            .map_err(UpgradeError::docker(format!("inspecting the service {}", self.name)))?;
        Ok(recorded_previous(current.spec.as_ref()))
    }

    /// Follows the update that started after `before` until Swarm says it
    /// is over, emitting each new message of Swarm's as a step.
    pub async fn follow_update(&self, deps: &Deps, before: Option<String>) -> Result<Rollout, UpgradeError> {
        let started = Instant::now();
        let mut seen = String::new();
        let mut reason = None;
        let mut failures = 0;
        loop {
            match deps.engine.inspect_service(&self.id).await {
                Ok(current) => {
                    failures = 0;
                    let status = current.update_status.filter(|s| s.started_at != before);
                    if let Some(status) = status {
                        let state = status.state.unwrap_or(ServiceUpdateStatusStateEnum::EMPTY);
                        let message = status.message.unwrap_or_default();
                        let said = format!("{state}: {message}");
                        if said != seen {
                            tracing::info!(%state, %message, "the service update");
                            deps.shared.events.emit(Event::UpgradeStep {
                                step: Logged::Other(format!("swarm {said}")),
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
                    return Err(UpgradeError::docker(format!("following the update of {}", self.name))(
                        e,
                    ));
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
    pub async fn tasks(&self, deps: &Deps, known: &[(&str, &str)]) -> Vec<TaskVersion> {
        let tasks = match deps.engine.service_tasks(&self.id).await {
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
                    if let Ok(inspect) = deps.engine.inspect_image(&reference).await {
                        version = crate::version::version_label(&inspect).map(str::to_string);
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
    pub async fn failure(&self, deps: &Deps, image: &str) -> Option<String> {
        let tasks = deps.engine.service_tasks(&self.id).await.ok()?;
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
    use bollard::models::{TaskSpec, TaskSpecContainerSpec};

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
        assert_eq!(pinned_ref("127.0.0.1:5000/service", &image), None);
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

    fn ended(state: ServiceUpdateStatusStateEnum, reason: &str) -> Rollout {
        Rollout {
            state,
            reason: reason.into(),
        }
    }

    fn answered(kind: UpdateKind, rollout: Rollout) -> Result<UpgradeOutcome, UpgradeError> {
        answer(
            kind,
            rollout,
            "1.0.0".into(),
            "demo_selfup".into(),
            vec![],
            SwarmTimings::default(),
        )
    }

    #[test]
    fn an_upgrade_is_done_when_swarm_completed_it_and_fails_when_swarm_rolled_back_or_paused() {
        use ServiceUpdateStatusStateEnum::*;
        let upgrade = UpdateKind::Upgrade {
            to: "1.1.0".into(),
            image: "r/selfup@sha256:1".into(),
            rollback: false,
        };
        let done = answered(upgrade.clone(), ended(COMPLETED, "update completed")).unwrap();
        assert!(
            matches!(&done, UpgradeOutcome::Completed { to, image, message, .. }
                if to == "1.1.0" && image == "r/selfup@sha256:1" && message == "update completed"),
            "{done:?}"
        );
        let rolled_back = answered(upgrade.clone(), ended(ROLLBACK_COMPLETED, "task failed")).unwrap_err();
        assert!(
            matches!(&rolled_back, UpgradeError::SwarmRolledBack { reason, .. } if reason == "task failed"),
            "{rolled_back:?}"
        );
        for state in [PAUSED, ROLLBACK_PAUSED] {
            let paused = answered(upgrade.clone(), ended(state, "why")).unwrap_err();
            assert!(
                matches!(&paused, UpgradeError::SwarmPaused { state: s, .. } if *s == state.to_string()),
                "{paused:?}"
            );
        }
    }

    #[test]
    fn a_rollback_is_done_when_swarm_completed_its_rollback_or_the_update_to_the_recorded_image() {
        use ServiceUpdateStatusStateEnum::*;
        let swarms = UpdateKind::RollBack {
            previous: Some(("r/selfup@sha256:0".into(), "0.9.0".into())),
            note: None,
        };
        let done = answered(swarms.clone(), ended(ROLLBACK_COMPLETED, "rollback completed")).unwrap();
        assert!(
            matches!(&done, UpgradeOutcome::RollbackCompleted { to: Some(to), message, .. }
                if to == "0.9.0" && message == "rollback completed"),
            "{done:?}"
        );
        // Swarm's own rollback that ends `completed` is not what was asked.
        assert!(matches!(
            answered(swarms, ended(COMPLETED, "x")),
            Err(UpgradeError::SwarmPaused { .. })
        ));
        let deploy = UpdateKind::RollBack {
            previous: Some(("r/selfup:1.0.0@sha256:a".into(), "1.0.0".into())),
            note: Some("updated to the recorded image instead".into()),
        };
        let done = answered(deploy.clone(), ended(COMPLETED, "update completed")).unwrap();
        assert!(
            matches!(&done, UpgradeOutcome::RollbackCompleted { to: Some(to), message, .. }
                if to == "1.0.0" && message == "updated to the recorded image instead; update completed"),
            "{done:?}"
        );
        // The update to the recorded image failed and Swarm rolled it back.
        assert!(matches!(
            answered(deploy, ended(ROLLBACK_COMPLETED, "task failed")),
            Err(UpgradeError::SwarmRolledBack { .. })
        ));
        let none = UpdateKind::RollBack {
            previous: None,
            note: None,
        };
        assert!(matches!(
            answered(none, ended(ROLLBACK_COMPLETED, "")),
            Ok(UpgradeOutcome::RollbackCompleted { to: None, .. })
        ));
    }

    #[test]
    fn the_tasks_versions_start_from_what_the_update_knows() {
        let upgrade = UpdateKind::Upgrade {
            to: "1.1.0".into(),
            image: "r/selfup@sha256:1".into(),
            rollback: false,
        };
        assert_eq!(upgrade.known(), vec![("r/selfup@sha256:1", "1.1.0")]);
        let rollback = UpdateKind::RollBack {
            previous: None,
            note: None,
        };
        assert!(rollback.known().is_empty());
    }
}
