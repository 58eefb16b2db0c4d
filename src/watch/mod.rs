//! Unattended upgrades: the watch policy (`watch`, `watch_interval_secs`,
//! `watch_mode`, `min_image_age_secs`).
//!
//! The live instance checks the registry every interval, and at once when
//! the registry hook ([`crate::routes::hooks`]) says a tag was pushed: the
//! policy's requirement picks a tag as `/upgrade/<req>` would, the registry
//! says what that image is ([`crate::handover::plan`]), and [`judge`]
//! decides. In `apply` mode the upgrade then runs through the same
//! single-flight lock and the same path as a request's; in `notify` mode it
//! is only reported.
//!
//! Only the live instance watches: the loop starts once the start-up
//! reconcile is over (a successor's after its takeover), skips its turn
//! while a takeover or an upgrade is under way, and ends when the instance
//! is asked to stop (an elder after its handover). A target that failed is
//! remembered in the data directory ([`failed`]), so no instance tries that
//! image again; a newer tag (or the tag pushed again with another image) is
//! a new target.
//!
//! Companion containers labelled `selfup.watch` are watched by
//! [`containers`], with the same judgement.

pub mod containers;
pub mod failed;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use semver::Version;

use crate::config::WatchMode;
use crate::handover::{Orchestrator, Target, UpgradeError, UpgradeOutcome};
use crate::notify::Event;
use crate::state::TakeoverPhase;
use crate::version::{Requirement, policy};
use failed::FailedTargets;

/// The longest wait before an image held back by the cooldown is looked at again.
const COOLDOWN_RECHECK: Duration = Duration::from_secs(60);
/// After a registry notification, how many times a look that found no
/// image is repeated, [`QUICK_RETRY`] apart: the registry sends the event of
/// a manifest push before the tag points at it, so the tag may be listed and
/// its manifest not found yet for a few milliseconds.
const QUICK_RETRIES: u32 = 5;
const QUICK_RETRY: Duration = Duration::from_secs(1);

/// The image the policy picks, as the registry describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub version: Version,
    pub digest: String,
    /// Seconds since the epoch, if the image config says.
    pub created: Option<u64>,
}

/// What the policy makes of a candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not higher than the running version: nothing to do (the watch never
    /// goes down, whatever `:latest` points at).
    Current,
    /// A pre-release the policy does not name: never taken.
    PreRelease,
    /// This very image failed before: not tried again.
    FailedBefore,
    /// Younger than `min_image_age_secs`: waits this many more seconds.
    TooYoung { wait_secs: u64 },
    /// Its age is unknown (the config has no creation time) and a cooldown is set.
    AgeUnknown,
    /// Upgrade to it.
    Upgrade,
}

/// Decides on `candidate` for a service (or a companion container) running
/// `running`, at `now` (seconds since the epoch); `failed` says whether a
/// digest failed before there.
pub fn judge(
    running: &Version,
    candidate: &Candidate,
    requirement: &Requirement,
    min_age_secs: u64,
    now: u64,
    failed: impl Fn(&str) -> bool,
) -> Verdict {
    if candidate.version <= *running {
        return Verdict::Current;
    }
    if !candidate.version.pre.is_empty() && !matches!(requirement, Requirement::Exact(_)) {
        return Verdict::PreRelease;
    }
    if failed(&candidate.digest) {
        return Verdict::FailedBefore;
    }
    if min_age_secs > 0 {
        let Some(created) = candidate.created else {
            return Verdict::AgeUnknown;
        };
        let age = now.saturating_sub(created);
        if age < min_age_secs {
            return Verdict::TooYoung {
                wait_secs: min_age_secs - age,
            };
        }
    }
    Verdict::Upgrade
}

/// The watch loop of one instance.
pub struct Watch {
    orchestrator: Arc<Orchestrator>,
    requirement: Requirement,
    failed: FailedTargets,
    /// The digests already reported in `notify` mode, so each is reported once.
    announced: Mutex<HashSet<String>>,
    /// Quick looks left since the last registry notification.
    quick: std::sync::atomic::AtomicU32,
}

impl Watch {
    /// The watch of this instance's settings; `None` when `watch` is unset.
    pub fn new(orchestrator: Arc<Orchestrator>) -> Option<Watch> {
        let text = orchestrator.settings.watch.clone()?;
        // The settings were validated at start: the policy parses.
        let requirement = policy(&text).ok()?;
        let failed = FailedTargets::open(&orchestrator.settings.data_dir);
        Some(Watch {
            orchestrator,
            requirement,
            failed,
            announced: Mutex::default(),
            quick: std::sync::atomic::AtomicU32::new(0),
        })
    }

    /// Checks now, then every interval or when woken, until this instance is
    /// asked to stop.
    pub async fn run(self) {
        let o = self.orchestrator.clone();
        if o.self_id.is_none() {
            tracing::warn!("watch: not running in a container, so nothing can be upgraded; not watching");
            return;
        }
        tracing::info!(policy = %self.requirement, interval_secs = o.settings.watch_interval_secs, mode = ?o.settings.watch_mode, "watching the registry");
        let mut shutdown = o.shared.shutdown.subscribe();
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            let wait = match self.is_live() {
                true => self.check().await,
                false => o.settings.watch_interval(),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = o.shared.check_now.notified() => {
                    tracing::debug!("watch: woken by the registry hook");
                    self.quick.store(QUICK_RETRIES, std::sync::atomic::Ordering::Relaxed);
                }
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!("watch: stopped");
    }

    /// Whether this instance is the live one and idle: no takeover of its
    /// own under way or failed, no upgrade running.
    fn is_live(&self) -> bool {
        let status = self.orchestrator.shared.status();
        status.upgrade.is_none() && matches!(status.takeover, TakeoverPhase::Idle | TakeoverPhase::Done)
    }

    /// One look at the registry, and what follows; returns how long to wait
    /// before the next.
    async fn check(&self) -> Duration {
        let o = &self.orchestrator;
        let interval = o.settings.watch_interval();
        let found = o.remote(&self.requirement).await;
        o.shared.metrics.watch_checked(found.is_ok());
        let (image, remote) = match found {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(policy = %self.requirement, error = %e, "watch: no candidate");
                let quick = self.quick.load(std::sync::atomic::Ordering::Relaxed);
                if quick > 0 {
                    self.quick.store(quick - 1, std::sync::atomic::Ordering::Relaxed);
                    return QUICK_RETRY;
                }
                return interval;
            }
        };
        let Some(version) = remote.version.as_deref().and_then(|v| Version::parse(v).ok()) else {
            tracing::warn!(image = %image, "watch: the image has no semver version label; ignored");
            return interval;
        };
        let candidate = Candidate {
            version,
            digest: remote.digest,
            created: remote.created,
        };
        let min_age = o.settings.min_image_age_secs;
        // An image rolled back before (during a bake, by an operator too)
        // is refused as `/upgrade` refuses it, unless the policy names it.
        let named = matches!(self.requirement, Requirement::Exact(_));
        let version = candidate.version.to_string();
        let verdict = judge(
            &o.version,
            &candidate,
            &self.requirement,
            min_age,
            crate::state::now_secs(),
            |digest| self.failed.contains(digest) || (!named && o.shared.refused(&version, Some(digest)).is_some()),
        );
        let to = candidate.version.to_string();
        match verdict {
            Verdict::Current => tracing::debug!(%to, "watch: up to date"),
            Verdict::PreRelease => tracing::info!(%to, "watch: a pre-release the policy does not name; ignored"),
            Verdict::FailedBefore => {
                tracing::info!(%to, digest = %candidate.digest, "watch: this image failed before; waiting for a newer one")
            }
            Verdict::AgeUnknown => {
                tracing::warn!(%to, "watch: the image has no creation time, so the cooldown cannot pass; ignored")
            }
            Verdict::TooYoung { wait_secs } => {
                tracing::info!(%to, wait_secs, min_age, "watch: held back by the cooldown");
                return interval.min(
                    Duration::from_secs(wait_secs)
                        .max(Duration::from_secs(1))
                        .min(COOLDOWN_RECHECK),
                );
            }
            Verdict::Upgrade => {
                // Not signed (yet): build.sh pushes the tag, then its
                // signature, whose push nudges the watch again. Never
                // remembered as failed: a signature may still come.
                if let Err(e) = o.signed(&candidate.digest).await {
                    tracing::info!(%to, digest = %candidate.digest, error = %e, "watch: not signed with the operator's key; waiting for its signature");
                    return interval;
                }
                match o.settings.watch_mode {
                    WatchMode::Notify => self.announce(&candidate),
                    WatchMode::Apply => self.apply(&candidate).await,
                }
            }
        }
        interval
    }

    /// `notify` mode: says once per image that it is there.
    fn announce(&self, candidate: &Candidate) {
        let first = self
            .announced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(candidate.digest.clone());
        let o = &self.orchestrator;
        tracing::info!(to = %candidate.version, reported = !first, "watch: a newer version is available (notify mode: nothing changes)");
        if !first {
            return;
        }
        if let Some(notifier) = &o.notifier {
            let reason = format!("watch {} (notify mode)", self.requirement);
            let to = candidate.version.to_string();
            notifier.send(Event::new(
                "available",
                crate::notify::Outcome::Available,
                &o.version.to_string(),
                Some(&to),
                0,
                Some(&reason),
            ));
        }
    }

    /// `apply` mode: the upgrade, as `/upgrade/<req>` runs it. The exact
    /// version judged is what is asked for (`latest` as it is), so a tag
    /// pushed meanwhile waits for its own turn and cooldown.
    async fn apply(&self, candidate: &Candidate) {
        let o = &self.orchestrator;
        let target = match self.requirement {
            Requirement::Latest => Target::Registry(Requirement::Latest),
            _ => Target::Registry(Requirement::Exact(candidate.version.clone())),
        };
        tracing::info!(to = %candidate.version, policy = %self.requirement, "watch: upgrading");
        match o.upgrade(target).await {
            Ok(UpgradeOutcome::Upgraded { to, .. }) => {
                tracing::info!(%to, "watch: upgraded; the successor watches from now on")
            }
            Ok(UpgradeOutcome::Completed { to, .. }) => {
                tracing::info!(%to, "watch: Swarm rolled the service out")
            }
            Ok(UpgradeOutcome::AlreadyThere { .. } | UpgradeOutcome::RollbackCompleted { .. }) => {}
            // Not the target's fault: the next turn tries again.
            Err(
                e @ (UpgradeError::InProgress(_)
                | UpgradeError::Baking { .. }
                | UpgradeError::TakeoverUnderway(_)
                | UpgradeError::HandedOver
                | UpgradeError::SwarmBusy { .. }
                | UpgradeError::CompanionBusy { .. }
                | UpgradeError::PortTaken { .. }),
            ) => {
                tracing::info!(error = %e, "watch: busy; trying again at the next turn")
            }
            Err(e) if the_image_failed(&e) => {
                tracing::error!(to = %candidate.version, error = %e, "watch: the upgrade failed; this image is not tried again");
                self.failed
                    .remember(&candidate.version, &candidate.digest, &e.to_string());
            }
            // The registry, the pull, Docker, nginx, a stop signal: nothing
            // says the image is bad.
            Err(e) => {
                tracing::warn!(to = %candidate.version, error = %e, "watch: the upgrade did not happen; trying again at the next turn")
            }
        }
    }
}

/// Whether an upgrade failed because of the image itself: its successor did
/// not come up or take over, or its label is not what the tag says. Then it is
/// not tried again; any other failure (a registry or a Docker daemon that did
/// not answer, a stop signal) is tried again at the next turn.
fn the_image_failed(e: &UpgradeError) -> bool {
    use crate::recreate::resolve::ResolveError;
    matches!(
        e,
        UpgradeError::SuccessorUnhealthy { .. }
            | UpgradeError::TakeoverFailed { .. }
            | UpgradeError::RolledBackDuringBake { by_operator: false, .. }
            | UpgradeError::SwarmRolledBack { .. }
            | UpgradeError::Resolve(ResolveError::NoVersion { .. } | ResolveError::LabelMismatch { .. })
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn candidate(version: &str, created: Option<u64>) -> Candidate {
        Candidate {
            version: v(version),
            digest: format!("sha256:{version}"),
            created,
        }
    }

    #[test]
    fn the_policy_is_latest_or_a_requirement() {
        assert_eq!(policy("latest").unwrap(), Requirement::Latest);
        assert_eq!(policy("2").unwrap().to_string(), "2");
        assert_eq!(policy("=1.5.0-rc.1").unwrap().to_string(), "=1.5.0-rc.1");
        assert!(policy("^2").is_err());
        assert!(policy("").is_err());
    }

    #[test]
    fn only_a_higher_released_version_that_did_not_fail_is_taken() {
        let none = FailedTargets::in_memory();
        let two = policy("2").unwrap();
        let judge_now =
            |c: &Candidate, r: &Requirement, f: &FailedTargets| judge(&v("2.1.0"), c, r, 0, 1_000, |d| f.contains(d));
        assert_eq!(judge_now(&candidate("2.2.0", None), &two, &none), Verdict::Upgrade);
        assert_eq!(judge_now(&candidate("2.1.0", None), &two, &none), Verdict::Current);
        // :latest pointing lower never rolls back.
        assert_eq!(
            judge_now(&candidate("2.0.0", None), &Requirement::Latest, &none),
            Verdict::Current
        );
        assert_eq!(
            judge_now(&candidate("2.2.0-rc.1", None), &Requirement::Latest, &none),
            Verdict::PreRelease
        );
        let rc = policy("=2.2.0-rc.1").unwrap();
        assert_eq!(judge_now(&candidate("2.2.0-rc.1", None), &rc, &none), Verdict::Upgrade);
        let failed = FailedTargets::in_memory();
        failed.remember(&v("2.2.0"), "sha256:2.2.0", "it exited with code 3");
        assert_eq!(
            judge_now(&candidate("2.2.0", None), &two, &failed),
            Verdict::FailedBefore
        );
        // The same tag pushed again with another image, or a newer tag, is a new target.
        let pushed_again = Candidate {
            digest: "sha256:other".into(),
            ..candidate("2.2.0", None)
        };
        assert_eq!(judge_now(&pushed_again, &two, &failed), Verdict::Upgrade);
        assert_eq!(judge_now(&candidate("2.3.0", None), &two, &failed), Verdict::Upgrade);
    }

    #[test]
    fn only_a_failure_of_the_image_itself_marks_it_failed() {
        use crate::recreate::resolve::ResolveError;
        use crate::recreate::watch::WaitError;
        let unhealthy = UpgradeError::SuccessorUnhealthy {
            port: 5801,
            reason: WaitError::Died("it exited with code 3".into()),
            log: String::new(),
        };
        assert!(the_image_failed(&unhealthy));
        let mislabelled = ResolveError::LabelMismatch {
            image: "r/selfup:2.2.0".into(),
            label: v("3.0.0"),
            requirement: "=2.2.0".into(),
        };
        assert!(the_image_failed(&mislabelled.into()));
        let registry_down = ResolveError::Registry {
            requirement: "2".into(),
            repository: "r/selfup".into(),
            source: crate::registry::RegistryError::Unreachable {
                registry: "r".into(),
                reason: "connection refused".into(),
            },
        };
        assert!(!the_image_failed(&registry_down.into()));
        assert!(!the_image_failed(&UpgradeError::Internal("x".into())));
        // Another user holding the successor's port is not the image's fault.
        let held = UpgradeError::PortTaken {
            port: 5801,
            bind: std::net::IpAddr::from([127, 0, 0, 1]),
            reason: "Address already in use (os error 98)".into(),
        };
        assert!(!the_image_failed(&held));
    }

    #[test]
    fn the_cooldown_holds_a_young_image_back_until_it_is_old_enough() {
        let two = policy("2").unwrap();
        let at = |now| judge(&v("2.1.0"), &candidate("2.2.0", Some(1_000)), &two, 600, now, |_| false);
        assert_eq!(at(1_000), Verdict::TooYoung { wait_secs: 600 });
        assert_eq!(at(1_599), Verdict::TooYoung { wait_secs: 1 });
        assert_eq!(at(1_600), Verdict::Upgrade);
        // A clock behind the image's time is no reason to go early.
        assert_eq!(at(10), Verdict::TooYoung { wait_secs: 600 });
        let unknown = judge(&v("2.1.0"), &candidate("2.2.0", None), &two, 600, 1_600, |_| false);
        assert_eq!(unknown, Verdict::AgeUnknown);
        let no_cooldown = judge(&v("2.1.0"), &candidate("2.2.0", None), &two, 0, 1_600, |_| false);
        assert_eq!(no_cooldown, Verdict::Upgrade);
    }
}
