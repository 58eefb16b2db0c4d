//! Faults in the middle of an upgrade: each ends with one live instance.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::harness::{Container, FAULT_VERSION, Suite, docker, eventually, free_port, run};
use crate::load::Load;

pub async fn a_successor_that_reports_another_version_is_removed(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    let before = env.selfup_containers();
    suite.publish(&suite.image("fixtures", "liar"), &env.repository, "latest");
    let (status, body) = env.upgrade_under_load(env.ports[0], None).await;
    assert_eq!(status, 502, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("reports version \"1.1.0\", expected {FAULT_VERSION}")),
        "{error}"
    );
    env.assert_elder_unchanged(&before, "1.0.0").await;
}

pub async fn an_unreachable_registry_or_a_missing_tag_changes_nothing(suite: Arc<Suite>) {
    let dead = format!("127.0.0.1:{}", free_port());
    let env = suite.live_env(&[("SELFUP_REGISTRY", &dead)], "1.0.0").await;
    let before = env.selfup_containers();
    let (status, body) = env.upgrade(env.ports[0], None).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"].as_str().unwrap().starts_with(&format!("pulling {dead}/")),
        "{body}"
    );
    let (status, body) = env.upgrade(env.ports[0], Some("2")).await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].as_str().unwrap().contains("does not answer"), "{body}");
    assert_eq!(env.selfup_containers(), before);

    let env = suite.live_env(&[], "1.0.0").await;
    let (status, body) = env.upgrade(env.ports[0], Some("=7.7.7")).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["available"], serde_json::json!(["1.0.0"]));
    assert_eq!(
        env.version_at(&env.public("/")).await,
        Some(("1.0.0".into(), env.ports[0]))
    );
}

pub async fn an_unreachable_docker_daemon_is_a_503_and_nothing_else(suite: Arc<Suite>) {
    let port = free_port();
    let ports = format!("SELFUP_PORTS=[{port},{}]", free_port());
    let id = docker(&[
        "run",
        "-d",
        "--network",
        "host",
        "--label",
        &suite.label(),
        "-e",
        &format!("SELFUP_PORT={port}"),
        "-e",
        &ports,
        "-e",
        "SELFUP_DOCKER_SOCKET=/run/no-docker.sock",
        "-e",
        "SELFUP_NGINX_CONTAINER=",
        &suite.image("selfup", "1.0.0"),
    ]);
    let _guard = Container(id.trim().to_string());
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let health = eventually("the instance to answer", Duration::from_secs(20), || async {
        http.get(url("/health")).send().await.ok()
    })
    .await;
    assert_eq!(health.status(), 503);
    let body: Value = health.json().await.unwrap();
    assert!(
        body["docker"].as_str().unwrap().contains("/run/no-docker.sock"),
        "{body}"
    );
    let r = http.post(url("/upgrade")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("unreachable"), "{body}");
    let r = http.get(url("/")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "selfup version 1.0.0\n");
}

pub async fn the_successor_takes_over_when_the_elder_is_killed_after_starting_it(suite: Arc<Suite>) {
    // The elder is frozen the moment Docker reports the successor started;
    // on a quiet machine its go-ahead (a health answer away) can come first.
    // Then the premise did not hold: thaw it and try again in a fresh
    // environment, a few times at most.
    let mut tries = 0;
    let (env, elder, successor, upgrade) = loop {
        tries += 1;
        let (env, elder, elder_pid, successor, upgrade) = freeze_the_elder_as_its_successor_starts(&suite).await;
        // Frozen, the elder neither answers nor goes: the successor keeps waiting.
        let phase = eventually("the successor's /handover", Duration::from_secs(10), || async {
            let r = env.http.get(env.direct(env.ports[1], "/handover")).send().await.ok()?;
            r.json::<Value>().await.ok()
        })
        .await;
        if phase["phase"] == "waiting_for_go" {
            break (env, elder, successor, upgrade);
        }
        assert!(
            tries < 5 && phase["phase"] != "failed",
            "the elder was never frozen before its go-ahead in {tries} tries: {phase}"
        );
        eprintln!("    the go-ahead came before the freeze ({phase}); again, in a fresh environment");
        run(Command::new("kill").args(["-CONT", &elder_pid]));
        let _ = upgrade.await;
    };
    let [_, b] = env.ports;

    let killed = Instant::now();
    docker(&["kill", "-s", "KILL", &elder]);
    // Its answer is lost with it; the restart policy may even bring it back.
    let _ = upgrade.await;
    let survivor = env.wait_single_container().await;
    let one_instance = killed.elapsed();
    env.wait_public_version("1.1.0").await;
    let serving = killed.elapsed();
    eprintln!(
        "    from the elder's kill: one instance after {} ms, 1.1.0 through nginx after {} ms",
        one_instance.as_millis(),
        serving.as_millis()
    );
    assert!(
        successor.starts_with(&survivor),
        "{survivor} is not the successor {successor}"
    );
    assert_eq!(env.version_at(&env.direct(b, "/")).await, Some(("1.1.0".into(), b)));
    assert_eq!(env.live_port(), Some(b));
    let out = Command::new("docker").args(["logs", &survivor]).output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        log.contains("taking over without the elder's go-ahead"),
        "the successor did not take the path without the go-ahead:\n{log}"
    );
}

/// A live 1.0.0 asked to upgrade, frozen (SIGSTOP) the moment Docker
/// reports its successor started: (env, elder, elder's pid, successor, the
/// upgrade request in flight).
async fn freeze_the_elder_as_its_successor_starts(
    suite: &Arc<Suite>,
) -> (
    crate::harness::Env,
    String,
    String,
    String,
    tokio::task::JoinHandle<reqwest::Result<reqwest::Response>>,
) {
    let env = suite.live_env(&[], "1.0.0").await;
    let a = env.ports[0];
    let elder = env.container_on(a).unwrap();
    let elder_pid = docker(&["inspect", "-f", "{{.State.Pid}}", &elder]).trim().to_string();
    suite.release(&env.repository, "1.1.0");
    // Docker's start events of this project, from before the upgrade is asked.
    let since = format!(
        "{:.3}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    );
    let mut events = tokio::process::Command::new("docker")
        .args(["events", "--since", &since, "--format", "{{.ID}}"])
        .args(["--filter", "event=start", "--filter"])
        .arg(format!("label=com.docker.compose.project={}", env.project))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("docker events");
    let mut started = tokio::io::BufReader::new(events.stdout.take().unwrap()).lines();
    let upgrade = {
        let http = env.http.clone();
        let url = env.direct(a, "/upgrade");
        tokio::spawn(async move { http.post(url).send().await })
    };
    // The moment the successor runs, and usually before it can answer a
    // health check, the elder is frozen: then it can never send the go-ahead.
    let successor = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let id = started.next_line().await.unwrap().expect("docker events ended");
            if !elder.starts_with(&id) && !id.starts_with(&elder) {
                return id;
            }
        }
    })
    .await
    .expect("the successor to start");
    run(Command::new("kill").args(["-STOP", &elder_pid]));
    drop(events);
    (env, elder, elder_pid, successor, upgrade)
}

/// Sends `POST /echo` through nginx with a body that trickles in over
/// `duration`: it keeps one of nginx's workers busy for that long. `sent`
/// fires once the request head is on its way.
pub async fn slow_echo(
    public_port: u16,
    duration: Duration,
    sent: tokio::sync::oneshot::Sender<()>,
) -> Result<String, String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", public_port))
        .await
        .map_err(|e| e.to_string())?;
    let chunks = 20;
    let body: String = (0..chunks).map(|i| format!("chunk{i:02};")).collect();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
    let _ = sent.send(());
    for i in 0..chunks {
        stream
            .write_all(format!("chunk{i:02};").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        tokio::time::sleep(duration / chunks).await;
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.map_err(|e| e.to_string())?;
    match answer.starts_with("HTTP/1.1 200") && answer.ends_with(&body) {
        true => Ok(answer),
        false => Err(format!("unexpected answer: {answer}")),
    }
}

pub async fn the_elder_reclaims_the_live_socket_when_the_successor_dies_after_the_switch(suite: Arc<Suite>) {
    // The successor pauses after it has published its sockets (a fault
    // switch of the test image): that is when it dies.
    let faulty = suite.faults_image();
    let env = suite.live_env(&[("FAULT_TAKEOVER_PAUSE_MS", "3000")], "1.0.0").await;
    let [a, b] = env.ports;
    let elder = env.container_on(a).unwrap();
    suite.publish(&faulty, &env.repository, "latest");
    let load = Load::start(env.public(""), 3, 100_000, Duration::from_secs(60));
    let (sent, head_sent) = tokio::sync::oneshot::channel();
    let slow = tokio::spawn(slow_echo(env.public_port, Duration::from_secs(6), sent));
    head_sent.await.expect("the slow request starts");
    let asked = std::time::Instant::now();
    let upgrade = {
        let http = env.http.clone();
        let url = env.direct(a, "/upgrade");
        tokio::spawn(async move { http.post(url).send().await.unwrap().json::<Value>().await.unwrap() })
    };
    let successor = eventually(
        "the successor to take the live socket",
        Duration::from_secs(30),
        || async {
            let r = env.http.get(env.direct(b, "/handover")).send().await.ok()?;
            let phase: Value = r.json().await.ok()?;
            (phase["step"] == "confirming through the live socket" && env.live_port() == Some(b))
                .then(|| env.container_on(b))
                .flatten()
        },
    )
    .await;
    // Some requests reach the successor before it dies.
    load.wait_for_samples_after(std::time::Instant::now(), 10, Duration::from_secs(10))
        .await;
    docker(&["kill", "-s", "KILL", &successor]);

    let body = upgrade.await.unwrap();
    let answered = std::time::Instant::now();
    assert_eq!(body["status"], "failed", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("failed to take over"),
        "{body}"
    );
    assert_eq!(env.live_port(), Some(a));
    assert_eq!(env.selfup_containers(), vec![elder[..12].to_string()]);
    slow.await
        .unwrap()
        .expect("the request in flight during the switch completes");
    load.wait_for_samples_after(answered, 30, Duration::from_secs(10)).await;
    let samples = load.finish().await;
    // Not one request fails: neither one on the successor as it dies nor
    // one sent before the elder has taken the live socket back.
    let failed: Vec<_> = samples.iter().filter(|s| s.error.is_some()).collect();
    eprintln!(
        "    {} of {} requests failed around the successor's death",
        failed.len(),
        samples.len()
    );
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert!(samples.len() >= 1_000, "only {} requests", samples.len());
    let during = crate::load::overlapping(&samples, asked, answered).len();
    assert!(during >= 3, "only {during} requests overlapped the upgrade");
    let after: Vec<_> = samples.iter().filter(|s| s.sent >= answered).collect();
    assert!(after.len() >= 30, "{} requests after the elder's answer", after.len());
    assert!(
        after.iter().all(|s| s.version.as_deref() == Some("1.0.0")),
        "a request after the elder's answer reached another version"
    );
    assert_eq!(env.version_at(&env.public("/")).await, Some(("1.0.0".into(), a)));
}

pub async fn twenty_concurrent_upgrade_requests_run_exactly_one_upgrade(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    suite.release(&env.repository, "1.1.0");
    let requests = (0..20).map(|_| env.upgrade(env.ports[0], None));
    let answers = futures_util::future::join_all(requests).await;
    let upgraded = answers
        .iter()
        .filter(|(s, b)| *s == 200 && b["status"] == "upgraded")
        .count();
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s == 409).collect();
    assert_eq!(upgraded, 1, "{answers:?}");
    assert_eq!(refused.len(), 19, "{answers:?}");
    // Refused while the one upgrade ran; or, for a request that reached
    // the elder after it handed over (the guard's socket-table lookup makes
    // twenty requests queue), refused as no longer live: never a second one.
    for (_, body) in refused {
        let handed_over = body["error"]
            .as_str()
            .is_some_and(|e| e.contains("has handed over to its successor"));
        if !handed_over {
            assert_eq!(body["in_progress"]["requirement"], "latest", "{body}");
            assert!(body["in_progress"]["step"].is_string());
        }
    }
    env.wait_single_container().await;
    assert_eq!(
        env.version_at(&env.public("/")).await,
        Some(("1.1.0".into(), env.ports[1]))
    );
}

pub async fn an_instance_that_finds_siblings_of_a_half_finished_upgrade_converges_to_one(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    let [a, b] = env.ports;
    let elder = env.container_on(a).unwrap();
    let project = format!("com.docker.compose.project={}", env.project);
    let public = format!("{}:/run/selfup-public", env.path().join("public").display());
    // What an interrupted upgrade leaves: a stopped sibling, and a newer one
    // that was started but never took over.
    let leftover = docker(&[
        "create",
        "--label",
        &suite.label(),
        "--label",
        &project,
        "--label",
        "com.docker.compose.service=selfup",
        &suite.image(&env.repository, "1.0.0"),
    ]);
    let mut args: Vec<String> = [
        "run",
        "-d",
        "--network",
        "host",
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
    ]
    .map(String::from)
    .to_vec();
    args.extend(["-v".into(), public, "--label".into(), project.clone()]);
    args.extend(["--label".into(), suite.label()]);
    args.extend(["--label".into(), "com.docker.compose.service=selfup".into()]);
    for e in env.container_env(&elder) {
        if e.starts_with("SELFUP_") && !e.starts_with("SELFUP_PORT=") {
            args.extend(["-e".into(), e]);
        }
    }
    args.extend(["-e".into(), format!("SELFUP_PORT={b}"), suite.image("selfup", "1.1.0")]);
    let newer = docker(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let _guards = (Container(leftover.trim().into()), Container(newer.trim().into()));

    env.wait_public_version("1.1.0").await;
    let survivor = env.wait_single_container().await;
    assert!(newer.starts_with(&survivor), "{survivor} is not the newest sibling");
    assert_eq!(env.live_port(), Some(b));
}
