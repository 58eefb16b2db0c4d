//! Companion containers with a watch policy of their own: the label
//! `selfup.watch` (a requirement in `/update/<container>/<req>`'s syntax, or
//! `latest`) on a container that companion mode may update.
//!
//! The live instance in companion mode looks every `watch_interval_secs`,
//! and at once when the registry hook says a tag of a repository was pushed
//! (then only at the containers that run an image of it). For each labelled
//! running container, the policy picks a tag as `/update/<container>/<req>`
//! would, under the same admission rules (`selfup.enable=true`, an allowed
//! registry, not this companion), the registry says what that image is, and
//! [`super::judge`] decides as it does for the self-upgrade: never down, a
//! pre-release only when named, not an image that failed before in that
//! container, not before `min_image_age_secs`. In `apply` mode the update
//! then runs through [`Companion::update_to`], with the same per-container
//! lock, events, metrics and notification as a request's; in `notify` mode it
//! is only reported, once per container and image.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::models::ContainerSummary;
use semver::Version;

use super::failed::FailedTargets;
use super::{COOLDOWN_RECHECK, Candidate, QUICK_RETRIES, QUICK_RETRY, Verdict, judge, policy};
use crate::companion::{Companion, Offer, UpdateError, UpdateOutcome};
use crate::config::WatchMode;
use crate::image_ref::ImageRef;
use crate::state::{Shared, TakeoverPhase};
use crate::version::Requirement;

/// The label that gives a companion container its watch policy.
pub const WATCH_LABEL: &str = "selfup.watch";

/// The watch of companion containers in one instance.
pub struct ContainerWatch {
    companion: Arc<Companion>,
    shared: Arc<Shared>,
    failed: FailedTargets,
    /// The (container, digest) pairs already reported in `notify` mode.
    announced: Mutex<HashSet<(String, String)>>,
    /// The last problem logged for each container, so that a label that
    /// does not parse, or a container that may not be updated, is said once
    /// and not at every turn.
    said: Mutex<HashMap<String, String>>,
    /// Quick looks left since the last registry notification.
    quick: AtomicU32,
}

/// What one turn found: how long to wait before the next, and whether a
/// container the turn looked at had no image to offer yet.
struct Turn {
    wait: Duration,
    missing: bool,
}

impl ContainerWatch {
    /// The container watch of a companion; its failed targets are kept in
    /// the data directory beside the self-upgrade's.
    pub fn new(companion: Arc<Companion>, shared: Arc<Shared>) -> ContainerWatch {
        let failed = FailedTargets::open_for_containers(&companion.settings().data_dir);
        ContainerWatch {
            companion,
            shared,
            failed,
            announced: Mutex::default(),
            said: Mutex::default(),
            quick: AtomicU32::new(0),
        }
    }

    /// Looks now, then every interval or when the registry hook wakes it,
    /// until this instance is asked to stop.
    pub async fn run(self) {
        let interval = self.companion.settings().watch_interval();
        tracing::info!(label = WATCH_LABEL, interval_secs = interval.as_secs(), mode = ?self.companion.settings().watch_mode, "watching labelled containers");
        let mut shutdown = self.shared.shutdown.subscribe();
        // After a registry notification: only the containers of these repositories.
        let mut focus: Option<HashSet<String>> = None;
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let wait = match self.is_live() {
                true => {
                    let turn = self.check(focus.as_ref()).await;
                    let quick = self.quick.load(Ordering::Relaxed);
                    if focus.is_some() && turn.missing && quick > 0 {
                        // The registry notifies a moment before the tag resolves.
                        self.quick.store(quick - 1, Ordering::Relaxed);
                        QUICK_RETRY
                    } else {
                        focus = None;
                        turn.wait
                    }
                }
                false => interval,
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shared.check_containers.notified() => {
                    let pushed = std::mem::take(&mut *self.shared.pushed.lock().unwrap_or_else(|p| p.into_inner()));
                    tracing::debug!(?pushed, "container watch: woken by the registry hook");
                    focus.get_or_insert_with(HashSet::new).extend(pushed);
                    self.quick.store(QUICK_RETRIES, Ordering::Relaxed);
                }
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!("container watch: stopped");
    }

    /// Whether this instance is the live one and no self-upgrade runs (which
    /// refuses companion updates until it is over).
    fn is_live(&self) -> bool {
        let status = self.shared.status();
        status.upgrade.is_none() && matches!(status.takeover, TakeoverPhase::Idle | TakeoverPhase::Done)
    }

    /// Says `message` about `container` unless it was the last thing said about it.
    fn say_once(&self, container: &str, message: String) {
        let mut said = self.said.lock().unwrap_or_else(|p| p.into_inner());
        if said.get(container) != Some(&message) {
            tracing::warn!(container, "container watch: {message}");
            said.insert(container.to_string(), message);
        }
    }

    fn all_is_well(&self, container: &str) {
        self.said.lock().unwrap_or_else(|p| p.into_inner()).remove(container);
    }

    /// One look at every labelled container (or at those `focus` names the
    /// repository of), and what follows.
    async fn check(&self, focus: Option<&HashSet<String>>) -> Turn {
        let interval = self.companion.settings().watch_interval();
        let mut turn = Turn {
            wait: interval,
            missing: false,
        };
        let containers = match self.companion.engine().list_running_with_label(WATCH_LABEL).await {
            Ok(containers) => containers,
            Err(e) => {
                tracing::warn!(error = %e, "container watch: cannot list the labelled containers");
                self.shared.metrics.watch_checked(false);
                return turn;
            }
        };
        // The turn worked when every labelled container's offer was answered
        // by Docker and the registry; a label or a container the companion
        // refuses is the operator's to fix, not a failed check.
        let mut worked = true;
        for summary in containers {
            let Some((name, text)) = labelled(&summary) else {
                continue;
            };
            if let Some(focus) = focus
                && !repository_of(&summary).is_some_and(|r| focus.contains(&r))
            {
                continue;
            }
            let requirement = match policy(&text) {
                Ok(requirement) => requirement,
                Err(e) => {
                    self.say_once(&name, format!("{WATCH_LABEL}={text:?} is not a policy: {e}, or latest"));
                    continue;
                }
            };
            match self.companion.offer(&name, &requirement).await {
                Ok(offer) => {
                    if let Some(wait) = self.consider(&requirement, offer).await {
                        turn.wait = turn.wait.min(wait);
                    }
                }
                Err(e) => {
                    // The registry has no image for it (yet): worth a quick look again.
                    turn.missing |= matches!(e, UpdateError::Resolve(_));
                    worked &= !matches!(
                        e,
                        UpdateError::Resolve(_) | UpdateError::Credentials { .. } | UpdateError::Docker { .. }
                    );
                    self.say_once(&name, format!("not watched now: {e}"));
                }
            }
        }
        self.shared.metrics.watch_checked(worked);
        turn
    }

    /// Judges what `offer` holds for its container, and acts on it; returns
    /// how soon to look again when the cooldown holds it back.
    async fn consider(&self, requirement: &Requirement, offer: Offer) -> Option<Duration> {
        let name = offer.container.clone();
        let Some(running) = offer.running.clone() else {
            self.say_once(
                &name,
                "the version it runs is unknown (its tag is not semver and its image has no version label)".into(),
            );
            return None;
        };
        let Some(version) = offer.version.clone() else {
            self.say_once(&name, format!("{} has no semver version label; ignored", offer.image));
            return None;
        };
        self.all_is_well(&name);
        let settings = self.companion.settings();
        let candidate = Candidate {
            version,
            digest: offer.digest.clone(),
            created: offer.created,
        };
        let verdict = judge(
            &running,
            &candidate,
            requirement,
            settings.min_image_age_secs,
            crate::state::now_secs(),
            |digest| self.failed.contains_in(Some(&name), digest),
        );
        let to = candidate.version.to_string();
        match verdict {
            Verdict::Current => tracing::debug!(container = %name, %to, "container watch: up to date"),
            Verdict::PreRelease => {
                tracing::info!(container = %name, %to, "container watch: a pre-release the policy does not name; ignored")
            }
            Verdict::FailedBefore => {
                tracing::info!(container = %name, %to, digest = %candidate.digest, "container watch: this image failed before in this container; waiting for a newer one")
            }
            Verdict::AgeUnknown => {
                tracing::warn!(container = %name, %to, "container watch: the image has no creation time, so the cooldown cannot pass; ignored")
            }
            Verdict::TooYoung { wait_secs } => {
                tracing::info!(container = %name, %to, wait_secs, min_age = settings.min_image_age_secs, "container watch: held back by the cooldown");
                return Some(
                    Duration::from_secs(wait_secs)
                        .max(Duration::from_secs(1))
                        .min(COOLDOWN_RECHECK),
                );
            }
            Verdict::Upgrade => match settings.watch_mode {
                WatchMode::Notify => self.announce(requirement, &offer, &running, &candidate),
                WatchMode::Apply => self.apply(requirement, &offer, &candidate).await,
            },
        }
        None
    }

    /// `notify` mode: says once per container and image that it is there.
    fn announce(&self, requirement: &Requirement, offer: &Offer, running: &Version, candidate: &Candidate) {
        let first = self
            .announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((offer.container.clone(), candidate.digest.clone()));
        tracing::info!(container = %offer.container, to = %candidate.version, reported = !first, "container watch: a newer version is available (notify mode: nothing changes)");
        if !first {
            return;
        }
        if let Some(notifier) = self.companion.notifier() {
            let reason = format!("{WATCH_LABEL}={requirement} (notify mode)");
            let to = candidate.version.to_string();
            notifier.send(
                crate::notify::Event::new(
                    "available",
                    crate::notify::Outcome::Available,
                    &running.to_string(),
                    Some(&to),
                    0,
                    Some(&reason),
                )
                .for_container(&offer.container),
            );
        }
    }

    /// `apply` mode: the update, as `/update/<container>/<req>` runs it. The
    /// exact version judged is what is asked for (`latest` as it is), so a
    /// tag pushed meanwhile waits for its own turn and cooldown.
    async fn apply(&self, requirement: &Requirement, offer: &Offer, candidate: &Candidate) {
        let name = &offer.container;
        let target = match requirement {
            Requirement::Latest => Requirement::Latest,
            _ => Requirement::Exact(candidate.version.clone()),
        };
        tracing::info!(container = %name, to = %candidate.version, policy = %requirement, "container watch: updating");
        match self.companion.update_to(name, target).await {
            Ok(UpdateOutcome::Updated { new_image, .. }) => {
                tracing::info!(container = %name, image = %new_image, "container watch: updated")
            }
            Ok(UpdateOutcome::Unchanged { .. }) => {}
            // Not the image's fault: the next turn tries again.
            Err(e @ (UpdateError::Busy { .. } | UpdateError::UpgradeRunning)) => {
                tracing::info!(container = %name, error = %e, "container watch: busy; trying again at the next turn")
            }
            Err(e @ UpdateError::Failed { .. }) => {
                tracing::error!(container = %name, to = %candidate.version, error = %e, "container watch: the update failed; this image is not tried again in this container");
                self.failed
                    .remember_in(Some(name), &candidate.version, &candidate.digest, &e.to_string());
            }
            // The registry, the pull, Docker: nothing says the image is bad.
            Err(e) => {
                tracing::warn!(container = %name, to = %candidate.version, error = %e, "container watch: the update did not happen; trying again at the next turn")
            }
        }
    }
}

/// A container's name and its watch label's value.
fn labelled(summary: &ContainerSummary) -> Option<(String, String)> {
    let name = summary.names.as_ref()?.first()?.trim_start_matches('/').to_string();
    let text = summary.labels.as_ref()?.get(WATCH_LABEL)?.trim().to_string();
    Some((name, text))
}

/// The repository of the image a container runs, as the registry names it
/// in its notifications (the path, without the registry's host).
fn repository_of(summary: &ContainerSummary) -> Option<String> {
    let image = summary.image.as_deref()?;
    ImageRef::parse(image).ok().map(|r| r.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(name: &str, image: &str, label: Option<&str>) -> ContainerSummary {
        ContainerSummary {
            names: Some(vec![format!("/{name}")]),
            image: Some(image.into()),
            labels: Some(
                label
                    .map(|l| HashMap::from([(WATCH_LABEL.to_string(), l.to_string())]))
                    .unwrap_or_default(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_container_is_known_by_its_name_label_and_repository() {
        let web = summary("web", "localhost:5000/team/web:1.4.0", Some(" 2 "));
        assert_eq!(labelled(&web), Some(("web".into(), "2".into())));
        assert_eq!(repository_of(&web).as_deref(), Some("team/web"));
        assert_eq!(labelled(&summary("db", "postgres:16", None)), None);
        assert_eq!(
            repository_of(&summary("db", "postgres:16", Some("16"))).as_deref(),
            Some("postgres")
        );
    }
}
