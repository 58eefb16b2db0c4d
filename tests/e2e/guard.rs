//! Only the operator controls upgrades: the control endpoints answer the
//! operator's `curl` and no web page in a browser on the host; a registry's
//! answers cannot steer an upgrade; the registry setup starts asks everyone
//! for credentials, and selfup pulls with them.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{
    APP, Nobody, Suite, docker, eventually, free_port, inspect, repo_root, run as run_cmd, run_quietly,
};

pub async fn browser_requests_are_refused_on_every_control_endpoint_while_curl_upgrades(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    // A newer release waits, so a request that got through would upgrade.
    suite.release(&env.repository, "1.1.0");
    let before = env.selfup_containers();
    let port = env.ports[0];
    let endpoints = [
        ("GET", "/upgrade"),
        ("POST", "/upgrade"),
        ("GET", "/upgrade/1"),
        ("POST", "/upgrade/=1.1.0"),
        ("POST", "/rollback"),
        ("POST", "/pause"),
        ("POST", "/resume"),
        ("GET", "/status"),
        ("GET", "/events"),
        ("GET", "/metrics"),
        ("GET", "/handover"),
        ("POST", "/handover"),
    ];
    let browser_headers = [
        ("origin", "https://evil.example".to_string()),
        ("sec-fetch-site", "cross-site".to_string()),
        ("sec-fetch-site", "same-site".to_string()),
        // DNS rebinding: the page's own name, now resolving to 127.0.0.1.
        ("host", format!("evil.example:{port}")),
    ];
    for (method, path) in endpoints {
        for (name, value) in &browser_headers {
            let r = env
                .http
                .request(method.parse().unwrap(), env.direct(port, path))
                .header(*name, value)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 403, "{method} {path} with {name}: {value}");
            let body: Value = r.json().await.expect("a JSON body");
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
        }
    }
    env.assert_elder_unchanged(&before, "1.0.0").await;

    // The operator's plain request still works, on the same endpoints.
    let r = env.http.get(env.direct(port, "/status")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (status, body) = env.upgrade(port, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["to"], "1.1.0", "{body}");
}

/// What the fake registry sends for a tag list.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// A first page whose `Link` points at another port.
    LinkElsewhere(u16),
    /// A redirect to the live instance's own downgrade endpoint.
    RedirectTo(u16),
    /// 50 MB of tag list, with no length announced.
    Flood,
    /// Pages without end, each linking to the next on the registry itself.
    EndlessPages,
}

/// A registry on loopback that answers every request with `answer`.
async fn fake_registry(answer: Arc<std::sync::Mutex<Answer>>) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let answer = *answer.lock().unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = match answer {
                    Answer::LinkElsewhere(other) => {
                        let body = r#"{"name":"x","tags":["1.0.0"]}"#;
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                             Link: <http://127.0.0.1:{other}/v2/x/tags/list?last=1.0.0&n=100>; rel=\"next\"\r\n\
                             Connection: close\r\n\r\n{body}",
                            body.len()
                        );
                        conn.write_all(reply.as_bytes()).await
                    }
                    Answer::EndlessPages => {
                        let body = r#"{"name":"x","tags":["1.0.0"]}"#;
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                             Link: </v2/x/tags/list?last=1.0.0&n=100>; rel=\"next\"\r\n\
                             Connection: close\r\n\r\n{body}",
                            body.len()
                        );
                        conn.write_all(reply.as_bytes()).await
                    }
                    Answer::RedirectTo(port) => {
                        let reply = format!(
                            "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{port}/upgrade/=0.1.0\r\n\
                             Content-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        conn.write_all(reply.as_bytes()).await
                    }
                    Answer::Flood => {
                        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n";
                        if conn.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let _ = conn.write_all(br#"{"name":"x","tags":["#).await;
                        let chunk = "\"1.0.0\",".repeat(8 * 1024);
                        let mut sent = 0;
                        // Bounded: 50 MB, or until the client hangs up.
                        while sent < 50_000_000 {
                            if conn.write_all(chunk.as_bytes()).await.is_err() {
                                return;
                            }
                            sent += chunk.len();
                        }
                        conn.write_all(br#""1.0.0"]}"#).await
                    }
                };
            });
        }
    });
    port
}

pub async fn a_registry_that_redirects_links_elsewhere_or_floods_gets_a_bounded_502_and_nothing_changes(
    suite: Arc<Suite>,
) {
    let answer = Arc::new(std::sync::Mutex::new(Answer::Flood));
    let registry = fake_registry(answer.clone()).await;
    let env = suite
        .live_env(&[("SELFUP_REGISTRY", &format!("127.0.0.1:{registry}"))], "1.0.0")
        .await;
    let before = env.selfup_containers();
    let port = env.ports[0];
    // Where a followed link would go: nothing may connect to it.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_port = elsewhere.local_addr().unwrap().port();

    for (case, says) in [
        (Answer::LinkElsewhere(elsewhere_port), "not followed"),
        (Answer::RedirectTo(port), "which is not followed"),
        (Answer::Flood, "larger than 1048576 bytes"),
        (Answer::EndlessPages, "more than 100 pages"),
    ] {
        *answer.lock().unwrap() = case;
        let asked = std::time::Instant::now();
        let (status, body) = env.upgrade(port, Some("1")).await;
        assert_eq!(status, 502, "{case:?}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(says), "{case:?}: {error}");
        let took = asked.elapsed();
        eprintln!("    {case:?}: 502 in {} ms", took.as_millis());
        // Every read of the registry is bounded to 30 s in all.
        assert!(took <= Duration::from_secs(35), "{case:?}: answered after {took:?}");
        env.assert_elder_unchanged(&before, "1.0.0").await;
    }
    let followed = futures_util::FutureExt::now_or_never(elsewhere.accept());
    assert!(followed.is_none(), "a request reached the port the link named");
}

/// A registry started by `registry/start.sh` into a directory of the test's,
/// with the images pushed to it; stopped and removed on drop.
pub(crate) struct SetupRegistry {
    run: String,
    pub(crate) addr: String,
    pub(crate) state: std::path::PathBuf,
    docker_config: std::path::PathBuf,
    images: Vec<String>,
}

impl SetupRegistry {
    pub(crate) fn start(run: &str) -> SetupRegistry {
        SetupRegistry::start_with(run, &[])
    }

    /// [`SetupRegistry::start`] with more variables in the script's environment.
    fn start_with(run: &str, vars: &[(&str, &str)]) -> SetupRegistry {
        let addr = format!("127.0.0.1:{}", free_port());
        let state = std::env::temp_dir().join(format!("selfup-e2e-{run}-registry-{}", addr.replace([':', '.'], "-")));
        let docker_config = state.with_extension("docker");
        let registry = SetupRegistry {
            run: run.to_string(),
            addr,
            state,
            docker_config,
            images: Vec::new(),
        };
        std::fs::create_dir_all(&registry.docker_config).unwrap();
        run_cmd(registry.script().envs(vars.iter().copied()).arg("start"));
        registry
    }

    fn script(&self) -> Command {
        let mut cmd = Command::new(repo_root().join("registry/start.sh"));
        cmd.env("REGISTRY_ADDR", &self.addr)
            .env("REGISTRY_STATE", &self.state)
            .env("REGISTRY_NAME", &self.addr)
            .env("REGISTRY_SOCKET", self.socket())
            .env("REGISTRY_DOOR", self.door())
            .env("REGISTRY_DOOR_LABEL", format!("selfup.e2e={}", self.run));
        cmd
    }

    /// The registry's socket, in a directory of its own that start.sh makes root's.
    fn socket(&self) -> std::path::PathBuf {
        self.state.with_extension("sock").join("registry.sock")
    }

    /// The door's container, which holds the registry's port.
    fn door(&self) -> String {
        format!("selfup-e2e-{}-door-{}", self.run, self.addr.rsplit(':').next().unwrap())
    }

    /// Compose's variables for selfup to call the registry at its socket.
    pub(crate) fn compose_vars(&self, env: &mut crate::harness::Env) {
        let dir = self.socket().parent().unwrap().to_str().unwrap().to_string();
        env.set_compose_var("SELFUP_REGISTRY_DIR", &dir);
        env.set_compose_var("SELFUP_REGISTRY_SOCKET", "/run/selfup-registry/registry.sock");
    }

    /// `docker push` with a client config of the test's own (no credentials
    /// until [`login`](Self::login)); whether it succeeded, and its output.
    pub(crate) fn push(&mut self, source: &str, target: &str) -> (bool, String) {
        let target = format!("{}/{target}", self.addr);
        docker(&["tag", source, &target]);
        self.images.push(target.clone());
        let out = Command::new("docker")
            .arg("--config")
            .arg(&self.docker_config)
            .args(["push", &target])
            .output()
            .unwrap();
        (out.status.success(), crate::harness::output_text(&out))
    }

    pub(crate) fn login(&self) {
        let password = std::fs::read(self.state.join("auth/password")).unwrap();
        let mut child = Command::new("docker")
            .arg("--config")
            .arg(&self.docker_config)
            .args(["login", &self.addr, "-u", "selfup", "--password-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&password).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "docker login: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for SetupRegistry {
    fn drop(&mut self) {
        run_quietly(self.script().arg("stop"));
        if !self.images.is_empty() {
            run_quietly(Command::new("docker").args(["rmi", "-f"]).args(&self.images));
        }
        let _ = std::fs::remove_dir_all(&self.state);
        let _ = std::fs::remove_dir_all(&self.docker_config);
        let _ = std::fs::remove_dir_all(self.socket().parent().unwrap());
    }
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

pub async fn the_setup_registry_refuses_anonymous_reads_and_pushes_selfup_upgrades_through_its_credentials_on_its_socket_and_its_door_holds_the_port(
    suite: Arc<Suite>,
) {
    let mut registry = SetupRegistry::start(&suite.run_id);
    let auth = registry.state.join("auth");
    assert_eq!(mode(&registry.state), 0o700);
    assert_eq!(mode(&auth), 0o700);
    for file in ["password", "htpasswd", "config.json"] {
        assert_eq!(mode(&auth.join(file)), 0o600, "{file}");
    }

    let mut env = suite.env(&[("SELFUP_REGISTRY", &registry.addr)]);
    registry.compose_vars(&mut env);
    // Anonymous reads: the API root, the catalogue, a tag list.
    for path in ["/v2/", "/v2/_catalog", &format!("/v2/{}/tags/list", env.repository)] {
        let r = env
            .http
            .get(format!("http://{}{path}", registry.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "anonymous GET {path}");
    }
    let built = suite.image("selfup", "1.1.0");
    let (pushed, output) = registry.push(&built, &format!("{}:1.1.0", env.repository));
    assert!(!pushed, "an anonymous push went through: {output}");
    assert!(
        output.contains("no basic auth credentials") || output.contains("unauthorized"),
        "{output}"
    );

    registry.login();
    for tag in ["1.1.0", "latest"] {
        let (pushed, output) = registry.push(&built, &format!("{}:{tag}", env.repository));
        assert!(pushed, "{output}");
    }
    // Signed with the operator's key, through the same credentials.
    let pushed = format!("{}/{}:1.1.0", registry.addr, env.repository);
    crate::harness::sign_with(&pushed, Some(("selfup", &auth)));
    // selfup reads the credentials start.sh wrote for it, as compose mounts them.
    std::fs::copy(auth.join("config.json"), env.path().join("docker-config.json")).unwrap();
    suite.release(&env.repository, "1.0.0");
    env.up("1.0.0").await;
    // /upgrade/1 lists the tags, then pulls: both with the credentials.
    let (status, body) = env.upgrade(env.ports[0], Some("1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["to"], "1.1.0", "{body}");
    assert_eq!(env.wait_public_version("1.1.0").await, env.ports[1]);

    // Nobody stands in on the registry's port: its door holds it on both
    // loopback addresses, with the registry process or without it.
    let port: u16 = registry.addr.rsplit(':').next().unwrap().parse().unwrap();
    let stand_in = || {
        let (out, err) = Nobody::python(&format!(
            "import socket\nfor family, host in ((socket.AF_INET, '127.0.0.1'), (socket.AF_INET6, '::1')):\n    s = socket.socket(family)\n    try:\n        s.bind((host, {port})); s.listen(); print(host, 'bound')\n    except OSError as e:\n        print(host, e.errno)\n"
        ))
        .finish();
        assert!(err.is_empty(), "{err}");
        out
    };
    let in_use = format!("127.0.0.1 {}\n::1 {}\n", libc_eaddrinuse(), libc_eaddrinuse());
    assert_eq!(stand_in(), in_use, "user 65534 took the registry's port");
    let pid = std::fs::read_to_string(registry.state.join("registry.pid")).unwrap();
    run_cmd(Command::new("kill").arg(pid.trim()));
    eventually(
        "the door to answer 502 without the registry",
        Duration::from_secs(10),
        || {
            let door = run_cmd(
                Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                    .arg(format!("http://{}/v2/", registry.addr)),
            );
            async move { (door == "502").then_some(()) }
        },
    )
    .await;
    assert_eq!(stand_in(), in_use, "user 65534 took the port of a stopped registry");

    // selfup reads the registry at its socket, never at the port: with the
    // registry back and its door gone, the dry run still lists the tags.
    run_cmd(registry.script().arg("start"));
    docker(&["rm", "-f", &registry.door()]);
    let dry = env.get_json(&env.direct(env.ports[1], "/upgrade/1?dry_run=true")).await;
    assert_eq!(dry["decision"], "no-op", "{dry}");
    assert_eq!(dry["version"], "1.1.0", "{dry}");
}

/// Linux's `EADDRINUSE`.
fn libc_eaddrinuse() -> i32 {
    98
}

/// `curl --unix-socket` with the token: (status, JSON body).
fn over_socket(socket: &std::path::Path, method: &str, path: &str, token: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "60", "--unix-socket"])
        .arg(socket)
        .args(["-X", method, "-H", &format!("Authorization: Bearer {token}")])
        .args(["-w", "\n%{http_code}", &format!("http://localhost{path}")])
        .output()
        .unwrap();
    status_and_body(&out)
}

pub async fn secrets_go_to_a_control_socket_that_follows_the_live_instance_and_never_to_a_freed_port(
    suite: Arc<Suite>,
) {
    const TOKEN: &str = "e2e-control-token";
    let env = suite.live_env(&[("SELFUP_UPGRADE_TOKEN", TOKEN)], "1.0.0").await;
    let socket = env.control_socket();
    eventually(
        "the live instance to publish its control socket",
        Duration::from_secs(10),
        || async { socket.exists().then_some(()) },
    )
    .await;
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert_eq!(over_socket(&socket, "GET", "/status", TOKEN).1["port"], env.ports[0]);

    suite.release(&env.repository, "1.1.0");
    let (status, body) = over_socket(&socket, "POST", "/upgrade", TOKEN);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["new_port"], env.ports[1], "{body}");
    // Someone binds the port the handover freed, as soon as it is free.
    let freed = eventually("the elder's port to be free", Duration::from_secs(60), || async {
        tokio::net::TcpListener::bind(("127.0.0.1", env.ports[0])).await.ok()
    })
    .await;
    // The documented client path reaches the new instance, with the secret.
    let (status, body) = over_socket(&socket, "GET", "/status", TOKEN);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], "1.1.0", "{body}");
    assert_eq!(body["port"], env.ports[1], "{body}");
    let stolen = futures_util::FutureExt::now_or_never(freed.accept());
    assert!(stolen.is_none(), "a request went to the freed port");
    drop(freed);

    // And it follows the next handover too, back to the first port.
    suite.release(&env.repository, "1.2.0");
    eventually("the takeover to finish", Duration::from_secs(60), || async {
        let (_, body) = over_socket(&socket, "GET", "/handover", TOKEN);
        (body["phase"] == "done").then_some(())
    })
    .await;
    let (status, body) = over_socket(&socket, "POST", "/upgrade", TOKEN);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["to"], "1.2.0", "{body}");
    eventually("1.2.0 on the control socket", Duration::from_secs(60), || async {
        let (_, body) = over_socket(&socket, "GET", "/status", TOKEN);
        (body["version"] == "1.2.0" && body["port"] == env.ports[0]).then_some(())
    })
    .await;
}

/// A local user who binds the idle port cannot make a release fail: the
/// upgrade is a 409 naming the port before any successor is created, the
/// live version is unchanged, and the upgrade works once the port is free.
pub async fn a_user_holding_the_idle_port_gets_a_409_naming_it_and_the_upgrade_works_once_it_is_free(
    suite: Arc<Suite>,
) {
    let env = suite.live_env(&[], "1.0.0").await;
    let [a, b] = env.ports;
    let before = env.selfup_containers();
    let squatter = Nobody::listen(b);
    suite.release(&env.repository, "1.1.0");
    let (status, body) = env.upgrade(a, None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["port"], b, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(&format!("port {b} on 127.0.0.1")), "{error}");
    env.assert_elder_unchanged(&before, "1.0.0").await;
    assert_eq!(env.status(a).await["history"][0]["outcome"], "failed");

    // The port is free again: the same release goes through.
    drop(squatter);
    let (status, body) = env.upgrade(a, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["to"].as_str(), body["new_port"].as_u64()),
        (Some("1.1.0"), Some(u64::from(b)))
    );
    env.wait_public_version("1.1.0").await;
}

/// A local user's flood of public `/health` during a bake: the bake judges
/// none of those answers (it ends promoted with no public answer counted),
/// and the daemon is pinged about once a second, not once per request.
pub async fn a_flood_of_public_health_during_a_bake_is_not_judged_and_pings_the_daemon_once_a_second(
    suite: Arc<Suite>,
) {
    let env = suite.live_env(&[("SELFUP_BAKE_SECS", "8")], "1.0.0").await;
    let [a, b] = env.ports;
    suite.release(&env.repository, "1.1.0");
    let url = env.public("/health");
    let mut flood = Nobody::python(&format!(
        r#"
import threading, time, urllib.request
end = time.time() + 20
counts = []
def run():
    n = bad = 0
    while time.time() < end:
        try:
            urllib.request.urlopen("{url}", timeout=2).read()
            n += 1
        except Exception:
            bad += 1
    counts.append((n, bad))
threads = [threading.Thread(target=run) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(sum(c[0] for c in counts), sum(c[1] for c in counts))
"#
    ));
    let started = std::time::Instant::now();
    let (status, body) = env.upgrade(a, None).await;
    assert_eq!(status, 200, "{body}");
    let bake = &body["bake"];
    assert_eq!(bake["outcome"], "promoted", "{body}");
    assert_eq!(bake["answers"], 0, "the bake counted /health answers: {bake}");
    // The successor's pings while the flood ran.
    let metrics = env.get_text(&env.direct(b, "/metrics")).await;
    let (out, err) = flood.finish();
    let elapsed = started.elapsed().as_secs();
    let mut counts = out.split_whitespace().map(|n| n.parse::<u64>().unwrap_or(0));
    let answered = counts
        .next()
        .unwrap_or_else(|| panic!("the flood printed nothing: {err}"));
    assert!(
        answered >= 500,
        "only {answered} /health answers in the flood: {out} {err}"
    );
    let pings = metrics
        .lines()
        .find_map(|l| l.strip_prefix("selfup_docker_pings_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no ping count in /metrics:\n{metrics}"));
    assert!(
        pings <= (elapsed + 5) as f64,
        "{pings} daemon pings in {elapsed}s for {answered} /health answers"
    );
    eprintln!("    {answered} public /health answers in {elapsed}s; the successor pinged the daemon {pings} times");
}

/// The companion's key, in the hands of a local user, cannot move a
/// labelled container to another repository of an allowed registry (here
/// selfup's own image, which would run with that container's mounts): a
/// 403 names the repository asked for and the one allowed, and the
/// container is unchanged.
pub async fn the_companion_key_cannot_move_a_container_to_another_repository_of_an_allowed_registry(suite: Arc<Suite>) {
    let mut w = suite.companion_env();
    w.start_companion(&[&suite.registry], &[], false).await;
    let app = w.target(
        "app",
        &["--label", "selfup.enable=true"],
        &suite.image(APP, "plain-1"),
        true,
    );
    let id = inspect(&app)["Id"].clone();
    let elsewhere = suite.image("selfup", "1.0.0");
    let (status, answer) = w.update_as_nobody(&app, &elsewhere);
    assert_eq!(status, "403", "{answer}");
    assert_eq!(
        answer["asked_repository"],
        format!("{}/selfup", suite.registry),
        "{answer}"
    );
    assert_eq!(
        answer["allowed_repositories"],
        json!([format!("{}/{APP}", suite.registry)]),
        "{answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("selfup.repositories"),
        "{answer}"
    );
    let now = inspect(&app);
    assert_eq!(now["Id"], id, "the container was replaced");
    assert_eq!(now["Config"]["Image"], suite.image(APP, "plain-1"));
    // The same key still moves it within its own repository.
    let (status, body) = w.update(&app, &suite.image(APP, "plain-2")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(inspect(&app)["Config"]["Image"], suite.image(APP, "plain-2"));
}

/// What user 65534 gets for each `(method, path)` asked on
/// `127.0.0.1:port` (with `Host: localhost`, as curl sends, and the bearer
/// `token` if any): the status and the body, as JSON when it is JSON.
fn nobody_asks(port: u16, asks: &[(&str, &str)], token: Option<&str>) -> Vec<(u16, Value)> {
    let asks = serde_json::to_string(asks).unwrap();
    let token = serde_json::to_string(&token).unwrap();
    let mut nobody = Nobody::python(&format!(
        r#"
import http.client, json
for method, path in json.loads({asks:?}):
    c = http.client.HTTPConnection("127.0.0.1", {port}, timeout=30)
    headers = {{"Host": "localhost"}}
    token = json.loads({token:?})
    if token:
        headers["Authorization"] = "Bearer " + token
    c.request(method, path, headers=headers)
    r = c.getresponse()
    print(json.dumps([r.status, r.read().decode(errors="replace")]))
    c.close()
"#
    ));
    let (out, err) = nobody.finish();
    let answers: Vec<(u16, Value)> = out
        .lines()
        .map(|line| {
            let (status, body): (u16, String) = serde_json::from_str(line).unwrap();
            (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
        })
        .collect();
    assert_eq!(
        answers.len(),
        serde_json::from_str::<Vec<Value>>(&asks).unwrap().len(),
        "{err}"
    );
    answers
}

/// `curl -s localhost:<port><path>` as root, the README's way: (status, JSON body).
fn roots_curl(port: u16, path: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "120", "-w", "\n%{http_code}"])
        .arg(format!("localhost:{port}{path}"))
        .output()
        .unwrap();
    status_and_body(&out)
}

/// Every control endpoint, as a local user would try it.
const CONTROL_ASKS: [(&str, &str); 10] = [
    ("GET", "/upgrade/=1.0.0"),
    ("POST", "/upgrade"),
    ("GET", "/upgrade?dry_run=true"),
    ("POST", "/rollback"),
    ("POST", "/promote"),
    ("POST", "/pause"),
    ("POST", "/resume"),
    ("GET", "/status"),
    ("GET", "/events"),
    ("GET", "/metrics"),
];

/// With host networking and no `upgrade_token`, the owner of the caller's
/// socket decides: user 65534 is refused every control endpoint over
/// loopback TCP with a 403 that names its uid and the ways in, nothing
/// changes; root's `curl localhost:<port>/upgrade` upgrades as before.
pub async fn a_local_user_is_refused_every_control_endpoint_over_loopback_while_roots_curl_upgrades(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    let [a, b] = env.ports;
    suite.release(&env.repository, "1.1.0");
    let before = env.selfup_containers();
    let history = env.status(a).await["history"].clone();
    for ((method, path), (status, body)) in CONTROL_ASKS.iter().zip(nobody_asks(a, &CONTROL_ASKS, None)) {
        assert_eq!(status, 403, "{method} {path} as uid 65534: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("uid 65534 may not use the control endpoints") && error.contains("control_uids"),
            "{method} {path}: {body}"
        );
    }
    env.assert_elder_unchanged(&before, "1.0.0").await;
    assert_eq!(env.status(a).await["history"], history, "no upgrade was tried");

    // Root, as the README has it.
    let (status, body) = roots_curl(a, "/upgrade");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["to"].as_str(), body["new_port"].as_u64()),
        (Some("1.1.0"), Some(u64::from(b)))
    );
    env.wait_public_version("1.1.0").await;
    let (status, body) = roots_curl(b, "/status");
    assert_eq!((status, body["version"].as_str()), (200, Some("1.1.0")), "{body}");
}

/// The scraper's token reads `/metrics` and opens nothing else, for any
/// local user; the upgrade token opens the control endpoints to whoever
/// presents it, uid 65534 included (the owner is asked only without one).
pub async fn the_metrics_token_reads_metrics_and_opens_no_control_endpoint(suite: Arc<Suite>) {
    const METRICS: &str = "e2e-metrics-token-0123456789";
    const UPGRADE: &str = "e2e-upgrade-token-0123456789";
    let env = suite
        .live_env(
            &[("SELFUP_METRICS_TOKEN", METRICS), ("SELFUP_UPGRADE_TOKEN", UPGRADE)],
            "1.0.0",
        )
        .await;
    let a = env.ports[0];
    suite.release(&env.repository, "1.1.0");
    let before = env.selfup_containers();
    let history = nobody_asks(a, &[("GET", "/status")], Some(UPGRADE))[0].1["history"].clone();
    let metrics = nobody_asks(a, &[("GET", "/metrics")], Some(METRICS));
    assert_eq!(metrics[0].0, 200, "{}", metrics[0].1);
    assert!(
        metrics[0].1.as_str().is_some_and(|m| m.contains("selfup_build_info")),
        "{}",
        metrics[0].1
    );
    let control = &CONTROL_ASKS[..CONTROL_ASKS.len() - 1];
    for ((method, path), (status, body)) in control.iter().zip(nobody_asks(a, control, Some(METRICS))) {
        assert_eq!(status, 401, "{method} {path} with the metrics token: {body}");
        assert_eq!(body["error"], "a valid bearer token is required", "{method} {path}");
    }
    // Nor does /metrics take no token, or another one.
    for token in [None, Some("not-the-metrics-token-0123")] {
        let (status, body) = &nobody_asks(a, &[("GET", "/metrics")], token)[0];
        assert_eq!(*status, 401, "{token:?}: {body}");
    }
    env.assert_elder_unchanged(&before, "1.0.0").await;
    // The upgrade token is enough for any uid.
    let (status, body) = &nobody_asks(a, &[("GET", "/status")], Some(UPGRADE))[0];
    assert_eq!((*status, body["version"].as_str()), (200, Some("1.0.0")), "{body}");
    assert!(history.is_array(), "{history}");
    assert_eq!(body["history"], history, "no upgrade was tried");
}

/// A file or directory removed on drop.
struct Removed(std::path::PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A listener of user 65534 on a free port that answers `count` requests
/// with a `/status`-like JSON and prints each request's head (a connection
/// that sends nothing, the CLI's look at whether the port answers, is not
/// counted); returns it and its port.
fn nobody_records(count: usize) -> (Nobody, u16) {
    let port = free_port();
    let nobody = Nobody::serve(&format!(
        r#"
import json, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", {port}))
s.listen()
print("listening", flush=True)
heads = []
while len(heads) < {count}:
    c, _ = s.accept()
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(4096)
        if not chunk:
            break
        data += chunk
    if b"\r\n\r\n" in data:
        body = b'{{"version":"9.9.9","port":{port},"history":[]}}'
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        heads.append(data.split(b"\r\n\r\n")[0].decode(errors="replace"))
    c.close()
print(json.dumps(heads))
"#
    ));
    (nobody, port)
}

/// The CLI, run by an operator as user 65534 with `$SELFUP_UPGRADE_TOKEN`
/// set, while the control socket does not answer: its fallback to the
/// first port that answers (here one user 65534 holds, recording what it
/// gets) sends no token; only a port named with `--url` gets it.
pub async fn the_cli_sends_its_token_to_a_port_only_when_the_url_names_it(suite: Arc<Suite>) {
    const TOKEN: &str = "e2e-cli-token-0123456789";
    // A copy of the binary user 65534 can run.
    let dir = Removed(std::env::temp_dir().join(format!("selfup-e2e-{}-cli", suite.run_id)));
    std::fs::create_dir_all(&dir.0).unwrap();
    let binary = dir.0.join("selfup");
    std::fs::copy(env!("CARGO_BIN_EXE_selfup"), &binary).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        for path in [&dir.0, &binary] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    let (mut recorder, port) = nobody_records(2);
    let cli = |url: Option<String>| {
        // Nothing of this process's environment (a `SELFUP_PROFILE` there
        // is no setting, and would leave the CLI with the defaults).
        let mut args = vec![
            "-i".to_string(),
            format!("SELFUP_UPGRADE_TOKEN={TOKEN}"),
            "SELFUP_CONFIG=/nonexistent/selfup.toml".into(),
            "SELFUP_CONTROL_SOCKET=/nonexistent/selfup/control.sock".into(),
            format!("SELFUP_PORT={port}"),
            format!("SELFUP_PORTS=[{port}, {}]", free_port()),
            binary.to_str().unwrap().into(),
            "status".into(),
        ];
        args.extend(url.map(|u| format!("--url={u}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Nobody::spawn("/usr/bin/env", &args).finish()
    };
    let (_, fallback) = cli(None);
    assert!(
        fallback.contains(&format!("asking 127.0.0.1:{port} without the token")),
        "{fallback}"
    );
    cli(Some(format!("http://127.0.0.1:{port}")));
    let (heads, err) = recorder.finish();
    let heads: Vec<String> = serde_json::from_str(heads.trim()).unwrap_or_else(|_| panic!("{heads}{err}"));
    let [fallback, named] = &heads[..] else {
        panic!("two requests: {heads:?}")
    };
    assert!(fallback.starts_with("GET /status "), "{fallback}");
    assert!(!fallback.to_ascii_lowercase().contains("authorization"), "{fallback}");
    assert!(!fallback.contains(TOKEN), "{fallback}");
    assert!(
        named
            .to_ascii_lowercase()
            .contains(&format!("authorization: bearer {}", TOKEN.to_ascii_lowercase())),
        "{named}"
    );
}

/// Raw requests user 65534 sends to `127.0.0.1:port`, byte for byte (no
/// client normalizes the path): the status and body of each answer.
fn nobody_sends_raw(port: u16, requests: &[String]) -> Vec<(u16, String)> {
    let requests = serde_json::to_string(requests).unwrap();
    let mut nobody = Nobody::python(&format!(
        r#"
import json, socket
for request in json.loads({requests:?}):
    s = socket.create_connection(("127.0.0.1", {port}), timeout=30)
    s.sendall(request.encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    print(json.dumps([int(head.split()[1]), body.decode(errors="replace")]))
"#
    ));
    let (out, err) = nobody.finish();
    let answers: Vec<(u16, String)> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        answers.len(),
        serde_json::from_str::<Vec<Value>>(&requests).unwrap().len(),
        "{err}"
    );
    answers
}

/// nginx matches a location by the normalized path; a raw path that
/// normalizes elsewhere (`/upgrade/..` is `/`, `/update/%2e%2e/1` is `/1`)
/// is refused with 400 on the public and the deploy server, and selfup sees
/// none of them: its access log has no such line and nothing changed.
pub async fn nginx_refuses_paths_that_normalize_elsewhere_and_selfup_sees_none_of_them(suite: Arc<Suite>) {
    let env = suite.live_env(&[], "1.0.0").await;
    let before = env.selfup_containers();
    let request = |method: &str, path: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let unsafe_paths = [
        ("GET", "/upgrade/.."),
        ("GET", "/upgrade/%2e%2e"),
        ("POST", "/update/%2e%2e/1"),
        ("POST", "/update/%2E%2E/1"),
        ("GET", "/status/."),
        ("POST", "/echo/../rollback"),
        ("GET", "/upgrade%2f=1.0.0"),
    ];
    let deploy_paths = [
        ("POST", "/update/../upgrade"),
        ("POST", "/upgrade/%2e%2e%2fupdate"),
        ("POST", "/hooks/registry/%2e%2e/%2e%2e/upgrade"),
    ];
    for (port, paths) in [
        (env.public_port, &unsafe_paths[..]),
        (env.deploy_port, &deploy_paths[..]),
    ] {
        let requests: Vec<String> = paths.iter().map(|(m, p)| request(m, p)).collect();
        for ((method, path), (status, body)) in paths.iter().zip(nobody_sends_raw(port, &requests)) {
            assert_eq!(status, 400, "{method} {path} on {port}: {body}");
            assert!(body.contains("dot segment"), "{method} {path}: {body}");
        }
    }
    // The same raw client gets selfup's answers for a plain path, and
    // nginx's own 403 for a control path.
    let plain = nobody_sends_raw(env.public_port, &[request("GET", "/"), request("GET", "/upgrade")]);
    assert_eq!(
        (plain[0].0, plain[0].1.trim()),
        (200, "selfup version 1.0.0"),
        "{plain:?}"
    );
    assert_eq!(plain[1].0, 403, "{plain:?}");
    assert!(plain[1].1.contains("not reachable through the proxy"), "{plain:?}");
    // selfup's access log has the plain request and none of the others.
    let logs: String = env
        .selfup_containers()
        .iter()
        .map(|id| crate::harness::output_text(&Command::new("docker").args(["logs", id]).output().unwrap()))
        .collect();
    assert!(
        logs.contains("\"GET / HTTP/1.0\"") || logs.contains("\"GET / HTTP/1.1\""),
        "{logs}"
    );
    for (method, path) in unsafe_paths.iter().chain(&deploy_paths) {
        assert!(
            !logs.contains(&format!("{method} {path} ")),
            "selfup saw {method} {path}: {logs}"
        );
    }
    env.assert_elder_unchanged(&before, "1.0.0").await;
}

/// Public traffic never reaches the registry hook, even with its token:
/// user 65534 on the live socket (which anyone may open, as nginx's
/// workers do) gets a 403 naming the socket; the deploy server's path, the
/// update socket, takes it.
pub async fn the_registry_hook_is_refused_on_the_live_socket_even_with_its_token(suite: Arc<Suite>) {
    const HOOK: &str = "e2e-hook-token-0123456789";
    let env = suite.live_env(&[("SELFUP_HOOK_TOKEN", HOOK)], "1.0.0").await;
    let before = env.selfup_containers();
    let live = env.path().join("public/live.sock");
    let body =
        json!({"events": [{"action": "push", "target": {"repository": env.repository, "tag": "1.0.0"}}]}).to_string();
    let mut nobody = Nobody::python(&format!(
        r#"
import socket
s = socket.socket(socket.AF_UNIX)
s.connect({live:?})
body = {body:?}.encode()
s.sendall(b"POST /hooks/registry HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {HOOK}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(data.decode(errors="replace"))
"#,
        live = live.to_str().unwrap()
    ));
    let (answer, err) = nobody.finish();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}{err}");
    assert!(
        answer.contains("the live socket carries public traffic only; the registry hook answers on the update socket"),
        "{answer}"
    );
    // Where the registry sends it: nginx's deploy server, to the update socket.
    let r = env
        .http
        .post(format!("http://127.0.0.1:{}/hooks/registry", env.deploy_port))
        .bearer_auth(HOOK)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    env.assert_elder_unchanged(&before, "1.0.0").await;
}

/// `registry/start.sh` hands the password it generates to `htpasswd` on
/// stdin: no command line of the setup, which any local user may read in
/// `/proc/<pid>/cmdline` while it runs, carries it. A stand-in `htpasswd`
/// first on `PATH` records its arguments and runs the real one.
pub async fn the_registry_setup_puts_no_password_on_a_command_line(suite: Arc<Suite>) {
    let bin = Removed(std::env::temp_dir().join(format!("selfup-e2e-{}-htpasswd", suite.run_id)));
    std::fs::create_dir_all(&bin.0).unwrap();
    let argv = bin.0.join("argv");
    let wrapper = bin.0.join("htpasswd");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> {}\nexec /usr/bin/htpasswd \"$@\"\n",
            argv.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let path = format!("{}:{}", bin.0.display(), std::env::var("PATH").unwrap_or_default());
    let registry = SetupRegistry::start_with(&suite.run_id, &[("PATH", &path)]);
    let auth = registry.state.join("auth");
    let password = std::fs::read_to_string(auth.join("password")).unwrap();
    let password = password.trim();
    assert!(password.len() >= 16, "a generated password");
    let recorded = std::fs::read_to_string(&argv).expect("start.sh ran htpasswd");
    assert!(recorded.contains("selfup"), "{recorded}");
    assert!(
        !recorded.contains(password),
        "the password is on htpasswd's command line: {recorded}"
    );
    // The file it wrote takes the password: the registry asks for it.
    let mut check = Command::new("htpasswd")
        .arg("-vi")
        .arg(auth.join("htpasswd"))
        .arg("selfup")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check.stdin.take().unwrap().write_all(password.as_bytes()).unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = reqwest::Client::new()
        .get(format!("http://{}/v2/", registry.addr))
        .basic_auth("selfup", Some(password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// What `curl -w '\n%{http_code}'` printed: (status, JSON body); 0 and null
/// for what is neither.
fn status_and_body(out: &std::process::Output) -> (u16, Value) {
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        status.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}
