//! Malformed and random input: always a JSON 4xx, never a 5xx, and the
//! service keeps serving.

use std::sync::Arc;

use serde_json::Value;

use crate::harness::Suite;

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

async fn expect_json_4xx(request: reqwest::RequestBuilder, what: &str) -> u16 {
    let r = request.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = r.status().as_u16();
    let body = r.text().await.unwrap();
    assert!((400..500).contains(&status), "{what}: {status} {body}");
    let json: Value = serde_json::from_str(&body)
        .unwrap_or_else(|_| panic!("{what}: {status} with a body that is not JSON: {body:?}"));
    assert!(json["error"].as_str().is_some_and(|e| !e.is_empty()), "{what}: {body}");
    status
}

pub async fn malformed_and_random_requests_get_a_json_4xx_and_the_service_keeps_serving(suite: Arc<Suite>) {
    let env = suite
        .live_env(&[("SELFUP_UPGRADE_TOKEN", "the-right-token")], "1.0.0")
        .await;
    let before = env.selfup_containers();
    let http = &env.http;
    let url = |p: &str| env.direct(env.ports[0], p);

    let cases: Vec<(reqwest::RequestBuilder, &str, u16)> = vec![
        (http.delete(url("/upgrade")), "DELETE /upgrade", 405),
        (http.put(url("/rollback")), "PUT /rollback", 405),
        (http.get(url("/rollback")), "GET /rollback", 405),
        (http.post(url("/status")), "POST /status", 405),
        (http.get(url("/no/such/thing")), "an unknown path", 404),
        (
            http.post(url("/echo")).body(vec![b'x'; 100 * 1024]),
            "an oversized body",
            413,
        ),
        (http.post(url("/upgrade")), "no token", 401),
        (http.post(url("/upgrade")).bearer_auth("wrong"), "a wrong token", 401),
        (
            http.post(url("/upgrade/%ZZ")).bearer_auth("the-right-token"),
            "a bad escape",
            400,
        ),
        (
            http.post(url("/upgrade/1.2.3.4")).bearer_auth("the-right-token"),
            "four numbers",
            400,
        ),
        (
            http.post(url("/upgrade/%E2%98%83")).bearer_auth("the-right-token"),
            "a snowman",
            400,
        ),
        (http.post(url("/handover")), "a go-ahead to a non-successor", 409),
        (
            http.post(url("/rollback")).bearer_auth("the-right-token"),
            "nothing to roll back to",
            409,
        ),
    ];
    for (request, what, expected) in cases {
        assert_eq!(expect_json_4xx(request, what).await, expected, "{what}");
    }

    // A few thousand random requests. Control endpoints need the token, which
    // the generator never sends: nothing random can start an upgrade.
    let mut rng = Rng(0x5e1f_0b5e_55ed_u64);
    let methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];
    let segments = [
        "upgrade",
        "rollback",
        "status",
        "handover",
        "health",
        "echo",
        "",
        "..",
        "%00",
        "%FF",
        "=1.0.0",
        "2",
        "a b",
        "\u{fffd}",
        "x".repeat(300).leak(),
    ];
    let headers = [
        "authorization",
        "content-type",
        "accept",
        "x-forwarded-for",
        "content-length-ish",
    ];
    let values = [
        "Bearer",
        "Bearer ",
        "Basic Zm9vOmJhcg==",
        "application/json",
        "*/*",
        "\u{7f}",
        "1.2.3.4",
    ];
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..3000 {
        let method = reqwest::Method::from_bytes(rng.pick(&methods).as_bytes()).unwrap();
        let depth = 1 + rng.below(3);
        let path: String = (0..depth).map(|_| format!("/{}", rng.pick(&segments))).collect();
        let mut request = http.request(method.clone(), url(&path));
        for _ in 0..rng.below(3) {
            if let Ok(v) = reqwest::header::HeaderValue::from_str(rng.pick(&values)) {
                request = request.header(rng.pick(&headers), v);
            }
        }
        if rng.below(2) == 0 {
            let len = rng.below(2048);
            request = request.body((0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>());
        }
        let r = match request.send().await {
            Ok(r) => r,
            Err(e) => panic!("request {i} {method} {path}: {e}"),
        };
        let status = r.status().as_u16();
        let what = format!("request {i} {method} {path}");
        let json_type = r
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let body = r
            .text()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
        assert!(
            (200..300).contains(&status) || (400..500).contains(&status),
            "{what} answered {status}: {body:?}"
        );
        if (400..500).contains(&status) {
            if method == reqwest::Method::HEAD {
                // A HEAD answer has no body; it names the body a GET would get.
                assert!(json_type, "{what}: {status} without a JSON content type");
            } else {
                let json: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|_| panic!("{what}: {status} with a body that is not JSON: {body:?}"));
                assert!(
                    json["error"].as_str().is_some_and(|e| !e.is_empty()),
                    "{what}: {status} without an error string: {body}"
                );
            }
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    eprintln!("    3000 random requests: {statuses:?}");
    assert_eq!(
        env.version_at(&env.public("/")).await,
        Some(("1.0.0".into(), env.ports[0]))
    );
    assert_eq!(http.get(url("/health")).send().await.unwrap().status(), 200);
    // The same container, never restarted: nothing made it fall over.
    assert_eq!(env.selfup_containers(), before);
    let restarts = crate::harness::docker(&["inspect", "-f", "{{.RestartCount}}", &before[0]]);
    assert_eq!(restarts.trim(), "0");
}
