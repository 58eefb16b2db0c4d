//! `/handover`: the elder's go-ahead to its successor, and the successor's
//! progress as the elder polls it. Behind the loopback guard, or the secret
//! the elder gave this instance when it created it (on a private network the
//! elder calls from its own address); the go-ahead always needs the secret.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::routes::guard::{Elder, HandoverWatcher};
use crate::routes::{AppState, json_error};
use crate::state::{TakeoverPhase, TakeoverStep};

/// `POST /handover`: go ahead and take over.
pub async fn go(_: Elder, req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let shared = &state.orchestrator.shared;
    let phase = shared.status().takeover.clone();
    match phase {
        TakeoverPhase::WaitingForGo => {
            // An elder that bakes says for how long; an older one says nothing.
            shared.status().bake_requested = bake_asked(req.query_string());
            shared.go.notify_one();
            HttpResponse::Accepted().json(json!({ "phase": "taking_over" }))
        }
        // The second go-ahead: the elder's bake ended clean.
        TakeoverPhase::Running {
            step: TakeoverStep::Baking,
        } => {
            shared.go.notify_one();
            HttpResponse::Accepted().json(json!({ "phase": "finishing" }))
        }
        TakeoverPhase::Idle => json_error(StatusCode::CONFLICT, "not ready for a go-ahead yet"),
        other => HttpResponse::build(StatusCode::CONFLICT)
            .json(json!({ "error": "the takeover is past its go-ahead", "phase": other })),
    }
}

/// `GET /handover`: where the takeover is. With an upgrade token configured,
/// it takes that token or the handover secret (the elder polls with it).
pub async fn phase(_: HandoverWatcher, state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(state.orchestrator.shared.status().takeover.clone())
}

/// The bake an elder's go-ahead asks for: `bake_ms=<n>` in the query, `n` > 0.
fn bake_asked(query: &str) -> Option<std::time::Duration> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "bake_ms")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(std::time::Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::bake_asked;
    use std::time::Duration;

    #[test]
    fn the_go_ahead_asks_for_a_bake_only_with_a_positive_bake_ms() {
        assert_eq!(bake_asked("bake_ms=30000"), Some(Duration::from_secs(30)));
        assert_eq!(bake_asked("x=1&bake_ms=5"), Some(Duration::from_millis(5)));
        assert_eq!(bake_asked(""), None);
        assert_eq!(bake_asked("bake_ms=0"), None);
        assert_eq!(bake_asked("bake_ms=soon"), None);
    }
}
