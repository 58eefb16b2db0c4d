//! The bake of a blue-green app's handover: after the switch, the elder is
//! kept running, out of rotation, for `update_bake_secs`, and the successor
//! is judged as the self-upgrade judges its own: the same [`Judge`], the
//! same paces, the same [`BakeEnd`] ([`crate::recreate::bake`]). A breach sends the app's traffic back
//! to the warm elder with one store (the switch), and the successor is
//! removed; a clean end retires the elder.
//!
//! What is watched, and why each:
//! - the Engine's view of the successor every 25 ms: an exit, a restart or
//!   an unhealthy HEALTHCHECK is seen at once;
//! - the app's health check (`selfup.health`, else a connect to its port)
//!   every 250 ms, each given 1 s: three misses in a row are a hang;
//! - what selfup's proxy sees of the successor's answers: the share of 5xx
//!   against `bake_max_5xx_ratio` (from 20 answers on), and any connection
//!   it refused or ended without an answer. A refused connection is joined
//!   to the elder instead (the elder is the standby of the app's socket
//!   during the bake), so it fails no request; so is an unanswered one whose
//!   request may be sent twice (GET, HEAD, OPTIONS, TRACE). Either ends the
//!   bake at the next look, and from the first, every new connection goes
//!   to the elder at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};

use super::Companion;
use super::blue_green::{self, Answers, AppBakeReport, AppFront, AppSpec};
use super::progress::{Progress, Step};
use crate::docker::Engine;
use crate::events::Event;
use crate::recreate::bake::{BakeEnd, HEALTH_EVERY, HEALTH_TIMEOUT, Judge, LOOK_EVERY};
use crate::recreate::watch::Watcher;
use crate::state::{BakeAsk, BakeOutcome, BakeVerdict};

impl Companion {
    /// Bakes a blue-green app's successor after the switch, the elder warm
    /// out of rotation: the report of a clean end, or why the traffic went
    /// back to the elder (the successor is then the caller's to remove).
    pub(super) async fn bake_app(&self, b: Baking<'_>) -> Result<AppBakeReport, String> {
        let container = b.progress.container.to_string();
        b.progress.step(Step::Baking);
        self.shared.events.emit(Event::BakeStarted {
            to: b.image.to_string(),
            secs: b.window.as_secs(),
            container: Some(container.clone()),
        });
        tracing::info!(
            container = b.name,
            secs = b.window.as_secs(),
            "baking the new container; the old one stands by"
        );
        let ask = Arc::new(BakeAsk::default());
        self.bakes().insert(b.name.to_string(), ask.clone());
        let started = Instant::now();
        let answers = b.front.answers();
        let end = AppBake {
            engine: &self.engine,
            http: &self.http,
            id: b.new_id,
            addr: b.to,
            health: b.spec.health.as_deref(),
            answers: answers.clone(),
            window: b.window,
            max_ratio: self.settings.bake_max_5xx_ratio,
            ask: &ask,
        }
        .run()
        .await;
        self.bakes().remove(b.name);
        let (total, server_errors) = answers.counts();
        let (outcome, reason, result) = match end {
            BakeEnd::Promoted { reason, .. } => {
                // The elder stands by no longer.
                b.front.switch(b.to, None);
                tracing::info!(container = b.name, %reason, "the bake passed");
                let report = AppBakeReport {
                    outcome: BakeOutcome::Promoted,
                    reason: reason.clone(),
                    baked_ms: started.elapsed().as_millis(),
                    answers: total,
                    server_errors,
                };
                (BakeOutcome::Promoted, reason, Ok(report))
            }
            BakeEnd::RolledBack { reason, answering, .. } => {
                let breach = std::time::Instant::now();
                let successor = b.front.switch(b.elder, None);
                let reclaim_us = breach.elapsed().as_micros();
                tracing::warn!(container = b.name, %reason, reclaim_us, "bake breach: the app's traffic is back on the old container");
                // What the successor still relays ends before it is removed;
                // one that does not answer gets a moment only.
                let bound = match answering {
                    true => self.settings.update_deadline(),
                    false => UNANSWERING_DRAIN,
                };
                blue_green::drain(&successor, bound).await;
                let error = format!("rolled back during the bake: {reason}");
                (BakeOutcome::RolledBack, reason, Err(error))
            }
        };
        self.shared.events.emit(Event::BakeEnded {
            outcome,
            reason,
            container: Some(container),
        });
        result
    }

    /// An operator's word on the bake of app `container`: `promote` ends
    /// it with the successor kept, else the traffic goes back to the elder.
    /// False when no bake of it runs here.
    pub fn ask_bake(&self, container: &str, promote: bool) -> bool {
        let Some(ask) = self.bakes().get(container).cloned() else {
            return false;
        };
        match promote {
            true => ask.ask(BakeVerdict::Promote),
            false => ask.ask(BakeVerdict::Rollback),
        }
        true
    }
}

/// How long a successor that no longer answers may keep the connections
/// it had when a bake went back to the elder, before it is removed.
const UNANSWERING_DRAIN: Duration = Duration::from_secs(2);

/// What an app bake works on.
pub(super) struct Baking<'a> {
    pub(super) progress: &'a Progress<'a>,
    pub(super) name: &'a str,
    pub(super) image: &'a str,
    pub(super) front: &'a AppFront,
    pub(super) new_id: &'a str,
    pub(super) to: std::net::SocketAddr,
    pub(super) elder: std::net::SocketAddr,
    pub(super) spec: &'a AppSpec,
    pub(super) window: Duration,
}

/// How a health check that got an answer other than 200 begins.
const ANSWERED: &str = "it answered";

/// One app bake: the successor, how to reach and check it, and what the
/// proxy counts of its answers.
#[derive(Debug)]
pub struct AppBake<'a> {
    pub engine: &'a Engine,
    pub http: &'a reqwest::Client,
    /// The successor's container id and address.
    pub id: &'a str,
    pub addr: SocketAddr,
    /// Its health path, if it has one; else a connect to its port.
    pub health: Option<&'a str>,
    pub answers: Arc<Answers>,
    pub window: Duration,
    pub max_ratio: f64,
    pub ask: &'a BakeAsk,
}

impl AppBake<'_> {
    /// Watches the successor until the window ends, a breach, or an
    /// operator's word.
    pub async fn run(&self) -> BakeEnd {
        let ends = Instant::now() + self.window;
        let check = match self.health {
            Some(path) => format!("GET {path}"),
            None => format!("connect to port {}", self.addr.port()),
        };
        let mut judge = Judge::of(self.max_ratio, &check);
        let watcher = Watcher::new(self.engine, self.id, self.window, LOOK_EVERY);
        let mut look = tokio::time::interval(LOOK_EVERY);
        look.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut next_health = Instant::now();
        let mut health = Box::pin(self.health_check(next_health));
        let breach = BakeEnd::breach;
        // Whether the successor's last health check got an answer, good or
        // bad: one that answers is drained before it is removed.
        let mut answered = true;
        loop {
            let asked = self.ask.asked();
            tokio::select! {
                _ = tokio::time::sleep_until(ends) => {
                    return BakeEnd::clean(self.window.as_secs());
                }
                verdict = asked => match verdict {
                    Some(BakeVerdict::Promote) => return BakeEnd::promoted_by_operator(),
                    Some(BakeVerdict::Rollback) => return BakeEnd::rolled_back_by_operator(answered),
                    None => {}
                },
                _ = look.tick() => {
                    if let Some(why) = watcher.failed().await {
                        return breach(format!("the new container failed: {why}"), false);
                    }
                    let (refused, last) = self.answers.refused();
                    if refused > 0 {
                        return breach(
                            format!(
                                "it refused {refused} connection(s) at {} ({}); the old container took them",
                                self.addr,
                                last.unwrap_or_default()
                            ),
                            false,
                        );
                    }
                    let dropped = self.answers.dropped();
                    if dropped > 0 {
                        return breach(
                            format!(
                                "it closed {dropped} connection(s) at {} without an answer; the old container took every connection since",
                                self.addr
                            ),
                            false,
                        );
                    }
                    if let Some(reason) = judge.counts(self.answers.counts()) {
                        return breach(reason, true);
                    }
                }
                result = &mut health => {
                    answered = match &result {
                        Ok(()) => true,
                        Err(e) => e.starts_with(ANSWERED),
                    };
                    if let Some(reason) = judge.look(result.map(|()| self.answers.counts())) {
                        return breach(reason, answered);
                    }
                    next_health += HEALTH_EVERY;
                    next_health = next_health.max(Instant::now());
                    health = Box::pin(self.health_check(next_health));
                }
            }
        }
    }

    /// One look at the successor's health, at `at`.
    async fn health_check(&self, at: Instant) -> Result<(), String> {
        tokio::time::sleep_until(at).await;
        let looked = async {
            match self.health {
                Some(path) => {
                    let r = self
                        .http
                        .get(format!("http://{}{path}", self.addr))
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    match r.status().as_u16() {
                        200 => Ok(()),
                        status => Err(format!("{ANSWERED} {status}")),
                    }
                }
                None => TcpStream::connect(self.addr).await.map(drop).map_err(|e| e.to_string()),
            }
        };
        match tokio::time::timeout(HEALTH_TIMEOUT, looked).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {HEALTH_TIMEOUT:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTP server on loopback that answers every request with `status`.
    async fn answering(status: u16) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        blue_green::answering(format!("HTTP/1.0 {status} X\r\nContent-Length: 0\r\n\r\n")).await
    }

    /// Why a bake that went back to the elder did, and whether the
    /// successor still answered.
    fn rolled_back(end: BakeEnd) -> (String, bool) {
        let BakeEnd::RolledBack { reason, answering, .. } = end else {
            panic!("{end:?}")
        };
        (reason, answering)
    }

    /// A bake of the app at `addr`; the Engine is nowhere, so it never
    /// reports the successor dead (no news is not a death).
    async fn bake(
        addr: SocketAddr,
        health: Option<&str>,
        answers: Arc<Answers>,
        ask: &BakeAsk,
        window: Duration,
    ) -> BakeEnd {
        let engine = Engine::new("/nonexistent/docker.sock".into());
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        AppBake {
            engine: &engine,
            http: &http,
            id: "successor",
            addr,
            health,
            answers,
            window,
            max_ratio: 0.01,
            ask,
        }
        .run()
        .await
    }

    #[tokio::test]
    async fn a_healthy_successor_passes_and_an_operator_ends_the_bake_either_way() {
        let (addr, server) = answering(200).await;
        let ask = BakeAsk::default();
        let started = Instant::now();
        let end = bake(addr, Some("/healthz"), Arc::default(), &ask, Duration::from_secs(1)).await;
        assert_eq!(end, BakeEnd::clean(1));
        assert!(started.elapsed() >= Duration::from_secs(1));
        ask.ask(BakeVerdict::Promote);
        let end = bake(addr, None, Arc::default(), &ask, Duration::from_secs(60)).await;
        assert_eq!(end, BakeEnd::promoted_by_operator());
        ask.ask(BakeVerdict::Rollback);
        let end = bake(addr, None, Arc::default(), &ask, Duration::from_secs(60)).await;
        assert_eq!(end, BakeEnd::rolled_back_by_operator(true));
        server.abort();
    }

    #[tokio::test]
    async fn three_bad_health_answers_a_refused_connection_or_a_run_of_5xx_end_the_bake() {
        let (addr, server) = answering(404).await;
        let ask = BakeAsk::default();
        let end = bake(addr, Some("/healthz"), Arc::default(), &ask, Duration::from_secs(60)).await;
        assert_eq!(
            end,
            BakeEnd::breach(
                "the successor's GET /healthz failed 3 times in a row (last: it answered 404)".into(),
                true
            )
        );
        let refused = Arc::new(Answers::default());
        refused.refusal(&std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let end = bake(addr, None, refused, &ask, Duration::from_secs(60)).await;
        let (reason, answering) = rolled_back(end);
        assert!(reason.starts_with("it refused 1 connection(s)"), "{reason}");
        assert!(!answering);
        let dropped = Arc::new(Answers::default());
        dropped.drop_noted();
        let end = bake(addr, None, dropped, &ask, Duration::from_secs(60)).await;
        let (reason, answering) = rolled_back(end);
        assert!(reason.starts_with("it closed 1 connection(s)"), "{reason}");
        assert!(!answering);
        let errors = Arc::new(Answers::default());
        for status in [200; 18].into_iter().chain([500, 502]) {
            errors.answered(Some(status));
        }
        let end = bake(addr, None, errors, &ask, Duration::from_secs(60)).await;
        assert_eq!(
            end,
            BakeEnd::breach(
                "2 of its 20 public answers were 5xx (10.0 %), above bake_max_5xx_ratio 0.01".into(),
                true
            )
        );
        server.abort();
        // Nobody listens: with no health path, three failed connects.
        let gone = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = gone.local_addr().unwrap();
        drop(gone);
        let end = bake(dead, None, Arc::default(), &ask, Duration::from_secs(60)).await;
        let (reason, answering) = rolled_back(end);
        assert!(
            reason.starts_with(&format!(
                "the successor's connect to port {} failed 3 times",
                dead.port()
            )),
            "{reason}"
        );
        assert!(!answering);
    }
}
