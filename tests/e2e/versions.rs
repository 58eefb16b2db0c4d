//! Choosing versions by semver requirement, rolling back, and `/status`.

use std::sync::Arc;

use serde_json::Value;

use crate::harness::Suite;

pub async fn a_requirement_picks_the_highest_matching_version_and_going_lower_needs_an_exact_one(suite: Arc<Suite>) {
    let env = suite.env(&[]);
    for v in ["1.1.0", "1.2.0", "1.0.0"] {
        suite.release(&env.repository, v);
    }
    env.up("1.0.0").await;
    let [a, b] = env.ports;

    let (status, body) = env.upgrade(a, Some("1.1")).await;
    assert_eq!((status, body["to"].as_str()), (200, Some("1.1.0")), "{body}");
    env.wait_takeover_done(b).await;

    let (status, body) = env.upgrade(b, Some("4")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["available"], serde_json::json!(["1.2.0", "1.1.0", "1.0.0"]));

    // A pre-release is accepted when named exactly: a 404 for a tag the registry lacks, not a 400.
    let (status, body) = env.upgrade(b, Some("=1.3.0-rc.1")).await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("=1.3.0-rc.1"), "{body}");

    let (status, body) = env.upgrade(b, Some("1.0")).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("=1.0.0"), "{body}");

    for bad in ["1.2.3", "^1", "x", "1.x", "=1.0", "=1.2.0+b1", "1.3-rc.1"] {
        let (status, body) = env.upgrade(b, Some(bad)).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("invalid version requirement"),
            "{body}"
        );
    }

    let (status, body) = env.upgrade(b, Some("1")).await;
    assert_eq!((status, body["to"].as_str()), (200, Some("1.2.0")), "{body}");
    assert_eq!(body["new_port"], a);
    env.wait_takeover_done(a).await;

    let (status, body) = env.upgrade(a, Some("=1.0.0")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["to"].as_str(), body["rollback"].as_bool()),
        (Some("1.0.0"), Some(true)),
        "{body}"
    );
    env.wait_takeover_done(b).await;
    assert_eq!(env.version_at(&env.public("/")).await, Some(("1.0.0".into(), b)));
    env.wait_single_container().await;

    // The history outlives each instance: it is kept in the data volume.
    let status = env.status(b).await;
    let history = status["history"].as_array().unwrap();
    let outcomes: Vec<(&str, &str)> = history
        .iter()
        .map(|r| (r["requested"].as_str().unwrap(), r["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        &outcomes[..5],
        &[
            ("=1.0.0", "upgraded"),
            ("1", "upgraded"),
            ("1.0", "failed"),
            ("=1.3.0-rc.1", "failed"),
            ("4", "failed")
        ],
        "{status}"
    );
    assert_eq!(outcomes.last(), Some(&("1.1", "upgraded")));
}

pub async fn rollback_returns_to_the_version_before_the_last_upgrade(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    let [a, b] = env.ports;

    // A first instance has nothing to go back to.
    let r = env.http.post(env.direct(a, "/rollback")).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("no previous version")
    );

    suite.release(&env.repository, "1.1.0");
    let (status, body) = env.upgrade(a, None).await;
    assert_eq!(status, 200, "{body}");
    env.wait_takeover_done(b).await;

    let status = env.status(b).await;
    assert_eq!(status["version"], "1.1.0");
    assert_eq!(status["port"], b);
    assert_eq!(status["previous"]["version"], "1.0.0");
    let digest = status["image"]["digest"].as_str().unwrap();
    assert!(digest.contains("@sha256:"), "{status}");
    assert_eq!(status["history"][0]["outcome"], "upgraded");
    assert_eq!(status["history"][0]["to"], "1.1.0");

    let r = env.http.post(env.direct(b, "/rollback")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["from"].as_str(), body["to"].as_str()),
        (Some("1.1.0"), Some("1.0.0")),
        "{body}"
    );
    assert_eq!(body["rollback"], true);
    assert_eq!(body["image"], suite.image(&env.repository, "1.0.0"));
    env.wait_takeover_done(a).await;
    assert_eq!(env.version_at(&env.public("/")).await, Some(("1.0.0".into(), a)));
    env.wait_single_container().await;
}

pub async fn tags_are_read_across_every_page_of_the_registry(suite: Arc<Suite>) {
    let env = suite.env(&[]);
    suite.release(&env.repository, "1.1.0");
    suite.release(&env.repository, "1.0.0");
    // 150 more tags through the registry API: the list comes in pages of 100,
    // and 2.0.99 sorts last of all of them.
    let base = format!("http://{}/v2/{}/manifests", suite.registry, env.repository);
    let media = "application/vnd.docker.distribution.manifest.v2+json";
    let manifest = env
        .http
        .get(format!("{base}/1.1.0"))
        .header("accept", media)
        .send()
        .await
        .unwrap();
    let manifest = manifest.bytes().await.unwrap();
    for n in 0..150 {
        let r = env
            .http
            .put(format!("{base}/2.0.{n}"))
            .header("content-type", media)
            .body(manifest.clone())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "tagging 2.0.{n}: {}", r.status());
    }
    env.up("1.0.0").await;
    let (status, body) = env.upgrade(env.ports[0], Some("=2.0.99")).await;
    // Found on the second page (else a 404 listing the versions), and then
    // refused: the image's label, not the tag, is the version.
    assert_eq!(status, 502, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "{} is labelled version 1.1.0, which does not satisfy =2.0.99",
            suite.image(&env.repository, "2.0.99")
        )),
        "{error}"
    );
}
