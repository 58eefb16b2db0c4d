//! Fault switches for the end-to-end tests, compiled only with the `faults`
//! feature (test images carry it, releases never do). Each switch is an
//! environment variable outside the `SELFUP_` namespace, so a build without
//! the feature ignores it and a clone passes it on to the successor.
//!
//! - `FAULT_INSPECT_ERRORS=<n>`: the first `n` inspections of a container
//!   other than this one fail as a daemon error (HTTP 500) would.
//! - `FAULT_TAKEOVER_PAUSE_MS=<n>`: a successor waits `n` ms after it has
//!   published its sockets and confirmed them, before it stops its elder:
//!   a window in which to kill it, or stop the elder, after the switch.
//! - `FAULT_SUCCESSOR_EXIT_MS=<n>`: an instance started as a successor exits
//!   (code 70) `n` ms after it has confirmed the live socket: a release that
//!   crashes under real traffic, after the switch.
//! - `FAULT_SUCCESSOR_5XX=1`: an instance started as a successor answers
//!   `/` and `/echo` on the live socket with 500: a release that fails
//!   every public request while its `/health` says it is fine.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static INSPECT_ERRORS_LEFT: OnceLock<AtomicU64> = OnceLock::new();
static OWN_ID: OnceLock<Option<String>> = OnceLock::new();

/// The error message to return instead of inspecting `id` (as a daemon's
/// 500 would), while the switch has some left.
pub fn inspect_error(id: &str) -> Option<String> {
    let own = OWN_ID.get_or_init(crate::identity::own_container_id);
    if own
        .as_deref()
        .is_some_and(|own| own.starts_with(id) || id.starts_with(own))
    {
        return None;
    }
    let left = INSPECT_ERRORS_LEFT.get_or_init(|| {
        AtomicU64::new(
            std::env::var("FAULT_INSPECT_ERRORS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        )
    });
    left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .ok()
        .map(|n| {
            tracing::warn!(container = id, left = n - 1, "fault switch: failing an inspection");
            "injected fault: server error (500)".to_string()
        })
}

/// `FAULT_SWAP_EXIT=<container>:<phase>[,...]`: the instance exits (code
/// 70, no cleanup) right after the swap of `<container>` wrote its journal
/// at `<phase>` (`planned`, `aside`, `created`, `started`, `checked`), as a
/// crash there would leave it.
pub fn swap_exit(container: &str, phase: impl serde::Serialize) {
    let Ok(spec) = std::env::var("FAULT_SWAP_EXIT") else {
        return;
    };
    let phase = serde_json::to_value(phase).ok();
    let phase = phase.as_ref().and_then(|p| p.as_str()).unwrap_or_default();
    let hit = spec
        .split(',')
        .filter_map(|item| item.split_once(':'))
        .any(|(c, p)| c == container && p == phase);
    if hit {
        tracing::warn!(container, phase, "fault switch: exiting mid-swap");
        std::process::exit(70);
    }
}

/// Waits as `FAULT_TAKEOVER_PAUSE_MS` says, if it is set.
pub async fn takeover_pause() {
    let pause = std::env::var("FAULT_TAKEOVER_PAUSE_MS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    if pause > 0 {
        tracing::warn!(pause_ms = pause, "fault switch: pausing the takeover after the switch");
        tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    }
}

/// Exits the process `FAULT_SUCCESSOR_EXIT_MS` after now, if it is set.
pub fn successor_exit_later() {
    let Some(after) = std::env::var("FAULT_SUCCESSOR_EXIT_MS")
        .ok()
        .and_then(|n| n.parse::<u64>().ok())
    else {
        return;
    };
    tracing::warn!(after_ms = after, "fault switch: this successor exits after the switch");
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(after)).await;
        tracing::warn!("fault switch: exiting");
        std::process::exit(70);
    });
}

/// The 500 a successor answers on the live socket with `FAULT_SUCCESSOR_5XX=1`.
/// `live`: whether the request came in on the live socket.
pub fn server_error(live: bool, settings: &crate::config::Settings) -> Option<actix_web::HttpResponse> {
    let on = std::env::var("FAULT_SUCCESSOR_5XX").is_ok_and(|v| v == "1");
    (on && live && settings.handover_token.is_some()).then(|| {
        actix_web::HttpResponse::InternalServerError().json(serde_json::json!({ "error": "injected fault: 500" }))
    })
}
