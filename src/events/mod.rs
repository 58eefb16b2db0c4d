//! The event log: every step of every upgrade and companion update, as it
//! happens, for `GET /events` (Server-Sent Events), `/upgrade` streamed, and
//! the CLI.
//!
//! Ids grow across generations: with a data directory the log is a file of
//! JSON lines there (`events.jsonl`), shared by the elder and its successor
//! under a file lock, so the successor continues the elder's sequence and a
//! client that reconnects with `Last-Event-ID` resumes where it was. The file
//! is bounded: past [`MAX_EVENTS`] lines it is cut to the newest half.
//!
//! Each instance keeps what it has read of the file in memory ([`Mirror`])
//! and reads only what another instance appended since: an event (a health
//! attempt every few milliseconds, while a successor starts) costs a `stat`,
//! a lock and one write, and a stream's look for new events a `stat`, not a
//! read and parse of the whole file. The file is append-only between cuts,
//! and a cut replaces it (a rename), so a longer file holds new lines at the
//! end and another inode is a new file, read whole.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

mod states;
pub use states::*;

/// How many events the log keeps at most (in memory, or in the file before
/// it is cut to the newest half).
pub const MAX_EVENTS: usize = 1000;
/// How often pull progress is reported at most.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// How often a failing health check is reported at most.
pub const HEALTH_EVERY: Duration = Duration::from_millis(250);

/// What happened. The `type` is the SSE event name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// An upgrade (or rollback) was accepted by the live instance.
    UpgradeStarted { requested: Requested, from: String },
    /// The elder's step: resolving, pulling, starting the successor, health-checking, waiting for the takeover.
    UpgradeStep { step: Logged<UpgradeStep> },
    /// Bytes of the pull downloaded so far, over every layer that has to be downloaded.
    PullProgress {
        image: String,
        done: u64,
        total: u64,
        layers: u32,
        /// The container a companion update pulls for; none for the self-upgrade.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
    },
    /// One answer (or silence) of the successor's `/health`, or one look at
    /// a companion update's new container (then `container` names the update).
    HealthAttempt {
        attempt: u32,
        result: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
    },
    /// The successor's phase: waiting for the go-ahead, each takeover step, done or failed.
    Takeover { phase: Logged<TakeoverPhase> },
    /// The upgrade is over; `outcome` is `upgraded`, `already_there` or `failed`.
    UpgradeFinished {
        outcome: Logged<Outcome>,
        requested: Requested,
        to: Option<String>,
        error: Option<String>,
        /// u64, not u128: a flattened, tagged enum cannot read a u128 back.
        duration_ms: u64,
    },
    /// The successor serves the public; the elder watches it for `secs`.
    /// `container` names a blue-green app's handover (then `to` is its new
    /// image); none for the self-upgrade.
    BakeStarted {
        to: String,
        secs: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
    },
    /// The bake is over: `promoted` (the successor stays) or `rolled_back`
    /// (the elder took the traffic back), and why.
    BakeEnded {
        outcome: BakeOutcome,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<String>,
    },
    /// A companion update of another container began. `container` is the
    /// name (or id) as it was asked for: every event of the update carries it.
    UpdateStarted {
        container: String,
        /// The image, or the requirement (`2`, `=1.4.0`, `latest`), asked for.
        #[serde(default)]
        requested: String,
    },
    /// A companion update's step: resolving, pulling, renaming the old
    /// container aside, creating, starting, health-checking the new one,
    /// retiring the old one, or rolling back.
    UpdateStep {
        container: String,
        step: Logged<UpdateStep>,
    },
    /// A companion update is over: `updated`, `unchanged`, `failed` or `rolled_back`.
    UpdateFinished {
        container: String,
        outcome: Logged<UpdateEnd>,
        error: Option<String>,
        #[serde(default)]
        duration_ms: u64,
    },
}

impl Event {
    /// The SSE event name: the `type` tag.
    pub fn name(&self) -> &'static str {
        match self {
            Event::UpgradeStarted { .. } => "upgrade_started",
            Event::UpgradeStep { .. } => "upgrade_step",
            Event::PullProgress { .. } => "pull_progress",
            Event::HealthAttempt { .. } => "health_attempt",
            Event::Takeover { .. } => "takeover",
            Event::UpgradeFinished { .. } => "upgrade_finished",
            Event::BakeStarted { .. } => "bake_started",
            Event::BakeEnded { .. } => "bake_ended",
            Event::UpdateStarted { .. } => "update_started",
            Event::UpdateStep { .. } => "update_step",
            Event::UpdateFinished { .. } => "update_finished",
        }
    }

    /// The container of the companion update the event belongs to; `None`
    /// for the self-upgrade's events.
    pub fn container(&self) -> Option<&str> {
        match self {
            Event::UpdateStarted { container, .. }
            | Event::UpdateStep { container, .. }
            | Event::UpdateFinished { container, .. } => Some(container),
            Event::PullProgress { container, .. }
            | Event::HealthAttempt { container, .. }
            | Event::BakeStarted { container, .. }
            | Event::BakeEnded { container, .. } => container.as_deref(),
            _ => None,
        }
    }

    /// Whether the event belongs to the self-upgrade (not to a companion update).
    pub fn is_upgrade(&self) -> bool {
        self.container().is_none()
    }
}

/// An event as the log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    /// Milliseconds since the epoch.
    pub time_ms: u64,
    /// The version of the instance that emitted it.
    pub version: String,
    #[serde(flatten)]
    pub event: Event,
}

impl Record {
    /// The record as one Server-Sent Event.
    pub fn to_sse(&self) -> String {
        let data = serde_json::to_string(self).unwrap_or_default();
        format!("id: {}\nevent: {}\ndata: {data}\n\n", self.id, self.event.name())
    }
}

tokio::task_local! {
    /// Set around an upgrade a request streams: the id of its `upgrade_started`
    /// event, once emitted, so the stream knows which events are its own.
    static OWN_START: std::sync::Arc<std::sync::OnceLock<u64>>;
}

/// Runs `fut` (an upgrade) so that the id of the `upgrade_started` event it
/// emits lands in `cell`.
pub async fn marking_start<F: std::future::Future>(
    cell: std::sync::Arc<std::sync::OnceLock<u64>>,
    fut: F,
) -> F::Output {
    OWN_START.scope(cell, fut).await
}

tokio::task_local! {
    /// Set around a companion update a request streams: every event the
    /// update emits is also sent here, so the stream holds its own events
    /// and no other's (a refused second request for the same container
    /// emits events of that container too).
    static OWN_EVENTS: tokio::sync::mpsc::UnboundedSender<Record>;
}

/// Runs `fut` (a companion update) so that every event it emits is also sent to `tx`.
pub async fn collecting<F: std::future::Future>(tx: tokio::sync::mpsc::UnboundedSender<Record>, fut: F) -> F::Output {
    OWN_EVENTS.scope(tx, fut).await
}

/// The log, in memory or in a file of the data directory.
#[derive(Debug)]
pub struct EventLog {
    file: Option<PathBuf>,
    /// What this instance has read of the file.
    mirror: Mutex<Option<Mirror>>,
    memory: Mutex<VecDeque<Record>>,
    /// The last id this instance emitted or saw in the file: wakes local streams.
    last: watch::Sender<u64>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            file: None,
            mirror: Mutex::default(),
            memory: Mutex::default(),
            last: watch::channel(0).0,
        }
    }
}

/// The log file as this instance last read it.
#[derive(Debug)]
struct Mirror {
    /// The file, open: while it is, its inode cannot be reused, so a path
    /// that names another inode was replaced by a cut.
    file: File,
    dev: u64,
    ino: u64,
    /// Bytes read: up to the end of the last whole line.
    offset: u64,
    /// The file's length at the last look; more than `offset` when it ends
    /// in a line torn by a crash (or one being written, for a reader).
    len: u64,
    /// The file's records, oldest first, at most [`MAX_EVENTS`].
    records: VecDeque<Record>,
}

impl Mirror {
    /// Opens `path` (read and append, or read only where it may not be
    /// written), to be read from its start.
    fn open(path: &Path, create: bool) -> std::io::Result<Mirror> {
        let file = match OpenOptions::new().create(create).read(true).append(true).open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => File::open(path)?,
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        Ok(Mirror {
            file,
            dev: meta.dev(),
            ino: meta.ino(),
            offset: 0,
            len: 0,
            records: VecDeque::new(),
        })
    }

    /// Reads what was appended since the last look; a file that is not this
    /// one any more (or shorter) is read again from its start.
    fn sync(mirror: &mut Option<Mirror>, path: &Path, create: bool) -> std::io::Result<()> {
        let current = match std::fs::metadata(path) {
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => {
                *mirror = None;
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let same = matches!((&*mirror, &current), (Some(m), Some(c)) if m.dev == c.dev() && m.ino == c.ino());
        if !same {
            *mirror = Some(Mirror::open(path, create)?);
        }
        let Some(m) = mirror.as_mut() else { return Ok(()) };
        let len = m.file.metadata()?.len();
        if len < m.offset {
            // Cut in place: nothing does that, but read it whole if it happens.
            m.offset = 0;
            m.records.clear();
        }
        m.len = len;
        if len == m.offset {
            return Ok(());
        }
        let mut fresh = Vec::with_capacity((len - m.offset) as usize);
        (&m.file).seek(SeekFrom::Start(m.offset))?;
        (&m.file).take(len - m.offset).read_to_end(&mut fresh)?;
        let Some(end) = fresh.iter().rposition(|b| *b == b'\n') else {
            return Ok(());
        };
        m.records.extend(parse(&fresh[..end]));
        m.offset += end as u64 + 1;
        while m.records.len() > MAX_EVENTS {
            m.records.pop_front();
        }
        Ok(())
    }
}

impl EventLog {
    /// A log kept in `dir/events.jsonl`, shared with every instance that mounts `dir`.
    pub fn in_dir(dir: &Path) -> EventLog {
        let log = EventLog {
            file: Some(dir.join("events.jsonl")),
            ..EventLog::default()
        };
        let last = log.after(0).last().map_or(0, |r| r.id);
        log.last.send_replace(last);
        log
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, VecDeque<Record>> {
        self.memory.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mirror(&self) -> std::sync::MutexGuard<'_, Option<Mirror>> {
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `event` with the next id and wakes the streams; returns the id.
    /// A log file that cannot be written is logged, and the event kept in memory.
    pub fn emit(&self, event: Event) -> u64 {
        let started = matches!(event, Event::UpgradeStarted { .. });
        let mut record = Record {
            id: 0,
            time_ms: now_ms(),
            version: crate::build_version().to_string(),
            event,
        };
        let id = match self
            .file
            .as_deref()
            .map(|path| append(path, &mut self.mirror(), &mut record))
        {
            Some(Ok(id)) => id,
            other => {
                if let Some(Err(e)) = other {
                    tracing::warn!(error = %e, "the event log is kept in memory only");
                }
                let mut memory = self.memory();
                record.id = memory
                    .back()
                    .map_or(*self.last.borrow(), |r| r.id.max(*self.last.borrow()))
                    + 1;
                memory.push_back(record.clone());
                while memory.len() > MAX_EVENTS {
                    memory.pop_front();
                }
                record.id
            }
        };
        if started {
            let _ = OWN_START.try_with(|cell| cell.set(id));
        }
        let _ = OWN_EVENTS.try_with(|tx| tx.send(record.clone()).is_ok());
        self.last.send_replace(id);
        id
    }

    /// The events after `id`, oldest first: all that are kept when `id` is
    /// older than the oldest.
    pub fn after(&self, id: u64) -> Vec<Record> {
        let mut found: Vec<Record> = Vec::new();
        if let Some(path) = self.file.as_deref() {
            let mut mirror = self.mirror();
            match Mirror::sync(&mut mirror, path, false) {
                Ok(()) => {
                    let records = mirror.iter().flat_map(|m| m.records.iter());
                    found.extend(records.filter(|r| r.id > id).cloned());
                }
                Err(e) => tracing::debug!(error = %e, "the event log file cannot be read"),
            }
        }
        let memory = self.memory();
        found.extend(memory.iter().filter(|r| r.id > id).cloned());
        found.retain(|r| r.id > id);
        found.sort_by_key(|r| r.id);
        found.dedup_by_key(|r| r.id);
        found
    }

    /// The newest id.
    pub fn last_id(&self) -> u64 {
        self.after(0).last().map_or(0, |r| r.id).max(*self.last.borrow())
    }

    /// Wakes when this instance emits; another instance's events (in the
    /// shared file) are seen by polling [`EventLog::after`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }
}

/// Appends under the file lock, with the id after the file's last one; cuts
/// the file to the newest half past [`MAX_EVENTS`].
fn append(path: &Path, mirror: &mut Option<Mirror>, record: &mut Record) -> std::io::Result<u64> {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path.with_extension("lock"))?;
    lock.lock()?;
    Mirror::sync(mirror, path, true)?;
    let m = mirror
        .as_mut()
        .ok_or_else(|| std::io::Error::other("the event log file vanished"))?;
    record.id = m.records.back().map_or(0, |r| r.id) + 1;
    let line = serde_json::to_string(record).map_err(std::io::Error::other)?;
    if m.records.len() + 1 > MAX_EVENTS {
        let mut kept: String = m
            .records
            .iter()
            .skip(m.records.len() + 1 - MAX_EVENTS / 2)
            .filter_map(|r| serde_json::to_string(r).ok())
            .map(|l| l + "\n")
            .collect();
        kept.push_str(&line);
        kept.push('\n');
        crate::atomic::write_atomically(path, &kept)?;
        // Another file now: the next look reads it whole.
        *mirror = None;
    } else {
        // A line torn by a crash is ended first, and skipped by readers.
        let sep = if m.len > m.offset { "\n" } else { "" };
        let text = format!("{sep}{line}\n");
        (&m.file).write_all(text.as_bytes())?;
        m.offset = m.len + text.len() as u64;
        m.len = m.offset;
        m.records.push_back(record.clone());
    }
    drop(lock);
    Ok(record.id)
}

/// The records of a log file; a line that does not parse (torn, or from an
/// unknown version) is skipped.
fn parse(text: &[u8]) -> Vec<Record> {
    text.split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Adds up a pull's per-layer progress from the Engine's stream into bytes
/// done and total, and says when a report is due (at most every `every`, and
/// always at the end).
#[derive(Debug)]
pub struct PullProgress {
    /// Per layer: bytes downloaded, and its size once known.
    layers: HashMap<String, (u64, u64)>,
    every: Duration,
    last_report: Option<Instant>,
    last_done: u64,
}

impl PullProgress {
    pub fn new(every: Duration) -> PullProgress {
        PullProgress {
            layers: HashMap::new(),
            every,
            last_report: None,
            last_done: 0,
        }
    }

    /// Takes one message of the stream (a layer id, its status, and the
    /// progress detail); returns `(done, total, layers)` when a report is due.
    pub fn update(
        &mut self,
        layer: Option<&str>,
        status: Option<&str>,
        current: Option<i64>,
        total: Option<i64>,
    ) -> Option<(u64, u64, u32)> {
        let (Some(layer), Some(status)) = (layer, status) else {
            return None;
        };
        let status = status.to_ascii_lowercase();
        if status.starts_with("downloading") {
            let entry = self.layers.entry(layer.to_string()).or_default();
            if let Some(t) = total.filter(|t| *t > 0) {
                entry.1 = t as u64;
            }
            if let Some(c) = current.filter(|c| *c >= 0) {
                entry.0 = (c as u64).max(entry.0);
            }
        } else if status.starts_with("download complete")
            || status.starts_with("extracting")
            || status.starts_with("pull complete")
        {
            if let Some(entry) = self.layers.get_mut(layer) {
                entry.0 = entry.0.max(entry.1);
            }
        } else {
            return None;
        }
        let (done, total) = self.totals();
        let due =
            self.last_report.is_none_or(|t| t.elapsed() >= self.every) || (done == total && done > self.last_done);
        if !due || done == self.last_done {
            return None;
        }
        self.last_report = Some(Instant::now());
        self.last_done = done;
        Some((done, total, self.layers.len() as u32))
    }

    /// Bytes downloaded and to download, over the layers seen downloading.
    pub fn totals(&self) -> (u64, u64) {
        self.layers
            .values()
            .fold((0, 0), |(d, t), (ld, lt)| (d + ld.min(lt.max(ld)), t + lt.max(ld)))
    }
}

/// Reports the health checks of a successor: the first attempt, then at most
/// one every [`HEALTH_EVERY`], and the last one always.
pub struct Attempts<'a> {
    log: &'a EventLog,
    attempt: u32,
    last_report: Option<Instant>,
    /// The companion update's container, for its new container's checks.
    container: Option<String>,
}

impl<'a> Attempts<'a> {
    pub fn new(log: &'a EventLog) -> Self {
        Attempts {
            log,
            attempt: 0,
            last_report: None,
            container: None,
        }
    }

    /// The checks of a companion update's new container, under the name the update was asked for.
    pub fn for_container(log: &'a EventLog, container: &str) -> Self {
        Attempts {
            container: Some(container.to_string()),
            ..Attempts::new(log)
        }
    }

    /// One more attempt with its `result`; `last` when it is the final one.
    pub fn report(&mut self, result: &str, last: bool) {
        self.attempt += 1;
        if last || self.last_report.is_none_or(|t| t.elapsed() >= HEALTH_EVERY) {
            self.last_report = Some(Instant::now());
            self.log.emit(Event::HealthAttempt {
                attempt: self.attempt,
                result: result.to_string(),
                container: self.container.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("selfup-events-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// An upgrade step by its name: a known one as its state, any other as it is.
    fn step(s: &str) -> Event {
        let step = UpgradeStep::from_name(s).map_or(Logged::Other(s.into()), Logged::Known);
        Event::UpgradeStep { step }
    }

    #[test]
    fn steps_and_outcomes_are_written_as_they_display() {
        for step in [
            UpgradeStep::Resolving,
            UpgradeStep::Pulling,
            UpgradeStep::StartingTheSuccessor,
            UpgradeStep::HealthChecking,
            UpgradeStep::WaitingForTakeover,
            UpgradeStep::Baking,
            UpgradeStep::UpdatingTheService,
        ] {
            assert_eq!(serde_json::to_value(step).unwrap(), step.to_string());
        }
        for step in [
            TakeoverStep::PublishingSockets,
            TakeoverStep::ConfirmingThroughLiveSocket,
            TakeoverStep::Baking,
            TakeoverStep::StoppingTheElder,
        ] {
            assert_eq!(serde_json::to_value(step).unwrap(), step.to_string());
        }
        for outcome in [Outcome::Upgraded, Outcome::AlreadyThere, Outcome::Failed] {
            assert_eq!(serde_json::to_value(outcome).unwrap(), outcome.to_string());
        }
        let phase: TakeoverPhase =
            serde_json::from_str(r#"{"phase": "running", "step": "stopping the elder"}"#).unwrap();
        assert_eq!(
            phase,
            TakeoverPhase::Running {
                step: TakeoverStep::StoppingTheElder
            }
        );
        assert_eq!(phase.to_string(), "stopping the elder");
        assert_eq!(
            TakeoverPhase::WaitingForGo.to_string(),
            "waiting for the elder's go-ahead"
        );
    }

    #[test]
    fn lines_written_when_states_were_strings_read_as_states_and_write_back_the_same() {
        let head = r#"{"id":1,"time_ms":1,"version":"1.0.0","#;
        let known = [
            r#""type":"upgrade_started","requested":"latest","from":"1.0.0"}"#,
            r#""type":"upgrade_started","requested":"rollback","from":"1.1.0"}"#,
            r#""type":"upgrade_step","step":"resolving"}"#,
            r#""type":"upgrade_step","step":"pulling"}"#,
            r#""type":"upgrade_step","step":"waiting for companion updates"}"#,
            r#""type":"upgrade_step","step":"starting the successor"}"#,
            r#""type":"upgrade_step","step":"health-checking the successor"}"#,
            r#""type":"upgrade_step","step":"waiting for the successor's takeover"}"#,
            r#""type":"upgrade_step","step":"baking the successor"}"#,
            r#""type":"upgrade_step","step":"updating the Swarm service"}"#,
            r#""type":"takeover","phase":"idle"}"#,
            r#""type":"takeover","phase":"waiting for the elder's go-ahead"}"#,
            r#""type":"takeover","phase":"publishing the sockets"}"#,
            r#""type":"takeover","phase":"confirming through the live socket"}"#,
            r#""type":"takeover","phase":"baking"}"#,
            r#""type":"takeover","phase":"stopping the elder"}"#,
            r#""type":"takeover","phase":"done"}"#,
            r#""type":"takeover","phase":"failed: the live socket answered as 1.0.0"}"#,
            r#""type":"upgrade_finished","outcome":"upgraded","requested":"=1.4.0","to":"1.4.0","error":null,"duration_ms":5200}"#,
            r#""type":"upgrade_finished","outcome":"already_there","requested":"latest","to":"1.4.0","error":null,"duration_ms":30}"#,
            r#""type":"upgrade_finished","outcome":"failed","requested":"rollback","to":null,"error":"no previous version","duration_ms":2}"#,
            r#""type":"update_step","container":"app","step":"resolving"}"#,
            r#""type":"update_step","container":"app","step":"pulling"}"#,
            r#""type":"update_step","container":"app","step":"stopping the old container"}"#,
            r#""type":"update_step","container":"app","step":"renaming the old container aside"}"#,
            r#""type":"update_step","container":"app","step":"creating the new container"}"#,
            r#""type":"update_step","container":"app","step":"starting the new container"}"#,
            r#""type":"update_step","container":"app","step":"health-checking the new container"}"#,
            r#""type":"update_step","container":"app","step":"switching the app's socket to the new container"}"#,
            r#""type":"update_step","container":"app","step":"draining the old container's connections"}"#,
            r#""type":"update_step","container":"app","step":"baking the new container, the old one kept warm out of rotation"}"#,
            r#""type":"update_step","container":"app","step":"stopping and removing the old container"}"#,
            r#""type":"update_step","container":"app","step":"removing the old container"}"#,
            r#""type":"update_step","container":"app","step":"rolling back"}"#,
            r#""type":"update_finished","container":"app","outcome":"updated","error":null,"duration_ms":900}"#,
            r#""type":"update_finished","container":"app","outcome":"unchanged","error":null,"duration_ms":10}"#,
            r#""type":"update_finished","container":"app","outcome":"failed","error":"no such image","duration_ms":0}"#,
            r#""type":"update_finished","container":"app","outcome":"rolled_back","error":"it exited","duration_ms":4000}"#,
        ];
        // Swarm's words, and the names of another version sharing the file.
        let other = [
            r#""type":"upgrade_step","step":"swarm updating: update in progress"}"#,
            r#""type":"upgrade_step","step":"a step of a later version"}"#,
            r#""type":"takeover","phase":"a phase of a later version"}"#,
            r#""type":"upgrade_finished","outcome":"postponed","requested":"2","to":null,"error":null,"duration_ms":1}"#,
            r#""type":"update_step","container":"app","step":"a step of a later version"}"#,
            r#""type":"update_finished","container":"app","outcome":"postponed","error":null,"duration_ms":1}"#,
        ];
        fn is_known(event: &Event) -> bool {
            match event {
                Event::UpgradeStep { step } => matches!(step, Logged::Known(_)),
                Event::Takeover { phase } => matches!(phase, Logged::Known(_)),
                Event::UpgradeFinished { outcome, .. } => matches!(outcome, Logged::Known(_)),
                Event::UpdateStep { step, .. } => matches!(step, Logged::Known(_)),
                Event::UpdateFinished { outcome, .. } => matches!(outcome, Logged::Known(_)),
                _ => true,
            }
        }
        for (lines, known) in [(&known[..], true), (&other[..], false)] {
            for tail in lines {
                let line = format!("{head}{tail}");
                let record: Record = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
                assert_eq!(is_known(&record.event), known, "{line}");
                assert_eq!(serde_json::to_string(&record).unwrap(), line);
            }
        }
        let read: Vec<Event> = parse(format!("{head}{}\n{head}{}", known[1], known[17]).as_bytes())
            .into_iter()
            .map(|r| r.event)
            .collect();
        assert_eq!(
            read,
            vec![
                Event::UpgradeStarted {
                    requested: Requested::Rollback,
                    from: "1.1.0".into(),
                },
                Event::Takeover {
                    phase: TakeoverPhase::Failed {
                        reason: "the live socket answered as 1.0.0".into()
                    }
                    .into(),
                },
            ]
        );
    }

    #[test]
    fn ids_continue_in_the_next_instance_and_resume_after_the_last_seen() {
        let dir = dir("resume");
        let elder = EventLog::in_dir(&dir);
        assert_eq!(elder.emit(step("resolving")), 1);
        assert_eq!(elder.emit(step("pulling")), 2);
        let successor = EventLog::in_dir(&dir);
        assert_eq!(successor.last_id(), 2);
        // Both write the same file: the elder's next event follows the successor's.
        assert_eq!(
            successor.emit(Event::Takeover {
                phase: TakeoverPhase::Running {
                    step: TakeoverStep::PublishingSockets
                }
                .into()
            }),
            3
        );
        assert_eq!(elder.emit(step("waiting")), 4);
        let resumed: Vec<u64> = successor.after(2).iter().map(|r| r.id).collect();
        assert_eq!(resumed, vec![3, 4]);
        assert_eq!(successor.after(4), vec![]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_kind_of_event_reads_back_from_the_file() {
        let dir = dir("kinds");
        let log = EventLog::in_dir(&dir);
        let all = vec![
            Event::UpgradeStarted {
                requested: Requested::Registry("2".into()),
                from: "1.0.0".into(),
            },
            step("pulling"),
            step("swarm updating: update in progress"),
            Event::PullProgress {
                image: "r/selfup:2.0.0".into(),
                done: 5,
                total: 9,
                layers: 2,
                container: None,
            },
            Event::HealthAttempt {
                attempt: 3,
                result: "/health answered 503".into(),
                container: None,
            },
            Event::Takeover {
                phase: TakeoverPhase::Done.into(),
            },
            Event::Takeover {
                phase: TakeoverPhase::Failed {
                    reason: "the elder said no".into(),
                }
                .into(),
            },
            Event::UpgradeFinished {
                outcome: Outcome::Failed.into(),
                requested: Requested::Rollback,
                to: None,
                error: Some("no version".into()),
                duration_ms: u64::MAX,
            },
            Event::UpdateStarted {
                container: "app".into(),
                requested: "2".into(),
            },
            Event::UpdateStep {
                container: "app".into(),
                step: UpdateStep::Retiring { stopped: true }.into(),
            },
            Event::PullProgress {
                image: "r/app:2.0.0".into(),
                done: 1,
                total: 2,
                layers: 1,
                container: Some("app".into()),
            },
            Event::HealthAttempt {
                attempt: 1,
                result: "healthy".into(),
                container: Some("app".into()),
            },
            Event::UpdateFinished {
                container: "app".into(),
                outcome: UpdateEnd::RolledBack.into(),
                error: None,
                duration_ms: 1200,
            },
        ];
        for event in &all {
            log.emit(event.clone());
        }
        let read: Vec<Event> = EventLog::in_dir(&dir).after(0).into_iter().map(|r| r.event).collect();
        assert_eq!(read, all);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_file_is_bounded_and_keeps_the_newest_events_with_their_ids() {
        let dir = dir("bounded");
        let log = EventLog::in_dir(&dir);
        for _ in 0..MAX_EVENTS + 10 {
            log.emit(step("x"));
        }
        let kept = log.after(0);
        assert!(
            kept.len() <= MAX_EVENTS && kept.len() >= MAX_EVENTS / 2,
            "{}",
            kept.len()
        );
        assert_eq!(kept.last().unwrap().id, (MAX_EVENTS + 10) as u64);
        assert!(kept.windows(2).all(|w| w[1].id == w[0].id + 1));
        // The next instance goes on from there.
        assert_eq!(EventLog::in_dir(&dir).emit(step("y")), (MAX_EVENTS + 11) as u64);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_line_is_skipped_and_the_next_event_starts_on_its_own_line() {
        let dir = dir("torn");
        let log = EventLog::in_dir(&dir);
        log.emit(step("a"));
        let path = dir.join("events.jsonl");
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"id\": 2, \"ty").unwrap();
        assert_eq!(log.emit(step("b")), 2);
        let ids: Vec<u64> = log.after(0).iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![1, 2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writers_in_parallel_get_distinct_increasing_ids() {
        let dir = dir("parallel");
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let log = EventLog::in_dir(&dir);
                    (0..50).map(|_| log.emit(step("p"))).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut ids: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        ids.sort();
        assert_eq!(ids, (1..=200).collect::<Vec<_>>());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_instances_taking_turns_across_cuts_keep_one_sequence() {
        let dir = dir("turns");
        let elder = EventLog::in_dir(&dir);
        let successor = EventLog::in_dir(&dir);
        // Past the bound three times: each cut replaces the file under the other.
        let n = MAX_EVENTS as u64 * 3 + 7;
        for i in 1..=n {
            let log = if i % 3 == 0 { &elder } else { &successor };
            assert_eq!(log.emit(step("t")), i);
        }
        for log in [&elder, &successor] {
            let kept: Vec<u64> = log.after(0).iter().map(|r| r.id).collect();
            assert_eq!(kept.last(), Some(&n));
            assert!(kept.windows(2).all(|w| w[1] == w[0] + 1), "{kept:?}");
            assert!(kept.len() <= MAX_EVENTS, "{}", kept.len());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_line_being_written_is_read_once_it_is_whole() {
        let dir = dir("partial");
        let reader = EventLog::in_dir(&dir);
        let writer = EventLog::in_dir(&dir);
        writer.emit(step("a"));
        assert_eq!(reader.after(0).len(), 1);
        let record = Record {
            id: 2,
            time_ms: 1,
            version: "1.0.0".into(),
            event: step("b"),
        };
        let line = serde_json::to_string(&record).unwrap() + "\n";
        let (head, tail) = line.split_at(line.len() / 2);
        let path = dir.join("events.jsonl");
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(head.as_bytes()).unwrap();
        assert_eq!(reader.after(1), vec![], "half a line is not an event yet");
        f.write_all(tail.as_bytes()).unwrap();
        assert_eq!(reader.after(1), vec![record]);
        assert_eq!(writer.emit(step("c")), 3);
        assert_eq!(reader.after(2).len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lines_written_before_companion_updates_had_their_steps_still_read() {
        let old = [
            r#"{"id":1,"time_ms":1,"version":"1.0.0","type":"update_started","container":"app"}"#,
            r#"{"id":2,"time_ms":2,"version":"1.0.0","type":"health_attempt","attempt":1,"result":"ok"}"#,
            r#"{"id":3,"time_ms":3,"version":"1.0.0","type":"update_finished","container":"app","outcome":"updated","error":null}"#,
        ];
        let records = parse(old.join("\n").as_bytes());
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].event.container(), Some("app"));
        assert!(
            records[1].event.is_upgrade(),
            "a health attempt without a container is the upgrade's"
        );
        assert!(matches!(
            &records[2].event,
            Event::UpdateFinished { duration_ms: 0, .. }
        ));
        let companion = Event::PullProgress {
            image: "r/app:2".into(),
            done: 1,
            total: 1,
            layers: 1,
            container: Some("app".into()),
        };
        assert!(!companion.is_upgrade());
        let upgrade = serde_json::to_value(Event::HealthAttempt {
            attempt: 1,
            result: "ok".into(),
            container: None,
        })
        .unwrap();
        assert!(upgrade.get("container").is_none(), "{upgrade}");
    }

    #[tokio::test]
    async fn the_events_of_a_collected_update_are_sent_to_its_stream_and_no_others() {
        let log = EventLog::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        log.emit(step("before"));
        collecting(tx, async {
            log.emit(Event::UpdateStarted {
                container: "app".into(),
                requested: "2".into(),
            });
            tokio::task::yield_now().await;
            log.emit(Event::UpdateStep {
                container: "app".into(),
                step: UpdateStep::Pulling.into(),
            });
        })
        .await;
        log.emit(step("after"));
        let mut ids = Vec::new();
        while let Ok(r) = rx.try_recv() {
            ids.push(r.id);
        }
        assert_eq!(ids, vec![2, 3]);
    }

    #[test]
    fn in_memory_the_log_is_bounded_too() {
        let log = EventLog::default();
        for _ in 0..MAX_EVENTS + 5 {
            log.emit(step("m"));
        }
        let kept = log.after(0);
        assert_eq!(kept.len(), MAX_EVENTS);
        assert_eq!(kept.first().unwrap().id, 6);
        assert_eq!(log.after(MAX_EVENTS as u64 + 3).len(), 2);
    }

    #[tokio::test]
    async fn the_start_of_an_upgrade_is_marked_for_its_own_stream() {
        let log = EventLog::default();
        log.emit(step("before"));
        let cell = std::sync::Arc::new(std::sync::OnceLock::new());
        marking_start(cell.clone(), async {
            log.emit(Event::UpgradeStarted {
                requested: Requested::Registry("latest".into()),
                from: "1.0.0".into(),
            })
        })
        .await;
        assert_eq!(cell.get(), Some(&2));
    }

    #[test]
    fn an_event_is_one_sse_message_with_its_id_and_type() {
        let r = Record {
            id: 7,
            time_ms: 1,
            version: "1.0.0".into(),
            event: step("pulling"),
        };
        let sse = r.to_sse();
        assert!(sse.starts_with("id: 7\nevent: upgrade_step\ndata: {"), "{sse}");
        assert!(sse.ends_with("}\n\n"));
        let data: serde_json::Value =
            serde_json::from_str(sse.lines().nth(2).unwrap().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(data["step"], "pulling");
        assert_eq!(data["type"], "upgrade_step");
    }

    #[test]
    fn pull_progress_adds_up_layers_and_is_rate_limited() {
        let mut p = PullProgress::new(Duration::from_secs(3600));
        assert_eq!(p.update(Some("a"), Some("Pulling fs layer"), None, None), None);
        // The first report is due at once.
        assert_eq!(
            p.update(Some("a"), Some("Downloading"), Some(10), Some(100)),
            Some((10, 100, 1))
        );
        // Within the interval: nothing, but the sums move on.
        assert_eq!(p.update(Some("b"), Some("Downloading"), Some(5), Some(50)), None);
        assert_eq!(p.totals(), (15, 150));
        assert_eq!(p.update(Some("a"), Some("Downloading"), Some(100), Some(100)), None);
        assert_eq!(p.update(Some("c"), Some("Already exists"), None, None), None);
        // The end is always reported.
        assert_eq!(
            p.update(Some("b"), Some("Download complete"), None, None),
            Some((150, 150, 2))
        );
        assert_eq!(p.update(Some("b"), Some("Pull complete"), None, None), None);
        let mut q = PullProgress::new(Duration::ZERO);
        let reports: Vec<u64> = (1..=5)
            .filter_map(|i| q.update(Some("l"), Some("Downloading"), Some(i * 10), Some(50)))
            .map(|(d, _, _)| d)
            .collect();
        assert_eq!(reports, vec![10, 20, 30, 40, 50]);
    }
}
