//! Off the host network: selfup and nginx on a private network of their own
//! (`docker/compose.bridge.yml`), and the companion on an app's private
//! network only (`docker/compose.companion.yml`), reached by name.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{APP, AppNetEnv, Config, Request, Suite, docker, eventually, labels, run};

/// `docker inspect -f {{json <path>}}` of a container, as JSON.
fn inspect(id: &str, path: &str) -> Value {
    let out = docker(&["inspect", "-f", &format!("{{{{json {path}}}}}"), id]);
    serde_json::from_str(out.trim()).unwrap_or(Value::Null)
}

/// The host ports a container publishes, as `docker port` lists them.
fn published(id: &str) -> Vec<String> {
    docker(&["port", id]).lines().map(str::to_string).collect()
}

/// The fast variant: the bake off.
pub async fn two_upgrades_on_a_bridge_network_under_load_through_nginx_lose_no_request_and_leave_one_container(
    suite: Arc<Suite>,
) {
    two_upgrades_on_a_bridge_network(suite, Config::Fast).await
}

/// With what `docker/compose.bridge.yml` ships: each upgrade bakes for 30 s.
pub async fn two_upgrades_on_a_bridge_network_under_load_through_nginx_lose_no_request_and_leave_one_container_with_the_shipped_settings(
    suite: Arc<Suite>,
) {
    two_upgrades_on_a_bridge_network(suite, Config::Shipped).await
}

/// The shipped registry (`registry/start.sh`: its unix socket, its door on
/// the port) from a bridge network: selfup, whose loopback is its own, reads
/// the registry's API at the socket the file mounts, with no
/// `SELFUP_REGISTRY_API`, and `/upgrade/<req>` goes through.
pub async fn on_a_bridge_network_selfup_reads_the_shipped_registry_at_its_socket_and_upgrades_to_a_requirement(
    suite: Arc<Suite>,
) {
    let mut registry = crate::guard::SetupRegistry::start(&suite.run_id);
    let mut env = suite.bridge_env_with(Config::Fast, &[("SELFUP_REGISTRY", &registry.addr)]);
    registry.compose_vars(&mut env);
    env.set_compose_var("SELFUP_REGISTRY_API", "");
    registry.login();
    let built = suite.image("selfup", "1.1.0");
    for tag in ["1.1.0", "latest"] {
        let (pushed, output) = registry.push(&built, &format!("{}:{tag}", env.repository));
        assert!(pushed, "{output}");
    }
    let auth = registry.state.join("auth");
    crate::harness::sign_with(
        &format!("{}/{}:1.1.0", registry.addr, env.repository),
        Some(("selfup", &auth)),
    );
    std::fs::copy(auth.join("config.json"), env.path().join("docker-config.json")).unwrap();
    suite.release(&env.repository, "1.0.0");
    env.up("1.0.0").await;
    let [a, b] = env.ports;
    let dry = env.get_json(&env.direct(a, "/upgrade/1?dry_run=true")).await;
    assert_eq!(dry["decision"], "upgrade", "{dry}");
    assert_eq!(dry["version"], "1.1.0", "{dry}");
    let (status, body) = env.upgrade(a, Some("1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["to"], "1.1.0", "{body}");
    assert_eq!(env.wait_public_version("1.1.0").await, b);
}

async fn two_upgrades_on_a_bridge_network(suite: Arc<Suite>, config: Config) {
    let env = suite.bridge_env_with(config, &[]);
    let [a, b] = env.ports;
    suite.release(&env.repository, "1.0.0");
    env.up("1.0.0").await;
    let network = format!("{}_selfup", env.project);
    let first = env.wait_single_container().await;
    assert_eq!(inspect(&first, ".HostConfig.NetworkMode"), json!(network));
    assert_eq!(published(&first), vec![format!("{a}/tcp -> 127.0.0.1:{a}")]);
    let nginx_mode = inspect(&env.nginx, ".HostConfig.NetworkMode");
    assert_eq!(nginx_mode, json!(network), "nginx is on the same network");

    // The host's calls arrive through the network's gateway, where selfup
    // cannot tell the caller's uid: only the upgrade token admits them
    // (without one configured, every such call is a 403: unit tests in
    // src/routes/guard.rs).
    let r = suite.http.get(env.direct(a, "/status")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "a valid bearer token is required", "{body}");
    let mut live = a;
    for (version, next) in [("1.1.0", b), ("1.2.0", a)] {
        suite.release(&env.repository, version);
        // The operator's curl to the published port, with the upgrade token:
        // the host, through the network's gateway.
        let (status, body) = env.upgrade_under_load(live, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["to"], version, "{body}");
        assert_eq!(body["new_port"], next, "{body}");
        eprintln!("    upgrade to {version} on the bridge network: {}", body["timings"]);
        env.wait_takeover_done(next).await;
        let id = env.wait_single_container().await;
        // Created on the same network, publishing the other port only, and
        // nginx follows it through the live socket.
        assert_eq!(inspect(&id, ".HostConfig.NetworkMode"), json!(network));
        let networks = inspect(&id, ".NetworkSettings.Networks");
        assert_eq!(
            networks.as_object().map(|n| n.keys().cloned().collect::<Vec<_>>()),
            Some(vec![network.clone()])
        );
        assert!(
            networks[&network]["Aliases"]
                .as_array()
                .is_some_and(|a| a.contains(&json!("selfup"))),
            "the service's alias goes with the successor: {networks}"
        );
        assert_eq!(published(&id), vec![format!("{next}/tcp -> 127.0.0.1:{next}")]);
        assert_eq!(
            env.version_at(&env.public("/")).await,
            Some((version.to_string(), next))
        );
        assert_eq!(labels(&id)["com.docker.compose.container-number"], "1");
        live = next;
    }

    // Compose agrees: one container per service, and `up -d` starts no second one.
    let ps = env.compose(&["ps", "-q"]);
    assert_eq!(ps.lines().count(), 3, "selfup, the hold and nginx only: {ps}");
    env.compose(&["up", "-d"]);
    env.wait_public_version("1.2.0").await;
    env.wait_single_container().await;
    let ps = env.compose(&["ps", "-q"]);
    assert_eq!(ps.lines().count(), 3, "after up -d: {ps}");
}

pub async fn an_app_updates_a_labelled_sibling_through_the_companion_by_name_with_nothing_published(suite: Arc<Suite>) {
    let env = AppNetEnv::start(suite.clone(), "1.0.0").await;
    let companion = env.companion();
    let door = env.door();
    // Nothing published to the host, only the app's network; the name is
    // nginx's, not selfup's.
    for id in [&companion, &door] {
        assert!(published(id).is_empty(), "{:?}", published(id));
        assert_eq!(inspect(id, ".HostConfig.NetworkMode"), json!(env.network()));
    }
    assert_eq!(env.resolve_from_app("selfup-companion"), vec![env.address(&door)]);

    // A labelled sibling of the app on its network.
    let sibling = format!("{}_sibling", env.project);
    run(Command::new("docker")
        .args(["run", "-d", "--name", &sibling, "--network", &env.network()])
        .args(["--label", "selfup.enable=true"])
        .args(env.labels())
        .arg(suite.image(APP, "1.0.0")));
    let target = suite.image(APP, "1.1.0");
    let body = json!({ "container": sibling, "image": target }).to_string();
    let (status, answer) = env
        .ask_from_app("POST", "/update", Some(&body))
        .expect("the companion answers the app");
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["status"], "updated", "{answer}");
    assert_eq!(answer["new_image"], target.as_str(), "{answer}");
    assert_eq!(inspect(&sibling, ".Config.Image"), json!(target));
    assert_eq!(labels(&sibling)["app.flavour"], "v1.1");
    assert_eq!(inspect(&sibling, ".HostConfig.NetworkMode"), json!(env.network()));
    assert_eq!(inspect(&sibling, ".State.Running"), json!(true));

    // The control endpoints are not the app's to call, whatever it sends:
    // through the name (nginx, then the update socket) they are refused for
    // the socket they arrive on, a `Host: localhost` and a forged
    // `X-Forwarded-For` notwithstanding ...
    for (path, headers) in [("/status", &[][..]), ("/upgrade", &["X-Forwarded-For: 127.0.0.1"][..])] {
        let request = Request {
            host: "localhost",
            headers,
            method: "GET",
            path,
            ..Request::default()
        };
        let (status, answer) = env
            .ask_from_app_at(("selfup-companion", 80), &request)
            .expect("the companion answers the app");
        assert_eq!(status, 403, "{path}: {answer}");
        assert!(answer.contains("the update socket serves only"), "{answer}");
    }
    // ... and at selfup's own address on the network, which is the public
    // side of the network there.
    let status_request = Request {
        host: "localhost",
        method: "GET",
        path: "/status",
        ..Request::default()
    };
    let (status, answer) = env
        .ask_from_app_at((&env.address(&companion), 5800), &status_request)
        .expect("selfup answers the app at its address");
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("only reachable from loopback"), "{answer}");
    // /update by name still wants the key.
    let keyless = Request {
        host: "selfup-companion",
        method: "POST",
        path: "/update",
        body: Some(body.as_str()),
        ..Request::default()
    };
    let (status, answer) = env
        .ask_from_app_at(("selfup-companion", 80), &keyless)
        .expect("the companion answers the app");
    assert_eq!(status, 401, "{answer}");
    let (status, again) = env
        .ask_from_app("POST", "/update", Some(&body))
        .expect("the companion answers the app");
    assert_eq!(status, 200, "{again}");
    assert!(
        again.contains("\"unchanged\""),
        "the same image again: nothing to do: {again}"
    );
}

/// The loop the app runs: `GET /` by name, one answer a line in /answers
/// after the time it was asked (the kernel's uptime, in seconds), until
/// /stop exists. One try per question: "fail" (or nc's error) when no answer
/// came within 5 s.
const ASK_BY_NAME: &str = r#"
rm -f /answers /stop /done
while [ ! -e /stop ]; do
  read t rest < /proc/uptime
  r=$(printf 'GET / HTTP/1.0\r\nHost: selfup-companion\r\n\r\n' | /busybox nc -w 5 selfup-companion 80 2>&1 | /busybox tail -n 1)
  echo "$t ${r:-fail}" >> /answers
  /busybox usleep 20000
done
/busybox touch /done
"#;

/// With the settings `docker/compose.companion.yml` ships: the elder bakes
/// its successor for 30 s before it goes.
pub async fn the_companion_upgrades_itself_while_the_app_keeps_reaching_it_by_name(suite: Arc<Suite>) {
    companion_self_upgrade(suite, Config::Shipped).await
}

/// The fast variant: no bake, the elder goes at the switch.
pub async fn the_companion_upgrades_itself_with_the_bake_off_while_the_app_keeps_reaching_it_by_name(
    suite: Arc<Suite>,
) {
    companion_self_upgrade(suite, Config::Fast).await
}

async fn companion_self_upgrade(suite: Arc<Suite>, config: Config) {
    let env = AppNetEnv::start_with(suite.clone(), "1.0.0", config).await;
    let app = env.app();
    let elder = env.companion();
    let door = env.door();
    let door_address = env.address(&door);
    assert_eq!(env.resolve_from_app("selfup-companion"), vec![door_address.clone()]);
    docker(&["exec", "-d", &app, "/busybox", "sh", "-c", ASK_BY_NAME]);
    let timed = || {
        let out = Command::new("docker")
            .args(["exec", &app, "/busybox", "cat", "/answers"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let answers = || {
        timed()
            .lines()
            .map(|l| l.split_once(' ').map_or(l, |(_, answer)| answer).to_string())
            .collect::<Vec<_>>()
    };
    eventually("the app's first answers by name", Duration::from_secs(20), || async {
        (answers().len() >= 5).then_some(())
    })
    .await;

    // The operator, from the host, at the companion's address on the network.
    suite.release(&env.repository, "1.1.0");
    let (status, body) = match env.operator(&elder, reqwest::Method::POST, 5800, "/upgrade").await {
        Ok(answer) => answer,
        Err(e) => {
            let timed = timed();
            let failed = timed.lines().filter(|l| !l.contains(" selfup version ")).count();
            panic!(
                "{e}; meanwhile the app asked {} questions by name, {failed} unanswered, the last ones {:?}",
                timed.lines().count(),
                timed.lines().rev().take(8).collect::<Vec<_>>()
            );
        }
    };
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["to"], "1.1.0", "{body}");
    eprintln!("    companion upgrade on the app's network: {}", body["timings"]);
    let successor = eventually("one companion container", Duration::from_secs(60), || async {
        let ids = env.containers_of("selfup");
        (ids.len() == 1 && ids[0] != elder).then(|| ids[0].clone())
    })
    .await;
    // Answers after the elder is gone, then stop the loop.
    let seen = answers().len();
    let since = std::time::Instant::now();
    while answers().len() < seen + 10 {
        if since.elapsed() > Duration::from_secs(30) {
            let show = |args: &[&str]| {
                let out = Command::new("docker").args(["exec", &app]).args(args).output().unwrap();
                crate::harness::output_text(&out)
            };
            panic!(
                "no more answers by name 30 s after the elder left: the last ones {:?}, the name resolves to {}, nginx is at {door_address}, the successor at {}",
                answers().iter().rev().take(5).collect::<Vec<_>>(),
                show(&["/busybox", "nslookup", "selfup-companion", "127.0.0.11"]),
                env.address(&successor),
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    docker(&["exec", &app, "/busybox", "touch", "/stop"]);
    eventually("the app's loop to end", Duration::from_secs(20), || async {
        Command::new("docker")
            .args(["exec", &app, "/busybox", "test", "-e", "/done"])
            .status()
            .ok()?
            .success()
            .then_some(())
    })
    .await;

    let timed = timed();
    let answers = answers();
    let failed: Vec<&str> = timed
        .lines()
        .filter(|l| !l.ends_with(" selfup version 1.0.0") && !l.ends_with(" selfup version 1.1.0"))
        .collect();
    // The longest wait between two questions: the slowest answer.
    let asked: Vec<f64> = timed
        .lines()
        .filter_map(|l| l.split_once(' ')?.0.parse().ok())
        .collect();
    let slowest = asked.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    let first_new = answers.iter().position(|a| a == "selfup version 1.1.0");
    eprintln!(
        "    {} questions by name across the upgrade, {} unanswered; the slowest took {:.3} s; the successor answered from question {}",
        answers.len(),
        failed.len(),
        slowest,
        first_new.map_or("none".into(), |i| (i + 1).to_string()),
    );
    // Every question answered at its first try, within the client's timeout.
    assert!(
        failed.is_empty(),
        "{} of {} unanswered (time asked, nc's answer): {failed:?}",
        failed.len(),
        answers.len()
    );
    assert_eq!(answers.first().map(String::as_str), Some("selfup version 1.0.0"));
    // One switch: the elder until the rename, the successor from then on.
    let first_new = first_new.expect("the successor answered");
    assert!(
        answers[first_new..].iter().all(|a| a == "selfup version 1.1.0"),
        "the elder answered after the successor had: {answers:?}"
    );

    // The name never moved: the same nginx, at the same address.
    assert_eq!(env.door(), door);
    assert_eq!(env.resolve_from_app("selfup-companion"), vec![door_address.clone()]);
    // The successor is on the app's network, publishes nothing, and compose
    // sees one container per service, also after `up -d`.
    assert_eq!(inspect(&successor, ".HostConfig.NetworkMode"), json!(env.network()));
    assert!(published(&successor).is_empty());
    // The successor removes its elder once it has stopped; compose counts
    // stopped containers too.
    eventually("the elder's removal", Duration::from_secs(60), || async {
        (!Command::new("docker")
            .args(["inspect", &elder])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?
            .success())
        .then_some(())
    })
    .await;
    let ps = env.compose(&["ps", "-q"]);
    assert_eq!(
        ps.lines().count(),
        3,
        "app, selfup-companion (nginx) and selfup only: {ps}"
    );
    env.compose(&["up", "-d"]);
    env.wait_by_name("1.1.0").await;
    let ps = env.compose(&["ps", "-q"]);
    assert_eq!(ps.lines().count(), 3, "after up -d: {ps}");
    env.companion();
    assert_eq!(env.door(), door, "up -d leaves nginx alone");
}
