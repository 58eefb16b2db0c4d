//! Companion swaps across instances: one lock and one journal in the data
//! volume every instance mounts. A self-upgrade waits for a running swap, a
//! second instance cannot start a swap of the same container, and an
//! instance that starts resolves a swap that a dead one left half-done.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::companion::{exists, inspect, is_running, timestamp};
use crate::harness::{APP, Suite, docker, eventually, free_port};

/// The name the companion gives an old container while it is aside.
fn aside_of(app: &str) -> String {
    let id = inspect(app)["Id"].as_str().unwrap().to_string();
    format!("{app}-selfup-old-{}", &id[..12])
}

async fn wait_aside(aside: &str) {
    eventually(
        "the swap to put the old container aside",
        Duration::from_secs(60),
        || async { exists(aside).then_some(()) },
    )
    .await;
}

/// `docker inspect` of a container that may not exist under that name now.
fn inspect_if_there(name: &str) -> Option<serde_json::Value> {
    exists(name).then(|| inspect(name))
}

fn restart_policy(name: &str) -> String {
    inspect(name)["HostConfig"]["RestartPolicy"]["Name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Where each (action, container id) stands among the Engine's container
/// events since `since`: creates, starts, dies and destroys, in its order.
fn engine_order(since: &str, wanted: &[(&str, &str)]) -> Vec<usize> {
    let events: Vec<String> = docker(&[
        "events",
        "--since",
        since,
        "--until",
        &timestamp(),
        "--filter",
        "type=container",
        "--filter",
        "event=create",
        "--filter",
        "event=destroy",
        "--format",
        "{{.Action}} {{.Actor.ID}}",
    ])
    .lines()
    .map(str::to_string)
    .collect();
    wanted
        .iter()
        .map(|(action, id)| {
            events
                .iter()
                .position(|e| {
                    e.split_once(' ')
                        .is_some_and(|(a, i)| a == *action && i.starts_with(id))
                })
                .unwrap_or_else(|| panic!("no {action} event of {id} among {events:?}"))
        })
        .collect()
}

pub async fn an_update_in_flight_while_upgrade_runs_both_end_well_one_instance_no_stray_container(suite: Arc<Suite>) {
    let w = suite.companion_env();
    let allowed = serde_json::to_string(&[&suite.registry]).unwrap();
    let env = suite
        .live_env(
            &[
                ("SELFUP_COMPANION", "true"),
                ("SELFUP_API_KEY", &w.key),
                ("SELFUP_ALLOWED_REGISTRIES", &allowed),
                ("SELFUP_UPDATE_DEADLINE_SECS", "30"),
                ("SELFUP_UPDATE_SETTLE_SECS", "8"),
            ],
            "1.0.0",
        )
        .await;
    let [a, b] = env.ports;
    suite.release(&env.repository, "1.1.0");
    // No HEALTHCHECK: the new container must keep running for 8 s.
    let app = w.target(
        "app",
        &["--label", "selfup.enable=true", "--restart", "unless-stopped"],
        &suite.image(APP, "plain-1"),
        true,
    );
    let old_id = inspect(&app)["Id"].as_str().unwrap().to_string();
    let aside = aside_of(&app);
    let image = suite.image(APP, "plain-2");

    let started = Instant::now();
    let since = timestamp();
    let updating = async {
        let answer = w.update_at(a, &app, &image).await;
        (answer, Instant::now())
    };
    let ((update, update_done), (upgrade, sent, upgrade_done, swapping)) = tokio::join!(updating, async {
        wait_aside(&aside).await;
        let sent = Instant::now();
        let watch_status = async {
            eventually("the upgrade to wait for the swap", Duration::from_secs(30), || async {
                let status = env.status(a).await;
                (status["upgrade_in_progress"]["step"] == "waiting for companion updates")
                    .then(|| (Instant::now(), exists(&aside)))
            })
            .await
        };
        let upgrading = async {
            let answer = env.upgrade(a, None).await;
            (answer, Instant::now())
        };
        let ((upgrade, upgrade_done), (_, swapping)) = tokio::join!(upgrading, watch_status);
        (upgrade, sent, upgrade_done, swapping)
    });
    let (status, body) = update;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "updated", "{body}");
    let (status, body) = upgrade;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "upgraded", "{body}");
    assert_eq!(body["to"], "1.1.0", "{body}");
    assert!(swapping, "the swap still ran while the upgrade waited");

    env.wait_takeover_done(b).await;
    env.wait_single_container().await;
    assert_eq!(env.version_at(&env.public("/")).await, Some(("1.1.0".into(), b)));
    let after = inspect(&app);
    assert_ne!(after["Id"], old_id.as_str());
    assert_eq!(after["Config"]["Image"], image.as_str());
    assert!(is_running(&app));
    assert_eq!(restart_policy(&app), "unless-stopped");
    assert!(!exists(&old_id));
    assert_eq!(w.containers(), BTreeSet::from([app.clone()]), "no stray container");
    // The order the Engine saw: the swap's last step (the old container
    // removed) before the upgrade's first change (the successor created).
    // The answers' arrival says less: a fast upgrade may answer before the
    // update's answer is read.
    let successor = env.container_on(b).expect("the successor listens on the other port");
    let order = engine_order(&since, &[("destroy", &old_id), ("create", &successor)]);
    assert!(
        order[0] < order[1],
        "the swap ended before the upgrade began: {order:?}"
    );
    eprintln!(
        "figure: /upgrade asked {:.1}s into the swap, which ended {:.1}s later; /upgrade answered {:.1}s after it was asked",
        sent.duration_since(started).as_secs_f64(),
        update_done.duration_since(sent).as_secs_f64(),
        upgrade_done.duration_since(sent).as_secs_f64()
    );
    // The live instance (the successor) updates the same container: no lock was left behind.
    let (status, body) = w.update_at(b, &app, &suite.image(APP, "plain-1")).await;
    assert_eq!(status, 200, "{body}");
}

pub async fn an_instance_that_starts_resolves_a_swap_left_half_done_rolling_back_or_finishing(suite: Arc<Suite>) {
    let mut w = suite.companion_env();
    let data = w.volume("data");
    let faulty = suite.faults_image();
    let healthy = |tag: &str| suite.image(APP, tag);
    // Stop-first (a published port): the instance dies once the old one is stopped and aside.
    let host_port = free_port();
    let app1 = w.target(
        "app1",
        &[
            "--label",
            "selfup.enable=true",
            "--restart",
            "unless-stopped",
            "-p",
            &format!("127.0.0.1:{host_port}:8000"),
        ],
        &healthy("1.0.0"),
        true,
    );
    // Beside: the instance dies once the new one is started, unchecked, with restart policy "no".
    let app2 = w.target(
        "app2",
        &["--label", "selfup.enable=true", "--restart", "unless-stopped"],
        &healthy("1.0.0"),
        true,
    );
    let (name, port) = (w.companion.clone(), w.port);
    let extra: Vec<String> = [
        "-v",
        &format!("{data}:/data"),
        "--restart",
        "on-failure",
        "-e",
        &format!("FAULT_SWAP_EXIT={app1}:aside,{app2}:started"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    w.start_instance(&name, port, &faulty, &[&suite.registry], &extra, false)
        .await;

    let send = |container: String| {
        let w = &w;
        let image = healthy("1.1.0");
        async move {
            w.suite
                .http
                .post(format!("http://127.0.0.1:{}/update", w.port))
                .header("authorization", &w.key)
                .json(&json!({ "container": container, "image": image }))
                .send()
                .await
        }
    };

    // 1. Old container aside and stopped, no new one: rolled back.
    let old1 = inspect(&app1)["Id"].as_str().unwrap().to_string();
    let aside1 = aside_of(&app1);
    assert!(send(app1.clone()).await.is_err(), "the instance died mid-swap");
    let died = Instant::now();
    eventually(
        "the half-done swap of app1 to be rolled back",
        Duration::from_secs(60),
        || async {
            let c = inspect_if_there(&app1)?;
            (c["Id"] == old1.as_str() && c["State"]["Running"] == true && !exists(&aside1)).then_some(())
        },
    )
    .await;
    let rolled_back = died.elapsed();
    assert_eq!(inspect(&app1)["Config"]["Image"], healthy("1.0.0").as_str());
    assert_eq!(
        inspect(&app1)["NetworkSettings"]["Ports"]["8000/tcp"][0]["HostPort"],
        host_port.to_string().as_str()
    );
    w.wait_instance(port).await;

    // 2. New container started, unchecked, restart policy "no": finished.
    let old2 = inspect(&app2)["Id"].as_str().unwrap().to_string();
    assert!(send(app2.clone()).await.is_err(), "the instance died mid-swap");
    let died = Instant::now();
    eventually(
        "the half-done swap of app2 to be finished",
        Duration::from_secs(90),
        || async {
            let c = inspect_if_there(&app2)?;
            (c["Id"] != old2.as_str() && !exists(&old2) && c["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped")
                .then_some(())
        },
    )
    .await;
    let finished = died.elapsed();
    assert!(is_running(&app2));
    assert_eq!(inspect(&app2)["Config"]["Image"], healthy("1.1.0").as_str());

    assert!(
        inspect(&name)["RestartCount"].as_u64().unwrap() >= 2,
        "the instance was restarted twice"
    );
    assert_eq!(
        w.containers(),
        BTreeSet::from([name.clone(), app1.clone(), app2.clone()]),
        "nothing left aside"
    );
    let log = w.logs();
    assert!(
        log.contains("half-done swap resolved") && log.contains("rolled back"),
        "{log}"
    );
    assert!(log.contains("finished"), "{log}");
    eprintln!(
        "figure: from the crash to the swap resolved: rolled back in {:.1}s, finished in {:.1}s",
        rolled_back.as_secs_f64(),
        finished.as_secs_f64()
    );
    // No journal is left in the data volume, only the lock files.
    let mut ls = std::process::Command::new("docker");
    ls.args(["run", "--rm"])
        .args(w.labels())
        .args(["-v", &format!("{data}:/data"), "--entrypoint", "/busybox"])
        .arg(healthy("1.0.0"))
        .args(["ls", "-a", "/data/swaps"]);
    let files = crate::harness::run(&mut ls);
    let mut files: Vec<&str> = files.split_whitespace().filter(|f| !f.starts_with('.')).collect();
    files.sort();
    let mut expected = vec![format!("{app1}.lock"), format!("{app2}.lock"), "gate.lock".into()];
    expected.sort();
    assert_eq!(files, expected);
}

pub async fn a_second_instance_gets_409_for_a_container_whose_swap_runs_in_the_first(suite: Arc<Suite>) {
    let mut w = suite.companion_env();
    let data = w.volume("data");
    let image = suite.image("selfup", "1.0.0");
    let extra: Vec<String> = [
        "-v".to_string(),
        format!("{data}:/data"),
        "-e".into(),
        "SELFUP_UPDATE_SETTLE_SECS=6".into(),
    ]
    .to_vec();
    let (first, second) = (w.companion.clone(), w.name("companion-b"));
    let (port_a, port_b) = (w.port, free_port());
    w.start_instance(&first, port_a, &image, &[&suite.registry], &extra, false)
        .await;
    w.start_instance(&second, port_b, &image, &[&suite.registry], &extra, false)
        .await;
    let app = w.target(
        "app",
        &["--label", "selfup.enable=true"],
        &suite.image(APP, "plain-1"),
        true,
    );
    let old_id = inspect(&app)["Id"].as_str().unwrap().to_string();
    let aside = aside_of(&app);
    let plain2 = suite.image(APP, "plain-2");

    let (updated, (by_name, by_id)) = tokio::join!(w.update_at(port_a, &app, &plain2), async {
        wait_aside(&aside).await;
        let by_name = w.update_at(port_b, &app, &plain2).await;
        let by_id = w.update_at(port_b, &old_id[..12], &plain2).await;
        assert!(
            exists(&aside),
            "the first swap still ran when the second instance was asked"
        );
        (by_name, by_id)
    });
    assert_eq!(updated.0, 200, "{}", updated.1);
    for (status, body) in [by_name, by_id] {
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["container"], app.as_str(), "{body}");
        assert!(body["error"].as_str().unwrap().contains("already running"), "{body}");
    }
    // Once it is done, the other instance may update the container.
    let (status, body) = w.update_at(port_b, &app, &suite.image(APP, "plain-1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        w.containers(),
        BTreeSet::from([first, second, app.clone()]),
        "one container of the app, nothing aside"
    );
}
