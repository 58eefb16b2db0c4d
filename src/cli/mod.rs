//! The operator's commands: `selfup upgrade [REQ]`, `rollback`, `status`,
//! `history`. They talk to the live instance on this host: the control
//! socket when it answers, else `127.0.0.1` on the first port that answers.
//!
//! Exit codes: 0 done (or already there), 1 the instance refused or the
//! upgrade failed (the reason on stderr), 69 no instance answered, 2 bad
//! arguments.

pub mod http;
pub mod program;

use std::io::BufReader;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

use self::http::{Address, SseReader};

/// No instance answered (`EX_UNAVAILABLE`).
pub const UNAVAILABLE: u8 = 69;

/// What every command needs.
#[derive(Debug, Clone)]
pub struct Client {
    pub address: Address,
    /// The bearer token, when the instance wants one.
    pub token: Option<String>,
    /// JSON on stdout instead of text for a person.
    pub json: bool,
}

/// Why a command did not succeed, and its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn unreachable(address: &Address, e: std::io::Error) -> Failure {
        Failure {
            code: UNAVAILABLE,
            message: format!("no selfup instance answers at {address}: {e}"),
        }
    }
}

impl Client {
    /// `--url`, else the default address for `control_socket` and `ports`.
    pub fn new(
        url: Option<&str>,
        token: Option<String>,
        json: bool,
        control_socket: &Path,
        ports: &[u16],
    ) -> Result<Client, Failure> {
        let address = match url {
            Some(url) => Address::parse(url).map_err(|message| Failure { code: 2, message })?,
            None => http::default_address(control_socket, ports),
        };
        Ok(Client { address, token, json })
    }

    fn headers(&self, accept: &str) -> Vec<(&'static str, String)> {
        let mut headers = vec![("Accept", accept.to_string())];
        if let Some(token) = &self.token {
            headers.push(("Authorization", format!("Bearer {token}")));
        }
        headers
    }

    /// `GET path` as JSON; an error answer is a failure with its `error`.
    fn get_json(&self, path: &str) -> Result<Value, Failure> {
        let response = http::request(
            &self.address,
            "GET",
            path,
            &self.headers("application/json"),
            Some(Duration::from_secs(30)),
        )
        .map_err(|e| Failure::unreachable(&self.address, e))?;
        let status = response.status;
        let text = response.text().map_err(|e| Failure::unreachable(&self.address, e))?;
        let body: Value = serde_json::from_str(&text).map_err(|_| Failure {
            code: 1,
            message: format!("{path} answered {status} with no JSON: {}", text.trim()),
        })?;
        if status >= 400 {
            return Err(Failure {
                code: 1,
                message: format!("{path} answered {status}: {}", body["error"].as_str().unwrap_or(&text)),
            });
        }
        Ok(body)
    }

    /// `selfup status`.
    pub fn status(&self) -> Result<(), Failure> {
        let body = self.get_json("/status")?;
        if self.json {
            println!("{body}");
        } else {
            print!("{}", status_text(&body));
        }
        Ok(())
    }

    /// `selfup history`.
    pub fn history(&self) -> Result<(), Failure> {
        let body = self.get_json("/status")?;
        if self.json {
            println!("{}", body["history"]);
        } else {
            print!("{}", history_text(&body["history"]));
        }
        Ok(())
    }

    /// `selfup upgrade [REQ]` and `selfup rollback`: the upgrade's events as
    /// they come (a progress bar for the pull, a line per step), then the outcome.
    pub fn upgrade(&self, method: &str, path: &str) -> Result<(), Failure> {
        let response = http::request(&self.address, method, path, &self.headers("text/event-stream"), None)
            .map_err(|e| Failure::unreachable(&self.address, e))?;
        let streamed = response
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream"));
        if !streamed {
            // Refused before anything ran (403, 401, 400): one JSON answer.
            let status = response.status;
            let text = response.text().unwrap_or_default();
            let body: Value =
                serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "error": text.trim() }));
            return self.outcome(status, body);
        }
        let mut view = View::new(self.json);
        for event in SseReader::new(BufReader::new(response.body)) {
            let event = event.map_err(|e| Failure {
                code: 1,
                message: format!("the event stream broke off: {e}"),
            })?;
            let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            if event.event == "result" {
                view.finish();
                let status = data["http_status"].as_u64().unwrap_or(500) as u16;
                return self.outcome(status, data);
            }
            view.show(&event.event, &data);
        }
        view.finish();
        Err(Failure {
            code: 1,
            message: "the connection closed before the upgrade's answer; see `selfup history`".into(),
        })
    }

    fn outcome(&self, status: u16, body: Value) -> Result<(), Failure> {
        if self.json {
            println!("{body}");
        }
        if status >= 400 {
            let mut message = format!(
                "failed ({status}): {}",
                body["error"].as_str().unwrap_or("no reason given")
            );
            if let Some(log) = body["successor_log"].as_array().filter(|l| !l.is_empty()) {
                message.push_str("\nthe successor's last log lines:");
                for line in log.iter().rev().take(10).rev() {
                    message.push_str(&format!("\n  {}", line.as_str().unwrap_or_default()));
                }
            }
            return Err(Failure { code: 1, message });
        }
        if !self.json {
            println!("{}", outcome_text(&body));
        }
        Ok(())
    }
}

/// The person's view of an upgrade's events.
struct View {
    json: bool,
    start_ms: Option<u64>,
    bar: Option<indicatif::ProgressBar>,
}

impl View {
    fn new(json: bool) -> View {
        View {
            json,
            start_ms: None,
            bar: None,
        }
    }

    fn show(&mut self, kind: &str, data: &Value) {
        if self.json {
            return;
        }
        let at = data["time_ms"].as_u64().unwrap_or(0);
        let start = *self.start_ms.get_or_insert(at);
        let elapsed = at.saturating_sub(start) as f64 / 1000.0;
        let line = match kind {
            "upgrade_started" => Some(format!(
                "upgrading {} to {}",
                data["from"].as_str().unwrap_or("?"),
                data["requested"].as_str().unwrap_or("?")
            )),
            "upgrade_step" => Some(data["step"].as_str().unwrap_or("?").to_string()),
            "takeover" => Some(format!("successor: {}", data["phase"].as_str().unwrap_or("?"))),
            "bake_started" => Some(format!(
                "baking {} for {} s: the elder stands by (POST /promote ends it, POST /rollback goes back)",
                data["to"].as_str().unwrap_or("?"),
                data["secs"].as_u64().unwrap_or(0)
            )),
            "bake_ended" => Some(format!(
                "bake {}: {}",
                data["outcome"].as_str().unwrap_or("?").replace('_', " "),
                data["reason"].as_str().unwrap_or("?")
            )),
            // The attempt that passed; every attempt is in /events.
            "health_attempt" if data["result"] == "answered as the successor" => Some(format!(
                "the successor answered /health (attempt {})",
                data["attempt"].as_u64().unwrap_or(0)
            )),
            "pull_progress" => {
                let (done, total) = (data["done"].as_u64().unwrap_or(0), data["total"].as_u64().unwrap_or(0));
                let bar = self.bar.get_or_insert_with(|| {
                    let bar = indicatif::ProgressBar::new(total);
                    if let Ok(style) = indicatif::ProgressStyle::with_template(
                        "           [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    ) {
                        bar.set_style(style.progress_chars("=> "));
                    }
                    bar
                });
                bar.set_length(total);
                bar.set_position(done);
                None
            }
            _ => None,
        };
        if let Some(line) = line {
            self.end_bar();
            println!("{elapsed:>8.3}s  {line}");
        }
    }

    fn end_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
            if bar.is_hidden() {
                // No terminal: the pull's size in one line instead.
                println!("           pulled {} bytes", bar.position());
            }
        }
    }

    fn finish(&mut self) {
        self.end_bar();
    }
}

/// The line that ends a successful upgrade.
fn outcome_text(body: &Value) -> String {
    match body["status"].as_str() {
        Some("upgraded") => format!(
            "upgraded {} -> {}: port {} -> {}, in {:.3}s",
            body["from"].as_str().unwrap_or("?"),
            body["to"].as_str().unwrap_or("?"),
            body["old_port"],
            body["new_port"],
            body["timings"]["total_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
        ),
        Some("already_there") => body["message"].as_str().unwrap_or("already there").to_string(),
        Some(status @ ("completed" | "rollback_completed")) => {
            let tasks: Vec<String> = body["tasks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    format!(
                        "{} {}",
                        t["task"].as_str().unwrap_or("?"),
                        t["version"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            format!(
                "{} {} -> {}: {} ({}), in {:.3}s; tasks: {}",
                body["service"].as_str().unwrap_or("?"),
                body["from"].as_str().unwrap_or("?"),
                body["to"].as_str().unwrap_or("?"),
                status.replace('_', " "),
                body["message"].as_str().unwrap_or(""),
                body["timings"]["total_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                tasks.join(", ")
            )
        }
        _ => body.to_string(),
    }
}

/// `/status` as a short table.
pub fn status_text(body: &Value) -> String {
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    let uptime = body["uptime_secs"].as_u64().map_or("-".into(), duration);
    let previous = match &body["previous"] {
        Value::Null => "-".to_string(),
        p => s(&p["version"]),
    };
    let under_way = match &body["upgrade_in_progress"] {
        Value::Null => "-".to_string(),
        u => format!("{} ({})", s(&u["requirement"]), s(&u["step"])),
    };
    for (name, value) in [
        ("version", s(&body["version"])),
        ("port", s(&body["port"])),
        ("uptime", uptime),
        ("container", s(&body["container"]).chars().take(12).collect()),
        ("image", s(&body["image"]["ref"])),
        ("previous", previous),
        ("upgrading", under_way),
        ("takeover", s(&body["takeover"]["phase"])),
    ] {
        out.push_str(&format!("{name:<10} {value}\n"));
    }
    let history = body["history"]
        .as_array()
        .map(|h| h.iter().take(5).cloned().collect::<Vec<_>>());
    out.push_str("last upgrades:\n");
    out.push_str(&history_text(&Value::Array(history.unwrap_or_default())));
    out
}

/// The history as a table, newest first.
pub fn history_text(history: &Value) -> String {
    let Some(rows) = history.as_array().filter(|h| !h.is_empty()) else {
        return "  (none)\n".into();
    };
    let mut out = format!(
        "  {:<20} {:<10} {:<10} {:<10} {:<14} {:>9}  {}\n",
        "finished (UTC)", "from", "to", "asked", "outcome", "took", "error"
    );
    for r in rows {
        let text = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        out.push_str(&format!(
            "  {:<20} {:<10} {:<10} {:<10} {:<14} {:>8.3}s  {}\n",
            utc(r["finished_at"].as_u64().unwrap_or(0)),
            text("from"),
            text("to"),
            text("requested"),
            text("outcome"),
            r["duration_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
            r["error"]
                .as_str()
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

/// Runs a command and turns its result into the exit code.
pub fn exit(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("selfup: {}", f.message);
            ExitCode::from(f.code)
        }
    }
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
        let text = status_text(&body);
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
        assert_eq!(history_text(&json!([])), "  (none)\n");
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
}
