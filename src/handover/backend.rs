//! Where an upgrade lands, behind one small interface.
//!
//! An upgrade is the same up to its target and after its answer, whichever
//! backend lands it: the single-flight lock, the version resolution and the
//! decision, the history, the events and `/status` are the shared caller's
//! ([`Orchestrator::land`]). Between the two, an [`UpgradeBackend`] does four
//! things:
//!
//! - [`deploy`](UpgradeBackend::deploy) a target pinned to one image and
//!   version ([`Pinned`]): the host starts a healthy successor beside this
//!   instance, Swarm gets the service's spec with the image by digest;
//! - [`follow`](UpgradeBackend::follow) what deploy started to its end and
//!   answer: the host hands over (and bakes), Swarm rolls the tasks;
//! - [`roll_back`](UpgradeBackend::roll_back) to what ran before
//!   (`POST /rollback`), which `follow` then follows as well;
//! - [`status`](UpgradeBackend::status): the backend's own part of `/status`.
//!
//! The [`Backend`] is detected once, from this container's labels, and is
//! the only place that picks an implementation: [`HostHandover`] (in
//! [`super::elder`]) or the [`SwarmService`] this instance is a task of (in
//! [`super::swarm`]).

use bollard::models::ContainerInspectResponse;
use semver::Version;
use serde::Serialize;

use super::elder::{Fetched, Flight};
use super::swarm::{SERVICE_ID_LABEL, SERVICE_NAME_LABEL, SwarmService, TASK_ID_LABEL, TaskVersion};
use super::{Orchestrator, Target, UpgradeError, UpgradeOutcome};
use crate::recreate::resolve::{self, Go};
use crate::recreate::version::Requirement;

/// Where an upgrade lands once its target is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// This host: the blue-green handover of [`super::elder`] and
    /// [`super::takeover`], a successor container beside this one.
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

    /// This backend's part of `/status`.
    pub async fn status(&self, o: &Orchestrator) -> BackendStatus {
        match self {
            Backend::Host => HostHandover.status(o).await,
            Backend::Swarm(service) => service.status(o).await,
        }
    }
}

/// The blue-green handover on this host: a successor container beside this
/// instance takes over its sockets. Implemented in [`super::elder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostHandover;

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
/// [`Orchestrator::land`].
pub(crate) trait UpgradeBackend {
    /// An update under way, from [`deploy`](Self::deploy) or
    /// [`roll_back`](Self::roll_back) to [`follow`](Self::follow).
    type Progress;

    /// Starts landing `target`. `AlreadyThere` when the backend already
    /// runs that very image (Swarm's spec names it).
    async fn deploy(
        &self,
        o: &Orchestrator,
        flight: &Flight<'_>,
        target: Pinned,
    ) -> Result<Next<Self::Progress>, UpgradeError>;

    /// Follows an update to its end and answers with its outcome.
    async fn follow(
        &self,
        o: &Orchestrator,
        flight: &Flight<'_>,
        progress: Self::Progress,
    ) -> Result<UpgradeOutcome, UpgradeError>;

    /// Starts going back to what ran before the last upgrade.
    async fn roll_back(&self, o: &Orchestrator, flight: &Flight<'_>) -> Result<Next<Self::Progress>, UpgradeError>;

    /// This backend's part of `/status`.
    async fn status(&self, o: &Orchestrator) -> BackendStatus;
}

impl Orchestrator {
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

    /// Runs an upgrade under the lock `flight` holds on the backend it
    /// belongs to: the one place that picks an implementation.
    pub(super) async fn land_here(&self, flight: &Flight<'_>, target: &Target) -> Result<UpgradeOutcome, UpgradeError> {
        match self.backend().await {
            Backend::Host => self.land(&HostHandover, flight, target).await,
            Backend::Swarm(service) => self.land(&service, flight, target).await,
        }
    }

    /// The shared path of an upgrade on `backend`: a registry target is
    /// fetched and decided here ([`Orchestrator::pin`]) and deployed by the
    /// backend; `/rollback` is the backend's; either is then followed to
    /// its answer.
    pub(super) async fn land<B: UpgradeBackend>(
        &self,
        backend: &B,
        flight: &Flight<'_>,
        target: &Target,
    ) -> Result<UpgradeOutcome, UpgradeError> {
        let started = match target {
            Target::Registry(requirement) => {
                let fetched = self.fetch(flight, requirement).await?;
                match self.pin(fetched, requirement)? {
                    Next::Go(pinned) => backend.deploy(self, flight, pinned).await?,
                    Next::AlreadyThere { version, message } => {
                        return Ok(UpgradeOutcome::AlreadyThere { version, message });
                    }
                }
            }
            Target::Previous => backend.roll_back(self, flight).await?,
        };
        match started {
            Next::Go(progress) => backend.follow(self, flight, progress).await,
            Next::AlreadyThere { version, message } => Ok(UpgradeOutcome::AlreadyThere { version, message }),
        }
    }

    /// Decides on a fetched image: its version label must meet
    /// `requirement`, a version rolled back before is refused unless named
    /// exactly, and the decision says whether it is an upgrade, a rollback
    /// or nothing to do.
    pub(super) fn pin(&self, fetched: Fetched, requirement: &Requirement) -> Result<Next<Pinned>, UpgradeError> {
        let version = resolve::labelled_version(&fetched.image, &fetched.inspect, requirement)?;
        let digest = super::elder::registry_digest(&fetched);
        self.refuse_rejected(&version, digest.as_deref(), requirement)?;
        let rollback = match resolve::decide(&self.version, &version, requirement)? {
            Go::AlreadyThere => {
                return Ok(Next::AlreadyThere {
                    message: format!("already at {version}: nothing to do"),
                    version: version.to_string(),
                });
            }
            Go::Upgrade => false,
            Go::Rollback => true,
        };
        Ok(Next::Go(Pinned {
            fetched,
            version,
            rollback,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ContainerConfig;

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

    #[test]
    fn a_service_without_a_name_label_is_named_by_its_id() {
        let backend = Backend::of(&container(&[(SERVICE_ID_LABEL, "svc123")]));
        let service = backend.swarm().expect("a Swarm task");
        assert_eq!(service.name, "svc123");
        assert_eq!(service.task, None);
        assert_eq!(Backend::Host.swarm(), None);
    }

    #[test]
    fn every_backend_shows_the_same_status_keys_and_the_host_leaves_them_null() {
        let host = serde_json::to_value(BackendStatus::default()).unwrap();
        assert_eq!(host, serde_json::json!({ "swarm": null }));
        let task = BackendStatus {
            swarm: Some(SwarmStatus {
                service: "demo_selfup".into(),
                task: Some("task9".into()),
                tasks: vec![],
            }),
        };
        assert_eq!(
            serde_json::to_value(task).unwrap(),
            serde_json::json!({ "swarm": { "service": "demo_selfup", "task": "task9", "tasks": [] } })
        );
    }
}
