//! The successor's side, and what every instance does at start-up.
//!
//! A successor (started by an elder, with `SELFUP_HANDOVER_*` set) waits for
//! the elder's go-ahead, which comes only after the elder's health check; if
//! the elder vanishes first, it takes over on its own. Any other instance
//! converges: the newest sibling takes over and removes the others.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::{Orchestrator, base_name};
use crate::docker::DockerError;
use crate::recreate::watch::{self, StopFailed};
use crate::state::{TakeoverPhase, TakeoverStep};

/// How many times the successor stops and removes an elder that keeps
/// coming back (restarted while it was being stopped) before it gives up.
const ELDER_STOP_ATTEMPTS: u32 = 3;

/// Why a takeover failed.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("the live socket {path} did not reach this instance within {waited:?}: last seen {last_seen}")]
    LiveNotConfirmed {
        path: String,
        waited: Duration,
        last_seen: String,
    },
    #[error("{context}: {source}")]
    Docker { context: String, source: DockerError },
}

/// How long a plain start leaves a stopped sibling before it removes it.
const STOPPED_SIBLINGS_AFTER: Duration = Duration::from_secs(10);

/// A container as reconcile sees it.
#[derive(Debug, Clone)]
struct Sibling {
    id: String,
    running: bool,
    created: (i64, u32),
}

/// Parses Docker's RFC 3339 timestamps (`2026-11-23T04:13:01.123456789Z`)
/// into a sortable (seconds-ish, nanoseconds) pair; only order matters.
pub fn created_key(ts: &str) -> (i64, u32) {
    let (main, frac) = ts
        .trim_end_matches('Z')
        .split_once('.')
        .unwrap_or((ts.trim_end_matches('Z'), "0"));
    let digits: String = main.chars().filter(|c| c.is_ascii_digit()).collect();
    let frac: String = frac.chars().take_while(|c| c.is_ascii_digit()).collect();
    let nanos = format!("{frac:0<9}")[..9].parse().unwrap_or(0);
    (digits.parse().unwrap_or(0), nanos)
}

impl Orchestrator {
    /// Runs once at start-up, in the background.
    pub async fn reconcile(&self) {
        let Some(me) = self.self_id.clone() else {
            tracing::info!("not running in a container: nothing to reconcile");
            self.publish_sockets();
            return;
        };
        // The handover settings stay in the container's environment for good,
        // but they name one takeover: once it is done, a start is a restart.
        let handover = match (&self.settings.handover_elder, &self.settings.handover_token) {
            (Some(elder), Some(_)) if !self.shared.takeover_done(&me) => Some(elder),
            (Some(_), Some(_)) => {
                tracing::info!("restarted after its takeover: reconciling as a plain start");
                None
            }
            _ => None,
        };
        let result = match handover {
            Some(elder) => self.as_successor(&me, elder).await,
            None => self.converge(&me).await,
        };
        match result {
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "takeover failed");
                self.shared
                    .set_takeover(TakeoverPhase::Failed { reason: e.to_string() });
            }
        }
    }

    /// Waits for the elder's go-ahead, or for the elder to be gone, then takes over.
    async fn as_successor(&self, me: &str, elder: &str) -> Result<(), TakeoverError> {
        self.shared.set_takeover(TakeoverPhase::WaitingForGo);
        let my_created = self.created(me).await?;
        // Looked up while the elder health-checks this instance, not after
        // its go-ahead: the takeover then makes no Engine call before the
        // switch.
        let mut elders = self.others(me).await?;
        let deadline = Instant::now() + self.settings.health_deadline() + self.settings.takeover_deadline();
        let go = self.shared.go.notified();
        tokio::pin!(go);
        loop {
            match self.elder_gone(elder, my_created).await {
                Ok(Some(why)) => {
                    tracing::warn!(elder, why, "taking over without the elder's go-ahead");
                    break;
                }
                Ok(None) => {}
                // Only the daemon's word that the elder is gone counts: an
                // error says nothing about it, so ask again.
                Err(e) => tracing::warn!(elder, error = %e, "cannot see the elder; asking again"),
            }
            if Instant::now() >= deadline {
                tracing::error!(elder, "no go-ahead from a live elder: removing this successor");
                let _ = self.engine.remove_container(me, true).await;
                return Ok(());
            }
            tokio::select! {
                _ = &mut go => break,
                _ = sleep(Duration::from_millis(250)) => {}
            }
        }
        if !elders.iter().any(|s| s.id == elder) {
            elders.push(Sibling {
                id: elder.to_string(),
                running: true,
                created: (0, 0),
            });
        }
        let baked_by = Some((elder, my_created));
        self.take_over(me, elders.into_iter().map(|s| s.id).collect(), baked_by)
            .await
    }

    /// `Some(why)` when the elder that created this successor is gone: the
    /// daemon has no such container, it is not running, or it was started
    /// again after this successor was created (a restart loses the upgrade
    /// it was running). A failed inspection is an error, never "gone".
    async fn elder_gone(&self, elder: &str, my_created: (i64, u32)) -> Result<Option<&'static str>, DockerError> {
        let state = match self.engine.inspect_container(elder).await {
            Ok(c) => c.state.unwrap_or_default(),
            Err(DockerError::NoSuchContainer(_)) => return Ok(Some("it was removed")),
            Err(e) => return Err(e),
        };
        if state.running != Some(true) || state.restarting == Some(true) {
            return Ok(Some("it is not running"));
        }
        let started = created_key(state.started_at.as_deref().unwrap_or_default());
        Ok((started > my_created).then_some("it was started again after it created this successor"))
    }

    /// A plain start: the newest running sibling takes over from the rest.
    async fn converge(&self, me: &str) -> Result<(), TakeoverError> {
        let all = self.others(me).await?;
        let my_key = self.created(me).await?;
        if let Some(newer) = all
            .iter()
            .find(|s| s.running && (s.created, s.id.as_str()) > (my_key, me))
        {
            tracing::info!(newer = %newer.id, "a newer sibling runs: it converges, not this instance");
            return Ok(());
        }
        // A stopped sibling goes a while later: `compose up` that recreates
        // this service stops the old container, starts this one, then
        // removes the old one itself, and fails if a removal is already
        // under way.
        let (running, stopped): (Vec<Sibling>, Vec<Sibling>) = all.into_iter().partition(|s| s.running);
        if !stopped.is_empty() {
            let engine = self.engine.clone();
            let stopped: Vec<String> = stopped.into_iter().map(|s| s.id).collect();
            tokio::spawn(async move {
                tokio::time::sleep(STOPPED_SIBLINGS_AFTER).await;
                for id in stopped {
                    match engine.inspect_container(&id).await {
                        Ok(c) if c.state.as_ref().and_then(|s| s.running) != Some(true) => {
                            match engine.remove_container(&id, false).await {
                                Ok(()) => tracing::info!(container = %id, "removed a stopped sibling"),
                                Err(e) => tracing::info!(container = %id, error = %e, "a stopped sibling stays"),
                            }
                        }
                        _ => {}
                    }
                }
            });
        }
        if running.is_empty() {
            // Alone (a fresh start, a restart): the sockets are this
            // instance's, whoever held them before.
            self.publish_sockets();
            self.remove_stale_standby();
            self.shared.set_takeover(TakeoverPhase::Done);
            return Ok(());
        }
        self.take_over(me, running.into_iter().map(|s| s.id).collect(), None)
            .await
    }

    /// When this container was created, ordered as [`created_key`] orders.
    async fn created(&self, me: &str) -> Result<(i64, u32), TakeoverError> {
        let mine = self
            .engine
            .inspect_container(me)
            .await
            .map_err(|source| TakeoverError::Docker {
                context: "inspecting this container".into(),
                source,
            })?;
        Ok(created_key(mine.created.as_deref().unwrap_or_default()))
    }

    /// The other containers of this instance's group.
    async fn others(&self, me: &str) -> Result<Vec<Sibling>, TakeoverError> {
        let docker = |context: &str| {
            let context = context.to_string();
            move |source| TakeoverError::Docker { context, source }
        };
        let mine = self
            .engine
            .inspect_container(me)
            .await
            .map_err(docker("inspecting this container"))?;
        let labels: HashMap<String, String> = mine.config.and_then(|c| c.labels).unwrap_or_default();
        let mut out = Vec::new();
        for s in self.siblings(&labels).await.map_err(docker("listing siblings"))? {
            let id = s.id.unwrap_or_default();
            if id == me {
                continue;
            }
            let created = match self.engine.inspect_container(&id).await {
                Ok(c) => created_key(c.created.as_deref().unwrap_or_default()),
                Err(_) => (s.created.unwrap_or(0) * 1_000_000_000, 0),
            };
            let running = s.state.map(|st| st.to_string() == "running").unwrap_or(false);
            out.push(Sibling { id, running, created });
        }
        Ok(out)
    }

    /// Publishes this instance's sockets (nginx's next upstream connection
    /// reaches it), confirms through the live socket's public path that it
    /// does, then stops (gracefully) and removes `elders`. nginx is not
    /// asked anything: whether it runs or not, it connects to the path.
    ///
    /// When the elder `baked_by` names asked for a bake in its go-ahead,
    /// only the live socket moves at the switch (the elder keeps the control
    /// socket, where an operator promotes or rolls back), and the elder is
    /// stopped only once the bake has ended clean, or the elder is gone.
    #[tracing::instrument(skip(self, elders, baked_by), fields(version = %self.version, port = self.settings.port))]
    async fn take_over(
        &self,
        me: &str,
        elders: Vec<String>,
        baked_by: Option<(&str, (i64, u32))>,
    ) -> Result<(), TakeoverError> {
        let step = |step| self.shared.set_takeover(TakeoverPhase::Running { step });
        let bake = baked_by.and_then(|elder| Some((elder, self.shared.status().bake_requested?)));
        // One budget for the switch: the elder waits this long plus a
        // margin, so it never gives up while this instance still works.
        let deadline = Instant::now() + self.settings.takeover_deadline();
        step(TakeoverStep::PublishingSockets);
        match (bake, self.live_socket()) {
            (Some(_), Some(live)) => {
                if let Err(e) = live.publish() {
                    tracing::warn!(path = %live.public().display(), error = %e, "could not publish the live socket");
                }
            }
            _ => self.publish_sockets(),
        }
        if let Some(live) = self.live_socket() {
            step(TakeoverStep::ConfirmingThroughLiveSocket);
            self.confirm_live(me, live.public(), deadline).await?;
        }
        #[cfg(feature = "faults")]
        crate::faults::takeover_pause().await;
        #[cfg(feature = "faults")]
        if self.settings.handover_token.is_some() {
            crate::faults::successor_exit_later();
        }
        if let Some(((elder, my_created), bake)) = bake {
            step(TakeoverStep::Baking);
            match self.await_bake_end(elder, my_created, bake).await {
                BakeWait::RolledBack => {
                    tracing::warn!("the elder took the live socket back during the bake: it removes this instance");
                    self.shared.set_takeover(TakeoverPhase::Failed {
                        reason: "rolled back by the elder during the bake".into(),
                    });
                    return Ok(());
                }
                BakeWait::Ended => {}
            }
            self.publish_sockets();
        }
        step(TakeoverStep::StoppingTheElder);
        let stop = Duration::from_secs(self.settings.stop_timeout_secs);
        for id in &elders {
            tracing::info!(container = %id, "stopping and removing");
            // The elder may still be draining requests: it is removed once
            // it has stopped, not killed by a forced remove. One restarted
            // meanwhile (`docker restart`, its restart policy) runs again
            // when the remove comes: it is stopped again.
            let mut attempts = 0;
            while let Err(source) = watch::stop_and_remove(&self.engine, id, stop, StopFailed::WaitForIt).await {
                attempts += 1;
                if attempts == ELDER_STOP_ATTEMPTS {
                    return Err(TakeoverError::Docker {
                        context: format!("removing the elder {id}"),
                        source,
                    });
                }
                tracing::warn!(container = %id, error = %source, "the elder runs again: stopping it again");
            }
        }
        // An elder killed during its bake left its standby name behind.
        self.remove_stale_standby();
        let mine = self.engine.inspect_container(me).await;
        if let Ok(c) = &mine {
            let name = c.name.clone().unwrap_or_default();
            let base = base_name(&name, self.settings.ports);
            if base != name.trim_start_matches('/')
                && let Err(e) = self.engine.rename_container(me, &base).await
            {
                tracing::warn!(error = %e, "keeping the successor's name");
            }
        }
        self.shared.record_takeover_done(me);
        self.shared.set_takeover(TakeoverPhase::Done);
        tracing::info!("this instance is the live one");
        // In the background: this instance is the live one already, and its
        // watch starts as this returns. The hold first, so that retention
        // may remove the image it ran.
        let (engine, settings, me, replaced) =
            (self.engine.clone(), self.settings.clone(), me.to_string(), elders.len());
        tokio::spawn(async move {
            if let Ok(c) = &mine {
                super::hold::renew(&engine, &settings, c).await;
            }
            super::retention::after_handover(&engine, &settings, &me, replaced).await;
        });
        Ok(())
    }
}

/// How a bake ended, as the baked successor sees it.
enum BakeWait {
    /// The elder said so, or it is gone: this instance stays, alone.
    Ended,
    /// The elder published its live socket again: it removes this instance.
    RolledBack,
}

impl Orchestrator {
    /// Serves the public while the elder bakes this instance, until the
    /// elder's second go-ahead (the bake ended clean), its taking the live
    /// socket back, or its end (killed, stopped, restarted: this instance
    /// goes on alone). An elder silent for the whole bake and the takeover
    /// budget after it is taken for gone.
    async fn await_bake_end(&self, elder: &str, my_created: (i64, u32), bake: Duration) -> BakeWait {
        let deadline = Instant::now() + bake + self.settings.takeover_deadline();
        let go = self.shared.go.notified();
        tokio::pin!(go);
        let mut looks = 0u32;
        loop {
            tokio::select! {
                _ = &mut go => return BakeWait::Ended,
                _ = sleep(Duration::from_millis(20)) => {}
            }
            // Two stats, every 20 ms: once the elder has the live socket
            // back, nginx's pooled connections to this instance must close
            // with their next answer, as an elder's do after a switch.
            if self.taken_over_from() {
                self.shared.lingering.store(true, std::sync::atomic::Ordering::Relaxed);
                return BakeWait::RolledBack;
            }
            looks += 1;
            if !looks.is_multiple_of(12) {
                continue;
            }
            match self.elder_gone(elder, my_created).await {
                Ok(Some(why)) => {
                    tracing::warn!(elder, why, "the elder is gone during the bake: this instance stays");
                    return BakeWait::Ended;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(elder, error = %e, "cannot see the elder; asking again"),
            }
            if Instant::now() >= deadline {
                tracing::warn!(elder, "the elder never ended the bake: this instance stays");
                return BakeWait::Ended;
            }
        }
    }

    /// Removes the standby name a baking elder published: once no elder
    /// bakes, nginx must not keep trying it.
    fn remove_stale_standby(&self) {
        let Some(standby) = self.settings.standby_socket() else {
            return;
        };
        match std::fs::remove_file(&standby) {
            Ok(()) => tracing::info!(path = %standby.display(), "removed a stale standby socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %standby.display(), error = %e, "could not remove the standby socket"),
        }
    }

    /// Asks `GET /health` through the live socket's public path until this
    /// very container answers there: the path nginx connects to is this
    /// instance's.
    async fn confirm_live(&self, me: &str, path: &std::path::Path, deadline: Instant) -> Result<(), TakeoverError> {
        let started = Instant::now();
        let Some(client) = &self.live_http else {
            return Ok(());
        };
        loop {
            let last_seen = match client.get("http://localhost/health").send().await {
                Ok(r) => match r.json::<serde_json::Value>().await {
                    Ok(body) if body["container"] == me => return Ok(()),
                    Ok(body) => format!("container {}", body["container"]),
                    Err(e) => format!("unreadable answer: {e}"),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(TakeoverError::LiveNotConfirmed {
                    path: path.display().to_string(),
                    waited: started.elapsed(),
                    last_seen,
                });
            }
            sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::created_key;

    #[test]
    fn docker_timestamps_order_by_time_whatever_their_fraction_length() {
        let a = created_key("2026-11-23T04:13:01.5Z");
        let b = created_key("2026-11-23T04:13:01.123456789Z");
        let c = created_key("2026-11-23T04:13:02Z");
        assert!(b < a && a < c);
    }
}
