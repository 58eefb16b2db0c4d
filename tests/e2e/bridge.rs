//! Off the host network: selfup and nginx on a private network of their own
//! (`docker/compose.bridge.yml`), and the companion on an app's private
//! network only (`docker/compose.companion.yml`), reached by name.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{APP, AppNetEnv, Suite, docker, eventually, labels, run};

/// `docker inspect -f {{json <path>}}` of a container, as JSON.
fn inspect(id: &str, path: &str) -> Value {
    let out = docker(&["inspect", "-f", &format!("{{{{json {path}}}}}"), id]);
    serde_json::from_str(out.trim()).unwrap_or(Value::Null)
}

/// The host ports a container publishes, as `docker port` lists them.
fn published(id: &str) -> Vec<String> {
    docker(&["port", id]).lines().map(str::to_string).collect()
}

pub async fn two_upgrades_on_a_bridge_network_under_load_through_nginx_lose_no_request_and_leave_one_container(
    suite: Arc<Suite>,
) {
    let env = suite.bridge_env(&[]);
    let [a, b] = env.ports;
    suite.release(&env.repository, "1.0.0");
    env.up("1.0.0").await;
    let network = format!("{}_selfup", env.project);
    let first = env.wait_single_container().await;
    assert_eq!(inspect(&first, ".HostConfig.NetworkMode"), json!(network));
    assert_eq!(published(&first), vec![format!("{a}/tcp -> 127.0.0.1:{a}")]);
    let nginx_mode = inspect(&env.nginx, ".HostConfig.NetworkMode");
    assert_eq!(nginx_mode, json!(network), "nginx is on the same network");

    let mut live = a;
    for (version, next) in [("1.1.0", b), ("1.2.0", a)] {
        suite.release(&env.repository, version);
        // The operator's curl to the published port: the host, through the
        // network's gateway.
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
    assert_eq!(ps.lines().count(), 2, "selfup and nginx only: {ps}");
    env.compose(&["up", "-d"]);
    env.wait_public_version("1.2.0").await;
    env.wait_single_container().await;
    let ps = env.compose(&["ps", "-q"]);
    assert_eq!(ps.lines().count(), 2, "after up -d: {ps}");
}

pub async fn an_app_updates_a_labelled_sibling_through_the_companion_by_name_with_nothing_published(suite: Arc<Suite>) {
    let env = AppNetEnv::start(suite.clone(), "1.0.0").await;
    let companion = env.containers_of("selfup-companion");
    assert_eq!(companion.len(), 1);
    let companion = &companion[0];
    // Nothing published to the host, only the app's network.
    assert!(published(companion).is_empty(), "{:?}", published(companion));
    assert_eq!(inspect(companion, ".HostConfig.NetworkMode"), json!(env.network()));

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

    // The key is still required by name, and the control endpoints are not
    // the app's to call: it is the public side of the network.
    let (status, answer) = env
        .ask_from_app_as("localhost", "GET", "/status", None)
        .expect("the companion answers the app");
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("only reachable from loopback"), "{answer}");
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
/// /stop exists. A question that got no answer within 5 s is asked once
/// more, as a client with a timeout does, and its first failure goes to
/// /retried: an instance that leaves the network takes its address out of
/// Docker's DNS only after its interface, so a lookup in that instant gets
/// an address that no longer answers. "fail" (or nc's error) when the
/// second try got no answer either.
const ASK_BY_NAME: &str = r#"
rm -f /answers /retried /stop /done
ask() {
  printf 'GET / HTTP/1.0\r\nHost: selfup-companion\r\n\r\n' | /busybox nc -w 5 selfup-companion 80 2>&1 | /busybox tail -n 1
}
while [ ! -e /stop ]; do
  read t rest < /proc/uptime
  r=$(ask)
  case "$r" in
    "selfup version "*) ;;
    *) echo "$t ${r:-fail}" >> /retried; r=$(ask) ;;
  esac
  [ -n "$r" ] || r=fail
  echo "$t $r" >> /answers
  /busybox usleep 20000
done
/busybox touch /done
"#;

pub async fn the_companion_upgrades_itself_while_the_app_keeps_reaching_it_by_name(suite: Arc<Suite>) {
    let env = AppNetEnv::start(suite.clone(), "1.0.0").await;
    let app = env.app();
    let elder = env.containers_of("selfup-companion").remove(0);
    docker(&["exec", "-d", &app, "/busybox", "sh", "-c", ASK_BY_NAME]);
    let answers = || {
        let out = Command::new("docker")
            .args(["exec", &app, "/busybox", "cat", "/answers"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
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
    let (status, body) = env.operator(&elder, reqwest::Method::POST, 5800, "/upgrade").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["to"], "1.1.0", "{body}");
    eprintln!("    companion upgrade on the app's network: {}", body["timings"]);
    let successor = eventually("one companion container", Duration::from_secs(60), || async {
        let ids = env.containers_of("selfup-companion");
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
                "no more answers by name 30 s after the elder left: the last ones {:?}, retried {:?}, the name resolves to {}, the successor is at {}",
                answers().iter().rev().take(5).collect::<Vec<_>>(),
                show(&["/busybox", "cat", "/retried"]),
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

    let timed = Command::new("docker")
        .args(["exec", &app, "/busybox", "cat", "/answers"])
        .output()
        .unwrap();
    let timed = String::from_utf8_lossy(&timed.stdout).into_owned();
    let retried = Command::new("docker")
        .args(["exec", &app, "/busybox", "cat", "/retried"])
        .output()
        .unwrap();
    let retried = String::from_utf8_lossy(&retried.stdout).into_owned();
    let answers = answers();
    let failed: Vec<&str> = timed
        .lines()
        .filter(|l| !l.ends_with(" selfup version 1.0.0") && !l.ends_with(" selfup version 1.1.0"))
        .collect();
    // The longest wait between two questions: the slowest answer, a name
    // lookup's retry included.
    let asked: Vec<f64> = timed
        .lines()
        .filter_map(|l| l.split_once(' ')?.0.parse().ok())
        .collect();
    let slowest = asked.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    eprintln!(
        "    {} questions by name across the upgrade, {} unanswered, {} answered on a second try {:?}; the slowest took {:.2} s",
        answers.len(),
        failed.len(),
        retried.lines().count(),
        retried.lines().collect::<Vec<_>>(),
        slowest,
    );
    // At most the one lookup that met the elder's departure.
    assert!(retried.lines().count() <= 1, "{retried}");
    assert!(
        failed.is_empty(),
        "{} of {} failed (time asked, nc's answer): {failed:?}",
        failed.len(),
        answers.len()
    );
    assert_eq!(answers.first().map(String::as_str), Some("selfup version 1.0.0"));
    assert_eq!(answers.last().map(String::as_str), Some("selfup version 1.1.0"));

    // The successor carries the service's name on the app's network, nothing
    // published, and compose sees one container per service.
    let networks = inspect(&successor, ".NetworkSettings.Networks");
    assert!(
        networks[&env.network()]["Aliases"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("selfup-companion"))),
        "{networks}"
    );
    assert!(published(&successor).is_empty());
    let ps = env.compose(&["ps", "-q"]);
    assert_eq!(ps.lines().count(), 2, "app and selfup-companion only: {ps}");
}
