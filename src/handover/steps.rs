//! The elder's steps, each one call from the protocol in [`super::elder`]:
//! the swap hold, the refusal of a rolled-back version, the previous
//! version's image, the leftovers of an interrupted upgrade, the health
//! poll, the go-ahead and its answer, the wait for the elder's own stop,
//! and taking the traffic back.

use std::time::Duration;

use semver::Version;
use tokio::time::Instant;

use super::{Orchestrator, Previous, Reach};
use bollard::models::ImageInspect;

use crate::docker::DockerError;
use crate::image_ref::ImageRef;
use crate::recreate::journal::{GateError, UpgradeGate};
use crate::recreate::upgrade::{Flight, PREVIOUS_IMAGE_LABEL, PREVIOUS_VERSION_LABEL, Target, UpgradeError};
use crate::recreate::watch::{self, WaitError, Watcher};
use crate::registry::credentials::RegistryAuth;
use crate::state::{TakeoverPhase, TakeoverStep, UpgradeRecord, UpgradeStep};
use crate::version::Requirement;

/// How often the elder looks at its successor (the Engine's view of it)
/// while waiting.
pub(super) const POLL: Duration = Duration::from_millis(25);
/// How often the elder asks the successor's `/health` while it starts: a
/// refused connect costs well under a millisecond, and the successor
/// answers a few ms after its process starts.
pub(super) const HEALTH_POLL: Duration = Duration::from_millis(5);
/// How often the elder asks a successor it handed over to with a bake
/// whether it has switched: the upgrade's answer waits on it, and each ask
/// is one loopback request.
pub(super) const PHASE_POLL: Duration = Duration::from_millis(5);
/// How much longer than the successor's takeover budget the elder waits for
/// it: the go-ahead's delivery, and the successor's last steps before it
/// stops the elder.
pub(super) const ELDER_MARGIN: Duration = Duration::from_secs(10);

/// Why the elder has no confirmed takeover.
pub(super) enum Unconfirmed {
    /// The successor failed, exited, or ran out of time: it is removed.
    Failed(WaitError),
    /// This instance was asked to stop (SIGTERM) before the successor said it
    /// is stopping it; the successor, at the phase named, is left to finish.
    Stopped(String),
}

/// What the successor did with the go-ahead.
pub(super) enum Handed {
    /// It stopped this instance: the handover is over.
    Stopped,
    /// It serves the public and waits for the end of the bake.
    Baking,
}

impl Orchestrator {
    /// Waits (at most `update_deadline`) until no companion swap runs, then
    /// keeps new ones from starting, in this instance and in the successor,
    /// until the upgrade is over (the hold is dropped, or this process ends).
    pub(super) async fn hold_swaps(&self, flight: &Flight<'_>) -> Result<Option<UpgradeGate>, UpgradeError> {
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
    pub(super) async fn unconfirmed(&self, successor: &str, port: u16, unconfirmed: Unconfirmed) -> UpgradeError {
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
    pub(super) fn notify(&self, target: &Target, record: &UpgradeRecord) {
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
    pub(super) async fn local_at_tag_digest(
        &self,
        image: &ImageRef,
        auth: Option<&RegistryAuth>,
    ) -> Option<ImageInspect> {
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
    pub(super) async fn remove_leftovers(
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
    pub(super) async fn wait_healthy(
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
    pub(super) async fn discard(&self, successor: &str) -> String {
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
    pub(super) async fn go_and_wait(
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
    pub(super) async fn end_bake(&self, successor: &str, reach: Reach, token: &str) -> Result<(), Unconfirmed> {
        let base = format!("http://{}/handover", reach.addr);
        self.send_go(&base, token, "the end of the bake").await?;
        self.wait_stopped(successor, &base, token, false).await.map(|_| ())
    }

    pub(super) async fn send_go(&self, url: &str, token: &str, what: &str) -> Result<(), Unconfirmed> {
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
    pub(super) async fn wait_stopped(
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
    pub(super) async fn successor_phase(&self, url: &str, token: &str) -> Result<TakeoverPhase, String> {
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
    pub(super) fn reclaim(&self) {
        self.publish_sockets();
        tracing::info!(port = self.settings.port, "sockets reclaimed");
    }
}
