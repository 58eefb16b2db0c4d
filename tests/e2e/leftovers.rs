//! What a run leaves when it is interrupted is removed by the next run, and
//! only that: a run going on beside it keeps everything. Labelled objects,
//! a compose project's network, a process, a scratch directory.

use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::harness::{LABEL, RUN_VARIABLE, Suite, docker, run, run_id_in, run_is_alive, run_quietly};

/// The run id (`<pid>x<start>`) of a process of our own: a finished one is a
/// dead run, a running one a live run.
fn id_of(child: &std::process::Child) -> String {
    let pid = child.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start = stat.rsplit_once(')').unwrap().1.split_whitespace().nth(19).unwrap();
    format!("{pid}x{start}")
}

/// One of each kind of object, labelled as made by `run`: (container, network, volume, image).
fn objects(suite: &Suite, run_id: &str, name: &str) -> [String; 4] {
    let label = format!("{LABEL}={run_id}");
    let image = format!("selfupe2e-leftover-{name}:{}", suite.run_id);
    let mut build = Command::new("docker");
    build
        .args(["build", "-q", "--label", &label, "-t", &image, "-"])
        .stdin(Stdio::piped());
    let mut child = build.stdout(Stdio::null()).spawn().unwrap();
    use std::io::Write;
    let dockerfile = format!("FROM {}\nENV LEFTOVER={name}\n", suite.image("fixtures", "hang"));
    child.stdin.take().unwrap().write_all(dockerfile.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "building {image}");
    let container = docker(&["create", "--label", &label, &image]).trim().to_string();
    let network = docker(&[
        "network",
        "create",
        "--label",
        &label,
        &format!("selfupe2e-leftover-{name}-{}", suite.run_id),
    ])
    .trim()
    .to_string();
    let volume = docker(&["volume", "create", "--label", &label]).trim().to_string();
    [container, network, volume, image]
}

fn exists(kind: &str, id: &str) -> bool {
    Command::new("docker")
        .args([kind, "inspect", id])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success()
}

fn remove(objects: &[String; 4]) {
    let [container, network, volume, image] = objects;
    run_quietly(Command::new("docker").args(["rm", "-f", container]));
    run_quietly(Command::new("docker").args(["network", "rm", network]));
    run_quietly(Command::new("docker").args(["volume", "rm", "-f", volume]));
    run_quietly(Command::new("docker").args(["rmi", "-f", image]));
}

pub async fn a_run_removes_what_dead_runs_left_and_nothing_of_a_live_run(suite: Arc<Suite>) {
    let mut finished = Command::new("true").spawn().unwrap();
    let dead = id_of(&finished);
    finished.wait().unwrap();
    let mut running = Command::new("sleep").arg("600").spawn().unwrap();
    let live = id_of(&running);
    assert!(!run_is_alive(&dead) && run_is_alive(&live));
    assert!(run_is_alive(&suite.run_id));

    // The run id in the names the suite gives: projects, stacks, directories.
    for (name, run) in [
        ("selfupe2e123x456t3", Some("123x456")),
        ("selfupe2eswarm123s456", Some("123x456")),
        ("selfupe2e-123x456c7-registry", Some("123x456")),
        ("selfup-e2e-registry-123x456", Some("123x456")),
        ("selfup-e2e-123x456-registry-127-0-0-1-5000.docker", Some("123x456")),
        ("selfup-e2e-registry", None),
    ] {
        assert_eq!(run_id_in(name).as_deref(), run, "{name}");
    }

    let theirs = objects(&suite, &dead, "dead");
    let beside = objects(&suite, &live, "live");
    // What carries no label: a process (a registry) with the run's id in its
    // environment, a scratch directory named for the run, and a network of
    // one of its compose projects.
    let process = |run: &str| Command::new("sleep").arg("600").env(RUN_VARIABLE, run).spawn().unwrap();
    let (mut their_process, mut live_process) = (process(&dead), process(&live));
    let scratch = |run: &str| {
        let dir = std::env::temp_dir().join(format!("selfup-e2e-leftover-{run}"));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        dir
    };
    let (their_dir, live_dir) = (scratch(&dead), scratch(&live));
    let project_network = |run: &str| {
        let project = format!("selfupe2e{run}t999");
        docker(&[
            "network",
            "create",
            "--label",
            &format!("com.docker.compose.project={project}"),
            &format!("{project}_default"),
        ])
        .trim()
        .to_string()
    };
    let (their_network, live_network) = (project_network(&dead), project_network(&live));
    Suite::remove_leftovers();
    // The kill is sent at once; the process goes a moment later.
    let mut their_process_ended = false;
    for _ in 0..100 {
        if their_process.try_wait().unwrap().is_some() {
            their_process_ended = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let live_process_runs = live_process.try_wait().unwrap().is_none();
    let _ = their_process.kill();
    let _ = live_process.kill();
    let _ = (their_process.wait(), live_process.wait());
    let (their_dir_gone, live_dir_kept) = (!their_dir.exists(), live_dir.exists());
    let _ = std::fs::remove_dir_all(&their_dir);
    let _ = std::fs::remove_dir_all(&live_dir);
    let (their_network_gone, live_network_kept) =
        (!exists("network", &their_network), exists("network", &live_network));
    run_quietly(Command::new("docker").args(["network", "rm", &their_network]));
    run_quietly(Command::new("docker").args(["network", "rm", &live_network]));
    assert!(their_process_ended, "a process of a dead run still runs");
    assert!(live_process_runs, "a process of a live run was killed");
    assert!(
        their_dir_gone,
        "a scratch directory of a dead run is left: {}",
        their_dir.display()
    );
    assert!(live_dir_kept, "a scratch directory of a live run was removed");
    assert!(their_network_gone, "a network of a dead run's compose project is left");
    assert!(
        live_network_kept,
        "a network of a live run's compose project was removed"
    );
    let kinds = ["container", "network", "volume", "image"];
    let gone: Vec<_> = kinds.iter().zip(&theirs).filter(|(k, id)| exists(k, id)).collect();
    let kept: Vec<_> = kinds.iter().zip(&beside).filter(|(k, id)| !exists(k, id)).collect();
    remove(&theirs);
    remove(&beside);
    let _ = running.kill();
    let _ = running.wait();
    assert!(gone.is_empty(), "left of a dead run: {gone:?}");
    assert!(kept.is_empty(), "removed from a live run: {kept:?}");
    // This run's own images are still there.
    run(Command::new("docker")
        .args(["image", "inspect", &suite.image("selfup", "1.0.0")])
        .stdout(Stdio::null()));
}
