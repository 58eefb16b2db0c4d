//! The state the HTTP layer shares with the orchestrator.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

/// How many finished upgrades `/status` remembers.
pub const HISTORY_LEN: usize = 10;

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
}

/// The running upgrade, as a refused second request is told.
#[derive(Debug, Clone, Serialize)]
pub struct InProgress {
    /// What was asked for: `latest`, `2`, `=1.4.0`.
    pub requirement: String,
    /// The step the upgrade is at.
    pub step: &'static str,
    /// When it started.
    #[serde(skip)]
    pub started: Instant,
}

/// The successor's side of the handover.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum TakeoverPhase {
    /// Nothing to take over (yet).
    #[default]
    Idle,
    /// Started by an elder; waiting for its go-ahead after its health check.
    WaitingForGo,
    /// Switching nginx, draining, stopping the elder.
    Running { step: String },
    /// This instance is the one live instance.
    Done,
    /// The takeover failed; the elder keeps serving and removes this instance.
    Failed { reason: String },
}

/// A finished upgrade, for `/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeRecord {
    pub from: String,
    pub to: Option<String>,
    /// What was asked for: `latest`, `2`, `=1.4.0`, `rollback`.
    pub requested: String,
    /// `upgraded`, `already_there` or `failed`.
    pub outcome: String,
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
    /// The elder's go-ahead for this instance's takeover.
    pub go: Notify,
    /// Becomes `true` when this instance is asked to stop (SIGTERM, SIGINT).
    pub shutdown: watch::Sender<bool>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            status: Mutex::default(),
            history_file: None,
            go: Notify::new(),
            shutdown: watch::channel(false).0,
        }
    }
}

impl Shared {
    /// Shared state whose history is read from, and written to, `history_file`.
    pub fn with_history(history_file: PathBuf) -> Shared {
        let history = read_history(&history_file).unwrap_or_default();
        let shared = Shared {
            history_file: Some(history_file),
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
        self.status().takeover = phase;
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
        let mut history = self.history();
        history.push_front(record);
        history.truncate(HISTORY_LEN);
        self.status().history = history.clone();
        if let Some(path) = &self.history_file {
            let saved = serde_json::to_string_pretty(&history)
                .map_err(std::io::Error::other)
                .and_then(|text| crate::proxy::write_atomically(path, &text));
            if let Err(e) = saved {
                tracing::warn!(path = %path.display(), error = %e, "the upgrade history is kept in memory only");
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> UpgradeRecord {
        UpgradeRecord {
            from: "1.0.0".into(),
            to: Some("1.1.0".into()),
            requested: "latest".into(),
            outcome: "upgraded".into(),
            error: None,
            duration_ms: 400,
            finished_at: n,
        }
    }

    #[test]
    fn the_history_survives_into_the_next_instance_and_keeps_the_newest_ten() {
        let dir = std::env::temp_dir().join(format!("selfup-history-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("history.json");
        let elder = Shared::with_history(file.clone());
        for n in 0..12 {
            elder.record(record(n));
        }
        let successor = Shared::with_history(file);
        let history = successor.status().history.clone();
        assert_eq!(history.len(), HISTORY_LEN);
        assert_eq!(history.front().unwrap().finished_at, 11);
        assert_eq!(history.back().unwrap().finished_at, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
