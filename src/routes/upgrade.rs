//! `/upgrade` and `/upgrade/{requirement}`: the elder's side of the handover.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde_json::json;

use crate::handover::{Target, UpgradeError};
use crate::recreate::version::Requirement;
use crate::registry::RegistryError;
use crate::routes::AppState;
use crate::routes::guard_control;

impl ResponseError for UpgradeError {
    fn status_code(&self) -> StatusCode {
        use UpgradeError::*;
        match self {
            BadRequirement(_) => StatusCode::BAD_REQUEST,
            InProgress(_) | TakeoverUnderway(_) | NotInContainer | NoPrevious | Lower { .. } => StatusCode::CONFLICT,
            NoMatch { .. }
            | PreviousImageGone { .. }
            | Registry {
                source: RegistryError::UnknownRepository { .. },
                ..
            } => StatusCode::NOT_FOUND,
            Docker { source, .. } | Pull { source, .. } if source.is_unreachable() => StatusCode::SERVICE_UNAVAILABLE,
            Proxy(crate::proxy::ProxyError::Docker(e)) if e.is_unreachable() => StatusCode::SERVICE_UNAVAILABLE,
            Registry { .. }
            | Pull { .. }
            | NoVersion { .. }
            | LabelMismatch { .. }
            | Docker { .. }
            | SuccessorUnhealthy { .. }
            | TakeoverFailed { .. }
            | Proxy(_) => StatusCode::BAD_GATEWAY,
            StoppedBeforeConfirmation { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Credentials { .. } | Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        use UpgradeError::*;
        let mut body = json!({ "status": "failed", "error": self.to_string() });
        match self {
            InProgress(running) => {
                body["in_progress"] = json!({
                    "requirement": running.requirement,
                    "step": running.step,
                    "running_for_ms": running.started.elapsed().as_millis(),
                });
            }
            NoMatch { available, .. } => body["available"] = json!(available),
            SuccessorUnhealthy { log, port, .. } | TakeoverFailed { log, port, .. } => {
                body["successor_port"] = json!(port);
                body["successor_log"] = json!(log.lines().collect::<Vec<_>>());
                body["live"] = json!("the elder keeps serving");
            }
            _ => {}
        }
        HttpResponse::build(self.status_code()).json(body)
    }
}

/// `GET|POST /upgrade`: to whatever `:latest` is.
pub async fn latest(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, UpgradeError> {
    run(req, state, Target::Registry(Requirement::Latest)).await
}

/// `POST /rollback`: to the version that ran before the last upgrade.
pub async fn rollback(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, UpgradeError> {
    run(req, state, Target::Previous).await
}

/// `GET|POST /upgrade/{requirement}`: `2`, `2.1` or `=1.4.0`.
pub async fn matching(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, UpgradeError> {
    let requirement = Requirement::parse(&path.into_inner())?;
    run(req, state, Target::Registry(requirement)).await
}

async fn run(req: HttpRequest, state: web::Data<AppState>, target: Target) -> Result<HttpResponse, UpgradeError> {
    if let Err(denied) = guard_control(&req, &state.orchestrator.settings) {
        return Ok(denied);
    }
    let o = state.orchestrator.clone();
    let outcome = state
        .spawn(async move { o.upgrade(target).await })
        .await
        .map_err(UpgradeError::Internal)??;
    Ok(HttpResponse::Ok().json(outcome))
}
