//! The steps of a companion update as the event log names them, and where
//! one update's steps go.

use crate::events::{Attempts, Event, EventLog};

/// The steps of a companion update, in the order they run, as the event
/// log names them (`update_step`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Admission, credentials, and the tag a requirement picks.
    Resolving,
    Pulling,
    /// Stop-first placement: the old container stops before the new one exists.
    StoppingTheOld,
    /// The switch of the name: the old container gives it up.
    RenamingAside,
    Creating,
    Starting,
    /// Watching the new container until it is up (each look is a `health_attempt`).
    HealthChecking,
    /// A blue-green app's successor answered at its own address: the app's
    /// socket sends new connections to it.
    Switching,
    /// A blue-green app's elder finishes the connections it has, out of
    /// rotation, before it is stopped.
    Draining,
    /// A blue-green app's successor serves alone, watched for
    /// `update_bake_secs`; the elder runs on, out of rotation, to switch back to.
    Baking,
    /// The new container is up: the old one is stopped (unless it was
    /// already, stop-first) and removed.
    Retiring {
        stopped: bool,
    },
    /// The new container did not come up: it is removed and the old one restored.
    RollingBack,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Resolving => "resolving",
            Step::Pulling => "pulling",
            Step::StoppingTheOld => "stopping the old container",
            Step::RenamingAside => "renaming the old container aside",
            Step::Creating => "creating the new container",
            Step::Starting => "starting the new container",
            Step::HealthChecking => "health-checking the new container",
            Step::Switching => "switching the app's socket to the new container",
            Step::Draining => "draining the old container's connections",
            Step::Baking => "baking the new container, the old one kept warm out of rotation",
            Step::Retiring { stopped: false } => "stopping and removing the old container",
            Step::Retiring { stopped: true } => "removing the old container",
            Step::RollingBack => "rolling back",
        })
    }
}

/// Where one update's steps go: the event log, under the container as the
/// update was asked for, so that every event of it names the same one.
#[derive(Debug)]
pub struct Progress<'a> {
    pub(super) log: &'a EventLog,
    pub(super) container: &'a str,
}

impl<'a> Progress<'a> {
    pub fn new(log: &'a EventLog, container: &'a str) -> Self {
        Progress { log, container }
    }

    /// The update is at `step`.
    pub fn step(&self, step: Step) {
        tracing::debug!(container = self.container, %step, "update");
        self.log.emit(Event::UpdateStep {
            container: self.container.to_string(),
            step: step.to_string(),
        });
    }

    /// The reporter of the new container's looks.
    pub fn attempts(&self) -> Attempts<'a> {
        Attempts::for_container(self.log, self.container)
    }
}
