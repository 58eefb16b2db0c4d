//! `/handover`: the elder's go-ahead to its successor, and the successor's
//! progress as the elder polls it. Behind the loopback guard, or the secret
//! the elder gave this instance when it created it (on a private network the
//! elder calls from its own address); the go-ahead always needs the secret.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::routes::AppState;
use crate::routes::{guard_handover, json_error, presents};
use crate::state::TakeoverPhase;

/// `POST /handover`: go ahead and take over.
pub async fn go(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let settings = &state.orchestrator.settings;
    if let Err(r) = guard_handover(&req, settings) {
        return r;
    }
    let Some(expected) = &settings.handover_token else {
        return json_error(StatusCode::CONFLICT, "this instance was not started as a successor");
    };
    if !presents(&req, expected) {
        return json_error(StatusCode::UNAUTHORIZED, "a valid handover token is required");
    }
    let shared = &state.orchestrator.shared;
    let phase = shared.status().takeover.clone();
    match phase {
        TakeoverPhase::WaitingForGo => {
            shared.go.notify_one();
            HttpResponse::Accepted().json(json!({ "phase": "taking_over" }))
        }
        TakeoverPhase::Idle => json_error(StatusCode::CONFLICT, "not ready for a go-ahead yet"),
        other => HttpResponse::build(StatusCode::CONFLICT)
            .json(json!({ "error": "the takeover is past its go-ahead", "phase": other })),
    }
}

/// `GET /handover`: where the takeover is. With an upgrade token configured,
/// it takes that token or the handover secret (the elder polls with it).
pub async fn phase(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let settings = &state.orchestrator.settings;
    if let Err(r) = guard_handover(&req, settings) {
        return r;
    }
    if let Some(token) = &settings.upgrade_token
        && !presents(&req, token)
        && !settings
            .handover_token
            .as_deref()
            .is_some_and(|secret| presents(&req, secret))
    {
        return json_error(StatusCode::UNAUTHORIZED, "a valid bearer token is required");
    }
    HttpResponse::Ok().json(state.orchestrator.shared.status().takeover.clone())
}
