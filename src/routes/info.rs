//! `/`, `/health` and `/echo`: what the public sees.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::ACCEPT;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::handover::Orchestrator;
use crate::metrics::NotJudged;
use crate::routes::AppState;
use crate::routes::guard::Direct;

fn wants_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

/// `selfup version X`, or JSON with the port when asked for.
pub async fn index(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    #[cfg(feature = "faults")]
    if let Some(fault) = crate::faults::server_error(
        super::Listener::of(&req) == super::Listener::Live,
        &state.orchestrator.settings,
    ) {
        return fault;
    }
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

/// 200 when the Docker daemon answers, 503 when it does not, as seen at
/// most a second ago (one ping a second, however many requests come). The
/// answer is marked [`NotJudged`]: a bake never counts it. A direct
/// loopback caller (the elder's health poll, the image's HEALTHCHECK, the
/// operator's curl) also gets the version, port and container, so that an
/// elder knows whom it is talking to, and Docker's error; anyone else (through
/// nginx, or from another host) gets the status only.
///
/// `GET /health?answers` from a direct caller is only this instance's
/// container id and its count of public answers and 5xx, with no call to
/// Docker: what a baking elder reads every 25 ms.
pub async fn health(req: HttpRequest, Direct(direct): Direct, state: web::Data<AppState>) -> HttpResponse {
    if req.query_string() == "answers" && direct {
        let o = &state.orchestrator;
        let (total, server_errors) = o.shared.metrics.public_answers();
        let mut answer = HttpResponse::Ok().json(json!({
            "container": o.self_id,
            "answers": { "total": total, "server_errors": server_errors },
        }));
        answer.extensions_mut().insert(NotJudged);
        return answer;
    }
    let o = state.orchestrator.clone();
    let docker = state.spawn(async move { daemon_state(&o).await }).await.and_then(|r| r);
    let proxy = match direct {
        true => Some(proxy_state(&state).await),
        false => None,
    };
    health_answer(&state.orchestrator, docker, proxy)
}

/// Whether the Docker daemon answers, as last seen: one ping a second at
/// most, however many `/health` requests come (the others wait for it, or
/// reuse it).
async fn daemon_state(o: &Orchestrator) -> Result<(), String> {
    o.shared
        .daemon
        .get_or_check(|| async {
            o.shared.metrics.docker_pinged();
            o.engine.ping(Duration::from_secs(2)).await.map_err(|e| e.to_string())
        })
        .await
}

/// Whether nginx runs. Reported, not judged: this instance is healthy with
/// nginx stopped, and an elder must be able to hand over to it.
async fn proxy_state(state: &AppState) -> String {
    let o = state.orchestrator.clone();
    state
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
        .unwrap_or_else(|e| format!("unknown: {e}"))
}

/// The answer of `/health` for a Docker ping's outcome; the detail (with the
/// proxy's state) only where `proxy` is given.
fn health_answer(o: &Orchestrator, docker: Result<(), String>, proxy: Option<String>) -> HttpResponse {
    let (status, code, docker) = match docker {
        Ok(()) => ("ok", StatusCode::OK, "reachable".to_string()),
        Err(e) => ("unavailable", StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let body = if let Some(proxy) = proxy {
        json!({
            "status": status,
            "version": o.version.to_string(),
            "port": o.settings.port,
            "container": o.self_id,
            "docker": docker,
            "proxy": proxy,
            // What an elder baking this instance judges it by.
            "answers": { "total": o.shared.metrics.public_answers().0, "server_errors": o.shared.metrics.public_answers().1 },
        })
    } else {
        json!({ "status": status })
    };
    // Not among the answers a bake judges: anyone can ask for it, and a
    // 503 is the daemon's state, not the release's.
    let mut answer = HttpResponse::build(code).json(body);
    answer.extensions_mut().insert(NotJudged);
    answer
}

/// Answers a POST with its own body and the version that answered, so that
/// a load test sees a request that was lost, answered twice, or mixed up.
pub async fn echo(req: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    #[cfg(feature = "faults")]
    if let Some(fault) = crate::faults::server_error(
        super::Listener::of(&req) == super::Listener::Live,
        &state.orchestrator.settings,
    ) {
        return fault;
    }
    #[cfg(not(feature = "faults"))]
    let _ = req;
    let o = &state.orchestrator;
    HttpResponse::Ok()
        .insert_header(("x-selfup-version", o.version.to_string()))
        .insert_header(("x-selfup-port", o.settings.port.to_string()))
        .content_type("application/octet-stream")
        .body(body)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use actix_web::test::TestRequest;
    use serde_json::Value;

    use super::*;
    use crate::config::Settings;
    use crate::docker::Engine;
    use crate::state::Shared;

    fn answer(req: TestRequest, docker: Result<(), String>) -> (u16, Value) {
        answer_on(req, Some(crate::routes::Listener::Port), docker)
    }

    /// The answer to `req` on a connection marked as arriving on `listener` (or not marked).
    fn answer_on(
        req: TestRequest,
        listener: Option<crate::routes::Listener>,
        docker: Result<(), String>,
    ) -> (u16, Value) {
        let req = req.to_http_request();
        if let Some(listener) = listener {
            crate::routes::testing::mark(&req, listener, None);
        }
        let settings = Arc::new(Settings::default());
        let engine = Arc::new(Engine::new(settings.docker_socket.clone()));
        let deps = crate::handover::Deps::new(settings, engine, Arc::new(Shared::default()), Some("c0ffee".into()));
        let o = Orchestrator::new(deps, None, None, None);
        use crate::routes::guard::{Guard, Loopback};
        let detail = Loopback::check(&req).is_ok();
        let r = health_answer(&o, docker, detail.then(|| "running".to_string()));
        let status = r.status().as_u16();
        let body = actix_web::body::to_bytes(r.into_body());
        let body = futures_util::FutureExt::now_or_never(body).unwrap().unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn a_flood_of_health_checks_pings_the_daemon_once_a_second() {
        let settings = Arc::new(Settings {
            docker_socket: "/nonexistent/docker.sock".into(),
            ..Settings::default()
        });
        let engine = Arc::new(Engine::new(settings.docker_socket.clone()));
        let deps = crate::handover::Deps::new(settings, engine, Arc::new(Shared::default()), None);
        let o = Arc::new(Orchestrator::new(deps, None, None, None));
        let asks = (0..300).map(|_| {
            let o = o.clone();
            tokio::spawn(async move { daemon_state(&o).await })
        });
        for state in futures_util::future::join_all(asks).await {
            assert!(state.unwrap().unwrap_err().contains("/nonexistent/docker.sock"));
        }
        let pings =
            |o: &Orchestrator| crate::metrics::tests::sample(&o.shared.metrics.render(), "selfup_docker_pings_total");
        assert_eq!(pings(&o), Some(1.0));
        tokio::time::sleep(crate::state::DAEMON_STATE_MAX_AGE + Duration::from_millis(50)).await;
        daemon_state(&o).await.unwrap_err();
        assert_eq!(pings(&o), Some(2.0));
    }

    #[test]
    fn health_answers_are_not_among_the_public_answers_a_bake_judges() {
        let (status, _) = answer(direct(), Err("unreachable".into()));
        assert_eq!(status, 503);
        let o = {
            let settings = Arc::new(Settings::default());
            let engine = Arc::new(Engine::new(settings.docker_socket.clone()));
            Orchestrator::new(
                crate::handover::Deps::new(settings, engine, Arc::new(Shared::default()), None),
                None,
                None,
                None,
            )
        };
        let metrics = &o.shared.metrics;
        for _ in 0..50 {
            let unavailable = health_answer(&o, Err("the Docker daemon is unreachable".into()), None);
            assert_eq!(unavailable.status(), 503);
            metrics.answered_on(true, &unavailable);
        }
        assert_eq!(metrics.public_answers(), (0, 0), "no /health answer counts");
        // Any other public answer counts, and a 5xx among the 5xx.
        metrics.answered_on(true, &HttpResponse::InternalServerError().finish());
        metrics.answered_on(true, &HttpResponse::Ok().finish());
        // Not on the live socket: not public.
        metrics.answered_on(false, &HttpResponse::InternalServerError().finish());
        assert_eq!(metrics.public_answers(), (2, 1));
    }

    fn direct() -> TestRequest {
        TestRequest::default()
            .insert_header(("host", "127.0.0.1:5801"))
            .peer_addr("127.0.0.1:40000".parse().unwrap())
    }

    #[test]
    fn a_direct_loopback_caller_gets_the_version_port_container_and_dockers_error() {
        let (status, body) = answer(direct(), Ok(()));
        assert_eq!(status, 200);
        assert_eq!(body["status"], "ok");
        assert_eq!(body["version"], crate::build_version().to_string());
        assert_eq!(body["port"], 5800);
        assert_eq!(body["container"], "c0ffee");
        assert_eq!(body["proxy"], "running");
        let (status, body) = answer(direct(), Err("the Docker daemon at /x is unreachable".into()));
        assert_eq!(status, 503);
        assert_eq!(body["docker"], "the Docker daemon at /x is unreachable");
    }

    #[test]
    fn a_connection_the_server_did_not_mark_gets_the_status_only() {
        let (status, body) = answer_on(direct(), None, Ok(()));
        assert_eq!((status, body), (200, serde_json::json!({"status": "ok"})));
    }

    #[test]
    fn a_caller_through_nginx_or_from_another_host_gets_the_status_only() {
        let proxied = |h: &str| direct().insert_header((h, "203.0.113.9"));
        let remote = TestRequest::default()
            .insert_header(("host", "example.org"))
            .peer_addr("203.0.113.9:40000".parse().unwrap());
        for req in [proxied("x-forwarded-for"), proxied("x-real-ip"), remote] {
            let (status, body) = answer(req, Ok(()));
            assert_eq!(
                (status, body.clone()),
                (200, serde_json::json!({"status": "ok"})),
                "{body}"
            );
        }
        let (status, body) = answer(
            proxied("x-forwarded-for"),
            Err("socket /run/docker.sock: refused".into()),
        );
        assert_eq!(status, 503);
        assert_eq!(body, serde_json::json!({"status": "unavailable"}));
    }
}
