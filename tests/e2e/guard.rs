//! The control endpoints answer the operator's `curl` and nobody else: no
//! web page in a browser on the host, by a cross-site request or by DNS
//! rebinding.

use std::sync::Arc;

use serde_json::Value;

use crate::harness::Suite;

pub async fn browser_requests_are_refused_on_every_control_endpoint_while_curl_upgrades(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    // A newer release waits, so a request that got through would upgrade.
    suite.release(&env.repository, "1.1.0");
    let before = env.selfup_containers();
    let port = env.ports[0];
    let endpoints = [
        ("GET", "/upgrade"),
        ("POST", "/upgrade"),
        ("GET", "/upgrade/1"),
        ("POST", "/upgrade/=1.1.0"),
        ("POST", "/rollback"),
        ("GET", "/status"),
        ("GET", "/handover"),
        ("POST", "/handover"),
    ];
    let browser_headers = [
        ("origin", "https://evil.example".to_string()),
        ("sec-fetch-site", "cross-site".to_string()),
        ("sec-fetch-site", "same-site".to_string()),
        // DNS rebinding: the page's own name, now resolving to 127.0.0.1.
        ("host", format!("evil.example:{port}")),
    ];
    for (method, path) in endpoints {
        for (name, value) in &browser_headers {
            let r = env
                .http
                .request(method.parse().unwrap(), env.direct(port, path))
                .header(*name, value)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{method} {path} with {name}: {value}");
            let body: Value = r.json().await.expect("a JSON body");
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
        }
    }
    env.assert_elder_unchanged(&before, "1.0.0").await;

    // The operator's plain request still works, on the same endpoints.
    let r = env.http.get(env.direct(port, "/status")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, body) = env.upgrade(port, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["to"], "1.1.0", "{body}");
}

/// What the fake registry sends for a tag list.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// A first page whose `Link` points at another port.
    LinkElsewhere(u16),
    /// A redirect to the live instance's own downgrade endpoint.
    RedirectTo(u16),
    /// 50 MB of tag list, with no length announced.
    Flood,
}

/// A registry on loopback that answers every request with `answer`.
async fn fake_registry(answer: Arc<std::sync::Mutex<Answer>>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = *answer.lock().unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = match answer {
                    Answer::LinkElsewhere(other) => {
                        let body = r#"{"name":"x","tags":["1.0.0"]}"#;
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                             Link: <http://127.0.0.1:{other}/v2/x/tags/list?last=1.0.0&n=100>; rel=\"next\"\r\n\
                             Connection: close\r\n\r\n{body}",
                            body.len()
                        );
                        conn.write_all(reply.as_bytes()).await
                    }
                    Answer::RedirectTo(port) => {
                        let reply = format!(
                            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{port}/upgrade/=0.1.0\r\n\
                             Content-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        conn.write_all(reply.as_bytes()).await
                    }
                    Answer::Flood => {
                        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
                        if conn.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let _ = conn.write_all(br#"{"name":"x","tags":["#).await;
                        let chunk = "\"1.0.0\",".repeat(8 * 1024);
                        let mut sent = 0;
                        // Bounded: 50 MB, or until the client hangs up.
                        while sent < 50_000_000 {
                            if conn.write_all(chunk.as_bytes()).await.is_err() {
                                return;
                            }
                            sent += chunk.len();
                        }
                        conn.write_all(br#""1.0.0"]}"#).await
                    }
                };
            });
        }
    });
    port
}

pub async fn a_registry_that_redirects_links_elsewhere_or_floods_gets_a_bounded_502_and_nothing_changes(
    suite: Arc<Suite>,
) {
    let answer = Arc::new(std::sync::Mutex::new(Answer::Flood));
    let registry = fake_registry(answer.clone()).await;
    let env = suite
        .live_env(&[("SELFUP_REGISTRY", &format!("127.0.0.1:{registry}"))], "1.0.0")
        .await;
    let before = env.selfup_containers();
    let port = env.ports[0];
    // Where a followed link would go: nothing may connect to it.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_port = elsewhere.local_addr().unwrap().port();

    for (case, says) in [
        (Answer::LinkElsewhere(elsewhere_port), "not followed"),
        (Answer::RedirectTo(port), "which is not followed"),
        (Answer::Flood, "larger than 1048576 bytes"),
    ] {
        *answer.lock().unwrap() = case;
        let asked = std::time::Instant::now();
        let (status, body) = env.upgrade(port, Some("1")).await;
        assert_eq!(status, 502, "{case:?}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{case:?}: {error}");
        eprintln!("    {case:?}: 502 in {} ms", asked.elapsed().as_millis());
        env.assert_elder_unchanged(&before, "1.0.0").await;
    }
    let followed = futures_util::FutureExt::now_or_never(elsewhere.accept());
    assert!(followed.is_none(), "a request reached the port the link named");
}
