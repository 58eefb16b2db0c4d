//! An upgrade you can watch: the event stream (and its resumption on the
//! successor), pull progress, the CLI, and `/metrics`; a companion update's
//! event stream.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{APP, Env, Suite, docker, eventually, run};
use crate::sse::{Ev, assert_in_order, label, read_events};

/// `/upgrade[/req]` on `port`, asking for its events.
async fn upgrade_streamed(env: &Env, port: u16, path: &str) -> reqwest::Response {
    env.http
        .post(env.direct(port, path))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("the upgrade answers")
}

pub async fn an_upgrade_streams_every_step_in_order_and_the_successor_resumes_after_the_last_event_id(
    suite: Arc<Suite>,
) {
    let env = suite.live_env(&[], "1.0.0").await;
    let [a, b] = env.ports;
    suite.release(&env.repository, "1.1.0");
    // A watcher on the elder, from now on.
    let watcher = env.http.get(env.direct(a, "/events?from=now")).send().await.unwrap();
    let watched = tokio::spawn(read_events(watcher, Duration::from_secs(60), |_| false));

    let events = read_events(
        upgrade_streamed(&env, a, "/upgrade").await,
        Duration::from_secs(60),
        |_| false,
    )
    .await;
    let labels: Vec<String> = events.iter().map(label).collect();
    assert_in_order(
        &labels,
        &[
            "upgrade_started",
            "resolving",
            "pulling",
            "starting the successor",
            "health-checking the successor",
            "health_attempt",
            "waiting for the successor's takeover",
            "successor: publishing the sockets",
            "successor: confirming through the live socket",
            "successor: stopping the elder",
            "upgrade_finished",
            "result",
        ],
    );
    let result = events.last().unwrap();
    assert_eq!(result.name, "result", "{labels:?}");
    assert_eq!(result.data["http_status"], 200, "{}", result.data);
    assert_eq!(result.data["status"], "upgraded");
    assert_eq!(result.data["to"], "1.1.0");
    // Ids grow, across both instances' events.
    let ids: Vec<u64> = events.iter().filter_map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let versions: Vec<&str> = events.iter().filter_map(|e| e.data["version"].as_str()).collect();
    assert!(
        versions.contains(&"1.0.0") && versions.contains(&"1.1.0"),
        "{versions:?}"
    );

    // The elder's /events ends as it drains; its last id is where the client resumes.
    let seen = watched.await.unwrap();
    let last = seen.iter().filter_map(|e| e.id).max().expect("the watcher saw events");
    assert!(
        seen.iter().any(|e| label(e) == "successor: stopping the elder"),
        "{seen:#?}"
    );
    env.wait_takeover_done(b).await;
    let resumed = env
        .http
        .get(env.direct(b, "/events"))
        .header("last-event-id", last.to_string())
        .send()
        .await
        .unwrap();
    let after = read_events(resumed, Duration::from_secs(30), |evs| {
        evs.iter().any(|e| label(e) == "successor: done")
    })
    .await;
    let after_ids: Vec<u64> = after.iter().filter_map(|e| e.id).collect();
    assert_eq!(after_ids.first(), Some(&(last + 1)), "{after:#?}");
    assert!(after_ids.windows(2).all(|w| w[1] == w[0] + 1), "{after_ids:?}");

    // Resuming from the middle of the upgrade replays the elder's events, from the data volume.
    let pulling = events
        .iter()
        .find(|e| label(e) == "pulling")
        .and_then(|e| e.id)
        .unwrap();
    let replay = env
        .http
        .get(env.direct(b, "/events"))
        .header("last-event-id", pulling.to_string())
        .send()
        .await
        .unwrap();
    let replayed = read_events(replay, Duration::from_secs(30), |evs| {
        evs.iter().any(|e| e.name == "upgrade_finished")
    })
    .await;
    assert_eq!(replayed[0].id, Some(pulling + 1));
    assert_eq!(replayed[0].data["version"], "1.0.0");
    // A bad id is a 400 with a JSON reason.
    let bad = env
        .http
        .get(env.direct(b, "/events"))
        .header("last-event-id", "nine")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let body: Value = bad.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("Last-Event-ID"), "{body}");
}

/// The test's environment, then its large image: removed from this machine
/// in that order (the containers first, which use the image), even on failure.
struct WithImage {
    env: Option<Env>,
    image: String,
}

impl Drop for WithImage {
    fn drop(&mut self) {
        drop(self.env.take());
        let _ = Command::new("docker").args(["rmi", "-f", &self.image]).output();
    }
}

pub async fn pull_progress_events_carry_growing_byte_counts_for_an_image_with_a_large_layer(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    let image = suite.image(&env.repository, "1.1.0");
    let guard = WithImage { env: Some(env), image };
    let (env, image) = (guard.env.as_ref().unwrap(), &guard.image);
    // 1.1.0 with a 160 MiB layer of random bytes (they do not compress).
    let dir = env.path().join("large");
    std::fs::create_dir_all(&dir).unwrap();
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("head -c {} /dev/urandom > {}/large", 160 << 20, dir.display())));
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {}\nCOPY large /large\n", suite.image("selfup", "1.1.0")),
    )
    .unwrap();
    run(Command::new("docker")
        .args(["build", "-q", "--label", &suite.label(), "-t", image])
        .arg(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    crate::harness::push(image);
    let latest = suite.image(&env.repository, "latest");
    docker(&["tag", image, &latest]);
    crate::harness::push(&latest);
    // Off this machine, so that the upgrade downloads the layer.
    docker(&["rmi", image, &latest]);

    let events = read_events(
        upgrade_streamed(env, env.ports[0], "/upgrade").await,
        Duration::from_secs(120),
        |_| false,
    )
    .await;
    let result = events.last().unwrap();
    assert_eq!(result.data["http_status"], 200, "{}", result.data);
    let progress: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e.name == "pull_progress")
        .map(|e| (e.data["done"].as_u64().unwrap(), e.data["total"].as_u64().unwrap()))
        .collect();
    eprintln!("    pull progress: {progress:?}");
    assert!(progress.len() >= 2, "{progress:?}");
    assert!(progress.windows(2).all(|w| w[0].0 < w[1].0), "{progress:?}");
    let (done, total) = *progress.last().unwrap();
    assert!(total >= 160 << 20, "{total}");
    assert_eq!(done, total);
    // Between the pull's step and the next one.
    let labels: Vec<String> = events.iter().map(label).collect();
    assert_in_order(
        &labels,
        &["pulling", "pull_progress", "pull_progress", "starting the successor"],
    );
}

/// Runs the `selfup` binary of this build with `args`: (exit code, stdout, stderr).
fn selfup(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_selfup"))
        .args(args)
        .env_remove("SELFUP_UPGRADE_TOKEN")
        .env("SELFUP_CONFIG", "/nonexistent")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub async fn the_cli_upgrades_step_by_step_and_answers_with_exit_codes_and_json(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    let [a, b] = env.ports;
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    suite.release(&env.repository, "1.1.0");

    let (code, out, err) = selfup(&["status", "--json", "--url", &url(a)]);
    assert_eq!(code, 0, "{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["version"], "1.0.0");
    assert_eq!(status["port"], a);

    let cli = tokio::task::spawn_blocking(move || selfup(&["upgrade", "--url", &url(a)]));
    let (code, out, err) = cli.await.unwrap();
    eprintln!("    selfup upgrade:\n{out}");
    assert_eq!(code, 0, "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    for (i, want) in [
        "upgrading 1.0.0 to latest",
        "resolving",
        "pulling",
        "starting the successor",
        "health-checking the successor",
        "successor: publishing the sockets",
        "successor: stopping the elder",
    ]
    .iter()
    .enumerate()
    {
        // A line per step, with its time: "   0.004s  pulling".
        let line = lines
            .iter()
            .find(|l| {
                l.trim_start()
                    .split_once("s  ")
                    .is_some_and(|(t, s)| s == *want && t.parse::<f64>().is_ok())
            })
            .unwrap_or_else(|| panic!("no timed line {i} {want:?} in\n{out}"));
        assert!(!line.is_empty());
    }
    assert!(
        out.lines()
            .last()
            .unwrap()
            .starts_with(&format!("upgraded 1.0.0 -> 1.1.0: port {a} -> {b}")),
        "{out}"
    );
    env.wait_takeover_done(b).await;
    let url = |port: u16| format!("http://127.0.0.1:{port}");

    // A version that is not there: exit 1 with the reason, and JSON on stdout with --json.
    let (code, out, err) = tokio::task::spawn_blocking(move || selfup(&["upgrade", "9", "--json", "--url", &url(b)]))
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}\n{err}");
    let answer: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(answer["http_status"], 404, "{answer}");
    assert!(err.contains("failed (404)") && err.contains("no version"), "{err}");

    // The history, through the control socket.
    let socket = format!("unix:{}", env.control_socket().display());
    let (code, out, err) = selfup(&["history", "--json", "--url", &socket]);
    assert_eq!(code, 0, "{err}");
    let history: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(history[0]["outcome"], "failed", "{history}");
    assert_eq!(history[0]["from"], "1.1.0");
    assert_eq!(history[1]["outcome"], "upgraded");
    let (code, out, _) = selfup(&["status", "--url", &socket]);
    assert_eq!(code, 0);
    assert!(out.contains("version    1.1.0"), "{out}");
    assert!(out.contains(&format!("port       {b}")), "{out}");
    assert!(out.contains("last upgrades:"), "{out}");

    // Nobody there: 69; bad arguments: 2.
    let closed = format!("http://127.0.0.1:{a}");
    eventually("the elder's port to close", Duration::from_secs(30), || async {
        let c = closed.clone();
        let (code, _, _) = tokio::task::spawn_blocking(move || selfup(&["status", "--url", &c]))
            .await
            .unwrap();
        (code == 69).then_some(())
    })
    .await;
    assert_eq!(selfup(&["upgrade", "--no-such-flag"]).0, 2);
    assert_eq!(selfup(&["status", "--url", "ftp://x"]).0, 2);
}

/// The samples of a Prometheus text exposition, each line checked strictly:
/// `# HELP|TYPE|UNIT name ...`, `# EOF` last, or `name{label="value",...} number`.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            assert!(
                matches!(words.next(), Some("HELP" | "TYPE" | "UNIT"))
                    && words.next().is_some_and(|n| n.starts_with("selfup_")),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("not a number: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or_else(|| panic!("{line}"))),
            None => (series, ""),
        };
        assert!(
            name.starts_with("selfup_") && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or_else(|| panic!("{line}"));
            assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line}");
            assert!(v.starts_with('"') && v.ends_with('"') && v.len() >= 2, "{line}");
        }
        assert!(samples.insert(series.to_string(), value).is_none(), "twice: {line}");
    }
    samples
}

pub async fn metrics_parse_and_count_a_failed_upgrade_behind_the_token(suite: Arc<Suite>) {
    let token = "metrics-test-token-0123456789";
    let env = suite.live_env(&[("SELFUP_UPGRADE_TOKEN", token)], "1.0.0").await;
    let a = env.ports[0];
    let metrics = || async {
        let r = env
            .http
            .get(env.direct(a, "/metrics"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .contains("openmetrics-text")
        );
        parse_metrics(&r.text().await.unwrap())
    };
    let before = metrics().await;
    assert_eq!(
        before.get(r#"selfup_build_info{version="1.0.0"}"#),
        Some(&1.0),
        "{before:?}"
    );
    assert_eq!(before.get(r#"selfup_upgrades_total{outcome="failed"}"#), None);

    let without = env.http.get(env.direct(a, "/metrics")).send().await.unwrap();
    assert_eq!(without.status(), 401);
    let body: Value = without.json().await.unwrap();
    assert!(body["error"].is_string());

    let failed = env
        .http
        .post(env.direct(a, "/upgrade/9"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), 404);
    let after = metrics().await;
    assert_eq!(
        after.get(r#"selfup_upgrades_total{outcome="failed"}"#),
        Some(&1.0),
        "{after:?}"
    );
    assert_eq!(
        after.get(r#"selfup_upgrade_duration_seconds_count{phase="total"}"#),
        Some(&1.0)
    );
    assert!(after[r#"selfup_http_responses_total{class="4xx"}"#] >= 2.0, "{after:?}");
    assert!(after[r#"selfup_http_responses_total{class="2xx"}"#] >= 1.0, "{after:?}");
}

pub async fn a_companion_update_streams_every_step_in_order_with_its_pull_progress_and_its_rollback(suite: Arc<Suite>) {
    let mut w = suite.companion_env();
    w.start_companion(&[&suite.registry], &[], false).await;
    // The app's repository, with 1.1.0 carrying an 8 MiB layer of random
    // bytes that is not on this machine: the update downloads it.
    let repository = format!("t{}/app", w.test);
    let old = suite.image(&repository, "1.0.0");
    suite.publish(&suite.image(APP, "1.0.0"), &repository, "1.0.0");
    w.images.push(old.clone());
    let new = suite.image(&repository, "1.1.0");
    w.images.push(new.clone());
    let dir = w.dir("layer");
    run(Command::new("sh")
        .arg("-c")
        .arg(format!("head -c {} /dev/urandom > {}/random", 8 << 20, dir.display())));
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM {}\nCOPY random /random\n", suite.image(APP, "1.1.0")),
    )
    .unwrap();
    run(Command::new("docker")
        .args(["build", "-q", "--label", &suite.label(), "-t", &new])
        .arg(&dir));
    crate::harness::push(&new);
    docker(&["rmi", &new]);
    // The crash image below is of another repository: the label lets the
    // key move the app there.
    let lane = format!("selfup.repositories={}/{APP}", suite.registry);
    let app = w.target("app", &["--label", "selfup.enable=true", "--label", &lane], &old, true);

    let update = |path: String, body: Option<Value>| {
        let mut request = w
            .suite
            .http
            .post(w.url(&path))
            .header("authorization", &w.key)
            .header("accept", "text/event-stream");
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };
    let response = update(format!("/update/{app}/1"), None).await.unwrap();
    let events = read_events(response, Duration::from_secs(90), |_| false).await;
    let labels: Vec<String> = events.iter().map(label).collect();
    // What a person sees of it, without the fields every event has.
    for e in &events {
        let mut data = e.data.clone();
        if let Some(fields) = data.as_object_mut() {
            for common in ["id", "time_ms", "version", "type", "container"] {
                fields.remove(common);
            }
        }
        eprintln!("    {:<16} {data}", e.name);
    }
    assert_in_order(
        &labels,
        &[
            "update_started",
            "resolving",
            "pulling",
            "pull_progress",
            "renaming the old container aside",
            "creating the new container",
            "starting the new container",
            "health-checking the new container",
            "health_attempt",
            "stopping and removing the old container",
            "update_finished",
            "result",
        ],
    );
    let result = events.last().unwrap();
    assert_eq!(result.data["http_status"], 200, "{}", result.data);
    assert_eq!(result.data["status"], "updated", "{}", result.data);
    assert_eq!(result.data["new_image"], new.as_str());
    // Every event is this update's, and says so.
    for e in &events[..events.len() - 1] {
        assert_eq!(e.data["container"], app.as_str(), "{e:?}");
    }
    let ids: Vec<u64> = events.iter().filter_map(|e| e.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let progress: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| e.name == "pull_progress")
        .map(|e| (e.data["done"].as_u64().unwrap(), e.data["total"].as_u64().unwrap()))
        .collect();
    eprintln!("    pull progress: {progress:?}");
    assert!(progress.windows(2).all(|w| w[0].0 < w[1].0), "{progress:?}");
    let (done, total) = *progress.last().unwrap();
    assert!(total >= 8 << 20, "{total}");
    assert_eq!(done, total);
    let checks: Vec<&Ev> = events.iter().filter(|e| e.name == "health_attempt").collect();
    assert_eq!(checks.last().unwrap().data["result"], "up", "{checks:?}");
    let finished = events.iter().find(|e| e.name == "update_finished").unwrap();
    assert_eq!(finished.data["outcome"], "updated", "{:?}", finished.data);
    assert_eq!(inspect_image(&app), new);

    // A new image that exits at once: its rollback, streamed; the 502 in the last event.
    let crash = suite.image(APP, "crash");
    let response = update("/update".into(), Some(json!({"container": app, "image": crash})))
        .await
        .unwrap();
    let events = read_events(response, Duration::from_secs(60), |_| false).await;
    let labels: Vec<String> = events.iter().map(label).collect();
    assert_in_order(
        &labels,
        &[
            "update_started",
            "pulling",
            "health-checking the new container",
            "health_attempt",
            "rolling back",
            "update_finished",
            "result",
        ],
    );
    assert!(!labels.iter().any(|l| l.contains("removing the old")), "{labels:?}");
    let finished = events.iter().find(|e| e.name == "update_finished").unwrap();
    assert_eq!(finished.data["outcome"], "rolled_back", "{:?}", finished.data);
    let result = events.last().unwrap();
    assert_eq!(result.data["http_status"], 502, "{}", result.data);
    assert_eq!(result.data["rolled_back"], true, "{}", result.data);
    assert_eq!(inspect_image(&app), new);

    // The same events are in the log /events serves, and the metrics counted both.
    let first = events.first().and_then(|e| e.id).unwrap();
    let logged = w
        .suite
        .http
        .get(w.url("/events"))
        .header("last-event-id", (first - 1).to_string())
        .send()
        .await
        .unwrap();
    let logged = read_events(logged, Duration::from_secs(10), |evs| {
        evs.iter().any(|e| e.name == "update_finished")
    })
    .await;
    let logged: Vec<String> = logged.iter().map(label).collect();
    assert_eq!(logged, labels[..labels.len() - 1], "the stream is the log's");
    let metrics = w
        .suite
        .http
        .get(w.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = parse_metrics(&metrics);
    for outcome in ["updated", "rolled_back"] {
        let series = format!(r#"selfup_companion_updates_total{{outcome="{outcome}"}}"#);
        assert_eq!(samples.get(&series), Some(&1.0), "{metrics}");
    }
}

/// The image reference a container runs.
fn inspect_image(container: &str) -> String {
    crate::companion::inspect(container)["Config"]["Image"]
        .as_str()
        .unwrap()
        .to_string()
}
