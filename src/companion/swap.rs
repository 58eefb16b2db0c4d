//! The swap of an old container for a new one, and its rollback: the old
//! one is renamed aside (and stopped first only if both cannot run at once),
//! the new one is created under its name, connected, started and watched.
//! Then the old one is removed; or the new one is removed and the old one
//! gets its name back and runs again.

use std::time::Duration;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, EndpointSettings, RestartPolicy};

use super::name_of;
use super::placement::{self, Placement};
use crate::docker::{DockerError, Engine};
use crate::recreate::watch::{self, StopFailed, WaitError, Watcher};

/// How often a new container is looked at while it comes up.
const POLL: Duration = Duration::from_millis(250);

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
    /// Whether the old container was stopped (stop-first), so a rollback starts it.
    pub stopped_old: bool,
}

impl Swap<'_> {
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
        if let Placement::StopFirst(_) = placement {
            self.engine
                .stop_container(self.old_id, placement::stop_timeout(old))
                .await
                .map_err(|e| before(SwapError::StopOld(e)))?;
            self.stopped_old = true;
        }
        self.engine
            .rename_container(self.old_id, self.aside)
            .await
            .map_err(|e| before(SwapError::RenameAside(e)))?;
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
        let fail = |reason| SwapFailure {
            reason,
            new_id: Some(new_id.clone()),
        };
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
        Watcher::new(self.engine, &new_id, self.deadline, POLL)
            .until_up(self.settle)
            .await
            .map_err(|e| fail(SwapError::NotUp(e)))?;
        if let Some(policy) = new.restart_policy {
            self.engine
                .set_restart_policy(&new_id, policy)
                .await
                .map_err(|e| fail(SwapError::RestartPolicy(e)))?;
        }
        Ok(new_id)
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
