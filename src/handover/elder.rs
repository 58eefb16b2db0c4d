//! The elder's side: resolve, pull, start the successor, health-check it,
//! give it the go-ahead, and answer with the outcome once it has taken over.
//!
//! The lock ([`Flight`]) and the fetch are every backend's; the handover
//! itself is the host's implementation of
//! [`UpgradeBackend`](super::backend::UpgradeBackend),
//! [`HostHandover`]: `deploy` starts a healthy successor, `follow` hands
//! over (and bakes), `roll_back` does both for the previous version.

use std::time::Duration;

use semver::Version;
use tokio::time::Instant;

use super::{
    ENV_HANDOVER_ELDER, ENV_HANDOVER_TOKEN, ENV_PORT, Orchestrator, Previous, Reach, base_name, instance_addr,
};
use bollard::models::ImageInspect;

use super::backend::{HostHandover, registry_digest};
use crate::docker::DockerError;
use crate::image_ref::ImageRef;
use crate::metrics::Timings;
use crate::recreate::bake::BakeEnd;
use crate::recreate::clone::{COMPOSE_IMAGE, Overrides, clone_body, retarget_port};
use crate::recreate::journal::{GateError, UpgradeGate};
use crate::recreate::resolve;
use crate::recreate::upgrade::{
    BackendStatus, Deps, Fetched, Flight, Next, PREVIOUS_IMAGE_LABEL, PREVIOUS_VERSION_LABEL, Pinned, Target,
    UpgradeBackend, UpgradeError, UpgradeOutcome, requested,
};
use crate::recreate::watch::{self, WaitError, Watcher};
use crate::registry::credentials::RegistryAuth;
use crate::state::{Outcome, Rejected, TakeoverPhase, TakeoverStep, UpgradeRecord, UpgradeStep, now_secs};
use crate::version::Requirement;

/// How often the elder looks at its successor (the Engine's view of it)
/// while waiting.
const POLL: Duration = Duration::from_millis(25);
/// How often the elder asks the successor's `/health` while it starts: a
/// refused connect costs well under a millisecond, and the successor
/// answers a few ms after its process starts.
const HEALTH_POLL: Duration = Duration::from_millis(5);
/// How often the elder asks a successor it handed over to with a bake
/// whether it has switched: the upgrade's answer waits on it, and each ask
/// is one loopback request.
const PHASE_POLL: Duration = Duration::from_millis(5);
/// How much longer than the successor's takeover budget the elder waits for
/// it: the go-ahead's delivery, and the successor's last steps before it
/// stops the elder.
const ELDER_MARGIN: Duration = Duration::from_secs(10);

/// Why the elder has no confirmed takeover.
enum Unconfirmed {
    /// The successor failed, exited, or ran out of time: it is removed.
    Failed(WaitError),
    /// This instance was asked to stop (SIGTERM) before the successor said it
    /// is stopping it; the successor, at the phase named, is left to finish.
    Stopped(String),
}

/// What the successor did with the go-ahead.
enum Handed {
    /// It stopped this instance: the handover is over.
    Stopped,
    /// It serves the public and waits for the end of the bake.
    Baking,
}

impl Orchestrator {
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

    /// Waits (at most `update_deadline`) until no companion swap runs, then
    /// keeps new ones from starting, in this instance and in the successor,
    /// until the upgrade is over (the hold is dropped, or this process ends).
    async fn hold_swaps(&self, flight: &Flight<'_>) -> Result<Option<UpgradeGate>, UpgradeError> {
        let Some(swaps) = &self.swaps else { return Ok(None) };
        flight.step(UpgradeStep::WaitingForCompanionUpdates);
        let bound = self.settings.update_deadline();
        match swaps.hold_for_upgrade(bound).await {
            Ok(gate) => Ok(Some(gate)),
            Err(GateError::Busy(containers)) => Err(UpgradeError::CompanionBusy {
                containers,
                waited_secs: bound.as_secs(),
            }),
            Err(GateError::Io(e)) => Err(UpgradeError::Internal(format!(
                "the swap lock in the data directory: {e}"
            ))),
        }
    }

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

    /// Refuses an image rolled back before (any of them, by its registry
    /// `digest` when known), unless it is named exactly: `:latest` keeps
    /// pointing at it until a newer one is pushed.
    pub(super) fn refuse_rejected(
        &self,
        version: &Version,
        digest: Option<&str>,
        requirement: &Requirement,
    ) -> Result<(), UpgradeError> {
        if matches!(requirement, Requirement::Exact(_)) {
            return Ok(());
        }
        match self.shared.refused(&version.to_string(), digest) {
            Some(rejected) => Err(UpgradeError::RolledBackBefore {
                version: rejected.version,
                reason: rejected.reason,
            }),
            None => Ok(()),
        }
    }

    /// The error of a takeover the successor did not confirm; a failed
    /// successor is removed and the sockets are this instance's again.
    async fn unconfirmed(&self, successor: &str, port: u16, unconfirmed: Unconfirmed) -> UpgradeError {
        self.withdraw_standby();
        match unconfirmed {
            Unconfirmed::Failed(reason) => {
                let log = self.discard(successor).await;
                self.reclaim();
                self.shared.lingering.store(false, std::sync::atomic::Ordering::Relaxed);
                UpgradeError::TakeoverFailed { port, reason, log }
            }
            Unconfirmed::Stopped(phase) => UpgradeError::StoppedBeforeConfirmation { port, phase },
        }
    }

    /// Reports a finished upgrade or rollback to `notify_urls`, in the background.
    fn notify(&self, target: &Target, record: &UpgradeRecord) {
        let Some(notifier) = &self.notifier else { return };
        let kind = match target {
            Target::Previous => "rollback",
            Target::Registry(_) => "upgrade",
        };
        let requested = record.requested.to_string();
        let to = record.to.as_deref().unwrap_or(&requested);
        notifier.send(crate::notify::Event::new(
            kind,
            record.outcome,
            &record.from,
            Some(to),
            record.duration_ms,
            record.error.as_deref(),
        ));
    }

    /// The version that ran before the last upgrade, from this container's
    /// labels; its image is still on this machine.
    pub async fn previous(&self, me: &str) -> Result<Previous, UpgradeError> {
        let container = self
            .engine
            .inspect_container(me)
            .await
            .map_err(UpgradeError::docker("inspecting this container"))?;
        let labels = container.config.and_then(|c| c.labels).unwrap_or_default();
        let (Some(version), Some(image)) = (labels.get(PREVIOUS_VERSION_LABEL), labels.get(PREVIOUS_IMAGE_LABEL))
        else {
            return Err(UpgradeError::NoPrevious);
        };
        let version = Version::parse(version).map_err(|_| UpgradeError::NoPrevious)?;
        let inspect = self.engine.inspect_image(image).await.map_err(|source| match source {
            DockerError::NoSuchImage(_) => UpgradeError::PreviousImageGone {
                version: version.to_string(),
                image: image.clone(),
            },
            other => UpgradeError::docker(format!("inspecting the previous image {image}"))(other),
        })?;
        // By tag where one is left, as a clone should name its image.
        let repository = ImageRef::parse(&self.settings.image_ref("latest"))
            .map(|r| r.repository())
            .unwrap_or_default();
        let image_ref = inspect
            .repo_tags
            .unwrap_or_default()
            .into_iter()
            .find(|t| {
                t.rsplit_once(':')
                    .is_some_and(|(repo, tag)| repo == repository && tag != "latest")
            })
            .unwrap_or_else(|| image.clone());
        Ok(Previous {
            version,
            image: image.clone(),
            image_ref,
        })
    }

    /// The local image `image` names, if it is already what the registry's
    /// tag points at (the same digest): no pull needed. Any doubt (an error,
    /// no digest) is `None`, and the image is pulled.
    async fn local_at_tag_digest(&self, image: &ImageRef, auth: Option<&RegistryAuth>) -> Option<ImageInspect> {
        let remote = self
            .registry
            .manifest_digest(image.registry_host(), &image.path, &image.tag, auth)
            .await
            .ok()??;
        let local = self.engine.inspect_image(&image.to_string()).await.ok()?;
        let wanted = format!("{}@{remote}", image.repository());
        local.repo_digests.as_ref()?.contains(&wanted).then_some(local)
    }

    /// Removes what an interrupted upgrade left: stopped siblings and a
    /// container already holding the successor's name.
    async fn remove_leftovers(
        &self,
        elder: &bollard::models::ContainerInspectResponse,
        me: &str,
        successor_name: &str,
    ) -> Result<(), UpgradeError> {
        let labels = elder.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        let grouped = !super::group_labels(&labels).is_empty();
        let siblings = self
            .siblings(&labels)
            .await
            .map_err(UpgradeError::docker("listing siblings"))?;
        let mut stale_successor = false;
        for sibling in siblings {
            let id = sibling.id.unwrap_or_default();
            let running = sibling.state.map(|s| s.to_string() == "running").unwrap_or(false);
            stale_successor |= sibling
                .names
                .iter()
                .flatten()
                .any(|n| n.trim_start_matches('/') == successor_name);
            if id != me && !running {
                tracing::info!(container = %id, "removing a stopped sibling");
                let _ = self.engine.remove_container(&id, true).await;
            }
        }
        // A successor left by an interrupted upgrade is one of the siblings:
        // when the listing shows none, the upgrade asks nothing more of the
        // Engine. An instance without group labels cannot tell, so it asks.
        if grouped && !stale_successor {
            return Ok(());
        }
        match self.engine.remove_container(successor_name, true).await {
            Ok(()) => tracing::info!(name = successor_name, "removed a stale successor"),
            Err(DockerError::NoSuchContainer(_)) => {}
            Err(e) => {
                return Err(UpgradeError::docker(format!("removing the stale {successor_name}"))(e));
            }
        }
        Ok(())
    }

    /// Polls the successor's `/health` until it answers 200 from that very
    /// container (its id must match) with the target version; fails fast if
    /// it exits, reports another version, or another listener answers.
    /// At the successor's own address (a bridge network), the poll carries
    /// the handover secret, which is what gets a caller from another address
    /// the detail; on loopback it never does (a stray listener may be there).
    #[tracing::instrument(skip(self, token))]
    async fn wait_healthy(
        &self,
        successor: &str,
        reach: Reach,
        token: &str,
        version: &Version,
    ) -> Result<(), WaitError> {
        let port = reach.addr.port();
        let watcher = Watcher::new(&self.engine, successor, self.settings.health_deadline(), HEALTH_POLL);
        let url = format!("http://{}/health", reach.addr);
        let mut last: String;
        let mut looked = Instant::now();
        let mut attempts = crate::events::Attempts::new(&self.shared.events);
        loop {
            let mut poll = self.http.get(&url).timeout(Duration::from_secs(1));
            if reach.own {
                poll = poll.bearer_auth(token);
            }
            match poll.send().await {
                Ok(r) if r.status().is_success() => match r.json::<serde_json::Value>().await {
                    Ok(body) => {
                        // Only the container this instance created gets the
                        // handover secret: a stray listener on the port is not it.
                        let container = body["container"].as_str().unwrap_or_default();
                        if container != successor {
                            return Err(WaitError::Failed(format!(
                                "port {port} is answered by something else than the successor {} (container {container:?})",
                                &successor[..successor.len().min(12)]
                            )));
                        }
                        attempts.report("answered as the successor", true);
                        if body["version"] != version.to_string() {
                            return Err(WaitError::Failed(format!(
                                "it reports version {}, expected {version}",
                                body["version"]
                            )));
                        }
                        return Ok(());
                    }
                    Err(e) => last = format!("unreadable health answer: {e}"),
                },
                Ok(r) => last = format!("/health answered {}", r.status()),
                Err(e) => last = format!("/health: {e}"),
            }
            attempts.report(&last, false);
            if looked.elapsed() >= POLL {
                looked = Instant::now();
                if let Some(exit) = watcher.died().await {
                    return Err(WaitError::Died(exit));
                }
            }
            if let Some(expired) = watcher.expired("no healthy answer", Some(format!("last: {last}"))) {
                return Err(expired);
            }
            watcher.pause().await;
        }
    }

    /// Removes a successor that will not take over, keeping the tail of its
    /// log for the answer.
    async fn discard(&self, successor: &str) -> String {
        let log = watch::log_tail(&self.engine, successor).await;
        let _ = self.engine.remove_container(successor, true).await;
        log
    }

    /// Tells the successor to take over, then waits for the stop signal it
    /// sends this instance once nginx serves it; fails if the successor
    /// reports a failure, exits, or the elder's budget passes. That budget is
    /// the successor's whole takeover budget plus [`ELDER_MARGIN`]: the
    /// elder never gives up before its successor does.
    ///
    /// With `bake`, the go-ahead asks the successor to bake: it returns
    /// [`Handed::Baking`] once the successor serves the public and waits
    /// for the end of the bake. A successor that does not know bakes
    /// ignores the ask and stops this instance as before.
    async fn go_and_wait(
        &self,
        successor: &str,
        reach: Reach,
        token: &str,
        bake: Option<Duration>,
    ) -> Result<Handed, Unconfirmed> {
        let base = format!("http://{}/handover", reach.addr);
        let go_url = match bake {
            Some(bake) => format!("{base}?bake_ms={}", bake.as_millis()),
            None => base.clone(),
        };
        self.send_go(&go_url, token, "go-ahead").await?;
        self.wait_stopped(successor, &base, token, bake.is_some()).await
    }

    /// Tells a baked successor that the bake ended clean (the go-ahead's
    /// second use), then waits for it to stop this instance.
    async fn end_bake(&self, successor: &str, reach: Reach, token: &str) -> Result<(), Unconfirmed> {
        let base = format!("http://{}/handover", reach.addr);
        self.send_go(&base, token, "the end of the bake").await?;
        self.wait_stopped(successor, &base, token, false).await.map(|_| ())
    }

    async fn send_go(&self, url: &str, token: &str, what: &str) -> Result<(), Unconfirmed> {
        let go = self
            .http
            .post(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| Unconfirmed::Failed(WaitError::Failed(format!("{what} not delivered: {e}"))))?;
        if !go.status().is_success() {
            return Err(Unconfirmed::Failed(WaitError::Failed(format!(
                "{what} refused with {}",
                go.status()
            ))));
        }
        Ok(())
    }

    /// Waits for the successor's stop signal (or, with `until_baking`,
    /// for it to report that it bakes), watching it all the while.
    async fn wait_stopped(
        &self,
        successor: &str,
        base: &str,
        token: &str,
        until_baking: bool,
    ) -> Result<Handed, Unconfirmed> {
        let mut shutdown = self.shared.shutdown.subscribe();
        let budget = self.settings.takeover_deadline() + ELDER_MARGIN;
        let watcher = Watcher::new(&self.engine, successor, budget, POLL);
        // Waiting for a stop signal, the Engine is asked every POLL; waiting
        // for the switch under a bake, the successor is asked every
        // PHASE_POLL and the Engine still every POLL.
        let pause = if until_baking { PHASE_POLL } else { POLL };
        let mut looked = Instant::now();
        loop {
            if *shutdown.borrow_and_update() {
                // A stop signal is the successor's only when it says so: an
                // operator's `docker stop` looks the same from here.
                return match self.successor_phase(base, token).await {
                    Ok(TakeoverPhase::Done) => Ok(Handed::Stopped),
                    Ok(TakeoverPhase::Running {
                        step: TakeoverStep::StoppingTheElder,
                    }) => Ok(Handed::Stopped),
                    Ok(phase) => Err(Unconfirmed::Stopped(phase.to_string())),
                    Err(e) => Err(Unconfirmed::Stopped(format!("unknown ({e})"))),
                };
            }
            tokio::select! {
                _ = shutdown.changed() => continue,
                _ = tokio::time::sleep(pause) => {}
            }
            match self.successor_phase(base, token).await {
                Ok(TakeoverPhase::Failed { reason }) => return Err(Unconfirmed::Failed(WaitError::Failed(reason))),
                Ok(TakeoverPhase::Running {
                    step: TakeoverStep::Baking,
                }) if until_baking => return Ok(Handed::Baking),
                _ => {}
            }
            if looked.elapsed() < POLL {
                continue;
            }
            looked = Instant::now();
            if let Some(exit) = watcher.died().await {
                return Err(Unconfirmed::Failed(WaitError::Died(exit)));
            }
            if let Some(expired) = watcher.expired("not done", None) {
                return Err(Unconfirmed::Failed(expired));
            }
        }
    }

    /// The successor's takeover phase, from its `/handover`.
    async fn successor_phase(&self, url: &str, token: &str) -> Result<TakeoverPhase, String> {
        // The handover secret: with an upgrade token set, /handover wants one of the two.
        let r = self
            .http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        r.json::<TakeoverPhase>().await.map_err(|e| e.to_string())
    }

    /// Takes the sockets back after a failed takeover: nginx's next
    /// upstream connection reaches this instance again (publishing is
    /// idempotent, so it does not matter whether the successor got as far
    /// as publishing its own).
    fn reclaim(&self) {
        self.publish_sockets();
        tracing::info!(port = self.settings.port, "sockets reclaimed");
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
            return Err(UpgradeError::SuccessorUnhealthy {
                port: new_port,
                reason: WaitError::Failed(e.to_string()),
                log,
            });
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
            return Err(UpgradeError::SuccessorUnhealthy {
                port: new_port,
                reason,
                log,
            });
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
        let Handover {
            successor,
            reach,
            token,
            old_port,
            new_port,
            version,
            image,
            digest,
            rollback,
            mut timings,
            _swaps,
        } = progress;
        flight.step(UpgradeStep::WaitingForTakeover);
        let t = Instant::now();
        let bake = (o.settings.bake_secs > 0).then(|| o.settings.bake());
        if bake.is_some() {
            // Before the switch: nginx's backup reaches this instance as soon
            // as the successor is live.
            o.publish_standby();
        }
        let handed = o.go_and_wait(&successor, reach, &token, bake).await;
        let handed = match handed {
            Ok(handed) => handed,
            Err(unconfirmed) => return Err(o.unconfirmed(&successor, new_port, unconfirmed).await),
        };
        timings.takeover_ms = t.elapsed().as_millis();
        let bake = match handed {
            // A successor that does not bake (an older version) stopped
            // this instance at once.
            Handed::Stopped => {
                o.withdraw_standby();
                None
            }
            Handed::Baking => {
                flight.step(UpgradeStep::Baking);
                let (end, report) = o.bake(&successor, reach, &token, &version).await;
                match end {
                    BakeEnd::Promoted { stopped: true, .. } => {}
                    BakeEnd::Promoted { stopped: false, .. } => {
                        if let Err(unconfirmed) = o.end_bake(&successor, reach, &token).await {
                            return Err(o.unconfirmed(&successor, new_port, unconfirmed).await);
                        }
                    }
                    BakeEnd::RolledBack {
                        by_operator, answering, ..
                    } => {
                        if !answering {
                            // Dead or frozen: the requests it holds end (and
                            // nginx retries the idempotent ones on the standby
                            // socket) only when it is killed; its log stays.
                            let _ = o.engine.signal(&successor, "SIGKILL").await;
                        }
                        let log = watch::log_tail(&o.engine, &successor).await;
                        let removed = match answering {
                            true => {
                                let stop = Duration::from_secs(o.settings.stop_timeout_secs);
                                watch::stop_and_remove(&o.engine, &successor, stop, watch::StopFailed::Force).await
                            }
                            false => o.engine.remove_container(&successor, true).await,
                        };
                        if let Err(e) = removed {
                            tracing::warn!(container = %successor, error = %e, "could not remove the rolled back successor");
                        }
                        o.withdraw_standby();
                        o.shared.reject(Rejected {
                            version: version.to_string(),
                            digest: digest.clone(),
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
        timings.total_ms = flight.started.elapsed().as_millis();
        // It ran to the end (named exactly, if it had been rolled back).
        o.shared.forget_rejected(&version.to_string(), digest.as_deref());
        Ok(UpgradeOutcome::Upgraded {
            from: o.version.to_string(),
            to: version.to_string(),
            rollback,
            image,
            old_port,
            new_port,
            successor: successor.chars().take(12).collect(),
            timings,
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
        match o.pin(fetched, &Requirement::Exact(previous.version))? {
            Next::Go(pinned) => self.deploy(o, flight, pinned).await,
            Next::AlreadyThere { version, message } => Ok(Next::AlreadyThere { version, message }),
        }
    }

    /// Nothing beyond the shared document: `swarm` is null.
    async fn status(&self, _deps: &Deps) -> BackendStatus {
        BackendStatus::default()
    }
}
