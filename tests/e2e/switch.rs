//! The switch without a reload: nginx's upstream is the live socket, and a
//! handover renames the successor's socket over it. Clients keep their
//! connections to nginx across upgrades, a slow client holds nothing up, and
//! nothing but an instance of this service receives public traffic.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::harness::{Env, LINGER, Suite, docker};
use crate::load::{Load, Sample, assert_none_failed, overlapping};

/// Sends two `GET /` on one connection to nginx's public port and returns
/// both status lines: the second is answered only if nginx kept the
/// connection open (public keep-alive).
async fn two_requests_on_one_connection(public_port: u16) -> Vec<String> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", public_port))
        .await
        .unwrap();
    let mut stream = BufReader::new(stream);
    let mut statuses = Vec::new();
    for _ in 0..2 {
        let sent = stream
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        if sent.is_err() {
            break;
        }
        let mut status = String::new();
        if stream.read_line(&mut status).await.unwrap_or(0) == 0 {
            break;
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body).await.unwrap();
        statuses.push(status.trim().to_string());
    }
    statuses
}

pub async fn eight_keep_alive_clients_see_no_failure_across_five_upgrades(suite: Arc<Suite>) {
    let env = suite.env(&[]);
    for v in ["1.0.0", "1.1.0", "1.2.0"] {
        suite.release(&env.repository, v);
    }
    suite.publish(&suite.image("selfup", "1.0.0"), &env.repository, "latest");
    env.up("1.0.0").await;
    assert_eq!(
        two_requests_on_one_connection(env.public_port).await,
        ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK"],
        "nginx keeps a public connection open for a second request"
    );

    // The load's clients reuse their connections to nginx (reqwest pools them).
    let load = Load::start(env.public(""), 8, usize::MAX, Duration::from_secs(300));
    load.wait_for_samples_after(Instant::now(), 40, Duration::from_secs(10))
        .await;
    let mut live = env.ports[0];
    let mut upgrades: Vec<(Instant, Instant, &str)> = Vec::new();
    for version in ["1.1.0", "1.2.0", "1.0.0", "1.1.0", "1.2.0"] {
        let asked = Instant::now();
        let (status, body) = env.upgrade(live, Some(&format!("={version}"))).await;
        let answered = Instant::now();
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["to"], version, "{body}");
        upgrades.push((asked, answered, version));
        live = body["new_port"].as_u64().unwrap() as u16;
        env.wait_takeover_done(live).await;
        load.wait_for_samples_after(Instant::now(), 40, Duration::from_secs(10))
            .await;
    }
    let samples = load.finish().await;
    assert_none_failed(&samples, "across five upgrades");
    let mut from_the_elder = 0;
    for (i, (asked, answered, version)) in upgrades.iter().enumerate() {
        let during = overlapping(&samples, *asked, *answered).len();
        assert!(
            during >= 8,
            "only {during} requests overlapped the upgrade to {version}"
        );
        let next_asked = upgrades.get(i + 1).map(|(asked, _, _)| *asked);
        let before_next = |s: &&Sample| next_asked.is_none_or(|n| s.sent + s.latency < n);
        // During the elder's linger, nginx may still send on a pooled
        // connection to it: an answer from the old version, not a failure.
        from_the_elder += samples
            .iter()
            .filter(|s| s.sent > *answered && s.sent <= *answered + LINGER)
            .filter(|s| s.version.as_deref() != Some(version))
            .count();
        let after: Vec<_> = samples
            .iter()
            .filter(|s| s.sent > *answered + LINGER)
            .filter(before_next)
            .collect();
        assert!(
            after.len() >= 40,
            "only {} requests after the linger of the upgrade to {version}",
            after.len()
        );
        let stale = after.iter().filter(|s| s.version.as_deref() != Some(version)).count();
        assert_eq!(
            stale, 0,
            "requests after the linger reached another version than {version}"
        );
    }
    eprintln!(
        "    {} requests from 8 keep-alive clients through 5 upgrades, none failed ({from_the_elder} answered by a lingering elder)",
        samples.len()
    );
}

pub async fn a_slow_public_post_gets_its_answer_while_upgrades_run_in_their_usual_time(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    let [a, b] = env.ports;
    let (sent, head_sent) = tokio::sync::oneshot::channel();
    let slow = tokio::spawn(crate::faults::slow_echo(
        env.public_port,
        Duration::from_secs(120),
        sent,
    ));
    head_sent.await.expect("the slow request starts");
    let opened = Instant::now();
    let mut took = Vec::new();
    for (version, from, to) in [("1.1.0", a, b), ("1.2.0", b, a)] {
        suite.release(&env.repository, version);
        let asked = Instant::now();
        let (status, body) = env.upgrade(from, None).await;
        took.push(asked.elapsed());
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["to"], version, "{body}");
        env.wait_takeover_done(to).await;
    }
    let upgraded = opened.elapsed();
    assert!(!slow.is_finished(), "the slow request ended before the upgrades did");
    for t in &took {
        assert!(
            *t < Duration::from_secs(5),
            "an upgrade took {t:?} beside a slow client"
        );
    }
    let answer = slow.await.unwrap().expect("the slow POST gets its whole answer");
    assert!(
        answer.to_ascii_lowercase().contains("x-selfup-version: 1.2.0"),
        "{answer}"
    );
    eprintln!(
        "    two upgrades answered in {:?} and {:?}, both done {} s into a 120 s POST, which got its answer from 1.2.0",
        took[0],
        took[1],
        upgraded.as_secs()
    );
}

/// A TCP listener on `port` that counts the connections it accepts.
async fn counting_listener(port: u16) -> (Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("binding the idle port {port}: {e}"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nforeign")
                .await;
        }
    });
    (accepted, task)
}

/// Runs `script` as the unprivileged user 65534 in a container that mounts
/// the public socket directory, as a local user without root would try it;
/// returns (exit code, output).
fn as_nobody(suite: &Suite, env: &Env, script: &str) -> (i32, String) {
    let public = format!("{}:/run/selfup-public", env.path().join("public").display());
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--label",
            &suite.label(),
            "--user",
            "65534",
            "-v",
            &public,
        ])
        .args([
            "--entrypoint",
            "/busybox",
            &suite.image("fixtures", "hang"),
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), crate::harness::output_text(&out))
}

/// Restarts the live instance and waits until it serves `version` through
/// nginx again; returns when the restart was asked and when it served.
async fn restart_live(env: &Env, load: &Load, version: &str) -> (Instant, Instant) {
    let live = env.wait_single_container().await;
    let asked = Instant::now();
    docker(&["restart", "-t", "10", &live]);
    env.wait_public_version(version).await;
    let served = Instant::now();
    load.wait_for_samples_after(Instant::now(), 100, Duration::from_secs(10))
        .await;
    (asked, served)
}

pub async fn a_foreign_listener_on_the_idle_port_or_in_the_socket_directory_receives_nothing(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    let [a, b] = env.ports;
    // Any local user can bind the idle port; none can make a name where
    // nginx connects.
    let (on_b, listener_b) = counting_listener(b).await;
    for script in [
        "touch /run/selfup-public/live.sock.new",
        "rm -f /run/selfup-public/live.sock",
        "mv /run/selfup-public/live.sock /run/selfup-public/old.sock",
        "ln -s /tmp/x /run/selfup-public/evil.sock",
    ] {
        let (code, out) = as_nobody(&suite, &env, script);
        assert_ne!(code, 0, "{script:?} succeeded as user 65534: {out}");
        assert!(out.contains("Permission denied"), "{script:?}: {out}");
    }
    let names: Vec<String> = std::fs::read_dir(env.path().join("public"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|n| ["live.sock.new", "evil.sock", "old.sock"].contains(&n.as_str())),
        "{names:?}"
    );
    assert_eq!(env.live_port(), Some(a));

    let load = Load::start(env.public(""), 4, usize::MAX, Duration::from_secs(300));
    load.wait_for_samples_after(Instant::now(), 50, Duration::from_secs(10))
        .await;
    // While the live instance restarts, nginx's connections wait in the
    // hold until it is back.
    let first = restart_live(&env, &load, "1.0.0").await;
    assert_eq!(
        on_b.load(Ordering::SeqCst),
        0,
        "the listener on the idle port {b} got a connection"
    );
    listener_b.abort();
    let _ = listener_b.await;

    // The same after an upgrade, for the port it frees.
    suite.release(&env.repository, "1.1.0");
    let (status, body) = env.upgrade(a, None).await;
    assert_eq!(status, 200, "{body}");
    env.wait_takeover_done(b).await;
    env.wait_single_container().await;
    let (on_a, listener_a) = counting_listener(a).await;
    load.wait_for_samples_after(Instant::now(), 100, Duration::from_secs(10))
        .await;
    let second = restart_live(&env, &load, "1.1.0").await;
    let samples = load.finish().await;
    listener_a.abort();
    assert_eq!(
        on_a.load(Ordering::SeqCst),
        0,
        "the listener on the freed port {a} got a connection"
    );
    // Nothing fails: not across the two restarts (the hold kept what came
    // meanwhile), not across the upgrade.
    assert!(samples.len() >= 1_000, "only {} requests", samples.len());
    assert_none_failed(&samples, "across two restarts and an upgrade");
    let waited = |(asked, served): (Instant, Instant)| {
        samples
            .iter()
            .filter(|s| s.sent + s.latency >= asked && s.sent <= served)
            .map(|s| s.latency)
            .max()
            .unwrap_or_default()
    };
    eprintln!(
        "    {} requests through two restarts and an upgrade, none failed (the longest waited {} and {} ms), none reached a foreign listener",
        samples.len(),
        waited(first).as_millis(),
        waited(second).as_millis()
    );

    // The live socket carries public traffic only.
    let http = reqwest::Client::builder()
        .unix_socket(env.live_socket())
        .build()
        .unwrap();
    for (method, path) in [
        ("GET", "/status"),
        ("POST", "/upgrade"),
        ("GET", "/handover"),
        ("POST", "/update"),
    ] {
        let r = http
            .request(method.parse().unwrap(), format!("http://localhost{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method} {path} on the live socket");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains("live socket"), "{body}");
    }
    let r = http.get("http://localhost/").send().await.unwrap();
    assert_eq!(r.status(), 200);
}
