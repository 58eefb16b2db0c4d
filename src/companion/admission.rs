//! Admission: which container a request may update, and when. The container
//! must exist, run and carry `selfup.enable=true`; it is not this companion;
//! the image comes from an allowed registry and from the container's own
//! repository (or one its `selfup.repositories` label lists); and one update
//! per container runs at a time, held by a slot that is released on every
//! path.

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};

use super::Companion;
use super::container::{REPOSITORIES_LABEL, is_enabled, labels, name_of};
use super::outcome::UpdateError;
use crate::docker::DockerError;
use crate::image_ref::ImageRef;
use crate::recreate::journal::{Claim, Entry};

/// Whether a string can name a container (as Docker allows names, or an id):
/// anything else never reaches the Engine API's URL paths.
pub fn is_container_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 255
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(b))
}

/// A repository as one name, whatever way a reference spells it: the
/// registry's host in lower case, Docker Hub under one name, and its
/// official images under `library/`; any tag or digest left off. `None`
/// when `reference` names no repository (an image id, or not a reference).
pub fn canonical_repository(reference: &str) -> Option<String> {
    let reference = reference.trim();
    if reference.starts_with("sha256:") {
        return None;
    }
    // A pin by digest names its repository all the same.
    let named = reference.split_once('@').map_or(reference, |(name, _)| name);
    let image = ImageRef::parse(named).ok()?;
    let host = match image.registry_host().to_ascii_lowercase().as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".to_string(),
        host => host.to_string(),
    };
    let path = match (host.as_str(), image.path.contains('/')) {
        ("docker.io", false) => format!("library/{}", image.path),
        _ => image.path,
    };
    Some(format!("{host}/{path}"))
}

/// The repositories a container may be moved to: the one it runs
/// (`current`, its `Config.Image`), and those its `selfup.repositories`
/// label lists. An entry that is not a repository is left out.
pub fn allowed_repositories(current: &str, label: Option<&str>) -> Vec<String> {
    let mut allowed: Vec<String> = canonical_repository(current).into_iter().collect();
    for entry in label
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        match canonical_repository(entry) {
            Some(repository) if !allowed.contains(&repository) => allowed.push(repository),
            Some(_) => {}
            None => tracing::warn!(entry, label = REPOSITORIES_LABEL, "not a repository; ignored"),
        }
    }
    allowed
}

/// Whether an update to `asked` stays in its lane: the tag (or digest) of
/// an allowed repository changes, the repository does not. `Err` carries
/// the repository asked for, as one name.
pub fn in_lane(asked: &ImageRef, allowed: &[String]) -> Result<(), String> {
    let asked = canonical_repository(&asked.repository()).unwrap_or_else(|| asked.repository());
    match allowed.contains(&asked) {
        true => Ok(()),
        false => Err(asked),
    }
}

/// Holds a container's update slot; releasing it is dropping it, on every path.
pub(super) struct Slot<'a> {
    companion: &'a Companion,
    keys: Vec<String>,
    /// The shared hold that keeps a self-upgrade waiting, and the claim
    /// across instances, with a data directory.
    _entry: Option<Entry>,
    pub(super) claim: Option<Claim>,
}

impl Slot<'_> {
    /// Passes an update's error on; when even its rollback failed, the
    /// swap is half-done and its claim stays for the next instance to start.
    pub(super) fn failed(&mut self, error: UpdateError) -> UpdateError {
        if let UpdateError::Failed { restored: Err(_), .. } = &error
            && let Some(claim) = self.claim.as_mut()
        {
            claim.keep();
        }
        error
    }
}

impl Slot<'_> {
    /// The holds across instances (the self-upgrade's wait, the swap's
    /// claim and journal), taken out for work that outlives the slot: the
    /// container's name is free for this instance's next request, not for
    /// another instance or a self-upgrade until they are dropped.
    pub(super) fn take_holds(&mut self) -> (Option<Entry>, Option<Claim>) {
        (self._entry.take(), self.claim.take())
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut running = self.companion.running();
        for key in &self.keys {
            running.remove(key);
        }
    }
}

impl Companion {
    /// Refuses an image from a registry that is not allowed.
    pub(super) fn check_registry(&self, host: &str) -> Result<(), UpdateError> {
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

    /// Refuses an image of another repository than `old` runs, unless its
    /// `selfup.repositories` label lists that repository.
    pub(super) fn check_lane(&self, old: &ContainerInspectResponse, asked: &ImageRef) -> Result<(), UpdateError> {
        let current = old.config.as_ref().and_then(|c| c.image.clone()).unwrap_or_default();
        let labels = labels(old);
        let allowed = allowed_repositories(&current, labels.get(REPOSITORIES_LABEL).map(String::as_str));
        in_lane(asked, &allowed).map_err(|asked| UpdateError::RepositoryNotAllowed {
            container: name_of(old),
            asked,
            allowed,
        })
    }

    /// The container a request names, if it may be updated now.
    pub(super) async fn target(&self, container: &str) -> Result<ContainerInspectResponse, UpdateError> {
        if !is_container_name(container) {
            return Err(UpdateError::BadContainerName(container.chars().take(128).collect()));
        }
        let old = self.engine.inspect_container(container).await.map_err(|e| match e {
            DockerError::NoSuchContainer(_) => UpdateError::NoSuchContainer(container.to_string()),
            other => UpdateError::docker(format!("inspecting container {container}"))(other),
        })?;
        let name = name_of(&old);
        if !is_enabled(&old) {
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
    pub(super) fn not_busy(&self, container: &str) -> Result<(), UpdateError> {
        if self.running().contains(container) {
            return Err(UpdateError::Busy {
                container: container.to_string(),
            });
        }
        // Another instance's swap, under any name or id it has meanwhile.
        if let Some(other) = self
            .swaps
            .as_ref()
            .and_then(|swaps| swaps.running().into_iter().find(|r| r.concerns(container)))
        {
            return Err(UpdateError::Busy {
                container: other.container,
            });
        }
        Ok(())
    }

    /// Takes the container's update slot, by id and by name: a request by
    /// name during an update must not reach the new container either.
    /// With a data directory, the slot also holds the container's claim
    /// across instances, and keeps a self-upgrade waiting.
    pub(super) async fn take_slot(&self, old: &ContainerInspectResponse) -> Result<Slot<'_>, UpdateError> {
        let name = name_of(old);
        let keys = vec![old.id.clone().unwrap_or_default(), name.clone()];
        {
            let mut running = self.running();
            if keys.iter().any(|k| running.contains(k)) {
                return Err(UpdateError::Busy { container: name });
            }
            running.extend(keys.iter().cloned());
        }
        let mut slot = Slot {
            companion: self,
            keys,
            _entry: None,
            claim: None,
        };
        if let Some(swaps) = &self.swaps {
            slot._entry = Some(
                swaps
                    .enter()
                    .map_err(UpdateError::Lock)?
                    .ok_or(UpdateError::UpgradeRunning)?,
            );
            slot.claim = Some(
                swaps
                    .claim(&name)
                    .await
                    .map_err(UpdateError::Lock)?
                    .ok_or(UpdateError::Busy { container: name })?,
            );
        }
        Ok(slot)
    }

    /// Inspects again under the slot: an update that just finished may have
    /// replaced what the first look saw.
    pub(super) async fn still_running(
        &self,
        old: &ContainerInspectResponse,
    ) -> Result<ContainerInspectResponse, UpdateError> {
        let id = old.id.clone().unwrap_or_default();
        let fresh = self.target(&id).await?;
        if name_of(&fresh) != name_of(old) {
            return Err(UpdateError::Busy {
                container: name_of(old),
            });
        }
        Ok(fresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn container_names_are_what_docker_allows_and_nothing_that_escapes_a_url_path() {
        for good in ["app", "my_app-1.2", ID, "A1"] {
            assert!(is_container_name(good), "{good}");
        }
        for bad in ["", "/app", "../images/x", "a/b", "a?b", "-app", ".app", "a b", "a%2Fb"] {
            assert!(!is_container_name(bad), "{bad}");
        }
    }

    fn asked(reference: &str) -> ImageRef {
        ImageRef::parse(reference).unwrap()
    }

    #[test]
    fn an_update_may_change_the_tag_of_the_containers_repository_only() {
        let allowed = allowed_repositories("localhost:5000/app:1.0.0", None);
        assert_eq!(allowed, vec!["localhost:5000/app".to_string()]);
        for same in [
            "localhost:5000/app:2.0.0",
            "localhost:5000/app",
            "LOCALHOST:5000/app:1.0.0",
        ] {
            assert_eq!(in_lane(&asked(same), &allowed), Ok(()), "{same}");
        }
        for (other, named) in [
            ("localhost:5000/other:1", "localhost:5000/other"),
            ("localhost:5000/app/sub:1", "localhost:5000/app/sub"),
            ("localhost:5001/app:1", "localhost:5001/app"),
            ("app:1", "docker.io/library/app"),
        ] {
            assert_eq!(in_lane(&asked(other), &allowed), Err(named.to_string()), "{other}");
        }
        // A container pinned by digest keeps its repository.
        let pinned = allowed_repositories("localhost:5000/app@sha256:0123", None);
        assert_eq!(pinned, vec!["localhost:5000/app".to_string()]);
    }

    #[test]
    fn docker_hub_names_are_one_repository_however_they_are_spelled() {
        let allowed = allowed_repositories("nginx:1.25", None);
        assert_eq!(allowed, vec!["docker.io/library/nginx".to_string()]);
        for same in ["nginx:1.27", "docker.io/library/nginx:1", "index.docker.io/nginx:1"] {
            assert_eq!(in_lane(&asked(same), &allowed), Ok(()), "{same}");
        }
        assert!(in_lane(&asked("someone/nginx:1"), &allowed).is_err());
    }

    #[test]
    fn the_label_lists_the_other_repositories_a_container_may_move_to() {
        let label = " localhost:5000/app-next , ghcr.io/org/app:ignored-tag,,not a repo, localhost:5000/app";
        let allowed = allowed_repositories("localhost:5000/app:1", Some(label));
        assert_eq!(
            allowed,
            vec![
                "localhost:5000/app".to_string(),
                "localhost:5000/app-next".to_string(),
                "ghcr.io/org/app".to_string(),
            ]
        );
        assert_eq!(in_lane(&asked("localhost:5000/app-next:3"), &allowed), Ok(()));
        assert_eq!(in_lane(&asked("ghcr.io/org/app:2"), &allowed), Ok(()));
        assert!(in_lane(&asked("ghcr.io/org/other:2"), &allowed).is_err());
    }

    #[test]
    fn a_container_run_from_an_image_id_may_move_only_where_its_label_says() {
        assert!(allowed_repositories("sha256:0123456789abcdef", None).is_empty());
        assert!(allowed_repositories("", None).is_empty());
        let allowed = allowed_repositories("sha256:0123456789abcdef", Some("localhost:5000/app"));
        assert_eq!(in_lane(&asked("localhost:5000/app:2"), &allowed), Ok(()));
        assert_eq!(
            in_lane(&asked("localhost:5000/x:2"), &[]),
            Err("localhost:5000/x".to_string())
        );
    }
}
