//! Docker Swarm: the same `/upgrade` drives a service update when selfup
//! runs as a Swarm task (`docker/stack.yml`), on a single-node swarm the
//! test creates and leaves.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{LABEL, Skip, Suite, docker, eventually, free_port, repo_root, run_quietly};
use crate::load::{Load, assert_none_failed, overlapping};

/// What the test made, removed on drop, in the order that frees each part:
/// the stack, then the swarm (when the test created it), then the
/// gateway network Swarm left behind, then the files.
pub struct Swarm {
    /// The stack's name: its services are `<stack>_selfup` and `<stack>_nginx`.
    pub stack: String,
    /// The swarm was created here, and is left here.
    created: bool,
    /// `docker_gwbridge` was there before the swarm: it stays.
    gwbridge_existed: bool,
    dir: PathBuf,
    /// The registry's forwarder on the gateway address.
    forwarder: Option<tokio::task::JoinHandle<()>>,
}

impl Swarm {
    /// Creates a single-node swarm on 127.0.0.1, or `Err` with the reason
    /// to skip: the Engine is already in a swarm that is not the test's.
    pub fn init(run_id: &str) -> Result<Swarm, String> {
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        let mut state = state.trim().to_string();
        if state == "active" && crate::harness::swarm_left_by_a_dead_run() {
            run_quietly(Command::new("docker").args(["swarm", "leave", "--force"]));
            state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
                .trim()
                .to_string();
        }
        if state != "inactive" {
            return Err(format!(
                "the Engine is already in a swarm (state {state}) that this test did not create; it is left alone"
            ));
        }
        let gwbridge_existed = Command::new("docker")
            .args(["network", "inspect", "docker_gwbridge"])
            .output()
            .is_ok_and(|o| o.status.success());
        let dir = std::env::temp_dir().join(format!("selfup-e2e-swarm-{run_id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut swarm = Swarm {
            stack: format!("selfupe2eswarm{}", run_id.replace('x', "s")),
            created: false,
            gwbridge_existed,
            dir,
            forwarder: None,
        };
        // Where tasks reach the node: made now rather than with the first
        // task, so that its gateway is known when the stack is deployed
        // (with the options Swarm gives the one it makes).
        if !gwbridge_existed {
            docker(&[
                "network",
                "create",
                "--opt",
                "com.docker.network.bridge.name=docker_gwbridge",
                "--opt",
                "com.docker.network.bridge.enable_icc=false",
                "--opt",
                "com.docker.network.bridge.enable_ip_masquerade=true",
                // Whose it is, for a later run when this one dies first.
                "--label",
                &format!("{LABEL}={run_id}"),
                "docker_gwbridge",
            ]);
        }
        docker(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
        swarm.created = true;
        // Whose swarm it is, for a later run when this one dies before its end.
        let node = docker(&["info", "--format", "{{.Swarm.NodeID}}"]);
        docker(&[
            "node",
            "update",
            "--label-add",
            &format!("{LABEL}={run_id}"),
            node.trim(),
        ]);
        Ok(swarm)
    }

    /// The gateway of `docker_gwbridge`: where a task reaches the node.
    fn gateway() -> String {
        docker(&[
            "network",
            "inspect",
            "docker_gwbridge",
            "--format",
            "{{(index .IPAM.Config 0).Gateway}}",
        ])
        .trim()
        .to_string()
    }

    /// Forwards connections to the node's gateway address to `registry` (on
    /// the node's loopback): a task's loopback is its own, so it calls the
    /// registry's API there (`SELFUP_REGISTRY_API`), while the Engine pulls
    /// from the loopback name. Returns `http://<gateway>:<port>`.
    pub async fn forward_registry(&mut self, registry: &str) -> String {
        let listener = tokio::net::TcpListener::bind((Self::gateway(), 0)).await.unwrap();
        let address = listener.local_addr().unwrap();
        let registry = registry.to_string();
        self.forwarder = Some(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let registry = registry.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&registry).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
        format!("http://{address}")
    }

    /// `docker stack deploy` of docker/stack.yml with `vars`.
    pub fn deploy(&self, vars: &[(&str, String)]) {
        let config = self.dir.join("registry_config.json");
        std::fs::write(&config, "{\"auths\": {}}\n").unwrap();
        let mut deploy = Command::new("docker");
        deploy
            .args(["stack", "deploy", "-c"])
            .arg(repo_root().join("docker/stack.yml"))
            .arg(&self.stack)
            .env("SELFUP_REGISTRY_CONFIG", &config);
        for (k, v) in vars {
            deploy.env(k, v);
        }
        crate::harness::run(&mut deploy);
    }

    fn service(&self) -> String {
        format!("{}_selfup", self.stack)
    }

    /// The running task containers of the selfup service whose health
    /// check passes.
    fn healthy_tasks(&self) -> Vec<String> {
        docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={}", self.service()),
            "--filter",
            "health=healthy",
        ])
        .split_whitespace()
        .map(str::to_string)
        .collect()
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        if let Some(forwarder) = self.forwarder.take() {
            forwarder.abort();
        }
        run_quietly(Command::new("docker").args(["stack", "rm", &self.stack]));
        // The stack's containers and network go after the services.
        let label = format!("label=com.docker.stack.namespace={}", self.stack);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(60) {
            let left = Command::new("docker")
                .args(["ps", "-aq", "--filter", &label])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default();
            if left.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        run_quietly(Command::new("docker").args(["volume", "rm", "-f", &format!("{}_data", self.stack)]));
        if self.created {
            run_quietly(Command::new("docker").args(["swarm", "leave", "--force"]));
        }
        if !self.gwbridge_existed {
            // Made here; nothing else uses it once the node left.
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(15) {
                let removed = Command::new("docker")
                    .args(["network", "rm", "docker_gwbridge"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                let gone = !Command::new("docker")
                    .args(["network", "inspect", "docker_gwbridge"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if removed || gone {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `selfup <args> --json` run inside the task container `task`, as an
/// operator runs it there: whether it succeeded, and the answer.
pub async fn cli(task: &str, args: &[&str]) -> (bool, Value) {
    let mut command = Command::new("docker");
    command.args(["exec", task, "/selfup"]).args(args).arg("--json");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let answer = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "no JSON answer from `selfup {}` in {task}: {stdout}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            )
        });
    (out.status.success(), answer)
}

/// The versions of the answer's tasks.
pub fn task_versions(answer: &Value) -> Vec<String> {
    answer["tasks"]
        .as_array()
        .unwrap_or_else(|| panic!("no tasks in {answer}"))
        .iter()
        .map(|t| t["version"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The version nginx's public port answers with.
async fn public_version(suite: &Suite, url: &str) -> Option<String> {
    let text = suite.http.get(format!("{url}/")).send().await.ok()?.text().await.ok()?;
    text.trim().strip_prefix("selfup version ").map(str::to_string)
}

/// Waits until `n` tasks pass their health check and nginx answers `version`
/// only (five answers in a row); returns a healthy task.
pub async fn settled(suite: &Suite, swarm: &Swarm, url: &str, n: usize, version: &str) -> String {
    eventually(
        &format!("{n} healthy tasks of {version} behind nginx"),
        Duration::from_secs(120),
        || async {
            let tasks = swarm.healthy_tasks();
            if tasks.len() != n {
                return None;
            }
            for _ in 0..5 {
                if public_version(suite, url).await.as_deref() != Some(version) {
                    return None;
                }
            }
            tasks.into_iter().next()
        },
    )
    .await
}

/// A single-node swarm running docker/stack.yml: two tasks of selfup
/// `version` from `repository` (released already) behind nginx. Returns the
/// swarm, nginx's public URL and a healthy task; `Err` with the reason to
/// skip when the Engine is in a swarm of someone else's.
pub async fn deployed(suite: &Suite, repository: &str, version: &str) -> Result<(Swarm, String, String), String> {
    let mut swarm = Swarm::init(&suite.run_id)?;
    let registry_api = swarm.forward_registry(&suite.registry).await;
    let public_port = free_port();
    // nginx's public address, without a path: the load adds `/` and `/echo`.
    let url = format!("http://127.0.0.1:{public_port}");
    swarm.deploy(&[
        ("SELFUP_REGISTRY", suite.registry.clone()),
        ("SELFUP_IMAGE", repository.to_string()),
        ("SELFUP_VERSION", version.to_string()),
        ("SELFUP_REGISTRY_API", registry_api),
        ("SELFUP_NGINX_IMAGE", suite.nginx_image.clone()),
        ("SELFUP_PUBLIC_PORT", public_port.to_string()),
    ]);
    let task = settled(suite, &swarm, &url, 2, version).await;
    Ok((swarm, url, task))
}

pub async fn a_two_replica_service_upgrades_under_load_without_a_failed_request_and_swarm_rolls_back_a_failing_image(
    suite: Arc<Suite>,
) -> Result<(), Skip> {
    let repository = "swarm";
    suite.release(repository, "1.0.0");
    // Skipped, and reported as such, on an Engine in someone else's swarm.
    let (swarm, url, task) = deployed(&suite, repository, "1.0.0").await.map_err(Skip)?;

    // 1.0.0 -> 1.1.0 under load through nginx: Swarm replaces both tasks,
    // and the task that got the request answers, although it is replaced.
    suite.release(repository, "1.1.0");
    let load = Load::start(url.clone(), 4, usize::MAX, Duration::from_secs(180));
    load.wait_for_samples_after(Instant::now(), 10, Duration::from_secs(10))
        .await;
    let asked = Instant::now();
    let (ok, answer) = cli(&task, &["upgrade"]).await;
    let answered = Instant::now();
    load.wait_for_samples_after(answered, 10, Duration::from_secs(10)).await;
    let samples = load.finish().await;
    assert!(ok, "the upgrade failed: {answer}");
    assert_eq!(answer["status"], "completed", "{answer}");
    assert_eq!(
        (answer["from"].as_str(), answer["to"].as_str()),
        (Some("1.0.0"), Some("1.1.0"))
    );
    assert!(
        answer["image"].as_str().unwrap().contains("@sha256:"),
        "not pinned: {answer}"
    );
    assert_eq!(task_versions(&answer), ["1.1.0", "1.1.0"], "{answer}");
    let during = overlapping(&samples, asked, answered).len();
    assert!(during >= 20, "only {during} requests overlapped the service update");
    assert_none_failed(&samples, "through nginx during the service update");
    let update_ms = answer["timings"]["update_ms"].as_u64().unwrap_or(0);
    eprintln!(
        "    1.0.0 -> 1.1.0: Swarm's update took {update_ms} ms; {} requests around it ({during} while it ran), none failed",
        samples.len()
    );
    // The task that answered was one Swarm replaced: it has stopped since.
    eventually("the answering task to be gone", Duration::from_secs(60), || async {
        let running = Command::new("docker")
            .args(["inspect", "-f", "{{.State.Running}}", &task])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
            .unwrap_or(false);
        (!running).then_some(())
    })
    .await;
    let task = settled(&suite, &swarm, &url, 2, "1.1.0").await;

    // Lower, named exactly: the same path, down.
    let (ok, answer) = cli(&task, &["upgrade", "=1.0.0"]).await;
    assert!(ok, "the upgrade to =1.0.0 failed: {answer}");
    assert_eq!(answer["status"], "completed", "{answer}");
    assert_eq!(answer["rollback"], true, "{answer}");
    assert_eq!(task_versions(&answer), ["1.0.0", "1.0.0"], "{answer}");
    let task = settled(&suite, &swarm, &url, 2, "1.0.0").await;

    // /rollback: Swarm's own, to the spec before the last update (1.1.0).
    let (ok, answer) = cli(&task, &["rollback"]).await;
    assert!(ok, "the rollback failed: {answer}");
    assert_eq!(answer["status"], "rollback_completed", "{answer}");
    assert_eq!(answer["to"], "1.1.0", "{answer}");
    assert_eq!(task_versions(&answer), ["1.1.0", "1.1.0"], "{answer}");
    let task = settled(&suite, &swarm, &url, 2, "1.1.0").await;

    // An image whose health check fails: Swarm rolls the update back on its
    // own, and the answer says so, with Swarm's reason.
    let sick = suite.image(repository, "1.5.0");
    let dir = swarm.dir.join("sick");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM {}\nLABEL org.opencontainers.image.version=1.5.0\n\
             HEALTHCHECK --interval=1s --timeout=2s --retries=2 CMD [\"/selfup\", \"no-such-check\"]\n",
            suite.image("selfup", "1.1.0")
        ),
    )
    .unwrap();
    crate::harness::run(
        Command::new("docker")
            .args(["build", "-q", "--label", &suite.label(), "-t", &sick])
            .arg(&dir),
    );
    crate::harness::push(&sick);
    suite.publish(&sick, repository, "latest");
    let (ok, answer) = cli(&task, &["upgrade"]).await;
    assert!(!ok, "an unhealthy image was rolled out: {answer}");
    assert_eq!(answer["status"], "rollback_completed", "{answer}");
    assert_eq!(answer["http_status"], 502, "{answer}");
    let reason = answer["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("rolled back"), "Swarm's reason is missing: {answer}");
    assert_eq!(task_versions(&answer), ["1.1.0", "1.1.0"], "{answer}");
    let task = settled(&suite, &swarm, &url, 2, "1.1.0").await;
    eprintln!("    a failing image: {reason}");

    // /rollback after Swarm rolled the failing image back: Swarm's previous
    // spec is the failing one, so selfup updates to the image its labels
    // record as running before 1.1.0 (1.0.0), never to 1.5.0.
    let (ok, answer) = cli(&task, &["rollback"]).await;
    assert!(ok, "the rollback after a rolled-back update failed: {answer}");
    assert_eq!(answer["status"], "rollback_completed", "{answer}");
    assert_eq!(answer["to"], "1.0.0", "{answer}");
    assert_eq!(task_versions(&answer), ["1.0.0", "1.0.0"], "{answer}");
    settled(&suite, &swarm, &url, 2, "1.0.0").await;
    Ok(())
}
