//! The steps of a companion update as the event log names them, and where
//! one update's steps go.

pub use crate::events::UpdateStep as Step;
use crate::events::{Attempts, Event, EventLog};

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
            step: step.into(),
        });
    }

    /// The reporter of the new container's looks.
    pub fn attempts(&self) -> Attempts<'a> {
        Attempts::for_container(self.log, self.container)
    }
}
