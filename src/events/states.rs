//! The states the event log records, as enums: the steps and phases of an
//! upgrade and of a companion update, and how each ended. Each is written
//! as the one string its `Display` prints ([`Named`], [`Logged`]), so a log
//! written when they were strings reads the same, and a name a later
//! version writes is kept as written.

use serde::{Deserialize, Serialize};

/// A state as the event log writes it: by the name its `Display` prints,
/// one JSON string, so the log reads the same as when it held strings.
pub trait Named: std::fmt::Display + Sized {
    /// The state `name` stands for, if this version knows it.
    fn from_name(name: &str) -> Option<Self>;
}

/// The state of `all` whose name is `name`.
fn find<T: std::fmt::Display + Copy>(all: &[T], name: &str) -> Option<T> {
    all.iter().copied().find(|s| s.to_string() == name)
}

/// A state in an event. The log file is shared by an elder and its
/// successor, two versions: a name one of them writes may be unknown to the
/// other, and is kept as it was written rather than the line skipped (its
/// id would be lost, and reused). Swarm's update status, in Docker's
/// words, is an upgrade step of this kind too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Logged<T> {
    /// A state this version knows.
    Known(T),
    /// A name this version does not know as a state.
    Other(String),
}

impl<T> From<T> for Logged<T> {
    fn from(state: T) -> Self {
        Logged::Known(state)
    }
}

impl<T: std::fmt::Display> std::fmt::Display for Logged<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Logged::Known(state) => state.fmt(f),
            Logged::Other(name) => f.write_str(name),
        }
    }
}

impl<T: Named> Serialize for Logged<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de, T: Named> Deserialize<'de> for Logged<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(T::from_name(&name).map_or(Logged::Other(name), Logged::Known))
    }
}

/// The elder's steps in an upgrade, in the order they run; `/status` and
/// a refused second request name the one under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum UpgradeStep {
    /// Finding the image: the registry's tags, or the previous version's image.
    #[serde(rename = "resolving")]
    Resolving,
    #[serde(rename = "pulling")]
    Pulling,
    /// Holding the swap lock: companion updates in either instance finish first.
    #[serde(rename = "waiting for companion updates")]
    WaitingForCompanionUpdates,
    /// Creating and starting the successor on the other port.
    #[serde(rename = "starting the successor")]
    StartingTheSuccessor,
    /// Polling the successor's `/health` until it answers as itself.
    #[serde(rename = "health-checking the successor")]
    HealthChecking,
    /// The go-ahead is given; waiting for the successor to stop this instance.
    #[serde(rename = "waiting for the successor's takeover")]
    WaitingForTakeover,
    /// The successor serves the public; this instance watches it, out of
    /// rotation, ready to take the traffic back.
    #[serde(rename = "baking the successor")]
    Baking,
    /// A Swarm task: the service's spec names the target, and Swarm
    /// replaces the tasks one by one (or rolls them back).
    #[serde(rename = "updating the Swarm service")]
    UpdatingTheService,
}

impl std::fmt::Display for UpgradeStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpgradeStep::Resolving => "resolving",
            UpgradeStep::Pulling => "pulling",
            UpgradeStep::WaitingForCompanionUpdates => "waiting for companion updates",
            UpgradeStep::StartingTheSuccessor => "starting the successor",
            UpgradeStep::HealthChecking => "health-checking the successor",
            UpgradeStep::WaitingForTakeover => "waiting for the successor's takeover",
            UpgradeStep::Baking => "baking the successor",
            UpgradeStep::UpdatingTheService => "updating the Swarm service",
        })
    }
}

/// The successor's steps in a takeover, in the order they run. The elder
/// reads them from the successor's `/handover`, so their names are the wire
/// format between two versions: they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TakeoverStep {
    /// Renaming this instance's sockets over the public paths (the live
    /// socket nginx connects to, the control and update sockets).
    #[serde(rename = "publishing the sockets")]
    PublishingSockets,
    /// Asking through the live socket's public path until this very
    /// instance answers there.
    #[serde(rename = "confirming through the live socket")]
    ConfirmingThroughLiveSocket,
    /// Serving the public while the elder, out of rotation, watches this
    /// instance; only an elder that asked for a bake sees this step.
    #[serde(rename = "baking")]
    Baking,
    /// Stopping and removing the elder: an elder that gets a stop signal at
    /// this step has been taken over from.
    #[serde(rename = "stopping the elder")]
    StoppingTheElder,
}

impl std::fmt::Display for TakeoverStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TakeoverStep::PublishingSockets => "publishing the sockets",
            TakeoverStep::ConfirmingThroughLiveSocket => "confirming through the live socket",
            TakeoverStep::Baking => "baking",
            TakeoverStep::StoppingTheElder => "stopping the elder",
        })
    }
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
    /// Publishing the sockets, confirming, stopping the elder.
    Running { step: TakeoverStep },
    /// This instance is the one live instance.
    Done,
    /// The takeover failed; the elder keeps serving and removes this instance.
    Failed { reason: String },
}

impl std::fmt::Display for TakeoverPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TakeoverPhase::Idle => f.write_str("idle"),
            TakeoverPhase::WaitingForGo => f.write_str("waiting for the elder's go-ahead"),
            TakeoverPhase::Running { step } => step.fmt(f),
            TakeoverPhase::Done => f.write_str("done"),
            TakeoverPhase::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

impl UpgradeStep {
    const ALL: [UpgradeStep; 8] = [
        UpgradeStep::Resolving,
        UpgradeStep::Pulling,
        UpgradeStep::WaitingForCompanionUpdates,
        UpgradeStep::StartingTheSuccessor,
        UpgradeStep::HealthChecking,
        UpgradeStep::WaitingForTakeover,
        UpgradeStep::Baking,
        UpgradeStep::UpdatingTheService,
    ];
}

impl Named for UpgradeStep {
    fn from_name(name: &str) -> Option<Self> {
        find(&UpgradeStep::ALL, name)
    }
}

impl Named for TakeoverPhase {
    fn from_name(name: &str) -> Option<Self> {
        const STEPS: [TakeoverStep; 4] = [
            TakeoverStep::PublishingSockets,
            TakeoverStep::ConfirmingThroughLiveSocket,
            TakeoverStep::Baking,
            TakeoverStep::StoppingTheElder,
        ];
        match name {
            "idle" => Some(TakeoverPhase::Idle),
            "waiting for the elder's go-ahead" => Some(TakeoverPhase::WaitingForGo),
            "done" => Some(TakeoverPhase::Done),
            _ => match name.strip_prefix("failed: ") {
                Some(reason) => Some(TakeoverPhase::Failed {
                    reason: reason.to_string(),
                }),
                None => find(&STEPS, name).map(|step| TakeoverPhase::Running { step }),
            },
        }
    }
}

/// How a finished upgrade ended, as the history, the `upgrade_finished`
/// event, the metrics and the notifications name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A successor took over.
    Upgraded,
    /// The target was what ran: nothing was done.
    AlreadyThere,
    /// Refused, or it did not work; the record's `error` says why.
    Failed,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Upgraded => "upgraded",
            Outcome::AlreadyThere => "already_there",
            Outcome::Failed => "failed",
        })
    }
}

impl Named for Outcome {
    fn from_name(name: &str) -> Option<Self> {
        find(&[Outcome::Upgraded, Outcome::AlreadyThere, Outcome::Failed], name)
    }
}

/// What an upgrade was asked for, as the history and the events name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// The version that ran before the last upgrade: `rollback`.
    Rollback,
    /// A requirement of the registry's tags as it was written: `latest`, `2`, `=1.4.0`.
    Registry(String),
}

impl std::fmt::Display for Requested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Requested::Rollback => f.write_str("rollback"),
            Requested::Registry(requirement) => f.write_str(requirement),
        }
    }
}

impl Serialize for Requested {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Requested {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(match name.as_str() {
            "rollback" => Requested::Rollback,
            _ => Requested::Registry(name),
        })
    }
}

/// The steps of a companion update, in the order they run, as the event
/// log names them (`update_step`); the companion calls them `Step`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateStep {
    /// Admission, credentials, and the tag a requirement picks.
    Resolving,
    Pulling,
    /// Stop-first placement: the old container stops before the new one exists.
    StoppingTheOld,
    /// The switch of the name: the old container gives it up.
    RenamingAside,
    Creating,
    Starting,
    /// Watching the new container until it is up (each look is a `health_attempt`).
    HealthChecking,
    /// A blue-green app's successor answered at its own address: the app's
    /// socket sends new connections to it.
    Switching,
    /// A blue-green app's elder finishes the connections it has, out of
    /// rotation, before it is stopped.
    Draining,
    /// A blue-green app's successor serves alone, watched for
    /// `update_bake_secs`; the elder runs on, out of rotation, to switch back to.
    Baking,
    /// The new container is up: the old one is stopped (unless it was
    /// already, stop-first) and removed.
    Retiring {
        stopped: bool,
    },
    /// A blue-green app's old container is stopped and removed, after the
    /// update's answer (which went once the new one had the socket and the
    /// old one no connection).
    Retired,
    /// The new container did not come up: it is removed and the old one restored.
    RollingBack,
}

impl std::fmt::Display for UpdateStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpdateStep::Resolving => "resolving",
            UpdateStep::Pulling => "pulling",
            UpdateStep::StoppingTheOld => "stopping the old container",
            UpdateStep::RenamingAside => "renaming the old container aside",
            UpdateStep::Creating => "creating the new container",
            UpdateStep::Starting => "starting the new container",
            UpdateStep::HealthChecking => "health-checking the new container",
            UpdateStep::Switching => "switching the app's socket to the new container",
            UpdateStep::Draining => "draining the old container's connections",
            UpdateStep::Baking => "baking the new container, the old one kept warm out of rotation",
            UpdateStep::Retiring { stopped: false } => "stopping and removing the old container",
            UpdateStep::Retiring { stopped: true } => "removing the old container",
            UpdateStep::Retired => "the old container is stopped and removed",
            UpdateStep::RollingBack => "rolling back",
        })
    }
}

impl UpdateStep {
    const ALL: [UpdateStep; 14] = [
        UpdateStep::Resolving,
        UpdateStep::Pulling,
        UpdateStep::StoppingTheOld,
        UpdateStep::RenamingAside,
        UpdateStep::Creating,
        UpdateStep::Starting,
        UpdateStep::HealthChecking,
        UpdateStep::Switching,
        UpdateStep::Draining,
        UpdateStep::Baking,
        UpdateStep::Retiring { stopped: false },
        UpdateStep::Retiring { stopped: true },
        UpdateStep::Retired,
        UpdateStep::RollingBack,
    ];
}

impl Named for UpdateStep {
    fn from_name(name: &str) -> Option<Self> {
        find(&UpdateStep::ALL, name)
    }
}

/// How a finished companion update ended, as its `update_finished` event
/// and the metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateEnd {
    /// The container runs the new image.
    Updated,
    /// The container already ran that image: nothing was done.
    Unchanged,
    /// It did not work, and the old container could not be restored (or
    /// the update never got that far).
    Failed,
    /// It did not work, and the old container runs again.
    RolledBack,
}

impl std::fmt::Display for UpdateEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UpdateEnd::Updated => "updated",
            UpdateEnd::Unchanged => "unchanged",
            UpdateEnd::Failed => "failed",
            UpdateEnd::RolledBack => "rolled_back",
        })
    }
}

impl Named for UpdateEnd {
    fn from_name(name: &str) -> Option<Self> {
        let all = [
            UpdateEnd::Updated,
            UpdateEnd::Unchanged,
            UpdateEnd::Failed,
            UpdateEnd::RolledBack,
        ];
        find(&all, name)
    }
}

/// How a bake ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BakeOutcome {
    /// The successor stays.
    Promoted,
    /// The elder serves again; the successor is removed.
    RolledBack,
}

impl BakeOutcome {
    /// As the JSON, the metrics' label and the events say it.
    pub fn as_str(self) -> &'static str {
        match self {
            BakeOutcome::Promoted => "promoted",
            BakeOutcome::RolledBack => "rolled_back",
        }
    }
}
