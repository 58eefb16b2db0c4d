//! Admission: which container a request may update, and when. The container
//! must exist, run and carry `selfup.enable=true`; it is not this companion;
//! the image comes from an allowed registry; and one update per container
//! runs at a time, held by a slot that is released on every path.

use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};

use super::Companion;
use super::container::{is_enabled, name_of};
use super::outcome::UpdateError;
use crate::docker::DockerError;
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
}
