//! `POST /pause` and `POST /resume`: the public traffic held, not refused,
//! for a step that cannot be blue-green; the hold itself is in `app.rs`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::routes::guard::Control;
use crate::routes::{AppState, json_error};
use crate::state::now_millis;

/// `POST /pause`: new public requests wait until `/resume`, or until
/// `hold_secs` have passed; those already running finish.
pub async fn pause(_: Control, state: web::Data<AppState>) -> HttpResponse {
    let shared = state.orchestrator.shared.clone();
    let hold = state.orchestrator.settings.hold();
    match shared.pause.pause(hold, now_millis()) {
        Ok(paused) => {
            tracing::info!(hold_secs = hold.as_secs(), "public traffic paused");
            let ends = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                if ends.pause.end(paused) {
                    tracing::warn!(
                        hold_secs = hold.as_secs(),
                        "the pause ended by itself (hold_secs): the held requests go on"
                    );
                }
            });
            HttpResponse::Ok().json(json!({ "paused": paused, "hold_secs": hold.as_secs() }))
        }
        Err(running) => json_error(
            StatusCode::CONFLICT,
            format!(
                "the public traffic is paused already (since {} ms after the epoch, until {}): POST /resume ends it",
                running.since_ms, running.ends_ms
            ),
        ),
    }
}

/// `POST /resume`: every waiting request goes on.
pub async fn resume(_: Control, state: web::Data<AppState>) -> HttpResponse {
    let pause = &state.orchestrator.shared.pause;
    let held = pause.held();
    match pause.resume() {
        Some(paused) => {
            let paused_ms = now_millis().saturating_sub(paused.since_ms);
            tracing::info!(paused_ms, held, "public traffic resumed");
            HttpResponse::Ok().json(json!({ "resumed": paused, "paused_ms": paused_ms, "held": held }))
        }
        None => json_error(StatusCode::CONFLICT, "the public traffic is not paused"),
    }
}
