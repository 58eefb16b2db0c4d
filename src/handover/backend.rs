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
//! [`super::elder`]) or the `SwarmService` this instance is a task of (in
//! [`crate::swarm`]).

use super::{Backend, Orchestrator};
use crate::image_ref::ImageRef;
use crate::recreate::resolve::{self, Go};
use crate::recreate::upgrade::{
    BackendStatus, Fetched, Flight, Next, Pinned, Target, UpgradeBackend, UpgradeError, UpgradeOutcome,
};
use crate::version::Requirement;

/// The blue-green handover on this host: a successor container beside this
/// instance takes over its sockets. Implemented in [`super::elder`].
#[derive(Debug, Clone, Copy)]
pub struct HostHandover<'a>(pub &'a Orchestrator);

/// The registry's digest of a fetched image (`sha256:…`), from the pull's
/// record of it in its repository; `None` for an image never pulled.
pub(crate) fn registry_digest(fetched: &Fetched) -> Option<String> {
    let pinned = crate::swarm::pinned_ref(&fetched.repository, &fetched.inspect)?;
    pinned.rsplit_once('@').map(|(_, digest)| digest.to_string())
}

impl Backend {
    /// This backend's part of `/status`.
    pub async fn status(&self, o: &Orchestrator) -> BackendStatus {
        match self {
            Backend::Host => HostHandover(o).status(o).await,
            Backend::Swarm(service) => service.status(o).await,
        }
    }
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
            Backend::Host => self.land(&HostHandover(self), flight, target).await,
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
                match self.pin(fetched, requirement).await? {
                    Next::Go(pinned) => backend.deploy(&self.deps, flight, pinned).await?,
                    Next::AlreadyThere { version, message } => {
                        return Ok(UpgradeOutcome::AlreadyThere { version, message });
                    }
                }
            }
            Target::Previous => backend.roll_back(&self.deps, flight).await?,
        };
        match started {
            Next::Go(progress) => backend.follow(&self.deps, flight, progress).await,
            Next::AlreadyThere { version, message } => Ok(UpgradeOutcome::AlreadyThere { version, message }),
        }
    }

    /// Decides on a fetched image: its version label must meet
    /// `requirement`, a version rolled back before is refused unless named
    /// exactly, and the decision says whether it is an upgrade, a rollback
    /// or nothing to do. An image that is to run must be signed with the
    /// operator's key (`verify`), checked on the digest that was pulled.
    pub(super) async fn pin(&self, fetched: Fetched, requirement: &Requirement) -> Result<Next<Pinned>, UpgradeError> {
        let version = resolve::labelled_version(&fetched.image, &fetched.inspect, requirement)?;
        let digest = registry_digest(&fetched);
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
        let repository = ImageRef::parse(&fetched.repository).map_err(|e| UpgradeError::Internal(e.to_string()))?;
        let auth = match &fetched.auth {
            Some(auth) => Some(auth.clone()),
            None => self.registry_auth().await?,
        };
        let policy = self.settings.signature_policy();
        resolve::check_signed(
            &self.registry,
            &policy,
            None,
            &repository,
            digest.as_deref(),
            auth.as_ref(),
        )
        .await?;
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
    use crate::recreate::upgrade::SwarmStatus;
    use crate::swarm::{SERVICE_ID_LABEL, SERVICE_NAME_LABEL, SwarmService, TASK_ID_LABEL};
    use bollard::models::{ContainerConfig, ContainerInspectResponse};

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
