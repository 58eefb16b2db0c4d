//! The bake window: after the switch the elder stays running, out of
//! rotation, and watches its successor for `bake_secs`. A release that goes
//! bad a few seconds after the switch (a crash under real traffic, a hang,
//! a run of 5xx answers) gets the traffic back on the warm elder in one
//! rename, with no pull and no cold start.
//!
//! What the elder watches, and why each:
//! - the Engine's view of the successor every 25 ms: an exit or a restart
//!   is seen at once;
//! - the successor's `/health` every 250 ms, each given 1 s: three misses
//!   in a row are a hang (`docker pause`, a deadlock) the Engine does not
//!   see;
//! - the successor's own count of its public answers and 5xx (in its
//!   `/health` detail, and every 25 ms in `/health?answers`, which costs
//!   it no Docker call), against `bake_max_5xx_ratio`, once there are
//!   [`crate::recreate::bake::MIN_ANSWERS`] to judge by.
//!
//! While it bakes, the elder also publishes its socket as the standby
//! socket, nginx's `backup` server: a connect nginx makes to a dead
//! successor is retried on the elder before the elder has even seen the
//! death. The standby name is withdrawn when the bake ends, either way.

use std::sync::atomic::Ordering;
use std::time::Duration;

use semver::Version;
use tokio::time::{Instant, MissedTickBehavior};

use super::{Orchestrator, Reach};
use crate::events::Event;
use crate::recreate::bake::{BakeEnd, EARLY_LOOK_EVERY, EARLY_LOOKS, HEALTH_EVERY, HEALTH_TIMEOUT, Judge, LOOK_EVERY};
use crate::recreate::watch::Watcher;
use crate::state::{Bake, BakeReport, BakeVerdict};

impl Orchestrator {
    /// Bakes the successor on `port`, this instance out of rotation, until
    /// the bake ends; on a breach the live socket is this instance's again
    /// when it returns. The report is in `/status` from then on.
    pub(super) async fn bake(&self, successor: &str, reach: Reach, token: &str, to: &Version) -> (BakeEnd, BakeReport) {
        let secs = self.settings.bake_secs;
        let started = Instant::now();
        let ends = started + self.settings.bake();
        self.shared.status().bake = Some(Bake {
            to: to.to_string(),
            successor: successor.to_string(),
            successor_port: reach.addr.port(),
            started: started.into_std(),
            ends: ends.into_std(),
            answers: (0, 0),
        });
        self.shared.bake_ask.clear();
        self.shared.events.emit(Event::BakeStarted {
            to: to.to_string(),
            secs,
            container: None,
        });
        tracing::info!(secs, successor, "baking the successor");
        // nginx's pooled connections to this instance close with their next
        // answer: after the switch it serves no public request.
        self.shared.lingering.store(true, Ordering::Relaxed);

        let mut judge = Judge::new(self.settings.bake_max_5xx_ratio);
        let watcher = Watcher::new(&self.engine, successor, self.settings.bake(), LOOK_EVERY);
        let url = format!("http://{}/health", reach.addr);
        let counts_url = format!("{url}?answers");
        let mut shutdown = self.shared.shutdown.subscribe();
        let mut look = tokio::time::interval(EARLY_LOOK_EVERY);
        look.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut early = true;
        let mut next_health = Instant::now();
        let mut health = Box::pin(self.bake_health(&url, successor, reach, token, next_health));
        let end = loop {
            if *shutdown.borrow_and_update() {
                break BakeEnd::Promoted {
                    reason: "this instance was asked to stop during the bake: the successor stays".to_string(),
                    stopped: true,
                };
            }
            let asked = self.shared.bake_ask.asked();
            tokio::select! {
                _ = shutdown.changed() => {}
                verdict = asked => match verdict {
                    Some(BakeVerdict::Promote) => break BakeEnd::promoted_by_operator(),
                    Some(BakeVerdict::Rollback) => break BakeEnd::rolled_back_by_operator(judge.answering()),
                    None => {}
                },
                _ = tokio::time::sleep_until(ends) => {
                    break BakeEnd::clean(secs);
                }
                _ = look.tick() => {
                    if early && started.elapsed() >= EARLY_LOOKS {
                        early = false;
                        look = tokio::time::interval_at(Instant::now() + LOOK_EVERY, LOOK_EVERY);
                        look.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    }
                    if let Some(exit) = watcher.died().await {
                        break BakeEnd::breach(format!("the successor died: {exit}"), false);
                    }
                    // A run of 5xx is judged at this pace, not at /health's.
                    if let Ok(answers) = self.bake_counts(&counts_url, successor, reach, token).await
                        && let Some(breach) = judge.counts(answers)
                    {
                        break BakeEnd::breach(breach, true);
                    }
                }
                answer = &mut health => {
                    if let Some(breach) = judge.look(answer) {
                        break BakeEnd::breach(breach, judge.answering());
                    }
                    if let Some(bake) = self.shared.status().bake.as_mut() {
                        bake.answers = judge.answers;
                    }
                    next_health += HEALTH_EVERY;
                    next_health = next_health.max(Instant::now());
                    health = Box::pin(self.bake_health(&url, successor, reach, token, next_health));
                }
            }
        };
        let mut report = BakeReport {
            outcome: end.outcome(),
            reason: end.reason().to_string(),
            to: to.to_string(),
            baked_ms: started.elapsed().as_millis() as u64,
            answers: judge.answers.0,
            server_errors: judge.answers.1,
            breach_at_ms: None,
            reclaim_us: None,
        };
        if let BakeEnd::RolledBack { .. } = end {
            let detected = std::time::Instant::now();
            report.breach_at_ms = Some(now_ms());
            self.take_back();
            report.reclaim_us = Some(detected.elapsed().as_micros() as u64);
            self.shared.lingering.store(false, Ordering::Relaxed);
            tracing::warn!(reason = %report.reason, reclaim_us = report.reclaim_us, "bake breach: the traffic is back on this instance");
        }
        if let BakeEnd::Promoted { .. } = end {
            // A rollback keeps it until the successor is gone: requests
            // nginx sent to the successor and retries land on this instance.
            self.withdraw_standby();
        }
        self.shared.metrics.bake_finished(report.outcome);
        self.shared.events.emit(Event::BakeEnded {
            outcome: report.outcome,
            reason: report.reason.clone(),
            container: None,
        });
        {
            let mut status = self.shared.status();
            status.bake = None;
            status.last_bake = Some(report.clone());
        }
        self.shared.bake_ended.notify_waiters();
        (end, report)
    }

    /// One look at the successor's `/health`, at `at`: its public answers
    /// and 5xx, or why there is no good answer.
    async fn bake_health(
        &self,
        url: &str,
        successor: &str,
        reach: Reach,
        token: &str,
        at: Instant,
    ) -> Result<(u64, u64), String> {
        tokio::time::sleep_until(at).await;
        let r = self
            .poll(url, reach, token)
            .timeout(HEALTH_TIMEOUT)
            .send()
            .await
            .map_err(|e| match e.is_timeout() {
                true => format!("no answer within {HEALTH_TIMEOUT:?}"),
                false => e.to_string(),
            })?;
        if !r.status().is_success() {
            return Err(format!("/health answered {}", r.status()));
        }
        let body: serde_json::Value = r.json().await.map_err(|e| format!("unreadable /health: {e}"))?;
        if body["container"] != successor {
            return Err(format!("/health answered as {}", body["container"]));
        }
        let count = |k: &str| body["answers"][k].as_u64().unwrap_or(0);
        Ok((count("total"), count("server_errors")))
    }

    /// The successor's public answers and 5xx, from `/health?answers` (no
    /// Docker call on its side), within one look's time.
    async fn bake_counts(&self, url: &str, successor: &str, reach: Reach, token: &str) -> Result<(u64, u64), String> {
        let r = self
            .poll(url, reach, token)
            .timeout(LOOK_EVERY * 4)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
        if body["container"] != successor {
            return Err(format!("answered as {}", body["container"]));
        }
        let count = |k: &str| body["answers"][k].as_u64().unwrap_or(0);
        Ok((count("total"), count("server_errors")))
    }

    /// A GET of the successor's `url`, with the handover secret only where
    /// the address is the successor's own (a bridge network): a loopback
    /// port is one anyone may have bound.
    fn poll(&self, url: &str, reach: Reach, token: &str) -> reqwest::RequestBuilder {
        let poll = self.http.get(url);
        match reach.own {
            true => poll.bearer_auth(token),
            false => poll,
        }
    }

    /// Makes this instance the live one again: the live socket first (the
    /// public's way back), then the others.
    pub(super) fn take_back(&self) {
        if let Some(live) = self.live_socket()
            && let Err(e) = live.publish()
        {
            tracing::warn!(error = %e, "could not publish the live socket");
        }
        self.publish_sockets();
    }

    /// Publishes this instance's socket under the standby name, for nginx's
    /// `backup` server, before a successor baked by it goes live.
    pub(super) fn publish_standby(&self) {
        let (Some(live), Some(standby)) = (self.live_socket(), self.settings.standby_socket()) else {
            return;
        };
        if let Err(e) = live.publish_as(&standby) {
            tracing::warn!(path = %standby.display(), error = %e, "no standby socket: a dead successor's requests fail until the rollback");
        }
    }

    /// Withdraws this instance's standby name, so that nginx does not keep
    /// trying it once the bake is over.
    pub(super) fn withdraw_standby(&self) {
        let (Some(live), Some(standby)) = (self.live_socket(), self.settings.standby_socket()) else {
            return;
        };
        if let Err(e) = live.withdraw(&standby) {
            tracing::warn!(path = %standby.display(), error = %e, "could not withdraw the standby socket");
        }
    }

    /// An operator's word on the running bake (`/promote`, `/rollback`):
    /// waits for the bake to act on it and returns how it ended. `None`
    /// when no bake runs here.
    pub async fn ask_bake(&self, verdict: BakeVerdict) -> Option<BakeReport> {
        let ended = self.shared.bake_ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        self.shared.status().bake.as_ref()?;
        self.shared.bake_ask.ask(verdict);
        let _ = tokio::time::timeout(Duration::from_secs(10), ended).await;
        self.shared.status().last_bake.clone()
    }
}

/// Milliseconds since the epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
