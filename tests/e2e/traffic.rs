//! nginx in front: no request lost during upgrades, control endpoints
//! closed to the public, and a clean failure when nginx is missing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{Config, Suite};
use crate::load::{Connections, Load, overlapping};

/// The fast variant: the bake off.
pub async fn no_request_is_lost_through_nginx_across_consecutive_upgrades(suite: Arc<Suite>) {
    consecutive_upgrades_under_load(suite, Config::Fast).await
}

/// With what `docker/compose.yml` ships: each upgrade bakes for 30 s.
pub async fn no_request_is_lost_through_nginx_across_consecutive_upgrades_with_the_shipped_settings(suite: Arc<Suite>) {
    consecutive_upgrades_under_load(suite, Config::Shipped).await
}

async fn consecutive_upgrades_under_load(suite: Arc<Suite>, config: Config) {
    let env = suite.env_with(config, &[]);
    for v in ["1.0.0", "1.1.0"] {
        suite.release(&env.repository, v);
    }
    // :latest is 1.1.0; 1.0.0 is still in the registry for the rollback.
    let built = suite.image("selfup", "1.0.0");
    suite.publish(&built, &env.repository, "latest");
    env.up("1.0.0").await;

    // A new connection per request here; switch.rs has clients that keep theirs.
    let load = Load::start_with(env.public(""), 6, 200_000, Duration::from_secs(120), Connections::New);
    load.wait_for_samples_after(Instant::now(), 20, Duration::from_secs(10))
        .await;
    let mut live = env.ports[0];
    // (asked, answered, version) of each upgrade.
    let mut upgrades: Vec<(Instant, Instant, String)> = Vec::new();
    let steps: [(Option<&str>, &str, Option<&str>); 3] = [
        (Some("1.1.0"), "1.1.0", None),
        (Some("1.2.0"), "1.2.0", None),
        (None, "1.0.0", Some("=1.0.0")),
    ];
    for (release, expect, requirement) in steps {
        if let Some(v) = release {
            suite.release(&env.repository, v);
        }
        let asked = Instant::now();
        let (status, body) = env.upgrade(live, requirement).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["to"], expect, "{body}");
        let answered = Instant::now();
        upgrades.push((asked, answered, expect.to_string()));
        live = body["new_port"].as_u64().unwrap() as u16;
        env.wait_takeover_done(live).await;
        // Requests sent after the takeover finished, before the next upgrade.
        load.wait_for_samples_after(Instant::now(), 20, Duration::from_secs(10))
            .await;
    }
    let samples = load.finish().await;

    assert!(samples.len() > 100, "only {} requests were sent", samples.len());
    crate::load::assert_none_failed(&samples, "across three upgrades");
    // The load covered every upgrade: requests were in flight while each ran.
    for (asked, answered, version) in &upgrades {
        let during = overlapping(&samples, *asked, *answered).len();
        assert!(
            during >= 6,
            "only {during} requests overlapped the upgrade to {version}"
        );
    }
    // Every request sent after an upgrade's answer and the elder's linger
    // (nginx may reuse a pooled connection to the elder until then), and
    // done before the next upgrade was asked for, reached the new version.
    for (i, (_, answered, version)) in upgrades.iter().enumerate() {
        let next_asked = upgrades.get(i + 1).map(|(asked, _, _)| *asked);
        let after: Vec<_> = samples
            .iter()
            .filter(|s| {
                s.sent > *answered + crate::harness::LINGER && next_asked.is_none_or(|n| s.sent + s.latency < n)
            })
            .collect();
        assert!(
            after.len() >= 20,
            "only {} requests between the upgrade to {version} and the next",
            after.len()
        );
        let stale: Vec<_> = after.iter().filter(|s| s.version.as_deref() != Some(version)).collect();
        assert!(
            stale.is_empty(),
            "{} requests after the switch to {version} reached another version",
            stale.len()
        );
    }
    eprintln!("    {} requests through 3 upgrades, none failed", samples.len());
}

pub async fn nginx_refuses_control_endpoints_and_a_token_guards_upgrade(suite: Arc<Suite>) {
    let env = suite
        .live_env(&[("SELFUP_UPGRADE_TOKEN", "s3cret-token")], "1.0.0")
        .await;
    // Every control path, GET and POST alike (and with a query, or a path
    // below it): nginx answers 403 itself.
    let paths = [
        "/upgrade",
        "/upgrade/2",
        "/upgrade?dry_run=true",
        "/handover",
        "/status",
        "/rollback",
        "/promote",
        "/events",
        "/metrics",
        "/update",
        "/update/web/2",
        "/hooks/registry",
    ];
    for path in paths {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let r = env.http.request(method.clone(), env.public(path)).send().await.unwrap();
            assert_eq!(r.status(), 403, "{method} {path} through nginx");
            let body: serde_json::Value = r.json().await.unwrap();
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("not reachable through the proxy"),
                "{method} {path}: {body}"
            );
        }
    }
    // The public /health tells the status only; the direct loopback one names the container.
    let r = env.http.get(env.public("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "ok"}));
    let r = env.http.get(env.direct(env.ports[0], "/health")).send().await.unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["version"], "1.0.0", "{body}");
    assert!(!body["container"].as_str().unwrap_or_default().is_empty(), "{body}");
    let direct = env.direct(env.ports[0], "/upgrade");
    let r = env.http.post(&direct).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = env.http.post(&direct).bearer_auth("wrong-token").send().await.unwrap();
    assert_eq!(r.status(), 401);
    // A request that carries a forwarding header came through a proxy: refused even with the token.
    let r = env
        .http
        .post(&direct)
        .bearer_auth("s3cret-token")
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = env.http.post(&direct).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"], "already_there");
}
