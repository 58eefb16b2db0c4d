//! Restarts, daemon errors and a stopped nginx around a handover: a restart
//! is a plain start, never a second takeover, and there is always exactly
//! one live instance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{Env, Suite, docker, eventually};

/// Upgrades the instance on `from` to `version` and waits until its
/// successor, on the other port, has finished taking over.
async fn upgrade_to(env: &Env, from: u16, version: &str) -> u16 {
    let (status, body) = env.upgrade(from, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["to"], version, "{body}");
    let to = body["new_port"].as_u64().unwrap() as u16;
    env.wait_takeover_done(to).await;
    env.wait_single_container().await;
    to
}

/// The running selfup container listening on `port`, if any; a container
/// that vanishes while it is looked at is simply not it.
fn running_on(env: &Env, port: u16) -> Option<String> {
    env.selfup_containers().into_iter().find(|id| {
        let out = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}} {{json .Config.Env}}", id])
            .output();
        out.is_ok_and(|o| {
            let text = String::from_utf8_lossy(&o.stdout);
            o.status.success() && text.starts_with("true ") && text.contains(&format!("\"SELFUP_PORT={port}\""))
        })
    })
}

/// Everything a container wrote, stdout and stderr.
fn logs_of(id: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["logs", id])
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that the project keeps exactly one selfup container, `id`, for `window`.
async fn assert_stays_single(env: &Env, id: &str, window: Duration) {
    let start = Instant::now();
    while start.elapsed() < window {
        assert_eq!(
            env.selfup_containers(),
            vec![id.to_string()],
            "a second instance appeared"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn a_restarted_live_instance_is_a_plain_start_and_the_next_upgrade_works(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    let [a, b] = env.ports;
    suite.release(&env.repository, "1.1.0");
    assert_eq!(upgrade_to(&env, a, "1.1.0").await, b);
    suite.release(&env.repository, "1.2.0");
    assert_eq!(upgrade_to(&env, b, "1.2.0").await, a);
    let live = env.wait_single_container().await;

    docker(&["restart", "-t", "10", &live]);
    eventually("the restarted instance to serve", Duration::from_secs(30), || async {
        match env.version_at(&env.direct(a, "/")).await {
            Some((v, _)) if v == "1.2.0" => Some(()),
            _ => None,
        }
    })
    .await;
    env.wait_takeover_done(a).await;
    assert_stays_single(&env, &live, Duration::from_secs(2)).await;
    assert_eq!(env.version_at(&env.public("/")).await, Some(("1.2.0".into(), a)));
    assert_eq!(env.live_port(), Some(a));

    // The next upgrade (a rollback here: the suite has no higher version) works.
    let (status, body) = env.upgrade(a, Some("=1.1.0")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "upgraded", "{body}");
    env.wait_takeover_done(b).await;
    let survivor = env.wait_single_container().await;
    assert_ne!(survivor, live);
    assert_eq!(env.version_at(&env.public("/")).await, Some(("1.1.0".into(), b)));
}

/// What happens to the live instance while its successor starts.
#[derive(Clone, Copy, Debug)]
enum Interruption {
    Kill,
    Restart,
}

/// After an upgrade (so that the live instance carries handover settings),
/// a second upgrade whose elder is interrupted as its successor starts: the
/// successor takes over alone, within 10 s, and nothing takes it back.
async fn interrupt_the_elder_while_its_successor_starts(suite: Arc<Suite>, how: Interruption) {
    let env = suite.live_env(&[], "1.0.0").await;
    let [a, b] = env.ports;
    suite.release(&env.repository, "1.1.0");
    assert_eq!(upgrade_to(&env, a, "1.1.0").await, b);
    let elder = env.wait_single_container().await;
    suite.release(&env.repository, "1.2.0");
    let upgrade = {
        let http = env.http.clone();
        let url = env.direct(b, "/upgrade");
        tokio::spawn(async move { http.post(url).send().await })
    };
    eventually("the successor to start", Duration::from_secs(30), || async {
        running_on(&env, a)
    })
    .await;
    let interrupted = Instant::now();
    match how {
        Interruption::Kill => docker(&["kill", "-s", "KILL", &elder]),
        Interruption::Restart => docker(&["restart", "-t", "0", &elder]),
    };
    // The elder's answer is lost with it.
    let _ = upgrade.await;
    let survivor = eventually("one instance of the new version", Duration::from_secs(10), || async {
        let ids = env.selfup_containers();
        let serving = env.version_at(&env.public("/")).await;
        (ids.len() == 1 && serving == Some(("1.2.0".into(), a))).then(|| ids[0].clone())
    })
    .await;
    eprintln!(
        "    {how:?}: one instance of 1.2.0 after {} ms",
        interrupted.elapsed().as_millis()
    );
    assert!(!elder.starts_with(&survivor) && !survivor.starts_with(&elder));
    env.wait_takeover_done(a).await;
    assert_stays_single(&env, &survivor, Duration::from_secs(3)).await;
    assert_eq!(env.live_port(), Some(a));
    let phase: Value = env.get_json(&env.direct(a, "/handover")).await;
    assert_eq!(phase["phase"], "done", "{phase}");
}

pub async fn the_elder_killed_while_its_successor_starts_leaves_one_instance_of_the_new_version(suite: Arc<Suite>) {
    interrupt_the_elder_while_its_successor_starts(suite, Interruption::Kill).await;
}

pub async fn the_elder_restarted_while_its_successor_starts_leaves_one_instance_of_the_new_version(suite: Arc<Suite>) {
    interrupt_the_elder_while_its_successor_starts(suite, Interruption::Restart).await;
}

pub async fn daemon_errors_while_the_successor_watches_its_elder_do_not_make_it_take_over_early(suite: Arc<Suite>) {
    // The successor's first three inspections of its elder fail as a daemon
    // error would (the switch is copied to it with the elder's environment).
    let faulty = suite.faults_image();
    let env = suite.live_env(&[("FAULT_INSPECT_ERRORS", "3")], "1.0.0").await;
    let [a, b] = env.ports;
    suite.publish(&faulty, &env.repository, "latest");
    let (status, body) = env.upgrade(a, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "upgraded", "{body}");
    assert_eq!(body["to"], "1.1.0", "{body}");
    env.wait_takeover_done(b).await;
    let survivor = env.wait_single_container().await;
    assert_eq!(env.version_at(&env.public("/")).await, Some(("1.1.0".into(), b)));
    assert_eq!(env.live_port(), Some(b));
    let log = logs_of(&survivor);
    assert!(
        log.contains("fault switch: failing an inspection"),
        "the fault never fired:\n{log}"
    );
    assert!(!log.contains("without the elder's go-ahead"), "{log}");
}

pub async fn an_upgrade_with_nginx_stopped_completes_and_nginx_serves_it_when_started(suite: Arc<Suite>) {
    // nginx is stopped during the upgrade: the successor pauses after it
    // has published its sockets (a fault switch of the test image), and
    // nginx stops then, before the upgrade answers.
    let faulty = suite.faults_image();
    let env = suite.live_env(&[("FAULT_TAKEOVER_PAUSE_MS", "3000")], "1.0.0").await;
    let [a, b] = env.ports;
    suite.publish(&faulty, &env.repository, "latest");
    let upgrade = upgrade_paused_after_the_switch(&env).await;
    let nginx = env.nginx.clone();
    tokio::task::spawn_blocking(move || docker(&["stop", &nginx]))
        .await
        .unwrap();
    assert!(!upgrade.is_finished(), "the upgrade answered before nginx stopped");
    let (status, body) = upgrade.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "upgraded", "{body}");
    // The fault image is 1.1.0 built with the fault switches.
    assert_eq!(body["to"], "1.1.0", "{body}");
    env.wait_takeover_done(b).await;
    env.wait_single_container().await;
    assert_eq!(env.live_port(), Some(b));
    let health: Value = env.get_json(&env.direct(b, "/health")).await;
    assert_eq!(health["status"], "ok", "{health}");
    assert!(health["proxy"].as_str().unwrap().starts_with("down: "), "{health}");
    docker(&["start", &env.nginx]);
    env.wait_public_version("1.1.0").await;
    assert_eq!(env.version_at(&env.public("/")).await, Some(("1.1.0".into(), b)));
    let health: Value = env.get_json(&env.direct(b, "/health")).await;
    assert_eq!(health["proxy"], "running", "{health}");

    // Not up yet (after a reboot): stopped before the next upgrade.
    docker(&["stop", &env.nginx]);
    suite.release(&env.repository, "1.2.0");
    let (status, body) = env.upgrade(b, Some("=1.2.0")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["to"], "1.2.0", "{body}");
    env.wait_takeover_done(a).await;
    env.wait_single_container().await;
    assert_eq!(env.live_port(), Some(a));
    docker(&["start", &env.nginx]);
    env.wait_public_version("1.2.0").await;
}

pub async fn an_elder_stopped_by_someone_else_mid_takeover_does_not_answer_upgraded(suite: Arc<Suite>) {
    // The successor pauses after it has published its sockets (a fault
    // switch of the test image): that is when an operator stops the elder.
    let faulty = suite.faults_image();
    let env = suite.live_env(&[("FAULT_TAKEOVER_PAUSE_MS", "3000")], "1.0.0").await;
    let b = env.ports[1];
    let elder = env.wait_single_container().await;
    suite.publish(&faulty, &env.repository, "latest");
    let upgrade = upgrade_paused_after_the_switch(&env).await;
    let stop = {
        let elder = elder.clone();
        tokio::task::spawn_blocking(move || docker(&["stop", "-t", "30", &elder]))
    };
    let (status, body) = upgrade.await.unwrap();
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("asked to stop before its successor") && error.contains("confirming through the live socket"),
        "{error}"
    );
    let _ = stop.await;
    // The successor was left to finish: one instance of the new version.
    env.wait_takeover_done(b).await;
    env.wait_single_container().await;
    assert_eq!(env.version_at(&env.public("/")).await, Some(("1.1.0".into(), b)));
}

/// Starts `/upgrade` on the elder (port `a`) and returns once the successor
/// (on `b`), paused by the test image's fault switch, has taken the live
/// socket: the window in which something else happens to nginx or the
/// elder. The task answers with the upgrade's status and body.
async fn upgrade_paused_after_the_switch(env: &Env) -> tokio::task::JoinHandle<(u16, Value)> {
    let [a, b] = env.ports;
    let upgrade = {
        let http = env.http.clone();
        let url = env.direct(a, "/upgrade");
        tokio::spawn(async move {
            let r = http.post(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        })
    };
    eventually(
        "the successor to take the live socket",
        Duration::from_secs(30),
        || async {
            let r = env.http.get(env.direct(b, "/handover")).send().await.ok()?;
            let phase: Value = r.json().await.ok()?;
            (phase["step"] == "confirming through the live socket").then_some(())
        },
    )
    .await;
    upgrade
}
