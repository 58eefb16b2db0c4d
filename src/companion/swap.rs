//! The swap of an old container for a new one, and its rollback: the old
//! one is renamed aside (and stopped first only if both cannot run at once),
//! the new one is created under its name, connected, started and watched.
//! Then the old one is removed; or the new one is removed and the old one
//! gets its name back and runs again.

use std::time::Duration;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, EndpointSettings, RestartPolicy};

use super::container::name_of;
use super::placement::{self, Placement};
use super::progress::{Progress, Step};
use crate::docker::{DockerError, Engine};
use crate::recreate::journal::{Claim, Phase, Seen, SwapRecord};
use crate::recreate::watch::{self, StopFailed, WaitError, Watcher};

/// How often a new container is looked at while it comes up.
const POLL: Duration = Duration::from_millis(250);
/// How often a new container is looked at during its bake: the old one
/// comes back within this of a crash.
const BAKE_POLL: Duration = Duration::from_millis(50);

/// Why a swap failed, by the step it failed at.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("stopping the old container: {0}")]
    StopOld(DockerError),
    #[error("renaming the old container aside: {0}")]
    RenameAside(DockerError),
    #[error("creating the new container from {image}: {source}")]
    Create { image: String, source: DockerError },
    #[error("{0}")]
    Connect(DockerError),
    #[error("starting it: {0}")]
    Start(DockerError),
    /// It died, said no, or was not up by the deadline.
    #[error(transparent)]
    NotUp(#[from] WaitError),
    #[error("it is up, but {0}")]
    RestartPolicy(DockerError),
    /// A blue-green app's successor did not answer at its own address.
    #[error("{0}")]
    NotReady(String),
    /// A blue-green app's successor failed after the switch, during the
    /// bake: the traffic went back to the elder.
    #[error("{0}")]
    Baked(String),
}

/// A failed swap: why, and the new container, once it exists.
#[derive(Debug)]
pub struct SwapFailure {
    pub reason: SwapError,
    pub new_id: Option<String>,
}

/// What a new container is made of, beyond its create body.
#[derive(Debug)]
pub struct NewContainer {
    pub body: ContainerCreateBody,
    /// Networks to connect after the create (see [`crate::recreate::clone::split_networks`]).
    pub later_networks: Vec<(String, EndpointSettings)>,
    /// The restart policy to set once it is up (see [`crate::recreate::clone::defer_restart_policy`]).
    pub restart_policy: Option<RestartPolicy>,
}

/// One swap of an old container for a new one, and how to undo it.
#[derive(Debug)]
pub struct Swap<'a> {
    pub engine: &'a Engine,
    pub name: &'a str,
    pub old_id: &'a str,
    pub aside: &'a str,
    pub image: String,
    /// How long the new container may take to come up, and how long one
    /// without a HEALTHCHECK must keep running.
    pub deadline: Duration,
    pub settle: Duration,
    /// How long the old container, renamed aside and still running (the
    /// "beside" placement), waits after the new one is up, ready to come
    /// back at once if the new one fails; zero: it is removed at once.
    pub bake: Duration,
    /// Whether the old container was stopped (stop-first), so a rollback starts it.
    pub stopped_old: bool,
    /// Where the update's steps go; none when a start resolves a half-done swap.
    pub progress: Option<&'a Progress<'a>>,
    /// The claim across instances and the journal written under it, with a data directory.
    pub journal: Option<(&'a Claim, SwapRecord)>,
}

impl Swap<'_> {
    /// Writes the journal at `phase`: what is done so far. A journal that
    /// cannot be written does not stop the swap (the old record, or none, says
    /// less than happened, and a restart resolves from what Docker shows).
    fn note(&mut self, phase: Phase, new_id: Option<&str>) {
        let Some((claim, record)) = self.journal.as_mut() else {
            return;
        };
        record.phase = phase;
        if let Some(id) = new_id {
            record.new_id = Some(id.to_string());
        }
        if let Err(e) = claim.write(record) {
            tracing::warn!(container = self.name, error = %e, "the swap journal could not be written");
        }
        #[cfg(feature = "faults")]
        crate::faults::swap_exit(self.name, phase);
    }

    /// Says in the event log that the swap is at `step`, as it begins.
    fn step(&self, step: Step) {
        if let Some(progress) = self.progress {
            progress.step(step);
        }
    }

    /// Renames the old container aside, creates, connects and starts the new
    /// one under its name, and watches it. Fails with the step and, once it
    /// exists, the new container's id.
    pub async fn run(
        &mut self,
        old: &ContainerInspectResponse,
        new: NewContainer,
        placement: &Placement,
    ) -> Result<String, SwapFailure> {
        let before = |reason| SwapFailure { reason, new_id: None };
        self.note(Phase::Planned, None);
        if let Placement::StopFirst(_) = placement {
            self.step(Step::StoppingTheOld);
            self.engine
                .stop_container(self.old_id, placement::stop_timeout(old))
                .await
                .map_err(|e| before(SwapError::StopOld(e)))?;
            self.stopped_old = true;
        }
        self.step(Step::RenamingAside);
        self.engine
            .rename_container(self.old_id, self.aside)
            .await
            .map_err(|e| before(SwapError::RenameAside(e)))?;
        self.note(Phase::Aside, None);
        self.step(Step::Creating);
        let new_id = self
            .engine
            .create_container(self.name, new.body)
            .await
            .map_err(|source| {
                before(SwapError::Create {
                    image: self.image.clone(),
                    source,
                })
            })?;
        self.note(Phase::Created, Some(&new_id));
        let fail = |reason| SwapFailure {
            reason,
            new_id: Some(new_id.clone()),
        };
        self.step(Step::Starting);
        for (network, endpoint) in new.later_networks {
            self.engine
                .connect_network(&network, &new_id, endpoint)
                .await
                .map_err(|e| fail(SwapError::Connect(e)))?;
        }
        self.engine
            .start_container(&new_id)
            .await
            .map_err(|e| fail(SwapError::Start(e)))?;
        self.note(Phase::Started, None);
        self.step(Step::HealthChecking);
        self.until_up(&new_id).await.map_err(|e| fail(SwapError::NotUp(e)))?;
        if *placement == Placement::Beside && !self.bake.is_zero() {
            self.bake(&new_id).await.map_err(|e| fail(SwapError::NotUp(e)))?;
        }
        if let Some(policy) = new.restart_policy {
            self.engine
                .set_restart_policy(&new_id, policy)
                .await
                .map_err(|e| fail(SwapError::RestartPolicy(e)))?;
        }
        self.note(Phase::Checked, None);
        Ok(new_id)
    }

    /// Watches a new container until it is up, fails, or the deadline passes.
    /// Each look is a `health_attempt` event of the update, when it has a progress.
    async fn until_up(&self, id: &str) -> Result<(), WaitError> {
        let watcher = Watcher::new(self.engine, id, self.deadline, POLL);
        match self.progress {
            Some(progress) => {
                let mut attempts = progress.attempts();
                watcher
                    .until_up_observed(self.settle, |result, last| attempts.report(result, last))
                    .await
            }
            None => watcher.until_up(self.settle).await,
        }
    }

    /// Watches a new container that is up for the bake, the old one
    /// running beside it: an exit, a restart or an unhealthy HEALTHCHECK
    /// fails the swap, and the caller's rollback brings the old one back.
    async fn bake(&self, id: &str) -> Result<(), WaitError> {
        tracing::info!(container = self.name, bake = ?self.bake, "baking the new container beside the old one");
        let ends = tokio::time::Instant::now() + self.bake;
        let during = |e: WaitError| WaitError::Failed(format!("during the {} s bake: {e}", self.bake.as_secs()));
        while tokio::time::Instant::now() < ends {
            match self.engine.inspect_container(id).await {
                Ok(c) => {
                    if let watch::Verdict::Failed(e) = watch::verdict(&c, Duration::MAX, self.settle) {
                        return Err(during(e));
                    }
                }
                Err(DockerError::NoSuchContainer(_)) => return Err(during(WaitError::Died("it was removed".into()))),
                Err(_) => {}
            }
            tokio::time::sleep(BAKE_POLL).await;
        }
        Ok(())
    }

    /// The last steps of a half-done swap whose new container exists (see
    /// [`crate::recreate::journal::resolve`]): started, watched, given its restart
    /// policy; then the old one is removed.
    pub async fn finish(
        &self,
        record: &SwapRecord,
        new_id: &str,
        new_seen: Seen,
        old: Option<&ContainerInspectResponse>,
    ) -> Result<(), String> {
        if new_seen != Seen::Running {
            self.engine
                .start_container(new_id)
                .await
                .map_err(|e| format!("starting it: {e}"))?;
        }
        self.until_up(new_id).await.map_err(|e| e.to_string())?;
        if let Some(policy) = record.restart_policy.clone() {
            self.engine
                .set_restart_policy(new_id, policy)
                .await
                .map_err(|e| format!("it is up, but {e}"))?;
        }
        match old {
            Some(old) => self.retire(old).await,
            None => Ok(()),
        }
    }

    /// Removes the new container, gives the old one its name back, and starts it if it was stopped.
    pub async fn roll_back(&self, new_id: Option<&str>) -> Result<(), String> {
        if let Some(id) = new_id {
            match self.engine.remove_container(id, true).await {
                Ok(()) | Err(DockerError::NoSuchContainer(_)) => {}
                Err(e) => return Err(format!("removing the new container: {e}")),
            }
        }
        let old = self
            .engine
            .inspect_container(self.old_id)
            .await
            .map_err(|e| format!("inspecting the old container: {e}"))?;
        if name_of(&old) != self.name {
            self.engine
                .rename_container(self.old_id, self.name)
                .await
                .map_err(|e| format!("renaming the old container back to {}: {e}", self.name))?;
        }
        let running = old.state.as_ref().and_then(|s| s.running) == Some(true);
        if self.stopped_old || !running {
            self.engine
                .start_container(self.old_id)
                .await
                .map_err(|e| format!("starting the old container again: {e}"))?;
        }
        Ok(())
    }

    /// Stops (if still running) and removes the old container, keeping its volumes.
    pub async fn retire(&self, old: &ContainerInspectResponse) -> Result<(), String> {
        watch::stop_and_remove(
            self.engine,
            self.old_id,
            placement::stop_timeout(old),
            StopFailed::Force,
        )
        .await
        .map_err(|e| format!("the old container was left as {}: {e}", self.aside))
    }
}
