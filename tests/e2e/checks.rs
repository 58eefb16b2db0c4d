//! What runs is what was checked: the version label against the request,
//! and the successor's identity before it gets the handover secret.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Suite, docker};

pub async fn a_tag_whose_label_does_not_satisfy_the_requirement_is_refused_and_nothing_changes(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    let before = env.selfup_containers();
    // A real selfup image labelled 3.0.0, published under the tag 2.9.0.
    let dir = env.path().join("label-3.0.0");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {}\nLABEL org.opencontainers.image.version=3.0.0\n",
            suite.image("selfup", "1.1.0")
        ),
    )
    .unwrap();
    let mislabelled = suite.image("fixtures", "label-3.0.0");
    docker(&["build", "-q", "-t", &mislabelled, dir.to_str().unwrap()]);
    suite.publish(&mislabelled, &env.repository, "2.9.0");

    let (status, body) = env.upgrade(env.ports[0], Some("2")).await;
    assert_eq!(status, 502, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("labelled version 3.0.0, which does not satisfy 2"),
        "{error}"
    );
    // Refused before any successor was created.
    assert!(body["successor_log"].is_null(), "{body}");
    env.assert_elder_unchanged(&before, "1.0.0").await;
}

pub async fn a_stray_listener_on_the_successor_port_gets_no_handover_secret(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    let [a, b] = env.ports;
    let before = env.selfup_containers();
    // Something else holds the successor's port and answers /health as a
    // healthy 1.1.0 would, without a container id.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", b)).await.unwrap();
    let heads = Arc::new(Mutex::new(Vec::<String>::new()));
    let stray = {
        let heads = heads.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 8192];
                let n = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0);
                heads
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                let body = format!("{{\"status\":\"ok\",\"version\":\"1.1.0\",\"port\":{b}}}");
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        })
    };
    suite.release(&env.repository, "1.1.0");
    let (status, body) = env.upgrade(a, None).await;
    stray.abort();
    let heads = heads.lock().unwrap().clone();
    assert!(
        heads.iter().all(|h| !h.to_ascii_lowercase().contains("authorization")),
        "the handover secret went to a stray listener: {heads:?}"
    );
    // The port is found held before any successor is created: nothing asks
    // the stray listener anything.
    assert!(heads.is_empty(), "the stray listener was asked: {heads:?}");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["port"], b, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("held by another process"),
        "{body}"
    );
    env.assert_elder_unchanged(&before, "1.0.0").await;
}
