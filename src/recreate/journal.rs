//! One record of companion swaps for every instance that mounts the data
//! directory: the live instance, its successor during a handover, and any
//! instance that starts after a crash.
//!
//! In `<data_dir>/swaps/`:
//! - `gate.lock`: a swap holds a shared flock(2) on it for its whole run; a
//!   self-upgrade takes it exclusively before it starts a successor. So a
//!   self-upgrade waits for running swaps, and no swap starts while an
//!   upgrade runs, whichever instance is asked.
//! - `<container>.lock`: the exclusive flock of the one swap of that
//!   container, whichever instance runs it.
//! - `<container>.json`: the journal of that swap, rewritten atomically at
//!   each phase and removed when the swap ends, well or rolled back. A
//!   journal whose lock nobody holds was left by an instance that died
//!   mid-swap: the next instance to start resolves it ([`resolve`]).
//!
//! The kernel drops a dead process's flocks, so a crash never leaves a lock
//! held; the journal is what tells that something is half-done.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::RestartPolicy;
use serde::{Deserialize, Serialize};

/// How long a claim retries while another process only peeks at the lock.
const CLAIM_TRIES: u32 = 5;
const CLAIM_PAUSE: Duration = Duration::from_millis(20);
/// How often a waiting self-upgrade looks at the gate again.
const GATE_POLL: Duration = Duration::from_millis(100);

/// How far a swap got; each phase is written before the step it names is done
/// by the next one, so a journal never claims more than happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// About to stop (stop-first) and rename the old container aside.
    Planned,
    /// The old container is aside; the new one is being created.
    Aside,
    /// The new container exists (`new_id`) and is being started.
    Created,
    /// The new container was started and is being watched.
    Started,
    /// The new container came up and has its restart policy; the old one is being removed.
    Checked,
}

/// The journal of one swap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwapRecord {
    /// The container's name, which the new container takes.
    pub container: String,
    pub old_id: String,
    /// The name the old container has while it is aside.
    pub aside: String,
    pub image: String,
    pub phase: Phase,
    /// Set from [`Phase::Created`] on.
    #[serde(default)]
    pub new_id: Option<String>,
    /// Whether the old container is stopped first (it must be started again on a rollback).
    pub stop_first: bool,
    /// The restart policy the new container gets once it is up.
    #[serde(default)]
    pub restart_policy: Option<RestartPolicy>,
    /// The instance (container id) running the swap, for the log.
    #[serde(default)]
    pub owner: Option<String>,
}

impl SwapRecord {
    /// Whether a request naming `container` (a name, an id or an id prefix)
    /// means this swap's container, under any of the names it has during it.
    pub fn concerns(&self, container: &str) -> bool {
        let id_prefix = |id: &str| container.len() >= 4 && id.starts_with(container);
        container == self.container
            || container == self.aside
            || id_prefix(&self.old_id)
            || self.new_id.as_deref().is_some_and(id_prefix)
    }
}

/// What a container of a half-done swap is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Absent,
    Stopped,
    Running,
}

/// What to do with a half-done swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Start the new container if it is stopped, watch it as the swap would
    /// have, then give it its restart policy and remove the old one; if it
    /// does not come up, roll back.
    Finish,
    /// Remove the new container (if any), give the old one its name back and
    /// start it if it is stopped.
    RollBack,
    /// Neither container exists: nothing to run, nothing to restore.
    Forget,
}

/// The rule for a swap found half-done: the copy that runs keeps running
/// until the other one is known to run, so the app never has zero copies
/// that could run.
/// - A running new container is finished (checked first; rolled back if it
///   fails the check): rolling it back would stop a running copy.
/// - A new container that already passed its check, or the only container
///   left, is finished too (started first).
/// - Otherwise (no new container, or one that never ran) the old one is
///   restored: it is the one known to work.
pub fn resolve(phase: Phase, old: Seen, new: Seen) -> Resolution {
    match (old, new) {
        (_, Seen::Running) => Resolution::Finish,
        (Seen::Absent, Seen::Absent) => Resolution::Forget,
        (Seen::Absent, Seen::Stopped) => Resolution::Finish,
        (_, Seen::Stopped) if phase == Phase::Checked => Resolution::Finish,
        _ => Resolution::RollBack,
    }
}

/// The swaps directory of a data directory.
#[derive(Debug)]
pub struct Swaps {
    dir: PathBuf,
}

/// A swap's shared hold on the gate: a self-upgrade waits until none is left.
#[derive(Debug)]
pub struct Entry {
    _gate: File,
}

/// A self-upgrade's exclusive hold on the gate: no swap starts while it lasts.
#[derive(Debug)]
pub struct UpgradeGate {
    _gate: File,
}

/// Why a self-upgrade did not get the gate.
#[derive(Debug)]
pub enum GateError {
    /// Swaps still ran when the wait ended: the containers they update.
    Busy(Vec<String>),
    Io(io::Error),
}

/// The one claim on a container's swap, across instances. Dropping it
/// releases the lock and removes the journal, unless [`Claim::keep`] said
/// that the swap is left half-done.
#[derive(Debug)]
pub struct Claim {
    _lock: File,
    journal: PathBuf,
    keep: bool,
}

impl Claim {
    /// Writes the swap's journal.
    pub fn write(&self, record: &SwapRecord) -> io::Result<()> {
        let text = serde_json::to_string_pretty(record).map_err(io::Error::other)?;
        crate::atomic::write_atomically(&self.journal, &text)
    }

    /// Leaves the journal in place: the swap could not be finished or undone,
    /// and the next instance to start tries again.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.keep {
            match std::fs::remove_file(&self.journal) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %self.journal.display(), error = %e, "removing a swap journal"),
            }
        }
    }
}

fn open_lock(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

impl Swaps {
    /// The swaps directory in `data_dir`, created if needed.
    pub fn open(data_dir: &Path) -> io::Result<Swaps> {
        let dir = data_dir.join("swaps");
        std::fs::create_dir_all(&dir)?;
        Ok(Swaps { dir })
    }

    fn gate(&self) -> io::Result<File> {
        open_lock(&self.dir.join("gate.lock"))
    }

    fn journal(&self, container: &str) -> PathBuf {
        self.dir.join(format!("{container}.json"))
    }

    fn lock(&self, container: &str) -> PathBuf {
        self.dir.join(format!("{container}.lock"))
    }

    /// A swap's shared hold on the gate; `None` while a self-upgrade holds it.
    pub fn enter(&self) -> io::Result<Option<Entry>> {
        let gate = self.gate()?;
        match gate.try_lock_shared() {
            Ok(()) => Ok(Some(Entry { _gate: gate })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }

    /// The exclusive gate for a self-upgrade, once no swap runs, waiting at
    /// most `bound`.
    pub async fn hold_for_upgrade(&self, bound: Duration) -> Result<UpgradeGate, GateError> {
        let gate = self.gate().map_err(GateError::Io)?;
        let deadline = tokio::time::Instant::now() + bound;
        let mut logged = false;
        loop {
            match gate.try_lock() {
                Ok(()) => return Ok(UpgradeGate { _gate: gate }),
                Err(TryLockError::Error(e)) => return Err(GateError::Io(e)),
                Err(TryLockError::WouldBlock) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(GateError::Busy(self.claimed()));
            }
            if !logged {
                tracing::info!(containers = ?self.claimed(), ?bound, "waiting for companion updates to finish");
                logged = true;
            }
            tokio::time::sleep(GATE_POLL).await;
        }
    }

    /// The claim on `container`'s swap; `None` while another swap of it runs,
    /// in this instance or another.
    pub async fn claim(&self, container: &str) -> io::Result<Option<Claim>> {
        let lock = open_lock(&self.lock(container))?;
        for _ in 0..CLAIM_TRIES {
            match lock.try_lock() {
                Ok(()) => {
                    return Ok(Some(Claim {
                        _lock: lock,
                        journal: self.journal(container),
                        keep: false,
                    }));
                }
                Err(TryLockError::Error(e)) => return Err(e),
                // Perhaps a peek (a shared lock of a moment): ask again.
                Err(TryLockError::WouldBlock) => tokio::time::sleep(CLAIM_PAUSE).await,
            }
        }
        Ok(None)
    }

    /// Whether a live process holds `container`'s claim. A peek is a shared
    /// lock of a moment, which a claim being taken retries past.
    fn held(&self, container: &str) -> bool {
        match open_lock(&self.lock(container)) {
            Ok(lock) => !matches!(lock.try_lock_shared(), Ok(())),
            Err(_) => true,
        }
    }

    /// The containers whose swap runs now, in any instance, journal or not
    /// yet (a swap claims its container before it pulls).
    pub fn claimed(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".lock").map(str::to_string))
            .filter(|name| name != "gate" && self.held(name))
            .collect();
        names.sort();
        names
    }

    /// Every journal in the directory, with whether a live process holds its lock.
    fn journals(&self) -> Vec<(SwapRecord, bool)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(container) = name.strip_suffix(".json") else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let Some(record) = self.read(container) else { continue };
            found.push((record, self.held(container)));
        }
        found
    }

    fn read(&self, container: &str) -> Option<SwapRecord> {
        let path = self.journal(container);
        let text = std::fs::read_to_string(&path).ok()?;
        match serde_json::from_str(&text) {
            Ok(record) => Some(record),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "an unreadable swap journal is ignored");
                None
            }
        }
    }

    /// The swaps running now, in any instance.
    pub fn running(&self) -> Vec<SwapRecord> {
        self.journals()
            .into_iter()
            .filter_map(|(r, held)| held.then_some(r))
            .collect()
    }

    /// The swaps left half-done by an instance that is gone, each with its
    /// claim (so no other instance resolves it at the same time).
    pub async fn orphans(&self) -> Vec<(SwapRecord, Claim)> {
        let mut found = Vec::new();
        for (record, held) in self.journals() {
            if held {
                continue;
            }
            let Ok(Some(mut claim)) = self.claim(&record.container).await else {
                continue;
            };
            // Read again under the claim: its owner may have just finished.
            match self.read(&record.container) {
                Some(record) => found.push((record, claim)),
                None => claim.keep(),
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(container: &str) -> SwapRecord {
        SwapRecord {
            container: container.into(),
            old_id: "0123456789abcdef".into(),
            aside: format!("{container}-selfup-old-0123456789ab"),
            image: "r:5000/app:2".into(),
            phase: Phase::Started,
            new_id: Some("fedcba9876543210".into()),
            stop_first: true,
            restart_policy: Some(RestartPolicy {
                name: Some(bollard::models::RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            owner: Some("abc".into()),
        }
    }

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("selfup-swaps-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_running_new_container_is_finished_whatever_the_phase() {
        for phase in [Phase::Created, Phase::Started, Phase::Checked] {
            for old in [Seen::Absent, Seen::Stopped, Seen::Running] {
                assert_eq!(
                    resolve(phase, old, Seen::Running),
                    Resolution::Finish,
                    "{phase:?} {old:?}"
                );
            }
        }
    }

    #[test]
    fn without_a_running_new_container_the_old_one_is_restored_unless_the_new_one_passed_or_is_all_there_is() {
        assert_eq!(
            resolve(Phase::Planned, Seen::Stopped, Seen::Absent),
            Resolution::RollBack
        );
        assert_eq!(resolve(Phase::Aside, Seen::Running, Seen::Absent), Resolution::RollBack);
        assert_eq!(
            resolve(Phase::Created, Seen::Stopped, Seen::Stopped),
            Resolution::RollBack
        );
        assert_eq!(
            resolve(Phase::Started, Seen::Running, Seen::Stopped),
            Resolution::RollBack
        );
        assert_eq!(
            resolve(Phase::Checked, Seen::Stopped, Seen::Stopped),
            Resolution::Finish
        );
        assert_eq!(resolve(Phase::Started, Seen::Absent, Seen::Stopped), Resolution::Finish);
        assert_eq!(resolve(Phase::Checked, Seen::Absent, Seen::Absent), Resolution::Forget);
        assert_eq!(resolve(Phase::Aside, Seen::Absent, Seen::Absent), Resolution::Forget);
    }

    #[test]
    fn a_journal_reads_back_and_older_fields_may_be_missing() {
        let r = record("app");
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<SwapRecord>(&text).unwrap(), r);
        assert!(text.contains(r#""phase":"started""#), "{text}");
        let minimal: SwapRecord = serde_json::from_str(
            r#"{"container":"a","old_id":"1","aside":"a-x","image":"i","phase":"aside","stop_first":false}"#,
        )
        .unwrap();
        assert_eq!(
            (minimal.phase, minimal.new_id, minimal.restart_policy),
            (Phase::Aside, None, None)
        );
        assert!(serde_json::from_str::<SwapRecord>(r#"{"container":"a","phase":"later"}"#).is_err());
    }

    #[test]
    fn a_swap_is_known_by_its_name_its_aside_name_and_either_id() {
        let r = record("app");
        for name in [
            "app",
            "app-selfup-old-0123456789ab",
            "0123456789ab",
            "fedcba98",
            "0123456789abcdef",
        ] {
            assert!(r.concerns(name), "{name}");
        }
        for name in ["ap", "other", "012", "fedcba99"] {
            assert!(!r.concerns(name), "{name}");
        }
    }

    #[tokio::test]
    async fn one_claim_per_container_across_open_files_and_its_journal_goes_with_it() {
        let dir = dir("claim");
        let swaps = Swaps::open(&dir).unwrap();
        let first = swaps.claim("app").await.unwrap().expect("the first claim");
        // Another Swaps on the same directory opens its own files, as another instance does.
        let elsewhere = Swaps::open(&dir).unwrap();
        assert!(
            elsewhere.claim("app").await.unwrap().is_none(),
            "a second claim of the same container"
        );
        let other = elsewhere.claim("db").await.unwrap().expect("another container");
        first.write(&record("app")).unwrap();
        assert_eq!(elsewhere.running(), vec![record("app")]);
        assert!(elsewhere.orphans().await.is_empty(), "a held journal is no orphan");
        drop(other);
        drop(first);
        assert!(elsewhere.running().is_empty());
        assert!(!swaps.journal("app").exists());
        assert!(elsewhere.claim("app").await.unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_journal_left_without_an_owner_is_found_once_and_a_finished_swap_leaves_none() {
        let dir = dir("orphan");
        let swaps = Swaps::open(&dir).unwrap();
        {
            let mut claim = swaps.claim("app").await.unwrap().unwrap();
            claim.write(&record("app")).unwrap();
            claim.keep();
        }
        let mut orphans = swaps.orphans().await;
        assert_eq!(orphans.len(), 1);
        assert_eq!(orphans[0].0, record("app"));
        assert!(swaps.orphans().await.is_empty(), "claimed by the first look");
        assert_eq!(swaps.running(), vec![record("app")]);
        drop(orphans.pop());
        assert!(swaps.running().is_empty());
        assert!(swaps.orphans().await.is_empty(), "resolved: the journal is gone");
        {
            let claim = swaps.claim("app").await.unwrap().unwrap();
            claim.write(&record("app")).unwrap();
        }
        assert!(!swaps.journal("app").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn an_upgrade_waits_for_running_swaps_and_blocks_new_ones() {
        let dir = dir("gate");
        let swaps = Swaps::open(&dir).unwrap();
        let entry = swaps.enter().unwrap().expect("no upgrade runs");
        let claim = swaps.claim("app").await.unwrap().unwrap();
        // Named before its journal exists: a swap claims its container before it pulls.
        assert_eq!(swaps.claimed(), vec!["app".to_string()]);
        match swaps.hold_for_upgrade(Duration::from_millis(300)).await {
            Err(GateError::Busy(names)) => assert_eq!(names, vec!["app".to_string()]),
            other => panic!("{other:?}"),
        }
        let release = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(claim);
            drop(entry);
        };
        let (gate, ()) = tokio::join!(swaps.hold_for_upgrade(Duration::from_secs(5)), release);
        let gate = gate.expect("the swap ended within the bound");
        assert!(swaps.enter().unwrap().is_none(), "no swap starts during an upgrade");
        drop(gate);
        assert!(swaps.enter().unwrap().is_some());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
