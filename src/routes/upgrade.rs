//! `/upgrade` and `/upgrade/{requirement}`: the elder's side of the handover.

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use serde_json::json;

use crate::handover::plan::PlannedDecision;
use crate::handover::{Target, UpgradeError};
use crate::routes::guard::Control;
use crate::routes::{AppState, json_error, resolve_details, resolve_status};
use crate::state::{BakeVerdict, TakeoverPhase, TakeoverStep};
use crate::version::Requirement;

impl ResponseError for UpgradeError {
    fn status_code(&self) -> StatusCode {
        use UpgradeError::*;
        match self {
            BadRequirement(_) => StatusCode::BAD_REQUEST,
            InProgress(_)
            | Baking { .. }
            | CompanionBusy { .. }
            | TakeoverUnderway(_)
            | HandedOver
            | NotInContainer
            | NoPrevious
            | PortTaken { .. } => StatusCode::CONFLICT,
            PreviousImageGone { .. } => StatusCode::NOT_FOUND,
            Resolve(e) => resolve_status(e),
            Docker { source, .. } if source.is_unreachable() => StatusCode::SERVICE_UNAVAILABLE,
            Docker { .. } | SuccessorUnhealthy { .. } | TakeoverFailed { .. } => StatusCode::BAD_GATEWAY,
            StoppedBeforeConfirmation { .. } => StatusCode::SERVICE_UNAVAILABLE,
            RolledBackDuringBake { by_operator: true, .. } | RolledBackBefore { .. } => StatusCode::CONFLICT,
            RolledBackDuringBake { .. } => StatusCode::BAD_GATEWAY,
            Credentials { .. } | Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            SwarmRolledBack { .. } | SwarmPaused { .. } => StatusCode::BAD_GATEWAY,
            SwarmNotDone { .. } => StatusCode::GATEWAY_TIMEOUT,
            SwarmBusy { .. } | SwarmNothingToRollBackTo => StatusCode::CONFLICT,
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
            Resolve(e) => resolve_details(e, &mut body),
            CompanionBusy { containers, .. } => body["companion_updates"] = json!(containers),
            SuccessorUnhealthy { log, port, .. } | TakeoverFailed { log, port, .. } => {
                body["successor_port"] = json!(port);
                body["successor_log"] = json!(log.lines().collect::<Vec<_>>());
                body["live"] = json!("the elder keeps serving");
            }
            RolledBackDuringBake { report, log, .. } => {
                body["status"] = json!("rolled_back");
                body["bake"] = json!(report);
                body["successor_log"] = json!(log.lines().collect::<Vec<_>>());
                body["live"] = json!("the elder serves again");
            }
            RolledBackBefore { version, .. } => body["rolled_back_version"] = json!(version),
            SwarmRolledBack { reason, tasks } => {
                body["status"] = json!("rollback_completed");
                body["reason"] = json!(reason);
                body["tasks"] = json!(tasks);
            }
            SwarmPaused { state, reason, tasks } => {
                body["status"] = json!(state);
                body["reason"] = json!(reason);
                body["tasks"] = json!(tasks);
            }
            Baking { to, left_secs } => body["bake"] = json!({ "to": to, "left_secs": left_secs }),
            PortTaken { port, bind, .. } => {
                body["port"] = json!(port);
                body["bind"] = json!(bind.to_string());
                body["live"] = json!("this instance keeps serving; no successor was created");
            }
            _ => {}
        }
        HttpResponse::build(self.status_code()).json(body)
    }
}

/// `GET|POST /upgrade`: to whatever `:latest` is.
pub async fn latest(
    control: Control,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, UpgradeError> {
    run(control, req, state, Target::Registry(Requirement::Latest)).await
}

/// `POST /rollback`: to the version that ran before the last upgrade.
/// During a bake it is the instant path: the elder, still warm, takes the
/// traffic back; nothing is pulled or started.
pub async fn rollback(
    control: Control,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, UpgradeError> {
    if let Some(answer) = bake_word(&state, BakeVerdict::Rollback).await {
        return Ok(answer);
    }
    run(control, req, state, Target::Previous).await
}

/// `POST /promote`: ends the running bake now; the successor stays.
pub async fn promote(_: Control, state: web::Data<AppState>) -> HttpResponse {
    match bake_word(&state, BakeVerdict::Promote).await {
        Some(answer) => answer,
        None => json_error(StatusCode::CONFLICT, "no bake is running on this instance"),
    }
}

/// Passes an operator's word to the bake running here, if one runs, and
/// answers with how it ended. A successor being baked points to its elder.
async fn bake_word(state: &AppState, verdict: BakeVerdict) -> Option<HttpResponse> {
    let o = state.orchestrator.clone();
    let baked_by_elder = matches!(
        o.shared.status().takeover,
        TakeoverPhase::Running {
            step: TakeoverStep::Baking
        }
    );
    if baked_by_elder {
        let elder = o.settings.other_port(o.settings.port);
        return Some(json_error(
            StatusCode::CONFLICT,
            format!(
                "this instance is being baked by its elder on port {elder}: ask it there, or on the control socket, which the elder holds until the bake ends"
            ),
        ));
    }
    let report = state.spawn(async move { o.ask_bake(verdict).await }).await.ok()??;
    let status = match (verdict, report.rolled_back()) {
        (BakeVerdict::Promote, false) | (BakeVerdict::Rollback, true) => StatusCode::OK,
        // The bake ended the other way just before the word arrived.
        _ => StatusCode::CONFLICT,
    };
    Some(HttpResponse::build(status).json(json!({ "status": report.outcome, "bake": report })))
}

/// `GET|POST /upgrade/{requirement}`: `2`, `2.1` or `=1.4.0`.
/// The guard comes second: a malformed requirement is a 400 before any
/// refusal, as it always was.
pub async fn matching(
    Wanted(requirement): Wanted,
    control: Control,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, UpgradeError> {
    run(control, req, state, Target::Registry(requirement)).await
}

/// The requirement of `/upgrade/{requirement}`, parsed.
pub struct Wanted(Requirement);

impl FromRequest for Wanted {
    type Error = actix_web::Error;
    type Future = std::future::Ready<Result<Self, actix_web::Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let path = web::Path::<String>::from_request(req, payload).into_inner();
        std::future::ready(path.and_then(|path| {
            Requirement::parse(&path.into_inner())
                .map(Wanted)
                .map_err(|e| UpgradeError::from(e).into())
        }))
    }
}

/// An upgrade to `target`, for the operator (`Control`).
async fn run(
    _: Control,
    req: HttpRequest,
    state: web::Data<AppState>,
    target: Target,
) -> Result<HttpResponse, UpgradeError> {
    match dry_run(req.query_string()) {
        Ok(false) => {}
        Ok(true) => return Ok(plan(&state, target).await),
        Err(e) => return Ok(json_error(StatusCode::BAD_REQUEST, e)),
    }
    // A paused instance keeps its requests waiting for itself: no successor
    // takes them over meanwhile.
    if let Some(paused) = state.orchestrator.shared.pause.current() {
        return Ok(json_error(
            StatusCode::CONFLICT,
            format!(
                "the public traffic is paused (since {} ms after the epoch): POST /resume first",
                paused.since_ms
            ),
        ));
    }
    // Nor while an app's traffic is paused: a new instance would not hold it.
    if let Some((app, _, _)) = state
        .companion
        .as_ref()
        .and_then(|c| c.paused_apps().into_iter().next())
    {
        return Ok(json_error(
            StatusCode::CONFLICT,
            format!("the traffic of app {app} is paused: POST /update/{app}/resume first"),
        ));
    }
    let o = state.orchestrator.clone();
    if super::events::wants_events(&req) {
        return Ok(super::events::stream_upgrade(
            &state,
            async move { o.upgrade(target).await },
        ));
    }
    let outcome = state
        .spawn(async move { o.upgrade(target).await })
        .await
        .map_err(UpgradeError::Internal)??;
    Ok(HttpResponse::Ok().json(outcome))
}

/// Whether the query asks for a dry run: `dry_run=true` (or `1`); any other
/// value of `dry_run` is refused rather than taken for a real upgrade.
fn dry_run(query: &str) -> Result<bool, String> {
    let mut asked = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, "true"));
        if key != "dry_run" {
            continue;
        }
        asked = match value {
            "true" | "1" => true,
            "false" | "0" => false,
            other => {
                let shown: String = other.chars().take(40).collect();
                return Err(format!("dry_run must be true or false, not {shown:?}"));
            }
        };
    }
    Ok(asked)
}

/// The dry run's answer: what an upgrade to `target` would do; nothing is
/// pulled, started or locked.
async fn plan(state: &AppState, target: Target) -> HttpResponse {
    let o = state.orchestrator.clone();
    let plan = match state.spawn(async move { o.plan(&target).await }).await {
        Ok(plan) => plan,
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e),
    };
    let mut body = json!({
        "dry_run": true,
        "requirement": plan.requirement,
        "running": state.orchestrator.version.to_string(),
        "decision": plan.decision.name(),
        "image": plan.image,
        "version": plan.version.as_ref().map(ToString::to_string),
        "digest": plan.digest,
        "created": plan.created,
        "ports": { "live": plan.ports.0, "successor": plan.ports.1 },
    });
    if let PlannedDecision::Refused(e) = &plan.decision {
        body["reason"] = json!(e.to_string());
        body["would_answer"] = json!(e.status_code().as_u16());
        if let UpgradeError::Resolve(e) = e {
            resolve_details(e, &mut body);
        }
    }
    HttpResponse::Ok().json(body)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::docker::DockerError;
    use crate::recreate::resolve::ResolveError;
    use crate::recreate::watch::WaitError;
    use crate::registry::RegistryError;
    use crate::state::{TakeoverPhase, UpgradeStep};
    use crate::version::RequirementError;

    fn unreachable() -> DockerError {
        DockerError::Unreachable {
            socket: "s".into(),
            reason: "r".into(),
        }
    }

    fn refused() -> DockerError {
        DockerError::Call {
            op: "pulling",
            target: "i".into(),
            message: "manifest unknown".into(),
        }
    }

    #[test]
    fn each_cause_has_its_status() {
        let status = |e: UpgradeError| e.status_code().as_u16();
        let v = |s: &str| semver::Version::parse(s).unwrap();
        assert_eq!(status(UpgradeError::BadRequirement(RequirementError("x".into()))), 400);
        let running = crate::state::InProgress {
            requirement: "latest".into(),
            step: UpgradeStep::Pulling,
            started: std::time::Instant::now(),
        };
        assert_eq!(status(UpgradeError::InProgress(running)), 409);
        assert_eq!(status(UpgradeError::TakeoverUnderway(TakeoverPhase::WaitingForGo)), 409);
        assert_eq!(status(UpgradeError::HandedOver), 409);
        assert_eq!(status(UpgradeError::NotInContainer), 409);
        assert_eq!(status(UpgradeError::NoPrevious), 409);
        let lower = ResolveError::Lower {
            running: v("1.1.0"),
            target: v("1.0.0"),
        };
        assert_eq!(status(lower.into()), 409);
        let gone = UpgradeError::PreviousImageGone {
            version: "1.0.0".into(),
            image: "sha256:1".into(),
        };
        assert_eq!(status(gone), 404);
        let no_match = ResolveError::NoMatch {
            requirement: "4".into(),
            repository: "r/selfup".into(),
            available: vec!["1.0.0".into()],
        };
        assert_eq!(status(no_match.into()), 404);
        let unknown = ResolveError::Registry {
            requirement: "2".into(),
            repository: "r/selfup".into(),
            source: RegistryError::UnknownRepository {
                registry: "r".into(),
                repository: "selfup".into(),
            },
        };
        assert_eq!(status(unknown.into()), 404);
        let pull = |source| {
            UpgradeError::from(ResolveError::Pull {
                image: "i".into(),
                source,
            })
        };
        assert_eq!(status(pull(unreachable())), 503);
        assert_eq!(status(pull(refused())), 502);
        // An image not signed with the operator's key is refused; a registry
        // that cannot say is the registry's fault.
        use crate::registry::signature::SignatureError;
        let signature = |source| {
            UpgradeError::from(ResolveError::Signature {
                image: "i".into(),
                source,
            })
        };
        let unsigned = SignatureError::Unsigned {
            digest: "sha256:x".into(),
            tag: "sha256-x.sig".into(),
        };
        assert_eq!(status(signature(unsigned)), 403);
        let unreadable = SignatureError::Registry {
            digest: "sha256:x".into(),
            source: RegistryError::Status {
                url: "u".into(),
                status: 500,
            },
        };
        assert_eq!(status(signature(unreadable)), 502);
        assert_eq!(status(UpgradeError::docker("inspecting")(unreachable())), 503);
        assert_eq!(status(UpgradeError::docker("inspecting")(refused())), 502);
        let no_label = ResolveError::NoVersion {
            image: "i".into(),
            found: None,
        };
        assert_eq!(status(no_label.into()), 502);
        let unhealthy = UpgradeError::SuccessorUnhealthy {
            port: 5801,
            reason: WaitError::Expired {
                what: "no healthy answer",
                waited: Duration::from_secs(30),
                last: None,
            },
            log: String::new(),
        };
        assert_eq!(status(unhealthy), 502);
        let failed = UpgradeError::TakeoverFailed {
            port: 5801,
            reason: WaitError::Died("it exited with code 3".into()),
            log: String::new(),
        };
        assert_eq!(status(failed), 502);
        let stopped = UpgradeError::StoppedBeforeConfirmation {
            port: 5801,
            phase: "WaitingForGo".into(),
        };
        assert_eq!(status(stopped), 503);
        let unreadable = UpgradeError::Credentials {
            registry: "r".into(),
            source: crate::registry::credentials::CredentialsError::Read {
                path: "/root/.docker/config.json".into(),
                reason: "permission denied".into(),
            },
        };
        assert_eq!(status(unreadable), 500);
        assert_eq!(status(UpgradeError::Internal("x".into())), 500);
        let rolled_back = UpgradeError::SwarmRolledBack {
            reason: "update rolled back due to failure".into(),
            tasks: vec![],
        };
        assert_eq!(status(rolled_back), 502);
        let not_done = UpgradeError::SwarmNotDone {
            waited_secs: 600,
            last: "updating".into(),
        };
        assert_eq!(status(not_done), 504);
    }

    #[actix_web::test]
    async fn a_swarm_rollback_answers_rollback_completed_with_swarm_reason_and_the_tasks() {
        let task = crate::recreate::upgrade::TaskVersion {
            task: "abc".into(),
            slot: Some(1),
            node: "n".into(),
            state: "running".into(),
            image: "r/selfup@sha256:1".into(),
            version: Some("1.1.0".into()),
        };
        let e = UpgradeError::SwarmRolledBack {
            reason: "update rolled back due to failure or early termination of task x".into(),
            tasks: vec![task],
        };
        let body = actix_web::body::to_bytes(e.error_response().into_body()).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["status"], "rollback_completed");
        assert!(body["reason"].as_str().unwrap().contains("early termination"), "{body}");
        assert_eq!(body["tasks"][0]["version"], "1.1.0");
    }

    #[test]
    fn a_dry_run_is_asked_for_by_the_query_and_a_bad_value_is_refused() {
        assert_eq!(dry_run(""), Ok(false));
        assert_eq!(dry_run("dry_run=true"), Ok(true));
        assert_eq!(dry_run("x=1&dry_run=1"), Ok(true));
        assert_eq!(dry_run("dry_run"), Ok(true));
        assert_eq!(dry_run("dry_run=false"), Ok(false));
        assert_eq!(dry_run("dry_run_not=true"), Ok(false));
        let refused = dry_run("dry_run=yes").unwrap_err();
        assert!(refused.contains("true or false"), "{refused}");
    }

    #[test]
    fn a_failed_successor_answer_carries_its_port_and_log() {
        let e = UpgradeError::SuccessorUnhealthy {
            port: 5801,
            reason: WaitError::Died("it exited with code 3".into()),
            log: "one\ntwo".into(),
        };
        let response = e.error_response();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            e.to_string(),
            "the successor on port 5801 did not become healthy: it exited with code 3"
        );
    }

    #[actix_web::test]
    async fn a_successor_port_held_by_another_process_is_a_409_that_names_the_port() {
        let held = UpgradeError::PortTaken {
            port: 5801,
            bind: std::net::IpAddr::from([127, 0, 0, 1]),
            reason: "Address already in use (os error 98)".into(),
        };
        assert_eq!(held.status_code(), StatusCode::CONFLICT);
        let body = actix_web::body::to_bytes(held.error_response().into_body())
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["port"], 5801);
        assert_eq!(body["bind"], "127.0.0.1");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("port 5801 on 127.0.0.1") && error.contains("held by another process"),
            "{error}"
        );
    }

    #[actix_web::test]
    async fn an_upgrade_refused_for_running_companion_updates_is_a_409_that_names_them() {
        let refused = UpgradeError::CompanionBusy {
            containers: vec!["app".into(), "db".into()],
            waited_secs: 60,
        };
        assert_eq!(refused.status_code(), StatusCode::CONFLICT);
        let body = actix_web::body::to_bytes(refused.error_response().into_body())
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["companion_updates"], json!(["app", "db"]));
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("companion updates of app, db still ran after 60s"),
            "{error}"
        );
    }
}
