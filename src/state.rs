//! The state the HTTP layer shares with the orchestrator.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

pub use crate::events::{BakeOutcome, Outcome, Requested, TakeoverPhase, TakeoverStep, UpgradeStep};

/// How many finished upgrades `/status` remembers.
pub const HISTORY_LEN: usize = 10;
/// How many finished takeovers the handover record remembers.
const TAKEOVERS_LEN: usize = 16;

/// How long `/health` reuses the Docker daemon's last answer.
pub const DAEMON_STATE_MAX_AGE: Duration = Duration::from_secs(1);

/// The last outcome of a check, reused for `max_age`: however many callers
/// ask within that window, the check runs once; callers that ask while it
/// runs wait for its outcome instead of running their own.
#[derive(Debug)]
pub struct Recent<T> {
    max_age: Duration,
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, T)>>,
}

impl<T: Clone> Recent<T> {
    pub fn new(max_age: Duration) -> Recent<T> {
        Recent {
            max_age,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The last outcome if it is younger than `max_age`; else `check`'s,
    /// which is kept.
    pub async fn get_or_check<F, Fut>(&self, check: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let mut last = self.last.lock().await;
        if let Some((at, value)) = last.as_ref()
            && at.elapsed() < self.max_age
        {
            return value.clone();
        }
        let value = check().await;
        *last = Some((tokio::time::Instant::now(), value.clone()));
        value
    }
}

/// One small struct behind one lock; every critical section is a few field
/// reads or writes, never an await.
#[derive(Debug, Default)]
pub struct Status {
    /// The upgrade this instance is running as the elder, if any: the
    /// single-flight lock. A second request is refused while this is `Some`.
    pub upgrade: Option<InProgress>,
    /// Where this instance is in taking over from its elder.
    pub takeover: TakeoverPhase,
    /// The last finished upgrades, newest first.
    pub history: VecDeque<UpgradeRecord>,
    /// The bake this instance runs as the elder, if any: its successor
    /// serves the public while this instance watches it.
    pub bake: Option<Bake>,
    /// How the last bake this instance ran ended.
    pub last_bake: Option<BakeReport>,
    /// Set by an elder's go-ahead on its successor: how long the elder
    /// bakes it. `None`: the elder does not bake (or is an older version).
    pub bake_requested: Option<Duration>,
    /// The images rolled back (during a bake, or by Swarm), newest first,
    /// without a data directory.
    pub rejected: Vec<Rejected>,
}

/// A bake under way: the elder keeps running out of rotation and watches
/// its successor until the time is up, a breach, or an operator's word.
#[derive(Debug, Clone)]
pub struct Bake {
    /// The version being baked.
    pub to: String,
    /// The successor's container id.
    pub successor: String,
    pub successor_port: u16,
    pub started: Instant,
    pub ends: Instant,
    /// The successor's public answers, and the 5xx among them, last seen.
    pub answers: (u64, u64),
}

/// An operator's word on a bake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BakeVerdict {
    /// `POST /promote`: the successor is good; end the bake now.
    Promote,
    /// `POST /rollback`: give the traffic back to the elder now.
    Rollback,
}

/// An operator's word on a running bake (`/promote`, `/rollback`, and
/// their `/<container>` forms for an app): the one way both bakes are asked.
#[derive(Debug, Default)]
pub struct BakeAsk {
    verdict: Mutex<Option<BakeVerdict>>,
    asked: Notify,
}

impl BakeAsk {
    /// Passes `verdict` to the bake, which acts on it at once.
    pub fn ask(&self, verdict: BakeVerdict) {
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict);
        self.asked.notify_one();
    }

    /// Resolves when a word is passed (or was passed before and not yet
    /// taken), with that word.
    pub async fn asked(&self) -> Option<BakeVerdict> {
        self.asked.notified().await;
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets any word: a new bake starts.
    pub fn clear(&self) {
        *self.verdict.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// How a bake ended, as `/status`, the `/upgrade` answer and `/promote` or
/// `/rollback` report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BakeReport {
    pub outcome: BakeOutcome,
    pub reason: String,
    pub to: String,
    /// How long the bake ran.
    pub baked_ms: u64,
    /// The successor's public answers over the bake, and its 5xx among them.
    pub answers: u64,
    pub server_errors: u64,
    /// When the breach was detected, milliseconds since the epoch.
    pub breach_at_ms: Option<u64>,
    /// From the breach's detection to the live socket naming this instance again.
    pub reclaim_us: Option<u64>,
}

impl BakeReport {
    /// Whether the successor was rolled back.
    pub fn rolled_back(&self) -> bool {
        self.outcome == BakeOutcome::RolledBack
    }
}

/// An image rolled back during a bake (or by Swarm): `/upgrade` to
/// `:latest` (or to a requirement that picks it) and the watch policy refuse
/// it until a newer one appears or it is named exactly. Every rolled-back
/// image is kept, not only the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub version: String,
    /// The registry's digest of the image (`sha256:…`). `None` in a record
    /// written before digests were kept: then the version alone matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub reason: String,
    /// Seconds since the epoch.
    pub at: u64,
}

impl Rejected {
    /// Whether this record refuses `version` with `digest` (`None`: not
    /// known): by digest when both are known, else by version.
    pub fn refuses(&self, version: &str, digest: Option<&str>) -> bool {
        match (&self.digest, digest) {
            (Some(mine), Some(theirs)) => mine == theirs,
            _ => self.version == version,
        }
    }
}

/// How many rolled-back images are remembered.
const REJECTED_LEN: usize = 64;

/// `rejected.json` as it is on disk: a list, newest first, or the single
/// record an earlier release wrote.
#[derive(Deserialize)]
#[serde(untagged)]
enum RejectedFile {
    Many(Vec<Rejected>),
    One(Rejected),
}

fn read_rejected(path: &std::path::Path) -> Option<Vec<Rejected>> {
    match serde_json::from_slice(&std::fs::read(path).ok()?).ok()? {
        RejectedFile::Many(list) => Some(list),
        RejectedFile::One(one) => Some(vec![one]),
    }
}

/// The running upgrade, as a refused second request is told.
#[derive(Debug, Clone, Serialize)]
pub struct InProgress {
    /// What was asked for: `latest`, `2`, `=1.4.0`.
    pub requirement: String,
    /// The step the upgrade is at.
    pub step: UpgradeStep,
    /// When it started.
    #[serde(skip)]
    pub started: Instant,
}

/// A finished upgrade, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeRecord {
    pub from: String,
    pub to: Option<String>,
    /// What was asked for: `latest`, `2`, `=1.4.0`, `rollback`.
    pub requested: Requested,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub duration_ms: u128,
    /// Seconds since the epoch.
    pub finished_at: u64,
}

/// What the routes and the orchestrator share.
#[derive(Debug)]
pub struct Shared {
    pub status: Mutex<Status>,
    /// Where the history is kept across instances (a file in the data
    /// directory, a volume every generation mounts), if anywhere.
    history_file: Option<PathBuf>,
    /// Where the finished takeovers are recorded, beside the history: the
    /// handover settings a container was created with are good for one
    /// takeover, and a restart must not run it again.
    handover_file: Option<PathBuf>,
    /// The elder's go-ahead for this instance's takeover.
    pub go: Notify,
    /// Becomes `true` when this instance is asked to stop (SIGTERM, SIGINT).
    pub shutdown: watch::Sender<bool>,
    /// `true` while this instance, taken over from, lingers before its
    /// graceful stop: every answer then closes its connection.
    pub lingering: std::sync::atomic::AtomicBool,
    /// Wakes the watch policy for a look at the registry now (the registry
    /// hook); several wakes before it looks are one look.
    pub check_now: Notify,
    /// Wakes the watch of companion containers (their `selfup.watch`
    /// label) for a look now, at the containers of the repositories in
    /// `pushed`: the registry hook said tags of them were pushed.
    pub check_containers: Notify,
    /// The repositories (as the registry names them, without its host) the
    /// registry hook said were pushed since the container watch last looked.
    pub pushed: Mutex<std::collections::HashSet<String>>,
    /// Every step of every upgrade and update, for `/events` (in the data directory when there is one).
    pub events: crate::events::EventLog,
    /// What `/metrics` exports.
    pub metrics: crate::metrics::Metrics,
    /// Wakes a running bake: an operator's `/promote` or `/rollback`.
    pub bake_ask: BakeAsk,
    /// Wakes whoever waits for a bake's end (`/promote`, `/rollback`).
    pub bake_ended: Notify,
    /// Where the version rolled back during a bake is kept, beside the history.
    rejected_file: Option<PathBuf>,
    /// The Docker daemon's state as `/health` reports it, kept
    /// [`DAEMON_STATE_MAX_AGE`]: a flood of public `/health` pings the
    /// daemon once a second at most.
    pub daemon: Recent<Result<(), String>>,
    /// The pause of the public traffic (`POST /pause`, `POST /resume`).
    pub pause: crate::pause::Pause,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            status: Mutex::default(),
            history_file: None,
            handover_file: None,
            go: Notify::new(),
            shutdown: watch::channel(false).0,
            lingering: Default::default(),
            check_now: Notify::new(),
            check_containers: Notify::new(),
            pushed: Mutex::default(),
            events: crate::events::EventLog::default(),
            metrics: crate::metrics::Metrics::default(),
            bake_ask: BakeAsk::default(),
            bake_ended: Notify::new(),
            rejected_file: None,
            daemon: Recent::new(DAEMON_STATE_MAX_AGE),
            pause: crate::pause::Pause::default(),
        }
    }
}

impl Shared {
    /// Shared state whose history and handover record are kept in
    /// `data_dir`, a volume every generation mounts.
    pub fn with_data_dir(data_dir: &std::path::Path) -> Shared {
        let history_file = data_dir.join("history.json");
        let history = read_history(&history_file).unwrap_or_default();
        let shared = Shared {
            history_file: Some(history_file),
            handover_file: Some(data_dir.join("handover.json")),
            rejected_file: Some(data_dir.join("rejected.json")),
            events: crate::events::EventLog::in_dir(data_dir),
            ..Shared::default()
        };
        shared.status().history = history;
        shared
    }

    /// Locks the status; a panic elsewhere must not take the service down with it.
    pub fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_takeover(&self, phase: TakeoverPhase) {
        let event = crate::events::Event::Takeover {
            phase: phase.clone().into(),
        };
        let changed = std::mem::replace(&mut self.status().takeover, phase.clone()) != phase;
        if changed {
            self.events.emit(event);
        }
    }

    /// The last finished upgrades, newest first. With a history file, the file
    /// is the truth: the elder writes its record after its successor started.
    pub fn history(&self) -> VecDeque<UpgradeRecord> {
        match &self.history_file {
            Some(path) => read_history(path).unwrap_or_else(|| self.status().history.clone()),
            None => self.status().history.clone(),
        }
    }

    /// Adds a finished upgrade to the history, and saves it where it is kept.
    pub fn record(&self, record: UpgradeRecord) {
        self.metrics.upgrade_finished(
            record.outcome,
            record.requested == Requested::Rollback,
            record.duration_ms,
        );
        self.events.emit(crate::events::Event::UpgradeFinished {
            outcome: record.outcome.into(),
            requested: record.requested.clone(),
            to: record.to.clone(),
            error: record.error.clone(),
            duration_ms: u64::try_from(record.duration_ms).unwrap_or(u64::MAX),
        });
        let mut history = self.history();
        history.push_front(record);
        history.truncate(HISTORY_LEN);
        self.status().history = history.clone();
        if let Some(path) = &self.history_file {
            let saved = serde_json::to_string_pretty(&history)
                .map_err(std::io::Error::other)
                .and_then(|text| crate::atomic::write_atomically(path, &text));
            if let Err(e) = saved {
                tracing::warn!(path = %path.display(), error = %e, "the upgrade history is kept in memory only");
            }
        }
    }
}

impl Shared {
    /// The images rolled back, newest first: with a data directory, every
    /// generation sees them.
    pub fn rejected_all(&self) -> Vec<Rejected> {
        match &self.rejected_file {
            Some(path) => read_rejected(path).unwrap_or_default(),
            None => self.status().rejected.clone(),
        }
    }

    /// The image last rolled back, if any (`/status`'s `rolled_back_version`).
    pub fn rejected(&self) -> Option<Rejected> {
        self.rejected_all().into_iter().next()
    }

    /// The record that refuses `version` with `digest`, if one does.
    pub fn refused(&self, version: &str, digest: Option<&str>) -> Option<Rejected> {
        self.rejected_all().into_iter().find(|r| r.refuses(version, digest))
    }

    /// Remembers an image rolled back, beside every one before it.
    pub fn reject(&self, rejected: Rejected) {
        let mut list = self.rejected_all();
        list.retain(|r| !(r.version == rejected.version && r.digest == rejected.digest));
        list.insert(0, rejected);
        list.truncate(REJECTED_LEN);
        self.save_rejected(list);
    }

    /// Forgets the rolled-back records of `version` with `digest`: an
    /// upgrade that named it exactly ran it to the end.
    pub fn forget_rejected(&self, version: &str, digest: Option<&str>) {
        let mut list = self.rejected_all();
        let before = list.len();
        list.retain(|r| !r.refuses(version, digest));
        if list.len() != before {
            self.save_rejected(list);
        }
    }

    fn save_rejected(&self, list: Vec<Rejected>) {
        self.status().rejected = list.clone();
        let Some(path) = &self.rejected_file else { return };
        let saved = serde_json::to_string_pretty(&list)
            .map_err(std::io::Error::other)
            .and_then(|text| crate::atomic::write_atomically(path, &text));
        if let Err(e) = saved {
            tracing::warn!(path = %path.display(), error = %e, "the rolled back images are remembered in memory only");
        }
    }
}

/// The handover record: the containers that finished the takeover their
/// handover settings named, newest first.
#[derive(Debug, Default, Serialize, Deserialize)]
struct HandoverRecord {
    taken_over: VecDeque<String>,
}

impl Shared {
    /// Whether `container` has already finished the takeover its handover
    /// settings name: then a start of it is a restart, not a takeover.
    pub fn takeover_done(&self, container: &str) -> bool {
        self.handover_file
            .as_deref()
            .and_then(read_handover)
            .is_some_and(|r| r.taken_over.iter().any(|c| c == container))
    }

    /// Records that `container` finished its takeover. Without a data
    /// directory nothing is kept, and a restart takes over again.
    pub fn record_takeover_done(&self, container: &str) {
        let Some(path) = &self.handover_file else { return };
        let mut record = read_handover(path).unwrap_or_default();
        record.taken_over.retain(|c| c != container);
        record.taken_over.push_front(container.to_string());
        record.taken_over.truncate(TAKEOVERS_LEN);
        let saved = serde_json::to_string_pretty(&record)
            .map_err(std::io::Error::other)
            .and_then(|text| crate::atomic::write_atomically(path, &text));
        if let Err(e) = saved {
            tracing::warn!(path = %path.display(), error = %e, "the takeover is not recorded: a restart would run it again");
        }
    }
}

fn read_handover(path: &std::path::Path) -> Option<HandoverRecord> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn read_history(path: &std::path::Path) -> Option<VecDeque<UpgradeRecord>> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Seconds since the epoch, for records.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the epoch.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Paused time: the window is measured on the test's clock, not the
    // machine's, so a slow machine cannot end it early.
    #[tokio::test(start_paused = true)]
    async fn many_callers_within_the_window_share_one_check_and_a_later_one_checks_again() {
        let recent = std::sync::Arc::new(Recent::<u32>::new(Duration::from_millis(300)));
        let checks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let ask = || {
            let (recent, checks) = (recent.clone(), checks.clone());
            async move {
                recent
                    .get_or_check(|| async {
                        // A slow check: the callers that arrive meanwhile wait for it.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        checks.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
                    })
                    .await
            }
        };
        let answers = futures_util::future::join_all((0..200).map(|_| tokio::spawn(ask()))).await;
        assert!(answers.into_iter().all(|a| a.unwrap() == 1));
        for _ in 0..100 {
            assert_eq!(ask().await, 1);
        }
        assert_eq!(checks.load(std::sync::atomic::Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(ask().await, 2, "an outcome older than the window is checked again");
        assert_eq!(ask().await, 2);
    }

    fn record(n: u64) -> UpgradeRecord {
        UpgradeRecord {
            from: "1.0.0".into(),
            to: Some("1.1.0".into()),
            requested: Requested::Registry("latest".into()),
            outcome: Outcome::Upgraded,
            error: None,
            duration_ms: 400,
            finished_at: n,
        }
    }

    #[test]
    fn the_history_survives_into_the_next_instance_and_keeps_the_newest_ten() {
        let dir = std::env::temp_dir().join(format!("selfup-history-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let elder = Shared::with_data_dir(&dir);
        for n in 0..12 {
            elder.record(record(n));
        }
        let successor = Shared::with_data_dir(&dir);
        let history = successor.status().history.clone();
        assert_eq!(history.len(), HISTORY_LEN);
        assert_eq!(history.front().unwrap().finished_at, 11);
        assert_eq!(history.back().unwrap().finished_at, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_history_written_when_requests_were_strings_reads_and_writes_back_the_same() {
        let old = r#"[{"from":"1.1.0","to":"1.0.0","requested":"rollback","outcome":"upgraded","error":null,"duration_ms":900,"finished_at":2},{"from":"1.0.0","to":"1.1.0","requested":"=1.1.0","outcome":"upgraded","error":null,"duration_ms":400,"finished_at":1}]"#;
        let history: VecDeque<UpgradeRecord> = serde_json::from_str(old).unwrap();
        assert_eq!(history[0].requested, Requested::Rollback);
        assert_eq!(history[1].requested, Requested::Registry("=1.1.0".into()));
        assert_eq!(serde_json::to_string(&history).unwrap(), old);
    }

    #[test]
    fn a_finished_takeover_is_remembered_by_the_next_start_of_the_same_container() {
        let dir = std::env::temp_dir().join(format!("selfup-handover-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = Shared::with_data_dir(&dir);
        assert!(!first.takeover_done("abc"));
        first.record_takeover_done("abc");
        let restarted = Shared::with_data_dir(&dir);
        assert!(restarted.takeover_done("abc"));
        assert!(!restarted.takeover_done("def"));
        assert!(!Shared::default().takeover_done("abc"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn rejected(version: &str, digest: &str) -> Rejected {
        Rejected {
            version: version.into(),
            digest: Some(digest.into()),
            reason: format!("{version} breached"),
            at: 1,
        }
    }

    #[test]
    fn every_rolled_back_image_is_refused_by_digest_until_it_is_forgotten() {
        let dir = std::env::temp_dir().join(format!("selfup-rejected-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let elder = Shared::with_data_dir(&dir);
        assert_eq!(elder.rejected(), None);
        // 9.3.1 crashed in its bake, then 9.2.0 was rolled back by an operator.
        elder.reject(rejected("9.3.1", "sha256:931"));
        elder.reject(rejected("9.2.0", "sha256:920"));
        let successor = Shared::with_data_dir(&dir);
        assert_eq!(successor.rejected().unwrap().version, "9.2.0", "the newest first");
        assert!(
            successor.refused("9.3.1", Some("sha256:931")).is_some(),
            "the first is kept"
        );
        assert!(successor.refused("9.2.0", Some("sha256:920")).is_some());
        // The same version pushed again is another image.
        assert_eq!(successor.refused("9.3.1", Some("sha256:other")), None);
        // 9.2.0 named exactly and run to the end: forgotten; 9.3.1 still refused.
        successor.forget_rejected("9.2.0", Some("sha256:920"));
        let next = Shared::with_data_dir(&dir);
        assert_eq!(next.refused("9.2.0", Some("sha256:920")), None);
        assert_eq!(
            next.refused("9.3.1", Some("sha256:931")).unwrap().reason,
            "9.3.1 breached"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_single_record_an_earlier_release_wrote_is_still_read_and_matches_by_version() {
        let dir = std::env::temp_dir().join(format!("selfup-rejected-old-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("rejected.json"),
            r#"{"version": "9.3.1", "reason": "it exited with code 3", "at": 7}"#,
        )
        .unwrap();
        let shared = Shared::with_data_dir(&dir);
        let old = shared
            .refused("9.3.1", Some("sha256:931"))
            .expect("the old record refuses 9.3.1");
        assert_eq!((old.digest, old.at), (None, 7));
        assert_eq!(shared.refused("9.4.0", Some("sha256:940")), None);
        // A new rejection keeps the old record beside it.
        shared.reject(rejected("9.2.0", "sha256:920"));
        let all = Shared::with_data_dir(&dir).rejected_all();
        let versions: Vec<_> = all.iter().map(|r| r.version.as_str()).collect();
        assert_eq!(versions, ["9.2.0", "9.3.1"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_data_directory_rolled_back_images_are_kept_in_memory() {
        let shared = Shared::default();
        shared.reject(rejected("9.3.1", "sha256:931"));
        shared.reject(rejected("9.2.0", "sha256:920"));
        shared.reject(rejected("9.3.1", "sha256:931"));
        assert_eq!(shared.rejected_all().len(), 2, "one record per image");
        assert_eq!(shared.rejected().unwrap().version, "9.3.1");
        assert!(
            shared.refused("9.2.0", None).is_some(),
            "an unknown digest matches by version"
        );
    }
}
