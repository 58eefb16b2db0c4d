//! The HTTP endpoints, one file per group, and what they share: the state
//! every handler gets ([`AppState`]), JSON errors and the guard in front of
//! the control endpoints.

pub mod companion;
pub mod events;
pub mod handover;
pub mod hooks;
pub mod info;
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
use crate::config::Settings;
use crate::handover::Orchestrator;
use crate::recreate::resolve::ResolveError;

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

/// Refuses what a web browser on the host can send on a page's behalf, on
/// every control endpoint: a cross-site request carries an `Origin` that is
/// not a loopback one, or `Sec-Fetch-Site: cross-site` (or `same-site`, a
/// sibling subdomain). `curl` sends neither; a page typed into the address
/// bar sends `Sec-Fetch-Site: none`, which is let through.
#[allow(clippy::result_large_err)] // the refusal is the answer itself, built once per refused request
pub fn refuse_cross_site(req: &HttpRequest) -> Result<(), HttpResponse> {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or_default().to_ascii_lowercase();
        if site == "cross-site" || site == "same-site" {
            return Err(json_error(
                StatusCode::FORBIDDEN,
                format!("control endpoints refuse requests a browser sends for another site (Sec-Fetch-Site: {site})"),
            ));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        if !is_loopback_origin(origin) {
            return Err(json_error(
                StatusCode::FORBIDDEN,
                format!("control endpoints refuse requests from a web page at {origin:?}"),
            ));
        }
    }
    Ok(())
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
}

impl Listener {
    /// Where `req`'s connection arrived; a connection the server did not
    /// mark (a test request) counts as one on the port.
    pub fn of(req: &HttpRequest) -> Listener {
        req.conn_data::<Listener>().copied().unwrap_or(Listener::Port)
    }

    /// The refusal of a control endpoint on this listener, if it is one that
    /// any local process may open.
    fn refuse_control(self) -> Option<HttpResponse> {
        let reason = match self {
            Listener::Port | Listener::Control => return None,
            Listener::Update => {
                "the update socket serves only the companion's /update; control endpoints answer on loopback and the control socket"
            }
            Listener::Live => {
                "the live socket carries public traffic only; control endpoints answer on loopback and the control socket"
            }
        };
        Some(json_error(StatusCode::FORBIDDEN, reason))
    }

    /// The refusal of the companion's `/update` on the live socket: public
    /// traffic never reaches it, whatever nginx's config says.
    pub fn refuse_update(self) -> Option<HttpResponse> {
        (self == Listener::Live).then(|| {
            json_error(
                StatusCode::FORBIDDEN,
                "the live socket carries public traffic only; /update answers on the update socket",
            )
        })
    }
}

/// Whether `req` names a proxy it came through (nginx adds
/// `X-Forwarded-For` to every public request).
pub fn proxied(req: &HttpRequest) -> bool {
    let headers = req.headers();
    ["x-forwarded-for", "x-real-ip", "forwarded"]
        .iter()
        .any(|h| headers.contains_key(*h))
}

/// The operator's endpoints (`/upgrade`, `/rollback`, `/status`,
/// `/handover`): no browser request ([`refuse_cross_site`]); a `Host` that
/// names a loopback address, so a page that rebinds its own name to
/// 127.0.0.1 is refused; a direct loopback caller (or one on the control
/// socket), never one that came through a proxy or the update socket.
/// Authentication is the caller's next step.
#[allow(clippy::result_large_err)] // the refusal is the answer itself, built once per refused request
pub fn guard_loopback(req: &HttpRequest) -> Result<(), HttpResponse> {
    refuse_cross_site(req)?;
    if let Some(refused) = Listener::of(req).refuse_control() {
        return Err(refused);
    }
    let host = req.headers().get(header::HOST).map(|h| h.to_str().unwrap_or_default());
    if !host.is_some_and(is_loopback_host) {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            format!(
                "control endpoints answer only requests addressed to localhost, 127.0.0.1 or [::1] (Host: {})",
                host.unwrap_or("missing")
            ),
        ));
    }
    if proxied(req) || !from_host(req) {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "control endpoints are only reachable from loopback (on a private network: from the host, through its gateway address)",
        ));
    }
    Ok(())
}

/// Whether `req` comes from the host itself: no peer address (the control
/// socket, whose directory only root can enter), loopback, or on a private
/// network the network's gateway, where the host's connections to a
/// published port arrive from ([`Orchestrator::is_host`]). The network's
/// other addresses, nginx's among them, are the public side.
fn from_host(req: &HttpRequest) -> bool {
    let Some(peer) = req.peer_addr() else {
        return true;
    };
    match req.app_data::<actix_web::web::Data<AppState>>() {
        Some(state) => state.orchestrator.is_host(peer.ip()),
        None => peer.ip().is_loopback(),
    }
}

/// `/handover`'s guard: the handover secret, which only the elder that
/// created this instance holds, stands in for the loopback rule, since on a
/// private network the elder calls from its own address on the network.
/// Without it, [`guard_loopback`].
#[allow(clippy::result_large_err)] // the refusal is the answer itself, built once per refused request
pub fn guard_handover(req: &HttpRequest, settings: &Settings) -> Result<(), HttpResponse> {
    if presents_handover_secret(req, settings) {
        refuse_cross_site(req)?;
        return match Listener::of(req).refuse_control() {
            Some(refused) => Err(refused),
            None => Ok(()),
        };
    }
    guard_loopback(req)
}

/// Whether `req` carries this instance's handover secret (set only on a
/// successor, by its elder).
pub fn presents_handover_secret(req: &HttpRequest, settings: &Settings) -> bool {
    settings
        .handover_token
        .as_deref()
        .is_some_and(|secret| presents(req, secret))
}

/// [`guard_loopback`], then, when a token is configured, a caller that
/// presents it.
#[allow(clippy::result_large_err)] // the refusal is the answer itself, built once per refused request
pub fn guard_control(req: &HttpRequest, settings: &Settings) -> Result<(), HttpResponse> {
    guard_loopback(req)?;
    if let Some(expected) = &settings.upgrade_token
        && !presents(req, expected)
    {
        return Err(json_error(StatusCode::UNAUTHORIZED, "a valid bearer token is required"));
    }
    Ok(())
}

/// Whether the request's bearer token is `expected` (constant time).
pub fn presents(req: &HttpRequest, expected: &str) -> bool {
    let presented = crate::secret::bearer(req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()));
    presented.is_some_and(|p| crate::secret::matches(p, expected))
}

/// `localhost`, an IPv4 loopback literal or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((inside, port)) if port.is_empty() || is_port(port) => inside,
            _ => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if is_port(port) => name,
            Some(_) => return false,
            None => host,
        },
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn is_port(s: &str) -> bool {
    s.strip_prefix(':').unwrap_or(s).parse::<u16>().is_ok()
}

/// `http(s)://` and a loopback host ([`is_loopback_host`]); `null` and
/// anything else are not.
fn is_loopback_origin(origin: &str) -> bool {
    let Some(rest) = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
    else {
        return false;
    };
    !rest.contains('/') && is_loopback_host(rest)
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

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;
    use crate::handover::Orchestrator;

    fn loopback(req: TestRequest) -> TestRequest {
        req.peer_addr("127.0.0.1:40000".parse().unwrap())
    }

    fn refused(req: TestRequest) -> Option<(u16, String)> {
        guard_loopback(&req.to_http_request()).err().map(|r| {
            let status = r.status().as_u16();
            let body = actix_web::body::to_bytes(r.into_body());
            let body = futures_util::FutureExt::now_or_never(body).unwrap().unwrap();
            (status, String::from_utf8_lossy(&body).into_owned())
        })
    }

    #[test]
    fn curl_on_loopback_passes_with_any_loopback_host() {
        for host in [
            "localhost:5800",
            "127.0.0.1:5801",
            "[::1]:5800",
            "localhost",
            "127.0.0.2",
            "LOCALHOST:1",
        ] {
            assert_eq!(
                refused(loopback(TestRequest::default().insert_header(("host", host)))),
                None,
                "{host}"
            );
        }
        // A page typed into the address bar.
        let typed = TestRequest::default()
            .insert_header(("host", "localhost:5800"))
            .insert_header(("sec-fetch-site", "none"))
            .insert_header(("origin", "http://localhost:5800"));
        assert_eq!(refused(loopback(typed)), None);
    }

    #[test]
    fn a_foreign_or_missing_host_is_refused_with_a_json_403_that_names_it() {
        for host in [
            "evil.example",
            "evil.example:5800",
            "localhost.evil.example",
            "127.0.0.1:x",
            "[::2]:5800",
            "10.0.0.1",
        ] {
            let (status, body) = refused(loopback(TestRequest::default().insert_header(("host", host)))).expect(host);
            assert_eq!(status, 403);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(v["error"].as_str().unwrap().contains(host), "{body}");
        }
        let (status, body) = refused(loopback(TestRequest::default())).unwrap();
        assert_eq!(status, 403);
        assert!(body.contains("Host: missing"), "{body}");
    }

    #[test]
    fn browser_requests_for_another_site_are_refused() {
        let with = |name: &str, value: &str| {
            loopback(
                TestRequest::default()
                    .insert_header(("host", "localhost:5800"))
                    .insert_header((name, value)),
            )
        };
        for (name, value, says) in [
            ("origin", "https://evil.example", "web page"),
            ("origin", "null", "web page"),
            ("origin", "http://localhost.evil.example:5800", "web page"),
            ("sec-fetch-site", "cross-site", "Sec-Fetch-Site: cross-site"),
            ("sec-fetch-site", "same-site", "Sec-Fetch-Site: same-site"),
        ] {
            let (status, body) = refused(with(name, value)).expect(value);
            assert_eq!(status, 403, "{name}: {value}");
            assert!(body.contains(says), "{body}");
        }
        assert_eq!(refused(with("origin", "http://127.0.0.1:3000")), None);
        assert_eq!(refused(with("sec-fetch-site", "same-origin")), None);
    }

    #[test]
    fn proxied_or_remote_callers_are_refused() {
        for header in ["x-forwarded-for", "x-real-ip", "forwarded"] {
            let req = TestRequest::default()
                .insert_header(("host", "localhost:5800"))
                .insert_header((header, "203.0.113.9"));
            assert_eq!(refused(loopback(req)).map(|(s, _)| s), Some(403), "{header}");
        }
        let remote = TestRequest::default()
            .insert_header(("host", "localhost:5800"))
            .peer_addr("203.0.113.9:40000".parse().unwrap());
        assert_eq!(refused(remote).map(|(s, _)| s), Some(403));
    }

    /// A request to an instance on a private network whose gateway is
    /// 172.20.0.1, started as a successor with the handover secret `secret`.
    fn on_a_network(peer: &str, runtime: &tokio::runtime::Runtime) -> TestRequest {
        let settings = Settings {
            handover_token: Some("s3cret-handover-token".into()),
            ..Settings::default()
        };
        let settings = Arc::new(settings);
        let engine = Arc::new(crate::docker::Engine::new(settings.docker_socket.clone()));
        let deps = crate::handover::Deps::new(settings, engine, Arc::new(crate::state::Shared::default()), None);
        let orchestrator = Orchestrator::new(deps, None, None, None);
        orchestrator
            .host_addrs
            .set(vec!["172.20.0.1".parse().unwrap()])
            .unwrap();
        let state = AppState::new(Arc::new(orchestrator), None, runtime.handle().clone());
        TestRequest::default()
            .app_data(actix_web::web::Data::new(state))
            .insert_header(("host", "localhost:5800"))
            .peer_addr(format!("{peer}:40000").parse().unwrap())
    }

    #[test]
    fn on_a_private_network_the_gateway_is_the_host_and_every_other_address_the_public_side() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        // The operator's curl to the port published on the host's 127.0.0.1.
        assert_eq!(refused(on_a_network("172.20.0.1", &runtime)), None);
        // nginx, an app, any container on the network: not local, with or without a proxy header.
        for peer in ["172.20.0.5", "172.20.0.9", "10.0.0.1"] {
            let (status, body) = refused(on_a_network(peer, &runtime)).expect(peer);
            assert_eq!(status, 403);
            assert!(body.contains("only reachable from loopback"), "{body}");
        }
        let proxied = on_a_network("172.20.0.1", &runtime).insert_header(("x-forwarded-for", "203.0.113.9"));
        assert_eq!(refused(proxied).map(|(s, _)| s), Some(403));
    }

    #[test]
    fn the_handover_secret_stands_in_for_loopback_on_handover_and_nothing_else() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let settings = Settings {
            handover_token: Some("s3cret-handover-token".into()),
            ..Settings::default()
        };
        let elder = || on_a_network("172.20.0.3", &runtime);
        let with_secret = elder().insert_header(("authorization", "Bearer s3cret-handover-token"));
        assert!(guard_handover(&with_secret.to_http_request(), &settings).is_ok());
        // The control endpoints are not opened by it.
        let with_secret = elder().insert_header(("authorization", "Bearer s3cret-handover-token"));
        assert!(guard_loopback(&with_secret.to_http_request()).is_err());
        let wrong = elder().insert_header(("authorization", "Bearer another-token-entirely"));
        assert_eq!(
            guard_handover(&wrong.to_http_request(), &settings)
                .err()
                .map(|r| r.status().as_u16()),
            Some(403)
        );
        let from_a_page = elder()
            .insert_header(("authorization", "Bearer s3cret-handover-token"))
            .insert_header(("sec-fetch-site", "cross-site"));
        assert!(guard_handover(&from_a_page.to_http_request(), &settings).is_err());
        // An instance that is no successor has no secret to present.
        let plain = Settings::default();
        let any = elder().insert_header(("authorization", "Bearer s3cret-handover-token"));
        assert!(guard_handover(&any.to_http_request(), &plain).is_err());
    }

    #[test]
    fn the_control_socket_has_no_peer_address_and_passes() {
        let req = TestRequest::default().insert_header(("host", "localhost"));
        assert_eq!(refused(req), None);
    }

    #[test]
    fn the_update_and_live_sockets_never_pass_even_without_a_proxy_header() {
        assert!(Listener::Port.refuse_control().is_none());
        assert!(Listener::Control.refuse_control().is_none());
        for (listener, names) in [(Listener::Update, "update socket"), (Listener::Live, "live socket")] {
            let refused = listener.refuse_control().unwrap();
            assert_eq!(refused.status(), 403);
            let body = actix_web::body::to_bytes(refused.into_body());
            let body = futures_util::FutureExt::now_or_never(body).unwrap().unwrap();
            assert!(String::from_utf8_lossy(&body).contains(names), "{listener:?}");
        }
        assert_eq!(Listener::Live.refuse_update().map(|r| r.status().as_u16()), Some(403));
        assert!(Listener::Update.refuse_update().is_none());
        assert!(Listener::Port.refuse_update().is_none());
    }
}
