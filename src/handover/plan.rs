//! What an upgrade would do, decided without doing it: the dry run of
//! `/upgrade?dry_run=true`, and the watch policy's look at the registry.
//!
//! The same requirement, the same tag selection and the same decision as
//! [`super::elder`], but the image is read from the registry (its manifest
//! and config, [`crate::registry::image`]) rather than pulled, and the
//! single-flight lock is only looked at, never taken.

use semver::Version;

use super::{Orchestrator, Target, UpgradeError};
use crate::image_ref::ImageRef;
use crate::recreate::resolve::{self, Go, ResolveError};
use crate::registry::image::RemoteImage;
use crate::version::Requirement;

/// What an upgrade to a target would do.
#[derive(Debug)]
pub struct Plan {
    /// What was asked for: `latest`, `2`, `=1.4.0`, `rollback`.
    pub requirement: String,
    /// The tag the requirement picks, or the previous version's image.
    pub image: Option<String>,
    /// The version the image's label says.
    pub version: Option<Version>,
    /// The registry's digest of the tag (the local image id for a rollback).
    pub digest: Option<String>,
    /// When the image was built, seconds since the epoch.
    pub created: Option<u64>,
    /// The port the live instance serves on, and the successor's.
    pub ports: (u16, u16),
    pub decision: PlannedDecision,
}

/// The decision a plan comes to.
#[derive(Debug)]
pub enum PlannedDecision {
    /// A successor of a higher version would be started.
    Upgrade,
    /// A successor of a lower version, named exactly, would be started.
    Rollback,
    /// The target is what runs.
    NoOp,
    /// The request would be refused, or fail before a successor is started.
    Refused(UpgradeError),
}

impl PlannedDecision {
    /// How it reads in a dry run's answer.
    pub fn name(&self) -> &'static str {
        match self {
            PlannedDecision::Upgrade => "upgrade",
            PlannedDecision::Rollback => "rollback",
            PlannedDecision::NoOp => "no-op",
            PlannedDecision::Refused(_) => "refused",
        }
    }
}

impl Orchestrator {
    /// Decides what an upgrade to `target` would do, pulling nothing and
    /// starting nothing.
    pub async fn plan(&self, target: &Target) -> Plan {
        let port = self.settings.port;
        let mut plan = Plan {
            requirement: target.to_string(),
            image: None,
            version: None,
            digest: None,
            created: None,
            ports: (port, self.settings.other_port(port)),
            decision: PlannedDecision::NoOp,
        };
        plan.decision = match self.find(target, &mut plan).await {
            Ok(go) => match self.busy() {
                Some(refused) if go != Go::AlreadyThere => PlannedDecision::Refused(refused),
                _ => match go {
                    Go::Upgrade => PlannedDecision::Upgrade,
                    Go::Rollback => PlannedDecision::Rollback,
                    Go::AlreadyThere => PlannedDecision::NoOp,
                },
            },
            Err(refused) => PlannedDecision::Refused(refused),
        };
        plan
    }

    /// Fills in what the target resolves to, and decides.
    async fn find(&self, target: &Target, plan: &mut Plan) -> Result<Go, UpgradeError> {
        let (image, remote, requirement) = match target {
            Target::Registry(requirement) => {
                let (image, remote) = self.remote(requirement).await?;
                (image.to_string(), remote, requirement.clone())
            }
            Target::Previous => {
                if let super::Backend::Swarm(service) = self.backend().await {
                    // Swarm's rollback: to the spec before the last update.
                    let (image, version) = service.previous(&self.deps).await?.ok_or(UpgradeError::NoPrevious)?;
                    let version = Version::parse(&version).map_err(|_| UpgradeError::NoPrevious)?;
                    plan.image = Some(image);
                    plan.version = Some(version.clone());
                    return Ok(resolve::decide(
                        &self.version,
                        &version,
                        &Requirement::Exact(version.clone()),
                    )?);
                }
                let me = self.self_id.clone().ok_or(UpgradeError::NotInContainer)?;
                let previous = self.previous(&me).await?;
                plan.image = Some(previous.image_ref.clone());
                plan.digest = Some(previous.image.clone());
                plan.version = Some(previous.version.clone());
                let requirement = Requirement::Exact(previous.version.clone());
                return Ok(resolve::decide(&self.version, &previous.version, &requirement)?);
            }
        };
        plan.image = Some(image.clone());
        plan.digest = Some(remote.digest.clone());
        plan.created = remote.created;
        let version = remote
            .version
            .as_deref()
            .and_then(|v| Version::parse(v).ok())
            .ok_or_else(|| ResolveError::NoVersion {
                image: image.clone(),
                found: remote.version.clone(),
            })?;
        plan.version = Some(version.clone());
        self.refuse_rejected(&version, Some(&remote.digest), &requirement)?;
        if !requirement.admits(&version) {
            return Err(ResolveError::LabelMismatch {
                image,
                label: version,
                requirement: requirement.to_string(),
            }
            .into());
        }
        let go = resolve::decide(&self.version, &version, &requirement)?;
        if go != Go::AlreadyThere {
            // What the upgrade would refuse before it starts anything.
            self.signed(&remote.digest).await?;
        }
        Ok(go)
    }

    /// The tag `requirement` picks in this service's repository, and what the
    /// registry says of its image.
    pub async fn remote(&self, requirement: &Requirement) -> Result<(ImageRef, RemoteImage), UpgradeError> {
        let auth = self.registry_auth().await?;
        let repository =
            ImageRef::parse(&self.settings.image_ref("latest")).map_err(|e| UpgradeError::Internal(e.to_string()))?;
        let (image, _, remote) = resolve::pick_remote(&self.registry, &repository, requirement, auth.as_ref()).await?;
        Ok((image, remote))
    }

    /// Whether the image `digest` of this service's repository is signed
    /// as `verify` asks, read from the registry without pulling it: the
    /// watch asks before it goes to a version, so a tag pushed a moment
    /// before its signature waits for it rather than failing.
    pub async fn signed(&self, digest: &str) -> Result<(), UpgradeError> {
        let auth = self.registry_auth().await?;
        let repository =
            ImageRef::parse(&self.settings.image_ref("latest")).map_err(|e| UpgradeError::Internal(e.to_string()))?;
        let policy = self.settings.signature_policy();
        resolve::check_signed(&self.registry, &policy, None, &repository, Some(digest), auth.as_ref()).await?;
        Ok(())
    }

    /// Why an upgrade could not start now: one running, or a takeover.
    fn busy(&self) -> Option<UpgradeError> {
        let status = self.shared.status();
        if let Some(bake) = &status.bake {
            return Some(UpgradeError::Baking {
                to: bake.to.clone(),
                left_secs: bake.ends.saturating_duration_since(std::time::Instant::now()).as_secs(),
            });
        }
        if let Some(running) = &status.upgrade {
            return Some(UpgradeError::InProgress(running.clone()));
        }
        match status.takeover {
            crate::state::TakeoverPhase::WaitingForGo | crate::state::TakeoverPhase::Running { .. } => {
                Some(UpgradeError::TakeoverUnderway(status.takeover.clone()))
            }
            _ if self.shared.lingering.load(std::sync::atomic::Ordering::Relaxed) => Some(UpgradeError::HandedOver),
            _ => None,
        }
    }
}
