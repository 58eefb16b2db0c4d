//! Companion mode: selfup recreates *another* container from a new image on
//! request, with the settings its operator gave it, and answers only once it
//! knows whether the new container came up. In the order an update runs:
//!
//! 1. [`auth`]: the request carries the API key (checked by the route).
//! 2. [`Companion::update`] / [`Companion::update_to`]: the image must come from
//!    an allowed registry, the container must exist, run and carry
//!    `selfup.enable=true`; one update per container at a time.
//! 3. [`credentials`]: the registry's credentials from a `config.json`, for the
//!    tag list and the pull.
//! 4. [`placement`]: the clone (the [`crate::recreate::clone`] rules plus what
//!    another container needs), and whether it can run beside the old one.
//! 5. The swap: the old container is renamed aside (and stopped first only if
//!    both cannot run at once), the new one is created under its name and
//!    started, and must stay up, or pass its HEALTHCHECK, within the deadline.
//!    Then the old one is removed; otherwise the new one is removed and the old
//!    one gets its name back and runs again.

pub mod auth;
pub mod credentials;
pub mod placement;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};
use serde::Serialize;
use tokio::time::{Instant, sleep};

use crate::config::Settings;
use crate::docker::{DockerError, Engine};
use crate::handover::COMPOSE_IMAGE;
use crate::image_ref::{ImageRef, ImageRefError};
use crate::recreate::clone::{Overrides, clone_body};
use crate::recreate::version::{self as target, Decision, Requirement, RequirementError};
use crate::registry::{Registry, RegistryError};
use auth::ApiKey;
use credentials::{CredentialsError, Helpers, RegistryAuth};
use placement::{Placement, Verdict};

/// How often a new container is looked at while it comes up.
const POLL: Duration = Duration::from_millis(250);
/// How many log lines of a failed new container the answer carries.
const LOG_LINES: usize = 20;

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
        placement::ENABLE_LABEL
    )]
    NotEnabled { container: String },
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error("container {container} is {state}, not running; start it first")]
    NotRunning { container: String, state: String },
    #[error("an update of container {container} is already running; try again when it is done")]
    Busy { container: String },
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
    #[error("{target} is lower than the running {running}; name it exactly (={target}) to roll back")]
    Lower {
        running: semver::Version,
        target: semver::Version,
    },
    #[error("no version in {repository} matches {requirement}")]
    NoMatch {
        requirement: String,
        repository: String,
        available: Vec<String>,
    },
    #[error("listing the tags of {repository}: {source}")]
    Registry { repository: String, source: RegistryError },
    #[error("credentials for {registry}: {source}")]
    Credentials { registry: String, source: CredentialsError },
    #[error("pulling {image}: {source}")]
    Pull { image: String, source: DockerError },
    #[error("{context}: {source}")]
    Docker { context: String, source: DockerError },
    /// The new container did not come up; `restored` says whether the old one runs again.
    #[error("{}", failed_message(container, image, reason, restored))]
    Failed {
        container: String,
        image: String,
        reason: String,
        log: String,
        restored: Result<(), String>,
    },
}

fn failed_message(container: &str, image: &str, reason: &str, restored: &Result<(), String>) -> String {
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
            UpdateError::Docker { source, .. } | UpdateError::Pull { source, .. } => source.is_unreachable(),
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
    pub settings: Arc<Settings>,
    pub engine: Arc<Engine>,
    pub registry: Registry,
    key: ApiKey,
    helpers: Helpers,
    /// This instance's own container id: it is never a target.
    self_id: Option<String>,
    /// Ids and names of the containers being updated: one update each at a time.
    running: Mutex<HashSet<String>>,
}

/// Holds a container's update slot; releasing it is dropping it, on every path.
struct Slot<'a> {
    companion: &'a Companion,
    keys: Vec<String>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut running = self.companion.running();
        for key in &self.keys {
            running.remove(key);
        }
    }
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
    ) -> Companion {
        Companion {
            settings,
            engine,
            registry,
            key,
            helpers: Helpers::from_env(),
            self_id,
            running: Mutex::default(),
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
        let _slot = self.take_slot(&old)?;
        let old = self.still_running(&old).await?;
        let auth = self.credentials(image.registry_host()).await?;
        self.replace(old, image, auth).await
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
        let _slot = self.take_slot(&old)?;
        let old = self.still_running(&old).await?;
        let auth = self.credentials(&host).await?;
        let registry = current
            .registry
            .clone()
            .unwrap_or_else(|| credentials::DOCKER_HUB.into());
        let tags = self
            .registry
            .tags(
                &registry,
                &current.path,
                auth.as_ref().and_then(RegistryAuth::basic).as_ref(),
            )
            .await
            .map_err(|source| UpdateError::Registry {
                repository: current.repository(),
                source,
            })?;
        let Some((tag, version)) = target::select(&requirement, &tags) else {
            return Err(UpdateError::NoMatch {
                requirement: requirement.to_string(),
                repository: current.repository(),
                available: target::available(&tags),
            });
        };
        let image = current.with_tag(tag);
        if let Some(running) = self.running_version(&old, &current).await {
            match target::decide(&running, &version, &requirement) {
                Decision::AlreadyThere => {
                    return Ok(UpdateOutcome::Unchanged {
                        message: format!("container '{name}' already runs version {running}"),
                        container: name,
                        image: reference,
                        image_id: old.image.clone().unwrap_or_default(),
                    });
                }
                Decision::RefuseLower => {
                    return Err(UpdateError::Lower {
                        running,
                        target: version,
                    });
                }
                Decision::Upgrade | Decision::Rollback => {}
            }
        }
        self.replace(old, image, auth).await
    }

    fn check_registry(&self, host: &str) -> Result<(), UpdateError> {
        let allowed = &self.settings.allowed_registries;
        if allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
            Ok(())
        } else {
            Err(UpdateError::RegistryNotAllowed {
                registry: host.to_string(),
                allowed: allowed.clone(),
            })
        }
    }

    /// The container a request names, if it may be updated now.
    async fn target(&self, container: &str) -> Result<ContainerInspectResponse, UpdateError> {
        if !placement::is_container_name(container) {
            return Err(UpdateError::BadContainerName(container.chars().take(128).collect()));
        }
        let old = self.engine.inspect_container(container).await.map_err(|e| match e {
            DockerError::NoSuchContainer(_) => UpdateError::NoSuchContainer(container.to_string()),
            other => UpdateError::docker(format!("inspecting container {container}"))(other),
        })?;
        let name = name_of(&old);
        if !placement::is_enabled(&old) {
            return Err(UpdateError::NotEnabled { container: name });
        }
        if old.id.is_some() && old.id == self.self_id {
            return Err(UpdateError::OwnContainer { container: name });
        }
        let state = old.state.clone().unwrap_or_default();
        if state.running != Some(true) || state.restarting == Some(true) {
            return Err(UpdateError::NotRunning {
                container: name,
                state: state.status.unwrap_or(ContainerStateStatusEnum::EMPTY).to_string(),
            });
        }
        Ok(old)
    }

    /// Refuses a request by the name of a container being updated before
    /// looking it up: mid-swap, the name may be nobody's, or the new container's.
    fn not_busy(&self, container: &str) -> Result<(), UpdateError> {
        if self.running().contains(container) {
            return Err(UpdateError::Busy {
                container: container.to_string(),
            });
        }
        Ok(())
    }

    /// Takes the container's update slot, by id and by name: a request by
    /// name during an update must not reach the new container either.
    fn take_slot(&self, old: &ContainerInspectResponse) -> Result<Slot<'_>, UpdateError> {
        let keys = vec![old.id.clone().unwrap_or_default(), name_of(old)];
        let mut running = self.running();
        if keys.iter().any(|k| running.contains(k)) {
            return Err(UpdateError::Busy {
                container: name_of(old),
            });
        }
        running.extend(keys.iter().cloned());
        Ok(Slot { companion: self, keys })
    }

    /// Inspects again under the slot: an update that just finished may have
    /// replaced what the first look saw.
    async fn still_running(&self, old: &ContainerInspectResponse) -> Result<ContainerInspectResponse, UpdateError> {
        let id = old.id.clone().unwrap_or_default();
        let fresh = self.target(&id).await?;
        if name_of(&fresh) != name_of(old) {
            return Err(UpdateError::Busy {
                container: name_of(old),
            });
        }
        Ok(fresh)
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
        if let Some(v) = target::tag_version(&current.tag) {
            return Some(v);
        }
        let image = self.engine.inspect_image(old.image.as_deref()?).await.ok()?;
        semver::Version::parse(target::version_label(&image)?).ok()
    }

    /// Pulls `image` and swaps the new container in for `old`.
    async fn replace(
        &self,
        old: ContainerInspectResponse,
        image: ImageRef,
        auth: Option<RegistryAuth>,
    ) -> Result<UpdateOutcome, UpdateError> {
        let started = Instant::now();
        let name = name_of(&old);
        let old_id = old.id.clone().unwrap_or_default();
        let old_image = old.config.as_ref().and_then(|c| c.image.clone()).unwrap_or_default();
        let old_image_id = old.image.clone().unwrap_or_default();

        tracing::info!(container = %name, image = %image, "pulling");
        self.engine
            .pull(&image, auth.as_ref().map(RegistryAuth::docker))
            .await
            .map_err(|source| UpdateError::Pull {
                image: image.to_string(),
                source,
            })?;
        let new_image_id = self
            .engine
            .inspect_image(&image.to_string())
            .await
            .map_err(UpdateError::docker(format!("inspecting the pulled image {image}")))?
            .id
            .unwrap_or_default();
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
        placement::complete_clone(&mut body, &old);
        let later_networks = placement::split_networks(&mut body);
        let restart_policy = placement::defer_restart_policy(&mut body);
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
            companion: self,
            name: &name,
            old_id: &old_id,
            aside: &aside,
            image: image.to_string(),
            stopped_old: false,
        };
        let new_id = match swap.run(&old, body, later_networks, restart_policy, &placement).await {
            Ok(id) => id,
            Err((reason, new_id)) => {
                let log = match &new_id {
                    Some(id) => self
                        .engine
                        .logs_tail(id, LOG_LINES)
                        .await
                        .unwrap_or_else(|e| format!("(no log: {e})")),
                    None => String::new(),
                };
                let restored = swap.roll_back(new_id.as_deref()).await;
                match &restored {
                    Ok(()) => tracing::warn!(container = %name, %reason, "update failed; the old container runs again"),
                    Err(e) => {
                        tracing::error!(container = %name, %reason, error = %e, "update failed and the rollback too")
                    }
                }
                return Err(UpdateError::Failed {
                    container: name,
                    image: image.to_string(),
                    reason,
                    log,
                    restored,
                });
            }
        };

        let warning = self.retire(&old, &aside).await.err();
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

    /// Stops (if still running) and removes the old container, keeping its volumes.
    async fn retire(&self, old: &ContainerInspectResponse, aside: &str) -> Result<(), String> {
        let id = old.id.clone().unwrap_or_default();
        match self.engine.stop_container(&id, placement::stop_timeout(old)).await {
            // --rm: Docker removed it on the stop.
            Ok(()) | Err(DockerError::NoSuchContainer(_)) => {}
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "stopping the old container failed; removing it by force")
            }
        }
        match self.engine.remove_container(&id, true).await {
            Ok(()) | Err(DockerError::NoSuchContainer(_)) => Ok(()),
            Err(e) => Err(format!("the old container was left as {aside}: {e}")),
        }
    }

    /// Watches a new container until it is up, fails, or the deadline passes.
    async fn watch(&self, id: &str) -> Result<(), String> {
        let started = Instant::now();
        let deadline = self.settings.update_deadline();
        let settle = self.settings.update_settle();
        loop {
            let waiting = match self.engine.inspect_container(id).await {
                Ok(c) => match placement::verdict(&c, started.elapsed(), settle) {
                    Verdict::Up => return Ok(()),
                    Verdict::Failed(reason) => return Err(reason),
                    Verdict::Waiting(what) => what,
                },
                Err(DockerError::NoSuchContainer(_)) => return Err("it was removed".into()),
                Err(e) => format!("inspecting it: {e}"),
            };
            if started.elapsed() >= deadline {
                return Err(format!("not up within {deadline:?} (waiting for {waiting})"));
            }
            sleep(POLL).await;
        }
    }
}

/// One swap of an old container for a new one, and how to undo it.
struct Swap<'a> {
    companion: &'a Companion,
    name: &'a str,
    old_id: &'a str,
    aside: &'a str,
    image: String,
    /// Whether the old container was stopped (stop-first), so a rollback starts it.
    stopped_old: bool,
}

impl Swap<'_> {
    fn engine(&self) -> &Engine {
        &self.companion.engine
    }

    /// Renames the old container aside, creates, connects and starts the new
    /// one under its name, and watches it. Fails with the reason and, once
    /// it exists, the new container's id.
    async fn run(
        &mut self,
        old: &ContainerInspectResponse,
        body: bollard::models::ContainerCreateBody,
        later_networks: Vec<(String, bollard::models::EndpointSettings)>,
        restart_policy: Option<bollard::models::RestartPolicy>,
        placement: &Placement,
    ) -> Result<String, (String, Option<String>)> {
        if let Placement::StopFirst(_) = placement {
            self.engine()
                .stop_container(self.old_id, placement::stop_timeout(old))
                .await
                .map_err(|e| (format!("stopping the old container: {e}"), None))?;
            self.stopped_old = true;
        }
        self.engine()
            .rename_container(self.old_id, self.aside)
            .await
            .map_err(|e| (format!("renaming the old container aside: {e}"), None))?;
        let new_id = self
            .engine()
            .create_container(self.name, body)
            .await
            .map_err(|e| (format!("creating the new container from {}: {e}", self.image), None))?;
        let fail = |reason: String| (reason, Some(new_id.clone()));
        for (network, endpoint) in later_networks {
            self.engine()
                .connect_network(&network, &new_id, endpoint)
                .await
                .map_err(|e| fail(e.to_string()))?;
        }
        self.engine()
            .start_container(&new_id)
            .await
            .map_err(|e| fail(format!("starting it: {e}")))?;
        self.companion.watch(&new_id).await.map_err(fail)?;
        if let Some(policy) = restart_policy {
            self.engine()
                .set_restart_policy(&new_id, policy)
                .await
                .map_err(|e| fail(format!("it is up, but {e}")))?;
        }
        Ok(new_id)
    }

    /// Removes the new container, gives the old one its name back, and starts it if it was stopped.
    async fn roll_back(&self, new_id: Option<&str>) -> Result<(), String> {
        if let Some(id) = new_id {
            match self.engine().remove_container(id, true).await {
                Ok(()) | Err(DockerError::NoSuchContainer(_)) => {}
                Err(e) => return Err(format!("removing the new container: {e}")),
            }
        }
        let old = self
            .engine()
            .inspect_container(self.old_id)
            .await
            .map_err(|e| format!("inspecting the old container: {e}"))?;
        if name_of(&old) != self.name {
            self.engine()
                .rename_container(self.old_id, self.name)
                .await
                .map_err(|e| format!("renaming the old container back to {}: {e}", self.name))?;
        }
        let running = old.state.as_ref().and_then(|s| s.running) == Some(true);
        if self.stopped_old || !running {
            self.engine()
                .start_container(self.old_id)
                .await
                .map_err(|e| format!("starting the old container again: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_says_whether_the_old_container_runs_again() {
        let restored = UpdateError::Failed {
            container: "app".into(),
            image: "r:5000/app:2".into(),
            reason: "it exited with code 3".into(),
            log: String::new(),
            restored: Ok(()),
        };
        let text = restored.to_string();
        assert!(
            text.contains("exited with code 3") && text.contains("old container runs again"),
            "{text}"
        );
        let broken = UpdateError::Failed {
            container: "app".into(),
            image: "r:5000/app:2".into(),
            reason: "it exited with code 3".into(),
            log: String::new(),
            restored: Err("renaming: conflict".into()),
        };
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
