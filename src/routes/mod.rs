//! The HTTP endpoints, one file per group, and what they share: JSON errors
//! and the guard in front of the control endpoints.

pub mod companion;
pub mod handover;
pub mod info;
pub mod status;
pub mod upgrade;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::json;

use crate::config::Settings;

/// A JSON error body a person can act on.
pub fn json_error(status: StatusCode, message: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": message.to_string() }))
}

/// Rewrites actix's own plain-text error answers (unknown route, wrong
/// method, oversized or malformed body) as JSON, keeping the status.
pub fn json_error_body<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.to_str().unwrap_or_default().starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let message = match res.response().error() {
        Some(e) => e.to_string(),
        None => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let (req, mut response) = res.into_parts();
    let body = json!({ "error": message }).to_string();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let response = response.set_body(BoxBody::new(body));
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, response).map_into_right_body(),
    ))
}

/// Control endpoints answer only direct loopback callers (never a request
/// that came through the proxy), and, when a token is configured, only a
/// caller that presents it.
pub fn guard_control(req: &HttpRequest, settings: &Settings) -> Result<(), HttpResponse> {
    let proxied = req.headers().contains_key("x-forwarded-for") || req.headers().contains_key("x-real-ip");
    let loopback = req.peer_addr().is_some_and(|a| a.ip().is_loopback());
    if proxied || !loopback {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "control endpoints are only reachable from loopback",
        ));
    }
    if let Some(expected) = &settings.upgrade_token {
        let presented = crate::secret::bearer(req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()));
        if !presented.is_some_and(|p| crate::secret::matches(p, expected)) {
            return Err(json_error(StatusCode::UNAUTHORIZED, "a valid bearer token is required"));
        }
    }
    Ok(())
}

/// The answer to a method a resource does not have.
pub async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.path()),
    )
}

/// The answer to a path no route has.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    json_error(StatusCode::NOT_FOUND, format!("no endpoint at {}", req.path()))
}
