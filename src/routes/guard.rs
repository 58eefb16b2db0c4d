//! The guards in front of every endpoint that is not public, as extractors:
//! a handler names the access it needs in its signature
//! (`async fn promote(_: Control, ..)`) and runs only once the caller has it.
//! Each kind of access is one type; every refusal is one [`GuardError`]
//! variant, answered with its status and a JSON body a person can act on.
//!
//! | extractor | endpoints | checks, in order |
//! | --- | --- | --- |
//! | [`Loopback`] | (the base of the others) | browser, listener, `Host`, peer |
//! | [`Control`] | `/upgrade`, `/rollback`, `/promote`, `/status`, `/events`, `/metrics` | [`Loopback`], upgrade token |
//! | [`HandoverPeer`] | (the base of the two below; `/health`'s detail) | handover secret (browser, listener) or [`Loopback`] |
//! | [`HandoverWatcher`] | `GET /handover` | [`HandoverPeer`], upgrade token or handover secret |
//! | [`Elder`] | `POST /handover` | [`HandoverPeer`], a successor, the handover secret |
//! | [`Hook`] | `POST /hooks/registry` | hook on, browser, hook token |
//! | [`UpdateCaller`] | `/update...` | listener, browser, companion on, API key |

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use serde_json::json;

use crate::companion::Companion;
use crate::config::Settings;
use crate::routes::{AppState, Listener};

/// Why a guard refused a request: one variant per reason, each with the
/// status and the words the caller gets.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GuardError {
    /// A browser's request on behalf of a page of another site
    /// (`Sec-Fetch-Site: cross-site` or `same-site`).
    #[error("control endpoints refuse requests a browser sends for another site (Sec-Fetch-Site: {site})")]
    CrossSite { site: String },
    /// A browser's request on behalf of a page whose `Origin` is not a loopback one.
    #[error("control endpoints refuse requests from a web page at {origin:?}")]
    WebPage { origin: String },
    /// A control endpoint asked on companion mode's update socket.
    #[error(
        "the update socket serves only the companion's /update; control endpoints answer on loopback and the control socket"
    )]
    UpdateSocket,
    /// A control endpoint asked on the live socket, where public traffic arrives.
    #[error("the live socket carries public traffic only; control endpoints answer on loopback and the control socket")]
    LiveSocket,
    /// The companion's `/update` asked on the live socket.
    #[error("the live socket carries public traffic only; /update answers on the update socket")]
    UpdateOnLiveSocket,
    /// A `Host` that does not name a loopback address (a page that rebound
    /// its name to 127.0.0.1), or none.
    #[error(
        "control endpoints answer only requests addressed to localhost, 127.0.0.1 or [::1] (Host: {})",
        host.as_deref().unwrap_or("missing")
    )]
    ForeignHost { host: Option<String> },
    /// A caller that came through a proxy or from another address than the host's.
    #[error(
        "control endpoints are only reachable from loopback (on a private network: from the host, through its gateway address)"
    )]
    NotLoopback,
    /// No bearer token, or not the configured one.
    #[error("a valid bearer token is required")]
    Token,
    /// A go-ahead without this successor's handover secret.
    #[error("a valid handover token is required")]
    HandoverToken,
    /// A go-ahead to an instance no elder started, which has no secret to check.
    #[error("this instance was not started as a successor")]
    NotASuccessor,
    /// The registry hook, with no `hook_token` set.
    #[error("the registry hook is off (hook_token is unset)")]
    HookOff,
    /// An update endpoint with companion mode off: it exists only to say so.
    #[error("companion mode is off; start selfup with SELFUP_COMPANION=true to update other containers")]
    CompanionOff,
    /// An update without the companion's API key, or with the wrong one.
    /// Deliberately without detail.
    #[error("unauthorized")]
    UpdateKey,
    /// A server built without its [`AppState`]: nothing to check against, so
    /// nothing passes. Never a caller's fault.
    #[error("the server has no state to check this request against")]
    NoState,
}

impl ResponseError for GuardError {
    fn status_code(&self) -> StatusCode {
        use GuardError::*;
        match self {
            CrossSite { .. }
            | WebPage { .. }
            | UpdateSocket
            | LiveSocket
            | UpdateOnLiveSocket
            | ForeignHost { .. }
            | NotLoopback => StatusCode::FORBIDDEN,
            Token | HandoverToken | UpdateKey => StatusCode::UNAUTHORIZED,
            NotASuccessor => StatusCode::CONFLICT,
            HookOff | CompanionOff => StatusCode::NOT_FOUND,
            NoState => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// `{"error": ..}`; the update endpoints' own refusals also say
    /// `"status": "failed"`, as every other answer of theirs that is no update.
    fn error_response(&self) -> HttpResponse {
        let body = match self {
            GuardError::CompanionOff | GuardError::UpdateKey => {
                json!({ "status": "failed", "error": self.to_string() })
            }
            _ => json!({ "error": self.to_string() }),
        };
        HttpResponse::build(self.status_code()).json(body)
    }
}

/// A kind of access: how a request proves it has it. Handlers take the
/// extractor; `check` is for what only asks (tests, `/health`'s detail).
pub trait Guard: Sized {
    /// The access, or the first refusal that applies.
    fn check(req: &HttpRequest) -> Result<Self, GuardError>;
}

/// Each kind of access is an extractor that runs its [`Guard::check`].
macro_rules! extractors {
    ($($kind:ty),* $(,)?) => {$(
        impl FromRequest for $kind {
            type Error = GuardError;
            type Future = std::future::Ready<Result<Self, GuardError>>;

            fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
                std::future::ready(<$kind as Guard>::check(req))
            }
        }
    )*};
}

extractors!(
    Loopback,
    Control,
    HandoverPeer,
    HandoverWatcher,
    Elder,
    Hook,
    UpdateCaller
);

/// The state the server shares with every handler.
fn state(req: &HttpRequest) -> Result<&web::Data<AppState>, GuardError> {
    req.app_data::<web::Data<AppState>>().ok_or(GuardError::NoState)
}

fn settings(req: &HttpRequest) -> Result<&Settings, GuardError> {
    state(req).map(|s| &*s.orchestrator.settings)
}

/// A direct caller on the host: no browser request ([`refuse_cross_site`]);
/// not on a socket any local process may open ([`refuse_control`]); a `Host`
/// that names a loopback address, so a page that rebinds its own name to
/// 127.0.0.1 is refused; a direct loopback caller (or one on the control
/// socket), never one that came through a proxy. Authentication is the
/// next step of the kinds built on it.
#[derive(Debug)]
pub struct Loopback;

impl Guard for Loopback {
    fn check(req: &HttpRequest) -> Result<Self, GuardError> {
        refuse_cross_site(req)?;
        refuse_control(Listener::of(req))?;
        let host = req.headers().get(header::HOST).map(|h| h.to_str().unwrap_or_default());
        if !host.is_some_and(is_loopback_host) {
            return Err(GuardError::ForeignHost {
                host: host.map(str::to_string),
            });
        }
        if proxied(req) || !from_host(req) {
            return Err(GuardError::NotLoopback);
        }
        Ok(Loopback)
    }
}

/// The operator: [`Loopback`], then, when an upgrade token is configured, a
/// caller that presents it.
#[derive(Debug)]
pub struct Control;

impl Guard for Control {
    fn check(req: &HttpRequest) -> Result<Self, GuardError> {
        let settings = settings(req)?;
        Loopback::check(req)?;
        if let Some(expected) = &settings.upgrade_token
            && !presents(req, expected)
        {
            return Err(GuardError::Token);
        }
        Ok(Control)
    }
}

/// The elder that created this instance, or the operator on the host: the
/// handover secret, which only that elder holds, stands in for the
/// [`Loopback`] rule, since on a private network the elder calls from its
/// own address on the network. Browsers and the sockets any local process
/// may open are refused all the same.
#[derive(Debug)]
pub struct HandoverPeer;

impl Guard for HandoverPeer {
    fn check(req: &HttpRequest) -> Result<Self, GuardError> {
        if presents_handover_secret(req, settings(req)?) {
            refuse_cross_site(req)?;
            refuse_control(Listener::of(req))?;
            return Ok(HandoverPeer);
        }
        Loopback::check(req)?;
        Ok(HandoverPeer)
    }
}

/// Who may read where a takeover is (`GET /handover`): a [`HandoverPeer`]
/// that, with an upgrade token configured, presents that token or the
/// handover secret (the elder polls with it).
#[derive(Debug)]
pub struct HandoverWatcher;

impl Guard for HandoverWatcher {
    fn check(req: &HttpRequest) -> Result<Self, GuardError> {
        HandoverPeer::check(req)?;
        let settings = settings(req)?;
        if let Some(token) = &settings.upgrade_token
            && !presents(req, token)
            && !presents_handover_secret(req, settings)
        {
            return Err(GuardError::Token);
        }
        Ok(HandoverWatcher)
    }
}

/// Who may give the go-ahead (`POST /handover`): a [`HandoverPeer`] that
/// presents the handover secret, on an instance started as a successor.
#[derive(Debug)]
pub struct Elder;

impl Guard for Elder {
    fn check(req: &HttpRequest) -> Result<Self, GuardError> {
        HandoverPeer::check(req)?;
        let Some(expected) = &settings(req)?.handover_token else {
            return Err(GuardError::NotASuccessor);
        };
        if !presents(req, expected) {
            return Err(GuardError::HandoverToken);
        }
        Ok(Elder)
    }
}

/// The registry's notification (`POST /hooks/registry`): the hook is on
/// (`hook_token` is set), no browser request, and the hook token. It
/// arrives through nginx's deploy server, so there is no loopback rule.
#[derive(Debug)]
pub struct Hook;

impl Guard for Hook {
    fn check(req: &HttpRequest) -> Result<Self, GuardError> {
        let Some(token) = &settings(req)?.hook_token else {
            return Err(GuardError::HookOff);
        };
        refuse_cross_site(req)?;
        if !presents(req, token) {
            return Err(GuardError::Token);
        }
        Ok(Hook)
    }
}

/// A caller of the companion's update endpoints, and the companion it may
/// use: not on the live socket, no browser request, companion mode on, and
/// its API key. There is no loopback rule: a CI runner calls over the app's
/// network, by the companion's name, and the key is the gate.
#[derive(Debug)]
pub struct UpdateCaller(pub Arc<Companion>);

impl Guard for UpdateCaller {
    fn check(req: &HttpRequest) -> Result<Self, GuardError> {
        refuse_update(Listener::of(req))?;
        refuse_cross_site(req)?;
        let companion = state(req)?.companion.clone().ok_or(GuardError::CompanionOff)?;
        let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if !companion.admits(authorization) {
            return Err(GuardError::UpdateKey);
        }
        Ok(UpdateCaller(companion))
    }
}

/// Whether the caller of a public endpoint gets its detail (`/health`'s
/// version, port and container): a [`HandoverPeer`] (the operator's curl,
/// the elder with this successor's secret), or one on the live socket that
/// did not come through a proxy (the successor confirming that the live
/// socket reaches it; nginx adds `X-Forwarded-For` to every public request).
/// Never a refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Direct(pub bool);

impl Direct {
    fn of(req: &HttpRequest) -> Direct {
        Direct(match Listener::of(req) {
            Listener::Live => !proxied(req),
            _ => HandoverPeer::check(req).is_ok(),
        })
    }
}

impl FromRequest for Direct {
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(Ok(Direct::of(req)))
    }
}

/// Refuses what a web browser on the host can send on a page's behalf: a
/// cross-site request carries an `Origin` that is not a loopback one, or
/// `Sec-Fetch-Site: cross-site` (or `same-site`, a sibling subdomain).
/// `curl` sends neither; a page typed into the address bar sends
/// `Sec-Fetch-Site: none`, which is let through.
fn refuse_cross_site(req: &HttpRequest) -> Result<(), GuardError> {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or_default().to_ascii_lowercase();
        if site == "cross-site" || site == "same-site" {
            return Err(GuardError::CrossSite { site });
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        if !is_loopback_origin(origin) {
            return Err(GuardError::WebPage {
                origin: origin.to_string(),
            });
        }
    }
    Ok(())
}

/// The refusal of a control endpoint on `listener`, if it is one that any
/// local process may open (the update and live sockets).
fn refuse_control(listener: Listener) -> Result<(), GuardError> {
    match listener {
        Listener::Port | Listener::Control => Ok(()),
        Listener::Update => Err(GuardError::UpdateSocket),
        Listener::Live => Err(GuardError::LiveSocket),
    }
}

/// The refusal of the companion's `/update` on `listener`: public traffic
/// (the live socket) never reaches it, whatever nginx's config says.
fn refuse_update(listener: Listener) -> Result<(), GuardError> {
    match listener {
        Listener::Live => Err(GuardError::UpdateOnLiveSocket),
        _ => Ok(()),
    }
}

/// Whether `req` names a proxy it came through (nginx adds
/// `X-Forwarded-For` to every public request).
fn proxied(req: &HttpRequest) -> bool {
    let headers = req.headers();
    ["x-forwarded-for", "x-real-ip", "forwarded"]
        .iter()
        .any(|h| headers.contains_key(*h))
}

/// Whether `req` comes from the host itself: no peer address (the control
/// socket, whose directory only root can enter), loopback, or on a private
/// network the network's gateway, where the host's connections to a
/// published port arrive from (`Orchestrator::is_host`). The network's
/// other addresses, nginx's among them, are the public side.
fn from_host(req: &HttpRequest) -> bool {
    let Some(peer) = req.peer_addr() else {
        return true;
    };
    match req.app_data::<web::Data<AppState>>() {
        Some(state) => state.orchestrator.is_host(peer.ip()),
        None => peer.ip().is_loopback(),
    }
}

/// Whether `req` carries this instance's handover secret (set only on a
/// successor, by its elder).
fn presents_handover_secret(req: &HttpRequest, settings: &Settings) -> bool {
    settings
        .handover_token
        .as_deref()
        .is_some_and(|secret| presents(req, secret))
}

/// Whether the request's bearer token is `expected` (constant time).
fn presents(req: &HttpRequest, expected: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;
    use crate::handover::Orchestrator;

    fn loopback(req: TestRequest) -> TestRequest {
        req.peer_addr("127.0.0.1:40000".parse().unwrap())
    }

    /// The status and body a refusal is answered with.
    fn answer(e: &GuardError) -> (u16, String) {
        let r = e.error_response();
        let status = r.status().as_u16();
        let body = actix_web::body::to_bytes(r.into_body());
        let body = futures_util::FutureExt::now_or_never(body).unwrap().unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn refused(req: TestRequest) -> Option<(u16, String)> {
        Loopback::check(&req.to_http_request()).err().map(|e| answer(&e))
    }

    /// What the extractor `G` answers `req`, as a handler's argument would.
    fn extract<G: FromRequest>(req: TestRequest) -> Result<G, G::Error> {
        let (req, mut payload) = req.to_http_parts();
        futures_util::FutureExt::now_or_never(G::from_request(&req, &mut payload)).unwrap()
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

    /// The state of an instance on a private network whose gateway is
    /// 172.20.0.1, with `settings`.
    fn state_on_a_network(settings: Settings, runtime: &tokio::runtime::Runtime) -> web::Data<AppState> {
        let settings = Arc::new(settings);
        let engine = Arc::new(crate::docker::Engine::new(settings.docker_socket.clone()));
        let deps = crate::handover::Deps::new(settings, engine, Arc::new(crate::state::Shared::default()), None);
        let orchestrator = Orchestrator::new(deps, None, None, None);
        orchestrator
            .host_addrs
            .set(vec!["172.20.0.1".parse().unwrap()])
            .unwrap();
        web::Data::new(AppState::new(Arc::new(orchestrator), None, runtime.handle().clone()))
    }

    /// A request from `peer` to an instance on a private network whose
    /// gateway is 172.20.0.1, with `settings`.
    fn on_a_network_with(peer: &str, settings: Settings, runtime: &tokio::runtime::Runtime) -> TestRequest {
        TestRequest::default()
            .app_data(state_on_a_network(settings, runtime))
            .insert_header(("host", "localhost:5800"))
            .peer_addr(format!("{peer}:40000").parse().unwrap())
    }

    /// A request to an instance on a private network whose gateway is
    /// 172.20.0.1, started as a successor with the handover secret `secret`.
    fn on_a_network(peer: &str, runtime: &tokio::runtime::Runtime) -> TestRequest {
        let settings = Settings {
            handover_token: Some("s3cret-handover-token".into()),
            ..Settings::default()
        };
        on_a_network_with(peer, settings, runtime)
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
        let elder = || on_a_network("172.20.0.3", &runtime);
        let with_secret = elder().insert_header(("authorization", "Bearer s3cret-handover-token"));
        assert!(extract::<HandoverPeer>(with_secret).is_ok());
        // The control endpoints are not opened by it.
        let with_secret = elder().insert_header(("authorization", "Bearer s3cret-handover-token"));
        assert!(extract::<Loopback>(with_secret).is_err());
        let with_secret = elder().insert_header(("authorization", "Bearer s3cret-handover-token"));
        assert_eq!(extract::<Control>(with_secret).unwrap_err(), GuardError::NotLoopback);
        let wrong = elder().insert_header(("authorization", "Bearer another-token-entirely"));
        assert_eq!(
            extract::<HandoverPeer>(wrong).err().map(|e| e.status_code().as_u16()),
            Some(403)
        );
        let from_a_page = elder()
            .insert_header(("authorization", "Bearer s3cret-handover-token"))
            .insert_header(("sec-fetch-site", "cross-site"));
        assert!(extract::<HandoverPeer>(from_a_page).is_err());
        // An instance that is no successor has no secret to present.
        let any = on_a_network_with("172.20.0.3", Settings::default(), &runtime)
            .insert_header(("authorization", "Bearer s3cret-handover-token"));
        assert!(extract::<HandoverPeer>(any).is_err());
    }

    #[test]
    fn the_control_socket_has_no_peer_address_and_passes() {
        let req = TestRequest::default().insert_header(("host", "localhost"));
        assert_eq!(refused(req), None);
    }

    #[test]
    fn the_update_and_live_sockets_never_pass_even_without_a_proxy_header() {
        assert!(refuse_control(Listener::Port).is_ok());
        assert!(refuse_control(Listener::Control).is_ok());
        for (listener, names) in [(Listener::Update, "update socket"), (Listener::Live, "live socket")] {
            let (status, body) = answer(&refuse_control(listener).unwrap_err());
            assert_eq!(status, 403);
            assert!(body.contains(names), "{listener:?}");
        }
        assert_eq!(
            refuse_update(Listener::Live).map_err(|e| e.status_code().as_u16()),
            Err(403)
        );
        assert!(refuse_update(Listener::Update).is_ok());
        assert!(refuse_update(Listener::Port).is_ok());
    }

    #[test]
    fn the_operator_presents_the_upgrade_token_when_one_is_set() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let settings = || Settings {
            upgrade_token: Some("the-right-token".into()),
            handover_token: Some("s3cret-handover-token".into()),
            ..Settings::default()
        };
        let host = |token: Option<&str>| {
            let req = on_a_network_with("172.20.0.1", settings(), &runtime);
            match token {
                Some(t) => req.insert_header(("authorization", format!("Bearer {t}"))),
                None => req,
            }
        };
        assert!(extract::<Control>(host(Some("the-right-token"))).is_ok());
        assert_eq!(extract::<Control>(host(None)).unwrap_err(), GuardError::Token);
        assert_eq!(extract::<Control>(host(Some("wrong"))).unwrap_err(), GuardError::Token);
        // The loopback rule is checked first: a remote caller with the token is still refused.
        let remote = on_a_network_with("10.0.0.1", settings(), &runtime)
            .insert_header(("authorization", "Bearer the-right-token"));
        assert_eq!(extract::<Control>(remote).unwrap_err(), GuardError::NotLoopback);
        // Without a token configured, loopback is enough.
        let plain = on_a_network_with("172.20.0.1", Settings::default(), &runtime);
        assert!(extract::<Control>(plain).is_ok());
        // The takeover's phase: the upgrade token or the handover secret.
        assert!(extract::<HandoverWatcher>(host(Some("the-right-token"))).is_ok());
        assert!(extract::<HandoverWatcher>(host(Some("s3cret-handover-token"))).is_ok());
        assert_eq!(extract::<HandoverWatcher>(host(None)).unwrap_err(), GuardError::Token);
        // The go-ahead: the handover secret only, on a successor.
        assert!(extract::<Elder>(host(Some("s3cret-handover-token"))).is_ok());
        assert_eq!(
            extract::<Elder>(host(Some("the-right-token"))).unwrap_err(),
            GuardError::HandoverToken
        );
        let no_successor = on_a_network_with("172.20.0.1", Settings::default(), &runtime);
        assert_eq!(extract::<Elder>(no_successor).unwrap_err(), GuardError::NotASuccessor);
    }

    #[test]
    fn the_hook_and_the_update_endpoints_say_when_they_are_off_before_anything_else() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let page = |settings: Settings| {
            on_a_network_with("10.0.0.1", settings, &runtime).insert_header(("sec-fetch-site", "cross-site"))
        };
        assert_eq!(
            extract::<Hook>(page(Settings::default())).unwrap_err(),
            GuardError::HookOff
        );
        let hook = || Settings {
            hook_token: Some("hook-token".into()),
            ..Settings::default()
        };
        assert!(matches!(
            extract::<Hook>(page(hook())).unwrap_err(),
            GuardError::CrossSite { .. }
        ));
        let caller = |token: &str| {
            on_a_network_with("10.0.0.1", hook(), &runtime).insert_header(("authorization", format!("Bearer {token}")))
        };
        assert!(extract::<Hook>(caller("hook-token")).is_ok());
        assert_eq!(extract::<Hook>(caller("wrong")).unwrap_err(), GuardError::Token);
        // Companion mode off: said after the browser check, before the key.
        assert!(matches!(
            extract::<UpdateCaller>(page(Settings::default())).unwrap_err(),
            GuardError::CrossSite { .. }
        ));
        assert_eq!(
            extract::<UpdateCaller>(on_a_network_with("10.0.0.1", Settings::default(), &runtime)).unwrap_err(),
            GuardError::CompanionOff
        );
    }

    #[test]
    fn without_the_servers_state_nothing_that_needs_settings_passes() {
        let req = || loopback(TestRequest::default().insert_header(("host", "localhost")));
        assert!(extract::<Loopback>(req()).is_ok());
        assert_eq!(extract::<Control>(req()).unwrap_err(), GuardError::NoState);
        assert_eq!(extract::<Hook>(req()).unwrap_err(), GuardError::NoState);
        assert_eq!(extract::<UpdateCaller>(req()).unwrap_err(), GuardError::NoState);
        assert_eq!(extract::<Direct>(req()).unwrap(), Direct(false));
    }

    #[test]
    fn each_refusal_has_its_status_and_body() {
        use GuardError::*;
        let cases = [
            (
                CrossSite {
                    site: "cross-site".into(),
                },
                403,
                r#"{"error":"control endpoints refuse requests a browser sends for another site (Sec-Fetch-Site: cross-site)"}"#,
            ),
            (
                WebPage {
                    origin: "https://evil.example".into(),
                },
                403,
                r#"{"error":"control endpoints refuse requests from a web page at \"https://evil.example\""}"#,
            ),
            (
                UpdateSocket,
                403,
                r#"{"error":"the update socket serves only the companion's /update; control endpoints answer on loopback and the control socket"}"#,
            ),
            (
                LiveSocket,
                403,
                r#"{"error":"the live socket carries public traffic only; control endpoints answer on loopback and the control socket"}"#,
            ),
            (
                UpdateOnLiveSocket,
                403,
                r#"{"error":"the live socket carries public traffic only; /update answers on the update socket"}"#,
            ),
            (
                ForeignHost {
                    host: Some("evil.example:5800".into()),
                },
                403,
                r#"{"error":"control endpoints answer only requests addressed to localhost, 127.0.0.1 or [::1] (Host: evil.example:5800)"}"#,
            ),
            (
                ForeignHost { host: None },
                403,
                r#"{"error":"control endpoints answer only requests addressed to localhost, 127.0.0.1 or [::1] (Host: missing)"}"#,
            ),
            (
                NotLoopback,
                403,
                r#"{"error":"control endpoints are only reachable from loopback (on a private network: from the host, through its gateway address)"}"#,
            ),
            (Token, 401, r#"{"error":"a valid bearer token is required"}"#),
            (HandoverToken, 401, r#"{"error":"a valid handover token is required"}"#),
            (
                NotASuccessor,
                409,
                r#"{"error":"this instance was not started as a successor"}"#,
            ),
            (
                HookOff,
                404,
                r#"{"error":"the registry hook is off (hook_token is unset)"}"#,
            ),
            (
                CompanionOff,
                404,
                r#"{"error":"companion mode is off; start selfup with SELFUP_COMPANION=true to update other containers","status":"failed"}"#,
            ),
            (UpdateKey, 401, r#"{"error":"unauthorized","status":"failed"}"#),
            (
                NoState,
                500,
                r#"{"error":"the server has no state to check this request against"}"#,
            ),
        ];
        for (error, status, body) in cases {
            assert_eq!(error.status_code().as_u16(), status, "{error:?}");
            let (answered, text) = answer(&error);
            assert_eq!((answered, text.as_str()), (status, body), "{error:?}");
            assert_eq!(
                error.error_response().headers().get(header::CONTENT_TYPE).unwrap(),
                "application/json"
            );
        }
    }
}
