//! What the instance answers, as types, and how a person reads it.
//!
//! These mirror the JSON rather than reuse the server's types: the `selfup`
//! on the host may be older or newer than the instance it asks, so an answer
//! it does not know (a new `status`, a new event) falls through to the raw
//! JSON or is skipped, where the server's own types would refuse it. `--json`
//! prints the answer as it came, never these.

use serde::Deserialize;
use serde_json::Value;

/// `/status`: the parts the table shows.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    pub version: Option<String>,
    pub port: Option<u16>,
    pub uptime_secs: Option<u64>,
    /// This instance's container id, when it runs in one.
    pub container: Option<String>,
    pub image: Option<Image>,
    /// The version that ran before the last upgrade, when one did.
    pub previous: Option<Previous>,
    pub upgrade_in_progress: Option<UnderWay>,
    pub takeover: Option<Takeover>,
    /// The finished upgrades, newest first.
    pub history: Vec<Record>,
}

/// The image this instance runs.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Image {
    #[serde(rename = "ref")]
    pub reference: Option<String>,
}

/// The version an upgrade replaced.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Previous {
    pub version: Option<String>,
}

/// The upgrade running now.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct UnderWay {
    pub requirement: Option<String>,
    pub step: Option<String>,
}

/// Where this instance is in taking over from its elder.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Takeover {
    pub phase: Option<String>,
}

/// A finished upgrade. Its outcome is shown as the instance names it, so
/// it stays text here.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Record {
    pub from: Option<String>,
    pub to: Option<String>,
    pub requested: Option<String>,
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
    /// Seconds since the epoch.
    pub finished_at: u64,
}

/// A successful answer to `/upgrade` or `/rollback`, by its `status`.
#[derive(Debug, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Answer {
    /// A successor took over.
    Upgraded {
        from: String,
        to: String,
        old_port: u16,
        new_port: u16,
        timings: Timings,
    },
    /// What was asked for already runs; `message` says so.
    AlreadyThere { message: String },
    /// Swarm rolled the target out to every task.
    Completed(Rollout),
    /// Swarm went back to the spec before its last update.
    RollbackCompleted(Rollout),
    /// A status this CLI does not know: shown as the JSON it is.
    #[serde(other)]
    Other,
}

/// How long an upgrade took.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Timings {
    pub total_ms: u64,
}

/// A Swarm service update, as it ended.
#[derive(Debug, Deserialize)]
pub struct Rollout {
    pub service: String,
    pub from: String,
    /// None when the service's labels do not say what ran before a rollback.
    pub to: Option<String>,
    /// Swarm's last word on the update.
    pub message: String,
    pub timings: Timings,
    pub tasks: Vec<Task>,
}

/// One task of a Swarm service.
#[derive(Debug, Deserialize)]
pub struct Task {
    pub task: String,
    /// None where the task's node does not have the image.
    pub version: Option<String>,
}

/// A refused or failed request: the reason, and the successor's last log
/// lines when a successor was started.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Refusal {
    pub error: Option<String>,
    pub successor_log: Vec<String>,
}

/// The last event of a streamed upgrade: the HTTP status a plain request
/// would have got (its answer is the rest of the event).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Ending {
    pub http_status: Option<u16>,
}

/// The events of an upgrade a person is shown, by their `type` (the SSE
/// event's name).
#[derive(Debug, Default, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The live instance accepted the upgrade.
    UpgradeStarted { from: String, requested: String },
    /// The elder's step.
    UpgradeStep { step: String },
    /// The successor's phase.
    Takeover { phase: String },
    /// The successor serves; the elder stands by for `secs`.
    BakeStarted { to: String, secs: u64 },
    /// The bake is over: `promoted` or `rolled_back`, and why.
    BakeEnded { outcome: String, reason: String },
    /// One look at the successor's `/health`.
    HealthAttempt { attempt: u64, result: String },
    /// Bytes of the pull so far.
    PullProgress { done: u64, total: u64 },
    /// An event the person is not shown.
    #[default]
    #[serde(other)]
    Other,
}

/// When an event happened, whatever its kind: the first one sets the clock
/// every line's time counts from.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Stamp {
    /// Milliseconds since the epoch.
    pub time_ms: u64,
}

/// Reads `T` out of an answer already parsed; a shape it does not expect
/// reads as `T`'s default, as a missing field would.
pub fn read<T: Default + serde::de::DeserializeOwned>(value: &Value) -> T {
    T::deserialize(value).unwrap_or_default()
}

/// The line that ends a successful upgrade.
pub fn outcome_text(body: &Value) -> String {
    let seconds = |t: &Timings| t.total_ms as f64 / 1000.0;
    match Answer::deserialize(body) {
        Ok(Answer::Upgraded {
            from,
            to,
            old_port,
            new_port,
            timings,
        }) => format!(
            "upgraded {from} -> {to}: port {old_port} -> {new_port}, in {:.3}s",
            seconds(&timings)
        ),
        Ok(Answer::AlreadyThere { message }) => message,
        Ok(Answer::Completed(r)) => r.text("completed"),
        Ok(Answer::RollbackCompleted(r)) => r.text("rollback completed"),
        Ok(Answer::Other) | Err(_) => body.to_string(),
    }
}

impl Rollout {
    fn text(&self, how: &str) -> String {
        let tasks: Vec<String> = self
            .tasks
            .iter()
            .map(|t| format!("{} {}", t.task, t.version.as_deref().unwrap_or("?")))
            .collect();
        format!(
            "{} {} -> {}: {how} ({}), in {:.3}s; tasks: {}",
            self.service,
            self.from,
            self.to.as_deref().unwrap_or("?"),
            self.message,
            self.timings.total_ms as f64 / 1000.0,
            tasks.join(", ")
        )
    }
}

/// `/status` as a short table.
pub fn status_text(status: &Status) -> String {
    let s = |v: Option<&str>| v.unwrap_or("-").to_string();
    let mut out = String::new();
    let under_way = match &status.upgrade_in_progress {
        None => "-".to_string(),
        Some(u) => format!("{} ({})", s(u.requirement.as_deref()), s(u.step.as_deref())),
    };
    for (name, value) in [
        ("version", s(status.version.as_deref())),
        ("port", status.port.map_or("-".into(), |p| p.to_string())),
        ("uptime", status.uptime_secs.map_or("-".into(), duration)),
        ("container", s(status.container.as_deref()).chars().take(12).collect()),
        ("image", s(status.image.as_ref().and_then(|i| i.reference.as_deref()))),
        (
            "previous",
            s(status.previous.as_ref().and_then(|p| p.version.as_deref())),
        ),
        ("upgrading", under_way),
        ("takeover", s(status.takeover.as_ref().and_then(|t| t.phase.as_deref()))),
    ] {
        out.push_str(&format!("{name:<10} {value}\n"));
    }
    out.push_str("last upgrades:\n");
    out.push_str(&history_text(&status.history[..status.history.len().min(5)]));
    out
}

/// The history as a table, newest first.
pub fn history_text(history: &[Record]) -> String {
    if history.is_empty() {
        return "  (none)\n".into();
    }
    let mut out = format!(
        "  {:<20} {:<10} {:<10} {:<10} {:<14} {:>9}  {}\n",
        "finished (UTC)", "from", "to", "asked", "outcome", "took", "error"
    );
    for r in history {
        let text = |v: &Option<String>| v.as_deref().unwrap_or("-").to_string();
        out.push_str(&format!(
            "  {:<20} {:<10} {:<10} {:<10} {:<14} {:>8.3}s  {}\n",
            utc(r.finished_at),
            text(&r.from),
            text(&r.to),
            text(&r.requested),
            text(&r.outcome),
            r.duration_ms as f64 / 1000.0,
            r.error
                .as_deref()
                .unwrap_or_default()
                .chars()
                .take(60)
                .collect::<String>()
        ));
    }
    out
}

/// `1h 2m 3s`.
fn duration(secs: u64) -> String {
    match secs {
        s if s >= 86400 => format!("{}d {}h", s / 86400, s % 86400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// Seconds since the epoch as `YYYY-MM-DD hh:mm:ss` (UTC), without a date crate.
fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn dates_and_durations_read_as_a_person_writes_them() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_000_000), "2026-11-30 00:53:20");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(3725), "1h 2m");
        assert_eq!(duration(90000), "1d 1h");
    }

    #[test]
    fn the_status_table_names_version_port_uptime_and_the_last_upgrades() {
        let body = json!({
            "version": "1.1.0", "port": 5801, "uptime_secs": 75, "container": "0123456789abcdef",
            "image": {"ref": "localhost:5000/selfup:1.1.0"}, "previous": {"version": "1.0.0"},
            "upgrade_in_progress": null, "takeover": {"phase": "done"},
            "history": [{"from": "1.0.0", "to": "1.1.0", "requested": "latest", "outcome": "upgraded",
                         "error": null, "duration_ms": 512, "finished_at": 1_796_000_000u64}]
        });
        let text = status_text(&read(&body));
        for expected in [
            "version    1.1.0",
            "port       5801",
            "uptime     1m 15s",
            "container  0123456789ab",
            "previous   1.0.0",
            "takeover   done",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        assert!(
            text.contains("2026-11-30 00:53:20  1.0.0      1.1.0      latest     upgraded          0.512s"),
            "{text}"
        );
        assert_eq!(
            history_text(&read::<Status>(&json!({"history": []})).history),
            "  (none)\n"
        );
    }

    #[test]
    fn a_status_without_a_container_or_a_previous_version_shows_dashes() {
        let body = json!({
            "version": "1.0.0", "port": 5800, "uptime_secs": 3, "container": null, "image": null,
            "previous": null, "upgrade_in_progress": {"requirement": "2", "step": "pulling"},
            "takeover": {"phase": "idle"}, "history": []
        });
        let text = status_text(&read(&body));
        assert_eq!(
            text,
            "version    1.0.0\nport       5800\nuptime     3s\ncontainer  -\nimage      -\nprevious   -\n\
             upgrading  2 (pulling)\ntakeover   idle\nlast upgrades:\n  (none)\n"
        );
    }

    #[test]
    fn a_finished_upgrade_reads_as_one_line() {
        let up = json!({"status": "upgraded", "from": "1.0.0", "to": "1.1.0", "old_port": 5800, "new_port": 5801,
                        "timings": {"total_ms": 431}});
        assert_eq!(
            outcome_text(&up),
            "upgraded 1.0.0 -> 1.1.0: port 5800 -> 5801, in 0.431s"
        );
        let there = json!({"status": "already_there", "message": "already at 1.1.0: nothing to do"});
        assert_eq!(outcome_text(&there), "already at 1.1.0: nothing to do");
    }

    #[test]
    fn a_swarm_rollout_names_its_tasks_and_an_unknown_answer_is_its_json() {
        let rollback = json!({"status": "rollback_completed", "service": "selfup_app", "from": "1.1.0", "to": null,
                              "message": "rollback completed", "timings": {"total_ms": 9000},
                              "tasks": [{"task": "abc", "version": "1.0.0"}, {"task": "def", "version": null}]});
        assert_eq!(
            outcome_text(&rollback),
            "selfup_app 1.1.0 -> ?: rollback completed (rollback completed), in 9.000s; tasks: abc 1.0.0, def ?"
        );
        let unknown = json!({"status": "postponed", "until": 3});
        assert_eq!(outcome_text(&unknown), unknown.to_string());
    }
}
