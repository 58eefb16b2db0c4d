//! What a companion update answers: the outcome of one that ran, why one
//! did not happen or did not stick, and what the registry offers a watched
//! container.

use serde::Serialize;

use super::blue_green::{AppHandover, PORT_LABEL};
use super::container::{ENABLE_LABEL, REPOSITORIES_LABEL};
use super::placement::Placement;
use super::swap::SwapError;
use crate::docker::DockerError;
use crate::events::UpdateEnd;
use crate::image_ref::ImageRefError;
use crate::recreate::resolve::ResolveError;
use crate::registry::credentials::CredentialsError;
use crate::version::RequirementError;

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
        ENABLE_LABEL
    )]
    NotEnabled { container: String },
    /// The image asked for is of another repository than the container's,
    /// and its `selfup.repositories` label does not list it: the key may
    /// change a container's tag, not what it runs.
    #[error(
        "container {container} may be updated only within {}: {asked} is another repository; list it in the container's {} label to allow it",
        allowed.join(", "),
        REPOSITORIES_LABEL
    )]
    RepositoryNotAllowed {
        container: String,
        asked: String,
        allowed: Vec<String>,
    },
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
    /// A blue-green app whose successor could not run beside it.
    #[error(
        "container {container} is handed over blue-green ({}), but its successor cannot run beside it: {reason}; nothing was stopped",
        PORT_LABEL
    )]
    NotBeside { container: String, reason: String },
    /// The app's traffic is paused (`POST /update/<container>/pause`).
    #[error("the traffic of container {container} is paused: POST /update/{container}/resume first")]
    Paused { container: String },
    /// The blue-green labels do not say how to reach the app.
    #[error("container {container} cannot be handed over blue-green: {reason}")]
    BadAppLabels { container: String, reason: String },
    /// The `selfup.signing-key` label names no key.
    #[error("container {container}: {reason}")]
    BadKeyLabel { container: String, reason: String },
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
    pub(super) fn docker(context: impl Into<String>) -> impl FnOnce(DockerError) -> UpdateError {
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

/// The old container, as an update's answer names it: its short id once it
/// is removed, or, for a blue-green app whose answer goes at the switch, the
/// id and that its stop goes on (`update_step` events say when it is done).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum OldContainer {
    Removed(String),
    Stopping { id: String, stopping: bool },
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
        old_container: OldContainer,
        new_container: String,
        #[serde(flatten)]
        placement: Placement,
        /// Set when the new container runs but the old one could not be removed.
        #[serde(skip_serializing_if = "Option::is_none")]
        warning: Option<String>,
        /// For a blue-green app: the switch of its socket and the drain.
        #[serde(skip_serializing_if = "Option::is_none")]
        handover: Option<Box<AppHandover>>,
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

/// How a finished update is counted and named in its `update_finished`
/// event, with its error: `updated`, `unchanged`, `rolled_back` (the new
/// container failed and the old one runs again) or `failed`.
pub fn outcome_of(result: &Result<UpdateOutcome, UpdateError>) -> (UpdateEnd, Option<String>) {
    match result {
        Ok(UpdateOutcome::Updated { .. }) => (UpdateEnd::Updated, None),
        Ok(UpdateOutcome::Unchanged { .. }) => (UpdateEnd::Unchanged, None),
        Err(e @ UpdateError::Failed { restored: Ok(()), .. }) => (UpdateEnd::RolledBack, Some(e.to_string())),
        Err(e) => (UpdateEnd::Failed, Some(e.to_string())),
    }
}

/// What the registry offers a watched container, beside what it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    /// The container's name.
    pub container: String,
    /// The version it runs: its tag's, else its image's label, if either says.
    pub running: Option<semver::Version>,
    /// The tag the requirement picks.
    pub image: String,
    /// That tag's version: its name's for a semver requirement (as
    /// `/update/<container>/<req>` reads it), its image's label for `latest`.
    pub version: Option<semver::Version>,
    /// The registry's digest of the tag.
    pub digest: String,
    /// When its image was built, seconds since the epoch, if its config says.
    pub created: Option<u64>,
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
            old_container: OldContainer::Removed("a".into()),
            new_container: "b".into(),
            placement: Placement::StopFirst("it publishes host port 80".into()),
            warning: None,
            handover: None,
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
