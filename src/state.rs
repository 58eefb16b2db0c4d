//! The state the HTTP layer shares with the orchestrator.

use std::collections::VecDeque;
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
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeRecord {
    pub from: String,
    pub to: Option<String>,
    pub outcome: &'static str,
    pub error: Option<String>,
    pub duration_ms: u128,
    /// Seconds since the epoch.
    pub finished_at: u64,
}

/// What the routes and the orchestrator share.
#[derive(Debug)]
pub struct Shared {
    pub status: Mutex<Status>,
    /// The elder's go-ahead for this instance's takeover.
    pub go: Notify,
    /// Becomes `true` when this instance is asked to stop (SIGTERM, SIGINT).
    pub shutdown: watch::Sender<bool>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            status: Mutex::default(),
            go: Notify::new(),
            shutdown: watch::channel(false).0,
        }
    }
}

impl Shared {
    /// Locks the status; a panic elsewhere must not take the service down with it.
    pub fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_takeover(&self, phase: TakeoverPhase) {
        self.status().takeover = phase;
    }

    pub fn record(&self, record: UpgradeRecord) {
        let mut status = self.status();
        status.history.push_front(record);
        status.history.truncate(HISTORY_LEN);
    }
}

/// Seconds since the epoch, for records.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
