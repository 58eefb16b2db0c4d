//! The self-upgrade cycle: build, start with compose, upgrade, toggle, and
//! the successors that must never take over.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Config, Suite, eventually, labels, repo_root};

pub async fn build_refuses_a_version_that_is_not_semver(_suite: Arc<Suite>) {
    for bad in ["1.0", "v1.0.0", "1.0.0.0", "01.0.0", "latest", "1.0.0+build"] {
        let out = Command::new(repo_root().join("build.sh")).arg(bad).output().unwrap();
        assert!(!out.status.success(), "build.sh {bad} succeeded");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("is not a semver version") && stderr.contains("nothing was built"),
            "{bad}: {stderr}"
        );
    }
    // Semver, but longer than the binary's version slot.
    let long = format!("1.0.0-{}", "a".repeat(59));
    let out = Command::new(repo_root().join("build.sh")).arg(&long).output().unwrap();
    assert!(!out.status.success(), "build.sh {long} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("longer than 64 characters") && stderr.contains("nothing was built"),
        "{stderr}"
    );
    let out = Command::new(repo_root().join("build.sh")).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}

/// The fast variant: the bake off, shorter deadlines.
pub async fn three_upgrades_toggle_the_port_and_leave_one_compose_container(suite: Arc<Suite>) {
    three_upgrades(suite, Config::Fast).await
}

/// With what `docker/compose.yml` ships: each elder bakes its successor
/// for 30 s before it goes.
pub async fn three_upgrades_toggle_the_port_and_leave_one_compose_container_with_the_shipped_settings(
    suite: Arc<Suite>,
) {
    three_upgrades(suite, Config::Shipped).await
}

async fn three_upgrades(suite: Arc<Suite>, config: Config) {
    let env = suite.env_with(config, &[]);
    let [a, b] = env.ports;
    suite.release(&env.repository, "1.0.0");
    env.up("1.0.0").await;
    assert_eq!(env.version_at(&env.direct(a, "/")).await, Some(("1.0.0".into(), a)));
    let text = env.get_text(&env.direct(a, "/")).await;
    assert_eq!(text, "selfup version 1.0.0\n");

    let mut live = a;
    for (version, next) in [("1.1.0", b), ("1.2.0", a)] {
        suite.release(&env.repository, version);
        let (status, body) = env.upgrade(live, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "upgraded", "{body}");
        assert_eq!(body["to"], version);
        assert_eq!(body["old_port"], live);
        assert_eq!(body["new_port"], next);
        assert!(body["timings"]["total_ms"].as_u64().unwrap() > 0);
        assert_eq!(
            env.version_at(&env.direct(next, "/")).await,
            Some((version.to_string(), next))
        );
        assert_eq!(
            env.version_at(&env.public("/")).await,
            Some((version.to_string(), next))
        );
        let id = env.wait_single_container().await;
        // The survivor carries the compose identity and the new image's id.
        let l = labels(&id);
        assert_eq!(l["com.docker.compose.service"], "selfup");
        assert_eq!(l["com.docker.compose.container-number"], "1");
        assert_eq!(l["org.opencontainers.image.version"], version);
        let image_id = crate::harness::docker(&[
            "image",
            "inspect",
            "-f",
            "{{.Id}}",
            &suite.image(&env.repository, version),
        ]);
        assert_eq!(l["com.docker.compose.image"], image_id.trim());
        // The elder's port is closed once it has drained and gone.
        eventually("the elder's port to close", Duration::from_secs(30), || async {
            env.version_at(&env.direct(live, "/")).await.is_none().then_some(())
        })
        .await;
        let name = crate::harness::docker(&["inspect", "-f", "{{.Name}}", &id]);
        assert_eq!(name.trim(), format!("/{}_selfup_1", env.project));
        live = next;
    }

    // compose sees one container, and `up -d` does not start a second one
    // (v1 recreates it after a pull; it converges back to one live instance).
    let ps = env.compose(&["ps", "-q", "selfup"]);
    assert_eq!(ps.split_whitespace().count(), 1, "{ps}");
    env.compose(&["up", "-d"]);
    env.wait_public_version("1.2.0").await;
    env.wait_single_container().await;
}

pub async fn upgrading_to_the_running_version_does_nothing(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.1.0").await;
    let before = env.selfup_containers();
    let (status, body) = env.upgrade(env.ports[0], None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "already_there");
    assert_eq!(body["version"], "1.1.0");
    env.assert_elder_unchanged(&before, "1.1.0").await;
}

/// Asserts that a 502's `error` names the successor's exit as the elder saw
/// it: "it exited with code `code`", or, when its restart policy brought it
/// back before the elder looked, "it exited and was restarted N times" (the
/// state then holds the new run's code, 0); either way its log (`log_line`)
/// says why. Any other wording, or another code, fails.
pub fn assert_exited(body: &Value, code: i64, log_line: &str) {
    let error = body["error"].as_str().unwrap_or_default();
    let with_code = error.contains(&format!("it exited with code {code}"));
    let restarted = error
        .split("it exited and was restarted ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .is_some_and(|n| n >= 1);
    assert!(
        with_code || restarted,
        "expected \"it exited with code {code}\" or \"it exited and was restarted N times\": {body}"
    );
    let log = body["successor_log"].to_string();
    assert!(
        log.contains(log_line),
        "the successor's log does not say why ({log_line}): {body}"
    );
}

async fn assert_faulty_successor_is_refused(suite: Arc<Suite>, fault: &str, reason: &str, log_line: Option<&str>) {
    let env = suite.live_env(&[("SELFUP_HEALTH_DEADLINE_SECS", "4")], "1.0.0").await;
    let before = env.selfup_containers();
    suite.publish(&suite.image("fixtures", fault), &env.repository, "latest");
    let (status, body) = env.upgrade_under_load(env.ports[0], None).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["status"], "failed");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(reason), "{error}");
    if let Some(line) = log_line {
        let log = body["successor_log"].to_string();
        assert!(log.contains(line), "{log}");
    }
    // Nothing left behind, and the elder still serves, directly and through nginx.
    env.assert_elder_unchanged(&before, "1.0.0").await;
}

pub async fn a_successor_that_exits_at_once_is_removed_and_the_elder_keeps_serving(suite: Arc<Suite>) {
    let env = suite.live_env(&[("SELFUP_HEALTH_DEADLINE_SECS", "4")], "1.0.0").await;
    let before = env.selfup_containers();
    suite.publish(&suite.image("fixtures", "crash"), &env.repository, "latest");
    let (status, body) = env.upgrade_under_load(env.ports[0], None).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["status"], "failed", "{body}");
    assert_exited(&body, 3, "fatal: cannot start");
    env.assert_elder_unchanged(&before, "1.0.0").await;
}

pub async fn a_successor_that_never_answers_health_is_removed_and_the_elder_keeps_serving(suite: Arc<Suite>) {
    assert_faulty_successor_is_refused(suite, "hang", "no healthy answer within", None).await;
}
