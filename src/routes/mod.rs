//! The HTTP endpoints, one file per group, and what they share: the state
//! every handler gets ([`AppState`]), JSON errors and the listener a request
//! came in on; the guards in front of the endpoints that are not public are
//! extractors in [`guard`].

pub mod companion;
pub mod events;
pub mod guard;
pub mod handover;
pub mod hooks;
pub mod info;
pub mod pause;
pub mod status;
pub mod upgrade;

use std::future::Future;
use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::json;

use crate::companion::Companion;
use crate::handover::Orchestrator;
use crate::recreate::resolve::ResolveError;
use crate::registry::signature::SignatureError;

/// What every handler gets.
#[derive(Debug, Clone)]
pub struct AppState {
    pub orchestrator: Arc<Orchestrator>,
    /// Companion mode's updater of other containers; `None` when it is off.
    pub companion: Option<Arc<Companion>>,
    /// The main runtime: Docker and registry calls run there, not on the
    /// HTTP workers' single-threaded runtimes.
    runtime: tokio::runtime::Handle,
}

impl AppState {
    /// The state of every handler, whose calls to Docker and registries run on `runtime`.
    pub fn new(
        orchestrator: Arc<Orchestrator>,
        companion: Option<Arc<Companion>>,
        runtime: tokio::runtime::Handle,
    ) -> AppState {
        AppState {
            orchestrator,
            companion,
            runtime,
        }
    }

    /// Runs a future on the main runtime and waits for it; a panic in it
    /// becomes an error, never a dead worker.
    pub async fn spawn<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Result<T, String> {
        self.runtime
            .spawn(fut)
            .await
            .map_err(|e| format!("internal task failed: {e}"))
    }
}

/// The status of a failure on the way to an image, the same for both
/// roles: a lower version is a conflict, an unknown version or repository is
/// not found, a silent Docker daemon is unavailable, and any other failure of
/// the registry, the pull or the image is a bad gateway.
pub fn resolve_status(e: &ResolveError) -> StatusCode {
    match e {
        ResolveError::Lower { .. } => StatusCode::CONFLICT,
        ResolveError::Signature {
            source: SignatureError::Registry { .. },
            ..
        } => StatusCode::BAD_GATEWAY,
        ResolveError::Signature { .. } => StatusCode::FORBIDDEN,
        ResolveError::NoMatch { .. } => StatusCode::NOT_FOUND,
        e if e.unknown_repository() => StatusCode::NOT_FOUND,
        e if e.docker_unreachable() => StatusCode::SERVICE_UNAVAILABLE,
        ResolveError::Registry { .. }
        | ResolveError::Pull { .. }
        | ResolveError::Inspect { .. }
        | ResolveError::NoVersion { .. }
        | ResolveError::LabelMismatch { .. } => StatusCode::BAD_GATEWAY,
    }
}

/// Adds what a failure on the way to an image tells beyond its message: the
/// versions there are, when none matched.
pub fn resolve_details(e: &ResolveError, body: &mut serde_json::Value) {
    if let ResolveError::NoMatch { available, .. } = e {
        body["available"] = json!(available);
    }
}

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

/// The listener a connection arrived on, which the server records for each
/// connection as it accepts it (see `app`): the unix sockets any local
/// process may open (the live socket nginx's workers send public traffic
/// to, and companion mode's update socket) are never an operator's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// This instance's TCP port.
    Port,
    /// The control socket, in a directory only root can enter.
    Control,
    /// Companion mode's update socket: `/update` and the public endpoints.
    Update,
    /// The live socket: public traffic from nginx, the public endpoints only.
    Live,
    /// A connection the server did not mark: nothing is known of it, so
    /// every check of the listener refuses it.
    Unmarked,
}

impl Listener {
    /// Where `req`'s connection arrived; [`Listener::Unmarked`] when the
    /// server did not say.
    pub fn of(req: &HttpRequest) -> Listener {
        req.conn_data::<Listener>()
            .copied()
            .or_else(|| testing::marked(req))
            .unwrap_or(Listener::Unmarked)
    }
}

/// The two ends of a TCP connection, which the server records for each
/// connection on a port as it accepts it: what the control guard looks the
/// caller's uid up by ([`crate::peer_uid`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    /// Our address: the port the connection arrived on.
    pub local: std::net::SocketAddr,
    /// The caller's address.
    pub peer: std::net::SocketAddr,
}

impl Ends {
    /// The ends of `req`'s connection, if it is a TCP one the server marked.
    pub fn of(req: &HttpRequest) -> Option<Ends> {
        req.conn_data::<Ends>().copied().or_else(|| testing::marked(req))
    }
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

/// A request a unit test builds has no connection, so nothing marks it:
/// the test marks it by hand ([`testing::mark`]), in the request's
/// extensions, which only tests read.
#[cfg(test)]
pub mod testing {
    use actix_web::HttpMessage;

    use super::*;

    /// What a test says `req`'s connection was: `listener`, and the ends of
    /// a TCP connection.
    pub fn mark(req: &HttpRequest, listener: Listener, ends: Option<Ends>) {
        req.extensions_mut().insert(listener);
        if let Some(ends) = ends {
            req.extensions_mut().insert(ends);
        }
    }

    pub(super) fn marked<T: Copy + 'static>(req: &HttpRequest) -> Option<T> {
        req.extensions().get::<T>().copied()
    }
}

#[cfg(not(test))]
mod testing {
    use super::HttpRequest;

    /// Outside tests nothing but the server marks a connection.
    pub(super) fn marked<T>(_: &HttpRequest) -> Option<T> {
        None
    }
}
