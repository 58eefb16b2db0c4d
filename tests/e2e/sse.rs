//! Reading Server-Sent Events in the tests: an upgrade's or an update's
//! stream, `/events`.

use std::time::{Duration, Instant};

use serde_json::Value;

/// One Server-Sent Event: its id, name and JSON data.
#[derive(Debug, Clone)]
pub struct Ev {
    pub id: Option<u64>,
    pub name: String,
    pub data: Value,
}

/// Reads `response` (an event stream) until `enough` says so, the stream
/// ends, or `timeout` passes (a failure); the events read.
pub async fn read_events(
    mut response: reqwest::Response,
    timeout: Duration,
    enough: impl Fn(&[Ev]) -> bool,
) -> Vec<Ev> {
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/event-stream"), "{content_type}");
    let deadline = Instant::now() + timeout;
    let mut raw = Vec::new();
    loop {
        let events = parse(&raw);
        if enough(&events) {
            return events;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(chunk))) => raw.extend_from_slice(&chunk),
            Ok(Ok(None)) | Ok(Err(_)) => return parse(&raw),
            Err(_) => panic!("timed out after {timeout:?} reading events; read: {events:#?}"),
        }
    }
}

fn parse(raw: &[u8]) -> Vec<Ev> {
    // Only whole events: the last one may still be arriving.
    let text = String::from_utf8_lossy(raw);
    let whole = match text.rfind("\n\n") {
        Some(end) => &text[..end + 2],
        None => "",
    };
    selfup::cli::sse::Decoder::default()
        .push(whole.as_bytes())
        .into_iter()
        .map(|e| Ev {
            id: e.id.and_then(|i| i.parse().ok()),
            name: e.event,
            data: serde_json::from_str(&e.data).unwrap_or(Value::Null),
        })
        .collect()
}

/// `upgrade_step`, `update_step` and `takeover` events as `step` / `successor: phase`, the others by name.
pub fn label(e: &Ev) -> String {
    match e.name.as_str() {
        "upgrade_step" | "update_step" => e.data["step"].as_str().unwrap_or_default().to_string(),
        "takeover" => format!("successor: {}", e.data["phase"].as_str().unwrap_or_default()),
        other => other.to_string(),
    }
}

/// Asserts that every label of `expected` is in `labels`, in that order
/// (others may come between).
pub fn assert_in_order(labels: &[String], expected: &[&str]) {
    let mut at = 0;
    for want in expected {
        match labels[at..].iter().position(|l| l == want) {
            Some(i) => at += i + 1,
            None => panic!("{want:?} missing (or out of order) in {labels:#?}"),
        }
    }
}
