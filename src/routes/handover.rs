//! `/handover`: the elder's go-ahead to its successor, and the successor's
//! progress as the elder polls it. Loopback only, and the go-ahead needs the
//! secret the elder gave this instance when it created it.

use actix_web::http::StatusCode;
use actix_web::http::header::AUTHORIZATION;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::app::AppState;
use crate::routes::json_error;
use crate::state::TakeoverPhase;

fn only_direct_loopback(req: &HttpRequest) -> Result<(), HttpResponse> {
    let proxied = req.headers().contains_key("x-forwarded-for");
    if proxied || !req.peer_addr().is_some_and(|a| a.ip().is_loopback()) {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "the handover is only reachable from loopback",
        ));
    }
    Ok(())
}

/// `POST /handover`: go ahead and take over.
pub async fn go(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(r) = only_direct_loopback(&req) {
        return r;
    }
    let settings = &state.orchestrator.settings;
    let Some(expected) = &settings.handover_token else {
        return json_error(StatusCode::CONFLICT, "this instance was not started as a successor");
    };
    let presented = crate::secret::bearer(req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()));
    if !presented.is_some_and(|p| crate::secret::matches(p, expected)) {
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

/// `GET /handover`: where the takeover is.
pub async fn phase(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    if let Err(r) = only_direct_loopback(&req) {
        return r;
    }
    HttpResponse::Ok().json(state.orchestrator.shared.status().takeover.clone())
}
