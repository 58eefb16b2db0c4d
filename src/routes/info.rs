//! `/`, `/health` and `/echo`: what the public sees.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::ACCEPT;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::app::AppState;

fn wants_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

/// `selfup version X`, or JSON with the port when asked for.
pub async fn index(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let o = &state.orchestrator;
    if wants_json(&req) {
        HttpResponse::Ok()
            .json(json!({ "service": "selfup", "version": o.version.to_string(), "port": o.settings.port }))
    } else {
        HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(format!("selfup version {}\n", o.version))
    }
}

/// 200 when the Docker daemon answers, 503 when it does not; names the
/// version and the container so that an elder knows whom it is talking to.
pub async fn health(state: web::Data<AppState>) -> HttpResponse {
    let o = state.orchestrator.clone();
    let docker = state
        .spawn(async move { o.engine.ping(Duration::from_secs(2)).await })
        .await;
    // The proxy's state is reported, not judged: this instance is healthy
    // with nginx stopped, and an elder must be able to hand over to it.
    let o = state.orchestrator.clone();
    let proxy = state
        .spawn(async move {
            let Some(proxy) = &o.proxy else {
                return "none".to_string();
            };
            match tokio::time::timeout(Duration::from_secs(2), proxy.check_running()).await {
                Ok(Ok(())) => "running".to_string(),
                Ok(Err(e)) => format!("down: {e}"),
                Err(_) => "unknown: the Docker daemon did not answer within 2s".to_string(),
            }
        })
        .await
        .unwrap_or_else(|e| format!("unknown: {e}"));
    let o = &state.orchestrator;
    let body = |status: &str, docker: String| {
        json!({
            "status": status,
            "version": o.version.to_string(),
            "port": o.settings.port,
            "container": o.self_id,
            "docker": docker,
            "proxy": proxy,
        })
    };
    match docker {
        Ok(Ok(())) => HttpResponse::Ok().json(body("ok", "reachable".into())),
        Ok(Err(e)) => HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE).json(body("unavailable", e.to_string())),
        Err(e) => HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE).json(body("unavailable", e)),
    }
}

/// Answers a POST with its own body and the version that answered, so that
/// a load test sees a request that was lost, answered twice, or mixed up.
pub async fn echo(body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let o = &state.orchestrator;
    HttpResponse::Ok()
        .insert_header(("x-selfup-version", o.version.to_string()))
        .insert_header(("x-selfup-port", o.settings.port.to_string()))
        .content_type("application/octet-stream")
        .body(body)
}
