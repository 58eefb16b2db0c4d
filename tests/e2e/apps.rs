//! Blue-green for an app that is not selfup: a busybox web server, built
//! here, labelled `selfup.port`, handed over by the companion beside its
//! elder, with nginx in front following the app's socket.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{CompanionEnv, Suite, docker, eventually, exists, free_port, inspect, run};
use crate::load::{Load, Sample, assert_none_failed, held_across};
use crate::sse::{assert_in_order, label, read_events};

/// Where the companion puts the apps' sockets, inside its container and nginx's.
const SOCKETS: &str = "/run/selfup-apps";

/// How an app image behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavour {
    /// It serves `/healthz`.
    Healthy,
    /// `/healthz` answers 404.
    NoHealthz,
    /// It serves `/healthz` for this many seconds after its start, then 404;
    /// the rest of its answers stay good.
    SickAfter(u32),
    /// It exits (status 3) this many seconds after its start.
    CrashAfter(u32),
    /// httpd runs as PID 1 with no handler: SIGTERM does nothing, and a
    /// stop waits out the stop timeout before SIGKILL, as many apps do.
    IgnoresTerm,
}

/// Builds and pushes the app at `versions` into a repository of this
/// test's; returns the repository. `GET /` answers `{"version": ...}`,
/// `POST /cgi-bin/echo` the body with the version in `X-Selfup-Version`,
/// so the suite's load checks both; `GET /cgi-bin/slow` answers after 10 s.
fn app_images(w: &mut CompanionEnv, versions: &[(&str, Flavour)]) -> String {
    let repository = format!("bluegreen/{}", w.test);
    let dir = w.dir("app-image");
    std::fs::copy("/usr/bin/busybox", dir.join("busybox")).unwrap();
    for (version, flavour) in versions {
        let www = dir.join("www");
        let _ = std::fs::remove_dir_all(&www);
        std::fs::create_dir_all(www.join("cgi-bin")).unwrap();
        std::fs::write(www.join("index.html"), format!("{{\"version\":\"{version}\"}}")).unwrap();
        if *flavour != Flavour::NoHealthz {
            std::fs::write(www.join("healthz"), "ok").unwrap();
        }
        let echo = www.join("cgi-bin/echo");
        std::fs::write(
            &echo,
            format!(
                "#!/busybox sh\necho 'Content-Type: text/plain'\necho 'X-Selfup-Version: {version}'\necho\n\
                 /busybox head -c \"$CONTENT_LENGTH\"\n"
            ),
        )
        .unwrap();
        let slow = www.join("cgi-bin/slow");
        std::fs::write(
            &slow,
            format!("#!/busybox sh\n/busybox sleep 10\necho 'Content-Type: text/plain'\necho\necho 'slow {version}'\n"),
        )
        .unwrap();
        run(Command::new("chmod").arg("755").arg(&echo).arg(&slow));
        let sick = match flavour {
            Flavour::SickAfter(secs) => format!("/busybox sleep {secs}; /busybox rm /www/healthz; "),
            Flavour::CrashAfter(secs) => format!("/busybox sleep {secs}; exit 3; "),
            _ => String::new(),
        };
        // httpd forks a child per connection; the shell stops on SIGTERM.
        let entrypoint = match flavour {
            Flavour::IgnoresTerm => r#"["/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]"#.to_string(),
            _ => format!(
                r#"["/busybox", "sh", "-c", "trap 'exit 0' TERM; /busybox httpd -f -p 8080 -h /www & {sick}wait"]"#
            ),
        };
        let dockerfile = format!(
            "FROM scratch\nCOPY busybox /busybox\nCOPY www /www\n\
             LABEL org.opencontainers.image.version={version}\n\
             ENTRYPOINT {entrypoint}\n"
        );
        std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
        let image = w.suite.image(&repository, version);
        run(Command::new("docker")
            .args(["build", "-q", "--label", &w.suite.label(), "-t", &image])
            .arg(&dir));
        crate::harness::push(&image);
        w.images.push(image);
    }
    repository
}

/// The companion, with the apps' socket directory shared with the host.
async fn start(w: &mut CompanionEnv, extra: &[&str]) -> std::path::PathBuf {
    let sockets = w.dir("sockets");
    let mut args = vec![
        "-v".to_string(),
        format!("{}:{SOCKETS}", sockets.display()),
        "-e".into(),
        format!("SELFUP_APP_SOCKET_DIR={SOCKETS}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let registry = w.suite.registry.clone();
    w.start_companion(&[&registry], &args, false).await;
    sockets
}

/// nginx on a free loopback port, its upstream the app's socket, one new
/// upstream connection per request (HTTP/1.0), `/echo` passed to the CGI.
fn nginx(w: &mut CompanionEnv, sockets: &std::path::Path, app: &str) -> String {
    nginx_with(w, sockets, &[&format!("unix:{SOCKETS}/{app}.sock")]).remove(0)
}

/// [`nginx`] with one server per upstream address in `upstreams`, each on
/// its own free loopback port, configured alike: their base URLs.
fn nginx_with(w: &mut CompanionEnv, sockets: &std::path::Path, upstreams: &[&str]) -> Vec<String> {
    let ports: Vec<u16> = upstreams.iter().map(|_| free_port()).collect();
    let dir = w.dir("nginx");
    let servers: String = upstreams
        .iter()
        .zip(&ports)
        .enumerate()
        .map(|(i, (upstream, port))| {
            format!(
                "  upstream app{i} {{ server {upstream}; }}\n\
                 server {{\n    listen 127.0.0.1:{port};\n    keepalive_timeout 65s;\n\
                 location = /echo {{ proxy_pass http://app{i}/cgi-bin/echo; }}\n\
                 location / {{ proxy_pass http://app{i}; }}\n  }}\n"
            )
        })
        .collect();
    let conf = format!(
        "user nobody nogroup;\nworker_processes 1;\npid /tmp/nginx.pid;\nerror_log /dev/stderr warn;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n  access_log off;\n{servers}}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    run(Command::new("docker")
        .args(["run", "-d", "--name", &w.name("nginx"), "--network", "host"])
        .args(w.labels())
        .args([
            "-v",
            &format!("{}:/etc/nginx/nginx.conf:ro", dir.join("nginx.conf").display()),
        ])
        .args(["-v", &format!("{}:{SOCKETS}", sockets.display())])
        .arg(&w.suite.nginx_image));
    ports.iter().map(|port| format!("http://127.0.0.1:{port}")).collect()
}

/// Asserts that a bake rolled back to the warm elder: the successor (at
/// `versions.0`) answered some of `samples`, every request sent after
/// `answered` got the elder's `versions.1`, and the elder container, never
/// stopped, is the service's one container under its name again. Returns
/// how many requests the successor answered.
fn assert_app_back_on_the_elder(
    w: &CompanionEnv,
    web: &str,
    elder: &Value,
    samples: &[Sample],
    answered: Instant,
    versions: (&str, &str),
) -> usize {
    let (successor, back) = versions;
    let by_successor = samples
        .iter()
        .filter(|s| s.version.as_deref() == Some(successor))
        .count();
    assert!(by_successor > 0, "the successor at {successor} served during its bake");
    let after: Vec<_> = samples.iter().filter(|s| s.sent > answered).collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|s| s.version.as_deref() == Some(back)),
        "the elder serves again"
    );
    let now = inspect(web);
    assert_eq!(now["Id"], elder["Id"], "the elder has its name back");
    assert_eq!(now["State"]["StartedAt"], elder["State"]["StartedAt"], "never stopped");
    assert_eq!(service_containers(w), vec![web.to_string()]);
    by_successor
}

/// The version `GET /` answers at `base`, if it answers.
async fn version(http: &reqwest::Client, base: &str) -> Option<String> {
    let r = http.get(format!("{base}/")).send().await.ok()?;
    let v: Value = r.json().await.ok()?;
    v["version"].as_str().map(String::from)
}

async fn wait_version(http: &reqwest::Client, base: &str, expected: &str) {
    eventually(
        &format!("{base} answering {expected}"),
        Duration::from_secs(30),
        || async { (version(http, base).await.as_deref() == Some(expected)).then_some(()) },
    )
    .await;
}

/// The app container: compose's service `web` of this test's project,
/// started by `docker-compose up -d` from a file of the test's (so its
/// compose labels are compose's own), labelled for blue-green; `labels` and
/// `ports` go into the service as given.
fn app(w: &mut CompanionEnv, network: &str, image: &str, labels: &[&str], ports: &[&str]) -> String {
    let name = w.name("web");
    let mut all = vec![
        "selfup.enable=true".to_string(),
        "selfup.port=8080".into(),
        "selfup.health=/healthz".into(),
    ];
    // The test's own labels: its containers go when it ends, even on failure.
    all.extend(w.labels().into_iter().filter(|l| l != "--label"));
    all.extend(labels.iter().map(|l| l.to_string()));
    // YAML takes a JSON string as it is: no label needs escaping by hand.
    let list = |items: &[&str]| -> String {
        items
            .iter()
            .map(|i| format!("      - {}\n", serde_json::to_string(i).unwrap()))
            .collect()
    };
    let labels: Vec<&str> = all.iter().map(String::as_str).collect();
    let mut file = String::from("version: \"3.7\"\nservices:\n  web:\n");
    file += &format!("    image: {image}\n    container_name: {name}\n    stop_grace_period: 5s\n");
    file += &format!("    networks: [net]\n    labels:\n{}", list(&labels));
    if !ports.is_empty() {
        file += &format!("    ports:\n{}", list(ports));
    }
    file += &format!("networks:\n  net:\n    external: true\n    name: {network}\n");
    let dir = w.dir("compose");
    std::fs::write(dir.join("compose.yml"), file).unwrap();
    compose(w, &["up", "-d", "--no-recreate"]);
    name
}

/// docker-compose on this test's app file, as its project.
fn compose(w: &CompanionEnv, args: &[&str]) -> String {
    let file = std::env::temp_dir().join(w.name("compose")).join("compose.yml");
    run(Command::new("docker-compose")
        .args(["-p", &format!("selfupe2e{}", w.test), "-f"])
        .arg(&file)
        .args(args))
}

/// The containers `docker-compose ps` shows for the service `web`, by name.
fn service_containers(w: &CompanionEnv) -> Vec<String> {
    compose(w, &["ps", "-q", "web"])
        .lines()
        // One removed between the two calls (an elder's stop after its
        // update's answer) is no longer the service's.
        .filter_map(|id| {
            let out = Command::new("docker")
                .args(["inspect", "-f", "{{.Name}}", id.trim()])
                .output()
                .ok()?;
            out.status.success().then(|| {
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .trim_start_matches('/')
                    .to_string()
            })
        })
        .collect()
}

/// A healthy app at `versions` (the first running) behind nginx and the
/// companion: the world, the app's name, nginx's base URL.
pub async fn healthy_app(suite: Arc<Suite>, versions: &[&str]) -> (CompanionEnv, String, String) {
    let mut w = suite.companion_env();
    let all: Vec<(&str, Flavour)> = versions.iter().map(|v| (*v, Flavour::Healthy)).collect();
    let repository = app_images(&mut w, &all);
    let network = w.network("net");
    let image = w.suite.image(&repository, versions[0]);
    let web = app(&mut w, &network, &image, &[], &[]);
    let sockets = start(&mut w, &[]).await;
    let public = nginx(&mut w, &sockets, &web);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_version(&http, &public, versions[0]).await;
    (w, web, public)
}

/// A healthy app behind one nginx with two servers: one to the app's socket,
/// which selfup relays to the app, and one straight to the app container's
/// address. For the benchmark: the world, the app, and the two base URLs
/// (through selfup, straight).
#[allow(dead_code)]
pub async fn app_on_two_paths(suite: Arc<Suite>) -> (CompanionEnv, String, String, String) {
    let mut w = suite.companion_env();
    let repository = app_images(&mut w, &[("1.0.0", Flavour::Healthy)]);
    let network = w.network("net");
    let image = w.suite.image(&repository, "1.0.0");
    let web = app(&mut w, &network, &image, &[], &[]);
    let sockets = start(&mut w, &[]).await;
    let ip = inspect(&web)["NetworkSettings"]["Networks"][&network]["IPAddress"]
        .as_str()
        .unwrap()
        .to_string();
    let mut bases = nginx_with(
        &mut w,
        &sockets,
        &[&format!("unix:{SOCKETS}/{web}.sock"), &format!("{ip}:8080")],
    );
    let straight = bases.pop().unwrap();
    let relayed = bases.pop().unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_version(&http, &relayed, "1.0.0").await;
    wait_version(&http, &straight, "1.0.0").await;
    (w, web, relayed, straight)
}

/// How long an app's update takes to answer under `clients` keep-alive
/// clients through nginx, `updates` times (1.1.0, 1.0.0, ...): blue-green
/// by the companion (`stop_then_start` false), or the way plain updaters
/// replace a container (`docker stop`, `docker rm`, `docker run` of the new
/// image on the same published port, until it answers). For the benchmark:
/// each answer time, and every sample.
#[allow(dead_code)]
pub async fn answer_times(
    suite: Arc<Suite>,
    flavour: Flavour,
    stop_then_start: bool,
    updates: usize,
    clients: usize,
) -> (Vec<Duration>, Vec<Sample>) {
    let mut w = suite.companion_env();
    let repository = app_images(&mut w, &[("1.0.0", flavour), ("1.1.0", flavour)]);
    let network = w.network("net");
    let image = |v: &str| suite.image(&repository, v);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let (port, name) = (free_port(), w.name("web"));
    let labels = w.labels();
    let run_app = |version: &str| {
        run(Command::new("docker")
            .args(["run", "-d", "--name", &name, "--stop-timeout", "5"])
            .args(["-p", &format!("127.0.0.1:{port}:8080")])
            .args(&labels)
            .arg(image(version)));
    };
    let public = match stop_then_start {
        false => {
            let web = app(&mut w, &network, &image("1.0.0"), &[], &[]);
            let sockets = start(&mut w, &[]).await;
            nginx(&mut w, &sockets, &web)
        }
        true => {
            run_app("1.0.0");
            let sockets = w.dir("sockets");
            nginx_with(&mut w, &sockets, &[&format!("127.0.0.1:{port}")]).remove(0)
        }
    };
    wait_version(&http, &public, "1.0.0").await;
    let load = Load::start(public.clone(), clients, usize::MAX, Duration::from_secs(900));
    load.wait_for_samples_after(Instant::now(), 50 * clients, Duration::from_secs(60))
        .await;
    let mut times = Vec::new();
    for i in 0..updates {
        let version = ["1.1.0", "1.0.0"][i % 2];
        if !stop_then_start {
            // The elder of the last update has stopped: each update is timed alone.
            eventually("the last elder to be removed", Duration::from_secs(60), || async {
                (w.status().await["retiring"].as_array().is_none_or(|r| r.is_empty())).then_some(())
            })
            .await;
        }
        let asked = Instant::now();
        match stop_then_start {
            false => {
                let (status, body) = w
                    .post_raw(&format!("/update/{name}/={version}"), Some(&w.key), "")
                    .await;
                assert_eq!(status, 200, "{body}");
            }
            true => {
                run(Command::new("docker").args(["stop", &name]));
                run(Command::new("docker").args(["rm", &name]));
                run_app(version);
                wait_version(&http, &format!("http://127.0.0.1:{port}"), version).await;
            }
        }
        times.push(asked.elapsed());
        load.wait_for_samples_after(Instant::now(), 50 * clients, Duration::from_secs(60))
            .await;
    }
    (times, load.finish().await)
}

/// One handover of `web` to `requirement` through the companion: the answer,
/// checked, after asserting that the next request is the successor's and
/// the elder is gone.
pub async fn hand_over(w: &CompanionEnv, web: &str, public: &str, requirement: &str, expected: &str) -> Value {
    let elder = inspect(web)["Id"].as_str().unwrap().to_string();
    let (status, body) = w
        .post_raw(&format!("/update/{web}/{requirement}"), Some(&w.key), "")
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "updated", "{body}");
    assert_eq!(body["placement"], "beside", "{body}");
    let handover = &body["handover"];
    assert_eq!(handover["socket"], format!("{SOCKETS}/{web}.sock"), "{body}");
    assert_ne!(handover["from"], handover["to"], "{body}");
    assert!(handover.get("left_open").is_none(), "the elder drained: {body}");
    // The answer comes after the switch: the next request is the successor's.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    assert_eq!(version(&http, public).await.as_deref(), Some(expected));
    // The elder's stop goes on after the answer, which says so.
    assert_eq!(body["old_container"]["id"], elder[..12], "{body}");
    assert_eq!(body["old_container"]["stopping"], true, "{body}");
    eventually("the elder to be removed", Duration::from_secs(20), || async {
        (!exists(&elder)).then_some(())
    })
    .await;
    body
}

/// `upgrades` handovers of a healthy app under `clients` keep-alive clients
/// through nginx, cycling 1.1.0, 1.2.0, 1.0.0: every sample, and each
/// handover's window from the request to the answer. For the benchmark
/// (`benches/handover.rs`), which the suite does not run.
#[allow(dead_code)]
pub async fn handovers_under_load(
    suite: Arc<Suite>,
    upgrades: usize,
    clients: usize,
) -> (Vec<Sample>, Vec<(Instant, Instant)>) {
    let (w, web, public) = healthy_app(suite, &["1.0.0", "1.1.0", "1.2.0"]).await;
    let load = Load::start(public.clone(), clients, usize::MAX, Duration::from_secs(600));
    load.wait_for_samples_after(Instant::now(), 100 * clients, Duration::from_secs(60))
        .await;
    let mut windows = Vec::new();
    for i in 0..upgrades {
        let version = ["1.1.0", "1.2.0", "1.0.0"][i % 3];
        let asked = Instant::now();
        hand_over(&w, &web, &public, &format!("={version}"), version).await;
        windows.push((asked, Instant::now()));
        load.wait_for_samples_after(Instant::now(), 100 * clients, Duration::from_secs(60))
            .await;
    }
    (load.finish().await, windows)
}

pub async fn a_plain_web_app_is_handed_over_three_times_under_load_through_nginx_without_a_failed_request(
    suite: Arc<Suite>,
) {
    let versions = ["1.0.0", "1.1.0", "1.2.0", "1.3.0"];
    let (w, web, public) = healthy_app(suite, &versions).await;
    let load = Load::start(public.clone(), 8, usize::MAX, Duration::from_secs(180));
    load.wait_for_samples_after(Instant::now(), 50, Duration::from_secs(20))
        .await;
    for (requirement, expected) in [("1.1", "1.1.0"), ("1.2", "1.2.0"), ("1.3", "1.3.0")] {
        let asked = Instant::now();
        let body = hand_over(&w, &web, &public, requirement, expected).await;
        let handover = &body["handover"];
        eprintln!(
            "app handover to {expected}: {} ms (health {} ms, drain {} ms)",
            body["duration_ms"], handover["health_ms"], handover["drain_ms"]
        );
        load.wait_for_samples_after(asked, 50, Duration::from_secs(20)).await;
    }
    let samples = load.finish().await;
    assert_none_failed(&samples, "through three app handovers");
    for v in versions {
        let answered = samples.iter().filter(|s| s.version.as_deref() == Some(v)).count();
        assert!(answered > 0, "no request answered by {v}");
    }
    eprintln!("{} requests through three app handovers, 0 failed", samples.len());
    // Compose still sees one container of the service, under its name.
    assert_eq!(service_containers(&w), vec![web.clone()]);
    let live = inspect(&web);
    assert_eq!(live["State"]["Running"], true);
    assert_eq!(
        live["Config"]["Image"],
        w.suite.image(&format!("bluegreen/{}", w.test), "1.3.0")
    );
}

pub async fn an_app_that_ignores_sigterm_gets_its_update_answer_within_2_s_of_the_switch_and_a_later_update_waits_for_its_elder_to_stop(
    suite: Arc<Suite>,
) {
    let mut w = suite.companion_env();
    let versions = [("1.0.0", Flavour::IgnoresTerm), ("1.1.0", Flavour::IgnoresTerm)];
    let repository = app_images(&mut w, &versions);
    let network = w.network("net");
    let image = w.suite.image(&repository, "1.0.0");
    let web = app(&mut w, &network, &image, &[], &[]);
    let sockets = start(&mut w, &[]).await;
    let public = nginx(&mut w, &sockets, &web);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_version(&http, &public, "1.0.0").await;
    let load = Load::start(public.clone(), 8, usize::MAX, Duration::from_secs(180));
    load.wait_for_samples_after(Instant::now(), 50, Duration::from_secs(20))
        .await;

    let elder = inspect(&web)["Id"].as_str().unwrap().to_string();
    let (status, body) = w.post_raw(&format!("/update/{web}/1.1"), Some(&w.key), "").await;
    let answered = Instant::now();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["old_container"]["id"], elder[..12], "{body}");
    assert_eq!(body["old_container"]["stopping"], true, "{body}");
    // Answered before the elder's stop timeout ran out: it still exists,
    // out of rotation, and /status names it.
    assert!(exists(&elder), "the answer waited for the elder's stop");
    let status = w.status().await;
    assert_eq!(status["retiring"], serde_json::json!([web.clone()]), "{status}");
    // A later update of the same container waits for that stop, then runs.
    let (status, again) = w.post_raw(&format!("/update/{web}/=1.0.0"), Some(&w.key), "").await;
    let second = Instant::now();
    assert_eq!(status, 200, "{again}");
    assert!(
        !exists(&elder),
        "the second update began before the first one's elder had stopped"
    );
    load.wait_for_samples_after(second, 50, Duration::from_secs(20)).await;
    let samples = load.finish().await;
    assert_none_failed(&samples, "across two updates of an app that ignores SIGTERM");
    // The switch: the first answer of 1.1.0.
    let switched = samples
        .iter()
        .filter(|s| s.version.as_deref() == Some("1.1.0"))
        .map(|s| s.sent + s.latency)
        .min()
        .expect("1.1.0 answered");
    let after_switch = answered.saturating_duration_since(switched);
    eprintln!(
        "    app ignoring SIGTERM: /update answered {} ms after the switch ({} ms in all); the next update {} ms later",
        after_switch.as_millis(),
        body["duration_ms"],
        (second - answered).as_millis()
    );
    assert!(
        after_switch <= Duration::from_secs(2),
        "answered {after_switch:?} after the switch"
    );
    // The next update waited out the elder's stop timeout (the compose
    // file's `stop_grace_period`, 5 s).
    assert!(second - answered >= Duration::from_secs(5), "{:?}", second - answered);
    eventually("the second update's elder stopped", Duration::from_secs(30), || async {
        (w.status().await["retiring"] == serde_json::json!([])).then_some(())
    })
    .await;
    assert_eq!(service_containers(&w), vec![web.clone()]);
}

pub async fn an_app_paused_for_five_seconds_under_eight_keep_alive_clients_fails_none_and_its_held_requests_go_on_within_100_ms_of_the_resume(
    suite: Arc<Suite>,
) {
    let (w, web, public) = healthy_app(suite, &["1.0.0", "1.1.0"]).await;
    let load = Load::start(public.clone(), 8, usize::MAX, Duration::from_secs(60));
    load.wait_for_samples_after(Instant::now(), 50, Duration::from_secs(20))
        .await;
    let (status, body) = w.post_raw(&format!("/update/{web}/pause"), Some(&w.key), "").await;
    assert_eq!(status, 200, "{body}");
    let paused_at = Instant::now();
    assert_eq!(body["hold_secs"], 30, "{body}");
    // Every client's next request waits in the app's socket; /status says so.
    let status = eventually("all eight clients held", Duration::from_secs(5), || async {
        let status = w.status().await;
        (status["paused_apps"][&web]["held"] == 8).then_some(status)
    })
    .await;
    assert_eq!(
        status["paused_apps"][&web]["since_ms"], body["paused"]["since_ms"],
        "{status}"
    );
    // No update of it meanwhile, and no pause of what is not a fronted app.
    let (refused, answer) = w.post_raw(&format!("/update/{web}/1.1"), Some(&w.key), "").await;
    assert_eq!(refused, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("paused"), "{answer}");
    let (missing, answer) = w.post_raw("/update/no-such-app/pause", Some(&w.key), "").await;
    assert_eq!(missing, 404, "{answer}");
    let (unauthorized, _) = w.post_raw(&format!("/update/{web}/resume"), None, "").await;
    assert_eq!(unauthorized, 401);
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(paused_at.elapsed())).await;

    let resumed_at = Instant::now();
    let (status, body) = w.post_raw(&format!("/update/{web}/resume"), Some(&w.key), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["held"], 8, "{body}");
    load.wait_for_samples_after(resumed_at, 50, Duration::from_secs(20))
        .await;
    let samples = load.finish().await;
    assert_none_failed(&samples, "across an app's pause");
    let late = held_across(&samples, paused_at, resumed_at);
    assert_eq!(late.len(), 8, "one held request per client: {late:?}");
    let slowest = *late.iter().max().unwrap();
    eprintln!(
        "    app pause: 8 held requests answered at most {} ms after the resume; {} requests, 0 failed",
        slowest.as_millis(),
        samples.len()
    );
    assert!(
        slowest <= Duration::from_millis(100),
        "answered {slowest:?} after the resume"
    );
    let (again, answer) = w.post_raw(&format!("/update/{web}/resume"), Some(&w.key), "").await;
    assert_eq!(again, 409, "{answer}");
    assert_eq!(w.status().await["paused_apps"], serde_json::json!({}));
}

pub async fn an_app_whose_container_crashes_has_its_new_requests_held_until_its_restart_policy_brings_it_back(
    suite: Arc<Suite>,
) {
    let mut w = suite.companion_env();
    let repository = app_images(&mut w, &[("1.0.0", Flavour::CrashAfter(4))]);
    let network = w.network("net");
    let image = w.suite.image(&repository, "1.0.0");
    let web = app(&mut w, &network, &image, &[], &[]);
    docker(&["update", "--restart", "always", &web]);
    let sockets = start(&mut w, &[]).await;
    let public = nginx(&mut w, &sockets, &web);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_version(&http, &public, "1.0.0").await;
    let restarts = || inspect(&web)["RestartCount"].as_u64().unwrap_or(0);
    let before = restarts();
    let load = Load::start(public.clone(), 8, usize::MAX, Duration::from_secs(60));
    eventually(
        "two crashes and restarts under load",
        Duration::from_secs(40),
        || async { (restarts() >= before + 2).then_some(()) },
    )
    .await;
    load.wait_for_samples_after(Instant::now(), 50, Duration::from_secs(20))
        .await;
    let samples = load.finish().await;
    let crashes = restarts() - before;
    let failed: Vec<_> = samples.iter().filter(|s| s.error.is_some()).collect();
    eprintln!(
        "    app crashes: {crashes} crashes and restarts, {} requests, {} failed (in flight at a crash)",
        samples.len(),
        failed.len()
    );
    assert!(
        samples.len() >= crate::load::MIN_REQUESTS,
        "only {} requests",
        samples.len()
    );
    // What was in flight in the app at a crash is lost (one per client at
    // most); what came while it was down waited for it.
    assert!(
        failed.len() as u64 <= 8 * crashes,
        "{} failed in {crashes} crashes, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}

pub async fn an_app_whose_successor_fails_its_health_check_keeps_the_elder_serving_and_the_answer_says_why(
    suite: Arc<Suite>,
) {
    let mut w = suite.companion_env();
    let repository = app_images(&mut w, &[("1.0.0", Flavour::Healthy), ("1.1.0", Flavour::NoHealthz)]);
    let network = w.network("net");
    let image = w.suite.image(&repository, "1.0.0");
    let web = app(&mut w, &network, &image, &[], &[]);
    let sockets = start(&mut w, &["-e", "SELFUP_UPDATE_DEADLINE_SECS=3"]).await;
    let public = nginx(&mut w, &sockets, &web);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_version(&http, &public, "1.0.0").await;
    let elder = inspect(&web);

    let load = Load::start(public.clone(), 4, usize::MAX, Duration::from_secs(60));
    let (status, body) = w.post_raw(&format!("/update/{web}/1.1"), Some(&w.key), "").await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["rolled_back"], true, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("GET /healthz answered 404") && error.contains("old container runs again"),
        "{error}"
    );
    let samples = load.finish().await;
    assert_none_failed(&samples, "while the successor failed its check");
    assert!(samples.iter().all(|s| s.version.as_deref() == Some("1.0.0")));
    let now = inspect(&web);
    assert_eq!(now["Id"], elder["Id"], "the elder keeps its name");
    assert_eq!(now["State"]["StartedAt"], elder["State"]["StartedAt"], "never stopped");
    assert_eq!(service_containers(&w), vec![web.clone()]);
    assert_eq!(version(&http, &public).await.as_deref(), Some("1.0.0"));
}

pub async fn a_published_port_app_whose_successor_cannot_bind_is_refused_and_nothing_stops(suite: Arc<Suite>) {
    let mut w = suite.companion_env();
    let repository = app_images(&mut w, &[("1.0.0", Flavour::Healthy), ("1.1.0", Flavour::Healthy)]);
    let network = w.network("net");
    let published = format!("127.0.0.1:{}:8080", free_port());
    let image = w.suite.image(&repository, "1.0.0");
    let web = app(&mut w, &network, &image, &[], &[&published]);
    start(&mut w, &[]).await;
    let elder = inspect(&web);
    let (status, body) = w.post_raw(&format!("/update/{web}/1.1"), Some(&w.key), "").await;
    assert_eq!(status, 409, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("cannot run beside it")
            && error.contains("publishes host port")
            && error.contains("nothing was stopped"),
        "{error}"
    );
    let now = inspect(&web);
    assert_eq!(now["Id"], elder["Id"]);
    assert_eq!(now["State"]["Running"], true);
    assert_eq!(now["State"]["StartedAt"], elder["State"]["StartedAt"], "never stopped");
    assert_eq!(service_containers(&w), vec![web.clone()]);
}

/// A GET of `/events?from=now` on the companion: the events from now on,
/// read until `enough`.
async fn watch_events(w: &CompanionEnv) -> reqwest::Response {
    w.suite
        .http
        .get(w.url("/events?from=now"))
        .send()
        .await
        .expect("the companion serves /events")
}

pub async fn an_app_bake_that_passes_keeps_the_elder_warm_until_its_end_and_a_watcher_of_events_sees_every_step(
    suite: Arc<Suite>,
) {
    let mut w = suite.companion_env();
    let repository = app_images(&mut w, &[("1.0.0", Flavour::Healthy), ("1.1.0", Flavour::Healthy)]);
    let network = w.network("net");
    let image = w.suite.image(&repository, "1.0.0");
    let web = app(&mut w, &network, &image, &[], &[]);
    let sockets = start(&mut w, &["-e", "SELFUP_UPDATE_BAKE_SECS=4"]).await;
    let public = nginx(&mut w, &sockets, &web);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_version(&http, &public, "1.0.0").await;
    let elder = inspect(&web)["Id"].as_str().unwrap().to_string();
    let events = watch_events(&w).await;
    let reading = tokio::spawn(read_events(events, Duration::from_secs(60), |evs| {
        evs.iter().any(|e| e.name == "update_finished")
    }));
    let load = Load::start(public.clone(), 4, usize::MAX, Duration::from_secs(60));

    let asked = Instant::now();
    let path = format!("/update/{web}/1.1");
    let (answer, warm) = tokio::join!(w.post_raw(&path, Some(&w.key), ""), async {
        // After the switch, during the bake: the elder runs, out of rotation.
        wait_version(&http, &public, "1.1.0").await;
        let seen = inspect(&elder);
        (seen["State"]["Running"].as_bool(), asked.elapsed())
    });
    let (status, body) = answer;
    assert_eq!(status, 200, "{body}");
    let samples = load.finish().await;
    assert_none_failed(&samples, "through an app handover with a bake");
    assert_eq!(warm.0, Some(true), "the elder runs during the bake");
    let bake = &body["handover"]["bake"];
    assert_eq!(bake["outcome"], "promoted", "{body}");
    assert_eq!(bake["reason"], "the bake ended clean after 4 s", "{body}");
    assert!(bake["baked_ms"].as_u64().unwrap() >= 4000, "{body}");
    assert!(
        bake["answers"].as_u64().unwrap() > 0,
        "the proxy counted the successor's answers: {body}"
    );
    assert_eq!(bake["server_errors"], 0, "{body}");
    // Its stop goes on after the answer.
    eventually(
        "the elder is removed once the bake passed",
        Duration::from_secs(20),
        || async { (!exists(&elder)).then_some(()) },
    )
    .await;
    assert_eq!(service_containers(&w), vec![web.clone()]);
    assert_eq!(version(&http, &public).await.as_deref(), Some("1.1.0"));
    eprintln!(
        "app handover with a 4 s bake: {} ms; the switch seen {} ms after the request; {} requests, 0 failed",
        body["duration_ms"],
        warm.1.as_millis(),
        samples.len()
    );

    let events = reading.await.unwrap();
    let labels: Vec<String> = events.iter().map(label).collect();
    assert_in_order(
        &labels,
        &[
            "update_started",
            "health-checking the new container",
            "switching the app's socket to the new container",
            "draining the old container's connections",
            "baking the new container, the old one kept warm out of rotation",
            "bake_started",
            "bake_ended",
            "stopping and removing the old container",
            "update_finished",
        ],
    );
    for e in &events {
        assert_eq!(e.data["container"], web.as_str(), "every event is the app's: {e:?}");
    }
    let started = events.iter().find(|e| e.name == "bake_started").unwrap();
    assert_eq!(started.data["secs"], 4, "{:?}", started.data);
    let ended = events.iter().find(|e| e.name == "bake_ended").unwrap();
    assert_eq!(ended.data["outcome"], "promoted", "{:?}", ended.data);
}

pub async fn an_app_successor_that_turns_sick_during_the_bake_gives_the_traffic_back_to_the_elder_without_a_failed_request(
    suite: Arc<Suite>,
) {
    let mut w = suite.companion_env();
    let repository = app_images(&mut w, &[("1.0.0", Flavour::Healthy), ("1.1.0", Flavour::SickAfter(5))]);
    let network = w.network("net");
    let image = w.suite.image(&repository, "1.0.0");
    let web = app(&mut w, &network, &image, &[], &[]);
    let sockets = start(&mut w, &["-e", "SELFUP_UPDATE_BAKE_SECS=30"]).await;
    let public = nginx(&mut w, &sockets, &web);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_version(&http, &public, "1.0.0").await;
    let elder = inspect(&web);

    let load = Load::start(public.clone(), 8, usize::MAX, Duration::from_secs(90));
    load.wait_for_samples_after(Instant::now(), 50, Duration::from_secs(20))
        .await;
    let asked = Instant::now();
    let (status, body) = w.post_raw(&format!("/update/{web}/1.1"), Some(&w.key), "").await;
    let answered = Instant::now();
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["rolled_back"], true, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("rolled back during the bake")
            && error.contains("GET /healthz failed 3 times in a row")
            && error.contains("old container runs again"),
        "{error}"
    );
    load.wait_for_samples_after(answered, 50, Duration::from_secs(20)).await;
    let samples = load.finish().await;
    assert_none_failed(&samples, "through a bake that went back to the elder");
    let by_successor = assert_app_back_on_the_elder(&w, &web, &elder, &samples, answered, ("1.1.0", "1.0.0"));
    eprintln!(
        "bake breach: answered {} ms after the request; {} requests ({by_successor} by the successor), 0 failed",
        answered.duration_since(asked).as_millis(),
        samples.len()
    );
}

/// `POST /update/{web}/{verdict}` with `key` (or none).
async fn verdict(w: &CompanionEnv, web: &str, verdict: &str, key: Option<&str>) -> (u16, Value) {
    w.post_raw(&format!("/update/{web}/{verdict}"), key, "").await
}

/// `verdict` with the key once the bake of `web` has begun (before, the
/// answer is 409: the switch comes before the elder's drain and the bake).
async fn verdict_in_bake(w: &CompanionEnv, web: &str, word: &str) -> (u16, Value) {
    eventually(
        &format!("a {word} taken by the bake of {web}"),
        Duration::from_secs(30),
        || async {
            let (status, body) = verdict(w, web, word, Some(&w.key)).await;
            (status != 409).then_some((status, body))
        },
    )
    .await
}

/// Both verdicts on `web` when no bake of it runs: 409 naming it, and 401
/// without the key.
async fn no_bake_verdicts(w: &CompanionEnv, web: &str, when: &str) {
    for word in ["promote", "rollback"] {
        let (status, body) = verdict(w, web, word, Some(&w.key)).await;
        assert_eq!(status, 409, "{word} {when}: {body}");
        let error = body["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("no bake of container {web} is running")),
            "{word} {when}: {body}"
        );
        let (status, body) = verdict(w, web, word, None).await;
        assert_eq!(status, 401, "{word} {when} without the key: {body}");
    }
}

pub async fn an_operator_promotes_an_app_bake_early_or_rolls_it_back_to_the_elder_without_a_failed_request(
    suite: Arc<Suite>,
) {
    let mut w = suite.companion_env();
    let repository = app_images(
        &mut w,
        &[
            ("1.0.0", Flavour::Healthy),
            ("1.1.0", Flavour::Healthy),
            ("1.2.0", Flavour::Healthy),
        ],
    );
    let network = w.network("net");
    let image = w.suite.image(&repository, "1.0.0");
    let web = app(&mut w, &network, &image, &[], &[]);
    let sockets = start(&mut w, &["-e", "SELFUP_UPDATE_BAKE_SECS=60"]).await;
    let public = nginx(&mut w, &sockets, &web);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_version(&http, &public, "1.0.0").await;
    no_bake_verdicts(&w, &web, "before any update").await;
    let load = Load::start(public.clone(), 4, usize::MAX, Duration::from_secs(120));
    load.wait_for_samples_after(Instant::now(), 20, Duration::from_secs(20))
        .await;

    // Promote: the bake of 60 s ends as soon as the operator says so.
    let elder = inspect(&web)["Id"].as_str().unwrap().to_string();
    let update = format!("/update/{web}/=1.1.0");
    let (answer, promoted) = tokio::join!(w.post_raw(&update, Some(&w.key), ""), async {
        wait_version(&http, &public, "1.1.0").await;
        assert!(exists(&elder), "the elder stands by during the bake");
        let (status, body) = verdict(&w, &web, "promote", None).await;
        assert_eq!(status, 401, "promote without the key during the bake: {body}");
        let (status, body) = verdict_in_bake(&w, &web, "promote").await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["status"], "promoting", "{body}");
        assert_eq!(body["container"], web.as_str(), "{body}");
        Instant::now()
    });
    let (status, body) = answer;
    let answered_ms = promoted.elapsed().as_millis();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "updated", "{body}");
    let bake = &body["handover"]["bake"];
    assert_eq!(bake["outcome"], "promoted", "{body}");
    assert!(
        bake["reason"].as_str().unwrap().contains("promoted by the operator"),
        "{body}"
    );
    assert!(bake["baked_ms"].as_u64().unwrap() < 30_000, "ended early: {body}");
    // Its stop goes on after the answer.
    eventually(
        "the elder is removed once promoted",
        Duration::from_secs(20),
        || async { (!exists(&elder)).then_some(()) },
    )
    .await;
    assert_eq!(service_containers(&w), vec![web.clone()]);
    assert_eq!(version(&http, &public).await.as_deref(), Some("1.1.0"));
    no_bake_verdicts(&w, &web, "after the promote").await;
    eprintln!(
        "operator promote: the update answered {answered_ms} ms after the 202, baked {} ms of 60 s",
        bake["baked_ms"]
    );

    // Roll back: the traffic goes back to the warm elder (1.1.0).
    let elder = inspect(&web);
    let update = format!("/update/{web}/=1.2.0");
    let (answer, asked) = tokio::join!(w.post_raw(&update, Some(&w.key), ""), async {
        wait_version(&http, &public, "1.2.0").await;
        load.wait_for_samples_after(Instant::now(), 20, Duration::from_secs(20))
            .await;
        let (status, body) = verdict(&w, &web, "rollback", None).await;
        assert_eq!(status, 401, "rollback without the key during the bake: {body}");
        let (status, body) = verdict_in_bake(&w, &web, "rollback").await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["status"], "rolling_back", "{body}");
        Instant::now()
    });
    let (status, body) = answer;
    let answered = Instant::now();
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["rolled_back"], true, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("rolled back during the bake") && error.contains("the operator asked for it"),
        "{error}"
    );
    load.wait_for_samples_after(answered, 20, Duration::from_secs(20)).await;
    let samples = load.finish().await;
    assert_none_failed(&samples, "through an operator's promote and rollback");
    let by_successor = assert_app_back_on_the_elder(&w, &web, &elder, &samples, answered, ("1.2.0", "1.1.0"));
    no_bake_verdicts(&w, &web, "after the rollback").await;
    eprintln!(
        "operator rollback: the update answered {} ms after the 202; {} requests ({by_successor} by the successor), 0 failed",
        answered.duration_since(asked).as_millis(),
        samples.len()
    );
}

pub async fn an_app_successor_that_crashes_during_the_bake_gives_the_traffic_back_to_the_elder_at_most_one_failure_per_client(
    suite: Arc<Suite>,
) {
    const CLIENTS: usize = 8;
    let mut w = suite.companion_env();
    let repository = app_images(
        &mut w,
        &[("1.0.0", Flavour::Healthy), ("1.1.0", Flavour::CrashAfter(5))],
    );
    let network = w.network("net");
    let image = w.suite.image(&repository, "1.0.0");
    let web = app(&mut w, &network, &image, &[], &[]);
    let sockets = start(&mut w, &["-e", "SELFUP_UPDATE_BAKE_SECS=30"]).await;
    let public = nginx(&mut w, &sockets, &web);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_version(&http, &public, "1.0.0").await;
    let elder = inspect(&web);

    let load = Load::start(public.clone(), CLIENTS, usize::MAX, Duration::from_secs(90));
    load.wait_for_samples_after(Instant::now(), 50, Duration::from_secs(20))
        .await;
    let asked = Instant::now();
    let (status, body) = w.post_raw(&format!("/update/{web}/1.1"), Some(&w.key), "").await;
    let answered = Instant::now();
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["rolled_back"], true, "{body}");
    let error = body["error"].as_str().unwrap();
    // The Engine's exit, or a connection it refused or closed unanswered
    // first (the elder took it).
    assert!(
        error.contains("rolled back during the bake")
            && (error.contains("the new container failed")
                || error.contains("refused")
                || error.contains("without an answer"))
            && error.contains("old container runs again"),
        "{error}"
    );
    load.wait_for_samples_after(answered, 50, Duration::from_secs(20)).await;
    let samples = load.finish().await;
    let failed: Vec<_> = samples.iter().filter(|s| s.error.is_some()).collect();
    // A request the dying successor held is lost only if it may not be sent
    // twice (the POSTs) or its answer had begun; once the successor closed
    // one unanswered, every new connection goes to the elder, so no client
    // loses two.
    for client in 0..CLIENTS {
        let lost: Vec<_> = failed.iter().filter(|s| s.client == client).collect();
        assert!(
            lost.len() <= 1,
            "at most the request client {client} had in flight at the crash: {lost:?}"
        );
    }
    let by_successor = assert_app_back_on_the_elder(&w, &web, &elder, &samples, answered, ("1.1.0", "1.0.0"));
    let lost_gets = failed
        .iter()
        .filter(|s| s.error.as_deref().unwrap_or("").starts_with("GET"))
        .count();
    // A GET the dying successor closed unanswered is sent again to the
    // elder: what fails is a POST, or a GET whose answer had begun.
    assert!(
        failed.iter().all(|s| {
            let error = s.error.as_deref().unwrap_or("");
            error.starts_with("POST") || (error.starts_with("GET") && error.contains("body"))
        }),
        "a request failed that the elder could have answered: {failed:?}"
    );
    assert!(samples.len() >= 500, "only {} requests", samples.len());
    eprintln!(
        "successor crash in the bake: answered {} ms after the request; {} requests ({by_successor} by the successor), {} failed ({lost_gets} GET): {error}",
        answered.duration_since(asked).as_millis(),
        samples.len(),
        failed.len()
    );
}

pub async fn an_app_started_after_selfup_is_reachable_through_its_socket_at_once_and_followed_when_recreated(
    suite: Arc<Suite>,
) {
    let mut w = suite.companion_env();
    let repository = app_images(&mut w, &[("1.0.0", Flavour::Healthy), ("1.1.0", Flavour::Healthy)]);
    let network = w.network("net");
    let sockets = start(&mut w, &[]).await;
    let web = w.name("web");
    let public = nginx(&mut w, &sockets, &web);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let started = Instant::now();
    let image = w.suite.image(&repository, "1.0.0");
    app(&mut w, &network, &image, &[], &[]);
    wait_version(&http, &public, "1.0.0").await;
    let took = started.elapsed();
    eprintln!(
        "an app started after selfup answered through its socket {} ms after its start",
        took.as_millis()
    );
    // At once: selfup follows Docker's start events, it does not poll (342
    // and 1,278 ms here, `docker run` included); the bound holds on a slow day.
    assert!(
        took <= Duration::from_secs(5),
        "the app answered {took:?} after its start"
    );
    // Recreated outside selfup, with another address: the socket follows.
    let first = inspect(&web)["NetworkSettings"]["Networks"][&network]["IPAddress"].clone();
    docker(&["rm", "-f", &web]);
    let hold = w.target(
        "hold",
        &["--network", &network],
        &w.suite.image(&repository, "1.0.0"),
        true,
    );
    let image = w.suite.image(&repository, "1.1.0");
    app(&mut w, &network, &image, &[], &[]);
    let second = inspect(&web)["NetworkSettings"]["Networks"][&network]["IPAddress"].clone();
    assert_ne!(first, second, "the recreated app has another address");
    wait_version(&http, &public, "1.1.0").await;
    docker(&["rm", "-f", &hold]);
    let logs = w.logs();
    assert!(
        logs.contains("the app was started anew: its socket follows it"),
        "{logs}"
    );
}

pub async fn a_watched_app_is_handed_over_blue_green_by_the_watch_without_a_failed_request(suite: Arc<Suite>) {
    let mut w = suite.companion_env();
    let built = app_images(&mut w, &[("1.0.0", Flavour::Healthy), ("1.1.0", Flavour::Healthy)]);
    // The watched repository has 1.0.0 only, until the test publishes 1.1.0.
    let repository = format!("{built}-watched");
    w.suite.publish(&w.suite.image(&built, "1.0.0"), &repository, "1.0.0");
    w.images.push(w.suite.image(&repository, "1.0.0"));
    let network = w.network("net");
    let image = w.suite.image(&repository, "1.0.0");
    let web = app(&mut w, &network, &image, &["selfup.watch=1"], &[]);
    let sockets = start(&mut w, &["-e", "SELFUP_WATCH_INTERVAL_SECS=1"]).await;
    let public = nginx(&mut w, &sockets, &web);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_version(&http, &public, "1.0.0").await;
    let elder = inspect(&web)["Id"].as_str().unwrap().to_string();

    let load = Load::start(public.clone(), 8, usize::MAX, Duration::from_secs(120));
    load.wait_for_samples_after(Instant::now(), 50, Duration::from_secs(20))
        .await;
    let published = Instant::now();
    w.suite.publish(&w.suite.image(&built, "1.1.0"), &repository, "1.1.0");
    w.images.push(w.suite.image(&repository, "1.1.0"));
    wait_version(&http, &public, "1.1.0").await;
    let switched = published.elapsed();
    eventually("the elder to be removed", Duration::from_secs(30), || async {
        (!exists(&elder)).then_some(())
    })
    .await;
    load.wait_for_samples_after(Instant::now(), 50, Duration::from_secs(20))
        .await;
    let samples = load.finish().await;
    assert_none_failed(&samples, "through a handover the watch started");
    assert_eq!(service_containers(&w), vec![web.clone()]);
    let logs = w.logs();
    assert!(
        logs.contains("the app's socket reaches the successor"),
        "handed over blue-green, not recreated: {logs}"
    );
    eprintln!(
        "the watch handed the app over {} ms after the push; {} requests, 0 failed",
        switched.as_millis(),
        samples.len()
    );
}

pub async fn an_app_keeps_every_request_through_a_self_upgrade_of_selfup_even_one_longer_than_the_linger(
    suite: Arc<Suite>,
) {
    let mut w = suite.companion_env();
    let repository = app_images(&mut w, &[("1.0.0", Flavour::Healthy)]);
    let network = w.network("net");
    let image = w.suite.image(&repository, "1.0.0");
    let web = app(&mut w, &network, &image, &[], &[]);
    let allowed = serde_json::to_string(&[&suite.registry]).unwrap();
    // selfup itself, live from compose in companion mode; the apps'
    // sockets in its public directory.
    let env = suite
        .live_env(
            &[
                ("SELFUP_COMPANION", "true"),
                ("SELFUP_API_KEY", &w.key),
                ("SELFUP_ALLOWED_REGISTRIES", &allowed),
            ],
            "1.0.0",
        )
        .await;
    let [a, b] = env.ports;
    let sockets = env.path().join("public/apps");
    let public = nginx(&mut w, &sockets, &web);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_version(&http, &public, "1.0.0").await;
    suite.release(&env.repository, "1.1.0");

    // A request the elder relays for 10 s: longer than its linger (4.5 s)
    // after its successor stops it.
    let slow_url = format!("{public}/cgi-bin/slow");
    let slow = tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let sent = Instant::now();
        let answer = match client.get(&slow_url).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.text().await.unwrap_or_else(|e| e.to_string()))
            }
            Err(e) => (0, e.to_string()),
        };
        (answer, sent.elapsed())
    });
    // The elder relays it (nothing else is sent yet) before the load starts
    // and the upgrade is asked for.
    let metrics = env.direct(a, "/metrics");
    eventually(
        "the elder relaying the slow request",
        Duration::from_secs(10),
        || async {
            let text = env.http.get(&metrics).send().await.ok()?.text().await.ok()?;
            let open = text
                .lines()
                .find_map(|line| line.strip_prefix("selfup_app_connections "))?
                .trim()
                .parse::<f64>()
                .ok()?;
            (open >= 1.0).then_some(())
        },
    )
    .await;
    let load = Load::start(public.clone(), 8, usize::MAX, Duration::from_secs(120));
    load.wait_for_samples_after(Instant::now(), 50, Duration::from_secs(20))
        .await;
    let (status, body) = env.upgrade(a, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "upgraded", "{body}");
    env.wait_takeover_done(b).await;
    let ((status, text), took) = slow.await.unwrap();
    assert_eq!((status, text.trim()), (200, "slow 1.0.0"), "the slow request finished");
    assert!(took >= Duration::from_secs(10), "{took:?}");
    env.wait_single_container().await;
    load.wait_for_samples_after(Instant::now(), 50, Duration::from_secs(20))
        .await;
    let samples = load.finish().await;
    assert_none_failed(&samples, "through a self-upgrade of selfup");
    assert_eq!(version(&http, &public).await.as_deref(), Some("1.0.0"));
    assert_eq!(
        env.version_at(&env.public("/")).await.map(|v| v.0).as_deref(),
        Some("1.1.0")
    );
    eprintln!(
        "{} app requests through selfup's own upgrade, 0 failed; a 10 s request relayed by the elder answered in {} ms",
        samples.len(),
        took.as_millis()
    );
}
