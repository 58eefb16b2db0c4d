//! The elder's side, in the order it runs: [`Orchestrator::upgrade`] takes
//! the lock and records the outcome; `run_upgrade` hands the target to the
//! backend's shared path (`land`, in [`super::backend`]), which calls
//! [`Orchestrator::fetch`] (resolve, pull) and, on this host, the
//! [`HostHandover`]'s `deploy` (clone, start, health-check the successor)
//! and `follow` (the go-ahead, the takeover, the bake, the answer);
//! `roll_back` does both for the previous version. The steps they call are
//! in [`super::steps`].

use std::time::Duration;

use semver::Version;
use tokio::time::Instant;

use super::{ENV_HANDOVER_ELDER, ENV_HANDOVER_TOKEN, ENV_PORT, Orchestrator, Reach, base_name, instance_addr};

use super::backend::{HostHandover, registry_digest};
use super::steps::{Handed, successor_port_free};
use crate::image_ref::ImageRef;
use crate::metrics::Timings;
use crate::recreate::bake::BakeEnd;
use crate::recreate::clone::{COMPOSE_IMAGE, Overrides, clone_body, retarget_port};
use crate::recreate::journal::UpgradeGate;
use crate::recreate::resolve;
use crate::recreate::upgrade::{
    BackendStatus, Deps, Fetched, Flight, Next, PREVIOUS_IMAGE_LABEL, PREVIOUS_VERSION_LABEL, Pinned, Target,
    UpgradeBackend, UpgradeError, UpgradeOutcome, requested,
};
use crate::recreate::watch::{self, WaitError};
use crate::registry::credentials::RegistryAuth;
use crate::state::{Outcome, Rejected, UpgradeRecord, UpgradeStep, now_secs};
use crate::version::Requirement;

impl Orchestrator {
    /// Runs one upgrade as the elder, start to finish, and records it.
    #[tracing::instrument(skip(self), fields(from = %self.version))]
    pub async fn upgrade(&self, target: Target) -> Result<UpgradeOutcome, UpgradeError> {
        let flight = Flight::take(self, &target)?;
        let started = flight.started;
        let result = self.run_upgrade(&flight, &target).await;
        if let Ok(UpgradeOutcome::Upgraded { timings, .. }) = &result {
            self.shared.metrics.upgrade_phases(timings);
        }
        let (outcome, to, error) = match &result {
            Ok(UpgradeOutcome::Upgraded { to, .. }) | Ok(UpgradeOutcome::Completed { to, .. }) => {
                (Outcome::Upgraded, Some(to.clone()), None)
            }
            Ok(UpgradeOutcome::RollbackCompleted { to, .. }) => (Outcome::Upgraded, to.clone(), None),
            Ok(UpgradeOutcome::AlreadyThere { version, .. }) => (Outcome::AlreadyThere, Some(version.clone()), None),
            Err(e) => (Outcome::Failed, None, Some(e.to_string())),
        };
        let record = UpgradeRecord {
            from: self.version.to_string(),
            to,
            requested: requested(&target),
            outcome,
            error,
            duration_ms: started.elapsed().as_millis(),
            finished_at: now_secs(),
        };
        self.notify(&target, &record);
        self.shared.record(record);
        result
    }

    /// An upgrade under the lock: only in a container, on the backend it
    /// runs on.
    async fn run_upgrade(&self, flight: &Flight<'_>, target: &Target) -> Result<UpgradeOutcome, UpgradeError> {
        self.self_id.as_ref().ok_or(UpgradeError::NotInContainer)?;
        self.land_here(flight, target).await
    }

    /// The image `requirement` picks in the registry, pulled (or found on
    /// this machine at the tag's digest): the first half of every upgrade
    /// to a registry target, whichever backend lands it.
    pub(super) async fn fetch(&self, flight: &Flight<'_>, requirement: &Requirement) -> Result<Fetched, UpgradeError> {
        let started = flight.started;
        let auth = self.registry_auth().await?;
        let repository =
            ImageRef::parse(&self.settings.image_ref("latest")).map_err(|e| UpgradeError::Internal(e.to_string()))?;
        let (image, _) = resolve::pick(&self.registry, &repository, requirement, auth.as_ref()).await?;
        let resolve_ms = started.elapsed().as_millis();
        flight.step(UpgradeStep::Pulling);
        let t = Instant::now();
        let inspect = match self.local_at_tag_digest(&image, auth.as_ref()).await {
            Some(local) => local,
            None => {
                let credentials = auth.as_ref().map(RegistryAuth::docker);
                resolve::pull_reporting(&self.engine, &image, credentials, &self.shared.events, None).await?
            }
        };
        Ok(Fetched {
            repository: image.repository(),
            image: image.to_string(),
            inspect,
            auth,
            resolve_ms,
            pull_ms: t.elapsed().as_millis(),
        })
    }
}

/// A successor started from the pinned image and healthy, on the other
/// port: the host's update under way, which the go-ahead hands over to.
pub(crate) struct Handover {
    successor: String,
    reach: Reach,
    token: String,
    old_port: u16,
    new_port: u16,
    version: Version,
    /// The image as resolved (by tag where there is one).
    image: String,
    /// Its registry digest, if the pull recorded one: what a rollback
    /// during the bake remembers.
    digest: Option<String>,
    rollback: bool,
    timings: Timings,
    /// No companion swap runs across the handover, in either instance.
    _swaps: Option<UpgradeGate>,
}

/// The error of a successor that did not come up, once it is removed: when
/// another process took its port meanwhile (after the check before its
/// creation), that is the cause, not the image.
fn port_or_image(o: &Orchestrator, port: u16, reason: WaitError, log: String) -> UpgradeError {
    match successor_port_free(o.settings.bind, port) {
        Err(taken @ UpgradeError::PortTaken { .. }) => {
            tracing::warn!(port, %reason, "the successor failed and another process holds its port");
            taken
        }
        _ => UpgradeError::SuccessorUnhealthy { port, reason, log },
    }
}

impl UpgradeBackend for HostHandover<'_> {
    type Progress = Handover;

    /// Starts a successor cloned from this container, from the pinned
    /// image's id, on the other port, and waits until it is healthy.
    async fn deploy(&self, _deps: &Deps, flight: &Flight<'_>, target: Pinned) -> Result<Next<Handover>, UpgradeError> {
        let o = self.0;
        let me = o.self_id.clone().ok_or(UpgradeError::NotInContainer)?;
        let Pinned {
            fetched,
            version,
            rollback,
        } = target;
        let digest = registry_digest(&fetched);
        let image = fetched.image;
        let mut timings = Timings {
            resolve_ms: fetched.resolve_ms,
            pull_ms: fetched.pull_ms,
            ..Timings::default()
        };
        // What runs is what was checked: the successor is created from this
        // image id, not from the tag, which may move meanwhile.
        let image_id = fetched
            .inspect
            .id
            .clone()
            .ok_or_else(|| UpgradeError::Internal(format!("the image {image} has no id")))?;

        // No companion swap runs across the handover, in either instance.
        let swaps = o.hold_swaps(flight).await?;
        flight.step(UpgradeStep::StartingTheSuccessor);
        let t = Instant::now();
        let elder = o
            .engine
            .inspect_container(&me)
            .await
            .map_err(UpgradeError::docker("inspecting this container"))?;
        let old_port = o.settings.port;
        let new_port = o.settings.other_port(old_port);
        let token = crate::secret::token().map_err(|e| UpgradeError::Internal(format!("reading /dev/urandom: {e}")))?;
        let overrides = Overrides {
            image: image_id.clone(),
            env: vec![
                (ENV_PORT.into(), new_port.to_string()),
                (ENV_HANDOVER_TOKEN.into(), token.clone()),
                (ENV_HANDOVER_ELDER.into(), me.clone()),
            ],
            env_remove: vec![],
            labels: vec![
                (COMPOSE_IMAGE.into(), image_id.clone()),
                (PREVIOUS_VERSION_LABEL.into(), o.version.to_string()),
                (PREVIOUS_IMAGE_LABEL.into(), elder.image.clone().unwrap_or_default()),
            ],
        };
        let name = format!(
            "{}-{new_port}",
            base_name(elder.name.as_deref().unwrap_or("selfup"), o.settings.ports)
        );
        // The elder's image (what the clone leaves to the new image) and the
        // leftovers of an interrupted upgrade, looked up at once.
        let old_image = async {
            match elder.image.as_deref() {
                Some(id) => o.engine.inspect_image(id).await.ok().and_then(|i| i.config),
                None => None,
            }
        };
        let (old_image, leftovers) = tokio::join!(old_image, o.remove_leftovers(&elder, &me, &name));
        leftovers?;
        // A leftover successor is gone: whatever holds the port now is not ours.
        successor_port_free(o.settings.bind, new_port)?;
        let mut body = clone_body(&elder, old_image.as_ref(), &overrides);
        // On a bridge network the elder holds its published host port: the
        // successor publishes the other one.
        retarget_port(&mut body, old_port, new_port);
        let successor = o
            .engine
            .create_container(&name, body)
            .await
            .map_err(UpgradeError::docker(format!(
                "creating the successor {name} from {image}"
            )))?;
        if let Err(e) = o.engine.start_container(&successor).await {
            let log = o.discard(&successor).await;
            return Err(port_or_image(o, new_port, WaitError::Failed(e.to_string()), log));
        }
        let reach = match o.engine.inspect_container(&successor).await {
            Ok(started) => instance_addr(&started, new_port),
            Err(e) => {
                let log = o.discard(&successor).await;
                return Err(UpgradeError::SuccessorUnhealthy {
                    port: new_port,
                    reason: WaitError::Failed(format!("inspecting it for its address: {e}")),
                    log,
                });
            }
        };
        timings.start_ms = t.elapsed().as_millis();

        flight.step(UpgradeStep::HealthChecking);
        let t = Instant::now();
        if let Err(reason) = o.wait_healthy(&successor, reach, &token, &version).await {
            let log = o.discard(&successor).await;
            return Err(port_or_image(o, new_port, reason, log));
        }
        timings.health_ms = t.elapsed().as_millis();
        Ok(Next::Go(Handover {
            successor,
            reach,
            token,
            old_port,
            new_port,
            version,
            image,
            digest,
            rollback,
            timings,
            _swaps: swaps,
        }))
    }

    /// Gives the successor the go-ahead and waits until it has taken over
    /// (and, with a bake, until the bake ends), or takes the traffic back.
    async fn follow(
        &self,
        _deps: &Deps,
        flight: &Flight<'_>,
        progress: Handover,
    ) -> Result<UpgradeOutcome, UpgradeError> {
        let o = self.0;
        // The swap hold in `progress` lasts until this answer.
        let mut h = progress;
        flight.step(UpgradeStep::WaitingForTakeover);
        let t = Instant::now();
        let bake = (o.settings.bake_secs > 0).then(|| o.settings.bake());
        if bake.is_some() {
            // Before the switch: nginx's backup reaches this instance as soon
            // as the successor is live.
            o.publish_standby();
        }
        let handed = o.go_and_wait(&h.successor, h.reach, &h.token, bake).await;
        let handed = match handed {
            Ok(handed) => handed,
            Err(unconfirmed) => return Err(o.unconfirmed(&h.successor, h.new_port, unconfirmed).await),
        };
        h.timings.takeover_ms = t.elapsed().as_millis();
        let bake = match handed {
            // A successor that does not bake (an older version) stopped
            // this instance at once.
            Handed::Stopped => {
                o.withdraw_standby();
                None
            }
            Handed::Baking => {
                flight.step(UpgradeStep::Baking);
                let (end, report) = o.bake(&h.successor, h.reach, &h.token, &h.version).await;
                match end {
                    BakeEnd::Promoted { stopped: true, .. } => {}
                    BakeEnd::Promoted { stopped: false, .. } => {
                        if let Err(unconfirmed) = o.end_bake(&h.successor, h.reach, &h.token).await {
                            return Err(o.unconfirmed(&h.successor, h.new_port, unconfirmed).await);
                        }
                    }
                    BakeEnd::RolledBack {
                        by_operator, answering, ..
                    } => {
                        if !answering {
                            // Dead or frozen: the requests it holds end (and
                            // nginx retries the idempotent ones on the standby
                            // socket) only when it is killed; its log stays.
                            let _ = o.engine.signal(&h.successor, "SIGKILL").await;
                        }
                        let log = watch::log_tail(&o.engine, &h.successor).await;
                        let removed = match answering {
                            true => {
                                let stop = Duration::from_secs(o.settings.stop_timeout_secs);
                                watch::stop_and_remove(&o.engine, &h.successor, stop, watch::StopFailed::Force).await
                            }
                            false => o.engine.remove_container(&h.successor, true).await,
                        };
                        if let Err(e) = removed {
                            tracing::warn!(container = %h.successor, error = %e, "could not remove the rolled back successor");
                        }
                        o.withdraw_standby();
                        o.shared.reject(Rejected {
                            version: h.version.to_string(),
                            digest: h.digest.clone(),
                            reason: report.reason.clone(),
                            at: now_secs(),
                        });
                        return Err(UpgradeError::RolledBackDuringBake {
                            report: Box::new(report),
                            log,
                            by_operator,
                        });
                    }
                }
                Some(Box::new(report))
            }
        };
        h.timings.total_ms = flight.started.elapsed().as_millis();
        // It ran to the end (named exactly, if it had been rolled back).
        o.shared.forget_rejected(&h.version.to_string(), h.digest.as_deref());
        Ok(UpgradeOutcome::Upgraded {
            from: o.version.to_string(),
            to: h.version.to_string(),
            rollback: h.rollback,
            image: h.image,
            old_port: h.old_port,
            new_port: h.new_port,
            successor: h.successor.chars().take(12).collect(),
            timings: h.timings,
            bake,
        })
    }

    /// A handover to the version that ran before the last upgrade, from
    /// its local image, which this container's labels name: decided as a
    /// target named exactly (going down is the point), then deployed.
    async fn roll_back(&self, _deps: &Deps, flight: &Flight<'_>) -> Result<Next<Handover>, UpgradeError> {
        let o = self.0;
        let me = o.self_id.clone().ok_or(UpgradeError::NotInContainer)?;
        let previous = o.previous(&me).await?;
        let resolve_ms = flight.started.elapsed().as_millis();
        let inspect = resolve::inspect(&o.engine, &previous.image_ref).await?;
        let repository = ImageRef::parse(&o.settings.image_ref("latest"))
            .map(|r| r.repository())
            .unwrap_or_default();
        let fetched = Fetched {
            image: previous.image_ref,
            repository,
            inspect,
            auth: None,
            resolve_ms,
            pull_ms: 0,
        };
        match o.pin(fetched, &Requirement::Exact(previous.version)).await? {
            Next::Go(pinned) => self.deploy(o, flight, pinned).await,
            Next::AlreadyThere { version, message } => Ok(Next::AlreadyThere { version, message }),
        }
    }

    /// Nothing beyond the shared document: `swarm` is null.
    async fn status(&self, _deps: &Deps) -> BackendStatus {
        BackendStatus::default()
    }
}
