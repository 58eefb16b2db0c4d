//! One watcher for a new container: whether it came up, or died.
//!
//! The judgement of one inspect output is pure ([`exit_reason`],
//! [`verdict`]) and unit-tested; [`Watcher`] polls the Engine within one
//! deadline, whose expiry is an error of its own.

use std::time::Duration;

use bollard::models::{ContainerInspectResponse, HealthStatusEnum};
use tokio::time::{Instant, sleep};

use crate::docker::{DockerError, Engine};

/// How many log lines of a failed new container an answer carries.
pub const LOG_LINES: usize = 20;

/// Why a wait for a new container ended without it being up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    /// It exited, was restarted by its restart policy, or was removed.
    #[error("{0}")]
    Died(String),
    /// It runs, but said no: an unhealthy HEALTHCHECK, a wrong answer, a
    /// refused or failed step.
    #[error("{0}")]
    Failed(String),
    /// The deadline passed first.
    #[error("{}", expired_message(what, *waited, last.as_deref()))]
    Expired {
        /// What did not happen in time, as the sentence starts: `not up`.
        what: &'static str,
        waited: Duration,
        /// What was last seen, if anything.
        last: Option<String>,
    },
}

fn expired_message(what: &str, waited: Duration, last: Option<&str>) -> String {
    match last {
        Some(last) => format!("{what} within {waited:?} ({last})"),
        None => format!("{what} within {waited:?}"),
    }
}

/// Why a container no longer runs, from its inspect output; `None` while it
/// runs. A restart policy brings a crashed container back, so a restart
/// counts as an exit.
pub fn exit_reason(container: &ContainerInspectResponse) -> Option<String> {
    let state = container.state.clone().unwrap_or_default();
    let restarts = container.restart_count.unwrap_or(0);
    if state.oom_killed == Some(true) {
        return Some("it was killed for running out of memory".into());
    }
    if state.running == Some(true) && state.restarting != Some(true) && restarts == 0 {
        return None;
    }
    // Running again after a restart: the state's exit code is the new run's
    // (0), not the code the container exited with.
    let running_again = state.running == Some(true) && state.restarting != Some(true);
    let mut reason = match state.exit_code {
        _ if running_again => "it exited".to_string(),
        Some(code) => format!("it exited with code {code}"),
        None => "it exited with an unknown code".to_string(),
    };
    if restarts > 0 {
        reason.push_str(&format!(" and was restarted {restarts} times"));
    }
    if let Some(error) = state.error.filter(|e| !e.is_empty()) {
        reason.push_str(&format!(" ({error})"));
    }
    Some(reason)
}

/// Whether the container's configuration has a HEALTHCHECK (its own or its image's).
pub fn has_healthcheck(container: &ContainerInspectResponse) -> bool {
    let configured = container
        .config
        .as_ref()
        .and_then(|c| c.healthcheck.as_ref())
        .and_then(|h| h.test.as_ref())
        .is_some_and(|t| !t.is_empty() && t[0] != "NONE");
    let reported = container
        .state
        .as_ref()
        .and_then(|s| s.health.as_ref())
        .and_then(|h| h.status)
        .is_some_and(|s| !matches!(s, HealthStatusEnum::NONE | HealthStatusEnum::EMPTY));
    configured || reported
}

/// Where a new container stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Healthy (or, without a HEALTHCHECK, running for the whole settle time).
    Up,
    /// Not yet; what it is waiting for.
    Waiting(String),
    /// It exited, restarted, or failed its HEALTHCHECK.
    Failed(WaitError),
}

/// Judges a new container from its inspect output, `elapsed` after its start.
pub fn verdict(container: &ContainerInspectResponse, elapsed: Duration, settle: Duration) -> Verdict {
    if let Some(reason) = exit_reason(container) {
        return Verdict::Failed(WaitError::Died(reason));
    }
    if has_healthcheck(container) {
        let health = container.state.clone().unwrap_or_default().health.unwrap_or_default();
        let last_output = health
            .log
            .unwrap_or_default()
            .last()
            .and_then(|r| r.output.clone())
            .map(|o| o.trim().to_string())
            .filter(|o| !o.is_empty());
        return match health.status {
            Some(HealthStatusEnum::HEALTHY) => Verdict::Up,
            Some(HealthStatusEnum::UNHEALTHY) => Verdict::Failed(WaitError::Failed(match last_output {
                Some(out) => format!("its HEALTHCHECK reports unhealthy (last output: {out})"),
                None => "its HEALTHCHECK reports unhealthy".into(),
            })),
            _ => Verdict::Waiting("its HEALTHCHECK to report healthy (it is starting)".into()),
        };
    }
    if elapsed >= settle {
        Verdict::Up
    } else {
        Verdict::Waiting(format!("it to keep running for {settle:?} (it has no HEALTHCHECK)"))
    }
}

/// Watches one new container from its start, within one deadline.
#[derive(Debug)]
pub struct Watcher<'a> {
    engine: &'a Engine,
    id: &'a str,
    started: Instant,
    deadline: Duration,
    poll: Duration,
}

impl<'a> Watcher<'a> {
    /// Starts the clock: `deadline` from now, looking every `poll`.
    pub fn new(engine: &'a Engine, id: &'a str, deadline: Duration, poll: Duration) -> Self {
        Watcher {
            engine,
            id,
            started: Instant::now(),
            deadline,
            poll,
        }
    }

    /// `Some(why)` once the container is down or gone; `None` while it runs,
    /// or while the Engine cannot say (that is no news of its death).
    pub async fn died(&self) -> Option<String> {
        match self.engine.inspect_container(self.id).await {
            Ok(c) => exit_reason(&c),
            Err(DockerError::NoSuchContainer(_)) => Some("it was removed".into()),
            Err(_) => None,
        }
    }

    /// `Some(why)` once the container is down, gone, or its HEALTHCHECK
    /// reports unhealthy; `None` while it runs, or while the Engine cannot
    /// say.
    pub async fn failed(&self) -> Option<String> {
        match self.engine.inspect_container(self.id).await {
            Ok(c) => match verdict(&c, Duration::MAX, Duration::ZERO) {
                Verdict::Failed(e) => Some(e.to_string()),
                _ => None,
            },
            Err(DockerError::NoSuchContainer(_)) => Some("it was removed".into()),
            Err(_) => None,
        }
    }

    /// The expiry error once the deadline has passed, saying what was last seen.
    pub fn expired(&self, what: &'static str, last: Option<String>) -> Option<WaitError> {
        (self.started.elapsed() >= self.deadline).then_some(WaitError::Expired {
            what,
            waited: self.deadline,
            last,
        })
    }

    /// Waits out one poll interval.
    pub async fn pause(&self) {
        sleep(self.poll).await;
    }

    /// Waits until the container is up by its own account: healthy by its
    /// HEALTHCHECK, else running for `settle`.
    pub async fn until_up(&self, settle: Duration) -> Result<(), WaitError> {
        self.until_up_observed(settle, |_, _| {}).await
    }

    /// [`Watcher::until_up`], showing `observe` what each look found, and
    /// whether it was the last: `up`, what it waits for, or why it failed.
    pub async fn until_up_observed(
        &self,
        settle: Duration,
        mut observe: impl FnMut(&str, bool),
    ) -> Result<(), WaitError> {
        loop {
            let waiting = match self.engine.inspect_container(self.id).await {
                Ok(c) => match verdict(&c, self.started.elapsed(), settle) {
                    Verdict::Up => {
                        observe("up", true);
                        return Ok(());
                    }
                    Verdict::Failed(e) => {
                        observe(&e.to_string(), true);
                        return Err(e);
                    }
                    Verdict::Waiting(what) => what,
                },
                Err(DockerError::NoSuchContainer(_)) => {
                    let gone = WaitError::Died("it was removed".into());
                    observe(&gone.to_string(), true);
                    return Err(gone);
                }
                Err(e) => format!("inspecting it: {e}"),
            };
            if let Some(expired) = self.expired("not up", Some(format!("waiting for {waiting}"))) {
                observe(&expired.to_string(), true);
                return Err(expired);
            }
            observe(&format!("waiting for {waiting}"), false);
            self.pause().await;
        }
    }
}

/// Waits until a container is no longer running (or is gone), or `bound` passes.
pub async fn until_stopped(engine: &Engine, id: &str, bound: Duration) {
    let deadline = Instant::now() + bound;
    while Instant::now() < deadline {
        match engine.inspect_container(id).await {
            Ok(c) if c.state.as_ref().and_then(|s| s.running) == Some(true) => {}
            Err(DockerError::NoSuchContainer(_)) | Ok(_) => return,
            Err(_) => {}
        }
        sleep(Duration::from_millis(250)).await;
    }
}

/// What to do when a container will not stop gracefully.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopFailed {
    /// Remove it by force.
    Force,
    /// Wait (a little longer than its stop timeout) until it has stopped, then
    /// remove it: it may still be draining requests.
    WaitForIt,
}

/// Stops a container gracefully within `timeout` and removes it, keeping
/// its volumes. A container that is already gone (`--rm`) is not an error.
pub async fn stop_and_remove(
    engine: &Engine,
    id: &str,
    timeout: Duration,
    stop_failed: StopFailed,
) -> Result<(), DockerError> {
    match engine.stop_container(id, timeout).await {
        Ok(()) | Err(DockerError::NoSuchContainer(_)) => {}
        Err(e) => {
            tracing::warn!(container = %id, error = %e, ?stop_failed, "stopping failed");
            if stop_failed == StopFailed::WaitForIt {
                until_stopped(engine, id, timeout + Duration::from_secs(5)).await;
            }
        }
    }
    match engine.remove_container(id, stop_failed == StopFailed::Force).await {
        Ok(()) | Err(DockerError::NoSuchContainer(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The last lines of a container's log, or why they could not be read.
pub async fn log_tail(engine: &Engine, id: &str) -> String {
    engine
        .logs_tail(id, LOG_LINES)
        .await
        .unwrap_or_else(|e| format!("(no log: {e})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerConfig, ContainerState, Health, HealthConfig, HealthcheckResult};

    fn container() -> ContainerInspectResponse {
        ContainerInspectResponse {
            config: Some(ContainerConfig::default()),
            state: Some(ContainerState {
                running: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn running_for(c: &ContainerInspectResponse, secs: u64) -> Verdict {
        verdict(c, Duration::from_secs(secs), Duration::from_secs(5))
    }

    #[test]
    fn without_a_healthcheck_a_container_is_up_once_it_has_run_for_the_settle_time() {
        let c = container();
        assert!(matches!(running_for(&c, 1), Verdict::Waiting(_)));
        assert_eq!(running_for(&c, 5), Verdict::Up);
    }

    #[test]
    fn an_exit_or_a_restart_fails_at_once() {
        let mut c = container();
        c.state = Some(ContainerState {
            running: Some(false),
            exit_code: Some(3),
            ..Default::default()
        });
        assert_eq!(
            running_for(&c, 0),
            Verdict::Failed(WaitError::Died("it exited with code 3".into()))
        );
        let mut restarted = container();
        restarted.restart_count = Some(2);
        restarted.state.as_mut().unwrap().exit_code = Some(1);
        assert!(
            matches!(running_for(&restarted, 9), Verdict::Failed(WaitError::Died(r)) if r.contains("restarted 2 times"))
        );
        // Running again after its restart: the state's code is the new run's.
        let mut again = container();
        again.restart_count = Some(1);
        again.state.as_mut().unwrap().exit_code = Some(0);
        assert_eq!(
            exit_reason(&again).as_deref(),
            Some("it exited and was restarted 1 times")
        );
    }

    #[test]
    fn a_running_container_has_no_exit_reason_and_a_vanished_code_is_said_so() {
        assert_eq!(exit_reason(&container()), None);
        let mut restarting = container();
        restarting.state.as_mut().unwrap().restarting = Some(true);
        assert_eq!(
            exit_reason(&restarting).as_deref(),
            Some("it exited with an unknown code")
        );
        let mut killed = container();
        killed.state.as_mut().unwrap().oom_killed = Some(true);
        assert!(exit_reason(&killed).unwrap().contains("out of memory"));
        let mut failed = container();
        failed.state = Some(ContainerState {
            running: Some(false),
            exit_code: Some(127),
            error: Some("exec: not found".into()),
            ..Default::default()
        });
        assert_eq!(
            exit_reason(&failed).as_deref(),
            Some("it exited with code 127 (exec: not found)")
        );
    }

    #[test]
    fn with_a_healthcheck_its_status_decides() {
        let mut c = container();
        c.config.as_mut().unwrap().healthcheck = Some(HealthConfig {
            test: Some(vec!["CMD".into(), "/probe".into()]),
            ..Default::default()
        });
        let with = |status, output: &str| {
            let mut c = c.clone();
            c.state.as_mut().unwrap().health = Some(Health {
                status: Some(status),
                log: Some(vec![HealthcheckResult {
                    output: Some(output.into()),
                    exit_code: Some(1),
                    ..Default::default()
                }]),
                ..Default::default()
            });
            c
        };
        // Running long past the settle time is not enough while it is starting.
        assert!(matches!(
            running_for(&with(HealthStatusEnum::STARTING, ""), 60),
            Verdict::Waiting(_)
        ));
        assert!(matches!(running_for(&c, 60), Verdict::Waiting(_)));
        assert_eq!(running_for(&with(HealthStatusEnum::HEALTHY, ""), 0), Verdict::Up);
        assert_eq!(
            running_for(&with(HealthStatusEnum::UNHEALTHY, "db down\n"), 0),
            Verdict::Failed(WaitError::Failed(
                "its HEALTHCHECK reports unhealthy (last output: db down)".into()
            ))
        );
        let mut disabled = container();
        disabled.config.as_mut().unwrap().healthcheck = Some(HealthConfig {
            test: Some(vec!["NONE".into()]),
            ..Default::default()
        });
        assert!(!has_healthcheck(&disabled));
    }

    #[test]
    fn an_expired_wait_says_what_did_not_happen_in_time_and_what_was_last_seen() {
        let e = WaitError::Expired {
            what: "not up",
            waited: Duration::from_secs(30),
            last: Some("waiting for its HEALTHCHECK".into()),
        };
        assert_eq!(e.to_string(), "not up within 30s (waiting for its HEALTHCHECK)");
        let bare = WaitError::Expired {
            what: "not done",
            waited: Duration::from_millis(1500),
            last: None,
        };
        assert_eq!(bare.to_string(), "not done within 1.5s");
    }
}
