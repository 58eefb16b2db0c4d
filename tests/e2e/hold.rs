//! While no instance is live, nginx's connections wait in the hold (`selfup
//! hold`, nginx's last `backup`): a SIGKILL of the live process, a `docker
//! restart` of its container. And the hold's own upgrade: the live instance
//! gives it its image once a handover is final.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{Env, Suite, docker, eventually, run};
use crate::load::{Load, Sample, assert_none_failed};

/// The running hold containers of `env`'s project: (id, image id).
fn holds(env: &Env) -> Vec<(String, String)> {
    docker(&[
        "ps",
        "--filter",
        &format!("label=com.docker.compose.project={}", env.project),
        "--filter",
        "label=selfup.hold=true",
        "--format",
        "{{.ID}}",
    ])
    .split_whitespace()
    // One removed between the two calls (the old hold, replaced) is no
    // longer running.
    .filter_map(|id| {
        let out = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.Image}}", id])
            .output()
            .ok()?;
        let image = String::from_utf8_lossy(&out.stdout).trim().to_string();
        out.status.success().then(|| (id.to_string(), image))
    })
    .collect()
}

/// The longest wait of a request answered across `[from, to]`.
fn longest_across(samples: &[Sample], from: Instant, to: Instant) -> Duration {
    samples
        .iter()
        .filter(|s| s.sent <= to && s.sent + s.latency >= from)
        .map(|s| s.latency)
        .max()
        .unwrap_or_default()
}

/// Waits until the live container has been restarted `after` times and
/// answers through nginx again.
async fn wait_back(env: &Env, live: &str, restarts: u32) {
    eventually("the live container to come back", Duration::from_secs(30), || async {
        let count: u32 = docker(&["inspect", "-f", "{{.RestartCount}}", live])
            .trim()
            .parse()
            .unwrap_or(0);
        let running = docker(&["inspect", "-f", "{{.State.Running}}", live]).trim() == "true";
        (count >= restarts && running).then_some(())
    })
    .await;
    env.wait_public_version("1.0.0").await;
}

pub async fn a_sigkill_of_the_live_process_under_eight_keep_alive_clients_fails_only_posts_in_flight_in_it_at_most_one_per_client(
    suite: Arc<Suite>,
) {
    let env = suite.live_env(&[], "1.0.0").await;
    let live = env.wait_single_container().await;
    let load = Load::start(env.public(""), 8, usize::MAX, Duration::from_secs(120));
    load.wait_for_samples_after(Instant::now(), 200, Duration::from_secs(10))
        .await;
    let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &live]).trim().to_string();
    run(std::process::Command::new("kill").args(["-KILL", &pid]));
    // Every request sent before this moment may have been in flight in it.
    let killed = Instant::now();
    // Its restart policy brings it back; the hold kept what came meanwhile.
    wait_back(&env, &live, 1).await;
    let back = Instant::now();
    load.wait_for_samples_after(back, 1_000, Duration::from_secs(30)).await;
    let samples = load.finish().await;
    assert!(samples.len() >= 1_000, "only {} requests", samples.len());
    let failed: Vec<&Sample> = samples.iter().filter(|s| s.error.is_some()).collect();
    // A failed request was in flight in the killed process: sent before
    // the kill, a POST (nginx tries a GET again), at most one per client.
    for s in &failed {
        let error = s.error.as_deref().unwrap_or_default();
        assert!(s.sent <= killed, "sent after the kill and failed: {s:?}");
        assert!(error.starts_with("POST"), "not a POST: {s:?}");
    }
    for client in 0..8 {
        let of_client = failed.iter().filter(|s| s.client == client).count();
        assert!(of_client <= 1, "client {client} lost {of_client} requests: {failed:?}");
    }
    eprintln!(
        "    figure: a SIGKILL of the live process under 8 keep-alive clients: {} of {} requests failed (POSTs in flight in it), the longest wait {} ms, back after {} ms",
        failed.len(),
        samples.len(),
        longest_across(&samples, killed, back).as_millis(),
        back.duration_since(killed).as_millis()
    );
    assert_eq!(env.wait_single_container().await, live);
}

pub async fn a_docker_restart_of_the_live_container_under_eight_keep_alive_clients_fails_none(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    let live = env.wait_single_container().await;
    let load = Load::start(env.public(""), 8, usize::MAX, Duration::from_secs(120));
    load.wait_for_samples_after(Instant::now(), 200, Duration::from_secs(10))
        .await;
    let asked = Instant::now();
    docker(&["restart", "-t", "30", &live]);
    wait_back(&env, &live, 0).await;
    let back = Instant::now();
    load.wait_for_samples_after(back, 1_000, Duration::from_secs(30)).await;
    let samples = load.finish().await;
    assert!(samples.len() >= 1_000, "only {} requests", samples.len());
    assert_none_failed(&samples, "across a docker restart of the live container");
    eprintln!(
        "    figure: a docker restart of the live container under 8 keep-alive clients: 0 of {} requests failed, the longest wait {} ms, back after {} ms",
        samples.len(),
        longest_across(&samples, asked, back).as_millis(),
        back.duration_since(asked).as_millis()
    );
}

pub async fn the_hold_takes_the_image_of_the_live_version_after_an_upgrade_and_holds_while_nothing_is_live(
    suite: Arc<Suite>,
) {
    let env = suite.live_env(&[("SELFUP_HOLD_SECS", "5")], "1.0.0").await;
    let [a, b] = env.ports;
    let first = holds(&env);
    assert_eq!(first.len(), 1, "one running hold: {first:?}");
    let (old_hold, old_image) = first[0].clone();
    let live = env.wait_single_container().await;
    assert_eq!(
        old_image,
        docker(&["inspect", "-f", "{{.Image}}", &live]).trim(),
        "the hold starts on selfup's image"
    );
    suite.release(&env.repository, "1.1.0");
    let (status, body) = env.upgrade(a, None).await;
    assert_eq!(status, 200, "{body}");
    env.wait_takeover_done(b).await;
    let successor = env.wait_single_container().await;
    let image = docker(&["inspect", "-f", "{{.Image}}", &successor]).trim().to_string();
    // One hold again, on the successor's image (for a moment the new one
    // runs beside the old).
    let (hold, hold_image) = eventually("the hold to run 1.1.0's image", Duration::from_secs(30), || async {
        let now = holds(&env);
        (now.len() == 1 && now[0].1 == image).then(|| now[0].clone())
    })
    .await;
    assert_ne!(hold, old_hold);
    assert_ne!(hold_image, old_image);
    assert!(
        !docker(&["ps", "-aq", "--no-trunc"]).contains(&old_hold),
        "the old hold is removed"
    );
    let name = docker(&["inspect", "-f", "{{.Name}}", &hold]);
    assert!(
        !name.trim().ends_with("-next"),
        "the new hold has the old one's name: {name}"
    );

    // Nothing live: a request waits hold_secs (5 s here), then gets 503
    // with Retry-After, never a hang.
    docker(&["stop", "-t", "30", &successor]);
    let (r, waited) = env.get_public_held("/").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let body = r.text().await.unwrap();
    assert!(body.contains("no instance was live within 5s"), "{body}");
    assert!(
        waited >= Duration::from_millis(4900) && waited < Duration::from_secs(8),
        "answered after {waited:?}"
    );
    // Started again, it is reached through the hold by a request that was
    // already waiting.
    let waiting = tokio::spawn({
        let http = env.http.clone();
        let url = env.public("/");
        async move { http.get(url).timeout(Duration::from_secs(10)).send().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the request waits while nothing is live");
    docker(&["start", &successor]);
    let r = waiting.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("1.1.0"));
}
