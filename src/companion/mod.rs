//! Companion mode: selfup recreates *another* container from a new image on
//! request, with the settings its operator gave it, and answers only once it
//! knows whether the new container came up. In the order an update runs:
//!
//! 1. [`auth`]: the request carries the API key (checked by the route).
//! 2. [`admission`]: the image must come from an allowed registry, the
//!    container must exist, run and carry `selfup.enable=true`; one update per
//!    container at a time.
//! 3. [`crate::registry::credentials`]: the registry's credentials from a
//!    `config.json`, for the tag list and the pull.
//! 4. The image: the tag, the pull and the decision, by
//!    [`crate::recreate::resolve`].
//! 5. The clone ([`crate::recreate::clone`]) and its [`placement`]: beside
//!    the old container, or after stopping it.
//! 6. The [`swap`], and its rollback if the new container does not come up.
//! 7. [`journal`]: with a data directory, the one-swap-per-container lock and
//!    the swap's journal are files there, shared by every instance: a
//!    self-upgrade waits for running swaps, and an instance that starts
//!    resolves a swap left half-done ([`Companion::recover`]).

pub mod admission;
pub mod auth;
pub mod journal;
pub mod placement;
pub mod swap;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::ContainerInspectResponse;
use serde::Serialize;
use tokio::time::{Instant, sleep};

use crate::config::Settings;
use crate::docker::{DockerError, Engine};
use crate::image_ref::{ImageRef, ImageRefError};
use crate::recreate::clone::{self, COMPOSE_IMAGE, Overrides, clone_body};
use crate::recreate::resolve::{self, Go, ResolveError};
use crate::recreate::version::{self, Requirement, RequirementError};
use crate::recreate::watch;
use crate::registry::Registry;
use crate::registry::credentials::{self, CredentialsError, Helpers, RegistryAuth};
use admission::Slot;
use auth::ApiKey;
use journal::{Phase, Resolution, Seen, SwapRecord, Swaps};
use placement::Placement;
use swap::{NewContainer, Swap, SwapError, SwapFailure};

/// Why an update did not happen, or did not stick. Each variant says what to do.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    #[error(transparent)]
    BadImage(#[from] ImageRefError),
    #[error(transparent)]
    BadRequirement(#[from] RequirementError),
    #[error("invalid container name {0:?}: expected a name or id (letters, digits, _ . -)")]
    BadContainerName(String),
    #[error("images from {registry} are not accepted; allowed registries: {}", allowed.join(", "))]
    RegistryNotAllowed { registry: String, allowed: Vec<String> },
    #[error(
        "container {container} is not labelled {}=true, so it may not be updated",
        admission::ENABLE_LABEL
    )]
    NotEnabled { container: String },
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error("container {container} is {state}, not running; start it first")]
    NotRunning { container: String, state: String },
    #[error("an update of container {container} is already running; try again when it is done")]
    Busy { container: String },
    #[error("a self-upgrade of this service is running; try again when it is done")]
    UpgradeRunning,
    #[error("the swap lock in the data directory: {0}")]
    Lock(std::io::Error),
    #[error("container {container} is this companion itself; it upgrades itself through /upgrade")]
    OwnContainer { container: String },
    #[error("container {container} runs {image:?}, which is not a repository:tag reference: {reason}")]
    NotATag {
        container: String,
        image: String,
        reason: String,
    },
    #[error(
        "container {container} runs with --rm and {reason}: stopping it first would remove it, leaving nothing to roll back to"
    )]
    AutoRemove { container: String, reason: String },
    /// The way to the image: the registry, the pull, the decision.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("credentials for {registry}: {source}")]
    Credentials { registry: String, source: CredentialsError },
    #[error("{context}: {source}")]
    Docker { context: String, source: DockerError },
    /// The new container did not come up; `restored` says whether the old one runs again.
    #[error("{}", failed_message(container, image, reason, restored))]
    Failed {
        container: String,
        image: String,
        reason: Box<SwapError>,
        log: String,
        restored: Result<(), String>,
    },
}

fn failed_message(container: &str, image: &str, reason: &SwapError, restored: &Result<(), String>) -> String {
    match restored {
        Ok(()) => format!(
            "updating container {container} to {image} failed: {reason}; the old container runs again under its name"
        ),
        Err(e) => format!(
            "updating container {container} to {image} failed: {reason}; restoring the old container FAILED: {e}"
        ),
    }
}

impl UpdateError {
    fn docker(context: impl Into<String>) -> impl FnOnce(DockerError) -> UpdateError {
        let context = context.into();
        move |source| UpdateError::Docker { context, source }
    }

    /// Whether the Docker daemon itself did not answer.
    pub fn docker_unreachable(&self) -> bool {
        match self {
            UpdateError::Docker { source, .. } => source.is_unreachable(),
            UpdateError::Resolve(e) => e.docker_unreachable(),
            _ => false,
        }
    }
}

/// What a finished update reports.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum UpdateOutcome {
    /// The container runs the new image.
    Updated {
        /// autodok's answer, for clients that show it.
        message: String,
        container: String,
        old_image: String,
        old_image_id: String,
        new_image: String,
        new_image_id: String,
        old_container: String,
        new_container: String,
        #[serde(flatten)]
        placement: Placement,
        /// Set when the new container runs but the old one could not be removed.
        #[serde(skip_serializing_if = "Option::is_none")]
        warning: Option<String>,
        duration_ms: u128,
    },
    /// The container already runs that image (or that version): nothing was done.
    Unchanged {
        message: String,
        container: String,
        image: String,
        image_id: String,
    },
}

/// The companion: everything an update needs, passed in.
#[derive(Debug)]
pub struct Companion {
    settings: Arc<Settings>,
    engine: Arc<Engine>,
    registry: Registry,
    key: ApiKey,
    helpers: Helpers,
    /// This instance's own container id: it is never a target.
    self_id: Option<String>,
    /// Ids and names of the containers being updated by this instance.
    running: Mutex<HashSet<String>>,
    /// The swaps of every instance that shares the data directory, if there is one.
    swaps: Option<Arc<Swaps>>,
}

/// The container's name without Docker's leading slash.
fn name_of(container: &ContainerInspectResponse) -> String {
    container
        .name
        .as_deref()
        .unwrap_or_default()
        .trim_start_matches('/')
        .to_string()
}

fn short(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

impl Companion {
    pub fn new(
        settings: Arc<Settings>,
        engine: Arc<Engine>,
        registry: Registry,
        key: ApiKey,
        self_id: Option<String>,
        swaps: Option<Arc<Swaps>>,
    ) -> Companion {
        Companion {
            settings,
            engine,
            registry,
            key,
            helpers: Helpers::from_env(),
            self_id,
            running: Mutex::default(),
            swaps,
        }
    }

    /// Whether an `Authorization` header value carries the API key.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        self.key.admits(authorization)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `POST /update`: recreates `container` from `image`.
    #[tracing::instrument(skip(self))]
    pub async fn update(&self, container: &str, image: &str) -> Result<UpdateOutcome, UpdateError> {
        let image = ImageRef::parse(image)?;
        self.check_registry(image.registry_host())?;
        self.not_busy(container)?;
        let old = self.target(container).await?;
        let mut slot = self.take_slot(&old).await?;
        let old = self.still_running(&old).await?;
        let auth = self.credentials(image.registry_host()).await?;
        self.replace(old, image, auth, &mut slot).await
    }

    /// `POST /update/<container>/<req>`: recreates `container` from the
    /// highest tag of its own repository that matches `requirement`.
    #[tracing::instrument(skip(self, requirement), fields(requirement = %requirement))]
    pub async fn update_to(&self, container: &str, requirement: Requirement) -> Result<UpdateOutcome, UpdateError> {
        self.not_busy(container)?;
        let old = self.target(container).await?;
        let name = name_of(&old);
        let reference = old.config.as_ref().and_then(|c| c.image.clone()).unwrap_or_default();
        let current = ImageRef::parse(&reference).map_err(|e| UpdateError::NotATag {
            container: name.clone(),
            image: reference.clone(),
            reason: e.reason.to_string(),
        })?;
        if reference.starts_with("sha256:") {
            return Err(UpdateError::NotATag {
                container: name,
                image: reference,
                reason: "it is an image id".into(),
            });
        }
        let host = current.registry_host().to_string();
        self.check_registry(&host)?;
        let mut slot = self.take_slot(&old).await?;
        let old = self.still_running(&old).await?;
        let auth = self.credentials(&host).await?;
        let (image, version) = resolve::pick(&self.registry, &current, &requirement, auth.as_ref()).await?;
        if let (Some(version), Some(running)) = (version, self.running_version(&old, &current).await)
            && resolve::decide(&running, &version, &requirement)? == Go::AlreadyThere
        {
            return Ok(UpdateOutcome::Unchanged {
                message: format!("container '{name}' already runs version {running}"),
                container: name,
                image: reference,
                image_id: old.image.clone().unwrap_or_default(),
            });
        }
        self.replace(old, image, auth, &mut slot).await
    }

    async fn credentials(&self, host: &str) -> Result<Option<RegistryAuth>, UpdateError> {
        let found = credentials::for_registry(&self.settings.docker_config, host, &self.helpers)
            .await
            .map_err(|source| UpdateError::Credentials {
                registry: host.to_string(),
                source,
            })?;
        if let Some(auth) = &found {
            tracing::info!(registry = host, origin = %auth.origin, "using registry credentials");
        }
        Ok(found)
    }

    /// The version the container runs: its tag's, else its image's label.
    async fn running_version(&self, old: &ContainerInspectResponse, current: &ImageRef) -> Option<semver::Version> {
        if let Some(v) = version::tag_version(&current.tag) {
            return Some(v);
        }
        let image = self.engine.inspect_image(old.image.as_deref()?).await.ok()?;
        semver::Version::parse(version::version_label(&image)?).ok()
    }

    /// Pulls `image` and swaps the new container in for `old`.
    async fn replace(
        &self,
        old: ContainerInspectResponse,
        image: ImageRef,
        auth: Option<RegistryAuth>,
        slot: &mut Slot<'_>,
    ) -> Result<UpdateOutcome, UpdateError> {
        let started = Instant::now();
        let name = name_of(&old);
        let old_id = old.id.clone().unwrap_or_default();
        let old_image = old.config.as_ref().and_then(|c| c.image.clone()).unwrap_or_default();
        let old_image_id = old.image.clone().unwrap_or_default();

        tracing::info!(container = %name, image = %image, "pulling");
        let pulled = resolve::pull(&self.engine, &image, auth.as_ref().map(RegistryAuth::docker)).await?;
        let new_image_id = pulled.id.unwrap_or_default();
        if new_image_id == old_image_id {
            return Ok(UpdateOutcome::Unchanged {
                message: format!("container '{name}' already runs image '{image}'"),
                container: name,
                image: image.to_string(),
                image_id: new_image_id,
            });
        }

        let old_config = self
            .engine
            .inspect_image(&old_image_id)
            .await
            .ok()
            .and_then(|i| i.config);
        let old_labels = old.config.as_ref().and_then(|c| c.labels.clone()).unwrap_or_default();
        let overrides = Overrides {
            image: image.to_string(),
            // Compose compares this label with the image id behind the tag.
            labels: if old_labels.contains_key(COMPOSE_IMAGE) {
                vec![(COMPOSE_IMAGE.into(), new_image_id.clone())]
            } else {
                vec![]
            },
            ..Default::default()
        };
        let mut body = clone_body(&old, old_config.as_ref(), &overrides);
        clone::complete_clone(&mut body, &old);
        let later_networks = clone::split_networks(&mut body);
        let restart_policy = clone::defer_restart_policy(&mut body);
        let new = NewContainer {
            body,
            later_networks,
            restart_policy,
        };
        let placement = placement::placement(&old);
        if let (Placement::StopFirst(reason), true) = (&placement, placement::auto_removes(&old)) {
            return Err(UpdateError::AutoRemove {
                container: name,
                reason: reason.clone(),
            });
        }
        let aside = placement::aside_name(&name, &old_id);
        tracing::info!(container = %name, ?placement, "replacing");

        let mut swap = Swap {
            engine: &self.engine,
            name: &name,
            old_id: &old_id,
            aside: &aside,
            image: image.to_string(),
            deadline: self.settings.update_deadline(),
            settle: self.settings.update_settle(),
            bake: Duration::from_secs(self.settings.update_bake_secs),
            stopped_old: false,
            journal: slot.claim.as_ref().map(|claim| {
                (
                    claim,
                    SwapRecord {
                        container: name.clone(),
                        old_id: old_id.clone(),
                        aside: aside.clone(),
                        image: image.to_string(),
                        phase: Phase::Planned,
                        new_id: None,
                        stop_first: matches!(placement, Placement::StopFirst(_)),
                        restart_policy: new.restart_policy.clone(),
                        owner: self.self_id.clone(),
                    },
                )
            }),
        };
        let new_id = match swap.run(&old, new, &placement).await {
            Ok(id) => id,
            Err(SwapFailure { reason, new_id }) => {
                let log = match &new_id {
                    Some(id) => watch::log_tail(&self.engine, id).await,
                    None => String::new(),
                };
                let restored = swap.roll_back(new_id.as_deref()).await;
                match &restored {
                    Ok(()) => tracing::warn!(container = %name, %reason, "update failed; the old container runs again"),
                    Err(e) => {
                        tracing::error!(container = %name, %reason, error = %e, "update failed and the rollback too");
                        // Half-done: the next instance to start tries again.
                        if let Some(claim) = slot.claim.as_mut() {
                            claim.keep();
                        }
                    }
                }
                return Err(UpdateError::Failed {
                    container: name,
                    image: image.to_string(),
                    reason: Box::new(reason),
                    log,
                    restored,
                });
            }
        };

        let warning = swap.retire(&old).await.err();
        match &warning {
            Some(w) => tracing::warn!(container = %name, warning = %w, "the new container runs; the old one stays"),
            None => tracing::info!(container = %name, image = %image, new = %short(&new_id), "updated"),
        }
        Ok(UpdateOutcome::Updated {
            message: format!("Container '{name}' restarted with new image '{image}'"),
            container: name,
            old_image,
            old_image_id,
            new_image: image.to_string(),
            new_image_id,
            old_container: short(&old_id),
            new_container: short(&new_id),
            placement,
            warning,
            duration_ms: started.elapsed().as_millis(),
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_says_whether_the_old_container_runs_again() {
        let failed = |restored| UpdateError::Failed {
            container: "app".into(),
            image: "r:5000/app:2".into(),
            reason: Box::new(SwapError::NotUp(crate::recreate::watch::WaitError::Died(
                "it exited with code 3".into(),
            ))),
            log: String::new(),
            restored,
        };
        let restored = failed(Ok(()));
        let text = restored.to_string();
        assert!(
            text.contains("exited with code 3") && text.contains("old container runs again"),
            "{text}"
        );
        let broken = failed(Err("renaming: conflict".into()));
        assert!(
            broken
                .to_string()
                .contains("restoring the old container FAILED: renaming: conflict")
        );
    }

    #[test]
    fn the_outcome_names_both_images_and_the_placement() {
        let outcome = UpdateOutcome::Updated {
            message: "m".into(),
            container: "app".into(),
            old_image: "r/app:1".into(),
            old_image_id: "sha256:1".into(),
            new_image: "r/app:2".into(),
            new_image_id: "sha256:2".into(),
            old_container: "a".into(),
            new_container: "b".into(),
            placement: Placement::StopFirst("it publishes host port 80".into()),
            warning: None,
            duration_ms: 5,
        };
        let json = serde_json::to_value(&outcome).unwrap();
        assert_eq!(json["status"], "updated");
        assert_eq!(json["old_image"], "r/app:1");
        assert_eq!(json["new_image"], "r/app:2");
        assert_eq!(json["placement"], "stop_first");
        assert_eq!(json["reason"], "it publishes host port 80");
        assert!(json.get("warning").is_none());
    }
}
