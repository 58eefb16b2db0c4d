//! Companion mode on real containers: a selfup container holding the Docker
//! socket recreates *other* containers on request, keeps their settings,
//! rolls back what does not come up, and refuses what it must refuse.
//!
//! Every test gets its environment from [`Suite::companion_env`], which
//! labels what it creates and removes all of it on drop, even when the test
//! fails.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::harness::{APP, CompanionEnv, Suite, docker, eventually, free_port, run};

pub(crate) use crate::harness::{exists, inspect};

/// Now, as `docker events --since/--until` takes it.
pub(crate) fn timestamp() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

/// The start and die events of this test's containers between two times: (action, id).
fn events(world: &CompanionEnv, since: &str, until: &str) -> Vec<(String, String)> {
    docker(&[
        "events",
        "--since",
        since,
        "--until",
        until,
        "--filter",
        "type=container",
        "--filter",
        &format!("label=selfup.e2e.test={}", world.test),
        "--filter",
        "event=start",
        "--filter",
        "event=die",
        "--format",
        "{{.Action}} {{.Actor.ID}}",
    ])
    .lines()
    .filter_map(|l| l.split_once(' ').map(|(a, id)| (a.to_string(), id.to_string())))
    .collect()
}

fn position(events: &[(String, String)], action: &str, id: &str) -> usize {
    events
        .iter()
        .position(|(a, i)| a == action && i == id)
        .unwrap_or_else(|| panic!("no {action} event of {id} in {events:?}"))
}

/// The mounts of a container: destination → (type, volume name or source, writable).
fn mounts(c: &Value) -> BTreeMap<String, (String, String, bool)> {
    c["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let what = if m["Type"] == "volume" {
                &m["Name"]
            } else {
                &m["Source"]
            };
            (
                m["Destination"].as_str().unwrap().to_string(),
                (
                    m["Type"].as_str().unwrap().to_string(),
                    what.as_str().unwrap().to_string(),
                    m["RW"].as_bool().unwrap(),
                ),
            )
        })
        .collect()
}

/// The networks of a container with their aliases, without the ones Docker
/// derives from the container's own id and hostname.
fn networks(c: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let short = &c["Id"].as_str().unwrap()[..12];
    let hostname = c["Config"]["Hostname"].as_str().unwrap_or_default();
    c["NetworkSettings"]["Networks"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, ep)| {
            let aliases = ep["Aliases"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str())
                        .filter(|a| *a != short && *a != hostname)
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            (name.clone(), aliases)
        })
        .collect()
}

fn env(c: &Value) -> BTreeSet<String> {
    c["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// Runs `script` in `container` as root, whatever user the container runs as.
fn exec(container: &str, script: &str) -> String {
    docker(&["exec", "-u", "0", container, "/busybox", "sh", "-c", script])
}

/// A JSON object flattened to `path → value`, objects opened key by key
/// (`HostConfig.LogConfig.Config.max-size`), arrays and scalars kept whole.
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
    match value.as_object() {
        Some(fields) if !fields.is_empty() => {
            for (k, v) in fields {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), value.clone());
        }
    }
}

/// The fields of `Config` and `HostConfig` that differ between two inspects:
/// path → (before, after); a field missing on one side is `null` there.
fn settings_diff(before: &Value, after: &Value) -> BTreeMap<String, (Value, Value)> {
    let (mut b, mut a) = (BTreeMap::new(), BTreeMap::new());
    for section in ["Config", "HostConfig"] {
        flatten(section, &before[section], &mut b);
        flatten(section, &after[section], &mut a);
    }
    let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
    keys.into_iter()
        .filter_map(|k| {
            let (x, y) = (b.get(k).unwrap_or(&Value::Null), a.get(k).unwrap_or(&Value::Null));
            (x != y).then(|| (k.clone(), (x.clone(), y.clone())))
        })
        .collect()
}

pub(crate) fn is_running(name: &str) -> bool {
    inspect(name)["State"]["Running"] == true
}

pub async fn an_update_keeps_every_setting_of_the_container_and_answers_with_both_images(suite: Arc<Suite>) {
    let mut w = suite.companion_env();
    w.start_companion(&[&suite.registry], &[], false).await;
    let front = w.network("front");
    let back = w.network("back");
    let data = w.volume("data");
    let config = w.dir("config");
    std::fs::write(config.join("app.conf"), "answer=42\n").unwrap();
    let host_port = free_port().to_string();
    let old_image = suite.image(APP, "1.0.0");
    let app = w.target_with_command(
        "app",
        &[
            "--label",
            "selfup.enable=true",
            "--label",
            "app.owner=operator",
            "--user",
            "1000:1000",
            "--workdir",
            "/work",
            "--hostname",
            "app-host",
            "--entrypoint",
            "/busybox",
            "--cap-add",
            "NET_ADMIN",
            "--cap-drop",
            "MKNOD",
            "--log-driver",
            "json-file",
            "--log-opt",
            "max-size=1m",
            "--log-opt",
            "max-file=2",
            "--ulimit",
            "nofile=1024:2048",
            "--tmpfs",
            "/scratch:size=1m",
            "--dns",
            "192.0.2.53",
            "--dns-search",
            "example.test",
            "--dns-option",
            "ndots:2",
            "--add-host",
            "db.internal:192.0.2.10",
            "-e",
            "FOO=bar",
            "-e",
            "SPACED=a b c",
            "-v",
            &format!("{}:/config:ro", config.display()),
            "-v",
            &format!("{data}:/data"),
            "-v",
            "/anon",
            "--network",
            &front,
            "--network-alias",
            "app-front",
            "-p",
            &format!("127.0.0.1:{host_port}:8000"),
            "--restart",
            "unless-stopped",
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "64",
            "--stop-timeout",
            "5",
        ],
        &old_image,
        &["sh", "-c", "trap 'exit 0' TERM; while :; do /busybox sleep 1; done"],
        false,
    );
    docker(&[
        "network", "connect", "--alias", "app-back", "--alias", "api", &back, &app,
    ]);
    docker(&["start", &app]);
    exec(&app, "echo anonymous > /anon/f && echo named > /data/f");
    let before = inspect(&app);
    // The new container mounts the anonymous volume by name, so `rm -v` no
    // longer removes it: the world does.
    let anonymous = mounts(&before)["/anon"].1.clone();
    w.volumes.push(anonymous);

    let since = timestamp();
    let new_image = suite.image(APP, "2.0.0");
    let (status, body) = w.update(&app, &new_image).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "updated", "{body}");
    assert_eq!(body["container"], app.as_str());
    assert_eq!(body["old_image"], old_image.as_str());
    assert_eq!(body["new_image"], new_image.as_str());
    assert_eq!(body["placement"], "stop_first", "{body}");
    assert!(body["reason"].as_str().unwrap().contains(&host_port), "{body}");
    assert_eq!(
        body["message"],
        format!("Container '{app}' restarted with new image '{new_image}'")
    );
    let after = inspect(&app);

    // A new container under the old name, from the new image; the old one is gone.
    let (old_id, new_id) = (before["Id"].as_str().unwrap(), after["Id"].as_str().unwrap());
    assert_ne!(old_id, new_id);
    assert!(!exists(old_id), "the old container is still there");
    assert_eq!(after["Config"]["Image"], new_image.as_str());
    assert!(is_running(&app));
    assert_eq!(w.containers(), BTreeSet::from([app.clone(), w.companion.clone()]));
    // Stop-first: the old one died before the new one started.
    let events = events(&w, &since, &timestamp());
    assert!(
        position(&events, "die", old_id) < position(&events, "start", new_id),
        "{events:?}"
    );

    // Environment: the operator's variables stay, the image's own come from the new image.
    let env = env(&after);
    assert!(env.contains("FOO=bar") && env.contains("SPACED=a b c"), "{env:?}");
    assert!(env.contains("APP_MODE=v2") && !env.contains("APP_MODE=v1"), "{env:?}");
    // Volumes: the bind, the named and the anonymous volume, with their data.
    assert_eq!(mounts(&after), mounts(&before));
    assert_eq!(
        exec(&app, "/busybox cat /anon/f /data/f /config/app.conf"),
        "anonymous\nnamed\nanswer=42\n"
    );
    // Networks with their aliases.
    assert_eq!(networks(&after), networks(&before));
    assert_eq!(
        networks(&after)[&back],
        BTreeSet::from(["app-back".to_string(), "api".to_string()])
    );
    assert_eq!(networks(&after)[&front], BTreeSet::from(["app-front".to_string()]));
    // Ports, restart policy, resources.
    for field in ["PortBindings", "RestartPolicy", "Memory", "NanoCpus", "PidsLimit"] {
        assert_eq!(
            after["HostConfig"][field], before["HostConfig"][field],
            "HostConfig.{field}"
        );
    }
    assert_eq!(after["HostConfig"]["Memory"], 64 * 1024 * 1024);
    assert_eq!(after["HostConfig"]["NanoCpus"], 500_000_000);
    assert_eq!(after["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
    assert_eq!(after["Config"]["StopTimeout"], 5);
    let published = &after["NetworkSettings"]["Ports"]["8000/tcp"][0];
    assert_eq!(published["HostPort"], host_port.as_str());
    // Labels: the operator's stay, the image's come from the new image.
    let labels = &after["Config"]["Labels"];
    assert_eq!(labels["selfup.enable"], "true");
    assert_eq!(labels["app.owner"], "operator");
    assert_eq!(labels["selfup.e2e.test"], w.test.as_str());
    assert_eq!(labels["org.opencontainers.image.version"], "2.0.0");
    assert_eq!(labels["app.flavour"], "v2");

    // Everything else in Config and HostConfig is the same, but for these
    // fields, each with why it may differ.
    let allowed: [(&str, &str); 5] = [
        ("Config.Image", "the new image is the point of the update"),
        (
            "HostConfig.Binds",
            "the anonymous volume is bound by name, to carry its data over (checked below)",
        ),
        (
            "Config.Env",
            "the image's own variables come from the new image (checked above)",
        ),
        ("Config.Labels.app.flavour", "an image label: the new image's"),
        (
            "Config.Labels.org.opencontainers.image.version",
            "an image label: the new image's",
        ),
    ];
    let diff = settings_diff(&before, &after);
    let unexpected: BTreeMap<_, _> = diff
        .iter()
        .filter(|(k, _)| !allowed.iter().any(|(a, _)| a == k))
        .collect();
    assert!(
        unexpected.is_empty(),
        "settings the update changed (before, after): {unexpected:#?}"
    );
    let mut binds = before["HostConfig"]["Binds"].as_array().unwrap().clone();
    binds.push(json!(format!("{}:/anon", mounts(&before)["/anon"].1)));
    assert_eq!(after["HostConfig"]["Binds"], Value::Array(binds));
    // The settings set on the old container are really there (not two empty sides).
    let c = &after["Config"];
    let h = &after["HostConfig"];
    assert_eq!(
        (c["User"].as_str(), c["WorkingDir"].as_str()),
        (Some("1000:1000"), Some("/work"))
    );
    assert_eq!(c["Hostname"], "app-host");
    assert_eq!(c["Entrypoint"], json!(["/busybox"]));
    assert_eq!(c["Cmd"][0], "sh");
    assert_eq!(
        (h["CapAdd"].to_string(), h["CapDrop"].to_string()),
        (r#"["CAP_NET_ADMIN"]"#.into(), r#"["CAP_MKNOD"]"#.into())
    );
    assert_eq!(h["LogConfig"]["Config"], json!({"max-size": "1m", "max-file": "2"}));
    assert_eq!(h["Ulimits"], json!([{"Name": "nofile", "Soft": 1024, "Hard": 2048}]));
    assert_eq!(h["Tmpfs"], json!({"/scratch": "size=1m"}));
    assert_eq!(h["Dns"], json!(["192.0.2.53"]));
    assert_eq!(h["DnsSearch"], json!(["example.test"]));
    assert_eq!(h["DnsOptions"], json!(["ndots:2"]));
    assert_eq!(h["ExtraHosts"], json!(["db.internal:192.0.2.10"]));
    // The new container's process runs as that user, in that directory.
    assert_eq!(
        exec(&app, "/busybox awk '/^Uid:/ { print $2 }' /proc/1/status; /busybox pwd"),
        "1000\n/work\n"
    );
}

pub async fn a_container_without_published_ports_is_replaced_beside_the_old_one_and_one_update_runs_at_a_time(
    suite: Arc<Suite>,
) {
    let mut w = suite.companion_env();
    w.start_companion(&[&suite.registry], &[], false).await;
    let net = w.network("net");
    let app = w.target(
        "app",
        &[
            "--label",
            "selfup.enable=true",
            "--network",
            &net,
            "--network-alias",
            "svc",
        ],
        &suite.image(APP, "plain-1"),
        true,
    );
    let old_id = inspect(&app)["Id"].as_str().unwrap().to_string();

    let since = timestamp();
    let image = suite.image(APP, "plain-2");
    let (first, second) = tokio::join!(w.update(&app, &image), w.update(&app, &image));
    let mut answers = [first, second];
    answers.sort_by_key(|(status, _)| *status);
    let [(ok, updated), (busy, refused)] = answers;
    assert_eq!(ok, 200, "{updated}");
    assert_eq!(updated["placement"], "beside", "{updated}");
    assert_eq!(busy, 409, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("already running"),
        "{refused}"
    );

    let after = inspect(&app);
    let new_id = after["Id"].as_str().unwrap();
    assert_ne!(new_id, old_id);
    assert!(!exists(&old_id));
    assert!(is_running(&app));
    assert_eq!(after["Config"]["Image"], image.as_str());
    assert_eq!(networks(&after)[&net], BTreeSet::from(["svc".to_string()]));
    // Beside: the new one started (and ran for the settle time) before the old one died.
    let events = events(&w, &since, &timestamp());
    assert!(
        position(&events, "start", new_id) < position(&events, "die", &old_id),
        "{events:?}"
    );
    assert_eq!(w.containers(), BTreeSet::from([app.clone(), w.companion.clone()]));
}

/// Updates `app` to a failing image and checks that the old container runs
/// again, under its name, and that nothing else is left.
async fn assert_rolled_back(w: &CompanionEnv, app: &str, image: &str, reason: &str, log_line: Option<&str>) -> Value {
    let before = inspect(app);
    let (status, body) = w.update(app, image).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["status"], "failed");
    assert_eq!(body["rolled_back"], true, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(reason), "{error}");
    assert!(error.contains("the old container runs again"), "{error}");
    if let Some(line) = log_line {
        assert!(body["new_container_log"].to_string().contains(line), "{body}");
    }
    let after = inspect(app);
    assert_eq!(after["Id"], before["Id"], "the old container is back under its name");
    assert_eq!(after["Config"]["Image"], before["Config"]["Image"]);
    assert!(is_running(app));
    assert_eq!(
        w.containers(),
        BTreeSet::from([app.to_string(), w.companion.clone()]),
        "the new container is removed and nothing is left aside"
    );
    body
}

pub async fn a_new_image_that_exits_at_once_is_rolled_back_and_the_old_container_runs_again(suite: Arc<Suite>) {
    let mut w = suite.companion_env();
    w.start_companion(&[&suite.registry], &[], false).await;
    let host_port = free_port().to_string();
    let app = w.target(
        "app",
        &[
            "--label",
            "selfup.enable=true",
            "-p",
            &format!("127.0.0.1:{host_port}:8000"),
            "--restart",
            "always",
        ],
        &suite.image(APP, "1.0.0"),
        true,
    );
    let since = timestamp();
    assert_rolled_back(
        &w,
        &app,
        &suite.image(APP, "crash"),
        "exited with code 3",
        Some("fatal: cannot start"),
    )
    .await;
    // Stop-first (the port is published): the old one was stopped, and started again.
    let old_id = inspect(&app)["Id"].as_str().unwrap().to_string();
    let events = events(&w, &since, &timestamp());
    let died = position(&events, "die", &old_id);
    assert!(
        events[died..].iter().any(|(a, id)| a == "start" && *id == old_id),
        "{events:?}"
    );
    assert_eq!(
        inspect(&app)["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"],
        host_port.as_str()
    );
}

pub async fn a_new_image_that_fails_its_healthcheck_is_rolled_back_while_the_old_container_keeps_running(
    suite: Arc<Suite>,
) {
    let mut w = suite.companion_env();
    w.start_companion(&[&suite.registry], &[], false).await;
    let net = w.network("net");
    let app = w.target(
        "app",
        &["--label", "selfup.enable=true", "--network", &net],
        &suite.image(APP, "1.0.0"),
        true,
    );
    let old_id = inspect(&app)["Id"].as_str().unwrap().to_string();
    let since = timestamp();
    assert_rolled_back(
        &w,
        &app,
        &suite.image(APP, "unhealthy"),
        "HEALTHCHECK reports unhealthy (last output: probe says no)",
        None,
    )
    .await;
    // Beside: the old container never stopped.
    let events = events(&w, &since, &timestamp());
    assert!(!events.iter().any(|(a, id)| a == "die" && *id == old_id), "{events:?}");
}

pub async fn requests_without_the_right_key_are_refused_with_401_and_no_detail(suite: Arc<Suite>) {
    let mut w = suite.companion_env();
    w.start_companion(&[&suite.registry], &[], false).await;
    let app = w.target(
        "app",
        &["--label", "selfup.enable=true"],
        &suite.image(APP, "plain-1"),
        true,
    );
    let id = inspect(&app)["Id"].clone();
    let body = json!({ "container": app, "image": suite.image(APP, "plain-2") }).to_string();
    let wrong = format!("{}x", w.key);
    for authorization in [
        None,
        Some(""),
        Some(wrong.as_str()),
        Some(&format!("Bearer {wrong}")),
        Some(&format!("Basic {}", w.key)),
        Some(&w.key[..w.key.len() - 1]),
    ] {
        for (path, body) in [
            ("/update", body.as_str()),
            ("/update", "{not json"),
            (&format!("/update/{app}/2") as &str, ""),
        ] {
            let (status, answer) = w.post_raw(path, authorization, body).await;
            assert_eq!(status, 401, "{authorization:?} {path}: {answer}");
            assert_eq!(answer["error"], "unauthorized", "{answer}");
            assert_eq!(answer.as_object().unwrap().len(), 2, "no detail: {answer}");
        }
    }
    assert_eq!(inspect(&app)["Id"], id, "nothing happened to the container");
    // Both forms of the right key get past the door (to a container that does not exist).
    for authorization in [w.key.clone(), format!("Bearer {}", w.key)] {
        let body = json!({ "container": "selfupe2e-no-such-container", "image": suite.image(APP, "plain-2") });
        let (status, answer) = w.post_raw("/update", Some(&authorization), &body.to_string()).await;
        assert_eq!(status, 404, "{answer}");
    }
    // /health needs no key.
    let health = suite.http.get(w.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

pub async fn unlabelled_containers_and_unlisted_registries_are_refused_with_403(suite: Arc<Suite>) {
    let mut w = suite.companion_env();
    w.start_companion(&[&suite.registry], &[], false).await;
    let plain = w.target("plain", &[], &suite.image(APP, "plain-1"), true);
    let off = w.target(
        "off",
        &["--label", "selfup.enable=false"],
        &suite.image(APP, "plain-1"),
        true,
    );
    let on = w.target(
        "on",
        &["--label", "selfup.enable=true"],
        &suite.image(APP, "plain-1"),
        true,
    );
    let ids: Vec<Value> = [&plain, &off, &on].iter().map(|c| inspect(c)["Id"].clone()).collect();
    let allowed_image = suite.image(APP, "plain-2");
    for container in [&plain, &off] {
        let (status, body) = w.update(container, &allowed_image).await;
        assert_eq!(status, 403, "{body}");
        assert!(body["error"].as_str().unwrap().contains("selfup.enable=true"), "{body}");
        let (status, body) = w.post_raw(&format!("/update/{container}/2"), Some(&w.key), "").await;
        assert_eq!(status, 403, "{body}");
    }
    for image in [
        "localhost:5000/companion/app:plain-2".to_string(),
        "busybox:latest".to_string(),
        "ghcr.io/someone/app:1".to_string(),
    ] {
        let (status, body) = w.update(&on, &image).await;
        assert_eq!(status, 403, "{image}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains("not accepted") && error.contains(&suite.registry),
            "{error}"
        );
    }
    let now: Vec<Value> = [&plain, &off, &on].iter().map(|c| inspect(c)["Id"].clone()).collect();
    assert_eq!(now, ids, "no container was touched");
}

pub async fn bad_requests_get_a_4xx_with_a_json_error_that_says_what_was_wrong(suite: Arc<Suite>) {
    let mut w = suite.companion_env();
    w.start_companion(&[&suite.registry], &[], false).await;
    let app = w.target(
        "app",
        &["--label", "selfup.enable=true"],
        &suite.image(APP, "1.0.0"),
        true,
    );
    let stopped = w.target(
        "stopped",
        &["--label", "selfup.enable=true"],
        &suite.image(APP, "1.0.0"),
        false,
    );
    let image = suite.image(APP, "2.0.0");
    let key = Some(w.key.as_str());
    let cases: Vec<(String, String, u16, &str)> = vec![
        ("/update".into(), "{\"container\": ".into(), 400, "malformed JSON"),
        ("/update".into(), "".into(), 400, "malformed JSON"),
        ("/update".into(), "[1, 2]".into(), 400, "not a JSON object"),
        (
            "/update".into(),
            json!({ "container": app }).to_string(),
            400,
            "missing field `image`",
        ),
        (
            "/update".into(),
            json!({ "image": image }).to_string(),
            400,
            "missing field `container`",
        ),
        (
            "/update".into(),
            json!({ "container": app, "image": 7 }).to_string(),
            400,
            "invalid type",
        ),
        (
            "/update".into(),
            json!({ "container": "", "image": image }).to_string(),
            400,
            "must not be empty",
        ),
        (
            "/update".into(),
            json!({ "container": app, "image": format!("{}/Companion/App:2", suite.registry) }).to_string(),
            400,
            "invalid image reference",
        ),
        (
            "/update".into(),
            json!({ "container": app, "image": format!("{image}@sha256:00") }).to_string(),
            400,
            "digests are not accepted",
        ),
        (
            "/update".into(),
            json!({ "container": "../images/json", "image": image }).to_string(),
            400,
            "invalid container name",
        ),
        (
            "/update".into(),
            json!({ "container": "selfupe2e-no-such-container", "image": image }).to_string(),
            404,
            "no such container: selfupe2e-no-such-container",
        ),
        (
            "/update".into(),
            json!({ "container": stopped, "image": image }).to_string(),
            409,
            "not running",
        ),
        (
            format!("/update/{app}/latest"),
            "".into(),
            400,
            "invalid version requirement",
        ),
        (
            format!("/update/{app}/^2"),
            "".into(),
            400,
            "invalid version requirement",
        ),
        (format!("/update/{app}/7"), "".into(), 404, "no version in"),
        (format!("/update/{app}/=0.1.0"), "".into(), 404, "no version in"),
        (
            "/update/selfupe2e-no-such-container/2".into(),
            "".into(),
            404,
            "no such container",
        ),
        (format!("/update/{stopped}/2"), "".into(), 409, "not running"),
        (
            format!("/update/{}/2", w.companion),
            "".into(),
            403,
            "selfup.enable=true",
        ),
    ];
    for (path, body, expected, says) in cases {
        let (status, answer) = w.post_raw(&path, key, &body).await;
        assert_eq!(status, expected, "{path} {body}: {answer}");
        let error = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error string: {answer}"));
        assert!(error.contains(says), "{path} {body}: {error}");
    }
    // A lower version needs an exact request; no match lists what there is.
    let (status, answer) = w.post_raw(&format!("/update/{app}/7"), key, "").await;
    assert_eq!(status, 404);
    assert_eq!(answer["available"][0], "2.0.0", "{answer}");
    // Methods the endpoints do not have, and the wrong path shape.
    let get = suite
        .http
        .get(w.url("/update"))
        .header("authorization", &w.key)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    assert!(get.json::<Value>().await.unwrap()["error"].is_string());
    let (status, answer) = w.post_raw(&format!("/update/{app}"), key, "").await;
    assert_eq!(status, 404, "{answer}");
    // None of it touched the containers.
    assert!(is_running(&app));
    assert_eq!(inspect(&app)["Config"]["Image"], suite.image(APP, "1.0.0").as_str());
    assert_eq!(w.containers().len(), 3);
}

pub async fn an_update_pulls_through_a_password_protected_registry_with_config_json_credentials(suite: Arc<Suite>) {
    let mut w = suite.companion_env();
    let (registry, docker_config) = w.private_registry("ci", "pa55:word");
    for tag in ["1.0.0", "1.1.0", "2.0.0"] {
        w.push_private(&suite.image(APP, tag), &format!("{registry}/app:{tag}"), &docker_config);
    }
    // Without credentials the registry refuses.
    let anonymous = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{registry}/v2/app/tags/list"),
    ]));
    assert_eq!(anonymous, "401");
    // The tags the update will pull exist only in the registry, not locally.
    let wanted = format!("{registry}/app:1.1.0");
    docker(&["rmi", &wanted, &format!("{registry}/app:2.0.0")]);

    let mount = format!(
        "{}:/etc/selfup/docker/config.json:ro",
        docker_config.join("config.json").display()
    );
    w.start_companion(&[&suite.registry, &registry], &["-v".into(), mount], false)
        .await;
    let app = w.target(
        "app",
        &["--label", "selfup.enable=true", "-e", "KEEP=me"],
        &format!("{registry}/app:1.0.0"),
        true,
    );

    // The semver route lists the tags with the credentials, then pulls with them.
    let (status, body) = w.post_raw(&format!("/update/{app}/1"), Some(&w.key), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "updated");
    assert_eq!(body["new_image"], wanted.as_str());
    assert!(exists(&wanted), "the image was pulled");
    let after = inspect(&app);
    assert_eq!(after["Config"]["Image"], wanted.as_str());
    assert!(env(&after).contains("KEEP=me"));
    assert!(
        w.logs().contains("using registry credentials"),
        "the companion says it used credentials"
    );
    // The same version again: nothing to do.
    let (status, body) = w.post_raw(&format!("/update/{app}/1.1"), Some(&w.key), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "unchanged", "{body}");
    // Lower needs an exact request.
    let (status, body) = w.post_raw(&format!("/update/{app}/1.0"), Some(&w.key), "").await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("=1.0.0"), "{body}");
    // And /update with an explicit image from the private registry.
    let (status, body) = w.update(&app, &format!("{registry}/app:2.0.0")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        inspect(&app)["Config"]["Labels"]["org.opencontainers.image.version"],
        "2.0.0"
    );
}

pub async fn an_update_resolves_its_requirement_on_a_registry_that_wants_a_bearer_token(suite: Arc<Suite>) {
    let mut w = suite.companion_env();
    let (backend, backend_config) = w.private_registry("ci", "pa55:word");
    let front = crate::token_front::TokenFront::start(&backend, "ci", "pa55:word").await;
    let registry = front.addr.clone();
    for tag in ["1.0.0", "1.1.0", "2.0.0"] {
        w.push_private(&suite.image(APP, tag), &format!("{backend}/app:{tag}"), &backend_config);
    }
    // The target runs 1.0.0 under the front's name; 1.1.0 is only in the registry.
    let running = format!("{registry}/app:1.0.0");
    docker(&["tag", &suite.image(APP, "1.0.0"), &running]);
    w.images.push(running.clone());
    let wanted = format!("{registry}/app:1.1.0");
    w.images.push(wanted.clone());
    assert!(!exists(&wanted));
    // Basic credentials alone get a bearer challenge, not the tag list.
    let basic = run(Command::new("curl").args([
        "-s",
        "-u",
        "ci:pa55:word",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("http://{registry}/v2/app/tags/list"),
    ]));
    assert!(basic.starts_with("HTTP/1.1 401"), "{basic}");
    assert!(basic.contains("Bearer realm="), "{basic}");

    let config_dir = w.dir("front-config");
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ci:pa55:word");
    let config = json!({ "auths": { registry.clone(): { "auth": auth } } });
    std::fs::write(config_dir.join("config.json"), config.to_string()).unwrap();
    let mount = format!(
        "{}:/etc/selfup/docker/config.json:ro",
        config_dir.join("config.json").display()
    );
    w.start_companion(&[&suite.registry, &registry], &["-v".into(), mount], false)
        .await;
    let app = w.target("app", &["--label", "selfup.enable=true"], &running, true);

    let (status, body) = w.post_raw(&format!("/update/{app}/1.1"), Some(&w.key), "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "updated");
    assert_eq!(body["new_image"], wanted.as_str());
    assert_eq!(inspect(&app)["Config"]["Image"], wanted.as_str());
    let seen = front.seen();
    // The companion's tag list and the Engine's pull both asked for tokens,
    // for the repository's pull scope, and went through with them.
    assert!(seen.tokens.len() >= 2, "{seen:?}");
    assert!(
        seen.tokens
            .iter()
            .all(|q| q.get("scope").map(String::as_str) == Some("repository:app:pull")),
        "{seen:?}"
    );
    assert!(seen.passed.iter().any(|p| p == "GET /v2/app/tags/list"), "{seen:?}");
    // The Engine's pull asks for the manifest (the layers, and maybe the
    // manifest, are on the machine already, under the suite's name).
    assert!(
        seen.passed.iter().any(|p| p.contains(" /v2/app/manifests/")),
        "{seen:?}"
    );
    assert_eq!(seen.refused, 0, "{seen:?}");

    // A requirement no tag meets is a 404 listing what the registry has.
    let (status, body) = w.post_raw(&format!("/update/{app}/3"), Some(&w.key), "").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["available"], json!(["2.0.0", "1.1.0", "1.0.0"]), "{body}");

    // Wrong credentials: the token service refuses them, and so does the update.
    let wrong = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "ci:wrong");
    let config = json!({ "auths": { registry.clone(): { "auth": wrong } } });
    std::fs::write(config_dir.join("config.json"), config.to_string()).unwrap();
    let (status, body) = w.post_raw(&format!("/update/{app}/2"), Some(&w.key), "").await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("refused the credentials"),
        "{body}"
    );
    assert!(front.seen().refused >= 1);
    assert_eq!(inspect(&app)["Config"]["Image"], wanted.as_str());
}

pub async fn a_generated_api_key_is_stored_with_mode_0600_logged_once_and_kept_across_restarts(suite: Arc<Suite>) {
    use std::os::unix::fs::PermissionsExt;
    let mut w = suite.companion_env();
    let data = w.dir("data");
    let mount = format!("{}:/data", data.display());
    w.start_companion(&[&suite.registry], &["-v".into(), mount], true).await;
    let path = data.join("api_key");
    let key = std::fs::read_to_string(&path).unwrap().trim().to_string();
    assert_eq!(key.len(), 32, "{key:?}");
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(w.logs().matches(&key).count(), 1, "the key is logged once");

    docker(&["restart", "-t", "5", &w.companion]);
    w.wait_companion().await;
    assert_eq!(
        std::fs::read_to_string(&path).unwrap().trim(),
        key,
        "the key survives a restart"
    );
    assert_eq!(w.logs().matches(&key).count(), 1, "and is not logged again");

    w.key = key;
    let app = w.target(
        "app",
        &["--label", "selfup.enable=true"],
        &suite.image(APP, "plain-1"),
        true,
    );
    let (status, body) = w.update(&app, &suite.image(APP, "plain-2")).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = w
        .post_raw("/update", Some("0123456789abcdef0123456789abcdef"), "{}")
        .await;
    assert_eq!(status, 401);
}

pub async fn a_new_container_that_dies_during_the_bake_gives_way_at_once_to_the_old_one_which_never_stopped(
    suite: Arc<Suite>,
) {
    let mut w = suite.companion_env();
    let bake = ["-e".to_string(), "SELFUP_UPDATE_BAKE_SECS=20".to_string()];
    w.start_companion(&[&suite.registry], &bake, false).await;
    let net = w.network("net");
    let app = w.target(
        "app",
        &["--label", "selfup.enable=true", "--network", &net],
        &suite.image(APP, "1.0.0"),
        true,
    );
    let before = inspect(&app);
    let image = suite.image(APP, "2.0.0");
    // The new container is up (healthy) under the app's name, the old one
    // runs aside: that is the bake. Then the new one dies.
    let kill = async {
        let new_id = eventually("the new container to be up", Duration::from_secs(60), || async {
            let now = inspect_if_there(&app)?;
            (now["Id"] != before["Id"] && now["State"]["Health"]["Status"] == "healthy")
                .then(|| now["Id"].as_str().unwrap().to_string())
        })
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        run(Command::new("docker").args(["kill", "-s", "KILL", &new_id]));
        Instant::now()
    };
    let ((status, body), killed) = tokio::join!(w.update(&app, &image), kill);
    eprintln!(
        "    the new container killed during the bake: answered {} ms later",
        killed.elapsed().as_millis()
    );
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["rolled_back"], true, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("during the 20 s bake"), "{error}");
    let after = inspect(&app);
    assert_eq!(after["Id"], before["Id"], "the old container is back under its name");
    assert_eq!(
        after["State"]["StartedAt"], before["State"]["StartedAt"],
        "the old container was stopped or restarted"
    );
    assert!(is_running(&app));
    assert_eq!(w.containers(), BTreeSet::from([app.clone(), w.companion.clone()]));
}

/// The container named `name`, inspected, if there is one.
fn inspect_if_there(name: &str) -> Option<Value> {
    let out = Command::new("docker").args(["inspect", name]).output().ok()?;
    let list: Value = serde_json::from_slice(&out.stdout).ok()?;
    list.get(0).cloned()
}
