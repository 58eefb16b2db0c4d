//! The guards in front of every endpoint that is not public, as extractors:
//! a handler names the access it needs in its signature
//! (`async fn promote(_: Control, ..)`) and runs only once the caller has it.
//! Each kind of access is one type; every refusal is one [`GuardError`]
//! variant, answered with its status and a JSON body a person can act on.
//!
//! | extractor | endpoints | checks, in order |
//! | --- | --- | --- |
//! | [`Loopback`] | (the base of the others) | browser, listener, `Host`, peer |
//! | [`Control`] | `/upgrade`, `/rollback`, `/promote`, `/status`, `/events` | [`Loopback`], upgrade token, else the caller's uid on a port |
//! | [`Scraper`] | `/metrics` | [`Loopback`], metrics token, else [`Control`] |
//! | [`HandoverPeer`] | (the base of the two below; `/health`'s detail) | handover secret (browser, listener) or [`Loopback`] |
//! | [`HandoverWatcher`] | `GET /handover` | [`HandoverPeer`], upgrade token or handover secret |
//! | [`Elder`] | `POST /handover` | [`HandoverPeer`], a successor, the handover secret |
//! | [`Hook`] | `POST /hooks/registry` | hook on, listener, browser, hook token |
//! | [`UpdateCaller`] | `/update...` | listener, browser, companion on, API key |

use std::sync::Arc;

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use serde_json::json;

use crate::companion::Companion;
use crate::config::Settings;
use crate::routes::{AppState, Ends, Listener};

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
    /// The registry hook asked on the live socket.
    #[error(
        "the live socket carries public traffic only; the registry hook answers on the update socket (nginx's deploy server)"
    )]
    HookOnLiveSocket,
    /// A connection the server did not mark with its listener: nothing is
    /// known of it, so nothing that checks the listener lets it through.
    #[error(
        "the listener this connection arrived on is unknown; control endpoints answer on loopback and the control socket"
    )]
    UnmarkedConnection,
    /// A caller on a port whose socket belongs to a uid that is neither root
    /// nor listed in `control_uids`, with no `upgrade_token` set.
    #[error(
        "uid {uid} may not use the control endpoints: run the command as root (sudo), have the operator list {uid} in control_uids (SELFUP_CONTROL_UIDS), or set upgrade_token and present it (Authorization: Bearer ...)"
    )]
    Uid { uid: u32 },
    /// A caller on a port whose socket is not in this instance's socket
    /// table (on a private network, the host through the gateway), or whose
    /// table could not be read, with no `upgrade_token` set.
    #[error(
        "the owner of this connection cannot be told ({reason}): on a private network, where the host's connections arrive through the gateway, set upgrade_token and present it (Authorization: Bearer ...) or use the control socket; on the host network, call from this host as root or as a uid in control_uids"
    )]
    UnknownCaller { reason: String },
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
            | HookOnLiveSocket
            | UnmarkedConnection
            | Uid { .. }
            | UnknownCaller { .. }
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
    Scraper,
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
/// caller that presents it; without one, a caller on the control socket, or
/// on a port one whose socket root or a uid of `control_uids` owns (the
/// kernel's socket table says, read for each request: [`crate::peer_uid`]).
/// A caller whose socket is not found is refused.
#[derive(Debug)]
pub struct Control;

impl Guard for Control {
    fn check(req: &HttpRequest) -> Result<Self, GuardError> {
        let settings = settings(req)?;
        Loopback::check(req)?;
        match &settings.upgrade_token {
            Some(expected) if !presents(req, expected) => Err(GuardError::Token),
            Some(_) => Ok(Control),
            None => permitted(req, settings).map(|()| Control),
        }
    }
}

/// A scraper of `/metrics`: [`Loopback`], then the metrics token, which
/// opens nothing else; or whoever [`Control`] admits.
#[derive(Debug)]
pub struct Scraper;

impl Guard for Scraper {
    fn check(req: &HttpRequest) -> Result<Self, GuardError> {
        let settings = settings(req)?;
        if let Some(token) = &settings.metrics_token
            && presents(req, token)
        {
            Loopback::check(req)?;
            return Ok(Scraper);
        }
        Control::check(req).map(|Control| Scraper)
    }
}

/// Whether the caller may control without a token: on the control socket
/// (its directory is root's), or on a port as root or a uid of
/// `control_uids`. Anything else, an unknown owner included, is refused.
fn permitted(req: &HttpRequest, settings: &Settings) -> Result<(), GuardError> {
    match Listener::of(req) {
        Listener::Control => Ok(()),
        Listener::Port => {
            let Some(ends) = Ends::of(req) else {
                return Err(GuardError::UnknownCaller {
                    reason: "the server recorded no addresses for this connection".into(),
                });
            };
            let uid = crate::peer_uid::owner(ends.peer, ends.local)
                .map_err(|e| GuardError::UnknownCaller { reason: e.to_string() })?;
            admit(uid, &settings.control_uids)
        }
        other => refuse_control(other).and(Err(GuardError::UnmarkedConnection)),
    }
}

/// Root and the listed uids control; no one else.
fn admit(uid: u32, listed: &[u32]) -> Result<(), GuardError> {
    match uid == 0 || listed.contains(&uid) {
        true => Ok(()),
        false => Err(GuardError::Uid { uid }),
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
/// (`hook_token` is set), not on the live socket (public traffic), no
/// browser request, and the hook token. It arrives through nginx's deploy
/// server at the update socket (or, on a private network, at a port), so
/// there is no loopback rule.
#[derive(Debug)]
pub struct Hook;

impl Guard for Hook {
    fn check(req: &HttpRequest) -> Result<Self, GuardError> {
        let Some(token) = &settings(req)?.hook_token else {
            return Err(GuardError::HookOff);
        };
        refuse_hook(Listener::of(req))?;
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
/// local process may open (the update and live sockets), or unknown.
fn refuse_control(listener: Listener) -> Result<(), GuardError> {
    match listener {
        Listener::Port | Listener::Control => Ok(()),
        Listener::Update => Err(GuardError::UpdateSocket),
        Listener::Live => Err(GuardError::LiveSocket),
        Listener::Unmarked => Err(GuardError::UnmarkedConnection),
    }
}

/// The refusal of the companion's `/update` on `listener`: public traffic
/// (the live socket) never reaches it, whatever nginx's config says.
fn refuse_update(listener: Listener) -> Result<(), GuardError> {
    match listener {
        Listener::Live => Err(GuardError::UpdateOnLiveSocket),
        Listener::Unmarked => Err(GuardError::UnmarkedConnection),
        Listener::Port | Listener::Control | Listener::Update => Ok(()),
    }
}

/// The refusal of the registry hook on `listener`: public traffic never
/// reaches it either.
fn refuse_hook(listener: Listener) -> Result<(), GuardError> {
    match listener {
        Listener::Live => Err(GuardError::HookOnLiveSocket),
        Listener::Unmarked => Err(GuardError::UnmarkedConnection),
        Listener::Port | Listener::Control | Listener::Update => Ok(()),
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

/// Whether `req` comes from the host itself: the control socket (no peer
/// address; its directory only root can enter), loopback, or on a private
/// network the network's gateway, where the host's connections to a
/// published port arrive from (`Orchestrator::is_host`). The network's
/// other addresses, nginx's among them, are the public side, and a
/// connection on any other listener without a peer address is no one's.
fn from_host(req: &HttpRequest) -> bool {
    let Some(peer) = req.peer_addr() else {
        return Listener::of(req) == Listener::Control;
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

    /// `req` as the server would have marked it on `listener`: a
    /// connection on a port from its peer address to 127.0.0.1:5800.
    fn arrived(req: TestRequest, listener: Listener) -> (HttpRequest, Payload) {
        let (req, payload) = req.to_http_parts();
        let ends = match listener {
            Listener::Port => req.peer_addr().map(|peer| Ends {
                local: "127.0.0.1:5800".parse().unwrap(),
                peer,
            }),
            _ => None,
        };
        crate::routes::testing::mark(&req, listener, ends);
        (req, payload)
    }

    /// The refusal of [`Loopback`] to `req` on a port, if any.
    fn refused(req: TestRequest) -> Option<(u16, String)> {
        refused_on(req, Listener::Port)
    }

    fn refused_on(req: TestRequest, listener: Listener) -> Option<(u16, String)> {
        Loopback::check(&arrived(req, listener).0).err().map(|e| answer(&e))
    }

    /// What the extractor `G` answers `req` on a port, as a handler's argument would.
    fn extract<G: FromRequest>(req: TestRequest) -> Result<G, G::Error> {
        extract_on(req, Listener::Port)
    }

    fn extract_on<G: FromRequest>(req: TestRequest, listener: Listener) -> Result<G, G::Error> {
        let (req, mut payload) = arrived(req, listener);
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
    fn the_control_socket_has_no_peer_address_and_passes_and_no_other_listener_without_one_does() {
        let req = || TestRequest::default().insert_header(("host", "localhost"));
        assert_eq!(refused_on(req(), Listener::Control), None);
        let (status, body) = refused_on(req(), Listener::Port).unwrap();
        assert_eq!(status, 403);
        assert!(body.contains("only reachable from loopback"), "{body}");
        // A connection nothing marked is refused, with a peer address or without.
        for req in [req(), loopback(req())] {
            let (status, body) = refused_on(req, Listener::Unmarked).unwrap();
            assert_eq!(status, 403);
            assert!(
                body.contains("listener this connection arrived on is unknown"),
                "{body}"
            );
        }
    }

    #[test]
    fn a_request_nothing_marked_counts_as_on_no_listener() {
        let req = loopback(TestRequest::default().insert_header(("host", "localhost"))).to_http_request();
        assert_eq!(Listener::of(&req), Listener::Unmarked);
        assert_eq!(Ends::of(&req), None);
        assert_eq!(refuse_control(Listener::Unmarked), Err(GuardError::UnmarkedConnection));
        assert_eq!(refuse_update(Listener::Unmarked), Err(GuardError::UnmarkedConnection));
        assert_eq!(refuse_hook(Listener::Unmarked), Err(GuardError::UnmarkedConnection));
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
        // The registry hook: never on the live socket either.
        assert_eq!(refuse_hook(Listener::Live), Err(GuardError::HookOnLiveSocket));
        for listener in [Listener::Update, Listener::Port, Listener::Control] {
            assert!(refuse_hook(listener).is_ok(), "{listener:?}");
        }
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
        // Without a token configured, the gateway's caller cannot be told
        // (its socket is in the host's table, not this network's): refused.
        let plain = on_a_network_with("172.20.0.1", Settings::default(), &runtime);
        assert!(matches!(
            extract::<Control>(plain).unwrap_err(),
            GuardError::UnknownCaller { .. }
        ));
        // On the control socket, no token and no uid are asked for.
        let socket = TestRequest::default()
            .app_data(state_on_a_network(Settings::default(), &runtime))
            .insert_header(("host", "localhost"));
        assert!(extract_on::<Control>(socket, Listener::Control).is_ok());
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
        assert!(extract_on::<Hook>(caller("hook-token"), Listener::Update).is_ok());
        assert_eq!(extract::<Hook>(caller("wrong")).unwrap_err(), GuardError::Token);
        // Public traffic, or a connection nothing marked, never reaches it.
        assert_eq!(
            extract_on::<Hook>(caller("hook-token"), Listener::Live).unwrap_err(),
            GuardError::HookOnLiveSocket
        );
        assert_eq!(
            extract_on::<Hook>(caller("hook-token"), Listener::Unmarked).unwrap_err(),
            GuardError::UnmarkedConnection
        );
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

    /// The uid of this test process.
    fn my_uid() -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/self").unwrap().uid()
    }

    #[test]
    fn root_and_the_listed_uids_control_and_no_one_else() {
        assert_eq!(admit(0, &[]), Ok(()));
        assert_eq!(admit(0, &[1000]), Ok(()));
        assert_eq!(admit(1000, &[1000, 65534]), Ok(()));
        assert_eq!(admit(65534, &[]), Err(GuardError::Uid { uid: 65534 }));
        assert_eq!(admit(65534, &[1000]), Err(GuardError::Uid { uid: 65534 }));
    }

    #[test]
    fn a_caller_on_a_port_is_known_by_the_owner_of_its_socket_and_an_unknown_one_is_refused() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        // A real connection on loopback: its ends are in the socket table,
        // with this process's uid.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        let ends = Ends {
            local: server.local_addr().unwrap(),
            peer,
        };
        let ask = |settings: Settings, ends: Option<Ends>| {
            let (req, mut payload) = TestRequest::default()
                .app_data(state_on_a_network(settings, &runtime))
                .insert_header(("host", "localhost:5800"))
                .peer_addr(peer)
                .to_http_parts();
            crate::routes::testing::mark(&req, Listener::Port, ends);
            futures_util::FutureExt::now_or_never(Control::from_request(&req, &mut payload)).unwrap()
        };
        let me = my_uid();
        match me {
            0 => assert!(ask(Settings::default(), Some(ends)).is_ok()),
            uid => assert_eq!(
                ask(Settings::default(), Some(ends)).unwrap_err(),
                GuardError::Uid { uid }
            ),
        }
        let listed = || Settings {
            control_uids: vec![me],
            ..Settings::default()
        };
        assert!(ask(listed(), Some(ends)).is_ok());
        // No row for these ends (nothing connects from there), or no ends at all: refused.
        let stranger = Ends {
            local: ends.local,
            peer: "127.0.0.1:1".parse().unwrap(),
        };
        let unknown = ask(listed(), Some(stranger)).unwrap_err();
        assert!(
            matches!(&unknown, GuardError::UnknownCaller { reason } if reason.contains("127.0.0.1:1")),
            "{unknown:?}"
        );
        assert!(matches!(
            ask(listed(), None).unwrap_err(),
            GuardError::UnknownCaller { .. }
        ));
        // With an upgrade token, the token decides, whoever the owner.
        let token = || Settings {
            upgrade_token: Some("the-right-token".into()),
            ..Settings::default()
        };
        assert_eq!(ask(token(), Some(stranger)).unwrap_err(), GuardError::Token);
        drop(client);
    }

    #[test]
    fn the_metrics_token_opens_metrics_and_nothing_else() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let settings = |upgrade_token: Option<&str>| Settings {
            upgrade_token: upgrade_token.map(str::to_string),
            metrics_token: Some("metrics-token-0123456789".into()),
            ..Settings::default()
        };
        // A caller whose owner is unknown (no such connection): the metrics token is enough for /metrics.
        let caller = |settings: Settings, token: Option<&str>| {
            let req = TestRequest::default()
                .app_data(state_on_a_network(settings, &runtime))
                .insert_header(("host", "localhost:5800"))
                .peer_addr("127.0.0.1:1".parse().unwrap());
            match token {
                Some(t) => req.insert_header(("authorization", format!("Bearer {t}"))),
                None => req,
            }
        };
        let metrics = Some("metrics-token-0123456789");
        assert!(extract::<Scraper>(caller(settings(None), metrics)).is_ok());
        assert!(extract::<Scraper>(caller(settings(Some("the-upgrade-token")), metrics)).is_ok());
        // The upgrade token reads metrics too; no token is the control rule's refusal.
        assert!(extract::<Scraper>(caller(settings(Some("the-upgrade-token")), Some("the-upgrade-token"))).is_ok());
        assert_eq!(
            extract::<Scraper>(caller(settings(Some("the-upgrade-token")), None)).unwrap_err(),
            GuardError::Token
        );
        assert!(matches!(
            extract::<Scraper>(caller(settings(None), None)).unwrap_err(),
            GuardError::UnknownCaller { .. }
        ));
        // The metrics token controls nothing.
        assert_eq!(
            extract::<Control>(caller(settings(Some("the-upgrade-token")), metrics)).unwrap_err(),
            GuardError::Token
        );
        assert!(matches!(
            extract::<Control>(caller(settings(None), metrics)).unwrap_err(),
            GuardError::UnknownCaller { .. }
        ));
        // And the loopback rules still apply to a scraper.
        let proxied = caller(settings(None), metrics).insert_header(("x-forwarded-for", "203.0.113.9"));
        assert_eq!(extract::<Scraper>(proxied).unwrap_err(), GuardError::NotLoopback);
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
                HookOnLiveSocket,
                403,
                r#"{"error":"the live socket carries public traffic only; the registry hook answers on the update socket (nginx's deploy server)"}"#,
            ),
            (
                UnmarkedConnection,
                403,
                r#"{"error":"the listener this connection arrived on is unknown; control endpoints answer on loopback and the control socket"}"#,
            ),
            (
                Uid { uid: 65534 },
                403,
                r#"{"error":"uid 65534 may not use the control endpoints: run the command as root (sudo), have the operator list 65534 in control_uids (SELFUP_CONTROL_UIDS), or set upgrade_token and present it (Authorization: Bearer ...)"}"#,
            ),
            (
                UnknownCaller {
                    reason: "no established socket".into(),
                },
                403,
                r#"{"error":"the owner of this connection cannot be told (no established socket): on a private network, where the host's connections arrive through the gateway, set upgrade_token and present it (Authorization: Bearer ...) or use the control socket; on the host network, call from this host as root or as a uid in control_uids"}"#,
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
