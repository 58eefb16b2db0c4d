//! `GET /events` (Server-Sent Events of every upgrade and update, resumable
//! with `Last-Event-ID`), `/upgrade` and `/update` streamed when asked for
//! `text/event-stream`, and `GET /metrics`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use tokio::sync::mpsc;

use crate::companion::UpdateOutcome;
use crate::events::{EventLog, Record};
use crate::handover::{UpgradeError, UpgradeOutcome};
use crate::routes::AppState;
use crate::routes::guard::{Control, Scraper};
use crate::state::Shared;

/// How often a stream looks for events another instance wrote to the shared log.
const POLL: Duration = Duration::from_millis(200);
/// How often an idle stream sends a comment, so proxies and clients keep it open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Whether the client asked for Server-Sent Events.
pub fn wants_events(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// The id after which a client resumes: `Last-Event-ID`, else `?after=N`, else
/// none. An id that is not a number is refused.
fn resume_from(req: &HttpRequest) -> Result<Option<u64>, String> {
    let header = req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("?").trim().to_string());
    let query = web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()
        .and_then(|q| q.get("after").cloned());
    match header.or(query) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("Last-Event-ID must be an event id (a number), not {v:?}")),
    }
}

/// A streaming `text/event-stream` answer fed by `rx`.
fn sse(rx: mpsc::Receiver<String>) -> HttpResponse {
    let mut rx = rx;
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|m| m.map(|s| Ok::<_, actix_web::Error>(Bytes::from(s))))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body)
}

/// Sends the events after `*last` that `keep` lets through; false once the client is gone.
async fn forward(log: &EventLog, last: &mut u64, tx: &mpsc::Sender<String>, keep: impl Fn(&Record) -> bool) -> bool {
    for record in log.after(*last) {
        *last = record.id;
        if keep(&record) && tx.send(record.to_sse()).await.is_err() {
            return false;
        }
    }
    true
}

/// `GET /events`: what is kept after `Last-Event-ID` (all that is kept
/// without one: the client asked for history by not naming a place), then
/// every event as it comes, until the client leaves or this instance stops.
/// `?from=now` starts at the next event.
pub async fn events(_: Control, req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let shared = state.orchestrator.shared.clone();
    let mut last = match resume_from(&req) {
        Ok(Some(id)) => id,
        Ok(None) if req.query_string().contains("from=now") => shared.events.last_id(),
        Ok(None) => 0,
        Err(e) => return crate::routes::json_error(actix_web::http::StatusCode::BAD_REQUEST, e),
    };
    let (tx, rx) = mpsc::channel(64);
    actix_web::rt::spawn(async move {
        let mut local = shared.events.subscribe();
        let mut stop = shared.shutdown.subscribe();
        let mut idle = tokio::time::Instant::now();
        // Tells the client how soon to come back: a handover takes about a second.
        if tx.send("retry: 1000\n\n".into()).await.is_err() {
            return;
        }
        loop {
            let before = last;
            if !forward(&shared.events, &mut last, &tx, |_| true).await {
                return;
            }
            if last != before {
                idle = tokio::time::Instant::now();
            } else if idle.elapsed() >= KEEP_ALIVE {
                idle = tokio::time::Instant::now();
                if tx.send(": keep-alive\n\n".into()).await.is_err() {
                    return;
                }
            }
            if *stop.borrow() {
                // This instance drains: the client reconnects to the live one.
                return;
            }
            tokio::select! {
                _ = local.changed() => {}
                _ = stop.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    });
    sse(rx)
}

/// `/upgrade` for a client that asked for `text/event-stream`: this upgrade's
/// own events as they come (the successor's takeover among them), then the
/// answer as a last event, `result`, with its HTTP status in `http_status`.
pub fn stream_upgrade<F>(state: &AppState, upgrade: F) -> HttpResponse
where
    F: std::future::Future<Output = Result<UpgradeOutcome, UpgradeError>> + Send + 'static,
{
    let shared: Arc<Shared> = state.orchestrator.shared.clone();
    let own = Arc::new(OnceLock::new());
    let task = state.clone();
    let marked = crate::events::marking_start(own.clone(), upgrade);
    let (tx, rx) = mpsc::channel(64);
    actix_web::rt::spawn(async move {
        let mut done = std::pin::pin!(task.spawn(marked));
        let mut local = shared.events.subscribe();
        let mut last = 0;
        let mine = |r: &Record| own.get().is_some_and(|start| r.id >= *start) && r.event.is_upgrade();
        let result = loop {
            tokio::select! {
                result = &mut done => break result,
                _ = local.changed() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
            if last == 0 {
                last = own.get().map_or(0, |start| start - 1);
            }
            if last > 0 && !forward(&shared.events, &mut last, &tx, mine).await {
                // The client left; the upgrade goes on and is recorded.
                return;
            }
        };
        if let Some(start) = own.get() {
            last = last.max(start - 1);
            forward(&shared.events, &mut last, &tx, mine).await;
        }
        let _ = tx.send(result_event(result).await).await;
    });
    sse(rx)
}

/// The last event of a streamed request: its answer, `result`, with the
/// HTTP status a plain request would have got in `http_status`.
async fn result_event<T, E>(result: Result<Result<T, E>, String>) -> String
where
    T: serde::Serialize,
    E: ResponseError,
{
    let (status, mut body) = match result {
        Ok(Ok(outcome)) => (200, serde_json::to_value(outcome).unwrap_or_default()),
        Ok(Err(e)) => {
            let status = e.status_code().as_u16();
            let response = e.error_response();
            let body = actix_web::body::to_bytes(response.into_body()).await.ok();
            let body = body
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_else(|| serde_json::json!({ "error": e.to_string() }));
            (status, body)
        }
        Err(e) => (500, serde_json::json!({ "status": "failed", "error": e })),
    };
    body["http_status"] = serde_json::json!(status);
    format!("event: result\ndata: {body}\n\n")
}

/// `/update` for a client that asked for `text/event-stream`: the update's
/// own events as they come (the ones it emits, and no other's: a second
/// request for the same container is refused with events of its own), then
/// the answer as a last event, `result`, with its HTTP status in `http_status`.
pub fn stream_update<F, E>(state: &AppState, container: String, update: F) -> HttpResponse
where
    F: std::future::Future<Output = Result<UpdateOutcome, E>> + Send + 'static,
    E: ResponseError + Send + 'static,
{
    let (own_tx, mut own) = mpsc::unbounded_channel();
    let collected = crate::events::collecting(own_tx, update);
    let task = state.clone();
    let shared = state.orchestrator.shared.clone();
    let (tx, rx) = mpsc::channel(64);
    actix_web::rt::spawn(async move {
        let mut done = std::pin::pin!(task.spawn(collected));
        let mut client_gone = false;
        let result = loop {
            tokio::select! {
                result = &mut done => break result,
                Some(record) = own.recv() => {
                    // The client left: the update goes on and reports itself.
                    client_gone = client_gone || tx.send(record.to_sse()).await.is_err();
                }
            }
        };
        if let Err(e) = &result {
            // The task panicked, so the update did not report its end.
            shared.metrics.update_finished(crate::events::UpdateEnd::Failed);
            shared.events.emit(crate::events::Event::UpdateFinished {
                container,
                outcome: crate::events::UpdateEnd::Failed.into(),
                error: Some(e.clone()),
                duration_ms: 0,
            });
        }
        if client_gone {
            return;
        }
        while let Ok(record) = own.try_recv() {
            if tx.send(record.to_sse()).await.is_err() {
                return;
            }
        }
        let _ = tx.send(result_event(result).await).await;
    });
    sse(rx)
}

/// `GET /metrics`: the Prometheus text format; on loopback (or the control
/// socket), with the bearer token when one is set.
pub async fn metrics(_: Scraper, state: web::Data<AppState>) -> HttpResponse {
    let metrics = &state.orchestrator.shared.metrics;
    if let Some(apps) = state.companion.as_ref().and_then(|c| c.fronts()) {
        metrics.app_connections(apps.relaying());
    }
    HttpResponse::Ok()
        .content_type(crate::metrics::CONTENT_TYPE)
        .body(metrics.render())
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    #[test]
    fn the_resume_point_comes_from_last_event_id_or_the_query() {
        let at = |req: TestRequest| resume_from(&req.to_http_request());
        assert_eq!(at(TestRequest::default()), Ok(None));
        assert_eq!(
            at(TestRequest::default().insert_header(("last-event-id", "42"))),
            Ok(Some(42))
        );
        assert_eq!(at(TestRequest::with_uri("/events?after=7")), Ok(Some(7)));
        assert_eq!(
            at(TestRequest::with_uri("/events?after=7").insert_header(("last-event-id", "9"))),
            Ok(Some(9))
        );
        assert!(at(TestRequest::default().insert_header(("last-event-id", "x1"))).is_err());
        assert!(wants_events(
            &TestRequest::default()
                .insert_header(("accept", "text/event-stream"))
                .to_http_request()
        ));
        assert!(!wants_events(&TestRequest::default().to_http_request()));
    }
}
