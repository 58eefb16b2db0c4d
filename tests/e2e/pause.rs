//! `POST /pause` and `POST /resume`: the public traffic held, not refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Suite, eventually};
use crate::load::{Load, assert_none_failed, held_across};

/// `POST path` on `port`: (status, JSON body).
async fn post(env: &crate::harness::Env, port: u16, path: &str) -> (u16, Value) {
    let r = env.http.post(env.direct(port, path)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn a_five_second_pause_under_eight_keep_alive_clients_fails_none_and_the_held_requests_are_answered_within_100_ms_of_the_resume(
    suite: Arc<Suite>,
) {
    let env = suite.live_env(&[], "1.0.0").await;
    let port = env.ports[0];
    let load = Load::start(env.public(""), 8, usize::MAX, Duration::from_secs(60));
    load.wait_for_samples_after(Instant::now(), 50, Duration::from_secs(10))
        .await;

    let (status, body) = post(&env, port, "/pause").await;
    assert_eq!(status, 200, "{body}");
    let paused_at = Instant::now();
    assert!(body["paused"]["since_ms"].as_u64().is_some(), "{body}");
    assert_eq!(body["hold_secs"], 30, "{body}");
    // Every client's next request waits in selfup; /status says since when.
    let status = eventually("all eight clients held", Duration::from_secs(5), || async {
        let status = env.status(port).await;
        (status["paused"]["held"] == 8).then_some(status)
    })
    .await;
    assert_eq!(status["paused"]["since_ms"], body["paused"]["since_ms"], "{status}");
    let (again, answer) = post(&env, port, "/pause").await;
    assert_eq!(again, 409, "{answer}");
    // No upgrade while paused: the held requests are this instance's.
    let (refused, answer) = env.upgrade(port, None).await;
    assert_eq!(refused, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("paused"), "{answer}");
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(paused_at.elapsed())).await;

    let resumed_at = Instant::now();
    let (status, body) = post(&env, port, "/resume").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["held"], 8, "{body}");
    assert!(body["paused_ms"].as_u64().unwrap() >= 5000, "{body}");
    load.wait_for_samples_after(resumed_at, 50, Duration::from_secs(10))
        .await;
    let samples = load.finish().await;
    assert_none_failed(&samples, "across the pause");
    // Nothing answered during the pause (once what was running when it
    // began had finished); a request per client waited across the resume,
    // and each was answered within 100 ms of it.
    let late = held_across(&samples, paused_at, resumed_at);
    assert_eq!(late.len(), 8, "one held request per client: {late:?}");
    let slowest = late.iter().max().unwrap();
    eprintln!(
        "    8 held requests answered at most {} ms after the resume",
        slowest.as_millis()
    );
    assert!(
        *slowest <= Duration::from_millis(100),
        "answered {late:?} after the resume"
    );
    assert_eq!(env.status(port).await["paused"], Value::Null);
    let (status, answer) = post(&env, port, "/resume").await;
    assert_eq!(status, 409, "{answer}");
}

pub async fn a_pause_ends_by_itself_after_hold_secs_and_nginx_refuses_it_from_the_public_side(suite: Arc<Suite>) {
    let env = suite.live_env(&[("SELFUP_HOLD_SECS", "2")], "1.0.0").await;
    let port = env.ports[0];
    let r = env.http.post(env.public("/pause")).send().await.unwrap();
    assert_eq!(r.status(), 403, "the public side paused the traffic");
    let (status, body) = post(&env, port, "/pause").await;
    assert_eq!(status, 200, "{body}");
    // A request through nginx meanwhile waits the pause out (the client
    // gives it 10 s).
    let (r, waited) = env.get_public_held("/").await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().trim(), "selfup version 1.0.0");
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(4),
        "a request during a 2 s pause was answered after {waited:?}"
    );
    assert_eq!(env.status(port).await["paused"], Value::Null);
}
