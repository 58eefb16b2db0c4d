//! `POST /update` and `POST /update/{container}/{requirement}`: companion
//! mode. Every request needs the API key; the answer comes once the outcome
//! is known (with `Accept: text/event-stream`, the update's events come as
//! they happen, then the answer as the last one). There is no loopback rule: a CI runner calls it over the app's
//! network, by the companion's name, and the key is the gate. Requests a
//! browser sends for another site are refused all the same (the guard is
//! [`UpdateCaller`]). Errors are JSON `{"error": ..}` with one status per cause.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Deserialize;
use serde_json::json;

use crate::companion::{UpdateError, UpdateOutcome};
use crate::events::Event;
use crate::routes::guard::{GuardError, UpdateCaller};
use crate::routes::{AppState, resolve_details, resolve_status};
use crate::version::Requirement;

/// Why an admitted companion request failed (its refusals are
/// [`crate::routes::guard::GuardError`]s).
#[derive(Debug, thiserror::Error)]
pub enum CompanionError {
    /// The body is not the expected JSON.
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// The update task itself failed (a panic, caught).
    #[error("{0}")]
    Internal(String),
    /// A pause or resume for a container this instance fronts no socket of.
    #[error(
        "container {0} is no blue-green app fronted here (labelled selfup.port, with app_socket_dir set): only such an app's traffic can be paused"
    )]
    NotAnApp(String),
    /// A pause while one is on, or a resume while none is.
    #[error("{0}")]
    PauseState(String),
    /// A promote or rollback for an app that is not baking here.
    #[error(
        "no bake of container {0} is running here: a blue-green app bakes after its switch when update_bake_secs is set"
    )]
    NoBake(String),
}

impl ResponseError for CompanionError {
    fn status_code(&self) -> StatusCode {
        use UpdateError::*;
        match self {
            CompanionError::BadRequest(_) => StatusCode::BAD_REQUEST,
            CompanionError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            CompanionError::NoBake(_) | CompanionError::PauseState(_) => StatusCode::CONFLICT,
            CompanionError::NotAnApp(_) => StatusCode::NOT_FOUND,
            CompanionError::Update(e) => match e {
                BadImage(_) | BadRequirement(_) | BadContainerName(_) => StatusCode::BAD_REQUEST,
                RegistryNotAllowed { .. } | RepositoryNotAllowed { .. } | NotEnabled { .. } => StatusCode::FORBIDDEN,
                NoSuchContainer(_) => StatusCode::NOT_FOUND,
                NotRunning { .. }
                | Busy { .. }
                | UpgradeRunning
                | OwnContainer { .. }
                | NotATag { .. }
                | AutoRemove { .. }
                | Paused { .. }
                | NotBeside { .. } => StatusCode::CONFLICT,
                BadAppLabels { .. } | BadKeyLabel { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                Resolve(e) => resolve_status(e),
                e if e.docker_unreachable() => StatusCode::SERVICE_UNAVAILABLE,
                Credentials { .. } | Docker { .. } | Failed { .. } => StatusCode::BAD_GATEWAY,
                Lock(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut body = json!({ "status": "failed", "error": self.to_string() });
        if let CompanionError::Update(e) = self {
            match e {
                UpdateError::Resolve(e) => resolve_details(e, &mut body),
                UpdateError::Busy { container } => body["container"] = json!(container),
                UpdateError::RepositoryNotAllowed {
                    container,
                    asked,
                    allowed,
                } => {
                    body["container"] = json!(container);
                    body["asked_repository"] = json!(asked);
                    body["allowed_repositories"] = json!(allowed);
                }
                UpdateError::Failed {
                    container,
                    log,
                    restored,
                    ..
                } => {
                    body["container"] = json!(container);
                    body["rolled_back"] = json!(restored.is_ok());
                    body["new_container_log"] = json!(log.lines().collect::<Vec<_>>());
                }
                _ => {}
            }
        }
        HttpResponse::build(self.status_code()).json(body)
    }
}

/// The body of `POST /update`, as autodok defines it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    /// Name or id of a running container labelled `selfup.enable=true`.
    container: String,
    /// `[registry/]repository[:tag]` from an allowed registry.
    image: String,
}

fn parse_body(body: &[u8]) -> Result<UpdateRequest, CompanionError> {
    const EXPECTED: &str = r#"expected {"container": "<name>", "image": "<repository>:<tag>"}"#;
    let bad = |e: String| CompanionError::BadRequest(format!("invalid request body: {e}; {EXPECTED}"));
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON: {e}")))?;
    if !value.is_object() {
        return Err(bad("it is not a JSON object".into()));
    }
    let request: UpdateRequest = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
    if request.container.trim().is_empty() || request.image.trim().is_empty() {
        return Err(CompanionError::BadRequest(format!(
            "container and image must not be empty; {EXPECTED}"
        )));
    }
    Ok(request)
}

/// The answer to a finished update. The update reported itself (events,
/// metrics, notification); a task that panicked did not, so it is counted
/// and its end emitted here.
fn finish(
    state: &AppState,
    container: &str,
    outcome: Result<Result<UpdateOutcome, UpdateError>, String>,
) -> Result<HttpResponse, CompanionError> {
    if let Err(e) = &outcome {
        let shared = &state.orchestrator.shared;
        shared.metrics.update_finished(crate::events::UpdateEnd::Failed);
        shared.events.emit(Event::UpdateFinished {
            container: container.to_string(),
            outcome: crate::events::UpdateEnd::Failed.into(),
            error: Some(e.clone()),
            duration_ms: 0,
        });
    }
    Ok(HttpResponse::Ok().json(outcome.map_err(CompanionError::Internal)??))
}

/// Runs an update for `req`: its events as they come and then the answer,
/// when it asked for `text/event-stream`; else one JSON answer at the end.
async fn answer<F>(
    req: &HttpRequest,
    state: &AppState,
    container: String,
    update: F,
) -> Result<HttpResponse, CompanionError>
where
    F: std::future::Future<Output = Result<UpdateOutcome, UpdateError>> + Send + 'static,
{
    if super::events::wants_events(req) {
        let update = async move { update.await.map_err(CompanionError::from) };
        return Ok(super::events::stream_update(state, container, update));
    }
    let outcome = state.spawn(update).await;
    finish(state, &container, outcome)
}

/// `POST /update`: `{"container": "foo", "image": "registry/foo:2.0"}`.
/// The whole body is read before the guard's verdict is answered, as it
/// always was: an oversized body is a 413 for anyone, and a refused caller's
/// connection stays open for its next request.
pub async fn update(
    req: HttpRequest,
    body: web::Bytes,
    caller: Result<UpdateCaller, GuardError>,
    state: web::Data<AppState>,
) -> actix_web::Result<HttpResponse> {
    let UpdateCaller(companion) = caller?;
    let request = parse_body(&body)?;
    let container = request.container.clone();
    let update = async move { companion.update(&request.container, &request.image).await };
    Ok(answer(&req, &state, container, update).await?)
}

/// `POST /update/{container}/{requirement}`: `2`, `2.1` or `=1.4.0` of the
/// container's own repository.
pub async fn update_to(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    UpdateCaller(companion): UpdateCaller,
    state: web::Data<AppState>,
) -> Result<HttpResponse, CompanionError> {
    let (container, requirement) = path.into_inner();
    let requirement = Requirement::parse(&requirement).map_err(UpdateError::from)?;
    let name = container.clone();
    let update = async move { companion.update_to(&container, requirement).await };
    answer(&req, &state, name, update).await
}

/// `POST /update/{container}/promote` and `/update/{container}/rollback`:
/// an operator's word on a blue-green app's bake. Answers 202 once the bake
/// has it; the update's own answer (and `/events`) tell how it ended.
async fn bake_verdict(
    path: web::Path<String>,
    UpdateCaller(companion): UpdateCaller,
    promote: bool,
) -> Result<HttpResponse, CompanionError> {
    let container = path.into_inner();
    if !companion.ask_bake(&container, promote) {
        return Err(CompanionError::NoBake(container));
    }
    let status = if promote { "promoting" } else { "rolling_back" };
    Ok(HttpResponse::Accepted().json(json!({ "status": status, "container": container })))
}

/// `POST /update/{container}/promote`: the app's bake ends, the successor stays.
pub async fn promote(path: web::Path<String>, caller: UpdateCaller) -> Result<HttpResponse, CompanionError> {
    bake_verdict(path, caller, true).await
}

/// `POST /update/{container}/rollback`: the app's traffic goes back to the
/// warm elder and the successor is removed.
pub async fn rollback(path: web::Path<String>, caller: UpdateCaller) -> Result<HttpResponse, CompanionError> {
    bake_verdict(path, caller, false).await
}

/// The front of blue-green app `container`, which its pause holds.
fn app_front(
    companion: &crate::companion::Companion,
    container: &str,
) -> Result<std::sync::Arc<crate::companion::blue_green::AppFront>, CompanionError> {
    companion
        .app_front(container)
        .ok_or_else(|| CompanionError::NotAnApp(container.to_string()))
}

/// `POST /update/{container}/pause`: new connections to a blue-green app
/// wait in its socket, they are not refused, until `/resume`, or until
/// `hold_secs` have passed; those already open finish.
pub async fn pause(
    path: web::Path<String>,
    UpdateCaller(companion): UpdateCaller,
) -> Result<HttpResponse, CompanionError> {
    let container = path.into_inner();
    let front = app_front(&companion, &container)?;
    let hold = front.hold();
    match front.pause().pause(hold, crate::state::now_millis()) {
        Ok(paused) => {
            tracing::info!(app = %container, hold_secs = hold.as_secs(), "app traffic paused");
            let ends = front.clone();
            let app = container.clone();
            tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                if ends.pause().end(paused) {
                    tracing::warn!(%app, "the app's pause ended by itself (hold_secs): the held connections go on");
                }
            });
            Ok(HttpResponse::Ok()
                .json(json!({ "container": container, "paused": paused, "hold_secs": hold.as_secs() })))
        }
        Err(running) => Err(CompanionError::PauseState(format!(
            "the traffic of container {container} is paused already (since {} ms after the epoch): POST /update/{container}/resume ends it",
            running.since_ms
        ))),
    }
}

/// `POST /update/{container}/resume`: the held connections go on to the app.
pub async fn resume(
    path: web::Path<String>,
    UpdateCaller(companion): UpdateCaller,
) -> Result<HttpResponse, CompanionError> {
    let container = path.into_inner();
    let front = app_front(&companion, &container)?;
    let held = front.pause().held();
    match front.pause().resume() {
        Some(paused) => {
            let paused_ms = crate::state::now_millis().saturating_sub(paused.since_ms);
            tracing::info!(app = %container, paused_ms, held, "app traffic resumed");
            Ok(HttpResponse::Ok()
                .json(json!({ "container": container, "resumed": paused, "paused_ms": paused_ms, "held": held })))
        }
        None => Err(CompanionError::PauseState(format!(
            "the traffic of container {container} is not paused"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recreate::resolve::ResolveError;

    #[test]
    fn a_body_that_is_not_the_expected_json_says_what_was_wrong() {
        for (body, expect) in [
            ("", "EOF"),
            ("{", "EOF"),
            ("[]", "not a JSON object"),
            (r#"["a", "b:1"]"#, "not a JSON object"),
            (r#"{"container": "a"}"#, "missing field `image`"),
            (r#"{"image": "a:1"}"#, "missing field `container`"),
            (r#"{"container": 1, "image": "a:1"}"#, "invalid type: integer"),
            (
                r#"{"container": "a", "image": "a:1", "force": true}"#,
                "unknown field `force`",
            ),
            (r#"{"container": " ", "image": "a:1"}"#, "must not be empty"),
        ] {
            let err = parse_body(body.as_bytes()).unwrap_err();
            assert_eq!(err.status_code(), StatusCode::BAD_REQUEST);
            let text = err.to_string();
            assert!(text.contains(expect), "{body}: {text}");
        }
        let ok = parse_body(br#"{"container": "app", "image": "localhost:5000/app:2"}"#).unwrap();
        assert_eq!(
            (ok.container.as_str(), ok.image.as_str()),
            ("app", "localhost:5000/app:2")
        );
    }

    #[test]
    fn each_cause_has_its_status() {
        let status = |e: UpdateError| CompanionError::from(e).status_code().as_u16();
        let unauthorized = crate::routes::guard::GuardError::UpdateKey;
        assert_eq!(unauthorized.status_code().as_u16(), 401);
        assert_eq!(unauthorized.to_string(), "unauthorized");
        assert_eq!(status(UpdateError::BadContainerName("a/b".into())), 400);
        assert_eq!(status(UpdateError::NotEnabled { container: "a".into() }), 403);
        assert_eq!(
            status(UpdateError::RegistryNotAllowed {
                registry: "docker.io".into(),
                allowed: vec![]
            }),
            403
        );
        assert_eq!(status(UpdateError::NoSuchContainer("a".into())), 404);
        let elsewhere = CompanionError::from(UpdateError::RepositoryNotAllowed {
            container: "app".into(),
            asked: "localhost:5000/other".into(),
            allowed: vec!["localhost:5000/app".into()],
        });
        assert_eq!(elsewhere.status_code().as_u16(), 403);
        let body = actix_web::body::to_bytes(elsewhere.error_response().into_body());
        let body = futures_util::FutureExt::now_or_never(body).unwrap().unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["asked_repository"], "localhost:5000/other");
        assert_eq!(body["allowed_repositories"], json!(["localhost:5000/app"]));
        assert!(
            body["error"].as_str().unwrap().contains("selfup.repositories"),
            "{body}"
        );
        assert_eq!(
            status(UpdateError::NotRunning {
                container: "a".into(),
                state: "exited".into()
            }),
            409
        );
        assert_eq!(status(UpdateError::Busy { container: "a".into() }), 409);
        assert_eq!(status(UpdateError::UpgradeRunning), 409);
        let unreachable = crate::docker::DockerError::Unreachable {
            socket: "s".into(),
            reason: "r".into(),
        };
        assert_eq!(
            status(UpdateError::Resolve(ResolveError::Pull {
                image: "i".into(),
                source: unreachable
            })),
            503
        );
        let refused = crate::docker::DockerError::Call {
            op: "pulling",
            target: "i".into(),
            message: "manifest unknown".into(),
        };
        assert_eq!(
            status(UpdateError::Resolve(ResolveError::Pull {
                image: "i".into(),
                source: refused
            })),
            502
        );
    }
}
