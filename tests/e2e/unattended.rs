//! Unattended upgrades: the dry run, the watch policy (apply and notify
//! modes, the failed target, the cooldown) and notifications, received by a
//! listener this test process runs on loopback; companion containers that
//! follow a `selfup.watch` label of their own.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::companion::inspect;
use crate::harness::Within;
use crate::harness::{APP, CompanionEnv, FAULT_VERSION, Suite, eventually, free_port};

/// A webhook endpoint on loopback that keeps every JSON body POSTed to it.
pub(crate) struct Listener {
    pub(crate) url: String,
    received: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    pub(crate) async fn start() -> Listener {
        Listener::start_answering("200 OK").await
    }

    /// A listener that keeps what it receives and answers every POST with
    /// `status` (`503 Service Unavailable`: an endpoint that fails).
    pub(crate) async fn start_answering(status: &'static str) -> Listener {
        let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/notify", socket.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let keep = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = socket.accept().await {
                let keep = keep.clone();
                tokio::spawn(async move {
                    if let Some(body) = read_request(&mut stream).await {
                        keep.lock().unwrap().push(body);
                    }
                    let head = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                    let _ = stream.write_all(head.as_bytes()).await;
                });
            }
        });
        Listener { url, received, task }
    }

    /// The events received so far whose `outcome` is `outcome`.
    pub(crate) fn with_outcome(&self, outcome: &str) -> Vec<Value> {
        let received = self.received.lock().unwrap();
        received.iter().filter(|e| e["outcome"] == outcome).cloned().collect()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A container's log followed from its start until it is gone (`docker logs
/// -f` into a file), so that an elder's last lines can be read after its
/// successor removed it. The follower ends with this value.
pub(crate) struct FollowedLog {
    path: std::path::PathBuf,
    child: std::process::Child,
}

impl FollowedLog {
    pub(crate) fn start(container: &str, path: std::path::PathBuf) -> FollowedLog {
        let file = std::fs::File::create(&path).unwrap();
        let child = std::process::Command::new("docker")
            .args(["logs", "-f", container])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        FollowedLog { path, child }
    }

    pub(crate) fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}

impl Drop for FollowedLog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds since the epoch, as the watch's metric counts them.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `selfup_watch_last_check_timestamp_seconds` of the instance at `url`'s
/// `/metrics`: when its watch last looked at the registry.
async fn last_watch_check(http: &reqwest::Client, metrics_url: &str) -> Option<u64> {
    let text = http.get(metrics_url).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|l| {
        l.strip_prefix("selfup_watch_last_check_timestamp_seconds ")?
            .trim()
            .parse::<f64>()
            .ok()
            .map(|v| v as u64)
    })
}

/// Waits until the wall clock's second is past the watch's last look, so
/// that a look stamped at or after `now_secs()` from then on is a new one.
async fn past_the_last_watch_check(http: &reqwest::Client, metrics_url: &str) {
    eventually(
        "a second past the watch's last look",
        Duration::from_secs(10),
        || async {
            let last = last_watch_check(http, metrics_url).await.unwrap_or(0);
            (now_secs() > last).then_some(())
        },
    )
    .await
}

/// Waits until the watch has looked at the registry at or after `since`
/// (seconds since the epoch).
async fn a_watch_check_since(http: &reqwest::Client, metrics_url: &str, since: u64) {
    eventually("the watch to look after the hook", Duration::from_secs(30), || async {
        (last_watch_check(http, metrics_url).await? >= since).then_some(())
    })
    .await
}

/// One HTTP request's JSON body (by its Content-Length).
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Value> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buffer).into_owned();
        let Some(end) = text.find("\r\n\r\n") else { continue };
        let length: usize = text[..end]
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        if buffer.len() >= end + 4 + length {
            return serde_json::from_slice(&buffer[end + 4..end + 4 + length]).ok();
        }
    }
}

pub async fn a_dry_run_answers_what_an_upgrade_would_do_and_changes_nothing(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    let [a, b] = env.ports;
    suite.publish(&suite.image("selfup", "1.1.0"), &env.repository, "1.1.0");
    let before = env.selfup_containers();
    let on_a = |path: &str| env.direct(a, path);

    let upgrade = env.get_json(&on_a("/upgrade/1?dry_run=true")).await;
    assert_eq!(upgrade["dry_run"], true, "{upgrade}");
    assert_eq!(upgrade["decision"], "upgrade", "{upgrade}");
    assert_eq!(upgrade["running"], "1.0.0");
    assert_eq!(upgrade["version"], "1.1.0");
    assert!(upgrade["image"].as_str().unwrap().ends_with(":1.1.0"), "{upgrade}");
    assert!(upgrade["digest"].as_str().unwrap().starts_with("sha256:"), "{upgrade}");
    assert!(upgrade["created"].as_u64().unwrap() > 0, "{upgrade}");
    assert_eq!(upgrade["ports"]["live"], a);
    assert_eq!(upgrade["ports"]["successor"], b);

    // `:latest` is still 1.0.0; an exact lower one is a rollback; a lower
    // one not named exactly, and one the registry lacks, are refused.
    assert_eq!(env.get_json(&on_a("/upgrade?dry_run=true")).await["decision"], "no-op");
    let missing = env.get_json(&on_a("/upgrade/7?dry_run=1")).await;
    assert_eq!(missing["decision"], "refused", "{missing}");
    assert_eq!(missing["would_answer"], 404, "{missing}");
    assert_eq!(missing["available"], serde_json::json!(["1.1.0", "1.0.0"]), "{missing}");
    let bad = env
        .http
        .get(env.direct(a, "/upgrade/1?dry_run=perhaps"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let bad: Value = bad.json().await.unwrap();
    assert!(bad["error"].as_str().unwrap().contains("dry_run"), "{bad}");

    // Nothing was started or recorded.
    assert_eq!(env.selfup_containers(), before);
    assert_eq!(env.status(a).await["history"], serde_json::json!([]));
    assert_eq!(env.version_at(&env.public("/")).await, Some(("1.0.0".into(), a)));
}

pub async fn a_tag_pushed_while_watching_is_upgraded_to_without_any_request_and_reported(suite: Arc<Suite>) {
    let listener = Listener::start().await;
    // An endpoint nothing listens on, and one that answers 503: they must
    // change nothing; each is tried 3 times, and the failure is logged.
    let dead = format!("http://127.0.0.1:{}/gone", free_port());
    let failing = Listener::start_answering("503 Service Unavailable").await;
    let urls = format!(r#"["{dead}", "{}", "{}"]"#, failing.url, listener.url);
    let env = suite
        .live_env(
            &[
                ("SELFUP_WATCH", "1"),
                ("SELFUP_WATCH_INTERVAL_SECS", "1"),
                ("SELFUP_NOTIFY_URLS", &urls),
            ],
            "1.0.0",
        )
        .await;
    // The elder reports the upgrade: its log is read after it is gone.
    let elder = env.container_on(env.ports[0]).unwrap();
    let elder_log = FollowedLog::start(&elder, env.path().join("elder.log"));
    // No registry notification reaches this instance: the poll finds the tag.
    suite.publish(&suite.image("selfup", "1.1.0"), &env.repository, "1.1.0");
    let port = env.wait_public_version("1.1.0").await;
    assert_eq!(port, env.ports[1]);
    env.wait_single_container().await;
    // Tried 3 times (after 0.5 s and 2 s more), then logged, by the elder,
    // before it exits (it waits for its reports, at most 5 s).
    let upgraded = || {
        failing
            .with_outcome("upgraded")
            .into_iter()
            .filter(|e| e["to"] == "1.1.0")
            .count()
    };
    eventually("3 tries of the failing endpoint", Duration::from_secs(20), || async {
        (upgraded() >= 3).then_some(())
    })
    .await;
    eventually("the elder to exit", Duration::from_secs(30), || async {
        (!crate::harness::exists(&elder)).then_some(())
    })
    .await;
    assert_eq!(upgraded(), 3, "the failing endpoint was tried {} times", upgraded());
    let log = elder_log.text();
    for url in [&dead, &failing.url] {
        let line = log
            .lines()
            .find(|l| l.contains("a notification was not delivered") && l.contains(url.as_str()))
            .unwrap_or_else(|| panic!("the elder did not log the failure of {url}:\n{log}"));
        assert!(line.contains("attempts=3") || line.contains("\"attempts\":3"), "{line}");
    }
    let reported = eventually("the upgrade's notification", Duration::from_secs(20), || async {
        listener.with_outcome("upgraded").into_iter().next()
    })
    .await;
    assert_eq!(reported["kind"], "upgrade", "{reported}");
    assert_eq!(reported["from"], "1.0.0", "{reported}");
    assert_eq!(reported["to"], "1.1.0", "{reported}");
    assert!(reported["duration_ms"].as_u64().unwrap() > 0, "{reported}");
    assert!(
        reported["text"]
            .as_str()
            .unwrap()
            .contains("upgraded from 1.0.0 to 1.1.0"),
        "{reported}"
    );
    let history = env.status(port).await["history"].clone();
    assert_eq!(history[0]["requested"], "=1.1.0", "{history}");
    assert_eq!(history[0]["outcome"], "upgraded", "{history}");
    // The successor watches in turn: the next tag is picked up too.
    suite.publish(&suite.image("selfup", "1.2.0"), &env.repository, "1.2.0");
    env.wait_public_version("1.2.0").await;
    env.wait_single_container().await;
}

pub async fn notify_mode_reports_a_newer_version_once_and_changes_nothing(suite: Arc<Suite>) {
    let listener = Listener::start().await;
    let urls = format!(r#"["{}"]"#, listener.url);
    let env = suite
        .live_env(
            &[
                ("SELFUP_WATCH", "1"),
                ("SELFUP_WATCH_INTERVAL_SECS", "1"),
                ("SELFUP_WATCH_MODE", "notify"),
                ("SELFUP_NOTIFY_URLS", &urls),
            ],
            "1.0.0",
        )
        .await;
    let before = env.selfup_containers();
    suite.publish(&suite.image("selfup", "1.1.0"), &env.repository, "1.1.0");
    let found = eventually("the notification of 1.1.0", Duration::from_secs(30), || async {
        listener.with_outcome("available").into_iter().next()
    })
    .await;
    assert_eq!(
        (found["from"].as_str(), found["to"].as_str()),
        (Some("1.0.0"), Some("1.1.0")),
        "{found}"
    );
    // Each turn of the watch logs the version it saw; three turns, one report.
    eventually(
        "three turns of the watch that saw 1.1.0",
        Duration::from_secs(30),
        || async { (env.logs().matches("a newer version is available").count() >= 3).then_some(()) },
    )
    .await;
    assert_eq!(listener.with_outcome("available").len(), 1, "reported once");
    assert_eq!(env.selfup_containers(), before);
    assert_eq!(
        env.version_at(&env.public("/")).await,
        Some(("1.0.0".into(), env.ports[0]))
    );
}

pub async fn a_failed_target_is_not_tried_again_and_a_young_one_waits_for_the_cooldown(suite: Arc<Suite>) {
    // Watch 9: the registry has 9.0.0, the suite's image that exits at once.
    let env = suite
        .live_env(&[("SELFUP_WATCH", "9"), ("SELFUP_WATCH_INTERVAL_SECS", "1")], "1.0.0")
        .await;
    let [a, _] = env.ports;
    suite.publish(&suite.image("fixtures", "crash"), &env.repository, FAULT_VERSION);
    eventually(
        "the watch to skip the failed image",
        Duration::from_secs(60),
        || async { env.logs().contains("this image failed before").then_some(()) },
    )
    .await;
    let history = env.status(a).await["history"].clone();
    let tries = history.as_array().unwrap();
    assert_eq!(tries.len(), 1, "tried once: {history}");
    assert_eq!(tries[0]["outcome"], "failed", "{history}");
    assert_eq!(tries[0]["requested"], format!("={FAULT_VERSION}"), "{history}");
    assert_eq!(env.version_at(&env.public("/")).await, Some(("1.0.0".into(), a)));
    env.wait_single_container().await;

    // A cooldown longer than any image's age here: 1.1.0 waits.
    let env = suite
        .live_env(
            &[
                ("SELFUP_WATCH", "1"),
                ("SELFUP_WATCH_INTERVAL_SECS", "1"),
                ("SELFUP_MIN_IMAGE_AGE_SECS", "315360000"),
            ],
            "1.0.0",
        )
        .await;
    let before = env.selfup_containers();
    suite.publish(&suite.image("selfup", "1.1.0"), &env.repository, "1.1.0");
    eventually("the cooldown to hold 1.1.0 back", Duration::from_secs(30), || async {
        env.logs().contains("held back by the cooldown").then_some(())
    })
    .await;
    assert_eq!(env.selfup_containers(), before);
    assert_eq!(env.status(env.ports[0]).await["history"], serde_json::json!([]));
}

/// A registry started by `registry/start.sh` (the shipped recipe: htpasswd,
/// the notification token, `registry/config.yml`'s endpoint turned on) in a
/// state directory of its own; stopped, its images untagged and its data
/// removed on drop.
struct NotifyingRegistry {
    run: String,
    addr: String,
    state: std::path::PathBuf,
    images: Vec<String>,
}

impl NotifyingRegistry {
    fn start(run: &str, state: std::path::PathBuf, hook_url: &str) -> NotifyingRegistry {
        let addr = format!("127.0.0.1:{}", free_port());
        let registry = NotifyingRegistry {
            run: run.to_string(),
            addr,
            state,
            images: Vec::new(),
        };
        crate::harness::run(registry.script().env("REGISTRY_HOOK_URL", hook_url));
        registry
    }

    fn script(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(crate::harness::repo_root().join("registry/start.sh"));
        let port = self.addr.rsplit(':').next().unwrap();
        cmd.env("REGISTRY_ADDR", &self.addr)
            .env("REGISTRY_STATE", &self.state)
            .env("REGISTRY_SOCKET", self.socket_dir().join("registry.sock"))
            .env("REGISTRY_DOOR", format!("selfup-e2e-{}-door-{port}", self.run))
            .env("REGISTRY_DOOR_LABEL", format!("selfup.e2e={}", self.run));
        cmd
    }

    /// The directory of the registry's socket, which selfup mounts.
    fn socket_dir(&self) -> std::path::PathBuf {
        self.state.with_extension("sock")
    }

    fn auth(&self, file: &str) -> std::path::PathBuf {
        self.state.join("auth").join(file)
    }

    /// Pushes `source` as `repository:tag`, with the credentials start.sh generated.
    fn push(&mut self, source: &str, repository: &str, tag: &str) {
        let target = format!("{}/{repository}:{tag}", self.addr);
        crate::harness::docker(&["tag", source, &target]);
        self.images.push(target.clone());
        crate::harness::run(
            std::process::Command::new("docker")
                .env("DOCKER_CONFIG", self.state.join("auth"))
                .args(["push", "-q", &target]),
        );
        crate::harness::sign_with(&target, Some(("selfup", &self.state.join("auth"))));
    }
}

impl Drop for NotifyingRegistry {
    fn drop(&mut self) {
        let _ = self.script().arg("stop").output();
        if !self.images.is_empty() {
            let _ = std::process::Command::new("docker")
                .arg("rmi")
                .args(&self.images)
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

pub async fn a_push_to_the_registry_upgrades_through_its_notification_without_any_request(suite: Arc<Suite>) {
    // Polling every hour: only the registry's notification can be quick.
    let env = suite.env(&[("SELFUP_WATCH", "1"), ("SELFUP_WATCH_INTERVAL_SECS", "3600")]);
    let hook = format!("http://127.0.0.1:{}/hooks/registry", env.deploy_port);
    let mut registry = NotifyingRegistry::start(&suite.run_id, env.path().join("registry"), &hook);
    let repository = env.repository.clone();
    for tag in ["1.0.0", "latest"] {
        registry.push(&suite.image("selfup", "1.0.0"), &repository, tag);
    }
    let config = registry.auth("config.json");
    let token_file = registry.auth("hook_token");
    let socket_dir = registry.socket_dir();
    let vars = [
        ("SELFUP_REGISTRY", registry.addr.as_str()),
        ("SELFUP_REGISTRY_CONFIG", config.to_str().unwrap()),
        ("SELFUP_HOOK_TOKEN_FILE", token_file.to_str().unwrap()),
        ("SELFUP_REGISTRY_DIR", socket_dir.to_str().unwrap()),
        ("SELFUP_REGISTRY_SOCKET", "/run/selfup-registry/registry.sock"),
    ];
    env.compose_with(&vars, &["up", "-d"]);
    env.wait_public_version("1.0.0").await;
    let token = std::fs::read_to_string(&token_file).unwrap().trim().to_string();

    // Only nginx's deploy server passes the hook, and only with the token.
    let post = |url: String, token: Option<String>, body: Value| {
        let http = env.http.clone();
        async move {
            let mut request = http.post(url).json(&body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let r = request.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let deploy = format!("http://127.0.0.1:{}/hooks/registry", env.deploy_port);
    // The pushes of 1.0.0 were queued while selfup was not up: the registry
    // retries them until they arrive, and they change nothing.
    eventually("the queued notifications of 1.0.0", Duration::from_secs(60), || async {
        env.logs()
            .lines()
            .any(|l| l.contains("registry notification") && !l.contains("pushes=0"))
            .then_some(())
    })
    .await;
    let empty = || serde_json::json!({"events": []});
    let (status, _) = post(env.public("/hooks/registry"), Some(token.clone()), empty()).await;
    assert_eq!(status, 403, "the public side refuses the hook");
    let (status, body) = post(deploy.clone(), Some("wrong-token-0123456789".into()), empty()).await;
    assert_eq!(status, 401, "{body}");
    // Something newer is in the registry, outside the policy (`1`): 9.0.0,
    // an image that exits at once. Its own notification, a duplicate, a
    // late one for an older tag and one naming 9.0.0 are one more look
    // each, and the look resolves the policy itself: 1.0.0 stays.
    registry.push(&suite.image("fixtures", "crash"), &repository, FAULT_VERSION);
    let metrics = env.direct(env.ports[0], "/metrics");
    past_the_last_watch_check(&env.http, &metrics).await;
    let stale = serde_json::json!({"events": [
        {"action": "push", "target": {"repository": repository, "tag": "1.0.0"}},
        {"action": "push", "target": {"repository": repository, "tag": "0.9.0"}},
        {"action": "push", "target": {"repository": repository, "tag": FAULT_VERSION}},
    ]});
    for _ in 0..2 {
        let posted = now_secs();
        let (status, body) = post(deploy.clone(), Some(token.clone()), stale.clone()).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["pushes"], 3, "{body}");
        assert_eq!(body["checking"], true, "{body}");
        // Judged after the watch has looked, not at once.
        a_watch_check_since(&env.http, &metrics, posted).await;
        past_the_last_watch_check(&env.http, &metrics).await;
    }
    assert!(
        env.status(env.ports[0]).await["history"].as_array().unwrap().is_empty(),
        "a stale or foreign notification started an upgrade"
    );
    let (status, body) = post(deploy.clone(), Some(token.clone()), serde_json::json!({"nothing": 1})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(env.selfup_containers().len(), 1);
    assert_eq!(
        env.version_at(&env.public("/")).await,
        Some(("1.0.0".into(), env.ports[0]))
    );

    // The push itself: the registry notifies, the watch looks, the upgrade runs.
    registry.push(&suite.image("selfup", "1.1.0"), &repository, "1.1.0");
    let pushed = std::time::Instant::now();
    let port = env.wait_public_version("1.1.0").await;
    let latency = pushed.elapsed();
    eprintln!(
        "    push of 1.1.0 to 1.1.0 answering through nginx: {} ms",
        latency.as_millis()
    );
    assert_eq!(port, env.ports[1]);
    assert!(latency < Duration::from_secs(30), "{latency:?}");
    env.wait_single_container().await;
    let history = env.status(port).await["history"].clone();
    assert_eq!(history.as_array().unwrap().len(), 1, "{history}");
    assert_eq!(history[0]["requested"], "=1.1.0", "{history}");
}

/// A repository of this companion test's own in the suite's registry, with
/// `tags` of the suite's companion app image published to it (`(tag, source
/// tag)`), and removed from this machine when the test ends.
fn own_repository(w: &mut CompanionEnv, tags: &[(&str, &str)]) -> String {
    let repository = format!("t{}/app", w.test);
    for (tag, source) in tags {
        publish_to(w, &repository, tag, source);
    }
    repository
}

fn publish_to(w: &mut CompanionEnv, repository: &str, tag: &str, source: &str) {
    let suite = w.suite.clone();
    suite.publish(&suite.image(APP, source), repository, tag);
    w.images.push(suite.image(repository, tag));
}

/// The image reference a container runs (its `Config.Image`); empty while
/// no container has the name (mid-swap, between the rename and the create).
fn image_of(container: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.Config.Image}}", container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Whether a container of that name runs (none may have it, mid-swap).
fn running(container: &str) -> bool {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.State.Running}}", container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "true"
}

/// `GET /metrics` of the companion: the value of `series`, if it is there.
async fn metric(w: &CompanionEnv, series: &str) -> Option<f64> {
    let text = w
        .suite
        .http
        .get(w.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

pub async fn a_labelled_companion_container_follows_its_policy_and_a_tag_outside_it_is_left_alone(suite: Arc<Suite>) {
    let listener = Listener::start().await;
    let mut w = suite.companion_env();
    let repository = own_repository(&mut w, &[("1.0.0", "1.0.0")]);
    let urls = format!(r#"SELFUP_NOTIFY_URLS=["{}"]"#, listener.url);
    let extra: Vec<String> = [
        "-e",
        "SELFUP_WATCH_INTERVAL_SECS=1",
        "-e",
        &urls,
        "-e",
        "RUST_LOG=info,selfup=debug",
    ]
    .map(String::from)
    .into();
    w.start_companion(&[&suite.registry], &extra, false).await;
    let old = suite.image(&repository, "1.0.0");
    let app = w.target(
        "app",
        &["--label", "selfup.enable=true", "--label", "selfup.watch=1"],
        &old,
        true,
    );
    // Labelled with a policy, but not for companion updates: left alone.
    let stranger = w.target("stranger", &["--label", "selfup.watch=1"], &old, true);
    let stranger_id = inspect(&stranger)["Id"].clone();

    // 2.0.0 is the newest tag, outside the policy; 1.1.0 is inside it.
    publish_to(&mut w, &repository, "2.0.0", "2.0.0");
    publish_to(&mut w, &repository, "1.1.0", "1.1.0");
    let new = suite.image(&repository, "1.1.0");
    eventually("the app to run 1.1.0", Duration::from_secs(60), || async {
        (image_of(&app) == new && running(&app)).then_some(())
    })
    .await;
    let reported = eventually("the update's notification", Duration::from_secs(20), || async {
        listener.with_outcome("updated").into_iter().next()
    })
    .await;
    assert_eq!(reported["kind"], "update", "{reported}");
    assert_eq!(reported["container"], app.as_str(), "{reported}");
    assert_eq!(reported["from"], old.as_str(), "{reported}");
    assert_eq!(reported["to"], new.as_str(), "{reported}");

    // Three more turns judge 1.1.0 current, with 2.0.0 in the registry.
    let updated_at = w.logs().len();
    eventually("three turns after the update", Duration::from_secs(30), || async {
        let later = w.logs().get(updated_at..).unwrap_or_default().to_string();
        let turns = later
            .lines()
            .filter(|l| l.contains("container watch: up to date") && l.contains(&app))
            .count();
        (turns >= 3).then_some(())
    })
    .await;
    assert_eq!(image_of(&app), new, "the tag outside the policy is left alone");
    assert_eq!(listener.with_outcome("updated").len(), 1, "one update");
    assert_eq!(image_of(&stranger), old);
    assert_eq!(inspect(&stranger)["Id"], stranger_id, "not recreated");
    let logs = w.logs();
    assert!(
        logs.contains(&format!("container {stranger} is not labelled selfup.enable=true")),
        "{logs}"
    );
    assert_eq!(
        logs.matches(&format!("container {stranger} is not labelled")).count(),
        1,
        "said once, not at every turn"
    );
    assert_eq!(
        metric(&w, r#"selfup_companion_updates_total{outcome="updated"}"#).await,
        Some(1.0)
    );
    // The container watch reports its turns as the self-upgrade's watch does:
    // the stranger's refusal is the operator's to fix, not a failed check.
    let checked = metric(&w, "selfup_watch_last_check_timestamp_seconds").await;
    assert!(checked.is_some_and(|t| t >= 1.7e9), "{checked:?}");
    assert_eq!(metric(&w, "selfup_watch_last_check_success").await, Some(1.0));
}

pub async fn a_registry_push_notification_updates_a_labelled_companion_container_at_once(suite: Arc<Suite>) {
    let token = "hook-token-for-companions-0123";
    let mut w = suite.companion_env();
    let repository = own_repository(&mut w, &[("1.0.0", "1.0.0")]);
    let old = suite.image(&repository, "1.0.0");
    let app = w.target(
        "app",
        &["--label", "selfup.enable=true", "--label", "selfup.watch=1"],
        &old,
        true,
    );
    // Looking only hourly: after its first look, only the hook wakes the watch.
    let extra: Vec<String> = [
        "-e",
        "SELFUP_WATCH_INTERVAL_SECS=3600",
        "-e",
        &format!("SELFUP_HOOK_TOKEN={token}"),
        "-e",
        "RUST_LOG=info,selfup=debug",
    ]
    .map(String::from)
    .into();
    w.start_companion(&[&suite.registry], &extra, false).await;
    eventually("the watch's first look", Duration::from_secs(30), || async {
        w.logs().contains("container watch: up to date").then_some(())
    })
    .await;
    publish_to(&mut w, &repository, "1.1.0", "1.1.0");
    let hook = |repository: &str| {
        let body = json!({"events": [
            {"action": "push", "target": {"repository": repository, "tag": "1.1.0"}},
        ]});
        w.suite
            .http
            .post(w.url("/hooks/registry"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    // A push to another repository wakes the watch, which leaves the app
    // alone, although 1.1.0 of the app's own repository is there: judged
    // once the watch has looked, not at once.
    let metrics = w.url("/metrics");
    past_the_last_watch_check(&w.suite.http, &metrics).await;
    let posted = now_secs();
    let other = hook("someone/else").await.unwrap();
    assert_eq!(other.status(), 202);
    let answer: Value = other.json().await.unwrap();
    assert_eq!(answer["checking_containers"], true, "{answer}");
    a_watch_check_since(&w.suite.http, &metrics, posted).await;
    assert!(
        w.logs()
            .lines()
            .any(|l| l.contains("woken by the registry hook") && l.contains("someone/else")),
        "the hook did not wake the container watch"
    );
    assert_eq!(image_of(&app), old);
    assert!(running(&app), "the app no longer runs");

    let pushed = std::time::Instant::now();
    let answer: Value = hook(&repository).await.unwrap().json().await.unwrap();
    assert_eq!(answer["checking_containers"], true, "{answer}");
    let new = suite.image(&repository, "1.1.0");
    eventually("the app to run 1.1.0", Duration::from_secs(30), || async {
        (image_of(&app) == new && running(&app)).then_some(())
    })
    .await;
    eprintln!(
        "    hook of the push to the app running 1.1.0: {} ms",
        pushed.elapsed().as_millis()
    );
}

pub async fn only_the_live_instance_watches_and_an_elder_that_hands_over_stops_watching(suite: Arc<Suite>) {
    let env = suite
        .live_env(&[("SELFUP_WATCH", "1"), ("SELFUP_WATCH_INTERVAL_SECS", "1")], "1.0.0")
        .await;
    let [a, b] = env.ports;
    let elder = env.container_on(a).unwrap();
    let elder_log = FollowedLog::start(&elder, env.path().join("elder.log"));
    suite.publish(&suite.image("selfup", "1.1.0"), &env.repository, "1.1.0");
    env.wait_public_version("1.1.0").await;
    let successor = env.wait_single_container().await;
    env.wait_takeover_done(b).await;
    eventually("the elder to exit", Duration::from_secs(30), || async {
        (!crate::harness::exists(&elder)).then_some(())
    })
    .await;

    // The elder: one upgrade by its watch, then its loop stops; it never
    // looks again, though its watch turned every second.
    let log = elder_log.text();
    let lines: Vec<&str> = log.lines().collect();
    let at = |what: &str| lines.iter().position(|l| l.contains(what));
    let upgrading = lines.iter().filter(|l| l.contains("watch: upgrading")).count();
    assert_eq!(upgrading, 1, "the elder's watch started {upgrading} upgrades:\n{log}");
    let upgraded =
        at("watch: upgraded; the successor watches").unwrap_or_else(|| panic!("no upgrade by the watch:\n{log}"));
    let stopped = at("watch: stopped").unwrap_or_else(|| panic!("the elder's watch did not stop:\n{log}"));
    assert!(upgraded < stopped, "{log}");
    let after: Vec<_> = lines[upgraded + 1..]
        .iter()
        .filter(|l| l.contains("watch:") && !l.contains("watch: stopped"))
        .collect();
    assert!(
        after.is_empty(),
        "the elder's watch went on after the handover: {after:?}"
    );

    // The successor: its loop starts once it is the live one, not before.
    // selfup logs to stderr, which `docker logs` keeps apart.
    let out = std::process::Command::new("docker")
        .args(["logs", &successor])
        .output_within()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = log.lines().collect();
    let live = lines
        .iter()
        .position(|l| l.contains("this instance is the live one"))
        .unwrap_or_else(|| panic!("the successor never took over:\n{log}"));
    let watching = lines
        .iter()
        .position(|l| l.contains("watching the registry"))
        .unwrap_or_else(|| panic!("the successor does not watch:\n{log}"));
    assert!(live < watching, "the successor watched before it was live:\n{log}");
    assert_eq!(
        lines.iter().filter(|l| l.contains("watching the registry")).count(),
        1,
        "{log}"
    );
}

pub async fn an_elder_waits_at_most_five_seconds_for_a_report_that_hangs(suite: Arc<Suite>) {
    // An endpoint that takes every POST and never answers: each try waits
    // out its 5 s timeout, three tries 17.5 s in all.
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hang", socket.local_addr().unwrap());
    let first = Arc::new(Mutex::new(None::<std::time::Instant>));
    let seen = first.clone();
    let hang = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = socket.accept().await {
            seen.lock().unwrap().get_or_insert_with(std::time::Instant::now);
            held.push(stream);
        }
    });
    let _abort = AbortOnDrop(hang);
    let urls = format!(r#"["{url}"]"#);
    let env = suite.live_env(&[("SELFUP_NOTIFY_URLS", &urls)], "1.0.0").await;
    let [a, b] = env.ports;
    let elder = env.container_on(a).unwrap();
    suite.release(&env.repository, "1.1.0");
    let (status, body) = env.upgrade(a, None).await;
    assert_eq!(status, 200, "{body}");
    env.wait_takeover_done(b).await;
    let reported = eventually("the report to reach the endpoint", Duration::from_secs(10), || async {
        *first.lock().unwrap()
    })
    .await;
    eventually("the elder to exit", Duration::from_secs(60), || async {
        (!crate::harness::exists(&elder)).then_some(())
    })
    .await;
    let took = reported.elapsed();
    eprintln!(
        "    the elder was gone {} ms after its report went out",
        took.as_millis()
    );
    // Its linger (4.5 s), then at most 5 s for the report, and the
    // successor's removal: well short of the 17.5 s the tries would take.
    let bound = crate::harness::LINGER + Duration::from_secs(5) + Duration::from_secs(3);
    assert!(
        took <= bound,
        "the elder was gone {took:?} after its report, more than {bound:?}"
    );
    env.wait_public_version("1.1.0").await;
}

/// Aborts a background task when the test ends, even on failure.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
