//! Swaps left half-done: an instance that starts finishes or rolls back
//! every swap whose instance died mid-way, by the journal's rule
//! ([`crate::recreate::journal::resolve`]) and what Docker shows now.

use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use tokio::time::{Instant, sleep};

use super::Companion;
use super::swap::Swap;
use crate::docker::{DockerError, Engine};
use crate::recreate::journal::{self, Resolution, Seen, SwapRecord};

impl Companion {
    /// How long an instance that starts waits for a self-upgrade to release
    /// the swaps before it resolves the half-done ones.
    const RECOVER_WAIT: Duration = Duration::from_secs(120);
    /// How often it looks again meanwhile.
    const RECOVER_POLL: Duration = Duration::from_millis(250);

    /// Resolves the swaps that an instance left half-done when it died (see
    /// [`journal::resolve`] for the rule). Runs once this instance has
    /// reconciled, so an elder it took over from is gone and holds nothing.
    pub async fn recover(&self) {
        let Some(swaps) = &self.swaps else { return };
        let started = Instant::now();
        let _entry = loop {
            match swaps.enter() {
                Ok(Some(entry)) => break entry,
                Ok(None) if started.elapsed() < Self::RECOVER_WAIT => sleep(Self::RECOVER_POLL).await,
                Ok(None) => {
                    tracing::warn!("a self-upgrade still runs: half-done swaps are left to the next instance");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for half-done swaps");
                    return;
                }
            }
        };
        for (record, mut claim) in swaps.orphans().await {
            tracing::warn!(container = %record.container, phase = ?record.phase, owner = ?record.owner, "found a half-done swap");
            match self.resolve_orphan(&record).await {
                Ok(done) => tracing::info!(
                    container = %record.container,
                    done,
                    ms = started.elapsed().as_millis() as u64,
                    "half-done swap resolved"
                ),
                Err(e) => {
                    tracing::error!(container = %record.container, error = %e, "a half-done swap is still half-done; the next start tries again");
                    claim.keep();
                }
            }
        }
    }

    /// Finishes or rolls back one half-done swap; says which.
    async fn resolve_orphan(&self, record: &SwapRecord) -> Result<&'static str, String> {
        let (old_seen, old) = seen(&self.engine, &record.old_id).await?;
        // The new container: the one the journal names, else whatever holds
        // the name now that is not the old one (created before it was noted).
        let new_id = match &record.new_id {
            Some(id) => Some(id.clone()),
            None => match self.engine.inspect_container(&record.container).await {
                Ok(c) => c.id.filter(|id| *id != record.old_id),
                Err(DockerError::NoSuchContainer(_)) => None,
                Err(e) => return Err(format!("inspecting {}: {e}", record.container)),
            },
        };
        let new_seen = match &new_id {
            Some(id) => seen(&self.engine, id).await?.0,
            None => Seen::Absent,
        };
        let swap = Swap {
            engine: &self.engine,
            name: &record.container,
            old_id: &record.old_id,
            aside: &record.aside,
            image: record.image.clone(),
            deadline: self.settings.update_deadline(),
            settle: self.settings.update_settle(),
            bake: Duration::ZERO,
            stopped_old: record.stop_first,
            progress: None,
            journal: None,
        };
        match journal::resolve(record.phase, old_seen, new_seen) {
            Resolution::Forget => Err("neither the old nor the new container exists".into()),
            Resolution::RollBack => swap.roll_back(new_id.as_deref()).await.map(|()| "rolled back"),
            Resolution::Finish => {
                let new_id = new_id.unwrap_or_default();
                match swap.finish(record, &new_id, new_seen, old.as_ref()).await {
                    Ok(()) => Ok("finished"),
                    Err(reason) => {
                        tracing::warn!(container = %record.container, %reason, "the new container did not come up: rolling back");
                        match old {
                            Some(_) => swap.roll_back(Some(&new_id)).await.map(|()| "rolled back"),
                            None => Err(reason),
                        }
                    }
                }
            }
        }
    }
}

/// What a container of a half-done swap is now; an error if Docker cannot say.
async fn seen(engine: &Engine, id: &str) -> Result<(Seen, Option<ContainerInspectResponse>), String> {
    match engine.inspect_container(id).await {
        Ok(c) => {
            let running = c.state.as_ref().and_then(|s| s.running) == Some(true);
            Ok((if running { Seen::Running } else { Seen::Stopped }, Some(c)))
        }
        Err(DockerError::NoSuchContainer(_)) => Ok((Seen::Absent, None)),
        Err(e) => Err(format!("inspecting {id}: {e}")),
    }
}
