//! Notifications: a JSON POST to each of `notify_urls` for every finished
//! upgrade, rollback or companion update, and for a version the watch
//! policy found in `notify` mode.
//!
//! Each POST runs in a task of its own with a timeout and a few retries, so
//! a slow or dead endpoint never delays or fails what it reports. An
//! instance on its way out (an elder after its handover) waits a short while
//! for the posts still under way before it exits ([`Notifier::flush`]).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

/// How long one POST may take.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The pauses before the second and later attempts.
const BACKOFF: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];

/// One finished piece of work, as every endpoint receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// `upgrade`, `rollback`, `update` (companion mode), or `available` (the
    /// watch policy found a version and, in `notify` mode, changed nothing).
    pub kind: &'static str,
    /// `upgraded`, `already_there`, `failed`, `updated`, `unchanged`, `available`.
    pub outcome: Outcome,
    /// The version (or image) before.
    pub from: String,
    /// The version (or image) after, or asked for.
    pub to: Option<String>,
    pub duration_ms: u128,
    /// Why it failed, or what started it.
    pub reason: Option<String>,
    /// The container, for a companion update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// One line a person reads: Slack's and ntfy's webhooks show it as it is.
    pub text: String,
    /// This service's host name, so one endpoint can serve many hosts.
    pub host: String,
    /// Seconds since the epoch.
    pub at: u64,
}

impl Event {
    /// An event with its `text` written from the rest.
    pub fn new(
        kind: &'static str,
        outcome: impl Into<Outcome>,
        from: &str,
        to: Option<&str>,
        duration_ms: u128,
        reason: Option<&str>,
    ) -> Event {
        let host = std::env::var("HOSTNAME").unwrap_or_default();
        Event {
            kind,
            outcome: outcome.into(),
            from: from.to_string(),
            to: to.map(str::to_string),
            duration_ms,
            reason: reason.map(str::to_string),
            container: None,
            text: String::new(),
            host,
            at: crate::state::now_secs(),
        }
        .with_text()
    }

    /// The same event about a companion-updated `container`.
    pub fn for_container(mut self, container: &str) -> Event {
        self.container = Some(container.to_string());
        self.with_text()
    }

    fn with_text(mut self) -> Event {
        let subject = match &self.container {
            Some(c) => format!("container {c}"),
            None => "selfup".to_string(),
        };
        let to = self.to.as_deref().unwrap_or("?");
        let mut text = match self.outcome {
            Outcome::Available => format!("{subject}: {to} is available (running {})", self.from),
            Outcome::AlreadyThere | Outcome::Unchanged => format!("{subject}: already at {to}, nothing to do"),
            Outcome::Failed => format!("{subject}: {} from {} to {to} failed", self.kind, self.from),
            outcome => format!(
                "{subject}: {outcome} from {} to {to} in {} ms",
                self.from, self.duration_ms
            ),
        };
        if let Some(reason) = &self.reason {
            text.push_str(": ");
            text.push_str(reason);
        }
        self.text = text;
        self
    }
}

/// How the work a notification reports ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// An upgrade or a rollback: a successor took over.
    Upgraded,
    /// An upgrade or a rollback to what ran: nothing was done.
    AlreadyThere,
    /// An upgrade, rollback or companion update that did not work.
    Failed,
    /// A companion update: the container runs the new image.
    Updated,
    /// A companion update to the image the container ran: nothing was done.
    Unchanged,
    /// The watch policy found a version (`notify` mode: nothing changed).
    Available,
}

/// The name `serde` gives it, as the JSON carries it.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = serde_json::to_value(self).ok();
        f.write_str(name.as_ref().and_then(|n| n.as_str()).unwrap_or_default())
    }
}

impl From<crate::events::Outcome> for Outcome {
    fn from(outcome: crate::events::Outcome) -> Self {
        use crate::events::Outcome as Upgrade;
        match outcome {
            Upgrade::Upgraded => Outcome::Upgraded,
            Upgrade::AlreadyThere => Outcome::AlreadyThere,
            Upgrade::Failed => Outcome::Failed,
        }
    }
}

/// Posts events to the configured endpoints.
#[derive(Debug)]
pub struct Notifier {
    urls: Vec<String>,
    http: reqwest::Client,
    /// How many posts are under way.
    pending: Arc<watch::Sender<usize>>,
}

impl Notifier {
    /// A notifier for `urls`; `None` when there are none.
    pub fn new(urls: &[String]) -> Option<Notifier> {
        if urls.is_empty() {
            return None;
        }
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .ok()?;
        Some(Notifier {
            urls: urls.to_vec(),
            http,
            pending: Arc::new(watch::channel(0).0),
        })
    }

    /// Posts `event` to every endpoint in the background; returns at once.
    pub fn send(&self, event: Event) {
        let body = Arc::new(event);
        for url in &self.urls {
            let (http, url, body) = (self.http.clone(), url.clone(), body.clone());
            let pending = self.pending.clone();
            pending.send_modify(|n| *n += 1);
            tokio::spawn(async move {
                post(&http, &url, &body).await;
                pending.send_modify(|n| *n -= 1);
            });
        }
    }

    /// Waits until no post is under way, or `within` has passed.
    pub async fn flush(&self, within: Duration) {
        let mut pending = self.pending.subscribe();
        let _ = tokio::time::timeout(within, pending.wait_for(|n| *n == 0)).await;
    }
}

/// One event to one endpoint, with retries; failures are logged, never raised.
async fn post(http: &reqwest::Client, url: &str, event: &Event) {
    let mut last = String::new();
    for attempt in 0..=BACKOFF.len() {
        if attempt > 0 {
            tokio::time::sleep(BACKOFF[attempt - 1]).await;
        }
        match http.post(url).json(event).send().await {
            Ok(r) if r.status().is_success() => {
                tracing::info!(url, kind = event.kind, outcome = %event.outcome, "notified");
                return;
            }
            Ok(r) => last = format!("answered {}", r.status()),
            Err(e) => last = e.to_string(),
        }
    }
    tracing::warn!(url, error = %last, attempts = BACKOFF.len() + 1, "a notification was not delivered");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_says_what_happened_in_one_line() {
        let upgraded = Event::new("upgrade", Outcome::Upgraded, "1.0.0", Some("1.1.0"), 512, None);
        assert_eq!(upgraded.text, "selfup: upgraded from 1.0.0 to 1.1.0 in 512 ms");
        let failed = Event::new(
            "upgrade",
            Outcome::Failed,
            "1.0.0",
            Some("2"),
            40,
            Some("no version matches 2"),
        );
        assert_eq!(
            failed.text,
            "selfup: upgrade from 1.0.0 to 2 failed: no version matches 2"
        );
        let found = Event::new("available", Outcome::Available, "1.0.0", Some("1.1.0"), 0, None);
        assert_eq!(found.text, "selfup: 1.1.0 is available (running 1.0.0)");
        let app = Event::new("update", Outcome::Updated, "r/app:1", Some("r/app:2"), 900, None).for_container("app");
        assert_eq!(app.text, "container app: updated from r/app:1 to r/app:2 in 900 ms");
        let body = serde_json::to_value(&app).unwrap();
        for field in [
            "kind",
            "outcome",
            "from",
            "to",
            "duration_ms",
            "reason",
            "text",
            "container",
        ] {
            assert!(body.get(field).is_some(), "{field} in {body}");
        }
    }

    #[test]
    fn every_outcome_is_sent_as_it_was_when_it_was_a_string() {
        let sent = [
            (Outcome::Upgraded, "upgraded"),
            (Outcome::AlreadyThere, "already_there"),
            (Outcome::Failed, "failed"),
            (Outcome::Updated, "updated"),
            (Outcome::Unchanged, "unchanged"),
            (Outcome::Available, "available"),
        ];
        for (outcome, name) in sent {
            assert_eq!(serde_json::to_value(outcome).unwrap(), name);
            assert_eq!(outcome.to_string(), name);
        }
        assert_eq!(
            Outcome::from(crate::events::Outcome::AlreadyThere),
            Outcome::AlreadyThere
        );
    }

    #[tokio::test]
    async fn a_dead_endpoint_costs_the_sender_nothing_and_a_flush_is_bounded() {
        // A port nothing listens on: every attempt is refused, then retried.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let notifier = Notifier::new(&[format!("http://127.0.0.1:{port}/")]).unwrap();
        let started = std::time::Instant::now();
        notifier.send(Event::new(
            "upgrade",
            Outcome::Upgraded,
            "1.0.0",
            Some("1.1.0"),
            1,
            None,
        ));
        assert!(started.elapsed() < Duration::from_millis(50), "{:?}", started.elapsed());
        notifier.flush(Duration::from_millis(100)).await;
        assert_eq!(*notifier.pending.borrow(), 1, "the retries are still under way");
        notifier.flush(Duration::from_secs(10)).await;
        assert_eq!(*notifier.pending.borrow(), 0);
        assert!(Notifier::new(&[]).is_none());
    }
}
