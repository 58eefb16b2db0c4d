//! Blue-green for an app that is not selfup: a busybox web server, built
//! here, labelled `selfup.port`, handed over by the companion beside its
//! elder, with nginx in front following the app's socket.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{CompanionEnv, Suite, docker, eventually, exists, free_port, inspect, run};
use crate::load::{Load, Sample, assert_none_failed};

/// Where the companion puts the apps' sockets, inside its container and nginx's.
const SOCKETS: &str = "/run/selfup-apps";

/// Builds and pushes the app at `versions` (`healthy`: it serves
/// `/healthz`) into a repository of this test's; returns the repository.
/// `GET /` answers `{"version": ...}`, `POST /cgi-bin/echo` the body with
/// the version in `X-Selfup-Version`, so the suite's load checks both.
fn app_images(w: &mut CompanionEnv, versions: &[(&str, bool)]) -> String {
    let repository = format!("bluegreen/{}", w.test);
    let dir = w.dir("app-image");
    std::fs::copy("/usr/bin/busybox", dir.join("busybox")).unwrap();
    for (version, healthy) in versions {
        let www = dir.join("www");
        let _ = std::fs::remove_dir_all(&www);
        std::fs::create_dir_all(www.join("cgi-bin")).unwrap();
        std::fs::write(www.join("index.html"), format!("{{\"version\":\"{version}\"}}")).unwrap();
        if *healthy {
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
        run(Command::new("chmod").arg("755").arg(&echo));
        // httpd forks a child per connection; the shell stops on SIGTERM.
        let dockerfile = format!(
            "FROM scratch\nCOPY busybox /busybox\nCOPY www /www\n\
             LABEL org.opencontainers.image.version={version}\n\
             ENTRYPOINT [\"/busybox\", \"sh\", \"-c\", \"trap 'exit 0' TERM; /busybox httpd -f -p 8080 -h /www & wait\"]\n"
        );
        std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
        let image = w.suite.image(&repository, version);
        run(Command::new("docker")
            .args(["build", "-q", "--label", &w.suite.label(), "-t", &image])
            .arg(&dir));
        docker(&["push", "-q", &image]);
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
    let port = free_port();
    let dir = w.dir("nginx");
    let conf = format!(
        "user nobody nogroup;\nworker_processes 1;\npid /tmp/nginx.pid;\nerror_log /dev/stderr warn;\n\
         events {{ worker_connections 512; }}\n\
         http {{\n  access_log off;\n  upstream app {{ server unix:{SOCKETS}/{app}.sock; }}\n\
           server {{\n    listen 127.0.0.1:{port};\n    keepalive_timeout 65s;\n\
             location = /echo {{ proxy_pass http://app/cgi-bin/echo; }}\n\
             location / {{ proxy_pass http://app; }}\n  }}\n}}\n"
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
    format!("http://127.0.0.1:{port}")
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

/// The app container, labelled for blue-green and as compose's service `web`.
fn app(w: &CompanionEnv, network: &str, image: &str, extra: &[&str]) -> String {
    let project = format!("selfupe2e{}", w.test);
    let mut args = vec![
        "--network",
        network,
        "--label",
        "selfup.enable=true",
        "--label",
        "selfup.port=8080",
        "--label",
        "selfup.health=/healthz",
        "--stop-timeout",
        "5",
    ];
    let compose = [
        format!("com.docker.compose.project={project}"),
        "com.docker.compose.service=web".into(),
        "com.docker.compose.container-number=1".into(),
        "com.docker.compose.oneoff=False".into(),
    ];
    for label in &compose {
        args.extend(["--label", label]);
    }
    args.extend(extra);
    w.target("web", &args, image, true)
}

/// The containers of compose's service `web` in this test's project.
fn service_containers(w: &CompanionEnv) -> Vec<String> {
    docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=com.docker.compose.project=selfupe2e{}", w.test),
        "--filter",
        "label=com.docker.compose.service=web",
        "--format",
        "{{.Names}}",
    ])
    .lines()
    .map(String::from)
    .collect()
}

/// A healthy app at `versions` (the first running) behind nginx and the
/// companion: the world, the app's name, nginx's base URL.
pub async fn healthy_app(suite: Arc<Suite>, versions: &[&str]) -> (CompanionEnv, String, String) {
    let mut w = suite.companion_env();
    let all: Vec<(&str, bool)> = versions.iter().map(|v| (*v, true)).collect();
    let repository = app_images(&mut w, &all);
    let network = w.network("net");
    let web = app(&w, &network, &w.suite.image(&repository, versions[0]), &[]);
    let sockets = start(&mut w, &[]).await;
    let public = nginx(&mut w, &sockets, &web);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    wait_version(&http, &public, versions[0]).await;
    (w, web, public)
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
    assert!(!exists(&elder), "the elder is removed");
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

pub async fn an_app_whose_successor_fails_its_health_check_keeps_the_elder_serving_and_the_answer_says_why(
    suite: Arc<Suite>,
) {
    let mut w = suite.companion_env();
    let repository = app_images(&mut w, &[("1.0.0", true), ("1.1.0", false)]);
    let network = w.network("net");
    let web = app(&w, &network, &w.suite.image(&repository, "1.0.0"), &[]);
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
    let repository = app_images(&mut w, &[("1.0.0", true), ("1.1.0", true)]);
    let network = w.network("net");
    let published = format!("127.0.0.1:{}:8080", free_port());
    let web = app(&w, &network, &w.suite.image(&repository, "1.0.0"), &["-p", &published]);
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
